//! Typed events: every decision backstop makes is one [`Event`], and emitting it writes the
//! structured log line and records its metrics, from the same value, so the logs, `/metrics`
//! and the dashboard cannot drift apart.
//!
//! Responsible for: the event types, how each is logged (target `backstop::event`, with an
//! `event` field naming it) and which metrics it moves ([`metrics`]); the counters' history
//! ([`series`]). Not responsible for: deciding anything, or serving the metrics (`web`).

pub mod metrics;
pub mod series;

use crate::config::{BackscatterAction, HostPort};
use crate::policy::probe::ProbeAnswer;
use backstop_proto::address::Mailbox;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The class of an answer to a client: what a reply's first digit means to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx (or 3xx): taken.
    Accepted,
    /// 4xx: try again later.
    Deferred,
    /// 5xx: refused.
    Refused,
}

impl Answer {
    /// The class of reply code `code`.
    pub fn of(code: u16) -> Answer {
        match code {
            400..=499 => Answer::Deferred,
            500.. => Answer::Refused,
            _ => Answer::Accepted,
        }
    }

    /// `accepted`, `deferred` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Accepted => "accepted",
            Answer::Deferred => "deferred",
            Answer::Refused => "refused",
        }
    }
}

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
    /// A recipient was answered (once per RCPT, whichever step answered it).
    Rcpt {
        /// The client.
        peer: IpAddr,
        /// The recipient (as verified: a BATV tag stripped).
        rcpt: &'a Mailbox,
        /// The reply code given.
        code: u16,
        /// What it means to the client (a harvest cut-off's `421` counts as refused).
        result: Answer,
        /// Why, as a stable label: a verification reason (`listed`, `callout-invalid`, ...)
        /// or the step that answered (`batv-invalid`, `bounce-rate`, `outbound-limit`,
        /// `relay-refused`, ...).
        reason: &'static str,
    },
    /// A message got its answer at the end of DATA.
    Message {
        /// The client.
        peer: IpAddr,
        /// Our id.
        id: &'a str,
        /// The reply code given.
        code: u16,
        /// What that means.
        result: Answer,
        /// `queued`, `relayed`, `delivered`, `quarantined`, `backscatter`, `next-hop`,
        /// `local-failure`, `store-failure`.
        reason: &'static str,
        /// Recipients.
        rcpts: usize,
        /// Bytes.
        size: usize,
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
    /// The call-out cache was consulted for an address.
    CalloutCache {
        /// `hit` (fresh), `stale` (served, refreshed in the background) or `miss`.
        result: &'static str,
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
        /// How long the attempt took (the whole connection, shared by its recipients).
        latency: Duration,
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
        /// Which budget, with the count.
        why: &'a str,
        /// `budget-recipient`, `budget-domain` or `budget-total`.
        label: &'static str,
    },
    /// A recipient failed and its sender gets no report (untrusted or null sender, NOTIFY).
    NoReport {
        /// The original's queue id.
        id: &'a str,
        /// The recipient that failed.
        rcpt: &'a Mailbox,
        /// Why no report.
        why: &'a str,
        /// `null-sender`, `untrusted-sender`, `not-requested` or `limit`; none when no report
        /// was withheld (the next hop reports) or it was counted as suppressed.
        label: Option<&'static str>,
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
        /// The reason the recipient was refused for it (`batv-missing`, ...), if it was.
        refused: Option<&'static str>,
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
    /// One of our IPs was looked up in a DNSBL zone.
    Dnsbl {
        /// Our IP.
        ip: IpAddr,
        /// The zone.
        zone: &'a str,
        /// Listed or not.
        listed: bool,
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
    /// Records the event: its log line and its metrics.
    pub fn emit(&self) {
        self.log();
        self.count();
    }

    fn log(&self) {
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
                code,
                result,
                reason,
            } => tracing::info!(
                target: "backstop::event", event = "rcpt", %peer, %rcpt, code,
                result = result.as_str(), reason
            ),
            Event::Message {
                peer,
                id,
                code,
                result,
                reason,
                rcpts,
                size,
            } => tracing::info!(
                target: "backstop::event", event = "message", %peer, id, code,
                result = result.as_str(), reason, rcpts, size
            ),
            Event::CalloutCache { result } => {
                tracing::debug!(target: "backstop::event", event = "callout_cache", result)
            }
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
                latency,
            } => {
                let ms = latency.as_millis() as u64;
                match *result {
                    "delivered" => tracing::info!(
                        target: "backstop::event", event = "attempt", id, %rcpt, next_hop,
                        result, attempts, detail, latency_ms = ms
                    ),
                    _ => tracing::warn!(
                        target: "backstop::event", event = "attempt", id, %rcpt, next_hop,
                        result, attempts, detail, latency_ms = ms
                    ),
                }
            }
            Event::ReportSent {
                id,
                kind,
                report_id,
                to,
                rcpts,
            } => tracing::info!(
                target: "backstop::event", event = "report_sent", id, kind, report_id, %to, rcpts
            ),
            Event::ReportSuppressed {
                id,
                kind,
                to,
                why,
                label: _,
            } => tracing::warn!(
                target: "backstop::event", event = "report_suppressed", id, kind, %to, why
            ),
            Event::NoReport { id, rcpt, why, .. } => tracing::info!(
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
                target: "backstop::event", event = "batv", %peer, %rcpt, batv = result,
                refused = refused.is_some()
            ),
            Event::BounceRateExceeded { peer, rcpt } => tracing::warn!(
                target: "backstop::event", event = "bounce_rate_exceeded", %peer, %rcpt
            ),
            Event::BounceRefused { peer, id, reasons } => tracing::info!(
                target: "backstop::event", event = "bounce_refused", %peer, id, reasons
            ),
            Event::Dnsbl { ip, zone, listed } => {
                tracing::info!(target: "backstop::event", event = "dnsbl", %ip, zone, listed)
            }
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

    /// The metrics the event moves (names and help in [`metrics`]). Labels take only values
    /// from fixed sets: never an address, an IP of a client or a free text.
    fn count(&self) {
        use ::metrics::{counter, gauge, histogram};
        match self {
            Event::Connect { .. } => counter!("backstop_connections_total").increment(1),
            Event::ClientRefused { why, .. } => {
                counter!("backstop_connections_refused_total", "reason" => *why).increment(1)
            }
            Event::Rcpt { result, reason, .. } => counter!(
                "backstop_rcpt_total", "result" => result.as_str(), "reason" => *reason
            )
            .increment(1),
            Event::Message { result, reason, .. } => counter!(
                "backstop_messages_total", "result" => result.as_str(), "reason" => *reason
            )
            .increment(1),
            Event::CalloutProbe {
                answer, latency, ..
            } => {
                let outcome = match answer {
                    ProbeAnswer::Valid(_) => "valid",
                    ProbeAnswer::Invalid(_) => "invalid",
                    ProbeAnswer::Failed(_) => "failed",
                };
                counter!("backstop_callout_probes_total", "outcome" => outcome).increment(1);
                histogram!("backstop_callout_probe_seconds").record(latency.as_secs_f64());
            }
            Event::CalloutCache { result } => {
                counter!("backstop_callout_cache_total", "result" => *result).increment(1)
            }
            Event::ProbeBudgetExceeded { .. } => {
                counter!("backstop_callout_budget_exceeded_total").increment(1)
            }
            Event::Attempt {
                result, latency, ..
            } => {
                counter!("backstop_delivery_attempts_total", "result" => *result).increment(1);
                histogram!("backstop_delivery_seconds").record(latency.as_secs_f64());
            }
            Event::ReportSent { kind, .. } => {
                counter!("backstop_reports_sent_total", "kind" => *kind).increment(1)
            }
            Event::ReportSuppressed { label, .. }
            | Event::NoReport {
                label: Some(label), ..
            } => counter!("backstop_reports_suppressed_total", "why" => *label).increment(1),
            Event::NoReport { label: None, .. } => {}
            Event::ClientBlocked { .. } => counter!("backstop_clients_blocked_total").increment(1),
            Event::HarvestCutOff { .. } => counter!("backstop_harvest_cutoffs_total").increment(1),
            Event::OutboundLimit { .. } => counter!("backstop_outbound_limited_total").increment(1),
            Event::Alert { kind, .. } => {
                counter!("backstop_alerts_total", "kind" => *kind).increment(1)
            }
            Event::Batv {
                result, refused, ..
            } => {
                counter!("backstop_batv_total", "result" => *result).increment(1);
                if let Some(reason) = refused {
                    counter!("backstop_bounces_refused_total", "reason" => *reason).increment(1)
                }
            }
            Event::BounceRateExceeded { .. } => {
                counter!("backstop_bounces_refused_total", "reason" => "rate").increment(1)
            }
            Event::BounceRefused { reasons, .. } => {
                let reason = reasons.to_string();
                counter!("backstop_bounces_refused_total", "reason" => reason).increment(1)
            }
            Event::BounceVerdict {
                verdict, action, ..
            } => {
                let action = crate::config::BackscatterAction::label(*action);
                counter!("backstop_bounce_verdicts_total", "verdict" => *verdict, "action" => action)
                    .increment(1);
                if *verdict == "backscatter" && action == "reject" {
                    counter!("backstop_bounces_refused_total", "reason" => "backscatter")
                        .increment(1);
                }
            }
            Event::Dnsbl { ip, zone, listed } => gauge!(
                "backstop_dnsbl_listed", "ip" => ip.to_string(), "zone" => zone.to_string()
            )
            .set(f64::from(u8::from(*listed))),
            Event::Disconnect { .. }
            | Event::RcptRelayRefused { .. }
            | Event::Delivered { .. }
            | Event::NotDelivered { .. } => {}
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
