//! Sender authentication of accepted mail: is the envelope sender (MAIL FROM) of a message
//! authenticated by SPF (RFC 7208) or by a DKIM signature (RFC 6376) of an aligned domain?
//! The gateway sends a bounce report only to a sender with such [`Evidence`], so that a forged
//! sender never receives backscatter.
//!
//! Responsible for: building the DNS resolver the checks use, running SPF for the MAIL FROM
//! identity and, when SPF does not pass, verifying the message's DKIM signatures with the
//! `mail-auth` crate; deciding alignment; bounding the work (DNS time and DKIM effort) one
//! message can cause; turning every DNS problem into a `temperror` result, never an error.
//! Also, through the same resolver, where a domain wants TLS reports (its `_smtp._tls`
//! record, RFC 8460 §3) and the addresses of an HTTPS host they go to.
//! Not responsible for: DMARC policy, ARC, Authentication-Results headers, deciding whether
//! to bounce (the caller asks [`Evidence::trusted`]), nor storing the evidence.
//!
//! # Alignment
//!
//! A DKIM signature counts only when it verifies and its `d=` is *aligned* with the envelope
//! sender's domain: equal to it, or one of the two is a subdomain of the other (DMARC's relaxed
//! alignment, RFC 7489 §3.1.1, but without a public-suffix list; comparison is ASCII
//! case-insensitive, on whole labels). Why this is safe without a public-suffix list: a
//! verifying signature proves that whoever controls `<selector>._domainkey.<d>` signed the
//! message. If `d=` is the sender's domain or a parent of it, only that domain's owner (or a
//! registry above it) can publish the key. If `d=` is a subdomain of the sender's domain, the
//! signer controls a name under the sender's domain; the only way that is not the same
//! organisation is when the sender's domain is itself a public suffix (`com`, `co.uk`,
//! `github.io`), and then the bounce goes to a mailbox at a public suffix, which is not a
//! mailbox of a third party someone can be flooded through. The choice errs towards trusting
//! a subdomain of the same organisation, which DMARC does too.
//!
//! What DKIM does not prove: a signature covers the message, not the envelope. Someone who
//! holds any message signed by `example.test` can replay it with any MAIL FROM at
//! `example.test`; SPF (the MAIL FROM identity) does not have this gap. Signatures whose `h=`
//! does not cover `From` are ignored (RFC 6376 §6.1.1), as are `l=` signatures (mail-auth's
//! strict parsing: content could be appended) and signatures whose key is in testing mode
//! (`t=y`, RFC 6376 §3.6.1).
//!
//! # Bounds
//!
//! Each DNS lookup gives up after the configured timeout (one try; the resolver may resend
//! the UDP query within that time). The SPF phase and the DKIM phase each stop after
//! [`PHASE_LOOKUPS`] timeouts (mail-auth's own SPF limits also apply: 10 DNS-querying
//! mechanisms, 20 s); a phase cut short counts as `temperror`. DKIM verifies at most
//! [`MAX_SIGNATURES`] signatures (aligned ones first), skips signatures listing more than
//! [`MAX_SIGNED_HEADERS`] header fields, and never asks for report records (`r=y`).
//! mail-auth hashes the body once per (canonicalization, hash algorithm) pair found in the
//! signatures: at most four passes over the body, however many signatures there are.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use backstop_proto::address::Mailbox;
use mail_auth::DnsError;
use mail_auth::common::cache::NoCache;
use mail_auth::common::verify::{DomainKey, VerifySignature};
use mail_auth::dkim::Signature;
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, SpfResult, Txt};
use serde::{Deserialize, Serialize};

/// Each phase (SPF, then DKIM) is given this many lookup timeouts in all.
pub const PHASE_LOOKUPS: u32 = 4;

/// At most this many DKIM signatures of one message are verified (aligned ones first).
pub const MAX_SIGNATURES: usize = 5;

/// DKIM signatures whose `h=` lists more header fields than this are not verified: hashing
/// them costs (fields listed) x (fields in the message).
pub const MAX_SIGNED_HEADERS: usize = 64;

/// Messages at least this large are parsed (which hashes the body) with the runtime told
/// that the task blocks, when the runtime has several worker threads.
const BLOCKING_PARSE_BYTES: usize = 256 * 1024;

/// mail-auth's bit for `t=y` in `DomainKey::f` (`R_FLAG_TESTING`, crate-private in 0.13.3,
/// which is pinned; a test checks that a `t=y` key does not count).
const KEY_FLAG_TESTING: u64 = 0x10;

/// At most this many DKIM outcomes are written into [`Evidence::None`]'s `dkim` text.
const MAX_LISTED: usize = 6;

