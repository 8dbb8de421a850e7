//! The RCPT ladder: the facts of one recipient in, a typed [`Verdict`] out.
//!
//! Responsible for: the checks in their order, each answer's reason and fixed reply, and what
//! the checks count and log (skipped in a dry run, for `backstop verify`).
//! Not responsible for: relaying to the next hop (when the verdict leaves that to the relayed
//! RCPT, the front end does it and tells [`Ladder::unknown`] of an unknown user), or the
//! transaction (routes, recipient lists).

use crate::backscatter::verdict::BatvEvidence;
use crate::backscatter::{Guard, RcptBatv, Stopped};
use crate::clock::Clock;
use crate::config::Config;
use crate::harvest::Harvest;
use crate::outbound::{Counted, Limiter};
use crate::policy::{Outcome, Verifier};
use crate::telemetry::{Answer, Event};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::smtp::reply::{Enhanced, Reply};
use std::net::IpAddr;
use std::sync::Arc;

/// Why a recipient got its answer: every answer backstop gives to RCPT, each with its fixed
/// reply ([`Reason::reply`]) and its label for logs and metrics ([`Reason::label`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// RCPT before MAIL.
    NoMail,
    /// What the verifier decided (`label`: `listed`, `not-listed`, `callout-valid`,
    /// `callout-invalid`, `callout-unavailable`, `catch-all`, `probe-budget`, `relay-denied`,
    /// `relay-client`, `postmaster`, or `relay` when the relayed RCPT is to decide).
    Verified {
        /// The verifier's outcome.
        outcome: Outcome,
        /// Its reason.
        label: &'static str,
    },
    /// A bounce to an address whose BATV tag is bad, or that has none where one is required.
    Batv(BatvEvidence),
    /// Too many bounces to this recipient this hour.
    BounceRate,
    /// The session has had too many unknown recipients: `421` and the end of it (the label of
    /// the answer it would have had).
    CutOff(&'static str),
    /// The client or sender is over an `[outbound]` limit (which one).
    OutboundLimit(String),
    /// The store could not be asked or written (the label of the check that needed it).
    StoreTrouble(&'static str),
    /// The recipient goes another way out than the transaction's others.
    MixedRoutes,
    /// The relayed RCPT accepted an address the call-out had not seen.
    RelayValid,
    /// The relayed RCPT said no such user.
    RelayInvalid,
    /// The next hop refused the relayed RCPT (its reply, in the relay's fixed words).
    NextHopRefused(Reply),
}

impl Reason {
    /// The label logs and metrics record.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::NoMail => "no-mail",
            Reason::Verified { label, .. } => label,
            Reason::Batv(evidence) => evidence.refusal(),
            Reason::BounceRate => "bounce-rate",
            Reason::CutOff(label) | Reason::StoreTrouble(label) => label,
            Reason::OutboundLimit(_) => "outbound-limit",
            Reason::MixedRoutes => "mixed-routes",
            Reason::RelayValid => "relay-valid",
            Reason::RelayInvalid => "relay-invalid",
            Reason::NextHopRefused(_) => "relay-refused",
        }
    }

    /// The reply to `RCPT TO:<rcpt>` (as the client wrote it) from a gateway called `host`.
    pub fn reply(&self, rcpt: &Mailbox, host: &str) -> Reply {
        let r = |code, e: (u8, u16, u16), text: String| {
            Reply::new(code, Enhanced::new(e.0, e.1, e.2), text)
        };
        match self {
            Reason::NoMail => r(503, (5, 5, 1), "Error: need MAIL command".into()),
            Reason::Verified { outcome, .. } => verified(*outcome, rcpt),
            Reason::Batv(BatvEvidence::Missing) => {
                crate::backscatter::not_from_here(rcpt, "no BATV tag")
            }
            Reason::Batv(e) => {
                crate::backscatter::not_from_here(rcpt, &format!("BATV tag {}", e.as_str()))
            }
            Reason::BounceRate => r(
                450,
                (4, 7, 1),
                format!("<{rcpt}>: too many bounces for this recipient, try again later"),
            ),
            Reason::CutOff(_) => r(
                421,
                (4, 7, 0),
                format!("{host} Error: too many unknown recipients, closing connection"),
            ),
            Reason::OutboundLimit(limit) => r(
                450,
                (4, 7, 1),
                format!("<{rcpt}>: sending limit reached ({limit}), try again later"),
            ),
            Reason::StoreTrouble(_) => store_trouble(),
            Reason::MixedRoutes => r(
                452,
                (4, 5, 3),
                format!(
                    "<{rcpt}>: Too many recipients for one message; send the rest in a new transaction"
                ),
            ),
            Reason::RelayValid => verified(Outcome::Accept, rcpt),
            Reason::RelayInvalid => verified(Outcome::UnknownUser, rcpt),
            Reason::NextHopRefused(reply) => reply.clone(),
        }
    }

    /// How the answer counts: accepted, deferred or refused (a cut-off is a refusal, whatever
    /// its `421` says).
    pub fn answer(&self, reply: &Reply) -> Answer {
        match self {
            Reason::CutOff(_) => Answer::Refused,
            _ => Answer::of(reply.code),
        }
    }
}

