//! Reading bounces written by other servers: is a message a delivery report at all, who failed,
//! why, and which message of ours it answers.
//!
//! Responsible for: turning any raw message into a [`Bounce`]: its [`Kind`], one [`Failure`]
//! per failed recipient (address, RFC 3463 status, SMTP reply code, diagnostic text, action,
//! remote MTA, [`Reason`], hard or soft), and the quoted original ([`Original`]). Standard
//! RFC 3464 reports are read from their `message/delivery-status` part; the many other shapes
//! (Postfix, Sendmail, Exim, qmail, Exchange, Gmail, ...) from their human-readable text.
//! Not responsible for: deciding what to do about a bounce (the gateway's policy), or I/O.
//!
//! Never panics, and the work is bounded on any input: only the first [`MAX_INPUT`] bytes are
//! read, and every scan is linear in them.

pub mod reason;

pub use reason::Reason;

/// Input beyond this many bytes is not read (bounces carry at most a quoted message).
pub const MAX_INPUT: usize = 1 << 20;

/// A recipient's diagnostic is the whole notice when nothing more precise says why: this many
/// bytes of it at most (a notice in a non-Latin script takes two or three bytes a letter).
const NOTICE_MAX: usize = 3000;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A delivery report: some recipients failed (or were delayed).
    Bounce,
    /// A delivery report in which nothing failed or was delayed: every recipient it names was
    /// delivered, relayed or expanded (a success notice, RFC 3464 `Action: delivered`).
    Delivery,
    /// An automatic reply (vacation, out of office; RFC 3834).
    AutoReply,
    /// A feedback-loop (abuse) report (ARF, RFC 5965).
    Feedback,
    /// A challenge-response request.
    Challenge,
    /// Ordinary mail.
    Other,
}

/// One failed recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    /// The address that failed (lower-cased domain).
    pub recipient: String,
    /// RFC 3463 status such as `5.1.1`, if known.
    pub status: Option<String>,
    /// The SMTP reply code such as `550`, if known.
    pub reply_code: Option<u16>,
    /// The remote server's words (one line).
    pub diagnostic: String,
    /// RFC 3464 Action (`failed`, `delayed`, ...), if given.
    pub action: Option<String>,
    /// The server that refused, if named.
    pub remote_mta: Option<String>,
    /// The SMTP command the refusal answered (`MAIL`, `RCPT`, `DATA`; `EHLO` for the greeting
    /// or the connection), when the bounce says.
    pub command: Option<String>,
    /// Why, as a class.
    pub reason: Reason,
    /// A hard bounce (sisimai's `hardbounce`, what senders of lists act on): the address
    /// itself is bad (unknown user or domain, moved, the domain takes no mail), so mail to it
    /// should stop. A full mailbox or a spam refusal is not hard, even with a 5.x.x status.
    pub hard: bool,
    /// The refusal was permanent: a 5.x.x status (or a 5xx reply with none). Retrying this
    /// message will not help; it says nothing of whether the address is good (see `hard`).
    pub permanent: bool,
}

/// The original message, as far as the bounce quotes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Original {
    /// Its Message-ID, without `<>`.
    pub message_id: Option<String>,
    /// Its From: header's address.
    pub from: Option<String>,
    /// Its envelope sender (Return-Path), if quoted.
    pub envelope_sender: Option<String>,
    /// Its Date: header.
    pub date: Option<String>,
    /// Its Subject.
    pub subject: Option<String>,
    /// Its `Received:` headers, top first.
    pub received: Vec<String>,
}

/// What the parser found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounce {
    /// What the message is.
    pub kind: Kind,
    /// The recipients that failed or were delayed: only ever in a [`Kind::Bounce`].
    pub failures: Vec<Failure>,
    /// The addresses a message that is not a failure is about, kept apart from `failures`
    /// (nothing failed): who complained in a feedback report (reason `feedback`), who
    /// answered with an auto-reply (`vacation`), who a delivery report says was delivered
    /// (`delivered`).
    pub notices: Vec<Failure>,
    /// The quoted original.
    pub original: Original,
}

