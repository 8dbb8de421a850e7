//! The bounce parser against every other project's corpus (tests/data/*, each with its licence
//! and README; the common `labels.tsv` columns are described in `data/CORPORA.md`): agreement
//! per corpus and field, each held at the level reached (a ratchet: raise a floor when the
//! parser improves; lowering one needs a reason in `bounce_corpus_disagreements.md`).
//!
//! Fields:
//! - recipients: for every file with labelled recipients, our set of failed recipients (or, for
//!   an auto-reply or a complaint, of the addresses it is about) equals the set each project
//!   names, exactly;
//! - status: a row's RFC 3463 status is our status for its recipient (a row without one: any
//!   of our failures carries it), or means the same ([`same_status`]);
//! - reason: a row's reason, in its project's words, maps to ours ([`reason_fits`]);
//! - bounce: a row that says bounce / not a bounce agrees with our kind ([`bounce_fits`]);
//! - false bounces: messages that some label calls not a bounce and we read failures from:
//!   none, in every corpus.
//!
//! A label we disagree with on purpose is set aside (not scored) when
//! `bounce_corpus_disagreements.md` lists it in its table (corpus, file, field, why): that file
//! is the one place where such choices are written down.
//!
//! `BOUNCE_MISSES=1` prints every disagreement.

use backstop_proto::bounce::reason::status_reason;
use backstop_proto::bounce::{Bounce, Kind, parse, parse_text};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A corpus's floors in percent: recipients, status, reason, bounce. `None`: nothing labelled.
type Floors = (
    &'static str,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

const FLOORS: &[Floors] = &[
    ("baunsu", None, None, Some(100.0), Some(100.0)),
    (
        "bounce_email",
        Some(100.0),
        Some(51.8),
        Some(65.3),
        Some(96.6),
    ),
    (
        "crisp-email-bounce-parser",
        Some(100.0),
        Some(94.4),
        Some(70.9),
        Some(100.0),
    ),
    (
        "cws-mailbouncehandler",
        None,
        Some(100.0),
        None,
        Some(100.0),
    ),
    ("flanker", None, Some(100.0), None, Some(100.0)),
    (
        "mailbouncedetector",
        Some(100.0),
        Some(60.0),
        None,
        Some(100.0),
    ),
    (
        "mediawiki-bouncehandler",
        Some(100.0),
        Some(100.0),
        None,
        None,
    ),
    (
        "php-bounce-handler",
        Some(100.0),
        Some(67.1),
        Some(60.0),
        Some(96.2),
    ),
    ("postfix37", Some(100.0), Some(100.0), None, Some(100.0)),
    ("ruby-mail-dsn", Some(100.0), Some(100.0), None, Some(100.0)),
    ("tmail_bouncer", Some(100.0), None, Some(100.0), Some(100.0)),
];

#[derive(Debug)]
struct Row {
    file: String,
    index: Option<usize>,
    recipient: String,
    status: String,
    reason: String,
    is_bounce: Option<bool>,
    source: String,
}

/// The (corpus, file, field) rows of the table in `bounce_corpus_disagreements.md`.
fn set_aside() -> BTreeSet<(String, String, String)> {
    let md = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bounce_corpus_disagreements.md");
    let text = std::fs::read_to_string(md).unwrap();
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .strip_prefix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let [corpus, file, field, why, ..] = cells[..] else {
                return None;
            };
            let known = ["recipients", "status", "reason", "bounce"].contains(&field);
            (known && !why.is_empty()).then(|| {
                let unquote = |c: &str| c.trim_matches('`').to_string();
                (unquote(corpus), unquote(file), field.to_string())
            })
        })
        .collect()
}

fn rows(corpus: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(data().join(corpus).join("labels.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("").trim().to_string();
            Row {
                file: get(0),
                index: get(1).parse().ok(),
                recipient: get(2).to_lowercase(),
                status: get(3),
                reason: get(4),
                is_bounce: match get(5).as_str() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                },
                source: get(6),
            }
        })
        .collect()
}

