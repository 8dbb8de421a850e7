//! Kept-alive connections, with a cap on how many are open at once: [`Slots`] for any
//! destination (queue delivery keys them by next hop or MX domain), [`Pool`] for one internal
//! server reached by `HOST:PORT` (call-outs and in-session relay).

use super::{Connection, UpstreamError};
use crate::config::HostPort;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an idle connection is kept; internal servers drop idle clients after a few minutes
/// (Postfix: 300 s), so stay well below.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// Idle connections kept for reuse, and the permits that cap how many are open at once.
#[derive(Debug)]
pub struct Slots {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    max_idle: Duration,
}

impl Slots {
    /// At most `max` connections; idle ones are closed after `max_idle`.
    pub fn new(max: usize, max_idle: Duration) -> Slots {
        Slots {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            max_idle,
        }
    }

    /// Waits for a permit to hold a connection (open or taken from the idle ones).
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// The most recently used idle connection; those idle too long are closed politely.
    pub fn take_idle(&self) -> Option<Connection> {
        self.close_stale();
        self.lock().pop()
    }

    /// Keeps a connection that is between transactions and fit for another.
    pub fn put(&self, mut conn: Connection) {
        conn.idle_since = Instant::now();
        self.lock().push(conn);
    }

    /// Closes (with QUIT) the connections idle for too long.
    pub fn close_stale(&self) {
        let stale: Vec<Connection> = {
            let mut idle = self.lock();
            let (fresh, stale) = idle
                .drain(..)
                .partition(|c| c.idle_since.elapsed() < self.max_idle);
            *idle = fresh;
            stale
        };
        for c in stale {
            tokio::spawn(c.quit());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pool of connections to one server.
#[derive(Debug)]
pub struct Pool {
    target: HostPort,
    helo: String,
    timeout: Duration,
    slots: Slots,
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
            slots: Slots::new(max, MAX_IDLE),
        }
    }

    /// The server.
    pub fn target(&self) -> &HostPort {
        &self.target
    }

    /// An idle connection, or a new one when `fresh` or none is idle. Waits for a permit.
    pub async fn get(&self, fresh: bool) -> Result<Pooled, UpstreamError> {
        let permit = match tokio::time::timeout(self.timeout, self.slots.permit()).await {
            Ok(p) => p,
            Err(_) => {
                return Err(UpstreamError::Timeout(format!(
                    "{} (all connections busy)",
                    self.target
                )));
            }
        };
        if !fresh && let Some(conn) = self.slots.take_idle() {
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

    /// Returns a connection that is between transactions and fit for another; one that has
    /// collected [`super::MAX_REFUSALS`] refusals is closed instead.
    pub fn put(&self, p: Pooled) {
        if p.conn.refusals < super::MAX_REFUSALS {
            self.slots.put(p.conn);
        }
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
