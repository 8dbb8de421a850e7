//! Limits on mail that leaves: messages and recipients per sender address, per sender domain
//! and per client IP, per hour and per day (`[outbound]`).
//!
//! Responsible for: counting outbound messages and recipients in sliding windows in the store
//! (so the limits hold across sessions, restarts and, with a shared store, nodes) and saying
//! which limit a client went over. Not responsible for: which mail is outbound (inbound
//! decides: recipients of other domains from relay networks), or the reply.

use crate::config::{Config, RateLimits};
use crate::store::{Store, StoreError, Window};
use backstop_proto::address::ReversePath;
use std::net::IpAddr;
use std::sync::Arc;

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// A message (counted at its first outbound recipient).
    Message,
    /// A recipient.
    Rcpt,
}

/// The outbound limits.
pub struct Limiter {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
}

const PERIODS: [(&str, u64); 2] = [("hour", 3600), ("day", 86_400)];

impl Limiter {
    /// Limits for `cfg`, counted in `store`.
    pub fn new(cfg: Arc<Config>, store: Arc<dyn Store>) -> Limiter {
        Limiter { cfg, store }
    }

    /// Counts one message or recipient of `from` sent by `ip` at `now`; the first limit it
    /// went over, described (`sender a@b.test: 201 messages in the last hour, limit 200`). The null sender counts only against the client IP.
    pub async fn hit(
        &self,
        what: Counted,
        from: &ReversePath,
        ip: IpAddr,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let o = &self.cfg.outbound;
        let mut scopes: Vec<(&str, String, &RateLimits)> = Vec::new();
        if let ReversePath::Mailbox(m) = from {
            scopes.push(("sender", m.key(), &o.sender));
            scopes.push(("sender_domain", m.domain().to_string(), &o.sender_domain));
        }
        scopes.push(("client_ip", ip.to_string(), &o.client_ip));
        for (scope, subject, limits) in scopes {
            for (period, secs) in PERIODS {
                let limit = limit_of(limits, what, period);
                if limit == 0 {
                    continue;
                }
                let key = format!("out:{}:{scope}:{period}:{subject}", noun(what));
                let w = Window {
                    key: &key,
                    window: secs,
                };
                let n = w.hit(self.store.as_ref(), now).await?;
                if n > limit {
                    return Ok(Some(format!(
                        "{scope} {subject}: {n} {} in the last {period}, limit {limit}",
                        noun(what)
                    )));
                }
            }
        }
        Ok(None)
    }
}

fn noun(what: Counted) -> &'static str {
    match what {
        Counted::Message => "messages",
        Counted::Rcpt => "recipients",
    }
}

fn limit_of(l: &RateLimits, what: Counted, period: &str) -> u64 {
    match (what, period) {
        (Counted::Message, "hour") => l.messages_per_hour,
        (Counted::Message, _) => l.messages_per_day,
        (Counted::Rcpt, "hour") => l.rcpts_per_hour,
        (Counted::Rcpt, _) => l.rcpts_per_day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_proto::address::Mailbox;

    fn limiter(extra: &str) -> (tempfile::TempDir, Limiter) {
        let (d, cfg, store) = crate::test_support::for_tests(extra);
        (d, Limiter::new(cfg, store))
    }

    fn from(s: &str) -> ReversePath {
        ReversePath::Mailbox(Mailbox::parse(s, false).unwrap())
    }

    const NOW: u64 = 1_795_392_000;

    #[tokio::test]
    async fn each_scope_counts_on_its_own() {
        let (_d, l) = limiter(
            "[outbound]\nsender = { messages_per_hour = 2 }\nsender_domain = { rcpts_per_day = 5 }\n",
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (a, b) = (from("Alice@example.test"), from("bob@example.test"));
        for _ in 0..2 {
            assert_eq!(l.hit(Counted::Message, &a, ip, NOW).await.unwrap(), None);
        }
        assert_eq!(
            l.hit(Counted::Message, &a, ip, NOW)
                .await
                .unwrap()
                .as_deref(),
            Some("sender alice@example.test: 3 messages in the last hour, limit 2")
        );
        // another sender of the domain is not limited by alice's messages...
        assert_eq!(l.hit(Counted::Message, &b, ip, NOW).await.unwrap(), None);
        // ...but shares the domain's recipients
        for _ in 0..5 {
            assert_eq!(l.hit(Counted::Rcpt, &b, ip, NOW).await.unwrap(), None);
        }
        assert!(
            l.hit(Counted::Rcpt, &a, ip, NOW)
                .await
                .unwrap()
                .unwrap()
                .starts_with("sender_domain example.test: 6 recipients in the last day")
        );
        // the null sender counts only against the client IP (no limit set here)
        for _ in 0..10 {
            let r = l.hit(Counted::Message, &ReversePath::Null, ip, NOW).await;
            assert_eq!(r.unwrap(), None);
        }
        // an hour later alice may send again
        assert_eq!(
            l.hit(Counted::Message, &a, ip, NOW + 7200).await.unwrap(),
            None
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = Config::from_toml(
            "hostname = \"h.test\"\nstate_dir = \"v\"\n[outbound]\nsender = { messages_per_minute = 1 }\n",
            d.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("messages_per_minute"), "{e}");
    }
}
