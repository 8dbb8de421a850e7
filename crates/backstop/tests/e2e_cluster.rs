//! Cluster mode with the real binary: two `backstop serve` nodes (own ports, own spools)
//! sharing one real `redis-server` on loopback. What one node learns, the other knows: call-out
//! answers, harvest blocks, outbound rate counts.

mod support;

use std::net::SocketAddr;
use support::*;

const VALID: &str = "alice@example.test";

/// A node's config: `[store]` on the shared Redis, plus `extra`.
fn node(dir: &std::path::Path, sources: &[String], redis: &RedisServer, extra: &str) -> String {
    let store = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nnamespace = \"mx\"\n{extra}",
        redis.url
    );
    config(
        &dir.join("state"),
        "example.test",
        sources,
        "maildir:mail",
        &store,
    )
}

/// A list source (in `dir`) that knows `VALID`.
fn list_source(dir: &std::path::Path) -> Vec<String> {
    let list = dir.join("users.txt");
    std::fs::write(&list, format!("{VALID}\n")).unwrap();
    vec![format!("list:{}", list.display())]
}

/// A relay listener on `port` for 127.0.0.1, and partner.test routed to `next_hop_port`.
fn relay_to_partner(port: u16, next_hop_port: u16) -> String {
    format!(
        "[[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:127.0.0.1:{next_hop_port}\"\n\
         [[listen]]\naddr = \"127.0.0.1:{port}\"\nrelay_from = [\"127.0.0.1\"]\n"
    )
}

