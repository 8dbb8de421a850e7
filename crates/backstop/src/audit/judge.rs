//! What the audited server's answers mean: each check's verdict in plain words, from the
//! replies collected (pure: no I/O, so every verdict is tested on written-out replies).
//!
//! Responsible for: the verdict of each check and its wording. Not responsible for: talking to
//! the server (`wire`), or the order of the dialogue (`audit`).

use backstop_proto::smtp::reply::Reply;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Nothing wrong seen.
    Pass,
    /// A backscatter risk: the exit code is 1.
    Risk,
    /// A weakness that is not backscatter (plain text, smuggling, command injection): worth
    /// mending, the exit code stays 0.
    Warn,
    /// Worth knowing, not a backscatter risk by itself (or not checked).
    Info,
}

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check.
    pub check: &'static str,
    /// Its outcome.
    pub verdict: Verdict,
    /// In plain words, with the server's replies.
    pub detail: String,
}

/// A check that could not be made, or that says something worth knowing.
pub fn finding_info(check: &'static str, detail: String) -> Finding {
    finding(check, Verdict::Info, detail)
}

fn finding(check: &'static str, verdict: Verdict, detail: String) -> Finding {
    Finding {
        check,
        verdict,
        detail,
    }
}

/// RCPT for random unknown local parts: accepted ones become bounces later.
pub fn unknown_recipients(replies: &[Reply]) -> Finding {
    let check = "unknown recipients";
    let accepted = replies.iter().filter(|r| r.code / 100 == 2).count();
    let Some(first) = replies.first() else {
        return finding(
            check,
            Verdict::Info,
            "not checked: no RCPT was answered".into(),
        );
    };
    if accepted > 0 {
        let detail = format!(
            "{accepted} of {} random addresses that do not exist were accepted at RCPT \
             ({first}): the server finds out later that they do not exist and bounces the \
             message to its sender. With a forged sender, one message to 100 such addresses \
             becomes 100 bounces aimed at a stranger (backscatter)",
            replies.len()
        );
        return finding(check, Verdict::Risk, detail);
    }
    match replies.iter().find(|r| r.code / 100 == 5) {
        Some(r) => finding(
            check,
            Verdict::Pass,
            format!("refused at RCPT, before any message is taken ({r})"),
        ),
        None => finding(
            check,
            Verdict::Info,
            format!("deferred at RCPT, never accepted ({first}): no bounce can follow"),
        ),
    }
}

/// After `n` unknown recipients in one session: slower answers, or the connection closed?
pub fn harvest(latencies: &[Duration], closed: Option<&str>) -> Finding {
    let check = "harvest defence";
    if let Some(how) = closed {
        let after = latencies.len();
        return finding(
            check,
            Verdict::Pass,
            format!("the server ended the session after {after} unknown recipients ({how})"),
        );
    }
    let (Some(first), Some(last)) = (latencies.first(), latencies.last()) else {
        return finding(check, Verdict::Info, "not checked".into());
    };
    let n = latencies.len();
    if *last >= Duration::from_millis(500) && *last > *first * 4 {
        let detail = format!(
            "answers slowed down after unknown recipients ({} ms for the first, {} ms for \
             the {n}th): a harvester is slowed",
            first.as_millis(),
            last.as_millis()
        );
        return finding(check, Verdict::Pass, detail);
    }
    let detail = format!(
        "{n} unknown recipients in one session were answered without delay ({} ms, then \
         {} ms): nothing slows an address harvest (more may be needed to see a defence: \
         --harvest N)",
        first.as_millis(),
        last.as_millis()
    );
    finding(check, Verdict::Info, detail)
}

