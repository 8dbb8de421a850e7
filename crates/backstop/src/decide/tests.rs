//! The RCPT ladder in memory: a list source, the embedded store, a fixed clock; no sockets.

use super::*;
use crate::policy::Outcome;
use crate::policy::probe::{ProbeAnswer, Prober};
use crate::telemetry::Answer;
use backstop_proto::address::{Mailbox, ReversePath};
use std::net::IpAddr;
use std::sync::Arc;

const NOW: u64 = 1_795_392_000;

/// Never asked: every domain of these tests has a list source.
struct NoProbes;

#[async_trait::async_trait]
impl Prober for NoProbes {
    async fn probe(&self, _: &crate::config::HostPort, _: &Mailbox) -> ProbeAnswer {
        ProbeAnswer::Failed("no probes in these tests".into())
    }
}

async fn parts(extra: &str) -> crate::test_support::Parts {
    crate::test_support::parts(extra, Arc::new(NoProbes), NOW).await
}

async fn ladder(extra: &str) -> (tempfile::TempDir, Ladder) {
    let p = parts(extra).await;
    let ladder = Ladder::standalone(p.cfg, p.store, p.verifier, p.guard, p.clock);
    (p.dir, ladder)
}

fn client() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

fn mailbox(a: &str) -> Mailbox {
    Mailbox::parse(a, true).unwrap()
}

fn facts<'a>(from: &'a ReversePath, rcpt: &str, live: bool) -> Facts<'a> {
    Facts {
        client: client(),
        from: Some(from),
        rcpt: mailbox(rcpt),
        may_relay: false,
        relaying: false,
        live,
    }
}

fn sender() -> ReversePath {
    ReversePath::Mailbox(mailbox("someone@sender.test"))
}

#[tokio::test]
async fn known_unknown_and_foreign_recipients() {
    let (_d, l) = ladder("").await;
    let from = sender();
    let mut tally = l.tally(client(), false);
    let v = l
        .rcpt(facts(&from, "alice@example.test", true), &mut tally)
        .await;
    assert_eq!(v.reply.to_string(), "250 2.1.5 Ok");
    assert_eq!((v.reason.label(), v.answer()), ("listed", Answer::Accepted));
    assert_eq!(v.verified, Verified::Otherwise);
    let v = l
        .rcpt(facts(&from, "nobody@example.test", true), &mut tally)
        .await;
    assert_eq!(
        v.reply.to_string(),
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"
    );
    assert_eq!(
        (v.reason.label(), v.answer()),
        ("not-listed", Answer::Refused)
    );
    assert_eq!(tally.unknown, 1);
    let v = l
        .rcpt(facts(&from, "x@elsewhere.test", true), &mut tally)
        .await;
    assert_eq!(
        v.reply.to_string(),
        "554 5.7.1 <x@elsewhere.test>: Relay access denied"
    );
    assert_eq!(v.reason.label(), "relay-denied");
    // a relay client may send anywhere, and is never counted as a harvester
    let mut relay = l.tally(client(), true);
    let f = Facts {
        may_relay: true,
        ..facts(&from, "x@elsewhere.test", true)
    };
    let v = l.rcpt(f, &mut relay).await;
    assert_eq!((v.reply.code, v.reason.label()), (250, "relay-client"));
    let f = Facts {
        may_relay: true,
        ..facts(&from, "nobody@example.test", true)
    };
    assert_eq!(l.rcpt(f, &mut relay).await.reply.code, 550);
    assert_eq!(relay.unknown, 0);
}

