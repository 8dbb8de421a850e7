//! DANE (RFC 7672) with the real binary: partner.test's records are DNSSEC-signed (a root zone of
//! the test's own, ldns-signzone, served by NSD on loopback; its key the trust anchor). Its MX
//! host, a real Postfix with a self-signed certificate no CA vouches for, gets mail over TLS
//! when its TLSA record (DANE-EE, SHA-256 of the public key) matches that certificate, and
//! none when the record names another key: deferred, never sent in clear or unchecked.

mod support;

use rcgen::PublicKeyData;
use std::net::SocketAddr;
use std::path::Path;
use support::signed_zone::SignedZone;
use support::{Backstop, Postfix, Sink, free_port, list_config, swaks};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Postfix for partner.test offering STARTTLS with a new self-signed certificate for
/// mx.partner.test; the SHA-256 of its public key.
fn tls_peer(dir: &Path, sink: &Sink) -> (Postfix, String) {
    let made = rcgen::generate_simple_self_signed(vec!["mx.partner.test".into()]).unwrap();
    let (cert, key) = (dir.join("mx.pem"), dir.join("mx.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let spki = made.signing_key.subject_public_key_info();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
    let main_cf = format!(
        "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
        cert.display(),
        key.display()
    );
    let peer = Postfix::internal_with("partner.test", &["bob@partner.test"], sink.port, &main_cf);
    (peer, hex(digest.as_ref()))
}

/// backstop relaying for 127.0.0.1, MX delivery on `mx_port`, DANE on, DNS from `zone`.
fn gateway(dir: &Path, mx_port: u16, zone: &SignedZone) -> (Backstop, SocketAddr) {
    let relay_port = free_port();
    let base = list_config(dir, &["alice@example.test"], "maildir:mail", "");
    let config = format!(
        "{base}\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\nrelay_from = [\"127.0.0.1\"]\n\
         [delivery]\nsmtp_port = {mx_port}\ndane = true\nretry_min = \"1h\"\n\
         [dns]\nresolver = \"{}\"\ntrust_anchor = \"{}\"\n",
        zone.addr,
        zone.trust_anchor.display()
    );
    let b = Backstop::start(dir, &config);
    (b, format!("127.0.0.1:{relay_port}").parse().unwrap())
}

fn zone(dir: &Path, port: u16, tlsa_hex: &str) -> SignedZone {
    let zdir = dir.join("zone");
    std::fs::create_dir_all(&zdir).unwrap();
    SignedZone::start(
        &zdir,
        &[
            "partner.test. IN MX 10 mx.partner.test.".into(),
            "mx.partner.test. IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx.partner.test. IN TLSA 3 1 1 {tlsa_hex}"),
        ],
    )
}

#[test]
fn a_matching_tlsa_record_gets_the_mail_over_tls_a_wrong_one_defers_it() {
    let dir = support::world_dir();
    let sink = Sink::start();
    let (peer, spki_sha256) = tls_peer(dir.path(), &sink);
    let signed = zone(dir.path(), peer.port, &spki_sha256);
    let (b, relay) = gateway(dir.path(), peer.port, &signed);
    let (code, t) = swaks(
        relay,
        &["--from", "alice@example.test", "--to", "bob@partner.test"],
    );
    assert_eq!(code, 0, "{t}");
    assert_eq!(sink.wait_for(1).len(), 1, "{}", b.log());
    let verified = [
        "event=\"delivery_tls\"",
        "tls=\"verified\"",
        "DANE, TLSA of mx.partner.test",
    ];
    assert_eq!(b.count_reaching(&verified, 1), 1, "{}", b.log());
    // counted for partner.test's TLS report under its TLSA records
    let (_, show, _) = b.cli(&["tls-report", "show"]);
    let tlsa = "partner.test  tlsa (mx: mx.partner.test): 1 successful, 0 failed";
    assert!(show.contains(tlsa), "{show}");
    drop(b);
    drop(signed);

    // the record names another key: nothing is sent
    let dir2 = support::world_dir();
    let wrong = zone(dir2.path(), peer.port, &"ab".repeat(32));
    let (b, relay) = gateway(dir2.path(), peer.port, &wrong);
    let (code, t) = swaks(
        relay,
        &["--from", "alice@example.test", "--to", "bob@partner.test"],
    );
    assert_eq!(code, 0, "{t}");
    let deferred = ["event=\"attempt\"", "result=\"deferred\"", "dsn=\"4.7.5\""];
    assert_eq!(b.count_reaching(&deferred, 1), 1, "{}", b.log());
    assert!(
        b.log()
            .contains("no TLSA record matches the certificate (DANE)"),
        "{}",
        b.log()
    );
    let (_, show, _) = b.cli(&["tls-report", "show"]);
    assert!(
        show.contains("1 x validation-failure at mx.partner.test [127.0.0.1]"),
        "{show}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        sink.messages().len(),
        1,
        "nothing more reached the far side"
    );
}
