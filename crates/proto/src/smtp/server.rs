//! The server side of an SMTP session as a sans-IO state machine.
//!
//! Responsible for: framing command lines (only CRLF ends a line; bare CR/LF and over-long
//! lines are refused), the command sequence rules of RFC 5321, the ESMTP extensions backstop
//! offers, receiving DATA, limits and timeouts, and suspending on a [`Check`] whenever a
//! decision needs the outside world. At most one check is pending; pipelined input waits
//! behind it, so replies leave in command order.
//! Not responsible for: sockets, TLS, clocks (time is passed in), or any policy decision: the
//! driver resolves each check with the reply to send.
//!
//! Invariant: every byte sequence fed in ends in replies and possibly a close; nothing here
//! returns an error or panics on peer input.

use super::command::{Command, MailParams, RcptParams};
use super::data::{DataReceiver, Received};
use super::reply::{Enhanced, Reply};
use crate::address::{ForwardPath, ReversePath};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits and identity of a listener; shared by all its sessions.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our host name, in the greeting and the EHLO reply.
    pub hostname: String,
    /// Longest command line accepted, CRLF included.
    pub max_line: usize,
    /// Most recipients accepted per message.
    pub max_recipients: usize,
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: u64,
    /// Protocol errors (syntax, sequence, bare CR/LF) allowed before `421` and close.
    pub max_errors: u32,
    /// Longest wait for the client's next bytes.
    pub idle_timeout: Duration,
    /// Longest whole session.
    pub session_timeout: Duration,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub tls_available: bool,
    /// Bytes of a message kept in [`Check::Message`]'s body; the rest leaves as
    /// [`Output::Spill`] pieces while it arrives (the driver stores them), so a session holds
    /// at most this much of a message.
    pub keep_in_memory: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_line: 2048,
            max_recipients: 1000,
            max_message_size: 10_240_000,
            max_errors: 20,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            tls_available: false,
            keep_in_memory: u64::MAX,
        }
    }
}

/// Spilled bytes gathered before they leave as one [`Output::Spill`].
const SPILL_PIECE: usize = 64 * 1024;

/// Bytes of unprocessed pipelined input the session buffers before [`Session::wants_input`]
/// turns false (while a check is pending).
const MAX_BUFFERED: usize = 64 * 1024;

/// What the session asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this reply.
    Reply(Reply),
    /// Decide this, then call [`Session::resolve`] with the reply.
    Check(Check),
    /// Write everything before this, then run the TLS handshake and call
    /// [`Session::tls_established`] (or close if it fails).
    StartTls,
    /// Write everything before this, then close the connection.
    Close,
    /// The next piece of the message being received, past the part kept in memory: store
    /// it; [`Check::Message`] says how many bytes came this way.
    Spill(Vec<u8>),
}

/// A decision the session cannot make itself. The session is suspended until it is resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// May this sender start a transaction? A 2xx reply starts it.
    Mail {
        /// The sender.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// Is this recipient accepted? A 2xx reply adds it to the transaction.
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// The client sent DATA. A `354` reply starts receiving the message.
    Data,
    /// The message is complete; the reply is the transaction's final answer. The envelope is in
    /// [`Session::transaction`] until the check is resolved.
    Message {
        /// The message, un-stuffed, CRLF line ends: its first part when it was larger than
        /// `keep_in_memory` (the rest came in [`Output::Spill`] pieces).
        body: Vec<u8>,
        /// Bytes that came as [`Output::Spill`] after `body`.
        spilled: u64,
    },
}

/// An accepted recipient with its DSN parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient as given.
    pub path: ForwardPath,
    /// NOTIFY and ORCPT, kept for delivery reports.
    pub params: RcptParams,
}

/// The open mail transaction: sender and accepted recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// MAIL FROM.
    pub from: ReversePath,
    /// Its parameters.
    pub params: MailParams,
    /// Recipients accepted so far, in order.
    pub recipients: Vec<Recipient>,
    rcpt_commands: usize,
}

/// The client's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Helo {
    /// The name given after HELO/EHLO.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
}

