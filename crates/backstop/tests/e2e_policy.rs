//! Keep your Postfix: a real Postfix edge asks backstop about each recipient
//! (`check_policy_service`), in front of a real internal Postfix; and the policy protocol
//! itself, spoken by hand.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::*;

const VALID: &str = "alice@example.test";

/// backstop with an SMTP listener (unused here) and a policy listener on `policy`, verifying
/// example.test by call-out to `internal`.
fn config(dir: &std::path::Path, internal: u16, policy: u16, extra: &str) -> String {
    format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n{extra}\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\naddr = \"127.0.0.1:{policy}\"\nprotocol = \"policy\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:{internal}\"]\n\
         next_hop = \"smtp:127.0.0.1:{internal}\"\n",
        dir.join("state").display().to_string()
    )
}

/// A Postfix edge for example.test relaying to `internal`, asking backstop at RCPT and at the
/// end of each message. Its own error limits are lifted, so that what the client sees is
/// backstop's answers (with its defaults Postfix would also slow down and cut off a client
/// with many refused recipients).
fn edge(internal: u16, policy: u16) -> Postfix {
    let service = format!("check_policy_service inet:127.0.0.1:{policy}");
    Postfix::gateway_with(
        "example.test",
        internal,
        &format!(
            "smtpd_recipient_restrictions = reject_unauth_destination, {service}\n\
             smtpd_end_of_data_restrictions = {service}\n\
             smtpd_error_sleep_time = 0\nsmtpd_soft_error_limit = 1000\n\
             smtpd_hard_error_limit = 1000"
        ),
    )
}

#[test]
fn the_backscatter_attack_through_a_postfix_edge_is_refused_at_rcpt_by_backstop() {
    let sink = Sink::start();
    let internal = Postfix::internal("example.test", &[VALID, "bob@example.test"], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let policy = free_port();
    let no_harvest = "[harvest]\nexempt = [\"127.0.0.0/8\"]\n";
    let b = Backstop::start(
        dir.path(),
        &config(dir.path(), internal.port, policy, no_harvest),
    );
    let line = format!("listening on 127.0.0.1:{policy} (Postfix policy service)");
    assert_eq!(b.count_reaching(&[&line], 1), 1, "{}", b.log());
    let edge = edge(internal.port, policy);
    let addr: SocketAddr = format!("127.0.0.1:{}", edge.port).parse().unwrap();

    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO spammer.test");
    assert!(c.cmd("MAIL FROM:<victim@victim.test>").starts_with("250"));
    let mut script = String::new();
    for i in 0..100 {
        script.push_str(&format!("RCPT TO:<nobody{i}@example.test>\r\n"));
    }
    script.push_str(&format!("RCPT TO:<{VALID}>\r\n"));
    c.send(script.as_bytes());
    let replies: Vec<String> = (0..101).map(|_| c.reply()).collect();
    for (i, r) in replies.iter().take(100).enumerate() {
        assert_eq!(
            *r,
            format!("550 5.1.1 <nobody{i}@example.test>: Recipient address rejected: User unknown"),
            "backstop's words, through Postfix"
        );
    }
    assert!(replies[100].starts_with("250"), "{}", replies[100]);
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(
        c.cmd("Subject: cheap pills\r\n\r\nbuy now\r\n.")
            .starts_with("250")
    );
    c.cmd("QUIT");

    // the valid one delivered through the internal server; nothing else, and no bounce left
    // either Postfix for the forged sender
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("buy now"), "{}", got[0]);
    assert!(wait_until(10, || edge.queue_is_empty()));
    assert!(!edge.maillog().contains("sender non-delivery notification"));
    assert!(
        !internal
            .maillog()
            .contains("sender non-delivery notification")
    );
    // each unknown address asked of the internal server once, by probe
    for i in [0, 50, 99] {
        assert_eq!(internal.rejects_of(&format!("nobody{i}@example.test")), 1);
    }
    assert_eq!(
        b.count_reaching(
            &[
                "event=\"rcpt\"",
                "reason=\"callout-invalid\"",
                "frontend=\"policy\""
            ],
            100
        ),
        100,
        "{}",
        b.log()
    );
}

