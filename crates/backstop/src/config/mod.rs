//! Configuration: one TOML file, read into [`RawConfig`] (serde, unknown keys refused) and
//! validated into [`Config`], whose every value is usable as is.
//!
//! Responsible for: defaults, validation with errors that name the key, resolving relative
//! paths against the config file's directory, and printing the resolved configuration.
//! Not responsible for: reading list files or certificates (their owners do, at start-up), or
//! acting on any value.

pub mod diff;
mod dkim;
mod duration;
mod ldap;
mod raw;

pub use dkim::{Dkim, DkimAlgorithm};
pub use duration::{ago, format_duration, parse_duration};
pub use ldap::Ldap;
pub use raw::RawConfig;

use backstop_proto::address::{Domain, Mailbox};
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The example configuration shipped in the repository; `backstop serve` without `--config`
/// runs it, with paths relative to the current directory.
pub const EXAMPLE: &str = include_str!("../../../../backstop.toml");

/// Where `backstop` looks for its configuration when neither `--config` nor
/// `BACKSTOP_CONFIG` names a file.
pub const DEFAULT_PATH: &str = "/etc/backstop/backstop.toml";

/// Where the configuration is read from: a file, or the built-in example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file (relative paths in it are taken from its directory).
    File(PathBuf),
    /// The example shipped with backstop ([`EXAMPLE`]), paths relative to the current
    /// directory.
    BuiltIn,
}

impl ConfigSource {
    /// The file named by `--config`, else by `BACKSTOP_CONFIG` (`env`, when not empty), else
    /// [`DEFAULT_PATH`] when `default_exists`, else the built-in example.
    pub fn resolve(
        flag: Option<PathBuf>,
        env: Option<std::ffi::OsString>,
        default_exists: bool,
    ) -> ConfigSource {
        match (flag, env.filter(|e| !e.is_empty())) {
            (Some(p), _) => ConfigSource::File(p),
            (None, Some(e)) => ConfigSource::File(PathBuf::from(e)),
            (None, None) if default_exists => ConfigSource::File(PathBuf::from(DEFAULT_PATH)),
            (None, None) => ConfigSource::BuiltIn,
        }
    }

    /// Reads and validates it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::BuiltIn => Config::example(),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::BuiltIn => {
                f.write_str("(built-in example, paths from the current directory)")
            }
        }
    }
}

/// The trust anchors of a CA file (PEM), read as the configuration checks a `tls_ca`.
pub fn read_trust_anchors(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    raw::pem_trust_anchors(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key (the message names line and key).
    #[error("{0}")]
    Parse(String),
    /// A value that parses but cannot be used.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, as a path: `domain[1].next_hop`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// Our host name: greeting, EHLO, Received headers, call-out HELO.
    pub hostname: String,
    /// Where state lives (the embedded store, the control socket).
    pub state_dir: PathBuf,
    /// Session limits.
    pub limits: Limits,
    /// Call-out verification settings.
    pub callout: Callout,
    /// Listeners.
    #[serde(rename = "listen")]
    pub listeners: Vec<Listener>,
    /// Domains we accept mail for.
    #[serde(rename = "domain")]
    pub domains: Vec<DomainConfig>,
    /// Directories recipients are looked up in (`[[ldap]]`, named by `ldap:NAME` sources).
    pub ldap: Vec<Ldap>,
    /// DKIM keys that sign mail from the relay networks and our own reports (`[[dkim]]`).
    pub dkim: Vec<Dkim>,
    /// Static routes for queued mail to other domains (like Postfix transport maps).
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// Queue delivery settings.
    pub delivery: Delivery,
    /// Delivery reports (bounces) to senders.
    pub reports: Reports,
    /// BATV signing and checking (`[batv]`).
    pub batv: Batv,
    /// Incoming bounces (`[bounces]`).
    pub bounces: Bounces,
    /// Directory-harvest defence (`[harvest]`).
    pub harvest: Harvest,
    /// Limits on mail that leaves (`[outbound]`).
    pub outbound: Outbound,
    /// The watch on local senders' outbound mail (`[senders]`).
    pub senders: Senders,
    /// Where alerts go besides the log (`[alerts]`).
    pub alerts: Alerts,
    /// Our own reputation (`[reputation]`).
    pub reputation: Reputation,
    /// The HTTP listener: metrics, health, JSON API, dashboard (`[web]`).
    pub web: Web,
    /// Where shared state lives (`[store]`).
    pub store: StoreConfig,
    /// The checks of the internal servers (`[health]`).
    pub health: Health,
    /// How backstop asks DNS (`[dns]`): MX, SPF, DKIM, DNSBL.
    pub dns: Dns,
}

/// The one resolver configuration for everything backstop looks up (`[dns]`): MX and A/AAAA
/// for delivery, SPF and DKIM for reports, the DNS blocklists. Answers are cached for their
/// TTL, negative ones too.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dns {
    /// The DNS server (UDP and TCP); none: the system's (/etc/resolv.conf).
    pub resolver: Option<SocketAddr>,
    /// How long one try of a query may take.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// Tries of a query before it fails.
    pub attempts: usize,
    /// DNSKEY records trusted for DNSSEC validation (DANE) instead of the root's keys.
    pub trust_anchor: Option<PathBuf>,
}

