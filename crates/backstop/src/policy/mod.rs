//! Recipient policy: is this recipient ours, and is it a real user? One [`Decision`] per RCPT,
//! with the reply the client gets and the steps that led to it.
//!
//! Responsible for: the per-domain source order (lists, directories, call-outs, as
//! configured), the fixed reply texts (the internal server's and the directory's words never
//! reach the client), and never accepting an unverified recipient: what cannot be verified is
//! deferred (`451`/`450`), never accepted.
//! Not responsible for: where accepted mail goes (relay), or SMTP sequencing (the session).

pub mod callout;
pub mod directory;
pub mod lists;
pub mod probe;

use crate::clock::Clock;
use crate::config::{CatchAllPolicy, Config, NextHop, Source};
use backstop_proto::address::{Domain, Mailbox};
use callout::{Callout, CalloutResult, Known};
use directory::Directory;
use lists::{ListError, ListFile};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What RCPT gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `250 2.1.5`
    Accept,
    /// `550 5.1.1 ... User unknown`
    UnknownUser,
    /// `554 5.7.1 ... Relay access denied`: not one of our domains.
    RelayDenied,
    /// `451 4.4.3`: could not be verified now (internal server down, or a catch-all).
    Unverifiable,
    /// `450 4.7.1`: too many verifications for this client or in total.
    OverBudget,
    /// Not decided here: the internal server that would be probed is the next hop of the
    /// transaction relayed in the session, and its answer to the relayed RCPT decides (the
    /// caller then tells [`callout::Callout::learned`]). Only from [`Verifier::verify`] with
    /// `in_session` set.
    NextHop,
}

/// The verdict on one recipient, with its reason (a stable label for logs and metrics) and the
/// steps taken (for `backstop verify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What the client gets.
    pub outcome: Outcome,
    /// Why, as a label: `listed`, `not-listed`, `ldap-found`, `ldap-not-found`,
    /// `ldap-unavailable`, `callout-valid`, `callout-invalid`, `callout-unavailable`,
    /// `catch-all`, `probe-budget`, `relay-denied`.
    pub reason: &'static str,
    /// One line per source consulted.
    pub steps: Vec<String>,
}

enum SourceImpl {
    List(Arc<ListFile>),
    Callout(crate::config::HostPort),
    Directory(Arc<Directory>),
}

