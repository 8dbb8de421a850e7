//! The configuration file as written: serde types with optional fields, and their validation.

use super::{
    BackscatterAction, Batv, BatvKey, BatvMode, Bounces, CatchAllPolicy, Config, ConfigError,
    Delivery, DomainConfig, Harvest, HostPort, Limits, ListenAddr, Listener, NextHop, Protocol,
    RelayMode, Reports, Route, Source, invalid, parse_duration,
};
use backstop_proto::address::{Domain, Mailbox};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file as parsed; every key optional where a default exists, unknown keys refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    hostname: String,
    state_dir: String,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    callout: RawCallout,
    #[serde(default)]
    listen: Vec<RawListener>,
    #[serde(default)]
    domain: Vec<RawDomain>,
    #[serde(default)]
    ldap: Vec<super::ldap::RawLdap>,
    #[serde(default)]
    dkim: Vec<super::dkim::RawDkim>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    reports: RawReports,
    #[serde(default)]
    batv: RawBatv,
    #[serde(default)]
    bounces: RawBounces,
    #[serde(default)]
    harvest: RawHarvest,
    #[serde(default)]
    outbound: super::Outbound,
    #[serde(default)]
    senders: RawSenders,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    reputation: RawReputation,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    dns: RawDns,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    resolver: Option<String>,
    timeout: Option<String>,
    attempts: Option<usize>,
    trust_anchor: Option<String>,
}

impl RawDns {
    /// `[dns]`; `old`: the resolver given the older way, as `[delivery] resolver`.
    fn validate(&self, old: Option<&String>, base: &Path) -> Result<super::Dns, ConfigError> {
        let resolver = match (&self.resolver, old) {
            (Some(_), Some(_)) => {
                let why = "the resolver is set in [dns]: remove this older name for it";
                return Err(invalid("delivery.resolver", why));
            }
            (Some(s), None) => Some(resolver("dns.resolver", s)?),
            (None, Some(s)) => Some(resolver("delivery.resolver", s)?),
            (None, None) => None,
        };
        let timeout = duration("dns.timeout", &self.timeout, "5s")?;
        if timeout < std::time::Duration::from_secs(1) {
            return Err(invalid("dns.timeout", "must be at least 1s"));
        }
        let attempts = self.attempts.unwrap_or(2);
        if !(1..=5).contains(&attempts) {
            return Err(invalid("dns.attempts", "must be 1 to 5"));
        }
        let trust_anchor = match &self.trust_anchor {
            Some(f) => {
                let p = path(base, f);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    invalid(
                        "dns.trust_anchor",
                        format!("{}: cannot read it: {e}", p.display()),
                    )
                })?;
                if !text.contains("DNSKEY") {
                    let why = format!("{}: no DNSKEY record in it", p.display());
                    return Err(invalid("dns.trust_anchor", why));
                }
                Some(p)
            }
            None => None,
        };
        Ok(super::Dns {
            resolver,
            timeout,
            attempts,
            trust_anchor,
        })
    }
}

