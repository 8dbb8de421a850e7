//! The milter protocol (version 6, as Postfix and Sendmail speak it), sans IO: an MTA's packets
//! in, typed commands out; a filter's responses out as bytes.
//!
//! A packet is a 4-byte big-endian length (counting the command byte), a command byte and its
//! data; strings inside are NUL-terminated.
//! Responsible for: framing with a bound on a packet's size, reading each command's fields, and
//! writing each response and modification.
//! Not responsible for: what to answer (the gateway decides; [`session`] keeps a connection's
//! state and asks it at the end of each message), or reading and writing sockets. Input that is not a packet is
//! an [`Error`]; the caller closes the connection.

pub mod session;

/// The protocol version spoken.
pub const VERSION: u32 = 6;

/// The largest packet accepted. Body chunks are at most 64 KiB (`MILTER_CHUNK_SIZE`); headers
/// and macro packets are smaller.
pub const MAX_PACKET: usize = 1 << 20;

/// Actions a filter may ask for in negotiation (`SMFIF_*`).
pub mod actions {
    /// Add headers.
    pub const ADD_HEADERS: u32 = 0x01;
    /// Change or delete headers.
    pub const CHANGE_HEADERS: u32 = 0x10;
    /// Add recipients.
    pub const ADD_RCPT: u32 = 0x04;
    /// Delete recipients.
    pub const DELETE_RCPT: u32 = 0x08;
    /// Quarantine the message.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the envelope sender.
    pub const CHANGE_FROM: u32 = 0x40;
}

/// Protocol steps a filter may decline in negotiation (`SMFIP_*`).
pub mod steps {
    /// No CONNECT.
    pub const NO_CONNECT: u32 = 0x01;
    /// No HELO.
    pub const NO_HELO: u32 = 0x02;
    /// No body chunks.
    pub const NO_BODY: u32 = 0x10;
    /// No headers.
    pub const NO_HEADERS: u32 = 0x20;
    /// No end of headers.
    pub const NO_EOH: u32 = 0x40;
    /// No reply to headers.
    pub const NO_REPLY_HEADER: u32 = 0x80;
    /// No unknown commands.
    pub const NO_UNKNOWN: u32 = 0x100;
    /// No DATA.
    pub const NO_DATA: u32 = 0x200;
    /// Rejected recipients are sent too.
    pub const RCPT_REJECTED: u32 = 0x800;
    /// No reply to CONNECT.
    pub const NR_CONNECT: u32 = 0x1000;
    /// No reply to HELO.
    pub const NR_HELO: u32 = 0x2000;
    /// No reply to MAIL.
    pub const NR_MAIL: u32 = 0x4000;
    /// No reply to RCPT.
    pub const NR_RCPT: u32 = 0x8000;
    /// No reply to DATA.
    pub const NR_DATA: u32 = 0x10000;
    /// No reply to unknown commands.
    pub const NR_UNKNOWN: u32 = 0x20000;
    /// No reply to the end of headers.
    pub const NR_EOH: u32 = 0x40000;
    /// No reply to body chunks.
    pub const NR_BODY: u32 = 0x80000;
}

