//! Shared state behind one trait: the call-out cache today; counters, idempotency keys, the sent
//! log and BATV keys as later features need them.
//!
//! Responsible for: the [`Store`] trait, its value types, and the embedded backend
//! ([`embedded::EmbeddedStore`], one redb file in `state_dir`, nothing to run).
//! Not responsible for: what the entries mean (policy decides freshness and trust), nor for the
//! spool of accepted messages (per node, not here).

pub mod embedded;

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

/// Shared state. Every backend passes the same conformance tests (`tests/store.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cached call-out answer (expired ones included; the caller checks the times).
    async fn cache_get(&self, key: &str) -> Result<Option<CacheEntry>, StoreError>;
    /// Stores a call-out answer, replacing any earlier one.
    async fn cache_put(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError>;
    /// Deletes entries expired at `now`; returns how many.
    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError>;
}
