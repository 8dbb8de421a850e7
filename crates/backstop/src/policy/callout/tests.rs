//! Cache, single-flight and budget rules, with a scripted prober and a manual clock. The SMTP
//! side of probes is tested end to end against a real Postfix (tests/callout_postfix.rs).

use super::*;
use crate::clock::ManualClock;
use crate::store::embedded::EmbeddedStore;
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Answers from a script: addresses starting with "ok" are valid, "down" makes every probe
/// fail, "all" makes it a catch-all.
struct Scripted {
    calls: AtomicUsize,
    random_calls: AtomicUsize,
    mode: Mutex<&'static str>,
    delay: Duration,
}

#[async_trait]
impl Prober for Scripted {
    async fn probe(&self, _t: &HostPort, addr: &Mailbox) -> ProbeAnswer {
        if addr.local().starts_with("bkst-") {
            self.random_calls.fetch_add(1, Ordering::SeqCst);
        } else {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        let mode = *self.mode.lock().unwrap();
        match mode {
            "down" => ProbeAnswer::Failed("connect: refused".into()),
            "all" => ProbeAnswer::Valid("250 2.1.5 Ok".into()),
            _ if addr.local().starts_with("ok") => ProbeAnswer::Valid("250 2.1.5 Ok".into()),
            _ => {
                ProbeAnswer::Invalid("550 5.1.1 <x>: User unknown in relay recipient table".into())
            }
        }
    }
}

struct Fixture {
    callout: Arc<Callout>,
    prober: Arc<Scripted>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn cfg() -> config::Callout {
    config::Config::from_toml(
        "hostname = \"mx.example.test\"\nstate_dir = \"v\"\n[[listen]]\naddr = \"127.0.0.1:1\"\n[[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:9\"]\nnext_hop = \"smtp:127.0.0.1:9\"\n",
        std::path::Path::new("/"),
    )
    .unwrap()
    .callout
}

fn fixture(cfg: config::Callout, delay_ms: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let prober = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        random_calls: AtomicUsize::new(0),
        mode: Mutex::new("normal"),
        delay: Duration::from_millis(delay_ms),
    });
    let n = Arc::new(AtomicUsize::new(0));
    let random: Random = Arc::new(move || n.fetch_add(1, Ordering::SeqCst) as u64);
    let callout = Callout::new(cfg, store, clock.clone(), (prober.clone(), random), None);
    Fixture {
        callout,
        prober,
        clock,
        _dir: dir,
    }
}

fn target() -> HostPort {
    HostPort::parse("127.0.0.1:9").unwrap()
}

fn mb(s: &str) -> Mailbox {
    Mailbox::parse(s, false).unwrap()
}

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

