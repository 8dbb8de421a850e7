//! The watch on each local sender's outbound mail: delivered against permanently failed
//! recipients, and how many failures the bounce classifier calls spam or blocked, over a
//! sliding window (`[senders]`). A sender above the ratios is held: its queued mail is put on
//! hold, new mail from it gets `450 4.7.1`, an alert is raised; `backstop sender release`
//! lifts it, and its counts start afresh.
//!
//! Responsible for: the counts (store windows), the hold record (store), holding and releasing
//! the sender's queued messages. Not responsible for: delivering (delivery reports each final
//! outcome here), or refusing new mail (inbound asks [`Watch::held`]).

use crate::alert::Alerts;
use crate::config::Config;
use crate::queue::Spool;
use crate::store::{Store, StoreError, Window};
use backstop_proto::address::Mailbox;
use backstop_proto::bounce::reason::{Reason, classify};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How a recipient of a local sender ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Delivered.
    Delivered,
    /// Failed permanently; `blocked` when the remote server's words say spam, blocked or bad
    /// reputation.
    Failed {
        /// Classed spam or blocked.
        blocked: bool,
    },
}

impl Finished {
    /// A permanent failure, classed by the remote server's reply.
    pub fn failed(reply_code: Option<u16>, diagnostic: &str) -> Finished {
        let reason = classify(None, reply_code, diagnostic, None);
        Finished::Failed {
            blocked: matches!(
                reason,
                Reason::Blocked | Reason::SpamDetected | Reason::BadReputation
            ),
        }
    }
}

/// Why and since when a sender is held, and the messages that were held with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Why.
    pub why: String,
    /// Since (Unix seconds).
    pub since: u64,
    /// Queue ids held because of it.
    pub messages: Vec<String>,
}

/// The watch.
pub struct Watch {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    alerts: Arc<Alerts>,
}

fn hold_key(sender: &Mailbox) -> String {
    format!("senders:hold:{}", sender.key())
}

/// The list of held senders (for `backstop status`).
const HELD_LIST: &str = "senders:held";

/// Every held sender with its hold, for `backstop status`.
pub async fn held_senders(store: &dyn Store, now: u64) -> Result<Vec<(String, Hold)>, StoreError> {
    let mut out = Vec::new();
    for s in held_list(store, now).await? {
        let Ok(m) = Mailbox::parse(&s, true) else {
            continue;
        };
        if let Some(v) = store.get(&hold_key(&m), now).await?
            && let Ok(hold) = serde_json::from_str(&v)
        {
            out.push((s, hold));
        }
    }
    Ok(out)
}

async fn held_list(store: &dyn Store, now: u64) -> Result<Vec<String>, StoreError> {
    let v = store.get(HELD_LIST, now).await?;
    Ok(v.and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default())
}

async fn set_held(
    store: &dyn Store,
    sender: &Mailbox,
    held: bool,
    now: u64,
) -> Result<(), StoreError> {
    let mut list = held_list(store, now).await?;
    list.retain(|s| *s != sender.key());
    if held {
        list.push(sender.key());
    }
    let v = serde_json::to_string(&list).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.put(HELD_LIST, &v, None).await
}

fn epoch_key(sender: &Mailbox) -> String {
    format!("senders:epoch:{}", sender.key())
}