#[derive(Debug)]
enum State {
    Command,
    Data(DataReceiver),
    AwaitingTls,
    Closed,
}

#[derive(Debug)]
enum Pending {
    Mail(ReversePath, MailParams),
    Rcpt(Recipient),
    Data,
    Message,
}

/// What scanning the input for a command line found.
enum Scan {
    Line(Vec<u8>),
    Refused(Reply),
    NeedMore,
}

/// One SMTP server session. Feed it with [`Session::handle_input`], [`Session::handle_timeout`]
/// and [`Session::resolve`]; drain it with [`Session::poll_output`].
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    state: State,
    inbuf: Vec<u8>,
    discarding: bool,
    out: VecDeque<Output>,
    helo: Option<Helo>,
    tls: bool,
    txn: Option<Transaction>,
    pending: Option<Pending>,
    errors: u32,
    started: Instant,
    last_input: Instant,
    draining: bool,
    /// May send a message's content before our `354` (see [`Session::trust_pipelining`]).
    early_content: bool,
}

impl Session {
    /// A new session; its first output is the `220` greeting.
    pub fn new(cfg: Arc<SessionConfig>, now: Instant) -> Session {
        let greeting = Reply::plain(220, format!("{} ESMTP", cfg.hostname));
        let mut s = Session {
            cfg,
            state: State::Command,
            inbuf: Vec::new(),
            discarding: false,
            out: VecDeque::new(),
            helo: None,
            tls: false,
            txn: None,
            pending: None,
            errors: 0,
            started: now,
            last_input: now,
            draining: false,
            early_content: false,
        };
        s.out.push_back(Output::Reply(greeting));
        s
    }

    /// Lets this client send a message's content without waiting for the `354` (a client that
    /// may relay: the organisation's own servers). Anyone else who does is cut off: RFC 2920
    /// makes DATA the last command of a pipelined group, and content sent before the answer is
    /// how smuggling through a lenient server downstream starts (Postfix:
    /// `smtpd_forbid_unauth_pipelining`).
    pub fn trust_pipelining(&mut self) {
        self.early_content = true;
    }

