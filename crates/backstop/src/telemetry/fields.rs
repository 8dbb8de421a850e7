//! How values from peers appear in log lines: never a control character (a client's HELO or
//! Message-ID cannot forge a line or hide in one), never longer than a bound, and addresses
//! in angle brackets as Postfix writes them (`from=<a@example.test>`, `from=<>`).
//!
//! Responsible for: the [`Clean`] and [`Angle`] wrappers that log fields are written through,
//! and the [`Client`] every line about a session names. Not responsible for: which fields a
//! line has (each event says).

use std::fmt::{self, Display, Write as _};
use std::net::IpAddr;

/// Longest HELO name shown.
pub const HELO_MAX: usize = 100;
/// Longest address shown.
pub const ADDRESS_MAX: usize = 320;
/// Longest Message-ID shown.
pub const MESSAGE_ID_MAX: usize = 200;
/// Longest reply or detail (a remote server's words, an error) shown.
pub const TEXT_MAX: usize = 500;

/// A value written with its control characters as `?`, cut at `max` characters (then `...`).
pub struct Clean<T>(pub T, pub usize);

impl<T: Display> Display for Clean<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = Bounded {
            out: f,
            left: self.1,
            cut: false,
        };
        let r = write!(w, "{}", self.0);
        if w.cut {
            return w.out.write_str("...");
        }
        r
    }
}

/// Writes at most `left` more characters, each control character as `?`.
struct Bounded<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    left: usize,
    cut: bool,
}

impl fmt::Write for Bounded<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // the usual case, at once: printable ASCII that fits
        if s.len() <= self.left && s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            self.left -= s.len();
            return self.out.write_str(s);
        }
        for c in s.chars() {
            if self.left == 0 {
                self.cut = true;
                return Ok(());
            }
            self.left -= 1;
            self.out.write_char(if c.is_control() { '?' } else { c })?;
        }
        Ok(())
    }
}

/// An address (or a Message-ID) in angle brackets, cleaned: `<a@example.test>`; the null
/// sender is `<>`.
pub struct Angle<T>(pub T);

impl<T: Display> Display for Angle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", Clean(&self.0, ADDRESS_MAX))
    }
}

/// Text from a peer or a remote server (a reply, an error), cleaned and bounded; logged as a
/// string, so the text format quotes it (it has spaces) and JSON keeps it whole.
pub fn text<T: Display>(t: T) -> String {
    Clean(t, TEXT_MAX).to_string()
}

/// The client side of a line: who is connected, what it called itself at HELO/EHLO (empty
/// before), and its TLS (protocol and cipher; empty: none).
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The client's IP address.
    pub ip: IpAddr,
    /// Its HELO/EHLO name, as given.
    pub helo: &'a str,
    /// `TLSv1.3:TLS13_AES_256_GCM_SHA384`, or empty.
    pub tls: &'a str,
}

impl Client<'_> {
    /// The HELO name for a log line: `<name>`, or `none` before HELO.
    pub fn helo(&self) -> HeloField<'_> {
        HeloField(self.helo)
    }

    /// The TLS for a log line: `TLSv1.3:TLS13_...`, or `none`.
    pub fn tls(&self) -> &str {
        match self.tls {
            "" => "none",
            t => t,
        }
    }
}

/// How a HELO name is written.
pub struct HeloField<'a>(&'a str);

impl Display for HeloField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => f.write_str("none"),
            h => write!(f, "<{}>", Clean(h, HELO_MAX)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_a_line_and_length_is_bounded() {
        assert_eq!(
            Clean("evil\r\nevent=\"forged\"\u{1b}[31m", 100).to_string(),
            "evil??event=\"forged\"?[31m"
        );
        assert_eq!(Clean("abcdef", 3).to_string(), "abc...");
        assert_eq!(Clean("abc", 3).to_string(), "abc");
        assert_eq!(Clean("\u{e9}t\u{e9}", 2).to_string(), "\u{e9}t...");
        assert_eq!(Angle("a@example.test").to_string(), "<a@example.test>");
        assert_eq!(Angle("").to_string(), "<>");
    }

    #[test]
    fn helo_and_tls_say_none_when_absent() {
        let c = Client {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "",
            tls: "",
        };
        assert_eq!(c.helo().to_string(), "none");
        assert_eq!(c.tls(), "none");
        let c = Client {
            helo: "mail.client.test\t",
            tls: "TLSv1.3:TLS13_AES_128_GCM_SHA256",
            ..c
        };
        assert_eq!(c.helo().to_string(), "<mail.client.test?>");
        assert_eq!(c.tls(), "TLSv1.3:TLS13_AES_128_GCM_SHA256");
    }
}
