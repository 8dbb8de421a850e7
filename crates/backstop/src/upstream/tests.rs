//! STARTTLS and exact-address connections against a tiny SMTP server on 127.0.0.1 with a
//! self-signed certificate.

use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const TIMEOUT: Duration = Duration::from_secs(5);

/// How the test server answers STARTTLS.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `220`, then the handshake.
    Tls,
    /// `220` and a reply (plus half of another) in the same write, then the handshake.
    PipelinedAfter220,
    /// `454`, and the session goes on in plaintext.
    Refuse,
    /// `220`, then bytes that are not TLS.
    Garbage,
}

/// A server for one connection; the task returns the commands it saw (`tls:` after STARTTLS).
async fn server(mode: Mode) -> (SocketAddr, JoinHandle<Vec<String>>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = test_acceptor();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let Some(tcp) = converse(tcp, false, mode, &mut seen).await else {
            return seen;
        };
        if let Ok(tls) = acceptor.accept(tcp).await {
            converse(tls, true, mode, &mut seen).await;
        }
        seen
    });
    (addr, task)
}

fn test_acceptor() -> TlsAcceptor {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// Answers commands until QUIT or end of input; on STARTTLS with `220`, returns the socket.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    secure: bool,
    mode: Mode,
    seen: &mut Vec<String>,
) -> Option<S> {
    let mut io = BufReader::new(io);
    let mut line = Vec::new();
    if !secure {
        io.get_mut()
            .write_all(b"220 mx.example.test ESMTP\r\n")
            .await
            .ok()?;
    }
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end()
            .to_ascii_uppercase();
        seen.push(format!("{}{text}", if secure { "tls:" } else { "" }));
        let verb = text.split(' ').next().unwrap_or("");
        let reply: &[u8] = match (verb, mode) {
            ("EHLO", _) if secure => b"250-mx.example.test\r\n250 PIPELINING\r\n",
            ("EHLO", _) => b"250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
            ("STARTTLS", Mode::Refuse) => b"454 4.7.0 TLS not available\r\n",
            ("STARTTLS", Mode::Garbage) => b"220 2.0.0 go ahead\r\nthis is not TLS\r\n",
            ("STARTTLS", Mode::PipelinedAfter220) => {
                let r = b"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n250 half";
                io.get_mut().write_all(r).await.ok()?;
                return Some(io.into_inner());
            }
            ("STARTTLS", Mode::Tls) => {
                io.get_mut()
                    .write_all(b"220 2.0.0 go ahead\r\n")
                    .await
                    .ok()?;
                return Some(io.into_inner());
            }
            ("NOOP", _) => b"250 2.0.0 ok\r\n",
            ("QUIT", _) => {
                let _ = io.get_mut().write_all(b"221 2.0.0 bye\r\n").await;
                let _ = io.get_mut().flush().await;
                return None;
            }
            _ => b"502 5.5.2 not here\r\n",
        };
        io.get_mut().write_all(reply).await.ok()?;
        io.get_mut().flush().await.ok()?;
    }
}

async fn open(addr: SocketAddr) -> Connection {
    Connection::open_addr(addr, "mx.example.test", "gw.example.test", TIMEOUT)
        .await
        .unwrap()
}

async fn noop(c: &mut Connection) -> u16 {
    c.client().noop();
    c.reply().await.unwrap().code
}

#[tokio::test]
async fn starttls_encrypts_and_forgets_the_plaintext_capabilities() {
    let (addr, task) = server(Mode::Tls).await;
    let c = open(addr).await;
    assert_eq!(
        c.target(),
        format!("mx.example.test[127.0.0.1]:{}", addr.port())
    );
    assert!(!c.is_tls());
    assert!(c.capabilities().starttls);
    let tls = opportunistic_tls();
    let mut c = c
        .starttls(&tls, "mx.example.test", "gw.example.test")
        .await
        .unwrap();
    assert!(c.is_tls());
    assert!(!c.capabilities().starttls);
    assert!(c.capabilities().pipelining);
    assert_eq!(noop(&mut c).await, 250);
    c.quit().await;
    let seen = task.await.unwrap();
    let want = [
        "EHLO GW.EXAMPLE.TEST",
        "STARTTLS",
        "tls:EHLO GW.EXAMPLE.TEST",
        "tls:NOOP",
        "tls:QUIT",
    ];
    assert_eq!(seen, want);
}

