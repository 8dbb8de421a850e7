//! Report rules (pure) and the notifier on a real spool and store: one report per message,
//! none for untrusted senders, no duplicate across a restart or a second node, the budget.

use super::*;
use crate::clock::ManualClock;
use crate::queue::{NewMessage, RcptRecord};
use crate::store::embedded::EmbeddedStore;
use backstop_proto::smtp::command::{MailParams, Notify, RcptParams};

const T0: u64 = 1_795_392_000;

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s, false).unwrap()
}

fn trusted() -> Trust {
    Trust::yes("spf=pass (sender.test)")
}

fn failed(at: u64) -> Status {
    Status::Failed {
        at,
        reason: "550 5.1.1 <x>: unknown".into(),
        code: Some("5.1.1".into()),
        remote: Some("mx.example.test".into()),
        diagnostic: Some("550 5.1.1 <x>: unknown".into()),
    }
}

fn queued() -> Status {
    Status::Queued {
        attempts: 1,
        next_attempt: T0 + 300,
        last: Some("451 4.3.0 try later".into()),
    }
}

fn delivered(action: Option<&str>) -> Status {
    Status::Delivered {
        at: T0,
        reply: "250 2.0.0 ok".into(),
        action: action.map(str::to_string),
        remote: Some("mx.example.test".into()),
    }
}

fn notify(words: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for w in words.split(',') {
        match w {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return None,
        }
    }
    Some(n)
}

fn record(statuses: Vec<(Status, Option<Notify>)>) -> Record {
    Record {
        id: "A1".into(),
        arrived: T0,
        from: ReversePath::Mailbox(mailbox("user@sender.test")),
        params: MailParams::default(),
        trust: trusted(),
        reports: Vec::new(),
        rcpts: statuses
            .into_iter()
            .enumerate()
            .map(|(i, (status, notify))| RcptRecord {
                mailbox: mailbox(&format!("r{i}@example.test")),
                params: RcptParams {
                    notify,
                    orcpt: None,
                },
                status,
                report: None,
            })
            .collect(),
        leased: false,
    }
}

const NO_DELAY: Rules = Rules {
    delay_warning: None,
    gather: 0,
};

#[test]
fn every_failure_known_goes_into_one_first_report() {
    let rec = record(vec![
        (failed(T0), None),
        (failed(T0), None),
        (queued(), None),
    ]);
    let p = plan(&rec, T0, NO_DELAY);
    assert_eq!(
        p.report,
        Some((Kind::First, vec![(0, Action::Failed), (1, Action::Failed)]))
    );
    assert!(p.notes.is_empty());
}

#[test]
fn while_others_are_tried_failures_gather_before_the_first_report() {
    let rules = Rules {
        delay_warning: None,
        gather: 600,
    };
    let rec = record(vec![(failed(T0), None), (queued(), None)]);
    assert!(plan(&rec, T0 + 599, rules).is_empty());
    assert_eq!(
        plan(&rec, T0 + 600, rules).report,
        Some((Kind::First, vec![(0, Action::Failed)]))
    );
    // nothing left to try: no waiting
    let rec = record(vec![(failed(T0), None), (failed(T0), None)]);
    assert!(plan(&rec, T0, rules).report.is_some());
}

#[test]
fn later_failures_wait_for_one_last_report_when_nothing_is_left() {
    let mut rec = record(vec![
        (failed(T0), None),
        (failed(T0), None),
        (queued(), None),
    ]);
    rec.reports = vec!["first".into()];
    rec.rcpts[0].report = Some("reported (first, X)".into());
    // still one recipient queued: a second failure waits
    let p = plan(&rec, T0, NO_DELAY);
    assert!(p.is_empty(), "{p:?}");
    rec.rcpts[2].status = failed(T0 + 600);
    let p = plan(&rec, T0 + 600, NO_DELAY);
    assert_eq!(
        p.report,
        Some((Kind::Last, vec![(1, Action::Failed), (2, Action::Failed)]))
    );
    // and never a third
    rec.reports.push("last".into());
    rec.rcpts[1].report = None;
    let p = plan(&rec, T0 + 700, NO_DELAY);
    assert_eq!(p.report, None);
}

