use super::*;

const NOW: u64 = 1_795_392_000;

fn harvest(extra: &str) -> (tempfile::TempDir, Harvest) {
    let (d, cfg, store) = crate::test_support::for_tests(extra);
    (d, Harvest::new(cfg, store))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn tarpit_grows_then_caps_and_the_session_is_cut_off() {
    let (_d, h) = harvest(
        "[harvest]\ntarpit_after = 3\ntarpit_delay = \"1s\"\ntarpit_max = \"5s\"\nclose_after = 8\n",
    );
    let delays: Vec<Option<u64>> = (0..9).map(|n| h.tarpit(n).map(|d| d.as_secs())).collect();
    assert_eq!(
        delays,
        [
            None,
            None,
            None,
            Some(1),
            Some(2),
            Some(4),
            Some(5),
            Some(5),
            Some(5)
        ]
    );
    assert_eq!(h.tarpit(u32::MAX), Some(Duration::from_secs(5)));
    assert!(!h.cut_off(7));
    assert!(h.cut_off(8));
}

#[tokio::test]
async fn unknown_recipients_block_the_client_then_its_network() {
    let (_d, h) = harvest("[harvest]\nblock_after = 3\nblock_after_net = 5\n");
    let a = ip("192.0.2.7");
    for _ in 0..3 {
        assert_eq!(h.unknown_rcpt(a, NOW).await.unwrap(), None);
    }
    assert!(h.admit(a, false, NOW).await.is_ok());
    assert_eq!(
        h.unknown_rcpt(a, NOW).await.unwrap().as_deref(),
        Some("192.0.2.7")
    );
    let r = h.admit(a, false, NOW).await.err().unwrap();
    assert_eq!(r.why, "blocked");
    assert_eq!(
        r.reply.to_string(),
        "554 5.7.1 mx.example.test Service refused: too many unknown recipients from 192.0.2.7; try again later"
    );
    // exempt clients are never blocked; another client of the network still gets in...
    assert!(h.admit(a, true, NOW).await.is_ok());
    let b = ip("192.0.2.8");
    assert!(h.admit(b, false, NOW).await.is_ok());
    // ...until the network as a whole goes over its limit (4 from a, 2 from b)
    assert_eq!(h.unknown_rcpt(b, NOW).await.unwrap(), None);
    assert_eq!(
        h.unknown_rcpt(b, NOW).await.unwrap().as_deref(),
        Some("192.0.2.0/24")
    );
    assert_eq!(
        h.admit(ip("192.0.2.9"), false, NOW)
            .await
            .err()
            .unwrap()
            .why,
        "blocked-network"
    );
    // other networks are untouched; blocks end after block_for (1h)
    assert!(h.admit(ip("198.51.100.1"), false, NOW).await.is_ok());
    assert!(h.admit(a, false, NOW + 3600).await.is_ok());
}

#[tokio::test]
async fn connection_limits_per_ip_in_total_and_per_minute() {
    let (_d, h) = harvest(
        "[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\nconnection_rate_per_ip = 4\n",
    );
    let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
    let a1 = h.admit(a, false, NOW).await.unwrap();
    let _a2 = h.admit(a, false, NOW).await.unwrap();
    assert_eq!(
        h.admit(a, false, NOW).await.err().unwrap().why,
        "connections-per-ip"
    );
    let _b1 = h.admit(b, false, NOW).await.unwrap();
    assert_eq!(
        h.admit(ip("198.51.100.1"), false, NOW)
            .await
            .err()
            .unwrap()
            .why,
        "too-many-connections"
    );
    drop(a1);
    // a's slot is free again; its third connection this minute is still within the rate
    let _a3 = h.admit(a, false, NOW).await.unwrap();
    drop(_a3);
    drop(_a2);
    let _a4 = h.admit(a, false, NOW).await.unwrap();
    assert_eq!(
        h.admit(a, false, NOW).await.err().unwrap().why,
        "connection-rate"
    );
    // IPv4-mapped IPv6 is the same client
    assert_eq!(
        network_of(ip("::ffff:192.0.2.1")).to_string(),
        "192.0.2.0/24"
    );
    assert_eq!(network_of(b).to_string(), "2001:db8::/64");
}

#[tokio::test]
async fn unblock_lifts_a_block_and_starts_the_count_afresh() {
    let (_d, h) = harvest("[harvest]\nblock_after = 2\nblock_after_net = 100\n");
    let a = ip("192.0.2.7");
    for _ in 0..2 {
        assert_eq!(h.unknown_rcpt(a, NOW).await.unwrap(), None);
    }
    assert!(h.unknown_rcpt(a, NOW).await.unwrap().is_some());
    let store = h.store.as_ref();
    assert_eq!(blocked(store, NOW).await.unwrap().len(), 1);
    assert!(h.admit(a, false, NOW).await.is_err());
    assert!(unblock(store, "192.0.2.7", NOW + 1).await.unwrap());
    assert!(!unblock(store, "192.0.2.7", NOW + 1).await.unwrap());
    assert!(!unblock(store, "198.51.100.1", NOW + 1).await.unwrap());
    assert!(blocked(store, NOW + 1).await.unwrap().is_empty());
    assert!(h.admit(a, false, NOW + 1).await.is_ok());
    // the old count is forgotten: two more unknown recipients are allowed, the third blocks
    for _ in 0..2 {
        assert_eq!(h.unknown_rcpt(a, NOW + 2).await.unwrap(), None);
    }
    assert!(h.unknown_rcpt(a, NOW + 2).await.unwrap().is_some());
    assert!(h.admit(a, false, NOW + 2).await.is_err());
}
