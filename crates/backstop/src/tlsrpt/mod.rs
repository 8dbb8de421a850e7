//! Our outbound TLS results (RFC 8460): for each recipient domain and reporting period, the
//! sessions that met the domain's policy (MTA-STS, DANE or none) and those that failed, and
//! why.
//!
//! Responsible for: counting sessions by domain and policy, closing the open period at the
//! end of its UTC day (or at once, when an operator asks), keeping the counts in
//! `state_dir/tls-reports.json` across restarts, forgetting what has been reported, and the
//! day's failures by destination for `backstop status`. Not responsible for: the sessions
//! (`delivery` records them), where reports go or sending them (`notify`), nor their form
//! (`report`).

pub mod report;

use mail_auth::report::tlsrpt::{FailureDetails, Policy, PolicyDetails, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub use mail_auth::report::tlsrpt::{PolicyType, ResultType};

const DAY: u64 = 86_400;
/// Most recipient domains counted per period (a gateway mailing more domains a day counts
/// the first ones; sessions of the others are left out, told once in the log).
pub const MAX_DOMAINS: usize = 20_000;
/// Most distinct failure details per policy (more failures are still counted).
const MAX_DETAILS: usize = 50;
/// A closed period whose reports could not be sent (no answer from DNS) is given up after
/// this long.
pub const KEEP: u64 = 3 * DAY;
/// Longest `additional-information` text kept.
const INFO_MAX: usize = 300;

/// The sessions of one reporting period, by recipient domain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Period {
    /// Start (Unix seconds).
    pub start: u64,
    /// End (Unix seconds); none while the period is open.
    pub end: Option<u64>,
    /// Each domain's policies with their counts.
    pub domains: BTreeMap<String, Vec<Policy>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    open: Period,
    /// Closed periods with domains still to be reported, oldest first.
    closed: Vec<Period>,
    #[serde(skip)]
    full_warned: bool,
}

/// What one session came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// TLS as the policy asked.
    Success,
    /// Not, and why.
    Failure(FailureDetails),
}

/// A failure of `kind` at MX host `host` (`ip`), with words for people.
pub fn failure(
    kind: ResultType,
    host: &str,
    ip: Option<std::net::IpAddr>,
    info: &str,
) -> FailureDetails {
    let mut f = FailureDetails::new(kind).with_receiving_mx_hostname(host);
    f.receiving_ip = ip;
    if !info.is_empty() {
        let info: String = info.chars().take(INFO_MAX).collect();
        f.additional_information = Some(info);
    }
    f
}

/// The counts, in memory and in a file.
pub struct Ledger {
    state: Mutex<State>,
    /// Where they are kept; none: in memory only (tests).
    path: Option<PathBuf>,
    dirty: AtomicBool,
}

/// The ledger's file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not a ledger.
    #[error("{0}: not a TLS report ledger: {1}")]
    Corrupt(PathBuf, serde_json::Error),
}

impl Ledger {
    /// An empty ledger kept in memory only, its period open since `now`'s UTC day began.
    pub fn in_memory(now: u64) -> Ledger {
        let state = State {
            open: Period {
                start: now / DAY * DAY,
                ..Period::default()
            },
            ..State::default()
        };
        Ledger {
            state: Mutex::new(state),
            path: None,
            dirty: AtomicBool::new(false),
        }
    }