/// RCPT for the operator's known address and for unknown ones, alternated in one session:
/// do the answers' times tell them apart (a timing oracle)?
pub fn timing(
    known: &str,
    known_rcpts: &[(Reply, Duration)],
    unknown: &[(Reply, Duration)],
) -> Finding {
    let check = "known vs unknown timing";
    let median = |v: &[(Reply, Duration)]| {
        let mut t: Vec<Duration> = v.iter().map(|(_, d)| *d).collect();
        t.sort();
        t.get(t.len() / 2).copied()
    };
    let (Some(k), Some(u)) = (median(known_rcpts), median(unknown)) else {
        return finding(check, Verdict::Info, "not checked".into());
    };
    if let Some((r, _)) = known_rcpts.iter().find(|(r, _)| r.code / 100 != 2) {
        let detail = format!("the known address <{known}> was not accepted ({r}): check --known");
        return finding(check, Verdict::Info, detail);
    }
    let (k_ms, u_ms) = (k.as_millis(), u.as_millis());
    let apart = k_ms.abs_diff(u_ms) >= 100 && k_ms.max(u_ms) >= 2 * k_ms.min(u_ms);
    let same_answer = unknown.iter().all(|(r, _)| r.code / 100 == 2);
    let times = format!("median {k_ms} ms for <{known}>, {u_ms} ms for unknown addresses");
    match (apart, same_answer) {
        (false, _) => finding(
            check,
            Verdict::Pass,
            format!("{times}: the answers' times do not tell them apart"),
        ),
        (true, true) => finding(
            check,
            Verdict::Warn,
            format!(
                "{times}: both are accepted, yet the time of the answer tells a real address \
                 from an unknown one (a timing oracle for address harvesting)"
            ),
        ),
        (true, false) => finding(
            check,
            Verdict::Info,
            format!("{times} (the replies tell them apart already)"),
        ),
    }
}

/// `MAIL FROM:<>` to two random addresses of the domain: a bounce to an address that does not
/// exist, and a bounce to several recipients.
pub fn null_sender(mail: &Reply, rcpts: &[Reply]) -> Finding {
    let check = "bounces to the domain";
    if mail.code / 100 != 2 {
        let detail = format!("MAIL FROM:<> refused ({mail}): no bounce can be delivered here");
        return finding(check, Verdict::Info, detail);
    }
    let accepted = rcpts.iter().filter(|r| r.code / 100 == 2).count();
    match (accepted, rcpts.first()) {
        (0, Some(r)) => finding(
            check,
            Verdict::Pass,
            format!("a bounce (MAIL FROM:<>) to an address that does not exist is refused ({r})"),
        ),
        (0, None) => finding(check, Verdict::Info, "not checked".into()),
        (1, _) => finding(
            check,
            Verdict::Risk,
            "a bounce (MAIL FROM:<>) to an address that does not exist is accepted".into(),
        ),
        (n, _) => finding(
            check,
            Verdict::Risk,
            format!(
                "a bounce (MAIL FROM:<>) is accepted for {n} recipients that do not exist: a real \
                 bounce has one recipient, and these would bounce again"
            ),
        ),
    }
}

/// `VRFY` and `EXPN`: do they tell whether an address exists?
pub fn vrfy(vrfy_unknown: &Reply, vrfy_postmaster: &Reply, expn: &Reply) -> Finding {
    let check = "VRFY and EXPN";
    let tells = |r: &Reply| matches!(r.code, 250 | 251);
    if tells(expn) {
        let detail = format!("EXPN lists addresses ({expn}): turn it off");
        return finding(check, Verdict::Info, detail);
    }
    if tells(vrfy_postmaster) && !tells(vrfy_unknown) {
        let detail = format!(
            "VRFY tells existing addresses ({vrfy_postmaster}) from unknown ones \
             ({vrfy_unknown}): a harvester needs no RCPT (disable_vrfy_command = yes in Postfix)"
        );
        return finding(check, Verdict::Info, detail);
    }
    let detail = format!("VRFY does not tell whether an address exists ({vrfy_postmaster})");
    finding(check, Verdict::Pass, detail)
}

