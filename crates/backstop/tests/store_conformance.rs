//! Conformance tests every store backend passes: each case runs against the embedded store,
//! against the Redis store on a private `redis-server` (Debian's, on a free loopback port,
//! stopped by its PID afterwards), and on one that speaks only TLS (certificates made here
//! with rcgen); and what only Redis can show: two nodes sharing one state, client
//! certificates, certificate checks.

mod support;

use backstop::store::embedded::EmbeddedStore;
use backstop::store::redis::{RedisStore, Target, Tls};
use backstop::store::{Store, Window, claim_until};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{RedisServer, RedisTlsFiles};

/// A backend and what keeps it alive.
enum Held {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Redis(#[allow(dead_code)] RedisServer),
    Tls(#[allow(dead_code)] RedisServer, #[allow(dead_code)] Pki),
}

/// A test CA (`ca.pem`) and two certificates it signed for 127.0.0.1 and localhost
/// (`server.pem` + `server.key`, `client.pem` + `client.key`), in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A new CA and its two certificates.
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        use rcgen::{CertifiedIssuer, ExtendedKeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // a name of its own: another test CA is not taken for this one
        static CAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("backstop test CA {n}");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for name in ["server", "client"] {
            let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    /// The file `name` of it.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's files.
    fn server(&self) -> RedisTlsFiles {
        RedisTlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            ca: self.path("ca.pem"),
        }
    }

    /// A client's settings read from the files: this CA, and the client certificate when
    /// `client`.
    fn tls(&self, client: bool) -> Tls {
        let (cert, key) = (self.path("client.pem"), self.path("client.key"));
        let client = client.then_some((cert.as_path(), key.as_path()));
        Tls::read(Some(&self.path("ca.pem")), client).unwrap()
    }
}

fn embedded() -> (Held, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    (Held::Dir(dir), Arc::new(store))
}

async fn redis() -> (Held, Arc<dyn Store>) {
    let server = RedisServer::start();
    let target = Target::Single(server.url.clone());
    let store = RedisStore::connect(&target, "test").await.unwrap();
    (Held::Redis(server), Arc::new(store))
}

/// A TLS-only server with a new CA, and a store on it that trusts that CA (`tls_ca`).
async fn redis_tls() -> (Held, Arc<dyn Store>) {
    let pki = Pki::new();
    let server = RedisServer::start_tls(&pki.server(), false);
    let target = Target::Single(server.url.clone());
    let store = RedisStore::connect_with_tls(&target, &pki.tls(false), "test")
        .await
        .unwrap();
    (Held::Tls(server, pki), Arc::new(store))
}

/// Runs each case against the backends: `embedded::CASE`, `redis::CASE` and
/// `redis_tls::CASE`; and all of them, one after the other (each in its own namespace),
/// against a Redis Cluster and through Redis Sentinel.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        /// Every case in turn on `target`, each in a namespace of its own.
        async fn every_case(target: &Target, tls: &Tls) {
            $(
                let s = RedisStore::connect_with_tls(target, tls, stringify!($case))
                    .await
                    .unwrap();
                $case(Arc::new(s)).await;
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_held, s) = super::embedded();
                    super::$case(s).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_held, s) = super::redis().await;
                    super::$case(s).await;
                }
            )*
        }
        mod redis_tls {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_held, s) = super::redis_tls().await;
                    super::$case(s).await;
                }
            )*
        }
    };
}

conformance!(
    a_key_is_claimed_once_and_can_be_given_back,
    of_racing_claims_exactly_one_wins,
    concurrent_adds_give_the_exact_total,
    a_window_weighs_the_previous_bucket_by_its_overlap,
    values_expire_and_are_purged,
    of_racing_first_values_all_callers_get_the_same_one,
    claim_until_expires_at_its_time,
    cache_entries_are_replaced_and_purged_when_expired,
    cache_keys_are_found_by_prefix_and_suffix,
);

#[tokio::test]
async fn redis_cluster_passes_every_case() {
    let cluster = support::RedisCluster::start();
    every_case(&Target::Cluster(cluster.urls()), &Tls::default()).await;
}

#[tokio::test]
async fn redis_sentinel_passes_every_case() {
    let set = support::RedisSentinel::start();
    let sentinels = vec![set.sentinel.url.clone()];
    let master = "mymaster".to_string();
    every_case(&Target::Sentinel { sentinels, master }, &Tls::default()).await;
}

#[tokio::test]
async fn redis_cluster_over_tls_passes_every_case() {
    let pki = Pki::new();
    let cluster = support::RedisCluster::start_tls(&pki.server());
    assert!(cluster.urls().iter().all(|u| u.starts_with("rediss://")));
    every_case(&Target::Cluster(cluster.urls()), &pki.tls(false)).await;
}

