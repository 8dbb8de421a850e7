//! Our own reputation with the real binary: a real DNS server on loopback (dnsmasq) serves a
//! test blocklist zone in which the gateway's IP is listed, then removed; each change is one
//! alert, in the log and at the webhook.

mod support;

use support::dns::Dns;
use support::{Backstop, list_config, wait_until, world_dir};

#[test]
fn listed_then_delisted_our_ip_raises_one_alert_each() {
    let dir = world_dir();
    let hosts = dir.path().join("bl.hosts");
    std::fs::write(&hosts, "127.0.0.2 10.2.0.192.bl.test\n").unwrap();
    let dns = Dns::start(&[format!("--addn-hosts={}", hosts.display())]);
    let base = list_config(dir.path(), &["alice@example.test"], "maildir:mail", "");
    let config = format!(
        "{base}\n[delivery]\nresolver = \"{}\"\n\
         [reputation]\nips = [\"192.0.2.10\", \"192.0.2.11\"]\ndnsbl = [\"bl.test\"]\ninterval = \"1s\"\n\
         [web]\naddr = \"127.0.0.1:0\"\n",
        dns.addr
    );
    let b = Backstop::start(dir.path(), &config);
    let listed = ["event=\"alert\"", "kind=\"dnsbl_listed\""];
    assert_eq!(b.count_reaching(&listed, 1), 1, "{}", b.log());
    let log = b.log();
    assert!(
        log.contains("detail=\"192.0.2.10 is listed in bl.test (127.0.0.2)\""),
        "{log}"
    );
    // the other IP is clean: no alert for it; checks go on every second without repeating
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(b.count_reaching(&listed, 1), 1, "{}", b.log());
    assert_eq!(b.count(&["event=\"alert\"", "192.0.2.11"]), 0);
    let gauge =
        |ip: &str, v: u8| format!("backstop_dnsbl_listed{{ip=\"{ip}\",zone=\"bl.test\"}} {v}");
    let metrics = || support::http(b.web(), "GET", "/metrics", None).1;
    let m = metrics();
    assert!(m.lines().any(|l| l == gauge("192.0.2.10", 1)), "{m}");
    assert!(m.lines().any(|l| l == gauge("192.0.2.11", 0)), "{m}");
    let (_, screen, _) = b.cli(&["status"]);
    assert!(
        screen.contains(
            "  192.0.2.10 in bl.test: listed 127.0.0.2\n  192.0.2.11 in bl.test: clean\n"
        ),
        "{screen}"
    );

    // removed from the list
    std::fs::write(&hosts, "").unwrap();
    dns.reload();
    let delisted = ["event=\"alert\"", "kind=\"dnsbl_delisted\""];
    assert!(wait_until(15, || b.count(&delisted) == 1), "{}", b.log());
    assert!(
        b.log()
            .contains("detail=\"192.0.2.10 is no longer listed in bl.test\"")
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(b.count_reaching(&delisted, 1), 1);
    assert_eq!(b.count_reaching(&listed, 1), 1);
    let m = metrics();
    assert!(m.lines().any(|l| l == gauge("192.0.2.10", 0)), "{m}");
    let (_, screen, _) = b.cli(&["status"]);
    assert!(
        screen.contains("  192.0.2.10 in bl.test: clean\n"),
        "{screen}"
    );
}
