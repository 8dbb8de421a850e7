//! Where mail for a domain goes: the DNS lookups of outbound delivery, as Postfix's smtp
//! client does them (RFC 5321 §5.1 with implicit MX, RFC 7505 null MX). Asks for the MX
//! records of a domain, orders them, and looks up the A and AAAA records of each host.
//!
//! Responsible for: MX and address lookups and for telling a permanent DNS answer (NXDOMAIN,
//! null MX, no records) from a temporary failure (SERVFAIL, REFUSED, timeout, network error).
//! Not responsible for: connecting to the hosts, limiting how many are tried, skipping the
//! local host among the MX hosts, retry and bounce policy. The hosts file is not consulted
//! (like Postfix's default `smtp_host_lookup = dns`). hickory answers some special-use names
//! itself (RFC 6761) without asking the server: `localhost` names get loopback addresses,
//! `.invalid` names NXDOMAIN; refusing loopback destinations is the connector's job.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::task::JoinSet;

/// The TLSA records of an MX host, as DANE reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// Secure (DNSSEC-validated) records: DANE applies to the host.
    Secure(Vec<TLSA>),
    /// None, or not secure: DANE does not apply.
    None,
    /// The lookup failed or did not validate: the host must not be used (RFC 7672 §2.2).
    Failed(String),
}

/// At most this many MX hosts (the most preferred) are looked up; the rest are ignored.
/// Bounds the work one hostile MX record set can cause.
pub const MAX_MX_HOSTS: usize = 10;

/// The resolver could not be set up (for example, an unreadable /etc/resolv.conf).
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver setup: {0}")]
pub struct MxError(String);

/// Resolves the hosts to deliver a domain's mail to.
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
    shuffle_seed: Option<u64>,
}

/// One host to try, with the addresses to connect to (IPv4 first, then IPv6, DNS order
/// within each family; each with the port asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The host's name in ASCII (A-labels), without the trailing dot.
    pub name: String,
    /// The MX preference; 0 for an implicit MX (the domain itself).
    pub preference: u16,
    /// Never empty.
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain cannot be resolved now; `is_permanent()` says whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// NXDOMAIN for the domain (or the domain is not a valid DNS name). Holds the domain.
    NoSuchDomain(String),
    /// The domain publishes a null MX (RFC 7505 `MX 0 .`): it accepts no mail. Holds the domain.
    NullMx(String),
    /// No MX and no A/AAAA records, or no MX host has an address record. Holds the domain.
    NoAddress(String),
    /// SERVFAIL, REFUSED, timeout, network error. Holds the domain and the cause, as text.
    Temporary(String),
}

impl DnsFailure {
    /// Whether the same lookup is certain to fail again (bounce) rather than worth retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            DnsFailure::NoSuchDomain(_) | DnsFailure::NullMx(_) | DnsFailure::NoAddress(_) => true,
            DnsFailure::Temporary(_) => false,
        }
    }

    /// Human text naming the domain, for logs and delivery status notifications.
    pub fn detail(&self) -> String {
        match self {
            DnsFailure::NoSuchDomain(d) => format!("{d}: domain not found (NXDOMAIN)"),
            DnsFailure::NullMx(d) => format!("{d}: domain accepts no mail (null MX, RFC 7505)"),
            DnsFailure::NoAddress(d) => {
                format!("{d}: no mail host with an address (no usable MX, A or AAAA record)")
            }
            DnsFailure::Temporary(s) => format!("temporary DNS failure: {s}"),
        }
    }
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for DnsFailure {}

/// What one query (or the A + AAAA pair) said when it gave no usable records.
#[derive(Debug)]
enum Negative {
    NxDomain,
    NoData,
    Temporary(String),
}

impl From<&NetError> for Negative {
    fn from(e: &NetError) -> Negative {
        match e {
            NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
                match *response_code {
                    ResponseCode::NXDomain => Negative::NxDomain,
                    ResponseCode::NoError => Negative::NoData,
                    _ => Negative::Temporary(e.to_string()),
                }
            }
            _ => Negative::Temporary(e.to_string()),
        }
    }
}

