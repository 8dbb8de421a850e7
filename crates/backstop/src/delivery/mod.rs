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
pub mod dane;
pub mod mta_sts;
pub mod mx;
pub mod smtp;

use crate::backscatter::Tags;
use crate::clock::Clock;
use crate::config::{Config, NextHop};
use crate::content::Content;
use crate::health::{Backends, Role};
use crate::notify::Notifier;
use crate::policy::callout::{Callout, Heard};
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Longest sleep between looks at the queue (a safety net; new mail wakes the engine).
const POLL: Duration = Duration::from_secs(1);
/// Messages leased per look.
const BATCH: usize = 256;

/// Where a group of recipients goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Hop {
    /// An SMTP destination, with the TLS its route demands.
    Smtp(Dest, Option<crate::config::TlsMode>),
    Maildir(PathBuf),
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Smtp(d, _) => d.fmt(f),
            Hop::Maildir(p) => write!(f, "maildir:{}", p.display()),
        }
    }
}

/// What delivery takes from one configuration. A reload gives the engine a new one; a pass
/// already running finishes with the one it started with.
pub struct Setup {
    cfg: Arc<Config>,
    dests: Arc<Destinations>,
    tags: Arc<Tags>,
    watch: Arc<Watch>,
    reputation: Arc<Reputation>,
    /// Told when a next hop says one of our users does not exist (the call-out cache).
    callout: Option<Arc<Callout>>,
}

impl Setup {
    /// Delivery under `cfg`, resolving MX hosts with `resolver`, counting TLS sessions in
    /// `tls_results`.
    pub fn new(
        cfg: Arc<Config>,
        (resolver, tls_results): (mx::MxResolver, Arc<crate::tlsrpt::Ledger>),
        (tags, watch, reputation): (Arc<Tags>, Arc<Watch>, Arc<Reputation>),
    ) -> Setup {
        let d = &cfg.delivery;
        // checked when the configuration was read: a file gone since leaves this machine's CAs
        let roots = crate::upstream::tls::trust_roots(d.tls_ca.as_deref()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "delivery.tls_ca: only this machine's CAs are trusted");
            crate::upstream::tls::trust_roots(None)
                .unwrap_or_else(|_| rustls::RootCertStore::empty())
        });
        let roots = Arc::new(roots);
        let settings = Settings {
            helo: cfg.hostname.clone(),
            timeout: d.timeout,
            mx_port: d.smtp_port,
            tls: d.starttls.then(crate::upstream::opportunistic_tls),
            encrypt: crate::upstream::opportunistic_tls(),
            verified: crate::upstream::tls::verified_tls(roots.clone()),
            mta_sts: d.mta_sts.then(|| {
                let https = crate::upstream::tls::verified_tls(roots.clone());
                Arc::new(mta_sts::MtaSts::new(
                    https,
                    d.mta_sts_port,
                    d.timeout.min(MTA_STS_TIMEOUT),
                ))
            }),
            dane: d.dane.then(|| dane_resolver(&cfg)).flatten(),
            per_destination: d.destination_concurrency,
            tls_results,
        };
        Setup {
            dests: Arc::new(Destinations::new(settings, resolver)),
            cfg,
            tags,
            watch,
            reputation,
            callout: None,
        }
    }

    /// The TLS client that verifies certificates against this machine's CAs and `[delivery]
    /// tls_ca` (for other HTTPS requests of the gateway: TLS reports).
    pub fn verified_tls(&self) -> tokio_rustls::TlsConnector {
        self.dests.verified_tls()
    }

    /// Tells `callout` what the next hops say of our users (see [`Callout::heard`]).
    pub fn correcting(mut self, callout: Arc<Callout>) -> Setup {
        self.callout = Some(callout);
        self
    }

    /// Keeps `previous`'s connections and per-destination slots when the settings they
    /// depend on (`[delivery]`, `hostname`, `[dns]`) are the same.
    pub fn keeping(mut self, previous: &Setup) -> Setup {
        if previous.cfg.delivery == self.cfg.delivery
            && previous.cfg.hostname == self.cfg.hostname
            && previous.cfg.dns == self.cfg.dns
        {
            self.dests = previous.dests.clone();
        }
        self
    }
}

