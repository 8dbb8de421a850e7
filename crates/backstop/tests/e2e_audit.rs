//! `backstop audit` against real servers on loopback: a Postfix that accepts every recipient
//! and relays to an internal Postfix (the classic backscatter source), a Postfix with
//! `reject_unverified_recipient`, backstop itself, and a server that never answers.

mod support;

use support::*;

/// A self-signed certificate for `name` and its key, written as cert.pem and key.pem in `dir`
/// (readable by Postfix's own user): their paths.
fn self_signed(dir: &std::path::Path, name: &str) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    (path(cert), path(key))
}

fn audit(port: u16, more: &[&str]) -> (i32, String) {
    let target = format!("127.0.0.1:{port}");
    let mut args = vec!["audit", target.as_str(), "--domain", "example.test"];
    args.extend_from_slice(more);
    let (code, out, err) = run_backstop(args);
    (code, format!("{out}{err}"))
}

#[test]
fn an_accept_all_postfix_is_a_backscatter_source_and_backstop_is_not() {
    let sink = Sink::start();
    let internal = Postfix::internal("example.test", &["alice@example.test"], sink.port);
    // the operator's own domain: where the accept-all gateway sends its bounces (--listen)
    let listen = free_port();
    let accept_all = Postfix::gateway_with(
        "example.test",
        internal.port,
        &format!(
            "transport_maps = inline:{{ example.test=smtp:[127.0.0.1]:{}, \
             operator.test=smtp:[127.0.0.1]:{listen} }}\n",
            internal.port
        ),
    );
    let (code, out) = audit(accept_all.port, &["--known", "alice@example.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("RISK  unknown recipients: 12 of 12 random addresses that do not exist"),
        "{out}"
    );
    assert!(out.contains("RISK  bounces to the domain"), "{out}");
    assert!(out.contains("backscatter risk(s)"), "{out}");
    assert!(out.contains("WARN  STARTTLS: not offered"), "{out}");
    assert!(
        out.contains("ok    known vs unknown timing: median"),
        "{out}"
    );
    // read-only: the audit never sent a message
    assert!(sink.messages().is_empty());
    assert!(accept_all.queue_is_empty());

    // --bounce-to: one message to an unknown address; the internal server refuses it, the
    // gateway bounces it to the operator's address, the listener takes the bounce
    let listen_at = format!("127.0.0.1:{listen}");
    let bounce_to = [
        "--bounce-to",
        "audit@operator.test",
        "--listen",
        &listen_at,
        "--wait",
        "60",
    ];
    let (code, out) = audit(accept_all.port, &bounce_to);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("RISK  bounce test: a bounce for <bkst-audit-"),
        "{out}"
    );
    assert!(out.contains("(from <>, "), "{out}");
    assert!(
        out.contains("carrying the full original (all 200 lines of its attachment)"),
        "{out}"
    );

    // with STARTTLS (a certificate for mx.example.test from no CA this machine knows)
    let certs = world_dir();
    let (cert, key) = self_signed(certs.path(), "mx.example.test");
    let verifying = Postfix::gateway_with(
        "example.test",
        internal.port,
        &format!(
            "smtpd_recipient_restrictions = reject_unauth_destination, reject_unverified_recipient\n\
             unverified_recipient_reject_code = 550\n\
             smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
        ),
    );
    let (code, out) = audit(
        verifying.port,
        &["--harvest", "2", "--tls-name", "mx.example.test"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("RISK"), "{out}");
    assert!(
        out.contains("info  STARTTLS: offered; TLS 1.3, TLS13_"),
        "{out}"
    );
    assert!(
        out.contains("certificate for mx.example.test, self-signed, valid "),
        "{out}"
    );
    assert!(
        out.contains(
            "not trusted by this machine's CAs (issued by a CA this machine does not know)"
        ),
        "{out}"
    );
    // Postfix throws away what was pipelined behind STARTTLS
    assert!(
        out.contains(
            "ok    commands sent before TLS: a NOOP pipelined behind STARTTLS was thrown away"
        ),
        "{out}"
    );

    let dir = world_dir();
    self_signed(dir.path(), "mx.example.test");
    let cfg = list_config(dir.path(), &["alice@example.test"], "maildir:mail", "").replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
    );
    let b = Backstop::start(dir.path(), &cfg);
    let more = [
        "--json",
        "--tls-name",
        "mx.example.test",
        "--known",
        "alice@example.test",
        "--bounce-to",
        "audit@operator.test",
    ];
    let (code, out) = audit(b.addr.port(), &more);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let verdict = |check: &str| {
        let all = report["findings"].as_array().unwrap();
        let f = all.iter().find(|f| f["check"] == check).unwrap();
        f["verdict"].as_str().unwrap().to_string()
    };
    assert_eq!(verdict("unknown recipients"), "pass", "{out}");
    assert_eq!(verdict("bounces to the domain"), "pass", "{out}");
    assert_eq!(verdict("harvest defence"), "pass", "{out}");
    assert_eq!(verdict("bare LF in commands"), "pass", "{out}");
    assert_eq!(verdict("bare CR in commands"), "pass", "{out}");
    assert_eq!(verdict("commands sent before TLS"), "pass", "{out}");
    assert_eq!(verdict("bounce test"), "pass", "{out}");
    let detail = |check: &str| {
        let all = report["findings"].as_array().unwrap();
        let f = all.iter().find(|f| f["check"] == check).unwrap();
        f["detail"].as_str().unwrap().to_string()
    };
    // self-signed: encrypted, not trusted by this machine's CAs
    let tls = detail("STARTTLS");
    assert!(tls.contains("TLS 1.3"), "{tls}");
    assert!(
        tls.contains("certificate for mx.example.test, self-signed"),
        "{tls}"
    );
    assert!(tls.contains("not trusted by this machine's CAs"), "{tls}");
    assert_eq!(verdict("STARTTLS"), "info", "{out}");
    assert!(report["commands"].as_u64().unwrap() <= 60, "{out}");
}

