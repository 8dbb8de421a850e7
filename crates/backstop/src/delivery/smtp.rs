//! SMTP delivery of one message to one destination: finding and connecting to its hosts
//! (static `smtp:HOST:PORT` or MX), STARTTLS as the destination's TLS policy demands,
//! connection reuse, and the transaction with per-recipient answers.
//!
//! Responsible for: at most `destination_concurrency` connections per destination, keeping
//! clean connections for the next message a few seconds, the TLS demand of a connection (a
//! route's `tls`, else an MTA-STS policy in `enforce` mode for MX hosts, else opportunistic:
//! a demand that cannot be met defers, nothing is sent in clear), and turning every way an
//! attempt ends into an [`Outcome`] per recipient.
//! Not responsible for: what an outcome means (classify), recording it (the queue), nor
//! fetching MTA-STS policies (`mta_sts`).

use super::classify::{Outcome, Remote, host_of};
use super::mta_sts::{Mode, MtaSts};
use super::mx::MxResolver;
use super::mx::TlsaAnswer;
use crate::config::{HostPort, TlsMode};
use crate::content::Content;
use crate::queue::{Lease, LeasedRcpt};
use crate::tlsrpt::{self, Ledger, PolicyType, ResultType};
use crate::upstream::{Connection, Slots, StartTlsError, UpstreamError};
use backstop_proto::address::{Domain, ForwardPath, ReversePath};
use backstop_proto::smtp::command::MailParams;
use backstop_proto::smtp::reply::Reply;
use hickory_resolver::proto::rr::rdata::TLSA;
use mail_auth::report::tlsrpt::PolicyDetails;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// How long a clean connection is kept for the next message (Postfix: 2 s).
pub const IDLE_MAX: Duration = Duration::from_secs(5);

/// Where a destination's hosts come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A fixed host.
    Smtp(HostPort),
    /// The domain's MX hosts.
    Mx(Domain),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Smtp(hp) => write!(f, "smtp:{hp}"),
            Dest::Mx(d) => write!(f, "mx:{d}"),
        }
    }
}

/// Connection settings.
pub struct Settings {
    /// Our EHLO name.
    pub helo: String,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// Port of MX hosts.
    pub mx_port: u16,
    /// Opportunistic TLS, if enabled (`[delivery] starttls`).
    pub tls: Option<TlsConnector>,
    /// TLS without a certificate check, for `tls = "encrypt"`.
    pub encrypt: TlsConnector,
    /// TLS with the certificate checked, for `tls = "verify"` and MTA-STS.
    pub verified: TlsConnector,
    /// MTA-STS policies, if followed.
    pub mta_sts: Option<Arc<MtaSts>>,
    /// A DNSSEC-validating resolver, for DANE, if enabled.
    pub dane: Option<Arc<MxResolver>>,
    /// Connections per destination.
    pub per_destination: usize,
    /// Where sessions with MX hosts are counted for TLS reports.
    pub tls_results: Arc<Ledger>,
}

/// What a connection demands of TLS, with why (for the log and the deferral's words).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Demand {
    /// Plaintext (`[delivery] starttls = false`).
    Plain,
    /// TLS when offered, unchecked.
    May,
    /// TLS or nothing, unchecked.
    Encrypt(String),
    /// TLS with a trusted certificate for the host's name, or nothing.
    Verify(String),
    /// TLS with a certificate that one of these (usable, DNSSEC-validated) TLSA records
    /// names, or nothing.
    Dane(Vec<TLSA>, String),
    /// MTA-STS `testing`: as `Verify`, but when that fails, as `May` (the failure reported).
    Testing(String),
}

/// Where a session counts for TLS reports: the recipient domain, the policy it was held to,
/// and when.
struct Counted {
    domain: String,
    policy: PolicyDetails,
    now: u64,
}

/// The TLS report's policy of MX host `host` of `domain` with secure TLSA `records`.
fn tlsa_policy(domain: Option<&str>, host: &str, records: &[TLSA]) -> PolicyDetails {
    let mut p = PolicyDetails::new(PolicyType::Tlsa, domain.unwrap_or_default());
    p.policy_string = records.iter().map(|r| r.to_string()).collect();
    p.mx_host = vec![host.to_string()];
    p
}