/// The DNSSEC-validating resolver DANE asks (trust anchor checked when the configuration was
/// read; a failure here leaves DANE off, with an error in the log).
fn dane_resolver(cfg: &Config) -> Option<Arc<mx::MxResolver>> {
    let dns = &cfg.dns;
    let anchor = dns.trust_anchor.as_deref();
    match mx::MxResolver::validating(dns.resolver, dns.timeout, dns.attempts, anchor) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::error!(error = %e, "DANE is off: no validating resolver");
            None
        }
    }
}

/// The longest an MTA-STS policy fetch may take (RFC 8461 §3.3 suggests about a minute).
const MTA_STS_TIMEOUT: Duration = Duration::from_secs(60);

/// The running engine.
pub struct Engine {
    spool: Arc<Spool>,
    clock: Arc<dyn Clock>,
    setup: arc_swap::ArcSwap<Setup>,
    /// Connections in use, at most `[delivery] max_connections`.
    inflight: Arc<Semaphore>,
    /// The number of permits `inflight` was made for (changed by a reload).
    permits: std::sync::Mutex<usize>,
    notifier: Arc<Notifier>,
    /// Told whether `smtp:` next hops could be reached.
    backends: Arc<Backends>,
    /// Set at shutdown: no new message is taken, no new transaction begun.
    stopping: AtomicBool,
}

impl Engine {
    /// An engine for the queue in `spool`.
    pub fn new(
        spool: Arc<Spool>,
        clock: Arc<dyn Clock>,
        (notifier, backends): (Arc<Notifier>, Arc<Backends>),
        setup: Setup,
    ) -> Engine {
        let max = setup.cfg.delivery.max_connections;
        Engine {
            inflight: Arc::new(Semaphore::new(max)),
            permits: std::sync::Mutex::new(max),
            setup: arc_swap::ArcSwap::from_pointee(setup),
            spool,
            clock,
            notifier,
            backends,
            stopping: AtomicBool::new(false),
        }
    }

    /// The setup passes started from now on use.
    pub fn setup(&self) -> Arc<Setup> {
        self.setup.load_full()
    }

    /// Delivers under a new configuration from now on (after a reload): passes in flight
    /// finish with the old one; the connection limit follows at once (a lower one as
    /// connections in use come back).
    pub fn reconfigure(&self, setup: Setup) {
        let setup = setup.keeping(&self.setup());
        let max = setup.cfg.delivery.max_connections;
        self.setup.store(Arc::new(setup));
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        if max > *permits {
            self.inflight.add_permits(max - *permits);
        } else if max < *permits {
            let (fewer, inflight) = ((*permits - max) as u32, self.inflight.clone());
            tokio::spawn(async move {
                if let Ok(p) = inflight.acquire_many(fewer).await {
                    p.forget();
                }
            });
        }
        *permits = max;
    }

