//! One audit connection: raw command lines out (including ones with a bare LF or CR, which a
//! normal client never sends), replies in, every read bounded by the timeout.
//!
//! Responsible for: connecting, reading whole replies (proto's `ReplyParser`), noticing a
//! closed connection or a silent server as such. Not responsible for: what a reply means
//! (`judge`).

use backstop_proto::smtp::reply::{Reply, ReplyParser};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The connection's byte stream: TCP, or TLS over it after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a TLS handshake settled.
#[derive(Clone, Debug)]
pub struct Tls {
    /// `TLSv1_3`, ...
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
    /// The certificates the server showed, its own first.
    pub chain: Vec<CertificateDer<'static>>,
}

/// Why no reply came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The server closed the connection.
    Closed,
    /// Nothing within the timeout.
    Silent(Duration),
    /// Not a reply, or a read or write error.
    Broken(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Closed => f.write_str("the server closed the connection"),
            Lost::Silent(d) => write!(f, "no answer within {} s", d.as_secs()),
            Lost::Broken(why) => f.write_str(why),
        }
    }
}

/// A connection to the audited server.
pub struct Conn {
    stream: Box<dyn Io>,
    parser: ReplyParser,
    timeout: Duration,
    /// Commands sent so far (the audit is bounded).
    pub sent: usize,
}

impl Conn {
    /// Connects to `addr`; the greeting is read by the caller.
    pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, Lost> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(Lost::Silent(timeout)),
            Ok(Err(e)) => return Err(Lost::Broken(format!("connect to {addr}: {e}"))),
            Ok(Ok(s)) => s,
        };
        Ok(Conn {
            stream: Box::new(stream),
            parser: ReplyParser::default(),
            timeout,
            sent: 0,
        })
    }

    /// Sends `bytes` as they are (the caller ends them with CRLF, or not).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Lost> {
        self.sent += 1;
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| Lost::Broken(format!("write: {e}")))
    }

    /// The next reply, and how long it took.
    pub async fn reply(&mut self) -> Result<(Reply, Duration), Lost> {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match self.parser.next_reply() {
                Ok(Some(r)) => return Ok((r, started.elapsed())),
                Ok(None) => {}
                Err(e) => return Err(Lost::Broken(format!("not an SMTP reply: {e:?}"))),
            }
            let left = self.timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Err(_) => return Err(Lost::Silent(self.timeout)),
                Ok(Ok(0)) => return Err(Lost::Closed),
                Ok(Ok(n)) => self.parser.push(&buf[..n]),
                Ok(Err(e)) => return Err(Lost::Broken(format!("read: {e}"))),
            }
        }
    }

    /// Sends `line` with CRLF and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Result<(Reply, Duration), Lost> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// A reply if one comes within `wait` (for a command the server may have taken as
    /// incomplete).
    pub async fn maybe_reply(&mut self, wait: Duration) -> Option<Reply> {
        let timeout = std::mem::replace(&mut self.timeout, wait);
        let r = self.reply().await.ok().map(|(r, _)| r);
        self.timeout = timeout;
        r
    }

    /// A reply already received and not read yet (sent by the server before it was asked).
    pub fn buffered_reply(&mut self) -> Option<Reply> {
        self.parser.next_reply().ok().flatten()
    }

    /// The TLS handshake (after the server's 220 to STARTTLS), any certificate accepted: the
    /// caller judges it. Bytes received before the handshake are dropped, as RFC 3207 asks.
    pub async fn tls(self, name: ServerName<'static>) -> Result<(Conn, Tls), Lost> {
        let connector = crate::upstream::tls::opportunistic_tls();
        let handshake = connector.connect(name, self.stream);
        let stream = match tokio::time::timeout(self.timeout, handshake).await {
            Err(_) => return Err(Lost::Silent(self.timeout)),
            Ok(Err(e)) => return Err(Lost::Broken(format!("TLS handshake: {e}"))),
            Ok(Ok(s)) => s,
        };
        let session = stream.get_ref().1;
        let tls = Tls {
            version: session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: session
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            chain: session
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        };
        let conn = Conn {
            stream: Box::new(stream),
            parser: ReplyParser::default(),
            timeout: self.timeout,
            sent: self.sent,
        };
        Ok((conn, tls))
    }

    /// Says QUIT (its answer is not waited for long) and closes.
    pub async fn quit(mut self) {
        let _ = self.send(b"QUIT\r\n").await;
        let _ = self.maybe_reply(Duration::from_millis(500)).await;
    }
}
