//! Directory-harvest defence and connection limits: clients that try many unknown addresses
//! are slowed, cut off and then refused at connect; no client may hold or open too many
//! connections.
//!
//! Responsible for: admitting a connection (blocks kept in the store, concurrent connections
//! per IP and in total, new connections per IP per minute), the per-session tarpit schedule and
//! cut-off, and counting unknown recipients per client IP and per network (/24, /64) over a
//! sliding window in the store, which blocks a client or network that goes over its limit.
//! Not responsible for: deciding whether an address exists (policy), or talking SMTP (inbound
//! writes the replies this module chooses).

use crate::config::{Config, in_networks, unmapped};
use crate::store::{Store, StoreError, Window, claim_until};
use backstop_proto::smtp::reply::{Enhanced, Reply};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What is counted per day (`backstop status`): connections refused before the greeting,
/// clients or networks blocked, sessions cut off, outbound recipients over a limit.
pub const COUNTED: [&str; 4] = [
    "client_refused",
    "client_blocked",
    "cut_off",
    "outbound_limit",
];

/// The shared state of the defence.
pub struct Harvest {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    conns: Arc<Mutex<Conns>>,
    /// Counts not yet in the store: (day, label) -> n.
    pending: Arc<Mutex<HashMap<(u64, &'static str), u64>>>,
}

#[derive(Default)]
struct Conns {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Per IP: (minute, connections in it, connections in the minute before).
    rate: HashMap<IpAddr, (u64, u64, u64)>,
}

/// A connection's place in the limits; given back when dropped.
pub struct Slot {
    conns: Arc<Mutex<Conns>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was not admitted: the reply it gets before the close, and a label.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reply.
    pub reply: Reply,
    /// `blocked`, `blocked-network`, `too-many-connections`, `connections-per-ip`,
    /// `connection-rate`.
    pub why: &'static str,
}

/// The client's network for counting: IPv4 /24, IPv6 /64 (IPv4-mapped IPv6 as IPv4).
pub fn network_of(ip: IpAddr) -> ipnet::IpNet {
    match unmapped(ip) {
        IpAddr::V4(v4) => ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(v4, 24).map_or_else(|_| ipnet::Ipv4Net::default(), |n| n.trunc()),
        ),
        IpAddr::V6(v6) => ipnet::IpNet::V6(
            ipnet::Ipv6Net::new(v6, 64).map_or_else(|_| ipnet::Ipv6Net::default(), |n| n.trunc()),
        ),
    }
}

fn block_key(what: &str) -> String {
    format!("harvest:block:{what}")
}

/// The list of blocks (for `backstop status`): `[[client, until], ...]`.
const BLOCK_LIST: &str = "harvest:blocked";

/// The clients and networks blocked at `now`, with when each block ends.
pub async fn blocked(store: &dyn Store, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
    let v = store.get(BLOCK_LIST, now).await?;
    let mut list: Vec<(String, u64)> = v
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    list.retain(|(_, until)| *until > now);
    Ok(list)
}

async fn add_block(store: &dyn Store, what: &str, until: u64, now: u64) -> Result<(), StoreError> {
    let mut list = blocked(store, now).await?;
    list.retain(|(w, _)| w != what);
    list.push((what.to_string(), until));
    save_blocks(store, &list).await
}

async fn save_blocks(store: &dyn Store, list: &[(String, u64)]) -> Result<(), StoreError> {
    let last = list.iter().map(|(_, until)| *until).max();
    let v = serde_json::to_string(&list).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.put(BLOCK_LIST, &v, last).await
}

/// The key of the count of unknown recipients from `what` since it was last unblocked.
fn count_key(what: &str, epoch: Option<String>) -> String {
    match epoch {
        Some(e) => format!("harvest:unknown:{what}:{e}"),
        None => format!("harvest:unknown:{what}"),
    }
}

fn epoch_key(what: &str) -> String {
    format!("harvest:epoch:{what}")
}

/// Lifts the block on a client or network (`what` as [`blocked`] lists it) and starts its
/// count afresh; false when it was not blocked.
pub async fn unblock(store: &dyn Store, what: &str, now: u64) -> Result<bool, StoreError> {
    let mut list = blocked(store, now).await?;
    let before = list.len();
    list.retain(|(w, _)| w != what);
    if list.len() == before {
        return Ok(false);
    }
    store.put(&block_key(what), "", Some(now)).await?;
    store.put(&epoch_key(what), &now.to_string(), None).await?;
    save_blocks(store, &list).await?;
    Ok(true)
}

impl Harvest {
    /// The defence for `cfg`, keeping its counts and blocks in `store`.
    pub fn new(cfg: Arc<Config>, store: Arc<dyn Store>) -> Harvest {
        Harvest {
            cfg,
            store,
            conns: Arc::default(),
            pending: Arc::default(),
        }
    }

    /// The defence under a new configuration (after a reload), with the same connections
    /// and counts: a session of either counts against the limits of both.
    pub fn reconfigured(&self, cfg: Arc<Config>) -> Harvest {
        Harvest {
            cfg,
            store: self.store.clone(),
            conns: self.conns.clone(),
            pending: self.pending.clone(),
        }
    }

    /// Counts a defence decision for today, one of [`COUNTED`]. In memory: an attack must not
    /// turn into a store write per refused connection; [`Harvest::flush`] writes the sums.
    pub fn count(&self, label: &'static str, now: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *p.entry((now / 86_400, label)).or_insert(0) += 1;
    }