/// The verifier's outcome as RCPT hears it (fixed texts; nothing from the internal server).
fn verified(outcome: Outcome, addr: &Mailbox) -> Reply {
    let unverifiable = || {
        Reply::new(
            451,
            Enhanced::new(4, 4, 3),
            format!(
                "<{addr}>: Recipient address rejected: unable to verify address, try again later"
            ),
        )
    };
    match outcome {
        Outcome::Accept => Reply::new(250, Enhanced::new(2, 1, 5), "Ok"),
        Outcome::UnknownUser => Reply::new(
            550,
            Enhanced::new(5, 1, 1),
            format!("<{addr}>: Recipient address rejected: User unknown"),
        ),
        Outcome::RelayDenied => Reply::new(
            554,
            Enhanced::new(5, 7, 1),
            format!("<{addr}>: Relay access denied"),
        ),
        Outcome::Unverifiable => unverifiable(),
        Outcome::OverBudget => Reply::new(
            450,
            Enhanced::new(4, 7, 1),
            format!(
                "<{addr}>: Recipient address rejected: too many address verifications, try again later"
            ),
        ),
        // never sent by itself: the relayed RCPT answers (this is what a front end that
        // cannot relay would say)
        Outcome::NextHop => unverifiable(),
    }
}

/// `451 4.3.0`: the store could not be asked or written; the client tries again later.
pub fn store_trouble() -> Reply {
    Reply::new(
        451,
        Enhanced::new(4, 3, 0),
        "Error: temporary local problem, try again later",
    )
}

/// How an accepted recipient was verified, for what the next hop's answer teaches the
/// call-out cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The call-out said valid (the answer may be old).
    ByCallout,
    /// Nothing known: the relayed RCPT decides.
    ByRelay,
    /// A list, postmaster, a relay client: the cache is not involved.
    Otherwise,
}

/// What a front end knows of one recipient.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The client's address (probe budgets, harvest counts, outbound limits).
    pub client: IpAddr,
    /// The transaction's sender; `None` when there is none to judge by (`backstop verify`
    /// without `--from`): the checks that depend on it (BATV, bounce rate, outbound limits)
    /// are left out.
    pub from: Option<&'a ReversePath>,
    /// The recipient as the client wrote it (`<Postmaster>` already resolved).
    pub rcpt: Mailbox,
    /// The client may relay (its listener's `relay_from`): other domains are accepted.
    pub may_relay: bool,
    /// The front end relays an accepted recipient of ours to its next hop at once, so the
    /// relayed RCPT may verify an address the cache does not know.
    pub relaying: bool,
    /// Counts, delays and logs as it goes; false for a dry run (`backstop verify`).
    pub live: bool,
}

