//! Whether each internal server answers: every `smtp:` next hop (of a domain or a route), every
//! call-out server and every directory (`ldap:`), checked in the background (connect, EHLO,
//! QUIT, or a directory's connect and bind, every `[health] interval`) and corrected by what
//! real traffic sees.
//!
//! Responsible for: the up/down state of each backend with since when and the last error, the
//! transitions (one alert down, one alert back, through the hook the caller gives), the
//! `backstop_next_hop_up` / `backstop_callout_backend_up` gauges' values, and the checks
//! themselves (also used by `check-config --connect`). A failure seen by traffic (a connection
//! refused, lost or timed out) asks for a check at once rather than marking the backend down
//! by itself, so one lost connection does not flap the state; a transaction that worked marks
//! it up at once. Not responsible for: what the gateway answers while a backend is down (policy
//! and relay answer 451 on their own).

use crate::config::{Config, HostPort, NextHop, Source};
use crate::upstream::Connection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What a backend is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Where a domain's (or a route's) mail goes: `smtp:HOST:PORT`.
    NextHop,
    /// Asked whether recipients exist: `callout:HOST:PORT`.
    Callout,
    /// Asked for recipients' entries: `ldap:NAME`.
    Directory,
}

/// A backend: an SMTP server, or a directory by its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `HOST:PORT`, spoken to in SMTP.
    Smtp(HostPort),
    /// `[[ldap]]` `name`.
    Ldap(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Smtp(hp) => write!(f, "{hp}"),
            Target::Ldap(name) => write!(f, "ldap:{name}"),
        }
    }
}

/// A backend checked otherwise than in SMTP (a directory): its own check, what answered or why
/// not.
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// One check, now.
    async fn check(&self) -> Result<String, String>;
}

/// The backends checked otherwise than in SMTP, by target.
pub type Checks = Vec<(Target, Arc<dyn Check>)>;

/// What one round of checks needs (read at every round: a reload applies).
pub struct Round {
    /// Our EHLO name.
    pub helo: String,
    /// Each check's limit.
    pub timeout: Duration,
    /// The time between rounds.
    pub interval: Duration,
    /// The directories' checks.
    pub checks: Checks,
}

impl Role {
    /// `next-hop`, `callout` or `directory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::NextHop => "next-hop",
            Role::Callout => "callout",
            Role::Directory => "directory",
        }
    }
}

/// One backend's state, as shown by `backstop status`, `/api/status` and `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Next hop, call-out or directory.
    pub role: Role,
    /// `host:port`, or `ldap:NAME`.
    pub target: String,
    /// Answering; none before the first check.
    pub up: Option<bool>,
    /// Since when (Unix seconds) it is in that state.
    pub since: u64,
    /// What went wrong last, while down.
    pub error: Option<String>,
}

/// Called on every change of state: `(down, role, target, detail)`.
pub type Hook = Arc<dyn Fn(bool, Role, &str, &str) + Send + Sync>;

/// The states, by role and target.
type States = BTreeMap<Role, BTreeMap<Target, Backend>>;

/// The backends of the running configuration and their states.
pub struct Backends {
    states: Mutex<States>,
    hook: Hook,
    /// Wakes the checker for a check now (traffic saw a failure).
    wake: Notify,
}

/// Every backend `cfg` names, each once.
pub fn targets(cfg: &Config) -> Vec<(Role, Target)> {
    let mut out: Vec<(Role, Target)> = Vec::new();
    let mut add = |role, t: Target| {
        if !out.iter().any(|(r, o)| *r == role && *o == t) {
            out.push((role, t));
        }
    };
    for d in &cfg.domains {
        for s in &d.sources {
            match s {
                Source::Callout(hp) => add(Role::Callout, Target::Smtp(hp.clone())),
                Source::Ldap(name) => add(Role::Directory, Target::Ldap(name.clone())),
                Source::List(_) => {}
            }
        }
        if let NextHop::Smtp(hp) = &d.next_hop {
            add(Role::NextHop, Target::Smtp(hp.clone()));
        }
    }
    for r in &cfg.routes {
        if let NextHop::Smtp(hp) = &r.next_hop {
            add(Role::NextHop, Target::Smtp(hp.clone()));
        }
    }
    out
}