/// The Crisp corpus is notification texts without headers: read by the text reader.
fn read(corpus: &str, file: &str) -> Bounce {
    let raw = std::fs::read(data().join(corpus).join(file)).unwrap();
    if corpus == "crisp-email-bounce-parser" {
        parse_text(&String::from_utf8_lossy(&raw))
    } else {
        parse(&raw)
    }
}

/// Whether our status agrees with a label's. Where the bounce gives no status we write one of
/// sisimai's internal codes (`5.0.911`: user unknown, class 5); it agrees with a standard code
/// of the same class that names the same reason (`5.1.1`), which is what tools that invent a
/// standard code instead write.
fn same_status(ours: &str, label: &str) -> bool {
    let internal = ours
        .get(4..)
        .and_then(|d| d.parse::<u16>().ok())
        .is_some_and(|d| d >= 900 && ours.get(1..4) == Some(".0."));
    ours == label
        || internal
            && ours.get(..1) == label.get(..1)
            && status_reason(label).is_some()
            && status_reason(label) == status_reason(ours)
}

/// Whether a label's reason (in its project's vocabulary) fits ours; `None`: the word says
/// nothing we classify (a generic "bounce", "unrecognized").
fn reason_fits(label: &str, b: &Bounce, ours: &str) -> Option<bool> {
    let any = |names: &[&str]| Some(names.contains(&ours));
    match label {
        // sisimai's own words (zoonru/PHP-Bounce-Handler uses them)
        "userunknown" | "filtered" | "notaccept" | "mailboxfull" => any(&[label]),
        // Crisp
        "no_such_recipient" => any(&["userunknown"]),
        "mailbox_full" | "mailbox_over_quota" => any(&["mailboxfull"]),
        "server_unknown" => any(&["hostunknown"]),
        "server_timeout" => any(&["expired", "networkerror"]),
        "spam_content" => any(&["spamdetected", "contenterror", "policyviolation"]),
        "ip_blocked_spam" | "reputation" => any(&["blocked", "badreputation"]),
        "authentication_failure" => any(&["authfailure", "securityerror"]),
        "recipient_disabled_or_recipient_rate_limited" => any(&["suspend", "speeding"]),
        "action_not_taken_mailbox_rate_limited" => any(&["speeding", "toomanyconn"]),
        // voku/PHPMailer-BMH
        "unknown" => any(&["userunknown"]),
        "full" => any(&["mailboxfull"]),
        "dns_unknown" => any(&["hostunknown"]),
        "dns_loop" => any(&["networkerror", "systemerror"]),
        "delayed" => Some(!b.failures.iter().any(|f| f.hard)),
        "antispam" => any(&[
            "spamdetected",
            "blocked",
            "badreputation",
            "policyviolation",
        ]),
        "content_reject" => any(&["contenterror", "spamdetected", "policyviolation"]),
        // tmail_bouncer
        "BoxFullBouncer" => any(&["mailboxfull"]),
        "OutOfOfficeBouncer" => Some(b.kind == Kind::AutoReply),
        "NoBouncer" => Some(b.kind != Kind::Bounce),
        // baunsu: a permanent failure ("hard" against "soft": the status's class)
        "hard" => Some(
            b.kind == Kind::Bounce
                && (b.failures.iter())
                    .any(|f| f.status.as_deref().is_some_and(|s| s.starts_with('5'))),
        ),
        _ => None,
    }
}

/// Whether our reading agrees with a label saying bounce (`true`) or not. A delivery report
/// whose every recipient has `Action: delayed` is a bounce to us (delayed, not failed) and not
/// to a label that means "bounced for good" (the mail gem's `bounced?`): a label "not a
/// bounce" fits it.
fn bounce_fits(is_bounce: bool, b: &Bounce) -> bool {
    let bounce = b.kind == Kind::Bounce && !b.failures.is_empty();
    if is_bounce {
        bounce
    } else {
        !bounce || only_delayed(b)
    }
}

fn only_delayed(b: &Bounce) -> bool {
    b.failures
        .iter()
        .all(|f| f.action.as_deref() == Some("delayed"))
}