#[test]
fn a_bounce_to_several_recipients_is_refused_at_the_end_of_the_message() {
    let sink = Sink::start();
    let internal = Postfix::internal("example.test", &[VALID, "bob@example.test"], sink.port);
    let dir = tempfile::tempdir().unwrap();
    let policy = free_port();
    let _b = Backstop::start(dir.path(), &config(dir.path(), internal.port, policy, ""));
    let edge = edge(internal.port, policy);
    let addr: SocketAddr = format!("127.0.0.1:{}", edge.port).parse().unwrap();
    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO bouncer.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{VALID}>")).starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let end = c.cmd("Subject: Undelivered Mail\r\n\r\nbounce\r\n.");
    assert_eq!(
        end,
        "550 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: a bounce has one recipient; this one has several"
    );
    c.cmd("QUIT");
    assert!(sink.messages().is_empty());
}

/// One request by hand; the answer, or `None` when backstop closed without one.
fn ask(stream: &mut TcpStream, request: &str) -> Option<String> {
    stream.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8(got).unwrap())
}

fn request(rcpt: &str, extra: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address=192.0.2.9\nclient_port=40000\nhelo_name=client.test\n\
         sender=someone@sender.test\nrecipient={rcpt}\ninstance=1.2.3\n{extra}\n"
    )
}

#[test]
fn the_policy_protocol_keeps_a_connection_ignores_unknown_attributes_and_refuses_junk() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("users");
    std::fs::write(&list, format!("{VALID}\n")).unwrap();
    let policy = free_port();
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n\
         [[listen]]\naddr = \"127.0.0.1:{policy}\"\nprotocol = \"policy\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:m\"\n",
        dir.path().join("state").display().to_string(),
        list.display()
    );
    let b = Backstop::start(dir.path(), &text);
    let addr: SocketAddr = format!("127.0.0.1:{policy}").parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // many requests on one connection; attributes from a newer Postfix are ignored
    let newer = "some_future_attribute=value\nccert_subject=\n";
    assert_eq!(
        ask(&mut s, &request(VALID, newer)).as_deref(),
        Some("action=DUNNO\n\n")
    );
    assert_eq!(
        ask(&mut s, &request("nobody@example.test", "")).as_deref(),
        Some("action=550 5.1.1 User unknown\n\n")
    );
    // a domain that is not ours: Postfix decides whether it relays
    assert_eq!(
        ask(&mut s, &request("x@elsewhere.test", "")).as_deref(),
        Some("action=DUNNO\n\n")
    );
    assert_eq!(
        b.count_reaching(
            &[
                "to=<x@elsewhere.test>",
                "reason=\"not-ours\"",
                "reply=\"250 DUNNO (not one of our domains: Postfix decides)\""
            ],
            1
        ),
        1,
        "{}",
        b.log()
    );
    let other_state =
        "request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=192.0.2.9\n\n";
    assert_eq!(
        ask(&mut s, other_state).as_deref(),
        Some("action=DUNNO\n\n")
    );

    // junk: no answer, the connection closed, a line in the log
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(ask(&mut junk, "GET / HTTP/1.0\r\n\r\n"), None);
    // a request of 1 MB: the same
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = format!(
        "request=smtpd_access_policy\nbig={}\n\n",
        "x".repeat(1 << 20)
    );
    let _ = big.write_all(huge.as_bytes());
    let mut rest = Vec::new();
    let _ = big.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // a connection closed in the middle of a request: nothing happens to anyone else
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"request=smtpd_access_policy\nprotocol_state=RC")
        .unwrap();
    drop(half);
    assert_eq!(
        ask(&mut s, &request(VALID, "")).as_deref(),
        Some("action=DUNNO\n\n")
    );
    assert!(
        b.count_reaching(&["policy request refused; closing"], 2) >= 2,
        "{}",
        b.log()
    );
}

/// A message through `at`: the reply to the end of DATA.
fn send(at: SocketAddr, from: &str, rcpt: &str, body: &str) -> String {
    let (mut c, _) = Client::connect(at);
    c.cmd("EHLO mx.spam-victim.test");
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("{}.\r\n", body.replace("RCPT", rcpt)).as_bytes());
    let end = c.reply();
    c.cmd("QUIT");
    end
}

