//! `[[ldap]]`: the directories that `ldap:NAME` recipient sources look addresses up in, as
//! written and as validated.
//!
//! Responsible for: every key of the table checked when the file is read (URLs, the filter
//! template, the bind DN with its password given inline or in a file, the CA), so that a bad
//! value is refused with its key before anything runs; the password never printed. Not
//! responsible for: talking to a directory (`policy::directory`).

use super::raw::duration;
use super::{ConfigError, invalid};
use backstop_proto::ldap_filter::{ACTIVE_DIRECTORY, OPENLDAP, Template};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One directory (`[[ldap]]`), named by `ldap:NAME` in a domain's `recipients`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ldap {
    /// What sources call it.
    pub name: String,
    /// `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]`, tried in this order.
    #[serde(rename = "url")]
    pub urls: Vec<String>,
    /// StartTLS on the `ldap://` URLs (required: no fallback to plain text).
    pub starttls: bool,
    /// The DN bound as; none: anonymous.
    pub bind_dn: Option<String>,
    /// Its password (inline or read from `bind_password_file`); never printed.
    #[serde(serialize_with = "super::serialize_token")]
    pub bind_password: Option<String>,
    /// Where the password was read from, if from a file.
    pub bind_password_file: Option<PathBuf>,
    /// The search base.
    pub base: String,
    /// The search filter (`%s` the address, `%u` its local part, `%d` its domain).
    #[serde(serialize_with = "serialize_template")]
    pub filter: Template,
    /// The PEM CA certificate(s) the servers' certificates are checked with (ldaps and
    /// StartTLS); none: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// Each connect, bind and search.
    #[serde(serialize_with = "super::duration::serialize")]
    pub timeout: Duration,
    /// Idle connections kept open.
    pub max_connections: usize,
}

fn serialize_template<S: serde::Serializer>(t: &Template, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.as_str())
}

/// One URL or several (a list, or one string with spaces between, as `ldapsearch -H` takes).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Urls {
    One(String),
    Many(Vec<String>),
}

/// `[[ldap]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLdap {
    name: String,
    url: Urls,
    starttls: Option<bool>,
    bind_dn: Option<String>,
    bind_password: Option<String>,
    bind_password_file: Option<String>,
    base: String,
    filter: Option<String>,
    tls_ca: Option<String>,
    timeout: Option<String>,
    max_connections: Option<usize>,
}

impl RawLdap {
    /// `ldap[i]` checked; files relative to `base_dir`.
    pub(super) fn validate(&self, i: usize, base_dir: &Path) -> Result<Ldap, ConfigError> {
        let key = |k: &str| format!("ldap[{i}].{k}");
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.name.is_empty() || !self.name.chars().all(fine) {
            let why = format!("{:?}: letters, digits, '-', '_' and '.' only", self.name);
            return Err(invalid(key("name"), why));
        }
        let urls = self.urls().map_err(|m| invalid(key("url"), m))?;
        let starttls = self.starttls.unwrap_or(false);
        if starttls && urls.iter().all(|u| u.starts_with("ldaps://")) {
            let why = "StartTLS is for ldap:// URLs; ldaps:// is TLS from the start";
            return Err(invalid(key("starttls"), why));
        }
        let filter = self.filter(&key("filter"))?;
        let (bind_dn, bind_password, bind_password_file) = self.bind(i, base_dir)?;
        if self.base.trim().is_empty() {
            let why = "the search base is needed (like \"dc=example,dc=test\")";
            return Err(invalid(key("base"), why));
        }
        let uses_tls = starttls || urls.iter().any(|u| u.starts_with("ldaps://"));
        let tls_ca = match &self.tls_ca {
            Some(_) if !uses_tls => {
                let why = "only for TLS: use ldaps:// URLs or starttls = true";
                return Err(invalid(key("tls_ca"), why));
            }
            Some(s) => Some(super::raw::trust_anchors(&key("tls_ca"), base_dir, s)?),
            None => None,
        };
        let timeout = duration(&key("timeout"), &self.timeout, "5s")?;
        if timeout < Duration::from_secs(1) {
            return Err(invalid(key("timeout"), "must be at least 1s"));
        }
        let max_connections = self.max_connections.unwrap_or(8);
        if !(1..=1000).contains(&max_connections) {
            return Err(invalid(key("max_connections"), "must be 1 to 1000"));
        }
        Ok(Ldap {
            name: self.name.clone(),
            urls,
            starttls,
            bind_dn,
            bind_password,
            bind_password_file,
            base: self.base.trim().to_string(),
            filter,
            tls_ca,
            timeout,
            max_connections,
        })
    }

