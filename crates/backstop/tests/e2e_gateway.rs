//! The real binary with local recipient lists and Maildir delivery, driven by swaks,
//! smtp-source and a raw client on loopback.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

/// A list source with `users` and Maildir delivery into `dir/mail`.
fn list_config(dir: &Path, users: &[&str], extra: &str) -> String {
    let hop = format!("maildir:{}", dir.join("mail").display());
    support::list_config(dir, users, &hop, extra)
}

fn mails(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir.join("new")) else {
        return Vec::new();
    };
    rd.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

/// The README's run command: `backstop serve` with the shipped example (port 2525).
#[test]
fn readme_run_command_delivers_listed_user_and_refuses_unlisted() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("examples")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("examples/recipients.txt"),
        cwd.path().join("examples/recipients.txt"),
    )
    .unwrap();
    let b = Backstop::start_with(cwd.path(), &["serve"], repo.join("backstop.toml"));
    assert_eq!(b.addr.to_string(), "127.0.0.1:2525");

    let (code, t) = swaks(
        b.addr,
        &[
            "--from",
            "someone@client.test",
            "--to",
            "alice@example.test",
        ],
    );
    assert_eq!(code, 0, "{t}");
    assert!(t.contains("<-  250 2.0.0 Ok: queued as"), "{t}");
    let got = mails(&cwd.path().join("var/mail"));
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("Return-Path: <someone@client.test>\nDelivered-To: alice@example.test\nReceived: from client.test (unknown [127.0.0.1])\n\tby mx.example.test (backstop) with ESMTP id "), "{}", got[0]);

    let (code, t) = swaks(
        b.addr,
        &[
            "--from",
            "someone@client.test",
            "--to",
            "carol@example.test",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        t.contains("<** 550 5.1.1 <carol@example.test>: Recipient address rejected: User unknown"),
        "{t}"
    );
    assert_eq!(
        mails(&cwd.path().join("var/mail")).len(),
        1,
        "nothing accepted for carol"
    );
    // the dashboard and the metrics the README points to
    let web = b.web();
    assert_eq!(web.to_string(), "127.0.0.1:8025");
    let (code, page) = support::http(web, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(
        page.contains("<title>backstop on mx.example.test</title>"),
        "{page}"
    );
    let (_, metrics) = support::http(web, "GET", "/metrics", None);
    let refused =
        "backstop_rcpt_total{result=\"refused\",reason=\"not-listed\",frontend=\"smtp\"} 1";
    assert!(metrics.lines().any(|l| l == refused), "{metrics}");
}

#[test]
fn smtp_source_load_lands_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test"], ""),
    );
    let out = Command::new("/usr/sbin/smtp-source")
        .args([
            "-c",
            "-s",
            "5",
            "-m",
            "200",
            "-l",
            "2048",
            "-f",
            "load@client.test",
            "-t",
            "alice@example.test",
        ])
        .arg(b.addr.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mails(&dir.path().join("mail")).len(), 200);
    assert_eq!(b.count_reaching(&["event=\"delivered\""], 200), 200);
}

#[test]
fn pipelined_transaction_and_unknown_domain() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test", "@all.example.test"], ""),
    );
    let (mut c, greeting) = Client::connect(b.addr);
    assert_eq!(greeting, "220 mx.example.test ESMTP");
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("250-PIPELINING") && ehlo.ends_with("250 DSN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<x@other.test>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n");
    let replies: Vec<String> = (0..6).map(|_| c.reply()).collect();
    assert_eq!(
        replies,
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown",
            "554 5.7.1 <x@other.test>: Relay access denied",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
        ]
    );
    let r = c.cmd("Subject: t\r\n\r\nhello\r\n.");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = mails(&dir.path().join("mail"));
    assert_eq!(got.len(), 2, "alice and postmaster each get a copy");
    assert!(
        got.iter()
            .any(|m| m.contains("Delivered-To: postmaster@example.test"))
    );
    assert_eq!(
        c.cmd("VRFY alice"),
        "252 2.5.0 Cannot VRFY user; send mail and the recipient will be checked at RCPT"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye");
}

#[test]
fn smuggled_commands_after_bare_lf_are_never_executed() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test", "bob@example.test"], ""),
    );
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<alice@example.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: one\r\n\r\nhi\n.\nMAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: forged\r\n\r\nx\r\n.\r\n");
    assert_eq!(
        c.reply(),
        "554 5.6.0 Error: message contains bare <LF>; lines must end with <CR><LF>"
    );
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    assert!(
        mails(&dir.path().join("mail")).is_empty(),
        "neither message was accepted"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@client.test>\nRCPT TO:<bob@example.test>"),
        "500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.test>"),
        "503 5.5.1 Error: need MAIL command"
    );
    // smtpsmug's NUL forms: no end of data, refused at the real end
    for evil in [&b"hi\r\n\0.\r\n"[..], b"hi\r\n.\0\r\n"] {
        c.cmd("MAIL FROM:<a@client.test>");
        c.cmd("RCPT TO:<alice@example.test>");
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(evil);
        c.send(b"MAIL FROM:<ceo@example.test>\r\n.\r\n");
        assert_eq!(
            c.reply(),
            "554 5.6.0 Error: message contains a NUL character"
        );
    }
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    assert!(mails(&dir.path().join("mail")).is_empty());
}