#[tokio::test]
async fn redis_sentinel_over_tls_passes_every_case() {
    let pki = Pki::new();
    let set = support::RedisSentinel::start_tls(&pki.server());
    let sentinels = vec![set.sentinel.url.clone()];
    assert!(sentinels[0].starts_with("rediss://"));
    let master = "mymaster".to_string();
    every_case(&Target::Sentinel { sentinels, master }, &pki.tls(false)).await;
}

async fn a_key_is_claimed_once_and_can_be_given_back(s: Arc<dyn Store>) {
    assert!(s.claim("dsn:A:first", 100).await.unwrap());
    assert!(!s.claim("dsn:A:first", 100).await.unwrap());
    assert!(s.claim("dsn:A:last", 100).await.unwrap());
    s.unclaim("dsn:A:first").await.unwrap();
    assert!(s.claim("dsn:A:first", 100).await.unwrap());
    // expired claims are purged
    assert_eq!(s.purge_expired(100).await.unwrap(), 2);
    assert!(s.claim("dsn:A:first", 200).await.unwrap());
}

async fn of_racing_claims_exactly_one_wins(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.claim("race", 100).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}

async fn concurrent_adds_give_the_exact_total(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.add("c", 2, 100, 0).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.count("c", 0).await.unwrap(), 100);
    // expired: counted from zero again
    assert_eq!(s.count("c", 100).await.unwrap(), 0);
    assert_eq!(s.add("c", 1, 300, 100).await.unwrap(), 1);
}

async fn a_window_weighs_the_previous_bucket_by_its_overlap(s: Arc<dyn Store>) {
    let w = Window {
        key: "w",
        window: 3600,
    };
    for _ in 0..10 {
        w.hit(&*s, 3600 + 3599).await.unwrap();
    }
    // at the start of the next hour the whole previous hour is in the window
    assert_eq!(w.hit(&*s, 7200).await.unwrap(), 11);
    // half way: half of it
    assert_eq!(w.hit(&*s, 7200 + 1800).await.unwrap(), 2 + 5);
    // once a whole hour has passed since, nothing of it is left
    assert_eq!(w.hit(&*s, 14_400).await.unwrap(), 1);
}

async fn values_expire_and_are_purged(s: Arc<dyn Store>) {
    s.put("sent:<a@example.test>", "1000", Some(2000))
        .await
        .unwrap();
    s.put("batv:key:0", "secret", None).await.unwrap();
    assert_eq!(
        s.get("sent:<a@example.test>", 1999)
            .await
            .unwrap()
            .as_deref(),
        Some("1000")
    );
    assert_eq!(s.get("sent:<a@example.test>", 2000).await.unwrap(), None);
    assert_eq!(s.get("missing", 0).await.unwrap(), None);
    assert_eq!(s.purge_expired(2000).await.unwrap(), 1);
    // no expiry: kept
    assert_eq!(
        s.get("batv:key:0", u64::MAX - 1).await.unwrap().as_deref(),
        Some("secret")
    );
}

