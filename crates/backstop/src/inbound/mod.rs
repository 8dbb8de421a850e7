//! The inbound side: listeners, and the async driver of each client's sans-IO session.
//!
//! Responsible for: binding listeners, accepting clients, feeding the session bytes and time,
//! writing its replies, STARTTLS, resolving its checks (through policy and relay), and a
//! graceful stop (no new clients; sessions finish their transaction, then get `421`).
//! Not responsible for: any decision about addresses (policy) or where mail goes (relay).

mod driver;
mod handler;
mod listen;
mod milter;
mod postfix_policy;
pub mod tls;

use crate::backscatter::Guard;
use crate::clock::Clock;
use crate::config::{Config, ListenAddr, Listener, Protocol};
use crate::harvest::Harvest;
use crate::ids::IdGen;
use crate::policy::Verifier;
use crate::queue::Spool;
use crate::upstream::Pools;
use arc_swap::ArcSwap;
use backstop_proto::address::Mailbox;
use backstop_proto::smtp::server::{Session, SessionConfig};
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// Whether the next hops answer (told what relaying sees).
    pub backends: Arc<crate::health::Backends>,
    /// The RCPT decision (over the verifier, guard, harvest and outbound limits above).
    pub ladder: Arc<crate::decide::Ladder>,
    /// DKIM keys for the mail the relay networks send through the queue.
    pub dkim: Arc<crate::dkim::Signer>,
}

/// What a listener's new sessions get: its settings and the gateway's context, as of the last
/// reload. A session keeps the setup it started with to its end.
pub struct Setup {
    session: Arc<SessionConfig>,
    tls: Option<TlsAcceptor>,
    config: Arc<Listener>,
    ctx: Arc<Context>,
}

/// A running listener.
struct Running {
    /// The address actually bound (port 0 configured: the port given).
    bound: ListenAddr,
    setup: Arc<ArcSwap<Setup>>,
    task: tokio::task::JoinHandle<()>,
}

/// The running listeners, by their configured address.
pub struct Listeners {
    running: Vec<(ListenAddr, Running)>,
    shutdown: watch::Receiver<bool>,
    /// Each session holds a clone; none once stopping.
    alive: Option<mpsc::Sender<()>>,
}

/// The listeners of a configuration, ready to take over: every certificate loaded and every
/// new address bound. Nothing serves them until [`Listeners::apply`].
pub struct Prepared {
    setups: Vec<(ListenAddr, Setup)>,
    fresh: Vec<(ListenAddr, listen::Bound)>,
}

impl Listeners {
    /// None yet. Sessions end when `shutdown` turns true; each holds a clone of `alive`, so the
    /// caller learns when the last one has ended.
    pub fn new(shutdown: watch::Receiver<bool>, alive: mpsc::Sender<()>) -> Listeners {
        Listeners {
            running: Vec::new(),
            shutdown,
            alive: Some(alive),
        }
    }

    /// Loads the certificates of `cfg`'s listeners and binds the addresses not bound yet (all
    /// or nothing: an error leaves everything as it is).
    pub fn prepare(&self, cfg: &Config, ctx: &Arc<Context>) -> anyhow::Result<Prepared> {
        let mut prepared = Prepared {
            setups: Vec::new(),
            fresh: Vec::new(),
        };
        for (i, l) in cfg.listeners.iter().enumerate() {
            let tls = match (&l.tls_cert, &l.tls_key) {
                (Some(c), Some(k)) => {
                    Some(tls::acceptor(c, k).map_err(|e| anyhow::anyhow!("listen[{i}]: {e}"))?)
                }
                _ => None,
            };
            if !self.running.iter().any(|(a, _)| *a == l.addr) {
                let bound = match &l.addr {
                    ListenAddr::Inet(a) => listen::tcp(*a)
                        .map(listen::Bound::Tcp)
                        .map_err(|e| self.why_not(&e, *a)),
                    ListenAddr::Unix(p) => listen::unix(p),
                };
                let bound = bound.map_err(|e| {
                    anyhow::anyhow!("listen[{i}]: cannot listen on {}: {e}", l.addr)
                })?;
                prepared.fresh.push((l.addr.clone(), bound));
            }
            let session = Arc::new(SessionConfig {
                hostname: cfg.hostname.clone(),
                max_line: cfg.limits.max_line_length,
                max_recipients: cfg.limits.max_recipients,
                max_message_size: cfg.limits.max_message_size,
                max_errors: cfg.limits.max_errors,
                idle_timeout: cfg.limits.idle_timeout,
                session_timeout: cfg.limits.session_timeout,
                tls_available: tls.is_some(),
                keep_in_memory: cfg.limits.message_in_memory,
            });
            let setup = Setup {
                session,
                tls,
                config: Arc::new(l.clone()),
                ctx: ctx.clone(),
            };
            prepared.setups.push((l.addr.clone(), setup));
        }
        Ok(prepared)
    }

