//! Shared state behind one trait: the call-out cache, claims (idempotency keys), counters and
//! values with an expiry (the sent log, BATV keys).
//!
//! Responsible for: the [`Store`] trait, its value types, and the embedded backend
//! ([`embedded::EmbeddedStore`], one redb file in `state_dir`, nothing to run).
//! Not responsible for: what the entries mean (policy decides freshness and trust), nor for the
//! spool of accepted messages (per node, not here).

pub mod embedded;
pub mod failover;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a call-out answered, as cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheVerdict {
    /// The internal server accepted the address.
    Valid,
    /// The internal server refused the address permanently.
    Invalid,
    /// (Domain entries) the internal server accepts any address: it is a catch-all.
    CatchAll,
    /// (Domain entries) the internal server refused a random address: not a catch-all.
    NotCatchAll,
}

impl CacheVerdict {
    /// `valid`, `invalid`, `catch-all`, `not-catch-all`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheVerdict::Valid => "valid",
            CacheVerdict::Invalid => "invalid",
            CacheVerdict::CatchAll => "catch-all",
            CacheVerdict::NotCatchAll => "not-catch-all",
        }
    }
}

/// One cached call-out answer with its times, in seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The answer.
    pub verdict: CacheVerdict,
    /// When the probe ran.
    pub checked_at: u64,
    /// From then on the entry is served but re-checked in the background.
    pub refresh_at: u64,
    /// From then on the entry is ignored.
    pub expire_at: u64,
    /// The internal server's reply, for the operator (never shown to clients).
    pub detail: String,
}

impl CacheEntry {
    /// True before `refresh_at`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.refresh_at
    }

    /// True from `expire_at` on.
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expire_at
    }
}

/// A store operation failed; callers turn this into a temporary failure, never an accept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored value could not be decoded.
    #[error("store value for {key}: {message}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
}

/// Shared state. Every backend passes the same conformance tests
/// (`tests/store_conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cached call-out answer (expired ones included; the caller checks the times).
    async fn cache_get(&self, key: &str) -> Result<Option<CacheEntry>, StoreError>;
    /// Stores a call-out answer, replacing any earlier one.
    async fn cache_put(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError>;
    /// The keys of call-out answers that start with `prefix` and end with `suffix` (expired
    /// ones included), in no particular order, at most `max` (for `backstop cache` on a
    /// domain: a scan of the whole cache, not for the SMTP path).
    async fn cache_keys(
        &self,
        prefix: &str,
        suffix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Deletes entries (cache, claims, counters) expired at `now`; returns how many.
    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError>;
    /// Claims `key` until `expire_at` (unix seconds): true when this call made the claim, false
    /// when it was already claimed. Atomic: of racing callers (tasks, nodes) exactly one wins.
    /// An expired claim is freed by [`Store::purge_expired`]; where it must end exactly at
    /// its time, use [`claim_until`].
    async fn claim(&self, key: &str, expire_at: u64) -> Result<bool, StoreError>;
    /// Gives up a claim (the work it guarded could not be done and may be tried again).
    async fn unclaim(&self, key: &str) -> Result<(), StoreError>;
    /// Adds `n` to the counter `key` (created, or restarted when expired, with expiry
    /// `expire_at`) and returns its new value. Atomic.
    async fn add(&self, key: &str, n: u64, expire_at: u64, now: u64) -> Result<u64, StoreError>;
    /// A counter's value (0 when missing or expired at `now`).
    async fn count(&self, key: &str, now: u64) -> Result<u64, StoreError>;
    /// Stores a value (the sent log, BATV keys, when a feature was turned on) until
    /// `expire_at` (unix seconds; `None`: kept until replaced), replacing any earlier one.
    async fn put(&self, key: &str, value: &str, expire_at: Option<u64>) -> Result<(), StoreError>;
    /// A value (`None` when missing or expired at `now`).
    async fn get(&self, key: &str, now: u64) -> Result<Option<String>, StoreError>;
    /// Stores `value` unless the key already holds one (expired ones do not count at `now`);
    /// returns the value the key holds afterwards. Atomic: racing callers all get the same one.
    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        expire_at: Option<u64>,
        now: u64,
    ) -> Result<String, StoreError>;
    /// True while a shared store is unreachable and operations fall back to this node
    /// ([`failover::Failover`]); callers then make no new call-out probes.
    fn degraded(&self) -> bool {
        false
    }
}

