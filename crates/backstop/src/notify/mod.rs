//! Delivery reports (bounces) to senders, made safe: never to a forged sender, at most one per
//! message (plus at most one more for recipients that fail after it), headers only, under a
//! budget, and never twice (an idempotency key in the Store per message and report kind).
//!
//! Responsible for: deciding at acceptance whether a sender may ever get a report
//! ([`eligibility`]), deciding after each delivery pass which report is due ([`plan`]),
//! the budget, building the report (through `backstop_proto::dsn`) and queueing it like any
//! other message, and recording what became of every recipient's report.
//! Not responsible for: delivering the report (the queue and delivery do), or SPF/DKIM
//! themselves (`auth`).
//!
//! Order of effects, so that nothing is sent twice: claim the key in the Store, then queue the
//! report, then record it in the spool. A crash between the claim and the queueing loses that
//! one report (logged at the claim); it never duplicates one.

pub mod digest;
pub mod plan;
mod report;
mod tls;

pub use plan::{Kind, Plan, Rules, plan};

use crate::auth::SenderAuth;
use crate::clock::Clock;
use crate::config::Config;
use crate::content::Content;
use crate::dkim::Signer;
use crate::ids::IdGen;
use crate::queue::{Record, Spool, Status, Trust};
use crate::store::{Store, StoreError, Window};
use crate::telemetry::Event;
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::dsn::Action;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How long an idempotency key is kept: longer than any message stays queued.
const KEY_TTL: u64 = 60 * 86_400;
/// The budget's window.
const HOUR: u64 = 3600;

/// Whether a message's sender may ever get a delivery report, as far as the session knows it
/// at acceptance, without a DNS lookup: a null sender or a report never gets one, a relay
/// client always may; anyone else waits for SPF and DKIM, checked by [`Notifier`] only when a
/// report is due (most messages never need one).
pub fn eligibility(
    from: &ReversePath,
    relay_client: bool,
    ip: IpAddr,
    helo: &str,
    message: &[u8],
) -> Trust {
    if from.mailbox().is_none() {
        return Trust::no("null sender");
    }
    if is_report(backstop_proto::dsn::header_section(message)) {
        return Trust::no("a delivery report");
    }
    match relay_client {
        true => Trust::yes(format!("relay client {ip}")),
        false => Trust::undecided(ip, helo),
    }
}

/// True for a header section of a delivery report (`multipart/report`).
fn is_report(headers: &[u8]) -> bool {
    let text = String::from_utf8_lossy(headers).to_ascii_lowercase();
    text.split("\r\n").any(|l| {
        l.strip_prefix("content-type:")
            .is_some_and(|v| v.trim_start().starts_with("multipart/report"))
    })
}

/// What became of a report.
enum Sent {
    /// Queued under this id.
    Queued(String),
    /// Not sent: over budget.
    Suppressed(String),
    /// Claimed already: sent by another node, or before a restart.
    Duplicate,
}

/// Sends the reports that are due.
pub struct Notifier {
    spool: Arc<Spool>,
    store: Arc<dyn Store>,
    /// The configuration; a reload replaces it (reports decided afterwards follow it).
    cfg: arc_swap::ArcSwap<Config>,
    /// SPF and DKIM, for senders whose trust is still to be decided (replaced by a reload).
    auth: arc_swap::ArcSwap<SenderAuth>,
    /// The keys that sign our reports and digests (replaced by a reload).
    dkim: arc_swap::ArcSwap<Signer>,
    clock: Arc<dyn Clock>,
    ids: Arc<IdGen>,
    /// The last day whose digest is done, plus one (0: none yet).
    digest_done: AtomicU64,
    /// Messages being settled right now (by the engine or the sweep): one at a time each.
    busy: Mutex<HashSet<String>>,
    /// One message larger than [`WHOLE_AT_ONCE`] read whole at a time, for DKIM (its body hash
    /// needs every byte): what reports cost in memory stays bounded whatever the messages.
    large: tokio::sync::Semaphore,
    /// The TLS client for TLS reports sent over HTTPS (none: they are not sent).
    https: arc_swap::ArcSwapOption<tokio_rustls::TlsConnector>,
}

/// Up to this size, messages whose sender is being checked are read whole side by side.
const WHOLE_AT_ONCE: u64 = 1 << 20;

/// What `backstop status` counts of the reports per day.
pub const REPORT_LABELS: [&str; 2] = ["sent", "suppressed"];