#[tokio::test]
async fn replies_pipelined_behind_the_220_are_discarded() {
    let (addr, task) = server(Mode::PipelinedAfter220).await;
    let tls = opportunistic_tls();
    let c = open(addr).await;
    let mut c = c
        .starttls(&tls, "127.0.0.1", "gw.example.test")
        .await
        .unwrap();
    assert!(c.is_tls());
    assert!(!c.capabilities().starttls);
    assert_eq!(noop(&mut c).await, 250);
    c.quit().await;
    assert_eq!(
        task.await.unwrap().last().map(String::as_str),
        Some("tls:QUIT")
    );
}

#[tokio::test]
async fn a_refused_starttls_leaves_a_usable_plaintext_connection() {
    let (addr, task) = server(Mode::Refuse).await;
    let c = open(addr).await;
    let tls = opportunistic_tls();
    let Err(StartTlsError::Refused(mut c, reply)) =
        c.starttls(&tls, "mx.example.test", "gw.example.test").await
    else {
        panic!("STARTTLS should have been refused");
    };
    assert_eq!(reply.code, 454);
    assert!(!c.is_tls());
    assert!(c.capabilities().starttls);
    assert_eq!(noop(&mut c).await, 250);
    c.quit().await;
    assert_eq!(
        task.await.unwrap(),
        ["EHLO GW.EXAMPLE.TEST", "STARTTLS", "NOOP", "QUIT"]
    );
}

#[tokio::test]
async fn a_broken_handshake_is_a_tls_error() {
    let (addr, task) = server(Mode::Garbage).await;
    let c = open(addr).await;
    let tls = opportunistic_tls();
    match c.starttls(&tls, "mx.example.test", "gw.example.test").await {
        Err(StartTlsError::Failed(UpstreamError::Tls(target, _))) => {
            assert!(target.starts_with("mx.example.test[127.0.0.1]"), "{target}");
        }
        other => panic!("want a TLS error, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn a_refusal_converts_to_a_refused_upstream_error() {
    let (addr, _task) = server(Mode::Refuse).await;
    let tls = opportunistic_tls();
    let e = open(addr)
        .await
        .starttls(&tls, "mx.example.test", "gw")
        .await;
    let e: UpstreamError = e.expect_err("refused").into();
    assert!(
        matches!(e, UpstreamError::Refused(_, ref r) if r.code == 454),
        "{e}"
    );
}

#[tokio::test]
async fn open_by_host_still_works() {
    let (addr, task) = server(Mode::Tls).await;
    let target = HostPort {
        host: "127.0.0.1".into(),
        port: addr.port(),
    };
    let mut c = Connection::open(&target, "gw.example.test", TIMEOUT)
        .await
        .unwrap();
    assert_eq!(c.target(), target.to_string());
    assert_eq!(noop(&mut c).await, 250);
    c.quit().await;
    assert_eq!(task.await.unwrap().last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn open_addr_names_the_address_when_connect_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = Connection::open_addr(addr, "mx.example.test", "gw", TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(e, UpstreamError::Connect(ref t, _) if t.contains("[127.0.0.1]")),
        "{e}"
    );
}

#[test]
fn server_names() {
    use rustls::pki_types::ServerName;
    let fallback = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
    let dns = server_name("mx.example.test", fallback);
    assert!(matches!(dns, ServerName::DnsName(ref d) if d.as_ref() == "mx.example.test"));
    let ip = |n: ServerName<'static>| match n {
        ServerName::IpAddress(a) => Some(IpAddr::from(a)),
        _ => None,
    };
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(ip(server_name("192.0.2.1", fallback)), Some(v4));
    assert_eq!(
        ip(server_name("[::1]", fallback)),
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
    );
    assert_eq!(ip(server_name("not a host!", fallback)), Some(fallback));
    assert_eq!(ip(server_name("", fallback)), Some(fallback));
}
