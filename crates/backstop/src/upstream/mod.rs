//! Connections to internal servers: the async driver of `proto::smtp::client` over TCP, and a
//! pool of kept-alive connections per server.
//!
//! Responsible for: connecting (to a host or an exact address), greeting and EHLO (HELO
//! fallback), STARTTLS (opportunistic TLS: `tls.rs`), writing what the client state machine
//! produced and reading replies with a timeout, and keeping idle connections for reuse.
//! Not responsible for: what a probe or a relay transaction means (policy and relay decide), nor
//! for retrying on another connection (callers know when a retry is safe), nor for falling back
//! to plaintext when a TLS handshake fails.

mod pool;
#[cfg(test)]
mod tests;
pub mod tls;

pub use pool::{Pool, Pooled, Pools, Slots};

/// Permanent refusals after which a connection is retired rather than used again: servers
/// slow down and disconnect clients that collect many (Postfix sleeps after 10, hangs up after
/// 20), and a connection one client filled with refusals must not slow another's mail.
pub const MAX_REFUSALS: u32 = 8;
pub use tls::{opportunistic_tls, server_name};

use crate::config::HostPort;
use crate::content::Content;
use backstop_proto::smtp::client::{Capabilities, Client, Event, Expect};
use backstop_proto::smtp::data::Stuffer;
use backstop_proto::smtp::reply::Reply;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a connection to an internal server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// No answer in time.
    #[error("{0}: timed out")]
    Timeout(String),
    /// Reading or writing failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The server closed the connection (or said 421 out of turn).
    #[error("{0}: connection closed by server")]
    Closed(String),
    /// The server broke the protocol.
    #[error("{0}: protocol error: {1}")]
    Protocol(String, String),
    /// The server refused the session (greeting or EHLO/HELO not 2xx).
    #[error("{0}: refused the session: {1}")]
    Refused(String, Reply),
    /// The TLS handshake after STARTTLS failed or timed out. The connection is unusable; for
    /// opportunistic TLS, reconnect and deliver in plaintext (as Postfix does).
    #[error("{0}: TLS handshake failed: {1}")]
    Tls(String, String),
    /// TLS is required for this delivery and the server does not offer it (or refused
    /// STARTTLS): nothing is sent in plaintext.
    #[error("{0}: {1}")]
    TlsNotOffered(String, String),
    /// Verified TLS is required and the server's certificate is not trusted for its name (or
    /// no host qualifies): nothing is sent.
    #[error("{0}: {1}")]
    TlsNotVerified(String, String),
}

/// Why [`Connection::starttls`] did not give an encrypted connection.
#[derive(Debug, thiserror::Error)]
pub enum StartTlsError {
    /// The server answered STARTTLS with something other than `220` (e.g. `454 4.7.0`).
    /// Nothing changed: the connection is handed back, still plaintext and still after EHLO,
    /// ready for a transaction (after a `421` the server closes it, and the next command fails
    /// with [`UpstreamError::Closed`]).
    #[error("{target}: STARTTLS refused: {reply}", target = .0.target, reply = .1)]
    Refused(Box<Connection>, Reply),
    /// The connection is gone. [`UpstreamError::Tls`] when the handshake failed (reconnect in
    /// plaintext for opportunistic TLS); any other variant when STARTTLS itself or the EHLO
    /// after the handshake failed, as for [`Connection::open`].
    #[error(transparent)]
    Failed(#[from] UpstreamError),
}

impl From<StartTlsError> for UpstreamError {
    /// A refusal becomes [`UpstreamError::Refused`] (dropping the still-usable connection).
    fn from(e: StartTlsError) -> UpstreamError {
        match e {
            StartTlsError::Refused(c, r) => UpstreamError::Refused(c.target, r),
            StartTlsError::Failed(e) => e,
        }
    }
}

/// The socket, before or after STARTTLS.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}

/// One open connection to an internal server, after greeting and EHLO.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    client: Client,
    rbuf: Box<[u8]>,
    timeout: Duration,
    target: String,
    /// When it was last returned to a pool.
    pub(crate) idle_since: Instant,
    /// Permanent refusals this connection has received (servers slow down and disconnect
    /// clients that collect many: Postfix after 10 and 20).
    pub refusals: u32,
    /// Transactions run on it.
    pub transactions: u32,
}