/// The background checks of every next hop and call-out server (`[health]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    /// How often each is checked (connect, EHLO, QUIT).
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
}

/// Where shared state lives (`[store]`): the call-out cache, counters, claims, blocks, holds,
/// BATV keys, the sent log. The spool of accepted mail always stays on the node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreConfig {
    /// Which backend.
    pub backend: StoreBackend,
    /// Key prefix in Redis (`{NAMESPACE}:`): one per cluster of gateways.
    pub namespace: String,
    /// `tls_ca`: PEM CA certificate(s) the Redis servers' (and sentinels') certificates are
    /// verified with (`rediss://` only). None: the system's root certificates.
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert`: the PEM client certificate (chain) shown to Redis servers that require one
    /// (`rediss://` only; with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: the PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// The store's backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreBackend {
    /// `state_dir/backstop.redb`: one node, nothing to run.
    Embedded,
    /// Redis, shared by every node.
    Redis(RedisTarget),
}

impl StoreBackend {
    /// The Redis URLs it is configured with (the server, the cluster's nodes, the sentinels).
    pub fn urls(&self) -> &[String] {
        match self {
            StoreBackend::Embedded => &[],
            StoreBackend::Redis(RedisTarget::Single(u)) => std::slice::from_ref(u),
            StoreBackend::Redis(RedisTarget::Cluster(nodes)) => nodes,
            StoreBackend::Redis(RedisTarget::Sentinel { sentinels, .. }) => sentinels,
        }
    }
}

/// A URL's scheme and what follows its credentials (`redis://user:pw@host/0` -> `("redis",
/// "host/0")`), when it has credentials before the host.
pub fn credentials(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or("");
    let at = authority.rfind('@')?;
    Some((scheme, &rest[at + 1..]))
}

/// Which Redis.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisTarget {
    /// One server (`url`).
    Single(String),
    /// A Redis Cluster (`cluster`: some of its nodes).
    Cluster(Vec<String>),
    /// The master Redis Sentinel names (`sentinel`: the sentinels, `master`: the name).
    Sentinel {
        /// The sentinels' URLs.
        sentinels: Vec<String>,
        /// The master's name.
        master: String,
    },
}

