//! The spool's in-memory index: every queued message's envelope and recipient statuses, which
//! segment holds its body, and the schedule of what falls due when.
//!
//! Responsible for: replaying log frames, applying changes (the same code at run time and at
//! replay, so both agree), leases, and choosing segments to reclaim.
//! Not responsible for: any I/O (the spool writes the frames this index's changes describe).

use super::log::{self, Frame, KIND_CHANGE, KIND_MESSAGE};
use backstop_proto::address::{ForwardPath, Mailbox, ReversePath};
use backstop_proto::smtp::command::{Command, MailParams, RcptParams};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// A recipient's delivery status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Status {
    /// Waiting for an attempt (`attempts` 0) or deferred after temporary failures.
    Queued {
        /// Attempts made so far.
        attempts: u32,
        /// Unix time of the next attempt.
        next_attempt: u64,
        /// The last temporary failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<String>,
    },
    /// Accepted by the next hop.
    Delivered {
        /// Unix time.
        at: u64,
        /// The next hop's answer.
        reply: String,
        /// When a success report is ours to send (RFC 3461 §5.2): `delivered` (stored here)
        /// or `relayed` (the next hop did not take DSN parameters). `None`: the next hop took
        /// the DSN request over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        /// The host that answered, for Remote-MTA.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
    },
    /// Failed permanently (or expired); kept for the operator.
    Failed {
        /// Unix time.
        at: u64,
        /// The next hop's answer or what went wrong.
        reason: String,
        /// RFC 3463 status for the delivery report (such as `5.1.1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// The host that answered, for Remote-MTA.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
        /// The remote SMTP reply, for Diagnostic-Code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diagnostic: Option<String>,
    },
}

impl Status {
    /// True once nothing more will be tried for the recipient.
    pub fn is_final(&self) -> bool {
        match self {
            Status::Queued { .. } => false,
            Status::Delivered { .. } | Status::Failed { .. } => true,
        }
    }
}

/// Whether a message's sender may ever get a delivery report: decided at acceptance from what
/// the session knows (a relay client, a null sender, a report), or, when that needs DNS (SPF,
/// DKIM), left pending with the facts the check needs and decided when a report is due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// A report may be sent to the envelope sender.
    pub trusted: bool,
    /// The evidence, for the operator: `relay network 10.0.0.0/8`, `spf=pass (example.test)`,
    /// `null sender`, `spf=fail dkim=none`.
    pub why: String,
    /// Not decided yet: what the session knew that SPF needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// What an SPF check made after acceptance needs from the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The client's IP address.
    pub ip: std::net::IpAddr,
    /// Its HELO name.
    pub helo: String,
}

impl Trust {
    /// Decided: the sender may get reports, because of `why`.
    pub fn yes(why: impl Into<String>) -> Trust {
        Trust {
            trusted: true,
            why: why.into(),
            pending: None,
        }
    }

    /// Decided: never a report, because of `why`.
    pub fn no(why: impl Into<String>) -> Trust {
        Trust {
            trusted: false,
            why: why.into(),
            pending: None,
        }
    }

    /// To be decided by SPF and DKIM when a report is due; no report until then.
    pub fn undecided(ip: std::net::IpAddr, helo: &str) -> Trust {
        Trust {
            trusted: false,
            why: "not checked yet (SPF and DKIM are checked when a report is due)".into(),
            pending: Some(Pending {
                ip,
                helo: helo.to_string(),
            }),
        }
    }
}

impl Default for Trust {
    /// Messages queued before reports existed: never reported.
    fn default() -> Trust {
        Trust::no("not recorded")
    }
}

/// One recipient as stored: its RCPT command (with the original DSN parameters) and status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RcptMeta {
    pub rcpt: String,
    pub status: Status,
    /// What became of the recipient's report, once decided (`reported (first)`, `suppressed:
    /// ...`, `not requested (NOTIFY)`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// A message's envelope and state as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub id: String,
    pub arrived: u64,
    pub mail: String,
    pub rcpts: Vec<RcptMeta>,
    #[serde(default)]
    pub held: bool,
    #[serde(default)]
    pub trust: Trust,
    /// Report kinds already decided (sent or suppressed): `first`, `last`, `delay`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<String>,
}

/// A change to a queued message, as logged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum Change {
    Update {
        id: String,
        rcpts: Vec<(usize, Status)>,
    },
    Hold {
        id: String,
        held: bool,
    },
    Delete {
        id: String,
    },
    /// Whether the sender may get reports was decided (after acceptance).
    Trust {
        id: String,
        trust: Trust,
    },
    /// Reports were decided for some recipients; `done`: nothing is left to do or show.
    Reported {
        id: String,
        kind: Option<String>,
        rcpts: Vec<(usize, String)>,
        done: bool,
    },
}

