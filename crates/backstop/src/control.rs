//! The control socket (`state_dir/control.sock`): lets `backstop verify` and `backstop queue`
//! ask the running gateway, which owns the store and the spool, instead of opening them a
//! second time (and `backstop status`, `cache`, `bounce stats`, `reload`, `tls-report`).
//!
//! Responsible for: a one-request-per-connection line protocol (`verify ADDRESS` or
//! `queue ...` in, one JSON object out) on a Unix socket only root (or the gateway's user) can
//! reach, and the queue requests themselves (also used directly when no gateway runs).
//! Not responsible for: deciding anything (it calls the verifier and the spool), or remote
//! administration.

use crate::backscatter::Guard;
use crate::clock::Clock;
use crate::decide::{Facts, Ladder, Tally};
use crate::policy::Verifier;
use crate::policy::callout::CacheKey;
use crate::queue::{Spool, SpoolError};
use crate::senders::Watch;
use backstop_proto::address::{Mailbox, ReversePath};
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

/// What `RCPT TO:<addr>` answers in a transaction from `from` (none: any ordinary sender),
/// from the same ladder as RCPT, in a dry run: nothing counted, no delay.
pub async fn explain(ladder: &Ladder, from: Option<&ReversePath>, addr: &Mailbox) -> VerifyAnswer {
    let facts = Facts {
        client: CONTROL_CLIENT,
        from,
        rcpt: addr.clone(),
        may_relay: false,
        relaying: false,
        live: false,
    };
    let v = ladder.rcpt(facts, &mut Tally::default()).await;
    VerifyAnswer {
        accepted: v.reply.is_success(),
        reply: v.reply.to_string(),
        reason: v.reason.label().to_string(),
        steps: v.steps,
    }
}

/// Parses a sender as an operator types it: `<>`, `user@domain` or `<user@domain>`.
pub fn parse_sender(s: &str) -> Result<ReversePath, backstop_proto::address::AddressError> {
    match s.trim() {
        "<>" | "" => Ok(ReversePath::Null),
        other => parse_address(other).map(ReversePath::Mailbox),
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

/// Answers a queue request (`list`, `list --failed`, `show ID`, `retry ID|--all`, `hold ID`, `release ID`,
/// `delete ID`) as one JSON object; failures are `{"error": ...}`.
pub async fn queue_request(spool: &Spool, now: u64, words: &[&str]) -> serde_json::Value {
    use serde_json::json;
    let missing = |id: &str| json!({ "error": format!("{id}: no such message in the queue") });
    let changed = |r: Result<bool, SpoolError>, id: &str| match r {
        Ok(true) => json!({ "ok": true, "id": id }),
        Ok(false) => missing(id),
        Err(e) => json!({ "error": e.to_string() }),
    };
    match words {
        ["list"] => json!({ "messages": spool.list() }),
        ["list", "--failed"] => {
            let failed: Vec<_> = spool
                .list()
                .into_iter()
                .filter(|m| {
                    m.rcpts
                        .iter()
                        .any(|r| matches!(r.status, crate::queue::Status::Failed { .. }))
                })
                .collect();
            json!({ "messages": failed })
        }
        ["show", id] => match spool.show(id) {
            Some(m) => json!({ "message": m }),
            None => missing(id),
        },
        ["retry", "--all"] => json!({ "retried": spool.retry(None, now) }),
        ["retry", id] => match spool.show(id) {
            Some(_) => json!({ "retried": spool.retry(Some(id), now) }),
            None => missing(id),
        },
        ["hold", id] => changed(spool.hold(id, true).await, id),
        ["release", id] => changed(spool.hold(id, false).await, id),
        ["delete", id] => changed(spool.delete(id).await, id),
        _ => json!({ "error": format!("unknown queue request {:?}", words.join(" ")) }),
    }
}

/// What the socket's handlers use.
pub struct Served {
    /// The configuration.
    pub cfg: Arc<crate::config::Config>,
    /// The store.
    pub store: Arc<dyn crate::store::Store>,
    /// Recipient verification.
    pub verifier: Arc<Verifier>,
    /// BATV and bounce counts.
    pub guard: Arc<Guard>,
    /// The RCPT decision (for `verify`).
    pub ladder: Arc<Ladder>,
    /// Held senders.
    pub watch: Arc<Watch>,
    /// The queue.
    pub spool: Arc<Spool>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Whether the next hops and call-out servers answer.
    pub backends: Arc<crate::health::Backends>,
    /// Outbound TLS sessions counted for TLS reports.
    pub tls_results: Arc<crate::tlsrpt::Ledger>,
    /// Wakes the TLS report task at once.
    pub tls_reports_now: Arc<tokio::sync::Notify>,
}

impl Served {
    /// What `backstop status --json` shows, from the running gateway.
    pub async fn status(&self) -> Result<serde_json::Value, crate::store::StoreError> {
        let now = self.clock.unix();
        let (store, verifier) = (self.store.as_ref(), &self.verifier);
        crate::status::gather(
            &self.cfg,
            store,
            (&self.spool, &self.tls_results),
            (verifier, Some(&self.backends)),
            now,
        )
        .await
    }
}

/// A request to reload the configuration, and where its answer goes: `{"config": FILE,
/// "changes": [...]}` or `{"error": ...}`.
pub type ReloadRequest = tokio::sync::oneshot::Sender<serde_json::Value>;

/// What requests are answered from (the configuration of the last reload), and where reload
/// requests go.
pub struct Control {
    /// The parts of the current configuration.
    pub current: Arc<arc_swap::ArcSwap<Served>>,
    /// Where `reload` is asked for.
    pub reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
}

/// Binds the socket (replacing a stale one left by a crash) and serves it until the task ends.
pub fn serve(path: &Path, control: Arc<Control>) -> std::io::Result<tokio::task::JoinHandle<()>> {
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
            let c = control.clone();
            tokio::spawn(async move {
                let _ = handle(stream, &c).await;
            });
        }
    }))
}

