//! A whole server `Session` driven by an arbitrary script of driver operations.
//!
//! Small limits (64-byte lines, 512-byte messages of which 128 kept in memory, 5 errors,
//! STARTTLS offered, short timers) so every limit and timer is reachable. Besides raw bytes, the script can feed canned
//! command lines, which gets the fuzzer past EHLO/MAIL/RCPT/DATA quickly.
//!
//! Checks:
//! - nothing panics;
//! - the first output is the 220 greeting;
//! - every `Output::Reply` encodes to bytes that end in CRLF and hold no other CR or LF than
//!   line ends, each line starting with the reply's three-digit code;
//! - at most one `Output::Check` is outstanding at a time (the next comes only after resolve);
//! - a message's `Check` keeps at most 128 bytes, and its `spilled` count is the bytes of the
//!   `Output::Spill` pieces since the transaction began;
//! - between `Output::StartTls` and `tls_established`, input produces no output;
//! - after `Output::Close`, nothing more is output whatever the driver does, and the session
//!   reports itself closed.

#![no_main]

use arbitrary::Arbitrary;
use backstop_proto::smtp::reply::{Enhanced, Reply};
use backstop_proto::smtp::server::{Check, Output, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDLE: Duration = Duration::from_secs(10);
const TOTAL: Duration = Duration::from_secs(60);
const KEEP: u64 = 128;

/// Command lines worth sending whole; fed by [`Op::Line`].
const LINES: &[&[u8]] = &[
    b"EHLO c.test\r\n",
    b"HELO c.test\r\n",
    b"MAIL FROM:<a@c.test>\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@c.test> SIZE=100 BODY=8BITMIME\r\n",
    b"MAIL FROM:<a@c.test> SIZE=100000\r\n",
    b"MAIL FROM:<j\xc3\xb6rg@c.test> SMTPUTF8\r\n",
    b"MAIL FROM:<j\xc3\xb6rg@c.test>\r\n",
    b"MAIL FROM:<a@c.test> RET=HDRS ENVID=x+2B\r\n",
    b"RCPT TO:<u@example.test>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<u@example.test> NOTIFY=FAILURE\r\n",
    b"RCPT TO:<\xc3\xbc@example.test>\r\n",
    b"RCPT TO:<>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"HELP\r\n",
    b"VRFY u\r\n",
    b"EXPN list\r\n",
    b"STARTTLS\r\n",
    b"Subject: x\r\n",
    b"\r\n",
    b".\r\n",
    b"..dot\r\n",
    b"\r\n.\r\n",
    b"line\n",
    b"line\r",
    b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
];

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes from the client.
    Feed(Vec<u8>),
    /// One of [`LINES`], or its first `cut` bytes when `cut` is shorter.
    Line { index: u8, cut: u8 },
    /// The same canned line `times` times in one read (pipelining, message bodies).
    Repeat { index: u8, times: u8 },
    /// Time passes by this many milliseconds, then `handle_timeout`.
    AdvanceMs(u16),
    /// Time passes by this many seconds, then `handle_timeout`.
    AdvanceSecs(u8),
    /// Resolve the pending check (if any; otherwise the call must be ignored).
    Resolve(Resolution),
    /// The TLS handshake finished.
    TlsEstablished,
    /// Graceful stop.
    BeginShutdown,
}