impl Bounce {
    /// A reading: entries that are not failures (by the message's kind or their reason) are
    /// moved to `notices`.
    fn new(kind: Kind, entries: Vec<Failure>, original: Original) -> Bounce {
        let (failures, notices): (Vec<Failure>, Vec<Failure>) =
            entries.into_iter().partition(|f| {
                kind == Kind::Bounce && !matches!(f.reason, Reason::Delivered | Reason::Feedback)
            });
        let kind = if kind == Kind::Bounce && failures.is_empty() && !notices.is_empty() {
            Kind::Delivery
        } else {
            kind
        };
        Bounce {
            kind,
            failures,
            notices,
            original,
        }
    }
}

mod fields;
mod matcher;
mod ses;
mod text;

use fields::{address, blocks, field, one_line, reply_code_in, status_in, typed_value};
use mail_parser::{HeaderName, Message, MessageParser, MessagePart, MimeHeaders, PartType};
use std::borrow::Cow;
use std::sync::OnceLock;

/// Reads a raw message (any line ends: CRLF, LF or CR only). Never panics.
pub fn parse(raw: &[u8]) -> Bounce {
    read_view(raw, read)
}

/// What a message's parts say.
fn read(view: View<'_>) -> Bounce {
    if let Some((kind, entries, original)) = ses::read(&view.text) {
        let entries = entries
            .into_iter()
            .map(|f| {
                if f.reason == Reason::Feedback {
                    f
                } else {
                    finish(f)
                }
            })
            .collect();
        return Bounce::new(kind, entries, original);
    }
    let kind = view.kind();
    let entries = match kind {
        Kind::Bounce => view.failures(),
        Kind::Feedback => view.feedback(),
        Kind::AutoReply => view.auto_reply(),
        Kind::Delivery | Kind::Challenge | Kind::Other => Vec::new(),
    };
    Bounce::new(kind, entries, view.returned.original)
}

/// Reads the human-readable text of a delivery notification on its own (no header section, no
/// MIME structure: a text the caller knows is a bounce's notice, as pasted into a ticket). The
/// kind is [`Kind::Bounce`] when the text names a failed recipient, else [`Kind::Other`].
pub fn parse_text(text: &str) -> Bounce {
    let mut raw = b"Content-Type: text/plain; charset=utf-8\n\n".to_vec();
    raw.extend_from_slice(text.as_bytes());
    read_view(&raw, |view| {
        let failures = view.failures();
        let kind = if failures.is_empty() {
            Kind::Other
        } else {
            Kind::Bounce
        };
        Bounce::new(kind, failures, view.returned.original)
    })
}

