use super::*;
use std::io::Write;

fn dir_with_list() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("examples")).unwrap();
    std::fs::File::create(d.path().join("examples/recipients.txt"))
        .unwrap()
        .write_all(b"alice@example.test\n")
        .unwrap();
    d
}

fn err(text: &str) -> String {
    let d = dir_with_list();
    Config::from_toml(text, d.path()).unwrap_err().to_string()
}

#[test]
fn shipped_example_is_valid_with_documented_defaults() {
    let d = dir_with_list();
    let c = Config::from_toml(EXAMPLE, d.path()).unwrap();
    assert_eq!(c.hostname, "mx.example.test");
    assert_eq!(c.state_dir, d.path().join("var"));
    assert_eq!(c.listeners[0].addr.to_string(), "127.0.0.1:2525");
    let dom = &c.domains[0];
    assert_eq!(
        dom.sources,
        [Source::List(d.path().join("examples/recipients.txt"))]
    );
    assert_eq!(dom.next_hop, NextHop::Maildir(d.path().join("var/mail")));
    assert_eq!(dom.relay, RelayMode::InSession);
    assert_eq!(c.callout.positive_refresh, Duration::from_secs(7 * 86400));
    assert_eq!(c.callout.positive_expire, Duration::from_secs(31 * 86400));
    assert_eq!(c.callout.negative_refresh, Duration::from_secs(3 * 3600));
    assert_eq!(c.callout.negative_expire, Duration::from_secs(3 * 86400));
    assert_eq!(c.callout.catch_all, CatchAllPolicy::Defer);
    assert_eq!(c.limits.max_message_size, 10_240_000);
    let printed = c.to_toml();
    assert!(printed.contains("positive_refresh = \"1w\""), "{printed}");
    assert!(printed.contains("next_hop = \"maildir:"), "{printed}");
}

const BASE: &str =
    "hostname = \"mx.example.test\"\nstate_dir = \"var\"\n[[listen]]\naddr = \"127.0.0.1:2525\"\n";

fn with_domain(extra: &str) -> String {
    format!(
        "{BASE}[[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:2526\"]\nnext_hop = \"smtp:127.0.0.1:2526\"\n{extra}"
    )
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let e = err(&with_domain("relya = \"in-session\"\n"));
    assert!(e.contains("relya"), "{e}");
    let e = err(&format!("{}[limits]\nmax_rcpt = 5\n", with_domain("")));
    assert!(e.contains("max_rcpt"), "{e}");
}

#[test]
fn policy_and_milter_listen_on_unix_sockets_too() {
    let d = dir_with_list();
    let text = with_domain("").replace(
        "[[domain]]",
        "[[listen]]\naddr = \"unix:/var/spool/postfix/backstop/policy\"\nprotocol = \"policy\"\n\
         [[listen]]\naddr = \"unix:milter.sock\"\nprotocol = \"milter\"\n[[domain]]",
    );
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert_eq!(
        c.listeners[1].addr,
        ListenAddr::Unix("/var/spool/postfix/backstop/policy".into())
    );
    // relative to the configuration file, as every other path
    assert_eq!(
        c.listeners[2].addr,
        ListenAddr::Unix(d.path().join("milter.sock"))
    );
    assert!(
        c.to_toml()
            .contains("addr = \"unix:/var/spool/postfix/backstop/policy\"")
    );
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        (with_domain("relay = \"later\"\n"), "domain[0].relay"),
        (
            with_domain("").replace("smtp:127.0.0.1:2526", "smtp:nowhere"),
            "domain[0].next_hop",
        ),
        (
            with_domain("").replace("callout:127.0.0.1:2526", "ldap:x"),
            "domain[0].recipients[0]",
        ),
        (
            with_domain("").replace("callout:127.0.0.1:2526", "list:missing.txt"),
            "domain[0].recipients[0]",
        ),
        (
            with_domain("").replace("127.0.0.1:2525", "localhost"),
            "listen[0].addr",
        ),
        (
            with_domain("").replace("2525\"\n", "2525\"\nprotocol = \"lmtp\"\n"),
            "listen[0].protocol",
        ),
        (
            // SMTP clients have an IP address: not on a socket file
            with_domain("").replace("127.0.0.1:2525", "unix:/run/backstop/smtp"),
            "listen[0].addr",
        ),
        (
            with_domain("").replace(
                "[[domain]]",
                "[[listen]]\naddr = \"127.0.0.1:2525\"\nprotocol = \"policy\"\n[[domain]]",
            ),
            "listen[1].addr",
        ),
        (
            with_domain("").replace("example.test\"\nrecip", "exa mple\"\nrecip"),
            "domain[0].name",
        ),
        (
            format!("{}[callout]\ntimeout = \"soon\"\n", with_domain("")),
            "callout.timeout",
        ),
        (
            format!("{}[callout]\ncatch_all = \"accept\"\n", with_domain("")),
            "callout.catch_all",
        ),
        (
            format!("{}[callout]\nnegative_refresh = \"4d\"\n", with_domain("")),
            "callout.negative_refresh",
        ),
        (
            format!("{}[limits]\nmax_recipients = 5\n", with_domain("")),
            "limits.max_recipients",
        ),
        (BASE.to_string(), "domain"),
        (
            format!(
                "{}{}",
                with_domain(""),
                "[[domain]]\nname = \"EXAMPLE.test\"\nrecipients = [\"callout:h:1\"]\nnext_hop = \"smtp:h:1\"\n"
            ),
            "domain[1].name",
        ),
    ];
    for (text, key) in cases {
        let e = err(&text);
        assert!(e.starts_with(&format!("{key}: ")), "{key}: {e}");
    }
    let e = err(&with_domain("relay = \"later\"\n"));
    assert!(e.contains("\"in-session\" or \"queue\""), "{e}");
}

