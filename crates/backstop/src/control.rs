//! The control socket (`state_dir/control.sock`): lets `backstop verify` ask the running
//! gateway, which owns the store, instead of opening it a second time.
//!
//! Responsible for: a one-request-per-connection line protocol (`verify ADDRESS` in, one JSON
//! object out) on a Unix socket only root (or the gateway's user) can reach.
//! Not responsible for: deciding anything (it calls the verifier), or remote administration.

use crate::policy::{Decision, Verifier};
use backstop_proto::address::Mailbox;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The answer to `verify`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// The reply RCPT would get.
    pub reply: String,
    /// True when that reply is 2xx.
    pub accepted: bool,
    /// The reason label.
    pub reason: String,
    /// The steps taken.
    pub steps: Vec<String>,
}

impl VerifyAnswer {
    /// From a decision about `addr`.
    pub fn new(d: &Decision, addr: &Mailbox) -> VerifyAnswer {
        let reply = d.reply(addr);
        VerifyAnswer {
            accepted: reply.is_success(),
            reply: reply.to_string(),
            reason: d.reason.to_string(),
            steps: d.steps.clone(),
        }
    }
}

/// Parses an address as an operator types it: `user@domain` or `<user@domain>`.
pub fn parse_address(s: &str) -> Result<Mailbox, backstop_proto::address::AddressError> {
    Mailbox::parse(s.trim().trim_start_matches('<').trim_end_matches('>'), true)
}

/// The socket's path in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// The client IP that control requests are charged to in probe budgets.
pub const CONTROL_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Binds the socket (replacing a stale one left by a crash) and serves it until the task ends.
pub fn serve(path: &Path, verifier: Arc<Verifier>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let v = verifier.clone();
            tokio::spawn(async move {
                let _ = handle(stream, &v).await;
            });
        }
    }))
}

async fn handle(stream: UnixStream, verifier: &Verifier) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let answer = match line.trim().strip_prefix("verify ") {
        Some(a) => match parse_address(a) {
            Ok(m) => serde_json::to_value(VerifyAnswer::new(
                &verifier.verify(&m, CONTROL_CLIENT).await,
                &m,
            )),
            Err(e) => Ok(serde_json::json!({ "error": format!("{a:?}: {e}") })),
        },
        None => Ok(serde_json::json!({ "error": "unknown request" })),
    }
    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    w.write_all(format!("{answer}\n").as_bytes()).await?;
    w.shutdown().await
}

/// Asks a running gateway; `Ok(None)` when none is listening on `path`.
pub async fn query_verify(path: &Path, addr: &str) -> anyhow::Result<Option<VerifyAnswer>> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    stream
        .write_all(format!("verify {addr}\n").as_bytes())
        .await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("{}", e.as_str().unwrap_or("error"));
    }
    Ok(Some(serde_json::from_value(v)?))
}