impl Watch {
    /// The watch for `cfg`.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        spool: Arc<Spool>,
        alerts: Arc<Alerts>,
    ) -> Watch {
        Watch {
            cfg,
            store,
            spool,
            alerts,
        }
    }

    /// Counts how one outbound recipient of `sender` ended; holds the sender when it goes
    /// over a ratio.
    pub async fn finished(
        &self,
        sender: &Mailbox,
        how: Finished,
        now: u64,
    ) -> Result<(), StoreError> {
        let s = &self.cfg.senders;
        // counts start afresh after a release (a new epoch), or the next outcome would hold
        // the sender again on the failures the operator has just looked at
        let epoch = self.store.get(&epoch_key(sender), now).await?;
        let epoch = epoch.as_deref().unwrap_or("0");
        let key = |what: &str| format!("senders:{}:{epoch}:{what}", sender.key());
        let (d, f, b) = (key("delivered"), key("failed"), key("blocked"));
        let (delivered, failed, blocked) = match how {
            Finished::Delivered => (
                self.bump(&d, now).await?,
                self.peek(&f, now).await?,
                self.peek(&b, now).await?,
            ),
            Finished::Failed { blocked } => (
                self.peek(&d, now).await?,
                self.bump(&f, now).await?,
                match blocked {
                    true => self.bump(&b, now).await?,
                    false => self.peek(&b, now).await?,
                },
            ),
        };
        let total = delivered + failed;
        if total < s.min_volume || self.held(sender, now).await?.is_some() {
            return Ok(());
        }
        let ratio = |n: u64| n as f64 / total as f64;
        let why = if ratio(failed) > s.hold_failed_ratio {
            format!(
                "{failed} of {total} recipients failed in the last {} (limit {:.0}%)",
                crate::config::format_duration(s.window),
                s.hold_failed_ratio * 100.0
            )
        } else if ratio(blocked) > s.hold_blocked_ratio {
            format!(
                "{blocked} of {total} recipients refused as spam or blocked in the last {} (limit {:.0}%)",
                crate::config::format_duration(s.window),
                s.hold_blocked_ratio * 100.0
            )
        } else {
            return Ok(());
        };
        self.hold(sender, &why, now).await.map(|_| ())
    }

    fn window<'k>(&self, key: &'k str) -> Window<'k> {
        Window {
            key,
            window: self.cfg.senders.window.as_secs(),
        }
    }

    async fn bump(&self, key: &str, now: u64) -> Result<u64, StoreError> {
        self.window(key).hit(self.store.as_ref(), now).await
    }

    async fn peek(&self, key: &str, now: u64) -> Result<u64, StoreError> {
        self.window(key).count(self.store.as_ref(), now).await
    }

    /// Holds `sender`: records why, holds its queued messages, raises an alert.
    pub async fn hold(&self, sender: &Mailbox, why: &str, now: u64) -> Result<Hold, StoreError> {
        let mut messages = Vec::new();
        let wanted = sender.to_string();
        let waiting = |m: &crate::queue::Summary| {
            !m.held
                && m.rcpts
                    .iter()
                    .any(|r| matches!(r.status, crate::queue::Status::Queued { .. }))
        };
        for m in self.spool.list().into_iter().filter(waiting) {
            if m.from
                .trim_matches(['<', '>'])
                .eq_ignore_ascii_case(&wanted)
                && matches!(self.spool.hold(&m.id, true).await, Ok(true))
            {
                messages.push(m.id);
            }
        }
        let hold = Hold {
            why: why.to_string(),
            since: now,
            messages,
        };
        let value = serde_json::to_string(&hold).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.store.put(&hold_key(sender), &value, None).await?;
        set_held(self.store.as_ref(), sender, true, now).await?;
        let detail = format!("{why}; {} queued message(s) held", hold.messages.len());
        self.alerts
            .raise("sender_held", &sender.to_string(), &detail, now);
        Ok(hold)
    }

    /// Whether `sender` is held, and why.
    pub async fn held(&self, sender: &Mailbox, now: u64) -> Result<Option<Hold>, StoreError> {
        let Some(v) = self.store.get(&hold_key(sender), now).await? else {
            return Ok(None);
        };
        serde_json::from_str(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: hold_key(sender),
                message: e.to_string(),
            })
    }

    /// Lifts a hold: new mail is taken again and the messages held with it are released.
    /// `None` when the sender was not held.
    pub async fn release(&self, sender: &Mailbox, now: u64) -> Result<Option<usize>, StoreError> {
        let Some(hold) = self.held(sender, now).await? else {
            return Ok(None);
        };
        self.store.put(&hold_key(sender), "", Some(now)).await?;
        set_held(self.store.as_ref(), sender, false, now).await?;
        let epoch = self.store.get(&epoch_key(sender), now).await?;
        let next = epoch.and_then(|e| e.parse::<u64>().ok()).unwrap_or(0) + 1;
        self.store
            .put(&epoch_key(sender), &next.to_string(), None)
            .await?;
        let mut released = 0;
        for id in &hold.messages {
            if matches!(self.spool.hold(id, false).await, Ok(true)) {
                released += 1;
            }
        }
        let detail = format!("released by the operator; {released} message(s) released");
        self.alerts
            .raise("sender_released", &sender.to_string(), &detail, now);
        Ok(Some(released))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::NewMessage;
    use backstop_proto::address::ReversePath;

    const NOW: u64 = 1_795_392_000;

    async fn watch(extra: &str) -> (tempfile::TempDir, Watch, Arc<Spool>) {
        let (d, cfg, store) = crate::test_support::for_tests(extra);
        let spool = Spool::open(&d.path().join("q")).unwrap();
        let alerts = Arc::new(Alerts::new(cfg.clone(), store.clone()));
        let w = Watch::new(cfg, store, spool.clone(), alerts);
        (d, w, spool)
    }

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s, false).unwrap()
    }

    #[tokio::test]
    async fn failures_over_the_ratio_hold_the_sender_and_its_queued_mail() {
        let (_d, w, spool) = watch("[senders]\nmin_volume = 4\nhold_failed_ratio = 0.5\n").await;
        let alice = mb("alice@example.test");
        spool
            .enqueue(NewMessage {
                id: "Q1".into(),
                arrived: NOW,
                from: ReversePath::Mailbox(alice.clone()),
                params: Default::default(),
                rcpts: vec![(mb("x@far.test"), Default::default())],
                data: vec![b"Subject: x\r\n\r\nx\r\n".to_vec()],
                rest: None,
                trust: Default::default(),
            })
            .await
            .unwrap();
        let failed = Finished::Failed { blocked: false };
        for how in [Finished::Delivered, Finished::Delivered, failed] {
            w.finished(&alice, how, NOW).await.unwrap();
        }
        assert_eq!(w.held(&alice, NOW).await.unwrap(), None, "below min_volume");
        w.finished(&alice, failed, NOW).await.unwrap();
        assert_eq!(
            w.held(&alice, NOW).await.unwrap(),
            None,
            "2 of 4 is not above 50%"
        );
        w.finished(&alice, failed, NOW).await.unwrap();
        let hold = w.held(&alice, NOW).await.unwrap().expect("held");
        assert_eq!(
            hold.why,
            "3 of 5 recipients failed in the last 1h (limit 50%)"
        );
        assert_eq!(hold.messages, ["Q1"]);
        assert!(spool.show("Q1").unwrap().held);
        // another sender is not touched; release lifts the hold and the message
        assert_eq!(w.held(&mb("bob@example.test"), NOW).await.unwrap(), None);
        assert_eq!(w.release(&alice, NOW).await.unwrap(), Some(1));
        assert!(!spool.show("Q1").unwrap().held);
        assert_eq!(w.held(&alice, NOW).await.unwrap(), None);
        assert_eq!(w.release(&alice, NOW).await.unwrap(), None);
        // counted afresh after the release: one more failure does not hold again
        w.finished(&alice, failed, NOW).await.unwrap();
        assert_eq!(w.held(&alice, NOW).await.unwrap(), None);
    }

    #[tokio::test]
    async fn refusals_as_spam_or_blocked_hold_at_their_own_ratio() {
        let (_d, w, _spool) = watch("[senders]\nmin_volume = 5\nhold_blocked_ratio = 0.2\n").await;
        let alice = mb("alice@example.test");
        let blocked = Finished::failed(
            Some(554),
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        );
        assert_eq!(blocked, Finished::Failed { blocked: true });
        assert_eq!(
            Finished::failed(Some(550), "550 5.1.1 <x@far.test>: User unknown"),
            Finished::Failed { blocked: false }
        );
        for _ in 0..8 {
            w.finished(&alice, Finished::Delivered, NOW).await.unwrap();
        }
        w.finished(&alice, blocked, NOW).await.unwrap();
        assert_eq!(w.held(&alice, NOW).await.unwrap(), None, "1 of 9");
        w.finished(&alice, blocked, NOW).await.unwrap();
        assert_eq!(
            w.held(&alice, NOW).await.unwrap(),
            None,
            "2 of 10 is not above 20%"
        );
        w.finished(&alice, blocked, NOW).await.unwrap();
        let hold = w.held(&alice, NOW).await.unwrap().expect("held");
        assert!(
            hold.why
                .starts_with("3 of 11 recipients refused as spam or blocked"),
            "{}",
            hold.why
        );
    }
}