impl Fixture {
    async fn check(&self, a: &str) -> CalloutResult {
        self.callout.check(&target(), &mb(a), IP).await
    }
    fn calls(&self) -> usize {
        self.prober.calls.load(Ordering::SeqCst)
    }
    fn set(&self, mode: &'static str) {
        *self.prober.mode.lock().unwrap() = mode;
    }
    /// Lets background refreshes finish.
    async fn settle(&self) {
        for _ in 0..50 {
            if self.callout.inflight.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("probes still in flight");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_checks_of_one_uncached_address_make_one_probe() {
    // a slow probe (all join it) and an instant one (late arrivals find the cache, and are
    // neither probed again nor charged to the one-probe budget)
    for delay_ms in [200, 0] {
        let f = fixture(
            config::Callout {
                budget_per_client: 1,
                ..cfg()
            },
            delay_ms,
        );
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let c = f.callout.clone();
                tokio::spawn(
                    async move { c.check(&target(), &mb("ok-new@example.test"), IP).await },
                )
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(matches!(r, CalloutResult::Valid(_)), "{r:?}");
        }
        assert_eq!(f.calls(), 1);
        assert_eq!(
            f.prober.random_calls.load(Ordering::SeqCst),
            1,
            "one catch-all check for the domain"
        );
    }
}

#[tokio::test]
async fn positive_and_negative_entries_have_their_own_refresh_and_expiry() {
    let f = fixture(cfg(), 0);
    let CalloutResult::Valid(k) = f.check("ok@example.test").await else {
        panic!()
    };
    assert!(!k.cached);
    assert_eq!(k.entry.refresh_at - k.entry.checked_at, 7 * 86400);
    assert_eq!(k.entry.expire_at - k.entry.checked_at, 31 * 86400);
    let CalloutResult::Invalid(k) = f.check("nobody@example.test").await else {
        panic!()
    };
    assert_eq!(k.entry.refresh_at - k.entry.checked_at, 3 * 3600);
    assert_eq!(k.entry.expire_at - k.entry.checked_at, 3 * 86400);
    assert_eq!(f.calls(), 2);
    // both answered from the cache now
    assert!(matches!(
        f.check("ok@example.test").await,
        CalloutResult::Valid(Known { cached: true, .. })
    ));
    assert!(matches!(
        f.check("NOBODY@example.test").await,
        CalloutResult::Invalid(Known { cached: true, .. })
    ));
    assert_eq!(f.calls(), 2);
}

#[tokio::test]
async fn stale_entries_are_served_and_refreshed_in_the_background() {
    let f = fixture(cfg(), 0);
    f.check("ok@example.test").await;
    f.clock.advance(Duration::from_secs(8 * 86400));
    let r = f.check("ok@example.test").await;
    assert!(
        matches!(r, CalloutResult::Valid(Known { cached: true, .. })),
        "{r:?}"
    );
    f.settle().await;
    assert_eq!(f.calls(), 2, "one background refresh");
    let CalloutResult::Valid(k) = f.check("ok@example.test").await else {
        panic!()
    };
    assert_eq!(
        k.entry.checked_at,
        f.clock.unix(),
        "the refresh replaced the entry"
    );
}

#[tokio::test]
async fn a_failed_probe_never_overwrites_a_known_good_entry() {
    let f = fixture(cfg(), 0);
    let CalloutResult::Valid(first) = f.check("ok@example.test").await else {
        panic!()
    };
    f.set("down");
    f.clock.advance(Duration::from_secs(10 * 86400));
    for _ in 0..3 {
        assert!(matches!(
            f.check("ok@example.test").await,
            CalloutResult::Valid(_)
        ));
        f.settle().await;
    }
    let CalloutResult::Valid(k) = f.check("ok@example.test").await else {
        panic!()
    };
    assert_eq!(k.entry, first.entry, "still the original answer");
    // unknown addresses cannot be verified while the server is down
    assert!(matches!(
        f.check("ok-other@example.test").await,
        CalloutResult::Unavailable(_)
    ));
    // after expiry even the known-good entry is gone
    f.clock.advance(Duration::from_secs(22 * 86400));
    assert!(matches!(
        f.check("ok@example.test").await,
        CalloutResult::Unavailable(_)
    ));
}

#[tokio::test]
async fn probe_budget_per_client_and_in_total() {
    let f = fixture(
        config::Callout {
            budget_per_client: 3,
            budget_total: 5,
            catch_all_check: false,
            ..cfg()
        },
        0,
    );
    for i in 0..3 {
        assert!(matches!(
            f.check(&format!("u{i}@example.test")).await,
            CalloutResult::Invalid(_)
        ));
    }
    assert_eq!(f.check("u3@example.test").await, CalloutResult::OverBudget);
    // cached answers cost nothing
    assert!(matches!(
        f.check("u0@example.test").await,
        CalloutResult::Invalid(_)
    ));
    let other: IpAddr = "192.0.2.2".parse().unwrap();
    let c = &f.callout;
    for i in 10..12 {
        let r = c
            .check(&target(), &mb(&format!("u{i}@example.test")), other)
            .await;
        assert!(matches!(r, CalloutResult::Invalid(_)), "{r:?}");
    }
    let r = c.check(&target(), &mb("u12@example.test"), other).await;
    assert_eq!(r, CalloutResult::OverBudget, "total of 5 spent");
    f.clock.advance(Duration::from_secs(60));
    assert!(
        matches!(f.check("u3@example.test").await, CalloutResult::Invalid(_)),
        "next minute"
    );
}

#[tokio::test]
async fn catch_all_servers_are_detected_and_not_trusted() {
    let f = fixture(cfg(), 0);
    f.set("all");
    let r = f.check("anything@example.test").await;
    assert!(matches!(r, CalloutResult::CatchAll(_)), "{r:?}");
    assert_eq!(f.calls(), 0, "no address probe against a catch-all");
    assert!(matches!(
        f.check("else@example.test").await,
        CalloutResult::CatchAll(_)
    ));
    assert_eq!(
        f.prober.random_calls.load(Ordering::SeqCst),
        1,
        "once per domain per refresh"
    );
    // the server stops being a catch-all: noticed after the negative refresh time
    f.set("normal");
    f.clock.advance(Duration::from_secs(3 * 3600 + 1));
    f.check("else@example.test").await;
    f.settle().await;
    assert_eq!(f.prober.random_calls.load(Ordering::SeqCst), 2);
    assert!(matches!(
        f.check("nobody@example.test").await,
        CalloutResult::Invalid(_)
    ));
}
