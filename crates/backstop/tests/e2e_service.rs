//! Running backstop as a service, through the real binary: reload on SIGHUP and `backstop
//! reload` (a session mid-transaction keeps its message, a new domain is served by the next
//! session, an invalid edit changes nothing, reloads under load lose nothing), one message
//! traced through the log by sender, Message-ID and queue id (text and JSON), and honest health
//! (`/healthz`, the gauges and alerts follow an internal server that stops and comes back).

mod support;

use std::path::Path;
use std::process::Command;
use support::{Backstop, Client, Sink, http, list_config, swaks, wait_until};

fn mails(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("new")).map_or(0, |rd| rd.count())
}

/// A second domain, `other.test`, with its own list of users.
fn other_domain(dir: &Path, users: &[&str]) -> String {
    let list = dir.join("other.txt");
    std::fs::write(&list, users.join("\n")).unwrap();
    format!(
        "\n[[domain]]\nname = \"other.test\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:{}\"\n",
        list.display(),
        dir.join("mail").display()
    )
}

#[test]
fn sighup_mid_transaction_keeps_the_message_and_the_next_session_gets_the_new_domain() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let base = list_config(dir.path(), &["alice@example.test"], &maildir, "");
    let b = Backstop::start(dir.path(), &base);

    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<someone@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: sent across a reload\r\n\r\nfirst half\r\n");

    let config = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        config + &other_domain(dir.path(), &["bob@other.test"]),
    )
    .unwrap();
    b.signal("HUP");
    assert_eq!(
        b.count_reaching(&["reloaded: 1 change(s)"], 1),
        1,
        "{}",
        b.log()
    );
    assert_eq!(
        b.count_reaching(&["reload: domain other.test: added"], 1),
        1
    );

    // the session in flight was not dropped: its message is taken
    c.send(b"second half\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.cmd("QUIT").starts_with("221"));
    assert_eq!(mails(&dir.path().join("mail")), 1);

    // the next session is served under the new configuration
    let (code, t) = swaks(
        b.addr,
        &["--to", "bob@other.test", "--from", "a@client.test"],
    );
    assert_eq!(code, 0, "{t}");
    assert_eq!(mails(&dir.path().join("mail")), 2);

    // an invalid edit changes nothing, and says why
    let good = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        format!("{good}\n[limits]\nmax_recipients = \"lots\"\n"),
    )
    .unwrap();
    b.signal("HUP");
    let refused = [
        "configuration not reloaded; the running one stays",
        "max_recipients",
    ];
    assert_eq!(b.count_reaching(&refused, 1), 1, "{}", b.log());
    let (code, t) = swaks(
        b.addr,
        &["--to", "bob@other.test", "--from", "a@client.test"],
    );
    assert_eq!(code, 0, "the running configuration stays: {t}");

    // `backstop reload` says the same and exits 2; a valid file is then taken
    let (code, out, err) = b.cli(&["reload"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("max_recipients") && err.contains("not reloaded"),
        "{err}"
    );
    std::fs::write(
        &b.config,
        format!("{good}\n[limits]\nmax_recipients = 200\n"),
    )
    .unwrap();
    let (code, out, err) = b.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 change(s)") && out.contains("limits.max_recipients: 1000 -> 200"),
        "{out}"
    );
}

/// `backstop reload` from a server-side view: the gateway itself refuses a file that parses
/// but cannot run (a certificate that does not load), and keeps listening.
#[test]
fn a_reload_that_cannot_run_is_refused_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test"], &maildir, ""),
    );
    let config = std::fs::read_to_string(&b.config).unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let broken = config.replace(
        "addr = \"127.0.0.1:0\"",
        &format!(
            "addr = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}",
            cert.display().to_string(),
            cert.display().to_string()
        ),
    );
    std::fs::write(&b.config, broken).unwrap();
    let (code, _, err) = b.cli(&["reload"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("listen[0]") && err.contains("cert.pem"),
        "{err}"
    );
    let (code, t) = swaks(b.addr, &["--to", "alice@example.test"]);
    assert_eq!(code, 0, "still serving: {t}");
}

