//! The call-out probe itself: ask an internal server whether it would take an address
//! (`MAIL FROM:<>`, `RCPT TO:<addr>`, `RSET`) over pooled, kept-alive connections.
//!
//! Responsible for: running one probe and turning the server's answer into a [`ProbeAnswer`];
//! retiring connections before the server's error limits make it slow or hang up.
//! Not responsible for: caching, single-flight or budgets (see `callout`).

use crate::config::HostPort;
use crate::upstream::{Pool, Pooled, Pools, UpstreamError};
use async_trait::async_trait;
use backstop_proto::address::{ForwardPath, Mailbox, ReversePath};
use backstop_proto::smtp::command::{MailParams, RcptParams};
use backstop_proto::smtp::reply::{Reply, ReplyClass};
use std::time::Duration;

/// What the internal server said about an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// RCPT got 2xx.
    Valid(String),
    /// RCPT got 5xx.
    Invalid(String),
    /// Anything else: 4xx, the probe sender refused, no connection, a timeout.
    Failed(String),
}

impl ProbeAnswer {
    /// `valid`, `invalid` or `failed`, and the server's reply (or what went wrong).
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            ProbeAnswer::Valid(r) => ("valid", r),
            ProbeAnswer::Invalid(r) => ("invalid", r),
            ProbeAnswer::Failed(r) => ("failed", r),
        }
    }
}

/// Something that can probe an address at an internal server.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Asks `target` about `addr`.
    async fn probe(&self, target: &HostPort, addr: &Mailbox) -> ProbeAnswer;
}

/// Probes after which a connection is retired (Postfix counts RSETs as junk after 100).
const MAX_PROBES_PER_CONNECTION: u32 = 50;

/// Probes over SMTP, with a connection pool per internal server.
pub struct SmtpProber {
    sender: ReversePath,
    timeout: Duration,
    pools: Pools,
}

impl SmtpProber {
    /// A prober that says `helo` and sends probes from `sender`.
    pub fn new(
        sender: ReversePath,
        helo: &str,
        timeout: Duration,
        max_connections: usize,
    ) -> SmtpProber {
        SmtpProber {
            sender,
            timeout,
            pools: Pools::new(helo, timeout, max_connections),
        }
    }

    async fn attempt(
        &self,
        pool: &Pool,
        fresh: bool,
        addr: &Mailbox,
    ) -> Result<(ProbeAnswer, Option<Pooled>), (bool, String)> {
        let mut p = pool.get(fresh).await.map_err(|e| (false, e.to_string()))?;
        let reused = p.reused;
        match tokio::time::timeout(self.timeout, run(&mut p, &self.sender, addr)).await {
            Ok(Ok((answer, reusable))) => Ok((answer, reusable.then_some(p))),
            Ok(Err(e)) => Err((reused, e.to_string())),
            Err(_) => Err((false, format!("{}: probe timed out", pool.target()))),
        }
    }
}

#[async_trait]
impl Prober for SmtpProber {
    async fn probe(&self, target: &HostPort, addr: &Mailbox) -> ProbeAnswer {
        let pool = self.pools.get(target);
        let mut fresh = false;
        loop {
            match self.attempt(&pool, fresh, addr).await {
                Ok((answer, keep)) => {
                    if let Some(p) = keep {
                        pool.put(p);
                    }
                    return answer;
                }
                // a kept connection the server has meanwhile closed: try once on a new one
                Err((true, _)) if !fresh => fresh = true,
                Err((_, why)) => return ProbeAnswer::Failed(why),
            }
        }
    }
}

/// One probe on one connection. Returns the answer and whether the connection may be reused.
async fn run(
    p: &mut Pooled,
    sender: &ReversePath,
    addr: &Mailbox,
) -> Result<(ProbeAnswer, bool), UpstreamError> {
    let c = &mut p.conn;
    let pipelining = c.capabilities().pipelining;
    c.client().mail(sender, &MailParams::default());
    if pipelining {
        c.client()
            .rcpt(&ForwardPath::Mailbox(addr.clone()), &RcptParams::default());
        c.client().rset();
    }
    let mail = c.reply().await?;
    let rcpt = if pipelining {
        Some(c.reply().await?)
    } else if mail.is_success() {
        c.client()
            .rcpt(&ForwardPath::Mailbox(addr.clone()), &RcptParams::default());
        Some(c.reply().await?)
    } else {
        None
    };
    if !pipelining {
        c.client().rset();
    }
    let rset = c.reply().await?;
    c.transactions += 1;
    let answer = match (mail.is_success(), rcpt) {
        (false, _) => ProbeAnswer::Failed(format!("{}: probe sender refused: {mail}", c.target())),
        (true, None) => ProbeAnswer::Failed(format!("{}: no RCPT reply", c.target())),
        (true, Some(r)) => classify(&r),
    };
    if matches!(answer, ProbeAnswer::Invalid(_)) || !mail.is_success() {
        c.refusals += 1;
    }
    let reusable = rset.is_success()
        && c.refusals < crate::upstream::MAX_REFUSALS
        && c.transactions < MAX_PROBES_PER_CONNECTION;
    Ok((answer, reusable))
}

fn classify(r: &Reply) -> ProbeAnswer {
    match r.class() {
        ReplyClass::Success => ProbeAnswer::Valid(r.to_string()),
        ReplyClass::Permanent => ProbeAnswer::Invalid(r.to_string()),
        ReplyClass::Transient | ReplyClass::Intermediate => ProbeAnswer::Failed(r.to_string()),
    }
}