/// The message's [`View`] handed to `read`: the first [`MAX_INPUT`] bytes, CR-only line ends
/// made LF, MIME-parsed (again after closing parts cut short, when some are).
fn read_view(raw: &[u8], read: impl FnOnce(View<'_>) -> Bounce) -> Bounce {
    let raw = &raw[..raw.len().min(MAX_INPUT)];
    let norm = normalize(raw);
    let Some(msg) = mime_parser().parse(&norm[..]) else {
        return Bounce::new(Kind::Other, Vec::new(), Original::default());
    };
    let repaired = close_truncated_parts(&msg, &norm);
    match repaired
        .as_deref()
        .and_then(|fixed| mime_parser().parse(fixed))
    {
        Some(fixed) => read(View::of(&fixed)),
        None => read(View::of(&msg)),
    }
}

/// The message with every part cut short closed, when a part swallowed the parts after it:
/// a returned original truncated by the reporting server leaves its own multipart open, and
/// mail-parser then reads the outer parts after it (the notice, the delivery status) as its
/// inside, although RFC 2046 has an outer boundary end every part nested in it. `None` when
/// the top-level parts are all there (the usual case: nothing is copied).
fn close_truncated_parts(msg: &Message<'_>, raw: &[u8]) -> Option<Vec<u8>> {
    let outer = msg.content_type()?.attribute("boundary")?;
    let PartType::Multipart(children) = &msg.parts.first()?.body else {
        return None;
    };
    let delimiter = format!("--{outer}");
    // the usual case, cheaply: the last part ends before the closing delimiter
    let last = msg.parts.get(*children.last()? as usize)?;
    let tail = raw.get(last.offset_end as usize..).unwrap_or_default();
    if memchr::memmem::find(tail, delimiter.as_bytes()).is_some() {
        return None;
    }
    let at_lines = delimiter_lines(raw, delimiter.as_bytes());
    // each delimiter line (but the closing one) starts a part
    let opening = at_lines.iter().filter(|(_, close)| !close).count();
    if children.len() >= opening {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len() + 256);
    let mut from = 0;
    for (at, _) in at_lines {
        // before each outer delimiter: close whatever the part before it left open
        let segment = &raw[from..at];
        out.extend_from_slice(segment);
        for inner in open_boundaries(segment, outer).iter().rev() {
            out.extend_from_slice(b"\n--");
            out.extend_from_slice(inner.as_bytes());
            out.extend_from_slice(b"--\n");
        }
        from = at;
    }
    out.extend_from_slice(&raw[from..]);
    Some(out)
}

/// The offsets of the lines that start with `delimiter`, and whether each closes (`--B--`).
fn delimiter_lines(raw: &[u8], delimiter: &[u8]) -> Vec<(usize, bool)> {
    memchr::memmem::find_iter(raw, delimiter)
        .filter(|&at| at == 0 || raw[at - 1] == b'\n')
        .filter_map(|at| {
            let rest = &raw[at + delimiter.len()..];
            let close = rest.starts_with(b"--");
            let after = if close { &rest[2..] } else { rest };
            // the delimiter alone on its line (trailing white space allowed)
            let end = after
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(after.len());
            after[..end]
                .iter()
                .all(u8::is_ascii_whitespace)
                .then_some((at, close))
        })
        .collect()
}

/// The `boundary=` parameters (but `outer`) declared in `segment` whose closing delimiter it
/// lacks.
fn open_boundaries(segment: &[u8], outer: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(segment);
    let lower = text.to_ascii_lowercase();
    let mut open = Vec::new();
    for (at, _) in lower.match_indices("boundary=") {
        let value = &text[at + "boundary=".len()..];
        let value = match value.strip_prefix('"') {
            Some(q) => q.split('"').next().unwrap_or(""),
            None => value
                .split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or(""),
        };
        if value.is_empty() || value == outer || open.iter().any(|b| b == value) {
            continue;
        }
        if !text.contains(&format!("--{value}--")) {
            open.push(value.to_string());
        }
    }
    open
}

/// The mail-parser configuration [`parse`] uses: only the MIME headers are structured (all the
/// parts need); every other header is kept raw and read with `header_raw`, so `Received:`
/// chains and address lists cost nothing. Public so that benchmarks can time MIME parsing
/// alone exactly as [`parse`] does it.
pub fn mime_parser() -> &'static MessageParser {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    PARSER.get_or_init(|| {
        MessageParser::new()
            .with_mime_headers()
            .default_header_raw()
    })
}