impl Backends {
    /// None known yet; `hook` hears every change of state.
    pub fn new(hook: Hook) -> Arc<Backends> {
        Arc::new(Backends {
            states: Mutex::default(),
            hook,
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the backends of `cfg` (after a start or a reload): new ones are added, unknown
    /// until checked; ones no longer configured are forgotten; the rest keep their state.
    pub fn follow(&self, cfg: &Config, now: u64) {
        let wanted = targets(cfg);
        let mut states = self.lock();
        for (role, of_role) in states.iter_mut() {
            of_role.retain(|t, _| wanted.contains(&(*role, t.clone())));
        }
        for (role, t) in wanted {
            let of_role = states.entry(role).or_default();
            of_role.entry(t.clone()).or_insert_with(|| Backend {
                role,
                target: t.to_string(),
                up: None,
                since: now,
                error: None,
            });
        }
        drop(states);
        self.wake.notify_one();
    }

    /// Records a check's result or what traffic saw: `Ok` (it answered) or the error. A change
    /// of state calls the hook.
    pub fn record(&self, role: Role, target: &Target, result: Result<(), String>, now: u64) {
        let mut states = self.lock();
        let Some(b) = states.get_mut(&role).and_then(|r| r.get_mut(target)) else {
            return;
        };
        let up = result.is_ok();
        let was = b.up;
        b.error = result.err();
        if was != Some(up) {
            b.up = Some(up);
            b.since = now;
        }
        let (target, detail) = (b.target.clone(), b.error.clone().unwrap_or_default());
        drop(states);
        crate::telemetry::Event::BackendCheck {
            role: role.as_str(),
            target: &target,
            up,
            detail: &detail,
        }
        .emit();
        // the first check of a backend that answers is no news
        if was != Some(up) && (was.is_some() || !up) {
            (self.hook)(!up, role, &target, &detail);
        }
    }

    /// Traffic reached `target`: it answers.
    pub fn answered(&self, role: Role, target: &Target, now: u64) {
        if self.state(role, target).flatten() != Some(true) {
            self.record(role, target, Ok(()), now);
        }
    }

    /// Whether `target` is watched (and then whether it answers; none before its first check).
    fn state(&self, role: Role, target: &Target) -> Option<Option<bool>> {
        self.lock().get(&role)?.get(target).map(|b| b.up)
    }

    /// Traffic could not reach `target` (connection refused, lost, timed out): check it now.
    pub fn unreachable(&self, role: Role, target: &Target) {
        if self.state(role, target).is_some() {
            self.wake.notify_one();
        }
    }

    /// Every backend's state, next hops first.
    pub fn list(&self) -> Vec<Backend> {
        self.lock()
            .values()
            .flat_map(|r| r.values().cloned())
            .collect()
    }

    /// The backends known to be down.
    pub fn down(&self) -> Vec<Backend> {
        self.list()
            .into_iter()
            .filter(|b| b.up == Some(false))
            .collect()
    }

    /// Checks every backend each `interval()` (read at every round, so a reload's new interval
    /// applies), and at once when traffic saw a failure; runs until aborted.
    pub async fn run(
        self: Arc<Self>,
        round: impl Fn() -> Round + Send + Sync,
        clock: Arc<dyn crate::clock::Clock>,
    ) {
        // the first round checks everything anyway: a wake-up asked before it is served by it
        let _ = futures_util::FutureExt::now_or_never(self.wake.notified());
        loop {
            let round = round();
            let targets: Vec<(Role, Target)> = self
                .lock()
                .iter()
                .flat_map(|(role, r)| r.keys().map(|t| (*role, t.clone())))
                .collect();
            let checks = targets.iter().map(|(role, t)| {
                let round = &round;
                async move { (*role, t, check_one(t, round).await) }
            });
            for (role, t, result) in futures_util::future::join_all(checks).await {
                self.record(role, t, result.map(|_| ()), clock.unix());
            }
            tokio::select! {
                _ = tokio::time::sleep(round.interval) => {}
                _ = self.wake.notified() => {
                    // a burst of failures asks once
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// One check of `target` in `round`.
async fn check_one(target: &Target, round: &Round) -> Result<String, String> {
    match target {
        Target::Smtp(hp) => check(hp, &round.helo, round.timeout).await,
        Target::Ldap(_) => match round.checks.iter().find(|(t, _)| t == target) {
            Some((_, c)) => c.check().await,
            None => Err("not configured".into()),
        },
    }
}

/// Connects to `target`, says EHLO and QUIT: what it offered and how long it took, or why
/// it did not answer.
pub async fn check(target: &HostPort, helo: &str, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    let conn = Connection::open(target, helo, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let tls = match conn.capabilities().starttls {
        true => "STARTTLS offered",
        false => "no STARTTLS",
    };
    let took = started.elapsed().as_millis();
    conn.quit().await;
    Ok(format!("EHLO accepted, {tls}, {took} ms"))
}

/// Checks every backend of `cfg` once (`check-config --connect`), the directories with
/// `checks`: role, target, result.
pub async fn check_all(
    cfg: &Config,
    checks: Checks,
) -> Vec<(&'static str, Target, Result<String, String>)> {
    let round = Round {
        helo: cfg.hostname.clone(),
        timeout: cfg.callout.timeout.min(cfg.delivery.timeout),
        interval: cfg.health.interval,
        checks,
    };
    let round = &round;
    let all = targets(cfg).into_iter().map(|(role, t)| async move {
        let r = check_one(&t, round).await;
        (role.as_str(), t, r)
    });
    futures_util::future::join_all(all).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn hp(s: &str) -> Target {
        Target::Smtp(HostPort::parse(s).unwrap())
    }

    fn backends() -> (Arc<Backends>, Arc<StdMutex<Vec<String>>>) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        let hook: Hook = Arc::new(move |down, role, target, _| {
            s.lock().unwrap().push(format!(
                "{} {} {target}",
                if down { "down" } else { "up" },
                role.as_str()
            ));
        });
        (Backends::new(hook), seen)
    }

    fn cfg() -> Config {
        let text = "hostname = \"mx.example.test\"\nstate_dir = \"/tmp\"\n\
             [[listen]]\naddr = \"127.0.0.1:0\"\n\
             [[domain]]\nname = \"example.test\"\n\
             recipients = [\"callout:127.0.0.1:2526\"]\nnext_hop = \"smtp:127.0.0.1:2526\"\n\
             [[domain]]\nname = \"other.test\"\n\
             recipients = [\"callout:127.0.0.1:2526\"]\nnext_hop = \"smtp:127.0.0.1:2526\"\n\
             [[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:[::1]:2627\"\n";
        Config::from_toml(text, std::path::Path::new("/")).unwrap()
    }

    #[test]
    fn every_backend_is_named_once_per_role() {
        let t: Vec<String> = targets(&cfg())
            .iter()
            .map(|(r, h)| format!("{} {h}", r.as_str()))
            .collect();
        assert_eq!(
            t,
            [
                "callout 127.0.0.1:2526",
                "next-hop 127.0.0.1:2526",
                "next-hop [::1]:2627"
            ]
        );
    }

    #[test]
    fn one_alert_down_and_one_back_and_none_for_a_first_good_check() {
        let (b, seen) = backends();
        b.follow(&cfg(), 100);
        let t = hp("127.0.0.1:2526");
        b.record(Role::NextHop, &t, Ok(()), 101);
        b.record(Role::NextHop, &t, Err("connect: refused".into()), 102);
        b.record(Role::NextHop, &t, Err("connect: refused".into()), 103);
        assert_eq!(b.down().len(), 1);
        assert_eq!(b.down()[0].since, 102);
        assert_eq!(b.down()[0].error.as_deref(), Some("connect: refused"));
        b.answered(Role::NextHop, &t, 104);
        b.answered(Role::NextHop, &t, 105);
        assert!(b.down().is_empty());
        assert_eq!(
            *seen.lock().unwrap(),
            ["down next-hop 127.0.0.1:2526", "up next-hop 127.0.0.1:2526"]
        );
    }

    #[test]
    fn a_first_check_that_fails_alerts_and_a_reload_forgets_old_backends() {
        let (b, seen) = backends();
        b.follow(&cfg(), 100);
        b.record(
            Role::Callout,
            &hp("127.0.0.1:2526"),
            Err("timed out".into()),
            101,
        );
        assert_eq!(*seen.lock().unwrap(), ["down callout 127.0.0.1:2526"]);
        // a backend not configured is not tracked
        b.record(Role::Callout, &hp("192.0.2.1:25"), Err("x".into()), 101);
        assert_eq!(b.list().len(), 3);
        let mut smaller = cfg();
        smaller.routes.clear();
        b.follow(&smaller, 102);
        assert_eq!(b.list().len(), 2);
        // what stays keeps its state
        assert_eq!(b.down()[0].since, 101);
    }
}