/// A failed session of `kind` with `host`, for the ledger.
fn failed(kind: ResultType, host: &str, why: &str) -> Option<tlsrpt::Outcome> {
    Some(tlsrpt::Outcome::Failure(tlsrpt::failure(
        kind, host, None, why,
    )))
}

/// What a session opened under `demand` counts as in a TLS report: TLS as demanded is a
/// success, plaintext where STARTTLS was not offered or a policy not met a failure;
/// connections that failed before TLS, and plaintext by our own choice, are not sessions.
fn session(
    opened: &Result<Connection, UpstreamError>,
    demand: &Demand,
    host: &str,
    ip: std::net::IpAddr,
) -> Option<tlsrpt::Outcome> {
    let fail = |kind, info: &str| {
        Some(tlsrpt::Outcome::Failure(tlsrpt::failure(
            kind,
            host,
            Some(ip),
            info,
        )))
    };
    match (opened, demand) {
        (Ok(c), _) if c.is_tls() => Some(tlsrpt::Outcome::Success),
        (Ok(c), Demand::May | Demand::Testing(_)) if !c.capabilities().starttls => {
            fail(ResultType::StartTlsNotSupported, "STARTTLS not offered")
        }
        (Ok(_), Demand::Testing(_)) => fail(ResultType::StartTlsNotSupported, "STARTTLS refused"),
        (Ok(_), _) => None,
        (Err(UpstreamError::TlsNotOffered(_, m)), _) => match m.contains("was refused") {
            true => fail(ResultType::StartTlsNotSupported, "STARTTLS refused"),
            false => fail(ResultType::StartTlsNotSupported, "STARTTLS not offered"),
        },
        (Err(UpstreamError::TlsNotVerified(_, m)), _) => {
            let info = m.split(" (TLS required").next().unwrap_or(m);
            fail(certificate_failure(demand, info), info)
        }
        (Err(_), _) => None,
    }
}

/// RFC 8460's name for why a certificate was not accepted (from rustls's words).
fn certificate_failure(demand: &Demand, why: &str) -> ResultType {
    if matches!(demand, Demand::Dane(..)) {
        return ResultType::ValidationFailure;
    }
    if why.contains("xpired") {
        ResultType::CertificateExpired
    } else if why.contains("NotValidForName") || why.contains("not valid for name") {
        ResultType::CertificateHostMismatch
    } else if why.contains("UnknownIssuer") {
        ResultType::CertificateNotTrusted
    } else {
        ResultType::ValidationFailure
    }
}

/// What a host's secure TLSA records demand (RFC 7672 §2.2): a match with a usable one; TLS
/// without a check when none is usable.
fn dane_demand(records: &[TLSA], host: &str) -> Demand {
    let usable = super::dane::usable(records);
    match usable.is_empty() {
        true => Demand::Encrypt(format!("DANE: TLSA records of {host}, none usable")),
        false => Demand::Dane(usable, format!("DANE, TLSA of {host}")),
    }
}

/// Connection slots per destination and the TLS its route demands (a connection opened under
/// one demand is never reused under another).
type SlotMap = HashMap<(Dest, Option<TlsMode>), Arc<Slots>>;

/// Connections per destination.
pub struct Destinations {
    settings: Settings,
    resolver: MxResolver,
    slots: Mutex<SlotMap>,
}

