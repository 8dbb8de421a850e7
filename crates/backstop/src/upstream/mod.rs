//! Connections to internal servers: the async driver of `proto::smtp::client` over TCP, and a
//! pool of kept-alive connections per server.
//!
//! Responsible for: connecting, greeting and EHLO (HELO fallback), writing what the client state
//! machine produced and reading replies with a timeout, and keeping idle connections for reuse.
//! Not responsible for: what a probe or a relay transaction means (policy and relay decide), nor
//! for retrying on another connection (callers know when a retry is safe).

mod pool;

pub use pool::{Pool, Pooled, Pools};

use crate::config::HostPort;
use backstop_proto::smtp::client::{Capabilities, Client, Event, Expect};
use backstop_proto::smtp::reply::Reply;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
}

/// One open connection to an internal server, after greeting and EHLO.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
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
    /// Connects, reads the greeting and says EHLO (HELO if EHLO is refused).
    pub async fn open(
        target: &HostPort,
        helo: &str,
        timeout: Duration,
    ) -> Result<Connection, UpstreamError> {
        let name = target.to_string();
        let addr = (target.host.as_str(), target.port);
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(name, e)),
            Err(_) => return Err(UpstreamError::Timeout(name)),
        };
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream,
            client: Client::new(),
            rbuf: vec![0u8; 16 * 1024].into_boxed_slice(),
            timeout,
            target: name,
            idle_since: Instant::now(),
            refusals: 0,
            transactions: 0,
        };
        let greeting = c.reply().await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Refused(c.target, greeting));
        }
        c.client.ehlo(helo);
        let ehlo = c.reply().await?;
        if !ehlo.is_success() {
            c.client.helo(helo);
            let r = c.reply().await?;
            if !r.is_success() {
                return Err(UpstreamError::Refused(c.target, r));
            }
        }
        Ok(c)
    }

    /// The protocol state machine, to queue commands on.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The server's extensions.
    pub fn capabilities(&self) -> &Capabilities {
        self.client.capabilities()
    }

    /// `host:port` of the server.
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

    /// Sends QUIT without waiting long for the answer.
    pub async fn quit(mut self) {
        self.client.quit();
        self.timeout = Duration::from_secs(2);
        let _ = self.reply().await;
    }
}