#[derive(Arbitrary, Debug)]
struct Resolution {
    code: Code,
    enhanced: bool,
    /// Reply text, arbitrary (CR/LF included: encoding must neutralise them).
    text: String,
    /// A second line, for a multi-line reply.
    more: Option<String>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Code {
    C250,
    C354,
    C450,
    C550,
    C221,
    C421,
}

impl Resolution {
    fn reply(&self) -> Reply {
        let (code, e) = match self.code {
            Code::C250 => (250, Enhanced::new(2, 0, 0)),
            Code::C354 => (354, Enhanced::new(2, 0, 0)),
            Code::C450 => (450, Enhanced::new(4, 2, 0)),
            Code::C550 => (550, Enhanced::new(5, 1, 1)),
            Code::C221 => (221, Enhanced::new(2, 0, 0)),
            Code::C421 => (421, Enhanced::new(4, 3, 0)),
        };
        let mut lines = vec![self.text.clone()];
        lines.extend(self.more.clone());
        Reply {
            code,
            enhanced: self.enhanced.then_some(e),
            lines,
        }
    }
}

/// What the driver has seen so far.
struct Driver {
    s: Session,
    now: Instant,
    check_outstanding: bool,
    awaiting_tls: bool,
    closed: bool,
    outputs: usize,
    /// Bytes spilled since the transaction began.
    spilled: u64,
}

impl Driver {
    /// Drains the session's output and checks every item.
    fn drain(&mut self) {
        while let Some(o) = self.s.poll_output() {
            assert!(!self.closed, "output after Close: {o:?}");
            if self.outputs == 0 {
                assert!(
                    matches!(&o, Output::Reply(r) if r.code == 220),
                    "first output is not the greeting: {o:?}"
                );
            }
            self.outputs += 1;
            match o {
                Output::Reply(r) => check_reply(&r),
                Output::Check(c) => {
                    assert!(
                        !self.check_outstanding,
                        "second check while one is pending: {c:?}"
                    );
                    assert!(!self.awaiting_tls, "check during STARTTLS: {c:?}");
                    self.check_outstanding = true;
                    match &c {
                        Check::Mail { .. } => self.spilled = 0,
                        Check::Message { body, spilled } => {
                            assert!(body.len() as u64 <= KEEP, "kept {} bytes", body.len());
                            assert_eq!(*spilled, self.spilled, "spilled count");
                            self.spilled = 0;
                        }
                        _ => {}
                    }
                }
                Output::Spill(piece) => {
                    assert!(!piece.is_empty(), "empty spill piece");
                    self.spilled += piece.len() as u64;
                }
                Output::StartTls => {
                    assert!(!self.check_outstanding, "STARTTLS while a check is pending");
                    self.awaiting_tls = true;
                }
                Output::Close => {
                    self.closed = true;
                    assert!(self.s.is_closed(), "Close output but session not closed");
                }
            }
        }
        if self.closed {
            assert!(self.s.is_closed());
            assert!(!self.s.wants_input());
            assert_eq!(self.s.poll_timeout(), None);
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        let (before, awaiting_tls) = (self.outputs, self.awaiting_tls);
        self.s.handle_input(bytes, self.now);
        self.drain();
        if awaiting_tls {
            assert_eq!(
                self.outputs, before,
                "output for plaintext sent during STARTTLS"
            );
        }
    }
}

fn check_reply(r: &Reply) {
    assert!((200..=599).contains(&r.code), "reply code {}", r.code);
    let bytes = r.to_bytes();
    assert!(
        bytes.ends_with(b"\r\n"),
        "reply not CRLF-terminated: {bytes:?}"
    );
    let code = r.code.to_string();
    let body = &bytes[..bytes.len() - 2];
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        // every LF but the final one must be a line end: preceded by CR
        let text = if last {
            &line[..]
        } else {
            line.strip_suffix(b"\r")
                .unwrap_or_else(|| panic!("bare LF in {bytes:?}"))
        };
        assert!(!text.contains(&b'\r'), "bare CR in reply {bytes:?}");
        assert!(
            text.starts_with(code.as_bytes()),
            "line without code in {bytes:?}"
        );
        let sep = text.get(3).copied();
        let want = if last {
            [Some(b' '), None]
        } else {
            [Some(b'-'), Some(b'-')]
        };
        assert!(want.contains(&sep), "bad separator in {bytes:?}");
    }
    assert_eq!(lines.len(), r.lines.len().max(1), "line count of {bytes:?}");
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = SessionConfig {
        hostname: "mx.example.test".into(),
        max_line: 64,
        max_recipients: 3,
        max_message_size: 512,
        max_errors: 5,
        idle_timeout: IDLE,
        session_timeout: TOTAL,
        tls_available: true,
        keep_in_memory: KEEP,
    };
    let now = Instant::now();
    let mut d = Driver {
        s: Session::new(Arc::new(cfg), now),
        now,
        check_outstanding: false,
        awaiting_tls: false,
        closed: false,
        outputs: 0,
        spilled: 0,
    };
    d.drain();
    assert_eq!(d.outputs, 1, "greeting");

    for op in ops.iter().take(256) {
        match op {
            Op::Feed(bytes) => d.input(bytes),
            Op::Line { index, cut } => {
                let line = LINES[usize::from(*index) % LINES.len()];
                let cut = usize::from(*cut);
                d.input(if cut < line.len() { &line[..cut] } else { line });
            }
            Op::Repeat { index, times } => {
                let line = LINES[usize::from(*index) % LINES.len()];
                d.input(&line.repeat(usize::from(*times)));
            }
            Op::AdvanceMs(ms) => {
                d.now += Duration::from_millis(u64::from(*ms));
                d.s.handle_timeout(d.now);
                d.drain();
            }
            Op::AdvanceSecs(s) => {
                d.now += Duration::from_secs(u64::from(*s));
                d.s.handle_timeout(d.now);
                d.drain();
            }
            Op::Resolve(res) => {
                let before = d.outputs;
                d.s.resolve(res.reply(), d.now);
                if !d.check_outstanding {
                    d.drain();
                    assert_eq!(
                        d.outputs, before,
                        "resolve without a pending check had effect"
                    );
                } else {
                    d.check_outstanding = false;
                    d.drain();
                }
            }
            Op::TlsEstablished => {
                d.s.tls_established(d.now);
                if d.awaiting_tls && !d.closed {
                    assert!(d.s.is_tls());
                }
                d.awaiting_tls = false;
                d.drain();
            }
            Op::BeginShutdown => {
                d.s.begin_shutdown();
                d.drain();
            }
        }
    }
    // a driver that keeps going after the script must see nothing new once closed
    if d.closed {
        d.input(b"NOOP\r\nQUIT\r\n");
        d.s.resolve(Reply::plain(250, "x"), d.now);
        d.s.tls_established(d.now);
        d.s.begin_shutdown();
        d.now += TOTAL * 2;
        d.s.handle_timeout(d.now);
        d.drain();
    }
});