/// The HTTP listener (`[web]`): `/metrics`, `/healthz`, the JSON API under `/api/` and the
/// dashboard at `/`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Web {
    /// Where to listen; none: no HTTP listener.
    pub addr: Option<std::net::SocketAddr>,
    /// The token admin actions need (`Authorization: Bearer TOKEN`); none: no admin actions.
    #[serde(serialize_with = "serialize_token")]
    pub token: Option<String>,
    /// The networks that may read the API, the metrics and the dashboard, and (with the
    /// token) act. `/healthz` answers everyone.
    pub allow: Vec<ipnet::IpNet>,
}

fn serialize_token<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    // never printed
    match v {
        Some(_) => s.serialize_str("(secret)"),
        None => s.serialize_none(),
    }
}

/// Our own reputation (`[reputation]`): the gateway's outbound IPs looked up in DNS
/// blocklists, with an alert when one is listed or delisted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reputation {
    /// Our outbound IPs.
    pub ips: Vec<std::net::IpAddr>,
    /// Blocklist zones (`zen.spamhaus.org`, ...); none: no lookups.
    pub dnsbl: Vec<String>,
    /// How often.
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
}

/// The watch on each local sender's outbound mail (`[senders]`): a sender whose recipients
/// mostly fail, or are refused as spam or blocked, is held.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Senders {
    /// The window over which delivered and failed recipients are counted.
    #[serde(serialize_with = "duration::serialize")]
    pub window: Duration,
    /// Finished recipients (delivered or failed) in the window before the ratios apply.
    pub min_volume: u64,
    /// Hold when permanently failed / finished is above this (0 to 1).
    pub hold_failed_ratio: f64,
    /// Hold when failures classed spam or blocked / finished is above this (0 to 1).
    pub hold_blocked_ratio: f64,
}

/// Alerts (`[alerts]`): every alert is logged (`event="alert"`); with a webhook it is also
/// POSTed there as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Alerts {
    /// `http://HOST:PORT/PATH`; none: log only.
    pub webhook: Option<String>,
}

/// Limits on mail from relay networks to other domains (`[outbound]`), per sender address,
/// per sender domain and per client IP. Our own reports and inbound mail never count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// Per envelope sender address.
    pub sender: RateLimits,
    /// Per envelope sender domain.
    pub sender_domain: RateLimits,
    /// Per client IP.
    pub client_ip: RateLimits,
}

/// Messages and recipients per hour and per day; 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Messages per hour.
    pub messages_per_hour: u64,
    /// Messages per day.
    pub messages_per_day: u64,
    /// Recipients per hour.
    pub rcpts_per_hour: u64,
    /// Recipients per day.
    pub rcpts_per_day: u64,
}

/// Directory-harvest defence (`[harvest]`): what clients that try many unknown addresses get.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Harvest {
    /// Unknown recipients in one session before each further RCPT is delayed.
    pub tarpit_after: u32,
    /// The first delay; it doubles with every further RCPT...
    #[serde(serialize_with = "duration::serialize")]
    pub tarpit_delay: Duration,
    /// ...up to this.
    #[serde(serialize_with = "duration::serialize")]
    pub tarpit_max: Duration,
    /// Unknown recipients in one session after which it is closed with `421 4.7.0`.
    pub close_after: u32,
    /// Unknown recipients from one client IP within `window` after which it is refused at
    /// connect for `block_for`.
    pub block_after: u64,
    /// The same for a whole network (IPv4 /24, IPv6 /64).
    pub block_after_net: u64,
    /// The window of those counts.
    #[serde(serialize_with = "duration::serialize")]
    pub window: Duration,
    /// How long a block lasts.
    #[serde(serialize_with = "duration::serialize")]
    pub block_for: Duration,
    /// Networks never tarpitted, closed or blocked (every listener's `relay_from` is exempt
    /// too).
    #[serde(serialize_with = "serialize_display_seq")]
    pub exempt: Vec<ipnet::IpNet>,
}

