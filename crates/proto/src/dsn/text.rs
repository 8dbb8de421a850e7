//! Safe text for delivery reports: sanitising values and folding lines.
//!
//! Responsible for: turning any string into one that cannot end a line, start a header field or
//! break the MIME structure (every control character becomes a space), keeping a value 7-bit
//! when its part must be, the utf-8-addr-xtext form of RFC 6533 §3, and folding header fields
//! and wrapping text so that lines stay within 78 bytes where possible and never exceed 998.
//! Not responsible for: what the report says (`mod.rs`) or the original's headers
//! (`original.rs`).

/// Lines longer than this are folded or wrapped when there is white space to break at
/// (RFC 5322 §2.1.1 "SHOULD").
pub(super) const SOFT: usize = 78;
/// No line is ever longer than this, CRLF not counted (RFC 5322 §2.1.1 "MUST").
pub(super) const HARD: usize = 998;

/// Makes `s` safe for one header field value or one line of text: control characters
/// (CR, LF, TAB, NUL, DEL, C1) and other white space become one space, runs of spaces collapse,
/// ends are trimmed. Non-ASCII characters are kept when `utf8`, otherwise each becomes `?`.
pub(super) fn clean(s: &str, utf8: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else if !utf8 && !c.is_ascii() {
            '?'
        } else {
            c
        };
        if c != ' ' || !out.is_empty() && !out.ends_with(' ') {
            out.push(c);
        }
    }
    let len = out.trim_end().len();
    out.truncate(len);
    out
}

/// The utf-8-addr-xtext form (RFC 6533 §3): printable ASCII but `+`, `=` and `\` as is,
/// everything else as `\x{HEX}`. Pass a [`clean`]ed value: controls have no encoding there.
pub(super) fn utf8_addr_xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

/// The largest char boundary of `s` at or below `max`.
fn floor_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Builds CRLF-terminated lines from words, breaking before a word that would pass [`SOFT`]
/// and inside a word only where it alone would pass [`HARD`].
pub(super) struct Folder {
    out: String,
    line: usize,
    indent: &'static str,
    /// The current line holds a word (not only a field name or the indent).
    has_word: bool,
}

impl Folder {
    /// A header field `Name: value`; continuation lines start with one space (RFC 5322 §2.2.3).
    pub(super) fn field(name: &str) -> Folder {
        Folder {
            out: format!("{name}:"),
            line: name.len() + 1,
            indent: " ",
            has_word: false,
        }
    }

    /// Running text; continuation lines start with `indent`.
    pub(super) fn text(indent: &'static str) -> Folder {
        Folder {
            out: String::new(),
            line: 0,
            indent,
            has_word: false,
        }
    }

    /// Adds the space-separated words of `s` (pass a [`clean`]ed value).
    pub(super) fn words(mut self, s: &str) -> Folder {
        for w in s.split(' ').filter(|w| !w.is_empty()) {
            self.word(w);
        }
        self
    }

    fn word(&mut self, w: &str) {
        if self.has_word && self.line + 1 + w.len() > SOFT {
            self.newline();
        }
        if self.has_word || !self.out.is_empty() && self.line > self.indent.len() {
            self.out.push(' ');
            self.line += 1;
        }
        let mut rest = w;
        while self.line + rest.len() > HARD {
            let cut = floor_boundary(rest, HARD.saturating_sub(self.line));
            self.out.push_str(&rest[..cut]);
            rest = &rest[cut..];
            self.newline();
        }
        self.out.push_str(rest);
        self.line += rest.len();
        self.has_word = true;
    }

    fn newline(&mut self) {
        self.out.push_str("\r\n");
        self.out.push_str(self.indent);
        self.line = self.indent.len();
        self.has_word = false;
    }

    /// The folded lines, CRLF-terminated.
    pub(super) fn finish(mut self) -> String {
        self.out.push_str("\r\n");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_line_breaks_and_controls() {
        assert_eq!(clean(" a\r\nBcc: x\t\0y  z ", false), "a Bcc: x y z");
        assert_eq!(clean("jösé\u{85}x", false), "j?s? x");
        assert_eq!(clean("jösé", true), "jösé");
        assert_eq!(clean("\r\n", true), "");
    }

    #[test]
    fn xtext_form() {
        assert_eq!(
            utf8_addr_xtext("jösé+1@ex=a\\ b"),
            "j\\x{F6}s\\x{E9}\\x{2B}1@ex\\x{3D}a\\x{5C}\\x{20}b"
        );
    }

    #[test]
    fn field_folds_at_spaces_and_never_passes_hard_limit() {
        let f = Folder::field("Diagnostic-Code")
            .words(&"word ".repeat(30))
            .finish();
        assert!(f.starts_with("Diagnostic-Code: word word"));
        assert!(f.split("\r\n").all(|l| l.len() <= SOFT));
        assert!(
            f.split("\r\n")
                .skip(1)
                .all(|l| l.is_empty() || l.starts_with(' '))
        );
        let long = "é".repeat(2000);
        let f = Folder::field("X").words(&long).finish();
        assert!(f.split("\r\n").all(|l| l.len() <= HARD));
        assert_eq!(f.replace("\r\n ", "").trim_end(), format!("X: {long}"));
    }

    #[test]
    fn text_wraps_with_indent() {
        let t = Folder::text("    ").words(&"abc ".repeat(40)).finish();
        let lines: Vec<&str> = t.trim_end().split("\r\n").collect();
        assert!(lines.len() > 1);
        assert!(lines[0].starts_with("abc"));
        assert!(lines[1..].iter().all(|l| l.starts_with("    abc")));
    }
}