fn rcpt(addr: SocketAddr, to: &str) -> String {
    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<someone@client.test>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

#[test]
fn a_recipient_verified_on_one_node_is_answered_from_cache_by_the_other() {
    let redis = RedisServer::start();
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let src = vec![format!("callout:127.0.0.1:{}", pf.port)];
    let (da, db) = (world_dir(), world_dir());
    let a = Backstop::start(da.path(), &node(da.path(), &src, &redis, ""));
    let b = Backstop::start(db.path(), &node(db.path(), &src, &redis, ""));

    assert_eq!(rcpt(a.addr, VALID), "250 2.1.5 Ok");
    assert!(rcpt(a.addr, "nobody@example.test").starts_with("550 5.1.1"));
    // node A probed: the catch-all check and the two addresses
    assert_eq!(
        a.count_reaching(&["event=\"callout_probe\""], 3),
        3,
        "{}",
        a.log()
    );
    let probes_at_postfix = pf.maillog().matches("RCPT from").count();

    // node B answers both from the shared cache, without a probe
    assert_eq!(rcpt(b.addr, VALID), "250 2.1.5 Ok");
    assert!(rcpt(b.addr, "nobody@example.test").starts_with("550 5.1.1"));
    let (code, out, _) = b.cli(&["verify", VALID]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cached"), "{out}");
    assert_eq!(b.count(&["event=\"callout_probe\""]), 0, "{}", b.log());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(pf.maillog().matches("RCPT from").count(), probes_at_postfix);
}

#[test]
fn a_client_blocked_on_one_node_is_refused_by_the_other() {
    let redis = RedisServer::start();
    let (da, db) = (world_dir(), world_dir());
    let src = list_source(da.path());
    let harvest = "[harvest]\nblock_after = 3\ntarpit_after = 10\nclose_after = 20\n";
    let a = Backstop::start(da.path(), &node(da.path(), &src, &redis, harvest));
    let b = Backstop::start(db.path(), &node(db.path(), &src, &redis, harvest));

    let (_, greeting) = Client::connect(b.addr);
    assert!(greeting.starts_with("220"), "{greeting}");
    for i in 0..4 {
        assert!(rcpt(a.addr, &format!("guess{i}@example.test")).starts_with("550"));
    }
    assert!(
        wait_until(10, || Client::connect(b.addr).1.starts_with("554 5.7.1")),
        "{}",
        b.log()
    );
    let (_, greeting) = Client::connect(a.addr);
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    // both show it
    let (_, out, _) = b.cli(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["blocked_clients"][0]["client"], "127.0.0.1", "{st}");
}

#[test]
fn an_outbound_rate_limit_counts_messages_through_both_nodes() {
    let redis = RedisServer::start();
    let sink = Sink::start();
    let (da, db) = (world_dir(), world_dir());
    let src = list_source(da.path());
    let (pa, pb) = (free_port(), free_port());
    let limit = "[outbound]\nsender = { messages_per_hour = 3 }\n";
    let extra = |port: u16| format!("{limit}{}", relay_to_partner(port, sink.port));
    let _a = Backstop::start(da.path(), &node(da.path(), &src, &redis, &extra(pa)));
    let _b = Backstop::start(db.path(), &node(db.path(), &src, &redis, &extra(pb)));
    let relay = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let send = |port: u16| swaks(relay(port), &["--from", VALID, "--to", "x@partner.test"]);

    // two through A, one through B: three in the hour, the limit
    for port in [pa, pa, pb] {
        let (code, t) = send(port);
        assert_eq!(code, 0, "{t}");
    }
    // the fourth is refused whichever node it goes to
    for port in [pb, pa] {
        let (code, t) = send(port);
        assert_ne!(code, 0, "{t}");
        assert!(
            t.contains("450 4.7.1 <x@partner.test>: sending limit reached (sender alice@example.test: 4 messages in the last hour, limit 3)")
                || t.contains("450 4.7.1 <x@partner.test>: sending limit reached (sender alice@example.test: 5 messages in the last hour, limit 3)"),
            "{t}"
        );
    }
    assert_eq!(sink.wait_for(3).len(), 3);
}

/// One session: RCPT for `VALID` and for `unknown`, then the message; (RCPT replies, end).
fn one_message(addr: SocketAddr, unknown: &str) -> (String, String, String) {
    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<someone@client.test>").starts_with("250"));
    let valid = c.cmd(&format!("RCPT TO:<{VALID}>"));
    let other = c.cmd(&format!("RCPT TO:<{unknown}>"));
    let end = match c.cmd("DATA").starts_with("354") {
        true => c.cmd("Subject: load\r\n\r\nhello\r\n."),
        false => "no DATA".into(),
    };
    c.cmd("QUIT");
    (valid, other, end)
}

#[test]
fn redis_stopped_mid_load_loses_nothing_accepts_no_unknown_and_recovers() {
    let redis = RedisServer::start();
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let src = vec![format!("callout:127.0.0.1:{}", pf.port)];
    let dir = world_dir();
    // the load comes from one address: keep the harvest defence out of this test
    let extra = "[harvest]\nexempt = [\"127.0.0.0/8\"]\n[web]\naddr = \"127.0.0.1:0\"\n";
    let mut cfg = node(dir.path(), &src, &redis, extra);
    cfg.push_str("relay = \"queue\"\n");
    let b = Backstop::start(dir.path(), &cfg);

    let mut redis = Some(redis);
    let (mut accepted, mut answers) = (0, Vec::new());
    for i in 0..60 {
        if i == 20 {
            redis.as_mut().unwrap().stop();
        }
        if i == 40 {
            redis = Some(redis.take().unwrap().restart());
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        let (valid, other, end) = one_message(b.addr, &format!("nobody{i}@example.test"));
        if i == 30 {
            let (code, health) = http(b.web(), "GET", "/healthz", None);
            assert_eq!(code, 200);
            assert!(health.starts_with("ok, degraded"), "{health}");
            let (_, metrics) = http(b.web(), "GET", "/metrics", None);
            assert!(
                metrics.lines().any(|l| l == "backstop_store_degraded 1"),
                "{metrics}"
            );
        }
        assert_eq!(valid, "250 2.1.5 Ok", "message {i}: {}", b.log());
        assert!(
            !other.starts_with('2'),
            "an unknown recipient was accepted: {other}"
        );
        answers.push(other[..3].to_string());
        if end.starts_with("250") {
            accepted += 1;
        }
    }
    // before the outage unknown is 550; during it, 451 (nothing to ask, nothing accepted);
    // after Redis is back, 550 again
    assert!(answers[..20].iter().all(|a| a == "550"), "{answers:?}");
    assert!(answers[20..40].iter().all(|a| a == "451"), "{answers:?}");
    assert!(answers[40..].iter().all(|a| a == "550"), "{answers:?}");
    assert_eq!(
        accepted, 60,
        "every message for the valid recipient was taken"
    );
    // and every one of them is delivered
    let mail = dir.path().join("mail/new");
    assert!(
        wait_until(30, || std::fs::read_dir(&mail)
            .map(|d| d.count())
            .unwrap_or(0)
            == 60),
        "{}",
        b.log()
    );
    assert_eq!(
        b.count_reaching(&["event=\"alert\"", "kind=\"store_degraded\""], 1),
        1
    );
    assert_eq!(
        b.count_reaching(&["event=\"alert\"", "kind=\"store_recovered\""], 1),
        1
    );
}

#[test]
fn a_message_sent_through_both_nodes_is_reported_by_one() {
    let redis = RedisServer::start();
    let sink = Sink::start();
    // the far side knows only someone@partner.test: n1@partner.test fails with 550 5.1.1
    let partner = Postfix::internal("partner.test", &["someone@partner.test"], sink.port);
    let (da, db) = (world_dir(), world_dir());
    let src = list_source(da.path());
    let (pa, pb) = (free_port(), free_port());
    let extra = |port: u16| relay_to_partner(port, partner.port);
    let a = Backstop::start(da.path(), &node(da.path(), &src, &redis, &extra(pa)));
    let b = Backstop::start(db.path(), &node(db.path(), &src, &redis, &extra(pb)));
    // the client's 250 from A is lost: it sends the same message again through B
    for port in [pa, pb] {
        let relay: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (code, t) = swaks(
            relay,
            &[
                "--from",
                VALID,
                "--to",
                "n1@partner.test",
                "--header",
                "Message-Id: <once@example.test>",
            ],
        );
        assert_eq!(code, 0, "{t}");
    }
    // both nodes try, both fail; one report reaches alice
    let failed = ["event=\"attempt\"", "result=\"failed\""];
    assert_eq!(a.count_reaching(&failed, 1), 1, "{}", a.log());
    assert_eq!(b.count_reaching(&failed, 1), 1, "{}", b.log());
    let reports = || {
        [&da, &db]
            .iter()
            .map(|d| std::fs::read_dir(d.path().join("mail/new")).map_or(0, |r| r.count()))
            .sum::<usize>()
    };
    assert!(
        wait_until(20, || reports() == 1),
        "{}\n{}",
        a.log(),
        b.log()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(reports(), 1);
    let sent = ["event=\"report_sent\""];
    assert_eq!(a.count(&sent) + b.count(&sent), 1);
}

#[test]
fn reports_due_while_redis_is_away_wait_and_go_once_it_is_back() {
    let redis = RedisServer::start();
    let sink = Sink::start();
    // the far side knows only someone@partner.test: every nK@partner.test fails with 550 5.1.1
    let partner = Postfix::internal("partner.test", &["someone@partner.test"], sink.port);
    let dir = world_dir();
    let port = free_port();
    let extra = relay_to_partner(port, partner.port);
    let b = Backstop::start(
        dir.path(),
        &node(dir.path(), &list_source(dir.path()), &redis, &extra),
    );
    let relay: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut redis = redis;
    redis.stop();
    for i in 0..3 {
        let (code, t) = swaks(
            relay,
            &["--from", VALID, "--to", &format!("n{i}@partner.test")],
        );
        assert_eq!(code, 0, "accepted while Redis is away: {t}");
    }
    let failed = ["event=\"attempt\"", "result=\"failed\""];
    assert_eq!(b.count_reaching(&failed, 3), 3, "{}", b.log());
    // no report can be claimed: none goes out
    std::thread::sleep(std::time::Duration::from_secs(3));
    let reports = || std::fs::read_dir(dir.path().join("mail/new")).map_or(0, |r| r.count());
    assert_eq!(reports(), 0, "{}", b.log());
    assert_eq!(b.count(&["event=\"report_sent\""]), 0);

    let _redis = redis.restart();
    // the next sweep (every minute) sends each one once
    assert!(wait_until(100, || reports() == 3), "{}", b.log());
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(reports(), 3);
    assert_eq!(b.count_reaching(&["event=\"report_sent\""], 3), 3);
}