/// BATV (`[batv]`): keys and timing shared by every domain that signs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Batv {
    /// Keys: the first signs, all verify (rotation: put the new key first, keep the old one
    /// until its tags have expired). None: a key generated into the store at first start.
    #[serde(serialize_with = "serialize_keys")]
    pub keys: Vec<BatvKey>,
    /// How long a tag stays valid (whole days, 1 to 30).
    #[serde(serialize_with = "duration::serialize")]
    pub validity: Duration,
    /// After enforcement is first turned on for a domain, untagged bounces are still let
    /// through (and counted) this long: mail sent before then can still bounce back.
    #[serde(serialize_with = "duration::serialize")]
    pub warmup: Duration,
    /// Senders never signed (mailing-list software, VERP): `*` wildcards over the whole
    /// address, case ignored.
    pub exempt: Vec<String>,
}

/// One configured BATV key.
#[derive(Clone, Debug, PartialEq)]
pub struct BatvKey {
    /// Its number, carried in every tag (0–9).
    pub number: u8,
    /// Its secret (1–64 bytes).
    pub secret: String,
}

fn serialize_keys<S: serde::Serializer>(v: &[BatvKey], s: S) -> Result<S::Ok, S::Error> {
    // the secrets are never printed
    s.collect_seq(v.iter().map(|k| format!("{}:(secret)", k.number)))
}

/// Incoming bounces (`[bounces]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bounces {
    /// Most bounces one local recipient may receive per hour; more get `450 4.7.1`.
    pub per_recipient: u64,
    /// How long the Message-ID of mail sent out is remembered (the sent log).
    #[serde(serialize_with = "duration::serialize")]
    pub sent_log: Duration,
    /// Host names of our relays: a bounce whose quoted original passed one of them answers
    /// mail that left here. Default: `hostname`.
    pub relay_hosts: Vec<String>,
}

/// BATV for one domain (`batv` in its `[[domain]]` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatvMode {
    /// Not signed, tags not checked.
    Off,
    /// Outbound senders signed; bounces to untagged addresses counted, not refused.
    Sign,
    /// Signed, and bounces to untagged addresses refused after the warm-up.
    Enforce,
}

/// What a bounce judged to be backscatter gets (`backscatter` in a `[[domain]]` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackscatterAction {
    /// Delivered as is (reasons logged and counted only).
    Accept,
    /// Delivered with `X-Backstop-Bounce: backscatter; reasons=...`.
    Tag,
    /// Kept under `state_dir/quarantine`, not delivered; `backstop quarantine list`.
    Quarantine,
    /// Refused at the end of DATA with `550 5.7.1`.
    Reject,
}

impl BackscatterAction {
    /// `accept`, `tag`, `quarantine` or `reject`, as written in the configuration.
    pub fn label(self) -> &'static str {
        match self {
            BackscatterAction::Accept => "accept",
            BackscatterAction::Tag => "tag",
            BackscatterAction::Quarantine => "quarantine",
            BackscatterAction::Reject => "reject",
        }
    }
}

/// Delivery reports (`[reports]`): who may get one, and how many.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reports {
    /// Most reports to one address per hour.
    pub per_recipient: u64,
    /// Most reports to one domain per hour.
    pub per_domain: u64,
    /// Most reports in total per hour.
    pub total: u64,
    /// While other recipients of a message are still being tried, failures are gathered for
    /// this long before the first report (so one report covers them).
    #[serde(serialize_with = "duration::serialize")]
    pub gather: Duration,
    /// Warn the sender once when a message is still undelivered after this long; none: never
    /// (the default, as in Postfix).
    #[serde(serialize_with = "duration::serialize_opt")]
    pub delay_warning: Option<Duration>,
    /// How long a finished message that got no report (untrusted sender, suppressed,
    /// NOTIFY=NEVER) stays listed for the operator.
    #[serde(serialize_with = "duration::serialize")]
    pub keep_failed: Duration,
    /// Where a daily digest of failures that got no report goes; none: no digest (default).
    #[serde(serialize_with = "serialize_opt_display")]
    pub digest: Option<Mailbox>,
    /// Send daily TLS reports (RFC 8460) of our outbound TLS sessions to the domains that
    /// ask for them (`_smtp._tls` records).
    pub tls_reports: bool,
    /// The TLS reports' sender (envelope and `From:`); none: postmaster at the host name's
    /// domain.
    #[serde(serialize_with = "serialize_opt_display")]
    pub tls_reports_from: Option<Mailbox>,
}