#[test]
fn untrusted_and_null_senders_get_nothing_and_the_reason_is_noted() {
    let mut rec = record(vec![(failed(T0), None), (failed(T0), None)]);
    rec.trust = Trust::no("spf=fail dkim=none");
    let p = plan(&rec, T0, NO_DELAY);
    assert_eq!(p.report, None);
    assert_eq!(
        p.notes,
        vec![
            (
                0,
                "no report: sender not trusted (spf=fail dkim=none)".into()
            ),
            (
                1,
                "no report: sender not trusted (spf=fail dkim=none)".into()
            )
        ]
    );
    let mut rec = record(vec![(failed(T0), None)]);
    rec.from = ReversePath::Null;
    assert_eq!(
        plan(&rec, T0, NO_DELAY).notes,
        vec![(0, "no report: null sender".into())]
    );
}

#[test]
fn notify_is_honoured() {
    let rec = record(vec![
        (failed(T0), notify("NEVER")),
        (delivered(Some("relayed")), notify("SUCCESS")),
        (delivered(None), notify("SUCCESS")),
        (delivered(Some("delivered")), None),
        (failed(T0), notify("DELAY")),
    ]);
    let p = plan(&rec, T0, NO_DELAY);
    assert_eq!(p.report, Some((Kind::First, vec![(1, Action::Relayed)])));
    assert_eq!(
        p.notes,
        vec![
            (0, "not requested (NOTIFY)".into()),
            (2, "passed on: the next hop reports (DSN)".into()),
            (3, "not requested (NOTIFY)".into()),
            (4, "not requested (NOTIFY)".into()),
        ]
    );
}

#[test]
fn one_delay_warning_after_the_configured_time() {
    let rules = Rules {
        delay_warning: Some(4 * 3600),
        gather: 0,
    };
    let mut rec = record(vec![(queued(), None), (queued(), notify("FAILURE"))]);
    assert!(plan(&rec, T0 + 3600, rules).is_empty());
    let p = plan(&rec, T0 + 4 * 3600, rules);
    assert_eq!(p.report, Some((Kind::Delay, vec![(0, Action::Delayed)])));
    rec.reports.push("delay".into());
    assert!(plan(&rec, T0 + 5 * 3600, rules).is_empty());
}

// --- the notifier on a real spool and store ---

struct Rig {
    _dir: tempfile::TempDir,
    spool: Arc<Spool>,
    notifier: Notifier,
}

fn config(extra: &str) -> Arc<Config> {
    let text = format!(
        "hostname = \"gw.example.test\"\nstate_dir = \"/nonexistent\"\n{extra}\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n\n[[domain]]\nname = \"example.test\"\n\
         recipients = [\"callout:127.0.0.1:25\"]\nnext_hop = \"smtp:127.0.0.1:25\"\n"
    );
    Arc::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap())
}

/// SPF and DKIM through a resolver nobody answers at: for tests whose senders are decided.
fn no_dns() -> Arc<crate::auth::SenderAuth> {
    let addr = "127.0.0.1:9".parse().unwrap();
    Arc::new(
        crate::auth::SenderAuth::new(Some(addr), std::time::Duration::from_millis(200), 1).unwrap(),
    )
}

fn rig(store: Arc<dyn Store>, extra: &str) -> Rig {
    rig_with(store, extra, no_dns())
}

fn rig_with(store: Arc<dyn Store>, extra: &str, auth: Arc<crate::auth::SenderAuth>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("queue")).unwrap();
    let notifier = Notifier::new(
        (spool.clone(), store),
        (config(extra), auth, Default::default()),
        Arc::new(ManualClock::new(T0 + 60)),
        Arc::new(IdGen::new(0)),
    );
    Rig {
        _dir: dir,
        spool,
        notifier,
    }
}

fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    (dir, Arc::new(s))
}

/// Queues `id` from `from` to `n` recipients and fails them all.
async fn failed_message(spool: &Spool, id: &str, from: &str, n: usize, trust: Trust) {
    let rcpts = (0..n)
        .map(|i| {
            (
                mailbox(&format!("u{i}@example.test")),
                RcptParams::default(),
            )
        })
        .collect();
    spool
        .enqueue(NewMessage {
            id: id.into(),
            arrived: T0,
            from: ReversePath::Mailbox(mailbox(from)),
            params: MailParams::default(),
            rcpts,
            data: vec![
                b"Received: by gw.example.test\r\n".to_vec(),
                b"Message-ID: <m1@sender.test>\r\nSubject: hi\r\n\r\nsecret body\r\n".to_vec(),
            ],
            rest: None,
            trust,
        })
        .await
        .unwrap();
    let lease = spool
        .take_due(T0, 10_000)
        .into_iter()
        .find(|l| l.id == id)
        .unwrap();
    let updates = lease
        .rcpts
        .iter()
        .map(|r| (r.index, failed(T0 + 30)))
        .collect();
    spool.finish(lease, updates).await;
}

