//! Bounces that are not (only) RFC 3464: what their human-readable text says, and where the
//! original message starts in it.
//!
//! Responsible for: recognising a bounce or an auto-reply by its sender, subject and wording;
//! finding failed recipients and their paragraphs in free text; the quoted original's headers.
//! Not responsible for: classifying reasons (`reason`).

use super::Original;
use super::fields::{address, one_line, reply_code_in, starts_ignoring_case, status_in};
use mail_parser::Message;

/// Lines that start the returned message in the text of a bounce: lower-case prefixes of the
/// line once its framing (dashes, spaces, `=`, `*`) is trimmed.
const ORIGINAL_MARKERS: &[&str] = &[
    "this is a copy of the message",
    "below this line is a copy of the message",
    "original message",
    "returned message",
    "unsent message follows",
    "the header of the original message",
    "received message",
    "content-type: message/rfc822",
    "below this line is the original message",
    "enclosed are the original headers",
    "the following is a copy of the message",
    "message header follows",
    "message headers follow",
    "original headers",
    "original mail as follows",
];

/// Senders (lower-case substrings of From:) of bounces.
const BOUNCE_SENDERS: &[&str] = &[
    "mailer-daemon",
    "postmaster",
    "mail delivery",
    "mail-daemon",
    "mailerdaemon",
    "mail administrator",
    "mdaemon",
    "bounce",
    "microsoftexchange",
    "mailer_daemon",
    "post_master",
];

/// Subjects (lower-case substrings) of bounces.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "returned mail",
    "delivery status notification",
    "delivery failure",
    "failure notice",
    "mail delivery failed",
    "delivery has failed",
    "non remis",
    "non-delivery",
    "nondeliverable",
    "could not be delivered",
    "delivery notification",
    "mail system error",
    "delivery problem",
    "warning: could not send",
    "undelivered",
    "delivery failed",
    "rejected",
    "permanent error",
];

/// Subjects (lower-case substrings) of the error notices of a mailing-list manager (fml: a
/// post refused, a mail loop, a system error).
const LIST_ERROR_SUBJECTS: &[&str] = &[
    "not member",
    "reject mail",
    "loop alert",
    "loop back warning",
    "unix from loop",
    "fml system error",
];

/// True (for a lower-case From: and Subject:) for a mailing-list manager's notice that it did
/// not pass a message on: sent from the list's `-admin` address, with a subject of
/// [`LIST_ERROR_SUBJECTS`]. (Its `X-MLServer:` header is not needed: relays drop such fields.)
pub fn looks_like_list_error(from: &str, subject: &str) -> bool {
    from.contains("-admin@") && LIST_ERROR_SUBJECTS.iter().any(|s| subject.contains(s))
}

/// The recipients of a mailing-list manager's error notice ([`looks_like_list_error`]): the
/// `<address>` a sentence of its text ends with ("You are not a member of this mailing list
/// <list@example.test>.", "Duplicated Message-ID in <list@example.test>."), each once, with
/// that sentence as diagnostic. Addresses elsewhere in the notice are where to write for help.
pub fn list_refusal(human: &str, own: &[Option<String>]) -> Vec<super::Failure> {
    let mut found = Found::new(own);
    for line in human.lines() {
        let sentence = line.trim();
        if is_header_line(sentence) {
            continue;
        }
        let Some(inner) = sentence
            .trim_end_matches('.')
            .strip_suffix('>')
            .and_then(|l| l.rsplit_once('<'))
            .map(|(_, a)| a)
        else {
            continue;
        };
        if let Some(a) = address(inner) {
            found.add(a, |_| one_line(sentence, 1000));
        }
    }
    found.list
}

/// Failed recipients found in a text: in order, each once, none of the bounce's own addresses.
struct Found<'o> {
    own: &'o [Option<String>],
    list: Vec<super::Failure>,
}

impl<'o> Found<'o> {
    fn new(own: &'o [Option<String>]) -> Found<'o> {
        Found {
            own,
            list: Vec::new(),
        }
    }

    /// Adds `a` unless it is the bounce's own or found already; only then is its diagnostic
    /// worked out.
    fn add(&mut self, a: String, diagnostic: impl FnOnce(&str) -> String) {
        if self.own.iter().any(|o| o.as_ref() == Some(&a))
            || self.list.iter().any(|f| f.recipient == a)
        {
            return;
        }
        self.list.push(super::Failure {
            diagnostic: diagnostic(&a),
            recipient: a,
            ..super::Failure::default()
        });
    }
}

/// Subjects (lower-case substrings) of auto-replies.
const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "out of office",
    "out of the office",
    "auto reply",
    "auto-reply",
    "autoreply",
    "automatic reply",
    "vacation",
    "abwesenheit",
    "away from",
    "on leave",
];