/// A static route (`[[route]]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    /// The domain (exact match).
    #[serde(serialize_with = "serialize_display")]
    pub domain: Domain,
    /// Where its mail goes instead of its MX hosts.
    #[serde(serialize_with = "serialize_display")]
    pub next_hop: NextHop,
    /// TLS required of its next hop (none: `[delivery]`'s policy, MTA-STS for MX hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
}

/// What a delivery demands of TLS (Postfix's `smtp_tls_security_level` may, encrypt, secure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS when the next hop offers it, certificate not checked; else plaintext.
    May,
    /// TLS or no delivery; the certificate is not checked.
    Encrypt,
    /// TLS with a certificate that this machine's CAs (or `[delivery] tls_ca`) trust for the
    /// host's name, or no delivery.
    Verify,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::May => "may",
            TlsMode::Encrypt => "encrypt",
            TlsMode::Verify => "verify",
        })
    }
}

/// Delivery settings for the queue (`[delivery]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delivery {
    /// TCP port of MX hosts.
    pub smtp_port: u16,
    /// Most connections to one destination at a time.
    pub destination_concurrency: usize,
    /// Most connections for queue delivery in total.
    pub max_connections: usize,
    /// Timeout of each connect and each command's reply.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// First retry after a temporary failure; doubles with every attempt...
    #[serde(serialize_with = "duration::serialize")]
    pub retry_min: Duration,
    /// ...up to this.
    #[serde(serialize_with = "duration::serialize")]
    pub retry_max: Duration,
    /// A message still undelivered after this long fails.
    #[serde(serialize_with = "duration::serialize")]
    pub max_age: Duration,
    /// Use STARTTLS when the next hop offers it (opportunistic, not verified).
    pub starttls: bool,
    /// CA certificates trusted besides this machine's, for `tls = "verify"`, MTA-STS
    /// policies and the MX hosts they name (a private PKI, tests).
    pub tls_ca: Option<PathBuf>,
    /// Follow the MTA-STS policies (RFC 8461) of the domains mail goes to.
    pub mta_sts: bool,
    /// The HTTPS port MTA-STS policies are fetched from (443; another only for a test or a
    /// local mirror).
    pub mta_sts_port: u16,
    /// DANE (RFC 7672): MX hosts with DNSSEC-validated TLSA records get TLS checked against
    /// them (needs a resolver that passes DNSSEC records).
    pub dane: bool,
}

/// Session limits (`[limits]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Limits {
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Largest message in bytes.
    pub max_message_size: u64,
    /// Bytes of a message a session keeps in memory; the rest goes to a spill file as it
    /// arrives (so memory does not grow with message size).
    pub message_in_memory: u64,
    /// Protocol errors before `421` and close.
    pub max_errors: u32,
    /// Longest silence from a client.
    #[serde(serialize_with = "duration::serialize")]
    pub idle_timeout: Duration,
    /// Longest session.
    #[serde(serialize_with = "duration::serialize")]
    pub session_timeout: Duration,
    /// On SIGTERM, how long sessions in flight may take to finish.
    #[serde(serialize_with = "duration::serialize")]
    pub shutdown_timeout: Duration,
    /// Most client connections at a time, in total.
    pub max_connections: usize,
    /// Most connections at a time from one client IP.
    pub max_connections_per_ip: usize,
    /// Most new connections per minute from one client IP; 0: no limit (the default, as in
    /// Postfix).
    pub connection_rate_per_ip: u64,
}