#[test]
fn pipelining_clients_keep_working_and_content_before_the_354_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test"], ""),
    );
    // swaks pipelines MAIL, RCPT and DATA, then waits for the 354
    let (code, t) = swaks(
        b.addr,
        &[
            "--pipeline",
            "--from",
            "a@client.test",
            "--to",
            "alice@example.test",
            "--body",
            "from swaks",
        ],
    );
    assert_eq!(code, 0, "{t}");
    // Python's smtplib, one command at a time
    let py = format!(
        "import smtplib\ns = smtplib.SMTP('127.0.0.1', {})\n\
         s.sendmail('a@client.test', ['alice@example.test'], 'Subject: py\\r\\n\\r\\nfrom python\\r\\n')\n\
         s.quit()\n",
        b.addr.port()
    );
    let out = Command::new("python3").args(["-c", &py]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // Postfix's SMTP client (PIPELINING on by default) relaying to backstop
    let edge = Postfix::gateway_with("example.test", b.addr.port(), "");
    let (mut c, _) = Client::connect(format!("127.0.0.1:{}", edge.port).parse().unwrap());
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<alice@example.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(
        c.cmd("Subject: pf\r\n\r\nfrom postfix\r\n.")
            .starts_with("250")
    );
    c.cmd("QUIT");
    let maildir = dir.path().join("mail");
    assert!(wait_until(30, || mails(&maildir).len() == 3), "{}", b.log());
    for body in ["from swaks", "from python", "from postfix"] {
        assert!(mails(&maildir).iter().any(|m| m.contains(body)), "{body}");
    }

    // the next message's content sent without waiting for the 354 (smtpsmug's pipelining
    // test): the client is cut off, the message never taken, the refusal logged
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    c.send(
        b"MAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n\
          Subject: early\r\n\r\nno wait\r\n.\r\n",
    );
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert_eq!(
        c.reply(),
        "554 5.5.0 Error: SMTP protocol synchronization: data sent before the reply to DATA"
    );
    assert_eq!(c.reply(), "<closed>");
    assert_eq!(
        b.count_reaching(
            &["event=\"reply\"", "client=127.0.0.1", "code=554", "5.5.0"],
            1
        ),
        1,
        "{}",
        b.log()
    );
    assert_eq!(mails(&maildir).len(), 3);
}

#[test]
fn list_file_changes_are_picked_up_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test"], ""),
    );
    let ask = |addr: &str| {
        let (mut c, _) = Client::connect(b.addr);
        c.cmd("HELO client.test");
        c.cmd("MAIL FROM:<a@client.test>");
        c.cmd(&format!("RCPT TO:<{addr}>"))
    };
    assert!(ask("dave@example.test").starts_with("550 5.1.1"));
    std::fs::write(
        dir.path().join("users.txt"),
        "alice@example.test\ndave@example.test\n",
    )
    .unwrap();
    assert!(
        wait_until(10, || ask("dave@example.test").starts_with("250")),
        "reloaded"
    );
    // a broken edit keeps the last good list
    std::fs::write(
        dir.path().join("users.txt"),
        "dave@example.test\nthis is not an address\n",
    )
    .unwrap();
    assert!(wait_until(10, || b.count(&["list not reloaded"]) > 0));
    assert!(ask("alice@example.test").starts_with("250"));
}

#[test]
fn starttls_with_swaks_and_the_received_header_says_esmtps() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let cfg = list_config(dir.path(), &["alice@example.test"], "").replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
    );
    let b = Backstop::start(dir.path(), &cfg);
    let (code, t) = swaks(
        b.addr,
        &[
            "--tls",
            "--from",
            "a@client.test",
            "--to",
            "alice@example.test",
        ],
    );
    assert_eq!(code, 0, "{t}");
    assert!(t.contains("<-  220 2.0.0 Ready to start TLS"), "{t}");
    let got = mails(&dir.path().join("mail"));
    assert!(got[0].contains("with ESMTPS id"), "{}", got[0]);
    // commands pipelined behind STARTTLS are thrown away
    let (mut c, _) = Client::connect(b.addr);
    assert!(c.cmd("EHLO client.test").ends_with("250 STARTTLS"));
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n");
    assert_eq!(c.reply(), "220 2.0.0 Ready to start TLS");
    assert!(
        c.silent_for(std::time::Duration::from_millis(500)),
        "no reply to the injected MAIL"
    );
}

#[test]
fn sigterm_lets_the_open_transaction_finish_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Backstop::start(
        dir.path(),
        &list_config(dir.path(), &["alice@example.test"], ""),
    );
    let (mut idle, _) = Client::connect(b.addr);
    idle.cmd("EHLO client.test");
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<alice@example.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    b.sigterm();
    assert!(wait_until(10, || b.count(&["stopping"]) > 0));
    assert_eq!(
        idle.reply(),
        "421 4.3.2 mx.example.test Service shutting down, closing connection"
    );
    let r = c.cmd("Subject: x\r\n\r\nbody\r\n.");
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert_eq!(
        c.reply(),
        "421 4.3.2 mx.example.test Service shutting down, closing connection"
    );
    let status = b.stop().expect("exited by itself");
    assert_eq!(status.code(), Some(0));
    assert_eq!(mails(&dir.path().join("mail")).len(), 1);
    assert!(
        std::net::TcpStream::connect(b.addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn check_config_prints_the_resolved_file_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, list_config(dir.path(), &["alice@example.test"], "")).unwrap();
    let (code, out, _) = run_backstop(["check-config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("positive_refresh = \"1w\"") && out.contains("negative_expire = \"3d\""),
        "{out}"
    );
    assert!(out.contains("relay = \"in-session\""), "{out}");

    let bad = dir.path().join("bad.toml");
    let text = list_config(dir.path(), &["alice@example.test"], "")
        .replace("next_hop", "relay = \"later\"\nnext_hop");
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = run_backstop(["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("domain[0].relay"), "{err}");

    std::fs::write(
        &bad,
        list_config(dir.path(), &["alice@example.test"], "max_recipients = 5"),
    )
    .unwrap();
    let (code, _, err) = run_backstop(["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `max_recipients`"), "{err}");
}