/// Where a message's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyLoc {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

/// The envelope, parsed back from its stored commands.
#[derive(Clone, Debug)]
struct Envelope {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<(Mailbox, RcptParams)>,
}

impl Envelope {
    fn parse(meta: &Meta) -> Option<Envelope> {
        let Ok(Command::Mail { from, params }) = Command::parse(meta.mail.as_bytes()) else {
            return None;
        };
        let mut rcpts = Vec::with_capacity(meta.rcpts.len());
        for r in &meta.rcpts {
            let Ok(Command::Rcpt {
                to: ForwardPath::Mailbox(m),
                params,
            }) = Command::parse(r.rcpt.as_bytes())
            else {
                return None;
            };
            rcpts.push((m, params));
        }
        Some(Envelope {
            from,
            params,
            rcpts,
        })
    }
}

/// A queued message in memory.
pub(crate) struct Entry {
    meta: Meta,
    env: Envelope,
    body: BodyLoc,
    leased: bool,
    due: Option<u64>,
}

impl Entry {
    /// An entry for a stored message; `None` if its envelope cannot be read back.
    pub fn new(meta: Meta, body: BodyLoc) -> Option<Entry> {
        let env = Envelope::parse(&meta)?;
        Some(Entry {
            meta,
            env,
            body,
            leased: false,
            due: None,
        })
    }

    fn due_at(&self) -> Option<u64> {
        if self.leased || self.meta.held {
            return None;
        }
        self.meta
            .rcpts
            .iter()
            .filter_map(|r| match r.status {
                Status::Queued { next_attempt, .. } => Some(next_attempt),
                Status::Delivered { .. } | Status::Failed { .. } => None,
            })
            .min()
    }

    /// Every recipient delivered, none waiting for a success report of ours.
    fn all_delivered(&self) -> bool {
        self.meta
            .rcpts
            .iter()
            .zip(&self.env.rcpts)
            .all(|(r, (_, p))| {
                let wants_success = p.notify.is_some_and(|n| n.success);
                match &r.status {
                    Status::Delivered { action, .. } => !(wants_success && action.is_some()),
                    Status::Queued { .. } | Status::Failed { .. } => false,
                }
            })
    }
}

/// A message handed to delivery: only the recipients due now.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Queue id.
    pub id: String,
    /// Arrival time.
    pub arrived: u64,
    /// Envelope sender.
    pub from: ReversePath,
    /// MAIL parameters.
    pub params: MailParams,
    /// The recipients to try.
    pub rcpts: Vec<LeasedRcpt>,
    pub(crate) body: BodyLoc,
}

/// A recipient to try, with its index in the message.
#[derive(Clone, Debug)]
pub struct LeasedRcpt {
    /// Index in the message's recipient list (for [`super::Spool::finish`]).
    pub index: usize,
    /// The address.
    pub mailbox: Mailbox,
    /// Its DSN parameters.
    pub params: RcptParams,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// A message as the operator sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Queue id.
    pub id: String,
    /// Arrival (unix seconds).
    pub arrived: u64,
    /// Size in bytes.
    pub size: u64,
    /// Envelope sender (`<>` for the null sender).
    pub from: String,
    /// Held by the operator.
    pub held: bool,
    /// Why it is held, when the sender watch held it (filled in by the control socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_why: Option<String>,
    /// Whether the sender may get delivery reports, and why.
    pub trust: Trust,
    /// Recipients.
    pub rcpts: Vec<RcptSummary>,
}

/// A recipient as the operator sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RcptSummary {
    /// The address.
    pub addr: String,
    /// Its status.
    pub status: Status,
    /// What became of its delivery report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// A message's whole state, for deciding its delivery reports.
#[derive(Clone, Debug)]
pub struct Record {
    /// Queue id.
    pub id: String,
    /// Arrival time.
    pub arrived: u64,
    /// Envelope sender.
    pub from: ReversePath,
    /// MAIL parameters (RET, ENVID, SMTPUTF8).
    pub params: MailParams,
    /// Whether the sender may get reports.
    pub trust: Trust,
    /// Report kinds already decided.
    pub reports: Vec<String>,
    /// Every recipient.
    pub rcpts: Vec<RcptRecord>,
    /// Being delivered right now (its statuses are about to change).
    pub leased: bool,
}