    /// Serves a prepared configuration: new sessions of kept listeners get its setup, new
    /// listeners start, listeners no longer configured stop accepting (their sessions go on).
    pub fn apply(&mut self, prepared: Prepared) {
        let Prepared { setups, mut fresh } = prepared;
        let Some(alive) = self.alive.clone() else {
            return;
        };
        let wanted: Vec<ListenAddr> = setups.iter().map(|(a, _)| a.clone()).collect();
        self.running.retain(|(addr, r)| {
            let keep = wanted.contains(addr);
            if !keep {
                r.task.abort();
                listen::remove_file(&r.bound);
                tracing::info!(addr = %r.bound, "listener on {} closed", r.bound);
            }
            keep
        });
        for (addr, setup) in setups {
            if let Some((_, r)) = self.running.iter().find(|(a, _)| *a == addr) {
                r.setup.store(Arc::new(setup));
                continue;
            }
            let Some(pos) = fresh.iter().position(|(a, _)| *a == addr) else {
                continue;
            };
            let (_, listener) = fresh.swap_remove(pos);
            let bound = listener.local(&addr);
            let tls = match (setup.config.protocol, setup.tls.is_some()) {
                (Protocol::Policy, _) => "Postfix policy service",
                (Protocol::Milter, _) => "milter",
                (Protocol::Smtp, true) => "STARTTLS",
                (Protocol::Smtp, false) => "no TLS",
            };
            let relay = if setup.config.relay_from.is_empty() {
                ""
            } else {
                ", relay_from"
            };
            tracing::info!(addr = %bound, "listening on {bound} ({tls}{relay})");
            let setup = Arc::new(ArcSwap::from_pointee(setup));
            let task = tokio::spawn(accept_loop(
                listener,
                setup.clone(),
                self.shutdown.clone(),
                alive.clone(),
            ));
            self.running.push((addr, Running { bound, setup, task }));
        }
    }

    /// Stops accepting (the gateway is stopping): from now on only the sessions hold the
    /// `alive` sender, so its receiver learns when the last one ends.
    pub fn stop_accepting(&mut self) {
        self.alive = None;
        for (_, r) in &self.running {
            r.task.abort();
            listen::remove_file(&r.bound);
        }
    }

    /// Why `addr` cannot be bound, and what to do: a port backstop holds itself under
    /// another address cannot move by a reload.
    fn why_not(&self, e: &std::io::Error, addr: SocketAddr) -> String {
        let ours = self
            .running
            .iter()
            .find(|(_, r)| matches!(r.bound, ListenAddr::Inet(b) if b.port() == addr.port()));
        match ours {
            Some((_, r)) if e.kind() == std::io::ErrorKind::AddrInUse => format!(
                "{e}: backstop itself listens on {} (moving a listener between a specific \
                 address and the wildcard on one port needs a restart)",
                r.bound
            ),
            _ => listen::hint(e, addr),
        }
    }

    /// The addresses bound, in configuration order.
    pub fn addrs(&self) -> Vec<ListenAddr> {
        self.running.iter().map(|(_, r)| r.bound.clone()).collect()
    }
}

/// Accepts clients until `shutdown` turns true; each session gets the setup current when it
/// connected.
async fn accept_loop(
    listener: listen::Bound,
    setup: Arc<ArcSwap<Setup>>,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => {
                    let (setup, sd, alive) = (setup.load_full(), shutdown.clone(), alive.clone());
                    tokio::spawn(async move {
                        serve(accepted, &setup, sd).await;
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

/// One connection, in its listener's protocol (SMTP only on TCP: the configuration sees to it).
async fn serve(accepted: listen::Accepted, setup: &Setup, sd: watch::Receiver<bool>) {
    use listen::Accepted::{Tcp, Unix};
    let unix = || setup.config.addr.to_string();
    match (setup.config.protocol, accepted) {
        (Protocol::Smtp, Tcp(stream, peer)) => driver::run(stream, peer, setup, sd).await,
        (Protocol::Smtp, Unix(_)) => {}
        (Protocol::Policy, Tcp(stream, peer)) => {
            postfix_policy::run(stream, &peer.to_string(), setup, sd).await
        }
        (Protocol::Policy, Unix(stream)) => postfix_policy::run(stream, &unix(), setup, sd).await,
        (Protocol::Milter, Tcp(stream, peer)) => {
            milter::run(stream, &peer.to_string(), setup, sd).await
        }
        (Protocol::Milter, Unix(stream)) => milter::run(stream, &unix(), setup, sd).await,
    }
}

/// The next bytes from an MTA's connection (policy, milter); None when it closed, failed,
/// stayed idle for `idle`, or the gateway stops.
async fn read_or_stop(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
    idle: std::time::Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    tokio::select! {
        r = tokio::time::timeout(idle, stream.read(buf)) => match r {
            Ok(Ok(n)) if n > 0 => Some(n),
            _ => None,
        },
        _ = shutdown.wait_for(|s| *s) => None,
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