/// What the ladder keeps between the recipients of one client: the session's count of
/// unknown recipients, and whether the transaction's message has been counted outbound.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Never tarpitted, cut off or counted (relay networks, `[harvest] exempt`).
    pub exempt: bool,
    /// Unknown recipients so far.
    pub unknown: u32,
    /// The open transaction's message is counted against `[outbound]` (cleared by the front
    /// end at each new transaction).
    pub counted_out: bool,
}

/// The answer to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Why.
    pub reason: Reason,
    /// What the client gets (for [`Verified::ByRelay`]: what it gets if the front end cannot
    /// relay).
    pub reply: Reply,
    /// The address to deliver to (a BATV tag stripped).
    pub rcpt: Mailbox,
    /// What its BATV tag said, where its domain signs.
    pub batv: Option<BatvEvidence>,
    /// How it was verified.
    pub verified: Verified,
    /// One line per check that had something to say (for `backstop verify`).
    pub steps: Vec<String>,
}

impl Verdict {
    /// Accepted, deferred or refused.
    pub fn answer(&self) -> Answer {
        self.reason.answer(&self.reply)
    }
}

/// The checks, with what they need. One per configuration generation, shared by every front
/// end.
pub struct Ladder {
    pub(super) cfg: Arc<Config>,
    verifier: Arc<Verifier>,
    pub(super) guard: Arc<Guard>,
    harvest: Arc<Harvest>,
    outbound: Arc<Limiter>,
    pub(super) clock: Arc<dyn Clock>,
    /// Held senders (none for a dry run without the gateway).
    pub(super) watch: Option<Arc<crate::senders::Watch>>,
}

impl Ladder {
    /// The ladder over these parts.
    pub fn new(
        cfg: Arc<Config>,
        verifier: Arc<Verifier>,
        guard: Arc<Guard>,
        harvest: Arc<Harvest>,
        outbound: Arc<Limiter>,
        (clock, watch): (Arc<dyn Clock>, Option<Arc<crate::senders::Watch>>),
    ) -> Ladder {
        Ladder {
            cfg,
            verifier,
            guard,
            harvest,
            outbound,
            clock,
            watch,
        }
    }

    /// A ladder with a harvest defence and outbound limits of its own over `store`, for a
    /// dry run without the gateway (`backstop verify` when none runs) and tests.
    pub fn standalone(
        cfg: Arc<Config>,
        store: Arc<dyn crate::store::Store>,
        verifier: Arc<Verifier>,
        guard: Arc<Guard>,
        clock: Arc<dyn Clock>,
    ) -> Ladder {
        let harvest = Arc::new(Harvest::new(cfg.clone(), store.clone()));
        let outbound = Arc::new(Limiter::new(cfg.clone(), store));
        Ladder::new(cfg, verifier, guard, harvest, outbound, (clock, None))
    }

    /// A new client's tally: exempt when it may relay or is in `[harvest] exempt`.
    pub fn tally(&self, client: IpAddr, may_relay: bool) -> Tally {
        Tally {
            exempt: may_relay || self.harvest.is_exempt(client),
            ..Tally::default()
        }
    }

    fn verdict(&self, reason: Reason, facts: &Facts<'_>, steps: Vec<String>) -> Verdict {
        Verdict {
            reply: reason.reply(&facts.rcpt, &self.cfg.hostname),
            reason,
            rcpt: facts.rcpt.clone(),
            batv: None,
            verified: Verified::Otherwise,
            steps,
        }
    }