#[tokio::test(start_paused = true)]
async fn unknown_recipients_are_tarpitted_then_end_the_session_but_a_dry_run_counts_nothing() {
    let harvest = "[harvest]\ntarpit_after = 2\ntarpit_delay = \"3s\"\nclose_after = 4\n";
    let (_d, l) = ladder(harvest).await;
    let from = sender();
    let nobody = |live| facts(&from, "nobody@example.test", live);
    let mut dry = l.tally(client(), false);
    for _ in 0..5 {
        assert_eq!(l.rcpt(nobody(false), &mut dry).await.reply.code, 550);
    }
    assert_eq!(dry.unknown, 0);
    // (time is paused: it passes only by the tarpit's sleeps)
    let mut tally = l.tally(client(), false);
    let mut answers = Vec::new();
    for _ in 0..4 {
        let t0 = tokio::time::Instant::now();
        let v = l.rcpt(nobody(true), &mut tally).await;
        answers.push((v.reply.code, t0.elapsed().as_secs()));
    }
    assert_eq!(answers, [(550, 0), (550, 0), (550, 3), (421, 6)]);
    let v = l.rcpt(nobody(true), &mut tally).await;
    assert_eq!(
        v.reply.to_string(),
        "421 4.7.0 mx.example.test Error: too many unknown recipients, closing connection"
    );
    // the label is the answer it would have had; the cut-off counts as a refusal
    assert_eq!(v.reason, Reason::CutOff("not-listed"));
    assert_eq!(v.answer(), Answer::Refused);
    // a known recipient waits as long: the delay tells nothing
    let t0 = tokio::time::Instant::now();
    let v = l
        .rcpt(facts(&from, "alice@example.test", true), &mut tally)
        .await;
    assert_eq!((v.reply.code, t0.elapsed().as_secs()), (250, 16));
}

#[tokio::test]
async fn an_untagged_bounce_is_refused_where_the_domain_enforces_batv() {
    let (_d, l) =
        ladder("batv = \"enforce\"\n[batv]\nkeys = [\"1:0123456789abcdef\"]\nwarmup = \"0s\"\n")
            .await;
    let mut tally = Tally::default();
    let v = l
        .rcpt(
            facts(&ReversePath::Null, "alice@example.test", true),
            &mut tally,
        )
        .await;
    assert_eq!(
        v.reply.to_string(),
        "550 5.7.1 <alice@example.test>: bounce not for mail sent from here (no BATV tag)"
    );
    assert_eq!(v.reason.label(), "batv-missing");
    assert_eq!(
        v.steps,
        ["batv: missing: a bounce to this address answers no mail sent from here"]
    );
    // an ordinary sender is not asked for a tag; postmaster never is
    let from = sender();
    let v = l
        .rcpt(facts(&from, "alice@example.test", true), &mut tally)
        .await;
    assert_eq!(v.reply.code, 250);
    let v = l
        .rcpt(
            facts(&ReversePath::Null, "postmaster@example.test", true),
            &mut tally,
        )
        .await;
    assert_eq!(
        (v.reply.code, v.batv),
        (
            250,
            Some(crate::backscatter::verdict::BatvEvidence::Missing)
        )
    );
    // verify without a sender leaves the tag out of it
    let f = Facts {
        from: None,
        ..facts(&from, "alice@example.test", false)
    };
    let v = l.rcpt(f, &mut tally).await;
    assert_eq!((v.reply.code, v.batv), (250, None));
}

#[tokio::test]
async fn bounces_over_the_hourly_rate_are_deferred_and_a_dry_run_does_not_count() {
    let (_d, l) = ladder("[bounces]\nper_recipient = 2\n").await;
    let mut tally = Tally::default();
    let bounce = |live| facts(&ReversePath::Null, "alice@example.test", live);
    for _ in 0..5 {
        assert_eq!(l.rcpt(bounce(false), &mut tally).await.reply.code, 250);
    }
    assert_eq!(l.rcpt(bounce(true), &mut tally).await.reply.code, 250);
    assert_eq!(l.rcpt(bounce(true), &mut tally).await.reply.code, 250);
    let v = l.rcpt(bounce(true), &mut tally).await;
    assert_eq!(
        v.reply.to_string(),
        "450 4.7.1 <alice@example.test>: too many bounces for this recipient, try again later"
    );
    assert_eq!(
        (v.answer(), v.reason),
        (Answer::Deferred, Reason::BounceRate)
    );
}

