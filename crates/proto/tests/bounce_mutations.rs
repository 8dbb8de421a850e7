//! The bounce parser's failed recipients survive what mail systems do to a message in transit:
//! any mutation of a corpus bounce (header fields dropped, MIME parts reordered, line ends
//! changed, prose re-wrapped at 72 columns) keeps the set of failed recipients (lower-cased
//! `failures[].recipient`) that the unmutated message yields.
//!
//! Seeds: every bounce of the corpora in `tests/data` whose unmutated reading names at least
//! one failed recipient: sisimai's `maildir/bsd/*.eml`, and every file under another corpus's
//! `messages/` that no label calls "not a bounce" (`is_bounce` 0). The Crisp corpus holds
//! notification texts without headers: it is read with `parse_text` (as `bounce_corpora.rs`
//! reads it), and only the mutations of the text (line ends, re-wrapping) apply to it.
//!
//! - `mutations_keep_failed_recipients`: proptest picks a seed and a combination of mutations
//!   (`PROPTEST_CASES`, default 1024, a few seconds in debug; no regression file is written);
//! - `each_mutation_keeps_failed_recipients_of_every_seed`: each single mutation over every
//!   seed, the failures counted per mutation (`BOUNCE_MUTATIONS=1` prints every failure, else
//!   the first few of each).
//!
//! Each mutation is something a relay, a mailing list, a mail store or a client may do to a
//! message without changing what it says, so none may change whom a bounce names.

use backstop_proto::bounce::{Bounce, parse, parse_text};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Seeds

/// A corpus bounce and what its unmutated reading says.
struct Seed {
    /// Corpus-relative path, for messages.
    name: String,
    raw: Vec<u8>,
    /// A notification text without headers (the Crisp corpus): read with `parse_text`.
    headerless: bool,
    /// The failed recipients of the unmutated message (non-empty).
    failed: BTreeSet<String>,
}

impl Seed {
    fn read(&self, raw: &[u8]) -> Bounce {
        if self.headerless {
            parse_text(&String::from_utf8_lossy(raw))
        } else {
            parse(raw)
        }
    }
}

