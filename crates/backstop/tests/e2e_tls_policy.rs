//! Outbound TLS policy with the real binary: a destination whose MTA-STS policy (served over
//! HTTPS on loopback with a test CA, its `_mta-sts` record and MX by dnsmasq) is in `enforce`
//! mode gets mail only over TLS verified for its MX name: a real Postfix without STARTTLS
//! gets nothing (deferred, never sent in clear), the same with a certificate for its MX name
//! from the test CA gets the message. A route with `tls = "verify"` to a server whose
//! certificate names another host defers too.

mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::dns::Dns;
use support::{Backstop, Postfix, Sink, free_port, list_config, run_with_input, swaks};

/// A test CA (ca.pem) and, signed by it, a certificate and key for each name, in `dir`.
fn test_ca(dir: &Path, names: &[&str]) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "backstop test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in names {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    dir.join("ca.pem")
}

/// The policy file served at https://mta-sts.partner.test/.well-known/mta-sts.txt.
struct PolicyServer {
    port: u16,
    child: Child,
}

impl PolicyServer {
    fn start(dir: &Path, policy: &str) -> PolicyServer {
        PolicyServer::start_taking_posts(dir, policy, None)
    }

    /// Also takes POSTs (TLS reports) into `posts`.
    fn start_taking_posts(dir: &Path, policy: &str, posts: Option<&Path>) -> PolicyServer {
        let body = dir.join("mta-sts.txt");
        std::fs::write(&body, policy).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/https_file.py");
        let (cert, key) = (
            dir.join("mta-sts.partner.test.pem"),
            dir.join("mta-sts.partner.test.key"),
        );
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([&cert, &key])
            .arg("/.well-known/mta-sts.txt")
            .arg(&body)
            .args(posts)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the policy server's port");
        PolicyServer { port, child }
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// partner.test's MX (mx.partner.test), its policy host and its `_mta-sts` record.
fn partner_dns() -> Dns {
    Dns::start(&[
        "--mx-host=partner.test,mx.partner.test,10".into(),
        "--host-record=mx.partner.test,127.0.0.1".into(),
        "--host-record=mta-sts.partner.test,127.0.0.1".into(),
        "--txt-record=_mta-sts.partner.test,v=STSv1; id=20261203".into(),
    ])
}

const ENFORCE: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.partner.test\r\nmax_age: 86400\r\n";

/// backstop relaying for 127.0.0.1 to partner.test's MX hosts (on `mx_port`), trusting the
/// test CA, with MTA-STS policies fetched from `sts_port`; `extra` appended.
fn gateway(
    dir: &Path,
    (mx_port, sts_port): (u16, u16),
    ca: &Path,
    dns: &Dns,
    extra: &str,
) -> (Backstop, SocketAddr) {
    let relay_port = free_port();
    let base = list_config(dir, &["alice@example.test"], "maildir:mail", "");
    let config = format!(
        "{base}\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\nrelay_from = [\"127.0.0.1\"]\n\
         {extra}\n[delivery]\nsmtp_port = {mx_port}\ntls_ca = \"{}\"\nmta_sts_port = {sts_port}\n\
         retry_min = \"1h\"\n[dns]\nresolver = \"{}\"\n",
        ca.display(),
        dns.addr
    );
    let b = Backstop::start(dir, &config);
    (b, format!("127.0.0.1:{relay_port}").parse().unwrap())
}

/// partner.test with `policy`, its MX host a Postfix without STARTTLS, and backstop in front;
/// alice@example.test has sent bob@partner.test a message.
struct PlainPartner {
    /// Dropped last (the directory after the servers that use it).
    _world: (PolicyServer, Dns, Postfix, tempfile::TempDir),
    b: Backstop,
    sink: Sink,
}

impl PlainPartner {
    fn after_one_message(policy: &str) -> PlainPartner {
        let dir = support::world_dir();
        let ca = test_ca(dir.path(), &["mta-sts.partner.test"]);
        let policy = PolicyServer::start(dir.path(), policy);
        let dns = partner_dns();
        let sink = Sink::start();
        let partner = Postfix::internal("partner.test", &["bob@partner.test"], sink.port);
        let (b, relay) = gateway(dir.path(), (partner.port, policy.port), &ca, &dns, "");
        send_to_bob(relay);
        PlainPartner {
            _world: (policy, dns, partner, dir),
            b,
            sink,
        }
    }
}

/// partner.test's MX host: a Postfix for `users` with the test CA's certificate for
/// mx.partner.test (from `dir`), passing mail on to `sink`.
fn tls_partner(dir: &Path, users: &[&str], sink: &Sink) -> Postfix {
    let (cert, key) = (
        dir.join("mx.partner.test.pem"),
        dir.join("mx.partner.test.key"),
    );
    let main_cf = format!(
        "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
        cert.display(),
        key.display()
    );
    Postfix::internal_with("partner.test", users, sink.port, &main_cf)
}

/// alice@example.test writes to bob@partner.test through `relay`.
fn send_to_bob(relay: SocketAddr) {
    let (code, t) = swaks(
        relay,
        &["--from", "alice@example.test", "--to", "bob@partner.test"],
    );
    assert_eq!(code, 0, "{t}");
}

#[test]
fn an_enforced_mta_sts_policy_defers_mail_to_a_server_without_starttls() {
    let PlainPartner { _world, b, sink } = PlainPartner::after_one_message(ENFORCE);
    let deferred = ["event=\"attempt\"", "result=\"deferred\"", "dsn=\"4.7.4\""];
    assert_eq!(b.count_reaching(&deferred, 1), 1, "{}", b.log());
    let log = b.log();
    assert!(log.contains("MTA-STS policy fetched"), "{log}");
    assert!(
        log.contains("TLS is required (MTA-STS policy of partner.test, id 20261203) but STARTTLS is not offered; not delivered"),
        "{log}"
    );
    assert!(log.contains("tls=\"policy_failed\""), "{log}");
    // nothing reached the far side in clear
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(sink.messages().is_empty());
    let (_, list, _) = b.cli(&["queue", "list"]);
    assert!(list.contains("bob@partner.test"), "still queued: {list}");
}

#[test]
fn verified_tls_delivers_and_a_certificate_for_another_name_defers() {
    let dir = support::world_dir();
    let ca = test_ca(dir.path(), &["mta-sts.partner.test", "mx.partner.test"]);
    let policy = PolicyServer::start(dir.path(), ENFORCE);
    let dns = partner_dns();
    let sink = Sink::start();
    let partner = tls_partner(dir.path(), &["bob@partner.test"], &sink);
    // strict.test: a route that demands verified TLS of 127.0.0.1, which shows the
    // certificate of mx.partner.test
    let route = format!(
        "[[route]]\ndomain = \"strict.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\ntls = \"verify\"\n",
        partner.port
    );
    let (b, relay) = gateway(dir.path(), (partner.port, policy.port), &ca, &dns, &route);

    send_to_bob(relay);
    assert_eq!(sink.wait_for(1).len(), 1, "{}", b.log());
    let verified = [
        "event=\"delivery_tls\"",
        "tls=\"verified\"",
        "MTA-STS policy of partner.test",
    ];
    assert_eq!(b.count_reaching(&verified, 1), 1, "{}", b.log());
    assert!(b.log().contains("TLSv1.3"), "{}", b.log());

    let (code, t) = swaks(
        relay,
        &["--from", "alice@example.test", "--to", "x@strict.test"],
    );
    assert_eq!(code, 0, "{t}");
    let deferred = ["event=\"attempt\"", "result=\"deferred\"", "dsn=\"4.7.5\""];
    assert_eq!(b.count_reaching(&deferred, 1), 1, "{}", b.log());
    assert!(
        b.log().contains("certificate not verified for 127.0.0.1"),
        "{}",
        b.log()
    );
    assert_eq!(sink.messages().len(), 1, "nothing more was delivered");
}

/// dnsmasq's option for a TXT record of one string that may hold commas (which
/// `--txt-record` takes as string separators): the record's data in hex.
fn txt_rr(name: &str, text: &str) -> String {
    assert!(text.len() < 256);
    let hex: String = std::iter::once(text.len() as u8)
        .chain(text.bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("--dns-rr={name},16,{hex}")
}

/// The JSON report inside a TLS report message, decoded by Python's email and gzip modules
/// (an independent reader).
fn report_json(message: &str) -> serde_json::Value {
    let script = "import sys, email, gzip, json\n\
                  m = email.message_from_bytes(sys.stdin.buffer.read())\n\
                  for p in m.walk():\n\
                  \x20   if p.get_content_type() == 'application/tlsrpt+gzip':\n\
                  \x20       print(gzip.decompress(p.get_payload(decode=True)).decode())\n";
    let mut python = Command::new("/usr/bin/python3");
    python.args(["-c", script]);
    let out = run_with_input(&mut python, message.as_bytes());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no report in the message ({e}): {}\n{message}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn sessions_are_counted_shown_by_destination_and_reported_to_the_domain() {
    let dir = support::world_dir();
    let ca = test_ca(dir.path(), &["mta-sts.partner.test", "mx.partner.test"]);
    let posts = dir.path().join("posts");
    std::fs::create_dir(&posts).unwrap();
    let policy = PolicyServer::start_taking_posts(dir.path(), ENFORCE, Some(&posts));
    // reports go by mail and by HTTPS (to the policy server, which has a certificate)
    let url = format!("https://mta-sts.partner.test:{}/v1/tlsrpt", policy.port);
    let rua = txt_rr(
        "_smtp._tls.partner.test",
        &format!("v=TLSRPTv1; rua=mailto:tlsrpt@partner.test,{url}"),
    );
    // mx0.partner.test comes first but the policy does not name it: a failed session, then
    // mx.partner.test over verified TLS
    let dns = Dns::start(&[
        "--mx-host=partner.test,mx0.partner.test,5".into(),
        "--mx-host=partner.test,mx.partner.test,10".into(),
        "--host-record=mx0.partner.test,127.0.0.1".into(),
        "--host-record=mx.partner.test,127.0.0.1".into(),
        "--host-record=mta-sts.partner.test,127.0.0.1".into(),
        "--txt-record=_mta-sts.partner.test,v=STSv1; id=20261203".into(),
        rua,
    ]);
    let sink = Sink::start();
    let users = ["bob@partner.test", "tlsrpt@partner.test"];
    let partner = tls_partner(dir.path(), &users, &sink);
    let dkim = "[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nalgorithm = \"ed25519\"\n";
    let (b, relay) = gateway(dir.path(), (partner.port, policy.port), &ca, &dns, dkim);

    send_to_bob(relay);
    assert_eq!(sink.wait_for(1).len(), 1, "{}", b.log());

    // the operator sees the failures by destination
    let (code, status, e) = b.cli(&["status"]);
    assert_eq!(code, 0, "{e}");
    assert!(
        status.contains("TLS policy failures today, by destination:"),
        "{status}"
    );
    assert!(
        status.contains("partner.test: 1 failed, 1 succeeded; validation-failure at mx0.partner.test: not named by the MTA-STS policy (mx: mx.partner.test)"),
        "{status}"
    );
    let (code, show, e) = b.cli(&["tls-report", "show"]);
    assert_eq!(code, 0, "{e}");
    assert!(
        show.contains("partner.test  sts (mx: mx.partner.test): 1 successful, 1 failed"),
        "{show}"
    );

    // ended now: the report goes to the address of partner.test's _smtp._tls record
    let (code, _, e) = b.cli(&["tls-report", "send"]);
    assert_eq!(code, 0, "{e}");
    let all = sink.wait_for(2);
    let report = all
        .iter()
        .find(|m| m.contains("TLS-Report-Domain: partner.test"))
        .unwrap_or_else(|| panic!("no report arrived: {}", b.log()));
    assert!(
        report.contains("TLS-Report-Submitter: example.test"),
        "{report}"
    );
    assert!(
        report.contains("From: <postmaster@example.test>"),
        "{report}"
    );
    assert!(report.contains("DKIM-Signature:"), "{report}");
    assert!(report.contains("d=example.test"), "{report}");
    let json = report_json(report);
    assert_eq!(json["organization-name"], "example.test", "{json}");
    assert_eq!(json["contact-info"], "postmaster@example.test", "{json}");
    let p = &json["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{json}");
    assert_eq!(p["policy"]["policy-domain"], "partner.test", "{json}");
    assert_eq!(p["policy"]["mx-host"][0], "mx.partner.test", "{json}");
    assert_eq!(p["policy"]["policy-string"][1], "mode: enforce", "{json}");
    assert_eq!(p["summary"]["total-successful-session-count"], 1, "{json}");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{json}");
    let f = &p["failure-details"][0];
    assert_eq!(f["result-type"], "validation-failure", "{json}");
    assert_eq!(f["receiving-mx-hostname"], "mx0.partner.test", "{json}");
    assert_eq!(f["failed-session-count"], 1, "{json}");
    let sent = ["event=\"tls_report_sent\"", "domain=\"partner.test\"", &url];
    assert_eq!(b.count_reaching(&sent, 1), 1, "{}", b.log());
    // the same report, posted: gzip JSON (RFC 8460 §5.4)
    let meta = std::fs::read_to_string(posts.join("post-0.meta")).unwrap();
    assert_eq!(meta, "/v1/tlsrpt\napplication/tlsrpt+gzip\n");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import gzip, sys; sys.stdout.write(gzip.decompress(open(sys.argv[1], 'rb').read()).decode())"])
        .arg(posts.join("post-0.body"))
        .output()
        .unwrap();
    let posted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(posted["policies"], json["policies"], "{posted}");
    assert_eq!(posted["report-id"], json["report-id"], "{posted}");
    // reported once: the next period holds only the report's own delivery
    let (_, show, _) = b.cli(&["tls-report", "show", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["pending"], serde_json::json!([]), "{show}");
}

#[test]
fn a_testing_policy_delivers_in_clear_and_counts_the_failure() {
    let testing = ENFORCE.replace("mode: enforce", "mode: testing");
    let PlainPartner { _world, b, sink } = PlainPartner::after_one_message(&testing);
    // not held back: delivered without TLS (the server offers none)
    assert_eq!(sink.wait_for(1).len(), 1, "{}", b.log());
    let (code, show, e) = b.cli(&["tls-report", "show"]);
    assert_eq!(code, 0, "{e}");
    assert!(
        show.contains("partner.test  sts (mx: mx.partner.test): 0 successful, 1 failed"),
        "{show}"
    );
    assert!(
        show.contains(
            "1 x starttls-not-supported at mx.partner.test [127.0.0.1]: STARTTLS not offered"
        ),
        "{show}"
    );
    assert!(b.log().contains("in testing mode"), "{}", b.log());
}
