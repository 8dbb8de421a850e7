//! The client side of SMTP as a sans-IO state machine, for call-out probes and relaying.
//!
//! Responsible for: writing commands (with the ESMTP parameters the server supports),
//! dot-stuffing the message, matching each reply to the command it answers (pipelined commands
//! included), and reading the server's EHLO capabilities.
//! Not responsible for: sockets, TLS, timeouts, or deciding what a reply means for delivery
//! (the driver classifies outcomes).

use super::command::{MailParams, PeerSupport, RcptParams};
use super::data::{Stuffer, stuff_parts};
use super::reply::{Reply, ReplyParser};
use crate::address::{ForwardPath, ReversePath};
use std::collections::VecDeque;

/// What a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The server's `220` greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (a `354` lets the message follow).
    Data,
    /// The message and its terminating dot: the final answer.
    Message,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// QUIT.
    Quit,
    /// STARTTLS.
    StartTls,
}

/// What the client learnt from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The reply to a command (or the greeting).
    Reply(Expect, Reply),
    /// A reply when none was expected; typically `421` before the server closes.
    Unsolicited(Reply),
    /// The server broke the protocol; the connection must be closed.
    ProtocolError(String),
}

/// The server's ESMTP extensions, from its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE with its limit (0: no fixed limit).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// DSN.
    pub dsn: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Reads the keyword lines of an EHLO reply (the first line is the server's name).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let key = words.next().unwrap_or("").to_ascii_uppercase();
            match key.as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                _ => {}
            }
        }
        c
    }

    /// Which parameters may be written to this server.
    pub fn support(&self) -> PeerSupport {
        PeerSupport {
            size: self.size.is_some(),
            eight_bit_mime: self.eight_bit_mime,
            smtputf8: self.smtputf8,
            dsn: self.dsn,
        }
    }
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Client {
    parser: ReplyParser,
    expect: VecDeque<Expect>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    caps: Capabilities,
    broken: bool,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client that has just connected and waits for the greeting.
    pub fn new() -> Client {
        Client {
            parser: ReplyParser::default(),
            expect: VecDeque::from([Expect::Greeting]),
            out: Vec::new(),
            events: VecDeque::new(),
            caps: Capabilities::default(),
            broken: false,
        }
    }

    /// `EHLO name`
    pub fn ehlo(&mut self, name: &str) {
        self.command(format!("EHLO {name}"), Expect::Ehlo);
    }

    /// `HELO name`
    pub fn helo(&mut self, name: &str) {
        self.command(format!("HELO {name}"), Expect::Helo);
    }

    /// `MAIL FROM:<from>` with the parameters the server supports.
    pub fn mail(&mut self, from: &ReversePath, params: &MailParams) {
        let p = params.encode(self.caps.support());
        self.command(format!("MAIL FROM:{from}{p}"), Expect::Mail);
    }

    /// `RCPT TO:<to>` with the parameters the server supports.
    pub fn rcpt(&mut self, to: &ForwardPath, params: &RcptParams) {
        let p = params.encode(self.caps.support());
        self.command(format!("RCPT TO:{to}{p}"), Expect::Rcpt);
    }

    /// `DATA`
    pub fn data(&mut self) {
        self.command("DATA".into(), Expect::Data);
    }

    /// The message (CRLF line ends), given as consecutive parts (e.g. a trace header and the
    /// body), dot-stuffed and terminated; send after a `354`.
    pub fn message(&mut self, parts: &[&[u8]]) {
        stuff_parts(parts, &mut self.out);
        self.expect.push_back(Expect::Message);
    }

    /// A piece of a message sent piece by piece (after a `354`): stuffed with `stuffer`, which
    /// carries the state from one piece to the next; take the output after each piece so it
    /// need not grow with the message.
    pub fn message_piece(&mut self, stuffer: &mut Stuffer, piece: &[u8]) {
        stuffer.push(piece, &mut self.out);
    }

    /// Ends a message sent with [`Client::message_piece`]; its reply is the message's.
    pub fn message_end(&mut self, stuffer: Stuffer) {
        stuffer.finish(&mut self.out);
        self.expect.push_back(Expect::Message);
    }

    /// `RSET`
    pub fn rset(&mut self) {
        self.command("RSET".into(), Expect::Rset);
    }

    /// `NOOP`
    pub fn noop(&mut self) {
        self.command("NOOP".into(), Expect::Noop);
    }

    /// `QUIT`
    pub fn quit(&mut self) {
        self.command("QUIT".into(), Expect::Quit);
    }

    /// `STARTTLS`; after its `220`, run the handshake and call [`Client::tls_established`].
    pub fn starttls(&mut self) {
        self.command("STARTTLS".into(), Expect::StartTls);
    }

    /// After a TLS handshake: what the server said before no longer counts (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        self.caps = Capabilities::default();
        self.parser = ReplyParser::default();
    }

    /// Bytes to write to the server now (taken; the buffer is empty afterwards).
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True when there are bytes to write.
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// Replies still awaited.
    pub fn pending(&self) -> usize {
        self.expect.len()
    }

    /// What the server's EHLO reply announced (empty before EHLO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// True after a protocol error: the connection can not be used any more.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Feeds bytes received from the server.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.parser.push(bytes);
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) => break,
                Err(e) => {
                    self.broken = true;
                    self.events.push_back(Event::ProtocolError(e.to_string()));
                    break;
                }
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn command(&mut self, line: String, expect: Expect) {
        // never let a caller-supplied string end the line early
        let line = line.replace(['\r', '\n'], "");
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.expect.push_back(expect);
    }

    fn on_reply(&mut self, reply: Reply) {
        match self.expect.pop_front() {
            Some(Expect::Ehlo) if reply.is_success() => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.events.push_back(Event::Reply(Expect::Ehlo, reply));
            }
            Some(e) => self.events.push_back(Event::Reply(e, reply)),
            None => self.events.push_back(Event::Unsolicited(reply)),
        }
    }
}
