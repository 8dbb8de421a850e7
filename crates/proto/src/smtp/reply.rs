//! SMTP replies: the value type, its wire encoding, and an incremental parser for the client.
//!
//! Responsible for: `Reply` (basic code, RFC 3463 enhanced status, text lines), writing it as
//! one or more CRLF lines, and reading replies (single and multi-line) from a byte stream.
//! Not responsible for: choosing which reply a situation deserves (the session and the policy do).

use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`, such as `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Enhanced {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// Subject: 0 other, 1 addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol,
    /// 6 content, 7 security/policy.
    pub subject: u16,
    /// Detail within the subject.
    pub detail: u16,
}

impl Enhanced {
    /// Builds `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Enhanced {
        Enhanced {
            class,
            subject,
            detail,
        }
    }

    /// Parses `d.ddd.ddd` as written at the start of a reply text.
    pub fn parse(s: &str) -> Option<Enhanced> {
        let mut it = s.splitn(3, '.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject = it
            .next()
            .filter(|p| (1..=3).contains(&p.len()))?
            .parse()
            .ok()?;
        let detail = it
            .next()
            .filter(|p| (1..=3).contains(&p.len()))?
            .parse()
            .ok()?;
        matches!(class, 2 | 4 | 5).then_some(Enhanced {
            class,
            subject,
            detail,
        })
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status and one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The basic reply code (RFC 5321 §4.2), 200..=599.
    pub code: u16,
    /// The enhanced status code, written before the text of every line when present.
    pub enhanced: Option<Enhanced>,
    /// Text lines, without code, status or CRLF. Never empty.
    pub lines: Vec<String>,
}

/// The class of a reply, from its first digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2xx: done.
    Success,
    /// 3xx: go on (354 after DATA).
    Intermediate,
    /// 4xx: try again later.
    Transient,
    /// 5xx: do not try again.
    Permanent,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status (greeting, HELO, 354).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// The class of the code. Codes outside 200..=599 count as permanent failures.
    pub fn class(&self) -> ReplyClass {
        match self.code / 100 {
            2 => ReplyClass::Success,
            3 => ReplyClass::Intermediate,
            4 => ReplyClass::Transient,
            _ => ReplyClass::Permanent,
        }
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        self.class() == ReplyClass::Success
    }

    /// All text lines joined by a space (for logs).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Appends the wire form (`code[-| ][enhanced ]text CRLF` per line) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = sanitize(line);
            let status = self.enhanced.map(|e| format!("{e} ")).unwrap_or_default();
            out.extend_from_slice(format!("{}{sep}{status}{line}\r\n", self.code).as_bytes());
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Replaces CR and LF in reply text so a text can never end a line early.
fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ").into()
    } else {
        s.into()
    }
}

/// Why bytes from a server are not a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// A line that does not start with three digits and a separator.
    Malformed(String),
    /// The lines of one multi-line reply carry different codes.
    MixedCodes,
    /// A line (or a multi-line reply) over the parser's limit.
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Malformed(l) => write!(f, "malformed reply line {l:?}"),
            ReplyError::MixedCodes => f.write_str("multi-line reply with mixed codes"),
            ReplyError::TooLong => f.write_str("reply too long"),
        }
    }
}

/// Longest reply line accepted from a server (RFC 5321 requires 512; be generous).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (an EHLO reply is the longest in practice).
const MAX_REPLY_LINES: usize = 128;

/// Incremental reply reader: feed bytes with [`ReplyParser::push`], take replies with
/// [`ReplyParser::next_reply`]. Accepts LF-only line ends from servers (be liberal in what you
/// accept from peers you chose to talk to); never panics.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    partial: Vec<(u16, String)>,
}

impl ReplyParser {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete reply, `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw[..nl]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            let (code, more, text) = split_reply_line(line)?;
            if let Some(&(first, _)) = self.partial.first()
                && first != code
            {
                self.partial.clear();
                return Err(ReplyError::MixedCodes);
            }
            self.partial.push((code, text.to_string()));
            if self.partial.len() > MAX_REPLY_LINES {
                self.partial.clear();
                return Err(ReplyError::TooLong);
            }
            if !more {
                let lines = std::mem::take(&mut self.partial);
                return Ok(Some(build_reply(code, lines)));
            }
        }
    }
}

fn split_reply_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let bad = || ReplyError::Malformed(line.chars().take(80).collect());
    let digits = line.get(..3).ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let code: u16 = digits.parse().map_err(|_| bad())?;
    if !(200..=599).contains(&code) {
        return Err(bad());
    }
    match line.as_bytes().get(3) {
        None => Ok((code, false, "")),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(bad()),
    }
}

/// Splits an enhanced status off each line when the first line carries one matching the class.
fn build_reply(code: u16, lines: Vec<(u16, String)>) -> Reply {
    let first = lines.first().map(|(_, t)| t.as_str()).unwrap_or("");
    let enhanced = first
        .split_once(' ')
        .map(|(s, _)| s)
        .or(Some(first))
        .and_then(Enhanced::parse)
        .filter(|e| u16::from(e.class) == code / 100);
    let lines = lines
        .into_iter()
        .map(|(_, t)| match enhanced {
            Some(e) => {
                let prefix = e.to_string();
                match t.strip_prefix(prefix.as_str()) {
                    Some(rest) => rest.trim_start().to_string(),
                    None => t,
                }
            }
            None => t,
        })
        .collect();
    Reply {
        code,
        enhanced,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_single_and_multi() {
        let r = Reply::new(
            550,
            Enhanced::new(5, 1, 1),
            "<u@example.test>: User unknown",
        );
        assert_eq!(
            r.to_bytes(),
            b"550 5.1.1 <u@example.test>: User unknown\r\n"
        );
        let m = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.example.test".into(), "PIPELINING".into()],
        };
        assert_eq!(m.to_bytes(), b"250-mx.example.test\r\n250 PIPELINING\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::plain(250, "a\r\n250 b");
        assert_eq!(r.to_bytes(), b"250 a  250 b\r\n");
    }

    #[test]
    fn parse_round_trip_and_split() {
        let mut p = ReplyParser::default();
        p.push(b"250-mx.example.test\r\n250-PIPE");
        assert_eq!(p.next_reply(), Ok(None));
        p.push(b"LINING\r\n250 8BITMIME\r\n550 5.1.1 <u@x.test>: nope\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.lines, vec!["mx.example.test", "PIPELINING", "8BITMIME"]);
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.enhanced, Some(Enhanced::new(5, 1, 1)));
        assert_eq!(r.text(), "<u@x.test>: nope");
        assert_eq!(p.next_reply(), Ok(None));
    }

    #[test]
    fn parse_errors() {
        let mut p = ReplyParser::default();
        p.push(b"hello\r\n");
        assert!(matches!(p.next_reply(), Err(ReplyError::Malformed(_))));
        let mut p = ReplyParser::default();
        p.push(b"250-a\r\n251 b\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::MixedCodes));
        let mut p = ReplyParser::default();
        p.push(&[b'2'; 5000]);
        assert_eq!(p.next_reply(), Err(ReplyError::TooLong));
    }

    #[test]
    fn enhanced_only_when_class_matches() {
        let mut p = ReplyParser::default();
        p.push(b"250 5.1.1 odd\r\n220\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().enhanced, None);
        assert_eq!(p.next_reply().unwrap().unwrap().lines, vec![""]);
    }
}