impl Notifier {
    async fn count(&self, label: &str, now: u64) {
        if let Err(e) =
            crate::store::daily::count(self.store.as_ref(), "reports", &[label], now).await
        {
            tracing::warn!(error = %e, "report counts not updated: store failed");
        }
    }

    /// A notifier for the messages of `spool`; `auth` checks the senders not decided at
    /// acceptance.
    pub fn new(
        (spool, store): (Arc<Spool>, Arc<dyn Store>),
        (cfg, auth, dkim): (Arc<Config>, Arc<SenderAuth>, Arc<Signer>),
        clock: Arc<dyn Clock>,
        ids: Arc<IdGen>,
    ) -> Notifier {
        Notifier {
            spool,
            store,
            cfg: arc_swap::ArcSwap::new(cfg),
            auth: arc_swap::ArcSwap::new(auth),
            dkim: arc_swap::ArcSwap::new(dkim),
            clock,
            ids,
            digest_done: AtomicU64::new(0),
            busy: Mutex::new(HashSet::new()),
            large: tokio::sync::Semaphore::new(1),
            https: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The TLS client (certificates verified) for TLS reports sent over HTTPS.
    pub fn posting(&self, https: tokio_rustls::TlsConnector) {
        self.https.store(Some(Arc::new(https)));
    }

    /// Follows a new configuration (after a reload), its resolver and its DKIM keys.
    pub fn reconfigure(&self, cfg: Arc<Config>, auth: Arc<SenderAuth>, dkim: Arc<Signer>) {
        self.cfg.store(cfg);
        self.auth.store(auth);
        self.dkim.store(dkim);
    }

    /// `message` (a report or digest of ours, id `id`) with its DKIM signature on top when
    /// a key signs for our host name's domain.
    async fn signed(&self, id: &str, message: Vec<u8>) -> Vec<u8> {
        let dkim = self.dkim.load_full();
        if dkim.is_empty() {
            return message;
        }
        let content = Content::of(vec![message.clone()]);
        let header = crate::dkim::sign_and_log(&dkim, id, content, None).await;
        match header.is_empty() {
            true => message,
            false => [header, message].concat(),
        }
    }

    fn cfg(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    /// Sends the postmaster's digest of yesterday's (UTC) failures that got no report, once
    /// (one claim per day in the Store), when `[reports] digest` is set and there are any.
    pub async fn digest(&self) -> Result<(), NotifyError> {
        let cfg = self.cfg();
        let Some(to) = &cfg.reports.digest else {
            return Ok(());
        };
        let now = self.clock.unix();
        let Some(day) = (now / 86_400).checked_sub(1) else {
            return Ok(());
        };
        if self.digest_done.load(Ordering::Relaxed) == day + 1 {
            return Ok(());
        }
        let entries = digest::entries(&self.spool.list(), day);
        let key = format!("digest:{day}");
        if !entries.is_empty() && self.store.claim(&key, now + KEY_TTL).await? {
            let id = self.ids.next(now);
            let text = digest::message(&cfg.hostname, &to.to_string(), day, &entries, now, &id);
            let text = self.signed(&id, text).await;
            if let Err(e) = self
                .spool
                .enqueue(report::envelope(&id, to, text, now))
                .await
            {
                let _ = self.store.unclaim(&key).await;
                return Err(e.into());
            }
            tracing::info!(
                target: "backstop::event", event = "digest_sent", id, %to, day,
                failures = entries.len()
            );
        }
        self.digest_done.store(day + 1, Ordering::Relaxed);
        Ok(())
    }

    fn rules(&self) -> Rules {
        let cfg = self.cfg();
        Rules {
            delay_warning: cfg.reports.delay_warning.map(|d| d.as_secs()),
            gather: cfg.reports.gather.as_secs(),
        }
    }

    /// Decides and sends what is due for message `id` (after a delivery pass). Failures are
    /// logged; the message is looked at again later.
    pub async fn settle(&self, id: &str) {
        if !self.lock_busy().insert(id.to_string()) {
            // being settled already; what that misses, the next sweep finds
            return;
        }
        if let Err(e) = self.try_settle(id).await {
            tracing::warn!(%id, error = %e, "report not decided yet; tried again later");
        }
        self.lock_busy().remove(id);
    }

    fn lock_busy(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles every message whose report was left undecided (after a crash or a store
    /// failure).
    pub async fn sweep(&self) {
        for id in self.spool.unreported() {
            self.settle(&id).await;
        }
    }

    async fn try_settle(&self, id: &str) -> Result<(), NotifyError> {
        let Some(mut rec) = self.spool.record(id) else {
            return Ok(());
        };
        let now = self.clock.unix();
        let Plan { report, mut notes } = match rec.trust.pending.is_some() {
            true => match self.plan_pending(&mut rec, now).await? {
                Some(p) => p,
                None => return Ok(()),
            },
            false => plan(&rec, now, self.rules()),
        };
        let kind = match report {
            Some((kind, rcpts)) => {
                let note = match self.send(&rec, kind, &rcpts, now).await? {
                    Sent::Queued(rid) => format!("reported ({}, {rid})", kind.as_str()),
                    Sent::Suppressed(why) => format!("suppressed: {why}"),
                    Sent::Duplicate => format!(
                        "reported ({}, by another node or before a restart)",
                        kind.as_str()
                    ),
                };
                if kind != Kind::Delay {
                    notes.extend(rcpts.iter().map(|(i, _)| (*i, note.clone())));
                }
                Some(kind)
            }
            None => None,
        };
        if kind.is_none() && notes.is_empty() {
            return Ok(());
        }
        log_unreported(&rec, &notes);
        let done = finished(&rec, &notes);
        self.spool
            .reported(id, kind.map(Kind::as_str), notes, done)
            .await?;
        Ok(())
    }

    /// The plan for a message whose sender's trust is still open. Only when the plan of a
    /// trusted sender would send a report is the trust decided (SPF and DKIM, now, bounded by
    /// the resolver's timeouts; a failed lookup means no report), recorded, and the real plan
    /// made; otherwise the trusted plan holds (its notes do not depend on trust), or, with
    /// nothing to do yet, none.
    async fn plan_pending(&self, rec: &mut Record, now: u64) -> Result<Option<Plan>, NotifyError> {
        let mut assumed = rec.clone();
        assumed.trust.trusted = true;
        let trusted = plan(&assumed, now, self.rules());
        if trusted.report.is_none() {
            return Ok((!trusted.notes.is_empty()).then_some(trusted));
        }
        rec.trust = self.decide(rec).await;
        Event::Trust {
            id: &rec.id,
            trusted: rec.trust.trusted,
            why: &rec.trust.why,
        }
        .emit();
        self.spool.set_trust(&rec.id, rec.trust.clone()).await?;
        Ok(Some(plan(rec, now, self.rules())))
    }

    /// SPF and DKIM for a sender left undecided at acceptance.
    async fn decide(&self, rec: &Record) -> Trust {
        let (Some(p), Some(sender)) = (&rec.trust.pending, rec.from.mailbox()) else {
            return Trust::no("null sender");
        };
        let large = self.spool.size(&rec.id).unwrap_or(0) > WHOLE_AT_ONCE;
        let _one_large = match large {
            true => self.large.acquire().await.ok(),
            false => None,
        };
        let message = match self.spool.head(&rec.id, u64::MAX).await {
            Ok(Some(m)) => m,
            Ok(None) => return Trust::no("no longer queued"),
            Err(e) => return Trust::no(format!("message unreadable: {e}")),
        };
        let evidence = self
            .auth
            .load()
            .check(p.ip, &p.helo, sender, &message)
            .await;
        match evidence.trusted() {
            true => Trust::yes(evidence.to_string()),
            false => Trust::no(evidence.to_string()),
        }
    }

    /// Claims, budgets, builds and queues one report.
    async fn send(
        &self,
        rec: &Record,
        kind: Kind,
        rcpts: &[(usize, Action)],
        now: u64,
    ) -> Result<Sent, NotifyError> {
        let to = rec.from.mailbox().ok_or(NotifyError::NoSender)?;
        let head = self
            .spool
            .head(&rec.id, report::HEAD_MAX)
            .await
            .map_err(|e| NotifyError::Spool(e.into()))?
            .unwrap_or_default();
        let key = report_key(rec, &head, kind);
        if !self.store.claim(&key, now + KEY_TTL).await? {
            return Ok(Sent::Duplicate);
        }
        let result = self
            .budget_then_queue(rec, kind, rcpts, to, &head, now)
            .await;
        if result.is_err() {
            // nothing went out: let a later pass try again
            let _ = self.store.unclaim(&key).await;
        }
        result
    }

    async fn budget_then_queue(
        &self,
        rec: &Record,
        kind: Kind,
        rcpts: &[(usize, Action)],
        to: &Mailbox,
        head: &[u8],
        now: u64,
    ) -> Result<Sent, NotifyError> {
        if let Some((label, why)) = self.over_budget(to, now).await? {
            self.count("suppressed", now).await;
            Event::ReportSuppressed {
                id: &rec.id,
                kind: kind.as_str(),
                to,
                why: &why,
                label,
            }
            .emit();
            return Ok(Sent::Suppressed(why));
        }
        let rid = self.ids.next(now);
        let cfg = self.cfg();
        let writing = report::Writing {
            hostname: &cfg.hostname,
            report_id: &rid,
            now,
            retry_until: rec.arrived + cfg.delivery.max_age.as_secs(),
        };
        let message = report::build(&writing, rec, to, rcpts, head);
        let message = self.signed(&rid, message).await;
        self.spool
            .enqueue(report::envelope(&rid, to, message, now))
            .await?;
        self.count("sent", now).await;
        Event::ReportSent {
            id: &rec.id,
            kind: kind.as_str(),
            report_id: &rid,
            to,
            rcpts: rcpts.len(),
        }
        .emit();
        Ok(Sent::Queued(rid))
    }

    /// Counts the report against the budget; which budget it is over (a label, and why), if
    /// it is.
    async fn over_budget(
        &self,
        to: &Mailbox,
        now: u64,
    ) -> Result<Option<(&'static str, String)>, StoreError> {
        let cfg = self.cfg();
        let r = &cfg.reports;
        let checks = [
            (
                format!("dsn-budget:rcpt:{}", to.key()),
                r.per_recipient,
                to.to_string(),
                "budget-recipient",
            ),
            (
                format!("dsn-budget:domain:{}", to.domain()),
                r.per_domain,
                to.domain().to_string(),
                "budget-domain",
            ),
            (
                "dsn-budget:total".to_string(),
                r.total,
                "all destinations".into(),
                "budget-total",
            ),
        ];
        for (key, limit, what, label) in checks {
            let n = Window {
                key: &key,
                window: HOUR,
            }
            .hit(&*self.store, now)
            .await?;
            if n > limit {
                return Ok(Some((
                    label,
                    format!("over budget: {n} reports to {what} in the last hour (limit {limit})"),
                )));
            }
        }
        Ok(None)
    }
}

/// The claim that lets a report go once: per message as its sender knows it (Message-ID and
/// envelope sender), so that a message that reached two nodes of a cluster (a client that
/// retried through the other after a lost `250`) is reported by one of them only; by our
/// queue id when it has no Message-ID.
fn report_key(rec: &Record, head: &[u8], kind: Kind) -> String {
    match backstop_proto::dsn::message_id(head) {
        Some(mid) => format!("dsn:msg:{}:{mid}:{}", rec.from, kind.as_str()),
        None => format!("dsn:{}:{}", rec.id, kind.as_str()),
    }
}

/// The message can go: nothing left to try, every report decided, and every failure reported
/// (failures without a report stay listed for the operator).
fn finished(rec: &Record, notes: &[(usize, String)]) -> bool {
    rec.rcpts.iter().enumerate().all(|(i, r)| {
        let note = notes
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, n)| n.as_str())
            .or(r.report.as_deref());
        match (&r.status, note) {
            (Status::Queued { .. }, _) | (_, None) => false,
            (Status::Delivered { .. }, Some(_)) => true,
            (Status::Failed { .. }, Some(n)) => n.starts_with("reported"),
        }
    })
}

/// Logs failures that get no report (the operator finds them in `queue list --failed`).
fn log_unreported(rec: &Record, notes: &[(usize, String)]) {
    for (i, note) in notes {
        let Some(r) = rec.rcpts.get(*i) else { continue };
        if matches!(r.status, Status::Failed { .. }) && !note.starts_with("reported") {
            Event::NoReport {
                id: &rec.id,
                rcpt: &r.mailbox,
                why: note,
                label: plan::label(note),
            }
            .emit();
        }
    }
}

/// Why a report could not be decided now.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] crate::queue::SpoolError),
    /// A report was planned for a null sender (a bug: the plan refuses that).
    #[error("no sender to report to")]
    NoSender,
    /// A TLS report could not be written.
    #[error("writing the TLS report: {0}")]
    Build(std::io::Error),
}

#[cfg(test)]
mod tests;
