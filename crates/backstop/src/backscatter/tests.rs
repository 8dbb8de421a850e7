use super::*;
use crate::config::Config;
use crate::store::embedded::EmbeddedStore;

const DAY: u64 = 86_400;
const NOW: u64 = 20_000 * DAY;

fn config(extra_domain: &str, extra: &str) -> Config {
    let d = tempfile::tempdir().unwrap();
    let list = d.path().join("users");
    std::fs::write(&list, "alice@example.test\n").unwrap();
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = \"var\"\n[[listen]]\naddr = \"127.0.0.1:2525\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:m\"\n{extra_domain}\n\
         [[domain]]\nname = \"plain.test\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:m\"\n{extra}",
        list.display(),
        list.display()
    );
    Config::from_toml(&text, d.path()).unwrap()
}

async fn guard(cfg: Config) -> (tempfile::TempDir, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s")).unwrap());
    let tags = Tags::load(&cfg, store.as_ref(), NOW, || [7; 16])
        .await
        .unwrap();
    let g = Guard::new(Arc::new(cfg), store, Arc::new(tags), NOW)
        .await
        .unwrap();
    (dir, g)
}

fn mb(s: &str) -> Mailbox {
    Mailbox::parse(s, false).unwrap()
}

fn from(s: &str) -> ReversePath {
    ReversePath::Mailbox(mb(s))
}

#[tokio::test]
async fn senders_of_signing_domains_are_signed_unless_exempt() {
    let cfg = config("batv = \"sign\"", "[batv]\nkeys = [\"3:s3cret\"]\n");
    let (_d, g) = guard(cfg.clone()).await;
    let t = g.tags();
    let signed = t.sign(&cfg, &from("alice@example.test"), NOW);
    assert!(signed.to_string().starts_with("<prvs=3007"), "{signed}");
    for same in [
        "alice@plain.test",
        "owner-list@example.test",
        "news-bounces+bob=x.test@example.test",
        "alice@elsewhere.test",
    ] {
        assert_eq!(t.sign(&cfg, &from(same), NOW), from(same), "{same}");
    }
    assert_eq!(t.sign(&cfg, &ReversePath::Null, NOW), ReversePath::Null);
    // signed once only
    assert_eq!(t.sign(&cfg, &signed, NOW), signed);
}

#[tokio::test]
async fn a_generated_key_is_kept_in_the_store() {
    let cfg = config("batv = \"sign\"", "");
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s")).unwrap());
    let a = Tags::load(&cfg, store.as_ref(), NOW, || [1; 16])
        .await
        .unwrap();
    let b = Tags::load(&cfg, store.as_ref(), NOW, || [2; 16])
        .await
        .unwrap();
    let signed = a.sign(&cfg, &from("alice@example.test"), NOW);
    assert_eq!(b.sign(&cfg, &from("alice@example.test"), NOW), signed);
    // keys configured later sign; the generated key's tags still verify...
    let ReversePath::Mailbox(old) = signed else {
        panic!()
    };
    let cfg = config("batv = \"sign\"", "[batv]\nkeys = [\"1:configured\"]\n");
    let c = Tags::load(&cfg, store.as_ref(), NOW, || [3; 16])
        .await
        .unwrap();
    assert!(
        c.sign(&cfg, &from("alice@example.test"), NOW)
            .to_string()
            .starts_with("<prvs=1")
    );
    let t = batv::read(&old).unwrap();
    assert_eq!(c.check(&t, NOW), BatvEvidence::Valid);
    // ...until a configured key takes number 0
    let cfg = config("batv = \"sign\"", "[batv]\nkeys = [\"0:new-zero\"]\n");
    let z = Tags::load(&cfg, store.as_ref(), NOW, || [3; 16])
        .await
        .unwrap();
    assert_eq!(z.check(&t, NOW), BatvEvidence::Invalid);
}

#[tokio::test]
async fn bounces_to_tagged_addresses_are_checked_and_stripped() {
    let cfg = config("batv = \"enforce\"", "[batv]\nwarmup = \"0s\"\n");
    let (_d, g) = guard(cfg.clone()).await;
    let ReversePath::Mailbox(signed) = g.tags().sign(&cfg, &from("alice@example.test"), NOW) else {
        panic!()
    };
    assert_eq!(
        g.rcpt(&ReversePath::Null, &signed, NOW + DAY),
        RcptBatv::Checked {
            address: mb("alice@example.test"),
            evidence: BatvEvidence::Valid
        }
    );
    let RcptBatv::Refused { reply, evidence } = g.rcpt(&ReversePath::Null, &signed, NOW + 8 * DAY)
    else {
        panic!()
    };
    assert_eq!(evidence, BatvEvidence::Expired);
    assert!(reply.to_string().starts_with("550 5.7.1 <prvs="), "{reply}");
    let forged = mb("prvs=0123abcdef=alice@example.test");
    assert!(matches!(
        g.rcpt(&ReversePath::Null, &forged, NOW),
        RcptBatv::Refused {
            evidence: BatvEvidence::Invalid,
            ..
        }
    ));
    // untagged, past the warm-up
    let RcptBatv::Refused { reply, .. } =
        g.rcpt(&ReversePath::Null, &mb("alice@example.test"), NOW)
    else {
        panic!()
    };
    assert_eq!(
        reply.to_string(),
        "550 5.7.1 <alice@example.test>: bounce not for mail sent from here (no BATV tag)"
    );
    // postmaster is always reachable; its bounces are judged by their content
    assert!(matches!(
        g.rcpt(&ReversePath::Null, &mb("PostMaster@example.test"), NOW),
        RcptBatv::Checked {
            evidence: BatvEvidence::Missing,
            ..
        }
    ));
    // ordinary mail and domains without BATV are left alone
    assert_eq!(
        g.rcpt(&from("bob@remote.test"), &mb("alice@example.test"), NOW),
        RcptBatv::Untouched
    );
    assert_eq!(
        g.rcpt(&ReversePath::Null, &mb("alice@plain.test"), NOW),
        RcptBatv::Untouched
    );
}

