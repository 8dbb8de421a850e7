//! SMTP delivery of one message to one destination: finding and connecting to its hosts
//! (static `smtp:HOST:PORT` or MX), opportunistic STARTTLS, connection reuse, and the
//! transaction with per-recipient answers.
//!
//! Responsible for: at most `destination_concurrency` connections per destination, keeping
//! clean connections for the next message a few seconds, and turning every way an attempt ends
//! into an [`Outcome`] per recipient.
//! Not responsible for: what an outcome means (classify) or recording it (the queue).

use super::classify::Outcome;
use super::mx::MxResolver;
use crate::config::HostPort;
use crate::queue::{Lease, LeasedRcpt};
use crate::upstream::{Connection, StartTlsError, UpstreamError};
use backstop_proto::address::{Domain, ForwardPath};
use backstop_proto::smtp::command::MailParams;
use backstop_proto::smtp::reply::Reply;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// How long a clean connection is kept for the next message (Postfix: 2 s).
pub const IDLE_MAX: Duration = Duration::from_secs(5);

/// Where a destination's hosts come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A fixed host.
    Smtp(HostPort),
    /// The domain's MX hosts.
    Mx(Domain),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Smtp(hp) => write!(f, "smtp:{hp}"),
            Dest::Mx(d) => write!(f, "mx:{d}"),
        }
    }
}

/// Connection settings.
pub struct Settings {
    /// Our EHLO name.
    pub helo: String,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// Port of MX hosts.
    pub mx_port: u16,
    /// Opportunistic TLS, if enabled.
    pub tls: Option<TlsConnector>,
    /// Connections per destination.
    pub per_destination: usize,
}

struct Slot {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Connection>>,
}

/// Connections per destination.
pub struct Destinations {
    settings: Settings,
    resolver: MxResolver,
    slots: Mutex<HashMap<Dest, Arc<Slot>>>,
}

impl Destinations {
    /// No connections yet.
    pub fn new(settings: Settings, resolver: MxResolver) -> Destinations {
        Destinations {
            settings,
            resolver,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, d: &Dest) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(d.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    permits: Arc::new(Semaphore::new(self.settings.per_destination)),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Closes connections idle for longer than [`IDLE_MAX`].
    pub fn sweep(&self) {
        let slots: Vec<Arc<Slot>> = {
            let s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            s.values().cloned().collect()
        };
        for slot in slots {
            let old: Vec<Connection> = {
                let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (old, keep) = idle
                    .drain(..)
                    .partition(|c| c.idle_since.elapsed() > IDLE_MAX);
                *idle = keep;
                old
            };
            for c in old {
                tokio::spawn(c.quit());
            }
        }
    }

    /// Delivers `body` to `rcpts` of `lease` at `dest`: one outcome per recipient, in order.
    pub async fn deliver(
        &self,
        dest: &Dest,
        lease: &Lease,
        rcpts: &[&LeasedRcpt],
        body: &[u8],
    ) -> Vec<Outcome> {
        let slot = self.slot(dest);
        let Ok(_permit) = slot.permits.clone().acquire_owned().await else {
            return rcpts
                .iter()
                .map(|_| Outcome::Local("shutting down".into()))
                .collect();
        };
        let idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut conn, reused) = match idle {
            Some(c) if c.idle_since.elapsed() <= IDLE_MAX => (c, true),
            stale => {
                if let Some(c) = stale {
                    tokio::spawn(c.quit());
                }
                match self.connect(dest).await {
                    Ok(c) => (c, false),
                    Err(o) => return fan_out(o, rcpts.len()),
                }
            }
        };
        let mut result = transaction(&mut conn, lease, rcpts, body).await;
        if reused && matches!(result, Err(Early::Stale(_))) {
            // the server closed the kept connection meanwhile: nothing was taken, so a fresh
            // connection is safe
            match self.connect(dest).await {
                Ok(c) => {
                    conn = c;
                    result = transaction(&mut conn, lease, rcpts, body).await;
                }
                Err(o) => return fan_out(o, rcpts.len()),
            }
        }
        match result {
            Ok(outcomes) => {
                conn.idle_since = Instant::now();
                conn.transactions += 1;
                slot.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
                outcomes
            }
            Err(Early::Stale(e) | Early::Broken(e)) => fan_out(Outcome::Upstream(e), rcpts.len()),
        }
    }

    /// Connects to the first host of `dest` that answers, with STARTTLS when offered.
    async fn connect(&self, dest: &Dest) -> Result<Connection, Outcome> {
        let s = &self.settings;
        let hosts: Vec<(String, Vec<std::net::SocketAddr>)> = match dest {
            Dest::Smtp(hp) => {
                let addrs = tokio::net::lookup_host((hp.host.as_str(), hp.port))
                    .await
                    .map_err(|e| Outcome::Upstream(UpstreamError::Connect(hp.to_string(), e)))?;
                vec![(hp.host.clone(), addrs.collect())]
            }
            Dest::Mx(d) => self
                .resolver
                .targets(d.as_str(), s.mx_port)
                .await
                .map_err(Outcome::Dns)?
                .into_iter()
                .map(|h| (h.name, h.addrs))
                .collect(),
        };
        let mut last = None;
        for (name, addrs) in hosts {
            for addr in addrs {
                match self.open(addr, &name).await {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::debug!(dest = %dest, %addr, error = %e, "host not usable");
                        last = Some(e);
                    }
                }
            }
        }
        Err(Outcome::Upstream(last.unwrap_or_else(|| {
            UpstreamError::Closed(format!("{dest}: no addresses"))
        })))
    }