/// A command line ended by a bare LF (or CR) followed by another command: taken as two
/// commands (`replies` two answers) is the SMTP smuggling exposure.
pub fn bare_line_end(which: &'static str, replies: &[Reply]) -> Finding {
    let check = if which == "LF" {
        "bare LF in commands"
    } else {
        "bare CR in commands"
    };
    match replies {
        [a, b, ..] if a.code / 100 == 2 && b.code / 100 == 2 => finding(
            check,
            Verdict::Warn,
            format!(
                "a bare {which} ends a command line here (\"NOOP<{which}>NOOP<CRLF>\" got two \
                 answers): with DATA the same habit lets a message be smuggled inside another \
                 (SMTP smuggling); Postfix: smtpd_forbid_bare_newline = normal"
            ),
        ),
        [] => finding(
            check,
            Verdict::Pass,
            format!("a bare {which} in a command line got no answer, or ended the session"),
        ),
        [a, ..] => finding(
            check,
            Verdict::Pass,
            format!("a bare {which} does not end a command line ({a})"),
        ),
    }
}

/// What became of the `--bounce-to` test message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BounceSeen {
    /// MAIL FROM or DATA was refused: nothing sent.
    NotSent,
    /// Refused at RCPT (the reply).
    RefusedAtRcpt(Reply),
    /// Accepted at RCPT, refused at the end of DATA (the reply).
    RefusedAfterData(Reply),
    /// Accepted; no listener to wait on.
    NotWaited,
    /// Accepted; no bounce within the wait.
    NoneWithin(Duration),
    /// The bounce came back.
    Came {
        /// How long after the message was accepted.
        after: Duration,
        /// Its envelope sender.
        from: String,
        /// Its size in bytes.
        size: usize,
        /// Lines of the original's attachment it carried ...
        attachment_lines: usize,
        /// ... of so many.
        of: usize,
    },
}

/// A duration in words: milliseconds under 10 s, else seconds.
fn took(d: Duration) -> String {
    match d < Duration::from_secs(10) {
        true => format!("{} ms", d.as_millis()),
        false => format!("{} s", d.as_secs()),
    }
}

/// The `--bounce-to` test: one message to the unknown address `rcpt`, marked `token`.
pub fn bounce_test(rcpt: &str, token: &str, seen: &BounceSeen) -> Finding {
    let check = "bounce test";
    match seen {
        BounceSeen::NotSent => finding(
            check,
            Verdict::Info,
            format!("not made: the server refused MAIL FROM or DATA for <{rcpt}>"),
        ),
        BounceSeen::RefusedAtRcpt(r) => finding(
            check,
            Verdict::Pass,
            format!("the message to <{rcpt}> was refused at RCPT ({r}): no bounce can follow"),
        ),
        BounceSeen::RefusedAfterData(r) => finding(
            check,
            Verdict::Pass,
            format!(
                "the message to <{rcpt}> was accepted at RCPT and refused only after DATA \
                 ({r}): no bounce follows, but every such message is received in full first"
            ),
        ),
        BounceSeen::NotWaited => finding(
            check,
            Verdict::Risk,
            format!(
                "the message to <{rcpt}>, which does not exist, was accepted: look for a \
                 bounce carrying {token} at the --bounce-to address (--listen waits for it)"
            ),
        ),
        BounceSeen::NoneWithin(wait) => finding(
            check,
            Verdict::Info,
            format!(
                "the message to <{rcpt}> was accepted, and no bounce came within {} s (it may \
                 come later, or the server drops such mail silently)",
                wait.as_secs()
            ),
        ),
        BounceSeen::Came {
            after,
            from,
            size,
            attachment_lines,
            of,
        } => {
            let carried = match attachment_lines {
                0 => "none of the original's attachment".to_string(),
                n if n == of => format!("the full original (all {of} lines of its attachment)"),
                n => format!("part of the original ({n} of {of} lines of its attachment)"),
            };
            let detail = format!(
                "a bounce for <{rcpt}> came back {} after the message was accepted (from \
                 {from}, {size} bytes) carrying {carried}: with a forged sender it goes to a \
                 stranger{}",
                took(*after),
                if *attachment_lines > 0 {
                    ", attachment and all"
                } else {
                    ""
                }
            );
            finding(check, Verdict::Risk, detail)
        }
    }
}

/// STARTTLS offered in EHLO or not.
pub fn starttls(offered: bool) -> Finding {
    match offered {
        true => finding("STARTTLS", Verdict::Pass, "offered".into()),
        false => finding(
            "STARTTLS",
            Verdict::Warn,
            "not offered: mail reaches this server in plain text".into(),
        ),
    }
}

