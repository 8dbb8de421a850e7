//! A report's content and envelope, from a queued message's state: the bridge between the
//! spool's statuses and `backstop_proto::dsn`.
//!
//! Responsible for: the per-recipient fields (status, Remote-MTA, Diagnostic-Code, dates, the
//! human reason), the report's ids and boundary, and its envelope (null sender, to the
//! original's sender). Not responsible for whether a report is due (plan) or sending it.

use crate::queue::{NewMessage, RcptRecord, Record, Status, Trust};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::dsn::{self, Action, Original, Recipient, Report};
use backstop_proto::smtp::command::{Body, MailParams, RcptParams};
use backstop_proto::smtp::reply::Enhanced;

/// How much of the original is read to find its header section (the builder caps what it
/// attaches further).
pub const HEAD_MAX: u64 = 256 * 1024;

/// The report's fields for one recipient, owned.
struct Fields {
    status: Enhanced,
    remote: Option<String>,
    diagnostic: Option<String>,
    reason: String,
    last_attempt: Option<u64>,
}

/// The status word at the start of a reply text (`550 5.1.1 ...`), if any.
fn enhanced_in(text: &str) -> Option<Enhanced> {
    text.split_ascii_whitespace()
        .nth(1)
        .and_then(Enhanced::parse)
}

fn fields(r: &RcptRecord) -> Fields {
    match &r.status {
        Status::Failed {
            at,
            reason,
            code,
            remote,
            diagnostic,
        } => Fields {
            status: code
                .as_deref()
                .and_then(Enhanced::parse)
                .unwrap_or(Enhanced::new(5, 0, 0)),
            reason: match (remote, diagnostic) {
                (Some(h), Some(d)) => format!("host {h} said: {d}"),
                _ => reason.clone(),
            },
            remote: remote.clone(),
            diagnostic: diagnostic.clone(),
            last_attempt: Some(*at),
        },
        Status::Delivered {
            at, reply, remote, ..
        } => Fields {
            status: enhanced_in(reply).unwrap_or(Enhanced::new(2, 0, 0)),
            reason: match remote {
                Some(h) => format!("delivered to {h}: {reply}"),
                None => format!("delivered: {reply}"),
            },
            diagnostic: remote.as_ref().map(|_| reply.clone()),
            remote: remote.clone(),
            last_attempt: Some(*at),
        },
        Status::Queued { last, .. } => Fields {
            status: last
                .as_deref()
                .and_then(enhanced_in)
                .filter(|e| e.class == 4)
                .unwrap_or(Enhanced::new(4, 0, 0)),
            reason: match last {
                Some(l) => format!("still trying; last error: {l}"),
                None => "still trying".into(),
            },
            remote: None,
            diagnostic: None,
            last_attempt: None,
        },
    }
}

/// What the report is written with.
pub struct Writing<'a> {
    /// Our host name (Reporting-MTA, Message-ID, MAILER-DAEMON).
    pub hostname: &'a str,
    /// The report's queue id.
    pub report_id: &'a str,
    /// Now.
    pub now: u64,
    /// When delayed recipients will be given up (arrival + max age).
    pub retry_until: u64,
}

/// The complete report to `to` about recipients `rcpts` of `rec`, whose message starts with
/// `head`.
pub fn build(
    w: &Writing<'_>,
    rec: &Record,
    to: &Mailbox,
    rcpts: &[(usize, Action)],
    head: &[u8],
) -> Vec<u8> {
    let fields: Vec<(&RcptRecord, Action, Fields)> = rcpts
        .iter()
        .filter_map(|(i, a)| rec.rcpts.get(*i).map(|r| (r, *a, fields(r))))
        .collect();
    let recipients: Vec<Recipient<'_>> = fields
        .iter()
        .map(|(r, action, f)| Recipient {
            final_recipient: &r.mailbox,
            original: r.params.orcpt.as_ref(),
            action: *action,
            status: f.status,
            remote_mta: f.remote.as_deref(),
            diagnostic: f.diagnostic.as_deref(),
            reason: &f.reason,
            last_attempt: f.last_attempt,
            will_retry_until: (*action == Action::Delayed).then_some(w.retry_until),
        })
        .collect();
    let hostname = w.hostname;
    let postmaster = format!("MAILER-DAEMON@{hostname}");
    let message_id = format!("{}@{hostname}", w.report_id);
    // like Postfix's `queueid.time/host`: unique, and never a line of a message it wraps
    let boundary = format!("{}.{}/{hostname}", w.report_id, w.now);
    dsn::build(&Report {
        reporting_mta: hostname,
        postmaster: &postmaster,
        to,
        date: w.now,
        message_id: &message_id,
        boundary: &boundary,
        original: Original {
            queue_id: &rec.id,
            envid: rec.params.envid.as_deref(),
            arrival: rec.arrived,
            headers: dsn::header_section(head),
            smtputf8: rec.params.smtputf8,
        },
        recipients: &recipients,
    })
}

/// A report (or the digest) as a message to queue: null sender, so nothing ever answers it.
pub fn envelope(report_id: &str, to: &Mailbox, message: Vec<u8>, now: u64) -> NewMessage {
    let eight_bit = !message.is_ascii();
    NewMessage {
        id: report_id.to_string(),
        arrived: now,
        from: ReversePath::Null,
        params: MailParams {
            body: eight_bit.then_some(Body::EightBitMime),
            smtputf8: !to.is_ascii(),
            ..MailParams::default()
        },
        rcpts: vec![(to.clone(), RcptParams::default())],
        data: vec![message],
        rest: None,
        trust: Trust::no("a report from this gateway"),
    }
}
