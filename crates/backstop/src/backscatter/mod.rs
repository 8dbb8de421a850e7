//! Bounces for mail we never sent: BATV on the way out and in, the sent log, and one verdict
//! per incoming bounce.
//!
//! Responsible for: the BATV keys (configured, or generated into the store once), signing the
//! envelope sender of mail that leaves ([`Tags::sign`]), checking and stripping the tag of a
//! bounce's recipient at RCPT ([`Guard::rcpt`]), the per-recipient bounce rate, recording the
//! Message-ID of mail sent out ([`Guard::record_sent`]), gathering the content evidence of a
//! bounce at the end of DATA ([`Guard::evidence`], whose verdict inbound carries out), and the
//! quarantine.
//! Not responsible for: whether a recipient exists (policy), or carrying out the verdict's
//! delivery (inbound).
//!
//! Every decision is counted per day in the store ([`stats`]).

pub mod quarantine;
pub mod stats;
pub mod verdict;

use crate::config::{BatvMode, Config};
use crate::store::{Store, StoreError, Window};
use backstop_proto::address::{Domain, Mailbox, ReversePath};
use backstop_proto::batv::{self, Check, Key};
use backstop_proto::smtp::reply::{Enhanced, Reply};
use std::collections::HashMap;
use std::sync::Arc;
use verdict::{BatvEvidence, Evidence, MsgId, Relay};

/// How many stopped bounces [`Guard::recent`] keeps.
pub const RECENT: usize = 100;

/// A bounce stopped (refused, deferred, quarantined or tagged), for the dashboard and the
/// API: this node's latest [`RECENT`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stopped {
    /// When (Unix seconds).
    pub at: u64,
    /// The client's IP.
    pub client: String,
    /// The recipient(s), as given.
    pub rcpt: String,
    /// Why: `batv=invalid`, `refused=rate`, `verdict=backscatter,msgid=unknown,...`.
    pub reasons: String,
    /// What was done: `refused`, `deferred`, `reject`, `quarantine`, `tag`, `accept`.
    pub action: &'static str,
}

/// The BATV keys and the signing rules.
pub struct Tags {
    keys: Vec<Key>,
    validity_days: u16,
    exempt: Vec<String>,
}

/// The store key of the generated key's secret.
const GENERATED_KEY: &str = "batv:key:0";

impl Tags {
    /// The configured keys, or the one in the store (generated with `random` on first use).
    /// The first key signs; all verify.
    pub async fn load(
        cfg: &Config,
        store: &dyn Store,
        now: u64,
        random: impl FnOnce() -> [u8; 16],
    ) -> Result<Tags, StoreError> {
        let mut keys = Vec::new();
        for k in &cfg.batv.keys {
            // validated with the configuration
            if let Ok(key) = Key::new(k.number, k.secret.as_bytes()) {
                keys.push(key);
            }
        }
        let stored = match keys.is_empty() {
            true => {
                let fresh: String = random().iter().map(|b| format!("{b:02x}")).collect();
                Some(
                    store
                        .put_if_absent(GENERATED_KEY, &fresh, None, now)
                        .await?,
                )
            }
            // keys configured after a generated one: the generated one still verifies (its
            // tags in flight stay good) until a configured key takes its number, 0
            false if keys.iter().all(|k| k.number() != 0) => store.get(GENERATED_KEY, now).await?,
            false => None,
        };
        if let Some(secret) = stored {
            let key = Key::new(0, secret.as_bytes()).map_err(|e| StoreError::Corrupt {
                key: GENERATED_KEY.into(),
                message: e.to_string(),
            })?;
            keys.push(key);
        }
        Ok(Tags {
            keys,
            validity_days: (cfg.batv.validity.as_secs() / 86_400) as u16,
            exempt: cfg.batv.exempt.clone(),
        })
    }

    /// The envelope sender to send with: signed when its domain signs and it is not exempt,
    /// as given otherwise (the null sender, other domains, exempt senders, already tagged).
    pub fn sign(&self, cfg: &Config, from: &ReversePath, now: u64) -> ReversePath {
        let ReversePath::Mailbox(m) = from else {
            return ReversePath::Null;
        };
        let signs = cfg
            .domain(m.domain())
            .is_some_and(|d| d.batv != BatvMode::Off);
        let exempt = self.exempt.iter().any(|p| wildcard(p, &m.key()));
        if !signs || exempt || batv::read(m).is_some() {
            return from.clone();
        }
        match batv::sign(m, &self.keys[0], now, self.validity_days) {
            Ok(signed) => ReversePath::Mailbox(signed),
            // too long to tag: sent as is (its bounces then count as untagged)
            Err(_) => from.clone(),
        }
    }