#[test]
fn twenty_reloads_under_load_lose_nothing_and_refuse_no_connection() {
    const N: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["load@example.test"], &maildir, ""),
    );
    let addr = b.addr.to_string();
    let load = std::thread::spawn(move || {
        Command::new("/usr/sbin/smtp-source")
            .args(["-c", "-s", "20", "-m", &N.to_string(), "-l", "1024"])
            .args(["-f", "load@client.test", "-t", "load@example.test", &addr])
            .output()
            .unwrap()
    });
    assert!(wait_until(20, || mails(&dir.path().join("mail")) > 0));
    let base = std::fs::read_to_string(&b.config).unwrap();
    for i in 0..20 {
        // a real change every time: the limit on protocol errors
        let cfg = format!("{base}\n[limits]\nmax_errors = {}\n", 21 + i % 2);
        std::fs::write(&b.config, cfg).unwrap();
        b.signal("HUP");
        let done = || b.count(&["reloaded: 1 change(s)"]) > i;
        assert!(wait_until(10, done), "{}", b.log());
    }
    let during = mails(&dir.path().join("mail"));
    assert!(during < N, "the reloads ran while mail was still coming");
    let out = load.join().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(!said.to_lowercase().contains("error"), "{said}");
    assert!(wait_until(10, || mails(&dir.path().join("mail")) == N));
    assert_eq!(b.count(&["event=\"client_refused\""]), 0);
    assert_eq!(
        b.count_reaching(&["event=\"message\"", "result=\"accepted\""], N),
        N
    );
}

#[test]
fn one_message_is_traced_by_sender_message_id_and_queue_id() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test"], &maildir, ""),
    );
    let (code, t) = swaks(
        b.addr,
        &[
            "--from",
            "someone@client.test",
            "--to",
            "alice@example.test,carol@example.test",
            "--header",
            "Message-Id: <trace-1@client.test>",
        ],
    );
    assert_eq!(code, 0, "{t}");
    b.count_reaching(&["event=\"message\""], 1);
    let log = b.log();
    let by_sender: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("someone@client.test"))
        .collect();
    // the refused recipient and the accepted message, both with the queue id
    let message = by_sender
        .iter()
        .find(|l| l.contains("event=\"message\""))
        .unwrap_or_else(|| panic!("{log}"));
    let id = message
        .split("id=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    for want in [
        "client=127.0.0.1",
        "helo=<client.test>",
        "tls=\"none\"",
        "from=<someone@client.test>",
        "nrcpt=1",
        "message-id=<trace-1@client.test>",
        "size=",
    ] {
        assert!(message.contains(want), "{want} in {message}");
    }
    let refused = by_sender
        .iter()
        .find(|l| l.contains("to=<carol@example.test>"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains(&format!("id=\"{id}\"")), "{refused}");
    assert!(
        refused.contains(
            "reply=\"550 5.1.1 <carol@example.test>: Recipient address rejected: User unknown\""
        ) && refused.contains("helo=<client.test>"),
        "{refused}"
    );
    // by queue id: the recipient lines, where it went, and the message
    let delivered = log
        .lines()
        .find(|l| l.contains("event=\"delivered\"") && l.contains(id))
        .unwrap_or_else(|| panic!("{log}"));
    for want in [
        "to=<alice@example.test>",
        "relay=",
        "delay=",
        "dsn=\"2.0.0\"",
    ] {
        assert!(delivered.contains(want), "{want} in {delivered}");
    }
    assert_eq!(log.lines().filter(|l| l.contains(id)).count(), 4, "{log}");
    // by Message-ID
    assert_eq!(
        b.count_reaching(&["message-id=<trace-1@client.test>"], 1),
        1
    );
}

#[test]
fn json_logs_carry_the_same_fields_and_peer_values_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let config = list_config(dir.path(), &["alice@example.test"], &maildir, "");
    let path = dir.path().join("backstop.toml");
    let (config, _dns) = support::with_resolver(&config);
    std::fs::write(&path, config).unwrap();
    let p = path.to_str().unwrap();
    let b = Backstop::start_with(
        dir.path(),
        &["--log-format", "json", "serve", "--config", p],
        path.clone(),
    );
    let (mut c, _) = Client::connect(b.addr);
    // a HELO name with a quote in it, and far too long
    let helo = format!("quote\"{}.client.test", "x".repeat(200));
    assert!(c.cmd(&format!("EHLO {helo}")).starts_with("250"));
    c.cmd("MAIL FROM:<someone@client.test>");
    c.cmd("RCPT TO:<alice@example.test>");
    c.cmd("DATA");
    c.send(b"Message-ID: <json-1@client.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    b.count_reaching(&["\"event\":\"message\""], 1);
    let line = b
        .log()
        .lines()
        .find(|l| l.contains("\"event\":\"message\""))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["from"], "<someone@client.test>", "{line}");
    assert_eq!(f["message-id"], "<json-1@client.test>", "{line}");
    assert_eq!(f["client"], "127.0.0.1");
    assert_eq!(f["nrcpt"], 1);
    let shown = format!("<{}...>", &helo[..100]);
    assert_eq!(f["helo"], shown.as_str(), "{line}");
    assert!(f["id"].as_str().is_some_and(|id| id.len() > 8), "{line}");
}