#[tokio::test]
async fn outbound_limits_count_the_message_once_and_each_recipient() {
    let (_d, l) =
        ladder("[outbound]\nclient_ip = { messages_per_hour = 1, rcpts_per_hour = 2 }\n").await;
    let from = sender();
    let mut tally = l.tally(client(), true);
    let out = |rcpt| Facts {
        may_relay: true,
        ..facts(&from, rcpt, true)
    };
    assert_eq!(
        l.rcpt(out("a@elsewhere.test"), &mut tally).await.reply.code,
        250
    );
    assert!(tally.counted_out);
    assert_eq!(
        l.rcpt(out("b@elsewhere.test"), &mut tally).await.reply.code,
        250
    );
    let v = l.rcpt(out("c@elsewhere.test"), &mut tally).await;
    assert_eq!(v.reply.code, 450);
    assert!(matches!(v.reason, Reason::OutboundLimit(_)), "{v:?}");
    assert!(
        v.reply
            .to_string()
            .starts_with("450 4.7.1 <c@elsewhere.test>: sending limit reached ("),
        "{}",
        v.reply
    );
    // our own domains are not outbound
    assert_eq!(
        l.rcpt(out("alice@example.test"), &mut tally)
            .await
            .reply
            .code,
        250
    );
    // a second message from the same client: over its message limit
    tally.counted_out = false;
    let v = l.rcpt(out("d@elsewhere.test"), &mut tally).await;
    assert!(matches!(v.reason, Reason::OutboundLimit(_)), "{v:?}");
}

#[test]
fn every_reason_has_one_fixed_reply() {
    let a = mailbox("a@example.test");
    let reply = |r: Reason| r.reply(&a, "mx.example.test").to_string();
    let verified = |outcome| Reason::Verified {
        outcome,
        label: "x",
    };
    let unverifiable = "451 4.4.3 <a@example.test>: Recipient address rejected: unable to verify address, try again later";
    let cases = [
        (Reason::NoMail, "503 5.5.1 Error: need MAIL command"),
        (verified(Outcome::Unverifiable), unverifiable),
        (verified(Outcome::NextHop), unverifiable),
        (
            verified(Outcome::OverBudget),
            "450 4.7.1 <a@example.test>: Recipient address rejected: too many address verifications, try again later",
        ),
        (
            Reason::Batv(crate::backscatter::verdict::BatvEvidence::Expired),
            "550 5.7.1 <a@example.test>: bounce not for mail sent from here (BATV tag expired)",
        ),
        (
            Reason::StoreTrouble("bounce-rate"),
            "451 4.3.0 Error: temporary local problem, try again later",
        ),
        (
            Reason::MixedRoutes,
            "452 4.5.3 <a@example.test>: Too many recipients for one message; send the rest in a new transaction",
        ),
        (Reason::RelayValid, "250 2.1.5 Ok"),
        (
            Reason::RelayInvalid,
            "550 5.1.1 <a@example.test>: Recipient address rejected: User unknown",
        ),
    ];
    for (reason, want) in cases {
        assert_eq!(reply(reason), want);
    }
    assert_eq!(Reason::StoreTrouble("bounce-rate").label(), "bounce-rate");
    assert_eq!(Reason::RelayInvalid.label(), "relay-invalid");
}

#[tokio::test]
async fn a_held_sender_is_refused_to_relay_clients_and_nobody_else() {
    let p = parts("[senders]\nmin_volume = 2\n").await;
    let (_spool, watch) = p.watch();
    let harvest = Arc::new(crate::harvest::Harvest::new(p.cfg.clone(), p.store.clone()));
    let outbound = Arc::new(crate::outbound::Limiter::new(p.cfg.clone(), p.store));
    let l = Ladder::new(
        p.cfg,
        p.verifier,
        p.guard,
        harvest,
        outbound,
        (p.clock, Some(watch.clone())),
    );
    let alice = mailbox("alice@example.test");
    let from = ReversePath::Mailbox(alice.clone());
    assert_eq!(l.sender(&from, true).await, None);
    for _ in 0..3 {
        let failed = crate::senders::Finished::Failed { blocked: false };
        watch.finished(&alice, failed, NOW).await.unwrap();
    }
    let held = l.sender(&from, true).await.expect("held");
    assert!(
        held.to_string()
            .starts_with("450 4.7.1 <alice@example.test>: sender held (2 of 2 recipients failed"),
        "{held}"
    );
    // from outside the relay networks it is not our sender; a bounce has none
    assert_eq!(l.sender(&from, false).await, None);
    assert_eq!(l.sender(&ReversePath::Null, true).await, None);
}
