//! Spool tests on a real directory: durability across reopen, statuses, operator changes,
//! damaged tails and space reclaim.

use super::*;
use backstop_proto::address::Domain;
use backstop_proto::smtp::command::{Notify, Ret};

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s, false).unwrap()
}

fn message(id: &str, rcpts: &[&str], body: &[u8]) -> NewMessage {
    NewMessage {
        id: id.into(),
        arrived: 1000,
        from: ReversePath::Mailbox(mailbox("sender@example.test")),
        params: MailParams {
            ret: Some(Ret::Hdrs),
            envid: Some("env 1".into()),
            ..MailParams::default()
        },
        rcpts: rcpts
            .iter()
            .map(|r| {
                let p = RcptParams {
                    notify: Some(Notify {
                        failure: true,
                        ..Notify::default()
                    }),
                    orcpt: None,
                };
                (mailbox(r), p)
            })
            .collect(),
        data: vec![b"Received: x\r\n".to_vec(), body.to_vec()],
        rest: None,
        trust: Trust::default(),
    }
}

fn delivered(at: u64) -> Status {
    Status::Delivered {
        at,
        reply: "250 ok".into(),
        action: None,
        remote: None,
    }
}

#[tokio::test]
async fn a_queued_message_survives_reopen_with_its_envelope_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool
        .enqueue(message(
            "A1",
            &["a@example.test", "b@example.test"],
            b"hello\r\n",
        ))
        .await
        .unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let list = spool.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].from, "sender@example.test");
    assert_eq!(list[0].size, 20);
    let leases = spool.take_due(1000, 10);
    assert_eq!(leases.len(), 1);
    let l = &leases[0];
    assert_eq!(l.params.ret, Some(Ret::Hdrs));
    assert_eq!(l.params.envid.as_deref(), Some("env 1"));
    assert_eq!(l.rcpts.len(), 2);
    assert!(l.rcpts[1].params.notify.unwrap().failure);
    assert_eq!(
        l.rcpts[1].mailbox.domain(),
        &Domain::parse("example.test", false).unwrap()
    );
    assert_eq!(spool.body(l).await.unwrap(), b"Received: x\r\nhello\r\n");
    // leased: not due again
    assert!(spool.take_due(2000, 10).is_empty());
}

#[tokio::test]
async fn statuses_holds_and_deletes_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for id in ["M1", "M2", "M3"] {
        spool
            .enqueue(message(id, &["a@example.test", "b@example.test"], b"x\r\n"))
            .await
            .unwrap();
    }
    let leases = spool.take_due(1000, 10);
    assert_eq!(leases.len(), 3);
    for l in leases {
        let updates = match l.id.as_str() {
            // one delivered, one deferred
            "M1" => vec![
                (0, delivered(1001)),
                (
                    1,
                    Status::Queued {
                        attempts: 1,
                        next_attempt: 1300,
                        last: Some("451 busy".into()),
                    },
                ),
            ],
            // all delivered: gone
            "M2" => vec![(0, delivered(1001)), (1, delivered(1001))],
            _ => vec![],
        };
        spool.finish(l, updates).await;
    }
    assert!(spool.hold("M3", true).await.unwrap());
    assert!(!spool.hold("nope", true).await.unwrap());
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<String> = spool.list().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["M1", "M3"]);
    assert!(spool.show("M3").unwrap().held);
    assert_eq!(spool.next_due(), Some(1300));
    assert!(spool.take_due(1299, 10).is_empty());
    let l = spool.take_due(1300, 10);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].rcpts.len(), 1);
    assert_eq!((l[0].rcpts[0].index, l[0].rcpts[0].attempts), (1, 1));
    spool.finish(l.into_iter().next().unwrap(), vec![]).await;
    // retry makes it due now; release makes M3 due
    assert_eq!(spool.retry(None, 1100), 1);
    assert!(spool.hold("M3", false).await.unwrap());
    assert_eq!(spool.take_due(1100, 10).len(), 2);
    assert!(spool.delete("M1").await.unwrap());
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<String> = spool.list().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["M3"]);
}

