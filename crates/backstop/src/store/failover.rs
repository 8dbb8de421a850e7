//! Degraded mode for a shared store: when Redis cannot be reached, each operation falls back to
//! something safe on this node, and the node goes back to the shared store by itself once it
//! answers again (no restart).
//!
//! What each kind of operation does while the shared store is unreachable:
//! - call-out cache reads: the answers this node has read or written lately (kept in memory),
//!   and no new probes ([`Store::degraded`] tells the verifier): a known address is answered as
//!   before, an unknown one gets `451` (the same rule as an internal server that is down);
//! - claims (one report per message): an error, so reports wait rather than risk a duplicate;
//! - counters, values, `put_if_absent` (rates, budgets, blocks, holds, the sent log): the
//!   node's own embedded store, so limits keep working per node;
//! - purges: both.
//!
//! What was written locally during an outage stays on this node (counters start afresh on the
//! shared store). Responsible for: the choice above, noticing outages and recoveries (one call
//! of the hook for each). Not responsible for: raising the alert (the hook does) or talking to
//! Redis (the primary store).

use super::{CacheEntry, Store, StoreError};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After a failure, how long operations go straight to the fallback before the shared store is
/// tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// What is read to find out whether the shared store answers again.
const PROBE_KEY: &str = "failover:probe";
/// Call-out answers remembered for an outage.
const REMEMBERED: usize = 200_000;

/// Called once when the shared store becomes unreachable (`true`, with the error) and once when
/// it answers again (`false`).
pub type Hook = Arc<dyn Fn(bool, &str) + Send + Sync>;

#[derive(Default)]
struct Health {
    degraded: bool,
    retry_at: Option<Instant>,
}

/// A shared store with a node-local fallback.
pub struct Failover {
    primary: Arc<dyn Store>,
    local: Arc<dyn Store>,
    seen: Mutex<Seen>,
    health: Mutex<Health>,
    hook: Hook,
}

#[derive(Default)]
struct Seen {
    entries: HashMap<String, CacheEntry>,
    order: VecDeque<String>,
}

impl Seen {
    fn remember(&mut self, key: &str, e: &CacheEntry) {
        if self.entries.insert(key.to_string(), e.clone()).is_none() {
            self.order.push_back(key.to_string());
            if self.order.len() > REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.entries.remove(&old);
            }
        }
    }
}

impl Failover {
    /// `primary` (shared) with `local` (this node's) behind it; `hook` hears of outages.
    pub fn new(primary: Arc<dyn Store>, local: Arc<dyn Store>, hook: Hook) -> Failover {
        Failover {
            primary,
            local,
            seen: Mutex::default(),
            health: Mutex::default(),
            hook,
        }
    }

    /// Whether the shared store should be asked now: up, or down but time to try it again
    /// (then a harmless read goes first, so that the operation itself, a claim say, runs on a
    /// connection that works again rather than be the one that finds out it does not).
    async fn try_primary(&self) -> bool {
        let (degraded, due) = {
            let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            (h.degraded, h.retry_at.is_none_or(|t| Instant::now() >= t))
        };
        match (degraded, due) {
            (false, _) => true,
            (true, false) => false,
            (true, true) => match self.primary.get(PROBE_KEY, 0).await {
                Ok(_) => true,
                Err(e) => {
                    self.down(&e);
                    false
                }
            },
        }
    }

