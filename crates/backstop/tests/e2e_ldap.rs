//! The `ldap:` recipient source end to end: the real binary asks a real OpenLDAP slapd on
//! loopback (tests/support/slapd.sh) at RCPT, with smtp-sink as the next hop. Users, aliases, a
//! group and a disabled account get the right answer; addresses built to widen the query reach
//! slapd escaped; with slapd stopped, known addresses are still accepted and unknown ones get
//! 451 (and health, metrics and status say so); restarted, it is used again; ldaps and
//! StartTLS with the configured CA.

mod support;

use std::path::Path;
use support::*;

/// The example directory's users, aliases (OpenLDAP's and AD's) and group; not the disabled.
const FILTER: &str = "(&(|(mail=%s)(mailAlternateAddress=%s)(proxyAddresses=smtp:%s))\
                      (!(accountStatus=disabled)))";

/// A config for example.test whose recipients come from `[[ldap]] corp` (`ldap` its other
/// keys), relayed to `sink`; the password in a file, the web listener on a free port.
fn ldap_config(dir: &Path, url: &str, ldap: &str, sink: u16) -> String {
    std::fs::write(dir.join("ldap.secret"), format!("{}\n", Slapd::ADMIN_PW)).unwrap();
    let extra = format!(
        "[web]\naddr = \"127.0.0.1:0\"\n[health]\ninterval = \"1s\"\n\
         [[ldap]]\nname = \"corp\"\nurl = \"{url}\"\nbase = \"{}\"\nbind_dn = \"{}\"\n\
         bind_password_file = {:?}\nfilter = \"{FILTER}\"\ntimeout = \"2s\"\n{ldap}",
        Slapd::BASE,
        Slapd::ADMIN_DN,
        dir.join("ldap.secret").display().to_string(),
    );
    let hop = format!("smtp:127.0.0.1:{sink}");
    config(
        &dir.join("state"),
        "example.test",
        &["ldap:corp".into()],
        &hop,
        &extra,
    )
}