/// Why the verifier cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// A list file.
    #[error(transparent)]
    List(#[from] ListError),
    /// A directory's settings.
    #[error(transparent)]
    Directory(#[from] directory::SettingsError),
}

struct DomainPolicy {
    sources: Vec<SourceImpl>,
    next_hop: NextHop,
    /// Relayed in the session (not queued): a call-out to the next hop itself is answered by
    /// the relayed RCPT.
    in_session: bool,
}

/// The recipient verifier shared by all sessions.
pub struct Verifier {
    domains: HashMap<Domain, DomainPolicy>,
    lists: Vec<Arc<ListFile>>,
    directories: Vec<Arc<Directory>>,
    callout: Arc<Callout>,
    catch_all: CatchAllPolicy,
    postmaster: Mailbox,
    clock: Arc<dyn Clock>,
}

impl Verifier {
    /// How each call-out internal server has answered probes since start.
    pub fn backend_health(&self) -> Vec<(String, callout::Health)> {
        self.callout.health()
    }

    /// Loads every list file of the configuration (each once), sets up each directory a
    /// domain uses (nothing connected yet) and wires the call-out.
    pub fn new(
        cfg: &Config,
        callout: Arc<Callout>,
        clock: Arc<dyn Clock>,
    ) -> Result<Verifier, VerifierError> {
        let directories = directory::of_config(cfg)?;
        let mut files: HashMap<PathBuf, Arc<ListFile>> = HashMap::new();
        let mut domains = HashMap::new();
        for d in &cfg.domains {
            let mut sources = Vec::new();
            for s in &d.sources {
                sources.push(match s {
                    Source::List(p) => {
                        let file = match files.get(p) {
                            Some(f) => f.clone(),
                            None => Arc::new(ListFile::load(p)?),
                        };
                        files.insert(p.clone(), file.clone());
                        SourceImpl::List(file)
                    }
                    Source::Callout(hp) => SourceImpl::Callout(hp.clone()),
                    Source::Ldap(name) => {
                        let dir = directories.iter().find(|d| d.name() == name);
                        SourceImpl::Directory(dir.expect("every used directory is set up").clone())
                    }
                });
            }
            domains.insert(
                d.name.clone(),
                DomainPolicy {
                    sources,
                    next_hop: d.next_hop.clone(),
                    in_session: d.relay == crate::config::RelayMode::InSession,
                },
            );
        }
        // RCPT TO:<Postmaster> (no domain) goes to postmaster of the first domain
        let postmaster = Mailbox::new("postmaster", cfg.domains[0].name.clone())
            .expect("postmaster is a valid local part");
        Ok(Verifier {
            domains,
            lists: files.into_values().collect(),
            directories,
            callout,
            catch_all: cfg.callout.catch_all,
            postmaster,
            clock,
        })
    }

    /// The call-out verifier (a reload builds the next one from it).
    pub fn callout(&self) -> &Arc<Callout> {
        &self.callout
    }

    /// The mailbox `<Postmaster>` stands for.
    pub fn postmaster(&self) -> &Mailbox {
        &self.postmaster
    }

    /// Every directory a domain uses, for their health checks.
    pub fn directories(&self) -> &[Arc<Directory>] {
        &self.directories
    }

    /// The directories' health checks.
    pub fn checks(&self) -> crate::health::Checks {
        directory::checks(&self.directories)
    }

    /// Every list file, for the reload task.
    pub fn lists(&self) -> &[Arc<ListFile>] {
        &self.lists
    }

    /// Where mail for `domain` goes, if it is ours.
    pub fn next_hop(&self, domain: &Domain) -> Option<&NextHop> {
        self.domains.get(domain).map(|d| &d.next_hop)
    }

    /// Judges one recipient; `client` pays for any probe. `may_relay`: the client is in its
    /// listener's `relay_from` networks, so other domains are accepted (and queued).
    pub async fn verify(&self, addr: &Mailbox, client: IpAddr, may_relay: bool) -> Decision {
        self.verify_in(addr, client, may_relay, false).await
    }

    /// Like [`Verifier::verify`], for a session that relays the recipient to the next hop at
    /// once when it is accepted (`relaying`): an unknown address whose call-out server is that
    /// next hop gets [`Outcome::NextHop`] instead of a probe.
    pub async fn verify_in(
        &self,
        addr: &Mailbox,
        client: IpAddr,
        may_relay: bool,
        relaying: bool,
    ) -> Decision {
        let Some(domain) = self.domains.get(addr.domain()) else {
            if may_relay {
                return decision(
                    Outcome::Accept,
                    "relay-client",
                    vec![format!("{client} may relay (listen relay_from)")],
                );
            }
            return decision(
                Outcome::RelayDenied,
                "relay-denied",
                vec![format!("{} is not one of our domains", addr.domain())],
            );
        };
        // postmaster must always be deliverable (RFC 5321 §4.5.1)
        if addr.local().eq_ignore_ascii_case("postmaster") {
            return decision(
                Outcome::Accept,
                "postmaster",
                vec!["postmaster is always accepted (RFC 5321 §4.5.1)".into()],
            );
        }
        let mut steps = Vec::new();
        let mut deferred: Option<(Outcome, &'static str)> = None;
        let mut server_refused = false;
        let mut no_entry = false;
        for source in &domain.sources {
            match source {
                SourceImpl::List(f) => {
                    let data = f.data();
                    if data.contains(addr) {
                        steps.push(format!("list:{}: listed", f.path().display()));
                        return decision(Outcome::Accept, "listed", steps);
                    }
                    steps.push(format!(
                        "list:{}: not listed ({} entries)",
                        f.path().display(),
                        data.len()
                    ));
                }
                SourceImpl::Directory(dir) => {
                    let r = self.callout.look_up(dir, addr).await;
                    steps.push(format!("ldap:{}: {}", dir.name(), self.describe(&r, true)));
                    match r {
                        CalloutResult::Valid(_) => {
                            return decision(Outcome::Accept, "ldap-found", steps);
                        }
                        CalloutResult::Invalid(_) => no_entry = true,
                        _ => {
                            deferred.get_or_insert((Outcome::Unverifiable, "ldap-unavailable"));
                        }
                    }
                }
                SourceImpl::Callout(target) => {
                    let by_relay = relaying
                        && domain.in_session
                        && domain.next_hop == NextHop::Smtp(target.clone());
                    let r = self
                        .callout
                        .check_or_relay(target, addr, client, by_relay)
                        .await;
                    steps.push(format!("callout:{target}: {}", self.describe(&r, false)));
                    match r {
                        CalloutResult::Valid(_) => {
                            return decision(Outcome::Accept, "callout-valid", steps);
                        }
                        CalloutResult::Invalid(_) => server_refused = true,
                        CalloutResult::CatchAll(_) => {
                            let o = match self.catch_all {
                                CatchAllPolicy::Defer => Outcome::Unverifiable,
                                CatchAllPolicy::Reject => Outcome::UnknownUser,
                            };
                            deferred.get_or_insert((o, "catch-all"));
                        }
                        CalloutResult::Unavailable(_) => {
                            deferred.get_or_insert((Outcome::Unverifiable, "callout-unavailable"));
                        }
                        CalloutResult::OverBudget => {
                            deferred.get_or_insert((Outcome::OverBudget, "probe-budget"));
                        }
                        CalloutResult::ByRelay => {
                            return decision(Outcome::NextHop, "relay", steps);
                        }
                    }
                }
            }
        }
        // a definite "no" from an internal server outweighs another one's silence; a list's or
        // a directory's does not (a later source may know the address)
        match (server_refused, deferred) {
            (true, _) => decision(Outcome::UnknownUser, "callout-invalid", steps),
            (false, Some((o, reason))) => decision(o, reason, steps),
            (false, None) if no_entry => decision(Outcome::UnknownUser, "ldap-not-found", steps),
            (false, None) => decision(Outcome::UnknownUser, "not-listed", steps),
        }
    }

    /// One source's answer for `backstop verify`; `directory`: it came from a directory.
    fn describe(&self, r: &CalloutResult, directory: bool) -> String {
        let now = self.clock.unix();
        let known = |what: &str, k: &Known| {
            let e = &k.entry;
            let when = if k.cached {
                format!(
                    "cached, checked {} ago, refresh in {}, expires in {}",
                    crate::config::ago(now.saturating_sub(e.checked_at)),
                    crate::config::ago(e.refresh_at.saturating_sub(now)),
                    crate::config::ago(e.expire_at.saturating_sub(now))
                )
            } else {
                "probed now".to_string()
            };
            match directory {
                true => format!("{what} ({when}; {})", e.detail),
                false => format!("{what} ({when}; internal server said: {})", e.detail),
            }
        };
        match r {
            CalloutResult::Valid(k) if directory => known("found", k),
            CalloutResult::Invalid(k) if directory => known("no entry", k),
            CalloutResult::Valid(k) => known("valid", k),
            CalloutResult::Invalid(k) => known("unknown user", k),
            CalloutResult::CatchAll(k) => known("domain is a catch-all, answers not trusted", k),
            CalloutResult::Unavailable(why) => format!("cannot verify: {why}"),
            CalloutResult::OverBudget => "probe budget spent for this minute".into(),
            CalloutResult::ByRelay => "not cached: the relayed RCPT asks the next hop".into(),
        }
    }
}

fn decision(outcome: Outcome, reason: &'static str, steps: Vec<String>) -> Decision {
    Decision {
        outcome,
        reason,
        steps,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ago_is_short() {
        assert_eq!(crate::config::ago(0), "0s");
        assert_eq!(crate::config::ago(59), "59s");
        assert_eq!(crate::config::ago(3 * 86400 + 7200 + 5), "3d 2h");
        assert_eq!(crate::config::ago(3600), "1h");
    }
}