impl MxResolver {
    /// `server`: the DNS server to ask (UDP and TCP on that address), or None for the
    /// system's (/etc/resolv.conf; its search list applies to nothing, names are absolute).
    /// `timeout`: for each try of a query; `attempts`: tries of a query before it fails, so
    /// one lookup gives up after about `attempts` times `timeout`. Answers are cached for
    /// their TTL, negative ones (NXDOMAIN, no data) too.
    pub fn new(
        server: Option<SocketAddr>,
        timeout: Duration,
        attempts: usize,
    ) -> Result<MxResolver, MxError> {
        MxResolver::build(server, timeout, attempts, None)
    }

    /// The same, validating DNSSEC (for DANE): from the root's keys, or from the DNSKEY
    /// records in the file `anchor` (a zone of one's own, tests). Answers carry their proof.
    pub fn validating(
        server: Option<SocketAddr>,
        timeout: Duration,
        attempts: usize,
        anchor: Option<&std::path::Path>,
    ) -> Result<MxResolver, MxError> {
        let anchors = match anchor {
            Some(p) => hickory_resolver::proto::dnssec::TrustAnchors::from_file(p)
                .map_err(|e| MxError(format!("{}: {e}", p.display())))?,
            None => hickory_resolver::proto::dnssec::TrustAnchors::default(),
        };
        MxResolver::build(
            server,
            timeout,
            attempts,
            Some(std::sync::Arc::new(anchors)),
        )
    }

