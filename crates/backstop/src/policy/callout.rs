//! The call-out cache: positive and negative answers with separate refresh and expiry times,
//! one probe in flight per address, probe budgets, and catch-all detection. A directory
//! (`ldap:` source) is asked through the same cache, under the same rules, without budgets or
//! catch-all checks (a directory lists its addresses; asking it costs its server little).
//!
//! Responsible for: answering "does the internal server (or the directory) take this
//! address?" from the Store when it can, asking when it must, and never letting a failed
//! probe or search overwrite what is known. Not responsible for: the SMTP of a probe
//! (`probe`), the LDAP of a search (`directory`), or the reply a client gets (`policy`).

use super::directory::{Answer, Directory};
use super::probe::{ProbeAnswer, Prober};
use crate::clock::Clock;
use crate::config::{self, HostPort};
use crate::health::{Backends, Role, Target};
use crate::store::{CacheEntry, CacheVerdict, Store};
use crate::telemetry;
use backstop_proto::address::{Domain, Mailbox};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The call-out's answer about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalloutResult {
    /// The internal server takes it.
    Valid(Known),
    /// The internal server refuses it permanently.
    Invalid(Known),
    /// The internal server takes anything for this domain, so its answer means nothing.
    CatchAll(Known),
    /// No answer could be had (server down, 4xx, timeout); nothing known-good was cached.
    Unavailable(String),
    /// The probe budget of the client or of the gateway is spent for this minute.
    OverBudget,
    /// Not known, and the internal server is also the next hop of a transaction relayed in
    /// the session: its answer to the relayed RCPT decides (one round trip, not a probe and
    /// then the RCPT again); the caller reports it with [`Callout::learned`]. Charged to the
    /// probe budget like a probe.
    ByRelay,
}

/// Where a verdict came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// The cache entry behind the verdict (new or old).
    pub entry: CacheEntry,
    /// True when served from the cache, false when just probed.
    pub cached: bool,
}

/// Random numbers for catch-all local parts (passed in so tests are exact).
pub type Random = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Probes per minute, per client IP and in total, in fixed one-minute windows.
#[derive(Debug, Default)]
struct Budget {
    window: u64,
    total: u32,
    clients: HashMap<IpAddr, u32>,
}

impl Budget {
    /// Takes one probe from the budget; `client` None (background refreshes, catch-all checks)
    /// only counts against the total.
    fn take(&mut self, cfg: &config::Callout, client: Option<IpAddr>, now: u64) -> bool {
        let window = now / 60;
        if window != self.window {
            *self = Budget {
                window,
                ..Budget::default()
            };
        }
        if self.total >= cfg.budget_total {
            return false;
        }
        if let Some(ip) = client {
            let used = self.clients.entry(ip).or_default();
            if *used >= cfg.budget_per_client {
                return false;
            }
            *used += 1;
        }
        self.total += 1;
        true
    }
}

/// Who is asked about an address.
#[derive(Clone)]
enum Asked {
    /// An internal server, probed in SMTP.
    Server(HostPort),
    /// A directory, searched.
    Directory(Arc<Directory>),
}

type Inflight = Mutex<HashMap<String, watch::Receiver<Option<CalloutResult>>>>;

/// The call-out verifier shared by all sessions.
pub struct Callout {
    cfg: config::Callout,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    prober: Arc<dyn Prober>,
    random: Random,
    inflight: Arc<Inflight>,
    budget: Arc<Mutex<Budget>>,
    health: Arc<Mutex<HashMap<String, Health>>>,
    /// Told whether each probe reached its server.
    backends: Option<Arc<Backends>>,
}

/// How an internal server has answered probes since start (for `backstop status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Probes made.
    pub probes: u64,
    /// Of those, failed (no definite answer: down, 4xx, timeout).
    pub failures: u64,
    /// When the last definite answer came (Unix seconds).
    pub last_ok: Option<u64>,
    /// When the last failure was, and what it was.
    pub last_failure: Option<(u64, String)>,
}

/// Removes an in-flight marker however the probe task ends (even by panic).
struct InflightGuard {
    callout: Arc<Callout>,
    key: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.callout
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The cache key of an address.
pub fn address_key(addr: &Mailbox) -> String {
    format!("rcpt:{}", addr.key())
}

fn domain_key(d: &Domain) -> String {
    format!("catchall:{d}")
}

/// The cache key of an address's answer from directory `name` (apart from call-outs': a
/// directory and an internal server may answer differently, and both are kept).
pub fn directory_key(name: &str, addr: &Mailbox) -> String {
    format!("ldap:{name}:{}", addr.key())
}

impl Callout {
    /// A call-out verifier; `backends`, if given, learns whether probes reach their servers.
    pub fn new(
        cfg: config::Callout,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        (prober, random): (Arc<dyn Prober>, Random),
        backends: Option<Arc<Backends>>,
    ) -> Arc<Callout> {
        Arc::new(Callout {
            cfg,
            store,
            clock,
            prober,
            random,
            inflight: Arc::default(),
            budget: Arc::default(),
            health: Arc::default(),
            backends,
        })
    }

