//! MTA-STS (RFC 8461): whether a destination domain demands verified TLS of the mail sent to
//! it, and to which MX hosts.
//!
//! Responsible for: the `_mta-sts.DOMAIN` TXT record (its `id`), fetching the policy from
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (certificate verified for that name, no
//! redirects, 200 only, 64 KiB at most, bounded in time), parsing it, matching MX host names
//! against its `mx` patterns, and keeping policies for their `max_age` (a policy whose `id`
//! has not changed is not fetched again; a failed fetch keeps the one cached, as §5 says).
//! Not responsible for: connecting to the MX hosts or verifying their certificates
//! (`delivery::smtp`), nor reporting (TLS-RPT).

use super::mx::MxResolver;
use bytes::Bytes;
use mail_auth::common::parse::TxtRecordParser;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// The longest policy read (RFC 8461 §3.3 suggests 64 KiB).
const MAX_POLICY: usize = 64 * 1024;
/// The longest a policy is kept (RFC 8461 §3.2: max_age at most 31557600).
const MAX_AGE: u64 = 31_557_600;

/// What a policy asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only over verified TLS to an MX host the policy names.
    Enforce,
    /// Report failures, deliver anyway.
    Testing,
    /// No policy (a domain withdrawing one).
    None,
}

impl Mode {
    /// As the policy writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// One domain's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The `id` of the TXT record it was fetched for.
    pub id: String,
    /// Its mode.
    pub mode: Mode,
    /// The MX host patterns (`mx.example.test`, `*.example.test`), lower case.
    pub mx: Vec<String>,
    /// How long it may be kept, in seconds.
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy body (`version: STSv1`, `mode`, `mx` lines, `max_age`).
    pub fn parse(id: &str, text: &str) -> Result<Policy, String> {
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "version" => version = Some(v.to_string()),
                "mode" => {
                    mode = Some(match v {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        _ => return Err(format!("mode {v:?}: enforce, testing or none")),
                    })
                }
                "max_age" => {
                    max_age = Some(v.parse::<u64>().map_err(|_| format!("max_age {v:?}"))?)
                }
                "mx" => mx.push(v.trim_end_matches('.').to_ascii_lowercase()),
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("no \"version: STSv1\" line".into());
        }
        let mode = mode.ok_or("no mode line")?;
        let max_age = max_age.ok_or("no max_age line")?.min(MAX_AGE);
        if mx.is_empty() && mode != Mode::None {
            return Err("no mx line".into());
        }
        Ok(Policy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
        })
    }

    /// The policy as its lines (`version: STSv1`, `mode: enforce`, `mx: ...`, `max_age: ...`),
    /// as TLS reports quote it.
    pub fn lines(&self) -> Vec<String> {
        let mode = match self.mode {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        };
        let mut out = vec!["version: STSv1".to_string(), format!("mode: {mode}")];
        out.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        out.push(format!("max_age: {}", self.max_age));
        out
    }

    /// Whether MX host `host` is one the policy names (RFC 8461 §4.1: a `*.` pattern stands
    /// for exactly one leftmost label).
    pub fn names(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
            None => *p == host,
        })
    }
}

/// A cached policy and when it expires (unix seconds).
struct Cached {
    policy: Arc<Policy>,
    expires: u64,
}

/// The policies of the domains mail goes to, fetched and kept.
pub struct MtaSts {
    https: TlsConnector,
    port: u16,
    timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// One fetch per domain at a time: the connections that wait for it use its policy.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MtaSts {
    /// Policies fetched over `https` (a verifying connector) from `port`, each step within
    /// `timeout`.
    pub fn new(https: TlsConnector, port: u16, timeout: Duration) -> MtaSts {
        MtaSts {
            https,
            port,
            timeout,
            cache: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, domain: &str, now: u64) -> Option<Arc<Policy>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(domain)
            .filter(|c| c.expires > now)
            .map(|c| c.policy.clone())
    }

