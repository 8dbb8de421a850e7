//! Small text tools shared by the bounce readers: header-style field blocks, addresses, status
//! and reply codes found in free text.
//!
//! Responsible for: finding things in text, linearly and without panics.
//! Not responsible for: deciding what they mean.

use crate::smtp::reply::Enhanced;
use std::borrow::Cow;

/// A field of a delivery-status block: its name as written, its value (folded lines joined by
/// a space; borrowed unless folded).
pub type Field<'a> = (&'a str, Cow<'a, str>);

/// Field blocks of a `message/delivery-status` body: blocks split on empty lines, folded
/// lines unfolded.
pub fn blocks(text: &str) -> Vec<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut block: Vec<Field<'_>> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                out.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = block.last_mut() {
                let v = v.to_mut();
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            // a second recipient's fields written without the blank line between
            if name.eq_ignore_ascii_case("final-recipient")
                && block.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                out.push(std::mem::take(&mut block));
            }
            block.push((name, Cow::Borrowed(value.trim())));
        }
    }
    if !block.is_empty() {
        out.push(block);
    }
    out
}

/// The value of field `name` (lower-case) in a block, the name matched in any case.
pub fn field<'a>(block: &'a [Field<'_>], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
        .filter(|v| !v.is_empty())
}

/// Whether `s` starts with `prefix`, ASCII letters matched in any case.
pub fn starts_ignoring_case(s: &[u8], prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// `type; value` -> `value` (as in `rfc822; a@b`, `smtp; 550 ...`).
pub fn typed_value(v: &str) -> &str {
    match v.split_once(';') {
        Some((t, rest)) if !t.contains(' ') && t.len() < 20 => rest.trim(),
        Some(_) | None => v.trim(),
    }
}

/// The first mail address in `s` (inside `<>` preferred), lower-cased domain.
pub fn address(s: &str) -> Option<String> {
    if let Some(start) = s.find('<') {
        let rest = &s[start + 1..];
        if let Some(end) = rest.find('>') {
            let a = clean_address(&rest[..end]);
            if a.is_some() {
                return a;
            }
        }
    }
    if let Some(a) = quoted_address(s) {
        return Some(a);
    }
    // the first word around an `@` that is an address (words end at white space and
    // punctuation that cannot be in one)
    let sep = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | '(' | ')' | ',' | ';' | '"' | '\'' | '[' | ']'
            )
    };
    memchr::memchr_iter(b'@', s.as_bytes()).find_map(|at| {
        let start = s[..at]
            .rfind(sep)
            .map_or(0, |p| p + s[p..].chars().next().map_or(1, char::len_utf8));
        let end = s[at..].find(sep).map_or(s.len(), |p| at + p);
        clean_address(&s[start..end])
    })
}