/// The reply to `RCPT TO:<rcpt>` in a new transaction.
fn rcpt(b: &Backstop, rcpt: &str) -> String {
    let (mut c, _) = Client::connect(b.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<sender@client.test>");
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    c.cmd("QUIT");
    reply
}

fn accepted(reply: &str) -> bool {
    reply.starts_with("250 2.1.5")
}

fn unknown(reply: &str) -> bool {
    reply.starts_with("550 5.1.1")
}

/// The directory's line of `backstop status --json`.
fn directory_status(b: &Backstop) -> serde_json::Value {
    let (_, out, _) = b.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let list = v["backends"].as_array().cloned().unwrap_or_default();
    let found = list.into_iter().find(|b| b["role"] == "directory");
    found.unwrap_or_default()
}

#[test]
fn the_directory_decides_at_rcpt_and_a_stopped_one_defers_only_the_unknown() {
    let mut slapd = Slapd::start();
    let sink = Sink::start();
    let dir = world_dir();
    let b = Backstop::start(
        dir.path(),
        &ldap_config(dir.path(), &slapd.url(), "", sink.port),
    );
    for user in [
        "alice@example.test",
        "bob.alias@example.test",
        "bob.other@example.test",
        "sales@example.test",
    ] {
        let r = rcpt(&b, user);
        assert!(accepted(&r), "{user}: {r}");
    }
    for not in [
        "carol@example.test",
        "nobody@example.test",
        "dave@example.test",
        "*@example.test",
        "\"a)(mail=*\"@example.test",
    ] {
        let r = rcpt(&b, not);
        assert!(unknown(&r), "{not}: {r}");
    }
    // the addresses built to widen the query reached slapd escaped
    assert!(
        slapd.log_reaching("(mail=\\2A@example.test)"),
        "{}",
        slapd.log()
    );
    assert!(
        slapd.log_reaching("(mail=\"a\\29\\28mail=\\2A\"@example.test)"),
        "{}",
        slapd.log()
    );
    // verify names the entry, and the answer is cached: asked again, slapd is not
    let searches = slapd.filters().len();
    let (code, out, _) = b.cli(&["verify", "alice@example.test"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ldap:corp: found (cached")
            && out.contains("entry uid=alice,ou=people,dc=example,dc=test"),
        "{out}"
    );
    let (code, out, _) = b.cli(&["verify", "carol@example.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ldap:corp: no entry (cached"), "{out}");
    assert!(out.contains("reason: ldap-not-found"), "{out}");
    assert_eq!(slapd.filters().len(), searches);
    // the cache commands see the directory's answers; forgotten, carol is searched again
    let (_, out, _) = b.cli(&["cache", "show", "alice@example.test"]);
    assert!(
        out.contains("uid=alice,ou=people,dc=example,dc=test"),
        "{out}"
    );
    let (_, out, _) = b.cli(&["cache", "show", "@example.test"]);
    assert!(out.contains("carol@example.test: invalid"), "{out}");
    let (_, out, _) = b.cli(&["cache", "forget", "carol@example.test"]);
    assert_eq!(out.trim(), "carol@example.test: forgotten");
    assert!(unknown(&rcpt(&b, "carol@example.test")));
    assert_eq!(slapd.filters().len(), searches + 1);
    // one search for an address however many clients ask at once
    std::thread::scope(|s| {
        for _ in 0..10 {
            s.spawn(|| assert!(accepted(&rcpt(&b, "bob@example.test"))));
        }
    });
    let bob = slapd.filters();
    let bob = bob.iter().filter(|f| f.contains("(mail=bob@example.test)"));
    assert_eq!(bob.count(), 1, "{:?}", slapd.filters());

    slapd.stop();
    assert!(accepted(&rcpt(&b, "alice@example.test")));
    assert!(unknown(&rcpt(&b, "carol@example.test")));
    for _ in 0..3 {
        let r = rcpt(&b, "new@example.test");
        assert!(r.starts_with("451 4.4.3 "), "{r}");
    }
    assert!(wait_until(10, || directory_status(&b)["up"] == false));
    let status = directory_status(&b);
    assert_eq!(status["target"], "ldap:corp", "{status}");
    assert_eq!(status["for"][0], "example.test", "{status}");
    let (_, screen, _) = b.cli(&["status"]);
    assert!(
        screen.contains("directory ldap:corp for example.test: DOWN for "),
        "{screen}"
    );
    let (_, metrics) = http(b.web(), "GET", "/metrics", None);
    assert!(
        metrics.contains("backstop_directory_up{target=\"ldap:corp\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("backstop_directory_searches_total{directory=\"corp\",outcome=\"failed\"}"),
        "{metrics}"
    );
    // logged once, however often it was asked
    assert_eq!(
        b.count_reaching(&["directory cannot be used"], 1),
        1,
        "{}",
        b.log()
    );

    slapd.restart();
    // a user added now is found at once (nothing cached for it): the same backstop reconnected
    let erin = dir.path().join("erin.ldif");
    std::fs::write(
        &erin,
        format!(
            "dn: uid=erin,{}\nobjectClass: inetOrgPerson\n\
             uid: erin\ncn: Erin\nsn: Erin\nmail: erin@example.test\n",
            Slapd::BASE
        ),
    )
    .unwrap();
    slapd.add(&erin);
    let r = rcpt(&b, "erin@example.test");
    assert!(accepted(&r), "{r}");
    assert!(unknown(&rcpt(&b, "new@example.test")));
    assert_eq!(
        b.count_reaching(&["directory answers again"], 1),
        1,
        "{}",
        b.log()
    );
    assert!(wait_until(10, || directory_status(&b)["up"] == true));
}

#[test]
fn ldaps_and_starttls_trust_the_configured_ca_and_nothing_else() {
    let slapd = Slapd::start();
    let sink = Sink::start();
    let ca = format!("tls_ca = {:?}\n", slapd.ca_file().display().to_string());
    for (url, more) in [
        (slapd.ldaps_url(), ca.clone()),
        (slapd.url(), format!("starttls = true\n{ca}")),
    ] {
        let dir = world_dir();
        let b = Backstop::start(dir.path(), &ldap_config(dir.path(), &url, &more, sink.port));
        let r = rcpt(&b, "alice@example.test");
        assert!(accepted(&r), "{url} {more}: {r}");
        assert!(unknown(&rcpt(&b, "nobody@example.test")));
        let (code, out, err) = b.cli(&["check-config", "--connect"]);
        assert_eq!(code, 0, "{out}{err}");
        let answers = format!(
            "# directory ldap:corp: answers ({url}: bound as {}",
            Slapd::ADMIN_DN
        );
        assert!(out.contains(&answers), "{out}");
        assert!(out.contains("bind_password = \"(secret)\""), "{out}");
    }
    // a wrong password: refused at bind, said once with the server's reason, nothing accepted
    let dir = world_dir();
    let config = ldap_config(dir.path(), &slapd.url(), "", sink.port);
    std::fs::write(dir.path().join("ldap.secret"), "wrong\n").unwrap();
    let b = Backstop::start(dir.path(), &config);
    for _ in 0..2 {
        let r = rcpt(&b, "alice@example.test");
        assert!(r.starts_with("451 4.4.3 "), "{r}");
    }
    let said = ["directory cannot be used", "invalidCredentials"];
    assert_eq!(b.count_reaching(&said, 1), 1, "{}", b.log());
    let (code, out, _) = b.cli(&["check-config", "--connect"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("# directory ldap:corp: NOT answering: "),
        "{out}"
    );
    // without the CA, the test server's certificate is not trusted: nothing is accepted
    let dir = world_dir();
    let config = ldap_config(dir.path(), &slapd.ldaps_url(), "", sink.port);
    let b = Backstop::start(dir.path(), &config);
    let r = rcpt(&b, "alice@example.test");
    assert!(r.starts_with("451 4.4.3 "), "{r}");
    let said = b.count_reaching(&["directory cannot be used", "certificate"], 1);
    assert_eq!(said, 1, "{}", b.log());
}

/// A directory that takes connections and never answers (a firewall that drops, a hung
/// server): the connections it was sent, counted.
struct Silent {
    port: u16,
    taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = taken.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        });
        Silent { port, taken }
    }

    fn taken(&self) -> usize {
        self.taken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_directory_that_never_answers_holds_one_lookup_at_a_time_not_every_rcpt() {
    let silent = Silent::start();
    let sink = Sink::start();
    let dir = world_dir();
    let url = format!("ldap://127.0.0.1:{}", silent.port);
    // anonymous: nothing is asked of the server until the search, which times out
    let config = ldap_config(dir.path(), &url, "", sink.port)
        .replace("timeout = \"2s\"", "timeout = \"1s\"")
        .replace("interval = \"1s\"", "interval = \"1h\"")
        .lines()
        .filter(|l| !l.starts_with("bind_"))
        .collect::<Vec<_>>()
        .join("\n");
    let b = Backstop::start(dir.path(), &config);
    // the first health check finds it silent
    let said = b.count_reaching(&["directory cannot be used"], 1);
    assert_eq!(said, 1, "{}", b.log());
    let before = silent.taken();
    let replies: Vec<String> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..10)
            .map(|i| {
                let b = &b;
                s.spawn(move || rcpt(b, &format!("new{i}@example.test")))
            })
            .collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let tried = silent.taken() - before;
    for r in &replies {
        assert!(r.starts_with("451 4.4.3 "), "{r}");
    }
    // one lookup tried it again (and at most one health check it woke); the others were
    // answered with the last failure instead of each waiting for the timeout
    assert!(
        (1..=2).contains(&tried),
        "{tried} connections for 10 recipients"
    );
}
