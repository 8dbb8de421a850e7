//! `[[dkim]]`: the keys that sign mail leaving through the gateway, as written and as
//! validated.
//!
//! Responsible for: every key of the table checked when the file is read (domain, selector,
//! algorithm, key file path, whether the key signs), and the rules between tables (a selector
//! once per domain, at most one signing key per domain and algorithm). Not responsible for:
//! reading, generating or using a key (`crate::dkim`).

use super::{ConfigError, invalid};
use backstop_proto::address::Domain;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// A DKIM signing algorithm (RFC 6376 `rsa-sha256`, RFC 8463 `ed25519-sha256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// RSA, 2048 bits when generated, SHA-256.
    Rsa,
    /// Ed25519, SHA-256.
    Ed25519,
}

impl DkimAlgorithm {
    /// The `k=` of its DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_type())
    }
}

/// One key (`[[dkim]]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dkim {
    /// The signing domain (`d=`): mail whose author (From:) is at this domain or under it.
    pub domain: String,
    /// The selector (`s=`): the key's record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The key's algorithm.
    pub algorithm: DkimAlgorithm,
    /// The private key (PEM, PKCS#8 or PKCS#1); none: generated into
    /// `state_dir/dkim/DOMAIN.SELECTOR.key` the first time it is needed.
    pub key: Option<PathBuf>,
    /// Whether it signs now; `false`: a key kept for rotation (published, not used).
    pub sign: bool,
}

/// `[[dkim]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    domain: String,
    selector: String,
    algorithm: Option<String>,
    key: Option<String>,
    sign: Option<bool>,
}

impl RawDkim {
    /// `dkim[i]` checked; a key file relative to `base_dir`.
    fn validate(&self, i: usize, base_dir: &Path) -> Result<Dkim, ConfigError> {
        let key = |k: &str| format!("dkim[{i}].{k}");
        let domain = Domain::parse(&self.domain, false)
            .map_err(|e| invalid(key("domain"), format!("{:?}: {e}", self.domain)))?;
        let selector = self.selector.to_ascii_lowercase();
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !selector.split('.').all(label) {
            let why = format!(
                "{:?}: one or more DNS labels (letters, digits, '-'), like \"s2026\"",
                self.selector
            );
            return Err(invalid(key("selector"), why));
        }
        let algorithm = match self.algorithm.as_deref().map(str::to_ascii_lowercase) {
            None => DkimAlgorithm::Rsa,
            Some(a) if a == "rsa" || a == "rsa-sha256" => DkimAlgorithm::Rsa,
            Some(a) if a == "ed25519" || a == "ed25519-sha256" => DkimAlgorithm::Ed25519,
            Some(a) => {
                let why = format!("{a:?}: \"rsa\" (rsa-sha256) or \"ed25519\" (ed25519-sha256)");
                return Err(invalid(key("algorithm"), why));
            }
        };
        let file = match self.key.as_deref() {
            Some("") => return Err(invalid(key("key"), "empty: leave it out to generate one")),
            Some(f) => Some(super::raw::path(base_dir, f)),
            None => None,
        };
        Ok(Dkim {
            domain: domain.as_str().to_ascii_lowercase(),
            selector,
            algorithm,
            key: file,
            sign: self.sign.unwrap_or(true),
        })
    }
}

/// Every `[[dkim]]` checked, one against the other.
pub(super) fn validate_all(raw: &[RawDkim], base_dir: &Path) -> Result<Vec<Dkim>, ConfigError> {
    let mut keys: Vec<Dkim> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let k = r.validate(i, base_dir)?;
        if keys
            .iter()
            .any(|o| o.domain == k.domain && o.selector == k.selector)
        {
            let why = format!(
                "{:?} is configured twice for {} (one selector, one key)",
                k.selector, k.domain
            );
            return Err(invalid(format!("dkim[{i}].selector"), why));
        }
        let twin = keys
            .iter()
            .find(|o| k.sign && o.sign && o.domain == k.domain && o.algorithm == k.algorithm);
        if let Some(o) = twin {
            let why = format!(
                "{} already signs with the {} key of selector {:?}: one signing key per \
                 algorithm; set sign = false on the key being prepared or retired",
                k.domain, k.algorithm, o.selector
            );
            return Err(invalid(format!("dkim[{i}].sign"), why));
        }
        keys.push(k);
    }
    Ok(keys)
}