/// CR-only line ends become LF (mail-parser reads LF and CRLF); input without them is used
/// as it is.
fn normalize(raw: &[u8]) -> Cow<'_, [u8]> {
    let bare_cr = memchr::memchr_iter(b'\r', raw).any(|i| raw.get(i + 1) != Some(&b'\n'));
    if !bare_cr {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\r' && raw.get(i + 1) != Some(&b'\n') {
            out.push(b'\n');
        } else {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// The parts of a message that matter, found once.
struct View<'m> {
    msg: &'m Message<'m>,
    /// The `message/delivery-status` body.
    dsn: Option<String>,
    /// The `message/feedback-report` body.
    feedback: Option<String>,
    /// The human-readable text (first text part outside the returned message).
    text: String,
    /// How much of `text` is the bounce's own words: up to a quoted original
    /// ([`text::marker_at`]). The text readers are given this part.
    human_len: usize,
    /// The returned original (attached, or quoted in the text), read.
    returned: text::Returned,
}

impl<'m> View<'m> {
    fn of(msg: &'m Message<'m>) -> View<'m> {
        let mut v = View {
            msg,
            dsn: None,
            feedback: None,
            text: String::new(),
            human_len: 0,
            returned: text::Returned::default(),
        };
        // the returned original: a whole message (parsed with the rest) or its header section
        let mut returned: Option<Vec<u8>> = None;
        let mut attached: Option<&Message<'_>> = None;
        for part in msg
            .parts
            .iter()
            .skip(1)
            .chain(msg.parts.first().filter(|_| msg.parts.len() == 1))
        {
            let (ctype, sub) = part
                .content_type()
                .map(|c| (lower(c.ctype()), lower(c.subtype().unwrap_or(""))))
                .unwrap_or((Cow::Borrowed("text"), Cow::Borrowed("plain")));
            let body = || String::from_utf8_lossy(part.contents()).into_owned();
            match (ctype.as_ref(), sub.as_ref()) {
                ("message", "delivery-status" | "global-delivery-status") => {
                    v.dsn.get_or_insert_with(body);
                }
                ("message", "feedback-report") => {
                    v.feedback.get_or_insert_with(body);
                }
                ("message", "rfc822" | "global" | "partial")
                | ("text", "rfc822-headers")
                | ("message", "global-headers")
                    if returned.is_none() && attached.is_none() =>
                {
                    match &part.body {
                        PartType::Message(m) => attached = Some(m),
                        _ => returned = Some(part.contents().to_vec()),
                    }
                }
                // the notice: the first text part that is not a message pasted as a part
                // (wherever it sits: before or after the returned original)
                ("text", _) if v.text.is_empty() && !pasted_message(msg, part) => {
                    v.text = part
                        .text_contents()
                        .map(str::to_string)
                        .unwrap_or_else(body);
                }
                _ => {}
            }
        }
        if v.text.is_empty()
            && let Some(raw) = raw_notice(msg)
        {
            v.text = raw;
        }
        let marker = text::marker_at(&v.text);
        v.human_len = marker.unwrap_or(v.text.len());
        if let Some(m) = attached {
            v.returned = text::read_returned_message(m);
            return v;
        }
        if returned.is_none() {
            // no attached original: the copy quoted in the text, if any
            let quoted = marker.map_or_else(String::new, |at| text::quoted_from(&v.text[at..]));
            returned = (!quoted.is_empty()).then(|| quoted.into_bytes());
        }
        v.returned = text::read_returned(returned.as_deref().unwrap_or_default());
        v
    }

    /// The bounce's own words: its text up to a quoted original.
    fn human(&self) -> &str {
        &self.text[..self.human_len]
    }

    fn header<'a>(&'a self, name: &'a str) -> &'a str {
        self.msg.header_raw(name).unwrap_or("").trim()
    }

    fn kind(&self) -> Kind {
        let ctype = self.header("Content-Type").to_ascii_lowercase();
        if self.feedback.is_some() || ctype.contains("feedback-report") || self.is_jmrp() {
            return Kind::Feedback;
        }
        if self.dsn.is_some() {
            return Kind::Bounce;
        }
        let from = self.header("From").to_ascii_lowercase();
        let subject = self.header("Subject").to_ascii_lowercase();
        if text::looks_like_bounce(&from, &subject, self.human()) || self.is_list_error() {
            return Kind::Bounce;
        }
        if text::looks_like_auto_reply(&subject, self.header("Auto-Submitted"), self.msg) {
            return Kind::AutoReply;
        }
        Kind::Other
    }

    /// A mailing-list manager's notice that it did not pass a message on
    /// ([`text::looks_like_list_error`]).
    fn is_list_error(&self) -> bool {
        text::looks_like_list_error(
            &self.header("From").to_ascii_lowercase(),
            &self.header("Subject").to_ascii_lowercase(),
        )
    }

    /// Microsoft's complaint report (JMRP): no feedback-report part, the complained-of message
    /// attached, its original recipient in `X-HmXmrOriginalRecipient:`.
    fn is_jmrp(&self) -> bool {
        self.header("Subject")
            .to_ascii_lowercase()
            .starts_with("complaint about message from")
            && self.returned.complained.is_some()
    }

    fn failures(&self) -> Vec<Failure> {
        let mut out = match &self.dsn {
            Some(dsn) => from_dsn(dsn, self.human()),
            None => Vec::new(),
        };
        if out.is_empty() {
            out = self.failed_recipients_header();
        }
        if out.is_empty() {
            // a delivery-status report written into the text itself (no MIME structure)
            out = text::inline_dsn(&self.text)
                .map(|dsn| from_dsn(dsn, self.human()))
                .unwrap_or_default();
        }
        if out.is_empty() {
            out = self.read_text(&self.returned.original);
        }
        if out.iter().any(|f| f.diagnostic.is_empty()) {
            let fallback = one_line(self.human(), NOTICE_MAX);
            for f in out.iter_mut().filter(|f| f.diagnostic.is_empty()) {
                f.diagnostic = fallback.clone();
            }
        }
        out.into_iter().map(finish).collect()
    }

    /// Failed recipients from the human text alone, shape after shape; last, the returned
    /// original's `To:`.
    fn read_text(&self, original: &Original) -> Vec<Failure> {
        // addresses that are not recipients: the bounce's own, the original's sender
        let own = [
            address(self.header("From")),
            address(self.header("To")),
            original.from.clone(),
            original.envelope_sender.clone(),
        ];
        let human = self.human();
        // a mailing-list manager's notice names the list in a sentence of its own
        let mut out = if self.is_list_error() {
            text::list_refusal(human, &own)
        } else {
            Vec::new()
        };
        // (the bounce's To: too may have failed: a message to oneself)
        if out.is_empty() {
            out = text::failures(human, &own[..1]);
        }
        if out.is_empty() {
            out = text::introduced(human, &own);
        }
        if out.is_empty() {
            out = text::labelled(human, &own);
        }
        if out.is_empty() {
            out = text::bracketed(human, &own);
        }
        if out.is_empty()
            && let Some(to) = &self.returned.to
        {
            out.push(Failure {
                recipient: to.clone(),
                diagnostic: one_line(self.human(), 500),
                ..Failure::default()
            });
        }
        out
    }

    /// Exim's `X-Failed-Recipients:`, each with its paragraph of the text.
    fn failed_recipients_header(&self) -> Vec<Failure> {
        let value = self.header("X-Failed-Recipients");
        let mut out: Vec<Failure> = Vec::new();
        for part in value.split(',') {
            let Some(recipient) = address(part) else {
                continue;
            };
            if out.iter().any(|f| f.recipient == recipient) {
                continue;
            }
            let diagnostic = text::about(self.human(), &recipient);
            out.push(Failure {
                recipient,
                diagnostic,
                ..Failure::default()
            });
        }
        out
    }

    fn feedback(&self) -> Vec<Failure> {
        let blocks = self.feedback.as_deref().map(blocks).unwrap_or_default();
        let fields: Vec<fields::Field<'_>> = blocks.into_iter().flatten().collect();
        let kind = one_line(field(&fields, "feedback-type").unwrap_or("abuse"), 200);
        let mut rcpts: Vec<String> = Vec::new();
        for (name, value) in &fields {
            if (name.eq_ignore_ascii_case("original-rcpt-to")
                || name.eq_ignore_ascii_case("removal-recipient"))
                && let Some(a) = address(value)
                && !rcpts.contains(&a)
            {
                rcpts.push(a);
            }
        }
        if rcpts.is_empty() {
            let r = &self.returned;
            rcpts.extend(
                (r.complained.as_ref())
                    .or(r.to.as_ref())
                    .or(r.original.from.as_ref())
                    .cloned(),
            );
        }
        rcpts
            .into_iter()
            .map(|recipient| Failure {
                recipient,
                reason: Reason::Feedback,
                diagnostic: kind.clone(),
                ..Failure::default()
            })
            .collect()
    }

    fn auto_reply(&self) -> Vec<Failure> {
        address(self.header("From"))
            .map(|recipient| Failure {
                recipient,
                reason: Reason::Vacation,
                diagnostic: one_line(&self.text, 300),
                ..Failure::default()
            })
            .into_iter()
            .collect()
    }
}