#[tokio::test]
async fn untagged_bounces_pass_during_the_warm_up_and_when_only_signing() {
    let cfg = config("batv = \"enforce\"", "[batv]\nwarmup = \"7d\"\n");
    let (_d, g) = guard(cfg).await;
    let alice = mb("alice@example.test");
    assert_eq!(
        g.rcpt(&ReversePath::Null, &alice, NOW + 6 * DAY),
        RcptBatv::Checked {
            address: alice.clone(),
            evidence: BatvEvidence::Missing
        }
    );
    assert!(matches!(
        g.rcpt(&ReversePath::Null, &alice, NOW + 7 * DAY),
        RcptBatv::Refused { .. }
    ));
    let (_d, g) = guard(config("batv = \"sign\"", "")).await;
    assert!(matches!(
        g.rcpt(&ReversePath::Null, &alice, NOW + 70 * DAY),
        RcptBatv::Checked {
            evidence: BatvEvidence::Missing,
            ..
        }
    ));
}

#[tokio::test]
async fn bounce_rate_per_recipient() {
    let (_d, g) = guard(config("", "[bounces]\nper_recipient = 3\n")).await;
    let alice = mb("alice@example.test");
    for _ in 0..3 {
        assert!(!g.over_rate(&alice, NOW).await.unwrap());
    }
    assert!(g.over_rate(&alice, NOW).await.unwrap());
    assert!(!g.over_rate(&mb("bob@example.test"), NOW).await.unwrap());
}

const BOUNCE: &str = "From: MAILER-DAEMON@remote.test\r\nTo: alice@example.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nI'm sorry, your message could not be delivered.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n\
Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\n\
Received: from RELAY by mx.remote.test; Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <THEID@example.test>\r\nFrom: alice@example.test\r\nSubject: hi\r\n\r\n--b--\r\n";

fn bounce(relay: &str, id: &str) -> Vec<u8> {
    BOUNCE
        .replace("RELAY", relay)
        .replace("THEID", id)
        .into_bytes()
}

#[tokio::test]
async fn content_evidence_sent_log_and_relay() {
    let (_d, g) = guard(config("", "")).await;
    g.record_sent(
        b"Message-ID: <out-1@example.test>\r\nSubject: x\r\n\r\nhi\r\n",
        NOW,
    )
    .await
    .unwrap();
    let e = g
        .evidence(true, None, &bounce("spam.test", "out-1"), NOW)
        .await
        .unwrap();
    assert_eq!((e.msgid, e.relay), (MsgId::Known, Relay::Foreign));
    assert_eq!(e.verdict(), verdict::Verdict::Genuine);
    let e = g
        .evidence(true, None, &bounce("spam.test", "forged"), NOW)
        .await
        .unwrap();
    assert_eq!(e.to_string(), "msgid=unknown,relay=foreign");
    assert_eq!(e.verdict(), verdict::Verdict::Backscatter);
    let e = g
        .evidence(true, None, &bounce("MX.Example.Test", "forged"), NOW)
        .await
        .unwrap();
    assert_eq!(e.relay, Relay::Ours);
    // the sent log forgets after 14 days
    let e = g
        .evidence(true, None, &bounce("spam.test", "out-1"), NOW + 15 * DAY)
        .await
        .unwrap();
    assert_eq!(e.msgid, MsgId::Unknown);
    // a delivery report with a sender is a bounce by its content
    let e = g
        .evidence(false, None, &bounce("spam.test", "forged"), NOW)
        .await
        .unwrap();
    assert!(e.bounce);
    let e = g
        .evidence(false, None, b"Subject: hello\r\n\r\nhi\r\n", NOW)
        .await
        .unwrap();
    assert!(!e.bounce);
}

#[test]
fn wildcards() {
    assert!(wildcard("owner-*@*", "owner-list@example.test"));
    assert!(wildcard("*-bounces+*@*", "l-bounces+a=b.test@x.test"));
    assert!(wildcard("a*", "a"));
    assert!(wildcard("*", ""));
    assert!(!wildcard("owner-*@*", "owner@example.test"));
    assert!(!wildcard("*-request@*", "x-request"));
    assert!(wildcard("exact@x.test", "exact@x.test"));
    assert!(!wildcard("exact@x.test", "exact@x.test.x"));
    assert!(!wildcard("a*a", "a"));
}
