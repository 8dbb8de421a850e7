//! The reason classifier ([`classify`]) against sisimai's gold labels.
//!
//! `data/bounce/reason_cases.tsv` holds, for every labelled failed recipient of the sisimai
//! corpus, what sisimai 4.25 decoded from the bounce (status, reply code, action, diagnostic)
//! and the gold reason and hard/soft of sisimai 5 (regenerate it with
//! `data/bounce/make_reason_cases.pl`; BSD-2 data, see `data/bounce/LICENSE-sisimai`).
//! Where sisimai 4.25 could not decode a bounce (the 30 DragonFly Mail Agent samples) the row
//! has the gold status and reply code and the text the script cut out of the message; statuses
//! that are sisimai's own reason codes (`X.0.9NN`) are left out, as they give the answer away.
//! The test prints the disagreements, the agreement overall and per class, and fails below the
//! floors (a ratchet: raise them when the rules get better, never lower them without saying
//! why). What stays apart from the labels, and why:
//! - "user unknown" words where the bounce does not tell the SMTP command: sisimai calls some of
//!   them `filtered` (it knows the command was DATA, or trusts the sending software), we call
//!   them `userunknown`; the parser turns them into `filtered` when it sees the command.
//! - identical wording labelled differently in different files (Yahoo's "[TSS04] ... user
//!   complaints" as `rejected` and `badreputation`; qmail's "wasn't able to establish an SMTP
//!   connection" as `expired` and `networkerror`), and labels that come from which provider
//!   or software wrote the bounce, not from its words (NTT docomo, Google Groups, FML).

use std::collections::BTreeMap;

use backstop_proto::bounce::reason::{Reason, classify};
use proptest::prelude::*;

/// Reason agreement floor, percent (reached: 91.2%).
const REASON_FLOOR: f64 = 92.2;
/// Hard/soft agreement floor, percent (reached: 94.5%).
const HARD_FLOOR: f64 = 95.1;

const CASES: &str = include_str!("data/bounce/reason_cases.tsv");

/// One labelled recipient.
struct Case<'a> {
    file: &'a str,
    status: Option<&'a str>,
    reply: Option<u16>,
    action: Option<&'a str>,
    diagnostic: &'a str,
    gold: Reason,
    gold_hard: bool,
}

fn cases() -> Vec<Case<'static>> {
    let mut lines = CASES.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (file, status, reply, action) =
        (col("file"), col("status"), col("replycode"), col("action"));
    let (diagnostic, gold, hard) = (
        col("diagnostic"),
        col("gold_reason"),
        col("gold_hardbounce"),
    );
    let some = |s: &'static str| (!s.is_empty()).then_some(s);
    lines
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), header.len(), "{line}");
            Case {
                file: f[file],
                status: some(f[status]),
                reply: f[reply].parse().ok(),
                action: some(f[action]),
                diagnostic: f[diagnostic],
                gold: Reason::from_name(f[gold]).unwrap_or_else(|| panic!("reason {}", f[gold])),
                gold_hard: f[hard] == "1",
            }
        })
        .collect()
}