#[test]
fn queue_keys_from_the_issue_work_as_written() {
    let text = format!(
        "{}relay = \"queue\"\n{}",
        with_domain(""),
        r#"
[[listen]]
addr = "127.0.0.1:2587"
relay_from = ["127.0.0.0/8", "10.0.0.0/8"]

[[route]]
domain = "partner.test"            # mail for this domain goes here instead of its MX
next_hop = "smtp:127.0.0.1:2627"

[delivery]
resolver = "127.0.0.1:5353"        # DNS server for MX lookups (default: the system's)
"#
    );
    let d = dir_with_list();
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert_eq!(c.domains[0].relay, RelayMode::Queue);
    let relay = &c.listeners[1];
    assert!(relay.may_relay("10.1.2.3".parse().unwrap()));
    assert!(relay.may_relay("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!relay.may_relay("192.0.2.1".parse().unwrap()));
    assert!(!c.listeners[0].may_relay("127.0.0.1".parse().unwrap()));
    let dom = |s: &str| Domain::parse(s, false).unwrap();
    assert_eq!(
        c.route(&dom("partner.test")),
        NextHop::Smtp(HostPort::parse("127.0.0.1:2627").unwrap())
    );
    assert_eq!(c.route(&dom("elsewhere.test")), NextHop::Mx);
    assert_eq!(c.route(&dom("example.test")), c.domains[0].next_hop);
    assert_eq!(c.dns.resolver, Some("127.0.0.1:5353".parse().unwrap()));
    // Postfix-like defaults
    assert_eq!(c.delivery.retry_min, Duration::from_secs(300));
    assert_eq!(c.delivery.retry_max, Duration::from_secs(3600));
    assert_eq!(c.delivery.max_age, Duration::from_secs(5 * 86400));
    assert_eq!(c.delivery.smtp_port, 25);
    let printed = c.to_toml();
    assert!(
        printed.contains("\"127.0.0.0/8\",\n    \"10.0.0.0/8\","),
        "{printed}"
    );
    assert!(
        printed.contains("next_hop = \"smtp:127.0.0.1:2627\""),
        "{printed}"
    );
}

#[test]
fn host_port_forms() {
    assert_eq!(HostPort::parse("[::1]:25").unwrap().to_string(), "[::1]:25");
    assert_eq!(
        HostPort::parse("mail.internal.test:2526").unwrap().host,
        "mail.internal.test"
    );
    assert!(HostPort::parse("h:0").is_none());
    assert!(HostPort::parse(":25").is_none());
}

#[test]
fn batv_keys_modes_and_bounces() {
    let c = Config::from_toml(
        &with_domain(
            "batv = \"enforce\"\nbackscatter = \"quarantine\"\n[batv]\nkeys = [\"2:new\", \"1:old\"]\nwarmup = \"3d\"\n[bounces]\nper_recipient = 5\n",
        ),
        dir_with_list().path(),
    )
    .unwrap();
    assert_eq!(c.domains[0].batv, BatvMode::Enforce);
    assert_eq!(c.domains[0].backscatter, BackscatterAction::Quarantine);
    assert_eq!(
        c.batv.keys.iter().map(|k| k.number).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(c.batv.validity, Duration::from_secs(7 * 86400));
    assert_eq!(c.batv.warmup, Duration::from_secs(3 * 86400));
    assert_eq!(c.bounces.per_recipient, 5);
    assert_eq!(c.bounces.relay_hosts, ["mx.example.test"]);
    assert_eq!(c.bounces.sent_log, Duration::from_secs(14 * 86400));
    let printed = c.to_toml();
    assert!(printed.contains("\"2:(secret)\""), "{printed}");
    assert!(
        !printed.contains("new"),
        "secrets are never printed: {printed}"
    );
    // defaults
    let c = Config::from_toml(&with_domain(""), dir_with_list().path()).unwrap();
    assert_eq!(c.domains[0].batv, BatvMode::Off);
    assert_eq!(c.domains[0].backscatter, BackscatterAction::Tag);
    assert!(c.batv.exempt.contains(&"*-bounces+*@*".to_string()));
}

#[test]
fn bad_batv_settings_name_their_key() {
    for (extra, key, words) in [
        ("batv = \"on\"\n", "domain[0].batv", "expected \"off\""),
        (
            "backscatter = \"drop\"\n",
            "domain[0].backscatter",
            "expected \"accept\"",
        ),
        ("[batv]\nkeys = [\"secret\"]\n", "batv.keys[0]", "N:SECRET"),
        (
            "[batv]\nkeys = [\"12:s\"]\n",
            "batv.keys[0]",
            "not a key number",
        ),
        ("[batv]\nkeys = [\"1:\"]\n", "batv.keys[0]", "1 to 64 bytes"),
        (
            "[batv]\nkeys = [\"1:a\", \"1:b\"]\n",
            "batv.keys[1]",
            "used twice",
        ),
        (
            "[batv]\nvalidity = \"36h\"\n",
            "batv.validity",
            "whole days",
        ),
        (
            "[bounces]\nper_recipient = 0\n",
            "bounces.per_recipient",
            "greater than 0",
        ),
        (
            "[bounces]\nrelay_hosts = [\"not a host\"]\n",
            "bounces.relay_hosts[0]",
            "not a host name",
        ),
    ] {
        let e = err(&with_domain(extra));
        assert!(e.starts_with(key) && e.contains(words), "{extra}: {e}");
    }
}

#[test]
fn harvest_and_connection_limits() {
    let c = Config::from_toml(&with_domain(""), dir_with_list().path()).unwrap();
    assert_eq!((c.harvest.tarpit_after, c.harvest.close_after), (10, 20));
    assert_eq!(c.harvest.block_for, Duration::from_secs(3600));
    assert_eq!(c.limits.max_connections_per_ip, 50);
    assert_eq!(c.limits.connection_rate_per_ip, 0);
    for (extra, key, words) in [
        (
            "[harvest]\ntarpit_after = 5\nclose_after = 5\n",
            "harvest.close_after",
            "greater than",
        ),
        (
            "[harvest]\ntarpit_delay = \"1m\"\ntarpit_max = \"10s\"\n",
            "harvest.tarpit_delay",
            "longer",
        ),
        (
            "[harvest]\nexempt = [\"nonsense\"]\n",
            "harvest.exempt[0]",
            "not a network",
        ),
        (
            "[harvest]\nwindow = \"0s\"\n",
            "harvest.window",
            "at least 1s",
        ),
        (
            "[limits]\nmax_connections_per_ip = 0\n",
            "limits.max_connections_per_ip",
            "greater than 0",
        ),
    ] {
        let e = err(&with_domain(extra));
        assert!(e.starts_with(key) && e.contains(words), "{extra}: {e}");
    }
}

#[test]
fn web_listener_settings() {
    let d = dir_with_list();
    // the shipped example listens on loopback, lets loopback read, and has no token
    let c = Config::from_toml(EXAMPLE, d.path()).unwrap();
    assert_eq!(c.web.addr, Some("127.0.0.1:8025".parse().unwrap()));
    assert_eq!(c.web.token, None);
    let allow: Vec<String> = c.web.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["127.0.0.0/8", "::1/128"]);
    // none configured: no listener
    let c = Config::from_toml(&with_domain(""), d.path()).unwrap();
    assert_eq!(c.web.addr, None);
    // the token is never printed
    let text = with_domain("[web]\naddr = \"[::1]:0\"\ntoken = \"0123456789abcdef\"\n");
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert_eq!(c.web.token.as_deref(), Some("0123456789abcdef"));
    let printed = c.to_toml();
    assert!(!printed.contains("0123456789abcdef"), "{printed}");
    assert!(printed.contains("token = \"(secret)\""), "{printed}");
    for (extra, key, words) in [
        (
            "[web]\naddr = \"localhost\"\n",
            "web.addr",
            "127.0.0.1:8025",
        ),
        ("[web]\ntoken = \"short\"\n", "web.token", "at least 16"),
        (
            "[web]\nallow = [\"10.0.0.0/33\"]\n",
            "web.allow[0]",
            "not a network",
        ),
        ("[web]\nport = 8025\n", "port", "unknown"),
    ] {
        let e = err(&with_domain(extra));
        assert!(e.contains(key) && e.contains(words), "{extra}: {e}");
    }
}

#[test]
fn store_backends() {
    let d = dir_with_list();
    let c = Config::from_toml(&with_domain(""), d.path()).unwrap();
    assert!(matches!(c.store.backend, StoreBackend::Embedded));
    assert_eq!(c.store.namespace, "backstop");
    let text = with_domain("[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n");
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert!(
        matches!(&c.store.backend, StoreBackend::Redis(RedisTarget::Single(u)) if u == "redis://127.0.0.1:6379/0")
    );
    let text = with_domain(
        "[store]\nbackend = \"redis\"\ncluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\nnamespace = \"mx-eu\"\n",
    );
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert!(
        matches!(&c.store.backend, StoreBackend::Redis(RedisTarget::Cluster(n)) if n.len() == 2)
    );
    assert_eq!(c.store.namespace, "mx-eu");
    let text = with_domain(
        "[store]\nbackend = \"redis\"\nsentinel = [\"redis://127.0.0.1:26379\"]\nmaster = \"mymaster\"\n",
    );
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert!(matches!(
        &c.store.backend,
        StoreBackend::Redis(RedisTarget::Sentinel { sentinels, master })
            if sentinels.len() == 1 && master == "mymaster"
    ));
    for (extra, key, words) in [
        (
            "[store]\nbackend = \"redis\"\nsentinel = [\"redis://h:1\"]\n",
            "store.master",
            "go together",
        ),
        (
            "[store]\nbackend = \"memcached\"\n",
            "store.backend",
            "expected \"embedded\"",
        ),
        (
            "[store]\nbackend = \"redis\"\n",
            "store.url",
            "needs one of url",
        ),
        (
            "[store]\nurl = \"redis://h:1/\"\n",
            "store.backend",
            "for backend",
        ),
        (
            "[store]\nbackend = \"redis\"\nurl = \"http://h:1/\"\n",
            "store.url",
            "expected redis://",
        ),
        (
            "[store]\nbackend = \"redis\"\ncluster = [\"h:1\"]\n",
            "store.cluster[0]",
            "expected redis://",
        ),
        (
            "[store]\nbackend = \"redis\"\nurl = \"redis://h:1/\"\nnamespace = \"a b\"\n",
            "store.namespace",
            "letters",
        ),
    ] {
        let e = err(&with_domain(extra));
        assert!(e.contains(key) && e.contains(words), "{extra}: {e}");
    }
}

/// A CA (`tls/ca.pem`) and a client certificate it signed (`tls/client.pem`, `tls/client.key`),
/// plus a key of another certificate (`tls/other.key`), beside the list file.
fn dir_with_tls() -> tempfile::TempDir {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let d = dir_with_list();
    let tls = d.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(tls.join("ca.pem"), ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["gateway.example.test".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(tls.join("client.pem"), cert.pem()).unwrap();
    std::fs::write(tls.join("client.key"), key.serialize_pem()).unwrap();
    let other = KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(tls.join("other.key"), other).unwrap();
    d
}

/// The error of a configuration with `[store] backend = "redis"` and `store` (files from `d`).
fn store_error(d: &tempfile::TempDir, store: &str) -> String {
    let text = with_domain(&format!("[store]\nbackend = \"redis\"\n{store}"));
    Config::from_toml(&text, d.path()).unwrap_err().to_string()
}

#[test]
fn store_over_tls_takes_rediss_urls_and_certificate_files() {
    let d = dir_with_tls();
    let text = with_domain(
        "[store]\nbackend = \"redis\"\nurl = \"rediss://:pw@redis.example.test:6380/0\"\n\
         tls_ca = \"tls/ca.pem\"\ntls_cert = \"tls/client.pem\"\ntls_key = \"tls/client.key\"\n",
    );
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert!(matches!(
        &c.store.backend,
        StoreBackend::Redis(RedisTarget::Single(u)) if u == "rediss://:pw@redis.example.test:6380/0"
    ));
    // relative to the config file's directory
    assert_eq!(c.store.tls_ca, Some(d.path().join("tls/ca.pem")));
    assert_eq!(c.store.tls_cert, Some(d.path().join("tls/client.pem")));
    assert_eq!(c.store.tls_key, Some(d.path().join("tls/client.key")));
    // no tls_ca: the system's roots
    let text = with_domain("[store]\nbackend = \"redis\"\nurl = \"rediss://h:6380/\"\n");
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert_eq!(
        (c.store.tls_ca, c.store.tls_cert, c.store.tls_key),
        (None, None, None)
    );
    for nodes in [
        "cluster = [\"rediss://h:7000\", \"rediss://h:7001\"]\n",
        "sentinel = [\"rediss://h:26379\"]\nmaster = \"mymaster\"\n",
    ] {
        let text = with_domain(&format!(
            "[store]\nbackend = \"redis\"\n{nodes}tls_ca = \"tls/ca.pem\"\n"
        ));
        let c = Config::from_toml(&text, d.path()).unwrap();
        assert_eq!(c.store.tls_ca, Some(d.path().join("tls/ca.pem")), "{nodes}");
    }
}

#[test]
fn store_tls_errors_name_the_key_and_the_file() {
    let d = dir_with_tls();
    let dir = d.path().display().to_string();
    let url = "url = \"rediss://h:6380/\"\n";
    for (store, key, words) in [
        // TLS options without rediss://
        (
            "url = \"redis://h:6379/\"\ntls_ca = \"tls/ca.pem\"\n",
            "store.tls_ca",
            "rediss://",
        ),
        (
            "url = \"redis://h:6379/\"\ntls_cert = \"tls/client.pem\"\ntls_key = \"tls/client.key\"\n",
            "store.tls_cert",
            "rediss://",
        ),
        (
            "cluster = [\"redis://h:7000\"]\ntls_key = \"tls/client.key\"\n",
            "store.tls_key",
            "rediss://",
        ),
        // one of the pair
        (
            "url = \"rediss://h:6380/\"\ntls_cert = \"tls/client.pem\"\n",
            "store.tls_key",
            "go together",
        ),
        (
            "url = \"rediss://h:6380/\"\ntls_key = \"tls/client.key\"\n",
            "store.tls_cert",
            "go together",
        ),
        // mixed schemes, and the certificate check turned off
        (
            "cluster = [\"rediss://h:7000\", \"redis://h:7001\"]\n",
            "store.cluster",
            "mixes redis:// and rediss://",
        ),
        (
            "sentinel = [\"redis://h:1\", \"rediss://h:2\"]\nmaster = \"m\"\n",
            "store.sentinel",
            "mixes",
        ),
        (
            "url = \"rediss://h:6380/#insecure\"\n",
            "store.url",
            "certificate check off",
        ),
    ] {
        let e = store_error(&d, store);
        assert!(e.starts_with(key) && e.contains(words), "{store}: {e}");
    }
    for (files, key, words) in [
        (
            "tls_ca = \"tls/missing.pem\"\n",
            "store.tls_ca",
            "tls/missing.pem: cannot read",
        ),
        (
            "tls_ca = \"tls/client.key\"\n",
            "store.tls_ca",
            "tls/client.key: no certificate",
        ),
        (
            "tls_cert = \"tls/client.key\"\ntls_key = \"tls/client.key\"\n",
            "store.tls_cert",
            "tls/client.key: no certificate",
        ),
        (
            "tls_cert = \"tls/client.pem\"\ntls_key = \"tls/ca.pem\"\n",
            "store.tls_key",
            "tls/ca.pem: no private key",
        ),
        (
            "tls_cert = \"tls/client.pem\"\ntls_key = \"tls/other.key\"\n",
            "store.tls_key",
            "tls/other.key: not the key of the certificate in",
        ),
    ] {
        let e = store_error(&d, &format!("{url}{files}"));
        assert!(
            e.starts_with(key) && e.contains(&format!("{dir}/{words}")),
            "{files}: {e}"
        );
    }
    // the embedded store has no TLS
    let text = with_domain("[store]\ntls_ca = \"tls/ca.pem\"\n");
    let e = Config::from_toml(&text, d.path()).unwrap_err().to_string();
    assert!(
        e.starts_with("store.tls_ca") && e.contains("rediss://"),
        "{e}"
    );
}

#[test]
fn one_resolver_for_everything_in_dns_and_its_older_name() {
    let base = "hostname = \"mx.example.test\"\nstate_dir = \"/tmp\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n\
        [[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:2526\"]\n\
        next_hop = \"smtp:127.0.0.1:2526\"\n";
    let parse = |extra: &str| Config::from_toml(&format!("{base}{extra}"), Path::new("/"));
    let c = parse("").unwrap();
    assert_eq!(
        (c.dns.resolver, c.dns.timeout.as_secs(), c.dns.attempts),
        (None, 5, 2)
    );
    let c = parse("[dns]\nresolver = \"127.0.0.1\"\ntimeout = \"2s\"\nattempts = 3\n").unwrap();
    assert_eq!(c.dns.resolver, Some("127.0.0.1:53".parse().unwrap()));
    assert_eq!((c.dns.timeout.as_secs(), c.dns.attempts), (2, 3));
    let c = parse("[delivery]\nresolver = \"127.0.0.1:5353\"\n").unwrap();
    assert_eq!(c.dns.resolver, Some("127.0.0.1:5353".parse().unwrap()));
    let both = "[delivery]\nresolver = \"127.0.0.1:5353\"\n[dns]\nresolver = \"127.0.0.1:53\"\n";
    let e = parse(both).unwrap_err().to_string();
    assert!(
        e.starts_with("delivery.resolver: the resolver is set in [dns]"),
        "{e}"
    );
    let e = parse("[dns]\nattempts = 0\n").unwrap_err().to_string();
    assert!(e.starts_with("dns.attempts:"), "{e}");
    let e = parse("[dns]\nresolver = \"dns.example\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("dns.resolver:"), "{e}");
}

fn with_ldap(ldap: &str) -> String {
    format!(
        "{BASE}[[domain]]\nname = \"example.test\"\nrecipients = [\"ldap:corp\"]\n\
         next_hop = \"smtp:127.0.0.1:2526\"\n[[ldap]]\nname = \"corp\"\n\
         base = \"dc=example,dc=test\"\n{ldap}"
    )
}

#[test]
fn an_ldap_source_names_its_directory_whose_password_is_never_printed() {
    let d = dir_with_list();
    std::fs::write(d.path().join("ldap.secret"), "s3cret-pw\n").unwrap();
    let text = with_ldap(
        "url = \"ldaps://dc1.example.test ldaps://dc2.example.test:636\"\n\
         bind_dn = \"cn=backstop,dc=example,dc=test\"\nbind_password_file = \"ldap.secret\"\n\
         filter = \"active-directory\"\n",
    );
    let c = Config::from_toml(&text, d.path()).unwrap();
    assert_eq!(c.domains[0].sources, [Source::Ldap("corp".into())]);
    let l = &c.ldap[0];
    assert_eq!(
        l.urls,
        ["ldaps://dc1.example.test", "ldaps://dc2.example.test:636"]
    );
    assert_eq!(l.bind_password.as_deref(), Some("s3cret-pw"));
    assert_eq!(
        l.filter.as_str(),
        backstop_proto::ldap_filter::ACTIVE_DIRECTORY
    );
    assert_eq!((l.timeout, l.max_connections), (Duration::from_secs(5), 8));
    let printed = c.to_toml();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(
        printed.contains("bind_password = \"(secret)\""),
        "{printed}"
    );
    assert!(
        printed.contains("recipients = [\"ldap:corp\"]"),
        "{printed}"
    );
    // read from a file, the password is not in the configuration; given inline, it is
    assert!(c.secrets().is_empty(), "{:?}", c.secrets());
    let inline = with_ldap(
        "url = [\"ldap://127.0.0.1:389\"]\nbind_dn = \"cn=b\"\nbind_password = \"pw\"\n\
         filter = \"(uid=%u)\"\n",
    );
    let c2 = Config::from_toml(&inline, d.path()).unwrap();
    assert_eq!(c2.secrets(), ["ldap.bind_password"]);
    assert_eq!(c2.ldap[0].filter.render("a*b@example.test"), "(uid=a\\2ab)");
    // a changed password is told, never shown
    let mut c3 = c2.clone();
    c3.ldap[0].bind_password = Some("other".into());
    assert_eq!(
        diff::changes(&c2, &c3),
        ["ldap corp: bind_password: changed (secret)"]
    );
}

#[test]
fn bad_ldap_settings_name_their_key() {
    let url = "url = \"ldap://127.0.0.1\"\n";
    let ok = format!("{url}filter = \"openldap\"\n");
    for (extra, key, words) in [
        (
            url.to_string(),
            "ldap[0].filter",
            "\"active-directory\", \"openldap\"",
        ),
        (
            "url = \"http://dc.example.test\"\nfilter = \"openldap\"\n".into(),
            "ldap[0].url",
            "expected ldap://HOST[:PORT]",
        ),
        (
            "url = []\nfilter = \"openldap\"\n".into(),
            "ldap[0].url",
            "at least one URL",
        ),
        (
            format!("{url}filter = \"(mail=%x)\"\n"),
            "ldap[0].filter",
            "unknown placeholder %x",
        ),
        (
            format!("{url}filter = \"(objectClass=user)\"\n"),
            "ldap[0].filter",
            "would not depend on the address",
        ),
        (
            "url = \"ldaps://dc.example.test\"\nstarttls = true\nfilter = \"openldap\"\n".into(),
            "ldap[0].starttls",
            "for ldap:// URLs",
        ),
        (
            format!("{ok}tls_ca = \"examples/recipients.txt\"\n"),
            "ldap[0].tls_ca",
            "only for TLS",
        ),
        (
            format!("{ok}starttls = true\ntls_ca = \"examples/recipients.txt\"\n"),
            "ldap[0].tls_ca",
            "no certificate",
        ),
        (
            format!("{ok}bind_dn = \"cn=b\"\n"),
            "ldap[0].bind_password",
            "bind_dn needs a password",
        ),
        (
            format!("{ok}bind_password = \"pw\"\n"),
            "ldap[0].bind_dn",
            "without bind_dn",
        ),
        (
            format!("{ok}bind_dn = \"cn=b\"\nbind_password = \"pw\"\nbind_password_file = \"x\"\n"),
            "ldap[0].bind_password_file",
            "given twice",
        ),
        (
            format!("{ok}bind_dn = \"cn=b\"\nbind_password_file = \"missing.secret\"\n"),
            "ldap[0].bind_password_file",
            "cannot read it",
        ),
        (
            format!("{ok}timeout = \"0s\"\n"),
            "ldap[0].timeout",
            "at least 1s",
        ),
        (
            format!("{ok}max_connections = 0\n"),
            "ldap[0].max_connections",
            "1 to 1000",
        ),
        (
            format!("{ok}[[ldap]]\nname = \"corp\"\nbase = \"o=x\"\n{ok}"),
            "ldap[1].name",
            "configured twice",
        ),
    ] {
        let e = err(&with_ldap(&extra));
        assert!(e.starts_with(&format!("{key}: ")), "{extra}: {e}");
        assert!(e.contains(words), "{extra}: {e}");
    }
    let e = err(&with_ldap(&ok).replace("ldap:corp", "ldap:sales"));
    assert!(
        e.starts_with("domain[0].recipients[0]: ") && e.contains("(configured: corp)"),
        "{e}"
    );
}

#[test]
fn tls_reports_come_from_postmaster_at_the_host_names_domain_unless_set() {
    let d = dir_with_list();
    let c = Config::from_toml(&with_domain(""), d.path()).unwrap();
    assert!(c.reports.tls_reports);
    assert_eq!(c.tls_reports_from(), "postmaster@example.test");
    let two_labels = with_domain("").replace("mx.example.test", "example.test");
    let c = Config::from_toml(&two_labels, d.path()).unwrap();
    assert_eq!(c.tls_reports_from(), "postmaster@example.test");
    let set =
        with_domain("[reports]\ntls_reports = false\ntls_reports_from = \"tls@example.test\"\n");
    let c = Config::from_toml(&set, d.path()).unwrap();
    assert!(!c.reports.tls_reports);
    assert_eq!(c.tls_reports_from(), "tls@example.test");
    let e = err(&with_domain(
        "[reports]\ntls_reports_from = \"not an address\"\n",
    ));
    assert!(e.contains("reports.tls_reports_from"), "{e}");
}
