//! `backstop audit --bounce-to`: the one check that sends a message. One message with a unique
//! token and an attachment goes to one random unknown address of the domain, with the
//! operator's own return path; with `--listen`, a local listener takes the bounce that comes
//! back and tells when it came and how much of the original it carried (the attachment
//! problem: a backscatter bounce often carries the whole original to a stranger).
//!
//! Responsible for: that transaction, the test message, the listener (a bare SMTP receiver that
//! takes every message and keeps the one with the token). Not responsible for: the verdict
//! (`judge::bounce_test`).

use super::judge::{self, BounceSeen, Finding};
use super::wire::Lost;
use super::{Options, Seen};
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What `--bounce-to` asks.
#[derive(Clone, Debug)]
pub struct BounceTest {
    /// The return path, an address the operator reads.
    pub to: String,
    /// Where to wait for the bounce (an SMTP listener), if at all.
    pub listen: Option<SocketAddr>,
    /// How long to wait for it.
    pub wait: Duration,
}

/// Lines in the test message's attachment.
const ATTACHMENT_LINES: usize = 200;

/// Sends the test message and, with a listener, waits for its bounce.
pub(super) async fn check(
    opts: &Options,
    test: &BounceTest,
    random: &mut dyn FnMut() -> u64,
    seen: &mut Seen,
) -> Result<Finding, Lost> {
    let listener = match test.listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .map_err(|e| Lost::Broken(format!("--listen {at}: {e}")))?,
        ),
        None => None,
    };
    let token = format!("bkst-audit-{:016x}", random());
    let rcpt = super::unknown(opts, random);
    if let Err(ended) = send(opts, test, &rcpt, &token, seen).await? {
        return Ok(judge::bounce_test(&rcpt, &token, &ended));
    }
    let Some(listener) = listener else {
        return Ok(judge::bounce_test(&rcpt, &token, &BounceSeen::NotWaited));
    };
    let started = Instant::now();
    let seen_bounce = match receive(&listener, &token, test.wait).await {
        Some((from, body)) => BounceSeen::Came {
            after: started.elapsed(),
            from,
            size: body.len(),
            attachment_lines: attachment_lines_in(&body, &token),
            of: ATTACHMENT_LINES,
        },
        None => BounceSeen::NoneWithin(test.wait),
    };
    Ok(judge::bounce_test(&rcpt, &token, &seen_bounce))
}

/// The transaction: `Ok` when the message was accepted, else what ended it.
async fn send(
    opts: &Options,
    test: &BounceTest,
    rcpt: &str,
    token: &str,
    seen: &mut Seen,
) -> Result<Result<(), BounceSeen>, Lost> {
    let (mut c, _) = super::greeted(opts, seen).await?;
    let steps = [
        (format!("MAIL FROM:<{}>", test.to), 2),
        (format!("RCPT TO:<{rcpt}>"), 2),
        ("DATA".to_string(), 3),
    ];
    for (step, class) in steps {
        let (r, _) = c.cmd(&step).await?;
        if r.code / 100 != class {
            seen.commands += c.sent;
            super::close(c, seen).await;
            return Ok(Err(match step.starts_with("RCPT") {
                true => BounceSeen::RefusedAtRcpt(r),
                false => BounceSeen::NotSent,
            }));
        }
    }
    c.send(&message(opts, test, rcpt, token)).await?;
    let (end, _) = c.reply().await?;
    seen.commands += c.sent;
    super::close(c, seen).await;
    match end.code / 100 {
        2 => Ok(Ok(())),
        _ => Ok(Err(BounceSeen::RefusedAfterData(end))),
    }
}

/// The test message: a short text and an attachment of numbered lines, all carrying the token.
fn message(opts: &Options, test: &BounceTest, rcpt: &str, token: &str) -> Vec<u8> {
    let unix = opts
        .now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut m = format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nDate: {date}\r\nMessage-ID: <{token}@audit.invalid>\r\n\
         Subject: backstop audit bounce test {token}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{token}-part\"\r\n\r\n\
         --{token}-part\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         A test by backstop audit: this address does not exist. A bounce of this message\r\n\
         should never be written; if one is, it goes to <{from}>.\r\n\r\n\
         --{token}-part\r\nContent-Type: text/plain; charset=us-ascii; name=\"original.txt\"\r\n\
         Content-Disposition: attachment; filename=\"original.txt\"\r\n\r\n",
        from = test.to,
        date = backstop_proto::datetime::rfc5322(unix),
    );
    for i in 1..=ATTACHMENT_LINES {
        m.push_str(&attachment_line(token, i));
        m.push_str("\r\n");
    }
    m.push_str(&format!("\r\n--{token}-part--\r\n.\r\n"));
    m.into_bytes()
}

fn attachment_line(token: &str, i: usize) -> String {
    format!("{token} attachment line {i:04} of {ATTACHMENT_LINES:04} ------------------------")
}

/// How many of the attachment's lines `body` holds.
fn attachment_lines_in(body: &str, token: &str) -> usize {
    (1..=ATTACHMENT_LINES)
        .filter(|&i| body.contains(&attachment_line(token, i)))
        .count()
}

/// Takes messages on `listener` until one holds `token` or `wait` passed: its envelope
/// sender and its text.
async fn receive(listener: &TcpListener, token: &str, wait: Duration) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (stream, _) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .ok()?
            .ok()?;
        let got = tokio::time::timeout_at(deadline, take_messages(stream))
            .await
            .unwrap_or_default();
        if let Some(m) = got.into_iter().find(|(_, body)| body.contains(token)) {
            return Some(m);
        }
    }
}

/// Most bytes of one message taken by the listener.
const MAX_MESSAGE: usize = 20 << 20;

/// A bare SMTP receiver: accepts every command and message of one connection.
async fn take_messages(stream: TcpStream) -> Vec<(String, String)> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read.take(MAX_MESSAGE as u64 * 2));
    let mut out = Vec::new();
    let mut from = String::new();
    let _ = write
        .write_all(b"220 backstop-audit ESMTP bounce listener\r\n")
        .await;
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return out;
        }
        let text = String::from_utf8_lossy(&line);
        let verb = text.get(..4).unwrap_or("").to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 backstop-audit\r\n",
            "MAIL" => {
                from = envelope_address(&text);
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
            "DATA" => {
                let _ = write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await;
                out.push((from.clone(), data(&mut read).await));
                b"250 2.0.0 Ok: taken\r\n"
            }
            "QUIT" => {
                let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                return out;
            }
            _ => b"502 5.5.2 Not taken by this listener\r\n",
        };
        if write.write_all(answer).await.is_err() {
            return out;
        }
    }
}

/// `<addr>` of a MAIL FROM line (`<>` for a bounce).
fn envelope_address(line: &str) -> String {
    match (line.find('<'), line.find('>')) {
        (Some(a), Some(b)) if a < b => line[a..=b].to_string(),
        _ => line.trim().to_string(),
    }
}

/// A message's text up to the lone dot, dots unstuffed.
async fn data<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> String {
    let (mut text, mut line) = (String::new(), Vec::new());
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return text;
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches(['\r', '\n']);
        if l == "." {
            return text;
        }
        if text.len() < MAX_MESSAGE {
            text.push_str(l.strip_prefix('.').unwrap_or(l));
            text.push('\n');
        }
    }
}
