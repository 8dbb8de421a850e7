//! Delivery reports end to end, with the real binary, a real Postfix as the internal server
//! (it refuses unknown users with 550 5.1.1), smtp-sink as the senders' mail server, and
//! dnsmasq serving the senders' SPF records on loopback.
//!
//! The backscatter scenario: a message accepted in queue mode for 100 recipients that all fail
//! at the next hop gets exactly one report when its sender is authenticated (SPF pass), and
//! none when the sender is forged (SPF fail, no DKIM). Neither a restart nor a second delivery
//! run sends the report again.

mod support;

use std::path::Path;
use support::dns::Dns;
use support::{
    Backstop, Client, Postfix, Sink, free_port, list_config, swaks, wait_until, world_dir,
};

const USERS: usize = 100;

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("u{i}@example.test")).collect()
}

/// Queue mode for example.test (our list knows u0..u99; the internal server knows none of
/// them), mail for sender.test and forged.test routed to `reports_port`.
fn config(dir: &Path, internal: u16, reports_port: u16, dns: &Dns) -> String {
    let users = users();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let base = list_config(dir, &refs, &format!("smtp:127.0.0.1:{internal}"), "");
    let mut c = format!("{base}relay = \"queue\"\n");
    for d in ["sender.test", "forged.test"] {
        c.push_str(&format!(
            "\n[[route]]\ndomain = \"{d}\"\nnext_hop = \"smtp:127.0.0.1:{reports_port}\"\n"
        ));
    }
    c.push_str(&format!(
        "\n[delivery]\nresolver = \"{}\"\nretry_min = \"1s\"\nretry_max = \"1s\"\n",
        dns.addr
    ));
    c
}

fn send(b: &Backstop, from: &str) -> String {
    let to = users().join(",");
    let (code, t) = swaks(
        b.addr,
        &[
            "--from",
            from,
            "--to",
            &to,
            "--body",
            "the body that must never come back",
        ],
    );
    assert_eq!(code, 0, "{t}");
    t
}

