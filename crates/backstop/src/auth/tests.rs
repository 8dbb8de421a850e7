//! Tests of sender authentication against a real DNS server (dnsmasq on loopback) serving
//! SPF and DKIM TXT records; DKIM keys are ed25519, generated per test.

use super::test_dns as dns;
use super::*;

use std::net::UdpSocket;
use std::time::Instant;

use backstop_proto::address::Mailbox;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

const CLIENT: &str = "127.0.0.1";
const OTHER_CLIENT: &str = "127.0.0.2";
const HELO: &str = "client.test";
const TIMEOUT: Duration = Duration::from_secs(2);

const MESSAGE: &str = "From: User <user@example.test>\r\n\
    To: rcpt@dest.test\r\n\
    Subject: hello\r\n\
    Message-ID: <1@example.test>\r\n\
    \r\n\
    Hello.\r\n";

/// A dnsmasq with SPF records and an ed25519 DKIM key (selector `sel`) for each of
/// example.test, other.test and testing.test (a key in testing mode, `t=y`); the private
/// keys to sign with.
struct Zone {
    dns: dns::Dns,
    keys: Vec<(&'static str, Vec<u8>)>,
}

impl Zone {
    fn start() -> Zone {
        let keys: Vec<(&'static str, Vec<u8>)> = ["example.test", "other.test", "testing.test"]
            .into_iter()
            .map(|d| (d, Ed25519Key::generate_pkcs8().unwrap()))
            .collect();
        let mut args = vec![
            "--txt-record=example.test,v=spf1 ip4:127.0.0.1 -all".to_string(),
            "--txt-record=other.test,v=spf1 -all".to_string(),
            "--txt-record=soft.test,v=spf1 ~all".to_string(),
        ];
        for (domain, der) in &keys {
            let flags = if *domain == "testing.test" {
                "t=y; "
            } else {
                ""
            };
            args.push(dkim_record(domain, flags, der));
        }
        Zone {
            dns: dns::Dns::start(&args),
            keys,
        }
    }

    fn auth(&self) -> SenderAuth {
        SenderAuth::new(Some(self.dns.addr), TIMEOUT, 1).unwrap()
    }

    /// The evidence for `from` sending `message` from `client` (HELO [`HELO`]).
    async fn check(&self, client: &str, from: &Mailbox, message: &[u8]) -> Evidence {
        self.auth().check(ip(client), HELO, from, message).await
    }

    /// `message` with a DKIM-Signature of `domain` (selector `sel`) over `headers` prepended.
    fn sign(&self, domain: &str, headers: &[&str], message: &[u8]) -> Vec<u8> {
        let (_, der) = self.keys.iter().find(|(d, _)| *d == domain).unwrap();
        sign(der, domain, headers, message)
    }
}

fn sign(der: &[u8], domain: &str, headers: &[&str], message: &[u8]) -> Vec<u8> {
    let key = Ed25519Key::from_pkcs8_der(der).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector("sel")
        .headers(headers.iter().copied())
        .sign(message)
        .unwrap();
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(message);
    signed
}

/// `--txt-record=sel._domainkey.DOMAIN,v=DKIM1; k=ed25519; FLAGSp=...` for the key in `der`.
fn dkim_record(domain: &str, flags: &str, der: &[u8]) -> String {
    let public = Ed25519Key::from_pkcs8_der(der).unwrap().public_key();
    format!(
        "--txt-record=sel._domainkey.{domain},v=DKIM1; k=ed25519; {flags}p={}",
        base64(&public)
    )
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s, false).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn untrusted(spf: &str, dkim: &str) -> Evidence {
    Evidence::None {
        spf: spf.to_string(),
        dkim: dkim.to_string(),
    }
}

const SIGNED: &[&str] = &["From", "To", "Subject", "Message-ID"];

#[tokio::test]
async fn spf_pass_is_trusted() {
    let zone = Zone::start();
    let from = mailbox("user@example.test");
    let got = zone.check(CLIENT, &from, MESSAGE.as_bytes()).await;
    let want = Evidence::SpfPass {
        domain: "example.test".to_string(),
    };
    assert_eq!(got, want);
    assert!(got.trusted());
    assert_eq!(got.to_string(), "spf=pass (example.test)");
}

#[tokio::test]
async fn spf_pass_for_an_ipv4_mapped_client_address() {
    let zone = Zone::start();
    let from = mailbox("user@example.test");
    let mapped = ip("::ffff:127.0.0.1");
    let got = zone
        .auth()
        .check(mapped, HELO, &from, MESSAGE.as_bytes())
        .await;
    assert!(got.trusted(), "{got}");
}

#[tokio::test]
async fn spf_fail_without_dkim_is_untrusted() {
    let zone = Zone::start();
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, MESSAGE.as_bytes()).await;
    assert_eq!(got, untrusted("fail", "none"));
    assert!(!got.trusted());
    assert_eq!(got.to_string(), "spf=fail dkim=none");
}

#[tokio::test]
async fn spf_softfail_is_untrusted() {
    let zone = Zone::start();
    let from = mailbox("user@soft.test");
    let got = zone.check(CLIENT, &from, MESSAGE.as_bytes()).await;
    assert_eq!(got, untrusted("softfail", "none"));
}

#[tokio::test]
async fn no_spf_record_and_no_dkim_is_untrusted() {
    let zone = Zone::start();
    let from = mailbox("user@nospf.test");
    let got = zone.check(CLIENT, &from, MESSAGE.as_bytes()).await;
    assert_eq!(got, untrusted("none", "none"));
}

#[tokio::test]
async fn aligned_dkim_is_trusted_when_spf_fails() {
    let zone = Zone::start();
    let message = zone.sign("example.test", SIGNED, MESSAGE.as_bytes());
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, &message).await;
    let want = Evidence::DkimAligned {
        domain: "example.test".to_string(),
    };
    assert_eq!(got, want);
    assert!(got.trusted());
    assert_eq!(got.to_string(), "dkim=pass (example.test)");
}