/// One command from the MTA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `O`: negotiation: the MTA's version, the actions it allows and the steps it can skip.
    Negotiate {
        /// Its protocol version.
        version: u32,
        /// `SMFIF_*` it allows.
        actions: u32,
        /// `SMFIP_*` it offers.
        steps: u32,
    },
    /// `D`: macros for the command `for` (no answer).
    Macros {
        /// The command they belong to (`C`, `H`, `M`, `R`, `T`, `E`, `N`, ...).
        of: u8,
        /// Name and value pairs (`{auth_authen}`, `i`, `j`, ...).
        pairs: Vec<(String, String)>,
    },
    /// `C`: the client: its name, address family (`4`, `6`, `U` or `L`; `U`: unknown),
    /// port and address.
    Connect {
        /// Host name (or `[ip]`).
        host: String,
        /// `4`, `6`, `L` (a Unix socket) or `U` (unknown).
        family: u8,
        /// Its port (0 when unknown).
        port: u16,
        /// Its address, as text (empty when unknown).
        address: String,
    },
    /// `H`: HELO/EHLO argument.
    Helo(String),
    /// `M`: the sender (`<a@b>` as given) and its ESMTP arguments.
    Mail(Vec<String>),
    /// `R`: a recipient and its ESMTP arguments.
    Rcpt(Vec<String>),
    /// `T`: DATA.
    Data,
    /// `L`: one header, name and value.
    Header(String, String),
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a piece of the body.
    Body(Vec<u8>),
    /// `E`: end of the message: the filter answers, with its modifications first.
    EndOfMessage,
    /// `A`: the message is abandoned; the connection goes on (no answer).
    Abort,
    /// `Q`: the end of the connection (no answer).
    Quit,
    /// `K`: the end of this session; a new one follows on the same connection (no answer).
    QuitNewConnection,
    /// `U`: an SMTP command the MTA did not know.
    Unknown(Vec<u8>),
}

/// Why the input is not a milter packet; the connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A packet longer than [`MAX_PACKET`] (its length).
    TooLarge(usize),
    /// A packet of length 0 (no command byte).
    Empty,
    /// A command byte this protocol does not have.
    UnknownCommand(u8),
    /// A command whose data does not have the fields it must (the command).
    Malformed(u8),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::TooLarge(n) => write!(f, "milter packet of {n} bytes (at most {MAX_PACKET})"),
            Error::Empty => write!(f, "milter packet without a command"),
            Error::UnknownCommand(c) => write!(f, "unknown milter command 0x{c:02x}"),
            Error::Malformed(c) => write!(f, "malformed milter command {:?}", *c as char),
        }
    }
}

/// Reads commands from a connection's bytes as they arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: bool,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete command, if one has arrived; an error once and for good when the
    /// input is not the protocol.
    pub fn next_command(&mut self) -> Option<Result<Command, Error>> {
        if self.failed || self.buf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let bad = match len {
            0 => Some(Error::Empty),
            n if n > MAX_PACKET => Some(Error::TooLarge(n)),
            _ => None,
        };
        if let Some(e) = bad {
            self.failed = true;
            return Some(Err(e));
        }
        if self.buf.len() < 4 + len {
            return None;
        }
        let packet: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        let parsed = parse(packet[0], &packet[1..]);
        self.failed = parsed.is_err();
        Some(parsed)
    }
}

