//! The real binary in front of a real Postfix internal server (call-outs and in-session relay),
//! with smtp-sink behind it.

mod support;

use std::net::SocketAddr;
use support::*;

const VALID: &str = "alice@example.test";

fn callout_config(dir: &std::path::Path, pf: &Postfix, next_hop: &str, extra: &str) -> String {
    let src = format!("callout:127.0.0.1:{}", pf.port);
    config(&dir.join("state"), "example.test", &[src], next_hop, extra)
}

/// The backscatter attack from the issue: one message with a forged sender, 100 invalid
/// recipients and 1 valid. Returns (replies to the 101 RCPTs, reply to DATA or its refusal).
fn attack(addr: SocketAddr) -> (Vec<String>, String) {
    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO spammer.test");
    assert_eq!(c.cmd("MAIL FROM:<victim@victim.test>"), "250 2.1.0 Ok");
    let mut script = String::new();
    for i in 0..100 {
        script.push_str(&format!("RCPT TO:<nobody{i}@example.test>\r\n"));
    }
    script.push_str(&format!("RCPT TO:<{VALID}>\r\n"));
    c.send(script.as_bytes()); // pipelined
    let replies: Vec<String> = (0..101).map(|_| c.reply()).collect();
    let data = c.cmd("DATA");
    let end = if data.starts_with("354") {
        c.cmd("Subject: cheap pills\r\n\r\nbuy now\r\n.")
    } else {
        data
    };
    c.cmd("QUIT");
    (replies, end)
}

fn count(replies: &[String], prefix: &str) -> usize {
    replies.iter().filter(|r| r.starts_with(prefix)).count()
}

