use super::report::{Submitter, message};
use super::*;
use mail_auth::report::tlsrpt::TlsReport;

const T0: u64 = 1_796_256_000; // 2026-12-03T00:00:00Z

fn sts(domain: &str) -> PolicyDetails {
    let mut p = PolicyDetails::new(PolicyType::Sts, domain);
    p.policy_string = vec!["version: STSv1".into(), "mode: enforce".into()];
    p.mx_host = vec!["mx.partner.test".into()];
    p
}

fn no_tls(host: &str) -> Outcome {
    Outcome::Failure(failure(
        ResultType::StartTlsNotSupported,
        host,
        Some("127.0.0.1".parse().unwrap()),
        "STARTTLS not offered",
    ))
}

#[test]
fn sessions_are_counted_by_domain_and_policy_and_like_failures_together() {
    let l = Ledger::in_memory(T0 + 10);
    let p = sts("partner.test");
    let none = PolicyDetails::new(PolicyType::NoPolicyFound, "plain.test");
    l.record(T0 + 20, "partner.test", &p, Outcome::Success);
    l.record(T0 + 21, "partner.test", &p, no_tls("mx.partner.test"));
    l.record(T0 + 22, "partner.test", &p, no_tls("mx.partner.test"));
    l.record(T0 + 23, "partner.test", &p, no_tls("mx2.partner.test"));
    l.record(T0 + 24, "plain.test", &none, Outcome::Success);
    let cur = l.current();
    assert_eq!(cur.start, T0);
    let policies = &cur.domains["partner.test"];
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].summary.total_success, 1);
    assert_eq!(policies[0].summary.total_failure, 3);
    let d = &policies[0].failure_details;
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].failed_session_count, 2);
    assert_eq!(
        d[1].receiving_mx_hostname.as_deref(),
        Some("mx2.partner.test")
    );
    let f = cur.failures(10);
    assert_eq!(f.len(), 1, "plain.test had no failure");
    assert_eq!(f[0].domain, "partner.test");
    assert_eq!((f[0].failed, f[0].succeeded), (3, 1));
    assert_eq!(
        f[0].why,
        "starttls-not-supported at mx.partner.test [127.0.0.1]: STARTTLS not offered"
    );
}

#[test]
fn a_period_closes_at_the_end_of_its_utc_day_and_is_forgotten_once_reported() {
    let l = Ledger::in_memory(T0 + 10);
    l.record(
        T0 + 20,
        "partner.test",
        &sts("partner.test"),
        Outcome::Success,
    );
    l.roll(T0 + DAY - 1);
    assert!(l.closed().is_empty());
    // the first session of the next day closes yesterday's period
    l.record(
        T0 + DAY + 5,
        "other.test",
        &sts("other.test"),
        Outcome::Success,
    );
    let closed = l.closed();
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].start, closed[0].end), (T0, Some(T0 + DAY)));
    assert!(closed[0].domains.contains_key("partner.test"));
    assert_eq!(l.current().start, T0 + DAY);
    assert!(l.current().domains.contains_key("other.test"));
    l.done(T0, "partner.test");
    assert!(l.closed().is_empty(), "an empty period goes");
}

#[test]
fn close_now_ends_the_period_at_once_and_idle_days_leave_nothing() {
    let l = Ledger::in_memory(T0);
    l.roll(T0 + 5 * DAY);
    assert!(l.closed().is_empty(), "nothing counted, nothing to report");
    assert_eq!(l.current().start, T0 + 5 * DAY);
    l.record(
        T0 + 5 * DAY + 60,
        "partner.test",
        &sts("partner.test"),
        Outcome::Success,
    );
    l.close_now(T0 + 5 * DAY + 100);
    let closed = l.closed();
    assert_eq!(closed[0].end, Some(T0 + 5 * DAY + 100));
    assert_eq!(l.current().start, T0 + 5 * DAY + 100);
    assert_eq!(l.expire(T0 + 5 * DAY + 100 + KEEP - 1), 0);
    assert_eq!(l.expire(T0 + 5 * DAY + 100 + KEEP), 1);
    assert!(l.closed().is_empty());
}

#[test]
fn the_ledger_survives_a_restart_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls-reports.json");
    let l = Ledger::open(&path, T0).unwrap();
    l.record(
        T0 + 1,
        "partner.test",
        &sts("partner.test"),
        no_tls("mx.partner.test"),
    );
    l.flush().unwrap();
    let again = Ledger::open(&path, T0 + 2).unwrap();
    assert_eq!(again.current(), l.current());
    // opened on a later day: the old period is closed and waits to be reported
    let later = Ledger::open(&path, T0 + DAY + 1).unwrap();
    assert_eq!(later.closed().len(), 1);
    std::fs::write(&path, "not json").unwrap();
    let e = Ledger::open(&path, T0).err().unwrap().to_string();
    assert!(e.contains("not a TLS report ledger"), "{e}");
}

#[test]
fn failure_details_are_bounded_but_every_failure_counts() {
    let l = Ledger::in_memory(T0);
    let p = sts("partner.test");
    for i in 0..(MAX_DETAILS + 10) {
        l.record(
            T0,
            "partner.test",
            &p,
            no_tls(&format!("mx{i}.partner.test")),
        );
    }
    let cur = l.current();
    assert_eq!(
        cur.domains["partner.test"][0].failure_details.len(),
        MAX_DETAILS
    );
    assert_eq!(
        cur.domains["partner.test"][0].summary.total_failure as usize,
        MAX_DETAILS + 10
    );
}

#[test]
fn the_report_message_carries_the_rfc_8460_fields_and_json() {
    let l = Ledger::in_memory(T0);
    let p = sts("partner.test");
    l.record(T0 + 1, "partner.test", &p, Outcome::Success);
    l.record(T0 + 2, "partner.test", &p, no_tls("mx.partner.test"));
    l.roll(T0 + DAY);
    let period = &l.closed()[0];
    let s = Submitter {
        organization: "example.test",
        from: "postmaster@example.test",
        domain: "example.test",
    };
    let to = ["tlsrpt@partner.test".to_string()];
    let m = message(
        &s,
        (period, "partner.test"),
        &to,
        ("r1@gw", "m1@gw"),
        T0 + DAY + 60,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&m)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    for want in [
        "From: <postmaster@example.test>",
        "To: <tlsrpt@partner.test>",
        "TLS-Report-Domain: partner.test",
        "TLS-Report-Submitter: example.test",
        "Subject: Report Domain: partner.test Submitter: example.test Report-ID: <r1@gw>",
        "report-type=\"tlsrpt\"",
        "application/tlsrpt+gzip",
        "example.test!partner.test!1796256000!1796342400.json.gz",
        "Message-ID: <m1@gw>",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    let parsed = TlsReport::parse_rfc5322(&m, 1 << 20).unwrap();
    assert_eq!(parsed.report_id, "r1@gw");
    assert_eq!(parsed.policies, period.domains["partner.test"]);
    assert_eq!(parsed.date_range.start_datetime.to_timestamp(), T0 as i64);
    assert_eq!(
        parsed.date_range.end_datetime.to_timestamp(),
        (T0 + DAY) as i64
    );
}