/// What SPF is told the checking host's name is (`%{r}` macro); RFC 7208 §7.3 says to use
/// "unknown" when the name is not to be given.
const CHECKING_HOST: &str = "unknown";

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// /etc/resolv.conf could not be read or parsed (only when no resolver is configured).
    #[error("reading the system's DNS configuration: {0}")]
    SystemConf(#[source] NetError),
    /// The resolver could not be built from its configuration.
    #[error("DNS resolver setup: {0}")]
    Resolver(#[source] NetError),
}

/// Why a sender is (not) trusted; stored with the queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Evidence {
    /// SPF passed for the MAIL FROM identity; holds the sender's domain.
    SpfPass {
        /// The envelope sender's domain that SPF authorised the client for.
        domain: String,
    },
    /// SPF did not pass, but a DKIM signature of an aligned domain verified.
    DkimAligned {
        /// The `d=` of the signature that verified.
        domain: String,
    },
    /// Neither: the sender may be forged.
    None {
        /// The SPF result: `fail`, `softfail`, `neutral`, `none`, `temperror` or `permerror`.
        spf: String,
        /// The DKIM outcome: `none` (no signature), or each signature's result and `d=`,
        /// for example `pass d=other.test (not aligned)`, `temperror d=example.test (...)`.
        dkim: String,
    },
}

impl Evidence {
    /// Whether the envelope sender is authenticated (and may receive a bounce).
    pub fn trusted(&self) -> bool {
        match self {
            Evidence::SpfPass { .. } | Evidence::DkimAligned { .. } => true,
            Evidence::None { .. } => false,
        }
    }
}

impl fmt::Display for Evidence {
    /// One short line for logs: `spf=pass (example.test)`, `dkim=pass (example.test)` or
    /// `spf=fail dkim=none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::SpfPass { domain } => write!(f, "spf=pass ({domain})"),
            Evidence::DkimAligned { domain } => write!(f, "dkim=pass ({domain})"),
            Evidence::None { spf, dkim } => write!(f, "spf={spf} dkim={dkim}"),
        }
    }
}

/// Checks SPF and DKIM for accepted mail. Cheap to clone (the resolver is shared).
#[derive(Clone)]
pub struct SenderAuth {
    authenticator: MessageAuthenticator,
    /// How long one phase (SPF, DKIM) may take in all.
    phase_budget: Duration,
}