    /// The call-out under new settings and a new prober (after a reload), sharing probes in
    /// flight, the budgets spent and the backends' health with this one.
    pub fn reconfigured(&self, cfg: config::Callout, prober: Arc<dyn Prober>) -> Arc<Callout> {
        Arc::new(Callout {
            cfg,
            store: self.store.clone(),
            clock: self.clock.clone(),
            prober,
            random: self.random.clone(),
            inflight: self.inflight.clone(),
            budget: self.budget.clone(),
            health: self.health.clone(),
            backends: self.backends.clone(),
        })
    }

    /// Is `addr` valid at `target`? `client` is charged for a probe if one is needed.
    pub async fn check(
        self: &Arc<Self>,
        target: &HostPort,
        addr: &Mailbox,
        client: IpAddr,
    ) -> CalloutResult {
        self.check_or_relay(target, addr, client, false).await
    }

    /// Like [`Callout::check`]; with `relayed`, an address not in the cache is left to the
    /// relayed RCPT ([`CalloutResult::ByRelay`]) instead of probed.
    pub async fn check_or_relay(
        self: &Arc<Self>,
        target: &HostPort,
        addr: &Mailbox,
        client: IpAddr,
        relayed: bool,
    ) -> CalloutResult {
        let key = address_key(addr);
        let asked = Asked::Server(target.clone());
        if let Some(known) = self.from_cache(&key, &asked, addr).await {
            return known;
        }
        if self.cfg.catch_all_check
            && let Some(entry) = self.catch_all(target, addr.domain()).await
            && entry.verdict == CacheVerdict::CatchAll
        {
            return CalloutResult::CatchAll(Known {
                entry,
                cached: true,
            });
        }
        if relayed {
            return match self.spend(Some(client)) {
                true => CalloutResult::ByRelay,
                false => {
                    telemetry::probe_budget_exceeded(addr, Some(client));
                    CalloutResult::OverBudget
                }
            };
        }
        self.probe_once(key, asked, addr.clone(), Some(client))
            .await
    }

    /// Does `dir` have an entry for `addr`? From the cache when it can, else one search
    /// however many ask at once; a stale answer is served while it is searched again.
    pub async fn look_up(self: &Arc<Self>, dir: &Arc<Directory>, addr: &Mailbox) -> CalloutResult {
        let key = directory_key(dir.name(), addr);
        let asked = Asked::Directory(dir.clone());
        if let Some(known) = self.from_cache(&key, &asked, addr).await {
            return known;
        }
        self.probe_once(key, asked, addr.clone(), None).await
    }

    /// The cached answer for `key`, if there is one; a stale one is served while `asked` is
    /// asked again in the background. Counted as a hit, a stale hit or a miss.
    async fn from_cache(
        self: &Arc<Self>,
        key: &str,
        asked: &Asked,
        addr: &Mailbox,
    ) -> Option<CalloutResult> {
        let entry = self.cached(key).await;
        let result = match &entry {
            None => "miss",
            Some(e) if e.is_fresh(self.clock.unix()) => "hit",
            Some(_) => "stale",
        };
        match asked {
            Asked::Server(_) => telemetry::Event::CalloutCache { result }.emit(),
            Asked::Directory(_) => telemetry::Event::DirectoryCache { result }.emit(),
        }
        if result == "stale" {
            self.join_or_start(key.to_string(), asked.clone(), addr.clone(), None);
        }
        entry.map(|e| from_entry(e, true))
    }

    /// Takes one probe from the budgets (the client's and the total); false when spent.
    fn spend(&self, client: Option<IpAddr>) -> bool {
        let now = self.clock.unix();
        self.budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&self.cfg, client, now)
    }

    /// Caches what the internal server answered to a relayed RCPT (after
    /// [`CalloutResult::ByRelay`]): valid, invalid, or nothing for any other answer.
    pub async fn learned(&self, addr: &Mailbox, heard: Heard) {
        let answer = match heard {
            Heard::Accepted(r) => ProbeAnswer::Valid(r),
            Heard::Unknown(r) => ProbeAnswer::Invalid(r),
        };
        self.record(&address_key(addr), answer).await;
    }