fn resolver(key: &str, s: &str) -> Result<std::net::SocketAddr, ConfigError> {
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
        .map_err(|_| {
            invalid(
                key,
                format!("{s:?} is not IP or IP:PORT (like 127.0.0.1:5353)"),
            )
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<String>,
}

impl RawHealth {
    fn validate(&self) -> Result<super::Health, ConfigError> {
        let interval = duration("health.interval", &self.interval, "30s")?;
        if interval < std::time::Duration::from_secs(1) {
            return Err(invalid("health.interval", "must be at least 1s"));
        }
        Ok(super::Health { interval })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    url: Option<String>,
    cluster: Option<Vec<String>>,
    sentinel: Option<Vec<String>>,
    master: Option<String>,
    namespace: Option<String>,
    tls_ca: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

fn redis_url(key: String, u: &str) -> Result<String, ConfigError> {
    if u.starts_with("rediss://") && u.contains('#') {
        let why = format!(
            "{u:?}: a fragment (#insecure) would turn the certificate check off; \
             name the CA in store.tls_ca instead"
        );
        return Err(invalid(key, why));
    }
    let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| u.starts_with(p));
    match ok {
        true => Ok(u.to_string()),
        false => Err(invalid(
            key,
            format!(
                "{u:?}: expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) \
                 or redis+unix:///PATH"
            ),
        )),
    }
}

fn redis_urls(key: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    let urls = list
        .iter()
        .enumerate()
        .map(|(i, u)| redis_url(format!("{key}[{i}]"), u))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls != 0 && tls != urls.len() {
        let why = "mixes redis:// and rediss://: use rediss:// for every node or for none";
        return Err(invalid(key, why));
    }
    Ok(urls)
}

/// Whether the store is reached over TLS (`rediss://`).
fn uses_tls(backend: &super::StoreBackend) -> bool {
    backend.urls().iter().any(|u| u.starts_with("rediss://"))
}

/// Reads the file `s` (relative to `base`) given for `key` and parses it with `parse`; either
/// failing is an error naming the key and the file.
fn pem_file<T>(
    key: &str,
    base: &Path,
    s: &str,
    parse: fn(&[u8]) -> Result<T, String>,
) -> Result<(PathBuf, T), ConfigError> {
    let p = path(base, s);
    let bytes = std::fs::read(&p)
        .map_err(|e| invalid(key, format!("{}: cannot read it: {e}", p.display())))?;
    let parsed = parse(&bytes).map_err(|e| invalid(key, format!("{}: {e}", p.display())))?;
    Ok((p, parsed))
}

/// The certificates of a PEM file (at least one).
fn pem_certificates(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    match certs.is_empty() {
        true => Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into()),
        false => Ok(certs),
    }
}

/// CA certificates in PEM, each usable as a trust anchor.
pub(super) fn pem_trust_anchors(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certificates(pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// A CA file (`key`, relative to `base`) checked: PEM certificates, each a usable trust anchor.
pub(super) fn trust_anchors(key: &str, base: &Path, s: &str) -> Result<PathBuf, ConfigError> {
    pem_file(key, base, s, pem_trust_anchors).map(|(p, _)| p)
}

/// A private key in PEM.
fn pem_private_key(pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::{PrivateKeyDer, pem, pem::PemObject};
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            "no private key in it (expected -----BEGIN PRIVATE KEY-----)".to_string()
        }
        e => format!("not PEM: {e}"),
    })
}

/// The checked `tls_ca`, `tls_cert` and `tls_key` of `[store]`.
type StoreTls = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

impl RawStore {
    /// The `[store]` table checked; TLS files relative to `base`.
    fn validate(&self, base: &Path) -> Result<super::StoreConfig, ConfigError> {
        let backend = self.backend()?;
        let namespace = self.namespace.clone().unwrap_or_else(|| "backstop".into());
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if namespace.is_empty() || !namespace.chars().all(fine) {
            return Err(invalid(
                "store.namespace",
                format!("{namespace:?}: letters, digits, '-', '_' and '.' only"),
            ));
        }
        let (tls_ca, tls_cert, tls_key) = self.tls(base, uses_tls(&backend))?;
        Ok(super::StoreConfig {
            backend,
            namespace,
            tls_ca,
            tls_cert,
            tls_key,
        })
    }

    /// `backend` with `url`, `cluster` or `sentinel` and `master`.
    fn backend(&self) -> Result<super::StoreBackend, ConfigError> {
        use super::{RedisTarget, StoreBackend};
        if self.master.is_some() != self.sentinel.is_some() {
            return Err(invalid(
                "store.master",
                "sentinel = [URL, ...] and master = \"NAME\" go together",
            ));
        }
        let given = (&self.url, &self.cluster, &self.sentinel);
        Ok(match (self.backend.as_deref(), given) {
            (None | Some("embedded"), (None, None, None)) => StoreBackend::Embedded,
            (None | Some("embedded"), _) => {
                let why = "url, cluster and sentinel are for backend = \"redis\"";
                return Err(invalid("store.backend", why));
            }
            (Some("redis"), (Some(u), None, None)) => {
                StoreBackend::Redis(RedisTarget::Single(redis_url("store.url".into(), u)?))
            }
            (Some("redis"), (None, Some(nodes), None)) if !nodes.is_empty() => {
                StoreBackend::Redis(RedisTarget::Cluster(redis_urls("store.cluster", nodes)?))
            }
            (Some("redis"), (None, None, Some(nodes))) if !nodes.is_empty() => {
                StoreBackend::Redis(RedisTarget::Sentinel {
                    sentinels: redis_urls("store.sentinel", nodes)?,
                    master: self.master.clone().unwrap_or_default(),
                })
            }
            (Some("redis"), _) => {
                let why = "backend = \"redis\" needs one of url = \"redis://HOST:PORT/DB\", \
                           cluster = [URL, ...], or sentinel = [URL, ...] with master";
                return Err(invalid("store.url", why));
            }
            (Some(other), _) => {
                return Err(invalid(
                    "store.backend",
                    format!("{other:?}: expected \"embedded\" or \"redis\""),
                ));
            }
        })
    }

    /// `tls_ca`, `tls_cert` and `tls_key`: only with `rediss://` URLs (`tls`), the last two
    /// together, each file read and parsed, and the key the certificate's.
    fn tls(&self, base: &Path, tls: bool) -> Result<StoreTls, ConfigError> {
        let given = [
            ("store.tls_ca", &self.tls_ca),
            ("store.tls_cert", &self.tls_cert),
            ("store.tls_key", &self.tls_key),
        ];
        if let Some((key, _)) = given.iter().find(|(_, v)| v.is_some())
            && !tls
        {
            let why = "only for TLS to Redis: the store's URLs must be rediss://HOST:PORT/DB";
            return Err(invalid(*key, why));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                let why =
                    "tls_cert and tls_key go together: the client certificate's key is missing";
                return Err(invalid("store.tls_key", why));
            }
            (None, Some(_)) => {
                let why = "tls_cert and tls_key go together: the key's certificate is missing";
                return Err(invalid("store.tls_cert", why));
            }
            _ => {}
        }
        let ca = self.tls_ca.as_deref();
        let ca = ca.map(|s| pem_file("store.tls_ca", base, s, pem_trust_anchors));
        let cert = self.tls_cert.as_deref();
        let cert = cert.map(|s| pem_file("store.tls_cert", base, s, pem_certificates));
        let key = self.tls_key.as_deref();
        let key = key.map(|s| pem_file("store.tls_key", base, s, pem_private_key));
        let (ca, cert, key) = (ca.transpose()?, cert.transpose()?, key.transpose()?);
        if let (Some((cert_path, chain)), Some((key_path, key))) = (&cert, key.as_ref()) {
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
                .map_err(|e| {
                    invalid(
                        "store.tls_key",
                        format!(
                            "{}: not the key of the certificate in {}: {e}",
                            key_path.display(),
                            cert_path.display()
                        ),
                    )
                })?;
        }
        Ok((ca.map(|c| c.0), cert.map(|c| c.0), key.map(|k| k.0)))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    addr: Option<String>,
    token: Option<String>,
    allow: Option<Vec<String>>,
}

impl RawWeb {
    fn validate(&self) -> Result<super::Web, ConfigError> {
        let addr = match self.addr.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid(
                    "web.addr",
                    format!("{a:?} is not an address like 127.0.0.1:8025"),
                )
            })?),
        };
        let token = self.token.clone().filter(|t| !t.is_empty());
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("web.token", "must be at least 16 characters"));
        }
        let loopback = ["127.0.0.0/8".to_string(), "::1".to_string()];
        let allow = networks("web.allow", self.allow.as_deref().unwrap_or(&loopback))?;
        Ok(super::Web { addr, token, allow })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReputation {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    dnsbl: Vec<String>,
    interval: Option<String>,
}