#[tokio::test]
async fn dkim_of_a_parent_domain_is_aligned() {
    let zone = Zone::start();
    let message = zone.sign("example.test", SIGNED, MESSAGE.as_bytes());
    // No SPF record for the subdomain (NXDOMAIN): spf=none, then DKIM.
    let from = mailbox("bounces+x=y@lists.example.test");
    let got = zone.check(CLIENT, &from, &message).await;
    let want = Evidence::DkimAligned {
        domain: "example.test".to_string(),
    };
    assert_eq!(got, want);
}

#[tokio::test]
async fn unaligned_dkim_pass_is_untrusted() {
    let zone = Zone::start();
    let message = zone.sign("other.test", SIGNED, MESSAGE.as_bytes());
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, &message).await;
    assert_eq!(got, untrusted("fail", "pass d=other.test (not aligned)"));
}

#[tokio::test]
async fn dkim_with_body_altered_after_signing_is_untrusted() {
    let zone = Zone::start();
    let signed = zone.sign("example.test", SIGNED, MESSAGE.as_bytes());
    let altered = String::from_utf8(signed)
        .unwrap()
        .replace("Hello.", "Hello, send money.");
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, altered.as_bytes()).await;
    let Evidence::None { spf, dkim } = &got else {
        panic!("trusted: {got}");
    };
    assert_eq!(spf, "fail");
    assert!(dkim.starts_with("neutral d=example.test ("), "{dkim}");
    assert!(dkim.contains("body hash"), "{dkim}");
}

#[tokio::test]
async fn dkim_with_a_header_altered_after_signing_is_untrusted() {
    let zone = Zone::start();
    let signed = zone.sign("example.test", SIGNED, MESSAGE.as_bytes());
    let altered = String::from_utf8(signed)
        .unwrap()
        .replace("Subject: hello", "Subject: invoice");
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, altered.as_bytes()).await;
    let Evidence::None { dkim, .. } = &got else {
        panic!("trusted: {got}");
    };
    assert!(dkim.starts_with("fail d=example.test ("), "{dkim}");
}

#[tokio::test]
async fn dkim_signature_without_from_is_ignored() {
    let zone = Zone::start();
    let message = zone.sign("example.test", &["To", "Subject"], MESSAGE.as_bytes());
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, &message).await;
    assert_eq!(
        got,
        untrusted("fail", "permerror d=example.test (From not signed)")
    );
}

#[tokio::test]
async fn dkim_key_in_testing_mode_does_not_count() {
    let zone = Zone::start();
    let message = zone.sign("testing.test", SIGNED, MESSAGE.as_bytes());
    let from = mailbox("user@testing.test");
    let got = zone.check(CLIENT, &from, &message).await;
    let want = untrusted("none", "pass d=testing.test (key in testing mode, t=y)");
    assert_eq!(got, want);
}

#[tokio::test]
async fn dkim_key_missing_is_a_permerror() {
    let zone = Zone::start();
    let key = Ed25519Key::generate_pkcs8().unwrap();
    let message = sign(&key, "nokey.test", SIGNED, MESSAGE.as_bytes());
    let from = mailbox("user@nokey.test");
    let got = zone.check(CLIENT, &from, &message).await;
    let Evidence::None { spf, dkim } = &got else {
        panic!("trusted: {got}");
    };
    assert_eq!(spf, "none");
    assert!(dkim.starts_with("permerror d=nokey.test ("), "{dkim}");
}

#[tokio::test]
async fn aligned_signature_is_verified_first_among_many() {
    let zone = Zone::start();
    let mut message = zone.sign("example.test", SIGNED, MESSAGE.as_bytes());
    for _ in 0..MAX_SIGNATURES + 2 {
        message = zone.sign("other.test", SIGNED, &message);
    }
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, &message).await;
    let want = Evidence::DkimAligned {
        domain: "example.test".to_string(),
    };
    assert_eq!(got, want);
}