/// One recipient's state, for deciding reports.
#[derive(Clone, Debug)]
pub struct RcptRecord {
    /// The address.
    pub mailbox: Mailbox,
    /// Its DSN parameters (NOTIFY, ORCPT).
    pub params: RcptParams,
    /// Its status.
    pub status: Status,
    /// What became of its report, once decided.
    pub report: Option<String>,
}

/// The message frame for `meta` and body `parts`, and where the body starts in it.
/// The frame of a new message: its envelope, then `parts`, then (written after these bytes by
/// the writer) the `tail` of that length and checksum. Returns the bytes and the offset of the
/// message in the frame.
pub(crate) fn message_frame(
    meta: &Meta,
    parts: &[&[u8]],
    tail: Option<(u64, &crc32fast::Hasher)>,
) -> (Vec<u8>, u64) {
    let json = serde_json::to_vec(meta).expect("meta serializes");
    let len = (json.len() as u32).to_le_bytes();
    let mut all: Vec<&[u8]> = vec![&len, &json];
    all.extend_from_slice(parts);
    let mut out =
        Vec::with_capacity(64 + json.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    log::frame_with_tail(&mut out, KIND_MESSAGE, &all, tail);
    (out, log::PAYLOAD_OFFSET + 4 + json.len() as u64)
}

/// The frame for a change.
pub(crate) fn change_frame(change: &Change) -> Vec<u8> {
    let json = serde_json::to_vec(change).expect("change serializes");
    let mut out = Vec::with_capacity(json.len() + 16);
    log::frame(&mut out, KIND_CHANGE, &[&json]);
    out
}

/// All queued messages, the schedule, and which segments hold what.
#[derive(Default)]
pub(crate) struct Index {
    msgs: HashMap<String, Entry>,
    due: BTreeSet<(u64, String)>,
    /// Segment files in use, oldest first.
    pub segments: BTreeSet<u64>,
    /// Per segment: messages whose body is in it, and their bytes.
    live: HashMap<u64, (u64, u64)>,
    /// The segment being written.
    pub current: u64,
}

impl Index {
    /// Replays one frame read back from segment `segment`.
    pub fn replay(&mut self, segment: u64, f: &Frame<'_>) {
        match f.kind {
            KIND_MESSAGE => {
                let Some((meta, body_at)) = parse_message(f.payload) else {
                    tracing::error!(
                        segment,
                        offset = f.offset,
                        "spool: unreadable message record skipped"
                    );
                    return;
                };
                let body = BodyLoc {
                    segment,
                    offset: f.offset + body_at,
                    len: f.payload.len() as u64 - body_at,
                };
                let id = meta.id.clone();
                self.remove(&id);
                match Entry::new(meta, body) {
                    Some(e) => self.insert(e),
                    None => {
                        tracing::error!(%id, "spool: message with an unreadable envelope skipped")
                    }
                }
            }
            KIND_CHANGE => match serde_json::from_slice::<Change>(f.payload) {
                Ok(c) => {
                    self.apply(&c);
                }
                Err(e) => tracing::error!(segment, error = %e, "spool: unreadable change skipped"),
            },
            other => tracing::error!(segment, kind = other, "spool: unknown record kind skipped"),
        }
    }

    /// Adds a message.
    pub fn insert(&mut self, e: Entry) {
        let live = self.live.entry(e.body.segment).or_default();
        live.0 += 1;
        live.1 += e.body.len;
        let id = e.meta.id.clone();
        self.msgs.insert(id.clone(), e);
        self.schedule(&id);
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.msgs.remove(id)?;
        if let Some(t) = e.due {
            self.due.remove(&(t, id.to_string()));
        }
        if let Some(live) = self.live.get_mut(&e.body.segment) {
            live.0 -= 1;
            live.1 -= e.body.len;
        }
        Some(e)
    }

    fn schedule(&mut self, id: &str) {
        let Some(e) = self.msgs.get_mut(id) else {
            return;
        };
        let new = e.due_at();
        if new == e.due {
            return;
        }
        if let Some(t) = e.due.take() {
            self.due.remove(&(t, id.to_string()));
        }
        if let Some(t) = new {
            self.due.insert((t, id.to_string()));
        }
        e.due = new;
    }

    /// Applies a change; false when the message is not (or no longer) queued.
    pub fn apply(&mut self, c: &Change) -> bool {
        let id = match c {
            Change::Update { id, .. }
            | Change::Hold { id, .. }
            | Change::Delete { id }
            | Change::Trust { id, .. }
            | Change::Reported { id, .. } => id,
        };
        let Some(e) = self.msgs.get_mut(id) else {
            return false;
        };
        match c {
            Change::Update { rcpts, .. } => {
                for (i, s) in rcpts {
                    if let Some(r) = e.meta.rcpts.get_mut(*i) {
                        r.status = s.clone();
                    }
                }
                if e.all_delivered() {
                    self.remove(id);
                    return true;
                }
            }
            Change::Hold { held, .. } => e.meta.held = *held,
            Change::Trust { trust, .. } => e.meta.trust = trust.clone(),
            Change::Delete { .. }
            | Change::Reported {
                done: true,
                kind: _,
                rcpts: _,
                ..
            } => {
                self.remove(id);
                return true;
            }
            Change::Reported {
                kind,
                rcpts,
                done: false,
                ..
            } => {
                e.meta.reports.extend(kind.iter().cloned());
                for (i, note) in rcpts {
                    if let Some(r) = e.meta.rcpts.get_mut(*i) {
                        r.report = Some(note.clone());
                    }
                }
            }
        }
        self.schedule(id);
        true
    }

    /// Leases up to `max` messages due at `now`.
    pub fn take_due(&mut self, now: u64, max: usize) -> Vec<Lease> {
        let ids: Vec<String> = self
            .due
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        ids.iter().filter_map(|id| self.lease(id, now)).collect()
    }

    fn lease(&mut self, id: &str, now: u64) -> Option<Lease> {
        let e = self.msgs.get_mut(id)?;
        e.leased = true;
        let rcpts = e
            .meta
            .rcpts
            .iter()
            .zip(&e.env.rcpts)
            .enumerate()
            .filter_map(|(index, (r, (mailbox, params)))| match r.status {
                Status::Queued {
                    attempts,
                    next_attempt,
                    ..
                } if next_attempt <= now => Some(LeasedRcpt {
                    index,
                    mailbox: mailbox.clone(),
                    params: params.clone(),
                    attempts,
                }),
                Status::Queued { .. } | Status::Delivered { .. } | Status::Failed { .. } => None,
            })
            .collect();
        let lease = Lease {
            id: id.to_string(),
            arrived: e.meta.arrived,
            from: e.env.from.clone(),
            params: e.env.params.clone(),
            rcpts,
            body: e.body,
        };
        self.schedule(id);
        Some(lease)
    }

    /// Ends a lease.
    pub fn unlease(&mut self, id: &str) {
        if let Some(e) = self.msgs.get_mut(id) {
            e.leased = false;
        }
        self.schedule(id);
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// When the earliest waiting message falls due.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Makes the queued recipients of `id` (or all messages) due at `now`; held messages are
    /// left alone.
    pub fn retry(&mut self, id: Option<&str>, now: u64) -> usize {
        let ids: Vec<String> = match id {
            Some(id) => self
                .msgs
                .contains_key(id)
                .then(|| id.to_string())
                .into_iter()
                .collect(),
            None => self.msgs.keys().cloned().collect(),
        };
        let mut n = 0;
        for id in ids {
            let Some(e) = self.msgs.get_mut(&id).filter(|e| !e.meta.held) else {
                continue;
            };
            let mut touched = false;
            for r in &mut e.meta.rcpts {
                if let Status::Queued { next_attempt, .. } = &mut r.status
                    && *next_attempt > now
                {
                    *next_attempt = now;
                    touched = true;
                }
            }
            n += usize::from(touched);
            self.schedule(&id);
        }
        n
    }

    /// Where a message's body is.
    pub fn body_of(&self, id: &str) -> Option<BodyLoc> {
        self.msgs.get(id).map(|e| e.body)
    }

    /// The stored form of a message.
    pub fn meta(&self, id: &str) -> Option<&Meta> {
        self.msgs.get(id).map(|e| &e.meta)
    }

    /// Every message, oldest first.
    pub fn list(&self) -> Vec<Summary> {
        let mut out: Vec<Summary> = self.msgs.keys().filter_map(|id| self.summary(id)).collect();
        out.sort_by(|a, b| (a.arrived, &a.id).cmp(&(b.arrived, &b.id)));
        out
    }

    /// One message as the operator sees it.
    pub fn summary(&self, id: &str) -> Option<Summary> {
        let e = self.msgs.get(id)?;
        let from = match &e.env.from {
            ReversePath::Null => "<>".to_string(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        Some(Summary {
            id: e.meta.id.clone(),
            arrived: e.meta.arrived,
            size: e.body.len,
            from,
            held: e.meta.held,
            held_why: None,
            trust: e.meta.trust.clone(),
            rcpts: e
                .env
                .rcpts
                .iter()
                .zip(&e.meta.rcpts)
                .map(|((m, _), r)| RcptSummary {
                    addr: m.to_string(),
                    status: r.status.clone(),
                    report: r.report.clone(),
                })
                .collect(),
        })
    }

    /// A message's whole state.
    pub fn record(&self, id: &str) -> Option<Record> {
        let e = self.msgs.get(id)?;
        Some(Record {
            id: e.meta.id.clone(),
            arrived: e.meta.arrived,
            from: e.env.from.clone(),
            params: e.env.params.clone(),
            trust: e.meta.trust.clone(),
            reports: e.meta.reports.clone(),
            rcpts: e
                .env
                .rcpts
                .iter()
                .zip(&e.meta.rcpts)
                .map(|((mailbox, params), r)| RcptRecord {
                    mailbox: mailbox.clone(),
                    params: params.clone(),
                    status: r.status.clone(),
                    report: r.report.clone(),
                })
                .collect(),
            leased: e.leased,
        })
    }

    /// Messages with a final recipient whose report is not decided yet (after a crash between
    /// a delivery attempt and its report).
    pub fn unreported(&self) -> Vec<String> {
        self.msgs
            .values()
            .filter(|e| {
                e.meta
                    .rcpts
                    .iter()
                    .any(|r| r.status.is_final() && r.report.is_none())
            })
            .map(|e| e.meta.id.clone())
            .collect()
    }

    /// Messages finished (every recipient final, every report decided) whose last recipient
    /// ended before `before`: kept for the operator until then.
    pub fn finished_before(&self, before: u64) -> Vec<String> {
        self.msgs
            .values()
            .filter(|e| {
                let mut last = 0;
                for r in &e.meta.rcpts {
                    match (&r.status, &r.report) {
                        (Status::Delivered { at, .. } | Status::Failed { at, .. }, Some(_)) => {
                            last = last.max(*at)
                        }
                        (Status::Delivered { .. } | Status::Failed { .. }, None)
                        | (Status::Queued { .. }, _) => return false,
                    }
                }
                !e.leased && last < before
            })
            .map(|e| e.meta.id.clone())
            .collect()
    }

    fn oldest_sealed(&self) -> Option<u64> {
        self.segments
            .first()
            .copied()
            .filter(|n| *n != self.current)
    }

    /// Removes from the index the oldest segments that hold nothing queued (in order: a
    /// segment's change records only matter while an older one may still be replayed).
    pub fn take_dead_segments(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(n) = self.oldest_sealed() {
            if self.live.get(&n).is_some_and(|l| l.0 > 0) {
                break;
            }
            self.segments.remove(&n);
            self.live.remove(&n);
            out.push(n);
        }
        out
    }

    /// The messages to move out of the oldest sealed segment, when little of it is still
    /// queued (so a few long-deferred messages do not pin whole segments for days).
    pub fn to_relocate(&self) -> Option<Vec<String>> {
        let n = self.oldest_sealed()?;
        let (count, bytes) = self.live.get(&n).copied().unwrap_or_default();
        if count == 0 || bytes >= super::SEGMENT_SIZE / 4 {
            return None;
        }
        Some(
            self.msgs
                .values()
                .filter(|e| e.body.segment == n && !e.leased)
                .map(|e| e.meta.id.clone())
                .collect(),
        )
    }

    /// Leases a message for moving (no delivery meanwhile).
    pub fn lease_for_move(&mut self, id: &str) -> Option<Lease> {
        let e = self.msgs.get(id)?;
        if e.leased {
            return None;
        }
        let mut lease = self.lease(id, 0)?;
        lease.rcpts.clear();
        Some(lease)
    }

    /// A move has ended; `to` is the body's new place if it was written.
    pub fn moved(&mut self, id: &str, to: Option<BodyLoc>) {
        if let (Some(to), Some(e)) = (to, self.msgs.get_mut(id)) {
            let from = std::mem::replace(&mut e.body, to);
            if let Some(l) = self.live.get_mut(&from.segment) {
                l.0 -= 1;
                l.1 -= from.len;
            }
            let l = self.live.entry(to.segment).or_default();
            l.0 += 1;
            l.1 += to.len;
        }
        self.unlease(id);
    }
}

fn parse_message(payload: &[u8]) -> Option<(Meta, u64)> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(payload.get(4..4 + len)?).ok()?;
    Some((meta, 4 + len as u64))
}