#[test]
fn a_postfix_with_backstops_milter_refuses_or_tags_forged_bounces_per_domain() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("users");
    std::fs::write(&list, "alice@example.test\ncarol@tagged.test\n").unwrap();
    let milter = free_port();
    let domain = |name: &str, action: &str| {
        list_domain(name, &list, &format!("backscatter = \"{action}\"\n"))
    };
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\naddr = \"127.0.0.1:{milter}\"\nprotocol = \"milter\"\n{}{}",
        dir.path().join("state").display().to_string(),
        domain("example.test", "reject"),
        domain("tagged.test", "tag"),
    );
    let b = Backstop::start(dir.path(), &text);
    let line = format!("listening on 127.0.0.1:{milter} (milter)");
    assert_eq!(b.count_reaching(&[&line], 1), 1, "{}", b.log());
    let s = sink.port;
    let edge = Postfix::gateway_with(
        "example.test",
        s,
        &format!(
            "relay_domains = example.test, tagged.test\n\
             transport_maps = inline:{{ example.test=smtp:[127.0.0.1]:{s}, tagged.test=smtp:[127.0.0.1]:{s} }}\n\
             smtpd_milters = inet:127.0.0.1:{milter}\nmilter_default_action = tempfail"
        ),
    );
    let at: SocketAddr = format!("127.0.0.1:{}", edge.port).parse().unwrap();

    // example.test rejects backscatter: refused at the end of data, in backstop's words
    let end = send(at, "", "alice@example.test", FORGED_BOUNCE);
    assert_eq!(end, "550 5.7.1 Error: bounce not for mail sent from here");
    // tagged.test tags it: delivered with the verdict in a header
    let end = send(at, "", "carol@tagged.test", FORGED_BOUNCE);
    assert!(end.starts_with("250"), "{end}");
    // ordinary mail passes untouched
    let end = send(
        at,
        "a@client.test",
        "alice@example.test",
        "Subject: hi\r\n\r\nhello\r\n",
    );
    assert!(end.starts_with("250"), "{end}");
    let got = sink.wait_for(2);
    assert_eq!(got.len(), 2, "{got:?}");
    let tagged = got
        .iter()
        .find(|m| m.contains("cheap pills"))
        .expect("the tagged bounce");
    assert!(
        tagged.contains("X-Backstop-Bounce: backscatter; reasons=msgid=unknown,relay=foreign"),
        "{tagged}"
    );
    assert!(
        got.iter()
            .any(|m| m.contains("hello") && !m.contains("X-Backstop-Bounce"))
    );
    assert_eq!(
        b.count_reaching(&["event=\"bounce_verdict\"", "verdict=\"backscatter\""], 2),
        2,
        "{}",
        b.log()
    );
}