/// Claims `key` until `until` (Unix seconds), judged at `now`: true for the one caller that
/// made the claim, false while it holds. Unlike [`Store::claim`], a claim that has expired can
/// be made again at once (not only after a purge). Atomic across tasks and nodes.
pub async fn claim_until(
    store: &dyn Store,
    key: &str,
    until: u64,
    now: u64,
) -> Result<bool, StoreError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // a token no other caller can hold
    let mine = format!(
        "{now}.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    Ok(store.put_if_absent(key, &mine, Some(until), now).await? == mine)
}

/// A counter over a sliding window of `window` seconds, kept as two fixed buckets (the
/// current one and the one before, weighted by how much of it still lies in the window), so
/// it costs two keys however busy it is.
pub struct Window<'a> {
    /// Key prefix; the bucket number is appended.
    pub key: &'a str,
    /// Window length in seconds (> 0).
    pub window: u64,
}

impl Window<'_> {
    /// Counts one event at `now` and returns the estimated number of events in the window that
    /// ends at `now` (this one included).
    pub async fn hit(&self, store: &dyn Store, now: u64) -> Result<u64, StoreError> {
        let w = self.window.max(1);
        let bucket = now / w;
        let expire = (bucket + 2) * w;
        let cur = store
            .add(&format!("{}:{bucket}", self.key), 1, expire, now)
            .await?;
        Ok(cur + self.previous(store, now).await?)
    }

    /// The estimated number of events in the window that ends at `now`, counting nothing.
    pub async fn count(&self, store: &dyn Store, now: u64) -> Result<u64, StoreError> {
        let bucket = now / self.window.max(1);
        let cur = store.count(&format!("{}:{bucket}", self.key), now).await?;
        Ok(cur + self.previous(store, now).await?)
    }

    /// The share of the previous bucket still inside the window that ends at `now`.
    async fn previous(&self, store: &dyn Store, now: u64) -> Result<u64, StoreError> {
        let w = self.window.max(1);
        let prev = match (now / w).checked_sub(1) {
            Some(b) => store.count(&format!("{}:{b}", self.key), now).await?,
            None => 0,
        };
        let left = w - (now % w);
        Ok((prev * left).div_ceil(w))
    }
}

/// Counters per UTC day (`stats:FAMILY:DAY:LABEL`), kept for a week: what `backstop bounce
/// stats` and `backstop status` show.
pub mod daily {
    use super::{Store, StoreError};

    const DAY: u64 = 86_400;
    /// Days a day's counts are kept.
    const KEEP_DAYS: u64 = 8;

    fn key(family: &str, day: u64, label: &str) -> String {
        format!("stats:{family}:{day}:{label}")
    }

    /// Adds `n` to `label` of `family` for the day of `now`.
    pub async fn add(
        store: &dyn Store,
        family: &str,
        label: &str,
        n: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let day = now / DAY;
        store
            .add(&key(family, day, label), n, (day + KEEP_DAYS) * DAY, now)
            .await
            .map(|_| ())
    }

    /// Adds one to each of `labels` of `family` for the day of `now`.
    pub async fn count(
        store: &dyn Store,
        family: &str,
        labels: &[&str],
        now: u64,
    ) -> Result<(), StoreError> {
        let day = now / DAY;
        for label in labels {
            store
                .add(&key(family, day, label), 1, (day + KEEP_DAYS) * DAY, now)
                .await?;
        }
        Ok(())
    }

    /// The counts of `labels` of `family` for the day of `now`, in order (zeros included).
    pub async fn today<'l>(
        store: &dyn Store,
        family: &str,
        labels: &[&'l str],
        now: u64,
    ) -> Result<Vec<(&'l str, u64)>, StoreError> {
        let day = now / DAY;
        let mut out = Vec::with_capacity(labels.len());
        for &label in labels {
            out.push((label, store.count(&key(family, day, label), now).await?));
        }
        Ok(out)
    }
}
