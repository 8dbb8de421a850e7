//! Typed events: every decision backstop makes is one [`Event`], and emitting it writes the
//! structured log line (metrics join here, from the same event, so the two cannot drift).
//!
//! Responsible for: the event types and how each is logged (target `backstop::event`, with an
//! `event` field naming it). Not responsible for: deciding anything.

use crate::config::{BackscatterAction, HostPort};
use crate::policy::Decision;
use crate::policy::probe::ProbeAnswer;
use backstop_proto::address::Mailbox;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One decision or occurrence worth recording.
#[derive(Debug)]
pub enum Event<'a> {
    /// A client connected.
    Connect {
        /// The client.
        peer: SocketAddr,
    },
    /// A session ended.
    Disconnect {
        /// The client.
        peer: SocketAddr,
        /// Messages accepted in the session.
        messages: u32,
    },
    /// A recipient was judged.
    Rcpt {
        /// The client.
        peer: IpAddr,
        /// The recipient.
        rcpt: &'a Mailbox,
        /// The verdict.
        decision: &'a Decision,
    },
    /// The next hop refused a recipient we had accepted (in-session relay).
    RcptRelayRefused {
        /// The client.
        peer: IpAddr,
        /// The recipient.
        rcpt: &'a Mailbox,
        /// What the next hop said (logged, never shown to the client).
        reply: &'a str,
    },
    /// A call-out probe ran.
    CalloutProbe {
        /// The internal server.
        target: &'a HostPort,
        /// The address probed.
        addr: &'a Mailbox,
        /// Its answer.
        answer: &'a ProbeAnswer,
        /// How long it took.
        latency: Duration,
    },
    /// A probe was not made: budget spent.
    ProbeBudgetExceeded {
        /// The address.
        addr: &'a Mailbox,
        /// The client charged, if any.
        client: Option<IpAddr>,
    },
    /// A message was handed on (relayed or delivered to a Maildir).
    Delivered {
        /// Our id.
        id: &'a str,
        /// Where.
        next_hop: String,
        /// Recipients.
        rcpts: usize,
        /// Bytes.
        size: usize,
        /// The next hop's answer, or the files written.
        detail: &'a str,
    },
    /// The next hop did not take a message; the client got a refusal, nothing was accepted.
    NotDelivered {
        /// Our id.
        id: &'a str,
        /// Where.
        next_hop: String,
        /// Why.
        detail: &'a str,
    },
    /// One queued recipient was tried: delivered, deferred, failed or expired.
    Attempt {
        /// Queue id.
        id: &'a str,
        /// The recipient.
        rcpt: &'a Mailbox,
        /// Where it was sent.
        next_hop: &'a str,
        /// `delivered`, `deferred`, `failed` or `expired`.
        result: &'static str,
        /// Attempts so far, this one included.
        attempts: u32,
        /// The next hop's answer or what went wrong.
        detail: &'a str,
    },
    /// A delivery report was queued for a message's sender.
    ReportSent {
        /// The original's queue id.
        id: &'a str,
        /// `first`, `last` or `delay`.
        kind: &'static str,
        /// The report's queue id.
        report_id: &'a str,
        /// The original's sender.
        to: &'a Mailbox,
        /// Recipients it reports on.
        rcpts: usize,
    },
    /// A report was due but not sent: over budget.
    ReportSuppressed {
        /// The original's queue id.
        id: &'a str,
        /// `first`, `last` or `delay`.
        kind: &'static str,
        /// The original's sender.
        to: &'a Mailbox,
        /// Which budget.
        why: &'a str,
    },
    /// A recipient failed and its sender gets no report (untrusted or null sender, NOTIFY).
    NoReport {
        /// The original's queue id.
        id: &'a str,
        /// The recipient that failed.
        rcpt: &'a Mailbox,
        /// Why no report.
        why: &'a str,
    },
    /// A connection was refused before the greeting (a harvest block or a connection limit).
    ClientRefused {
        /// The client.
        peer: SocketAddr,
        /// `blocked`, `blocked-network`, `too-many-connections`, `connections-per-ip`,
        /// `connection-rate`.
        why: &'static str,
    },
    /// A client (an IP address or a network) went over its unknown-recipient limit and is
    /// refused at connect from now on, for `[harvest] block_for`.
    ClientBlocked {
        /// The client whose recipient tipped it over.
        peer: IpAddr,
        /// What is blocked: the IP or its network.
        blocked: &'a str,
    },
    /// An outbound recipient was refused: its sender, sender domain or client went over an
    /// `[outbound]` limit.
    OutboundLimit {
        /// The client.
        peer: IpAddr,
        /// The recipient refused.
        rcpt: &'a Mailbox,
        /// Which limit, with the count.
        limit: &'a str,
    },
    /// An alert for the operator (also sent to the webhook, if configured).
    Alert {
        /// `sender_held`, `sender_released`, ...
        kind: &'static str,
        /// What it is about.
        subject: &'a str,
        /// Why.
        detail: &'a str,
    },
    /// A session was closed for too many unknown recipients.
    HarvestCutOff {
        /// The client.
        peer: IpAddr,
        /// Unknown recipients in the session.
        unknown: u32,
    },
    /// A bounce's recipient carried a BATV tag, or lacked one on a domain that signs.
    Batv {
        /// The client.
        peer: IpAddr,
        /// The recipient as given.
        rcpt: &'a Mailbox,
        /// `valid`, `missing`, `expired` or `invalid`.
        result: &'static str,
        /// True when the recipient was refused for it.
        refused: bool,
    },
    /// A local recipient got more bounces this hour than `[bounces] per_recipient`.
    BounceRateExceeded {
        /// The client.
        peer: IpAddr,
        /// The recipient.
        rcpt: &'a Mailbox,
    },
    /// A bounce was refused before its content was seen.
    BounceRefused {
        /// The client.
        peer: IpAddr,
        /// Our id, when one was given.
        id: &'a str,
        /// Why (`rcpts>1`).
        reasons: &'a str,
    },
    /// The verdict on a bounce, with its evidence.
    BounceVerdict {
        /// The client.
        peer: IpAddr,
        /// Our id.
        id: &'a str,
        /// `genuine` or `backscatter`.
        verdict: &'static str,
        /// `batv=...,msgid=...,relay=...`.
        reasons: &'a str,
        /// What was done.
        action: BackscatterAction,
    },
}

