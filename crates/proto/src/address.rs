//! Mail addresses as SMTP carries them (RFC 5321 §4.1.2, RFC 6531 for UTF-8).
//!
//! Responsible for: parsing the `<path>` of MAIL FROM and RCPT TO into typed values
//! ([`ReversePath`], [`ForwardPath`], [`Mailbox`], [`Domain`]), normalising domains to lower
//! case, and writing addresses back in wire form (quoting local parts when needed).
//! Not responsible for: deciding whether an address is acceptable (policy), nor for RFC 5322
//! header addresses (`From:` display names and groups).

use std::fmt;

/// Longest local part RFC 5321 §4.5.3.1.1 requires servers to accept.
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain RFC 5321 §4.5.3.1.2 requires servers to accept.
pub const MAX_DOMAIN: usize = 255;

/// A domain, lower-cased; either a host name or an address literal such as `[192.0.2.1]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses a host name (LDH labels; UTF-8 labels allowed when `utf8`) or an address literal.
    pub fn parse(s: &str, utf8: bool) -> Result<Domain, AddressError> {
        if s.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        // lower-case first: it can make UTF-8 longer, and the limits apply to what we keep
        let lower = s.to_lowercase();
        if lower.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong);
        }
        if lower.starts_with('[') {
            return parse_literal(&lower).map(|l| Domain(l.to_string()));
        }
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        for label in name.split('.') {
            if !valid_label(label, utf8) {
                return Err(AddressError::BadDomain);
            }
        }
        Ok(Domain(name.to_string()))
    }

    /// The domain as written on the wire (already lower-case).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when every character is ASCII (no SMTPUTF8 needed).
    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_label(label: &str, utf8: bool) -> bool {
    if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
        return false;
    }
    label.chars().all(|c| {
        c.is_ascii_alphanumeric() || c == '-' || (utf8 && !c.is_ascii() && !c.is_control())
    })
}

fn parse_literal(s: &str) -> Result<&str, AddressError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or(AddressError::BadDomain)?;
    let ok = if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        inner.parse::<std::net::Ipv4Addr>().is_ok()
    };
    if ok {
        Ok(s)
    } else {
        Err(AddressError::BadDomain)
    }
}

/// A mailbox `local@domain`. The local part keeps its case (RFC 5321 §2.4); compare with
/// [`Mailbox::key`] where case must not matter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Builds a mailbox from an already-unquoted local part and a parsed domain.
    pub fn new(local: &str, domain: Domain) -> Result<Mailbox, AddressError> {
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
        if local.chars().any(|c| c.is_control()) {
            return Err(AddressError::BadLocalPart);
        }
        Ok(Mailbox {
            local: local.to_string(),
            domain,
        })
    }

    /// Parses `local@domain` (no angle brackets); the local part may be a quoted string.
    pub fn parse(s: &str, utf8: bool) -> Result<Mailbox, AddressError> {
        let (local, rest) = parse_local_part(s, utf8)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
        Mailbox::new(&local, Domain::parse(domain, utf8)?)
    }

    /// The local part, unquoted.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// A case-insensitive lookup key: `local@domain`, all lower case, local part unquoted.
    pub fn key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }

    /// True when neither part needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    /// Wire form without brackets, quoting the local part when it is not a dot-atom.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_atom(&self.local, true) {
            write!(f, "{}@{}", self.local, self.domain)
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"@{}", self.domain)
        }
    }
}

/// The sender of MAIL FROM: the null path `<>` (bounces) or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: a delivery report or other automatic message that must never be answered.
    Null,
    /// An ordinary sender.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses the argument of `MAIL FROM:` (with angle brackets; source routes are dropped).
    pub fn parse(s: &str, utf8: bool) -> Result<ReversePath, AddressError> {
        let inner = strip_brackets(s)?;
        if inner.is_empty() {
            return Ok(ReversePath::Null);
        }
        Mailbox::parse(strip_source_route(inner)?, utf8).map(ReversePath::Mailbox)
    }

    /// The mailbox, unless this is the null path.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath {
    /// Wire form with brackets: `<>` or `<local@domain>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The recipient of RCPT TO: the special `<Postmaster>` (no domain) or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept (RFC 5321 §4.5.1).
    Postmaster,
    /// An ordinary recipient.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Parses the argument of `RCPT TO:` (with angle brackets; source routes are dropped).
    pub fn parse(s: &str, utf8: bool) -> Result<ForwardPath, AddressError> {
        let inner = strip_brackets(s)?;
        if inner.eq_ignore_ascii_case("postmaster") {
            return Ok(ForwardPath::Postmaster);
        }
        if inner.is_empty() {
            return Err(AddressError::Empty);
        }
        Mailbox::parse(strip_source_route(inner)?, utf8).map(ForwardPath::Mailbox)
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Why an address did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// No angle brackets around the path.
    MissingBrackets,
    /// `<>` where a mailbox is required.
    Empty,
    /// Nothing before the `@`.
    EmptyLocalPart,
    /// No `@domain`.
    MissingDomain,
    /// Nothing after the `@`.
    EmptyDomain,
    /// A local part that is neither a dot-atom nor a quoted string.
    BadLocalPart,
    /// A domain that is neither a host name nor an address literal.
    BadDomain,
    /// Over the RFC 5321 length limits.
    TooLong,
    /// Non-ASCII characters without SMTPUTF8.
    NonAscii,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::MissingBrackets => "address must be enclosed in <>",
            AddressError::Empty => "empty address",
            AddressError::EmptyLocalPart => "empty local part",
            AddressError::MissingDomain => "missing @domain",
            AddressError::EmptyDomain => "empty domain",
            AddressError::BadLocalPart => "invalid local part",
            AddressError::BadDomain => "invalid domain",
            AddressError::TooLong => "address too long",
            AddressError::NonAscii => "non-ASCII address without SMTPUTF8",
        })
    }
}