/// Reports in the spool: (queue id, recipient).
fn reports(spool: &Spool) -> Vec<(String, String)> {
    spool
        .list()
        .into_iter()
        .filter(|m| m.from == "<>")
        .map(|m| (m.id, m.rcpts[0].addr.clone()))
        .collect()
}

#[tokio::test]
async fn a_hundred_failures_make_exactly_one_report_with_headers_only() {
    let (_s, store) = store();
    let r = rig(store, "");
    failed_message(&r.spool, "A1", "user@sender.test", 100, trusted()).await;
    r.notifier.settle("A1").await;
    r.notifier.settle("A1").await;
    r.notifier.sweep().await;
    let sent = reports(&r.spool);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1, "user@sender.test");
    // the original is finished: every failure reported, nothing kept
    assert!(r.spool.show("A1").is_none());
    let head = r.spool.head(&sent[0].0, u64::MAX).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&head);
    assert_eq!(text.matches("Final-Recipient: rfc822;").count(), 100);
    assert!(text.contains("In-Reply-To: <m1@sender.test>"), "{text}");
    assert!(!text.contains("secret body"));
}

#[tokio::test]
async fn an_untrusted_sender_gets_none_and_the_failure_stays_listed() {
    let (_s, store) = store();
    let r = rig(store, "");
    let forged = Trust::no("spf=fail dkim=none");
    failed_message(&r.spool, "A1", "victim@sender.test", 100, forged).await;
    r.notifier.settle("A1").await;
    assert!(reports(&r.spool).is_empty());
    let m = r.spool.show("A1").unwrap();
    assert!(
        m.rcpts
            .iter()
            .all(|x| x.report.as_deref()
                == Some("no report: sender not trusted (spf=fail dkim=none)"))
    );
    // kept for review until keep_failed has passed
    assert_eq!(r.spool.purge_finished(T0).await.unwrap(), 0);
    assert_eq!(r.spool.purge_finished(T0 + 31).await.unwrap(), 1);
}

#[tokio::test]
async fn a_second_node_or_a_lost_record_never_sends_it_again() {
    let (_s, store) = store();
    let a = rig(store.clone(), "");
    let b = rig(store, "");
    for r in [&a, &b] {
        failed_message(&r.spool, "A1", "user@sender.test", 3, trusted()).await;
    }
    a.notifier.settle("A1").await;
    b.notifier.settle("A1").await;
    assert_eq!(reports(&a.spool).len(), 1);
    assert!(reports(&b.spool).is_empty());
    // B counts the report as sent (by A) and is done with the message
    assert!(b.spool.show("A1").is_none());
}

#[tokio::test]
async fn one_message_taken_by_two_nodes_under_their_own_ids_is_reported_once() {
    // a client whose 250 from node A was lost sends the same message again through node B
    let (_s, store) = store();
    let a = rig(store.clone(), "");
    let b = rig(store, "");
    failed_message(&a.spool, "A1", "user@sender.test", 2, trusted()).await;
    failed_message(&b.spool, "B7", "user@sender.test", 2, trusted()).await;
    a.notifier.settle("A1").await;
    b.notifier.settle("B7").await;
    assert_eq!(reports(&a.spool).len(), 1);
    assert!(reports(&b.spool).is_empty());
    // another sender's message with the same Message-ID is another message
    failed_message(&b.spool, "B8", "other@sender.test", 1, trusted()).await;
    b.notifier.settle("B8").await;
    assert_eq!(reports(&b.spool).len(), 1);
}

#[tokio::test]
async fn the_budget_caps_reports_to_one_domain() {
    let (_s, store) = store();
    let r = rig(store, "[reports]\nper_domain = 10\n");
    for i in 0..1000 {
        let id = format!("M{i}");
        failed_message(&r.spool, &id, &format!("u{i}@sender.test"), 1, trusted()).await;
        r.notifier.settle(&id).await;
    }
    assert_eq!(reports(&r.spool).len(), 10);
    let suppressed = r
        .spool
        .list()
        .into_iter()
        .filter(|m| {
            m.rcpts[0]
                .report
                .as_deref()
                .is_some_and(|n| n.starts_with("suppressed: over budget"))
        })
        .count();
    assert_eq!(suppressed, 990);
}