    /// The policy that applies to mail for `domain` now (none: deliver as without
    /// MTA-STS). A policy in `none` mode is returned too; the caller treats it as none.
    pub async fn policy(&self, dns: &MxResolver, domain: &str, now: u64) -> Option<Arc<Policy>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain, now);
        let id = match dns.txt_of(&format!("_mta-sts.{domain}")).await {
            Ok(records) => record_id(&records),
            Err(why) => {
                tracing::debug!(domain, why, "MTA-STS record lookup failed");
                None
            }
        };
        // no record (or none readable): a policy still cached stays in force (§5.1)
        let Some(id) = id else {
            return cached;
        };
        if let Some(p) = cached.as_ref().filter(|p| p.id == id) {
            return Some(p.clone());
        }
        let gate = {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            f.entry(domain.clone()).or_default().clone()
        };
        let _turn = gate.lock().await;
        // fetched meanwhile by the connection that went first
        let cached = self.cached(&domain, now);
        if let Some(p) = cached.as_ref().filter(|p| p.id == id) {
            return Some(p.clone());
        }
        match self
            .fetch(dns, &domain)
            .await
            .and_then(|t| Policy::parse(&id, &t))
        {
            Ok(p) => {
                let policy = Arc::new(p);
                let expires = now + policy.max_age;
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(
                    domain.clone(),
                    Cached {
                        policy: policy.clone(),
                        expires,
                    },
                );
                tracing::info!(
                    target: "backstop::event", event = "mta_sts", domain, id,
                    mode = policy.mode.as_str(), mx = policy.mx.join(" "), max_age = policy.max_age,
                    "MTA-STS policy fetched"
                );
                Some(policy)
            }
            Err(why) => {
                tracing::warn!(
                    target: "backstop::event", event = "mta_sts", domain, id, why,
                    cached = cached.is_some(),
                    "MTA-STS policy could not be fetched; the one cached applies, if any"
                );
                cached
            }
        }
    }

    /// The policy text of `domain`, over HTTPS.
    async fn fetch(&self, dns: &MxResolver, domain: &str) -> Result<String, String> {
        let host = format!("mta-sts.{domain}");
        let addrs = dns.addresses_of(&host, self.port).await?;
        let mut last = format!("{host}: no address");
        for addr in addrs {
            let got = tokio::time::timeout(self.timeout, self.get(addr, &host)).await;
            match got {
                Ok(Ok(text)) => return Ok(text),
                Ok(Err(e)) => last = format!("https://{host}: {e}"),
                Err(_) => last = format!("https://{host}: timed out"),
            }
        }
        Err(last)
    }

    async fn get(&self, addr: std::net::SocketAddr, host: &str) -> Result<String, String> {
        let request = crate::https::Request {
            method: hyper::Method::GET,
            path: "/.well-known/mta-sts.txt",
            content_type: None,
            body: Bytes::new(),
        };
        let (status, body) =
            crate::https::send(&self.https, (addr, host), request, MAX_POLICY).await?;
        // §3.3: a redirect is not followed, anything but 200 is no policy
        if status != hyper::StatusCode::OK {
            return Err(format!("HTTP status {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".into())
    }
}

/// The `id` of the one `v=STSv1` record among `records` (none when there are none or
/// several, §3.1).
fn record_id(records: &[Vec<u8>]) -> Option<String> {
    let sts: Vec<&Vec<u8>> = records
        .iter()
        .filter(|r| r.starts_with(b"v=STSv1"))
        .collect();
    match sts.as_slice() {
        [one] => mail_auth::mta_sts::MtaSts::parse(one).ok().map(|r| r.id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_read_and_names_its_mx_hosts() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\n\
                    mx: *.backup.example.test\r\nmax_age: 86400\r\n";
        let p = Policy::parse("20261201", text).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 86_400);
        assert!(p.names("mail.example.test"));
        assert!(p.names("MAIL.example.test."));
        assert!(p.names("mx1.backup.example.test"));
        assert!(!p.names("a.b.backup.example.test"), "one label only");
        assert!(!p.names("backup.example.test"));
        assert!(!p.names("evil.test"));
    }

    #[test]
    fn a_bad_policy_is_refused_with_the_reason() {
        let e = |t: &str| Policy::parse("1", t).unwrap_err();
        assert!(e("mode: enforce\nmx: a.test\nmax_age: 1\n").contains("STSv1"));
        assert!(e("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").contains("strict"));
        assert!(e("version: STSv1\nmode: enforce\nmax_age: 1\n").contains("mx"));
        assert!(e("version: STSv1\nmode: enforce\nmx: a\n").contains("max_age"));
        let long = Policy::parse("1", "version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert_eq!(long.unwrap().max_age, MAX_AGE);
    }

    #[test]
    fn only_one_sts_record_gives_an_id() {
        let r = |s: &str| s.as_bytes().to_vec();
        assert_eq!(record_id(&[r("v=STSv1; id=abc;")]), Some("abc".into()));
        assert_eq!(
            record_id(&[r("v=spf1 -all"), r("v=STSv1; id=x")]),
            Some("x".into())
        );
        assert_eq!(record_id(&[r("v=STSv1; id=a"), r("v=STSv1; id=b")]), None);
        assert_eq!(record_id(&[]), None);
    }
}