/// The set the property is about: failed recipients, lower-cased.
fn failed(b: &Bounce) -> BTreeSet<String> {
    b.failures
        .iter()
        .map(|f| f.recipient.to_lowercase())
        .collect()
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Every file under `dir`, sorted, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The seeds, read once per test process.
fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let data = data();
        // (name, path, headerless)
        let mut candidates: Vec<(String, PathBuf, bool)> = Vec::new();
        for p in files_under(&data.join("sisimai/maildir/bsd")) {
            if p.extension().is_some_and(|e| e == "eml") {
                let name = format!(
                    "sisimai/{}",
                    p.strip_prefix(data.join("sisimai")).unwrap().display()
                );
                candidates.push((name, p, false));
            }
        }
        let mut corpora: Vec<PathBuf> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("labels.tsv").is_file() && p.join("messages").is_dir())
            .collect();
        corpora.sort();
        for corpus in corpora {
            let cname = corpus.file_name().unwrap().to_string_lossy().into_owned();
            let labels = std::fs::read_to_string(corpus.join("labels.tsv")).unwrap();
            let not_bounces: BTreeSet<&str> = labels
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    (f.get(5).map(|c| c.trim()) == Some("0")).then_some(f[0])
                })
                .collect();
            for p in files_under(&corpus.join("messages")) {
                let rel = p
                    .strip_prefix(&corpus)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if !not_bounces.contains(rel.as_str()) {
                    let headerless = cname == "crisp-email-bounce-parser";
                    candidates.push((format!("{cname}/{rel}"), p, headerless));
                }
            }
        }
        candidates
            .into_iter()
            .filter_map(|(name, path, headerless)| {
                let mut seed = Seed {
                    name,
                    raw: std::fs::read(path).unwrap(),
                    headerless,
                    failed: BTreeSet::new(),
                };
                seed.failed = failed(&seed.read(&seed.raw));
                (!seed.failed.is_empty()).then_some(seed)
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Lines and MIME structure (just enough to mutate a message the way a relay would)

/// One line of a message: its content `start..end`, and `next`, where the line after its line
/// end (CRLF, LF or a bare CR) starts.
#[derive(Clone, Copy, Debug)]
struct Line {
    start: usize,
    end: usize,
    next: usize,
}

/// The lines of `raw[range]`, each line end CRLF, LF or a bare CR.
fn lines(raw: &[u8], range: Range<usize>) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = range.start;
    let mut i = range.start;
    while i < range.end {
        match raw[i] {
            b'\n' => {
                out.push(Line {
                    start,
                    end: i,
                    next: i + 1,
                });
                i += 1;
                start = i;
            }
            b'\r' => {
                let next = if i + 1 < range.end && raw[i + 1] == b'\n' {
                    i + 2
                } else {
                    i + 1
                };
                out.push(Line {
                    start,
                    end: i,
                    next,
                });
                i = next;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < range.end {
        out.push(Line {
            start,
            end: range.end,
            next: range.end,
        });
    }
    out
}

/// A header field: lower-cased name, unfolded value, and its bytes `start..end` (all its lines
/// with their line ends).
#[derive(Debug)]
struct Field {
    name: String,
    value: String,
    start: usize,
    end: usize,
}

/// A MIME entity (a whole message or one part): its header fields and its body.
#[derive(Debug)]
struct Entity {
    fields: Vec<Field>,
    body: Range<usize>,
}

/// Reads the entity in `raw[range]`: header fields up to the first empty line, the body after.
fn entity(raw: &[u8], range: Range<usize>) -> Entity {
    let mut fields: Vec<Field> = Vec::new();
    // whether the last line was part of a field (a folded line continues it)
    let mut in_field = false;
    for l in lines(raw, range.clone()) {
        let content = &raw[l.start..l.end];
        if content.is_empty() {
            return Entity {
                fields,
                body: l.next..range.end,
            };
        }
        if content[0] == b' ' || content[0] == b'\t' {
            if in_field && let Some(f) = fields.last_mut() {
                f.value.push(' ');
                f.value.push_str(String::from_utf8_lossy(content).trim());
                f.end = l.next;
            }
            continue;
        }
        let name_end = content.iter().position(|&b| b == b':');
        in_field = match name_end {
            Some(n) if n > 0 && content[..n].iter().all(|b| b.is_ascii_graphic()) => {
                fields.push(Field {
                    name: String::from_utf8_lossy(&content[..n]).to_ascii_lowercase(),
                    value: String::from_utf8_lossy(&content[n + 1..])
                        .trim()
                        .to_string(),
                    start: l.start,
                    end: l.next,
                });
                true
            }
            // not a field (an mbox `From ` line): kept as it is
            _ => false,
        };
    }
    Entity {
        fields,
        body: range.end..range.end,
    }
}

impl Entity {
    fn field(&self, name: &str) -> Option<&str> {
        (self.fields.iter())
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }

    /// The lower-cased `type/subtype` of its Content-Type, if it has one.
    fn mime_type(&self) -> Option<String> {
        let v = self.field("content-type")?;
        let t = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Some(t)
    }

    /// The boundary of a multipart entity.
    fn boundary(&self) -> Option<String> {
        let v = self.field("content-type")?;
        let lower = v.to_ascii_lowercase();
        let mut from = 0;
        while let Some(at) = lower[from..].find("boundary") {
            let at = from + at;
            from = at + "boundary".len();
            let before_ok = lower[..at].trim_end().ends_with(';');
            let rest = v[from..].trim_start();
            let Some(rest) = rest.strip_prefix('=').filter(|_| before_ok) else {
                continue;
            };
            let rest = rest.trim_start();
            let b = match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or(""),
                None => rest.split([';', ' ', '\t']).next().unwrap_or(""),
            };
            return (!b.is_empty()).then(|| b.to_string());
        }
        None
    }

    /// The parts of a multipart entity: for each, `start..end` from after its delimiter line to
    /// the start of the next delimiter line (its header, body and the line end the delimiter
    /// after it takes). Only parts closed by a following delimiter line count: what follows
    /// the close delimiter (the epilogue), or a last part that none closes, is no part.
    fn parts(&self, raw: &[u8]) -> Vec<Range<usize>> {
        let (Some(t), Some(boundary)) = (self.mime_type(), self.boundary()) else {
            return Vec::new();
        };
        if !t.starts_with("multipart/") {
            return Vec::new();
        }
        let dash = format!("--{boundary}");
        let blank = |s: &[u8]| s.iter().all(|&b| b == b' ' || b == b'\t');
        let mut parts = Vec::new();
        let mut open: Option<usize> = None;
        for l in lines(raw, self.body.clone()) {
            let Some(rest) = raw[l.start..l.end].strip_prefix(dash.as_bytes()) else {
                continue;
            };
            let close = match rest.strip_prefix(b"--") {
                Some(r) if blank(r) => true,
                _ if blank(rest) => false,
                _ => continue,
            };
            if let Some(s) = open {
                parts.push(s..l.start);
            }
            if close {
                break;
            }
            open = Some(l.next);
        }
        parts
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations: each a pure function on the message's bytes

/// Line ends, LF -> CRLF: every LF not already after a CR becomes CRLF.
fn lf_to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Line ends, CRLF -> LF: every CRLF becomes LF.
fn crlf_to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        if !(b == b'\r' && raw.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// Line ends, all -> CR only (old Mac): every CRLF and every LF becomes a bare CR.
fn all_to_cr(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {}
            b'\n' => out.push(b'\r'),
            _ => out.push(b),
        }
    }
    out
}

/// Top-level header fields no reading of a bounce depends on, which relays, list servers and
/// mail stores add and strip: trace and authentication fields, signatures, ids and dates,
/// list and thread fields, and `X-` fields other than the few that carry a report's meaning
/// (`X-Failed-Recipients:` names the failed recipients; `X-Autoreply:`/`X-Autorespond:` mark
/// an auto-reply). Never Content-*, MIME-Version, From, To, Subject or anything else.
fn droppable(name: &str) -> bool {
    const PROTECTED: &[&str] = &["x-failed-recipients", "x-autoreply", "x-autorespond"];
    const NAMES: &[&str] = &[
        "received",
        "received-spf",
        "return-path",
        "delivered-to",
        "x-original-to",
        "authentication-results",
        "dkim-signature",
        "domainkey-signature",
        "message-id",
        "date",
        "references",
        "in-reply-to",
    ];
    const PREFIXES: &[&str] = &["x-", "list-", "thread-", "arc-"];
    !PROTECTED.contains(&name)
        && (NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// The droppable top-level header fields of `raw`, in order.
fn droppable_fields(raw: &[u8]) -> Vec<Field> {
    entity(raw, 0..raw.len())
        .fields
        .into_iter()
        .filter(|f| droppable(&f.name))
        .collect()
}

/// Header fields dropped: the `k`-th droppable top-level field (see [`droppable`]) goes when
/// bit `k % 64` of `mask` is set. Also returns the names of the fields dropped.
fn drop_fields(raw: &[u8], mask: u64) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = Vec::new();
    let mut at = 0;
    for (k, f) in droppable_fields(raw).into_iter().enumerate() {
        if mask & (1 << (k % 64)) != 0 {
            out.extend_from_slice(&raw[at..f.start]);
            at = f.end;
            names.push(f.name);
        }
    }
    out.extend_from_slice(&raw[at..]);
    (out, names)
}

/// The parts of the top-level multipart (none when the message is not `multipart/*` or its
/// boundary is never found).
fn top_parts(raw: &[u8]) -> Vec<Range<usize>> {
    entity(raw, 0..raw.len()).parts(raw)
}

/// MIME parts reordered: parts `i` and `j` of the top-level multipart swap places; the
/// preamble, the epilogue and every delimiter line stay where they are. `None` when there are
/// no such parts.
fn swap_parts(raw: &[u8], i: usize, j: usize) -> Option<Vec<u8>> {
    let parts = top_parts(raw);
    if i == j || i >= parts.len() || j >= parts.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.swap(i, j);
    let mut out = raw[..parts[0].start].to_vec();
    for (k, &p) in order.iter().enumerate() {
        out.extend_from_slice(&raw[parts[p].clone()]);
        // the delimiter line after the k-th place, up to the next place (or the rest)
        let until = parts.get(k + 1).map_or(raw.len(), |n| n.start);
        out.extend_from_slice(&raw[parts[k].end..until]);
    }
    Some(out)
}

/// The first text/plain entity found under `range` (depth first, not into attached messages).
enum Plain {
    /// Its body, written as it reads (7bit, 8bit or binary).
    Text(Range<usize>),
    /// It is quoted-printable or base64: nothing to re-wrap.
    Encoded,
    NotHere,
}

fn first_plain(raw: &[u8], range: Range<usize>, depth: usize) -> Plain {
    let e = entity(raw, range);
    match e.mime_type().as_deref() {
        None | Some("text/plain") => {
            let cte = e.field("content-transfer-encoding").unwrap_or("");
            let cte = cte.trim().to_ascii_lowercase();
            if ["", "7bit", "8bit", "binary"].contains(&cte.as_str()) {
                Plain::Text(e.body)
            } else {
                Plain::Encoded
            }
        }
        Some(t) if t.starts_with("multipart/") && depth < 8 => {
            for p in e.parts(raw) {
                match first_plain(raw, p, depth + 1) {
                    Plain::NotHere => continue,
                    found => return found,
                }
            }
            Plain::NotHere
        }
        Some(_) => Plain::NotHere,
    }
}

/// Display columns of `s` (UTF-8 characters; any other byte one column).
fn columns(s: &[u8]) -> usize {
    s.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

/// Whether a line is prose that re-wrapping may join with its neighbours and break anywhere.
/// Not prose: blank lines (paragraph structure), indented lines, `Name: value` lines, lines
/// that start with an address (after a reply code or status, as in `554 <a@b>... reason`),
/// and lines that start with framing or quoting (`-`, `=`, `*`, `>`, `<`, `#`, `[`, `|`, ...):
/// prose starts with a letter, a digit, a non-ASCII character or an opening quote or bracket.
fn is_prose(line: &[u8]) -> bool {
    let Some(&first) = line.first() else {
        return false;
    };
    if !(first.is_ascii_alphanumeric() || first >= 0x80 || matches!(first, b'(' | b'"' | b'\'')) {
        return false;
    }
    if let Some(n) = line.iter().position(|&b| b == b':')
        && n > 0
        && n < 40
        && line[..n]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    {
        return false;
    }
    let first_address = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .find(|w| !w.iter().all(|b| b.is_ascii_digit() || *b == b'.'));
    !first_address.is_some_and(|w| w.contains(&b'@'))
}

/// Lines `ls` (all prose) re-wrapped: their words filled into lines of at most `width`
/// columns (a longer word alone on its line), joined by `eol`.
fn fill(raw: &[u8], ls: &[Line], width: usize, eol: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut col = 0;
    for l in ls {
        for w in raw[l.start..l.end]
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
        {
            let c = columns(w);
            if col > 0 && col + 1 + c > width {
                out.extend_from_slice(eol);
                col = 0;
            } else if col > 0 {
                out.push(b' ');
                col += 1;
            }
            out.extend_from_slice(w);
            col += c;
        }
    }
    out
}

/// Text re-wrapped at 72 columns, as a relay or client that reflows prose does it: in the
/// first text/plain part written as it reads (no quoted-printable or base64), or the body of a
/// message without MIME structure, or the whole of a headerless text, each run of prose lines
/// ([`is_prose`]) is refilled; every other line and all blank-line structure stays as it is.
/// `None` when there is no such text.
fn rewrap(raw: &[u8], headerless: bool) -> Option<Vec<u8>> {
    let body = if headerless {
        0..raw.len()
    } else {
        match first_plain(raw, 0..raw.len(), 0) {
            Plain::Text(r) => r,
            Plain::Encoded | Plain::NotHere => return None,
        }
    };
    let ls = lines(raw, body.clone());
    let mut out = raw[..body.start].to_vec();
    let mut k = 0;
    while k < ls.len() {
        let prose = |l: &Line| is_prose(&raw[l.start..l.end]);
        if !prose(&ls[k]) {
            out.extend_from_slice(&raw[ls[k].start..ls[k].next]);
            k += 1;
            continue;
        }
        let m = k + ls[k..].iter().take_while(|l| prose(l)).count();
        let eol = &raw[ls[k].end..ls[k].next];
        let eol = if eol.is_empty() {
            b"\n".as_slice()
        } else {
            eol
        };
        out.extend_from_slice(&fill(raw, &ls[k..m], 72, eol));
        out.extend_from_slice(&raw[ls[m - 1].end..ls[m - 1].next]);
        k = m;
    }
    out.extend_from_slice(&raw[body.end..]);
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The property, with combinations chosen by proptest

#[derive(Clone, Copy, Debug)]
enum Eol {
    LfToCrlf,
    CrlfToLf,
    AllToCr,
}

impl Eol {
    const ALL: [Eol; 3] = [Eol::LfToCrlf, Eol::CrlfToLf, Eol::AllToCr];

    fn apply(self, raw: &[u8]) -> Vec<u8> {
        match self {
            Eol::LfToCrlf => lf_to_crlf(raw),
            Eol::CrlfToLf => crlf_to_lf(raw),
            Eol::AllToCr => all_to_cr(raw),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Eol::LfToCrlf => "line ends: LF -> CRLF",
            Eol::CrlfToLf => "line ends: CRLF -> LF",
            Eol::AllToCr => "line ends: all -> CR",
        }
    }
}

/// A combination of mutations, applied in this order (line ends last).
#[derive(Clone, Debug)]
struct Mutations {
    /// Drop the droppable header fields this mask picks.
    drop: Option<u64>,
    /// Swap two parts of the top-level multipart (two distinct ones, whatever their number).
    swap: Option<(Index, Index)>,
    rewrap: bool,
    eol: Option<Eol>,
}

fn mutations() -> impl Strategy<Value = Mutations> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of((any::<Index>(), any::<Index>())),
        any::<bool>(),
        proptest::option::of(proptest::sample::select(Eol::ALL.to_vec())),
    )
        .prop_map(|(drop, swap, rewrap, eol)| Mutations {
            drop,
            swap,
            rewrap,
            eol,
        })
}

/// The seed's message mutated, and what was done to it (mutations that change nothing are
/// not listed).
fn apply(seed: &Seed, m: &Mutations) -> (Vec<u8>, Vec<String>) {
    let mut raw = seed.raw.clone();
    let mut done = Vec::new();
    if !seed.headerless {
        if let Some(mask) = m.drop {
            let (out, names) = drop_fields(&raw, mask);
            if !names.is_empty() {
                done.push(format!("dropped {}", names.join(", ")));
                raw = out;
            }
        }
        if let Some((a, b)) = m.swap {
            let n = top_parts(&raw).len();
            if n >= 2 {
                let i = a.index(n);
                let j = (i + 1 + b.index(n - 1)) % n;
                raw = swap_parts(&raw, i, j).unwrap();
                done.push(format!("swapped parts {i} and {j} of {n}"));
            }
        }
    }
    if m.rewrap
        && let Some(out) = rewrap(&raw, seed.headerless)
        && out != raw
    {
        done.push("re-wrapped at 72".to_string());
        raw = out;
    }
    if let Some(e) = m.eol {
        let out = e.apply(&raw);
        if out != raw {
            done.push(e.name().to_string());
            raw = out;
        }
    }
    (raw, done)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1024);
    ProptestConfig {
        cases,
        // a failure names its seed file and mutations, and the test over every seed below
        // finds each one again: no regression file in the tree
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutations_keep_failed_recipients(pick in any::<Index>(), m in mutations()) {
        let seeds = seeds();
        let seed = &seeds[pick.index(seeds.len())];
        let (raw, done) = apply(seed, &m);
        let got = failed(&seed.read(&raw));
        prop_assert_eq!(
            &got,
            &seed.failed,
            "{} after [{}]: mutated {:?}, unmutated {:?}",
            seed.name,
            done.join("; "),
            got,
            seed.failed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Each single mutation over every seed

/// Every single-mutation variant of a seed that changes its bytes: (mutation, variant detail,
/// bytes). Header fields: all droppable ones at once; parts: every pair.
fn single_variants(seed: &Seed) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in Eol::ALL {
        let v = e.apply(&seed.raw);
        if v != seed.raw {
            out.push((e.name(), String::new(), v));
        }
    }
    if !seed.headerless {
        let (v, names) = drop_fields(&seed.raw, u64::MAX);
        if !names.is_empty() {
            out.push(("headers: drop all droppable", names.join(", "), v));
        }
        let n = top_parts(&seed.raw).len();
        for i in 0..n {
            for j in i + 1..n {
                let v = swap_parts(&seed.raw, i, j).unwrap();
                out.push(("parts: swap two", format!("{i}<->{j} of {n}"), v));
            }
        }
    }
    if let Some(v) = rewrap(&seed.raw, seed.headerless)
        && v != seed.raw
    {
        out.push(("text: re-wrap at 72", String::new(), v));
    }
    out
}

#[test]
fn each_mutation_keeps_failed_recipients_of_every_seed() {
    let show_all = std::env::var_os("BOUNCE_MUTATIONS").is_some();
    let seeds = seeds();
    // mutation -> (variants tried, seeds tried, failures, seeds failing, messages)
    #[derive(Default)]
    struct Count {
        variants: usize,
        seeds: BTreeSet<usize>,
        failures: usize,
        failing_seeds: BTreeSet<usize>,
        messages: Vec<String>,
    }
    let mut counts: BTreeMap<&str, Count> = BTreeMap::new();
    for (s, seed) in seeds.iter().enumerate() {
        for (mutation, detail, raw) in single_variants(seed) {
            let c = counts.entry(mutation).or_default();
            c.variants += 1;
            c.seeds.insert(s);
            let got = failed(&seed.read(&raw));
            if got != seed.failed {
                c.failures += 1;
                c.failing_seeds.insert(s);
                let lost: Vec<&String> = seed.failed.difference(&got).collect();
                let added: Vec<&String> = got.difference(&seed.failed).collect();
                c.messages.push(format!(
                    "{} [{detail}]: lost {lost:?} added {added:?} (unmutated {:?})",
                    seed.name, seed.failed
                ));
            }
        }
    }
    eprintln!("{} seeds", seeds.len());
    eprintln!(
        "{:<28} {:>9} {:>6} {:>9} {:>14}",
        "mutation", "variants", "seeds", "failures", "failing seeds"
    );
    let mut total = 0;
    for (mutation, c) in &counts {
        eprintln!(
            "{mutation:<28} {:>9} {:>6} {:>9} {:>14}",
            c.variants,
            c.seeds.len(),
            c.failures,
            c.failing_seeds.len()
        );
        total += c.failures;
    }
    for (mutation, c) in &counts {
        let shown = if show_all { c.messages.len() } else { 5 };
        for m in c.messages.iter().take(shown) {
            eprintln!("  {mutation}: {m}");
        }
        if c.messages.len() > shown {
            eprintln!(
                "  {mutation}: ... {} more (BOUNCE_MUTATIONS=1)",
                c.messages.len() - shown
            );
        }
    }
    assert_eq!(total, 0, "single mutations changed the failed recipients");
}

// ---------------------------------------------------------------------------------------------
// The mutations themselves

#[test]
fn the_mutations_do_what_they_say() {
    let msg = b"From: MAILER-DAEMON@example.test\r\nReceived: from a\r\n\tby b\r\nX-Failed-Recipients: u@example.test\r\nX-Mailer: m\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"B\"\r\n\r\npreamble\r\n--B\r\nContent-Type: text/plain\r\n\r\nOne\r\ntwo three.\r\n\r\n  u@example.test\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; u@example.test\r\n\r\n--B--\r\nepilogue\r\n";
    assert_eq!(
        crlf_to_lf(msg),
        String::from_utf8_lossy(msg)
            .replace("\r\n", "\n")
            .as_bytes()
    );
    assert_eq!(lf_to_crlf(&crlf_to_lf(msg)), msg.to_vec());
    assert!(!all_to_cr(msg).contains(&b'\n'));
    let (dropped, names) = drop_fields(msg, u64::MAX);
    assert_eq!(names, ["received", "x-mailer"]);
    assert!(!dropped.windows(6).any(|w| w == b"\tby b\r"));
    assert!(dropped.windows(19).any(|w| w == b"X-Failed-Recipients"));
    assert_eq!(top_parts(msg).len(), 2);
    let swapped = swap_parts(msg, 0, 1).unwrap();
    let s = String::from_utf8_lossy(&swapped);
    assert!(s.contains("preamble\r\n--B\r\nContent-Type: message/delivery-status\r\n"));
    assert!(s.contains("u@example.test\r\n\r\n--B\r\nContent-Type: text/plain\r\n"));
    assert!(s.ends_with("  u@example.test\r\n--B--\r\nepilogue\r\n"));
    assert_eq!(swapped.len(), msg.len());
    let wrapped = rewrap(msg, false).unwrap();
    let w = String::from_utf8_lossy(&wrapped);
    assert!(
        w.contains("\r\n\r\nOne two three.\r\n\r\n  u@example.test\r\n--B\r\n"),
        "{w}"
    );
    assert!(is_prose(b"This is the mail system at host x."));
    assert!(!is_prose(b"Final-Recipient: rfc822; a@b.test"));
    assert!(!is_prose(b"554 <a@b.test>... User unknown"));
    assert!(!is_prose(b"a@b.test: host refused"));
    assert!(!is_prose(b"----- Original message -----"));
    assert!(!is_prose(b"    indented"));
}
