//! The durable queue end to end, with the real binary: store-and-forward while the internal
//! server is down (across a restart), outbound relaying (relay_from, static routes, MX through a
//! real DNS server on loopback), and the operator's `backstop queue` commands.

mod support;

use std::path::Path;
use support::dns::Dns;
use support::{Backstop, Sink, free_port, list_config, swaks, wait_until, world_dir};

const FAST_RETRY: &str = "[delivery]\nretry_min = \"1s\"\nretry_max = \"1s\"\n";

/// A queue-mode config for example.test (users alice, bob) with next hop `127.0.0.1:port`.
fn queue_config(dir: &Path, port: u16, extra: &str) -> String {
    let base = list_config(
        dir,
        &["alice@example.test", "bob@example.test"],
        &format!("smtp:127.0.0.1:{port}"),
        "",
    );
    format!("{base}relay = \"queue\"\n{extra}")
}

/// The queue id from swaks' transcript (`250 2.0.0 Ok: queued as ID`).
fn queued_id(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queue id in:\n{transcript}"))
        .trim()
        .to_string()
}

fn queue_json(b: &Backstop, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = b.cli(&all);
    assert_eq!(code, 0, "{all:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn states(list: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for m in list["messages"].as_array().unwrap() {
        for r in m["rcpts"].as_array().unwrap() {
            out.push((
                m["id"].as_str().unwrap().to_string(),
                r["addr"].as_str().unwrap().to_string(),
                r["status"]["state"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn internal_server_down_mail_is_queued_survives_a_restart_and_is_delivered_later() {
    let dir = world_dir();
    let port = free_port(); // nothing listens there yet
    let config = queue_config(dir.path(), port, FAST_RETRY);
    let mut b = Backstop::start(dir.path(), &config);
    let (code, t) = swaks(
        b.addr,
        &[
            "--from",
            "s@client.test",
            "--to",
            "alice@example.test,bob@example.test",
        ],
    );
    assert_eq!(code, 0, "{t}");
    assert!(t.contains("<-  250 2.0.0 Ok: queued as "), "{t}");
    let id = queued_id(&t);
    // an unknown user is still refused in the dialogue
    let (_, t) = swaks(
        b.addr,
        &["--from", "s@client.test", "--to", "nobody@example.test"],
    );
    assert!(t.contains("550 5.1.1"), "{t}");

    // deferred while the server is down; `queue list` shows it to people and to scripts
    assert!(wait_until(10, || b.count(&["result=\"deferred\""]) >= 2));
    let list = queue_json(&b, &["list"]);
    assert_eq!(
        states(&list),
        [
            (id.clone(), "alice@example.test".into(), "queued".into()),
            (id.clone(), "bob@example.test".into(), "queued".into())
        ]
    );
    let (code, human, _) = b.cli(&["queue", "list"]);
    assert_eq!(code, 0);
    assert!(human.contains(&id) && human.contains("deferred"), "{human}");
    assert!(human.contains("s@client.test"), "{human}");

    // a restart keeps it
    b.stop();
    let b = Backstop::start(dir.path(), &config);
    assert_eq!(states(&queue_json(&b, &["list"])).len(), 2);

    // the server comes back: delivered once, with the original envelope, and the queue empties
    let sink = Sink::start_on(port);
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("alice@example.test") && got[0].contains("bob@example.test"));
    assert!(
        got[0].contains(&format!("with ESMTP id {id}")),
        "{}",
        got[0]
    );
    assert!(wait_until(10, || states(&queue_json(&b, &["list"])).is_empty()));
    let (_, human, _) = b.cli(&["queue", "list"]);
    assert_eq!(human.trim(), "queue is empty");
}

#[test]
fn outbound_relay_only_from_relay_networks_via_routes_and_mx() {
    let dir = world_dir();
    let inbound_sink = Sink::start();
    let partner = Sink::start();
    let mx = Sink::start();
    let dns = Dns::start(&[
        "--mx-host=far.test,mail.far.test,10".into(),
        "--host-record=mail.far.test,127.0.0.1".into(),
        "--mx-host=nomail.test,.,0".into(),
    ]);
    let relay_port = free_port();
    let base = queue_config(dir.path(), inbound_sink.port, "");
    let config = format!(
        "{base}\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\nrelay_from = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n\
         [[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\n\
         [delivery]\nresolver = \"{}\"\nsmtp_port = {}\nretry_min = \"1s\"\nretry_max = \"1s\"\n",
        partner.port, dns.addr, mx.port
    );
    let b = Backstop::start(dir.path(), &config);
    let relay: std::net::SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();

    // the public listener never relays
    let (_, t) = swaks(
        b.addr,
        &["--from", "a@example.test", "--to", "bob@partner.test"],
    );
    assert!(
        t.contains("554 5.7.1 <bob@partner.test>: Relay access denied"),
        "{t}"
    );
    assert_eq!(b.count(&["event=\"attempt\""]), 0);

    // the relay listener takes any domain, still checks our own users, and queues
    let (_, t) = swaks(
        relay,
        &["--from", "a@example.test", "--to", "ghost@example.test"],
    );
    assert!(t.contains("550 5.1.1"), "{t}");
    let (code, t) = swaks(
        relay,
        &[
            "--from",
            "a@example.test",
            "--to",
            "bob@partner.test,carol@far.test,x@nomail.test,y@nxdomain.test",
        ],
    );
    assert_eq!(code, 0, "{t}");
    let id = queued_id(&t);

    // partner.test by its static route, far.test by its MX, each once with its own recipient
    let p = partner.wait_for(1);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("X-Rcpt-Args: <bob@partner.test>"), "{}", p[0]);
    assert!(!p[0].contains("<carol@far.test>"), "{}", p[0]);
    let m = mx.wait_for(1);
    assert_eq!(m.len(), 1);
    assert!(m[0].contains("X-Rcpt-Args: <carol@far.test>"), "{}", m[0]);
    assert!(!m[0].contains("<bob@partner.test>"), "{}", m[0]);
    assert!(m[0].contains("X-Mail-Args: <a@example.test>"), "{}", m[0]);

    // a null MX and a domain that does not exist fail permanently at once; the sender, a relay
    // client, gets one report for both (it is one of our users: it goes to our next hop)
    assert!(wait_until(10, || b.count(&["result=\"failed\""]) >= 2));
    let reports = inbound_sink.wait_for(1);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert!(r.contains("X-Rcpt-Args: <a@example.test>"), "{r}");
    assert!(r.contains("Final-Recipient: rfc822; x@nomail.test"), "{r}");
    assert!(r.contains("Status: 5.1.10"), "{r}");
    assert!(
        r.contains("Final-Recipient: rfc822; y@nxdomain.test"),
        "{r}"
    );
    assert!(r.contains("Status: 5.4.4"), "{r}");
    assert_eq!(r.matches("Final-Recipient:").count(), 2, "{r}");
    // every failure reported, every recipient done: the message has left the queue
    assert!(wait_until(10, || queue_json(&b, &["list"])["messages"]
        .as_array()
        .is_some_and(|m| m.iter().all(|m| m["id"] != id.as_str()))));
    let log = b.log();
    assert!(log.contains("null MX"), "{log}");
    assert!(log.contains("NXDOMAIN"), "{log}");
    assert_eq!(
        b.count_reaching(&["event=\"report_sent\"", &id], 1),
        1,
        "{log}"
    );
}

#[test]
fn operator_holds_releases_retries_and_deletes() {
    let dir = world_dir();
    let port = free_port();
    // retries an hour apart: only `queue retry` makes mail due again
    let extra = "[delivery]\nretry_min = \"1h\"\n";
    let b = Backstop::start(dir.path(), &queue_config(dir.path(), port, extra));
    let send = || {
        let (code, t) = swaks(
            b.addr,
            &["--from", "s@client.test", "--to", "alice@example.test"],
        );
        assert_eq!(code, 0, "{t}");
        queued_id(&t)
    };
    let (keep, drop_) = (send(), send());
    assert!(wait_until(10, || b.count(&["result=\"deferred\""]) >= 2));

    let q = |args: &[&str]| {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        b.cli(&all)
    };
    assert_eq!(q(&["hold", &keep]).0, 0);
    assert_eq!(q(&["delete", &drop_]).0, 0);
    let (code, _, err) = q(&["show", &drop_]);
    assert_eq!(code, 2);
    assert!(err.contains("no such message"), "{err}");
    let list = queue_json(&b, &["list"]);
    assert_eq!(list["messages"].as_array().unwrap().len(), 1);
    assert_eq!(list["messages"][0]["held"], true);

    // held mail stays put even when retried with the server back
    let sink = Sink::start_on(port);
    let (code, out, _) = q(&["retry", "--all"]);
    assert_eq!(code, 0);
    assert!(out.contains("message(s) due now"), "{out}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        sink.messages().len(),
        0,
        "{:?}\n{}",
        sink.messages(),
        b.log()
    );

    // released: still not due for an hour, until retried
    assert_eq!(q(&["release", &keep]).0, 0);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(sink.messages().len(), 0);
    assert_eq!(q(&["retry", &keep]).0, 0);
    assert_eq!(sink.wait_for(1).len(), 1);
    assert!(wait_until(10, || states(&queue_json(&b, &["list"])).is_empty()));
}

#[test]
fn queued_mail_goes_out_over_starttls_when_the_next_hop_offers_it() {
    // the next hop: another backstop with a certificate, delivering to a Maildir
    let inner_dir = world_dir();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".to_string()]).unwrap();
    std::fs::write(inner_dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    let key = cert.signing_key.serialize_pem();
    std::fs::write(inner_dir.path().join("key.pem"), key).unwrap();
    let mail = inner_dir.path().join("mail");
    let inner_cfg = list_config(
        inner_dir.path(),
        &["alice@example.test"],
        &format!("maildir:{}", mail.display()),
        "",
    )
    .replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
    );
    let inner = Backstop::start(inner_dir.path(), &inner_cfg);

    let dir = world_dir();
    let b = Backstop::start(
        dir.path(),
        &queue_config(dir.path(), inner.addr.port(), FAST_RETRY),
    );
    let (code, t) = swaks(
        b.addr,
        &["--from", "s@client.test", "--to", "alice@example.test"],
    );
    assert_eq!(code, 0, "{t}");
    let new = mail.join("new");
    assert!(wait_until(10, || std::fs::read_dir(&new)
        .map(|d| d.count() == 1)
        .unwrap_or(false)));
    let file = std::fs::read_dir(&new)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(file).unwrap();
    // the next hop's Received: header says the queue's connection was encrypted
    assert!(text.contains("(backstop) with ESMTPS id"), "{text}");
    assert!(wait_until(10, || b.count(&["result=\"delivered\""]) == 1));
}

/// A 3 MB message (as its lines arrive: CRLF, some starting with a dot) and the same with LF
/// line ends, as smtp-sink and Maildir store it.
fn large_message() -> (Vec<u8>, Vec<u8>) {
    let mut m = b"Subject: large\r\nMessage-ID: <large@client.test>\r\n\r\n".to_vec();
    for i in 0..40_000 {
        let dot = if i % 7 == 0 { "." } else { "" };
        m.extend(format!("{dot}{i:08} {}\r\n", "x".repeat(64 + i % 5)).as_bytes());
    }
    let lf = String::from_utf8(m.clone()).unwrap().replace("\r\n", "\n");
    (m, lf.into_bytes())
}

/// Sends `message` to alice through a raw client (dot-stuffed, in 64 KiB writes); the final
/// reply.
fn send_large(addr: std::net::SocketAddr, message: &[u8]) -> String {
    let (mut c, _) = support::Client::connect(addr);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let text = String::from_utf8(message.to_vec()).unwrap();
    let stuffed: String = text
        .split_inclusive("\r\n")
        .map(|l| match l.starts_with('.') {
            true => format!(".{l}"),
            false => l.to_string(),
        })
        .collect();
    for piece in stuffed.as_bytes().chunks(64 * 1024) {
        c.send(piece);
    }
    c.send(b".\r\n");
    c.reply()
}

#[test]
fn a_large_message_arrives_intact_queued_relayed_and_in_maildir() {
    let (message, lf) = large_message();
    let lf = String::from_utf8(lf).unwrap();
    for mode in ["queue", "in-session", "maildir"] {
        let dir = world_dir();
        let sink = Sink::start();
        let config = match mode {
            "queue" => queue_config(dir.path(), sink.port, ""),
            "in-session" => list_config(
                dir.path(),
                &["alice@example.test"],
                &format!("smtp:127.0.0.1:{}", sink.port),
                "",
            ),
            _ => list_config(
                dir.path(),
                &["alice@example.test"],
                &format!("maildir:{}", dir.path().join("mail").display()),
                "",
            ),
        };
        let b = Backstop::start(dir.path(), &config);
        let reply = send_large(b.addr, &message);
        assert!(
            reply.starts_with("250 2.0.0 Ok: queued as "),
            "{mode}: {reply}"
        );
        assert!(
            b.count_reaching(&[&format!("size={}", message.len())], 1) == 1,
            "{mode}: the whole size logged\n{}",
            b.log()
        );
        let got = match mode {
            "maildir" => {
                let new = dir.path().join("mail/new");
                let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
                assert_eq!(files.len(), 1, "{mode}");
                std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap()
            }
            _ => {
                let got = sink.wait_for(1);
                assert_eq!(got.len(), 1, "{mode}");
                got[0].clone()
            }
        };
        // our Received line first, then the message as it was sent, to the byte
        let at = got.find("Subject: large\n").expect("the message's header");
        assert_eq!(
            got[at..].trim_end(),
            lf.trim_end(),
            "{mode}: the message intact"
        );
        assert!(got[..at].contains("Received: from client.test"), "{mode}");
        // the spill file left nothing behind
        let spill = dir.path().join("state/spill");
        let left = std::fs::read_dir(&spill).map_or(0, |d| d.count());
        assert_eq!(left, 0, "{mode}: files left in {}", spill.display());
    }
}

#[test]
fn a_large_message_that_cannot_be_stored_gets_451_and_the_session_goes_on() {
    let (message, _) = large_message();
    let dir = world_dir();
    let sink = Sink::start();
    let config = queue_config(dir.path(), sink.port, "");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    // where spill files go is taken by a file
    std::fs::write(dir.path().join("state/spill"), "in the way").unwrap();
    let b = Backstop::start(dir.path(), &config);
    let reply = send_large(b.addr, &message);
    assert_eq!(
        reply,
        "451 4.3.0 Error: queue file write error, try again later",
        "{}",
        b.log()
    );
    assert_eq!(
        b.count_reaching(&["spill file write failed"], 1),
        1,
        "{}",
        b.log()
    );
    // a small message still goes through
    let (code, t) = swaks(
        b.addr,
        &["--from", "s@client.test", "--to", "alice@example.test"],
    );
    assert_eq!(code, 0, "{t}");
    assert_eq!(sink.wait_for(1).len(), 1);
}
