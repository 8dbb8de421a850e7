//! One milter connection, sans IO: the MTA's bytes in; bytes to send, the finished message for
//! the gateway to judge, and the close out.
//!
//! Responsible for: negotiation (asking the MTA to expect no reply to any step but the end of
//! the message, where it offers that), what a message is made of as it arrives (macros,
//! client, HELO, envelope, headers, the first `keep` bytes of header and body), `continue` to
//! the steps that still expect a reply, and sending the gateway's answer at the end.
//! Not responsible for: any verdict (the gateway answers [`Output::EndOfMessage`] with
//! [`Session::resolve`]), or sockets.

use super::{Command, Decoder, Error, Response, VERSION, steps};

/// What the session asks the MTA to leave out: every reply but the one at the end of the
/// message (each would cost the MTA a round trip per message), unknown commands and DATA.
const WANTED_STEPS: u32 = steps::NR_CONNECT
    | steps::NR_HELO
    | steps::NR_MAIL
    | steps::NR_RCPT
    | steps::NR_DATA
    | steps::NR_UNKNOWN
    | steps::NR_EOH
    | steps::NR_BODY
    | steps::NO_REPLY_HEADER
    | steps::NO_UNKNOWN
    | steps::NO_DATA;

/// What the filter wants from the MTA.
#[derive(Clone, Debug)]
pub struct Config {
    /// `SMFIF_*` actions the gateway may answer with (offered ones only are kept).
    pub actions: u32,
    /// Bytes of a message's headers and body kept for the gateway.
    pub keep: usize,
}

/// The client as the MTA describes it (`C`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Client {
    /// Its host name (or `[ip]`).
    pub host: String,
    /// `4`, `6`, `L` or `U`.
    pub family: u8,
    /// Its port.
    pub port: u16,
    /// Its address as text.
    pub address: String,
}

/// A message at its end, for the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The client.
    pub client: Client,
    /// Its HELO.
    pub helo: String,
    /// Macros of the connection and of this message, in the order they came (a later value
    /// of a name is the later one).
    pub macros: Vec<(String, String)>,
    /// MAIL's arguments: the sender (`<a@b>`), then ESMTP parameters.
    pub from: Vec<String>,
    /// Each RCPT's arguments.
    pub rcpts: Vec<Vec<String>>,
    /// The headers as `Name: value` lines, the empty line, then the body, up to `keep` bytes.
    pub head: Vec<u8>,
    /// Header and body bytes in all (the same form as `head`).
    pub size: u64,
}

impl Message {
    /// The value of macro `name` (the last one given), e.g. `{auth_authen}`, `i`.
    pub fn macro_value(&self, name: &str) -> Option<&str> {
        self.macros
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the MTA.
    Send(Vec<u8>),
    /// The message is complete: judge it and call [`Session::resolve`].
    EndOfMessage(Box<Message>),
    /// Close the connection (with why, when the MTA's input was not the protocol).
    Close(Option<Error>),
}

/// One milter connection.
#[derive(Debug)]
pub struct Session {
    cfg: Config,
    decoder: Decoder,
    /// Macros of the connection (`C`, `H`), kept across messages.
    connection_macros: Vec<(String, String)>,
    msg: Message,
    /// An end of message is waiting for its answer.
    pending: bool,
    /// The steps the MTA agreed to: which commands get no reply.
    steps: u32,
    closed: bool,
}

impl Session {
    /// A new connection.
    pub fn new(cfg: Config) -> Session {
        Session {
            cfg,
            decoder: Decoder::new(),
            connection_macros: Vec::new(),
            msg: Message::default(),
            pending: false,
            steps: 0,
            closed: false,
        }
    }

    /// Bytes from the MTA; what to do about them.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Vec<Output> {
        if self.closed {
            return Vec::new();
        }
        self.decoder.push(bytes);
        self.run()
    }

    /// The gateway's answer to [`Output::EndOfMessage`]: its modifications, then its verdict
    /// (the last response); commands that arrived meanwhile are handled after it.
    pub fn resolve(&mut self, responses: Vec<Response>) -> Vec<Output> {
        if !self.pending || self.closed {
            return Vec::new();
        }
        self.pending = false;
        let mut bytes = Vec::new();
        for r in &responses {
            bytes.extend(r.encode());
        }
        if responses.is_empty() {
            bytes.extend(Response::Continue.encode());
        }
        self.msg = self.fresh_message();
        let mut out = vec![Output::Send(bytes)];
        out.extend(self.run());
        out
    }

