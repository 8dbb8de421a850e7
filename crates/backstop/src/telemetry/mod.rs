//! Typed events: every decision backstop makes is one [`Event`], and emitting it writes the
//! structured log line and records its metrics, from the same value, so the logs, `/metrics`
//! and the dashboard cannot drift apart.
//!
//! Responsible for: the event types, how each is logged (target `backstop::event`, with an
//! `event` field naming it) and which metrics it moves ([`metrics`]); the counters' history
//! ([`series`]). Not responsible for: deciding anything, or serving the metrics (`web`).

pub mod fields;
pub mod metrics;
pub mod series;

pub use fields::Client;

use crate::config::{BackscatterAction, HostPort};
use crate::policy::probe::ProbeAnswer;
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::smtp::reply::Reply;
use fields::{ADDRESS_MAX, Angle, Clean, MESSAGE_ID_MAX, TEXT_MAX, text};
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
        client: Client<'a>,
        /// Messages accepted in the session.
        messages: u32,
    },
    /// A client's STARTTLS handshake ended.
    Tls {
        /// The client (its TLS as negotiated, when it worked).
        client: Client<'a>,
        /// Why the handshake failed, if it did.
        error: Option<&'a str>,
    },
    /// MAIL FROM was refused (a held sender, a store failure).
    MailRefused {
        /// The client.
        client: Client<'a>,
        /// The sender given.
        from: &'a ReversePath,
        /// What the client got.
        reply: &'a Reply,
    },
    /// The session refused something by itself, before any check (a syntax error, a bare LF,
    /// a message too big, too many errors, a time limit, shutting down).
    SessionReply {
        /// The client.
        client: Client<'a>,
        /// The transaction's id, if one was open.
        id: &'a str,
        /// The transaction's sender, if one was open.
        from: Option<&'a ReversePath>,
        /// What the client got (4xx or 5xx).
        reply: &'a Reply,
    },
    /// A recipient was answered (once per RCPT, whichever step answered it).
    Rcpt {
        /// The client.
        client: Client<'a>,
        /// The transaction's id (the queue id its message gets).
        id: &'a str,
        /// The transaction's sender.
        from: &'a ReversePath,
        /// The recipient (as verified: a BATV tag stripped).
        rcpt: &'a Mailbox,
        /// What the client got.
        reply: &'a Reply,
        /// What it means to the client (a harvest cut-off's `421` counts as refused).
        result: Answer,
        /// Why, as a stable label: a verification reason (`listed`, `callout-invalid`, ...)
        /// or the step that answered (`batv-invalid`, `bounce-rate`, `outbound-limit`,
        /// `relay-refused`, ...).
        reason: &'static str,
        /// Who asked: `smtp` (backstop's own listener) or `policy` (a Postfix asking).
        frontend: &'static str,
    },
    /// A message got its answer at the end of DATA.
    Message {
        /// The client.
        client: Client<'a>,
        /// Our id.
        id: &'a str,
        /// The sender.
        from: &'a ReversePath,
        /// Its Message-ID header, if it has a usable one.
        message_id: Option<&'a str>,
        /// Bytes.
        size: usize,
        /// Recipients.
        nrcpt: usize,
        /// What the client got.
        reply: &'a Reply,
        /// What that means.
        result: Answer,
        /// `queued`, `relayed`, `delivered`, `quarantined`, `backscatter`, `next-hop`,
        /// `local-failure`, `store-failure`.
        reason: &'static str,
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
    /// What the internal server said while mail went to it contradicted the call-out cache,
    /// and the cache now says what the server said.
    CalloutCorrected {
        /// The address.
        addr: &'a Mailbox,
        /// The cached verdict (`valid`, `invalid`).
        was: &'static str,
        /// The verdict now.
        now: &'static str,
        /// `relay` or `delivery`.
        by: &'static str,
        /// The server's reply.
        reply: &'a str,
    },
    /// A directory (`ldap:` source) was searched for an address.
    DirectorySearch {
        /// Its name.
        directory: &'a str,
        /// The address.
        addr: &'a Mailbox,
        /// Its answer (valid: an entry; invalid: none; failed: the directory could not say).
        answer: &'a ProbeAnswer,
        /// How long it took.
        latency: Duration,
    },
    /// The cache of a directory's answers was consulted for an address.
    DirectoryCache {
        /// `hit`, `stale` or `miss`.
        result: &'static str,
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
    /// A recipient was handed on while the client waited (relayed or put in a Maildir).
    Delivered {
        /// Our id.
        id: &'a str,
        /// The recipient.
        rcpt: &'a Mailbox,
        /// Where.
        next_hop: &'a str,
        /// Since the transaction began.
        delay: Duration,
        /// The next hop's answer, or the files written.
        detail: &'a str,
    },
    /// A message was made durable in the queue (delivery follows: [`Event::Attempt`]).
    Queued {
        /// Our id.
        id: &'a str,
        /// Whether its sender may get reports, and why.
        detail: &'a str,
    },
    /// The next hop did not take a message; the client got a refusal, nothing was accepted.
    NotDelivered {
        /// Our id.
        id: &'a str,
        /// Where.
        next_hop: &'a str,
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
        /// The enhanced status of the outcome (`2.0.0`, `4.4.1`, `5.1.1`, ...).
        dsn: &'a str,
        /// Attempts so far, this one included.
        attempts: u32,
        /// Since the message arrived.
        delay: Duration,
        /// The next hop's answer or what went wrong.
        detail: &'a str,
        /// How long the attempt took (the whole connection, shared by its recipients).
        latency: Duration,
    },
    /// Recipients whose transaction had not begun when the gateway began to stop: not tried,
    /// handed back to the queue as they were (tried after the restart).
    HandedBack {
        /// Queue id.
        id: &'a str,
        /// Where they were to go.
        next_hop: &'a str,
        /// How many.
        rcpts: usize,
    },
    /// Whether a message's sender may get reports was decided after acceptance, when a report
    /// came due (SPF, DKIM).
    Trust {
        /// Queue id.
        id: &'a str,
        /// It may.
        trusted: bool,
        /// The evidence.
        why: &'a str,
    },
    /// A delivery connection was opened (or refused by a TLS policy): how it is encrypted.
    DeliveryTls {
        /// The server (`name[ip]:port`), or the destination when no host qualified.
        target: &'a str,
        /// `verified`, `encrypted`, `plaintext` or `policy_failed` (deferred, nothing sent).
        outcome: &'static str,
        /// Protocol and cipher, and why verified; or why the policy was not met.
        detail: &'a str,
    },
    /// A message leaving through us was DKIM-signed, or not signed though a key would have.
    Dkim {
        /// Its queue id.
        id: &'a str,
        /// `signed`, `already_signed` (it carries a valid signature of ours) or `failed`.
        result: &'static str,
        /// `d=`, empty when none was chosen.
        domain: &'a str,
        /// The selectors that signed and their algorithms, or why it was not signed.
        detail: &'a str,
        /// The algorithms of the signatures made (`rsa`, `ed25519`).
        algorithms: &'a [&'static str],
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
        /// What it got.
        reply: &'a Reply,
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
    /// A bounce was refused at DATA, before its content was seen: it had several recipients.
    BounceRefused {
        /// The client.
        client: Client<'a>,
        /// The transaction's id.
        id: &'a str,
        /// Its recipients, comma-separated.
        rcpts: &'a str,
        /// Why (`rcpts>1`).
        reasons: &'a str,
        /// What the client got.
        reply: &'a Reply,
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
    /// An internal server (next hop or call-out) was checked, or traffic showed that it
    /// answers.
    BackendCheck {
        /// `next-hop` or `callout`.
        role: &'static str,
        /// `host:port`.
        target: &'a str,
        /// It answered.
        up: bool,
        /// Why not, when it did not.
        detail: &'a str,
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

    /// One line per event (target `backstop::event`, field `event`); lines about a session
    /// or a message name it the way Postfix's do (`client=`, `helo=`, `from=`, `to=`,
    /// `message-id=`, `relay=`, `delay=`, `dsn=`), with every value from a peer cleaned.
    fn log(&self) {
        if !self.log_session() && !self.log_delivery() {
            self.log_defence();
        }
    }

    /// The SMTP dialogue: connections, TLS, MAIL, RCPT, the end of DATA. False for any other
    /// event.
    fn log_session(&self) -> bool {
        match self {
            Event::Connect { peer } => tracing::info!(
                target: "backstop::event", event = "connect", client = %peer.ip(),
                port = peer.port()
            ),
            Event::Disconnect { client, messages } => tracing::info!(
                target: "backstop::event", event = "disconnect", client = %client.ip,
                helo = %client.helo(), messages
            ),
            Event::Tls {
                client,
                error: None,
            } => tracing::info!(
                target: "backstop::event", event = "tls", client = %client.ip,
                tls = client.tls()
            ),
            Event::Tls {
                client,
                error: Some(e),
            } => tracing::info!(
                target: "backstop::event", event = "tls", client = %client.ip, tls = "failed",
                error = text(e).as_str()
            ),
            Event::MailRefused {
                client,
                from,
                reply,
            } => tracing::info!(
                target: "backstop::event", event = "mail", client = %client.ip,
                helo = %client.helo(), from = %Clean(from, ADDRESS_MAX + 2),
                result = Answer::of(reply.code).as_str(),
                reply = text(reply).as_str()
            ),
            Event::SessionReply {
                client,
                id,
                from,
                reply,
            } => tracing::info!(
                target: "backstop::event", event = "reply", id, client = %client.ip,
                helo = %client.helo(),
                from = %from.map_or_else(|| "none".to_string(), |f| Clean(f, ADDRESS_MAX + 2).to_string()),
                result = Answer::of(reply.code).as_str(), code = reply.code,
                reply = text(reply).as_str()
            ),
            Event::Rcpt { .. } => self.log_rcpt(),
            Event::Message { .. } => self.log_message(),
            Event::BounceRefused {
                client,
                id,
                rcpts,
                reasons,
                reply,
            } => tracing::info!(
                target: "backstop::event", event = "bounce_refused", id, client = %client.ip,
                helo = %client.helo(), from = "<>", to = %Clean(rcpts, TEXT_MAX), reasons,
                reply = text(reply).as_str()
            ),
            Event::ClientRefused { peer, why, reply } => tracing::warn!(
                target: "backstop::event", event = "client_refused", client = %peer.ip(), why,
                reply = text(reply).as_str()
            ),
            _ => return false,
        }
        true
    }

    fn log_rcpt(&self) {
        let Event::Rcpt {
            client,
            id,
            from,
            rcpt,
            reply,
            result,
            reason,
            frontend,
        } = self
        else {
            return;
        };
        tracing::info!(
            target: "backstop::event", event = "rcpt", id, client = %client.ip,
            helo = %client.helo(), from = %Clean(from, ADDRESS_MAX + 2), to = %Angle(rcpt),
            result = result.as_str(), reason, code = reply.code, reply = text(reply).as_str(),
            frontend
        );
    }

    fn log_message(&self) {
        let Event::Message {
            client,
            id,
            from,
            message_id,
            size,
            nrcpt,
            reply,
            result,
            reason,
        } = self
        else {
            return;
        };
        let msgid = message_id.map_or_else(|| "none".to_string(), |m| Angle(m).to_string());
        tracing::info!(
            target: "backstop::event", event = "message", id, client = %client.ip,
            helo = %client.helo(), tls = client.tls(), from = %Clean(from, ADDRESS_MAX + 2),
            size, nrcpt,
            "message-id" = %Clean(&msgid, MESSAGE_ID_MAX + 2), result = result.as_str(), reason,
            code = reply.code, reply = text(reply).as_str()
        );
    }

    /// Where accepted mail went: relayed, stored, tried from the queue, reported. False for
    /// any other event.
    fn log_delivery(&self) -> bool {
        match self {
            Event::Delivered {
                id,
                rcpt,
                next_hop,
                delay,
                detail,
            } => tracing::info!(
                target: "backstop::event", event = "delivered", id, to = %Angle(rcpt),
                relay = next_hop, delay = %Secs(*delay), dsn = "2.0.0", result = "delivered",
                detail = text(detail).as_str()
            ),
            Event::Queued { id, detail } => tracing::info!(
                target: "backstop::event", event = "queued", id, detail = text(detail).as_str()
            ),
            Event::NotDelivered {
                id,
                next_hop,
                detail,
            } => tracing::warn!(
                target: "backstop::event", event = "not_delivered", id, relay = next_hop,
                detail = text(detail).as_str()
            ),
            Event::Attempt { result, .. } if *result == "delivered" => {
                self.log_attempt(tracing::Level::INFO)
            }
            Event::Attempt { .. } => self.log_attempt(tracing::Level::WARN),
            Event::HandedBack {
                id,
                next_hop,
                rcpts,
            } => tracing::info!(
                target: "backstop::event", event = "handed_back", id, relay = next_hop, rcpts,
                "stopping: {rcpts} recipient(s) of {id} not tried, left in the queue"
            ),
            Event::RcptRelayRefused { peer, rcpt, reply } => tracing::info!(
                target: "backstop::event", event = "rcpt_relay_refused", client = %peer,
                to = %Angle(rcpt), reply = text(reply).as_str()
            ),
            Event::Trust { id, trusted, why } => tracing::info!(
                target: "backstop::event", event = "trust", id, trusted, why
            ),
            Event::DeliveryTls {
                target,
                outcome,
                detail,
            } if *outcome == "policy_failed" => tracing::warn!(
                target: "backstop::event", event = "delivery_tls", relay = target, tls = outcome,
                detail
            ),
            Event::DeliveryTls {
                target,
                outcome,
                detail,
            } => tracing::info!(
                target: "backstop::event", event = "delivery_tls", relay = target, tls = outcome,
                detail
            ),
            Event::Dkim {
                id,
                result,
                domain,
                detail,
                ..
            } if *result == "failed" => tracing::warn!(
                target: "backstop::event", event = "dkim", id, result, domain, detail
            ),
            Event::Dkim {
                id,
                result,
                domain,
                detail,
                ..
            } => tracing::info!(
                target: "backstop::event", event = "dkim", id, result, domain, detail
            ),
            Event::ReportSent {
                id,
                kind,
                report_id,
                to,
                rcpts,
            } => tracing::info!(
                target: "backstop::event", event = "report_sent", id, kind, report_id,
                to = %Angle(to), rcpts
            ),
            Event::ReportSuppressed {
                id, kind, to, why, ..
            } => tracing::warn!(
                target: "backstop::event", event = "report_suppressed", id, kind,
                to = %Angle(to), why
            ),
            Event::NoReport { id, rcpt, why, .. } => tracing::info!(
                target: "backstop::event", event = "no_report", id, to = %Angle(rcpt), why
            ),
            _ => return false,
        }
        true
    }

    fn log_attempt(&self, level: tracing::Level) {
        let Event::Attempt {
            id,
            rcpt,
            next_hop,
            result,
            dsn,
            attempts,
            delay,
            detail,
            latency,
        } = self
        else {
            return;
        };
        let (delay, ms) = (Secs(*delay), latency.as_millis() as u64);
        macro_rules! line {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "backstop::event", event = "attempt", id, to = %Angle(rcpt),
                    relay = next_hop, delay = %delay, dsn, result, attempts,
                    detail = text(detail).as_str(), latency_ms = ms
                )
            };
        }
        match level {
            tracing::Level::INFO => line!(info),
            _ => line!(warn),
        }
    }

    /// The defences, probes, checks and alerts.
    fn log_defence(&self) {
        match self {
            Event::CalloutCache { result } => {
                tracing::debug!(target: "backstop::event", event = "callout_cache", result)
            }
            Event::DirectoryCache { result } => {
                tracing::debug!(target: "backstop::event", event = "directory_cache", result)
            }
            Event::DirectorySearch {
                directory,
                addr,
                answer,
                latency,
            } => {
                let (answer, detail) = answer.parts();
                tracing::info!(
                    target: "backstop::event", event = "directory_search", directory, %addr,
                    answer, detail = text(detail).as_str(), latency_ms = latency.as_millis() as u64
                )
            }
            Event::CalloutProbe {
                target,
                addr,
                answer,
                latency,
            } => {
                let (answer, reply) = answer.parts();
                let code = reply.get(..3).and_then(|c| c.parse::<u16>().ok());
                tracing::info!(
                    target: "backstop::event", event = "callout_probe", %target, %addr, answer,
                    code, reply = text(reply).as_str(), latency_ms = latency.as_millis() as u64
                )
            }
            Event::CalloutCorrected {
                addr,
                was,
                now,
                by,
                reply,
            } => tracing::info!(
                target: "backstop::event", event = "callout_corrected", %addr, was, now, by,
                reply = text(reply).as_str()
            ),
            Event::ProbeBudgetExceeded { addr, client } => tracing::warn!(
                target: "backstop::event", event = "probe_budget_exceeded", %addr,
                client = %client.map_or_else(|| "none".to_string(), |c| c.to_string())
            ),
            Event::ClientBlocked { peer, blocked } => tracing::warn!(
                target: "backstop::event", event = "client_blocked", client = %peer, blocked
            ),
            Event::OutboundLimit { peer, rcpt, limit } => tracing::warn!(
                target: "backstop::event", event = "outbound_limit", client = %peer,
                to = %Angle(rcpt), limit
            ),
            Event::Alert {
                kind,
                subject,
                detail,
            } => tracing::warn!(
                target: "backstop::event", event = "alert", kind, subject,
                detail = text(detail).as_str()
            ),
            Event::HarvestCutOff { peer, unknown } => tracing::warn!(
                target: "backstop::event", event = "harvest_cut_off", client = %peer, unknown
            ),
            Event::Batv {
                peer,
                rcpt,
                result,
                refused,
            } => tracing::info!(
                target: "backstop::event", event = "batv", client = %peer, to = %Angle(rcpt),
                batv = result, refused = refused.is_some()
            ),
            Event::BounceRateExceeded { peer, rcpt } => tracing::warn!(
                target: "backstop::event", event = "bounce_rate_exceeded", client = %peer,
                to = %Angle(rcpt)
            ),
            Event::Dnsbl { ip, zone, listed } => {
                tracing::info!(target: "backstop::event", event = "dnsbl", %ip, zone, listed)
            }
            // each check: a change of state is also an alert (backend_down, backend_up)
            Event::BackendCheck {
                role,
                target,
                up,
                detail,
            } => tracing::debug!(
                target: "backstop::event", event = "backend_check", role, target, up,
                error = text(detail).as_str()
            ),
            Event::BounceVerdict {
                peer,
                id,
                verdict,
                reasons,
                action,
            } => tracing::info!(
                target: "backstop::event", event = "bounce_verdict", id, client = %peer, verdict,
                reasons, action = action.label()
            ),
            _ => {}
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
            Event::Rcpt {
                result,
                reason,
                frontend,
                ..
            } => counter!(
                "backstop_rcpt_total", "result" => result.as_str(), "reason" => *reason,
                "frontend" => *frontend
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
            Event::DirectoryCache { result } => {
                counter!("backstop_directory_cache_total", "result" => *result).increment(1)
            }
            Event::DirectorySearch {
                directory,
                answer,
                latency,
                ..
            } => {
                let (outcome, _) = answer.parts();
                let directory = directory.to_string();
                counter!("backstop_directory_searches_total", "directory" => directory, "outcome" => outcome)
                    .increment(1);
                histogram!("backstop_directory_search_seconds").record(latency.as_secs_f64());
            }
            Event::CalloutCorrected { now, by, .. } => counter!(
                "backstop_callout_corrections_total", "to" => *now, "by" => *by
            )
            .increment(1),
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
            Event::DeliveryTls { outcome, .. } => {
                counter!("backstop_delivery_tls_total", "outcome" => *outcome).increment(1)
            }
            Event::Dkim {
                result, algorithms, ..
            } => {
                counter!("backstop_dkim_messages_total", "result" => *result).increment(1);
                for a in *algorithms {
                    counter!("backstop_dkim_signatures_total", "algorithm" => *a).increment(1);
                }
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
            | Event::SessionReply { .. }
            | Event::Tls { .. }
            | Event::MailRefused { .. }
            | Event::BackendCheck { .. }
            | Event::RcptRelayRefused { .. }
            | Event::Delivered { .. }
            | Event::Queued { .. }
            | Event::HandedBack { .. }
            | Event::Trust { .. }
            | Event::NotDelivered { .. } => {}
        }
    }
}

/// A duration as Postfix writes delays: seconds with two decimals (`delay=0.12`).
pub struct Secs(pub Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}", self.0.as_secs_f64())
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