#[test]
fn a_server_that_never_answers_is_reported_in_bounded_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || listener.accept());
    // every wait is bounded by --timeout: the audit ends, saying why
    let (code, out) = audit(port, &["--timeout", "2"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not audited: no answer within 2 s"), "{out}");
    drop(held);
    // nobody listening at all
    let (code, out) = audit(free_port(), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not audited: connect to 127.0.0.1:"), "{out}");
    // not on this machine: refused unless the operator says it is theirs
    let (code, out, err) = run_backstop(["audit", "192.0.2.1:25", "--domain", "example.test"]);
    assert_ne!(code, 0);
    assert!(err.contains("--i-own-this-server"), "{out}{err}");
}

#[test]
fn a_server_that_drops_the_connection_gets_a_clear_report() {
    // greets, answers EHLO, and hangs up at MAIL FROM: the audit says what happened and does
    // not claim "no risk" (exit 2)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"220 drop.example.test ESMTP\r\n");
            let mut lines = std::io::BufReader::new(stream.try_clone().unwrap()).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("MAIL") {
                    break;
                }
                let _ = stream.write_all(b"250 drop.example.test\r\n");
            }
        }
    });
    let (code, out) = audit(port, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("not fully audited: the server closed the connection"),
        "{out}"
    );

    // a real Postfix that ends a session after 5 errors (smtpd_hard_error_limit): the harvest
    // defence is seen, and the audit goes on with new connections
    let sink = Sink::start();
    let limited = Postfix::internal_with(
        "example.test",
        &["alice@example.test"],
        sink.port,
        "smtpd_hard_error_limit = 5\n",
    );
    let (code, out) = audit(limited.port, &["--harvest", "8"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok    harvest defence: the server ended the session after"),
        "{out}"
    );
    assert!(out.contains("ok    bounces to the domain"), "{out}");
    assert!(out.contains("no backscatter risk found"), "{out}");
}