impl Destinations {
    /// No connections yet.
    pub fn new(settings: Settings, resolver: MxResolver) -> Destinations {
        Destinations {
            settings,
            resolver,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotMap> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, d: &Dest, tls: Option<TlsMode>) -> Arc<Slots> {
        let per_destination = self.settings.per_destination;
        self.lock()
            .entry((d.clone(), tls))
            .or_insert_with(|| Arc::new(Slots::new(per_destination, IDLE_MAX)))
            .clone()
    }

    /// The verified TLS client.
    pub fn verified_tls(&self) -> TlsConnector {
        self.settings.verified.clone()
    }

    /// Closes connections idle for longer than [`IDLE_MAX`].
    pub fn sweep(&self) {
        let slots: Vec<Arc<Slots>> = self.lock().values().cloned().collect();
        for slot in slots {
            slot.close_stale();
        }
    }

    /// Delivers `body` to `rcpts` of `lease` at `dest` (with the TLS its route demands, if
    /// any; `now` for MTA-STS policies): one outcome per recipient, in order. None when
    /// `stopping` turned true before the transaction began: nothing was tried (the caller
    /// hands the recipients back); a transaction once begun is finished.
    pub async fn deliver(
        &self,
        (dest, tls, now): (&Dest, Option<TlsMode>, u64),
        lease: &Lease,
        (from, rcpts): (&ReversePath, &[&LeasedRcpt]),
        body: &Content,
        stopping: &AtomicBool,
    ) -> Option<Vec<Outcome>> {
        let slot = self.slot(dest, tls);
        let _permit = slot.permit().await;
        if stopping.load(Ordering::SeqCst) {
            return None;
        }
        let (mut conn, reused) = match slot.take_idle() {
            Some(c) => (c, true),
            None => match self.connect(dest, tls, now).await {
                Ok(c) => (c, false),
                Err(o) => return Some(fan_out(o, rcpts.len())),
            },
        };
        if stopping.load(Ordering::SeqCst) {
            conn.quit().await;
            return None;
        }
        let mut result = transaction(&mut conn, lease, from, rcpts, body).await;
        if reused && matches!(result, Err(Early::Stale(_))) {
            // the server closed the kept connection meanwhile: nothing was taken, so a fresh
            // connection is safe
            match self.connect(dest, tls, now).await {
                Ok(c) => {
                    conn = c;
                    result = transaction(&mut conn, lease, from, rcpts, body).await;
                }
                Err(o) => return Some(fan_out(o, rcpts.len())),
            }
        }
        Some(match result {
            Ok(outcomes) => {
                conn.transactions += 1;
                slot.put(conn);
                outcomes
            }
            Err(Early::Stale(e) | Early::Broken(e)) => {
                fan_out(Outcome::Upstream(Arc::new(e)), rcpts.len())
            }
            Err(Early::Partial(outcomes)) => outcomes,
        })
    }

    /// What a connection to `dest` demands of TLS: the route's `tls`, else for MX hosts an
    /// MTA-STS policy (verified TLS to the MX hosts it names in `enforce` mode; tried, and
    /// opportunistic TLS when that fails, in `testing` mode), else `[delivery]`'s
    /// opportunistic STARTTLS.
    async fn demand(
        &self,
        dest: &Dest,
        tls: Option<TlsMode>,
        now: u64,
    ) -> (Demand, Option<Arc<super::mta_sts::Policy>>) {
        let why = |m: TlsMode| format!("route tls = {m}");
        match tls {
            Some(TlsMode::Verify) => return (Demand::Verify(why(TlsMode::Verify)), None),
            Some(TlsMode::Encrypt) => return (Demand::Encrypt(why(TlsMode::Encrypt)), None),
            Some(TlsMode::May) => return (Demand::May, None),
            None => {}
        }
        let opportunistic = match self.settings.tls {
            Some(_) => Demand::May,
            None => Demand::Plain,
        };
        let (Dest::Mx(domain), Some(sts)) = (dest, &self.settings.mta_sts) else {
            return (opportunistic, None);
        };
        match sts.policy(&self.resolver, domain.as_str(), now).await {
            Some(p) if p.mode == Mode::Enforce => {
                let why = format!("MTA-STS policy of {domain}, id {}", p.id);
                (Demand::Verify(why), Some(p))
            }
            Some(p) if p.mode == Mode::Testing && opportunistic == Demand::May => {
                let why = format!("MTA-STS policy of {domain} in testing mode, id {}", p.id);
                (Demand::Testing(why), Some(p))
            }
            Some(_) | None => (opportunistic, None),
        }
    }

    /// Connects to the first host of `dest` that answers and meets the TLS demand.
    async fn connect(
        &self,
        dest: &Dest,
        tls: Option<TlsMode>,
        now: u64,
    ) -> Result<Connection, Outcome> {
        let (demand, policy) = self.demand(dest, tls, now).await;
        let hosts = self.hosts(dest).await?;
        // DANE (where the MX records are DNSSEC-secure) wins over MTA-STS, host by host
        let dane = match (dest, tls, &self.settings.dane) {
            (Dest::Mx(d), None, Some(v)) if v.mx_is_secure(d.as_str()).await => Some(v.clone()),
            _ => None,
        };
        // sessions with a domain's MX hosts count for its TLS reports
        let domain = match (dest, tls) {
            (Dest::Mx(d), None) => Some(d.as_str()),
            _ => None,
        };
        let mut last = None;
        for (name, addrs) in hosts {
            let host = (domain, name.as_str(), now);
            let (demand, counted) = match self
                .host_demand(host, &demand, policy.as_deref(), dane.as_deref())
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            for addr in addrs {
                match self.open(addr, &name, &demand, counted.as_ref()).await {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::debug!(dest = %dest, %addr, error = %e, "host not usable");
                        last = Some(e);
                    }
                }
            }
        }
        Err(Outcome::Upstream(Arc::new(last.unwrap_or_else(|| {
            UpstreamError::Closed(format!("{dest}: no addresses"))
        }))))
    }