fn failed_list(b: &Backstop) -> serde_json::Value {
    let (code, out, err) = b.cli(&["queue", "list", "--failed", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_hundred_failures_make_one_report_for_a_real_sender_and_none_for_a_forged_one() {
    let dns = Dns::start(&[
        "--txt-record=sender.test,v=spf1 ip4:127.0.0.1 -all".into(),
        "--txt-record=forged.test,v=spf1 ip4:192.0.2.1 -all".into(),
    ]);
    let reports = Sink::start();
    let internal_sink = Sink::start();
    // Postfix as it comes (it hangs up after 20 refusals: the rest are tried again), minus the
    // 1 s tarpit per refusal after the 10th, to keep the test short
    let internal = Postfix::internal_with(
        "example.test",
        &["someone@example.test"],
        internal_sink.port,
        "smtpd_error_sleep_time = 0",
    );
    let dir = world_dir();
    let text = config(dir.path(), internal.port, reports.port, &dns);
    let mut b = Backstop::start(dir.path(), &text);

    // a real sender: SPF passes for 127.0.0.1
    let t = send(&b, "user@sender.test");
    assert!(t.contains("250 2.0.0 Ok: queued as"), "{t}");
    let got = reports.wait_for(1);
    assert_eq!(
        got.len(),
        1,
        "{got:#?}\n{}\nMAILLOG {}",
        b.log(),
        internal.maillog()
    );
    let report = &got[0];
    assert!(
        report.contains("X-Rcpt-Args: <user@sender.test>") || report.contains("user@sender.test")
    );
    assert!(
        report.contains("multipart/report; report-type=delivery-status"),
        "{report}"
    );
    assert_eq!(
        report.matches("Final-Recipient: rfc822;").count(),
        USERS,
        "{report}"
    );
    assert_eq!(report.matches("Status: 5.1.1").count(), USERS, "{report}");
    assert!(report.contains("Auto-Submitted: auto-replied"), "{report}");
    assert!(
        !report.contains("the body that must never come back"),
        "{report}"
    );

    // a forged sender: SPF fails, no DKIM; every recipient fails, nobody is told
    let t = send(&b, "victim@forged.test");
    assert!(t.contains("250 2.0.0 Ok: queued as"), "{t}");
    let listed = wait_until(20, || {
        failed_list(&b)["messages"].as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m["from"] == "victim@forged.test"
                    && m["rcpts"].as_array().unwrap().iter().all(|r| {
                        r["report"].as_str().is_some_and(|n| {
                            n.starts_with("no report: sender not trusted (spf=fail")
                        })
                    })
            })
        })
    });
    assert!(listed, "{:#}\n{}", failed_list(&b), b.log());
    assert_eq!(
        b.count_reaching(&["event=\"no_report\""], USERS),
        USERS,
        "{}",
        b.log()
    );

    // a restart and a second delivery run send nothing again
    b.stop();
    let b = Backstop::start(dir.path(), &text);
    let (code, _, err) = b.cli(&["queue", "retry", "--all"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(reports.messages().len(), 1, "{}", b.log());
    assert_eq!(b.count(&["event=\"report_sent\""]), 0, "{}", b.log());
}

/// The budget: 1000 messages from one domain's users relayed to a domain that does not exist
/// (NXDOMAIN: each fails at once) get at most `per_domain` reports; the rest are suppressed and
/// logged.
#[test]
fn a_thousand_failures_to_one_domain_get_at_most_the_budget() {
    let dns = Dns::start(&[]);
    let reports = Sink::start();
    let dir = world_dir();
    let relay_port = free_port();
    let base = list_config(
        dir.path(),
        &["someone@example.test"],
        "smtp:127.0.0.1:9",
        "",
    );
    let text = format!(
        "{base}relay = \"queue\"\n\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\n\
         relay_from = [\"127.0.0.0/8\"]\n\n[[route]]\ndomain = \"sender.test\"\n\
         next_hop = \"smtp:127.0.0.1:{}\"\n\n[delivery]\nresolver = \"{}\"\n\n\
         [reports]\nper_recipient = 1000\nper_domain = 10\n",
        reports.port, dns.addr
    );
    let b = Backstop::start(dir.path(), &text);
    let out = std::process::Command::new("/usr/sbin/smtp-source")
        .args(["-c", "-s", "10", "-m", "1000", "-l", "512"])
        .args(["-f", "user@sender.test", "-t", "x@nowhere.test"])
        .arg(format!("127.0.0.1:{relay_port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decided =
        || b.count(&["event=\"report_sent\""]) + b.count(&["event=\"report_suppressed\""]);
    assert!(
        wait_until(120, || decided() >= 1000),
        "{} decided\n{}",
        decided(),
        b.log()
    );
    assert_eq!(b.count_reaching(&["event=\"report_sent\""], 10), 10);
    assert_eq!(
        b.count_reaching(
            &[
                "event=\"report_suppressed\"",
                "reports to sender.test in the last hour (limit 10)"
            ],
            990
        ),
        990
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(reports.wait_for(10).len(), 10);
}

/// A resolver that never answers is not on the path of any reply: the message is queued (250)
/// without a DNS query; only when a report comes due are SPF and DKIM asked, off the SMTP
/// path, and no answer means no report.
#[test]
fn a_dead_resolver_never_delays_the_250_and_means_no_report() {
    let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    quiet.set_nonblocking(true).unwrap();
    let reports = Sink::start();
    let refusing = Sink::start_with(free_port(), &["-f", "RCPT"]);
    let dir = tempfile::tempdir().unwrap();
    let base = list_config(
        dir.path(),
        &["u0@example.test"],
        &format!("smtp:127.0.0.1:{}", refusing.port),
        "",
    );
    let config = format!(
        "{base}relay = \"queue\"\n\n[[route]]\ndomain = \"sender.test\"\n\
         next_hop = \"smtp:127.0.0.1:{}\"\n\n[dns]\nresolver = \"{}\"\ntimeout = \"1s\"\nattempts = 1\n",
        reports.port,
        quiet.local_addr().unwrap()
    );
    let b = Backstop::start(dir.path(), &config);
    // the conversation by hand, so that the resolver is looked at the moment the 250 arrives
    // (after it, the message may be delivered, refused and its report planned within
    // milliseconds: a query then is allowed)
    let mut buf = [0u8; 1024];
    let (mut c, greeting) = Client::connect(b.addr);
    assert!(greeting.starts_with("220"), "{greeting}");
    for (line, code) in [
        ("EHLO client.test", "250"),
        ("MAIL FROM:<someone@sender.test>", "250"),
        ("RCPT TO:<u0@example.test>", "250"),
        ("DATA", "354"),
    ] {
        let reply = c.cmd(line);
        assert!(reply.starts_with(code), "{line}: {reply}");
        assert!(
            quiet.recv(&mut buf).is_err(),
            "a DNS query before the reply to {line}"
        );
    }
    let queued = c.cmd("Subject: hello\r\n\r\nhello\r\n.");
    assert!(quiet.recv(&mut buf).is_err(), "a DNS query before the 250");
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    c.cmd("QUIT");
    // the next hop refuses the recipient: a report is due, and now SPF is asked
    assert!(
        wait_until(20, || quiet.recv(&mut buf).is_ok()),
        "{}",
        b.log()
    );
    // no answer, no proof: no report (SPF and DKIM each give up after their lookups' time)
    let decided = || b.count(&["event=\"trust\"", "trusted=false", "temperror"]) == 1;
    assert!(wait_until(30, decided), "{}", b.log());
    assert!(reports.messages().is_empty());
}