    /// Adds the counts kept in memory to the store's daily counts (called every few seconds
    /// and at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for ((day, label), n) in pending {
            crate::store::daily::add(self.store.as_ref(), "defence", label, n, day * 86_400)
                .await?;
        }
        Ok(())
    }

    /// True for clients the harvest defence never touches: `[harvest] exempt` networks (relay
    /// networks are exempted by the caller, per listener).
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        in_networks(&self.cfg.harvest.exempt, ip)
    }

    /// Admits a connection from `ip` at `now`, or says why not. Exempt clients skip the
    /// harvest blocks but not the connection limits. A store failure admits (the limits held
    /// in memory still apply).
    pub async fn admit(&self, ip: IpAddr, exempt: bool, now: u64) -> Result<Slot, Refusal> {
        let ip = unmapped(ip);
        if !exempt {
            self.check_blocks(ip, now).await?;
        }
        let lim = &self.cfg.limits;
        let host = &self.cfg.hostname;
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= lim.max_connections {
            return Err(Refusal {
                reply: Reply::new(
                    421,
                    Enhanced::new(4, 3, 2),
                    format!("{host} Error: too many connections, try again later"),
                ),
                why: "too-many-connections",
            });
        }
        if c.per_ip.get(&ip).copied().unwrap_or(0) >= lim.max_connections_per_ip {
            return Err(Refusal {
                reply: Reply::new(
                    421,
                    Enhanced::new(4, 7, 0),
                    format!("{host} Error: too many connections from {ip}"),
                ),
                why: "connections-per-ip",
            });
        }
        if !exempt
            && lim.connection_rate_per_ip > 0
            && rate_hit(&mut c.rate, ip, now) > lim.connection_rate_per_ip
        {
            return Err(Refusal {
                reply: Reply::new(
                    421,
                    Enhanced::new(4, 7, 0),
                    format!("{host} Error: too many connections per minute from {ip}"),
                ),
                why: "connection-rate",
            });
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            conns: self.conns.clone(),
            ip,
        })
    }

    async fn check_blocks(&self, ip: IpAddr, now: u64) -> Result<(), Refusal> {
        let host = &self.cfg.hostname;
        let net = network_of(ip);
        for (what, why) in [
            (ip.to_string(), "blocked"),
            (net.to_string(), "blocked-network"),
        ] {
            match self.store.get(&block_key(&what), now).await {
                Ok(Some(_)) => {
                    return Err(Refusal {
                        reply: Reply::new(
                            554,
                            Enhanced::new(5, 7, 1),
                            format!(
                                "{host} Service refused: too many unknown recipients from {what}; try again later"
                            ),
                        ),
                        why,
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "harvest block not checked: store failed"),
            }
        }
        Ok(())
    }

    /// How long to wait before answering the next RCPT of a session that has had `unknown`
    /// unknown recipients: nothing up to `tarpit_after`, then `tarpit_delay`, doubling with
    /// every further one, at most `tarpit_max`.
    pub fn tarpit(&self, unknown: u32) -> Option<Duration> {
        let h = &self.cfg.harvest;
        let over = unknown.checked_sub(h.tarpit_after)?;
        let factor = 1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX);
        Some(h.tarpit_delay.saturating_mul(factor).min(h.tarpit_max))
    }

    /// Whether a session that has had `unknown` unknown recipients is to be ended (the reply
    /// is the RCPT ladder's `CutOff`).
    pub fn cut_off(&self, unknown: u32) -> bool {
        unknown >= self.cfg.harvest.close_after
    }

    /// Counts an unknown recipient from `ip`; blocks the client (or its network) when it goes
    /// over its limit, and says what was blocked.
    pub async fn unknown_rcpt(&self, ip: IpAddr, now: u64) -> Result<Option<String>, StoreError> {
        let h = &self.cfg.harvest;
        let ip = unmapped(ip);
        let net = network_of(ip);
        let mut blocked = None;
        for (what, limit) in [
            (ip.to_string(), h.block_after),
            (net.to_string(), h.block_after_net),
        ] {
            let epoch = self.store.get(&epoch_key(&what), now).await?;
            let key = count_key(&what, epoch);
            let w = Window {
                key: &key,
                window: h.window.as_secs(),
            };
            if w.hit(self.store.as_ref(), now).await? <= limit {
                continue;
            }
            // blocked once: of the racing counts of a session in flight, one sets the block
            let until = now.saturating_add(h.block_for.as_secs());
            if claim_until(self.store.as_ref(), &block_key(&what), until, now).await? {
                add_block(self.store.as_ref(), &what, until, now).await?;
                blocked.get_or_insert(what);
            }
        }
        Ok(blocked)
    }
}

/// Counts a connection in `ip`'s per-minute window (this minute and the share of the last one
/// still inside it) and returns the estimate.
fn rate_hit(rate: &mut HashMap<IpAddr, (u64, u64, u64)>, ip: IpAddr, now: u64) -> u64 {
    let minute = now / 60;
    if rate.len() > 100_000 {
        // forget quiet clients rather than grow without bound
        rate.retain(|_, (m, _, _)| *m + 1 >= minute);
    }
    let e = rate.entry(ip).or_insert((minute, 0, 0));
    match minute.saturating_sub(e.0) {
        0 => {}
        1 => *e = (minute, 0, e.1),
        _ => *e = (minute, 0, 0),
    }
    e.1 += 1;
    let left = 60 - now % 60;
    e.1 + (e.2 * left).div_ceil(60)
}

#[cfg(test)]
mod tests;