    /// Delivers until `shutdown` turns true; then takes no new message and begins no new
    /// transaction ([`Engine::drain`] waits for those in flight).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                self.stopping.store(true, Ordering::SeqCst);
                return;
            }
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
            self.setup().dests.sweep();
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
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    }

    /// At shutdown: waits until every delivery in flight has ended (a transaction once begun
    /// is finished; recipients whose transaction had not begun are handed back untried), or
    /// `deadline` passes. The number still in flight then (0: all ended).
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let permits = *self.permits.lock().unwrap_or_else(|e| e.into_inner());
        let all = self.inflight.acquire_many(permits as u32);
        match tokio::time::timeout_at(deadline, all).await {
            Ok(_) => 0,
            Err(_) => permits.saturating_sub(self.inflight.available_permits()),
        }
    }

    /// One attempt for the due recipients of one message.
    async fn deliver(&self, lease: Lease) {
        let s = self.setup();
        let s = s.as_ref();
        // read a piece at a time while it is sent: a large message is never whole in memory
        let body = match self.spool.content(&lease) {
            Ok(b) => b,
            Err(e) => {
                let o = Outcome::Local(format!("spool read: {e}"));
                let results = (0..lease.rcpts.len())
                    .map(|i| (i, "spool".to_string(), o.clone(), Duration::ZERO))
                    .collect();
                return self.record(s, lease, results).await;
            }
        };
        // recipients by destination, as positions in the lease
        let mut groups: HashMap<Hop, Vec<usize>> = HashMap::new();
        for (i, r) in lease.rcpts.iter().enumerate() {
            groups.entry(hop(&s.cfg, r)).or_default().push(i);
        }
        // mail that leaves carries a BATV-signed return path where the sender's domain signs
        let signed = s.tags.sign(&s.cfg, &lease.from, self.clock.unix());
        let attempts = groups.into_iter().map(|(hop, positions)| {
            let (lease, body, signed) = (&lease, &body, &signed);
            async move {
                let rcpts: Vec<&LeasedRcpt> = positions.iter().map(|&i| &lease.rcpts[i]).collect();
                let leaves = rcpts
                    .iter()
                    .any(|r| s.cfg.domain(r.mailbox.domain()).is_none());
                let from = if leaves { signed } else { &lease.from };
                let started = std::time::Instant::now();
                let outcomes = match &hop {
                    Hop::Smtp(dest, tls) => {
                        let (stopping, now) = (&self.stopping, self.clock.unix());
                        s.dests
                            .deliver((dest, *tls, now), lease, (from, &rcpts), body, stopping)
                            .await
                    }
                    Hop::Maildir(_) if self.stopping.load(Ordering::SeqCst) => None,
                    Hop::Maildir(dir) => Some(self.to_maildir(s, dir, lease, &rcpts, body).await),
                };
                let Some(outcomes) = outcomes else {
                    Event::HandedBack {
                        id: &lease.id,
                        next_hop: &hop.to_string(),
                        rcpts: rcpts.len(),
                    }
                    .emit();
                    return Vec::new();
                };
                if let Hop::Smtp(Dest::Smtp(target), _) = &hop {
                    self.tell_health(target, &outcomes);
                }
                let (name, took) = (hop.to_string(), started.elapsed());
                positions
                    .into_iter()
                    .zip(outcomes)
                    .map(|(i, o)| (i, name.clone(), o, took))
                    .collect::<Vec<_>>()
            }
        });
        let results: Vec<_> = join_all(attempts).await.into_iter().flatten().collect();
        if results.is_empty() {
            // nothing was tried (stopping): the message stays due, as it was
            return self.spool.hand_back(lease);
        }
        self.record(s, lease, results).await;
    }

    /// A next hop that says one of our users does not exist (5.1.x) corrects the call-out
    /// cache at once, rather than when the cached "valid" expires.
    async fn correct_cache(&self, s: &Setup, rcpt: &backstop_proto::address::Mailbox, o: &Outcome) {
        let (Some(callout), Outcome::Reply(reply, _)) = (&s.callout, o) else {
            return;
        };
        if let Some(h @ Heard::Unknown(_)) = Heard::of(reply)
            && s.cfg.domain(rcpt.domain()).is_some()
        {
            callout.heard(rcpt, h, "delivery").await;
        }
    }

    /// Tells the health watch whether a next hop could be reached: any reply says it was.
    fn tell_health(&self, target: &crate::config::HostPort, outcomes: &[Outcome]) {
        let target = &crate::health::Target::Smtp(target.clone());
        match outcomes.iter().any(|o| matches!(o, Outcome::Reply(..))) {
            true => self
                .backends
                .answered(Role::NextHop, target, self.clock.unix()),
            false => self.backends.unreachable(Role::NextHop, target),
        }
    }

    async fn to_maildir(
        &self,
        s: &Setup,
        dir: &std::path::Path,
        lease: &Lease,
        rcpts: &[&LeasedRcpt],
        body: &Content,
    ) -> Vec<Outcome> {
        let (dir, from, id) = (dir.to_path_buf(), lease.from.clone(), lease.id.clone());
        let mailboxes: Vec<_> = rcpts.iter().map(|r| r.mailbox.clone()).collect();
        let (body, hostname, unix) = (body.clone(), s.cfg.hostname.clone(), self.clock.unix());
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
    async fn record(
        &self,
        s: &Setup,
        lease: Lease,
        results: Vec<(usize, String, Outcome, Duration)>,
    ) {
        let now = self.clock.unix();
        let expired = now
            >= lease
                .arrived
                .saturating_add(s.cfg.delivery.max_age.as_secs());
        let mut updates = Vec::with_capacity(results.len());
        let mut watched = Vec::new();
        for (i, hop, outcome, latency) in results {
            let r = &lease.rcpts[i];
            let detail = outcome.detail();
            let (status, result) = status(s, &outcome, &detail, r.attempts + 1, expired, now);
            let dsn = match &status {
                Status::Failed { code: Some(c), .. } => c.clone(),
                _ => diagnose(&outcome).status.to_string(),
            };
            Event::Attempt {
                id: &lease.id,
                rcpt: &r.mailbox,
                next_hop: &hop,
                result,
                dsn: &dsn,
                attempts: r.attempts + 1,
                delay: Duration::from_secs(now.saturating_sub(lease.arrived)),
                detail: &detail,
                latency,
            }
            .emit();
            self.correct_cache(s, &r.mailbox, &outcome).await;
            let how = what_watch_learns(&s.cfg, &lease, r, &outcome, result, &detail);
            if let Some(Finished::Failed { blocked: true }) = how {
                let dest = r.mailbox.domain().as_str();
                s.reputation.refused_as_blocked(dest, &detail, now).await;
            }
            watched.extend(how);
            updates.push((r.index, status));
        }
        let (id, from) = (lease.id.clone(), lease.from.clone());
        self.spool.finish(lease, updates).await;
        // after the spool knows: a hold then leaves this finished message alone
        if let Some(sender) = from.mailbox() {
            for how in watched {
                if let Err(e) = s.watch.finished(sender, how, now).await {
                    tracing::warn!(error = %e, "sender watch not updated: store failed");
                }
            }
        }
        self.notifier.settle(&id).await;
    }
}