/// True when sender, subject or wording (`human`, the notice up to a quoted original) say
/// "delivery failed".
pub fn looks_like_bounce(from: &str, subject: &str, human: &str) -> bool {
    BOUNCE_SENDERS.iter().any(|s| from.contains(s))
        || BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
        || {
            let t = human.to_ascii_lowercase();
            t.contains("could not be delivered") || t.contains("permanent fatal errors")
        }
}

/// True for an automatic reply (RFC 3834 `Auto-Submitted: auto-replied`, or its usual
/// subjects and headers).
pub fn looks_like_auto_reply(subject: &str, auto_submitted: &str, msg: &Message<'_>) -> bool {
    auto_submitted
        .to_ascii_lowercase()
        .starts_with("auto-replied")
        || AUTO_REPLY_SUBJECTS.iter().any(|s| subject.contains(s))
        || msg.header_raw("X-Autoreply").is_some()
        || msg.header_raw("X-Autorespond").is_some()
}

/// Where the original starts in `text` (byte offset of its marker line), if it is quoted: the
/// first line that starts (after its framing: white space, dashes, `=`, `*`, `_`) with one of
/// [`ORIGINAL_MARKERS`], in any case.
pub fn marker_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', bytes).map(|i| i + 1));
    for at in starts {
        let line = &bytes[at..];
        let framing = |b: &u8| b.is_ascii_whitespace() && *b != b'\n' || b"-=*_".contains(b);
        let Some(skip) = line.iter().position(|b| !framing(b)) else {
            continue;
        };
        let line = &line[skip..];
        // most lines are ruled out by their first letter
        let first = line.first().copied().unwrap_or(b' ');
        if !ORIGINAL_MARKERS
            .iter()
            .any(|m| m.as_bytes()[0].eq_ignore_ascii_case(&first))
        {
            continue;
        }
        let end = memchr::memchr(b'\n', line).unwrap_or(line.len());
        let line = &line[..end];
        // "original message was received at ..." (Sendmail) is part of the explanation
        if ORIGINAL_MARKERS
            .iter()
            .any(|m| starts_ignoring_case(line, m))
            && !line
                .windows(12)
                .any(|w| w.eq_ignore_ascii_case(b"was received"))
        {
            return Some(at);
        }
    }
    None
}