    /// Judges one recipient: tarpit, BATV tag, bounce rate, verification, harvest count and
    /// cut-off, outbound limit, in that order.
    pub async fn rcpt(&self, facts: Facts<'_>, tally: &mut Tally) -> Verdict {
        if facts.live
            && let Some(delay) = self.tarpit(tally)
        {
            tokio::time::sleep(delay).await;
        }
        let (rcpt, batv, mut steps) = match self.batv(&facts).await {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        let facts = Facts { rcpt, ..facts };
        // before verification, so that a known and an unknown recipient cost the same time
        if facts.from == Some(&ReversePath::Null)
            && self.cfg.domain(facts.rcpt.domain()).is_some()
            && facts.live
            && let Some(reason) = self.bounce_rate(&facts).await
        {
            return self.verdict(reason, &facts, steps);
        }
        let d = self
            .verifier
            .verify_in(&facts.rcpt, facts.client, facts.may_relay, facts.relaying)
            .await;
        steps.extend(d.steps);
        let mut v = self.verdict(
            Reason::Verified {
                outcome: d.outcome,
                label: d.reason,
            },
            &facts,
            steps,
        );
        v.batv = batv;
        v.verified = match d.reason {
            "callout-valid" => Verified::ByCallout,
            _ if d.outcome == Outcome::NextHop => Verified::ByRelay,
            _ => Verified::Otherwise,
        };
        // a client over its probe budget is asking after addresses nobody here knows, as a
        // harvester does: it counts for the defence like an unknown recipient (else it could
        // go on at full speed, answered 450 forever)
        if matches!(d.outcome, Outcome::UnknownUser | Outcome::OverBudget)
            && facts.live
            && let Some(cut) = self.unknown(facts.client, tally, d.reason)
        {
            v.reply = cut.reply(&facts.rcpt, &self.cfg.hostname);
            v.reason = cut;
            return v;
        }
        if v.reply.is_success()
            && facts.may_relay
            && self.cfg.domain(facts.rcpt.domain()).is_none()
            && let Some(from) = facts.from.filter(|_| facts.live)
            && let Some(reason) = self.outbound_limit(from, &facts, tally).await
        {
            v.reply = reason.reply(&facts.rcpt, &self.cfg.hostname);
            v.reason = reason;
        }
        v
    }

    /// The delay before this RCPT's answer, once the session has had its share of unknown
    /// recipients.
    fn tarpit(&self, tally: &Tally) -> Option<std::time::Duration> {
        match tally.exempt {
            true => None,
            false => self.harvest.tarpit(tally.unknown),
        }
    }

    /// Checks and strips a BATV tag: the address to verify, what its tag said and the step,
    /// or the refusal.
    #[allow(clippy::type_complexity)]
    pub async fn batv(
        &self,
        facts: &Facts<'_>,
    ) -> Result<(Mailbox, Option<BatvEvidence>, Vec<String>), Verdict> {
        let Some(from) = facts.from else {
            return Ok((facts.rcpt.clone(), None, Vec::new()));
        };
        let (rcpt, now) = (&facts.rcpt, self.clock.unix());
        let checked = self.guard.rcpt(from, rcpt, now);
        let evidence = match &checked {
            RcptBatv::Untouched => return Ok((rcpt.clone(), None, Vec::new())),
            RcptBatv::Checked { evidence, .. } | RcptBatv::Refused { evidence, .. } => *evidence,
        };
        let refused = matches!(checked, RcptBatv::Refused { .. });
        if facts.live {
            self.guard.count(&[evidence.label()], now).await;
            Event::Batv {
                peer: facts.client,
                rcpt,
                result: evidence.as_str(),
                refused: refused.then(|| evidence.refusal()),
            }
            .emit();
        }
        match checked {
            RcptBatv::Checked { address, evidence } => {
                let what = match address == *rcpt {
                    true => "no tag; a bounce let through (the domain only signs, or enforcement is warming up)".to_string(),
                    false => format!("tag stripped; the recipient is <{address}>"),
                };
                let step = format!("batv: {}: {what}", evidence.as_str());
                Ok((address, Some(evidence), vec![step]))
            }
            _ => {
                if facts.live {
                    self.stopped(facts, evidence.label().into(), "refused", now);
                }
                let step = format!(
                    "batv: {}: a bounce to this address answers no mail sent from here",
                    evidence.as_str()
                );
                Err(self.verdict(Reason::Batv(evidence), facts, vec![step]))
            }
        }
    }

    /// Remembers a bounce stopped, for the dashboard.
    fn stopped(&self, facts: &Facts<'_>, reasons: String, action: &'static str, at: u64) {
        self.guard.stopped(Stopped {
            at,
            client: facts.client.to_string(),
            rcpt: facts.rcpt.to_string(),
            reasons,
            action,
        });
    }

    /// Counts a bounce to a local recipient: [`Reason::BounceRate`] when it has had too many
    /// this hour.
    async fn bounce_rate(&self, facts: &Facts<'_>) -> Option<Reason> {
        let now = self.clock.unix();
        match self.guard.over_rate(&facts.rcpt, now).await {
            Ok(false) => None,
            Ok(true) => {
                let label = "refused=rate";
                self.guard.count(&[label], now).await;
                Event::BounceRateExceeded {
                    peer: facts.client,
                    rcpt: &facts.rcpt,
                }
                .emit();
                self.stopped(facts, label.into(), "deferred", now);
                Some(Reason::BounceRate)
            }
            Err(e) => {
                tracing::warn!(error = %e, "bounce rate not counted: store failed");
                Some(Reason::StoreTrouble("bounce-rate"))
            }
        }
    }

    /// Counts an unknown recipient (in the session, and for the client across sessions):
    /// [`Reason::CutOff`] when the session has had too many (`label`: the answer it would have
    /// had). The count across sessions is written in the background: the reply to an unknown
    /// recipient must not take longer than the one to a known recipient (no timing oracle).
    pub fn unknown(
        &self,
        client: IpAddr,
        tally: &mut Tally,
        label: &'static str,
    ) -> Option<Reason> {
        if tally.exempt {
            return None;
        }
        tally.unknown += 1;
        let (now, harvest) = (self.clock.unix(), self.harvest.clone());
        tokio::spawn(async move {
            match harvest.unknown_rcpt(client, now).await {
                Ok(Some(blocked)) => {
                    harvest.count("client_blocked", now);
                    Event::ClientBlocked {
                        peer: client,
                        blocked: &blocked,
                    }
                    .emit()
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "unknown recipient not counted: store failed"),
            }
        });
        if !self.harvest.cut_off(tally.unknown) {
            return None;
        }
        self.harvest.count("cut_off", now);
        Event::HarvestCutOff {
            peer: client,
            unknown: tally.unknown,
        }
        .emit();
        Some(Reason::CutOff(label))
    }

    /// Counts an outbound recipient (and, at the first, its message) against `[outbound]`:
    /// [`Reason::OutboundLimit`] over a limit (`450 4.7.1`: the client keeps the mail and tries
    /// later, nothing waits unseen in our queue).
    async fn outbound_limit(
        &self,
        from: &ReversePath,
        facts: &Facts<'_>,
        tally: &mut Tally,
    ) -> Option<Reason> {
        let (ip, now) = (facts.client, self.clock.unix());
        let mut counted = vec![Counted::Rcpt];
        if !tally.counted_out {
            counted.insert(0, Counted::Message);
        }
        for what in counted {
            match self.outbound.hit(what, from, ip, now).await {
                Ok(None) => tally.counted_out = true,
                Ok(Some(limit)) => {
                    self.harvest.count("outbound_limit", now);
                    Event::OutboundLimit {
                        peer: ip,
                        rcpt: &facts.rcpt,
                        limit: &limit,
                    }
                    .emit();
                    return Some(Reason::OutboundLimit(limit.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbound limits not counted: store failed");
                    return Some(Reason::StoreTrouble("outbound-limit"));
                }
            }
        }
        None
    }
}
