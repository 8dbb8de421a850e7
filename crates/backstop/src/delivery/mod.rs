//! The delivery engine: takes due messages from the queue, sends each recipient to its next hop
//! (a domain's internal server, a static route, the MX hosts, or a Maildir), and records what
//! happened.
//!
//! Responsible for: leasing due messages, grouping recipients by destination, per-destination
//! and total connection limits, the retry schedule and expiry, and one event per recipient
//! and attempt.
//! Not responsible for: durability (the queue), accepting mail (inbound), or delivery reports
//! (it hands each message to notify after each pass).

pub mod classify;
pub mod mx;
pub mod smtp;

use crate::backscatter::Tags;
use crate::clock::Clock;
use crate::config::{Config, NextHop};
use crate::notify::Notifier;
use crate::queue::{Lease, LeasedRcpt, Spool, Status};
use crate::relay::maildir;
use crate::reputation::Reputation;
use crate::senders::{Finished, Watch};
use crate::telemetry::Event;
use backstop_proto::smtp::reply::Enhanced;
use classify::{Class, Outcome, backoff, classify, diagnose};
use futures_util::future::join_all;
use smtp::{Dest, Destinations, Settings};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Longest sleep between looks at the queue (a safety net; new mail wakes the engine).
const POLL: Duration = Duration::from_secs(1);
/// Messages leased per look.
const BATCH: usize = 256;

/// Where a group of recipients goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Hop {
    Smtp(Dest),
    Maildir(PathBuf),
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Smtp(d) => d.fmt(f),
            Hop::Maildir(p) => write!(f, "maildir:{}", p.display()),
        }
    }
}

/// The running engine.
pub struct Engine {
    spool: Arc<Spool>,
    cfg: Arc<Config>,
    clock: Arc<dyn Clock>,
    dests: Destinations,
    inflight: Arc<Semaphore>,
    notifier: Arc<Notifier>,
    tags: Arc<Tags>,
    watch: Arc<Watch>,
    reputation: Arc<Reputation>,
}

impl Engine {
    /// An engine for the queue in `spool`.
    pub fn new(
        spool: Arc<Spool>,
        cfg: Arc<Config>,
        clock: Arc<dyn Clock>,
        resolver: mx::MxResolver,
        notifier: Arc<Notifier>,
        (tags, watch, reputation): (Arc<Tags>, Arc<Watch>, Arc<Reputation>),
    ) -> Engine {
        let d = &cfg.delivery;
        let settings = Settings {
            helo: cfg.hostname.clone(),
            timeout: d.timeout,
            mx_port: d.smtp_port,
            tls: d.starttls.then(crate::upstream::opportunistic_tls),
            per_destination: d.destination_concurrency,
        };
        Engine {
            inflight: Arc::new(Semaphore::new(d.max_connections)),
            dests: Destinations::new(settings, resolver),
            spool,
            cfg,
            clock,
            notifier,
            tags,
            watch,
            reputation,
        }
    }