    fn check(&self, tagged: &batv::Tagged, now: u64) -> BatvEvidence {
        match batv::check(tagged, &self.keys, now, self.validity_days) {
            Check::Valid => BatvEvidence::Valid,
            Check::Expired => BatvEvidence::Expired,
            Check::Invalid(_) => BatvEvidence::Invalid,
        }
    }
}

/// `*` matches any run of characters; everything else itself (patterns are lower case).
fn wildcard(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What RCPT learned from a recipient's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptBatv {
    /// Nothing to do with BATV: the address is used as given.
    Untouched,
    /// Checked (and stripped, when tagged): verify and deliver `address`.
    Checked {
        /// The address without its tag.
        address: Mailbox,
        /// What the tag said.
        evidence: BatvEvidence,
    },
    /// Refused.
    Refused {
        /// The reply.
        reply: Reply,
        /// Why.
        evidence: BatvEvidence,
    },
}

/// The inbound side: tag checks, rates, the sent log and the verdict.
pub struct Guard {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    tags: Arc<Tags>,
    /// When enforcement began, per enforcing domain (Unix seconds).
    enforced_since: HashMap<Domain, u64>,
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<Stopped>>>,
}

impl Guard {
    /// Records (once, in the store) when enforcement began for each enforcing domain.
    pub async fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        tags: Arc<Tags>,
        now: u64,
    ) -> Result<Guard, StoreError> {
        let mut enforced_since = HashMap::new();
        for d in cfg.domains.iter().filter(|d| d.batv == BatvMode::Enforce) {
            let key = format!("batv:enforced-since:{}", d.name);
            let since = store
                .put_if_absent(&key, &now.to_string(), None, now)
                .await?;
            enforced_since.insert(d.name.clone(), since.parse().unwrap_or(now));
        }
        Ok(Guard {
            cfg,
            store,
            tags,
            enforced_since,
            recent: Default::default(),
        })
    }

    /// The guard under a new configuration and keys (after a reload), remembering the same
    /// stopped bounces.
    pub async fn reconfigured(
        &self,
        cfg: Arc<Config>,
        tags: Arc<Tags>,
        now: u64,
    ) -> Result<Guard, StoreError> {
        let mut g = Guard::new(cfg, self.store.clone(), tags, now).await?;
        g.recent = self.recent.clone();
        Ok(g)
    }

    /// Remembers a stopped bounce (the oldest of more than [`RECENT`] is forgotten).
    pub fn stopped(&self, s: Stopped) {
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= RECENT {
            r.pop_front();
        }
        r.push_back(s);
    }

    /// The bounces stopped lately, newest first.
    pub fn recent(&self) -> Vec<Stopped> {
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().rev().cloned().collect()
    }

    /// The signing side, for delivery.
    pub fn tags(&self) -> &Arc<Tags> {
        &self.tags
    }

    /// Judges a recipient's tag. Tags are read on domains that sign, whatever the sender (an
    /// auto-reply to a signed return path is delivered too); a missing tag matters only for
    /// a bounce (null sender), and is refused only once enforcement's warm-up is over, and
    /// never for postmaster.
    pub fn rcpt(&self, from: &ReversePath, rcpt: &Mailbox, now: u64) -> RcptBatv {
        let Some(mode) = self.cfg.domain(rcpt.domain()).map(|d| d.batv) else {
            return RcptBatv::Untouched;
        };
        if mode == BatvMode::Off {
            return RcptBatv::Untouched;
        }
        if let Some(tagged) = batv::read(rcpt) {
            let evidence = self.tags.check(&tagged, now);
            return match evidence {
                BatvEvidence::Valid | BatvEvidence::Missing => RcptBatv::Checked {
                    address: tagged.address,
                    evidence,
                },
                BatvEvidence::Expired | BatvEvidence::Invalid => RcptBatv::Refused {
                    reply: not_from_here(rcpt, &format!("BATV tag {}", evidence.as_str())),
                    evidence,
                },
            };
        }
        if *from != ReversePath::Null {
            return RcptBatv::Untouched;
        }
        // postmaster is never refused (RFC 5321 §4.5.1): its bounces are judged by content
        let warm = !rcpt.local().eq_ignore_ascii_case("postmaster")
            && self
                .enforced_since
                .get(rcpt.domain())
                .is_some_and(|since| now >= since.saturating_add(self.cfg.batv.warmup.as_secs()));
        match (mode, warm) {
            (BatvMode::Enforce, true) => RcptBatv::Refused {
                reply: not_from_here(rcpt, "no BATV tag"),
                evidence: BatvEvidence::Missing,
            },
            (BatvMode::Enforce | BatvMode::Sign | BatvMode::Off, _) => RcptBatv::Checked {
                address: rcpt.clone(),
                evidence: BatvEvidence::Missing,
            },
        }
    }

    /// Counts a bounce to `rcpt`; true when it is over the hourly limit.
    pub async fn over_rate(&self, rcpt: &Mailbox, now: u64) -> Result<bool, StoreError> {
        let key = format!("bounces:{}", rcpt.key());
        let w = Window {
            key: &key,
            window: 3600,
        };
        Ok(w.hit(self.store.as_ref(), now).await? > self.cfg.bounces.per_recipient)
    }

    /// Counts `labels` (see [`stats::LABELS`]) for today; a store failure is logged, never
    /// passed on (counts never decide anything).
    pub async fn count(&self, labels: &[&str], now: u64) {
        if let Err(e) = stats::count(self.store.as_ref(), labels, now).await {
            tracing::warn!(error = %e, "bounce counts not updated: store failed");
        }
    }

    /// Today's counts.
    pub async fn stats(&self, now: u64) -> Result<Vec<(&'static str, u64)>, StoreError> {
        stats::today(self.store.as_ref(), now).await
    }

    /// Remembers the Message-ID of a message sent out (nothing when it has none).
    pub async fn record_sent(&self, message: &[u8], now: u64) -> Result<(), StoreError> {
        let head = backstop_proto::dsn::header_section(message);
        let Some(id) = backstop_proto::dsn::message_id(head) else {
            return Ok(());
        };
        let expire = now.saturating_add(self.cfg.bounces.sent_log.as_secs());
        self.store
            .put(&sent_key(&id), &now.to_string(), Some(expire))
            .await
    }

    /// Gathers the evidence about a message to local recipients: the recipients' tags,
    /// whether it is a bounce (`null_sender`, or a delivery report by content), and what its
    /// quoted original says.
    pub async fn evidence(
        &self,
        null_sender: bool,
        batv: Option<BatvEvidence>,
        message: &[u8],
        now: u64,
    ) -> Result<Evidence, StoreError> {
        if !null_sender && !may_be_report(message) {
            // ordinary mail, the hot path: no parse
            return Ok(Evidence {
                bounce: false,
                batv,
                msgid: MsgId::Absent,
                relay: Relay::Absent,
            });
        }
        let parsed = backstop_proto::bounce::parse(message);
        let bounce = null_sender || parsed.kind == backstop_proto::bounce::Kind::Bounce;
        let msgid = match &parsed.original.message_id {
            None => MsgId::Absent,
            Some(id) => match self.store.get(&sent_key(id), now).await? {
                Some(_) => MsgId::Known,
                None => MsgId::Unknown,
            },
        };
        let relay = match parsed.original.received.as_slice() {
            [] => Relay::Absent,
            rs if rs.iter().any(|r| self.names_our_relay(r)) => Relay::Ours,
            _ => Relay::Foreign,
        };
        Ok(Evidence {
            bounce,
            batv,
            msgid,
            relay,
        })
    }

    /// True when a `Received:` header names one of our relay hosts as a whole word.
    fn names_our_relay(&self, received: &str) -> bool {
        let lower = received.to_ascii_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .collect();
        self.cfg
            .bounces
            .relay_hosts
            .iter()
            .any(|h| words.iter().any(|w| w.trim_end_matches('.') == h))
    }
}

/// True when a message with a sender may still be a delivery report by its header section
/// (a report's content type, or written by a mailer daemon or postmaster).
fn may_be_report(message: &[u8]) -> bool {
    let head = backstop_proto::dsn::header_section(message).to_ascii_lowercase();
    let text = String::from_utf8_lossy(&head);
    ["multipart/report", "mailer-daemon", "postmaster@"]
        .iter()
        .any(|w| text.contains(w))
}

fn sent_key(message_id: &str) -> String {
    format!("sent:{message_id}")
}

/// `550 5.7.1 <rcpt>: bounce not for mail sent from here (why)`.
pub fn not_from_here(rcpt: &Mailbox, why: &str) -> Reply {
    Reply::new(
        550,
        Enhanced::new(5, 7, 1),
        format!("<{rcpt}>: bounce not for mail sent from here ({why})"),
    )
}

#[cfg(test)]
mod tests;