    /// What a connection to MX host `name` of `domain` demands (DANE where the host's TLSA
    /// records are DNSSEC-secure, else `demand`), and the policy its sessions count under;
    /// the error that defers its mail when a policy rules the host out.
    async fn host_demand(
        &self,
        (domain, name, now): (Option<&str>, &str, u64),
        demand: &Demand,
        policy: Option<&super::mta_sts::Policy>,
        dane: Option<&MxResolver>,
    ) -> Result<(Demand, Option<Counted>), UpstreamError> {
        let counted = |policy| {
            domain.map(|d| Counted {
                domain: d.to_string(),
                policy,
                now,
            })
        };
        if let Some(v) = dane {
            match v.tlsa(name, self.settings.mx_port).await {
                TlsaAnswer::Secure(records) => {
                    let c = counted(tlsa_policy(domain, name, &records));
                    return Ok((dane_demand(&records, name), c));
                }
                TlsaAnswer::None => {}
                TlsaAnswer::Failed(why) => {
                    let why = format!("{why}; host not used (DANE)");
                    let c = counted(tlsa_policy(domain, name, &[]));
                    self.count(c.as_ref(), failed(ResultType::DnssecInvalid, name, &why));
                    return Err(self.refused(name, why));
                }
            }
        }
        let Some(p) = policy else {
            let none = PolicyDetails::new(PolicyType::NoPolicyFound, domain.unwrap_or_default());
            return Ok((demand.clone(), counted(none)));
        };
        let mut details = PolicyDetails::new(PolicyType::Sts, domain.unwrap_or_default());
        details.policy_string = p.lines();
        details.mx_host = p.mx.clone();
        let c = counted(details);
        if p.names(name) {
            return Ok((demand.clone(), c));
        }
        let why = format!("not named by the MTA-STS policy (mx: {})", p.mx.join(", "));
        self.count(
            c.as_ref(),
            failed(ResultType::ValidationFailure, name, &why),
        );
        match p.mode {
            // testing: counted as failed, used as without a policy
            Mode::Testing => Ok((Demand::May, None)),
            _ => Err(self.refused(name, format!("{why}; host not used"))),
        }
    }

    /// Counts a session for TLS reports (when it is one: `counted`).
    fn count(&self, counted: Option<&Counted>, outcome: Option<tlsrpt::Outcome>) {
        if let (Some(c), Some(o)) = (counted, outcome) {
            self.settings
                .tls_results
                .record(c.now, &c.domain, &c.policy, o);
        }
    }

    /// A host a TLS policy rules out, told in the log: the error that defers its mail.
    fn refused(&self, host: &str, why: String) -> UpstreamError {
        let e = UpstreamError::TlsNotVerified(host.to_string(), why);
        crate::telemetry::Event::DeliveryTls {
            target: host,
            outcome: "policy_failed",
            detail: &e.to_string(),
        }
        .emit();
        e
    }

    /// The hosts of `dest` with their addresses, in the order to try them.
    async fn hosts(
        &self,
        dest: &Dest,
    ) -> Result<Vec<(String, Vec<std::net::SocketAddr>)>, Outcome> {
        Ok(match dest {
            Dest::Smtp(hp) => {
                let addrs = tokio::net::lookup_host((hp.host.as_str(), hp.port))
                    .await
                    .map_err(|e| {
                        Outcome::Upstream(Arc::new(UpstreamError::Connect(hp.to_string(), e)))
                    })?;
                vec![(hp.host.clone(), addrs.collect())]
            }
            Dest::Mx(d) => self
                .resolver
                .targets(d.as_str(), self.settings.mx_port)
                .await
                .map_err(Outcome::Dns)?
                .into_iter()
                .map(|h| (h.name, h.addrs))
                .collect(),
        })
    }

