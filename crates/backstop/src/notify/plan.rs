//! What a message's delivery reports should be, given its state: which report (if any) to
//! send now and for which recipients, and which recipients get none and why.
//!
//! Responsible for: the rules, as one pure function ([`plan`]): reports only to a trusted,
//! non-null sender; NOTIFY honoured (absent NOTIFY means failures, and delays when delay
//! warnings are on, RFC 3461 §4.1); at most one `first` report with every failure known at the
//! time (sent when nothing is left to try, or `gather` after the first failure while other
//! recipients are still being tried), at most one `last` with the failures that came after it,
//! sent only when nothing is left to try; at most one `delay` warning.
//! Not responsible for: the budget, idempotency, building or sending (the notifier does).

use crate::queue::{Record, Status};
use backstop_proto::dsn::Action;

/// A report kind; each is sent at most once per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The first report: every recipient final by then.
    First,
    /// The one after it, when the message is finished: those that ended later.
    Last,
    /// The warning that a message is still undelivered.
    Delay,
}

impl Kind {
    /// As stored and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::First => "first",
            Kind::Last => "last",
            Kind::Delay => "delay",
        }
    }
}

/// Settings the rules need.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Send a delay warning after this many seconds; none: never.
    pub delay_warning: Option<u64>,
    /// While other recipients are still being tried, wait this many seconds after a failure
    /// for more to gather before the first report.
    pub gather: u64,
}

/// What to do for a message now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The report to send now: its kind and recipients (index, action).
    pub report: Option<(Kind, Vec<(usize, Action)>)>,
    /// Final recipients that get no report, with why.
    pub notes: Vec<(usize, String)>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.report.is_none() && self.notes.is_empty()
    }
}

/// The plan for `rec` at `now`.
pub fn plan(rec: &Record, now: u64, rules: Rules) -> Plan {
    let mut out = Plan::default();
    if rec.leased {
        return out;
    }
    let refused = refusal(rec);
    let mut wanted = Vec::new();
    for (i, r) in rec.rcpts.iter().enumerate() {
        if r.report.is_some() {
            continue;
        }
        let notify = r.params.notify;
        let action = match &r.status {
            Status::Queued { .. } => continue,
            Status::Failed { .. } if notify.is_none_or(|n| n.failure) => Action::Failed,
            Status::Delivered {
                action: Some(a), ..
            } if notify.is_some_and(|n| n.success) => match a.as_str() {
                "delivered" => Action::Delivered,
                _ => Action::Relayed,
            },
            Status::Delivered { action: None, .. } if notify.is_some_and(|n| n.success) => {
                out.notes
                    .push((i, "passed on: the next hop reports (DSN)".into()));
                continue;
            }
            Status::Failed { .. } | Status::Delivered { .. } => {
                out.notes.push((i, "not requested (NOTIFY)".into()));
                continue;
            }
        };
        match &refused {
            Some(why) => out.notes.push((i, format!("no report: {why}"))),
            None => wanted.push((i, action)),
        }
    }
    let complete = rec.rcpts.iter().all(|r| r.status.is_final());
    let done = |k: Kind| rec.reports.iter().any(|s| s == k.as_str());
    if !wanted.is_empty() {
        let oldest = wanted
            .iter()
            .filter_map(|(i, _)| ended_at(&rec.rcpts[*i].status))
            .min()
            .unwrap_or(now);
        let gathered = complete || now >= oldest.saturating_add(rules.gather);
        if !done(Kind::First) && gathered {
            out.report = Some((Kind::First, wanted));
        } else if complete && !done(Kind::Last) {
            out.report = Some((Kind::Last, wanted));
        } else if done(Kind::Last) {
            // cannot happen (the last report ends the message); never a third report
            out.notes.extend(
                wanted
                    .into_iter()
                    .map(|(i, _)| (i, "no report: two sent already".into())),
            );
        }
        // else: wait (for more failures, or until the message is finished)
        return out;
    }
    if let (Some(after), None) = (rules.delay_warning, &refused)
        && !complete
        && !done(Kind::Delay)
        && now >= rec.arrived.saturating_add(after)
    {
        let delayed: Vec<(usize, Action)> = rec
            .rcpts
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.status.is_final() && r.params.notify.is_none_or(|n| n.delay))
            .map(|(i, _)| (i, Action::Delayed))
            .collect();
        if !delayed.is_empty() {
            out.report = Some((Kind::Delay, delayed));
        }
    }
    out
}

/// When a final recipient ended.
fn ended_at(s: &Status) -> Option<u64> {
    match s {
        Status::Delivered { at, .. } | Status::Failed { at, .. } => Some(*at),
        Status::Queued { .. } => None,
    }
}

/// The metric label of a note on a failed recipient that got no report: why the report was
/// withheld. `None` when none was (the next hop reports), or when it was already counted (a
/// report suppressed over budget).
pub fn label(note: &str) -> Option<&'static str> {
    if note.starts_with("no report: null sender") {
        Some("null-sender")
    } else if note.starts_with("no report: sender not trusted") {
        Some("untrusted-sender")
    } else if note.starts_with("no report: two sent") {
        Some("limit")
    } else if note.starts_with("not requested") {
        Some("not-requested")
    } else {
        None
    }
}

/// Why the message's sender may get no report at all, if so.
fn refusal(rec: &Record) -> Option<String> {
    if rec.from.mailbox().is_none() {
        return Some("null sender".into());
    }
    (!rec.trust.trusted).then(|| format!("sender not trusted ({})", rec.trust.why))
}
