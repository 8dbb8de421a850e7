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
    let list = da.path().join("users.txt");
    std::fs::write(&list, format!("{VALID}\n")).unwrap();
    let src = vec![format!("list:{}", list.display())];
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
    let list = da.path().join("users.txt");
    std::fs::write(&list, format!("{VALID}\n")).unwrap();
    let src = vec![format!("list:{}", list.display())];
    let (pa, pb) = (free_port(), free_port());
    let extra = |port: u16| {
        format!(
            "[outbound]\nsender = {{ messages_per_hour = 3 }}\n\
             [[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\n\
             [[listen]]\naddr = \"127.0.0.1:{port}\"\nrelay_from = [\"127.0.0.1\"]\n",
            sink.port
        )
    };
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
