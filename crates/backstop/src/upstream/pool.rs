//! Kept-alive connections to one internal server, with a cap on how many are open at once.

use super::{Connection, UpstreamError};
use crate::config::HostPort;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an idle connection is kept; internal servers drop idle clients after a few minutes
/// (Postfix: 300 s), so stay well below.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// A pool of connections to one server.
#[derive(Debug)]
pub struct Pool {
    target: HostPort,
    helo: String,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from a pool; holds one of the pool's permits until dropped.
#[derive(Debug)]
pub struct Pooled {
    /// The connection.
    pub conn: Connection,
    /// True when it had been used before (a failure on it may just mean the server closed it).
    pub reused: bool,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `max` connections to `target`.
    pub fn new(target: HostPort, helo: &str, timeout: Duration, max: usize) -> Pool {
        Pool {
            target,
            helo: helo.to_string(),
            timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// The server.
    pub fn target(&self) -> &HostPort {
        &self.target
    }

    /// An idle connection, or a new one when `fresh` or none is idle. Waits for a permit.
    pub async fn get(&self, fresh: bool) -> Result<Pooled, UpstreamError> {
        let permit =
            match tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    return Err(UpstreamError::Timeout(format!(
                        "{} (all connections busy)",
                        self.target
                    )));
                }
            };
        if !fresh && let Some(conn) = self.take_idle() {
            return Ok(Pooled {
                conn,
                reused: true,
                _permit: permit,
            });
        }
        let conn = Connection::open(&self.target, &self.helo, self.timeout).await?;
        Ok(Pooled {
            conn,
            reused: false,
            _permit: permit,
        })
    }

    /// Returns a connection that is between transactions and fit for another.
    pub fn put(&self, p: Pooled) {
        let mut conn = p.conn;
        conn.idle_since = Instant::now();
        self.lock().push(conn);
    }

    /// The most recently used idle connection; those idle too long are closed politely.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.lock();
        let (fresh, stale): (Vec<_>, Vec<_>) = idle
            .drain(..)
            .partition(|c| c.idle_since.elapsed() < MAX_IDLE);
        *idle = fresh;
        for c in stale {
            tokio::spawn(c.quit());
        }
        idle.pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One pool per server, made on first use.
#[derive(Debug)]
pub struct Pools {
    helo: String,
    timeout: Duration,
    max: usize,
    pools: Mutex<HashMap<HostPort, Arc<Pool>>>,
}

impl Pools {
    /// Pools whose connections greet with `helo`, wait `timeout` for any reply, and number at
    /// most `max` per server.
    pub fn new(helo: &str, timeout: Duration, max: usize) -> Pools {
        Pools {
            helo: helo.to_string(),
            timeout,
            max,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `target`.
    pub fn get(&self, target: &HostPort) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(Pool::new(
                    target.clone(),
                    &self.helo,
                    self.timeout,
                    self.max,
                ))
            })
            .clone()
    }
}