/// The quoted original's header section in `rest`, the text from the marker line
/// ([`marker_at`]) on: from the first header-looking line after the marker to the first empty
/// line, quoting (`>`) removed.
pub fn quoted_from(rest: &str) -> String {
    let mut lines = rest.lines().skip(1).skip_while(|l| !is_header_line(l));
    let mut out = String::new();
    for l in lines.by_ref() {
        let l = l.trim_start_matches('>').trim_start_matches(' ').trim_end();
        // the header section is all that is read of it
        if l.is_empty() {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn is_header_line(l: &str) -> bool {
    let l = l.trim_start_matches(['>', ' ']);
    match l.split_once(':') {
        Some((name, _)) => {
            !name.is_empty()
                && name.len() < 40
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }
        None => false,
    }
}

/// What the returned original's header section tells, read once.
#[derive(Default)]
pub struct Returned {
    /// Its fields.
    pub original: Original,
    /// Its `To:` address.
    pub to: Option<String>,
    /// The recipient a Microsoft complaint (JMRP) names: `X-HmXmrOriginalRecipient:`.
    pub complained: Option<String>,
}

/// The returned original (a whole message or its header section) as bytes, read once.
pub fn read_returned(bytes: &[u8]) -> Returned {
    // the header section only: up to the first empty line
    let end = memchr::memmem::find(bytes, b"\n\n")
        .or_else(|| memchr::memmem::find(bytes, b"\n\r\n"))
        .map_or(bytes.len(), |e| e + 1);
    let text = String::from_utf8_lossy(&bytes[..end]);
    read_fields(header_fields(&text))
}

/// The returned original, already parsed (an attached `message/rfc822` part; every header but
/// the MIME ones kept raw).
pub fn read_returned_message(m: &Message<'_>) -> Returned {
    read_fields(m.headers_raw())
}

/// The fields of the header section that starts `text` (up to its first empty line), raw:
/// folded lines kept in the value. A line that is not a field continues the field before it
/// (a quoted original loses its folding indentation in many bounces).
fn header_fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut fields: Vec<(&str, usize, usize)> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let body = line.trim_end_matches(['\r', '\n']);
        if body.trim().is_empty() {
            break;
        }
        let field = body
            .split_once(':')
            .filter(|_| !body.starts_with([' ', '\t']) && is_header_line(body));
        match (field, fields.last_mut()) {
            (Some((name, _)), _) => fields.push((name, start + name.len() + 1, start + body.len())),
            (None, Some(last)) => last.2 = start + body.len(),
            (None, None) => {}
        }
    }
    fields
        .into_iter()
        .map(move |(name, from, to)| (name, text.get(from..to).unwrap_or("")))
}

/// What an original's header fields tell: one pass, the first of each field, every Received.
fn read_fields<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> Returned {
    const NAMES: [&str; 7] = [
        "message-id",
        "from",
        "return-path",
        "date",
        "subject",
        "to",
        "x-hmxmroriginalrecipient",
    ];
    let mut first: [Option<&str>; 7] = [None; 7];
    let mut received = Vec::new();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("received") {
            received.push(one_line(value, 998));
        } else if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name))
            && first[i].is_none()
        {
            first[i] = Some(value);
        }
    }
    let h = |i: usize| first[i].map(|v| one_line(v, 998)).filter(|v| !v.is_empty());
    let original = Original {
        message_id: h(0).map(|v| v.trim_matches(['<', '>', ' ']).to_string()),
        from: h(1).and_then(|v| address(&v)),
        envelope_sender: h(2).and_then(|v| address(&v)),
        date: h(3),
        subject: h(4),
        received,
    };
    Returned {
        original,
        to: h(5).and_then(|v| address(&v)),
        complained: h(6).and_then(|v| address(&v)),
    }
}

/// Failed recipients named in the human text: a line that starts with an address (bare, in
/// `<>`, or followed by `:`), with the lines after it up to the next such line as diagnostic.
/// An address listed twice (Exchange names each recipient for the user, then again for the
/// administrator with the server's reply) keeps its first place and the diagnostic that
/// carries a reply code or status, if one does.
pub fn failures(human: &str, own: &[Option<String>]) -> Vec<super::Failure> {
    let lines: Vec<&str> = human.lines().collect();
    let starts = address_lines(&lines, own);
    let mut out: Vec<super::Failure> = Vec::new();
    // a reply code says more than a status alone, which says more than words
    let rank = |d: &str| match (reply_code_in(d), status_in(d)) {
        (Some(_), _) => 2,
        (None, Some(_)) => 1,
        (None, None) => 0,
    };
    for (k, (i, a)) in starts.iter().enumerate() {
        // to the next line that names another recipient
        let end = starts[k + 1..]
            .iter()
            .find(|(_, b)| b != a)
            .map_or(lines.len(), |(j, _)| *j)
            .min(i + 12);
        let diagnostic = diagnostic_after(&lines, *i, end, a);
        match out.iter_mut().find(|f| f.recipient == *a) {
            Some(f) if rank(&diagnostic) > rank(&f.diagnostic) => f.diagnostic = diagnostic,
            Some(_) => {}
            None => out.push(super::Failure {
                recipient: a.clone(),
                diagnostic,
                ..super::Failure::default()
            }),
        }
    }
    out
}

/// The lines that start with a recipient's address (line number, address), in order; an
/// address on a more indented line inside a recipient's paragraph is part of that recipient's
/// diagnostic (Postfix folds "said: 550 <sender>: refused" that way), and the bounce's own
/// addresses are not recipients.
fn address_lines(lines: &[&str], own: &[Option<String>]) -> Vec<(usize, String)> {
    let mut starts = Vec::new();
    // the indentation of the line that started the current paragraph with an address
    let mut opened: Option<usize> = None;
    for (i, l) in lines.iter().enumerate() {
        let indent = l.len() - l.trim_start().len();
        if l.trim().is_empty() {
            opened = None;
            continue;
        }
        let Some(a) = leading_address(l) else {
            continue;
        };
        if opened.is_some_and(|o| indent > o) {
            continue;
        }
        opened = Some(indent);
        if !own.iter().any(|o| o.as_ref() == Some(&a)) {
            starts.push((i, a));
        }
    }
    starts
}

