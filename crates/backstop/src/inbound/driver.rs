//! One client connection: moves bytes between the socket and the sans-IO session, resolves its
//! checks, upgrades to TLS on STARTTLS, and applies the session's timeouts.

use super::Setup;
use super::handler::Handler;
use crate::telemetry::Event;
use backstop_proto::address::ReversePath;
use backstop_proto::smtp::reply::Reply;
use backstop_proto::smtp::server::{Output, Session};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a client to take our replies.
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let w = async {
            match self {
                Stream::Plain(s) => s.write_all(buf).await,
                Stream::Tls(s) => {
                    s.write_all(buf).await?;
                    s.flush().await
                }
                Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        tokio::time::timeout(WRITE_TIMEOUT, w)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
    }

    /// The TLS handshake: the encrypted stream and its `protocol:cipher`, or why it failed.
    async fn upgrade(self, acceptor: Option<TlsAcceptor>) -> Result<(Stream, String), String> {
        let (Stream::Plain(tcp), Some(acceptor)) = (self, acceptor) else {
            return Err("no TLS on this listener".into());
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let described = describe(tls.get_ref().1);
                Ok((Stream::Tls(Box::new(tls)), described))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        }
    }
}

/// `TLSv1.3:TLS13_AES_256_GCM_SHA384`, as Postfix names a session's TLS.
fn describe(c: &rustls::ServerConnection) -> String {
    let protocol = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    match c.negotiated_cipher_suite() {
        Some(s) => format!("{protocol}:{:?}", s.suite()),
        None => protocol,
    }
}

/// Runs one session to its end, under `setup` (the configuration current when it connected).
pub async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    setup: &Setup,
    mut shutdown: watch::Receiver<bool>,
) {
    let (ctx, listener, tls) = (setup.ctx.clone(), setup.config.as_ref(), &setup.tls);
    let cfg = setup.session.clone();
    Event::Connect { peer }.emit();
    let exempt = listener.may_relay(peer.ip()) || ctx.harvest.is_exempt(peer.ip());
    let now = ctx.clock.unix();
    let _slot = match ctx.harvest.admit(peer.ip(), exempt, now).await {
        Ok(slot) => slot,
        Err(refusal) => {
            ctx.harvest.count("client_refused", now);
            Event::ClientRefused {
                peer,
                why: refusal.why,
                reply: &refusal.reply,
            }
            .emit();
            let mut io = Stream::Plain(tcp);
            let _ = io.write_all(&refusal.reply.to_bytes()).await;
            io.shutdown().await;
            return;
        }
    };
    let mut io = Stream::Plain(tcp);
    let mut session = Session::new(cfg, Instant::now());
    if listener.may_relay(peer.ip()) {
        session.trust_pipelining();
    }
    let mut handler = Handler::new(ctx, peer, listener);
    let mut wbuf = Vec::with_capacity(4096);
    let mut rbuf = vec![0u8; 32 * 1024];
    let mut draining = false;
    // the reply of the last check: its line was written by the handler
    let mut resolved: Option<Reply> = None;
    // the transaction open when the last input came (a refusal may have ended it since)
    let mut open: Option<(String, ReversePath)> = None;
    'session: loop {
        while let Some(out) = session.poll_output() {
            match out {
                Output::Reply(r) => {
                    if resolved.take().as_ref() != Some(&r) && r.code >= 400 {
                        log_refusal(&handler, &session, open.as_ref(), &r);
                    }
                    r.encode_into(&mut wbuf)
                }
                Output::Check(c) => {
                    let reply = handler.check(c, &session).await;
                    resolved = Some(reply.clone());
                    session.resolve(reply, Instant::now());
                }
                Output::Spill(piece) => handler.spill(piece).await,
                Output::StartTls => {
                    if io.write_all(&std::mem::take(&mut wbuf)).await.is_err() {
                        break 'session;
                    }
                    if !start_tls(&mut io, tls, &mut handler, &session).await {
                        break 'session;
                    }
                    session.tls_established(Instant::now());
                }
                Output::Close => {
                    let _ = io.write_all(&wbuf).await;
                    io.shutdown().await;
                    break 'session;
                }
            }
        }
        if !wbuf.is_empty() {
            if io.write_all(&wbuf).await.is_err() {
                break;
            }
            wbuf.clear();
        }
        if !draining && *shutdown.borrow() {
            draining = true;
            session.begin_shutdown();
            continue;
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = io.read(&mut rbuf), if session.wants_input() => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    open = session.transaction().map(|t| (handler.txn_id().to_string(), t.from.clone()));
                    session.handle_input(&rbuf[..n], Instant::now())
                }
            },
            _ = sleep_until(deadline) => session.handle_timeout(Instant::now()),
            r = shutdown.changed(), if !draining => if r.is_err() {
                // the gateway is going away without having said so: stop as if told
                draining = true;
                session.begin_shutdown();
            },
        }
    }
    handler.end_transaction();
    Event::Disconnect {
        client: handler.client(&session),
        messages: handler.messages,
    }
    .emit();
}

/// A refusal the session gave by itself (a syntax error, a bare LF, a message too big, too
/// many errors, a time limit, shutting down): the client, its HELO and sender, and the reply.
fn log_refusal(
    handler: &Handler,
    session: &Session,
    open: Option<&(String, ReversePath)>,
    reply: &Reply,
) {
    Event::SessionReply {
        client: handler.client(session),
        id: open.map_or("", |(id, _)| id.as_str()),
        from: open.map(|(_, from)| from),
        reply,
    }
    .emit();
}

/// The handshake after `220 Ready to start TLS`, logged either way; false when it failed (the
/// session ends).
async fn start_tls(
    io: &mut Stream,
    tls: &Option<TlsAcceptor>,
    handler: &mut Handler,
    session: &Session,
) -> bool {
    let upgraded = std::mem::replace(io, Stream::Gone)
        .upgrade(tls.clone())
        .await;
    let error = match upgraded {
        Ok((s, described)) => {
            *io = s;
            handler.tls = described;
            None
        }
        Err(e) => Some(e),
    };
    Event::Tls {
        client: handler.client(session),
        error: error.as_deref(),
    }
    .emit();
    error.is_none()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