/// The certificate a server showed, as facts (read by `audit::tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// Its subject and issuer, as distinguished names.
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// Its DNS names (subjectAltName).
    pub names: Vec<String>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Subject and issuer are the same.
    pub self_signed: bool,
    /// The name it was checked for (`--tls-name` or the host audited), if any.
    pub checked_name: Option<String>,
    /// Whether its names cover that name.
    pub name_matches: Option<bool>,
    /// Trusted by this machine's CAs for that name (or, with none, for its own first name).
    pub trust: Result<(), String>,
}

/// The TLS session after STARTTLS: protocol, cipher, the certificate, EHLO inside TLS.
pub fn tls(
    version: &str,
    cipher: &str,
    ehlo: &Reply,
    cert: Option<&Certificate>,
    now: SystemTime,
) -> Finding {
    let check = "STARTTLS";
    let version = version.replace("TLSv1_", "TLS 1.");
    let mut detail = format!("offered; {version}, {cipher}");
    if ehlo.code != 250 {
        detail.push_str(&format!("; EHLO inside TLS answered {ehlo}"));
        return finding(check, Verdict::Warn, detail);
    }
    let Some(cert) = cert else {
        detail.push_str("; no readable certificate");
        return finding(check, Verdict::Warn, detail);
    };
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (cert.not_after - now).div_euclid(86_400);
    let names = match cert.names.is_empty() {
        true => format!("subject {}", cert.subject),
        false => cert.names.join(", "),
    };
    detail.push_str(&format!("; certificate for {names}"));
    match cert.self_signed {
        true => detail.push_str(", self-signed"),
        false => detail.push_str(&format!(", issued by {}", cert.issuer)),
    }
    if days < 0 {
        detail.push_str(&format!(", EXPIRED {} days ago", -days));
        return finding(check, Verdict::Warn, detail);
    }
    detail.push_str(&format!(", valid {days} more days"));
    if let (Some(false), Some(n)) = (cert.name_matches, &cert.checked_name) {
        detail.push_str(&format!(
            "; NOT valid for {n}: senders that check the name (MTA-STS, DANE) will not \
             deliver here"
        ));
        return finding(check, Verdict::Warn, detail);
    }
    let verdict = match (&cert.trust, &cert.checked_name) {
        (Ok(()), Some(n)) => {
            detail.push_str(&format!("; trusted by this machine's CAs for {n}"));
            Verdict::Pass
        }
        (Ok(()), None) => {
            detail.push_str("; trusted by this machine's CAs (name not checked: --tls-name)");
            Verdict::Pass
        }
        (Err(why), _) => {
            detail.push_str(&format!(
                "; not trusted by this machine's CAs ({why}): senders that verify (MTA-STS, \
                 DANE without a matching TLSA record) will not deliver here"
            ));
            Verdict::Info
        }
    };
    finding(check, verdict, detail)
}

/// `STARTTLS` with a `NOOP` pipelined behind it: `in_clear`, a reply that came before the
/// handshake; `injected`, one that came after it unasked.
pub fn pipelined_before_tls(in_clear: Option<&Reply>, injected: Option<&Reply>) -> Finding {
    let check = "commands sent before TLS";
    match (in_clear, injected) {
        (_, Some(r)) => finding(
            check,
            Verdict::Warn,
            format!(
                "a NOOP sent in plain text behind STARTTLS was answered inside TLS ({r}): \
                 commands injected before the handshake run as if encrypted (CVE-2011-0411); \
                 update the server"
            ),
        ),
        (Some(r), None) => finding(
            check,
            Verdict::Warn,
            format!(
                "a NOOP pipelined behind STARTTLS was answered in plain text ({r}) instead \
                 of being thrown away (RFC 3207)"
            ),
        ),
        (None, None) => finding(
            check,
            Verdict::Pass,
            "a NOOP pipelined behind STARTTLS was thrown away, as RFC 3207 asks".into(),
        ),
    }
}