#[tokio::test]
async fn the_postmaster_gets_one_digest_of_yesterdays_unreported_failures() {
    let (_s, store) = store();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("queue")).unwrap();
    let clock = Arc::new(ManualClock::new(T0 + 60));
    // a key for the host name's parent domain signs our own mail
    let key = dir.path().join("d1.key");
    crate::dkim::write_key_for_tests(&key, crate::config::DkimAlgorithm::Ed25519);
    let cfg = config(&format!(
        "[reports]\ndigest = \"postmaster@example.test\"\n\
         [[dkim]]\ndomain = \"example.test\"\nselector = \"d1\"\nalgorithm = \"ed25519\"\n\
         key = \"{}\"\n",
        key.display()
    ));
    let dkim = Arc::new(crate::dkim::Signer::load(&cfg, false).unwrap());
    let notifier = Notifier::new(
        (spool.clone(), store),
        (cfg, no_dns(), dkim),
        clock.clone(),
        Arc::new(IdGen::new(0)),
    );
    let forged = Trust::no("spf=fail dkim=none");
    failed_message(&spool, "A1", "victim@sender.test", 2, forged).await;
    notifier.settle("A1").await;
    // the day is not over: nothing yet
    notifier.digest().await.unwrap();
    assert!(reports(&spool).is_empty());
    clock.advance(std::time::Duration::from_secs(86_400));
    notifier.digest().await.unwrap();
    notifier.digest().await.unwrap();
    let sent = reports(&spool);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1, "postmaster@example.test");
    let text = spool.head(&sent[0].0, u64::MAX).await.unwrap().unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Subject: backstop at gw.example.test: 2 failed deliveries without a report (Mon, 23 Nov 2026)"), "{text}");
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=d1; d=example.test;"),
        "{text}"
    );
    assert!(
        text.contains("A1 from <victim@sender.test> to <u1@example.test>"),
        "{text}"
    );
    assert!(
        text.contains("no report: sender not trusted (spf=fail dkim=none)"),
        "{text}"
    );
}

#[tokio::test]
async fn one_delay_warning_through_the_queue() {
    let (_s, store) = store();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("queue")).unwrap();
    let clock = Arc::new(ManualClock::new(T0 + 2 * 3600));
    let notifier = Notifier::new(
        (spool.clone(), store),
        (
            config("[reports]\ndelay_warning = \"1h\"\n"),
            no_dns(),
            Default::default(),
        ),
        clock,
        Arc::new(IdGen::new(0)),
    );
    failed_message(&spool, "A1", "user@sender.test", 1, trusted()).await;
    // a second message whose recipient is only deferred
    spool
        .enqueue(NewMessage {
            id: "B1".into(),
            arrived: T0,
            from: ReversePath::Mailbox(mailbox("user@sender.test")),
            params: MailParams::default(),
            rcpts: vec![(mailbox("slow@example.test"), RcptParams::default())],
            data: vec![b"Subject: slow\r\n\r\nbody\r\n".to_vec()],
            rest: None,
            trust: trusted(),
        })
        .await
        .unwrap();
    let lease = spool
        .take_due(T0, 10)
        .into_iter()
        .find(|l| l.id == "B1")
        .unwrap();
    spool.finish(lease, vec![(0, queued())]).await;
    for _ in 0..3 {
        notifier.settle("B1").await;
    }
    let sent: Vec<_> = reports(&spool)
        .into_iter()
        .filter(|(_, to)| to == "user@sender.test")
        .collect();
    // (A1 has not been settled: only B1's delay warning is there)
    assert_eq!(sent.len(), 1, "{sent:?}");
    let text = spool.head(&sent[0].0, u64::MAX).await.unwrap().unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("Subject: Delayed Mail (still being retried)"),
        "{text}"
    );
    assert!(text.contains("Action: delayed"), "{text}");
    assert!(text.contains("Status: 4.3.0"), "{text}");
    assert!(
        text.contains("Will-Retry-Until: Sat, 28 Nov 2026 00:00:00 +0000"),
        "{text}"
    );
    assert!(spool.show("B1").is_some());
}

