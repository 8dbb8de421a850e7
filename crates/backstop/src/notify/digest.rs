//! The postmaster's daily digest: failed recipients whose sender got no report (untrusted or
//! null sender, suppressed by the budget, NOTIFY=NEVER), for one UTC day.
//!
//! Responsible for: choosing the day's entries and writing the digest as a plain-text message.
//! Not responsible for: when it is sent or that it is sent once (the notifier claims a key per
//! day).

use crate::queue::{Status, Summary};
use backstop_proto::datetime::rfc5322;
use std::fmt::Write;

/// Most lines listed (the count covers all).
const MAX_LINES: usize = 1000;

/// One failure without a report.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    /// The queue id.
    pub id: String,
    /// The envelope sender.
    pub from: String,
    /// The recipient.
    pub rcpt: String,
    /// Why it failed.
    pub reason: String,
    /// Why no report went out.
    pub why: String,
}

/// The failures of UTC day `day` (days since the epoch) that got no report.
pub fn entries(list: &[Summary], day: u64) -> Vec<Entry> {
    let (start, end) = (day * 86_400, (day + 1) * 86_400);
    let mut out = Vec::new();
    for m in list {
        for r in &m.rcpts {
            let (Status::Failed { at, reason, .. }, Some(why)) = (&r.status, &r.report) else {
                continue;
            };
            if (start..end).contains(at) && !why.starts_with("reported") {
                out.push(Entry {
                    id: m.id.clone(),
                    from: m.from.clone(),
                    rcpt: r.addr.clone(),
                    reason: reason.clone(),
                    why: why.clone(),
                });
            }
        }
    }
    out
}

/// The digest message (CRLF line ends) for `day`'s `entries`, written at `now`.
pub fn message(
    hostname: &str,
    to: &str,
    day: u64,
    entries: &[Entry],
    now: u64,
    id: &str,
) -> Vec<u8> {
    let date = rfc5322(day * 86_400);
    let date = date.get(..16).unwrap_or(&date);
    let mut m = String::new();
    let _ = write!(
        m,
        "Date: {}\r\nFrom: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\nTo: <{to}>\r\n\
         Subject: backstop at {hostname}: {} failed deliveries without a report ({date})\r\n\
         Message-ID: <{id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n",
        rfc5322(now),
        entries.len()
    );
    let _ = write!(
        m,
        "These recipients failed on {date} (UTC) and their senders were not told: a report\r\n\
         goes only to trusted senders, under a budget. Details: backstop queue list --failed.\r\n\r\n"
    );
    for e in entries.iter().take(MAX_LINES) {
        let _ = write!(
            m,
            "{} from <{}> to <{}>\r\n    failed: {}\r\n    {}\r\n",
            e.id,
            clean(&e.from),
            clean(&e.rcpt),
            clean(&e.reason),
            clean(&e.why)
        );
    }
    if entries.len() > MAX_LINES {
        let _ = write!(m, "... and {} more\r\n", entries.len() - MAX_LINES);
    }
    m.into_bytes()
}

/// One line, no controls, at most 900 bytes (peer text: replies, addresses).
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 900 {
        let mut cut = 900;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}
