//! The bounce parser over the whole sisimai corpus (tests/data/sisimai, BSD-2, see its LICENSE
//! and README): agreement with the labels per field, each held at the level reached (a ratchet:
//! raise the floors when the parser improves, never lower them without saying why in
//! `bounce_corpus_disagreements.md`). Also: no message makes the parser panic, in any line-end
//! variant, and none takes long.

use backstop_proto::bounce::{Kind, parse};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Floors, in percent of labelled rows (gold rows only).
const MIN_RECIPIENT: f64 = 97.9;
const MIN_STATUS: f64 = 92.2;
const MIN_REASON: f64 = 91.0;
const MIN_HARD: f64 = 94.7;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai")
}

struct Label {
    file: String,
    index: usize,
    status: String,
    reason: String,
    hard: String,
    recipient: String,
}

fn labels() -> Vec<Label> {
    let text = std::fs::read_to_string(corpus().join("labels.tsv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let (file, index, gold) = (col("file"), col("recipient_index"), col("has_gold"));
    let (status, reason, hard) = (
        col("gold_deliverystatus"),
        col("gold_reason"),
        col("gold_hardbounce"),
    );
    let recipient = col("silver_recipient");
    lines
        .map(|l| l.split('\t').collect::<Vec<&str>>())
        .filter(|f| f.get(gold) == Some(&"1"))
        .map(|f| Label {
            file: f[file].to_string(),
            index: f[index].parse().unwrap(),
            status: f[status].to_string(),
            reason: f[reason].to_string(),
            hard: f[hard].to_string(),
            recipient: f[recipient].to_lowercase(),
        })
        .collect()
}

#[derive(Default)]
struct Score {
    rows: usize,
    recipient: usize,
    status: usize,
    reason: usize,
    hard: usize,
    misses: Vec<String>,
}

impl Score {
    fn pct(&self, n: usize) -> f64 {
        100.0 * n as f64 / self.rows.max(1) as f64
    }
}

#[test]
fn agreement_with_the_labels_holds() {
    let mut s = Score::default();
    let mut per_reason: HashMap<String, (usize, usize)> = HashMap::new();
    for l in labels() {
        let raw = std::fs::read(corpus().join(&l.file)).unwrap();
        let b = parse(&raw);
        s.rows += 1;
        // sisimai lists complaints, auto-replies and deliveries with the failures
        let all: Vec<_> = b.failures.iter().chain(&b.notices).collect();
        let got = all.get(l.index - 1).copied();
        let diag: String = got
            .map(|f| f.diagnostic.chars().take(160).collect())
            .unwrap_or_default();
        let (rcpt, status, reason, hard) = match got {
            Some(f) => (
                f.recipient.to_lowercase(),
                f.status.clone().unwrap_or_default(),
                f.reason.as_str().to_string(),
                if f.hard { "1" } else { "0" }.to_string(),
            ),
            None => Default::default(),
        };
        let ok_r = rcpt == l.recipient;
        s.recipient += usize::from(ok_r);
        s.status += usize::from(status == l.status);
        let ok_reason = reason == l.reason;
        s.reason += usize::from(ok_reason);
        s.hard += usize::from(hard == l.hard);
        let e = per_reason.entry(l.reason.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(ok_reason);
        if !ok_r || !ok_reason || status != l.status {
            s.misses.push(format!(
                "{} #{}: rcpt {rcpt:?}/{:?} status {status:?}/{:?} reason {reason}/{} kind {:?} diag {diag:?}",
                l.file, l.index, l.recipient, l.status, l.reason, b.kind
            ));
        }
    }
    let mut reasons: Vec<_> = per_reason.into_iter().collect();
    reasons.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
    for (r, (n, ok)) in &reasons {
        eprintln!("  reason {r:<16} {ok:>4}/{n:<4}");
    }
    if std::env::var_os("BOUNCE_MISSES").is_some() {
        for m in &s.misses {
            eprintln!("MISS {m}");
        }
    }
    let (r, st, re, h) = (
        s.pct(s.recipient),
        s.pct(s.status),
        s.pct(s.reason),
        s.pct(s.hard),
    );
    eprintln!(
        "{} gold rows: recipient {r:.1}%, status {st:.1}%, reason {re:.1}%, hard/soft {h:.1}%",
        s.rows
    );
    assert!(
        r >= MIN_RECIPIENT,
        "recipient agreement {r:.1}% < {MIN_RECIPIENT}%"
    );
    assert!(
        st >= MIN_STATUS,
        "status agreement {st:.1}% < {MIN_STATUS}%"
    );
    assert!(
        re >= MIN_REASON,
        "reason agreement {re:.1}% < {MIN_REASON}%"
    );
    assert!(h >= MIN_HARD, "hard/soft agreement {h:.1}% < {MIN_HARD}%");
}

fn all_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["bsd", "dos", "mac", "err", "not"] {
        let d = corpus().join("maildir").join(dir);
        for e in std::fs::read_dir(&d).unwrap() {
            out.push(e.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn no_message_panics_or_takes_long_in_any_line_end_variant() {
    // the first bounce builds the phrase tables' matchers once for the process: not its cost
    parse(&std::fs::read(corpus().join("maildir/bsd/lhost-postfix-01.eml")).unwrap());
    let mut slowest = (Duration::ZERO, PathBuf::new());
    let mut bounces = 0;
    for p in all_files() {
        let raw = std::fs::read(&p).unwrap();
        let t = Instant::now();
        let b = parse(&raw);
        let took = t.elapsed();
        bounces += usize::from(b.kind == Kind::Bounce);
        if took > slowest.0 {
            slowest = (took, p.clone());
        }
    }
    // reported, not asserted (timings belong to benchmarks): the slowest file
    eprintln!(
        "slowest: {:?} ({}); {bounces} bounces",
        slowest.0,
        slowest.1.display()
    );
    // the messages that are not bounces are not read as bounces
    for e in std::fs::read_dir(corpus().join("maildir/not")).unwrap() {
        let p = e.unwrap().path();
        let b = parse(&std::fs::read(&p).unwrap());
        assert_ne!(b.kind, Kind::Bounce, "{}", p.display());
    }
}

/// Our own reports (the DSN golden files) read back: every recipient with its status.
#[test]
fn our_own_reports_read_back() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dsn");
    let raw = std::fs::read(dir.join("failure_many.eml")).unwrap();
    let b = parse(&raw);
    assert_eq!(b.kind, Kind::Bounce);
    let text = String::from_utf8_lossy(&raw);
    let finals = text.matches("Final-Recipient:").count();
    assert_eq!(b.failures.len(), finals, "{:#?}", b.failures);
    for f in &b.failures {
        assert!(text.contains(&f.recipient), "{}", f.recipient);
        let status = f.status.as_deref().unwrap();
        assert!(text.contains(&format!("Status: {status}")), "{status}");
    }
    assert!(b.original.message_id.is_some(), "{:?}", b.original);
}