impl SenderAuth {
    /// `resolver`: the DNS server to ask, over UDP and TCP (config `[dns] resolver`, for
    /// example 127.0.0.1:5353); None: the system's (/etc/resolv.conf, whose timeout and
    /// attempts are replaced by ours). `timeout`: for each try of a lookup, `attempts` tries.
    /// The resolver is mail-auth's hickory-resolver (the same 0.26 that `delivery::mx` uses),
    /// with its cache (positive and negative answers kept for their TTL); the hosts file is
    /// not consulted.
    pub fn new(
        resolver: Option<SocketAddr>,
        timeout: Duration,
        attempts: usize,
    ) -> Result<SenderAuth, AuthError> {
        let (config, mut opts) = match resolver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![ns]);
                (config, ResolverOpts::default())
            }
            None => read_system_conf().map_err(AuthError::SystemConf)?,
        };
        opts.timeout = timeout;
        opts.attempts = attempts.saturating_sub(1);
        opts.edns0 = true;
        opts.use_hosts_file = ResolveHosts::Never;
        let authenticator = MessageAuthenticator::new(config, opts).map_err(AuthError::Resolver)?;
        Ok(SenderAuth {
            authenticator,
            phase_budget: timeout
                .saturating_mul(attempts.max(1) as u32)
                .saturating_mul(PHASE_LOOKUPS),
        })
    }

    /// SPF for MAIL FROM `from` from `ip` (HELO name `helo`); then, only if SPF did not
    /// pass, DKIM on `message` (the full message as received, CRLF line ends), accepting only
    /// a signature that verifies and whose `d=` is aligned with `from`'s domain (see the
    /// module documentation). Never fails: DNS trouble gives `temperror` in the evidence.
    pub async fn check(&self, ip: IpAddr, helo: &str, from: &Mailbox, message: &[u8]) -> Evidence {
        let domain = from.domain().as_str();
        let spf = self.spf(ip.to_canonical(), helo, from).await;
        if spf == SpfResult::Pass {
            return Evidence::SpfPass {
                domain: domain.to_string(),
            };
        }
        match self.dkim(domain, message).await {
            Dkim::Aligned(d) => Evidence::DkimAligned { domain: d },
            Dkim::NotAligned(dkim) => Evidence::None {
                spf: spf_word(spf).to_string(),
                dkim,
            },
        }
    }

    /// The SPF result for the MAIL FROM identity; `TempError` when the phase runs out of time.
    async fn spf(&self, ip: IpAddr, helo: &str, from: &Mailbox) -> SpfResult {
        let sender = format!("{}@{}", from.local(), from.domain().as_str());
        let params = SpfParameters::verify_mail_from(ip, helo, CHECKING_HOST, &sender);
        let check = self.authenticator.verify_spf(params);
        match tokio::time::timeout(self.phase_budget, check).await {
            Ok(output) => output.result(),
            Err(_) => SpfResult::TempError,
        }
    }

    /// Verifies the signatures of `message` (see the module's bounds) and looks for a
    /// passing one aligned with `sender_domain`.
    async fn dkim(&self, sender_domain: &str, message: &[u8]) -> Dkim {
        let parsed = cpu_bound(message.len(), || AuthenticatedMessage::parse(message));
        let Some(mut parsed) = parsed else {
            return Dkim::NotAligned("none".to_string());
        };
        let skipped = select_signatures(&mut parsed, sender_domain);
        if parsed.dkim_headers.is_empty() && parsed.errors.is_empty() && skipped.is_empty() {
            return Dkim::NotAligned("none".to_string());
        }
        let verify = self.verify(&parsed, sender_domain, skipped);
        match tokio::time::timeout(self.phase_budget, verify).await {
            Ok(verdict) => verdict,
            Err(_) => Dkim::NotAligned("temperror (DNS took too long)".to_string()),
        }
    }

    /// Verifies the signatures left in `message`; the first aligned pass whose key is not
    /// in testing mode counts. `skipped`: the outcomes of the signatures left out.
    async fn verify(
        &self,
        message: &AuthenticatedMessage<'_>,
        sender_domain: &str,
        skipped: Vec<String>,
    ) -> Dkim {
        let outputs = self.authenticator.verify_dkim(message).await;
        let mut texts: Vec<String> = outputs
            .iter()
            .map(|o| outcome(o.result(), o.signature(), sender_domain))
            .collect();
        for (i, output) in outputs.iter().enumerate() {
            let (DkimResult::Pass, Some(sig)) = (output.result(), output.signature()) else {
                continue;
            };
            if !aligned(&sig.d, sender_domain) {
                continue;
            }
            match self.key_refusal(sig).await {
                None => return Dkim::Aligned(normalise(&sig.d)),
                Some(why) => texts[i] = format!("pass d={} ({why})", sig.d),
            }
        }
        texts.extend(skipped);
        Dkim::NotAligned(summarise(texts))
    }

    /// Why a verified signature's key does not count: testing mode (`t=y`; RFC 6376 §3.6.1:
    /// treat the message as unsigned), or the key could not be fetched again. The key was
    /// fetched during verification, so this is normally answered from the resolver's cache.
    async fn key_refusal(&self, sig: &Signature) -> Option<&'static str> {
        let key = self
            .authenticator
            .txt_lookup::<DomainKey>(sig.domain_key(), None::<&NoCache<Box<str>, Txt>>)
            .await;
        match key {
            Ok(key) if key.f & KEY_FLAG_TESTING != 0 => Some("key in testing mode, t=y"),
            Ok(_) => None,
            Err(_) => Some("key lookup failed on recheck"),
        }
    }
}

/// Where a domain wants TLS reports.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsRptLookup {
    /// Its `rua` addresses (`mailto:` and `https:`), in the record's order.
    Found(Vec<ReportUri>),
    /// No (valid) `v=TLSRPTv1` record: it wants none.
    None,
    /// DNS did not answer; ask again later.
    Failed(String),
}

impl SenderAuth {
    /// The `_smtp._tls.DOMAIN` record (RFC 8460 §3): where `domain` wants TLS reports.
    pub async fn tls_rpt(&self, domain: &str) -> TlsRptLookup {
        let name = format!("_smtp._tls.{}.", domain.trim_end_matches('.'));
        let record = self
            .authenticator
            .txt_lookup::<TlsRpt>(name, None::<&NoCache<Box<str>, Txt>>)
            .await;
        match record {
            Ok(r) => TlsRptLookup::Found(r.rua.clone()),
            Err(mail_auth::Error::Dns(DnsError::Resolver(e))) => TlsRptLookup::Failed(e),
            Err(mail_auth::Error::Dns(DnsError::RecordNotFound(code)))
                if !matches!(code, ResponseCode::NXDomain | ResponseCode::NoError) =>
            {
                TlsRptLookup::Failed(format!("DNS answered {code}"))
            }
            Err(_) => TlsRptLookup::None,
        }
    }

    /// The addresses of `host` (for a TLS report sent over HTTPS).
    pub async fn addresses_of(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = format!("{}.", host.trim_end_matches('.'));
        match self.authenticator.0.lookup_ip(name).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) => Err(format!("{host}: {e}")),
        }
    }
}

