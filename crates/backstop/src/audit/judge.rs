//! What the audited server's answers mean: each check's verdict in plain words, from the
//! replies collected (pure: no I/O, so every verdict is tested on written-out replies).
//!
//! Responsible for: the verdict of each check and its wording. Not responsible for: talking to
//! the server (`wire`), or the order of the dialogue (`audit`).

use backstop_proto::smtp::reply::Reply;
use serde::Serialize;
use std::time::Duration;

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Nothing wrong seen.
    Pass,
    /// A backscatter risk: the exit code is 1.
    Risk,
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
            Verdict::Info,
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

/// STARTTLS offered in EHLO or not.
pub fn starttls(offered: bool) -> Finding {
    match offered {
        true => finding("STARTTLS", Verdict::Pass, "offered".into()),
        false => finding(
            "STARTTLS",
            Verdict::Info,
            "not offered: mail reaches this server in plain text".into(),
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
            Verdict::Info
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
}