    async fn open(
        &self,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> Result<Connection, UpstreamError> {
        let s = &self.settings;
        let c = Connection::open_addr(addr, name, &s.helo, s.timeout).await?;
        let Some(tls) = s.tls.as_ref().filter(|_| c.capabilities().starttls) else {
            return Ok(c);
        };
        match c.starttls(tls, name, &s.helo).await {
            Ok(c) => Ok(c),
            Err(StartTlsError::Refused(c, _)) => Ok(*c),
            Err(StartTlsError::Failed(UpstreamError::Tls(t, e))) => {
                // like Postfix with `may`: a failed handshake means plaintext on a new connection
                tracing::info!(target = %t, error = %e, "TLS handshake failed; delivering without TLS");
                Connection::open_addr(addr, name, &s.helo, s.timeout).await
            }
            Err(StartTlsError::Failed(e)) => Err(e),
        }
    }
}

fn fan_out(o: Outcome, n: usize) -> Vec<Outcome> {
    let detail = o.detail();
    let mut out = Vec::with_capacity(n);
    out.push(o);
    // the same failure for every recipient; the first keeps the typed error
    out.extend((1..n).map(|_| Outcome::Local(detail.clone())));
    out
}

/// How a transaction ended without per-recipient answers.
enum Early {
    /// Broken before the server answered anything: safe to repeat elsewhere.
    Stale(UpstreamError),
    /// Broken later.
    Broken(UpstreamError),
}

/// MAIL, RCPTs (pipelined when offered), DATA and the message on an open connection.
async fn transaction(
    conn: &mut Connection,
    lease: &Lease,
    rcpts: &[&LeasedRcpt],
    body: &[u8],
) -> Result<Vec<Outcome>, Early> {
    let params = MailParams {
        size: Some(body.len() as u64),
        ..lease.params.clone()
    };
    let pipelining = conn.capabilities().pipelining;
    conn.client().mail(&lease.from, &params);
    if !pipelining {
        let m = conn.reply().await.map_err(Early::Stale)?;
        if !m.is_success() {
            return Ok(refused_all(conn, m, rcpts.len()).await);
        }
    }
    let mut answers = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        conn.client()
            .rcpt(&ForwardPath::Mailbox(r.mailbox.clone()), &r.params);
        if !pipelining {
            answers.push(conn.reply().await.map_err(Early::Broken)?);
        }
    }
    if pipelining {
        let m = conn.reply().await.map_err(Early::Stale)?;
        for _ in rcpts {
            answers.push(conn.reply().await.map_err(Early::Broken)?);
        }
        if !m.is_success() {
            return Ok(refused_all(conn, m, rcpts.len()).await);
        }
    }
    if !answers.iter().any(Reply::is_success) {
        rset(conn).await?;
        return Ok(answers.into_iter().map(Outcome::Reply).collect());
    }
    conn.client().data();
    let d = conn.reply().await.map_err(Early::Broken)?;
    let last = if d.code == 354 {
        conn.client().message(&[body]);
        conn.reply().await.map_err(Early::Broken)?
    } else {
        rset(conn).await?;
        d
    };
    Ok(answers
        .into_iter()
        .map(|a| Outcome::Reply(if a.is_success() { last.clone() } else { a }))
        .collect())
}

async fn refused_all(conn: &mut Connection, r: Reply, n: usize) -> Vec<Outcome> {
    let _ = rset(conn).await;
    (0..n).map(|_| Outcome::Reply(r.clone())).collect()
}

async fn rset(conn: &mut Connection) -> Result<(), Early> {
    conn.client().rset();
    let r = conn.reply().await.map_err(Early::Broken)?;
    if r.is_success() {
        Ok(())
    } else {
        Err(Early::Broken(UpstreamError::Refused(
            conn.target().to_string(),
            r,
        )))
    }
}