/// Software names and versions, and internal host names, in what the server says.
pub fn leaks(texts: &[String]) -> Finding {
    let software = [
        "postfix",
        "exim",
        "sendmail",
        "microsoft esmtp",
        "exchange",
        "haraka",
        "qmail",
        "version",
    ];
    let internal = [".local", ".lan", ".internal", ".corp", ".localdomain"];
    let mut seen: Vec<String> = Vec::new();
    for t in texts {
        let lower = t.to_ascii_lowercase();
        for w in software.iter().chain(internal.iter()) {
            if lower.contains(w) && !seen.iter().any(|s| s == w) {
                seen.push((*w).to_string());
            }
        }
    }
    match seen.is_empty() {
        true => finding(
            "what the server tells",
            Verdict::Pass,
            "no software name or internal host name in the greeting, EHLO or replies".into(),
        ),
        false => finding(
            "what the server tells",
            Verdict::Info,
            format!(
                "the greeting, EHLO or replies name {} (software or internal names help an \
                 attacker; Postfix: smtpd_banner = $myhostname ESMTP)",
                seen.join(", ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn r(code: u16, text: &str) -> Reply {
        Reply::plain(code, text)
    }

    #[test]
    fn accepted_unknown_recipients_are_the_backscatter_risk() {
        let all = [r(250, "Ok"), r(250, "Ok"), r(250, "Ok")];
        let f = unknown_recipients(&all);
        assert_eq!(f.verdict, Verdict::Risk);
        assert!(
            f.detail.starts_with("3 of 3 random addresses"),
            "{}",
            f.detail
        );
        let refused = [r(550, "User unknown"), r(550, "User unknown")];
        assert_eq!(unknown_recipients(&refused).verdict, Verdict::Pass);
        let deferred = [r(451, "try later")];
        assert_eq!(unknown_recipients(&deferred).verdict, Verdict::Info);
    }

    #[test]
    fn bounces_smuggling_vrfy_and_harvest_read_as_written() {
        let ok = r(250, "Ok");
        assert_eq!(
            null_sender(&ok, std::slice::from_ref(&ok)).verdict,
            Verdict::Risk
        );
        assert_eq!(null_sender(&ok, &[r(550, "no")]).verdict, Verdict::Pass);
        assert_eq!(
            bare_line_end("LF", &[ok.clone(), ok.clone()]).verdict,
            Verdict::Warn
        );
        assert_eq!(bare_line_end("CR", &[r(500, "bad")]).verdict, Verdict::Pass);
        let vrfy_leak = vrfy(&r(550, "unknown"), &r(250, "postmaster"), &r(502, "no"));
        assert_eq!(vrfy_leak.verdict, Verdict::Info);
        let quiet = vrfy(&r(252, "maybe"), &r(252, "maybe"), &r(502, "no"));
        assert_eq!(quiet.verdict, Verdict::Pass);
        let ms = Duration::from_millis;
        assert_eq!(harvest(&[ms(1), ms(2)], None).verdict, Verdict::Info);
        assert_eq!(harvest(&[ms(1), ms(900)], None).verdict, Verdict::Pass);
        assert_eq!(harvest(&[ms(1)], Some("421")).verdict, Verdict::Pass);
        let leak = leaks(&["mx.example.test ESMTP Postfix (Debian/GNU)".into()]);
        assert!(leak.detail.contains("postfix"), "{}", leak.detail);
    }

    #[test]
    fn tls_facts_and_pipelining_read_as_written() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000 * 86_400);
        let cert = |not_after_day: i64, trust: Result<(), String>| Certificate {
            subject: "CN=mx.example.test".into(),
            issuer: "CN=Test CA".into(),
            names: vec!["mx.example.test".into()],
            not_after: not_after_day * 86_400,
            self_signed: false,
            checked_name: Some("mx.example.test".into()),
            name_matches: Some(true),
            trust,
        };
        let ehlo = r(250, "mx.example.test");
        let good = tls("TLSv1_3", "AES", &ehlo, Some(&cert(1_090, Ok(()))), now);
        assert_eq!(good.verdict, Verdict::Pass);
        assert!(
            good.detail.contains(
                "TLS 1.3, AES; certificate for mx.example.test, issued by \
                 CN=Test CA, valid 90 more days; trusted by this machine's CAs for mx.example.test"
            ),
            "{}",
            good.detail
        );
        let expired = tls("TLSv1_2", "AES", &ehlo, Some(&cert(990, Ok(()))), now);
        assert_eq!(expired.verdict, Verdict::Warn);
        assert!(
            expired.detail.contains("EXPIRED 10 days ago"),
            "{}",
            expired.detail
        );
        let unknown_ca = cert(1_090, Err("UnknownIssuer".into()));
        let untrusted = tls("TLSv1_3", "AES", &ehlo, Some(&unknown_ca), now);
        assert_eq!(untrusted.verdict, Verdict::Info);
        assert_eq!(
            tls("TLSv1_3", "AES", &ehlo, None, now).verdict,
            Verdict::Warn
        );
        let ok = r(250, "Ok");
        assert_eq!(pipelined_before_tls(None, None).verdict, Verdict::Pass);
        let injected = pipelined_before_tls(None, Some(&ok));
        assert_eq!(injected.verdict, Verdict::Warn);
        assert!(
            injected.detail.contains("CVE-2011-0411"),
            "{}",
            injected.detail
        );
        assert_eq!(pipelined_before_tls(Some(&ok), None).verdict, Verdict::Warn);
    }

    #[test]
    fn timing_and_the_bounce_test_read_as_written() {
        let ms = Duration::from_millis;
        let ok = |t| (r(250, "Ok"), ms(t));
        let no = |t| (r(550, "User unknown"), ms(t));
        let k = "alice@example.test";
        let same = timing(k, &[ok(3), ok(4), ok(5)], &[ok(4), ok(3), ok(6)]);
        assert_eq!(same.verdict, Verdict::Pass);
        let oracle = timing(k, &[ok(300), ok(310), ok(305)], &[ok(4), ok(3), ok(6)]);
        assert_eq!(oracle.verdict, Verdict::Warn);
        assert!(
            oracle
                .detail
                .starts_with("median 305 ms for <alice@example.test>, 4 ms")
        );
        let told = timing(k, &[ok(300), ok(310), ok(305)], &[no(4), no(3), no(6)]);
        assert_eq!(told.verdict, Verdict::Info);
        assert_eq!(timing(k, &[no(1)], &[no(1)]).verdict, Verdict::Info);

        let rcpt = "x@example.test";
        let came = |lines| BounceSeen::Came {
            after: ms(1_500),
            from: "<>".into(),
            size: 19_000,
            attachment_lines: lines,
            of: 200,
        };
        let full = bounce_test(rcpt, "t", &came(200));
        assert_eq!(full.verdict, Verdict::Risk);
        assert!(
            full.detail.contains("came back 1500 ms after"),
            "{}",
            full.detail
        );
        assert!(
            full.detail.contains("the full original (all 200 lines"),
            "{}",
            full.detail
        );
        assert!(
            bounce_test(rcpt, "t", &came(0))
                .detail
                .contains("none of the original")
        );
        assert!(
            bounce_test(rcpt, "t", &came(7))
                .detail
                .contains("7 of 200 lines")
        );
        let at_rcpt = BounceSeen::RefusedAtRcpt(r(550, "User unknown"));
        assert_eq!(bounce_test(rcpt, "t", &at_rcpt).verdict, Verdict::Pass);
        let after_data = BounceSeen::RefusedAfterData(r(550, "User unknown"));
        let late = bounce_test(rcpt, "t", &after_data);
        assert!(
            late.detail.contains("refused only after DATA"),
            "{}",
            late.detail
        );
        assert_eq!(
            bounce_test(rcpt, "t", &BounceSeen::NotWaited).verdict,
            Verdict::Risk
        );
        let silent = BounceSeen::NoneWithin(Duration::from_secs(60));
        assert_eq!(bounce_test(rcpt, "t", &silent).verdict, Verdict::Info);
    }
}
