//! One client connection: moves bytes between the socket and the sans-IO session, resolves its
//! checks, upgrades to TLS on STARTTLS, and applies the session's timeouts.

use super::Context;
use super::handler::Handler;
use crate::config::Listener;
use crate::telemetry::Event;
use backstop_proto::smtp::server::{Output, Session, SessionConfig};
use std::net::SocketAddr;
use std::sync::Arc;
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

    async fn upgrade(self, acceptor: Option<TlsAcceptor>) -> Option<Stream> {
        let (Stream::Plain(tcp), Some(acceptor)) = (self, acceptor) else {
            return None;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Some(Stream::Tls(Box::new(tls))),
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// Runs one session to its end.
pub async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    (cfg, listener): (Arc<SessionConfig>, &Listener),
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    Event::Connect { peer }.emit();
    let _ = tcp.set_nodelay(true);
    let exempt = listener.may_relay(peer.ip()) || ctx.harvest.is_exempt(peer.ip());
    let now = ctx.clock.unix();
    let _slot = match ctx.harvest.admit(peer.ip(), exempt, now).await {
        Ok(slot) => slot,
        Err(refusal) => {
            ctx.harvest.count("client_refused", now);
            Event::ClientRefused {
                peer,
                why: refusal.why,
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
    let mut handler = Handler::new(ctx, peer, listener);
    let mut wbuf = Vec::with_capacity(4096);
    let mut rbuf = vec![0u8; 32 * 1024];
    let mut draining = false;
    'session: loop {
        while let Some(out) = session.poll_output() {
            match out {
                Output::Reply(r) => r.encode_into(&mut wbuf),
                Output::Check(c) => {
                    let reply = handler.check(c, &session).await;
                    session.resolve(reply, Instant::now());
                }
                Output::StartTls => {
                    if io.write_all(&std::mem::take(&mut wbuf)).await.is_err() {
                        break 'session;
                    }
                    match std::mem::replace(&mut io, Stream::Gone)
                        .upgrade(tls.clone())
                        .await
                    {
                        Some(s) => io = s,
                        None => break 'session,
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
                Ok(n) => session.handle_input(&rbuf[..n], Instant::now()),
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
        peer,
        messages: handler.messages,
    }
    .emit();
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