    /// A session with `name` at `addr`, encrypted as `demand` asks; told in the log and
    /// counted for TLS reports (`counted`). MTA-STS `testing`: verified TLS is tried; without
    /// STARTTLS the session goes on in plaintext, and after a certificate that does not
    /// verify the host is used as without a policy (both counted as failures).
    async fn open(
        &self,
        addr: std::net::SocketAddr,
        name: &str,
        demand: &Demand,
        counted: Option<&Counted>,
    ) -> Result<Connection, UpstreamError> {
        let opened = self.open_tls(addr, name, demand).await;
        let (outcome, detail) = match (&opened, demand) {
            (Ok(c), Demand::Verify(why) | Demand::Dane(_, why)) => ("verified", tls_detail(c, why)),
            (Ok(c), Demand::Testing(why)) if c.is_tls() => ("verified", tls_detail(c, why)),
            (Ok(_), Demand::Testing(why)) => (
                "plaintext",
                format!("{why}: not met, delivered as without a policy"),
            ),
            (Ok(c), _) if c.is_tls() => ("encrypted", tls_detail(c, "")),
            (Ok(_), _) => ("plaintext", String::new()),
            (
                Err(e @ (UpstreamError::TlsNotOffered(..) | UpstreamError::TlsNotVerified(..))),
                _,
            ) => ("policy_failed", e.to_string()),
            (Err(_), _) => return opened,
        };
        let target = match &opened {
            Ok(c) => c.target().to_string(),
            Err(_) => format!("{name}[{}]:{}", addr.ip(), addr.port()),
        };
        crate::telemetry::Event::DeliveryTls {
            target: &target,
            outcome,
            detail: &detail,
        }
        .emit();
        self.count(counted, session(&opened, demand, name, addr.ip()));
        if let (Demand::Testing(why), Err(UpstreamError::TlsNotVerified(..))) = (demand, &opened) {
            // counted; the host is used as without a policy, on a new connection
            tracing::info!(
                host = name,
                "{why}: not met; delivering as without a policy"
            );
            return Box::pin(self.open(addr, name, &Demand::May, None)).await;
        }
        opened
    }

    async fn open_tls(
        &self,
        addr: std::net::SocketAddr,
        name: &str,
        demand: &Demand,
    ) -> Result<Connection, UpstreamError> {
        let s = &self.settings;
        let c = Connection::open_addr(addr, name, &s.helo, s.timeout).await?;
        let (why, connector) = match demand {
            Demand::Plain => return Ok(c),
            Demand::May => return self.may(c, addr, name).await,
            Demand::Encrypt(why) => (why, &s.encrypt),
            Demand::Verify(why) | Demand::Testing(why) => (why, &s.verified),
            Demand::Dane(records, why) => (why, &super::dane::connector(records.clone())),
        };
        let target = c.target().to_string();
        let testing = matches!(demand, Demand::Testing(_));
        if !c.capabilities().starttls && testing {
            return Ok(c);
        }
        if !c.capabilities().starttls {
            c.quit().await;
            let m = format!("TLS is required ({why}) but STARTTLS is not offered; not delivered");
            return Err(UpstreamError::TlsNotOffered(target, m));
        }
        match c.starttls(connector, name, &s.helo).await {
            Ok(c) => Ok(c),
            Err(StartTlsError::Refused(c, _)) if testing => Ok(*c),
            Err(StartTlsError::Refused(c, r)) => {
                c.quit().await;
                let r = r.to_string().trim_end().replace("\r\n", " ");
                let m = format!("TLS is required ({why}) but STARTTLS was refused ({r})");
                Err(UpstreamError::TlsNotOffered(target, m))
            }
            Err(StartTlsError::Failed(UpstreamError::Tls(t, e))) => {
                let m = match demand {
                    Demand::Verify(_) | Demand::Testing(_) | Demand::Dane(..) => {
                        format!("certificate not verified for {name}: {e} (TLS required: {why})")
                    }
                    _ => format!("TLS handshake failed: {e} (TLS required: {why})"),
                };
                Err(UpstreamError::TlsNotVerified(t, m))
            }
            Err(StartTlsError::Failed(e)) => Err(e),
        }
    }