impl std::error::Error for AddressError {}

fn strip_brackets(s: &str) -> Result<&str, AddressError> {
    s.strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(AddressError::MissingBrackets)
}

/// Drops an obsolete source route `@a,@b:` (RFC 5321 §4.1.2 says to accept and ignore it).
fn strip_source_route(s: &str) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let (route, rest) = s.split_once(':').ok_or(AddressError::BadDomain)?;
    for hop in route.split(',') {
        let d = hop.strip_prefix('@').ok_or(AddressError::BadDomain)?;
        Domain::parse(d, true)?;
    }
    Ok(rest)
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (utf8 && !c.is_ascii() && !c.is_control())
}

fn is_dot_atom(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(|c| is_atext(c, utf8)))
}

/// Parses a local part at the start of `s`; returns it unquoted, and the rest (`@domain`).
fn parse_local_part(s: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    if let Some(rest) = s.strip_prefix('"') {
        return parse_quoted(rest, utf8);
    }
    let end = s.rfind('@').ok_or(AddressError::MissingDomain)?;
    let local = &s[..end];
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if !is_dot_atom(local, true) {
        return Err(AddressError::BadLocalPart);
    }
    if !utf8 && !local.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    Ok((local.to_string(), &s[end..]))
}

fn parse_quoted(s: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, q)) if (' '..='~').contains(&q) => out.push(q),
                _ => return Err(AddressError::BadLocalPart),
            },
            c if (' '..='~').contains(&c) => out.push(c),
            c if utf8 && !c.is_ascii() && !c.is_control() => out.push(c),
            c if !c.is_ascii() && !c.is_control() => return Err(AddressError::NonAscii),
            _ => return Err(AddressError::BadLocalPart),
        }
    }
    Err(AddressError::BadLocalPart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mailbox_keeps_local_case_and_lowers_domain() {
        let m = Mailbox::parse("John.Doe@Example.TEST", false).unwrap();
        assert_eq!(m.local(), "John.Doe");
        assert_eq!(m.domain().as_str(), "example.test");
        assert_eq!(m.key(), "john.doe@example.test");
        assert_eq!(m.to_string(), "John.Doe@example.test");
    }

    #[test]
    fn quoted_local_part_is_unquoted_and_requoted() {
        let m = Mailbox::parse(r#""john doe\"x"@example.test"#, false).unwrap();
        assert_eq!(m.local(), "john doe\"x");
        assert_eq!(m.to_string(), r#""john doe\"x"@example.test"#);
        let q = Mailbox::parse(r#""plain"@example.test"#, false).unwrap();
        assert_eq!(q.to_string(), "plain@example.test");
    }

    #[test]
    fn paths() {
        assert_eq!(ReversePath::parse("<>", false), Ok(ReversePath::Null));
        assert_eq!(
            ForwardPath::parse("<postMaster>", false),
            Ok(ForwardPath::Postmaster)
        );
        assert_eq!(ForwardPath::parse("<>", false), Err(AddressError::Empty));
        assert_eq!(
            ReversePath::parse("a@b.test", false),
            Err(AddressError::MissingBrackets)
        );
        let r = ForwardPath::parse("<@relay.test,@b.test:u@example.test>", false).unwrap();
        assert_eq!(r.to_string(), "<u@example.test>");
        assert!(ForwardPath::parse("<u@[192.0.2.1]>", false).is_ok());
        assert!(ForwardPath::parse("<u@[IPv6:2001:db8::1]>", false).is_ok());
        assert!(ForwardPath::parse("<u@[300.1.1.1]>", false).is_err());
    }

    #[test]
    fn bad_addresses() {
        for bad in [
            "<u@>",
            "<@example.test>",
            "<u>",
            "<u..v@example.test>",
            "<u@-x.test>",
            "<u@ex ample.test>",
            "<\"unterminated@example.test>",
            "<u@example..test>",
        ] {
            assert!(ForwardPath::parse(bad, false).is_err(), "{bad}");
        }
        let long = format!("<{}@example.test>", "a".repeat(65));
        assert_eq!(ForwardPath::parse(&long, false), Err(AddressError::TooLong));
    }

    #[test]
    fn utf8_only_with_smtputf8() {
        assert_eq!(
            Mailbox::parse("jösé@example.test", false),
            Err(AddressError::NonAscii)
        );
        assert!(Mailbox::parse("u@exämple.test", false).is_err());
        let m = Mailbox::parse("jösé@exämple.test", true).unwrap();
        assert!(!m.is_ascii());
    }

    #[test]
    fn limits_apply_after_lower_casing() {
        // U+023A is 2 bytes, its lower case U+2C65 is 3: found by the command fuzz target
        let label = format!("\u{23A}{}", "a".repeat(61));
        assert_eq!(label.len(), 63);
        assert_eq!(Domain::parse(&label, true), Err(AddressError::BadDomain));
        let ok = format!("\u{2C65}{}", "a".repeat(60));
        let d = Domain::parse(&ok, true).unwrap();
        assert_eq!(Domain::parse(d.as_str(), true), Ok(d));
    }
}
