//! Our own reputation: the gateway's outbound IPs looked up in DNS blocklists
//! (`[reputation]`), with an alert when one gets listed or delisted, and an alert when remote
//! servers refuse our outbound mail as blocked, once per destination per hour.
//!
//! Responsible for: the lookups (through the configured resolver), the last state per IP and
//! zone (kept in the store, so a restart does not alert again) and the alerts. Not
//! responsible for: what to do about a listing (the operator decides).

use crate::alert::Alerts;
use crate::config::Config;
use crate::delivery::mx::MxResolver;
use crate::store::{Store, StoreError, claim_until};
use std::net::IpAddr;
use std::sync::Arc;

/// The blocklist query name of `ip` in `zone`: reversed octets (IPv4) or nibbles (IPv6).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let reversed = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [b & 0x0f, b >> 4])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    };
    format!("{reversed}.{zone}")
}

/// What a blocklist said about one of our IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Not listed.
    Clean,
    /// Listed, with the answer (the return code says why, per the list's documentation).
    Listed(String),
}

impl Listing {
    /// From the A records of the query name: a listing answers in 127.0.0.0/8; Spamhaus's
    /// 127.255.255.0/24 answers are errors (a refused or public resolver), not listings.
    pub fn from_answers(answers: &[std::net::Ipv4Addr]) -> Option<Listing> {
        if answers.iter().any(|a| a.octets()[..3] == [127, 255, 255]) {
            return None;
        }
        match answers.iter().find(|a| a.octets()[0] == 127) {
            Some(a) => Some(Listing::Listed(a.to_string())),
            None => Some(Listing::Clean),
        }
    }

    fn stored(&self) -> String {
        match self {
            Listing::Clean => "clean".into(),
            Listing::Listed(a) => format!("listed {a}"),
        }
    }
}

/// The reputation watch.
pub struct Reputation {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    resolver: MxResolver,
    alerts: Arc<Alerts>,
}

impl Reputation {
    /// The watch for `cfg`.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        resolver: MxResolver,
        alerts: Arc<Alerts>,
    ) -> Reputation {
        Reputation {
            cfg,
            store,
            resolver,
            alerts,
        }
    }

    /// Looks every IP up in every zone; alerts on a change from the last known state (a first
    /// look alerts only when listed). Returns the states found; lookups that failed are left
    /// out and logged.
    pub async fn check(&self, now: u64) -> Result<Vec<(IpAddr, String, Listing)>, StoreError> {
        let r = &self.cfg.reputation;
        let mut out = Vec::new();
        for &ip in &r.ips {
            for zone in &r.dnsbl {
                let name = query_name(ip, zone);
                let listing = match self.resolver.ipv4_of(&name).await {
                    Ok(a) => Listing::from_answers(&a),
                    Err(e) => {
                        tracing::warn!(%ip, zone, error = %e, "DNSBL lookup failed");
                        None
                    }
                };
                let Some(listing) = listing else {
                    continue;
                };
                crate::telemetry::Event::Dnsbl {
                    ip,
                    zone,
                    listed: matches!(listing, Listing::Listed(_)),
                }
                .emit();
                self.record(ip, zone, &listing, now).await?;
                out.push((ip, zone.clone(), listing));
            }
        }
        Ok(out)
    }

    async fn record(
        &self,
        ip: IpAddr,
        zone: &str,
        now_state: &Listing,
        now: u64,
    ) -> Result<(), StoreError> {
        let key = format!("reputation:dnsbl:{ip}:{zone}");
        let before = self.store.get(&key, now).await?;
        let after = now_state.stored();
        if before.as_deref() == Some(after.as_str()) {
            return Ok(());
        }
        self.store.put(&key, &after, None).await?;
        let subject = ip.to_string();
        match (before.as_deref(), now_state) {
            (_, Listing::Listed(code)) => {
                let detail = format!("{ip} is listed in {zone} ({code})");
                self.alerts.raise("dnsbl_listed", &subject, &detail, now);
            }
            (Some(b), Listing::Clean) if b.starts_with("listed") => {
                let detail = format!("{ip} is no longer listed in {zone}");
                self.alerts.raise("dnsbl_delisted", &subject, &detail, now);
            }
            (_, Listing::Clean) => {}
        }
        Ok(())
    }

    /// Checks every `[reputation] interval`, forever (none configured: returns at once).
    pub async fn run(self: Arc<Self>, clock: Arc<dyn crate::clock::Clock>) {
        let r = &self.cfg.reputation;
        if r.ips.is_empty() || r.dnsbl.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(r.interval);
        loop {
            tick.tick().await;
            if let Err(e) = self.check(clock.unix()).await {
                tracing::warn!(error = %e, "DNSBL state not recorded: store failed");
            }
        }
    }

    /// A remote server refused our outbound mail as blocked (our IP or domain listed, bad
    /// reputation): an alert, at most once an hour per destination domain.
    pub async fn refused_as_blocked(&self, destination: &str, detail: &str, now: u64) {
        let key = format!("reputation:blocked:{destination}");
        match claim_until(self.store.as_ref(), &key, now + 3600, now).await {
            Ok(true) => {
                let detail = format!("{destination} refuses our mail as blocked: {detail}");
                self.alerts
                    .raise("blocked_by_destination", destination, &detail, now);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "blocked refusal not recorded: store failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(
            query_name("192.0.2.10".parse().unwrap(), "zen.spamhaus.org"),
            "10.2.0.192.zen.spamhaus.org"
        );
        assert_eq!(
            query_name("2001:db8::1".parse().unwrap(), "bl.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
    }

    #[tokio::test]
    async fn blocked_refusals_alert_once_per_destination_per_hour() {
        let (_d, cfg, store) = crate::test_support::for_tests("");
        let alerts = Arc::new(Alerts::new(cfg.clone(), store.clone()));
        let resolver = MxResolver::new(
            Some("127.0.0.1:9".parse().unwrap()),
            std::time::Duration::from_secs(1),
            1,
        )
        .unwrap();
        let r = Reputation::new(cfg, store.clone(), resolver, alerts);
        let now = 1_795_392_000;
        for dest in ["big.test", "big.test", "other.test", "big.test"] {
            r.refused_as_blocked(dest, "554 5.7.1 blocked using a list", now)
                .await;
        }
        r.refused_as_blocked("big.test", "again", now + 3600).await;
        let count = || async {
            let c = crate::store::daily::today(store.as_ref(), "alerts", &crate::alert::KINDS, now)
                .await
                .unwrap();
            c.into_iter()
                .find(|(k, _)| *k == "blocked_by_destination")
                .unwrap()
                .1
        };
        // counted in the background
        for _ in 0..100 {
            if count().await == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            count().await,
            3,
            "big.test twice (an hour apart), other.test once"
        );
    }

    #[test]
    fn answers() {
        let a = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        assert_eq!(Listing::from_answers(&[]), Some(Listing::Clean));
        assert_eq!(
            Listing::from_answers(&[a("127.0.0.2")]),
            Some(Listing::Listed("127.0.0.2".into()))
        );
        assert_eq!(Listing::from_answers(&[a("127.255.255.254")]), None);
        assert_eq!(
            Listing::from_answers(&[a("192.0.2.1")]),
            Some(Listing::Clean)
        );
    }
}
