//! `Command::parse` and `ReplyParser` on arbitrary bytes: neither may panic.
//!
//! The same input is used three ways: as one command line, as a byte stream from a server
//! (pushed whole), and as the same stream pushed in two pieces (split at a point taken from
//! the first byte), so the parser's buffering across `push` calls is exercised too.
//!
//! One more property, because the relay writes upstream what the server parsed: a MAIL or
//! RCPT line that parses (and holds no CR or LF, as the session guarantees) is written back the
//! way the client writes it, path `Display` plus `MailParams::encode` / `RcptParams::encode`
//! to a peer that supports every extension, and that line must parse to the same command.

#![no_main]

use backstop_proto::smtp::command::{Command, PeerSupport};
use backstop_proto::smtp::reply::{ReplyError, ReplyParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. one command line (the session strips CRLF before calling parse, but parse must
    //    cope with anything, CR and LF included)
    match Command::parse(data) {
        Err(e) => {
            // every refusal maps to a reply that can be written
            let _ = e.reply().to_bytes();
            let _ = e.to_string();
        }
        Ok(cmd) if !data.contains(&b'\r') && !data.contains(&b'\n') => round_trip(cmd),
        Ok(_) => {}
    }

    // 2. the reply parser, all bytes at once
    let mut p = ReplyParser::default();
    p.push(data);
    drain(&mut p, data.len());

    // 3. the reply parser, bytes in two pushes with replies taken in between
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut p = ReplyParser::default();
    p.push(&data[..cut]);
    drain(&mut p, data.len());
    p.push(&data[cut..]);
    drain(&mut p, data.len());
});

/// Writes MAIL/RCPT as `client::Client` does and parses the line again.
fn round_trip(cmd: Command) {
    let all = PeerSupport {
        size: true,
        eight_bit_mime: true,
        smtputf8: true,
        dsn: true,
    };
    let line = match &cmd {
        Command::Mail { from, params } => format!("MAIL FROM:{from}{}", params.encode(all)),
        Command::Rcpt { to, params } => format!("RCPT TO:{to}{}", params.encode(all)),
        _ => return,
    };
    let again = Command::parse(line.as_bytes());
    assert_eq!(again, Ok(cmd), "re-encoded as {line:?}");
}

/// Takes replies until the parser wants more bytes. Errors for one line (malformed, mixed
/// codes, too many lines) consume that line, so parsing carries on after them; `TooLong`
/// for a line without LF does not, so it ends the loop. The iteration cap guards the harness
/// against a parser that stops making progress (each round consumes at least one LF, so
/// `len + 1` rounds are always enough).
fn drain(p: &mut ReplyParser, len: usize) {
    for _ in 0..=len + 1 {
        match p.next_reply() {
            Ok(Some(reply)) => {
                assert!((200..=599).contains(&reply.code), "code {}", reply.code);
                let _ = reply.to_bytes();
                let _ = reply.to_string();
            }
            Ok(None) => return,
            Err(ReplyError::TooLong) => return,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    panic!("ReplyParser::next_reply made no progress");
}