    fn up(&self) {
        let was = {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *h).degraded
        };
        if was {
            (self.hook)(false, "the shared store answers again");
        }
    }

    fn down(&self, e: &StoreError) {
        let was = {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            h.retry_at = Some(Instant::now() + RETRY_AFTER);
            std::mem::replace(&mut h.degraded, true)
        };
        if !was {
            (self.hook)(true, &e.to_string());
        }
    }

    /// The primary's answer, noting up or down; `None` when it was not asked or failed.
    async fn ask<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        if !self.try_primary().await {
            return None;
        }
        match f.await {
            Ok(v) => {
                self.up();
                Some(Ok(v))
            }
            Err(e) => {
                self.down(&e);
                Some(Err(e))
            }
        }
    }

    /// The shared store's answer, or (when it is away) this node's. Neither future runs until
    /// it is chosen.
    async fn or_local<T>(
        &self,
        shared: impl std::future::Future<Output = Result<T, StoreError>>,
        local: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.ask(shared).await {
            Some(Ok(v)) => Ok(v),
            Some(Err(_)) | None => local.await,
        }
    }

    fn remember(&self, key: &str, e: &CacheEntry) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(key, e);
    }

    fn unreachable() -> StoreError {
        StoreError::Backend("the shared store is unreachable; waiting for it".into())
    }
}

#[async_trait]
impl Store for Failover {
    async fn cache_get(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        if let Some(Ok(v)) = self.ask(self.primary.cache_get(key)).await {
            if let Some(e) = &v {
                self.remember(key, e);
            }
            return Ok(v);
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok(seen.entries.get(key).cloned())
    }

    async fn cache_put(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError> {
        // remembered either way; while the shared store is away only this node knows it
        self.remember(key, entry);
        let _ = self.ask(self.primary.cache_put(key, entry)).await;
        Ok(())
    }

    async fn cache_keys(
        &self,
        prefix: &str,
        suffix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        if let Some(Ok(keys)) = self.ask(self.primary.cache_keys(prefix, suffix, max)).await {
            return Ok(keys);
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let keys = seen.entries.keys();
        Ok(keys
            .filter(|k| k.starts_with(prefix) && k.ends_with(suffix))
            .take(max)
            .cloned()
            .collect())
    }

    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError> {
        let local = self.local.purge_expired(now).await?;
        let shared = match self.ask(self.primary.purge_expired(now)).await {
            Some(Ok(n)) => n,
            Some(Err(_)) | None => 0,
        };
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .retain(|_, e| !e.is_expired(now));
        Ok(local + shared)
    }

    async fn claim(&self, key: &str, expire_at: u64) -> Result<bool, StoreError> {
        self.ask(self.primary.claim(key, expire_at))
            .await
            .unwrap_or_else(|| Err(Failover::unreachable()))
    }

    async fn unclaim(&self, key: &str) -> Result<(), StoreError> {
        self.ask(self.primary.unclaim(key))
            .await
            .unwrap_or_else(|| Err(Failover::unreachable()))
    }

    async fn add(&self, key: &str, n: u64, expire_at: u64, now: u64) -> Result<u64, StoreError> {
        let (shared, local) = (&self.primary, &self.local);
        self.or_local(
            shared.add(key, n, expire_at, now),
            local.add(key, n, expire_at, now),
        )
        .await
    }

    async fn count(&self, key: &str, now: u64) -> Result<u64, StoreError> {
        let (shared, local) = (&self.primary, &self.local);
        self.or_local(shared.count(key, now), local.count(key, now))
            .await
    }

    async fn put(&self, key: &str, value: &str, expire_at: Option<u64>) -> Result<(), StoreError> {
        let (shared, local) = (&self.primary, &self.local);
        self.or_local(
            shared.put(key, value, expire_at),
            local.put(key, value, expire_at),
        )
        .await
    }

    async fn get(&self, key: &str, now: u64) -> Result<Option<String>, StoreError> {
        let (shared, local) = (&self.primary, &self.local);
        self.or_local(shared.get(key, now), local.get(key, now))
            .await
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        expire_at: Option<u64>,
        now: u64,
    ) -> Result<String, StoreError> {
        let (shared, local) = (&self.primary, &self.local);
        self.or_local(
            shared.put_if_absent(key, value, expire_at, now),
            local.put_if_absent(key, value, expire_at, now),
        )
        .await
    }

    fn degraded(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .degraded
    }
}
