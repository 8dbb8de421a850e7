//! Third-party parsers read our delivery reports: every golden file of `tests/golden/dsn/` is
//! given to Python's stdlib `email` package (`tests/parsers/dsn_email.py`) and to sisimai, the
//! bounce parser of Debian's `libsisimai-perl` (`tests/parsers/dsn_sisimai.pl`), and each
//! recipient of the report's input must come out with its action and status.
//!
//! Needs `python3` and `perl` with Sisimai (`scripts/test` installs them); a missing tool fails
//! the test, it is never skipped.
//!
//! What sisimai 4.25 does by design, asserted as such:
//! - Successful deliveries (status 2.x) are left out unless asked for with `delivered => 1`;
//!   delayed recipients are returned like bounces (action `delayed`).
//! - It predates RFC 6533: it neither knows `message/global-delivery-status` nor accepts
//!   non-ASCII addresses. In the SMTPUTF8 report it finds the ASCII recipient (by scanning the
//!   text, with the right status) and not the UTF-8 one; and it drops every record of a report
//!   whose original sender is not ASCII, which is why that golden file has an ASCII sender.
//!   Python reads that report completely.

#[path = "parsers/cases.rs"]
mod cases;

use backstop_proto::dsn::{Action, message_id};
use cases::Case;
use std::path::Path;
use std::process::Command;

fn run(program: &str, script: &str, report: &Path) -> Vec<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parsers");
    let out = Command::new(program)
        .arg(dir.join(script))
        .arg(report)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install it (scripts/test does)"));
    assert!(
        out.status.success(),
        "{program} {script} {} failed ({}):\n{}\n(python3 and perl with Sisimai, Debian package \
         libsisimai-perl, are required; scripts/test installs them)",
        report.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// The values of the facts named `key`.
fn facts<'a>(lines: &'a [Vec<String>], key: &str) -> Vec<&'a [String]> {
    lines
        .iter()
        .filter(|l| l[0] == key)
        .map(|l| &l[1..])
        .collect()
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Failed => "failed",
        Action::Delayed => "delayed",
        Action::Delivered => "delivered",
        Action::Relayed => "relayed",
    }
}

fn subject(case: &Case) -> &'static str {
    let any = |a: Action| case.rcpts.iter().any(|x| x.action == a);
    if any(Action::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if any(Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    }
}

fn check_python(case: &Case) {
    let out = run("python3", "dsn_email.py", &case.path());
    let one = |key: &str| facts(&out, key).first().map(|f| f.join("\t"));
    let name = case.name;
    assert_eq!(one("type").as_deref(), Some("multipart/report"), "{name}");
    assert_eq!(
        one("report-type").as_deref(),
        Some("delivery-status"),
        "{name}"
    );
    assert_eq!(
        one("defects").as_deref(),
        Some("0"),
        "{name}: email found defects"
    );
    let headers = facts(&out, "header");
    let header = |n: &str| headers.iter().find(|h| h[0] == n).map(|h| h[1].as_str());
    assert_eq!(header("Subject"), Some(subject(case)), "{name}");
    assert_eq!(header("Auto-Submitted"), Some("auto-replied"), "{name}");
    let id = message_id(case.headers.as_bytes()).expect("original Message-ID");
    assert_eq!(
        header("In-Reply-To"),
        Some(format!("<{id}>").as_str()),
        "{name}"
    );

    let global = case.rcpts.iter().any(|x| !x.addr.is_ascii());
    let (status_type, headers_type, cte) = match (case.smtputf8, global) {
        (true, true) => (
            "message/global-delivery-status",
            "message/global-headers",
            "8bit",
        ),
        (true, false) => ("message/delivery-status", "message/global-headers", "8bit"),
        _ => ("message/delivery-status", "text/rfc822-headers", "7bit"),
    };
    let parts: Vec<&str> = facts(&out, "part").iter().map(|p| p[0].as_str()).collect();
    assert_eq!(parts, ["text/plain", status_type, headers_type], "{name}");
    assert_eq!(facts(&out, "part")[2][1], cte, "{name}");

    let per_message = facts(&out, "per-message");
    assert!(per_message.contains(&&["Reporting-MTA".into(), "dns; gw.example.test".into()][..]));
    if let Some(envid) = case.envid {
        assert!(per_message.contains(&&["Original-Envelope-Id".into(), envid.to_string()][..]));
    }
    let want: Vec<Vec<String>> = case
        .rcpts
        .iter()
        .map(|x| {
            let ty = if x.addr.is_ascii() { "rfc822" } else { "utf-8" };
            vec![
                ty.to_string(),
                x.addr.to_string(),
                action(x.action).to_string(),
                x.status.to_string(),
            ]
        })
        .collect();
    let got: Vec<Vec<String>> = facts(&out, "recipient")
        .iter()
        .map(|r| r.to_vec())
        .collect();
    assert_eq!(got, want, "{name}: recipients as python's email reads them");
    let returned = facts(&out, "returned");
    assert!(
        returned.contains(&&["Message-ID".into(), format!("<{id}>")][..]),
        "{name}"
    );
}

fn check_sisimai(case: &Case) {
    let out = run("perl", "dsn_sisimai.pl", &case.path());
    let version = facts(&out, "version")[0][0].clone();
    let v4 = version.starts_with("4.");
    let records = facts(&out, "record");
    let name = case.name;
    let mut want_bounces = 0;
    let mut want_all = 0;
    for x in &case.rcpts {
        let addr = x.addr.to_string();
        let found = |mode: &str| {
            records
                .iter()
                .filter(|r| r[0] == mode && r[1] == addr)
                .collect::<Vec<_>>()
        };
        if v4 && !x.addr.is_ascii() {
            // no EAI in sisimai 4 (module docs)
            assert!(found("all").is_empty(), "{name}: {addr}");
            continue;
        }
        let bounce = matches!(x.action, Action::Failed | Action::Delayed);
        want_all += 1;
        want_bounces += usize::from(bounce);
        for mode in if bounce {
            &["bounces", "all"][..]
        } else {
            &["all"][..]
        } {
            let r = found(mode);
            assert_eq!(r.len(), 1, "{name}: {addr} in {mode}: {records:?}");
            assert_eq!(r[0][2], action(x.action), "{name}: {addr} action");
            assert_eq!(r[0][3], x.status.to_string(), "{name}: {addr} status");
            if let Some(o) = x.orcpt.as_ref().filter(|o| o.addr_type == "rfc822") {
                assert_eq!(r[0][5], o.addr, "{name}: {addr} Original-Recipient");
            }
        }
        if !bounce {
            // sisimai leaves successful deliveries out unless delivered => 1
            assert!(found("bounces").is_empty(), "{name}: {addr}");
        }
    }
    let count = |mode: &str| records.iter().filter(|r| r[0] == mode).count();
    assert_eq!(
        count("bounces"),
        want_bounces,
        "{name} (sisimai {version}): {records:?}"
    );
    assert_eq!(
        count("all"),
        want_all,
        "{name} (sisimai {version}): {records:?}"
    );
}

#[test]
fn python_email_reads_every_golden_report() {
    for case in cases::all() {
        check_python(&case);
    }
}

#[test]
fn sisimai_reads_every_golden_report() {
    for case in cases::all() {
        check_sisimai(&case);
    }
}