#[test]
fn through_the_milter_mail_leaves_signed_and_its_real_bounce_comes_back_untagged() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("users");
    std::fs::write(&list, "alice@example.test\n").unwrap();
    let milter = free_port();
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\naddr = \"127.0.0.1:{milter}\"\nprotocol = \"milter\"\n\
         relay_from = [\"127.0.0.2/32\"]\n{}\
         [batv]\nkeys = [\"1:0123456789abcdef0123\"]\n",
        dir.path().join("state").display().to_string(),
        list_domain(
            "example.test",
            &list,
            "batv = \"enforce\"\nbackscatter = \"reject\"\n"
        ),
    );
    let b = Backstop::start(dir.path(), &text);
    let line = format!("listening on 127.0.0.1:{milter} (milter, relay_from)");
    assert_eq!(b.count_reaching(&[&line], 1), 1, "{}", b.log());
    let s = sink.port;
    // the edge relays for its mynetworks (127.0.0.2: our users) and receives example.test
    let edge = Postfix::gateway_with(
        "example.test",
        s,
        &format!(
            "transport_maps = inline:{{ example.test=smtp:[127.0.0.1]:{s}, remote.test=smtp:[127.0.0.1]:{s} }}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtpd_milters = inet:127.0.0.1:{milter}\nmilter_default_action = tempfail"
        ),
    );
    let at: SocketAddr = format!("127.0.0.1:{}", edge.port).parse().unwrap();

    // alice writes out, from the users' network
    let (code, t) = swaks(
        at,
        &[
            "--local-interface",
            "127.0.0.2",
            "--from",
            "alice@example.test",
            "--to",
            "bob@remote.test",
            "--header",
            "Message-ID: <out-1@example.test>",
        ],
    );
    assert_eq!(code, 0, "{t}");
    let out = sink.wait_for(1);
    let mail_args = out[0]
        .lines()
        .find(|l| l.starts_with("X-Mail-Args:"))
        .expect("X-Mail-Args");
    let tagged = mail_args
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_matches(['<', '>']);
    assert!(
        tagged.starts_with("prvs=") && tagged.ends_with("=alice@example.test"),
        "{mail_args}"
    );

    // the real bounce, to the tagged address, quoting what was sent: delivered, untagged
    let bounce = FORGED_BOUNCE
        .replace("<never-sent@example.test>", "<out-1@example.test>")
        .replace("RCPT", "alice@example.test");
    let (mut c, _) = Client::connect(at);
    c.cmd("EHLO mx.remote.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{tagged}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("{bounce}.\r\n").as_bytes());
    let end = c.reply();
    assert!(end.starts_with("250"), "{end}");
    c.cmd("QUIT");
    let got = sink.wait_for(2);
    let back = got
        .iter()
        .find(|m| m.contains("cheap pills"))
        .expect("the bounce");
    assert!(back.contains("X-Rcpt-Args: <alice@example.test>"), "{back}");
    // (Postfix's own Received: still says which address it was sent to)
    assert!(
        back.lines()
            .filter(|l| l.starts_with("X-Rcpt-Args:"))
            .all(|l| !l.contains("prvs=")),
        "{back}"
    );
    assert!(!back.contains("X-Backstop-Bounce"), "{back}");
    assert_eq!(
        b.count_reaching(&["event=\"bounce_verdict\"", "verdict=\"genuine\""], 1),
        1,
        "{}",
        b.log()
    );

    // the same bounce to alice untagged: example.test enforces, refused at the end of data
    let (mut c, _) = Client::connect(at);
    c.cmd("EHLO mx.remote.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("{bounce}.\r\n").as_bytes());
    let end = c.reply();
    assert!(end.starts_with("550 5.7.1"), "{end}");
}

#[test]
fn policy_and_milter_answer_on_unix_sockets_that_a_stop_removes() {
    let sink = Sink::start();
    let internal = Postfix::internal("example.test", &[VALID], sink.port);
    let dir = tempfile::tempdir().unwrap();
    // Postfix's smtpd runs as the user postfix: it must reach the sockets' directory
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (policy, milter) = (
        dir.path().join("policy.sock"),
        dir.path().join("milter.sock"),
    );
    // a stale socket file, as a backstop killed with SIGKILL leaves: replaced
    drop(std::os::unix::net::UnixListener::bind(&policy).unwrap());
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\naddr = \"unix:{}\"\nprotocol = \"policy\"\n\
         [[listen]]\naddr = \"unix:{}\"\nprotocol = \"milter\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:{}\"]\n\
         next_hop = \"smtp:127.0.0.1:{}\"\nbackscatter = \"reject\"\n",
        dir.path().join("state").display().to_string(),
        policy.display(),
        milter.display(),
        internal.port,
        internal.port,
    );
    let mut b = Backstop::start(dir.path(), &text);
    let line = format!("listening on unix:{} (milter)", milter.display());
    assert_eq!(b.count_reaching(&[&line], 1), 1, "{}", b.log());
    let edge = Postfix::gateway_with(
        "example.test",
        internal.port,
        &format!(
            "smtpd_recipient_restrictions = reject_unauth_destination, \
             check_policy_service unix:{}\n\
             smtpd_milters = unix:{}\nmilter_default_action = tempfail",
            policy.display(),
            milter.display()
        ),
    );
    let at: SocketAddr = format!("127.0.0.1:{}", edge.port).parse().unwrap();

    // the policy service refuses an unknown recipient in its own words
    let (mut c, _) = Client::connect(at);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.test>"),
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"
    );
    c.cmd("QUIT");
    // the milter refuses a forged bounce; ordinary mail goes through both
    let end = send(at, "", VALID, FORGED_BOUNCE);
    assert_eq!(end, "550 5.7.1 Error: bounce not for mail sent from here");
    let end = send(at, "a@client.test", VALID, "Subject: hi\r\n\r\nhello\r\n");
    assert!(end.starts_with("250"), "{end}");
    let got = sink.wait_for(1);
    assert!(got.iter().any(|m| m.contains("hello")), "{got:?}");
    // the unknown recipient, and the valid one of each message
    assert_eq!(
        b.count_reaching(&["event=\"rcpt\"", "frontend=\"policy\""], 3),
        3,
        "{}",
        b.log()
    );

    // a stop removes both socket files
    assert!(b.stop().is_some_and(|s| s.success()));
    assert!(!policy.exists() && !milter.exists());
}