    /// Opportunistic STARTTLS (Postfix `may`): TLS when offered, plaintext otherwise or after
    /// a failed handshake (on a new connection).
    async fn may(
        &self,
        c: Connection,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> Result<Connection, UpstreamError> {
        let s = &self.settings;
        let Some(tls) = s.tls.as_ref().filter(|_| c.capabilities().starttls) else {
            return Ok(c);
        };
        match c.starttls(tls, name, &s.helo).await {
            Ok(c) => Ok(c),
            Err(StartTlsError::Refused(c, _)) => Ok(*c),
            Err(StartTlsError::Failed(UpstreamError::Tls(t, e))) => {
                // like Postfix with `may`: a failed handshake means plaintext on a new connection
                tracing::info!(target = %t, error = %e, "TLS handshake failed; delivering without TLS");
                Connection::open_addr(addr, name, &s.helo, s.timeout).await
            }
            Err(StartTlsError::Failed(e)) => Err(e),
        }
    }
}

/// `TLSv1.3 TLS13_AES_256_GCM_SHA384` and, for a verified connection, why it was verified.
fn tls_detail(c: &Connection, why: &str) -> String {
    let summary = c.tls_summary().unwrap_or_default();
    match why.is_empty() {
        true => summary,
        false => format!("{summary}; {why}"),
    }
}

/// The same outcome for every recipient of the attempt.
fn fan_out(o: Outcome, n: usize) -> Vec<Outcome> {
    vec![o; n]
}

/// How a transaction ended without per-recipient answers.
enum Early {
    /// Broken before the server answered anything: safe to repeat elsewhere.
    Stale(UpstreamError),
    /// Broken later.
    Broken(UpstreamError),
    /// Broken while recipients were answered (a server that disconnects after too many
    /// refusals, as Postfix does after 20): the refusals received stand, the rest get the
    /// error.
    Partial(Vec<Outcome>),
}

/// The outcomes when the connection broke (`e`) after `answers` of `n` recipients: refusals
/// stand; accepted or unanswered recipients were not delivered and get the error.
fn partial(answers: Vec<Outcome>, e: UpstreamError, n: usize) -> Early {
    if !answers
        .iter()
        .any(|o| matches!(o, Outcome::Reply(r, _) if !r.is_success()))
    {
        return Early::Broken(e);
    }
    let broken = Outcome::Upstream(Arc::new(e));
    let mut out: Vec<Outcome> = answers
        .into_iter()
        .map(|o| match &o {
            Outcome::Reply(r, _) if !r.is_success() => o,
            _ => broken.clone(),
        })
        .collect();
    out.resize(n, broken);
    Early::Partial(out)
}

/// MAIL, RCPTs (pipelined when offered), DATA and the message on an open connection.
async fn transaction(
    conn: &mut Connection,
    lease: &Lease,
    from: &ReversePath,
    rcpts: &[&LeasedRcpt],
    body: &Content,
) -> Result<Vec<Outcome>, Early> {
    let params = MailParams {
        size: Some(body.len()),
        ..lease.params.clone()
    };
    let pipelining = conn.capabilities().pipelining;
    let remote = Arc::new(Remote {
        host: host_of(conn.target()),
        dsn: conn.capabilities().dsn,
    });
    let answer = |r: Reply| Outcome::Reply(r, remote.clone());
    conn.client().mail(from, &params);
    if !pipelining {
        let m = conn.reply().await.map_err(Early::Stale)?;
        if !m.is_success() {
            return Ok(refused_all(conn, answer(m), rcpts.len()).await);
        }
    }
    let n = rcpts.len();
    let mut answers = Vec::with_capacity(n);
    for r in rcpts {
        conn.client()
            .rcpt(&ForwardPath::Mailbox(r.mailbox.clone()), &r.params);
        if !pipelining {
            match conn.reply().await {
                Ok(a) => answers.push(answer(a)),
                Err(e) => return Err(partial(answers, e, n)),
            }
        }
    }
    if pipelining {
        let m = conn.reply().await.map_err(Early::Stale)?;
        for _ in rcpts {
            match conn.reply().await {
                Ok(a) => answers.push(answer(a)),
                Err(e) if m.is_success() => return Err(partial(answers, e, n)),
                Err(e) => return Err(Early::Broken(e)),
            }
        }
        if !m.is_success() {
            return Ok(refused_all(conn, answer(m), n).await);
        }
    }
    let accepted = |o: &Outcome| matches!(o, Outcome::Reply(r, _) if r.is_success());
    if !answers.iter().any(accepted) {
        // every refusal stands, even if the server hangs up now
        return match rset(conn).await {
            Ok(()) => Ok(answers),
            Err(_) => Err(Early::Partial(answers)),
        };
    }
    conn.client().data();
    let d = match conn.reply().await {
        Ok(d) => d,
        Err(e) => return Err(partial(answers, e, n)),
    };
    let last = if d.code == 354 {
        if let Err(e) = conn.send_message(body).await {
            return Err(partial(answers, e, n));
        }
        match conn.reply().await {
            Ok(r) => r,
            Err(e) => return Err(partial(answers, e, n)),
        }
    } else {
        if let Err(Early::Broken(e) | Early::Stale(e)) = rset(conn).await {
            return Err(partial(answers, e, n));
        }
        d
    };
    let last = answer(last);
    Ok(answers
        .into_iter()
        .map(|a| if accepted(&a) { last.clone() } else { a })
        .collect())
}

async fn refused_all(conn: &mut Connection, o: Outcome, n: usize) -> Vec<Outcome> {
    let _ = rset(conn).await;
    fan_out(o, n)
}

async fn rset(conn: &mut Connection) -> Result<(), Early> {
    conn.client().rset();
    let r = conn.reply().await.map_err(Early::Broken)?;
    if r.is_success() {
        Ok(())
    } else {
        Err(Early::Broken(UpstreamError::Refused(
            conn.target().to_string(),
            r,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::classify::{Class, classify};
    use crate::delivery::mx::DnsFailure;

    #[test]
    fn tls_failures_get_rfc_8460_kinds_and_short_words() {
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let verify = Demand::Verify("MTA-STS policy of partner.test, id 1".into());
        let kind = |e: UpstreamError, d: &Demand| match session(&Err(e), d, "mx.partner.test", ip) {
            Some(tlsrpt::Outcome::Failure(f)) => (f.result_type, f.additional_information),
            other => panic!("{other:?}"),
        };
        let not_offered = UpstreamError::TlsNotOffered(
            "t".into(),
            "TLS is required (x) but STARTTLS is not offered; not delivered".into(),
        );
        assert_eq!(
            kind(not_offered, &verify),
            (
                ResultType::StartTlsNotSupported,
                Some("STARTTLS not offered".into())
            )
        );
        let refused = UpstreamError::TlsNotOffered(
            "t".into(),
            "TLS is required (x) but STARTTLS was refused (454 4.7.0 no)".into(),
        );
        assert_eq!(kind(refused, &verify).1, Some("STARTTLS refused".into()));
        for (rustls, want) in [
            (
                "invalid peer certificate: certificate expired: verification time 1, but certificate is not valid after 0",
                ResultType::CertificateExpired,
            ),
            (
                "invalid peer certificate: certificate not valid for name \"mx.partner.test\"",
                ResultType::CertificateHostMismatch,
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                ResultType::CertificateNotTrusted,
            ),
            (
                "invalid peer certificate: BadSignature",
                ResultType::ValidationFailure,
            ),
        ] {
            let m =
                format!("certificate not verified for mx.partner.test: {rustls} (TLS required: x)");
            let (k, info) = kind(UpstreamError::TlsNotVerified("t".into(), m), &verify);
            assert_eq!(k, want, "{rustls}");
            let info = info.unwrap();
            assert!(!info.contains("TLS required"), "{info}");
        }
        // DANE: a certificate no TLSA record names is a validation failure, whatever rustls says
        let dane = Demand::Dane(Vec::new(), "DANE".into());
        let m = "certificate not verified for mx: invalid peer certificate: UnknownIssuer".into();
        let e = UpstreamError::TlsNotVerified("t".into(), m);
        assert_eq!(kind(e, &dane).0, ResultType::ValidationFailure);
        // a connection that failed before TLS is not a session
        let e = UpstreamError::Closed("gone".into());
        assert!(session(&Err(e), &verify, "mx", ip).is_none());
    }

    #[test]
    fn one_failure_is_every_recipients_outcome() {
        let nx = Outcome::Dns(DnsFailure::NoSuchDomain("nx.test".into()));
        let all = fan_out(nx, 3);
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|o| classify(o) == Class::Permanent));
    }
}