fn percent(n: usize, of: usize) -> f64 {
    if of == 0 {
        100.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

#[test]
fn agreement_with_sisimai_labels() {
    let cases = cases();
    assert!(cases.len() > 600, "{} cases", cases.len());
    let (mut right, mut hard_right) = (0, 0);
    let mut per_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut misses = Vec::new();
    for c in &cases {
        let got = classify(c.status, c.reply, c.diagnostic, c.action);
        let entry = per_class.entry(c.gold.as_str()).or_default();
        entry.1 += 1;
        if got == c.gold {
            right += 1;
            entry.0 += 1;
        } else {
            misses.push((c.gold.as_str(), got.as_str(), c));
        }
        if got.is_hard(c.status, c.reply) == c.gold_hard {
            hard_right += 1;
        }
    }
    misses.sort_by_key(|(gold, got, c)| (*gold, *got, c.file));
    for (gold, got, c) in &misses {
        let text: String = c.diagnostic.chars().take(160).collect();
        println!(
            "MISS gold={gold} got={got} {} [{} {:?} {}] {text}",
            c.file,
            c.status.unwrap_or("-"),
            c.reply,
            c.action.unwrap_or("-"),
        );
    }
    println!("\n{:<16} {:>5} {:>5} {:>7}", "class", "right", "of", "%");
    for (class, (ok, of)) in &per_class {
        println!("{class:<16} {ok:>5} {of:>5} {:>6.1}%", percent(*ok, *of));
    }
    let reason = percent(right, cases.len());
    let hard = percent(hard_right, cases.len());
    println!("\nreason agreement {right}/{} = {reason:.1}%", cases.len());
    println!(
        "hard/soft agreement {hard_right}/{} = {hard:.1}%",
        cases.len()
    );
    assert!(
        reason >= REASON_FLOOR,
        "reason agreement {reason:.1}% < {REASON_FLOOR}%"
    );
    assert!(
        hard >= HARD_FLOOR,
        "hard/soft agreement {hard:.1}% < {HARD_FLOOR}%"
    );
}

#[test]
fn names_round_trip() {
    for r in Reason::ALL {
        assert_eq!(Reason::from_name(r.as_str()), Some(*r));
    }
    assert_eq!(Reason::from_name("nonsense"), None);
    assert_eq!(Reason::default(), Reason::Undefined);
}

#[test]
fn clear_cases() {
    let c = |status, reply, text: &str, action| classify(status, reply, text, action);
    let failed = Some("failed");
    // a local delivery program's exit status alone (sendmail's `X-Unix; 71`)
    assert_eq!(c(None, None, "71", failed), Reason::MailerError);
    assert_eq!(c(Some("5.3.0"), None, "255", failed), Reason::SystemError);
    // a multi-line reply joined on one line reads as one sentence
    assert_eq!(
        c(
            Some("4.2.1"),
            Some(450),
            "450-4.2.1 The user you are trying to contact is receiving mail at a rate that \
             450-4.2.1 prevents additional messages from being delivered",
            failed
        ),
        Reason::Speeding
    );
    assert_eq!(
        c(
            Some("5.1.1"),
            Some(550),
            "550 5.1.1 <a@example.org>... User Unknown",
            failed
        ),
        Reason::UserUnknown
    );
    assert_eq!(
        c(Some("5.2.2"), Some(552), "552 5.2.2 Mailbox full", failed),
        Reason::MailboxFull
    );
    assert_eq!(
        c(Some("4.2.2"), Some(452), "Over quota", failed),
        Reason::MailboxFull
    );
    assert_eq!(
        c(
            Some("5.3.4"),
            Some(552),
            "552 5.3.4 Message too large",
            failed
        ),
        Reason::MesgTooBig
    );
    assert_eq!(
        c(Some("5.4.4"), None, "Host or domain name not found", failed),
        Reason::HostUnknown
    );
    assert_eq!(
        c(
            Some("5.7.1"),
            Some(554),
            "554 5.7.1 <x[192.0.2.1]>: Client host rejected: blocked using zen.spamhaus.org",
            failed
        ),
        Reason::Blocked
    );
    assert_eq!(
        c(
            Some("5.7.1"),
            Some(550),
            "550 5.7.1 Message content rejected, UBE, id=1",
            failed
        ),
        Reason::SpamDetected
    );
    assert_eq!(
        c(
            Some("5.1.8"),
            Some(501),
            "501 5.1.8 Sender address rejected",
            failed
        ),
        Reason::Rejected
    );
    assert_eq!(
        c(
            Some("5.7.26"),
            Some(550),
            "Unauthenticated email is not accepted",
            failed
        ),
        Reason::AuthFailure
    );
    assert_eq!(
        c(
            Some("5.7.13"),
            Some(525),
            "525 5.7.13 Disabled recipient address",
            failed
        ),
        Reason::Suspend
    );
    assert_eq!(c(Some("4.4.7"), None, "", failed), Reason::Expired);
    assert_eq!(
        c(None, None, "retry timeout exceeded", Some("delayed")),
        Reason::Expired
    );
    assert_eq!(
        c(Some("2.1.5"), Some(250), "250 2.1.5 Ok", Some("delivered")),
        Reason::Delivered
    );
    assert_eq!(
        c(
            None,
            None,
            "The domain doesn't receive email: returned Null MX",
            failed
        ),
        Reason::NotAccept
    );
    assert_eq!(c(None, None, "", None), Reason::Undefined);
    assert_eq!(
        c(None, None, "something odd happened", None),
        Reason::OnHold
    );
    // providers' own codes
    assert_eq!(
        c(
            Some("5.5.0"),
            Some(550),
            "Le compte du destinataire est bloque. LPN007_426",
            failed
        ),
        Reason::Suspend
    );
    assert_eq!(
        c(
            Some("5.2.0"),
            Some(550),
            "550 5.2.0 Mail rejete. Mail rejected. ofr_506 [506]",
            failed
        ),
        Reason::SpamDetected
    );
    assert_eq!(
        c(
            Some("5.1.0"),
            Some(550),
            "<a@example.com> sender rejected. AUP#CXBL",
            failed
        ),
        Reason::Blocked
    );
    assert_eq!(
        c(
            Some("5.1.0"),
            Some(550),
            "<a@example.com> sender rejected. AUP#In-1310",
            failed
        ),
        Reason::TooManyConn
    );
    // not a code: a host name that starts like one
    assert_eq!(
        c(
            Some("4.7.0"),
            Some(421),
            "421 4.7.0 lpn-prd-vrin012 Error: too many errors",
            failed
        ),
        Reason::SecurityError
    );
    // case and line breaks do not matter
    assert_eq!(
        c(
            Some("5.0.0"),
            Some(554),
            "554 RELAY\r\n  ACCESS   DENIED",
            failed
        ),
        Reason::NoRelaying
    );
}

#[test]
fn hard_or_soft() {
    assert!(Reason::UserUnknown.is_hard(Some("5.1.1"), Some(550)));
    assert!(Reason::UserUnknown.is_hard(Some("4.1.1"), Some(450)));
    assert!(Reason::HostUnknown.is_hard(None, None));
    assert!(Reason::HasMoved.is_hard(Some("5.1.6"), None));
    assert!(Reason::NotAccept.is_hard(Some("5.1.10"), None));
    assert!(Reason::NotAccept.is_hard(None, None));
    assert!(!Reason::NotAccept.is_hard(Some("4.0.0"), None));
    assert!(!Reason::NotAccept.is_hard(None, Some(421)));
    for soft in [
        Reason::MailboxFull,
        Reason::Blocked,
        Reason::Filtered,
        Reason::Undefined,
    ] {
        assert!(!soft.is_hard(Some("5.0.0"), Some(550)), "{soft:?}");
    }
}

#[test]
fn long_input_is_cheap() {
    // no phrase completes, but many start: still one pass per phrase
    let text = "mailbox over user blocked spam ".repeat(20_000);
    let started = std::time::Instant::now();
    let r = classify(Some("5.0.0"), Some(550), &text, Some("failed"));
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    assert_ne!(r, Reason::Delivered);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn classify_never_panics(
        status in proptest::option::of("\\PC{0,12}"),
        reply in proptest::option::of(any::<u16>()),
        diagnostic in "\\PC{0,300}",
        action in proptest::option::of("\\PC{0,10}"),
    ) {
        let r = classify(status.as_deref(), reply, &diagnostic, action.as_deref());
        let _ = r.is_hard(status.as_deref(), reply);
        prop_assert!(Reason::ALL.contains(&r));
    }

    #[test]
    fn classify_never_panics_on_status_like_input(
        class in 0u8..10,
        subject in "[0-9]{0,3}",
        detail in "[0-9.]{0,5}",
        diagnostic in "[ -~…]{0,200}",
    ) {
        let status = format!("{class}.{subject}.{detail}");
        let r = classify(Some(&status), None, &diagnostic, Some("failed"));
        prop_assert!(Reason::ALL.contains(&r));
    }
}