async fn handle(stream: UnixStream, c: &Control) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let s = c.current.load_full();
    let answer = match words.as_slice() {
        ["reload"] => reload(c).await,
        ["verify", a, from @ ..] if from.len() <= 1 => {
            let sender = from.first().map(|f| parse_sender(f)).transpose();
            match (parse_address(a), sender) {
                (Ok(m), Ok(f)) => {
                    let answer = explain(&s.ladder, f.as_ref(), &m).await;
                    serde_json::to_value(answer)
                        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
                }
                (Err(e), _) | (_, Err(e)) => {
                    serde_json::json!({ "error": format!("{:?}: {e}", words[1..].join(" ")) })
                }
            }
        }
        ["queue", rest @ ..] => {
            let mut answer = queue_request(&s.spool, s.clock.unix(), rest).await;
            why_held(&s.watch, &mut answer, s.clock.unix()).await;
            answer
        }
        ["status"] => s
            .status()
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
        ["sender-release", a] => sender_release(&s.watch, a, s.clock.unix()).await,
        ["cache", action, what] => cache_request(&s.verifier, action, what, s.clock.unix()).await,
        ["bounce-stats"] => stats_answer(s.guard.stats(s.clock.unix()).await, s.clock.unix()),
        ["tls-report", "show"] => tls_report_show(&s.tls_results),
        ["tls-report", "send"] => {
            let now = s.clock.unix();
            s.tls_results.close_now(now);
            s.tls_reports_now.notify_one();
            serde_json::json!({ "closed": now })
        }
        _ => serde_json::json!({ "error": "unknown request" }),
    };
    w.write_all(format!("{answer}\n").as_bytes()).await?;
    w.shutdown().await
}

/// `backstop tls-report show`: the open period's counts and the closed periods whose reports
/// are still to go.
pub fn tls_report_show(ledger: &crate::tlsrpt::Ledger) -> serde_json::Value {
    serde_json::json!({ "current": ledger.current(), "pending": ledger.closed() })
}

/// Asks the gateway to reload and waits for its answer.
async fn reload(c: &Control) -> serde_json::Value {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if c.reloads.send(tx).await.is_err() {
        return serde_json::json!({ "error": "the gateway is stopping" });
    }
    rx.await
        .unwrap_or_else(|_| serde_json::json!({ "error": "the gateway is stopping" }))
}

/// `backstop cache show|forget ADDRESS|@DOMAIN`: the call-out cache entry of an address with
/// its times, or of a domain (whether it is a catch-all, and every address of it cached), or
/// forgetting them, as one JSON object.
pub async fn cache_request(
    verifier: &Verifier,
    action: &str,
    what: &str,
    now: u64,
) -> serde_json::Value {
    use serde_json::json;
    let parsed = match what.strip_prefix('@') {
        Some(d) => backstop_proto::address::Domain::parse(d, true)
            .map(CacheTarget::Domain)
            .map_err(|e| e.to_string()),
        None => parse_address(what)
            .map(CacheTarget::Address)
            .map_err(|e| e.to_string()),
    };
    let target = match parsed {
        Ok(t) => t,
        Err(e) => return json!({ "error": format!("{what:?} is not an address or @domain: {e}") }),
    };
    let callout = verifier.callout();
    let dirs: Vec<&str> = verifier.directories().iter().map(|d| d.name()).collect();
    let result = match (action, &target) {
        ("show", CacheTarget::Address(a)) => show_address(callout, a, &dirs, now)
            .await
            .map(|e| json!({ "key": what, "entry": e, "now": now })),
        ("show", CacheTarget::Domain(d)) => show_domain(callout, d, &dirs, what, now).await,
        ("forget", CacheTarget::Address(a)) => forget_address(callout, a, &dirs)
            .await
            .map(|n| json!({ "key": what, "forgot": n > 0, "forgotten": n })),
        ("forget", CacheTarget::Domain(d)) => callout
            .forget_domain(d, &dirs)
            .await
            .map(|n| json!({ "key": what, "forgot": n > 0, "forgotten": n })),
        _ => return json!({ "error": format!("unknown cache request {action:?}") }),
    };
    result.unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// What `backstop cache` was asked about.
enum CacheTarget {
    Address(Mailbox),
    Domain(backstop_proto::address::Domain),
}

/// Every key an address's answers may be cached under: the call-outs', each directory's.
fn address_keys<'a>(a: &'a Mailbox, dirs: &'a [&'a str]) -> impl Iterator<Item = CacheKey<'a>> {
    let each = dirs.iter().map(move |name| CacheKey::Directory(name, a));
    std::iter::once(CacheKey::Address(a)).chain(each)
}