#[test]
fn the_backscatter_attack_is_refused_at_rcpt_cold_warm_and_with_the_internal_server_down() {
    let sink = Sink::start();
    let mut pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("smtp:127.0.0.1:{}", pf.port);
    // this test measures verification at RCPT; the harvest defence, which would cut such a
    // session off after [harvest] close_after unknown recipients, has its own tests
    let no_harvest = "[harvest]\nexempt = [\"127.0.0.0/8\"]\n";
    let b = Backstop::start(
        dir.path(),
        &callout_config(dir.path(), &pf, &hop, no_harvest),
    );

    // cold cache: every recipient is asked of the internal server once: the first five by
    // the relayed RCPT itself (the internal server is also the next hop), then, with five
    // refusals on the relayed connection, by probes on connections retired early
    let (r, end) = attack(b.addr);
    assert_eq!(count(&r[..100], "550 5.1.1 <nobody"), 100, "{r:?}");
    assert_eq!(r[100], "250 2.1.5 Ok");
    assert!(end.starts_with("250 2.0.0 Ok: queued as"), "{end}");
    assert_eq!(
        b.count_reaching(&["event=\"callout_probe\"", "addr=nobody"], 95),
        95,
        "one probe per address not asked by the relay"
    );
    assert_eq!(
        b.count_reaching(&["event=\"rcpt\"", "reason=\"relay-invalid\""], 5),
        5
    );
    for i in 0..100 {
        assert_eq!(
            pf.rejects_of(&format!("nobody{i}@example.test")),
            1,
            "nobody{i}"
        );
    }
    assert_eq!(
        b.count_reaching(&["event=\"callout_probe\"", "addr=alice@"], 1),
        1
    );
    assert_eq!(
        b.count_reaching(&["event=\"callout_probe\"", "addr=bkst-"], 1),
        1,
        "and one catch-all check"
    );
    let probes = b.count(&["event=\"callout_probe\""]);
    // Postfix delays every reply by a second on a connection with more than 10 errors
    // (smtpd_soft_error_limit): no connection of backstop's may come near, or the next client
    // to use it would wait (upstream::MAX_REFUSALS is 8)
    let most = pf.most_rejects_on_one_connection();
    assert!((1..=8).contains(&most), "{most} refusals on one connection");
    for (i, reply) in r.iter().take(100).enumerate() {
        assert_eq!(
            *reply,
            format!("550 5.1.1 <nobody{i}@example.test>: Recipient address rejected: User unknown")
        );
    }

    // warm cache: the same answers, no new probe
    let (r, end) = attack(b.addr);
    assert_eq!(count(&r[..100], "550 5.1.1"), 100);
    assert_eq!(r[100], "250 2.1.5 Ok");
    assert!(end.starts_with("250 2.0.0"), "{end}");
    assert_eq!(
        b.count_reaching(&["event=\"callout_probe\""], probes + 1),
        probes,
        "all answered from the cache"
    );

    let msgs = sink.wait_for(2);
    assert_eq!(msgs.len(), 2, "exactly the two messages to the valid user");
    for m in &msgs {
        assert!(m.contains(&format!("X-Rcpt-Args: <{VALID}>")), "{m}");
        assert!(!m.contains("nobody"), "{m}");
        assert!(
            m.contains("by mx.example.test (backstop) with ESMTP id"),
            "{m}"
        );
    }

    // internal server stopped, warm cache: the 100 are still refused, nothing is accepted
    pf.stop();
    let (r, end) = attack(b.addr);
    assert_eq!(count(&r[..100], "550 5.1.1"), 100, "{r:?}");
    assert!(
        r[100].starts_with("451 4.4.1"),
        "cannot relay in-session: {}",
        r[100]
    );
    assert!(end.starts_with("554 5.5.1"), "{end}");

    // internal server stopped, cold cache: nothing can be verified, so nothing is accepted
    let dir2 = tempfile::tempdir().unwrap();
    let b2 = Backstop::start(dir2.path(), &callout_config(dir2.path(), &pf, &hop, ""));
    let (r, end) = attack(b2.addr);
    assert_eq!(count(&r, "451 4.4.3"), 101, "{r:?}");
    assert!(end.starts_with("554 5.5.1"), "{end}");

    // not one message toward the forged sender, anywhere
    assert_eq!(sink.messages().len(), 2);
    assert!(pf.queue_is_empty(), "the internal server holds no bounce");
    let log = pf.maillog();
    assert!(!log.contains("sender non-delivery notification"), "{log}");
    assert!(
        !log.contains("victim@victim.test> relay=") && !log.contains("to=<victim@victim.test>"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_rcpts_for_one_uncached_address_cause_exactly_one_probe() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let b = Backstop::start(
        dir.path(),
        &callout_config(
            dir.path(),
            &pf,
            &format!("smtp:127.0.0.1:{}", sink.port),
            "[limits]\nmax_connections_per_ip = 2000\n",
        ),
    );
    let target = "burst@example.test";
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (addr, barrier) = (b.addr, barrier.clone());
        tasks.push(tokio::spawn(async move {
            let step = std::time::Duration::from_secs(60);
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            let next = async |r: &mut BufReader<_>, line: &mut String| {
                line.clear();
                tokio::time::timeout(step, r.read_line(line))
                    .await
                    .expect("reply in time")
                    .unwrap();
            };
            next(&mut r, &mut line).await; // greeting
            w.write_all(b"HELO client.test\r\nMAIL FROM:<a@client.test>\r\n")
                .await
                .unwrap();
            next(&mut r, &mut line).await;
            next(&mut r, &mut line).await;
            tokio::time::timeout(step, barrier.wait())
                .await
                .expect("all connected");
            w.write_all(format!("RCPT TO:<{target}>\r\n").as_bytes())
                .await
                .unwrap();
            next(&mut r, &mut line).await;
            let _ = w.write_all(b"QUIT\r\n").await;
            line.trim_end().to_string()
        }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(
            reply,
            format!("550 5.1.1 <{target}>: Recipient address rejected: User unknown")
        );
    }
    assert_eq!(
        b.count_reaching(&["event=\"callout_probe\"", &format!("addr={target}")], 1),
        1
    );
    assert!(
        wait_until(10, || pf.rejects_of(target) >= 1),
        "{}",
        pf.maillog()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        pf.rejects_of(target),
        1,
        "the internal server saw exactly one probe"
    );
}

#[test]
fn in_session_relay_answers_with_the_internal_servers_verdict_in_our_words() {
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    // the list says ghost exists; the internal server knows better
    let hop = format!("smtp:127.0.0.1:{}", pf.port);
    let cfg = list_config(dir.path(), &[VALID, "ghost@example.test"], &hop, "");
    let b = Backstop::start(dir.path(), &cfg);
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<someone@client.test>");
    assert_eq!(c.cmd(&format!("RCPT TO:<{VALID}>")), "250 2.1.5 Ok");
    let ghost = c.cmd("RCPT TO:<ghost@example.test>");
    assert_eq!(
        ghost,
        "550 5.1.1 <ghost@example.test>: Recipient address rejected: User unknown"
    );
    assert!(
        !ghost.contains("relay recipient table"),
        "Postfix's own words stay inside"
    );
    assert!(
        b.count_reaching(&["rcpt_relay_refused", "relay recipient table"], 1) == 1,
        "{}",
        b.log()
    );
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd("Subject: hello\r\n\r\nbody\r\n.");
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    // a second transaction on the same connection reuses the pooled relay connection
    c.cmd("MAIL FROM:<someone@client.test>");
    assert_eq!(c.cmd(&format!("RCPT TO:<{VALID}>")), "250 2.1.5 Ok");
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(
        c.cmd("Subject: again\r\n\r\nbody\r\n.")
            .starts_with("250 2.0.0")
    );
    let msgs = sink.wait_for(2);
    assert_eq!(msgs.len(), 2);
    assert!(
        msgs.iter()
            .all(|m| m.contains("X-Rcpt-Args: <alice@example.test>")),
        "{msgs:?}"
    );
}

#[test]
fn dsn_parameters_are_passed_to_the_next_hop() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("smtp:127.0.0.1:{}", sink.port);
    let cfg = list_config(dir.path(), &[VALID], &hop, "");
    let b = Backstop::start(dir.path(), &cfg);
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    assert_eq!(
        c.cmd("MAIL FROM:<someone@client.test> RET=HDRS ENVID=QQ314159"),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        c.cmd(&format!(
            "RCPT TO:<{VALID}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Balias@example.test"
        )),
        "250 2.1.5 Ok"
    );
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: dsn\r\n\r\nx\r\n.").starts_with("250"));
    let m = &sink.wait_for(1)[0];
    assert!(
        m.contains("X-Mail-Args: <someone@client.test> RET=HDRS ENVID=QQ314159"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "X-Rcpt-Args: <{VALID}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Balias@example.test"
        )),
        "{m}"
    );
}

#[test]
fn verify_explains_the_cache_and_the_cache_survives_a_restart() {
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("smtp:127.0.0.1:{}", sink.port);
    let mut b = Backstop::start(dir.path(), &callout_config(dir.path(), &pf, &hop, ""));
    let (code, out, err) = b.cli(&["verify", "nobody@example.test"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("RCPT TO:<nobody@example.test> -> 550 5.1.1"),
        "{out}"
    );
    assert!(out.contains("reason: callout-invalid"), "{out}");
    assert!(
        out.contains("unknown user (probed now; internal server said: 550 5.1.1"),
        "{out}"
    );
    assert!(out.contains("answered by the running gateway"), "{out}");
    let (code, out, _) = b.cli(&["verify", VALID]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("-> 250 2.1.5 Ok"), "{out}");

    b.stop();
    let (code, out, _) = b.cli(&["verify", "nobody@example.test"]);
    assert_eq!(code, 1);
    assert!(out.contains("unknown user (cached, checked "), "{out}");
    assert!(
        out.contains("refresh in 2h 59m") || out.contains("refresh in 3h"),
        "{out}"
    );
    assert!(
        out.contains("evaluated here; no gateway is running"),
        "{out}"
    );

    // restarted: the cached answer is used, the internal server is not asked again
    let b = Backstop::start(dir.path(), &callout_config(dir.path(), &pf, &hop, ""));
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("HELO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    assert!(
        c.cmd("RCPT TO:<nobody@example.test>")
            .starts_with("550 5.1.1")
    );
    assert_eq!(b.count_reaching(&["event=\"rcpt\""], 1), 1);
    assert_eq!(b.count(&["event=\"callout_probe\""]), 0);
    assert_eq!(pf.rejects_of("nobody@example.test"), 1);
}

#[test]
fn probe_budget_per_client_turns_unknown_addresses_into_450() {
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let extra = "[callout]\nbudget_per_client = 5\ncatch_all_check = false\n";
    let b = Backstop::start(
        dir.path(),
        &callout_config(
            dir.path(),
            &pf,
            &format!("smtp:127.0.0.1:{}", sink.port),
            extra,
        ),
    );
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("HELO client.test");
    c.cmd("MAIL FROM:<harvester@client.test>");
    let replies: Vec<String> = (0..8)
        .map(|i| c.cmd(&format!("RCPT TO:<guess{i}@example.test>")))
        .collect();
    assert_eq!(count(&replies, "550 5.1.1"), 5, "{replies:?}");
    assert_eq!(count(&replies, "450 4.7.1"), 3, "{replies:?}");
    assert_eq!(
        replies[7],
        "450 4.7.1 <guess7@example.test>: Recipient address rejected: too many address verifications, try again later"
    );
    // already-known answers cost nothing
    assert!(
        c.cmd("RCPT TO:<guess0@example.test>")
            .starts_with("550 5.1.1")
    );
}

/// A client over its probe budget is treated as the harvester it looks like: its 450s count
/// for the harvest defence, so it is cut off instead of going on at full speed.
#[test]
fn a_client_over_its_probe_budget_is_cut_off_like_a_harvester() {
    let sink = Sink::start();
    let pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let extra = "[callout]\nbudget_per_client = 2\ncatch_all_check = false\n\
                 [harvest]\ntarpit_after = 5\ntarpit_delay = \"1s\"\nclose_after = 6\n";
    let hop = format!("smtp:127.0.0.1:{}", sink.port);
    let b = Backstop::start(dir.path(), &callout_config(dir.path(), &pf, &hop, extra));
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("HELO client.test");
    c.cmd("MAIL FROM:<harvester@client.test>");
    let replies: Vec<String> = (0..6)
        .map(|i| c.cmd(&format!("RCPT TO:<guess{i}@example.test>")))
        .collect();
    assert_eq!(count(&replies[..5], "550 5.1.1"), 2, "{replies:?}");
    assert_eq!(count(&replies[..5], "450 4.7.1"), 3, "{replies:?}");
    assert!(replies[5].starts_with("421 4.7.0"), "{replies:?}");
    assert!(c.closed());
    assert_eq!(b.count_reaching(&["event=\"harvest_cut_off\""], 1), 1);
}

#[test]
fn a_catch_all_internal_server_is_detected_and_not_trusted() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    // smtp-sink accepts any recipient: the worst kind of internal server to verify against
    let src = format!("callout:127.0.0.1:{}", sink.port);
    let cfg = config(
        &dir.path().join("state"),
        "example.test",
        &[src],
        &format!("smtp:127.0.0.1:{}", sink.port),
        "",
    );
    let b = Backstop::start(dir.path(), &cfg);
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("HELO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    let r = c.cmd("RCPT TO:<anyone@example.test>");
    assert_eq!(
        r,
        "451 4.4.3 <anyone@example.test>: Recipient address rejected: unable to verify address, try again later"
    );
    assert!(
        wait_until(5, || b.count(&["catch-all"]) == 2),
        "a warning when detected, and the rcpt reason: {}",
        b.log()
    );
    let (_, out, _) = b.cli(&["verify", "other@example.test"]);
    assert!(out.contains("domain is a catch-all"), "{out}");
}

#[test]
fn internal_server_down_known_good_is_accepted_unknown_is_deferred() {
    let sink = Sink::start();
    let mut pf = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("maildir:{}", dir.path().join("mail").display());
    let b = Backstop::start(dir.path(), &callout_config(dir.path(), &pf, &hop, ""));
    let rcpt = |addr: &str| {
        let (mut c, _) = Client::connect(b.addr);
        c.cmd("HELO client.test");
        c.cmd("MAIL FROM:<a@client.test>");
        c.cmd(&format!("RCPT TO:<{addr}>"))
    };
    assert_eq!(rcpt(VALID), "250 2.1.5 Ok");
    assert!(rcpt("gone@example.test").starts_with("550 5.1.1"));
    pf.stop();
    assert_eq!(rcpt(VALID), "250 2.1.5 Ok", "known-good, from the cache");
    assert!(
        rcpt("gone@example.test").starts_with("550 5.1.1"),
        "known-bad, from the cache"
    );
    assert_eq!(
        rcpt("new@example.test"),
        "451 4.4.3 <new@example.test>: Recipient address rejected: unable to verify address, try again later"
    );
    let (_, out, _) = b.cli(&["verify", "new@example.test"]);
    assert!(
        out.contains("cannot verify: connect to 127.0.0.1:"),
        "{out}"
    );
}

/// A user removed from the internal server: in-session relay hears `550 5.1.1` for an address
/// the cache holds as valid, passes the refusal on, and corrects the cache at once; `backstop
/// cache show` says so, `cache forget` forgets it, and the JSON API does the same.
#[test]
fn what_the_internal_server_says_in_relay_corrects_the_cache() {
    let sink = Sink::start();
    let pf = Postfix::internal_with(
        "example.test",
        &[VALID, "bob@example.test"],
        sink.port,
        "smtpd_error_sleep_time = 0",
    );
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("smtp:127.0.0.1:{}", pf.port);
    let token = "0123456789abcdef-token";
    let extra = format!("[web]\naddr = \"127.0.0.1:0\"\ntoken = \"{token}\"\n");
    let b = Backstop::start(dir.path(), &callout_config(dir.path(), &pf, &hop, &extra));
    let (code, t) = swaks(b.addr, &["--to", VALID]);
    assert_eq!(code, 0, "{t}");
    let (_, shown, _) = b.cli(&["cache", "show", VALID]);
    assert!(
        shown.starts_with(&format!("{VALID}: valid, asked ")),
        "{shown}"
    );

    pf.set_users(&["bob@example.test"]);
    let (_, t) = swaks(b.addr, &["--to", VALID]);
    assert!(t.contains("550 5.1.1"), "{t}");
    assert_eq!(
        b.count_reaching(
            &[
                "event=\"callout_corrected\"",
                "was=\"valid\"",
                "now=\"invalid\"",
                "by=\"relay\""
            ],
            1
        ),
        1,
        "{}",
        b.log()
    );
    let (_, shown, _) = b.cli(&["cache", "show", VALID]);
    assert!(
        shown.starts_with(&format!("{VALID}: invalid, asked ")),
        "{shown}"
    );
    // now refused at RCPT from the cache, without asking the internal server
    let probes = b.count(&["event=\"callout_probe\""]);
    let (_, t) = swaks(b.addr, &["--to", VALID]);
    assert!(t.contains("550 5.1.1"), "{t}");
    assert_eq!(b.count(&["event=\"callout_probe\""]), probes);

    // forgotten: the next RCPT asks again
    let (code, out, _) = b.cli(&["cache", "forget", VALID]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("{VALID}: forgotten"));
    let (_, shown, _) = b.cli(&["cache", "show", VALID]);
    assert!(shown.contains("nothing cached"), "{shown}");

    // the same through the API: a read, and a forget that needs the token
    let web = b.web();
    let path = "/api/cache/bob@example.test";
    swaks(b.addr, &["--to", "bob@example.test"]);
    let (status, body) = http(web, "GET", path, None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entry"]["verdict"], "valid", "{body}");
    assert_eq!(http(web, "DELETE", path, None).0, 401);
    let (status, body) = http(web, "DELETE", path, Some(token));
    assert_eq!(
        (status, body.contains("\"forgot\":true")),
        (200, true),
        "{body}"
    );
    assert_eq!(http(web, "DELETE", path, Some(token)).0, 404);

    // a whole domain: whether it is a catch-all, and every address of it cached
    swaks(b.addr, &["--to", "bob@example.test"]);
    swaks(b.addr, &["--to", VALID]);
    let (code, shown, _) = b.cli(&["cache", "show", "@example.test"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(
        lines[0].starts_with("@example.test: not-catch-all, asked "),
        "{shown}"
    );
    assert!(
        lines[1].starts_with(&format!("{VALID}: invalid, asked ")),
        "{shown}"
    );
    assert!(
        lines[2].starts_with("bob@example.test: valid, asked "),
        "{shown}"
    );
    assert_eq!(lines[3], "2 addresses cached");
    let (code, out, _) = b.cli(&["cache", "forget", "@example.test"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "@example.test: forgotten (3 cached answers: the domain's catch-all answer and its addresses)"
    );
    let (_, shown, _) = b.cli(&["cache", "show", "@example.test"]);
    assert!(shown.ends_with("0 addresses cached\n"), "{shown}");
    // and the next RCPT asks the internal server again, which caches the answer anew
    let (code, t) = swaks(b.addr, &["--to", "bob@example.test"]);
    assert_eq!(code, 0, "{t}");
    let (_, shown, _) = b.cli(&["cache", "show", "bob@example.test"]);
    assert!(
        shown.starts_with("bob@example.test: valid, asked "),
        "{shown}"
    );
}

/// In queue mode the same refusal comes from the delivery: the message was taken on the
/// cached "valid"; the next hop's `550 5.1.1` at delivery corrects the cache, so the next
/// message to that address is refused at RCPT instead of being taken and failing later.
#[test]
fn what_the_internal_server_says_at_delivery_corrects_the_cache() {
    let sink = Sink::start();
    let pf = Postfix::internal_with(
        "example.test",
        &[VALID],
        sink.port,
        "smtpd_error_sleep_time = 0",
    );
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("smtp:127.0.0.1:{}", pf.port);
    let config = callout_config(dir.path(), &pf, &hop, "")
        .replace("next_hop =", "relay = \"queue\"\nnext_hop =");
    let b = Backstop::start(dir.path(), &config);
    let (code, t) = swaks(b.addr, &["--to", VALID]);
    assert_eq!(code, 0, "{t}");
    pf.set_users(&["bob@example.test"]);
    let (code, t) = swaks(b.addr, &["--to", VALID]);
    assert_eq!(code, 0, "taken on the cached answer: {t}");
    assert_eq!(
        b.count_reaching(
            &[
                "event=\"callout_corrected\"",
                "now=\"invalid\"",
                "by=\"delivery\""
            ],
            1
        ),
        1,
        "{}",
        b.log()
    );
    let (_, t) = swaks(b.addr, &["--to", VALID]);
    assert!(t.contains("550 5.1.1"), "refused at RCPT now: {t}");
}

/// A recipient not in the cache, of a domain relayed in the session to its call-out server:
/// one round trip to the internal server, not a probe and then the relayed RCPT; the answer
/// fills the cache (valid, or our own 550 5.1.1 for an unknown user).
#[test]
fn a_new_recipient_costs_one_round_trip_when_the_callout_server_is_the_next_hop() {
    let sink = Sink::start();
    let pf = Postfix::internal_with(
        "example.test",
        &[VALID],
        sink.port,
        "smtpd_error_sleep_time = 0",
    );
    let dir = tempfile::tempdir().unwrap();
    let hop = format!("smtp:127.0.0.1:{}", pf.port);
    let b = Backstop::start(dir.path(), &callout_config(dir.path(), &pf, &hop, ""));
    let (code, t) = swaks(b.addr, &["--to", VALID]);
    assert_eq!(code, 0, "{t}");
    assert_eq!(
        b.count_reaching(&["event=\"rcpt\"", "reason=\"relay-valid\""], 1),
        1
    );
    assert_eq!(
        b.count(&["event=\"callout_probe\"", "addr=alice@"]),
        0,
        "{}",
        b.log()
    );
    let (_, shown, _) = b.cli(&["cache", "show", VALID]);
    assert!(shown.starts_with(&format!("{VALID}: valid")), "{shown}");

    let (_, t) = swaks(b.addr, &["--to", "nobody@example.test"]);
    assert!(
        t.contains("550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown\n"),
        "our words, not the internal server's: {t}"
    );
    assert_eq!(pf.rejects_of("nobody@example.test"), 1);
    assert_eq!(b.count(&["event=\"callout_probe\"", "addr=nobody@"]), 0);
    // the second time from the cache: the internal server is not asked again
    let (_, t) = swaks(b.addr, &["--to", "nobody@example.test"]);
    assert!(t.contains("550 5.1.1"), "{t}");
    assert_eq!(pf.rejects_of("nobody@example.test"), 1);
    assert_eq!(sink.wait_for(1).len(), 1);
}