#[tokio::test]
async fn a_torn_tail_is_ignored_and_the_spool_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool
        .enqueue(message("T1", &["a@example.test"], b"x\r\n"))
        .await
        .unwrap();
    drop(spool);
    // a crash in the middle of a write: half a frame at the end
    let seg = log::list_segments(dir.path()).unwrap();
    let last = log::segment_path(dir.path(), *seg.last().unwrap());
    let (mut half, _) = state::message_frame(
        &state::Meta {
            id: "T2".into(),
            arrived: 1,
            mail: "MAIL FROM:<>".into(),
            rcpts: vec![],
            held: false,
            trust: Trust::default(),
            reports: Vec::new(),
        },
        &[b"body"],
        None,
    );
    half.truncate(half.len() / 2);
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&half);
    std::fs::write(&last, bytes).unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<String> = spool.list().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["T1"]);
    spool
        .enqueue(message("T3", &["a@example.test"], b"y\r\n"))
        .await
        .unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.list().len(), 2);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path()).unwrap();
    assert!(matches!(
        Spool::open(dir.path()),
        Err(SpoolError::Locked(_))
    ));
}

#[tokio::test]
async fn space_is_reclaimed_and_long_deferred_mail_is_moved_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let big = vec![b'x'; 1 << 20];
    // enough 1 MiB messages to fill two segments; one stays deferred
    for i in 0..40 {
        spool
            .enqueue(message(&format!("B{i:02}"), &["a@example.test"], &big))
            .await
            .unwrap();
    }
    assert!(log::list_segments(dir.path()).unwrap().len() >= 3);
    for l in spool.take_due(1000, 100) {
        let s = if l.id == "B00" {
            Status::Queued {
                attempts: 1,
                next_attempt: 5000,
                last: None,
            }
        } else {
            delivered(1001)
        };
        spool.finish(l, vec![(0, s)]).await;
    }
    // first round moves B00 out of the oldest segment, then removes what is dead
    let mut removed = 0;
    for _ in 0..4 {
        removed += spool.compact().await.unwrap();
    }
    assert!(removed >= 2, "removed {removed}");
    let left = log::list_segments(dir.path()).unwrap();
    assert_eq!(left.len(), 1, "segments left: {left:?}");
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let l = spool.take_due(5000, 10);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].id, "B00");
    let body = spool.body(&l[0]).await.unwrap();
    assert_eq!(body.len(), 13 + (1 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = spool.clone();
            tokio::spawn(async move {
                s.enqueue(message(&format!("G{i:03}"), &["a@example.test"], b"x\r\n"))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (records, syncs) = spool.write_stats();
    assert_eq!(records, 200);
    // group commit: while one batch syncs, the next one gathers
    assert!(syncs < records, "{syncs} syncs for {records} records");
    assert_eq!(spool.list().len(), 200);
}

/// A large message's body comes from its spill file, copied into the segment a piece at a time
/// with the frame's checksum combined from the spill's: it reads back whole, and the frame
/// holds across a reopen (replay checks every checksum).
#[tokio::test]
async fn a_spilled_body_is_queued_from_its_file_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("q")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"abcdefghij\r\n"[(i % 12) as usize])
        .collect();
    let mut spill = crate::content::Spill::create(dir.path()).unwrap();
    for piece in big.chunks(100_000) {
        spill.write(piece).unwrap();
    }
    let mut m = message("B1", &["a@example.test"], b"Subject: big\r\n\r\n");
    m.rest = Some(spill.finish());
    spool.enqueue(m).await.unwrap();
    spool
        .enqueue(message("B2", &["a@example.test"], b"small\r\n"))
        .await
        .unwrap();
    drop(spool);
    let spool = Spool::open(&dir.path().join("q")).unwrap();
    let leases = spool.take_due(1000, 10);
    assert_eq!(leases.len(), 2, "both frames replayed: the checksums hold");
    let l = leases.iter().find(|l| l.id == "B1").unwrap();
    let mut want = b"Received: x\r\nSubject: big\r\n\r\n".to_vec();
    want.extend_from_slice(&big);
    assert_eq!(spool.body(l).await.unwrap(), want);
    let content = spool.content(l).unwrap();
    assert_eq!(content.len(), want.len() as u64);
    assert_eq!(content.to_vec().unwrap(), want);
}