    /// Delivers until `shutdown` turns true; attempts in flight are abandoned then (their
    /// messages stay queued and are tried again after a restart).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = self.clock.unix();
            let free = self.inflight.available_permits().min(BATCH);
            let leases = if free > 0 {
                self.spool.take_due(now, free)
            } else {
                Vec::new()
            };
            let full = leases.len() == BATCH;
            for lease in leases {
                let Ok(permit) = self.inflight.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.deliver(lease).await;
                    drop(permit);
                    // a free slot: more due mail may be waiting for it
                    me.spool.wake.notify_one();
                });
            }
            self.dests.sweep();
            if full {
                continue;
            }
            let wait = match self.spool.next_due() {
                Some(t) if self.inflight.available_permits() > 0 => {
                    Duration::from_secs(t.saturating_sub(now)).min(POLL)
                }
                Some(_) | None => POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.spool.wake.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One attempt for the due recipients of one message.
    async fn deliver(&self, lease: Lease) {
        let body = match self.spool.body(&lease).await {
            Ok(b) => b,
            Err(e) => {
                let o = Outcome::Local(format!("spool read: {e}"));
                let results = (0..lease.rcpts.len())
                    .map(|i| (i, "spool".to_string(), o.clone(), Duration::ZERO))
                    .collect();
                return self.record(lease, results).await;
            }
        };
        // recipients by destination, as positions in the lease
        let mut groups: HashMap<Hop, Vec<usize>> = HashMap::new();
        for (i, r) in lease.rcpts.iter().enumerate() {
            groups.entry(self.hop(r)).or_default().push(i);
        }
        // mail that leaves carries a BATV-signed return path where the sender's domain signs
        let signed = self.tags.sign(&self.cfg, &lease.from, self.clock.unix());
        let attempts = groups.into_iter().map(|(hop, positions)| {
            let (lease, body, signed) = (&lease, &body, &signed);
            async move {
                let rcpts: Vec<&LeasedRcpt> = positions.iter().map(|&i| &lease.rcpts[i]).collect();
                let leaves = rcpts
                    .iter()
                    .any(|r| self.cfg.domain(r.mailbox.domain()).is_none());
                let from = if leaves { signed } else { &lease.from };
                let started = std::time::Instant::now();
                let outcomes = match &hop {
                    Hop::Smtp(dest) => self.dests.deliver(dest, lease, from, &rcpts, body).await,
                    Hop::Maildir(dir) => self.to_maildir(dir, lease, &rcpts, body).await,
                };
                let (name, took) = (hop.to_string(), started.elapsed());
                positions
                    .into_iter()
                    .zip(outcomes)
                    .map(|(i, o)| (i, name.clone(), o, took))
                    .collect::<Vec<_>>()
            }
        });
        let results = join_all(attempts).await.into_iter().flatten().collect();
        self.record(lease, results).await;
    }

    fn hop(&self, r: &LeasedRcpt) -> Hop {
        let domain = r.mailbox.domain();
        match self.cfg.route(domain) {
            NextHop::Smtp(hp) => Hop::Smtp(Dest::Smtp(hp)),
            NextHop::Mx => Hop::Smtp(Dest::Mx(domain.clone())),
            NextHop::Maildir(p) => Hop::Maildir(p),
        }
    }

    async fn to_maildir(
        &self,
        dir: &std::path::Path,
        lease: &Lease,
        rcpts: &[&LeasedRcpt],
        body: &[u8],
    ) -> Vec<Outcome> {
        let (dir, from, id) = (dir.to_path_buf(), lease.from.clone(), lease.id.clone());
        let mailboxes: Vec<_> = rcpts.iter().map(|r| r.mailbox.clone()).collect();
        let (body, hostname, unix) = (body.to_vec(), self.cfg.hostname.clone(), self.clock.unix());
        let result = tokio::task::spawn_blocking(move || {
            let d = maildir::Delivery {
                from: &from,
                rcpts: &mailboxes,
                trace: b"",
                body: &body,
                id: &id,
                unix,
                hostname: &hostname,
            };
            maildir::deliver(&dir, &d)
        })
        .await;
        let one = |_| match &result {
            Ok(Ok(files)) => Outcome::Stored(format!("{} file(s)", files.len())),
            Ok(Err(e)) => Outcome::Local(format!("maildir: {e}")),
            Err(e) => Outcome::Local(format!("maildir: {e}")),
        };
        rcpts.iter().map(one).collect()
    }

    /// Turns outcomes (by position in the lease) into statuses, with the retry schedule and
    /// expiry, and stores them.
    async fn record(&self, lease: Lease, results: Vec<(usize, String, Outcome, Duration)>) {
        let now = self.clock.unix();
        let expired = now
            >= lease
                .arrived
                .saturating_add(self.cfg.delivery.max_age.as_secs());
        let mut updates = Vec::with_capacity(results.len());
        let mut watched = Vec::new();
        for (i, hop, outcome, latency) in results {
            let r = &lease.rcpts[i];
            let detail = outcome.detail();
            let (status, result) = self.status(&outcome, &detail, r.attempts + 1, expired, now);
            Event::Attempt {
                id: &lease.id,
                rcpt: &r.mailbox,
                next_hop: &hop,
                result,
                attempts: r.attempts + 1,
                detail: &detail,
                latency,
            }
            .emit();
            let how = self.watched(&lease, r, &outcome, result, &detail);
            if let Some(Finished::Failed { blocked: true }) = how {
                let dest = r.mailbox.domain().as_str();
                self.reputation.refused_as_blocked(dest, &detail, now).await;
            }
            watched.extend(how);
            updates.push((r.index, status));
        }
        let (id, from) = (lease.id.clone(), lease.from.clone());
        self.spool.finish(lease, updates).await;
        // after the spool knows: a hold then leaves this finished message alone
        if let Some(sender) = from.mailbox() {
            for how in watched {
                if let Err(e) = self.watch.finished(sender, how, now).await {
                    tracing::warn!(error = %e, "sender watch not updated: store failed");
                }
            }
        }
        self.notifier.settle(&id).await;
    }

    /// What the sender watch learns from how a recipient ended: only outbound recipients of
    /// local senders that are done (delivered, failed, expired).
    fn watched(
        &self,
        lease: &Lease,
        r: &LeasedRcpt,
        outcome: &Outcome,
        result: &str,
        detail: &str,
    ) -> Option<Finished> {
        let sender = lease.from.mailbox()?;
        let local = |d: &backstop_proto::address::Domain| self.cfg.domain(d).is_some();
        if !local(sender.domain()) || local(r.mailbox.domain()) {
            return None;
        }
        match (result, outcome) {
            ("delivered", _) => Some(Finished::Delivered),
            ("failed", Outcome::Reply(reply, _)) => {
                Some(Finished::failed(Some(reply.code), detail))
            }
            ("failed" | "expired", _) => Some(Finished::failed(None, detail)),
            _ => None,
        }
    }

    /// A recipient's new status after its `attempts`-th attempt ended in `outcome` (described
    /// by `detail`), and the word for the log.
    fn status(
        &self,
        outcome: &Outcome,
        detail: &str,
        attempts: u32,
        expired: bool,
        now: u64,
    ) -> (Status, &'static str) {
        let d = &self.cfg.delivery;
        let detail = detail.to_string();
        let diagnosis = diagnose(outcome);
        let failed = |reason: String, code: Enhanced| Status::Failed {
            at: now,
            reason,
            code: Some(code.to_string()),
            remote: diagnosis.remote.clone(),
            diagnostic: diagnosis.smtp.clone(),
        };
        match classify(outcome) {
            Class::Delivered => (
                Status::Delivered {
                    at: now,
                    reply: detail,
                    action: success_action(outcome),
                    remote: diagnosis.remote.clone(),
                },
                "delivered",
            ),
            Class::Permanent => (failed(detail, diagnosis.status), "failed"),
            Class::Temporary if expired => {
                let reason = format!(
                    "expired: undelivered for {}; last error: {detail}",
                    crate::config::format_duration(d.max_age)
                );
                // RFC 3463 X.4.7: delivery time expired
                (failed(reason, Enhanced::new(4, 4, 7)), "expired")
            }
            Class::Temporary => (
                Status::Queued {
                    attempts,
                    next_attempt: now + backoff(attempts, d.retry_min, d.retry_max).as_secs(),
                    last: Some(detail),
                },
                "deferred",
            ),
        }
    }
}

/// For a delivered recipient: the success report's Action if the report is ours to send
/// (RFC 3461 §5.2.2): `delivered` when we stored it, `relayed` when the next hop did not take the
/// DSN request; `None` when it did.
fn success_action(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Stored(_) => Some("delivered".into()),
        Outcome::Reply(_, remote) => (!remote.dsn).then(|| "relayed".into()),
        Outcome::Dns(_) | Outcome::Upstream(_) | Outcome::Local(_) => None,
    }
}
