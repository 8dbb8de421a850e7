//! SMTP commands: parsing one command line (server side) and writing commands (client side).
//!
//! Responsible for: the verbs backstop speaks, the ESMTP parameters of MAIL and RCPT (SIZE,
//! BODY, SMTPUTF8, and the DSN parameters RET, ENVID, NOTIFY, ORCPT of RFC 3461, with xtext),
//! and a typed error for every malformed line.
//! Not responsible for: line framing (CRLF, bare LF/CR, length) which the session does before
//! calling [`Command::parse`], nor for whether a command is allowed in the current state.

use super::reply::{Enhanced, Reply};
use crate::address::{AddressError, ForwardPath, ReversePath};
use std::fmt;

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> params`
    Mail {
        /// The envelope sender.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> params`
    Rcpt {
        /// The envelope recipient.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `HELP [topic]`
    Help,
    /// `VRFY string`
    Vrfy,
    /// `EXPN string`
    Expn,
    /// `STARTTLS`
    StartTls,
}

/// `BODY=` of MAIL (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
}

/// `RET=` of MAIL (RFC 3461 §4.3): how much of the message a failure report may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// `RET=FULL`
    Full,
    /// `RET=HDRS`
    Hdrs,
}

/// The ESMTP parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n`: the client's size estimate.
    pub size: Option<u64>,
    /// `BODY=`
    pub body: Option<Body>,
    /// `SMTPUTF8`: addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// `RET=`
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<String>,
}

/// `NOTIFY=` of RCPT (RFC 3461 §4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// `NEVER` (then the other three are false).
    pub never: bool,
    /// `SUCCESS`
    pub success: bool,
    /// `FAILURE`
    pub failure: bool,
    /// `DELAY`
    pub delay: bool,
}

/// `ORCPT=addr-type;addr` of RCPT (RFC 3461 §4.2), decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orcpt {
    /// The address type, normally `rfc822` or `utf-8`; kept lower-case.
    pub addr_type: String,
    /// The original recipient, decoded from xtext (and from `\x{..}` for `utf-8`).
    pub addr: String,
}

/// The ESMTP parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`
    pub notify: Option<Notify>,
    /// `ORCPT=`
    pub orcpt: Option<Orcpt>,
}

/// Why a command line was refused; each maps to one standard reply via [`ParseError::reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown verb.
    Unrecognized,
    /// Known verb, wrong arguments; the text is the expected syntax.
    Syntax(&'static str),
    /// MAIL FROM address malformed.
    BadSender(AddressError),
    /// RCPT TO address malformed.
    BadRecipient(AddressError),
    /// An ESMTP parameter backstop does not support.
    UnsupportedParam(String),
    /// A supported parameter with a bad value.
    BadParamValue(String),
}

impl ParseError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unrecognized => {
                Reply::new(500, Enhanced::new(5, 5, 2), "Error: command not recognized")
            }
            ParseError::Syntax(s) => {
                Reply::new(501, Enhanced::new(5, 5, 4), format!("Syntax: {s}"))
            }
            ParseError::BadSender(e) => Reply::new(
                501,
                Enhanced::new(5, 1, 7),
                format!("Bad sender address syntax: {e}"),
            ),
            ParseError::BadRecipient(e) => Reply::new(
                501,
                Enhanced::new(5, 1, 3),
                format!("Bad recipient address syntax: {e}"),
            ),
            ParseError::UnsupportedParam(p) => Reply::new(
                555,
                Enhanced::new(5, 5, 4),
                format!("Unsupported option: {p}"),
            ),
            ParseError::BadParamValue(p) => Reply::new(
                501,
                Enhanced::new(5, 5, 4),
                format!("Bad parameter value: {p}"),
            ),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reply())
    }
}

/// Longest ENVID (RFC 3461 §4.4).
const MAX_ENVID: usize = 100;