/// What to answer for unknown addresses of a domain whose internal server accepts everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CatchAllPolicy {
    /// `451 4.4.3`: the client tries again later; the operator is warned.
    Defer,
    /// `550 5.1.1`: only listed or previously verified addresses are taken.
    Reject,
}

/// Call-out settings (`[callout]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Callout {
    /// Envelope sender of probes; empty means the null sender `<>`.
    pub probe_sender: String,
    /// Longest probe, connect included.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// A valid answer is re-checked (in the background) after this long...
    #[serde(serialize_with = "duration::serialize")]
    pub positive_refresh: Duration,
    /// ...and forgotten after this long.
    #[serde(serialize_with = "duration::serialize")]
    pub positive_expire: Duration,
    /// An unknown-user answer is re-checked after this long...
    #[serde(serialize_with = "duration::serialize")]
    pub negative_refresh: Duration,
    /// ...and forgotten after this long.
    #[serde(serialize_with = "duration::serialize")]
    pub negative_expire: Duration,
    /// Probes per minute a single client IP can cause.
    pub budget_per_client: u32,
    /// Probes per minute in total.
    pub budget_total: u32,
    /// Probe a random address once per domain per negative refresh to spot catch-all servers.
    pub catch_all_check: bool,
    /// What unknown addresses of a catch-all domain get.
    pub catch_all: CatchAllPolicy,
    /// Most connections kept to one internal server for probes.
    pub max_connections: usize,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// SMTP: backstop is the gateway.
    Smtp,
    /// Postfix's policy delegation (`check_policy_service`): Postfix is the gateway and asks
    /// backstop about each recipient.
    Policy,
    /// The milter protocol (`smtpd_milters`): the MTA shows backstop each message at its end.
    Milter,
}

/// Where a listener listens: an IP address and port, or (policy and milter only) a Unix
/// socket, as Postfix writes them (`unix:/path`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `IP:PORT`.
    Inet(SocketAddr),
    /// A socket file, made when the listener starts and removed when it stops.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Inet(a) => a.fmt(f),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One listener (`[[listen]]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    /// IP address and port, or a Unix socket.
    pub addr: ListenAddr,
    /// What it speaks: SMTP to mail clients, or Postfix's policy delegation protocol.
    pub protocol: Protocol,
    /// Certificate chain (PEM) for STARTTLS.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for STARTTLS.
    pub tls_key: Option<PathBuf>,
    /// Clients in these networks may relay mail to any domain (through the queue).
    #[serde(serialize_with = "serialize_display_seq")]
    pub relay_from: Vec<ipnet::IpNet>,
}

impl Listener {
    /// True when `ip` may relay through this listener.
    pub fn may_relay(&self, ip: std::net::IpAddr) -> bool {
        in_networks(&self.relay_from, ip)
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:192.0.2.7`) as the IPv4 address it is.
pub fn unmapped(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// True when `ip` (an IPv4-mapped address counted as IPv4) is in one of `nets`.
pub fn in_networks(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = unmapped(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// `HOST:PORT` of an internal server; the host is resolved when connecting.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`, `[v6]:port` or `v4:port`.
    pub fn parse(s: &str) -> Option<HostPort> {
        let (host, port) = s.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(['/', ' ']) {
            return None;
        }
        Some(HostPort {
            host: host.to_string(),
            port: port.parse().ok().filter(|p| *p != 0)?,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A recipient source of a domain, tried in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `list:FILE`
    List(PathBuf),
    /// `callout:HOST:PORT`
    Callout(HostPort),
    /// `ldap:NAME`: the `[[ldap]]` table of that name.
    Ldap(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::List(p) => write!(f, "list:{}", p.display()),
            Source::Callout(h) => write!(f, "callout:{h}"),
            Source::Ldap(n) => write!(f, "ldap:{n}"),
        }
    }
}

/// Where accepted mail for a domain goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// `smtp:HOST:PORT`
    Smtp(HostPort),
    /// `maildir:DIR`
    Maildir(PathBuf),
    /// `mx`: the domain's MX hosts (routes only).
    Mx,
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Smtp(h) => write!(f, "smtp:{h}"),
            NextHop::Maildir(p) => write!(f, "maildir:{}", p.display()),
            NextHop::Mx => f.write_str("mx"),
        }
    }
}