    /// Feeds bytes received from the client.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if !matches!(self.state, State::Command | State::Data(_)) {
            return; // closed, or plaintext after STARTTLS: discarded
        }
        self.last_input = now;
        self.inbuf.extend_from_slice(bytes);
        self.process();
    }

    /// Resolves the pending check with the reply to send. Ignored when nothing is pending. A
    /// `421` reply also closes the session.
    pub fn resolve(&mut self, reply: Reply, now: Instant) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if matches!(self.state, State::Closed) {
            return;
        }
        self.last_input = now;
        if matches!(pending, Pending::Data) && !self.inbuf.is_empty() && !self.early_content {
            // bytes after DATA arrived before its answer: neither content nor commands
            self.txn = None;
            return self.close_with(
                554,
                Enhanced::new(5, 5, 0),
                "Error: SMTP protocol synchronization: data sent before the reply to DATA",
            );
        }
        let ok = reply.is_success();
        match pending {
            Pending::Mail(from, params) if ok => {
                self.txn = Some(Transaction {
                    from,
                    params,
                    recipients: Vec::new(),
                    rcpt_commands: 0,
                })
            }
            Pending::Rcpt(r) if ok => {
                if let Some(t) = self.txn.as_mut() {
                    t.recipients.push(r)
                }
            }
            Pending::Data if reply.code == 354 => {
                self.state = State::Data(DataReceiver::spilling(
                    self.cfg.max_message_size,
                    self.cfg.keep_in_memory,
                ))
            }
            Pending::Message => self.txn = None,
            Pending::Mail(..) | Pending::Rcpt(_) | Pending::Data => {}
        }
        if reply.code == 421 {
            // the gateway ends the session (harvest defence): 421 means closing (RFC 5321
            // §3.8); pipelined input behind it is never executed
            self.out.push_back(Output::Reply(reply));
            self.out.push_back(Output::Close);
            self.state = State::Closed;
            self.inbuf = Vec::new();
            return;
        }
        self.out.push_back(Output::Reply(reply));
        self.process();
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2).
    pub fn tls_established(&mut self, now: Instant) {
        if matches!(self.state, State::AwaitingTls) {
            self.tls = true;
            self.helo = None;
            self.txn = None;
            self.inbuf.clear();
            self.state = State::Command;
            self.last_input = now;
        }
    }

    /// When [`Session::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Closed) {
            return None;
        }
        let total = self.started + self.cfg.session_timeout;
        if self.pending.is_some() {
            return Some(total); // the client is not expected to talk while we decide
        }
        Some(total.min(self.last_input + self.cfg.idle_timeout))
    }

    /// Applies the idle and session timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if now >= self.started + self.cfg.session_timeout {
            self.close_with(
                421,
                Enhanced::new(4, 4, 2),
                "Error: session time limit exceeded",
            );
        } else if self.pending.is_none() && now >= self.last_input + self.cfg.idle_timeout {
            self.close_with(421, Enhanced::new(4, 4, 2), "Error: timeout exceeded");
        }
    }

    /// Stop taking new mail: a session between transactions is closed with `421` now, one in a
    /// transaction when it ends.
    pub fn begin_shutdown(&mut self) {
        self.draining = true;
        self.close_if_draining();
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// True when the driver should read more bytes (not closed, not mid-STARTTLS, and not
    /// holding too much unprocessed pipelined input).
    pub fn wants_input(&self) -> bool {
        matches!(self.state, State::Command | State::Data(_)) && self.inbuf.len() < MAX_BUFFERED
    }

    /// True once the session has closed (or asked to).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The open transaction, if any.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.txn.as_ref()
    }

    /// The client's HELO/EHLO, if given.
    pub fn helo(&self) -> Option<&Helo> {
        self.helo.as_ref()
    }

    /// True after a successful STARTTLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Runs buffered input until it is used up, a check is pending, or the session closes.
    fn process(&mut self) {
        while self.pending.is_none() {
            match &mut self.state {
                State::Data(rx) => {
                    let (n, done) = rx.feed(&self.inbuf);
                    self.inbuf.drain(..n);
                    if rx.spill_len() >= SPILL_PIECE || (done.is_some() && rx.spill_len() > 0) {
                        self.out.push_back(Output::Spill(rx.take_spill()));
                    }
                    match done {
                        Some(msg) => self.on_message(msg),
                        None => break,
                    }
                }
                State::Command => match self.scan_line() {
                    Scan::Line(line) => self.on_line(&line),
                    Scan::Refused(reply) => self.error(reply),
                    Scan::NeedMore => break,
                },
                State::AwaitingTls | State::Closed => break,
            }
        }
        self.close_if_draining();
    }

    /// Takes the next CRLF-terminated line off the input. A bare CR or LF, or a line over the
    /// limit, is refused at once and everything up to the next CRLF is discarded.
    fn scan_line(&mut self) -> Scan {
        if self.discarding {
            match find_crlf(&self.inbuf) {
                Some(i) => {
                    self.inbuf.drain(..i + 2);
                    self.discarding = false;
                }
                None => {
                    let keep = usize::from(self.inbuf.last() == Some(&b'\r'));
                    self.inbuf.drain(..self.inbuf.len() - keep);
                    return Scan::NeedMore;
                }
            }
        }
        let limit = self.cfg.max_line.saturating_sub(2);
        let stop = self.inbuf.iter().position(|&b| b == b'\r' || b == b'\n');
        let refuse = |s: &mut Session, text: &str| {
            s.discarding = true;
            Scan::Refused(Reply::new(500, Enhanced::new(5, 5, 2), text.to_string()))
        };
        match stop {
            Some(i) if i > limit => refuse(self, "Error: line too long"),
            Some(i) if self.inbuf[i] == b'\n' => refuse(self, BARE_LF),
            Some(i) if i + 1 == self.inbuf.len() => Scan::NeedMore,
            Some(i) if self.inbuf[i + 1] != b'\n' => refuse(self, BARE_CR),
            Some(i) => {
                let line = self.inbuf[..i].to_vec();
                self.inbuf.drain(..i + 2);
                Scan::Line(line)
            }
            None if self.inbuf.len() > limit => refuse(self, "Error: line too long"),
            None => Scan::NeedMore,
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        if self.draining && self.txn.is_none() {
            return self.shutdown_now();
        }
        match Command::parse(line) {
            Ok(cmd) => self.on_command(cmd),
            Err(e) => self.error(e.reply()),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => self.on_helo(name, true),
            Command::Helo(name) => self.on_helo(name, false),
            Command::Mail { from, params } => self.on_mail(from, params),
            Command::Rcpt { to, params } => self.on_rcpt(to, params),
            Command::Data => self.on_data(),
            Command::Rset => {
                self.txn = None;
                self.ok(250, Enhanced::new(2, 0, 0), "Ok");
            }
            Command::Noop => self.ok(250, Enhanced::new(2, 0, 0), "Ok"),
            Command::Quit => self.close_with(221, Enhanced::new(2, 0, 0), "Bye"),
            Command::Help => self.ok(214, Enhanced::new(2, 0, 0), HELP),
            Command::Vrfy => self.ok(252, Enhanced::new(2, 5, 0), VRFY),
            Command::Expn => self.ok(502, Enhanced::new(5, 5, 1), "Error: EXPN not supported"),
            Command::StartTls => self.on_starttls(),
        }
    }

    fn on_helo(&mut self, name: String, esmtp: bool) {
        self.txn = None;
        let reply = if esmtp {
            self.ehlo_reply()
        } else {
            Reply::plain(250, self.cfg.hostname.clone())
        };
        self.helo = Some(Helo { name, esmtp });
        self.out.push_back(Output::Reply(reply));
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.cfg.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
        ];
        if self.cfg.tls_available && !self.tls {
            lines.push("STARTTLS".into());
        }
        Reply {
            code: 250,
            enhanced: None,
            lines,
        }
    }

    fn on_mail(&mut self, from: ReversePath, params: MailParams) {
        match self.mail_refusal(&from, &params) {
            Some(r) => self.error(r),
            None => self.check(
                Pending::Mail(from.clone(), params.clone()),
                Check::Mail { from, params },
            ),
        }
    }

    fn mail_refusal(&self, from: &ReversePath, params: &MailParams) -> Option<Reply> {
        let Some(helo) = &self.helo else {
            return Some(sequence("Error: send HELO/EHLO first"));
        };
        if self.txn.is_some() {
            return Some(sequence("Error: nested MAIL command"));
        }
        if !helo.esmtp && *params != MailParams::default() {
            return Some(Reply::new(
                555,
                Enhanced::new(5, 5, 4),
                "Error: MAIL parameters need EHLO",
            ));
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return Some(Reply::new(
                552,
                Enhanced::new(5, 3, 4),
                "Error: message size exceeds fixed limit",
            ));
        }
        if !params.smtputf8 && from.mailbox().is_some_and(|m| !m.is_ascii()) {
            return Some(needs_utf8());
        }
        None
    }

    fn on_rcpt(&mut self, to: ForwardPath, params: RcptParams) {
        let Some(txn) = self.txn.as_mut() else {
            return self.error(sequence("Error: need MAIL command"));
        };
        txn.rcpt_commands += 1;
        let utf8 = txn.params.smtputf8;
        let full = txn.recipients.len() >= self.cfg.max_recipients;
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        if let ForwardPath::Mailbox(m) = &to
            && !utf8
            && !m.is_ascii()
        {
            return self.error(needs_utf8());
        }
        if !esmtp && params != RcptParams::default() {
            return self.error(Reply::new(
                555,
                Enhanced::new(5, 5, 4),
                "Error: RCPT parameters need EHLO",
            ));
        }
        if full {
            let r = Reply::new(452, Enhanced::new(4, 5, 3), "Error: too many recipients");
            return self.out.push_back(Output::Reply(r));
        }
        let rcpt = Recipient {
            path: to.clone(),
            params: params.clone(),
        };
        self.check(Pending::Rcpt(rcpt), Check::Rcpt { to, params });
    }

    fn on_data(&mut self) {
        match &self.txn {
            None => self.error(sequence("Error: need MAIL command")),
            Some(t) if t.recipients.is_empty() && t.rcpt_commands > 0 => self.error(Reply::new(
                554,
                Enhanced::new(5, 5, 1),
                "Error: no valid recipients",
            )),
            Some(t) if t.recipients.is_empty() => self.error(sequence("Error: need RCPT command")),
            Some(_) => self.check(Pending::Data, Check::Data),
        }
    }

    fn on_message(&mut self, msg: Received) {
        self.state = State::Command;
        if msg.too_big {
            self.txn = None;
            return self.ok(552, Enhanced::new(5, 3, 4), "Error: message file too big");
        }
        if msg.bare_lf || msg.bare_cr {
            self.txn = None;
            let what = if msg.bare_lf { "<LF>" } else { "<CR>" };
            let text = format!("Error: message contains bare {what}; lines must end with <CR><LF>");
            return self.error(Reply::new(554, Enhanced::new(5, 6, 0), text));
        }
        if msg.nul {
            self.txn = None;
            let text = "Error: message contains a NUL character";
            return self.error(Reply::new(554, Enhanced::new(5, 6, 0), text));
        }
        let spilled = msg.spilled;
        self.check(
            Pending::Message,
            Check::Message {
                body: msg.body,
                spilled,
            },
        );
    }

    fn on_starttls(&mut self) {
        if !self.cfg.tls_available {
            return self.error(Reply::new(
                502,
                Enhanced::new(5, 5, 1),
                "Error: command not implemented",
            ));
        }
        if self.tls {
            return self.error(sequence("Error: TLS already active"));
        }
        if self.txn.is_some() {
            return self.error(sequence("Error: MAIL transaction in progress"));
        }
        self.ok(220, Enhanced::new(2, 0, 0), "Ready to start TLS");
        // RFC 3207 §6: anything pipelined after STARTTLS is thrown away, never executed
        self.inbuf.clear();
        self.state = State::AwaitingTls;
        self.out.push_back(Output::StartTls);
    }

    fn check(&mut self, pending: Pending, check: Check) {
        self.pending = Some(pending);
        self.out.push_back(Output::Check(check));
    }

    fn ok(&mut self, code: u16, e: Enhanced, text: &str) {
        self.out.push_back(Output::Reply(Reply::new(code, e, text)));
    }

    /// Sends a protocol-error reply and counts it; too many errors end the session.
    fn error(&mut self, reply: Reply) {
        self.out.push_back(Output::Reply(reply));
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.close_with(421, Enhanced::new(4, 7, 0), "Error: too many errors");
        }
    }

    fn close_with(&mut self, code: u16, e: Enhanced, text: &str) {
        let text = if code == 421 {
            format!("{} {text}", self.cfg.hostname)
        } else {
            text.to_string()
        };
        self.out.push_back(Output::Reply(Reply::new(code, e, text)));
        self.out.push_back(Output::Close);
        self.state = State::Closed;
        self.pending = None;
        self.inbuf = Vec::new();
    }

    fn close_if_draining(&mut self) {
        let idle =
            self.txn.is_none() && self.pending.is_none() && matches!(self.state, State::Command);
        if self.draining && idle {
            self.shutdown_now();
        }
    }

    fn shutdown_now(&mut self) {
        self.close_with(
            421,
            Enhanced::new(4, 3, 2),
            "Service shutting down, closing connection",
        );
    }
}

const BARE_LF: &str = "Error: bare <LF> received; lines must end with <CR><LF>";
const BARE_CR: &str = "Error: bare <CR> received; lines must end with <CR><LF>";
const HELP: &str = "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY STARTTLS";
const VRFY: &str = "Cannot VRFY user; send mail and the recipient will be checked at RCPT";

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn sequence(text: &str) -> Reply {
    Reply::new(503, Enhanced::new(5, 5, 1), text)
}

fn needs_utf8() -> Reply {
    Reply::new(
        553,
        Enhanced::new(5, 6, 7),
        "Error: non-ASCII address requires SMTPUTF8",
    )
}