/// The notice as raw text when no part is a text part: the whole body of a message that is one
/// part (a multipart whose boundary never occurs, broken by a relay), or a part declared
/// multipart whose boundary parameter was lost (folded onto an unindented line: mail-parser
/// keeps it as raw text), from after its inner delimiter and header section.
fn raw_notice(msg: &Message<'_>) -> Option<String> {
    let lossy = |p: &MessagePart<'_>| String::from_utf8_lossy(p.contents()).into_owned();
    if msg.parts.len() == 1 {
        return msg.parts.first().map(lossy);
    }
    let raw = msg
        .parts
        .iter()
        .filter(|p| !matches!(p.body, PartType::Multipart(_)))
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart"))
        })
        .map(lossy)?;
    if !raw.trim_start().starts_with("--") {
        return Some(raw);
    }
    Some(
        raw.split_once("\n\n")
            .map_or(raw.clone(), |(_, body)| body.to_string()),
    )
}

/// `s` in lower case, copied only when it has upper-case letters.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Whether a part of `msg` is a message pasted in as a text part (an attachment, or a part
/// whose own header section carries a message's fields), not a notice.
fn pasted_message(msg: &Message<'_>, part: &MessagePart<'_>) -> bool {
    if msg.parts.len() == 1 {
        return false;
    }
    let attachment = part
        .content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
    attachment
        || part.headers.iter().any(|h| {
            matches!(
                h.name,
                HeaderName::Received
                    | HeaderName::From
                    | HeaderName::MessageId
                    | HeaderName::ReturnPath
            )
        })
}