/// What lines `i..end` say after the address `a` that starts them, on one line (the text
/// before them when they say nothing).
fn diagnostic_after(lines: &[&str], i: usize, end: usize, a: &str) -> String {
    let para = lines[i..end].join(" ");
    let rest = para.split_once(a).map_or(para.as_str(), |(_, r)| r);
    let rest = rest.trim_start_matches(['>', ':', ' ']);
    // Exchange's link after the address: `<mailto:user@example.test>`
    let rest = rest
        .strip_prefix("<mailto:")
        .and_then(|r| r.split_once('>'))
        .map_or(rest, |(_, r)| r);
    let diagnostic = one_line(rest.trim_start_matches(['>', ':', ' ']), 1000);
    if diagnostic.is_empty() {
        one_line(&lines[..i].join(" "), 1000)
    } else {
        diagnostic
    }
}

/// The delivery-status fields of a report pasted into the text (a message whose MIME
/// structure was lost): the text from the line that starts `Reporting-MTA:` or
/// `Final-Recipient:`, if any line does.
pub fn inline_dsn(text: &str) -> Option<&str> {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start().as_bytes();
        if starts_ignoring_case(l, "reporting-mta:") || starts_ignoring_case(l, "final-recipient:")
        {
            return Some(&text[at..]);
        }
        at += line.len();
    }
    None
}

/// Every `<address>` of the human text that is not the bounce's own (From/To), each once, with
/// its paragraph as diagnostic.
pub fn bracketed(human: &str, own: &[Option<String>]) -> Vec<super::Failure> {
    let mut found = Found::new(own);
    for line in human.lines() {
        // a quoted header naming messages, not mailboxes
        let head = line.trim_start_matches(['>', ' ', '\t']).as_bytes();
        let names_message = ["message-id:", "references:", "in-reply-to:"]
            .iter()
            .any(|p| starts_ignoring_case(head, p));
        if names_message {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find('<') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('>') else { break };
            if let Some(a) = address(&after[..end]) {
                found.add(a, |a| about(human, a));
            }
            rest = &after[end..];
        }
    }
    found.list
}

/// The address a line starts with (after indentation, `<`, quotes), if it does.
fn leading_address(line: &str) -> Option<String> {
    let t = line.trim_start_matches(|c: char| c.is_whitespace() || c == '>' || c == '*');
    // Sendmail's transcript: "554 <user@example.test>... reason"
    let t = match t.split_at_checked(4) {
        Some((code, rest)) if rest.starts_with('<') && reply_code_in(code).is_some() => rest,
        _ => t,
    };
    if [
        "from:",
        "to:",
        "cc:",
        "reply-to:",
        "sender:",
        "return-path:",
        "message-id:",
    ]
    .iter()
    .any(|p| starts_ignoring_case(t.as_bytes(), p))
    {
        return None;
    }
    let first = t.split_whitespace().next()?;
    // Exchange writes a link after the address: `user@example.test<mailto:user@example.test>`
    let first = match first.split_once("<mailto:") {
        Some((a, link)) if !a.is_empty() && link.trim_end_matches('>') == a => a,
        _ => first,
    };
    // the whole first word is the address (nothing else glued to it)
    let cand = first
        .trim_start_matches(['<', '"', '\''])
        .trim_end_matches(['>', ':', ',', '.', ';', '"', '\'']);
    if !cand.contains('@') || cand.contains(['<', '>', '(', '[']) {
        return None;
    }
    address(cand)
}

/// Lower-case words after which a bounce's sentence names the recipient that failed: "Your
/// message to X couldn't be delivered" (Office 365), "wasn't delivered to X because" (Gmail),
/// "a problem delivering your message to X" (Gmail's delay notice), "could not be delivered
/// to: X", "failed to deliver to X", "addressed to: X", "undeliverable to X" (IMail), "the
/// following recipients returned permanent errors: X" (X6).
const INTRODUCERS: &[&str] = &[
    "your message to",
    "delivered to",
    "delivering your message to",
    "deliver your message to",
    "failed to deliver to",
    "addressed to",
    "delivery to",
    "undeliverable to",
    "following recipient",
];

