//! Conformance tests every backend passes (run here against the embedded one).

use super::embedded::EmbeddedStore;
use super::{Store, Window};
use std::sync::Arc;

fn embedded() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    (dir, Arc::new(store))
}

#[tokio::test]
async fn a_key_is_claimed_once_and_can_be_given_back() {
    let (_d, s) = embedded();
    assert!(s.claim("dsn:A:first", 100).await.unwrap());
    assert!(!s.claim("dsn:A:first", 100).await.unwrap());
    assert!(s.claim("dsn:A:last", 100).await.unwrap());
    s.unclaim("dsn:A:first").await.unwrap();
    assert!(s.claim("dsn:A:first", 100).await.unwrap());
    // expired claims are purged
    assert_eq!(s.purge_expired(100).await.unwrap(), 2);
    assert!(s.claim("dsn:A:first", 200).await.unwrap());
}

#[tokio::test]
async fn of_racing_claims_exactly_one_wins() {
    let (_d, s) = embedded();
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

#[tokio::test]
async fn concurrent_adds_give_the_exact_total() {
    let (_d, s) = embedded();
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

#[tokio::test]
async fn a_window_weighs_the_previous_bucket_by_its_overlap() {
    let (_d, s) = embedded();
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

#[tokio::test]
async fn values_expire_and_are_purged() {
    let (_d, s) = embedded();
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

#[tokio::test]
async fn of_racing_first_values_all_callers_get_the_same_one() {
    let (_d, s) = embedded();
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

#[tokio::test]
async fn claim_until_expires_at_its_time() {
    let (_d, s) = embedded();
    assert!(super::claim_until(s.as_ref(), "k", 100, 10).await.unwrap());
    assert!(!super::claim_until(s.as_ref(), "k", 200, 99).await.unwrap());
    assert!(super::claim_until(s.as_ref(), "k", 200, 100).await.unwrap());
}
