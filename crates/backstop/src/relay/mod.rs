//! Handing accepted mail on: in-session SMTP relay to an internal server, and local Maildir
//! delivery.
//!
//! Responsible for: the next hop's transaction while the client's is open (so the client's
//! answer is the next hop's answer), mapping every next-hop refusal to our own fixed reply
//! texts, and atomic, fsync'd Maildir delivery.
//! Not responsible for: choosing the next hop (policy) or SMTP sequencing with the client
//! (the session). Shared by the inbound side today and queue delivery later.

pub mod maildir;
pub mod smtp;

use crate::config::HostPort;
use crate::upstream::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connection pools to the SMTP next hops, one per `HOST:PORT`.
pub struct Relays {
    helo: String,
    timeout: Duration,
    pools: Mutex<HashMap<HostPort, Arc<Pool>>>,
}

/// Connections kept open to one next hop at most (one per concurrent relayed transaction).
const MAX_RELAY_CONNECTIONS: usize = 512;
/// Longest wait for a next hop (connect, or any one reply). The client waits meanwhile; RFC
/// 5321 §4.5.3.2 gives it 5 minutes for most replies and 10 for the final one.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(120);

impl Relays {
    /// Pools that greet with `helo` and give up on a silent next hop after `timeout`.
    pub fn new(helo: &str, timeout: Duration) -> Relays {
        Relays {
            helo: helo.to_string(),
            timeout,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `target`.
    pub fn pool(&self, target: &HostPort) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(Pool::new(
                    target.clone(),
                    &self.helo,
                    self.timeout,
                    MAX_RELAY_CONNECTIONS,
                ))
            })
            .clone()
    }
}
