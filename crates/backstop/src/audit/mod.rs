//! `backstop audit`: a read-only SMTP conversation with one mail server that shows its
//! administrator whether it makes backscatter (it accepts unknown recipients, bounces to
//! them, ...). It never sends a message (every transaction ends with RSET or QUIT before
//! DATA), except the one test message `--bounce-to` asks for (`bounce`).
//!
//! Responsible for: the order of the dialogue (one connection at a time, a few dozen commands
//! in all, each reply awaited at most `timeout`), and the report. Not responsible for: what
//! the replies mean (`judge`), the wire (`wire`), the STARTTLS dialogue (`tls`).

pub mod bounce;
pub mod judge;
mod tls;
pub mod wire;

use backstop_proto::smtp::reply::Reply;
use judge::{Finding, Verdict};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use wire::{Conn, Lost};

/// What to audit and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server.
    pub addr: SocketAddr,
    /// Its domain (random local parts are made in it).
    pub domain: String,
    /// The envelope sender of the test transactions.
    pub from: String,
    /// The EHLO name.
    pub helo: String,
    /// Unknown recipients asked in one session (the harvest check).
    pub harvest: usize,
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// The name the server's certificate should carry (the host name audited).
    pub tls_name: Option<String>,
    /// An address that exists, for the timing check.
    pub known: Option<String>,
    /// The one test message, if asked for.
    pub bounce: Option<bounce::BounceTest>,
    /// Now (certificate validity, the test message's Date).
    pub now: SystemTime,
}

/// The audit's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// `HOST:PORT`.
    pub target: String,
    /// The domain.
    pub domain: String,
    /// The server could be reached and greeted.
    pub reached: bool,
    /// What went wrong when it could not.
    pub error: Option<String>,
    /// The checks' verdicts.
    pub findings: Vec<Finding>,
    /// Commands sent in all.
    pub commands: usize,
}

impl Report {
    /// 0: no backscatter risk found; 1: one was; 2: the server could not be audited (or the
    /// audit stopped before it found a risk: "none found" would claim too much).
    pub fn exit_code(&self) -> u8 {
        match (self.reached, self.risks(), &self.error) {
            (false, _, _) => 2,
            (true, 0, Some(_)) => 2,
            (true, 0, None) => 0,
            (true, _, _) => 1,
        }
    }

    /// How many checks found a risk.
    pub fn risks(&self) -> usize {
        let risk = |f: &&Finding| f.verdict == Verdict::Risk;
        self.findings.iter().filter(risk).count()
    }

    /// The report in plain words.
    pub fn text(&self) -> String {
        let mut out = format!("backstop audit of {} for {}\n", self.target, self.domain);
        for f in &self.findings {
            let tag = match f.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Risk => "RISK",
                Verdict::Warn => "WARN",
                Verdict::Info => "info",
            };
            out.push_str(&format!("  {tag}  {}: {}\n", f.check, f.detail));
        }
        let mut verdict = match (&self.error, self.risks()) {
            (Some(e), _) if !self.reached => format!("not audited: {e}"),
            (Some(e), 0) => format!(
                "not fully audited: {e}; no backscatter risk found before the audit stopped"
            ),
            (None, 0) => "no backscatter risk found".to_string(),
            (_, n) => format!("{n} backscatter risk(s): see RISK above"),
        };
        let warnings = self.findings.iter().filter(|f| f.verdict == Verdict::Warn);
        match warnings.count() {
            0 => {}
            n => verdict.push_str(&format!("; {n} other weakness(es): see WARN above")),
        }
        out.push_str(&format!("{verdict} ({} commands sent)\n", self.commands));
        out
    }
}

/// What the dialogue collected, for the report.
struct Seen {
    findings: Vec<Finding>,
    texts: Vec<String>,
    commands: usize,
}