    /// The ledger kept in `path` (empty when the file does not exist yet).
    pub fn open(path: &Path, now: u64) -> Result<Ledger, LedgerError> {
        let mut ledger = Ledger::in_memory(now);
        ledger.path = Some(path.to_path_buf());
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| LedgerError::Corrupt(path.to_path_buf(), e))?;
                *ledger.lock() = state;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LedgerError::Io(path.to_path_buf(), e)),
        }
        ledger.roll(now);
        Ok(ledger)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one session with `domain`'s MX host under `policy` at `now`.
    pub fn record(&self, now: u64, domain: &str, policy: &PolicyDetails, result: Outcome) {
        let mut s = self.lock();
        roll(&mut s, now);
        let full = s.open.domains.len() >= MAX_DOMAINS;
        if full && !s.open.domains.contains_key(domain) {
            if !s.full_warned {
                s.full_warned = true;
                tracing::warn!(
                    domains = MAX_DOMAINS,
                    "TLS report counts: domain limit reached for this period; sessions with \
                     further domains are not counted"
                );
            }
            return;
        }
        let policies = s.open.domains.entry(domain.to_string()).or_default();
        let p = match policies.iter().position(|p| p.policy == *policy) {
            Some(i) => &mut policies[i],
            None => {
                policies.push(Policy {
                    policy: policy.clone(),
                    summary: Summary {
                        total_success: 0,
                        total_failure: 0,
                    },
                    failure_details: Vec::new(),
                });
                policies.last_mut().expect("just pushed")
            }
        };
        match result {
            Outcome::Success => p.summary.total_success += 1,
            Outcome::Failure(f) => {
                p.summary.total_failure += 1;
                count_failure(&mut p.failure_details, f);
            }
        }
        drop(s);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Closes the open period at the end of its UTC day once `now` has passed it.
    pub fn roll(&self, now: u64) {
        if roll(&mut self.lock(), now) {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Closes the open period at `now` (an operator's `backstop tls-report send`); the next
    /// one starts there.
    pub fn close_now(&self, now: u64) {
        let mut s = self.lock();
        let end = now.max(s.open.start);
        close(&mut s, end, now);
        drop(s);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The closed periods still to be reported, oldest first.
    pub fn closed(&self) -> Vec<Period> {
        self.lock().closed.clone()
    }

    /// The open period so far.
    pub fn current(&self) -> Period {
        self.lock().open.clone()
    }

    /// Forgets `domain` of the closed period that started at `start` (reported, or nobody
    /// to report to); periods left empty go.
    pub fn done(&self, start: u64, domain: &str) {
        let mut s = self.lock();
        for p in s.closed.iter_mut().filter(|p| p.start == start) {
            p.domains.remove(domain);
        }
        s.closed.retain(|p| !p.domains.is_empty());
        drop(s);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Gives up closed periods that ended more than [`KEEP`] before `now`; returns how many
    /// domains' reports were given up.
    pub fn expire(&self, now: u64) -> usize {
        let mut s = self.lock();
        let old = |p: &Period| p.end.unwrap_or(p.start) + KEEP <= now;
        let lost = s.closed.iter().filter(|p| old(p)).map(|p| p.domains.len());
        let lost = lost.sum();
        if lost > 0 {
            s.closed.retain(|p| !old(p));
            drop(s);
            self.dirty.store(true, Ordering::Relaxed);
        }
        lost
    }

    /// Writes the counts to the file when they changed (atomically: a new file renamed
    /// over the old one).
    pub fn flush(&self) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let json = serde_json::to_vec(&*self.lock()).expect("plain data");
        let tmp = path.with_extension("json.tmp");
        let io = |e| LedgerError::Io(path.clone(), e);
        let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(io(e));
        }
        Ok(())
    }
}

/// Closes the open period at the end of its UTC day when `now` has passed it; true when it
/// did.
fn roll(s: &mut State, now: u64) -> bool {
    let end = (s.open.start / DAY + 1) * DAY;
    let due = now >= end;
    if due {
        close(s, end, now / DAY * DAY);
    }
    due
}

/// Moves the open period, ended at `end`, to the closed ones (when it counted anything) and
/// opens the next at `next`.
fn close(s: &mut State, end: u64, next: u64) {
    let mut done = std::mem::take(&mut s.open);
    done.end = Some(end);
    if !done.domains.is_empty() {
        s.closed.push(done);
    }
    s.open.start = next;
    s.full_warned = false;
}

/// Adds one failed session to the details, with its like (same kind, host, address and
/// words) or as a new entry while there are fewer than [`MAX_DETAILS`].
fn count_failure(details: &mut Vec<FailureDetails>, mut f: FailureDetails) {
    let same = |d: &FailureDetails| {
        d.result_type == f.result_type
            && d.receiving_mx_hostname == f.receiving_mx_hostname
            && d.receiving_ip == f.receiving_ip
            && d.additional_information == f.additional_information
    };
    if let Some(d) = details.iter_mut().find(|d| same(d)) {
        d.failed_session_count += 1;
    } else if details.len() < MAX_DETAILS {
        f.failed_session_count = 1;
        details.push(f);
    }
}

/// One destination's failures in a period, for `backstop status`.
#[derive(Debug, PartialEq, Serialize)]
pub struct Failures {
    /// The recipient domain.
    pub domain: String,
    /// Sessions that failed its policy.
    pub failed: u64,
    /// Sessions that met it.
    pub succeeded: u64,
    /// The commonest kind of failure (RFC 8460's name) and its words.
    pub why: String,
}

impl Period {
    /// `domain`'s successful and failed sessions in the period.
    pub fn totals(&self, domain: &str) -> (u64, u64) {
        let policies = self.domains.get(domain).map_or(&[][..], |p| p.as_slice());
        let sum = |f: fn(&Policy) -> u32| policies.iter().map(|p| f(p) as u64).sum();
        (
            sum(|p| p.summary.total_success),
            sum(|p| p.summary.total_failure),
        )
    }

    /// The domains with failed sessions, most failures first, at most `max`.
    pub fn failures(&self, max: usize) -> Vec<Failures> {
        let mut out: Vec<Failures> = self
            .domains
            .iter()
            .filter_map(|(domain, policies)| {
                let (succeeded, failed) = self.totals(domain);
                let top = policies
                    .iter()
                    .flat_map(|p| &p.failure_details)
                    .max_by_key(|d| d.failed_session_count)?;
                (failed > 0).then(|| Failures {
                    domain: domain.clone(),
                    failed,
                    succeeded,
                    why: describe(top),
                })
            })
            .collect();
        out.sort_by(|a, b| b.failed.cmp(&a.failed).then(a.domain.cmp(&b.domain)));
        out.truncate(max);
        out
    }
}

/// RFC 8460's name of a policy type or result type (`sts`, `starttls-not-supported`).
fn name_of(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `starttls-not-supported at mx.example.test: ...`.
fn describe(d: &FailureDetails) -> String {
    let kind = name_of(d.result_type);
    let host = d.receiving_mx_hostname.as_deref().unwrap_or("?");
    let host = match d.receiving_ip {
        Some(ip) => format!("{host} [{ip}]"),
        None => host.to_string(),
    };
    match &d.additional_information {
        Some(info) => format!("{kind} at {host}: {info}"),
        None => format!("{kind} at {host}"),
    }
}

/// `backstop tls-report show` for people, from its JSON (`current`, `pending`).
pub fn render(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let period = |v: &serde_json::Value| serde_json::from_value::<Period>(v.clone()).ok();
    let mut out = String::new();
    if let Some(p) = period(&v["current"]) {
        let since = backstop_proto::datetime::rfc5322(p.start);
        let _ = writeln!(out, "counted since {since}: {} domain(s)", p.domains.len());
        render_period(&mut out, &p);
    }
    let pending: Vec<Period> = v["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(period)
        .collect();
    for p in &pending {
        let (start, end) = (p.start, p.end.unwrap_or(p.start));
        let _ = writeln!(
            out,
            "reports still to go for {} to {}: {} domain(s)",
            backstop_proto::datetime::rfc5322(start),
            backstop_proto::datetime::rfc5322(end),
            p.domains.len()
        );
        render_period(&mut out, p);
    }
    out
}

fn render_period(out: &mut String, p: &Period) {
    use std::fmt::Write;
    for (domain, policies) in &p.domains {
        for pol in policies {
            let mut kind = name_of(pol.policy.policy_type);
            if !pol.policy.mx_host.is_empty() {
                kind = format!("{kind} (mx: {})", pol.policy.mx_host.join(", "));
            }
            let _ = writeln!(
                out,
                "  {domain}  {kind}: {} successful, {} failed",
                pol.summary.total_success, pol.summary.total_failure
            );
            for d in &pol.failure_details {
                let _ = writeln!(out, "    {} x {}", d.failed_session_count, describe(d));
            }
        }
    }
}

#[cfg(test)]
mod tests;