impl Connection {
    /// Connects (resolving the host), reads the greeting and says EHLO (HELO if EHLO is
    /// refused). Messages name the server `host:port`.
    pub async fn open(
        target: &HostPort,
        helo: &str,
        timeout: Duration,
    ) -> Result<Connection, UpstreamError> {
        let name = target.to_string();
        let stream = connect((target.host.as_str(), target.port), &name, timeout).await?;
        Connection::start(stream, name, helo, timeout).await
    }

    /// Like [`Connection::open`], to exactly `addr` (no resolution). `name` is the host the
    /// address belongs to; messages name the server `name[ip]:port`.
    pub async fn open_addr(
        addr: SocketAddr,
        name: &str,
        helo: &str,
        timeout: Duration,
    ) -> Result<Connection, UpstreamError> {
        let label = format!("{name}[{}]:{}", addr.ip(), addr.port());
        let stream = connect(addr, &label, timeout).await?;
        Connection::start(stream, label, helo, timeout).await
    }

    /// Greeting and EHLO on a fresh TCP connection.
    async fn start(
        stream: TcpStream,
        target: String,
        helo: &str,
        timeout: Duration,
    ) -> Result<Connection, UpstreamError> {
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream: Stream::Plain(stream),
            client: Client::new(),
            rbuf: vec![0u8; 16 * 1024].into_boxed_slice(),
            timeout,
            target,
            idle_since: Instant::now(),
            refusals: 0,
            transactions: 0,
        };
        let greeting = c.reply().await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Refused(c.target, greeting));
        }
        c.hello(helo).await?;
        Ok(c)
    }

    /// EHLO, and HELO if EHLO is refused.
    async fn hello(&mut self, helo: &str) -> Result<(), UpstreamError> {
        self.client.ehlo(helo);
        let ehlo = self.reply().await?;
        if !ehlo.is_success() {
            self.client.helo(helo);
            let r = self.reply().await?;
            if !r.is_success() {
                return Err(UpstreamError::Refused(self.target.clone(), r));
            }
        }
        Ok(())
    }

    /// Upgrades to TLS (RFC 3207): STARTTLS, a `220`, the handshake (within the timeout), then
    /// EHLO again; [`Connection::capabilities`] are then those announced over TLS.
    ///
    /// Call with no commands pending; check [`Capabilities::starttls`] first (this sends
    /// STARTTLS regardless). `server_name` goes through [`server_name`] (SNI for DNS names only);
    /// the certificate is checked as `tls` was configured to (not at all with
    /// [`opportunistic_tls`]). Anything the server sent after its `220` is discarded. An
    /// already encrypted connection is returned unchanged. See [`StartTlsError`] for what a
    /// refusal and a failure leave.
    pub async fn starttls(
        mut self,
        tls: &TlsConnector,
        server_name: &str,
        helo: &str,
    ) -> Result<Connection, StartTlsError> {
        if self.is_tls() {
            return Ok(self);
        }
        self.client.starttls();
        let (expect, reply) = self.reply_to().await?;
        if expect != Expect::StartTls {
            let m = format!("STARTTLS with commands pending (got the reply to {expect:?})");
            return Err(UpstreamError::Protocol(self.target, m).into());
        }
        if reply.code != 220 {
            return Err(StartTlsError::Refused(Box::new(self), reply));
        }
        let mut c = self.handshake(tls, server_name).await?;
        c.hello(helo).await?;
        Ok(c)
    }

    /// The TLS handshake on the plaintext socket, then forgets everything read before it.
    async fn handshake(
        mut self,
        connector: &TlsConnector,
        server_name: &str,
    ) -> Result<Connection, UpstreamError> {
        let tcp = match self.stream {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(s) => {
                self.stream = Stream::Tls(s);
                return Ok(self);
            }
        };
        let fallback = tcp.peer_addr().map_or(tls::NO_ADDRESS, |a| a.ip());
        let name = tls::server_name(server_name, fallback);
        let stream = match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Tls(self.target, e.to_string())),
            Err(_) => return Err(UpstreamError::Tls(self.target, "timed out".into())),
        };
        self.stream = Stream::Tls(Box::new(stream));
        // replies pipelined behind the 220 were sent in plaintext: they do not count
        self.client.tls_established();
        while self.client.poll_event().is_some() {}
        Ok(self)
    }

    /// True after a successful [`Connection::starttls`].
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The TLS version and cipher suite in use (`TLSv1.3 TLS13_AES_256_GCM_SHA384`), if any.
    pub fn tls_summary(&self) -> Option<String> {
        let Stream::Tls(s) = &self.stream else {
            return None;
        };
        let (_, session) = s.get_ref();
        let version = session.protocol_version().and_then(|v| v.as_str())?;
        let version = version.replace("TLSv1_", "TLSv1.");
        let suite = session
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("?");
        Some(format!("{version} {suite}"))
    }

    /// The protocol state machine, to queue commands on.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The server's extensions.
    pub fn capabilities(&self) -> &Capabilities {
        self.client.capabilities()
    }

    /// The server as messages name it: `host:port` ([`Connection::open`]) or `name[ip]:port`
    /// ([`Connection::open_addr`]).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Writes queued commands, then waits for the next reply.
    pub async fn reply(&mut self) -> Result<Reply, UpstreamError> {
        self.reply_to().await.map(|(_, r)| r)
    }

    /// Like [`Connection::reply`], also saying which command the reply answers.
    pub async fn reply_to(&mut self) -> Result<(Expect, Reply), UpstreamError> {
        self.flush().await?;
        loop {
            match self.client.poll_event() {
                Some(Event::Reply(e, r)) => return Ok((e, r)),
                Some(Event::Unsolicited(_)) => {
                    return Err(UpstreamError::Closed(self.target.clone()));
                }
                Some(Event::ProtocolError(m)) => {
                    return Err(UpstreamError::Protocol(self.target.clone(), m));
                }
                None => {}
            }
            let read = tokio::time::timeout(self.timeout, self.stream.read(&mut self.rbuf)).await;
            match read {
                Ok(Ok(0)) => return Err(UpstreamError::Closed(self.target.clone())),
                Ok(Ok(n)) => self.client.handle_input(&self.rbuf[..n]),
                Ok(Err(e)) => return Err(UpstreamError::Io(self.target.clone(), e)),
                Err(_) => return Err(UpstreamError::Timeout(self.target.clone())),
            }
        }
    }

    /// Writes whatever the state machine has queued.
    pub async fn flush(&mut self) -> Result<(), UpstreamError> {
        if !self.client.has_transmit() {
            return Ok(());
        }
        let out = self.client.take_transmit();
        match tokio::time::timeout(self.timeout, self.stream.write_all(&out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(UpstreamError::Io(self.target.clone(), e)),
            Err(_) => Err(UpstreamError::Timeout(self.target.clone())),
        }
    }

    /// Sends a message after `354`, a piece at a time as it is read (a large one is never
    /// whole in memory); the caller reads the reply. A piece that cannot be read ends the
    /// attempt without the end marker: the server never gets a truncated message.
    pub async fn send_message(&mut self, content: &Content) -> Result<(), UpstreamError> {
        let mut stuffer = Stuffer::default();
        let mut pos = 0;
        loop {
            let piece = content.piece(pos).await.map_err(|e| {
                UpstreamError::Io(format!("{} (reading the message)", self.target), e)
            })?;
            if piece.is_empty() {
                break;
            }
            pos += piece.len() as u64;
            self.client.message_piece(&mut stuffer, &piece);
            self.flush().await?;
        }
        self.client.message_end(stuffer);
        Ok(())
    }

    /// Sends QUIT without waiting long for the answer.
    pub async fn quit(mut self) {
        self.client.quit();
        self.timeout = Duration::from_secs(2);
        let _ = self.reply().await;
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }
}

/// TCP connect within `timeout`; `name` is for messages.
async fn connect(
    addr: impl ToSocketAddrs,
    name: &str,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(UpstreamError::Connect(name.to_string(), e)),
        Err(_) => Err(UpstreamError::Timeout(name.to_string())),
    }
}
