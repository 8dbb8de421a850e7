//! The embedded store: one redb file, `state_dir/backstop.redb`.
//!
//! Reads run inline (a redb read transaction costs microseconds); writes commit durably on the
//! blocking pool so an fsync never stalls a session's task.

use super::{CacheEntry, Store, StoreError};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("callout_cache");
/// Claim key -> expiry (unix seconds).
const CLAIMS: TableDefinition<&str, u64> = TableDefinition::new("claims");
/// Counter key -> (value, expiry).
const COUNTERS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("counters");
/// Value key -> (value, expiry; `u64::MAX`: none).
const VALUES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("values");

/// The embedded backend.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file. Fails if another process has it open.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                "{} is in use by another process (is a backstop already running with this state_dir?)",
                path.display()
            )),
            e => StoreError::Backend(format!("{}: {}", path.display(), redb::Error::from(e))),
        })?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(CACHE).map_err(backend)?;
        tx.open_table(CLAIMS).map_err(backend)?;
        tx.open_table(COUNTERS).map_err(backend)?;
        tx.open_table(VALUES).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(backend)?;
            let out = f(&tx).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn cache_get(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(CACHE).map_err(backend)?;
        let Some(v) = table.get(key).map_err(backend)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    async fn cache_put(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError> {
        let key = key.to_string();
        let value = serde_json::to_vec(entry).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.write(move |tx| {
            tx.open_table(CACHE)?
                .insert(key.as_str(), value.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn cache_keys(
        &self,
        prefix: &str,
        suffix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(CACHE).map_err(backend)?;
        let mut keys = Vec::new();
        for item in table.range(prefix..).map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            let k = k.value();
            if !k.starts_with(prefix) || keys.len() >= max {
                break;
            }
            if k.ends_with(suffix) {
                keys.push(k.to_string());
            }
        }
        Ok(keys)
    }

    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError> {
        self.write(move |tx| {
            let mut table = tx.open_table(CACHE)?;
            let mut n = 0;
            table.retain(|_, v| {
                let keep =
                    serde_json::from_slice::<CacheEntry>(v).is_ok_and(|e| !e.is_expired(now));
                n += usize::from(!keep);
                keep
            })?;
            let mut claims = tx.open_table(CLAIMS)?;
            claims.retain(|_, expire| {
                n += usize::from(expire <= now);
                expire > now
            })?;
            let mut counters = tx.open_table(COUNTERS)?;
            counters.retain(|_, (_, expire)| {
                n += usize::from(expire <= now);
                expire > now
            })?;
            let mut values = tx.open_table(VALUES)?;
            values.retain(|_, (_, expire)| {
                n += usize::from(expire <= now);
                expire > now
            })?;
            Ok(n)
        })
        .await
    }

    async fn claim(&self, key: &str, expire_at: u64) -> Result<bool, StoreError> {
        let key = key.to_string();
        // one writer at a time (redb serialises write transactions): check and set are atomic
        self.write(move |tx| {
            let mut t = tx.open_table(CLAIMS)?;
            if t.get(key.as_str())?.is_some() {
                return Ok(false);
            }
            t.insert(key.as_str(), expire_at)?;
            Ok(true)
        })
        .await
    }

    async fn unclaim(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |tx| {
            tx.open_table(CLAIMS)?.remove(key.as_str())?;
            Ok(())
        })
        .await
    }

    async fn add(&self, key: &str, n: u64, expire_at: u64, now: u64) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.write(move |tx| {
            let mut t = tx.open_table(COUNTERS)?;
            let (old, expire): (u64, u64) = match t.get(key.as_str())?.map(|v| v.value()) {
                Some((v, e)) if e > now => (v, e),
                Some(_) | None => (0, expire_at),
            };
            let new = old.saturating_add(n);
            t.insert(key.as_str(), (new, expire))?;
            Ok(new)
        })
        .await
    }

    async fn put(&self, key: &str, value: &str, expire_at: Option<u64>) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        let expire = expire_at.unwrap_or(u64::MAX);
        self.write(move |tx| {
            tx.open_table(VALUES)?
                .insert(key.as_str(), (value.as_str(), expire))?;
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &str, now: u64) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(VALUES).map_err(backend)?;
        let v = t.get(key).map_err(backend)?;
        Ok(v.and_then(|v| {
            let (value, expire) = v.value();
            (expire > now).then(|| value.to_string())
        }))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        expire_at: Option<u64>,
        now: u64,
    ) -> Result<String, StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        let expire = expire_at.unwrap_or(u64::MAX);
        // one writer at a time: the read and the insert are atomic
        self.write(move |tx| {
            let mut t = tx.open_table(VALUES)?;
            let held = t.get(key.as_str())?.and_then(|v| {
                let (value, expire) = v.value();
                (expire > now).then(|| value.to_string())
            });
            if let Some(held) = held {
                return Ok(held);
            }
            t.insert(key.as_str(), (value.as_str(), expire))?;
            Ok(value)
        })
        .await
    }

    async fn count(&self, key: &str, now: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(COUNTERS).map_err(backend)?;
        Ok(match t.get(key).map_err(backend)?.map(|v| v.value()) {
            Some((v, e)) if e > now => v,
            Some(_) | None => 0,
        })
    }
}