/// A sender not decided at acceptance is checked (SPF, through a real DNS server) only when a
/// report is due; the decision is kept with the message.
#[tokio::test]
async fn an_undecided_sender_is_checked_when_a_report_is_due_and_not_before() {
    let dns = crate::auth::test_dns::Dns::start(&[
        "--txt-record=sender.test,v=spf1 ip4:192.0.2.7 -all".to_string(),
    ]);
    let timeout = std::time::Duration::from_secs(2);
    let auth = Arc::new(crate::auth::SenderAuth::new(Some(dns.addr), timeout, 1).unwrap());
    let (_s, store) = store();
    let r = rig_with(store, "", auth);
    // the sender's client is in its SPF record: a report, and the trust recorded
    let ok = Trust::undecided("192.0.2.7".parse().unwrap(), "client.test");
    failed_message(&r.spool, "A1", "user@sender.test", 2, ok).await;
    r.notifier.settle("A1").await;
    assert_eq!(reports(&r.spool).len(), 1);
    // another client: no report, and why
    let forged = Trust::undecided("198.51.100.9".parse().unwrap(), "forger.test");
    failed_message(&r.spool, "A2", "user@sender.test", 2, forged).await;
    r.notifier.settle("A2").await;
    assert_eq!(reports(&r.spool).len(), 1);
    let m = r.spool.show("A2").unwrap();
    assert_eq!(m.trust.pending, None);
    assert!(m.trust.why.starts_with("spf=fail"), "{:?}", m.trust);
    assert!(
        m.rcpts[0]
            .report
            .as_deref()
            .is_some_and(|n| n.starts_with("no report: sender not trusted (spf=fail")),
        "{:?}",
        m.rcpts[0]
    );
}

#[tokio::test]
async fn an_undecided_sender_with_nothing_to_report_costs_no_lookup() {
    // a resolver that counts what it is asked and never answers
    let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    quiet.set_nonblocking(true).unwrap();
    let timeout = std::time::Duration::from_millis(300);
    let auth = crate::auth::SenderAuth::new(Some(quiet.local_addr().unwrap()), timeout, 1).unwrap();
    let (_s, store) = store();
    // failures wait 10 minutes for more before the first report
    let r = rig_with(store, "[reports]\ngather = \"10m\"\n", Arc::new(auth));
    let undecided = Trust::undecided("192.0.2.7".parse().unwrap(), "client.test");
    // one recipient failed, another is still queued: the report waits, and so does the check
    r.spool
        .enqueue(NewMessage {
            id: "A1".into(),
            arrived: T0,
            from: ReversePath::Mailbox(mailbox("user@sender.test")),
            params: MailParams::default(),
            rcpts: ["u0@example.test", "u1@example.test"]
                .iter()
                .map(|a| (mailbox(a), RcptParams::default()))
                .collect(),
            data: vec![b"Subject: hi\r\n\r\nbody\r\n".to_vec()],
            rest: None,
            trust: undecided.clone(),
        })
        .await
        .unwrap();
    let lease = r.spool.take_due(T0, 10).pop().unwrap();
    r.spool.finish(lease, vec![(0, failed(T0 + 30))]).await;
    r.notifier.settle("A1").await;
    let mut buf = [0u8; 512];
    assert!(quiet.recv(&mut buf).is_err(), "no DNS query");
    assert_eq!(r.spool.show("A1").unwrap().trust, undecided);
}

/// Senders of messages larger than what is read whole side by side are checked too: settled
/// at once, they take turns, and each gets its report.
#[tokio::test]
async fn undecided_senders_of_large_messages_are_checked_in_turn() {
    let dns = crate::auth::test_dns::Dns::start(&[
        "--txt-record=sender.test,v=spf1 ip4:192.0.2.7 -all".to_string(),
    ]);
    let timeout = std::time::Duration::from_secs(2);
    let auth = Arc::new(crate::auth::SenderAuth::new(Some(dns.addr), timeout, 1).unwrap());
    let (_s, store) = store();
    let r = rig_with(store, "", auth);
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
    let body: Vec<u8> = line.repeat((super::WHOLE_AT_ONCE as usize) / line.len() + 10);
    for id in ["L1", "L2"] {
        r.spool
            .enqueue(NewMessage {
                id: id.into(),
                arrived: T0,
                from: ReversePath::Mailbox(mailbox("user@sender.test")),
                params: MailParams::default(),
                rcpts: vec![(mailbox("u0@example.test"), RcptParams::default())],
                data: vec![b"Subject: big\r\n\r\n".to_vec(), body.clone()],
                rest: None,
                trust: Trust::undecided("192.0.2.7".parse().unwrap(), "client.test"),
            })
            .await
            .unwrap();
        assert!(r.spool.size(id).unwrap() > super::WHOLE_AT_ONCE);
    }
    for lease in r.spool.take_due(T0, 10) {
        let updates = vec![(0, failed(T0 + 30))];
        r.spool.finish(lease, updates).await;
    }
    tokio::join!(r.notifier.settle("L1"), r.notifier.settle("L2"));
    assert_eq!(reports(&r.spool).len(), 2, "{:?}", r.spool.list());
}