fn hop(cfg: &Config, r: &LeasedRcpt) -> Hop {
    let domain = r.mailbox.domain();
    match cfg.route(domain) {
        NextHop::Smtp(hp) => Hop::Smtp(Dest::Smtp(hp), cfg.route_tls(domain)),
        NextHop::Mx => Hop::Smtp(Dest::Mx(domain.clone()), cfg.route_tls(domain)),
        NextHop::Maildir(p) => Hop::Maildir(p),
    }
}

/// What the sender watch learns from how a recipient ended: only outbound recipients of
/// local senders that are done (delivered, failed, expired).
fn what_watch_learns(
    cfg: &Config,
    lease: &Lease,
    r: &LeasedRcpt,
    outcome: &Outcome,
    result: &str,
    detail: &str,
) -> Option<Finished> {
    let sender = lease.from.mailbox()?;
    let local = |d: &backstop_proto::address::Domain| cfg.domain(d).is_some();
    if !local(sender.domain()) || local(r.mailbox.domain()) {
        return None;
    }
    match (result, outcome) {
        ("delivered", _) => Some(Finished::Delivered),
        ("failed", Outcome::Reply(reply, _)) => Some(Finished::failed(Some(reply.code), detail)),
        ("failed" | "expired", _) => Some(Finished::failed(None, detail)),
        _ => None,
    }
}

/// A recipient's new status after its `attempts`-th attempt ended in `outcome` (described
/// by `detail`), and the word for the log.
fn status(
    s: &Setup,
    outcome: &Outcome,
    detail: &str,
    attempts: u32,
    expired: bool,
    now: u64,
) -> (Status, &'static str) {
    let d = &s.cfg.delivery;
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