    fn urls(&self) -> Result<Vec<String>, String> {
        let list: Vec<String> = match &self.url {
            Urls::One(s) => s.split_whitespace().map(str::to_string).collect(),
            Urls::Many(v) => v.iter().map(|s| s.trim().to_string()).collect(),
        };
        if list.is_empty() {
            return Err("at least one URL is needed (like \"ldaps://dc1.example.test\")".into());
        }
        for u in &list {
            let rest = u
                .strip_prefix("ldap://")
                .or_else(|| u.strip_prefix("ldaps://"));
            let host = rest.map(|r| r.strip_suffix('/').unwrap_or(r));
            match host {
                Some(h) if !h.is_empty() && !h.contains(['/', '?', '@', ' ']) => {}
                _ => {
                    return Err(format!(
                        "{u:?}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]"
                    ));
                }
            }
        }
        Ok(list)
    }

    fn filter(&self, key: &str) -> Result<Template, ConfigError> {
        let text = match self.filter.as_deref() {
            None => {
                let why = "which filter finds an address: \"active-directory\", \"openldap\", \
                           or a filter like \"(mail=%s)\"";
                return Err(invalid(key, why));
            }
            Some("active-directory") => ACTIVE_DIRECTORY,
            Some("openldap") => OPENLDAP,
            Some(t) => t,
        };
        Template::parse(text).map_err(|e| invalid(key, format!("{text:?}: {e}")))
    }

    /// The bind DN and its password (inline or from a file), both or neither.
    fn bind(&self, i: usize, base_dir: &Path) -> Result<Bind, ConfigError> {
        let key = |k: &str| format!("ldap[{i}].{k}");
        let file = self.bind_password_file.as_deref();
        let password = match (&self.bind_password, file) {
            (Some(_), Some(_)) => {
                let why = "the password is given twice: keep bind_password or bind_password_file";
                return Err(invalid(key("bind_password_file"), why));
            }
            (Some(p), None) => Some((p.clone(), None)),
            (None, Some(f)) => {
                let p = super::raw::path(base_dir, f);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    invalid(
                        key("bind_password_file"),
                        format!("{}: cannot read it: {e}", p.display()),
                    )
                })?;
                // a file written by `echo` ends with a newline that is not the password's
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                Some((text.to_string(), Some(p)))
            }
            (None, None) => None,
        };
        match (&self.bind_dn, password) {
            (Some(dn), Some((pw, file))) if !dn.trim().is_empty() => {
                Ok((Some(dn.trim().to_string()), Some(pw), file))
            }
            (Some(_), Some(_)) => Err(invalid(key("bind_dn"), "empty")),
            (Some(_), None) => Err(invalid(
                key("bind_password"),
                "bind_dn needs a password: bind_password or bind_password_file \
                 (leave both out for an anonymous search)",
            )),
            (None, Some(_)) => Err(invalid(
                key("bind_dn"),
                "a password without bind_dn: name the DN to bind as",
            )),
            (None, None) => Ok((None, None, None)),
        }
    }
}

/// The bind DN, its password, and the file it came from.
type Bind = (Option<String>, Option<String>, Option<PathBuf>);
