//! `policy::directory` against a real OpenLDAP slapd on loopback (tests/support/slapd.sh):
//! users, aliases, a group and a disabled account get the right answer; an address built to
//! widen the query reaches slapd escaped; ldaps and StartTLS with the test CA; a stopped
//! server is an error and a restarted one is used again by the same `Directory`.

mod support;

use backstop::policy::directory::{Answer, Directory, Settings};
use backstop_proto::ldap_filter::{OPENLDAP, Template};
use std::sync::Arc;
use std::time::Duration;
use support::Slapd;

fn tls(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

fn settings(urls: Vec<String>, filter: &str) -> Settings {
    Settings {
        name: "test".into(),
        urls,
        starttls: false,
        bind: Some((Slapd::ADMIN_DN.into(), Slapd::ADMIN_PW.into())),
        base: Slapd::BASE.into(),
        filter: Template::parse(filter).unwrap(),
        timeout: Duration::from_secs(3),
        max_connections: 2,
        tls: None,
    }
}

fn found(a: Answer) -> bool {
    matches!(a, Answer::Found(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_answers_for_users_aliases_groups_and_not_for_the_disabled() {
    let slapd = Slapd::start();
    // OpenLDAP's default plus the disabled flag of the example directory
    let filter = "(&(|(mail=%s)(mailAlternateAddress=%s))(!(accountStatus=disabled)))";
    let dir = Directory::new(settings(vec![slapd.url()], filter));
    let ask = |a: &'static str| dir.lookup(a);
    assert!(found(ask("alice@example.test").await.unwrap()));
    assert!(found(ask("bob.alias@example.test").await.unwrap()));
    assert!(found(ask("sales@example.test").await.unwrap()));
    assert_eq!(ask("carol@example.test").await.unwrap(), Answer::NotFound);
    assert_eq!(ask("nobody@example.test").await.unwrap(), Answer::NotFound);
    // built to widen the query: escaped, so nothing matches, and slapd saw it escaped
    assert_eq!(ask("*@example.test").await.unwrap(), Answer::NotFound);
    assert_eq!(ask("a)(mail=*").await.unwrap(), Answer::NotFound);
    assert!(
        slapd.log_reaching("(mail=\\2A@example.test)"),
        "{}",
        slapd.log()
    );
    assert!(
        slapd.log_reaching("(mail=a\\29\\28mail=\\2A)"),
        "{}",
        slapd.log()
    );
    // the plain OpenLDAP default finds the disabled account (the filter decides)
    let plain = Directory::new(settings(vec![slapd.url()], OPENLDAP));
    assert!(found(plain.lookup("carol@example.test").await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_and_starttls_with_the_test_ca_and_failover_to_the_next_url() {
    let slapd = Slapd::start();
    let mut s = settings(vec![slapd.ldaps_url()], OPENLDAP);
    s.tls = Some(tls(&slapd.ca_file()));
    assert!(found(
        Directory::new(s.clone())
            .lookup("alice@example.test")
            .await
            .unwrap()
    ));
    let mut st = s.clone();
    st.urls = vec![slapd.url()];
    st.starttls = true;
    assert!(found(
        Directory::new(st)
            .lookup("alice@example.test")
            .await
            .unwrap()
    ));
    // without the CA, ldaps fails: no silent fallback to trusting anything
    let mut untrusted = s.clone();
    untrusted.tls = None;
    assert!(
        Directory::new(untrusted)
            .lookup("alice@example.test")
            .await
            .is_err()
    );
    // the first URL dead, the second answers
    let dead = format!("ldap://127.0.0.1:{}", support::free_port());
    let d = Directory::new(settings(vec![dead, slapd.url()], OPENLDAP));
    assert!(found(d.lookup("alice@example.test").await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_directory_is_an_error_and_a_restarted_one_is_used_again() {
    let mut slapd = Slapd::start();
    let dir = Directory::new(settings(vec![slapd.url()], OPENLDAP));
    assert!(found(dir.lookup("alice@example.test").await.unwrap()));
    slapd.stop();
    let e = dir
        .lookup("alice@example.test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("127.0.0.1"), "{e}");
    // after the restart the first lookup already answers (a kept connection that died is
    // replaced within the lookup), and so does the next, on the kept new one
    slapd.restart();
    assert!(found(dir.lookup("alice@example.test").await.unwrap()));
    assert!(found(dir.lookup("bob@example.test").await.unwrap()));
    // and a restart while a connection is kept idle
    slapd.restart();
    assert!(found(dir.lookup("alice@example.test").await.unwrap()));
}
