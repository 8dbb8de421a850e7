//! LDAP search filters for recipient lookups: a configured template (`(mail=%s)`) filled in
//! with a recipient's address, every value escaped as RFC 4515 requires, so that an address
//! holding `*`, `(`, `)` or `\` never widens or rewrites the query.
//!
//! Responsible for: checking a template when the configuration is read (known placeholders,
//! balanced parentheses), and rendering it for one address. Placeholders are Postfix's
//! `ldap_table(5)` ones: `%s` the whole address, `%u` its local part, `%d` its domain, `%%` a
//! percent sign. Not responsible for: talking to a directory, or which attributes say that an
//! account is disabled (that is the template's business: the defaults below).
//!
//! Pure: no I/O. Here rather than beside the LDAP client so that the configuration can check
//! a template when it is read.

/// Active Directory: the primary address or any SMTP proxy address, accounts that are not
/// disabled (the `ACCOUNTDISABLE` bit, 2, of `userAccountControl`, tested with the bitwise-AND
/// matching rule).
pub const ACTIVE_DIRECTORY: &str = "(&(|(mail=%s)(proxyAddresses=smtp:%s))\
     (!(userAccountControl:1.2.840.113556.1.4.803:=2)))";

/// OpenLDAP with the usual mail schemas: the address or one of its aliases.
pub const OPENLDAP: &str = "(|(mail=%s)(mailAlternateAddress=%s))";

/// Why a template cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// `%` followed by something else than `s`, `u`, `d` or `%`.
    Placeholder(char),
    /// A `%` at the very end.
    Trailing,
    /// Parentheses that do not pair up, or a filter not in parentheses.
    Parentheses,
    /// No placeholder at all: every address would get the same answer.
    NoAddress,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Placeholder(c) => write!(
                f,
                "unknown placeholder %{c} (use %s for the address, %u its local part, \
                 %d its domain, %% for %)"
            ),
            TemplateError::Trailing => {
                f.write_str("a lone % at the end (use %% for a percent sign)")
            }
            TemplateError::Parentheses => {
                f.write_str("not a filter: it must be in parentheses, each opened one closed")
            }
            TemplateError::NoAddress => {
                f.write_str("no %s, %u or %d: the filter would not depend on the address")
            }
        }
    }
}

impl std::error::Error for TemplateError {}

/// A checked filter template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// Checks `text` as a template.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let text = text.trim();
        let mut depth = 0usize;
        let mut placeholders = 0;
        let mut chars = text.chars();
        // one parenthesised filter: the first character opens it, the last closes it
        let mut closed = false;
        while let Some(c) = chars.next() {
            if closed || (depth == 0 && c != '(') {
                return Err(TemplateError::Parentheses);
            }
            match c {
                '%' => match chars.next() {
                    Some('s' | 'u' | 'd') => placeholders += 1,
                    Some('%') => {}
                    Some(other) => return Err(TemplateError::Placeholder(other)),
                    None => return Err(TemplateError::Trailing),
                },
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    closed = depth == 0;
                }
                _ => {}
            }
        }
        if !closed {
            return Err(TemplateError::Parentheses);
        }
        if placeholders == 0 {
            return Err(TemplateError::NoAddress);
        }
        Ok(Template(text.to_string()))
    }

    /// The template as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter for `address` (`local@domain`): each placeholder replaced by its part,
    /// escaped.
    pub fn render(&self, address: &str) -> String {
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let mut out = String::with_capacity(self.0.len() + 2 * address.len());
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('s') => out.push_str(&escape(address)),
                Some('u') => out.push_str(&escape(local)),
                Some('d') => out.push_str(&escape(domain)),
                // `%%` (a checked template has nothing else after a `%`)
                _ => out.push('%'),
            }
        }
        out
    }
}

/// `value` escaped for an LDAP filter (RFC 4515 section 3): `*`, `(`, `)`, `\` and NUL as `\`
/// and two hex digits; everything else as it is (UTF-8 is allowed in a filter value).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_would_widen_a_query_are_escaped() {
        assert_eq!(escape("*@example.test"), "\\2a@example.test");
        assert_eq!(escape("a)(mail=*"), "a\\29\\28mail=\\2a");
        assert_eq!(escape("back\\slash\0"), "back\\5cslash\\00");
        assert_eq!(escape("josé@example.test"), "josé@example.test");
    }

    #[test]
    fn a_template_is_filled_with_the_escaped_address_and_its_parts() {
        let t = Template::parse("(&(uid=%u)(domain=%d)(|(mail=%s)(x=100%%)))").unwrap();
        assert_eq!(
            t.render("a)(mail=*@example.test"),
            "(&(uid=a\\29\\28mail=\\2a)(domain=example.test)\
             (|(mail=a\\29\\28mail=\\2a@example.test)(x=100%)))"
        );
        let ad = Template::parse(ACTIVE_DIRECTORY).unwrap();
        assert_eq!(
            ad.render("bob@example.test"),
            "(&(|(mail=bob@example.test)(proxyAddresses=smtp:bob@example.test))\
             (!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
        );
        let ol = Template::parse(OPENLDAP).unwrap();
        assert_eq!(
            ol.render("*@example.test"),
            "(|(mail=\\2a@example.test)(mailAlternateAddress=\\2a@example.test))"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        assert_eq!(
            Template::parse("(mail=%x)"),
            Err(TemplateError::Placeholder('x'))
        );
        assert_eq!(Template::parse("(mail=%"), Err(TemplateError::Trailing));
        assert_eq!(Template::parse("(mail=%s"), Err(TemplateError::Parentheses));
        assert_eq!(Template::parse("mail=%s"), Err(TemplateError::Parentheses));
        for not_one_filter in ["(mail=%s))(", "(a=%s)(b=%s)", "(a=%s)%s", ""] {
            assert_eq!(
                Template::parse(not_one_filter),
                Err(TemplateError::Parentheses),
                "{not_one_filter}"
            );
        }
        assert_eq!(
            Template::parse("(objectClass=person)"),
            Err(TemplateError::NoAddress)
        );
        let e = Template::parse("(mail=%x)").unwrap_err().to_string();
        assert!(e.contains("%s for the address"), "{e}");
    }
}
