//! The inbound side: listeners, and the async driver of each client's sans-IO session.
//!
//! Responsible for: binding listeners, accepting clients, feeding the session bytes and time,
//! writing its replies, STARTTLS, resolving its checks (through policy and relay), and a
//! graceful stop (no new clients; sessions finish their transaction, then get `421`).
//! Not responsible for: any decision about addresses (policy) or where mail goes (relay).

mod driver;
mod handler;
pub mod tls;

use crate::auth::SenderAuth;
use crate::backscatter::Guard;
use crate::clock::Clock;
use crate::config::{Config, Listener};
use crate::harvest::Harvest;
use crate::ids::IdGen;
use crate::policy::Verifier;
use crate::queue::Spool;
use crate::upstream::Pools;
use backstop_proto::address::Mailbox;
use backstop_proto::smtp::server::{Session, SessionConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// What every session shares.
pub struct Context {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Recipient verification.
    pub verifier: Arc<Verifier>,
    /// Connection pools to the SMTP next hops.
    pub relays: Pools,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Message ids.
    pub ids: Arc<IdGen>,
    /// SPF and DKIM, for deciding whether a sender may get delivery reports.
    pub auth: Arc<SenderAuth>,
    /// The durable queue.
    pub spool: Arc<Spool>,
    /// BATV checks, bounce rates, the sent log and the verdict on bounces.
    pub guard: Arc<Guard>,
    /// Harvest defence and connection limits.
    pub harvest: Arc<Harvest>,
    /// Limits on mail that leaves.
    pub outbound: Arc<crate::outbound::Limiter>,
    /// Held senders.
    pub watch: Arc<crate::senders::Watch>,
}

/// A bound listener, ready to accept.
pub struct Bound {
    listener: TcpListener,
    session: Arc<SessionConfig>,
    tls: Option<TlsAcceptor>,
    config: Arc<Listener>,
}

impl Bound {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds every configured listener (all or nothing) and loads their certificates.
pub async fn bind(cfg: &Config) -> anyhow::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let tls = match (&l.tls_cert, &l.tls_key) {
            (Some(c), Some(k)) => {
                Some(tls::acceptor(c, k).map_err(|e| anyhow::anyhow!("listen[{i}]: {e}"))?)
            }
            _ => None,
        };
        let listener = listen(l.addr)
            .map_err(|e| anyhow::anyhow!("listen[{i}]: cannot listen on {}: {e}", l.addr))?;
        let session = Arc::new(SessionConfig {
            hostname: cfg.hostname.clone(),
            max_line: cfg.limits.max_line_length,
            max_recipients: cfg.limits.max_recipients,
            max_message_size: cfg.limits.max_message_size,
            max_errors: cfg.limits.max_errors,
            idle_timeout: cfg.limits.idle_timeout,
            session_timeout: cfg.limits.session_timeout,
            tls_available: tls.is_some(),
        });
        out.push(Bound {
            listener,
            session,
            tls,
            config: Arc::new(l.clone()),
        });
    }
    Ok(out)
}

/// Pending connections the kernel may queue for us. SMTP servers speak first, so a client whose
/// handshake was dropped from a full queue waits for a greeting that never comes: be generous
/// (the kernel caps this at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts clients until `shutdown` turns true. Each session holds a clone of `alive`, so the
/// caller learns when the last one has ended.
pub async fn accept_loop(
    b: Bound,
    ctx: Arc<Context>,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            r = b.listener.accept() => match r {
                Ok((stream, peer)) => {
                    let (ctx, cfg, tls, sd, alive) =
                        (ctx.clone(), b.session.clone(), b.tls.clone(), shutdown.clone(), alive.clone());
                    let listener = b.config.clone();
                    tokio::spawn(async move {
                        driver::run(stream, peer, ctx, (cfg, &listener), tls, sd).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    // out of file descriptors and the like: wait a little instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

/// Our `Received:` header (RFC 5321 §4.4), CRLF-terminated and folded.
pub fn received(
    hostname: &str,
    session: &Session,
    peer: SocketAddr,
    id: &str,
    rcpts: &[Mailbox],
    unix: u64,
) -> String {
    let helo = session.helo().map(|h| h.name.as_str()).unwrap_or("unknown");
    let esmtp = session.helo().is_some_and(|h| h.esmtp);
    let utf8 = session.transaction().is_some_and(|t| t.params.smtputf8);
    // RFC 3848 / RFC 6531 protocol names
    let with = match (utf8, esmtp, session.is_tls()) {
        (true, _, true) => "UTF8SMTPS",
        (true, _, false) => "UTF8SMTP",
        (false, true, true) => "ESMTPS",
        (false, true, false) => "ESMTP",
        (false, false, true) => "SMTPS",
        (false, false, false) => "SMTP",
    };
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let for_ = match rcpts {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    let date = backstop_proto::datetime::rfc5322(unix);
    format!(
        "Received: from {helo} (unknown [{ip}])\r\n\tby {hostname} (backstop) with {with} id {id}{for_};\r\n\t{date}\r\n"
    )
}