#[derive(Default)]
struct Tally {
    n: usize,
    ok: usize,
}

impl Tally {
    fn add(&mut self, ok: bool) {
        self.n += 1;
        self.ok += usize::from(ok);
    }
    fn pct(&self) -> Option<f64> {
        (self.n > 0).then(|| 100.0 * self.ok as f64 / self.n as f64)
    }
}

#[derive(Default)]
struct Score {
    recipients: Tally,
    status: Tally,
    reason: Tally,
    bounce: Tally,
    false_bounces: Vec<String>,
    misses: Vec<String>,
}

fn score(corpus: &str, aside: &BTreeSet<(String, String, String)>) -> Score {
    let rows = rows(corpus);
    let mut s = Score::default();
    let mut by_file: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by_file.entry(&r.file).or_default().push(r);
    }
    for (file, rs) in by_file {
        let b = read(corpus, file);
        // failed recipients, or whom an auto-reply or a complaint is about (a label's
        // "recipient" of an out-of-office message is who replied)
        let ours: Vec<String> = (b.failures.iter().chain(&b.notices))
            .map(|f| f.recipient.to_lowercase())
            .collect();
        let on_purpose = |field: &str| aside.contains(&(corpus.into(), file.into(), field.into()));
        let mut miss = |what: &str, detail: String| {
            s.misses.push(format!("{corpus}/{file}: {what}: {detail}"));
        };
        // each project's set on its own (two projects may name different addresses for the
        // same failure: the alias written to and the mailbox that failed)
        let mut wanted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for r in rs.iter().filter(|r| !r.recipient.is_empty()) {
            wanted.entry(&r.source).or_default().insert(&r.recipient);
        }
        let labelled_bounce = rs.iter().all(|r| r.is_bounce != Some(false));
        if !wanted.is_empty() && labelled_bounce && !on_purpose("recipients") {
            let got: BTreeSet<&str> = ours.iter().map(String::as_str).collect();
            let ok = wanted.values().all(|w| *w == got);
            s.recipients.add(ok);
            if !ok {
                miss(
                    "recipients",
                    format!("ours {got:?} labels {wanted:?} kind {:?}", b.kind),
                );
            }
        }
        for r in &rs {
            if !r.status.is_empty() && !on_purpose("status") {
                let ours_for_row: Vec<&str> = b
                    .failures
                    .iter()
                    .enumerate()
                    .filter(|(i, f)| {
                        if !r.recipient.is_empty() {
                            f.recipient.eq_ignore_ascii_case(&r.recipient)
                        } else {
                            r.index.is_none_or(|n| n == i + 1)
                        }
                    })
                    .filter_map(|(_, f)| f.status.as_deref())
                    .collect();
                let ok = ours_for_row.iter().any(|o| same_status(o, &r.status));
                s.status.add(ok);
                if !ok {
                    miss(
                        "status",
                        format!("ours {ours_for_row:?} label {} ({})", r.status, r.source),
                    );
                }
            }
            if !r.reason.is_empty() && !on_purpose("reason") {
                // the row's recipient, else the first failure
                let f = (b.failures.iter())
                    .find(|f| f.recipient.eq_ignore_ascii_case(&r.recipient))
                    .or(b.failures.first());
                let ours = f.map_or("none", |f| f.reason.as_str());
                let said: String = f.map_or("", |f| &f.diagnostic).chars().take(200).collect();
                if let Some(ok) = reason_fits(&r.reason, &b, ours) {
                    s.reason.add(ok);
                    if !ok {
                        miss(
                            "reason",
                            format!("ours {ours} label {} ({}): {said}", r.reason, r.source),
                        );
                    }
                }
            }
            if let Some(is) = r.is_bounce.filter(|_| !on_purpose("bounce")) {
                let ok = bounce_fits(is, &b);
                s.bounce.add(ok);
                if !ok {
                    miss(
                        "bounce",
                        format!(
                            "ours {:?} with {} failures, label {is} ({})",
                            b.kind,
                            ours.len(),
                            r.source
                        ),
                    );
                }
            }
        }
        if rs.iter().any(|r| r.is_bounce == Some(false))
            && !bounce_fits(false, &b)
            && !on_purpose("bounce")
        {
            s.false_bounces
                .push(format!("{file} ({:?}: {ours:?})", b.kind));
        }
    }
    s
}