/// The NUL-terminated strings of `data` (a last one without its NUL counts too).
fn strings(data: &[u8]) -> Vec<String> {
    let data = data.strip_suffix(b"\0").unwrap_or(data);
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn parse(cmd: u8, data: &[u8]) -> Result<Command, Error> {
    let bad = || Error::Malformed(cmd);
    Ok(match cmd {
        b'O' => Command::Negotiate {
            version: u32_at(data, 0).ok_or_else(bad)?,
            actions: u32_at(data, 4).ok_or_else(bad)?,
            steps: u32_at(data, 8).ok_or_else(bad)?,
        },
        b'D' => {
            let (&of, rest) = data.split_first().ok_or_else(bad)?;
            let s = strings(rest);
            let pairs = s
                .chunks(2)
                .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
                .collect();
            Command::Macros { of, pairs }
        }
        b'C' => connect(data).ok_or_else(bad)?,
        b'H' => Command::Helo(strings(data).into_iter().next().unwrap_or_default()),
        b'M' => Command::Mail(strings(data)),
        b'R' => Command::Rcpt(strings(data)),
        b'T' => Command::Data,
        b'L' => {
            let mut s = strings(data).into_iter();
            let name = s.next().ok_or_else(bad)?;
            Command::Header(name, s.next().unwrap_or_default())
        }
        b'N' => Command::EndOfHeaders,
        b'B' => Command::Body(data.to_vec()),
        b'E' => Command::EndOfMessage,
        b'A' => Command::Abort,
        b'Q' => Command::Quit,
        b'K' => Command::QuitNewConnection,
        b'U' => Command::Unknown(data.to_vec()),
        other => return Err(Error::UnknownCommand(other)),
    })
}

/// `C`: host NUL, family, then (unless the family is `U`) port and address NUL.
fn connect(data: &[u8]) -> Option<Command> {
    let nul = data.iter().position(|&b| b == 0)?;
    let host = String::from_utf8_lossy(&data[..nul]).into_owned();
    let rest = &data[nul + 1..];
    let (&family, rest) = rest.split_first()?;
    if family == b'U' {
        return Some(Command::Connect {
            host,
            family,
            port: 0,
            address: String::new(),
        });
    }
    let port = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let address = strings(&rest[2..]).into_iter().next().unwrap_or_default();
    Some(Command::Connect {
        host,
        family,
        port,
        address,
    })
}

/// A filter's answer or modification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `O`: what the filter wants: version, actions, steps it skips.
    Negotiate {
        /// The version (6).
        version: u32,
        /// `SMFIF_*` it will use.
        actions: u32,
        /// `SMFIP_*` it declines.
        steps: u32,
    },
    /// `c`: go on.
    Continue,
    /// `a`: accept the message (or connection) without further filtering.
    Accept,
    /// `t`: temporary failure, the MTA's own text.
    TempFail,
    /// `r`: rejection, the MTA's own text.
    Reject,
    /// `y`: this reply to the client: `550 5.7.1 text` (code, enhanced code, text).
    ReplyCode(String),
    /// `h`: add a header (at the end).
    AddHeader(String, String),
    /// `+`: add a recipient.
    AddRcpt(String),
    /// `-`: delete a recipient (as the MTA gave it).
    DeleteRcpt(String),
    /// `e`: change the envelope sender (and its ESMTP arguments, if any).
    ChangeFrom(String, Option<String>),
    /// `q`: hold the message in the MTA's quarantine (hold queue), with a reason.
    Quarantine(String),
}

impl Response {
    /// The packet.
    pub fn encode(&self) -> Vec<u8> {
        let (cmd, data): (u8, Vec<u8>) = match self {
            Response::Negotiate {
                version,
                actions,
                steps,
            } => {
                let mut d = version.to_be_bytes().to_vec();
                d.extend_from_slice(&actions.to_be_bytes());
                d.extend_from_slice(&steps.to_be_bytes());
                (b'O', d)
            }
            Response::Continue => (b'c', Vec::new()),
            Response::Accept => (b'a', Vec::new()),
            Response::TempFail => (b't', Vec::new()),
            Response::Reject => (b'r', Vec::new()),
            Response::ReplyCode(text) => (b'y', cstrings(&[text])),
            Response::AddHeader(name, value) => (b'h', cstrings(&[name, value])),
            Response::AddRcpt(rcpt) => (b'+', cstrings(&[rcpt])),
            Response::DeleteRcpt(rcpt) => (b'-', cstrings(&[rcpt])),
            Response::ChangeFrom(from, None) => (b'e', cstrings(&[from])),
            Response::ChangeFrom(from, Some(args)) => (b'e', cstrings(&[from, args])),
            Response::Quarantine(reason) => (b'q', cstrings(&[reason])),
        };
        let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(cmd);
        out.extend_from_slice(&data);
        out
    }
}

/// Each string NUL-terminated, with any NUL inside it (which would end it early) and any line
/// end (which would break the SMTP reply or header) made a space.
fn cstrings(parts: &[&String]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(p.bytes().map(|b| {
            if matches!(b, 0 | b'\r' | b'\n') {
                b' '
            } else {
                b
            }
        }));
        out.push(0);
    }
    out
}