impl Event<'_> {
    /// Records the event.
    pub fn emit(&self) {
        match self {
            Event::Connect { peer } => {
                tracing::info!(target: "backstop::event", event = "connect", %peer)
            }
            Event::Disconnect { peer, messages } => {
                tracing::info!(target: "backstop::event", event = "disconnect", %peer, messages)
            }
            Event::Rcpt {
                peer,
                rcpt,
                decision,
            } => tracing::info!(
                target: "backstop::event", event = "rcpt", %peer, %rcpt,
                outcome = ?decision.outcome, reason = decision.reason
            ),
            Event::RcptRelayRefused { peer, rcpt, reply } => tracing::info!(
                target: "backstop::event", event = "rcpt_relay_refused", %peer, %rcpt, reply
            ),
            Event::CalloutProbe {
                target,
                addr,
                answer,
                latency,
            } => tracing::info!(
                target: "backstop::event", event = "callout_probe", %target, %addr,
                answer = ?answer, latency_ms = latency.as_millis() as u64
            ),
            Event::ProbeBudgetExceeded { addr, client } => tracing::warn!(
                target: "backstop::event", event = "probe_budget_exceeded", %addr, client = ?client
            ),
            Event::Delivered {
                id,
                next_hop,
                rcpts,
                size,
                detail,
            } => tracing::info!(
                target: "backstop::event", event = "delivered", id, next_hop, rcpts, size, detail
            ),
            Event::NotDelivered {
                id,
                next_hop,
                detail,
            } => tracing::warn!(
                target: "backstop::event", event = "not_delivered", id, next_hop, detail
            ),
            Event::Attempt {
                id,
                rcpt,
                next_hop,
                result,
                attempts,
                detail,
            } => match *result {
                "delivered" => tracing::info!(
                    target: "backstop::event", event = "attempt", id, %rcpt, next_hop, result,
                    attempts, detail
                ),
                _ => tracing::warn!(
                    target: "backstop::event", event = "attempt", id, %rcpt, next_hop, result,
                    attempts, detail
                ),
            },
            Event::ReportSent {
                id,
                kind,
                report_id,
                to,
                rcpts,
            } => tracing::info!(
                target: "backstop::event", event = "report_sent", id, kind, report_id, %to, rcpts
            ),
            Event::ReportSuppressed { id, kind, to, why } => tracing::warn!(
                target: "backstop::event", event = "report_suppressed", id, kind, %to, why
            ),
            Event::NoReport { id, rcpt, why } => tracing::info!(
                target: "backstop::event", event = "no_report", id, %rcpt, why
            ),
            Event::ClientRefused { peer, why } => tracing::warn!(
                target: "backstop::event", event = "client_refused", %peer, why
            ),
            Event::ClientBlocked { peer, blocked } => tracing::warn!(
                target: "backstop::event", event = "client_blocked", %peer, blocked
            ),
            Event::OutboundLimit { peer, rcpt, limit } => tracing::warn!(
                target: "backstop::event", event = "outbound_limit", %peer, %rcpt, limit
            ),
            Event::Alert {
                kind,
                subject,
                detail,
            } => tracing::warn!(
                target: "backstop::event", event = "alert", kind, subject, detail
            ),
            Event::HarvestCutOff { peer, unknown } => tracing::warn!(
                target: "backstop::event", event = "harvest_cut_off", %peer, unknown
            ),
            Event::Batv {
                peer,
                rcpt,
                result,
                refused,
            } => tracing::info!(
                target: "backstop::event", event = "batv", %peer, %rcpt, batv = result, refused
            ),
            Event::BounceRateExceeded { peer, rcpt } => tracing::warn!(
                target: "backstop::event", event = "bounce_rate_exceeded", %peer, %rcpt
            ),
            Event::BounceRefused { peer, id, reasons } => tracing::info!(
                target: "backstop::event", event = "bounce_refused", %peer, id, reasons
            ),
            Event::BounceVerdict {
                peer,
                id,
                verdict,
                reasons,
                action,
            } => tracing::info!(
                target: "backstop::event", event = "bounce_verdict", %peer, id, verdict,
                reasons, action = ?action
            ),
        }
    }
}

/// Shorthand for [`Event::CalloutProbe`].
pub fn callout_probe(target: &HostPort, addr: &Mailbox, answer: &ProbeAnswer, latency: Duration) {
    Event::CalloutProbe {
        target,
        addr,
        answer,
        latency,
    }
    .emit();
}

/// Shorthand for [`Event::ProbeBudgetExceeded`].
pub fn probe_budget_exceeded(addr: &Mailbox, client: Option<IpAddr>) {
    Event::ProbeBudgetExceeded { addr, client }.emit();
}