/// One failure per recipient block of a delivery-status body; diagnostics missing there are
/// looked for in `human`, the human part of the bounce's text.
fn from_dsn(dsn: &str, human: &str) -> Vec<Failure> {
    let blocks = blocks(dsn);
    let per_message = blocks.first().map_or(&[][..], Vec::as_slice);
    let mut out = Vec::new();
    for b in &blocks {
        // Final-Recipient, else Original-Recipient (also when Final-Recipient names no usable
        // address: `system;<>`, a source route)
        let Some(recipient) = ["final-recipient", "original-recipient"]
            .iter()
            .find_map(|name| field(b, name).and_then(|v| address(typed_value(v))))
        else {
            continue;
        };
        let mut diagnostic = field(b, "diagnostic-code")
            .map(typed_value)
            .unwrap_or("")
            .to_string();
        // the human text's paragraph about the recipient, read only when needed
        let about = std::cell::OnceCell::new();
        let about = || {
            about
                .get_or_init(|| text::about(human, &recipient))
                .as_str()
        };
        if diagnostic.is_empty() {
            diagnostic = about().to_string();
        }
        if diagnostic.is_empty() {
            diagnostic = one_line(human, 1000);
        }
        // a delivery to a program (`Final-Recipient: rfc822;|/usr/bin/prog ...`) failed in
        // that program, whatever the words
        if let Some(pipe) = field(b, "final-recipient").map(typed_value)
            && pipe.starts_with('|')
            && !diagnostic.contains(pipe)
        {
            diagnostic = format!("pipe to {pipe}: {diagnostic}");
        }
        let command = fields::command_in(&diagnostic).or_else(|| fields::command_in(about()));
        out.push(Failure {
            status: field(b, "status").and_then(status_in),
            reply_code: reply_code_in(&diagnostic),
            action: field(b, "action").map(|a| a.to_ascii_lowercase()),
            remote_mta: field(b, "remote-mta")
                .or_else(|| field(per_message, "reporting-mta"))
                .map(|v| typed_value(v).to_string()),
            diagnostic: one_line(&diagnostic, 1000),
            command: command.map(str::to_string),
            recipient,
            ..Failure::default()
        });
    }
    out
}

