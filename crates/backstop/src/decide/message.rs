//! What a message's envelope gets, for every front end: its sender (a local sender held by
//! the sender watch), and once its recipients are known the check that needs no content (a
//! bounce goes to one recipient).
//!
//! Responsible for: those checks, their replies and what they record (count, log line,
//! dashboard).
//! Not responsible for: the verdict on a message's content (the bounce judge, in
//! `backscatter`), or where the message goes.

use super::Ladder;
use crate::backscatter::Stopped;
use crate::backscatter::verdict::{BatvEvidence, Verdict};
use crate::config::BackscatterAction;
use crate::telemetry::{Client, Event};
use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::smtp::reply::{Enhanced, Reply};

/// What the bounce judge leaves a front end to do with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Deliver it, with this header first (the domain tags backscatter).
    Deliver(Option<String>),
    /// Answer the client with this reply (and the reason recorded for it); deliver nothing.
    Answer(Reply, &'static str),
    /// Keep it aside, not delivered (the domain quarantines backscatter), for these reasons.
    Quarantine(String),
}

/// A message as the bounce judge sees it.
pub struct Judging<'a> {
    /// The client and the message's id, for the log.
    pub client: std::net::IpAddr,
    /// The message's id.
    pub id: &'a str,
    /// Its sender.
    pub from: &'a ReversePath,
    /// Its recipients (BATV tags stripped).
    pub rcpts: &'a [Mailbox],
    /// The weakest BATV evidence of its recipients.
    pub batv: Option<BatvEvidence>,
    /// Its first bytes (headers and the start of the body: what quotes the original).
    pub head: &'a [u8],
    /// The client may relay: its mail is ours, never judged as a bounce.
    pub may_relay: bool,
}

impl Ladder {
    /// MAIL (Postfix: any state with a sender): a local sender that the sender watch holds
    /// gets `450 4.7.1` from a client that may relay. `None` to go on.
    pub async fn sender(&self, from: &ReversePath, may_relay: bool) -> Option<Reply> {
        let sender = from.mailbox().filter(|_| may_relay)?;
        let watch = self.watch.as_ref()?;
        match watch.held(sender, self.clock.unix()).await {
            Ok(None) => None,
            Ok(Some(hold)) => Some(Reply::new(
                450,
                Enhanced::new(4, 7, 1),
                format!(
                    "<{sender}>: sender held ({}); ask your mail administrator",
                    hold.why
                ),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "sender hold not checked: store failed");
                Some(super::rcpt::store_trouble())
            }
        }
    }

    /// At DATA (Postfix: DATA or END-OF-MESSAGE): a bounce goes to one recipient; `count` of
    /// them (`rcpts`, as the log names them) from a client that may not relay is the shape of
    /// backscatter. The refusal, counted, logged and remembered; `None` to go on.
    pub async fn bounce_recipients(
        &self,
        (client, id): (Client<'_>, &str),
        from: &ReversePath,
        may_relay: bool,
        (count, rcpts): (usize, &str),
    ) -> Option<Reply> {
        if *from != ReversePath::Null || may_relay || count <= 1 {
            return None;
        }
        let (now, label) = (self.clock.unix(), "refused=rcpts>1");
        self.guard.count(&[label], now).await;
        let reply = Reply::new(
            550,
            Enhanced::new(5, 7, 1),
            "Error: a bounce has one recipient; this one has several",
        );
        Event::BounceRefused {
            client,
            id,
            rcpts,
            reasons: "rcpts>1",
            reply: &reply,
        }
        .emit();
        self.guard.stopped(Stopped {
            at: now,
            client: client.ip.to_string(),
            rcpt: rcpts.to_string(),
            reasons: label.into(),
            action: "refused",
        });
        Some(reply)
    }

    /// Whether a message to `rcpts` leaves here: one of them is of a domain not ours (what a
    /// relay client sends then is ours, for the sent log and signing).
    pub fn leaves(&self, rcpts: &[Mailbox]) -> bool {
        rcpts.iter().any(|r| self.cfg.domain(r.domain()).is_none())
    }

    /// Mail a relay client sends out, to a domain that is not ours: recorded in the sent log
    /// (so the bounces it draws are known to answer our mail), and its envelope sender with a
    /// BATV tag where its domain signs. The sender to use instead, if it changes.
    pub async fn outgoing(
        &self,
        (id, head): (&str, &[u8]),
        from: &ReversePath,
        rcpts: &[Mailbox],
    ) -> Option<ReversePath> {
        if !self.leaves(rcpts) {
            return None;
        }
        let now = self.clock.unix();
        if let Err(e) = self.guard.record_sent(head, now).await {
            tracing::warn!(error = %e, id, "message not recorded in the sent log");
        }
        let signed = self.guard.tags().sign(&self.cfg, from, now);
        (signed != *from).then_some(signed)
    }

    /// The verdict on a bounce (sent log, quoted `Received:`, BATV) and what its domain's
    /// `backscatter` action makes of it; counted, logged and, for backscatter, remembered.
    /// Anything that is not a bounce, or comes from a relay client, is delivered untouched.
    pub async fn judge(&self, m: Judging<'_>) -> Judged {
        if m.may_relay {
            return Judged::Deliver(None);
        }
        let (null, now) = (*m.from == ReversePath::Null, self.clock.unix());
        let evidence = match self.guard.evidence(null, m.batv, m.head, now).await {
            Ok(e) => e,
            Err(e) if null => {
                tracing::warn!(error = %e, "bounce not judged: store failed");
                return Judged::Answer(super::rcpt::store_trouble(), "store-failure");
            }
            Err(_) => return Judged::Deliver(None),
        };
        if !evidence.bounce {
            return Judged::Deliver(None);
        }
        let verdict = evidence.verdict();
        let action = match verdict {
            Verdict::Genuine => BackscatterAction::Accept,
            Verdict::Backscatter => m
                .rcpts
                .first()
                .and_then(|r| self.cfg.domain(r.domain()))
                .map_or(BackscatterAction::Accept, |d| d.backscatter),
        };
        let reasons = evidence.to_string();
        let mut labels = evidence.labels();
        labels.push(action_label(action));
        self.guard.count(&labels, now).await;
        Event::BounceVerdict {
            peer: m.client,
            id: m.id,
            verdict: verdict.as_str(),
            reasons: &reasons,
            action,
        }
        .emit();
        if verdict == Verdict::Backscatter {
            let to: Vec<String> = m.rcpts.iter().map(ToString::to_string).collect();
            self.guard.stopped(Stopped {
                at: now,
                client: m.client.to_string(),
                rcpt: to.join(","),
                reasons: reasons.clone(),
                action: action.label(),
            });
        }
        match action {
            BackscatterAction::Accept => Judged::Deliver(None),
            BackscatterAction::Tag => Judged::Deliver(Some(format!(
                "X-Backstop-Bounce: backscatter; reasons={reasons}\r\n"
            ))),
            BackscatterAction::Reject => Judged::Answer(
                Reply::new(
                    550,
                    Enhanced::new(5, 7, 1),
                    "Error: bounce not for mail sent from here",
                ),
                "backscatter",
            ),
            BackscatterAction::Quarantine => Judged::Quarantine(reasons),
        }
    }
}

fn action_label(a: BackscatterAction) -> &'static str {
    match a {
        BackscatterAction::Accept => "action=accept",
        BackscatterAction::Tag => "action=tag",
        BackscatterAction::Quarantine => "action=quarantine",
        BackscatterAction::Reject => "action=reject",
    }
}
