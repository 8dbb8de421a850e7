//! The LDAP tests' own peer: a private OpenLDAP slapd (tests/support/slapd.sh) answers
//! Debian's ldapsearch over ldap://, ldaps:// and StartTLS, logs each search's filter, and
//! keeps its data across a restart on the same ports.

mod support;

use support::*;

/// Asserts that a search for alice over `url` (with `extra` ldapsearch options) finds her.
fn finds_alice(slapd: &Slapd, url: &str, extra: &[&str]) {
    let (code, out) = slapd.search(url, "(mail=alice@example.test)", extra);
    assert_eq!(code, 0, "ldapsearch {url} {extra:?}:\n{out}");
    assert!(
        out.contains("dn: uid=alice,ou=people,dc=example,dc=test"),
        "{url} {extra:?}:\n{out}"
    );
}

#[test]
fn slapd_answers_over_ldap_ldaps_and_starttls_and_survives_a_restart() {
    let t = std::time::Instant::now();
    let mut slapd = Slapd::start();
    eprintln!("slapd started and loaded in {:?}", t.elapsed());

    finds_alice(&slapd, &slapd.url(), &[]);
    finds_alice(&slapd, &slapd.ldaps_url(), &[]);
    finds_alice(&slapd, &slapd.url(), &["-ZZ"]);

    // bob by his alias and by his AD-style address; carol is disabled both ways
    let (_, out) = slapd.search(
        &slapd.url(),
        "(mailAlternateAddress=bob.alias@example.test)",
        &[],
    );
    assert!(out.contains("uid=bob,"), "{out}");
    let (_, out) = slapd.search(
        &slapd.url(),
        "(proxyAddresses=smtp:bob.other@example.test)",
        &[],
    );
    assert!(out.contains("uid=bob,"), "{out}");
    for active in [
        "(&(mail=*)(!(accountStatus=disabled)))",
        "(&(mail=*)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
    ] {
        let (_, out) = slapd.search_attrs(&slapd.url(), active, &[], &["mail"]);
        for found in ["alice@", "bob@"] {
            assert!(out.contains(&format!("mail: {found}example.test")), "{out}");
        }
        assert!(!out.contains("carol"), "{active}:\n{out}");
    }
    // dave is outside the base
    let (_, out) = slapd.search(&slapd.url(), "(mail=dave@example.test)", &[]);
    assert!(!out.contains("dave"), "{out}");

    // the stats log has every filter, an escaped one as slapd re-encodes it
    assert!(
        slapd.log_reaching("filter=\"(mail=alice@example.test)\""),
        "{}",
        slapd.log()
    );
    slapd.search(&slapd.url(), r"(mail=a\2a@example.test)", &[]);
    assert!(
        slapd.log_reaching(r#"filter="(mail=a\2A@example.test)""#),
        "{}",
        slapd.log()
    );
    assert!(
        slapd
            .filters()
            .contains(&r"(mail=a\2A@example.test)".to_string())
    );

    slapd.stop();
    let (code, out) = slapd.search(&slapd.url(), "(mail=alice@example.test)", &[]);
    assert_ne!(code, 0, "stopped, yet it answered:\n{out}");

    let t = std::time::Instant::now();
    slapd.restart();
    eprintln!("slapd restarted in {:?}", t.elapsed());
    finds_alice(&slapd, &slapd.url(), &[]);
    finds_alice(&slapd, &slapd.ldaps_url(), &[]);
    finds_alice(&slapd, &slapd.url(), &["-ZZ"]);
}