    fn build(
        server: Option<SocketAddr>,
        timeout: Duration,
        attempts: usize,
        anchors: Option<std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
    ) -> Result<MxResolver, MxError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![ns]);
                TokioResolver::builder_with_config(config, provider)
            }
            None => TokioResolver::builder(provider).map_err(|e| MxError(e.to_string()))?,
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = attempts.saturating_sub(1);
        opts.use_hosts_file = ResolveHosts::Never;
        if let Some(a) = anchors {
            builder = builder.with_trust_anchor(a);
        }
        let resolver = builder.build().map_err(|e| MxError(e.to_string()))?;
        Ok(MxResolver {
            resolver,
            shuffle_seed: None,
        })
    }

    /// The IPv4 addresses `name` has (a DNS blocklist query): empty when it has none
    /// (NXDOMAIN or no data); an error for a failure that says nothing (timeout, SERVFAIL).
    pub async fn ipv4_of(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
        let Some(name) = absolute_name(name) else {
            return Ok(Vec::new());
        };
        match self.resolver.lookup(name, RecordType::A).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            Err(e) => match Negative::from(&e) {
                Negative::NxDomain | Negative::NoData => Ok(Vec::new()),
                Negative::Temporary(why) => Err(why),
            },
        }
    }

    /// The TXT records at `name`, each record's strings joined: empty when it has none
    /// (NXDOMAIN or no data); an error for a failure that says nothing (timeout, SERVFAIL).
    pub async fn txt_of(&self, name: &str) -> Result<Vec<Vec<u8>>, String> {
        let Some(name) = absolute_name(name) else {
            return Ok(Vec::new());
        };
        match self.resolver.lookup(name, RecordType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => {
                        Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect())
                    }
                    _ => None,
                })
                .collect()),
            Err(e) => match Negative::from(&e) {
                Negative::NxDomain | Negative::NoData => Ok(Vec::new()),
                Negative::Temporary(why) => Err(why),
            },
        }
    }

    /// The addresses of host `name` (A and AAAA) with `port`; an error says why there are
    /// none.
    pub async fn addresses_of(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let Some(n) = absolute_name(name) else {
            return Err(format!("{name}: not a host name"));
        };
        addresses(&self.resolver, &n, port)
            .await
            .map_err(|e| match e {
                Negative::NxDomain => format!("{name}: no such domain"),
                Negative::NoData => format!("{name}: no address"),
                Negative::Temporary(why) => format!("{name}: address lookup: {why}"),
            })
    }

    /// Whether `domain`'s MX records (or, without any, its addresses) are DNSSEC-secure
    /// (RFC 7672 §2.2.1: DANE applies only then). Only on a validating resolver.
    pub async fn mx_is_secure(&self, domain: &str) -> bool {
        let Some(name) = absolute_name(domain) else {
            return false;
        };
        for rtype in [RecordType::MX, RecordType::A] {
            if let Ok(lookup) = self.resolver.lookup(name.clone(), rtype).await {
                let answers = lookup.answers();
                return !answers.is_empty() && answers.iter().all(|r| r.proof == Proof::Secure);
            }
        }
        false
    }

    /// The TLSA records of `_PORT._tcp.HOST` (RFC 7672 §2.2), on a validating resolver.
    pub async fn tlsa(&self, host: &str, port: u16) -> TlsaAnswer {
        let Some(name) = absolute_name(&format!("_{port}._tcp.{host}")) else {
            return TlsaAnswer::None;
        };
        match self.resolver.lookup(name, RecordType::TLSA).await {
            Ok(lookup) => {
                let answers = lookup.answers();
                if answers.iter().any(|r| r.proof != Proof::Secure) {
                    // an insecure answer is as good as none; a bogus one is an attack or a
                    // broken zone: the host is not used
                    return match answers.iter().any(|r| r.proof == Proof::Insecure) {
                        true => TlsaAnswer::None,
                        false => TlsaAnswer::Failed(format!("{host}: TLSA records not validated")),
                    };
                }
                let records: Vec<TLSA> = answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect();
                match records.is_empty() {
                    true => TlsaAnswer::None,
                    false => TlsaAnswer::Secure(records),
                }
            }
            Err(e) => match Negative::from(&e) {
                Negative::NxDomain | Negative::NoData => TlsaAnswer::None,
                Negative::Temporary(why) => {
                    TlsaAnswer::Failed(format!("{host}: TLSA lookup: {why}"))
                }
            },
        }
    }

    /// Shuffle MX hosts of equal preference with this seed instead of a fresh random one
    /// per call, so that the order is the same on every call (for tests).
    pub fn with_shuffle_seed(mut self, seed: u64) -> MxResolver {
        self.shuffle_seed = Some(seed);
        self
    }

    /// The hosts to try for `domain`, in order: MX preference ascending; hosts of equal
    /// preference are shuffled (sorted by name, then shuffled with the seed, if one was
    /// given). A host listed twice keeps its lowest preference. Hosts without addresses
    /// are left out. Without MX records, the domain itself is the one host (implicit MX,
    /// RFC 5321 §5.1, preference 0) if it has A or AAAA records.
    pub async fn targets(&self, domain: &str, port: u16) -> Result<Vec<MxHost>, DnsFailure> {
        let shown = domain.trim_end_matches('.').to_string();
        let name = match absolute_name(domain) {
            Some(name) => name,
            None => return Err(DnsFailure::NoSuchDomain(shown)),
        };
        let exchanges = match self.resolver.lookup(name.clone(), RecordType::MX).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                    _ => None,
                })
                .collect(),
            Err(e) => match Negative::from(&e) {
                Negative::NxDomain => return Err(DnsFailure::NoSuchDomain(shown)),
                Negative::NoData => Vec::new(),
                Negative::Temporary(why) => {
                    return Err(DnsFailure::Temporary(format!("{shown}: MX lookup: {why}")));
                }
            },
        };
        if exchanges.is_empty() {
            return self.implicit_mx(name, shown, port).await;
        }
        // A root exchange can never take mail: all of them is a null MX (RFC 7505); mixed
        // with real hosts (which RFC 7505 forbids) the real hosts are used.
        let real: Vec<(u16, Name)> = exchanges
            .into_iter()
            .filter(|(_, n)| !n.is_root())
            .collect();
        if real.is_empty() {
            return Err(DnsFailure::NullMx(shown));
        }
        let seed = self.shuffle_seed.unwrap_or_else(rand::random);
        let ordered = order_exchanges(real, seed);
        self.resolve_hosts(ordered, shown, port).await
    }

    /// No MX records: the domain's own addresses, if any.
    async fn implicit_mx(
        &self,
        name: Name,
        shown: String,
        port: u16,
    ) -> Result<Vec<MxHost>, DnsFailure> {
        match addresses(&self.resolver, &name, port).await {
            Ok(addrs) => Ok(vec![MxHost {
                name: ascii(&name),
                preference: 0,
                addrs,
            }]),
            Err(Negative::NxDomain) => Err(DnsFailure::NoSuchDomain(shown)),
            Err(Negative::NoData) => Err(DnsFailure::NoAddress(shown)),
            Err(Negative::Temporary(why)) => Err(DnsFailure::Temporary(format!(
                "{shown}: address lookup: {why}"
            ))),
        }
    }

    /// Looks up the addresses of the ordered MX hosts, all at once; keeps the order.
    async fn resolve_hosts(
        &self,
        ordered: Vec<(u16, Name)>,
        shown: String,
        port: u16,
    ) -> Result<Vec<MxHost>, DnsFailure> {
        let mut lookups = JoinSet::new();
        for (index, (_, name)) in ordered.iter().enumerate() {
            let resolver = self.resolver.clone();
            let name = name.clone();
            lookups.spawn(async move { (index, addresses(&resolver, &name, port).await) });
        }
        let mut found: Vec<Option<Vec<SocketAddr>>> = vec![None; ordered.len()];
        let mut temporary = None;
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok((index, Ok(addrs))) => found[index] = Some(addrs),
                Ok((index, Err(Negative::Temporary(why)))) => {
                    temporary = Some(format!("{}: {why}", ascii(&ordered[index].1)));
                }
                Ok((_, Err(Negative::NxDomain | Negative::NoData))) => {}
                Err(e) => temporary = Some(format!("address lookup task: {e}")),
            }
        }
        let hosts: Vec<MxHost> = ordered
            .into_iter()
            .zip(found)
            .filter_map(|((preference, name), addrs)| {
                addrs.map(|addrs| MxHost {
                    name: ascii(&name),
                    preference,
                    addrs,
                })
            })
            .collect();
        match (hosts.is_empty(), temporary) {
            (false, _) => Ok(hosts),
            (true, Some(why)) => Err(DnsFailure::Temporary(format!(
                "{shown}: no MX host has an address; {why}"
            ))),
            (true, None) => Err(DnsFailure::NoAddress(shown)),
        }
    }
}