#[tokio::test]
async fn signatures_beyond_the_limit_are_not_verified() {
    let zone = Zone::start();
    let mut message = MESSAGE.as_bytes().to_vec();
    for _ in 0..MAX_SIGNATURES + 2 {
        message = zone.sign("other.test", SIGNED, &message);
    }
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, &message).await;
    let Evidence::None { dkim, .. } = &got else {
        panic!("trusted: {got}");
    };
    let passes = dkim.matches("pass d=other.test (not aligned)").count();
    assert_eq!(passes, MAX_SIGNATURES, "{dkim}");
    assert!(dkim.ends_with(", 2 more not verified"), "{dkim}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_signed_message_is_verified() {
    let zone = Zone::start();
    let mut message = MESSAGE.as_bytes().to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while message.len() < 8 * 1024 * 1024 {
        message.extend_from_slice(line);
    }
    let message = zone.sign("example.test", SIGNED, &message);
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, &message).await;
    assert!(matches!(got, Evidence::DkimAligned { .. }), "{got}");
}

#[tokio::test]
async fn message_without_headers_has_no_dkim() {
    let zone = Zone::start();
    let from = mailbox("user@example.test");
    let got = zone.check(OTHER_CLIENT, &from, b"").await;
    assert_eq!(got, untrusted("fail", "none"));
}

/// Checks a signed message against a server that never answers: temperror for both, within
/// about one lookup timeout per phase.
async fn check_dead_server(server: SocketAddr) {
    let timeout = Duration::from_secs(1);
    let auth = SenderAuth::new(Some(server), timeout, 1).unwrap();
    let from = mailbox("user@example.test");

    let started = Instant::now();
    let got = auth
        .check(ip(CLIENT), HELO, &from, MESSAGE.as_bytes())
        .await;
    let took = started.elapsed();
    assert_eq!(got, untrusted("temperror", "none"));
    assert!(took < timeout + Duration::from_millis(700), "{took:?}");

    let key = Ed25519Key::generate_pkcs8().unwrap();
    let message = sign(&key, "example.test", SIGNED, MESSAGE.as_bytes());
    let started = Instant::now();
    let got = auth.check(ip(CLIENT), HELO, &from, &message).await;
    let took = started.elapsed();
    let Evidence::None { spf, dkim } = &got else {
        panic!("trusted: {got}");
    };
    assert_eq!(spf, "temperror");
    assert!(dkim.starts_with("temperror d=example.test ("), "{dkim}");
    assert!(took < 2 * timeout + Duration::from_millis(700), "{took:?}");
}

#[tokio::test]
async fn dns_server_not_listening_gives_temperror() {
    check_dead_server(SocketAddr::from(([127, 0, 0, 1], dns::free_udp_port()))).await;
}

#[tokio::test]
async fn dns_server_not_answering_gives_temperror_after_the_timeout() {
    // A bound UDP socket that never reads: queries vanish (nothing listens on TCP).
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    check_dead_server(hole.local_addr().unwrap()).await;
}

#[test]
fn alignment_is_relaxed_on_whole_labels() {
    assert!(aligned("example.test", "example.test"));
    assert!(aligned("Example.TEST.", "example.test"));
    assert!(aligned("example.test", "lists.example.test"));
    assert!(aligned("mail.example.test", "example.test"));
    assert!(!aligned("badexample.test", "example.test"));
    assert!(!aligned("example.test", "notexample.test"));
    assert!(!aligned("other.test", "example.test"));
    assert!(!aligned("", "example.test"));
    assert!(!aligned("example.test", ""));
    assert!(!aligned("[127.0.0.1]", "[127.0.0.1]"));
}

#[test]
fn evidence_serialises_tagged_by_kind() {
    let cases = [
        (
            Evidence::SpfPass {
                domain: "example.test".to_string(),
            },
            r#"{"by":"spf-pass","domain":"example.test"}"#,
        ),
        (
            Evidence::DkimAligned {
                domain: "example.test".to_string(),
            },
            r#"{"by":"dkim-aligned","domain":"example.test"}"#,
        ),
        (
            untrusted("softfail", "pass d=other.test (not aligned)"),
            r#"{"by":"none","spf":"softfail","dkim":"pass d=other.test (not aligned)"}"#,
        ),
    ];
    for (evidence, json) in cases {
        assert_eq!(serde_json::to_string(&evidence).unwrap(), json);
        let back: Evidence = serde_json::from_str(json).unwrap();
        assert_eq!(back, evidence);
    }
}

#[test]
fn system_resolver_can_be_built() {
    // /etc/resolv.conf exists on the test machines; a missing one is an error, not a panic.
    match SenderAuth::new(None, TIMEOUT, 1) {
        Ok(_) | Err(AuthError::SystemConf(_)) => {}
        Err(e) => panic!("{e}"),
    }
}