/// Whether the server's words are about a temporary failure: the first code they carry (the
/// reply code, else `said`, the RFC 3463 status in them) is of class 4, or they say
/// "temporary" or "persistent" (RFC 3463's "persistent transient failure").
fn says_temporary(reply_code: Option<u16>, said: Option<&str>, diagnostic: &str) -> bool {
    let class = match reply_code {
        Some(c) => Some(c / 100),
        None => said.and_then(|s| s[..1].parse().ok()),
    };
    let lower = diagnostic.to_ascii_lowercase();
    class == Some(4) || lower.contains(" temporar") || lower.contains(" persistent")
}

/// Fills in status, reason and hard/soft from what was found.
fn finish(mut f: Failure) -> Failure {
    if f.reply_code.is_none() {
        f.reply_code = reply_code_in(&f.diagnostic);
    }
    let said = status_in(&f.diagnostic);
    f.status = fields::prefer(f.status.take(), said.clone(), f.reply_code);
    if f.command.is_none() {
        f.command = fields::command_in(&f.diagnostic).map(str::to_string);
    }
    if f.reason == Reason::Undefined {
        let names_unknown =
            f.status.as_deref().and_then(reason::status_reason) == Some(Reason::UserUnknown);
        f.reason = reason::classify_after(
            f.status.as_deref(),
            f.reply_code,
            &f.diagnostic,
            f.action.as_deref(),
            f.command.as_deref(),
        );
        f.reason = match (f.reason, f.command.as_deref()) {
            // "user unknown" for a message the server has already taken in: a filter's answer
            // (unless the status itself says the mailbox does not exist)
            (Reason::UserUnknown, Some("DATA")) if !names_unknown => Reason::Filtered,
            // a 5.2.x "user unknown" not at RCPT: the mailbox exists and refused (a filter)
            (Reason::UserUnknown, cmd)
                if cmd != Some("RCPT")
                    && f.status
                        .as_deref()
                        .is_some_and(|s| s.get(1..4) == Some(".2.")) =>
            {
                Reason::Filtered
            }
            // refused at MAIL FROM: the sender was refused
            (
                Reason::SecurityError
                | Reason::PolicyViolation
                | Reason::UserUnknown
                | Reason::Undefined,
                Some("MAIL"),
            ) => Reason::Rejected,
            (r, _) => r,
        };
    }
    let temporary = says_temporary(f.reply_code, said.as_deref(), &f.diagnostic);
    if f.status.is_none() {
        f.status = Some(match (f.reason, f.reply_code) {
            (Reason::Undefined, Some(c)) => format!("{}.0.0", c / 100),
            (r, _) => reason::internal_status(r, temporary),
        });
    }
    f.hard = f.reason.is_hard(f.status.as_deref(), f.reply_code);
    f.permanent = f.status.as_deref().is_some_and(|s| s.starts_with('5'));
    f
}