impl Command {
    /// Parses one command line, without its CRLF. Never panics.
    pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
        let line = std::str::from_utf8(line).map_err(|_| ParseError::Unrecognized)?;
        let (verb, rest) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        let no_args = |c: Command, syntax| {
            if rest.trim().is_empty() {
                Ok(c)
            } else {
                Err(ParseError::Syntax(syntax))
            }
        };
        match verb.as_str() {
            "EHLO" => domain_arg(rest, "EHLO hostname").map(Command::Ehlo),
            "HELO" => domain_arg(rest, "HELO hostname").map(Command::Helo),
            "MAIL" => parse_mail(rest),
            "RCPT" => parse_rcpt(rest),
            "DATA" => no_args(Command::Data, "DATA"),
            "RSET" => no_args(Command::Rset, "RSET"),
            "QUIT" => no_args(Command::Quit, "QUIT"),
            "STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
            "NOOP" => Ok(Command::Noop),
            "HELP" => Ok(Command::Help),
            "VRFY" if rest.trim().is_empty() => Err(ParseError::Syntax("VRFY address")),
            "VRFY" => Ok(Command::Vrfy),
            "EXPN" => Ok(Command::Expn),
            _ => Err(ParseError::Unrecognized),
        }
    }
}

fn domain_arg(rest: &str, syntax: &'static str) -> Result<String, ParseError> {
    let arg = rest.trim();
    if arg.is_empty() || arg.contains(' ') || arg.chars().any(|c| c.is_control()) {
        return Err(ParseError::Syntax(syntax));
    }
    Ok(arg.to_string())
}

/// Splits `FROM:<path> params` into the path (with brackets) and the parameter words.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start_matches(' ');
    if !after.starts_with('<') {
        // a path without brackets: let the address parser say why it is wrong
        let end = after.find(' ').unwrap_or(after.len());
        return Some((&after[..end], &after[end..]));
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in after.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some((&after[..=i], &after[i + 1..])),
            _ => {}
        }
    }
    Some((after, ""))
}

/// Splits the `KEY[=VALUE]` words after the path; fails on a missing space or a repeated key.
fn params(rest: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::Syntax(
            "parameters must follow the address after a space",
        ));
    }
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for w in rest.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match w.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (w.to_ascii_uppercase(), None),
        };
        if key.is_empty() || out.iter().any(|(k, _)| *k == key) {
            return Err(ParseError::BadParamValue(w.to_string()));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn parse_mail(rest: &str) -> Result<Command, ParseError> {
    let (path, rest) =
        split_path(rest, "FROM:").ok_or(ParseError::Syntax("MAIL FROM:<address>"))?;
    let from = ReversePath::parse(path, true).map_err(ParseError::BadSender)?;
    let mut p = MailParams::default();
    for (key, value) in params(rest)? {
        let bad = || ParseError::BadParamValue(format!("{key}={}", value.unwrap_or("")));
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                p.size = Some(v.parse().ok().filter(|_| digits).ok_or_else(bad)?)
            }
            ("BODY", Some(v)) => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(ParseError::UnsupportedParam(format!("BODY={v}"))),
                })
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) => {
                p.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(bad()),
                })
            }
            ("ENVID", Some(v)) => {
                let id = xtext_decode(v)
                    .filter(|d| d.len() <= MAX_ENVID)
                    .ok_or_else(bad)?;
                p.envid = Some(id)
            }
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID", _) => return Err(bad()),
            _ => return Err(ParseError::UnsupportedParam(key)),
        }
    }
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(rest: &str) -> Result<Command, ParseError> {
    let (path, rest) = split_path(rest, "TO:").ok_or(ParseError::Syntax("RCPT TO:<address>"))?;
    let to = ForwardPath::parse(path, true).map_err(ParseError::BadRecipient)?;
    let mut p = RcptParams::default();
    for (key, value) in params(rest)? {
        let bad = || ParseError::BadParamValue(format!("{key}={}", value.unwrap_or("")));
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => p.notify = Some(parse_notify(v).ok_or_else(bad)?),
            ("ORCPT", Some(v)) => p.orcpt = Some(parse_orcpt(v).ok_or_else(bad)?),
            ("NOTIFY" | "ORCPT", _) => return Err(bad()),
            _ => return Err(ParseError::UnsupportedParam(key)),
        }
    }
    Ok(Command::Rcpt { to, params: p })
}

fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for word in v.split(',') {
        let flag = match word.to_ascii_uppercase().as_str() {
            "NEVER" => &mut n.never,
            "SUCCESS" => &mut n.success,
            "FAILURE" => &mut n.failure,
            "DELAY" => &mut n.delay,
            _ => return None,
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    // NEVER must stand alone (RFC 3461 §4.1)
    (!n.never || !(n.success || n.failure || n.delay)).then_some(n)
}

fn parse_orcpt(v: &str) -> Option<Orcpt> {
    let (ty, addr) = v.split_once(';')?;
    let is_atom =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !is_atom(ty) || addr.is_empty() {
        return None;
    }
    let ty = ty.to_ascii_lowercase();
    let mut addr = xtext_decode(addr)?;
    if ty == "utf-8" {
        addr = unitext_decode(&addr)?;
    }
    Some(Orcpt {
        addr_type: ty,
        addr,
    })
}

/// Decodes xtext (RFC 3461 §4): `+HH` escapes, every other char printable ASCII but `+` `=`.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'!'..=b'~' if b[i] != b'=' => {
                out.push(b[i]);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes xtext: printable ASCII but `+` and `=` as is, everything else `+HH`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes the `\x{HEX}` escapes of utf-8-addr-xtext / unitext (RFC 6533 §3).
fn unitext_decode(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\x{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let end = after.find('}')?;
        let code = u32::from_str_radix(&after[..end], 16).ok()?;
        out.push(char::from_u32(code)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Encodes utf-8-addr-xtext: non-ASCII, `+`, `=`, `\` and controls as `\x{HEX}`.
fn unitext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if ('!'..='~').contains(&c) && !"+=\\".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    out
}

/// What the peer server can do, for writing only the parameters it understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSupport {
    /// SIZE advertised.
    pub size: bool,
    /// 8BITMIME advertised.
    pub eight_bit_mime: bool,
    /// SMTPUTF8 advertised.
    pub smtputf8: bool,
    /// DSN advertised.
    pub dsn: bool,
}

impl MailParams {
    /// The parameter words to write after `MAIL FROM:<..>`, limited to what the peer supports.
    pub fn encode(&self, peer: PeerSupport) -> String {
        let mut s = String::new();
        if let (Some(n), true) = (self.size, peer.size) {
            s.push_str(&format!(" SIZE={n}"));
        }
        match (self.body, peer.eight_bit_mime) {
            (Some(Body::EightBitMime), true) => s.push_str(" BODY=8BITMIME"),
            (Some(Body::SevenBit), true) => s.push_str(" BODY=7BIT"),
            _ => {}
        }
        if self.smtputf8 && peer.smtputf8 {
            s.push_str(" SMTPUTF8");
        }
        if peer.dsn {
            match self.ret {
                Some(Ret::Full) => s.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => s.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(id) = &self.envid {
                s.push_str(&format!(" ENVID={}", xtext_encode(id)));
            }
        }
        s
    }
}

impl RcptParams {
    /// The parameter words to write after `RCPT TO:<..>`, limited to what the peer supports.
    pub fn encode(&self, peer: PeerSupport) -> String {
        let mut s = String::new();
        if !peer.dsn {
            return s;
        }
        if let Some(n) = self.notify {
            let words: Vec<&str> = [
                (n.never, "NEVER"),
                (n.success, "SUCCESS"),
                (n.failure, "FAILURE"),
                (n.delay, "DELAY"),
            ]
            .into_iter()
            .filter_map(|(on, w)| on.then_some(w))
            .collect();
            s.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
        if let Some(o) = &self.orcpt {
            let addr = if o.addr_type == "utf-8" {
                unitext_encode(&o.addr)
            } else {
                xtext_encode(&o.addr)
            };
            s.push_str(&format!(" ORCPT={};{}", o.addr_type, addr));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;

    fn p(s: &str) -> Result<Command, ParseError> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            p("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(p("QuIt"), Ok(Command::Quit));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert_eq!(p("XYZZY"), Err(ParseError::Unrecognized));
        assert_eq!(p("DATA x"), Err(ParseError::Syntax("DATA")));
        assert_eq!(p("EHLO"), Err(ParseError::Syntax("EHLO hostname")));
        assert_eq!(p("VRFY"), Err(ParseError::Syntax("VRFY address")));
    }

    #[test]
    fn mail_with_all_params() {
        let c =
            p("MAIL FROM:<a@client.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1")
                .unwrap();
        let Command::Mail { from, params } = c else {
            panic!()
        };
        assert_eq!(
            from,
            ReversePath::Mailbox(Mailbox::parse("a@client.test", false).unwrap())
        );
        assert_eq!(
            params,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+1".into()),
            }
        );
    }

    #[test]
    fn mail_tolerates_space_after_colon_and_null_sender() {
        let c = p("mail from: <>").unwrap();
        assert!(matches!(
            c,
            Command::Mail {
                from: ReversePath::Null,
                ..
            }
        ));
    }

    #[test]
    fn mail_errors() {
        assert_eq!(
            p("MAIL TO:<a@b.test>"),
            Err(ParseError::Syntax("MAIL FROM:<address>"))
        );
        assert!(matches!(
            p("MAIL FROM:a@b.test"),
            Err(ParseError::BadSender(_))
        ));
        assert_eq!(
            p("MAIL FROM:<> FOO=1"),
            Err(ParseError::UnsupportedParam("FOO".into()))
        );
        assert!(matches!(
            p("MAIL FROM:<> SIZE=12x"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> SIZE=1 SIZE=2"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> RET=ALL"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> ENVID=a b"),
            Err(ParseError::UnsupportedParam(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> ENVID=+ZZ"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> SMTPUTF8=yes"),
            Err(ParseError::BadParamValue(_))
        ));
        assert_eq!(
            p("MAIL FROM:<> BODY=BINARYMIME"),
            Err(ParseError::UnsupportedParam("BODY=BINARYMIME".into()))
        );
        assert!(matches!(
            p("MAIL FROM:<a@b.test>SIZE=1"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn rcpt_with_dsn_params() {
        let c = p("RCPT TO:<u@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;u+2Bx@example.test")
            .unwrap();
        let Command::Rcpt { params, .. } = c else {
            panic!()
        };
        assert_eq!(
            params.notify,
            Some(Notify {
                failure: true,
                delay: true,
                ..Notify::default()
            })
        );
        assert_eq!(
            params.orcpt,
            Some(Orcpt {
                addr_type: "rfc822".into(),
                addr: "u+x@example.test".into()
            })
        );
        let peer = PeerSupport {
            dsn: true,
            ..PeerSupport::default()
        };
        assert_eq!(
            params.encode(peer),
            " NOTIFY=FAILURE,DELAY ORCPT=rfc822;u+2Bx@example.test"
        );
        assert_eq!(params.encode(PeerSupport::default()), "");
    }

    #[test]
    fn rcpt_errors() {
        assert!(matches!(
            p("RCPT TO:<u@example.test> NOTIFY=NEVER,FAILURE"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("RCPT TO:<u@example.test> NOTIFY=SOMETIMES"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("RCPT TO:<u@example.test> ORCPT=x"),
            Err(ParseError::BadParamValue(_))
        ));
        assert!(matches!(
            p("RCPT TO:<>"),
            Err(ParseError::BadRecipient(AddressError::Empty))
        ));
        assert!(matches!(
            p("RCPT FROM:<u@example.test>"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            p("RCPT TO:<Postmaster>").unwrap(),
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default()
            }
        );
    }

    #[test]
    fn orcpt_utf8_round_trip() {
        let c = p("RCPT TO:<u@example.test> ORCPT=utf-8;j\\x{F6}rg@example.test").unwrap();
        let Command::Rcpt { params, .. } = c else {
            panic!()
        };
        assert_eq!(params.orcpt.as_ref().unwrap().addr, "jörg@example.test");
        let peer = PeerSupport {
            dsn: true,
            ..PeerSupport::default()
        };
        assert_eq!(params.encode(peer), " ORCPT=utf-8;j\\x{F6}rg@example.test");
    }

    #[test]
    fn quoted_local_part_with_space_and_bracket() {
        let c = p(r#"RCPT TO:<"a >b"@example.test> NOTIFY=NEVER"#).unwrap();
        let Command::Rcpt { to, params } = c else {
            panic!()
        };
        assert_eq!(to.to_string(), r#"<"a >b"@example.test>"#);
        assert!(params.notify.unwrap().never);
    }

    #[test]
    fn mail_params_encode_only_supported() {
        let m = MailParams {
            size: Some(10),
            body: Some(Body::EightBitMime),
            smtputf8: true,
            ret: Some(Ret::Full),
            envid: Some("a=b".into()),
        };
        let all = PeerSupport {
            size: true,
            eight_bit_mime: true,
            smtputf8: true,
            dsn: true,
        };
        assert_eq!(
            m.encode(all),
            " SIZE=10 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=a+3Db"
        );
        assert_eq!(m.encode(PeerSupport::default()), "");
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode("a+2Bb"), Some("a+b".into()));
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("+4"), None);
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