impl RawReputation {
    fn validate(&self) -> Result<super::Reputation, ConfigError> {
        let ips = self
            .ips
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<std::net::IpAddr>().map_err(|_| {
                    invalid(
                        format!("reputation.ips[{i}]"),
                        format!("{s:?} is not an IP address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, z) in self.dnsbl.iter().enumerate() {
            Domain::parse(z, false).map_err(|e| {
                invalid(
                    format!("reputation.dnsbl[{i}]"),
                    format!("{z:?} is not a zone: {e}"),
                )
            })?;
        }
        let interval = duration("reputation.interval", &self.interval, "1h")?;
        if interval.as_secs() == 0 {
            return Err(invalid("reputation.interval", "must be at least 1s"));
        }
        Ok(super::Reputation {
            ips,
            dnsbl: self.dnsbl.iter().map(|z| z.to_ascii_lowercase()).collect(),
            interval,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSenders {
    window: Option<String>,
    min_volume: Option<u64>,
    hold_failed_ratio: Option<f64>,
    hold_blocked_ratio: Option<f64>,
}

impl RawSenders {
    fn validate(&self) -> Result<super::Senders, ConfigError> {
        let ratio = |key: &str, v: Option<f64>, default: f64| {
            let v = v.unwrap_or(default);
            match (0.0..=1.0).contains(&v) {
                true => Ok(v),
                false => Err(invalid(key, "must be between 0 and 1")),
            }
        };
        Ok(super::Senders {
            window: duration("senders.window", &self.window, "1h")?,
            min_volume: positive("senders.min_volume", self.min_volume, 20)?,
            hold_failed_ratio: ratio("senders.hold_failed_ratio", self.hold_failed_ratio, 0.5)?,
            hold_blocked_ratio: ratio("senders.hold_blocked_ratio", self.hold_blocked_ratio, 0.2)?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<String>,
}

impl RawAlerts {
    fn validate(&self) -> Result<super::Alerts, ConfigError> {
        let webhook = match self.webhook.as_deref() {
            None | Some("") => None,
            Some(url) => {
                let ok = url
                    .strip_prefix("http://")
                    .and_then(|rest| rest.split('/').next())
                    .is_some_and(|host| HostPort::parse(host).is_some());
                if !ok {
                    return Err(invalid(
                        "alerts.webhook",
                        format!("{url:?}: expected http://HOST:PORT/PATH"),
                    ));
                }
                Some(url.to_string())
            }
        };
        Ok(super::Alerts { webhook })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHarvest {
    tarpit_after: Option<u32>,
    tarpit_delay: Option<String>,
    tarpit_max: Option<String>,
    close_after: Option<u32>,
    block_after: Option<u64>,
    block_after_net: Option<u64>,
    window: Option<String>,
    block_for: Option<String>,
    #[serde(default)]
    exempt: Vec<String>,
}

impl RawHarvest {
    fn validate(&self) -> Result<Harvest, ConfigError> {
        let exempt = networks("harvest.exempt", &self.exempt)?;
        let h = Harvest {
            tarpit_after: positive("harvest.tarpit_after", self.tarpit_after, 10)?,
            tarpit_delay: duration("harvest.tarpit_delay", &self.tarpit_delay, "1s")?,
            tarpit_max: duration("harvest.tarpit_max", &self.tarpit_max, "16s")?,
            close_after: positive("harvest.close_after", self.close_after, 20)?,
            block_after: positive("harvest.block_after", self.block_after, 100)?,
            block_after_net: positive("harvest.block_after_net", self.block_after_net, 300)?,
            window: duration("harvest.window", &self.window, "1h")?,
            block_for: duration("harvest.block_for", &self.block_for, "1h")?,
            exempt,
        };
        if h.tarpit_delay > h.tarpit_max {
            return Err(invalid(
                "harvest.tarpit_delay",
                "must not be longer than harvest.tarpit_max",
            ));
        }
        if h.close_after <= h.tarpit_after {
            return Err(invalid(
                "harvest.close_after",
                "must be greater than harvest.tarpit_after",
            ));
        }
        for (key, v) in [
            ("harvest.window", h.window),
            ("harvest.block_for", h.block_for),
        ] {
            if v.as_secs() == 0 {
                return Err(invalid(key, "must be at least 1s"));
            }
        }
        Ok(h)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatv {
    #[serde(default)]
    keys: Vec<String>,
    validity: Option<String>,
    warmup: Option<String>,
    exempt: Option<Vec<String>>,
}

/// Senders that are not signed unless `[batv] exempt` says otherwise: mailing-list software
/// (its own bounce handling) and VERP return paths.
const DEFAULT_EXEMPT: [&str; 5] = [
    "owner-*@*",
    "*-owner@*",
    "*-request@*",
    "*-bounces@*",
    "*-bounces+*@*",
];

impl RawBatv {
    fn validate(&self) -> Result<Batv, ConfigError> {
        let mut keys: Vec<BatvKey> = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let key = format!("batv.keys[{i}]");
            let (n, secret) = k
                .split_once(':')
                .ok_or_else(|| invalid(&key, "expected \"N:SECRET\" (N a key number 0 to 9)"))?;
            let number: u8 = n
                .parse()
                .ok()
                .filter(|n| *n <= 9)
                .ok_or_else(|| invalid(&key, format!("{n:?} is not a key number 0 to 9")))?;
            backstop_proto::batv::Key::new(number, secret.as_bytes())
                .map_err(|e| invalid(&key, e.to_string()))?;
            if keys.iter().any(|o| o.number == number) {
                return Err(invalid(&key, format!("key number {number} is used twice")));
            }
            keys.push(BatvKey {
                number,
                secret: secret.to_string(),
            });
        }
        let validity = duration("batv.validity", &self.validity, "7d")?;
        let days = validity.as_secs() / 86_400;
        if validity.as_secs() % 86_400 != 0 || !(1..=30).contains(&days) {
            return Err(invalid("batv.validity", "must be whole days, 1d to 30d"));
        }
        let exempt = match &self.exempt {
            Some(v) => v.iter().map(|p| p.to_ascii_lowercase()).collect(),
            None => DEFAULT_EXEMPT.iter().map(|p| p.to_string()).collect(),
        };
        Ok(Batv {
            keys,
            validity,
            warmup: duration("batv.warmup", &self.warmup, "7d")?,
            exempt,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounces {
    per_recipient: Option<u64>,
    sent_log: Option<String>,
    relay_hosts: Option<Vec<String>>,
}

impl RawBounces {
    fn validate(&self, hostname: &str) -> Result<Bounces, ConfigError> {
        let relay_hosts = match &self.relay_hosts {
            None => vec![hostname.to_ascii_lowercase()],
            Some(v) => {
                for (i, h) in v.iter().enumerate() {
                    Domain::parse(h, false).map_err(|e| {
                        invalid(
                            format!("bounces.relay_hosts[{i}]"),
                            format!("{h:?} is not a host name: {e}"),
                        )
                    })?;
                }
                v.iter().map(|h| h.to_ascii_lowercase()).collect()
            }
        };
        Ok(Bounces {
            per_recipient: positive("bounces.per_recipient", self.per_recipient, 50)?,
            sent_log: duration("bounces.sent_log", &self.sent_log, "14d")?,
            relay_hosts,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReports {
    per_recipient: Option<u64>,
    per_domain: Option<u64>,
    total: Option<u64>,
    gather: Option<String>,
    delay_warning: Option<String>,
    keep_failed: Option<String>,
    digest: Option<String>,
    tls_reports: Option<bool>,
    tls_reports_from: Option<String>,
}

impl RawReports {
    fn validate(&self) -> Result<Reports, ConfigError> {
        let delay_warning = match self.delay_warning.as_deref() {
            None | Some("0") | Some("off") => None,
            Some(_) => Some(duration("reports.delay_warning", &self.delay_warning, "0")?)
                .filter(|d| !d.is_zero()),
        };
        let digest =
            match self.digest.as_deref() {
                None | Some("") => None,
                Some(s) => Some(Mailbox::parse(s, true).map_err(|e| {
                    invalid("reports.digest", format!("{s:?} is not an address: {e}"))
                })?),
            };
        let tls_reports_from = match self.tls_reports_from.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Mailbox::parse(s, false).map_err(|e| {
                invalid(
                    "reports.tls_reports_from",
                    format!("{s:?} is not an address: {e}"),
                )
            })?),
        };
        Ok(Reports {
            per_recipient: positive("reports.per_recipient", self.per_recipient, 20)?,
            per_domain: positive("reports.per_domain", self.per_domain, 200)?,
            total: positive("reports.total", self.total, 2000)?,
            gather: duration("reports.gather", &self.gather, "10m")?,
            delay_warning,
            keep_failed: duration("reports.keep_failed", &self.keep_failed, "7d")?,
            digest,
            tls_reports: self.tls_reports.unwrap_or(true),
            tls_reports_from,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: String,
    next_hop: String,
    tls: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    resolver: Option<String>,
    smtp_port: Option<u16>,
    destination_concurrency: Option<usize>,
    max_connections: Option<usize>,
    timeout: Option<String>,
    retry_min: Option<String>,
    retry_max: Option<String>,
    max_age: Option<String>,
    starttls: Option<bool>,
    tls_ca: Option<String>,
    mta_sts: Option<bool>,
    mta_sts_port: Option<u16>,
    dane: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_line_length: Option<usize>,
    max_recipients: Option<usize>,
    max_message_size: Option<u64>,
    message_in_memory: Option<u64>,
    max_errors: Option<u32>,
    idle_timeout: Option<String>,
    session_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    connection_rate_per_ip: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallout {
    probe_sender: Option<String>,
    timeout: Option<String>,
    positive_refresh: Option<String>,
    positive_expire: Option<String>,
    negative_refresh: Option<String>,
    negative_expire: Option<String>,
    budget_per_client: Option<u32>,
    budget_total: Option<u32>,
    catch_all_check: Option<bool>,
    catch_all: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    addr: String,
    protocol: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(default)]
    relay_from: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: String,
    recipients: Vec<String>,
    next_hop: String,
    relay: Option<String>,
    batv: Option<String>,
    backscatter: Option<String>,
}

pub(super) fn duration(
    key: &str,
    v: &Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let s = v.as_deref().unwrap_or(default);
    parse_duration(s).ok_or_else(|| {
        invalid(
            key,
            format!("{s:?} is not a duration (like 30s, 5m, 3h, 7d)"),
        )
    })
}

fn positive<T: PartialOrd + Default + Copy>(
    key: &str,
    v: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    let v = v.unwrap_or(default);
    if v > T::default() {
        Ok(v)
    } else {
        Err(invalid(key, "must be greater than 0"))
    }
}

pub(super) fn path(base: &Path, s: &str) -> PathBuf {
    let p = Path::new(s);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl RawConfig {
    /// Checks every value and fills in defaults.
    pub fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        Domain::parse(&self.hostname, false).map_err(|e| {
            invalid(
                "hostname",
                format!("{:?} is not a host name: {e}", self.hostname),
            )
        })?;
        if self.state_dir.is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one [[listen]] table is needed"));
        }
        if self.domain.is_empty() {
            return Err(invalid("domain", "at least one [[domain]] table is needed"));
        }
        let listeners = self
            .listen
            .iter()
            .enumerate()
            .map(|(i, l)| l.validate(i, base))
            .collect::<Result<Vec<Listener>, _>>()?;
        for (i, l) in listeners.iter().enumerate() {
            if listeners[..i].iter().any(|o| o.addr == l.addr) {
                return Err(invalid(
                    format!("listen[{i}].addr"),
                    format!("{} is configured twice", l.addr),
                ));
            }
        }
        let mut ldap: Vec<super::Ldap> = Vec::new();
        for (i, l) in self.ldap.iter().enumerate() {
            let l = l.validate(i, base)?;
            if ldap.iter().any(|o| o.name == l.name) {
                let why = format!("{:?} is configured twice", l.name);
                return Err(invalid(format!("ldap[{i}].name"), why));
            }
            ldap.push(l);
        }
        let ldap_names: Vec<&str> = ldap.iter().map(|l| l.name.as_str()).collect();
        let mut domains: Vec<DomainConfig> = Vec::new();
        for (i, d) in self.domain.iter().enumerate() {
            let d = d.validate(i, base, &ldap_names)?;
            if domains.iter().any(|o| o.name == d.name) {
                return Err(invalid(
                    format!("domain[{i}].name"),
                    format!("{} is configured twice", d.name),
                ));
            }
            domains.push(d);
        }
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in self.route.iter().enumerate() {
            let r = r.validate(i)?;
            if domains.iter().any(|d| d.name == r.domain)
                || routes.iter().any(|o| o.domain == r.domain)
            {
                return Err(invalid(
                    format!("route[{i}].domain"),
                    format!(
                        "{} already has a next hop ([[domain]] or an earlier [[route]])",
                        r.domain
                    ),
                ));
            }
            routes.push(r);
        }
        Ok(Config {
            hostname: self.hostname.to_ascii_lowercase(),
            state_dir: path(base, &self.state_dir),
            limits: self.limits.validate()?,
            callout: self.callout.validate()?,
            listeners,
            domains,
            ldap,
            dkim: super::dkim::validate_all(&self.dkim, base)?,
            routes,
            delivery: self.delivery.validate(base)?,
            reports: self.reports.validate()?,
            batv: self.batv.validate()?,
            bounces: self.bounces.validate(&self.hostname)?,
            harvest: self.harvest.validate()?,
            outbound: self.outbound,
            senders: self.senders.validate()?,
            alerts: self.alerts.validate()?,
            reputation: self.reputation.validate()?,
            web: self.web.validate()?,
            store: self.store.validate(base)?,
            health: self.health.validate()?,
            dns: self.dns.validate(self.delivery.resolver.as_ref(), base)?,
        })
    }
}

impl RawLimits {
    fn validate(&self) -> Result<Limits, ConfigError> {
        let max_line_length = self.max_line_length.unwrap_or(2048);
        if max_line_length < 512 {
            return Err(invalid(
                "limits.max_line_length",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            ));
        }
        let max_recipients = self.max_recipients.unwrap_or(1000);
        if max_recipients < 100 {
            return Err(invalid(
                "limits.max_recipients",
                "must be at least 100 (RFC 5321 §4.5.3.1.8)",
            ));
        }
        let message_in_memory = self.message_in_memory.unwrap_or(262_144);
        if message_in_memory < 65_536 {
            return Err(invalid(
                "limits.message_in_memory",
                "must be at least 65536 (bounces are judged by their first part)",
            ));
        }
        Ok(Limits {
            max_line_length,
            max_recipients,
            max_message_size: positive(
                "limits.max_message_size",
                self.max_message_size,
                10_240_000,
            )?,
            message_in_memory,
            max_errors: positive("limits.max_errors", self.max_errors, 20)?,
            idle_timeout: duration("limits.idle_timeout", &self.idle_timeout, "5m")?,
            session_timeout: duration("limits.session_timeout", &self.session_timeout, "30m")?,
            shutdown_timeout: duration("limits.shutdown_timeout", &self.shutdown_timeout, "30s")?,
            max_connections: positive("limits.max_connections", self.max_connections, 1000)?,
            max_connections_per_ip: positive(
                "limits.max_connections_per_ip",
                self.max_connections_per_ip,
                50,
            )?,
            connection_rate_per_ip: self.connection_rate_per_ip.unwrap_or(0),
        })
    }
}

impl RawCallout {
    fn validate(&self) -> Result<super::Callout, ConfigError> {
        let probe_sender = self.probe_sender.clone().unwrap_or_default();
        if !probe_sender.is_empty() {
            backstop_proto::address::Mailbox::parse(&probe_sender, false).map_err(|e| {
                invalid(
                    "callout.probe_sender",
                    format!("{probe_sender:?}: {e} (use \"\" for the null sender)"),
                )
            })?;
        }
        let catch_all = match self.catch_all.as_deref().unwrap_or("defer") {
            "defer" => CatchAllPolicy::Defer,
            "reject" => CatchAllPolicy::Reject,
            other => {
                return Err(invalid(
                    "callout.catch_all",
                    format!("{other:?}: expected \"defer\" or \"reject\""),
                ));
            }
        };
        let c = super::Callout {
            probe_sender,
            timeout: duration("callout.timeout", &self.timeout, "15s")?,
            positive_refresh: duration("callout.positive_refresh", &self.positive_refresh, "7d")?,
            positive_expire: duration("callout.positive_expire", &self.positive_expire, "31d")?,
            negative_refresh: duration("callout.negative_refresh", &self.negative_refresh, "3h")?,
            negative_expire: duration("callout.negative_expire", &self.negative_expire, "3d")?,
            budget_per_client: positive("callout.budget_per_client", self.budget_per_client, 120)?,
            budget_total: positive("callout.budget_total", self.budget_total, 1200)?,
            catch_all_check: self.catch_all_check.unwrap_or(true),
            catch_all,
            max_connections: positive("callout.max_connections", self.max_connections, 8)?,
        };
        if c.positive_refresh > c.positive_expire {
            return Err(invalid(
                "callout.positive_refresh",
                "must not be longer than callout.positive_expire",
            ));
        }
        if c.negative_refresh > c.negative_expire {
            return Err(invalid(
                "callout.negative_refresh",
                "must not be longer than callout.negative_expire",
            ));
        }
        if c.timeout.is_zero() {
            return Err(invalid("callout.timeout", "must be greater than 0"));
        }
        Ok(c)
    }
}

impl RawListener {
    fn validate(&self, i: usize, base: &Path) -> Result<Listener, ConfigError> {
        let key = |k: &str| format!("listen[{i}].{k}");
        let addr = match self.addr.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => ListenAddr::Unix(path(base, p)),
            _ => ListenAddr::Inet(self.addr.parse().map_err(|_| {
                invalid(
                    key("addr"),
                    format!(
                        "{:?} is not IP:PORT (like 127.0.0.1:2525 or [::1]:25) or unix:PATH",
                        self.addr
                    ),
                )
            })?),
        };
        let file = |k: &str, v: &Option<String>| -> Result<Option<PathBuf>, ConfigError> {
            v.as_deref()
                .map(|s| {
                    let p = path(base, s);
                    if p.is_file() {
                        Ok(p)
                    } else {
                        Err(invalid(
                            key(k),
                            format!("{} is not a readable file", p.display()),
                        ))
                    }
                })
                .transpose()
        };
        let (tls_cert, tls_key) = (
            file("tls_cert", &self.tls_cert)?,
            file("tls_key", &self.tls_key)?,
        );
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(invalid(
                key("tls_cert"),
                "tls_cert and tls_key must be given together",
            ));
        }
        let relay_from = networks(&format!("listen[{i}].relay_from"), &self.relay_from)?;
        let protocol = match self.protocol.as_deref().unwrap_or("smtp") {
            "smtp" => Protocol::Smtp,
            "policy" => Protocol::Policy,
            "milter" => Protocol::Milter,
            other => {
                return Err(invalid(
                    key("protocol"),
                    format!("{other:?} is not \"smtp\", \"policy\" or \"milter\""),
                ));
            }
        };
        if protocol == Protocol::Smtp && matches!(addr, ListenAddr::Unix(_)) {
            return Err(invalid(
                key("addr"),
                "an SMTP listener needs IP:PORT (a unix: socket serves protocol = \"policy\" \
                 or \"milter\")",
            ));
        }
        if protocol != Protocol::Smtp && tls_cert.is_some() {
            return Err(invalid(
                key("tls_cert"),
                "a policy or milter listener has no TLS (the MTA speaks to it in plain text: \
                 bind it to 127.0.0.1 or a private network)",
            ));
        }
        Ok(Listener {
            addr,
            protocol,
            tls_cert,
            tls_key,
            relay_from,
        })
    }
}

impl RawDomain {
    fn validate(&self, i: usize, base: &Path, ldap: &[&str]) -> Result<DomainConfig, ConfigError> {
        let key = |k: &str| format!("domain[{i}].{k}");
        let name = Domain::parse(&self.name, false)
            .map_err(|e| invalid(key("name"), format!("{:?} is not a domain: {e}", self.name)))?;
        if self.recipients.is_empty() {
            return Err(invalid(
                key("recipients"),
                "at least one source is needed (list:FILE, callout:HOST:PORT or ldap:NAME)",
            ));
        }
        let sources = self
            .recipients
            .iter()
            .enumerate()
            .map(|(j, s)| {
                parse_source(s, base, ldap)
                    .map_err(|m| invalid(format!("domain[{i}].recipients[{j}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next_hop =
            parse_next_hop(&self.next_hop, base).map_err(|m| invalid(key("next_hop"), m))?;
        let relay = match self.relay.as_deref().unwrap_or("in-session") {
            "in-session" => RelayMode::InSession,
            "queue" => RelayMode::Queue,
            other => {
                return Err(invalid(
                    key("relay"),
                    format!("{other:?}: expected \"in-session\" or \"queue\""),
                ));
            }
        };
        let batv = match self.batv.as_deref().unwrap_or("off") {
            "off" => BatvMode::Off,
            "sign" => BatvMode::Sign,
            "enforce" => BatvMode::Enforce,
            other => {
                return Err(invalid(
                    key("batv"),
                    format!("{other:?}: expected \"off\", \"sign\" or \"enforce\""),
                ));
            }
        };
        let backscatter = match self.backscatter.as_deref().unwrap_or("tag") {
            "accept" => BackscatterAction::Accept,
            "tag" => BackscatterAction::Tag,
            "quarantine" => BackscatterAction::Quarantine,
            "reject" => BackscatterAction::Reject,
            other => {
                return Err(invalid(
                    key("backscatter"),
                    format!(
                        "{other:?}: expected \"accept\", \"tag\", \"quarantine\" or \"reject\""
                    ),
                ));
            }
        };
        Ok(DomainConfig {
            name,
            sources,
            next_hop,
            relay,
            batv,
            backscatter,
        })
    }
}

fn parse_source(s: &str, base: &Path, ldap: &[&str]) -> Result<Source, String> {
    if let Some(file) = s.strip_prefix("list:") {
        let p = path(base, file);
        if !p.is_file() {
            return Err(format!("{s:?}: {} is not a readable file", p.display()));
        }
        return Ok(Source::List(p));
    }
    if let Some(hp) = s.strip_prefix("callout:") {
        return HostPort::parse(hp)
            .map(Source::Callout)
            .ok_or_else(|| format!("{s:?}: expected callout:HOST:PORT"));
    }
    if let Some(name) = s.strip_prefix("ldap:") {
        return match ldap.contains(&name) {
            true => Ok(Source::Ldap(name.to_string())),
            false if ldap.is_empty() => Err(format!(
                "{s:?}: no [[ldap]] table is configured (add one with name = {name:?})"
            )),
            false => Err(format!(
                "{s:?}: no [[ldap]] table has this name (configured: {})",
                ldap.join(", ")
            )),
        };
    }
    Err(format!(
        "{s:?}: expected list:FILE, callout:HOST:PORT or ldap:NAME"
    ))
}

/// The networks of list `key`; an error names the entry.
fn networks(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(j, n)| {
            parse_network(n).ok_or_else(|| {
                invalid(
                    format!("{key}[{j}]"),
                    format!("{n:?} is not a network (like 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32)"),
                )
            })
        })
        .collect()
}

fn parse_network(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
}

impl RawRoute {
    fn validate(&self, i: usize) -> Result<Route, ConfigError> {
        let domain = Domain::parse(&self.domain, false).map_err(|e| {
            invalid(
                format!("route[{i}].domain"),
                format!("{:?} is not a domain: {e}", self.domain),
            )
        })?;
        let next_hop = match self.next_hop.as_str() {
            "mx" => NextHop::Mx,
            s => match s.strip_prefix("smtp:").and_then(HostPort::parse) {
                Some(hp) => NextHop::Smtp(hp),
                None => {
                    return Err(invalid(
                        format!("route[{i}].next_hop"),
                        format!("{s:?}: expected smtp:HOST:PORT or mx"),
                    ));
                }
            },
        };
        let tls = match self.tls.as_deref() {
            None => None,
            Some("may") => Some(super::TlsMode::May),
            Some("encrypt") => Some(super::TlsMode::Encrypt),
            Some("verify") => Some(super::TlsMode::Verify),
            Some(t) => {
                let why = format!(
                    "{t:?}: \"may\" (TLS when offered), \"encrypt\" (TLS or no delivery) or \
                     \"verify\" (TLS with a certificate trusted for the host's name)"
                );
                return Err(invalid(format!("route[{i}].tls"), why));
            }
        };
        Ok(Route {
            domain,
            next_hop,
            tls,
        })
    }
}

impl RawDelivery {
    fn validate(&self, base: &Path) -> Result<Delivery, ConfigError> {
        let d = Delivery {
            smtp_port: positive("delivery.smtp_port", self.smtp_port, 25)?,
            destination_concurrency: positive(
                "delivery.destination_concurrency",
                self.destination_concurrency,
                20,
            )?,
            max_connections: positive("delivery.max_connections", self.max_connections, 100)?,
            timeout: duration("delivery.timeout", &self.timeout, "5m")?,
            retry_min: duration("delivery.retry_min", &self.retry_min, "5m")?,
            retry_max: duration("delivery.retry_max", &self.retry_max, "1h")?,
            max_age: duration("delivery.max_age", &self.max_age, "5d")?,
            starttls: self.starttls.unwrap_or(true),
            tls_ca: match &self.tls_ca {
                Some(s) => Some(trust_anchors("delivery.tls_ca", base, s)?),
                None => None,
            },
            mta_sts: self.mta_sts.unwrap_or(true),
            mta_sts_port: positive("delivery.mta_sts_port", self.mta_sts_port, 443)?,
            dane: self.dane.unwrap_or(false),
        };
        for (key, v) in [
            ("delivery.timeout", d.timeout),
            ("delivery.retry_min", d.retry_min),
        ] {
            if v.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if d.retry_min > d.retry_max {
            return Err(invalid(
                "delivery.retry_min",
                "must not be longer than delivery.retry_max",
            ));
        }
        Ok(d)
    }
}

fn parse_next_hop(s: &str, base: &Path) -> Result<NextHop, String> {
    if let Some(hp) = s.strip_prefix("smtp:") {
        return HostPort::parse(hp)
            .map(NextHop::Smtp)
            .ok_or_else(|| format!("{s:?}: expected smtp:HOST:PORT"));
    }
    if let Some(dir) = s.strip_prefix("maildir:")
        && !dir.is_empty()
    {
        return Ok(NextHop::Maildir(path(base, dir)));
    }
    Err(format!("{s:?}: expected smtp:HOST:PORT or maildir:DIR"))
}