/// The DKIM phase's verdict.
enum Dkim {
    /// The `d=` (lower case) of a verified, aligned signature.
    Aligned(String),
    /// Why none counts, as text for [`Evidence::None`].
    NotAligned(String),
}

/// The RFC 7208 §2.6 result word.
fn spf_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// Keeps the signatures worth verifying in `message`: those that sign `From` and list at
/// most [`MAX_SIGNED_HEADERS`] fields, aligned ones first, at most [`MAX_SIGNATURES`]; and
/// turns off report requests. Returns the outcomes of the signatures left out.
fn select_signatures(message: &mut AuthenticatedMessage<'_>, sender_domain: &str) -> Vec<String> {
    let mut skipped = Vec::new();
    message.dkim_headers.retain(|h| {
        let sig = &h.header;
        let why = if !sig.h.iter().any(|name| name.eq_ignore_ascii_case("from")) {
            "From not signed"
        } else if sig.h.len() > MAX_SIGNED_HEADERS {
            "too many signed header fields"
        } else {
            return true;
        };
        skipped.push(format!("permerror d={} ({why})", sig.d));
        false
    });
    // A stable sort: aligned signatures first, each group in message order.
    message
        .dkim_headers
        .sort_by_key(|h| !aligned(&h.header.d, sender_domain));
    if message.dkim_headers.len() > MAX_SIGNATURES {
        let rest = message.dkim_headers.len() - MAX_SIGNATURES;
        message.dkim_headers.truncate(MAX_SIGNATURES);
        skipped.push(format!("{rest} more not verified"));
    }
    for h in &mut message.dkim_headers {
        h.header.r = false;
    }
    skipped
}

/// The `dkim` text of [`Evidence::None`] from each signature's outcome: at most
/// [`MAX_LISTED`] of them, `none` if there were none.
fn summarise(mut parts: Vec<String>) -> String {
    if parts.is_empty() {
        return "none".to_string();
    }
    if parts.len() > MAX_LISTED {
        let rest = parts.len() - MAX_LISTED;
        parts.truncate(MAX_LISTED);
        parts.push(format!("{rest} more"));
    }
    parts.join(", ")
}

/// One signature's outcome: `pass d=other.test (not aligned)`, `fail d=example.test (...)`.
fn outcome(result: &DkimResult, signature: Option<&Signature>, sender_domain: &str) -> String {
    let (word, why) = match result {
        DkimResult::Pass => ("pass", None),
        DkimResult::Neutral(e) => ("neutral", Some(e)),
        DkimResult::Fail(e) => ("fail", Some(e)),
        DkimResult::PermError(e) => ("permerror", Some(e)),
        DkimResult::TempError(e) => ("temperror", Some(e)),
        DkimResult::None => ("none", None),
    };
    let mut text = word.to_string();
    if let Some(sig) = signature {
        text.push_str(&format!(" d={}", sig.d));
    }
    if let Some(e) = why {
        text.push_str(&format!(" ({e})"));
    } else if signature.is_some_and(|s| !aligned(&s.d, sender_domain)) {
        text.push_str(" (not aligned)");
    }
    text
}

/// Whether a signing domain `d` is aligned with the envelope sender's domain: equal, or one
/// is a subdomain of the other (whole labels, ASCII case-insensitive). Address literals
/// and empty names align with nothing. See the module documentation for why no
/// public-suffix list is needed.
fn aligned(d: &str, sender_domain: &str) -> bool {
    let (d, s) = (normalise(d), normalise(sender_domain));
    if d.is_empty() || s.is_empty() || s.starts_with('[') || d.starts_with('[') {
        return false;
    }
    d == s || is_subdomain(&d, &s) || is_subdomain(&s, &d)
}

/// Whether `child` is a proper subdomain of `parent` (both normalised).
fn is_subdomain(child: &str, parent: &str) -> bool {
    child.len() > parent.len()
        && child.ends_with(parent)
        && child.as_bytes()[child.len() - parent.len() - 1] == b'.'
}

/// Lower case (ASCII), without a trailing dot.
fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Runs CPU-heavy `work` (over `len` bytes) so that a large message does not stall the other
/// tasks of a worker thread: `block_in_place` on a multi-threaded runtime, inline otherwise.
fn cpu_bound<R>(len: usize, work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if len >= BLOCKING_PARSE_BYTES && multi {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// The integration tests' dnsmasq launcher, shared with the unit tests (delivery::mx
/// includes it too, privately: hence the second copy).
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/dns.rs"]
pub(crate) mod test_dns;

#[cfg(test)]
mod tests;