/// Audits `opts.addr`; `random` gives the random local parts' numbers.
pub async fn run(opts: &Options, random: &mut dyn FnMut() -> u64) -> Report {
    let mut seen = Seen {
        findings: Vec::new(),
        texts: Vec::new(),
        commands: 0,
    };
    let mut report = Report {
        target: opts.addr.to_string(),
        domain: opts.domain.clone(),
        reached: false,
        error: None,
        findings: Vec::new(),
        commands: 0,
    };
    match main_session(opts, random, &mut seen).await {
        Err(Stop::Unreached(e)) => report.error = Some(e.to_string()),
        Err(Stop::Lost(e)) => {
            report.reached = true;
            report.error = Some(e.to_string());
        }
        Ok(()) => {
            report.reached = true;
            if let Err(e) = later_checks(opts, random, &mut seen).await {
                report.error = Some(e.to_string());
            }
        }
    }
    seen.findings.push(judge::leaks(&seen.texts));
    report.findings = seen.findings;
    report.commands = seen.commands;
    report
}

/// The checks on connections of their own, after the main ones.
async fn later_checks(
    opts: &Options,
    random: &mut dyn FnMut() -> u64,
    seen: &mut Seen,
) -> Result<(), Lost> {
    for which in ["LF", "CR"] {
        let f = bare_line_end(opts, which, seen).await?;
        seen.findings.push(f);
    }
    match tls::check(opts, seen).await {
        Ok(found) => seen.findings.extend(found),
        Err(e) => seen.findings.push(judge::finding_info(
            "STARTTLS",
            format!("the STARTTLS check stopped: {e}"),
        )),
    }
    if let Some(known) = &opts.known {
        let f = known_vs_unknown(opts, known, random, seen).await?;
        seen.findings.push(f);
    }
    if let Some(test) = &opts.bounce {
        let f = bounce::check(opts, test, random, seen).await?;
        seen.findings.push(f);
    }
    Ok(())
}

/// RCPT for `known` and for unknown addresses, alternated three times in a new session.
async fn known_vs_unknown(
    opts: &Options,
    known: &str,
    random: &mut dyn FnMut() -> u64,
    seen: &mut Seen,
) -> Result<judge::Finding, Lost> {
    let (mut c, _) = greeted(opts, seen).await?;
    let (mail, _) = c.cmd(&format!("MAIL FROM:<{}>", opts.from)).await?;
    let (mut k, mut u) = (Vec::new(), Vec::new());
    if mail.code / 100 == 2 {
        for _ in 0..3 {
            k.push(c.cmd(&format!("RCPT TO:<{known}>")).await?);
            u.push(
                c.cmd(&format!("RCPT TO:<{}>", unknown(opts, random)))
                    .await?,
            );
        }
        c.cmd("RSET").await?;
    }
    seen.commands += c.sent;
    close(c, seen).await;
    Ok(judge::timing(known, &k, &u))
}

enum Stop {
    Unreached(Lost),
    Lost(Lost),
}

/// A connection greeted and EHLO'd: the connection and the EHLO reply.
async fn greeted(opts: &Options, seen: &mut Seen) -> Result<(Conn, Reply), Lost> {
    let mut c = Conn::open(opts.addr, opts.timeout).await?;
    let (greeting, _) = c.reply().await?;
    seen.texts.push(greeting.text());
    if greeting.code != 220 {
        return Err(Lost::Broken(format!("greeting: {greeting}")));
    }
    let (ehlo, _) = c.cmd(&format!("EHLO {}", opts.helo)).await?;
    seen.texts.push(ehlo.text());
    Ok((c, ehlo))
}

/// A random local part that no real mailbox has.
fn unknown(opts: &Options, random: &mut dyn FnMut() -> u64) -> String {
    format!(
        "bkst-audit-{:012x}@{}",
        random() & 0xffff_ffff_ffff,
        opts.domain
    )
}

async fn main_session(
    opts: &Options,
    random: &mut dyn FnMut() -> u64,
    seen: &mut Seen,
) -> Result<(), Stop> {
    let (mut c, _) = greeted(opts, seen).await.map_err(Stop::Unreached)?;
    let result = dialogue(&mut c, opts, random, seen).await;
    seen.commands += c.sent;
    result.map_err(Stop::Lost)?;
    close(c, seen).await;
    let (mut c, _) = greeted(opts, seen).await.map_err(Stop::Lost)?;
    let result = second_dialogue(&mut c, opts, random, seen).await;
    seen.commands += c.sent;
    result.map_err(Stop::Lost)?;
    close(c, seen).await;
    Ok(())
}

