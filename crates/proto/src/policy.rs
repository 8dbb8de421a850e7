//! Postfix's policy delegation protocol (SMTPD_POLICY_README), sans IO: bytes in, requests
//! out; an action out as bytes.
//!
//! A request is `name=value` lines ending in an empty line; the answer is one `action=...`
//! line and an empty line, and the connection stays open for the next request.
//! Responsible for: framing, a bound on a request's size, and the answer's form.
//! Not responsible for: what the attributes mean or what to answer (the gateway decides), or
//! reading and writing sockets. A request that cannot be read is never answered: the protocol
//! says the server logs it and closes, and Postfix asks again later.

/// The largest request accepted, in bytes: Postfix's own are under 2 KiB, with every
/// certificate and SASL attribute well under this.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request: its attributes in the order they came.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    attrs: Vec<(String, String)>,
}

impl Request {
    /// The value of attribute `name` (the last one, should it come twice); `None` when absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or "" when absent (Postfix sends empty values as `name=`).
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// Every attribute, in order.
    pub fn attrs(&self) -> &[(String, String)] {
        &self.attrs
    }
}

/// Why the input is not a request; the connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// More than [`MAX_REQUEST`] bytes without the empty line that ends a request.
    TooLarge,
    /// A line that is not `name=value` (the line, shortened).
    Malformed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::TooLarge => write!(f, "request over {MAX_REQUEST} bytes"),
            Error::Malformed(line) => write!(f, "not name=value: {line:?}"),
        }
    }
}

/// Reads requests from a connection's bytes as they arrive.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    failed: bool,
}

impl Reader {
    /// A reader for a new connection.
    pub fn new() -> Reader {
        Reader::default()
    }

    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete request, if one has arrived; an error once and for good when the input
    /// cannot be a request (the caller closes).
    pub fn next_request(&mut self) -> Option<Result<Request, Error>> {
        if self.failed {
            return None;
        }
        let Some(end) = self.end_of_request() else {
            if self.buf.len() > MAX_REQUEST {
                self.failed = true;
                return Some(Err(Error::TooLarge));
            }
            return None;
        };
        if end > MAX_REQUEST {
            self.failed = true;
            return Some(Err(Error::TooLarge));
        }
        let text: Vec<u8> = self.buf.drain(..end).collect();
        let parsed = parse(&text);
        self.failed = parsed.is_err();
        Some(parsed)
    }

    /// The length of the first request buffered (through its empty line), if it is all here
    /// (looked for in the first [`MAX_REQUEST`] bytes and a little more only).
    fn end_of_request(&self) -> Option<usize> {
        let mut line_start = 0;
        for (i, &b) in self.buf.iter().enumerate().take(MAX_REQUEST + 2) {
            if b != b'\n' {
                continue;
            }
            let line = &self.buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
        None
    }
}

/// Parses one request's text (its lines and the empty line that ends it).
fn parse(text: &[u8]) -> Result<Request, Error> {
    let mut attrs = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::Malformed(line.chars().take(80).collect()));
        };
        if name.is_empty() {
            return Err(Error::Malformed(line.chars().take(80).collect()));
        }
        attrs.push((name.to_string(), value.to_string()));
    }
    Ok(Request { attrs })
}

/// The answer to a request: `action=TEXT` and the empty line. Line ends in `text` would end
/// the answer early; they become spaces.
pub fn answer(text: &str) -> Vec<u8> {
    let text: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("action={text}\n\n").into_bytes()
}