/// An address whose local part is quoted (`"john..doe"@example.test`), quotes kept.
fn quoted_address(s: &str) -> Option<String> {
    let at = s.find("\"@")?;
    let open = s[..at].rfind('"')?;
    let end = s[at + 2..]
        .find(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .map_or(s.len(), |e| at + 2 + e);
    clean_address(&s[open..end])
}

fn clean_address(s: &str) -> Option<String> {
    let s = s
        .trim()
        .trim_start_matches("mailto:")
        .trim_end_matches(['.', ':']);
    let (local, domain) = s.rsplit_once('@')?;
    let quoted = local.len() > 2 && local.starts_with('"') && local.ends_with('"');
    let local = if quoted {
        local
    } else {
        local.trim_start_matches(['<', '"'])
    };
    let ok_domain = domain.contains('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let ok_local = !local.is_empty()
        && (quoted || !local.contains(char::is_whitespace) && !local.contains('@'));
    (ok_domain && ok_local).then(|| format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// The RFC 3463 status (`5.1.1`) in `s` that the server gave: the first one that follows an
/// SMTP reply code of its own class (`550 5.1.1`, `550-'5.2.2`), else the first one. A status
/// is a run of digits and dots starting with 2, 4 or 5 after a non-word character, that
/// [`Enhanced::parse`] accepts. (A report generator often writes its own status before the
/// server's reply: `5.1.0 - Unknown address error 550-'5.2.2 ... Mailbox Full'`; a give-up
/// notice quotes the last reply after its own: `554 4.4.7 Message expired ... <421 4.4.2 ...>`.)
pub fn status_in(s: &str) -> Option<String> {
    let b = s.as_bytes();
    // the status at `at` follows a reply code of its class: the code, then one or two of
    // space, `-`, quote (`550 5.1.1`, `550-5.1.1`, `550-'5.1.1`)
    let after_reply_code = |at: usize| {
        let mut j = at;
        while j > 0 && at - j < 2 && matches!(b[j - 1], b' ' | b'-' | b'\'' | b'"') {
            j -= 1;
        }
        j != at
            && j >= 3
            && b[j - 3] == b[at]
            && b[j - 2..j].iter().all(u8::is_ascii_digit)
            && (j == 3 || !(b[j - 4].is_ascii_alphanumeric() || b[j - 4] == b'.'))
    };
    let mut first = None;
    let mut i = 0;
    while i < b.len() {
        if !matches!(b[i], b'2' | b'4' | b'5')
            || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.'))
        {
            i += 1;
            continue;
        }
        let rest = &s[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let cand = rest[..end].trim_end_matches('.');
        if cand.split('.').count() == 3 && Enhanced::parse(cand).is_some() {
            if after_reply_code(i) {
                return Some(cand.to_string());
            }
            first.get_or_insert_with(|| cand.to_string());
        }
        i += end.max(1);
    }
    first
}

/// Which of two RFC 3463 statuses to believe: `field`, the report's `Status:`, or `said`, the
/// code in the remote server's own words (with its `reply` code, if any). A report generator
/// often writes a generic status where the server gave a precise one. The server's code wins
/// when: it alone agrees with the reply code's class; the field is generic (`X.0.0`, or has a
/// zero part while the server's code has none); or the field is one generators use for many
/// causes (`4.4.7` expired, `4.7.0`, `5.3.x` system, `X.5.x` protocol; `5.1.1` when the server
/// names another non-protocol cause; `5.1.3` when the server names a `5.7.x` refusal).
/// Otherwise the field. (The same preference sisimai applies.)
pub fn prefer(field: Option<String>, said: Option<String>, reply: Option<u16>) -> Option<String> {
    let (field, said) = match (field, said) {
        (Some(f), Some(s)) if f.len() >= 5 && s.len() >= 5 => (f, s),
        (f, s) => return f.filter(|f| f.len() >= 5).or(s),
    };
    let class = |s: &str| s.as_bytes()[0];
    if let Some(c) = reply.map(|r| b'0' + (r / 100) as u8)
        && class(&field) != class(&said)
    {
        if c == class(&field) {
            return Some(field);
        }
        if c == class(&said) {
            return Some(said);
        }
    }
    let generic = |s: &str| s.contains(".0.0");
    let has_zero = |s: &str| s.contains(".0");
    let pick_said = if field == said {
        false
    } else if generic(&field) {
        !generic(&said)
    } else if has_zero(&field) && !has_zero(&said) {
        true
    } else if generic(&said) {
        false
    } else if matches!(field.as_str(), "4.4.7" | "4.7.0")
        || field.starts_with("5.3.")
        || field
            .get(1..5)
            .is_some_and(|p| [".5.1", ".5.2", ".5.4", ".5.5"].contains(&p))
    {
        true
    } else if field == "5.1.1" {
        !has_zero(&said) && !said.starts_with("5.5.")
    } else {
        field == "5.1.3" && said.starts_with("5.7.")
    };
    Some(if pick_said { said } else { field })
}

/// The first SMTP reply code (`550`) in `s`: three digits 2xx/4xx/5xx standing alone.
pub fn reply_code_in(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        let w = &b[i..i + 3];
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
        let after_ok = b
            .get(i + 3)
            .is_none_or(|c| matches!(c, b' ' | b'-' | b'\t' | b'\r' | b'\n' | b')' | b'"' | b','));
        if before_ok
            && after_ok
            && matches!(w[0], b'4' | b'5')
            && w[1].is_ascii_digit()
            && w[2].is_ascii_digit()
            && w[1] <= b'5'
        {
            return std::str::from_utf8(w).ok()?.parse().ok();
        }
    }
    None
}

/// `s` on one line, runs of white space as one space, at most `max` bytes (whole words).
pub fn one_line(s: &str, max: usize) -> String {
    if !s.is_ascii() {
        return one_line_words(s, max);
    }
    // ASCII: the same, byte by byte
    let mut out = Vec::with_capacity(s.len().min(max));
    for w in s
        .as_bytes()
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
    {
        if out.len() + w.len() + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(w);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// [`one_line`] for any text: words split on Unicode white space.
fn one_line_words(s: &str, max: usize) -> String {
    let mut out = String::new();
    for w in s.split_whitespace() {
        if out.len() + w.len() + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The SMTP command a refusal answered, when the text says (`... in reply to end of DATA
/// command`, `after RCPT TO:<...>`, `MAIL FROM ... said`); `EHLO` for the greeting or the
/// connection (`after EHLO`, `after initial connection`, `refused to talk to me`).
pub fn command_in(s: &str) -> Option<&'static str> {
    // in this order: a refusal "after RCPT TO ... in reply to end of DATA" was at DATA
    const COMMANDS: &[(&str, &[&str])] = &[
        (
            "DATA",
            &[
                "end of data",
                "smtp command data",
                "after data",
                "final data",
                "data command",
                "reply to data",
            ],
        ),
        (
            "RCPT",
            &[
                "rcpt to",
                "rcpt command",
                "[rcpt_to]",
                "does not like recipient",
            ],
        ),
        ("MAIL", &["mail from"]),
        (
            "EHLO",
            &[
                "after ehlo",
                "after helo",
                "after initial connection",
                "refused to talk to me",
            ],
        ),
    ];
    let t = s.to_ascii_lowercase();
    COMMANDS
        .iter()
        .find(|(_, phrases)| phrases.iter().any(|p| t.contains(p)))
        .map(|(command, _)| *command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn the_servers_precise_code_beats_a_generic_status_field() {
        // "Status: 5.0.0" with "550 5.7.1 ... Relay access denied"
        assert_eq!(prefer(s("5.0.0"), s("5.7.1"), Some(550)), s("5.7.1"));
        // a 4.4.7 (expired) field says less than the last refusal
        assert_eq!(prefer(s("4.4.7"), s("4.7.1"), Some(450)), s("4.7.1"));
        // a specific field stands against a generic code in the text
        assert_eq!(prefer(s("5.1.1"), s("5.0.0"), Some(550)), s("5.1.1"));
        // the class the reply code agrees with wins
        assert_eq!(prefer(s("4.2.2"), s("5.2.2"), Some(452)), s("4.2.2"));
        assert_eq!(prefer(None, s("5.2.2"), None), s("5.2.2"));
        assert_eq!(prefer(s("5.1.1"), None, None), s("5.1.1"));
        assert_eq!(prefer(s("5.2.1"), s("5.7.1"), Some(550)), s("5.2.1"));
    }

    #[test]
    fn the_status_after_the_servers_reply_code_is_the_servers() {
        // a report generator's own code first, the server's after its reply code
        assert_eq!(
            status_in("5.0.0 (delivery failed) 550-'5.2.2 mailbox full'"),
            s("5.2.2")
        );
        assert_eq!(status_in("4.4.7 expired: 421 4.4.2 timeout"), s("4.4.2"));
        // no reply code before any: the first, as before
        assert_eq!(status_in("status 5.1.1 then 5.7.1"), s("5.1.1"));
        // a code of another class does not count
        assert_eq!(status_in("550 4.7.1 x 5.1.1"), s("4.7.1"));
        assert_eq!(status_in("no status here 550"), None);
    }

    #[test]
    fn one_line_joins_words_within_the_limit() {
        assert_eq!(one_line("  a\r\n\tb  c ", 100), "a b c");
        assert_eq!(one_line("abc def ghi", 8), "abc def");
        assert_eq!(one_line("été\u{a0}x  y", 100), "été x y");
    }

    #[test]
    fn quoted_local_parts_are_kept_whole() {
        assert_eq!(
            address(r#"rfc822; "john..doe"@Example.TEST"#),
            s(r#""john..doe"@example.test"#)
        );
        assert_eq!(
            address(r#"<"a b"@example.test>... User unknown"#),
            s(r#""a b"@example.test"#)
        );
        assert_eq!(address("user@example.test"), s("user@example.test"));
    }
}