    /// The cached entry for `key` unless missing or expired (a store error counts as missing).
    pub async fn cached(&self, key: &str) -> Option<CacheEntry> {
        match self.store.cache_get(key).await {
            Ok(e) => e.filter(|e| !e.is_expired(self.clock.unix())),
            Err(e) => {
                tracing::warn!(error = %e, key, "call-out cache read failed");
                None
            }
        }
    }

    /// The domain's catch-all entry, probing a random address when none is cached.
    async fn catch_all(self: &Arc<Self>, target: &HostPort, domain: &Domain) -> Option<CacheEntry> {
        let key = domain_key(domain);
        // only made when a probe is due: a fresh entry costs no randomness
        let random_addr =
            || Mailbox::new(&format!("bkst-{:016x}", (self.random)()), domain.clone()).ok();
        if let Some(entry) = self.cached(&key).await {
            if !entry.is_fresh(self.clock.unix())
                && let Some(addr) = random_addr()
            {
                self.refresh(key, target.clone(), addr);
            }
            return Some(entry);
        }
        let asked = Asked::Server(target.clone());
        match self.probe_once(key, asked, random_addr()?, None).await {
            CalloutResult::CatchAll(k) | CalloutResult::Valid(k) | CalloutResult::Invalid(k) => {
                Some(k.entry)
            }
            CalloutResult::Unavailable(_) | CalloutResult::OverBudget | CalloutResult::ByRelay => {
                None
            }
        }
    }

    /// Re-checks a stale entry in the background, if the total budget allows.
    fn refresh(self: &Arc<Self>, key: String, target: HostPort, addr: Mailbox) {
        self.join_or_start(key, Asked::Server(target), addr, None);
    }

