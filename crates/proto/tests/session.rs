//! Transcript tests of the server session: bytes in, replies out, no sockets, simulated time.

use backstop_proto::address::ForwardPath;
use backstop_proto::smtp::command::{Notify, Orcpt, Ret};
use backstop_proto::smtp::reply::{Enhanced, Reply};
use backstop_proto::smtp::server::{Check, Output, Session, SessionConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts senders, accepts recipients whose local part starts with "ok", 354 for DATA,
/// 250 for messages.
fn policy(check: &Check) -> Reply {
    match check {
        Check::Mail { .. } => Reply::new(250, Enhanced::new(2, 1, 0), "Ok"),
        Check::Rcpt { to, .. } => match to {
            ForwardPath::Mailbox(m) if m.local().starts_with("ok") => {
                Reply::new(250, Enhanced::new(2, 1, 5), "Ok")
            }
            _ => Reply::new(550, Enhanced::new(5, 1, 1), format!("{to}: User unknown")),
        },
        Check::Data => Reply::plain(354, "End data with <CR><LF>.<CR><LF>"),
        Check::Message { body, spilled } => Reply::new(
            250,
            Enhanced::new(2, 0, 0),
            format!("Ok: {} bytes", body.len() as u64 + spilled),
        ),
    }
}

struct T {
    s: Session,
    now: Instant,
    log: String,
    auto: bool,
    /// The `Output::Spill` pieces, in order.
    spill: Vec<Vec<u8>>,
}

impl T {
    fn new(cfg: SessionConfig) -> T {
        let now = Instant::now();
        let mut t = T {
            s: Session::new(Arc::new(cfg), now),
            now,
            log: String::new(),
            auto: true,
            spill: Vec::new(),
        };
        t.drain();
        assert_eq!(t.log, "220 mx.example.test ESMTP\r\n");
        t.log.clear();
        t
    }

    fn default() -> T {
        T::new(cfg())
    }

    /// A session for a client that may send content before the `354` (a relay client).
    fn trusted() -> T {
        let mut t = T::default();
        t.s.trust_pipelining();
        t
    }

    /// Feeds bytes and returns everything the session said since the last call.
    fn send(&mut self, bytes: &[u8]) -> String {
        self.s.handle_input(bytes, self.now);
        self.drain();
        std::mem::take(&mut self.log)
    }

    fn drain(&mut self) {
        while let Some(o) = self.s.poll_output() {
            match o {
                Output::Reply(r) => self.log.push_str(&String::from_utf8(r.to_bytes()).unwrap()),
                Output::Check(c) => {
                    let label = match &c {
                        Check::Mail { from, .. } => format!("[mail {from}]\n"),
                        Check::Rcpt { to, .. } => format!("[rcpt {to}]\n"),
                        Check::Data => "[data]\n".to_string(),
                        Check::Message { body, spilled: 0 } => {
                            format!("[message {}]\n", body.len())
                        }
                        Check::Message { body, spilled } => {
                            format!("[message {}+{spilled}]\n", body.len())
                        }
                    };
                    self.log.push_str(&label);
                    if self.auto {
                        self.s.resolve(policy(&c), self.now);
                    }
                }
                Output::Spill(piece) => self.spill.push(piece),
                Output::StartTls => self.log.push_str("[starttls]\n"),
                Output::Close => self.log.push_str("[close]\n"),
            }
        }
    }

    fn advance(&mut self, d: Duration) -> String {
        self.now += d;
        self.s.handle_timeout(self.now);
        self.drain();
        std::mem::take(&mut self.log)
    }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.test".into(),
        ..SessionConfig::default()
    }
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

const EHLO: &str = "250-mx.example.test
250-PIPELINING
250-SIZE 10240000
250-8BITMIME
250-ENHANCEDSTATUSCODES
250-SMTPUTF8
250 DSN
";

#[test]
fn greeting_ehlo_and_a_whole_transaction() {
    let now = Instant::now();
    let mut s = Session::new(Arc::new(cfg()), now);
    assert_eq!(
        s.poll_output(),
        Some(Output::Reply(Reply::plain(220, "mx.example.test ESMTP")))
    );
    let mut t = T::default();
    assert_eq!(t.send(b"EHLO client.test\r\n"), crlf(EHLO));
    let got = t.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<ok1@example.test>\r\nDATA\r\n");
    let want = "[mail <a@client.test>]\n250 2.1.0 Ok\n[rcpt <ok1@example.test>]\n250 2.1.5 Ok\n[data]\n354 End data with <CR><LF>.<CR><LF>\n";
    assert_eq!(got, crlf(want).replace("]\r\n", "]\n"));
    assert_eq!(
        t.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n"),
        "[message 21]\n250 2.0.0 Ok: 21 bytes\r\n"
    );
    assert!(t.s.transaction().is_none());
    assert_eq!(t.send(b"QUIT\r\n"), "221 2.0.0 Bye\r\n[close]\n");
    assert!(t.s.is_closed());
    assert_eq!(t.send(b"NOOP\r\n"), "", "nothing is read after close");
}

#[test]
fn helo_gives_plain_reply_and_no_esmtp_params() {
    let mut t = T::default();
    assert_eq!(t.send(b"HELO client.test\r\n"), "250 mx.example.test\r\n");
    assert_eq!(
        t.send(b"MAIL FROM:<a@client.test> SIZE=10\r\n"),
        "555 5.5.4 Error: MAIL parameters need EHLO\r\n"
    );
    t.send(b"MAIL FROM:<a@client.test>\r\n");
    assert_eq!(
        t.send(b"RCPT TO:<ok@example.test> NOTIFY=NEVER\r\n"),
        "555 5.5.4 Error: RCPT parameters need EHLO\r\n"
    );
}

#[test]
fn a_check_answered_with_421_closes_the_session_and_runs_nothing_behind_it() {
    let mut t = T::default();
    t.auto = false;
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
    t.s.resolve(Reply::new(250, Enhanced::new(2, 1, 0), "Ok"), t.now);
    t.drain();
    t.log.clear();
    let got = t.send(b"RCPT TO:<bad@example.test>\r\nRCPT TO:<ok@example.test>\r\nQUIT\r\n");
    assert_eq!(got, "[rcpt <bad@example.test>]\n");
    t.s.resolve(
        Reply::new(
            421,
            Enhanced::new(4, 7, 0),
            "Error: too many invalid recipients",
        ),
        t.now,
    );
    t.drain();
    assert_eq!(
        t.log,
        "421 4.7.0 Error: too many invalid recipients\r\n[close]\n"
    );
    t.log.clear();
    assert_eq!(t.send(b"RCPT TO:<ok2@example.test>\r\n"), "");
}

#[test]
fn pipelined_commands_wait_behind_a_pending_check_and_replies_stay_in_order() {
    let mut t = T::default();
    t.auto = false;
    t.send(b"EHLO c.test\r\n");
    let got = t.send(b"MAIL FROM:<a@c.test>\r\nRCPT TO:<ok1@example.test>\r\nRCPT TO:<bad@example.test>\r\nRCPT TO:<ok2@example.test>\r\nDATA\r\n");
    assert_eq!(got, "[mail <a@c.test>]\n", "only the first check is out");
    assert!(t.s.poll_output().is_none());
    let order = [
        (
            Reply::new(250, Enhanced::new(2, 1, 0), "Ok"),
            "[rcpt <ok1@example.test>]\n",
        ),
        (
            Reply::new(250, Enhanced::new(2, 1, 5), "Ok"),
            "[rcpt <bad@example.test>]\n",
        ),
        (
            Reply::new(550, Enhanced::new(5, 1, 1), "no"),
            "[rcpt <ok2@example.test>]\n",
        ),
        (Reply::new(250, Enhanced::new(2, 1, 5), "Ok"), "[data]\n"),
    ];
    for (reply, next) in order {
        let code = reply.code;
        t.s.resolve(reply, t.now);
        t.drain();
        let got = std::mem::take(&mut t.log);
        assert!(got.starts_with(&code.to_string()), "{got}");
        assert!(got.ends_with(next), "{got}");
    }
    let tx = t.s.transaction().unwrap();
    let rcpts: Vec<String> = tx.recipients.iter().map(|r| r.path.to_string()).collect();
    assert_eq!(rcpts, ["<ok1@example.test>", "<ok2@example.test>"]);
}

#[test]
fn input_split_at_every_byte_gives_the_same_transcript() {
    let script = b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nRCPT TO:<no@example.test>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nNOOP\r\nQUIT\r\n";
    // a client that may send content before the 354 (anyone else may not: see below)
    let mut whole = T::trusted();
    let want = whole.send(script);
    assert!(want.contains("250 2.0.0 Ok: 20 bytes"), "{want}");
    for cut in 0..script.len() {
        let mut t = T::trusted();
        let mut got = t.send(&script[..cut]);
        got.push_str(&t.send(&script[cut..]));
        assert_eq!(got, want, "cut at {cut}");
    }
    let mut t = T::trusted();
    let got: String = script.iter().map(|b| t.send(&[*b])).collect();
    assert_eq!(got, want, "byte by byte");
}

#[test]
fn sequence_errors() {
    let mut t = T::default();
    assert_eq!(
        t.send(b"MAIL FROM:<a@c.test>\r\n"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    t.send(b"EHLO c.test\r\n");
    assert_eq!(
        t.send(b"RCPT TO:<ok@example.test>\r\n"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(
        t.send(b"DATA\r\n"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    t.send(b"MAIL FROM:<a@c.test>\r\n");
    assert_eq!(
        t.send(b"MAIL FROM:<a@c.test>\r\n"),
        "503 5.5.1 Error: nested MAIL command\r\n"
    );
    assert_eq!(
        t.send(b"DATA\r\n"),
        "503 5.5.1 Error: need RCPT command\r\n"
    );
    t.send(b"RCPT TO:<no@example.test>\r\n");
    assert_eq!(
        t.send(b"DATA\r\n"),
        "554 5.5.1 Error: no valid recipients\r\n"
    );
    assert_eq!(t.send(b"RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert!(t.s.transaction().is_none());
}

#[test]
fn misc_commands() {
    let mut t = T::default();
    assert_eq!(t.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert!(t.send(b"HELP\r\n").starts_with("214 2.0.0 Commands:"));
    let vrfy = t.send(b"VRFY root\r\n");
    assert!(vrfy.starts_with("252 2.5.0 "), "{vrfy}");
    assert!(
        !vrfy.contains("root"),
        "VRFY never echoes or reveals the user"
    );
    assert_eq!(
        t.send(b"EXPN staff\r\n"),
        "502 5.5.1 Error: EXPN not supported\r\n"
    );
    assert_eq!(
        t.send(b"FOO\r\n"),
        "500 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(
        t.send(b"STARTTLS\r\n"),
        "502 5.5.1 Error: command not implemented\r\n"
    );
}

#[test]
fn bare_lf_and_bare_cr_in_commands_are_refused_and_never_end_a_line() {
    let mut t = T::default();
    t.send(b"EHLO c.test\r\n");
    // the LF after NOOP must not end a line: the whole thing up to CRLF is one refused line
    assert_eq!(
        t.send(b"NOOP\nMAIL FROM:<x@evil.test>\r\n"),
        "500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>\r\n"
    );
    assert!(
        t.s.transaction().is_none(),
        "the smuggled MAIL was not executed"
    );
    assert_eq!(
        t.send(b"NOOP\rMAIL FROM:<x@evil.test>\r\n"),
        "500 5.5.2 Error: bare <CR> received; lines must end with <CR><LF>\r\n"
    );
    assert!(t.s.transaction().is_none());
    // an LF-only client is told at once, not left waiting
    assert_eq!(
        t.send(b"NOOP\n"),
        "500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>\r\n"
    );
    assert_eq!(
        t.send(b"NOOP\n"),
        "",
        "still discarding up to the next CRLF"
    );
    assert_eq!(t.send(b"\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn smuggling_in_data_is_refused_and_not_split_into_two_messages() {
    let mut t = T::default();
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    let evil = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<admin@example.test>\r\nRCPT TO:<ok2@example.test>\r\nDATA\r\nforged\r\n.\r\n";
    let got = t.send(evil);
    assert_eq!(
        got,
        "554 5.6.0 Error: message contains bare <LF>; lines must end with <CR><LF>\r\n"
    );
    assert!(t.s.transaction().is_none());
    t.send(b"MAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    let got = t.send(b"hi\r.\r\nmore\r\n.\r\n");
    assert_eq!(
        got,
        "554 5.6.0 Error: message contains bare <CR>; lines must end with <CR><LF>\r\n"
    );
}

#[test]
fn nul_in_a_message_is_refused_after_its_real_end() {
    // smtpsmug's forms: a NUL before or after the dot is no end of data, and no content either
    for evil in [
        &b"hi\r\n\0.\r\nMAIL FROM:<x@c.test>\r\n"[..],
        b"hi\r\n.\0\r\nX\r\n",
        b"a\0b\r\n",
    ] {
        let mut t = T::default();
        t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
        assert_eq!(t.send(evil), "", "{evil:?} ended the data");
        assert_eq!(
            t.send(b"more\r\n.\r\n"),
            "554 5.6.0 Error: message contains a NUL character\r\n",
            "{evil:?}"
        );
        assert!(t.s.transaction().is_none());
        // the session goes on
        assert_eq!(t.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }
}

#[test]
fn content_sent_before_the_354_cuts_the_client_off() {
    // smtpsmug's pipelining test: the next DATA and its content without waiting
    let mut t = T::default();
    let got = t.send(
        b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
    );
    assert!(
        got.ends_with(
            "[data]\n554 5.5.0 Error: SMTP protocol synchronization: data sent before the reply to DATA\r\n[close]\n"
        ),
        "{got}"
    );
    assert!(t.s.is_closed() && t.s.transaction().is_none());
    // commands pipelined up to DATA, then waiting for the 354 (RFC 2920): fine
    let mut t = T::default();
    let got =
        t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    assert!(
        got.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{got}"
    );
    assert!(t.send(b"hi\r\n.\r\n").starts_with("[message 4]\n250"));
    // a relay client may
    let mut t = T::trusted();
    let got = t.send(
        b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\nhi\r\n.\r\n",
    );
    assert!(
        got.ends_with("[message 4]\n250 2.0.0 Ok: 4 bytes\r\n"),
        "{got}"
    );
}

#[test]
fn line_length_limit() {
    let mut t = T::new(SessionConfig {
        max_line: 100,
        ..cfg()
    });
    let long = format!("NOOP {}\r\n", "x".repeat(200));
    assert_eq!(
        t.send(long.as_bytes()),
        "500 5.5.2 Error: line too long\r\n"
    );
    // a long line that arrives in pieces is refused once and resynchronised at CRLF
    let mut t = T::new(SessionConfig {
        max_line: 100,
        ..cfg()
    });
    assert_eq!(
        t.send("x".repeat(150).as_bytes()),
        "500 5.5.2 Error: line too long\r\n"
    );
    assert_eq!(t.send("x".repeat(150).as_bytes()), "");
    assert_eq!(t.send(b"\r"), "");
    assert_eq!(t.send(b"\nNOOP\r\n"), "250 2.0.0 Ok\r\n");
    let ok = format!("NOOP {}\r\n", "x".repeat(93));
    assert_eq!(ok.len(), 100);
    assert_eq!(t.send(ok.as_bytes()), "250 2.0.0 Ok\r\n");
}

#[test]
fn recipient_limit() {
    let mut t = T::new(SessionConfig {
        max_recipients: 2,
        ..cfg()
    });
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
    t.send(b"RCPT TO:<ok1@example.test>\r\nRCPT TO:<ok2@example.test>\r\n");
    assert_eq!(
        t.send(b"RCPT TO:<ok3@example.test>\r\n"),
        "452 4.5.3 Error: too many recipients\r\n"
    );
    assert_eq!(t.s.transaction().unwrap().recipients.len(), 2);
}

#[test]
fn size_limit_at_mail_and_during_data() {
    let mut t = T::new(SessionConfig {
        max_message_size: 100,
        ..cfg()
    });
    assert!(t.send(b"EHLO c.test\r\n").contains("250-SIZE 100\r\n"));
    assert_eq!(
        t.send(b"MAIL FROM:<a@c.test> SIZE=101\r\n"),
        "552 5.3.4 Error: message size exceeds fixed limit\r\n"
    );
    t.send(b"MAIL FROM:<a@c.test> SIZE=100\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    let big = format!("{}\r\n.\r\nNOOP\r\n", "y".repeat(300));
    assert_eq!(
        t.send(big.as_bytes()),
        "552 5.3.4 Error: message file too big\r\n250 2.0.0 Ok\r\n",
        "the message is read to its end, refused, and the session goes on"
    );
    assert!(t.s.transaction().is_none());
}

#[test]
fn a_large_message_leaves_in_pieces_past_what_is_kept() {
    let mut t = T::new(SessionConfig {
        keep_in_memory: 1000,
        ..cfg()
    });
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    // 300 lines of 1,000 bytes, every one dot-stuffed: 300,600 bytes stuffed, 300,300 not
    let line = format!("..{}\r\n", "z".repeat(998));
    let mut said = String::new();
    for chunk in line.repeat(300).as_bytes().chunks(7_001) {
        said.push_str(&t.send(chunk));
    }
    assert_eq!(said, "", "nothing said before the end");
    assert!(
        t.spill.len() >= 4 && t.spill.iter().all(|p| p.len() >= 64 * 1024),
        "pieces of at least 64 KiB while it arrives: {:?}",
        t.spill.iter().map(Vec::len).collect::<Vec<_>>()
    );
    t.auto = false;
    assert_eq!(t.send(b".\r\n"), "[message 1000+299300]\n");
    let spilled: Vec<u8> = t.spill.concat();
    let whole = format!(".{}\r\n", "z".repeat(998)).repeat(300);
    assert_eq!(
        spilled,
        whole.as_bytes()[1000..],
        "the rest, un-stuffed, in order"
    );
}

#[test]
fn a_message_too_big_stops_spilling_at_the_limit() {
    let mut t = T::new(SessionConfig {
        keep_in_memory: 100,
        max_message_size: 100_000,
        ..cfg()
    });
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    let big = format!("{}\r\n.\r\n", "y".repeat(300_000));
    assert_eq!(
        t.send(big.as_bytes()),
        "552 5.3.4 Error: message file too big\r\n"
    );
    let spilled: usize = t.spill.iter().map(Vec::len).sum();
    assert_eq!(
        spilled,
        100_000 - 100,
        "nothing past the limit is handed out"
    );
}

#[test]
fn too_many_errors_end_the_session() {
    let mut t = T::new(SessionConfig {
        max_errors: 3,
        ..cfg()
    });
    t.send(b"FOO\r\nBAR\r\n");
    assert_eq!(
        t.send(b"BAZ\r\nNOOP\r\n"),
        "500 5.5.2 Error: command not recognized\r\n421 4.7.0 mx.example.test Error: too many errors\r\n[close]\n"
    );
}

#[test]
fn policy_rejections_are_not_protocol_errors() {
    let mut t = T::new(SessionConfig {
        max_errors: 3,
        ..cfg()
    });
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
    let mut script = String::new();
    for i in 0..100 {
        script.push_str(&format!("RCPT TO:<bad{i}@example.test>\r\n"));
    }
    let got = t.send(script.as_bytes());
    assert_eq!(got.matches("550 5.1.1").count(), 100);
    assert!(!t.s.is_closed());
}

#[test]
fn idle_and_session_timeouts() {
    let mut t = T::default();
    assert_eq!(t.advance(Duration::from_secs(299)), "");
    t.send(b"NOOP\r\n");
    assert_eq!(t.advance(Duration::from_secs(299)), "");
    assert_eq!(
        t.advance(Duration::from_secs(2)),
        "421 4.4.2 mx.example.test Error: timeout exceeded\r\n[close]\n"
    );
    let mut t = T::new(SessionConfig {
        session_timeout: Duration::from_secs(600),
        ..cfg()
    });
    for _ in 0..5 {
        t.advance(Duration::from_secs(100));
        t.send(b"NOOP\r\n");
    }
    assert_eq!(
        t.advance(Duration::from_secs(100)),
        "421 4.4.2 mx.example.test Error: session time limit exceeded\r\n[close]\n"
    );
    assert_eq!(t.s.poll_timeout(), None);
}

#[test]
fn idle_timer_pauses_while_a_check_is_pending() {
    let mut t = T::default();
    t.auto = false;
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
    assert_eq!(
        t.advance(Duration::from_secs(400)),
        "",
        "we are slow, not the client"
    );
    t.s.resolve(Reply::new(250, Enhanced::new(2, 1, 0), "Ok"), t.now);
    t.drain();
    assert!(std::mem::take(&mut t.log).starts_with("250 2.1.0"));
    assert!(t.advance(Duration::from_secs(301)).starts_with("421 4.4.2"));
}

#[test]
fn starttls_discards_pipelined_commands() {
    let mut t = T::new(SessionConfig {
        tls_available: true,
        ..cfg()
    });
    assert!(t.send(b"EHLO c.test\r\n").contains("250 STARTTLS\r\n"));
    let got =
        t.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<ok@example.test>\r\n");
    assert_eq!(got, "220 2.0.0 Ready to start TLS\r\n[starttls]\n");
    assert_eq!(
        t.send(b"RCPT TO:<ok2@example.test>\r\n"),
        "",
        "plaintext before the handshake is dropped"
    );
    t.s.tls_established(t.now);
    assert!(t.s.is_tls());
    assert_eq!(
        t.send(b"MAIL FROM:<a@c.test>\r\n"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
        "the injected commands left no state behind"
    );
    let ehlo = t.send(b"EHLO c.test\r\n");
    assert!(!ehlo.contains("STARTTLS"));
    assert_eq!(
        t.send(b"STARTTLS\r\n"),
        "503 5.5.1 Error: TLS already active\r\n"
    );
}

#[test]
fn starttls_refused_inside_a_transaction() {
    let mut t = T::new(SessionConfig {
        tls_available: true,
        ..cfg()
    });
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
    assert_eq!(
        t.send(b"STARTTLS\r\n"),
        "503 5.5.1 Error: MAIL transaction in progress\r\n"
    );
}

#[test]
fn dsn_parameters_are_kept_per_recipient() {
    let mut t = T::default();
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test> RET=HDRS ENVID=abc+2B1\r\n");
    t.send(
        b"RCPT TO:<ok1@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig1@example.test\r\n",
    );
    t.send(b"RCPT TO:<ok2@example.test> NOTIFY=NEVER\r\n");
    t.send(b"RCPT TO:<ok3@example.test>\r\n");
    let tx = t.s.transaction().unwrap();
    assert_eq!(tx.params.ret, Some(Ret::Hdrs));
    assert_eq!(tx.params.envid.as_deref(), Some("abc+1"));
    let r = &tx.recipients;
    assert_eq!(
        r[0].params.notify,
        Some(Notify {
            success: true,
            failure: true,
            ..Notify::default()
        })
    );
    assert_eq!(
        r[0].params.orcpt,
        Some(Orcpt {
            addr_type: "rfc822".into(),
            addr: "orig1@example.test".into()
        })
    );
    assert_eq!(
        r[1].params.notify,
        Some(Notify {
            never: true,
            ..Notify::default()
        })
    );
    assert_eq!(r[2].params.notify, None);
    assert_eq!(
        t.send(b"RCPT TO:<ok4@example.test> NOTIFY=NEVER,DELAY\r\n"),
        "501 5.5.4 Bad parameter value: NOTIFY=NEVER,DELAY\r\n"
    );
}

#[test]
fn smtputf8_is_required_for_non_ascii_addresses() {
    let mut t = T::default();
    t.send(b"EHLO c.test\r\n");
    assert_eq!(
        t.send("MAIL FROM:<jörg@c.test>\r\n".as_bytes()),
        "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n"
    );
    t.send(b"MAIL FROM:<a@c.test>\r\n");
    assert_eq!(
        t.send("RCPT TO:<okü@example.test>\r\n".as_bytes()),
        "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n"
    );
    t.send(b"RSET\r\n");
    t.send("MAIL FROM:<jörg@c.test> SMTPUTF8\r\n".as_bytes());
    assert!(
        t.send("RCPT TO:<okü@exämple.test>\r\n".as_bytes())
            .ends_with("250 2.1.5 Ok\r\n")
    );
}

#[test]
fn enhanced_codes_on_every_reply_but_greeting_helo_ehlo_and_354() {
    let mut t = T::default();
    let script = "EHLO c.test\r\nHELO c.test\r\nEHLO c.test\r\nNOOP\r\nFOO\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nRCPT TO:<no@example.test>\r\nVRFY x\r\nHELP\r\nDATA\r\n";
    let mut got = t.send(script.as_bytes());
    got.push_str(&t.send(b"x\r\n.\r\nRSET\r\nQUIT\r\n"));
    let mut plain = 0;
    for line in got.lines().filter(|l| !l.starts_with('[')) {
        let (code, rest) = line.split_at(4);
        if code.starts_with("250-")
            || line == "250 mx.example.test"
            || line == "250 DSN"
            || code == "354 "
        {
            plain += 1;
            continue;
        }
        let status = rest.split(' ').next().unwrap();
        let e = Enhanced::parse(status).unwrap_or_else(|| panic!("no enhanced code: {line}"));
        assert_eq!(
            u16::from(e.class),
            code[..3].parse::<u16>().unwrap() / 100,
            "{line}"
        );
    }
    assert_eq!(plain, 7 + 1 + 7 + 1);
}

#[test]
fn shutdown_closes_idle_sessions_now_and_busy_ones_after_their_transaction() {
    let mut t = T::default();
    t.s.begin_shutdown();
    t.drain();
    assert_eq!(
        std::mem::take(&mut t.log),
        "421 4.3.2 mx.example.test Service shutting down, closing connection\r\n[close]\n"
    );
    let mut t = T::default();
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n");
    t.s.begin_shutdown();
    t.drain();
    assert_eq!(std::mem::take(&mut t.log), "");
    assert_eq!(
        t.send(b"hi\r\n.\r\n"),
        "[message 4]\n250 2.0.0 Ok: 4 bytes\r\n421 4.3.2 mx.example.test Service shutting down, closing connection\r\n[close]\n"
    );
}

#[test]
fn resolve_without_pending_check_is_ignored() {
    let mut t = T::default();
    t.s.resolve(Reply::new(250, Enhanced::new(2, 0, 0), "Ok"), t.now);
    t.drain();
    assert_eq!(t.log, "");
}

#[test]
fn wants_no_input_when_pipelined_backlog_is_large() {
    let mut t = T::default();
    t.auto = false;
    t.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
    assert!(t.s.wants_input());
    let flood = "NOOP\r\n".repeat(20_000);
    t.send(flood.as_bytes());
    assert!(!t.s.wants_input());
    t.s.resolve(Reply::new(250, Enhanced::new(2, 1, 0), "Ok"), t.now);
    t.drain();
    assert!(t.s.wants_input());
    assert_eq!(t.log.matches("250 2.0.0 Ok").count(), 20_000);
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_input_only_ever_yields_replies_and_close(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut t = T::new(SessionConfig { max_line: 64, max_message_size: 256, ..cfg() });
            for c in &chunks {
                t.send(c);
                t.advance(Duration::from_secs(1));
            }
        }

        #[test]
        fn smtp_like_input_never_panics(lines in proptest::collection::vec(
            prop_oneof![
                Just("EHLO x.test".to_string()), Just("MAIL FROM:<a@b.test>".to_string()),
                Just("RCPT TO:<ok@example.test>".to_string()), Just("DATA".to_string()),
                Just(".".to_string()), Just("RSET".to_string()), Just("STARTTLS".to_string()),
                "[ -~]{0,40}".prop_map(|s| s), Just("\n".to_string()), Just("\r".to_string()),
            ], 0..40)) {
            let mut t = T::new(SessionConfig { tls_available: true, ..cfg() });
            for l in &lines {
                t.send(format!("{l}\r\n").as_bytes());
                if t.log.contains("[starttls]") { t.s.tls_established(t.now); }
            }
        }
    }
}