    /// True once it has closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn run(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while !self.pending && !self.closed {
            let Some(next) = self.decoder.next_command() else {
                break;
            };
            match next {
                Ok(cmd) => out.extend(self.command(cmd)),
                Err(e) => {
                    self.closed = true;
                    out.push(Output::Close(Some(e)));
                }
            }
        }
        out
    }

    fn fresh_message(&self) -> Message {
        Message {
            client: self.msg.client.clone(),
            helo: self.msg.helo.clone(),
            macros: self.connection_macros.clone(),
            ..Message::default()
        }
    }

    /// `continue`, unless the MTA agreed that this step (`no_reply`) gets no reply.
    fn cont(&self, no_reply: u32) -> Option<Output> {
        (self.steps & no_reply == 0).then(|| Output::Send(Response::Continue.encode()))
    }

    fn command(&mut self, cmd: Command) -> Option<Output> {
        match cmd {
            Command::Negotiate {
                version,
                actions,
                steps,
            } => {
                self.steps = steps & WANTED_STEPS;
                Some(Output::Send(
                    Response::Negotiate {
                        version: version.min(VERSION),
                        actions: actions & self.cfg.actions,
                        steps: self.steps,
                    }
                    .encode(),
                ))
            }
            Command::Macros { of, pairs } => {
                if matches!(of, b'C' | b'H') {
                    self.connection_macros.extend(pairs.iter().cloned());
                }
                self.msg.macros.extend(pairs);
                None
            }
            Command::Connect {
                host,
                family,
                port,
                address,
            } => {
                self.msg.client = Client {
                    host,
                    family,
                    port,
                    address,
                };
                self.cont(steps::NR_CONNECT)
            }
            Command::Helo(helo) => {
                self.msg.helo = helo;
                self.cont(steps::NR_HELO)
            }
            Command::Mail(args) => {
                // macros sent for this MAIL came just before it
                let mail_macros: Vec<_> = self.msg.macros.split_off(self.message_macros_start());
                self.msg = self.fresh_message();
                self.msg.macros.extend(mail_macros);
                self.msg.from = args;
                self.cont(steps::NR_MAIL)
            }
            other => self.message_command(other),
        }
    }

    /// Where this message's own macros begin in `msg.macros` (after the connection's).
    fn message_macros_start(&self) -> usize {
        self.connection_macros.len().min(self.msg.macros.len())
    }

    fn message_command(&mut self, cmd: Command) -> Option<Output> {
        let no_reply = match cmd {
            Command::Rcpt(args) => {
                self.msg.rcpts.push(args);
                steps::NR_RCPT
            }
            Command::Header(name, value) => {
                self.keep(format!("{name}: {value}\r\n").as_bytes());
                steps::NO_REPLY_HEADER
            }
            Command::EndOfHeaders => {
                self.keep(b"\r\n");
                steps::NR_EOH
            }
            Command::Body(chunk) => {
                self.keep(&chunk);
                steps::NR_BODY
            }
            Command::Data => steps::NR_DATA,
            Command::Unknown(_) => steps::NR_UNKNOWN,
            Command::EndOfMessage => {
                self.pending = true;
                return Some(Output::EndOfMessage(Box::new(self.msg.clone())));
            }
            Command::Abort => {
                self.msg = self.fresh_message();
                return None;
            }
            Command::QuitNewConnection => {
                self.connection_macros.clear();
                self.msg = Message::default();
                return None;
            }
            Command::Quit => {
                self.closed = true;
                return Some(Output::Close(None));
            }
            // handled in `command`
            Command::Negotiate { .. }
            | Command::Macros { .. }
            | Command::Connect { .. }
            | Command::Helo(_)
            | Command::Mail(_) => 0,
        };
        self.cont(no_reply)
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.msg.size += bytes.len() as u64;
        let room = self.cfg.keep.saturating_sub(self.msg.head.len());
        self.msg
            .head
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}