async fn of_racing_first_values_all_callers_get_the_same_one(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.put_if_absent("since", &i.to_string(), None, 0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(s.get("since", 0).await.unwrap(), Some(seen[0].clone()));
    // an expired value is replaced
    s.put("old", "a", Some(10)).await.unwrap();
    assert_eq!(s.put_if_absent("old", "b", None, 10).await.unwrap(), "b");
}

async fn claim_until_expires_at_its_time(s: Arc<dyn Store>) {
    assert!(claim_until(s.as_ref(), "k", 100, 10).await.unwrap());
    assert!(!claim_until(s.as_ref(), "k", 200, 99).await.unwrap());
    assert!(claim_until(s.as_ref(), "k", 200, 100).await.unwrap());
}

async fn cache_entries_are_replaced_and_purged_when_expired(s: Arc<dyn Store>) {
    use backstop::store::{CacheEntry, CacheVerdict};
    let entry = |verdict, checked_at: u64| CacheEntry {
        verdict,
        checked_at,
        refresh_at: checked_at + 10,
        expire_at: checked_at + 100,
        detail: "250 2.1.5 Ok".into(),
    };
    assert_eq!(s.cache_get("a@example.test").await.unwrap(), None);
    s.cache_put("a@example.test", &entry(CacheVerdict::Invalid, 1000))
        .await
        .unwrap();
    s.cache_put("a@example.test", &entry(CacheVerdict::Valid, 1050))
        .await
        .unwrap();
    s.cache_put("b@example.test", &entry(CacheVerdict::Valid, 2000))
        .await
        .unwrap();
    let got = s.cache_get("a@example.test").await.unwrap().unwrap();
    assert_eq!(got, entry(CacheVerdict::Valid, 1050));
    // expired entries are still returned (the caller judges the times) until purged
    assert_eq!(s.purge_expired(1149).await.unwrap(), 0);
    assert_eq!(s.purge_expired(1150).await.unwrap(), 1);
    assert_eq!(s.cache_get("a@example.test").await.unwrap(), None);
    assert!(s.cache_get("b@example.test").await.unwrap().is_some());
}

async fn cache_keys_are_found_by_prefix_and_suffix(s: Arc<dyn Store>) {
    use backstop::store::{CacheEntry, CacheVerdict};
    let entry = CacheEntry {
        verdict: CacheVerdict::Valid,
        checked_at: 1000,
        refresh_at: 1010,
        expire_at: 1100,
        detail: "250 2.1.5 Ok".into(),
    };
    let keys = [
        "rcpt:a@example.test",
        "rcpt:b*[x]@example.test",
        "rcpt:c@sub.example.test",
        "rcpt:d@other.test",
        "catchall:example.test",
    ];
    for k in keys {
        s.cache_put(k, &entry).await.unwrap();
    }
    s.put("rcpt:e@example.test", "not a cache entry", None)
        .await
        .unwrap();
    let mut found = s.cache_keys("rcpt:", "@example.test", 100).await.unwrap();
    found.sort();
    assert_eq!(found, ["rcpt:a@example.test", "rcpt:b*[x]@example.test"]);
    assert_eq!(
        s.cache_keys("rcpt:", "@example.test", 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.cache_keys("rcpt:", "", 100).await.unwrap().len(), 4);
    assert!(
        s.cache_keys("rcpt:", "@none.test", 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Two nodes (two connections) on one Redis: what one writes the other reads, races between
/// them have one winner, counters add up across them, and namespaces keep apart.
#[tokio::test]
async fn redis_nodes_share_one_state() {
    let server = RedisServer::start();
    let target = Target::Single(server.url.clone());
    let a: Arc<dyn Store> = Arc::new(RedisStore::connect(&target, "bs").await.unwrap());
    let b: Arc<dyn Store> = Arc::new(RedisStore::connect(&target, "bs").await.unwrap());
    let other = RedisStore::connect(&target, "other").await.unwrap();
    a.put("batv:key:0", "secret", None).await.unwrap();
    assert_eq!(
        b.get("batv:key:0", 0).await.unwrap().as_deref(),
        Some("secret")
    );
    assert_eq!(other.get("batv:key:0", 0).await.unwrap(), None);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let won = s.claim("dsn:X:first", 100).await.unwrap();
                s.add("rate", 1, 100, 0).await.unwrap();
                won
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    assert_eq!(a.count("rate", 0).await.unwrap(), 40);
    assert_eq!(b.count("rate", 0).await.unwrap(), 40);
}

#[tokio::test]
async fn redis_unreachable_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = Target::Single(format!("redis://127.0.0.1:{port}/"));
    let started = std::time::Instant::now();
    let e = RedisStore::connect(&target, "bs").await.err().unwrap();
    assert!(e.to_string().starts_with("store backend: redis:"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Redis stopped and started again under a [`Failover`]: known answers keep being served,
/// claims wait, counters and values go node-local, one alert each way, and the node goes back
/// to Redis by itself.
#[tokio::test]
async fn redis_outage_falls_back_and_recovers_without_restart() {
    use backstop::store::failover::{Failover, Hook, RETRY_AFTER};
    use backstop::store::{CacheEntry, CacheVerdict};
    let redis = RedisServer::start();
    let target = Target::Single(redis.url.clone());
    let shared = RedisStore::connect(&target, "mx").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = EmbeddedStore::open(&dir.path().join("local.redb")).unwrap();
    let heard = Arc::new(std::sync::Mutex::new(Vec::<(bool, String)>::new()));
    let h = heard.clone();
    let hook: Hook = Arc::new(move |down, detail| h.lock().unwrap().push((down, detail.into())));
    let s = Failover::new(Arc::new(shared), Arc::new(local), hook);
    let entry = CacheEntry {
        verdict: CacheVerdict::Valid,
        checked_at: 1000,
        refresh_at: 2000,
        expire_at: 3000,
        detail: "250 2.1.5 Ok".into(),
    };
    s.cache_put("alice@example.test", &entry).await.unwrap();
    assert_eq!(s.add("rate", 5, 9999, 1000).await.unwrap(), 5);
    assert!(s.claim("dsn:A:first", 9999).await.unwrap());
    assert!(!s.degraded());

    let mut redis = redis;
    redis.stop();
    // a known answer is still known; the first failure is noticed once
    assert_eq!(
        s.cache_get("alice@example.test").await.unwrap(),
        Some(entry.clone())
    );
    assert_eq!(s.cache_get("nobody@example.test").await.unwrap(), None);
    assert!(s.degraded());
    // claims wait (no duplicate report is risked); counters and values are this node's
    assert!(s.claim("dsn:B:first", 9999).await.is_err());
    assert_eq!(s.add("rate", 1, 9999, 1000).await.unwrap(), 1);
    s.put("harvest:block:192.0.2.7", "1", Some(9999))
        .await
        .unwrap();
    assert_eq!(
        s.get("harvest:block:192.0.2.7", 1000)
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
    {
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert!(
            heard[0].0 && heard[0].1.starts_with("store backend: redis:"),
            "{heard:?}"
        );
    }

    // Redis comes back (empty: it keeps nothing on disk here); the node returns to it
    let _redis = redis.restart();
    tokio::time::sleep(RETRY_AFTER + std::time::Duration::from_millis(200)).await;
    let mut back = false;
    for _ in 0..50 {
        if s.claim("dsn:B:first", 9999).await.is_ok_and(|won| won) {
            back = true;
            break;
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
    assert!(back, "the node did not go back to Redis");
    assert!(!s.degraded());
    assert_eq!(s.add("rate", 1, 9999, 1000).await.unwrap(), 1);
    let heard = heard.lock().unwrap();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(!heard[1].0, "{heard:?}");
}

/// Through Redis Sentinel: the master dies, the sentinel promotes the replica, and the store
/// goes on there with what was written.
#[tokio::test]
async fn redis_sentinel_follows_a_failover() {
    let mut set = support::RedisSentinel::start();
    let target = Target::Sentinel {
        sentinels: vec![set.sentinel.url.clone()],
        master: "mymaster".into(),
    };
    let s = RedisStore::connect(&target, "failover").await.unwrap();
    s.put("batv:key:0", "secret", None).await.unwrap();
    assert_eq!(s.add("rate", 3, 9999, 0).await.unwrap(), 3);
    let first = set.master_port();
    assert_eq!(first, set.servers[0].port);
    // written to the replica too before the master goes
    let acked = support::redis_cli(first, &["wait", "1", "5000"]);
    assert_eq!(acked.trim(), "1");
    set.servers[0].stop();
    let mut moved = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Ok(Some(v)) = s.get("batv:key:0", 0).await {
            assert_eq!(v, "secret");
            moved = set.master_port() == set.servers[1].port;
            if moved && s.add("rate", 1, 9999, 0).await.is_ok() {
                break;
            }
        }
    }
    assert!(moved, "no failover to the replica");
    assert_eq!(s.count("rate", 0).await.unwrap(), 4);
}

/// A server that requires client certificates: served with `tls_cert` and `tls_key`, refused
/// (at once, not after a hang) without them.
#[tokio::test]
async fn redis_tls_client_certificate_is_required_and_shown() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(&pki.server(), true);
    let target = Target::Single(server.url.clone());
    let s = RedisStore::connect_with_tls(&target, &pki.tls(true), "mtls")
        .await
        .unwrap();
    s.put("batv:key:0", "secret", None).await.unwrap();
    assert_eq!(
        s.get("batv:key:0", 0).await.unwrap().as_deref(),
        Some("secret")
    );
    let started = Instant::now();
    let e = RedisStore::connect_with_tls(&target, &pki.tls(false), "mtls")
        .await
        .err()
        .expect("connected without a client certificate");
    let e = e.to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(e.starts_with("store backend: redis:"), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

/// A server whose certificate another CA signed is refused with a certificate error; so is
/// one no system root vouches for when no CA is given.
#[tokio::test]
async fn redis_tls_wrong_ca_is_a_certificate_error() {
    let (pki, other) = (Pki::new(), Pki::new());
    let server = RedisServer::start_tls(&pki.server(), false);
    let target = Target::Single(server.url.clone());
    for tls in [other.tls(false), Tls::default()] {
        let started = Instant::now();
        let e = RedisStore::connect_with_tls(&target, &tls, "ca")
            .await
            .err()
            .expect("connected to a server the CA did not sign");
        let e = e.to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        assert!(e.contains("invalid peer certificate"), "{e}");
        assert!(e.contains("UnknownIssuer"), "{e}");
    }
    // the right one: served
    let s = RedisStore::connect_with_tls(&target, &pki.tls(false), "ca")
        .await
        .unwrap();
    assert!(s.claim("k", 100).await.unwrap());
}
