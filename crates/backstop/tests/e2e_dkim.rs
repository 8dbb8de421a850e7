//! DKIM signing with the real binary: mail from the relay networks leaves through a real
//! Postfix with an RSA and an Ed25519 signature, and the report backstop writes for a
//! recipient that Postfix refused is signed too; each signature is checked by an independent
//! verifier (dkimpy, Debian's python3-dkim) against the records `backstop dkim show` printed,
//! served by a dnsmasq on loopback.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use support::dns::Dns;
use support::{
    Backstop, Postfix, Sink, free_port, list_config, run_backstop, run_with_input, swaks,
};

/// dkimpy's verdict on `message`: (all signatures pass, one line per signature).
fn dkimpy(message: &str, dns: &Dns) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dkim_verify.py");
    let mut python = Command::new("/usr/bin/python3");
    python.args([script, &dns.addr.port().to_string()]);
    let out = run_with_input(&mut python, message.as_bytes());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `backstop dkim show --json` for `config`: (record name, record text) of each key.
fn records(dir: &Path, config: &str) -> Vec<(String, String)> {
    let path = dir.join("pre.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) =
        run_backstop(["dkim", "show", "--json", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                v["record"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// dnsmasq serving `records` (each cut into strings of 255 bytes).
fn dns_with(records: &[(String, String)]) -> Dns {
    let args: Vec<String> = records
        .iter()
        .map(|(name, text)| {
            let parts: Vec<&str> = text
                .as_bytes()
                .chunks(255)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!("--txt-record={name},{}", parts.join(","))
        })
        .collect();
    Dns::start(&args)
}

fn maildir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("mail/new"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn relayed_mail_and_our_reports_carry_signatures_an_independent_verifier_accepts() {
    let dir = support::world_dir();
    let sink = Sink::start();
    let partner = Postfix::internal("partner.test", &["bob@partner.test"], sink.port);
    let relay_port = free_port();
    let base = list_config(dir.path(), &["alice@example.test"], "maildir:mail", "");
    let config = format!(
        "{base}\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\nrelay_from = [\"127.0.0.1\"]\n\
         [[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\n\
         [[dkim]]\ndomain = \"example.test\"\nselector = \"r2026\"\n\
         [[dkim]]\ndomain = \"example.test\"\nselector = \"e2026\"\nalgorithm = \"ed25519\"\n\
         [[dkim]]\ndomain = \"example.test\"\nselector = \"r2027\"\nsign = false\n",
        partner.port
    );
    let records = records(dir.path(), &config);
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[0].0, "r2026._domainkey.example.test");
    let dns = dns_with(&records);
    let config = format!("{config}\n[dns]\nresolver = \"{}\"\n", dns.addr);
    let b = Backstop::start(dir.path(), &config);
    let relay: SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();

    // one message to bob (delivered), one to nobody (refused by Postfix: a report to alice)
    let body = "Dear Bob,\n\nthe figures are attached.\n.\n..dots stay\n";
    for to in ["bob@partner.test", "nobody@partner.test"] {
        let (code, t) = swaks(
            relay,
            &[
                "--from",
                "alice@example.test",
                "--to",
                to,
                "--h-Subject",
                "figures",
                "--body",
                body,
            ],
        );
        assert_eq!(code, 0, "{t}");
    }
    let got = sink.wait_for(1);
    let delivered = &got[0];
    assert_eq!(
        delivered.matches("DKIM-Signature:").count(),
        2,
        "{delivered}"
    );
    let (ok, verdict) = dkimpy(delivered, &dns);
    assert!(ok, "{verdict}\n{delivered}");
    assert!(
        verdict.contains("pass a=rsa-sha256 d=example.test s=r2026"),
        "{verdict}"
    );
    assert!(
        verdict.contains("pass a=ed25519-sha256 d=example.test s=e2026"),
        "{verdict}"
    );
    assert!(
        !delivered.contains("s=r2027"),
        "a key kept for rotation does not sign"
    );

    // the report for nobody@partner.test, from MAILER-DAEMON@mx.example.test, signed by the
    // host name's parent domain
    assert!(
        support::wait_until(30, || !maildir(dir.path()).is_empty()),
        "{}",
        b.log()
    );
    let report = maildir(dir.path()).remove(0);
    assert!(report.contains("multipart/report"), "{report}");
    let (ok, verdict) = dkimpy(&report, &dns);
    assert!(ok, "{verdict}\n{report}");
    assert_eq!(verdict.matches("pass").count(), 2, "{verdict}");

    // tampering is seen: the verifier is not one that passes everything
    let forged = delivered.replace("the figures are attached", "the figures are wrong");
    let (ok, verdict) = dkimpy(&forged, &dns);
    assert!(!ok, "{verdict}");

    // two messages relayed and one report: three signed, each with both keys
    let signed = [
        "event=\"dkim\"",
        "result=\"signed\"",
        "r2026 (rsa), e2026 (ed25519)",
    ];
    assert_eq!(b.count_reaching(&signed, 3), 3, "{}", b.log());
}
