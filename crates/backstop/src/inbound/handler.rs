//! Resolves the session's checks: every recipient judged by policy and, for in-session
//! relay, by the next hop too; the message handed on (or made durable in the queue) before the
//! client hears `250`.

use super::Context;
use crate::backscatter::quarantine;
use crate::backscatter::verdict::BatvEvidence;
use crate::config::{Listener, NextHop, RelayMode};
use crate::content::{Content, FileRange, Spill};
use crate::decide::message::{Judged, Judging};
use crate::decide::{Facts, Reason, Tally, Verified};
use crate::health::Role;
use crate::policy::Outcome;
use crate::policy::callout::Heard;
use crate::queue::{NewMessage, SpoolError};
use crate::relay::maildir::{self, Delivery};
use crate::relay::smtp::InSession;
use crate::telemetry::{Answer, Client, Event};
use backstop_proto::address::{ForwardPath, Mailbox, ReversePath};
use backstop_proto::smtp::command::{MailParams, RcptParams};
use backstop_proto::smtp::reply::{Enhanced, Reply};
use backstop_proto::smtp::server::{Check, Session, Transaction};
use std::net::SocketAddr;
use std::sync::Arc;

/// How the open transaction's message is handed on; one way per transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// While the client waits, to this next hop.
    Direct(NextHop),
    /// Into the durable queue.
    Queue,
}

impl Mode {
    fn label(&self) -> String {
        match self {
            Mode::Direct(hop) => hop.to_string(),
            Mode::Queue => "queue".into(),
        }
    }
}

/// What the gateway holds for the open transaction, next to the session's envelope.
#[derive(Default)]
struct Txn {
    /// Its id, given when MAIL is accepted: every line about it names it, and its message is
    /// queued (or relayed) as this id.
    id: String,
    /// When MAIL was accepted.
    started: Option<std::time::Instant>,
    mode: Option<Mode>,
    relay: Option<InSession>,
    rcpts: Vec<(Mailbox, RcptParams)>,
    /// The weakest BATV evidence of the recipients (none where no domain signs).
    batv: Option<BatvEvidence>,
    /// The body past what the session keeps in memory, as it arrives.
    spill: Option<Spill>,
    /// Storing it failed (logged then; the message gets `451 4.3.0`).
    spill_failed: bool,
}

/// Refusals on a relayed transaction's connection after which unknown recipients are probed
/// instead of verified by the relayed RCPT (below the point where servers slow down).
const RELAY_VERIFIES_UNTIL: u32 = 5;

/// A received message: the part the session kept in memory, then the rest from its spill file
/// (with the rest's CRC-32, for the queue).
struct Body {
    head: Vec<u8>,
    rest: Option<(FileRange, crc32fast::Hasher)>,
}

impl Body {
    /// The message with `first` in front (nothing when empty), to read piece by piece.
    fn content(&self, first: Vec<u8>) -> Content {
        let parts = match first.is_empty() {
            true => vec![self.head.clone()],
            false => vec![first, self.head.clone()],
        };
        Content {
            rest: self.rest.as_ref().map(|(r, _)| r.clone()),
            ..Content::of(parts)
        }
    }
}

/// Per-connection check resolver.
pub struct Handler {
    ctx: Arc<Context>,
    peer: SocketAddr,
    may_relay: bool,
    /// The session's unknown recipients, for the RCPT ladder.
    tally: Tally,
    txn: Txn,
    /// Messages accepted in this session.
    pub messages: u32,
    /// The session's TLS, `protocol:cipher`, once STARTTLS has worked.
    pub tls: String,
}

impl Handler {
    /// A handler for a client at `peer`, connected to `listener`.
    pub fn new(ctx: Arc<Context>, peer: SocketAddr, listener: &Listener) -> Handler {
        let may_relay = listener.may_relay(peer.ip());
        Handler {
            tally: ctx.ladder.tally(peer.ip(), may_relay),
            may_relay,
            ctx,
            peer,
            txn: Txn::default(),
            messages: 0,
            tls: String::new(),
        }
    }

    /// The open transaction's queue id (empty before the first MAIL).
    pub fn txn_id(&self) -> &str {
        &self.txn.id
    }