/// The live answer about `a`: the call-outs', else the first directory's that has one.
async fn show_address(
    callout: &crate::policy::callout::Callout,
    a: &Mailbox,
    dirs: &[&str],
    now: u64,
) -> Result<Option<crate::store::CacheEntry>, crate::store::StoreError> {
    for key in address_keys(a, dirs) {
        if let Some(e) = callout.entry(key).await?.filter(|e| !e.is_expired(now)) {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// Forgets every answer about `a` (call-outs', directories'): how many were live.
async fn forget_address(
    callout: &crate::policy::callout::Callout,
    a: &Mailbox,
    dirs: &[&str],
) -> Result<usize, crate::store::StoreError> {
    let mut forgot = 0;
    for key in address_keys(a, dirs) {
        forgot += usize::from(callout.forget(key).await?);
    }
    Ok(forgot)
}

/// Addresses of one domain `backstop cache show @DOMAIN` lists at most.
const CACHE_SHOW_MAX: usize = 1000;

/// A domain's catch-all answer and its cached addresses (live ones).
async fn show_domain(
    callout: &crate::policy::callout::Callout,
    d: &backstop_proto::address::Domain,
    dirs: &[&str],
    what: &str,
    now: u64,
) -> Result<serde_json::Value, crate::store::StoreError> {
    let entry = callout.entry(CacheKey::Domain(d)).await?;
    let entry = entry.filter(|e| !e.is_expired(now));
    let listed = callout.addresses_of(d, dirs, CACHE_SHOW_MAX + 1).await?;
    let more = listed.len() > CACHE_SHOW_MAX;
    let addresses: Vec<_> = listed
        .into_iter()
        .take(CACHE_SHOW_MAX)
        .filter(|(_, e)| !e.is_expired(now))
        .map(|(address, entry)| serde_json::json!({ "address": address, "entry": entry }))
        .collect();
    Ok(serde_json::json!({
        "key": what, "entry": entry, "addresses": addresses, "more": more, "now": now
    }))
}

/// Adds `held_why` to the held messages of a queue answer whose sender the watch held.
pub async fn why_held(watch: &Watch, answer: &mut serde_json::Value, now: u64) {
    let Some(list) = answer.get_mut("messages").and_then(|m| m.as_array_mut()) else {
        return;
    };
    for m in list.iter_mut().filter(|m| m["held"] == true) {
        let from = m["from"].as_str().unwrap_or("").trim_matches(['<', '>']);
        let Ok(sender) = Mailbox::parse(from, true) else {
            continue;
        };
        if let Ok(Some(hold)) = watch.held(&sender, now).await
            && hold.messages.iter().any(|id| m["id"] == id.as_str())
        {
            m["held_why"] = format!("sender held: {}", hold.why).into();
        }
    }
}

/// Lifts the hold on a sender: `{"released": N}` (messages), or an error.
pub async fn sender_release(watch: &Watch, addr: &str, now: u64) -> serde_json::Value {
    let sender = match parse_address(addr) {
        Ok(m) => m,
        Err(e) => return serde_json::json!({ "error": format!("{addr:?}: {e}") }),
    };
    match watch.release(&sender, now).await {
        Ok(Some(n)) => serde_json::json!({ "sender": sender.to_string(), "released": n }),
        Ok(None) => serde_json::json!({ "error": format!("{sender} is not held") }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// Today's bounce counts as `{"day": "YYYY-MM-DD", "counts": {"batv=valid": N, ...}}`.
pub fn stats_answer(
    counts: Result<Vec<(&'static str, u64)>, crate::store::StoreError>,
    now: u64,
) -> serde_json::Value {
    match counts {
        Ok(c) => {
            let counts: serde_json::Map<String, serde_json::Value> = c
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            serde_json::json!({ "day": backstop_proto::datetime::iso_date(now), "counts": counts })
        }
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// Asks a running gateway; `Ok(None)` when none is listening on `path`.
pub async fn query_verify(
    path: &Path,
    addr: &str,
    from: Option<&ReversePath>,
) -> anyhow::Result<Option<VerifyAnswer>> {
    let request = match from {
        Some(f) => format!("verify {addr} {f}"),
        None => format!("verify {addr}"),
    };
    let Some(v) = query(path, &request).await? else {
        return Ok(None);
    };
    if let Some(e) = v.get("error") {
        anyhow::bail!("{}", e.as_str().unwrap_or("error"));
    }
    Ok(Some(serde_json::from_value(v)?))
}

/// Sends one request line to a running gateway; `Ok(None)` when none is listening on `path`.
pub async fn query(path: &Path, request: &str) -> anyhow::Result<Option<serde_json::Value>> {
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
    stream.write_all(format!("{request}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    Ok(Some(serde_json::from_str(&line)?))
}