#[test]
fn agreement_with_every_corpus_holds() {
    let show = std::env::var_os("BOUNCE_MISSES").is_some();
    let mut failed = Vec::new();
    let fmt = |t: &Tally| match t.pct() {
        Some(p) => format!("{:>5.1}% ({}/{})", p, t.ok, t.n),
        None => format!("{:>14}", "-"),
    };
    eprintln!(
        "{:<28} {:>16} {:>16} {:>16} {:>16}",
        "corpus", "recipients", "status", "reason", "bounce"
    );
    let aside = set_aside();
    for (corpus, fr, fs, fre, fb) in FLOORS {
        let s = score(corpus, &aside);
        eprintln!(
            "{corpus:<28} {:>16} {:>16} {:>16} {:>16}",
            fmt(&s.recipients),
            fmt(&s.status),
            fmt(&s.reason),
            fmt(&s.bounce)
        );
        if show {
            for m in &s.misses {
                eprintln!("  MISS {m}");
            }
        }
        for (name, tally, floor) in [
            ("recipients", &s.recipients, fr),
            ("status", &s.status, fs),
            ("reason", &s.reason, fre),
            ("bounce", &s.bounce, fb),
        ] {
            match (tally.pct(), floor) {
                (Some(p), Some(f)) if p < *f => {
                    failed.push(format!("{corpus} {name} {p:.1}% < {f}%"))
                }
                (Some(_), None) => failed.push(format!("{corpus} {name}: labelled, no floor")),
                (None, Some(_)) => failed.push(format!("{corpus} {name}: floor, nothing labelled")),
                _ => {}
            }
        }
        for fb in &s.false_bounces {
            failed.push(format!("{corpus}: not a bounce, read as one: {fb}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Real Postfix 3.7 notices (data/postfix37, generated on loopback) read as an administrator
/// expects: a remote `550` without an enhanced code (Postfix writes `dsn=5.0.0`) is an unknown
/// user, hard and permanent with its reply code; the `error:` transport's refusal is a domain
/// that takes no mail; a delay warning is a temporary failure; a success report is not one.
#[test]
fn postfix_notices_read_as_an_administrator_expects() {
    let read = |name: &str| read("postfix37", &format!("messages/{name}.eml"));
    let b = read("550-no-enhanced-code");
    assert_eq!(b.kind, Kind::Bounce);
    let f = &b.failures[0];
    assert_eq!(f.recipient, "nosuch@remote.test");
    assert_eq!(f.status.as_deref(), Some("5.0.0"));
    assert_eq!(f.reply_code, Some(550));
    assert_eq!(f.reason.as_str(), "userunknown");
    assert!(f.hard && f.permanent, "{f:?}");

    let f = &read("error-transport").failures[0];
    assert_eq!(f.reason.as_str(), "notaccept");
    assert_eq!(f.reply_code, None);
    assert!(f.hard && f.permanent, "{f:?}");

    let b = read("451-4.7.1-greylisted-delayed");
    assert_eq!(b.kind, Kind::Bounce);
    let f = &b.failures[0];
    assert_eq!(f.action.as_deref(), Some("delayed"));
    assert!(!f.hard && !f.permanent, "{f:?}");

    let b = read("success-relayed");
    assert_eq!(b.kind, Kind::Delivery);
    assert!(b.failures.is_empty());
    assert_eq!(b.notices[0].reason.as_str(), "delivered");

    // one success and one failure in one report: the failure only
    let b = read("success-and-failure-bounce");
    assert_eq!(b.kind, Kind::Bounce);
    assert_eq!(b.failures.len(), 1, "{:?}", b.failures);
}