/// How far after its introducing words a recipient may start (bytes): "to the following
/// recipients:" and a line break fit, another sentence does not.
const INTRODUCER_REACH: usize = 60;

/// Recipients named in a sentence of the human text, after words such as "your message to"
/// ([`INTRODUCERS`]), each once, with its paragraph as diagnostic. Only what follows the
/// words closely counts, and not across a sentence's end.
pub fn introduced(human: &str, own: &[Option<String>]) -> Vec<super::Failure> {
    let lower = human.to_ascii_lowercase();
    let mut found = Found::new(own);
    for word in INTRODUCERS {
        for (at, _) in lower.match_indices(word) {
            let from = at + word.len();
            let mut end = (from + INTRODUCER_REACH).min(lower.len());
            while !lower.is_char_boundary(end) {
                end -= 1;
            }
            let window = &human[from..end];
            // the address starts before any sentence ends ("... to X. " or a blank line)
            let Some(word) = window
                .split_whitespace()
                .take_while(|w| !w.ends_with(['.', '!']) || w.contains('@'))
                .find(|w| w.contains('@'))
            else {
                continue;
            };
            // the whole word, also where it runs past the window's end
            let start = word.as_ptr() as usize - human.as_ptr() as usize;
            let word = human[start..].split_whitespace().next().unwrap_or(word);
            if let Some(a) = address(word) {
                found.add(a, |a| about(human, a));
            }
        }
    }
    found.list
}

/// Lower-case words of a line's label (the text before its colon) that say the one address
/// after it is a recipient that failed: "Failed recipient: X", "Unknown user: X", "Delivery
/// failed 20 attempts: X" (IMail), "Invalid recipient: X", "RCPT TO: X" (the envelope
/// recipient in the details of a notice, as Apache James gives them).
const FAILED_LABELS: &[&str] = &[
    "fail",
    "undeliver",
    "unknown",
    "invalid",
    "reject",
    "rcpt to",
    "recipient",
];

/// Recipients named alone after a label that says they failed ([`FAILED_LABELS`]), a line
/// each, each once. The diagnostic is left empty: such a line says nothing more, the notice
/// around it does.
pub fn labelled(human: &str, own: &[Option<String>]) -> Vec<super::Failure> {
    let mut found = Found::new(own);
    for line in human.lines() {
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        let label = label
            .trim_matches(|c: char| c.is_whitespace() || c == '>' || c == '*')
            .to_ascii_lowercase();
        // a short label of words, then one address alone
        let value = value.trim();
        if label.is_empty()
            || label.len() > 40
            || label.contains(['@', '<', '>'])
            || !FAILED_LABELS.iter().any(|w| label.contains(w))
            || value.split_whitespace().count() != 1
        {
            continue;
        }
        if let Some(a) = address(value) {
            found.add(a, |_| String::new());
        }
    }
    found.list
}

/// The paragraph of `human` (a bounce's human part: its text up to a quoted original, where
/// [`marker_at`] finds one) that mentions `rcpt`, from
/// just after it, on one line ("" when none does).
pub fn about(human: &str, rcpt: &str) -> String {
    let Some(at) = find_ignore_case(human, rcpt) else {
        return String::new();
    };
    let end = human[at..].find("\n\n").map_or(human.len(), |p| at + p);
    let after = human.get(at + rcpt.len()..end).unwrap_or("");
    let after = after.trim_start_matches(['>', ':', ' ']);
    // a delivery to a program names the address inside its command line
    // (Exim's "pipe to |/usr/bin/prog user@example.test"): that is what failed
    let line = &human[human[..at].rfind('\n').map_or(0, |p| p + 1)..at];
    match line.trim_start().find("pipe to |") {
        Some(_) => one_line(&format!("{} {after}", line.trim()), 1000),
        None => one_line(after, 1000),
    }
}

/// Where `needle` first occurs in `hay`, ASCII letters matched in any case.
fn find_ignore_case(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let first = *n.first()?;
    let last = h.len().checked_sub(n.len())?;
    memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), h)
        .take_while(|&i| i <= last)
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}