#[test]
fn health_follows_an_internal_server_that_stops_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let sink = Sink::start_on(port);
    let web = support::free_port();
    let config = support::config(
        &dir.path().join("state"),
        "example.test",
        &[format!("callout:127.0.0.1:{port}")],
        &format!("smtp:127.0.0.1:{port}"),
        &format!("[health]\ninterval = \"1s\"\n[web]\naddr = \"127.0.0.1:{web}\"\n"),
    );
    let b = Backstop::start(dir.path(), &config);
    let web = b.web();
    let healthz = || http(web, "GET", "/healthz", None);
    let gauge = |name: &str| {
        let (_, m) = http(web, "GET", "/metrics", None);
        let want = format!("{name}{{target=\"127.0.0.1:{port}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&want).map(str::to_string))
            .unwrap_or_default()
    };
    assert!(wait_until(10, || gauge("backstop_next_hop_up") == "1"));
    assert_eq!(healthz(), (200, "ok\n".to_string()));

    drop(sink);
    // within one interval (and a check's time)
    assert!(
        wait_until(5, || healthz().1.starts_with("ok, degraded:")),
        "{:?}",
        healthz()
    );
    let (code, body) = healthz();
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("next-hop 127.0.0.1:{port} does not answer")),
        "{body}"
    );
    assert!(
        body.contains(&format!("callout 127.0.0.1:{port} does not answer")),
        "{body}"
    );
    assert_eq!(gauge("backstop_next_hop_up"), "0");
    assert_eq!(gauge("backstop_callout_backend_up"), "0");
    let (_, status, _) = b.cli(&["status"]);
    assert!(
        status.contains(&format!(
            "next hop 127.0.0.1:{port} for example.test: DOWN for "
        )),
        "{status}"
    );
    assert_eq!(
        b.count_reaching(&["event=\"alert\"", "kind=\"backend_down\""], 2),
        2
    );

    let _sink = Sink::start_on(port);
    assert!(wait_until(5, || healthz().1 == "ok\n"), "{:?}", healthz());
    assert_eq!(gauge("backstop_next_hop_up"), "1");
    assert_eq!(gauge("backstop_callout_backend_up"), "1");
    assert_eq!(
        b.count_reaching(&["event=\"alert\"", "kind=\"backend_up\""], 2),
        2
    );
    assert_eq!(
        b.count_reaching(&["kind=\"backend_down\""], 2),
        2,
        "one alert each way"
    );
}

#[test]
fn relay_traffic_that_cannot_reach_the_next_hop_shows_it_down_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let sink = Sink::start_on(port);
    // checks an hour apart: only what a session sees can tell
    let maildir_free = list_config(
        dir.path(),
        &["alice@example.test"],
        &format!("smtp:127.0.0.1:{port}"),
        "[health]\ninterval = \"1h\"\n[web]\naddr = \"127.0.0.1:0\"\n",
    );
    let b = Backstop::start(dir.path(), &maildir_free);
    let web = b.web();
    let healthz = || http(web, "GET", "/healthz", None).1;
    assert!(wait_until(5, || b.count(&["listening on"]) == 1));
    assert_eq!(healthz(), "ok\n");
    drop(sink);
    let (_, t) = swaks(b.addr, &["--to", "alice@example.test"]);
    assert!(t.contains("451 4.4.1"), "{t}");
    assert!(
        wait_until(5, || healthz().starts_with("ok, degraded")),
        "{}",
        healthz()
    );
}

#[test]
fn sigterm_lets_a_delivery_in_flight_finish_and_hands_back_what_had_not_begun() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    // the next hop answers DATA after 3 s; one connection to it at a time
    let slow = Sink::start_with(port, &["-w", "3"]);
    let config = list_config(
        dir.path(),
        &["alice@example.test", "bob@example.test"],
        &format!("smtp:127.0.0.1:{port}"),
        "[delivery]\ndestination_concurrency = 1\n",
    )
    .replace("next_hop =", "relay = \"queue\"\nnext_hop =");
    let mut b = Backstop::start(dir.path(), &config);
    for (to, subject) in [
        ("alice@example.test", "first"),
        ("bob@example.test", "second"),
    ] {
        let (code, t) = swaks(
            b.addr,
            &["--to", to, "--header", &format!("Subject: {subject}")],
        );
        assert_eq!(code, 0, "{t}");
    }
    // the first is in its transaction (the sink has begun its dump), the second waits
    assert!(wait_until(10, || !slow.messages().is_empty()));
    b.sigterm();
    assert_eq!(b.stop().and_then(|s| s.code()), Some(0), "{}", b.log());
    let log = b.log();
    assert_eq!(
        b.count_reaching(
            &[
                "event=\"attempt\"",
                "to=<alice@example.test>",
                "result=\"delivered\""
            ],
            1
        ),
        1,
        "the transaction in flight finished: {log}"
    );
    assert_eq!(
        b.count_reaching(&["event=\"handed_back\"", "rcpts=1"], 1),
        1,
        "{log}"
    );
    assert_eq!(
        b.count(&["to=<bob@example.test>", "event=\"attempt\""]),
        0,
        "{log}"
    );
    let first = slow.wait_for(1);
    assert_eq!(first.len(), 1);
    assert!(first[0].contains("Subject: first"));
    drop(slow);

    // after a restart only the second goes out: the first is never sent twice
    let fast = Sink::start_on(port);
    let text = std::fs::read_to_string(&b.config).unwrap();
    let b = Backstop::start(dir.path(), &text);
    let after = fast.wait_for(1);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("Subject: second"), "{}", after[0]);
    assert_eq!(
        b.count_reaching(
            &["event=\"attempt\"", "to=<bob@example.test>", "attempts=1"],
            1
        ),
        1,
        "the handed-back recipient was not counted as tried: {}",
        b.log()
    );
}