    /// The client as log lines name it.
    pub fn client<'a>(&'a self, session: &'a Session) -> Client<'a> {
        Client {
            ip: self.peer.ip(),
            helo: session.helo().map_or("", |h| h.name.as_str()),
            tls: &self.tls,
        }
    }

    /// The reply for one check.
    pub async fn check(&mut self, check: Check, session: &Session) -> Reply {
        match check {
            Check::Mail { from, .. } => {
                self.end_transaction();
                let reply = self.mail(&from).await;
                match reply.is_success() {
                    true => {
                        self.txn.id = self.ctx.ids.next(self.ctx.clock.unix());
                        self.txn.started = Some(std::time::Instant::now());
                    }
                    false => Event::MailRefused {
                        client: self.client(session),
                        from: &from,
                        reply: &reply,
                    }
                    .emit(),
                }
                reply
            }
            Check::Rcpt { to, params } => self.rcpt(to, &params, session).await,
            Check::Data => self.data(session).await,
            Check::Message { body, spilled } => {
                let reply = self.message(body, spilled, session).await;
                self.end_transaction();
                reply
            }
        }
    }

    /// MAIL: a local sender held by the sender watch gets `450 4.7.1` from relay networks.
    async fn mail(&self, from: &ReversePath) -> Reply {
        let refused = self.ctx.ladder.sender(from, self.may_relay).await;
        refused.unwrap_or_else(|| Reply::new(250, Enhanced::new(2, 1, 0), "Ok"))
    }

