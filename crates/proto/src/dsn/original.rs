//! The original message as a delivery report sees it: its header section, its Message-ID, and
//! the copy of its headers that the report returns.
//!
//! Responsible for: finding the end of the header section, reading the Message-ID from folded
//! or odd headers, and turning the received header bytes into the third part of the report
//! (CRLF lines, no controls, no line over 998 bytes, no line that could be read as the MIME
//! boundary, at most [`CAP`] bytes).
//! Not responsible for: the message body, which a report never contains.

use super::text::HARD;

/// The most header bytes a report returns. Longer header sections are cut at the end of the
/// last whole line that fits, and the notification says so: a report must stay small enough
/// for any server to take, and a sender needs the first headers (Received, Message-ID,
/// Subject) to recognise the message, not all of them.
pub(super) const CAP: usize = 64 * 1024;

/// Longest Message-ID [`message_id`] returns, so that `In-Reply-To: <id>` fits on one line.
const MAX_ID: usize = 900;

/// The header section of a message: the bytes up to and including the first empty line
/// (CRLF CRLF or LF LF), or the whole input if there is none.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut pos = 0;
    loop {
        let rest = &message[pos..];
        if rest.starts_with(b"\r\n") {
            return &message[..pos + 2];
        }
        if rest.starts_with(b"\n") {
            return &message[..pos + 1];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => pos += i + 1,
            None => return message,
        }
    }
}

/// The lines of a header section without their line ends, up to (not including) the empty
/// line. A line ends at LF; one CR before it is dropped.
fn lines(headers: &[u8]) -> impl Iterator<Item = &[u8]> {
    let section = header_section(headers);
    let body = section.strip_suffix(b"\n").unwrap_or(section);
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

/// The Message-ID of a header section (without `<>`), for In-Reply-To and References.
///
/// Takes the first `Message-ID` field (name case-insensitive, value unfolded) and returns the
/// first `<...>` in it whose content is printable ASCII with an `@`; a value without brackets
/// is accepted when it is one such token. Anything else is `None`.
pub fn message_id(headers: &[u8]) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in lines(headers) {
        match (&mut value, line.first()) {
            (Some(v), Some(b' ' | b'\t')) => v.extend_from_slice(line),
            (Some(v), _) => return parse_id(v),
            (None, _) => value = field_value(line, b"message-id").map(<[u8]>::to_vec),
        }
    }
    value.and_then(|v| parse_id(&v))
}

/// The value of the field that `line` starts, if its name is `name` (lower case).
fn field_value<'l>(line: &'l [u8], name: &[u8]) -> Option<&'l [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (n, v) = line.split_at(colon);
    let n = n.strip_suffix(b" ").unwrap_or(n); // obsolete "Name :" (RFC 5322 §4.5)
    n.eq_ignore_ascii_case(name).then_some(&v[1..])
}

fn parse_id(value: &[u8]) -> Option<String> {
    let ok = |id: &[u8]| {
        (3..=MAX_ID).contains(&id.len())
            && id.contains(&b'@')
            && id
                .iter()
                .all(|&b| b.is_ascii_graphic() && b != b'<' && b != b'>')
    };
    for (i, _) in value.iter().enumerate().filter(|(_, b)| **b == b'<') {
        let rest = &value[i + 1..];
        if let Some(end) = rest.iter().position(|&b| b == b'>')
            && ok(&rest[..end])
        {
            return String::from_utf8(rest[..end].to_vec()).ok();
        }
    }
    let bare = value.trim_ascii();
    ok(bare).then(|| String::from_utf8_lossy(bare).into_owned())
}

/// The third part's content: the original's header lines as described in the module docs.
pub(super) struct Attached {
    /// CRLF lines.
    pub(super) bytes: Vec<u8>,
    /// Some byte is not ASCII (the part needs `Content-Transfer-Encoding: 8bit`).
    pub(super) eight_bit: bool,
    /// Lines were left off at [`CAP`].
    pub(super) cut: bool,
}

/// Prepares `headers` for the report whose MIME boundary is `boundary`.
///
/// Only the header section is used, so a caller passing the whole message never returns its
/// body. Controls other than TAB become spaces (a bare CR or LF cannot end a line). A line
/// that begins with `--{boundary}` would end the part early in parsers that match the
/// delimiter as a prefix (RFC 2046 §5.1.1 forbids it inside a part); it is kept but renamed
/// by prefixing `X-`, which keeps it a well-formed field and keeps the information.
pub(super) fn attach(headers: &[u8], boundary: &str) -> Attached {
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    let mut cut = false;
    for line in lines(headers) {
        let mut l: Vec<u8> = line
            .iter()
            .map(|&b| {
                if b.is_ascii_control() && b != b'\t' {
                    b' '
                } else {
                    b
                }
            })
            .collect();
        if l.starts_with(delimiter.as_bytes()) {
            l.splice(0..0, *b"X-");
        }
        let folded = hard_fold(&l);
        if out.len() + folded.len() + 2 > CAP {
            cut = true;
            break;
        }
        out.extend_from_slice(&folded);
        out.extend_from_slice(b"\r\n");
    }
    let eight_bit = !out.is_ascii();
    Attached {
        bytes: out,
        eight_bit,
        cut,
    }
}

/// Splits a line longer than [`HARD`] into continuation lines (CRLF + space), never inside a
/// UTF-8 sequence when the bytes are UTF-8.
fn hard_fold(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 8);
    let mut rest = line;
    let mut room = HARD;
    while rest.len() > room {
        let mut cut = room;
        // step back over UTF-8 continuation bytes (at most 3)
        while cut > room - 3 && rest[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        out.extend_from_slice(&rest[..cut]);
        out.extend_from_slice(b"\r\n ");
        rest = &rest[cut..];
        room = HARD - 1;
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_ends_at_first_empty_line() {
        assert_eq!(header_section(b"A: 1\r\n\r\nbody"), b"A: 1\r\n\r\n");
        assert_eq!(header_section(b"A: 1\nB: 2\n\nbody\n\n"), b"A: 1\nB: 2\n\n");
        assert_eq!(header_section(b"\r\nbody"), b"\r\n");
        assert_eq!(header_section(b"A: 1\r\nB: 2"), b"A: 1\r\nB: 2");
        assert_eq!(header_section(b""), b"");
    }

    #[test]
    fn hard_fold_keeps_utf8_sequences() {
        let line = "é".repeat(1200);
        let folded = hard_fold(line.as_bytes());
        let s = String::from_utf8(folded).unwrap();
        assert!(s.split("\r\n").all(|l| l.len() <= HARD));
        assert_eq!(s.replace("\r\n ", ""), line);
    }
}