/// Ends a connection whose commands are counted already: QUIT, counted too.
async fn close(c: Conn, seen: &mut Seen) {
    seen.commands += 1;
    c.quit().await;
}

/// The checks of the first connection, in order.
async fn dialogue(
    c: &mut Conn,
    opts: &Options,
    random: &mut dyn FnMut() -> u64,
    seen: &mut Seen,
) -> Result<(), Lost> {
    let (mail, _) = c.cmd(&format!("MAIL FROM:<{}>", opts.from)).await?;
    if mail.code / 100 != 2 {
        let detail = format!(
            "MAIL FROM:<{}> refused ({mail}): give another --from",
            opts.from
        );
        seen.findings
            .push(judge::finding_info("unknown recipients", detail));
        return Ok(());
    }
    let (replies, latencies, closed) = unknown_rcpts(c, opts, random).await;
    seen.texts.extend(replies.iter().map(Reply::text));
    seen.findings.push(judge::unknown_recipients(&replies));
    seen.findings
        .push(judge::harvest(&latencies, closed.as_deref()));
    // ended after some unknown recipients: the harvest defence at work, the audit goes on
    // with a new connection; ended at the first one: the session is lost
    if let (Some(how), true) = (closed, replies.is_empty()) {
        return Err(Lost::Broken(format!("the session ended at RCPT ({how})")));
    }
    Ok(())
}

/// The checks of the second connection (a new session: the first one's unknown recipients
/// may have slowed it down): a bounce to the domain, VRFY and EXPN.
async fn second_dialogue(
    c: &mut Conn,
    opts: &Options,
    random: &mut dyn FnMut() -> u64,
    seen: &mut Seen,
) -> Result<(), Lost> {
    let (mail, _) = c.cmd("MAIL FROM:<>").await?;
    let mut rcpts = Vec::new();
    if mail.code / 100 == 2 {
        for _ in 0..2 {
            rcpts.push(
                c.cmd(&format!("RCPT TO:<{}>", unknown(opts, random)))
                    .await?
                    .0,
            );
        }
    }
    seen.findings.push(judge::null_sender(&mail, &rcpts));
    c.cmd("RSET").await?;
    let (v_unknown, _) = c.cmd(&format!("VRFY {}", unknown(opts, random))).await?;
    let (v_postmaster, _) = c.cmd(&format!("VRFY postmaster@{}", opts.domain)).await?;
    let (expn, _) = c.cmd(&format!("EXPN postmaster@{}", opts.domain)).await?;
    seen.findings
        .push(judge::vrfy(&v_unknown, &v_postmaster, &expn));
    Ok(())
}

/// `opts.harvest` RCPTs for unknown addresses: their replies, how long each took, and how the
/// server ended the session if it did (a 421 or a close).
async fn unknown_rcpts(
    c: &mut Conn,
    opts: &Options,
    random: &mut dyn FnMut() -> u64,
) -> (Vec<Reply>, Vec<Duration>, Option<String>) {
    let (mut replies, mut latencies) = (Vec::new(), Vec::new());
    for _ in 0..opts.harvest.max(1) {
        match c.cmd(&format!("RCPT TO:<{}>", unknown(opts, random))).await {
            Ok((r, _)) if r.code == 421 => return (replies, latencies, Some(r.to_string())),
            Ok((r, took)) => {
                replies.push(r);
                latencies.push(took);
            }
            Err(e) => return (replies, latencies, Some(e.to_string())),
        }
    }
    (replies, latencies, None)
}

/// `NOOP<bare LF or CR>NOOP<CRLF>` on a connection of its own, before any transaction.
async fn bare_line_end(
    opts: &Options,
    which: &'static str,
    seen: &mut Seen,
) -> Result<Finding, Lost> {
    let (mut c, _) = greeted(opts, seen).await?;
    let end = if which == "LF" { "\n" } else { "\r" };
    c.send(format!("NOOP{end}NOOP\r\n").as_bytes()).await?;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        match c
            .maybe_reply(Duration::from_secs(1).min(opts.timeout))
            .await
        {
            Some(r) => replies.push(r),
            None => break,
        }
    }
    seen.commands += c.sent;
    close(c, seen).await;
    Ok(judge::bare_line_end(which, &replies))
}