/// How accepted mail is handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayMode {
    /// While the client waits: the next hop's answer is the client's answer.
    InSession,
    /// Store and forward: `250` once the message is in the durable queue.
    Queue,
}

/// One domain (`[[domain]]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainConfig {
    /// The domain, lower case.
    #[serde(serialize_with = "serialize_display")]
    pub name: Domain,
    /// Recipient sources, in order.
    #[serde(rename = "recipients", serialize_with = "serialize_display_seq")]
    pub sources: Vec<Source>,
    /// Where its mail goes.
    #[serde(serialize_with = "serialize_display")]
    pub next_hop: NextHop,
    /// How.
    pub relay: RelayMode,
    /// BATV for its senders and its bounces.
    pub batv: BatvMode,
    /// What a bounce to it that answers no mail of ours gets.
    pub backscatter: BackscatterAction,
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn serialize_opt_display<T: fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_str(""),
    }
}

fn serialize_display_seq<T: fmt::Display, S: serde::Serializer>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

impl Config {
    /// Who TLS reports come from: `[reports] tls_reports_from`, else postmaster at the
    /// domain of the host name (its parent when it has more than two labels).
    pub fn tls_reports_from(&self) -> String {
        if let Some(m) = &self.reports.tls_reports_from {
            return m.to_string();
        }
        let host = self.hostname.trim_end_matches('.');
        let domain = match host.split_once('.') {
            Some((_, parent)) if parent.contains('.') => parent,
            _ => host,
        };
        format!("postmaster@{domain}")
    }

    /// The keys of this configuration that hold secrets: whoever reads them can forge BATV
    /// tags, act on the web API, or reach the store.
    pub fn secrets(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.batv.keys.is_empty() {
            out.push("batv.keys");
        }
        if self.web.token.is_some() {
            out.push("web.token");
        }
        if self
            .store
            .backend
            .urls()
            .iter()
            .any(|u| credentials(u).is_some())
        {
            out.push("store (a Redis password)");
        }
        if self
            .ldap
            .iter()
            .any(|l| l.bind_password.is_some() && l.bind_password_file.is_none())
        {
            out.push("ldap.bind_password");
        }
        out
    }

    /// Reads and validates a file; relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::from_toml(&text, &base)
    }

    /// The shipped example, paths relative to the current directory.
    pub fn example() -> Result<Config, ConfigError> {
        Config::from_toml(EXAMPLE, Path::new(""))
    }

    /// Parses and validates TOML text; relative paths are joined to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.validate(base)
    }

    /// The domain's configuration, if we serve it.
    pub fn domain(&self, name: &Domain) -> Option<&DomainConfig> {
        self.domains.iter().find(|d| d.name == *name)
    }

    /// Where queued mail for `domain` goes: our domain's next hop, a static route, or MX.
    /// The TLS a route demands of the next hop for `domain`, if one is configured.
    pub fn route_tls(&self, domain: &Domain) -> Option<TlsMode> {
        if self.domain(domain).is_some() {
            return None;
        }
        self.routes
            .iter()
            .find(|r| r.domain == *domain)
            .and_then(|r| r.tls)
    }

    pub fn route(&self, domain: &Domain) -> NextHop {
        if let Some(d) = self.domain(domain) {
            return d.next_hop.clone();
        }
        self.routes
            .iter()
            .find(|r| r.domain == *domain)
            .map_or(NextHop::Mx, |r| r.next_hop.clone())
    }

    /// The resolved configuration as TOML, defaults included.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