/// The certificate's subject as a STARTTLS client sees it (swaks keeps the peer's
/// certificate).
fn peer_subject(addr: std::net::SocketAddr, dir: &Path) -> String {
    let pem = dir.join("peer.pem");
    let _ = std::fs::remove_file(&pem);
    let (code, t) = swaks(
        addr,
        &[
            "--tls",
            "--quit-after",
            "EHLO",
            "--tls-get-peer-cert",
            pem.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{t}");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_reload_renews_the_certificate_adds_a_listener_and_moves_the_web() {
    let dir = tempfile::tempdir().unwrap();
    let cert = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), c.signing_key.serialize_pem()).unwrap();
    };
    cert("one.example.test");
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let web = support::free_port();
    let base = list_config(
        dir.path(),
        &["alice@example.test"],
        &maildir,
        &format!("[web]\naddr = \"127.0.0.1:{web}\"\n"),
    )
    .replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
    );
    let b = Backstop::start(dir.path(), &base);
    assert!(peer_subject(b.addr, dir.path()).contains("one.example.test"));

    // the certificate renewed in place, a second listener, the web elsewhere
    cert("two.example.test");
    let (second, web2) = (support::free_port(), support::free_port());
    let config = base.replace(&format!("127.0.0.1:{web}"), &format!("127.0.0.1:{web2}"))
        + &format!("\n[[listen]]\naddr = \"127.0.0.1:{second}\"\n");
    std::fs::write(&b.config, config).unwrap();
    let (code, out, err) = b.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("listen 127.0.0.1:{second}: added")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "web.addr: \"127.0.0.1:{web}\" -> \"127.0.0.1:{web2}\""
        )),
        "{out}"
    );
    assert!(peer_subject(b.addr, dir.path()).contains("two.example.test"));
    let second: std::net::SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();
    let (code, t) = swaks(second, &["--to", "alice@example.test"]);
    assert_eq!(code, 0, "{t}");
    let moved: std::net::SocketAddr = format!("127.0.0.1:{web2}").parse().unwrap();
    assert_eq!(http(moved, "GET", "/healthz", None).0, 200);
    assert!(
        wait_until(5, || std::net::TcpStream::connect(("127.0.0.1", web))
            .is_err()),
        "the old web address is closed"
    );

    // and the listener goes again
    std::fs::write(
        &b.config,
        base.replace(&format!("127.0.0.1:{web}"), &format!("127.0.0.1:{web2}")),
    )
    .unwrap();
    let (code, out, _) = b.cli(&["reload"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("listen {second}: removed")), "{out}");
    assert!(std::net::TcpStream::connect(second).is_err());
}

#[test]
fn refusals_the_session_makes_by_itself_are_logged_with_client_helo_and_sender() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let b = Backstop::start(
        dir.path(),
        &list_config(
            dir.path(),
            &["alice@example.test"],
            &maildir,
            "[limits]\nmax_message_size = 2000\n",
        ),
    );
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<someone@client.test>").starts_with("250"));
    // a bare LF in a command, then a message over the size limit
    c.send(b"RCPT TO:<alice@example.test>\nX\r\n");
    assert!(c.reply().starts_with("500 5.5.2"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(3000)).as_bytes());
    assert!(c.reply().starts_with("552 5.3.4"));
    c.cmd("QUIT");
    assert_eq!(
        b.count_reaching(&["event=\"reply\"", "code=552"], 1),
        1,
        "{}",
        b.log()
    );
    for code in ["500", "552"] {
        let line = b
            .log()
            .lines()
            .find(|l| l.contains("event=\"reply\"") && l.contains(&format!("code={code}")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{}", b.log()));
        assert!(
            line.contains("client=127.0.0.1")
                && line.contains("helo=<client.test>")
                && line.contains("from=<someone@client.test>")
                && line.contains("result=\"refused\""),
            "{line}"
        );
    }
    // the answers to checks are logged once, by their own lines
    assert_eq!(b.count(&["event=\"reply\"", "code=250"]), 0);
    assert_eq!(b.count_reaching(&["event=\"reply\""], 2), 2, "{}", b.log());
}