    /// Joins the probe in flight for `key`, or starts one, and waits for its result.
    async fn probe_once(
        self: &Arc<Self>,
        key: String,
        asked: Asked,
        addr: Mailbox,
        client: Option<IpAddr>,
    ) -> CalloutResult {
        let mut rx = self.join_or_start(key, asked, addr, client);
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| {
                CalloutResult::Unavailable("probe ended without an answer".into())
            }),
            Err(_) => CalloutResult::Unavailable("probe task failed".into()),
        }
    }

    /// The receiver of the flight for `key`, started now if there is none.
    fn join_or_start(
        self: &Arc<Self>,
        key: String,
        asked: Asked,
        addr: Mailbox,
        client: Option<IpAddr>,
    ) -> watch::Receiver<Option<CalloutResult>> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(&key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        drop(map);
        let guard = InflightGuard {
            callout: self.clone(),
            key,
        };
        tokio::spawn(async move {
            let result = guard.callout.fly(&guard.key, &asked, &addr, client).await;
            drop(guard);
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// One flight: the cache once more (a flight that ended just before this one began has
    /// left a fresh entry, since answers are written before the in-flight marker goes), then
    /// the budget, then the probe (or the search). Only a real probe is charged to the budget.
    async fn fly(
        &self,
        key: &str,
        asked: &Asked,
        addr: &Mailbox,
        client: Option<IpAddr>,
    ) -> CalloutResult {
        if let Some(e) = self.cached(key).await
            && e.is_fresh(self.clock.unix())
        {
            return from_entry(e, true);
        }
        if self.store.degraded() {
            // no probe whose answer the other nodes would not see: unknown stays unknown (451)
            let why = "the shared store is unreachable: only answers known to this node are used";
            return CalloutResult::Unavailable(why.into());
        }
        let answer = match asked {
            Asked::Directory(dir) => self.search(dir, addr).await,
            Asked::Server(target) => {
                if !self.spend(client) {
                    telemetry::probe_budget_exceeded(addr, client);
                    return CalloutResult::OverBudget;
                }
                let started = std::time::Instant::now();
                let answer = self.prober.probe(target, addr).await;
                telemetry::callout_probe(target, addr, &answer, started.elapsed());
                let target = Target::Smtp(target.clone());
                self.note_health(Role::Callout, target, &answer, self.clock.unix());
                answer
            }
        };
        self.record(key, answer).await
    }

    /// One search of `dir` for `addr`, as a probe's answer: the entry's DN, or the filter
    /// that matched nothing, or why the directory could not be asked.
    async fn search(&self, dir: &Directory, addr: &Mailbox) -> ProbeAnswer {
        let started = std::time::Instant::now();
        let address = addr.to_string();
        let answer = match dir.lookup(&address).await {
            Ok(Answer::Found(dn)) => ProbeAnswer::Valid(format!("entry {dn}")),
            Ok(Answer::NotFound) => {
                ProbeAnswer::Invalid(format!("no entry matches {}", dir.filter_for(&address)))
            }
            Err(e) => ProbeAnswer::Failed(e.to_string()),
        };
        telemetry::Event::DirectorySearch {
            directory: dir.name(),
            addr,
            answer: &answer,
            latency: started.elapsed(),
        }
        .emit();
        let target = Target::Ldap(dir.name().to_string());
        self.note_health(Role::Directory, target, &answer, self.clock.unix());
        answer
    }

    fn note_health(&self, role: Role, target: Target, answer: &ProbeAnswer, now: u64) {
        if let Some(b) = &self.backends {
            match answer {
                ProbeAnswer::Valid(_) | ProbeAnswer::Invalid(_) => b.answered(role, &target, now),
                // a 4xx is an answer too, but a failed probe may be a server gone: check it
                ProbeAnswer::Failed(_) => b.unreachable(role, &target),
            }
        }
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let e = h.entry(target.to_string()).or_default();
        e.probes += 1;
        match answer {
            ProbeAnswer::Valid(_) | ProbeAnswer::Invalid(_) => e.last_ok = Some(now),
            ProbeAnswer::Failed(why) => {
                e.failures += 1;
                e.last_failure = Some((now, why.clone()));
            }
        }
    }

    /// How each internal server has answered probes since start.
    pub fn health(&self) -> Vec<(String, Health)> {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, Health)> = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Caches a definite answer; a failed probe writes nothing, so it never replaces what is
    /// known (a stale known-good entry keeps being served until it expires).
    async fn record(&self, key: &str, answer: ProbeAnswer) -> CalloutResult {
        let now = self.clock.unix();
        let is_domain = key.starts_with("catchall:");
        let (verdict, detail, positive) = match answer {
            ProbeAnswer::Valid(d) if is_domain => (CacheVerdict::CatchAll, d, false),
            ProbeAnswer::Invalid(d) if is_domain => (CacheVerdict::NotCatchAll, d, false),
            ProbeAnswer::Valid(d) => (CacheVerdict::Valid, d, true),
            ProbeAnswer::Invalid(d) => (CacheVerdict::Invalid, d, false),
            ProbeAnswer::Failed(why) => return CalloutResult::Unavailable(why),
        };
        let (refresh, expire) = if positive {
            (self.cfg.positive_refresh, self.cfg.positive_expire)
        } else {
            (self.cfg.negative_refresh, self.cfg.negative_expire)
        };
        let entry = CacheEntry {
            verdict,
            checked_at: now,
            refresh_at: now + refresh.as_secs(),
            expire_at: now + expire.as_secs(),
            detail,
        };
        if verdict == CacheVerdict::CatchAll {
            tracing::warn!(key, reply = %entry.detail, "internal server accepts any address (catch-all): its answers cannot be trusted for this domain");
        }
        if let Err(e) = self.store.cache_put(key, &entry).await {
            tracing::warn!(error = %e, key, "call-out cache write failed");
        }
        from_entry(entry, false)
    }
}

/// What an internal server said about an address outside a probe: to the RCPT of a relayed
/// transaction, or of a delivery from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// 2xx: the address exists.
    Accepted(String),
    /// 5.1.x: no such user.
    Unknown(String),
}

impl Heard {
    /// What a reply says about the address it answered: `None` when it says nothing about
    /// the user (a 4xx, or a 5xx for another reason: policy, size, ...).
    pub fn of(reply: &backstop_proto::smtp::reply::Reply) -> Option<Heard> {
        match (reply.code, reply.enhanced) {
            (200..=299, _) => Some(Heard::Accepted(reply.to_string())),
            (500..=599, Some(e)) if e.class == 5 && e.subject == 1 => {
                Some(Heard::Unknown(reply.to_string()))
            }
            _ => None,
        }
    }
}

impl Callout {
    /// Corrects the cache from what the internal server just said about `addr` while mail
    /// went to it (`by`: `relay` or `delivery`): a cached "valid" for a user it no longer
    /// knows becomes "invalid" now, a cached "invalid" it now accepts becomes "valid". Each
    /// correction is an event. Answers that agree with the cache, and addresses with no
    /// entry, leave the cache alone.
    pub async fn heard(&self, addr: &Mailbox, heard: Heard, by: &'static str) {
        let key = address_key(addr);
        let Some(entry) = self.cached(&key).await else {
            return;
        };
        let (answer, now_is) = match (&heard, entry.verdict) {
            (Heard::Unknown(r), CacheVerdict::Valid) => {
                (ProbeAnswer::Invalid(r.clone()), "invalid")
            }
            (Heard::Accepted(r), CacheVerdict::Invalid) => (ProbeAnswer::Valid(r.clone()), "valid"),
            _ => return,
        };
        let (_, reply) = answer.parts();
        telemetry::Event::CalloutCorrected {
            addr,
            was: entry.verdict.as_str(),
            now: now_is,
            by,
            reply,
        }
        .emit();
        self.record(&key, answer).await;
    }

    /// The cache entry of an address (or of a domain's catch-all answer) as stored, expired
    /// or not, for `backstop cache show`.
    pub async fn entry(
        &self,
        key: CacheKey<'_>,
    ) -> Result<Option<CacheEntry>, crate::store::StoreError> {
        self.store.cache_get(&key.key()).await
    }

    /// Forgets what is cached for `addr` (or, with `domain`, whether the domain is a
    /// catch-all): the next RCPT probes again. False when nothing was cached.
    pub async fn forget(&self, key: CacheKey<'_>) -> Result<bool, crate::store::StoreError> {
        self.forget_key(&key.key()).await
    }

    async fn forget_key(&self, key: &str) -> Result<bool, crate::store::StoreError> {
        let now = self.clock.unix();
        let Some(mut entry) = self.store.cache_get(key).await? else {
            return Ok(false);
        };
        let live = !entry.is_expired(now);
        // an entry that expired now: ignored by every reader, deleted by the next purge
        entry.expire_at = now;
        entry.refresh_at = now;
        self.store.cache_put(key, &entry).await?;
        Ok(live)
    }

    /// The addresses of `domain` the cache holds an answer for (expired ones too), from the
    /// call-outs and from the `directories` named, sorted, with their entries; at most `max`.
    pub async fn addresses_of(
        &self,
        domain: &Domain,
        directories: &[&str],
        max: usize,
    ) -> Result<Vec<(String, CacheEntry)>, crate::store::StoreError> {
        let mut out = Vec::new();
        for prefix in prefixes(directories) {
            let suffix = format!("@{domain}");
            let mut keys = self.store.cache_keys(&prefix, &suffix, max).await?;
            keys.sort();
            for key in keys {
                if out.len() < max
                    && let Some(e) = self.store.cache_get(&key).await?
                {
                    out.push((key[prefix.len()..].to_string(), e));
                }
            }
        }
        Ok(out)
    }

    /// Forgets every address of `domain` (the call-outs' answers and those of the
    /// `directories` named) and whether it is a catch-all; returns how many live answers were
    /// forgotten.
    pub async fn forget_domain(
        &self,
        domain: &Domain,
        directories: &[&str],
    ) -> Result<usize, crate::store::StoreError> {
        let mut forgot = usize::from(self.forget_key(&domain_key(domain)).await?);
        for prefix in prefixes(directories) {
            let suffix = format!("@{domain}");
            let keys = self.store.cache_keys(&prefix, &suffix, usize::MAX).await?;
            for key in keys {
                forgot += usize::from(self.forget_key(&key).await?);
            }
        }
        Ok(forgot)
    }
}

/// The key prefixes of cached answers about addresses: the call-outs', then each directory's.
fn prefixes(directories: &[&str]) -> Vec<String> {
    let each = directories.iter().map(|name| format!("ldap:{name}:"));
    std::iter::once("rcpt:".to_string()).chain(each).collect()
}

/// What `backstop cache` is about: one address, or a domain's catch-all answer.
#[derive(Clone, Copy, Debug)]
pub enum CacheKey<'a> {
    /// `user@domain`, as the call-outs answered it
    Address(&'a Mailbox),
    /// `user@domain`, as the directory of that name answered it
    Directory(&'a str, &'a Mailbox),
    /// `@domain`
    Domain(&'a Domain),
}

impl CacheKey<'_> {
    /// Its key in the store.
    fn key(self) -> String {
        match self {
            CacheKey::Address(a) => address_key(a),
            CacheKey::Directory(name, a) => directory_key(name, a),
            CacheKey::Domain(d) => domain_key(d),
        }
    }
}

fn from_entry(entry: CacheEntry, cached: bool) -> CalloutResult {
    let k = Known { entry, cached };
    match k.entry.verdict {
        CacheVerdict::Valid => CalloutResult::Valid(k),
        CacheVerdict::Invalid | CacheVerdict::NotCatchAll => CalloutResult::Invalid(k),
        CacheVerdict::CatchAll => CalloutResult::CatchAll(k),
    }
}

#[cfg(test)]
mod tests;