    /// Stores the next piece of the message past what the session keeps in memory, in a
    /// spill file under `state_dir` (on the blocking pool: a slow disk delays only this client).
    pub async fn spill(&mut self, piece: Vec<u8>) {
        if self.txn.spill_failed {
            return;
        }
        let dir = self.ctx.cfg.state_dir.join("spill");
        let shown = dir.display().to_string();
        let spill = self.txn.spill.take();
        let stored = tokio::task::spawn_blocking(move || {
            let mut spill = match spill {
                Some(s) => s,
                None => Spill::create(&dir)?,
            };
            spill.write(&piece).map(|()| spill)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match stored {
            Ok(spill) => self.txn.spill = Some(spill),
            Err(e) => {
                tracing::error!(id = %self.txn.id, dir = shown, error = %e,
                    "message not stored: spill file write failed");
                self.txn.spill_failed = true;
            }
        }
    }

    /// Abandons whatever transaction is open (the session ended or started a new one).
    pub fn end_transaction(&mut self) {
        self.tally.counted_out = false;
        if let Some(relay) = std::mem::take(&mut self.txn).relay {
            relay.abort();
        }
    }

    /// RCPT: one answer, recorded once with the step that gave it.
    async fn rcpt(&mut self, to: ForwardPath, params: &RcptParams, session: &Session) -> Reply {
        let rcpt = match to {
            ForwardPath::Postmaster => self.ctx.verifier.postmaster().clone(),
            ForwardPath::Mailbox(m) => m,
        };
        let (reply, result, reason) = self.answer_rcpt(rcpt.clone(), params, session).await;
        // without a transaction (no MAIL, or after RSET) there is no id either
        let (id, from) = match session.transaction() {
            Some(t) => (self.txn.id.as_str(), &t.from),
            None => ("", &ReversePath::Null),
        };
        Event::Rcpt {
            client: self.client(session),
            id,
            from,
            rcpt: &rcpt,
            reply: &reply,
            result,
            reason,
            frontend: "smtp",
        }
        .emit();
        reply
    }

    async fn answer_rcpt(
        &mut self,
        rcpt: Mailbox,
        params: &RcptParams,
        session: &Session,
    ) -> (Reply, Answer, &'static str) {
        let Some(from) = session.transaction().map(|t| t.from.clone()) else {
            return self.answer(Reason::NoMail, &rcpt);
        };
        // the relayed RCPT verifies while its connection is clean; a session collecting
        // refusals goes back to probes (whose connections are retired early)
        let relaying = self
            .txn
            .relay
            .as_ref()
            .is_none_or(|r| r.refusals() < RELAY_VERIFIES_UNTIL);
        let facts = Facts {
            client: self.peer.ip(),
            from: Some(&from),
            rcpt,
            may_relay: self.may_relay,
            relaying,
            live: true,
        };
        let v = self.ctx.ladder.rcpt(facts, &mut self.tally).await;
        let label = v.reason.label();
        if v.verified != Verified::ByRelay && !v.reply.is_success() {
            return (v.reply.clone(), v.answer(), label);
        }
        let taken = self
            .take_rcpt(v.rcpt.clone(), params, session, (v.batv, v.verified))
            .await;
        match (taken, v.verified) {
            (Ok(()), Verified::ByRelay) => self.answer(Reason::RelayValid, &v.rcpt),
            (Ok(()), _) => (v.reply, Answer::Accepted, label),
            (Err(reason), _) => self.answer(reason, &v.rcpt),
        }
    }

    /// The reply for `reason`, how it counts and its label.
    fn answer(&self, reason: Reason, rcpt: &Mailbox) -> (Reply, Answer, &'static str) {
        let reply = reason.reply(rcpt, &self.ctx.cfg.hostname);
        (reply.clone(), reason.answer(&reply), reason.label())
    }

    /// What the next hop said to a relayed RCPT, for the call-out cache: the first answer for
    /// an address it has not seen, or a correction of a cached "valid". A refusal for an
    /// unknown user becomes our own `550 5.1.1` (and counts for the harvest defence).
    async fn heard_from_relay(
        &mut self,
        rcpt: &Mailbox,
        verified: Verified,
        heard: Option<Heard>,
    ) -> Option<Reason> {
        let callout = self.ctx.verifier.callout().clone();
        match (verified, heard) {
            (Verified::ByRelay, Some(h @ Heard::Accepted(_))) => {
                callout.learned(rcpt, h).await;
                None
            }
            (Verified::ByRelay, Some(h @ Heard::Unknown(_))) => {
                callout.learned(rcpt, h).await;
                let ladder = &self.ctx.ladder;
                let cut = ladder.unknown(self.peer.ip(), &mut self.tally, "relay-invalid");
                Some(cut.unwrap_or(Reason::RelayInvalid))
            }
            (Verified::ByCallout, Some(h @ Heard::Unknown(_))) => {
                // the call-out said valid, the internal server now says no such user
                callout.heard(rcpt, h, "relay").await;
                None
            }
            _ => None,
        }
    }

    /// Adds an accepted recipient to the transaction (and, when relayed in session, to the
    /// next hop's), or the refusal with its reason.
    async fn take_rcpt(
        &mut self,
        rcpt: Mailbox,
        params: &RcptParams,
        session: &Session,
        (batv, verified): (Option<BatvEvidence>, Verified),
    ) -> Result<(), Reason> {
        let mode = match self.ctx.cfg.domain(rcpt.domain()) {
            Some(d) if d.relay == RelayMode::InSession => Mode::Direct(d.next_hop.clone()),
            // queued for our domain, or relayed for a client in relay_from
            Some(_) | None => Mode::Queue,
        };
        if self.txn.mode.as_ref().is_some_and(|m| *m != mode) {
            // one final answer per message is only possible with one way out per transaction
            return Err(Reason::MixedRoutes);
        }
        if let Mode::Direct(NextHop::Smtp(target)) = &mode {
            let Some(tx) = session.transaction() else {
                return Err(Reason::NoMail);
            };
            let relay = self
                .txn
                .relay
                .get_or_insert_with(|| InSession::new(self.ctx.relays.get(target)));
            let result = relay.rcpt(&tx.from, &tx.params, &rcpt, params).await;
            self.tell_health(
                target,
                result.as_ref().map_or_else(|r| r.answered, |_| true),
            );
            let heard = match &result {
                Ok(detail) => Some(Heard::Accepted(detail.clone())),
                Err(refusal) => refusal.said.as_ref().and_then(Heard::of),
            };
            // no answer at all (unreachable, or only a 4xx): the address could not be verified
            let unanswered = result
                .as_ref()
                .is_err_and(|r| !r.answered || r.said.as_ref().is_none_or(|s| s.code < 500));
            let own = match (verified, unanswered) {
                (Verified::ByRelay, true) => Some(Reason::Verified {
                    outcome: Outcome::Unverifiable,
                    label: "callout-unavailable",
                }),
                _ => self.heard_from_relay(&rcpt, verified, heard).await,
            };
            if let Err(refusal) = result {
                Event::RcptRelayRefused {
                    peer: self.peer.ip(),
                    rcpt: &rcpt,
                    reply: &refusal.detail,
                }
                .emit();
                return Err(own.unwrap_or(Reason::NextHopRefused(refusal.reply)));
            }
        }
        self.txn.mode = Some(mode);
        self.txn.rcpts.push((rcpt, params.clone()));
        self.txn.batv = self.txn.batv.max(batv);
        Ok(())
    }

    /// Tells the health watch whether the next hop could be reached.
    fn tell_health(&self, target: &crate::config::HostPort, answered: bool) {
        let b = &self.ctx.backends;
        let target = &crate::health::Target::Smtp(target.clone());
        match answered {
            true => b.answered(Role::NextHop, target, self.ctx.clock.unix()),
            false => b.unreachable(Role::NextHop, target),
        }
    }

    /// A bounce goes to one recipient: more than one (from outside the relay networks) is
    /// the shape of backscatter.
    async fn data(&self, session: &Session) -> Reply {
        let Some(tx) = session.transaction() else {
            return Reply::plain(354, "End data with <CR><LF>.<CR><LF>");
        };
        let rcpts: Vec<String> = self.txn.rcpts.iter().map(|(m, _)| m.to_string()).collect();
        let refused = self
            .ctx
            .ladder
            .bounce_recipients(
                (self.client(session), &self.txn.id),
                &tx.from,
                self.may_relay,
                (rcpts.len(), &rcpts.join(",")),
            )
            .await;
        refused.unwrap_or_else(|| Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
    }

    /// The end of DATA: one answer for the message, recorded with its reason.
    async fn message(&mut self, head: Vec<u8>, spilled: u64, session: &Session) -> Reply {
        let (Some(tx), Some(mode)) = (session.transaction(), self.txn.mode.clone()) else {
            return Reply::new(503, Enhanced::new(5, 5, 1), "Error: need RCPT command");
        };
        if self.txn.id.is_empty() {
            self.txn.id = self.ctx.ids.next(self.ctx.clock.unix());
        }
        let id = self.txn.id.clone();
        let nrcpt = self.txn.rcpts.len();
        let message_id =
            backstop_proto::dsn::message_id(backstop_proto::dsn::header_section(&head));
        let size = head.len() as u64 + spilled;
        let (reply, reason) = match self.body(head, spilled) {
            Ok(body) => self.take_message(&id, tx, mode, body, session).await,
            Err(e) => {
                if let Some(e) = e {
                    tracing::error!(id, error = %e, "message not stored");
                }
                (queue_file_error(), "local-failure")
            }
        };
        Event::Message {
            client: self.client(session),
            id: &id,
            from: &tx.from,
            message_id: message_id.as_deref(),
            size: size as usize,
            nrcpt,
            reply: &reply,
            result: Answer::of(reply.code),
            reason,
        }
        .emit();
        reply
    }

    /// The message as received: the part the session kept, then what was spilled. The error
    /// says why not, unless that was logged already.
    fn body(&mut self, head: Vec<u8>, spilled: u64) -> Result<Body, Option<String>> {
        if self.txn.spill_failed {
            return Err(None);
        }
        let rest = match self.txn.spill.take() {
            None if spilled == 0 => None,
            Some(s) if s.len() == spilled => Some(s.finish()),
            other => {
                let stored = other.map_or(0, |s| s.len());
                return Err(Some(format!("{spilled} bytes spilled, {stored} stored")));
            }
        };
        Ok(Body { head, rest })
    }

    async fn take_message(
        &mut self,
        id: &str,
        tx: &Transaction,
        mode: Mode,
        body: Body,
        session: &Session,
    ) -> (Reply, &'static str) {
        let unix = self.ctx.clock.unix();
        let rcpts: Vec<Mailbox> = self.txn.rcpts.iter().map(|(m, _)| m.clone()).collect();
        let (taken, lost_at) = match &mode {
            Mode::Queue => ("queued", "local-failure"),
            Mode::Direct(NextHop::Smtp(_)) => ("relayed", "next-hop"),
            Mode::Direct(NextHop::Maildir(_) | NextHop::Mx) => ("delivered", "local-failure"),
        };
        let mut trace =
            super::received(&self.ctx.cfg.hostname, session, self.peer, id, &rcpts, unix);
        let judged = self.judge((id, &tx.from, &rcpts), &trace, &body, unix);
        match judged.await {
            Judged::Deliver(None) => {}
            Judged::Deliver(Some(header)) => trace.insert_str(0, &header),
            Judged::Answer(reply, reason) => return (reply, reason),
            // carried out by `judge`
            Judged::Quarantine(_) => {}
        }
        let sent_out = self.may_relay && self.ctx.ladder.leaves(&rcpts);
        let sent_log = sent_out.then(|| backstop_proto::dsn::header_section(&body.head).to_vec());
        let result = match &mode {
            Mode::Queue => self.queue(id, unix, session, tx, trace, body).await,
            Mode::Direct(NextHop::Smtp(target)) => match self.txn.relay.take() {
                Some(relay) => {
                    let r = relay.message(&body.content(trace.into_bytes())).await;
                    self.tell_health(target, r.as_ref().map_or_else(|r| r.answered, |_| true));
                    r.map_err(|r| (r.reply, r.detail))
                }
                None => Err((lost(), "no relay transaction".into())),
            },
            Mode::Direct(NextHop::Maildir(dir)) => {
                let (dir, shown) = (dir.clone(), dir.display().to_string());
                let from = tx.from.clone();
                let (hostname, id2) = (self.ctx.cfg.hostname.clone(), id.to_string());
                let content = body.content(Vec::new());
                tokio::task::spawn_blocking(move || {
                    let d = Delivery {
                        from: &from,
                        rcpts: &rcpts,
                        trace: trace.as_bytes(),
                        body: &content,
                        id: &id2,
                        unix,
                        hostname: &hostname,
                    };
                    maildir::deliver(&dir, &d)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map(|files| format!("{} file(s) in {shown}", files.len()))
                .map_err(|e| (local_failure(), e))
            }
            Mode::Direct(NextHop::Mx) => Err((local_failure(), "no direct MX delivery".into())),
        };
        let reply = self.report(id, &mode, result);
        if let Some(head) = sent_log
            && reply.is_success()
            && let Err(e) = self.ctx.guard.record_sent(&head, unix).await
        {
            tracing::warn!(error = %e, id, "message not recorded in the sent log");
        }
        let reason = match reply.is_success() {
            true => taken,
            false => lost_at,
        };
        (reply, reason)
    }

    /// The bounce judge's verdict, as this listener carries it out (a quarantined message
    /// is kept under `state_dir/quarantine`).
    async fn judge(
        &mut self,
        (id, from, rcpts): (&str, &ReversePath, &[Mailbox]),
        trace: &str,
        body: &Body,
        now: u64,
    ) -> Judged {
        let judging = Judging {
            client: self.peer.ip(),
            id,
            from,
            rcpts,
            batv: self.txn.batv,
            head: &body.head,
            may_relay: self.may_relay,
        };
        let judged = self.ctx.ladder.judge(judging).await;
        let Judged::Quarantine(reasons) = judged else {
            return judged;
        };
        let kept = quarantine::Kept {
            id: id.to_string(),
            arrived: now,
            from: from.to_string(),
            to: rcpts.iter().map(ToString::to_string).collect(),
            reasons,
            trace: trace.to_string(),
            body: body.content(Vec::new()),
        };
        Judged::Answer(self.quarantine(kept).await, "quarantined")
    }

    /// Keeps a message under `state_dir/quarantine`; `250` once it is on disk.
    async fn quarantine(&mut self, kept: quarantine::Kept) -> Reply {
        let dir = quarantine::dir(&self.ctx.cfg.state_dir);
        let id = kept.id.clone();
        let kept = tokio::task::spawn_blocking(move || quarantine::keep(&dir, &kept))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match kept {
            Ok(path) => {
                self.messages += 1;
                tracing::info!(id, file = %path.display(), "bounce quarantined");
                Reply::new(250, Enhanced::new(2, 0, 0), format!("Ok: queued as {id}"))
            }
            Err(e) => {
                tracing::error!(id, error = %e, "quarantine write failed");
                local_failure()
            }
        }
    }

    /// Decides whether the sender may ever get a delivery report, then makes the message
    /// durable; the detail for the log.
    async fn queue(
        &self,
        id: &str,
        unix: u64,
        session: &Session,
        tx: &Transaction,
        trace: String,
        body: Body,
    ) -> Result<String, (Reply, String)> {
        let helo = session.helo().map_or("", |h| h.name.as_str());
        let ip = self.peer.ip();
        // no DNS before the 250: SPF and DKIM wait until a report is due
        let trust = crate::notify::eligibility(&tx.from, self.may_relay, ip, helo, &body.head);
        let detail = match (trust.trusted, &trust.pending) {
            (true, _) => format!("queued; reports allowed: {}", trust.why),
            (false, Some(_)) => "queued; reports: SPF and DKIM checked if one is due".to_string(),
            (false, None) => format!("queued; no reports: {}", trust.why),
        };
        // ours, leaving: signed after our Received: and before the queue, the signature on top
        let signature = match self.may_relay {
            true => {
                let sender = tx.from.mailbox().map(|m| m.domain().as_str().to_string());
                let message = body.content(trace.as_bytes().to_vec());
                crate::dkim::sign_and_log(&self.ctx.dkim, id, message, sender).await
            }
            false => Vec::new(),
        };
        let data = match signature.is_empty() {
            true => vec![trace.into_bytes(), body.head],
            false => vec![signature, trace.into_bytes(), body.head],
        };
        let m = NewMessage {
            id: id.to_string(),
            arrived: unix,
            from: tx.from.clone(),
            params: MailParams {
                size: None,
                ..tx.params.clone()
            },
            rcpts: self.txn.rcpts.clone(),
            data,
            rest: body.rest,
            trust,
        };
        match self.ctx.spool.enqueue(m).await {
            Ok(()) => Ok(detail),
            Err(e) => Err((spool_failure(&e), e.to_string())),
        }
    }

    /// Records how the message was handed on: per recipient where it went while the client
    /// waited, or its place in the queue; the reply for the client.
    fn report(&mut self, id: &str, mode: &Mode, result: Result<String, (Reply, String)>) -> Reply {
        let next_hop = mode.label();
        let (reply, detail) = match result {
            Ok(detail) => (
                Reply::new(250, Enhanced::new(2, 0, 0), format!("Ok: queued as {id}")),
                detail,
            ),
            Err((reply, detail)) => {
                Event::NotDelivered {
                    id,
                    next_hop: &next_hop,
                    detail: &detail,
                }
                .emit();
                return reply;
            }
        };
        self.messages += 1;
        if *mode == Mode::Queue {
            Event::Queued {
                id,
                detail: &detail,
            }
            .emit();
            return reply;
        }
        let delay = self
            .txn
            .started
            .map_or_else(Default::default, |s| s.elapsed());
        for (rcpt, _) in &self.txn.rcpts {
            Event::Delivered {
                id,
                rcpt,
                next_hop: &next_hop,
                delay,
                detail: &detail,
            }
            .emit();
        }
        reply
    }
}

fn lost() -> Reply {
    Reply::new(
        451,
        Enhanced::new(4, 4, 2),
        "Error: connection to internal server lost, try again later",
    )
}

fn spool_failure(e: &SpoolError) -> Reply {
    match e {
        SpoolError::Full(_) => Reply::new(
            452,
            Enhanced::new(4, 3, 1),
            "Error: insufficient system storage, try again later",
        ),
        SpoolError::Io(_) | SpoolError::Locked(_) => queue_file_error(),
    }
}

/// The message could not be written here (to the queue, or its spill file), as Postfix says it.
fn queue_file_error() -> Reply {
    Reply::new(
        451,
        Enhanced::new(4, 3, 0),
        "Error: queue file write error, try again later",
    )
}

fn local_failure() -> Reply {
    Reply::new(
        451,
        Enhanced::new(4, 3, 0),
        "Error: local delivery failed, try again later",
    )
}