/// The domain as an absolute DNS name (so no search list applies), or None if it is not one.
fn absolute_name(domain: &str) -> Option<Name> {
    let mut name = Name::from_utf8(domain).ok()?;
    name.set_fqdn(true);
    (!name.is_root()).then_some(name)
}

/// A name as text without the trailing dot.
fn ascii(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_string()
}

/// Preference ascending; a host listed twice keeps its lowest preference; equal preferences
/// sorted by name, then shuffled by `seed`; at most [`MAX_MX_HOSTS`].
fn order_exchanges(mut exchanges: Vec<(u16, Name)>, seed: u64) -> Vec<(u16, Name)> {
    exchanges.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut seen: Vec<Name> = Vec::new();
    exchanges.retain(|(_, name)| {
        let new = !seen.contains(name);
        if new {
            seen.push(name.clone());
        }
        new
    });
    let mut rng = StdRng::seed_from_u64(seed);
    for group in exchanges.chunk_by_mut(|a, b| a.0 == b.0) {
        group.shuffle(&mut rng);
    }
    exchanges.truncate(MAX_MX_HOSTS);
    exchanges
}

/// The A and AAAA records of `name` (asked at the same time), as socket addresses with `port`.
/// An answer from either family is enough; with none, a temporary failure of either wins,
/// then NXDOMAIN, then "no records".
async fn addresses(
    resolver: &TokioResolver,
    name: &Name,
    port: u16,
) -> Result<Vec<SocketAddr>, Negative> {
    let (v4, v6) = tokio::join!(
        family(resolver, name, RecordType::A),
        family(resolver, name, RecordType::AAAA)
    );
    match (v4, v6) {
        (Ok(mut a), Ok(b)) => {
            a.extend(b);
            Ok(a.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => {
            Ok(a.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
        }
        (Err(e @ Negative::Temporary(_)), Err(_)) | (Err(_), Err(e @ Negative::Temporary(_))) => {
            Err(e)
        }
        (Err(Negative::NxDomain), Err(_)) | (Err(_), Err(Negative::NxDomain)) => {
            Err(Negative::NxDomain)
        }
        (Err(Negative::NoData), Err(Negative::NoData)) => Err(Negative::NoData),
    }
}

/// The addresses of one record type (A or AAAA); an answer without any (only a CNAME) is NoData.
async fn family(
    resolver: &TokioResolver,
    name: &Name,
    rtype: RecordType,
) -> Result<Vec<IpAddr>, Negative> {
    let lookup = resolver
        .lookup(name.clone(), rtype)
        .await
        .map_err(|e| Negative::from(&e))?;
    let ips: Vec<IpAddr> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) if rtype == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if rtype == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    if ips.is_empty() {
        Err(Negative::NoData)
    } else {
        Ok(ips)
    }
}

/// The integration tests' dnsmasq launcher, shared with the unit tests below.
#[cfg(test)]
#[path = "../../tests/support/dns.rs"]
mod test_dns;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use super::test_dns as dns;

    fn dnsmasq(records: &[&str]) -> dns::Dns {
        dns::Dns::start(&records.iter().map(|r| r.to_string()).collect::<Vec<_>>())
    }

    const ZONE: &[&str] = &[
        "--mx-host=two.test,mx-b.two.test,20",
        "--mx-host=two.test,mx-a.two.test,10",
        "--host-record=mx-a.two.test,127.0.0.1,::1",
        "--host-record=mx-b.two.test,127.0.0.2",
        "--host-record=implicit.test,127.0.0.3",
        "--txt-record=empty.test,nothing here",
        "--mx-host=dangling.test,gone.dangling.test,10",
        "--mx-host=dangling.test,empty.test,20",
        "--mx-host=partial.test,gone.partial.test,5",
        "--mx-host=partial.test,mx-b.two.test,10",
        "--mx-host=refused.test,mx.unserved.example,10",
        "--mx-host=refused.test,gone.refused.test,20",
        "--mx-host=nullmx.test,.,0",
        "--mx-host=equal.test,first.equal.test,5",
        "--mx-host=equal.test,e1.equal.test,10",
        "--mx-host=equal.test,e2.equal.test,10",
        "--mx-host=equal.test,e3.equal.test,10",
        "--mx-host=equal.test,e4.equal.test,10",
        "--mx-host=equal.test,e4.equal.test,30",
        "--host-record=first.equal.test,127.0.0.5",
        "--host-record=e1.equal.test,127.0.0.11",
        "--host-record=e2.equal.test,127.0.0.12",
        "--host-record=e3.equal.test,127.0.0.13",
        "--host-record=e4.equal.test,127.0.0.14",
    ];

    fn resolver(dns: &dns::Dns) -> MxResolver {
        MxResolver::new(Some(dns.addr), Duration::from_secs(2), 2).unwrap()
    }

    fn host(name: &str, preference: u16, addrs: &[&str]) -> MxHost {
        MxHost {
            name: name.to_string(),
            preference,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[tokio::test]
    async fn mx_hosts_in_preference_order_with_their_addresses() {
        let dns = dnsmasq(ZONE);
        let r = resolver(&dns);
        let want = vec![
            host("mx-a.two.test", 10, &["127.0.0.1:2525", "[::1]:2525"]),
            host("mx-b.two.test", 20, &["127.0.0.2:2525"]),
        ];
        assert_eq!(r.targets("two.test", 2525).await.unwrap(), want);
        assert_eq!(r.targets("two.test.", 2525).await.unwrap(), want);
    }

    #[tokio::test]
    async fn without_mx_the_domain_itself_is_the_host() {
        let dns = dnsmasq(ZONE);
        let got = resolver(&dns).targets("implicit.test", 25).await.unwrap();
        assert_eq!(got, vec![host("implicit.test", 0, &["127.0.0.3:25"])]);
    }

    #[tokio::test]
    async fn permanent_failures() {
        let dns = dnsmasq(ZONE);
        let r = resolver(&dns);
        let cases = [
            (
                "missing.test",
                DnsFailure::NoSuchDomain("missing.test".into()),
            ),
            ("empty.test", DnsFailure::NoAddress("empty.test".into())),
            (
                "dangling.test",
                DnsFailure::NoAddress("dangling.test".into()),
            ),
            ("nullmx.test", DnsFailure::NullMx("nullmx.test".into())),
            ("bad..name", DnsFailure::NoSuchDomain("bad..name".into())),
            ("", DnsFailure::NoSuchDomain("".into())),
        ];
        for (domain, want) in cases {
            let got = r.targets(domain, 25).await.unwrap_err();
            assert_eq!(got, want, "{domain}");
            assert!(got.is_permanent(), "{domain}");
            assert!(got.detail().contains(domain), "{}", got.detail());
        }
    }

    #[tokio::test]
    async fn hosts_without_address_are_skipped() {
        let dns = dnsmasq(ZONE);
        let got = resolver(&dns).targets("partial.test", 25).await.unwrap();
        assert_eq!(got, vec![host("mx-b.two.test", 10, &["127.0.0.2:25"])]);
    }

    #[tokio::test]
    async fn no_address_with_a_temporary_host_failure_is_temporary() {
        // mx.unserved.example is outside dnsmasq's zone and it has no upstream: REFUSED.
        let dns = dnsmasq(ZONE);
        let got = resolver(&dns)
            .targets("refused.test", 25)
            .await
            .unwrap_err();
        assert!(matches!(got, DnsFailure::Temporary(_)), "{got:?}");
        assert!(!got.is_permanent());
        assert!(got.detail().contains("refused.test"), "{}", got.detail());
    }

    #[tokio::test]
    async fn server_not_answering_is_temporary() {
        let closed = SocketAddr::from(([127, 0, 0, 1], dns::free_udp_port()));
        let r = MxResolver::new(Some(closed), Duration::from_millis(200), 2).unwrap();
        let started = Instant::now();
        let got = r.targets("two.test", 25).await.unwrap_err();
        assert!(matches!(got, DnsFailure::Temporary(_)), "{got:?}");
        assert!(got.detail().contains("two.test"), "{}", got.detail());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn equal_preferences_are_shuffled_by_the_seed() {
        let dns = dnsmasq(ZONE);
        let names =
            |hosts: Vec<MxHost>| -> Vec<String> { hosts.into_iter().map(|h| h.name).collect() };
        let mut orders = Vec::new();
        for seed in 0..16 {
            let r = resolver(&dns).with_shuffle_seed(seed);
            let got = names(r.targets("equal.test", 25).await.unwrap());
            assert_eq!(got, names(r.targets("equal.test", 25).await.unwrap()));
            assert_eq!(got[0], "first.equal.test");
            let mut rest = got[1..].to_vec();
            rest.sort();
            assert_eq!(
                rest,
                ["e1", "e2", "e3", "e4"].map(|e| format!("{e}.equal.test"))
            );
            if !orders.contains(&got) {
                orders.push(got);
            }
        }
        assert!(orders.len() > 1, "the seed changes nothing: {orders:?}");
    }

    #[test]
    fn ordering_keeps_the_lowest_preference_of_a_host_and_caps_the_count() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let mut many: Vec<(u16, Name)> = (0..20).map(|i| (i, n(&format!("h{i}.test.")))).collect();
        many.push((3, n("h19.test.")));
        let got = order_exchanges(many, 0);
        assert_eq!(got.len(), MAX_MX_HOSTS);
        assert_eq!(got[0], (0, n("h0.test.")));
        assert!(got.contains(&(3, n("h19.test."))));
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
