//! The reports behind the golden files in `tests/golden/dsn/`, shared by `tests/dsn.rs` (which
//! compares them byte for byte) and `tests/dsn_parsers.rs` (which has third-party parsers read
//! them). Fixed times, reserved names (`*.example.test`).

#![allow(dead_code)] // each test crate uses part of it

use backstop_proto::address::Mailbox;
use backstop_proto::dsn::{self, Action, Original, Recipient, Report};
use backstop_proto::smtp::command::Orcpt;
use backstop_proto::smtp::reply::Enhanced;
use std::path::PathBuf;

/// Mon, 23 Nov 2026 00:00:00 +0000: when the originals arrive.
pub const T0: u64 = 1_795_392_000;
const HOUR: u64 = 3_600;
const DAY: u64 = 24 * HOUR;

/// One recipient of a golden report.
pub struct Rcpt {
    pub addr: Mailbox,
    pub orcpt: Option<Orcpt>,
    pub action: Action,
    pub status: Enhanced,
    pub remote: Option<&'static str>,
    pub diag: Option<&'static str>,
    pub reason: &'static str,
    pub last: Option<u64>,
    pub until: Option<u64>,
}

/// One golden report: `tests/golden/dsn/{name}.eml`.
pub struct Case {
    pub name: &'static str,
    pub to: Mailbox,
    pub envid: Option<&'static str>,
    pub headers: String,
    pub smtputf8: bool,
    /// When the report is written.
    pub date: u64,
    pub rcpts: Vec<Rcpt>,
}

impl Case {
    /// The report as `dsn::build` writes it.
    pub fn build(&self) -> Vec<u8> {
        let recipients: Vec<Recipient<'_>> = self
            .rcpts
            .iter()
            .map(|x| Recipient {
                final_recipient: &x.addr,
                original: x.orcpt.as_ref(),
                action: x.action,
                status: x.status,
                remote_mta: x.remote,
                diagnostic: x.diag,
                reason: x.reason,
                last_attempt: x.last,
                will_retry_until: x.until,
            })
            .collect();
        dsn::build(&Report {
            reporting_mta: "gw.example.test",
            postmaster: "MAILER-DAEMON@gw.example.test",
            to: &self.to,
            date: self.date,
            message_id: &format!("{}.{}@gw.example.test", self.date, self.name),
            boundary: &format!("Q7F3A9C21E.{}/gw.example.test", self.date),
            original: Original {
                queue_id: "Q7F3A9C21E",
                envid: self.envid,
                arrival: T0,
                headers: self.headers.as_bytes(),
                smtputf8: self.smtputf8,
            },
            recipients: &recipients,
        })
    }

    /// The golden file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/dsn")
            .join(format!("{}.eml", self.name))
    }
}

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s, true).expect("test address")
}

fn orcpt(addr_type: &str, addr: &str) -> Option<Orcpt> {
    Some(Orcpt {
        addr_type: addr_type.into(),
        addr: addr.into(),
    })
}

fn headers(from: &str, to: &str, subject: &str, id: &str) -> String {
    format!(
        "Received: from client.a.example.test (client.a.example.test [192.0.2.10])\r\n\
         \tby gw.example.test (backstop) with ESMTPS id Q7F3A9C21E\r\n\
         \tfor <{to}>; Mon, 23 Nov 2026 00:00:00 +0000\r\n\
         From: {from}\r\n\
         To: {to}\r\n\
         Subject: {subject}\r\n\
         Date: Sun, 22 Nov 2026 23:59:58 +0000\r\n\
         Message-ID:\r\n <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n"
    )
}

/// Every golden report.
pub fn all() -> Vec<Case> {
    vec![
        failure_one(),
        failure_many(),
        delay(),
        success(),
        smtputf8(),
    ]
}

fn failure_one() -> Case {
    Case {
        name: "failure_one",
        to: mailbox("alice@a.example.test"),
        envid: None,
        headers: headers(
            "Alice <alice@a.example.test>",
            "bob@b.example.test",
            "Quarterly numbers",
            "n1.alice@a.example.test",
        ),
        smtputf8: false,
        date: T0 + 65,
        rcpts: vec![Rcpt {
            addr: mailbox("bob@b.example.test"),
            orcpt: None,
            action: Action::Failed,
            status: Enhanced::new(5, 1, 1),
            remote: Some("mx.b.example.test"),
            diag: Some(
                "550 5.1.1 <bob@b.example.test>: Recipient address rejected: User unknown in \
                 virtual mailbox table",
            ),
            reason: "host mx.b.example.test said: 550 5.1.1 <bob@b.example.test>: Recipient \
                     address rejected: User unknown in virtual mailbox table (in reply to RCPT TO \
                     command)",
            last: Some(T0 + 64),
            until: None,
        }],
    }
}

fn failure_many() -> Case {
    let to = "carol@c.example.test, dave@d.example.test, erin@e.example.test";
    Case {
        name: "failure_many",
        to: mailbox("alice@a.example.test"),
        envid: Some("QQ314159+x"),
        headers: headers(
            "Alice <alice@a.example.test>",
            to,
            "Team lunch",
            "n2.alice@a.example.test",
        ),
        smtputf8: false,
        date: T0 + 5 * DAY + 30,
        rcpts: vec![
            Rcpt {
                addr: mailbox("carol@c.example.test"),
                orcpt: orcpt("rfc822", "Carol+lists@c.example.test"),
                action: Action::Failed,
                status: Enhanced::new(5, 2, 2),
                remote: Some("mx1.c.example.test"),
                diag: Some("552 5.2.2 <carol@c.example.test>: Mailbox full"),
                reason: "host mx1.c.example.test said: 552 5.2.2 <carol@c.example.test>: Mailbox \
                         full (in reply to end of DATA command)",
                last: Some(T0 + 2 * HOUR),
                until: None,
            },
            Rcpt {
                addr: mailbox("dave@d.example.test"),
                orcpt: None,
                action: Action::Failed,
                status: Enhanced::new(4, 4, 7),
                remote: None,
                diag: None,
                reason: "delivery time expired after 5 days; last error: connect to \
                         mx.d.example.test[192.0.2.40]:25: Connection timed out",
                last: Some(T0 + 5 * DAY),
                until: None,
            },
            Rcpt {
                addr: mailbox("erin@e.example.test"),
                orcpt: None,
                action: Action::Failed,
                status: Enhanced::new(5, 7, 1),
                remote: Some("mx.e.example.test"),
                diag: Some("554 5.7.1 <erin@e.example.test>: Relay access denied"),
                reason: "host mx.e.example.test said: 554 5.7.1 <erin@e.example.test>: Relay \
                         access denied (in reply to RCPT TO command)",
                last: Some(T0 + 5),
                until: None,
            },
        ],
    }
}

fn delay() -> Case {
    Case {
        name: "delay",
        to: mailbox("alice@a.example.test"),
        envid: Some("QQ271828"),
        headers: headers(
            "Alice <alice@a.example.test>",
            "frank@f.example.test, gina@g.example.test",
            "Minutes",
            "n3.alice@a.example.test",
        ),
        smtputf8: false,
        date: T0 + 4 * HOUR,
        rcpts: vec![
            Rcpt {
                addr: mailbox("frank@f.example.test"),
                orcpt: orcpt("rfc822", "frank@f.example.test"),
                action: Action::Delayed,
                status: Enhanced::new(4, 7, 1),
                remote: Some("mx.f.example.test"),
                diag: Some("451 4.7.1 <frank@f.example.test>: Greylisted, try again later"),
                reason: "host mx.f.example.test said: 451 4.7.1 <frank@f.example.test>: \
                         Greylisted, try again later (in reply to RCPT TO command)",
                last: Some(T0 + 4 * HOUR - 60),
                until: Some(T0 + 5 * DAY),
            },
            Rcpt {
                addr: mailbox("gina@g.example.test"),
                orcpt: None,
                action: Action::Delayed,
                status: Enhanced::new(4, 4, 1),
                remote: None,
                diag: None,
                reason: "connect to mx.g.example.test[192.0.2.70]:25: Connection refused",
                last: Some(T0 + 4 * HOUR - 60),
                until: Some(T0 + 5 * DAY),
            },
        ],
    }
}

fn success() -> Case {
    Case {
        name: "success",
        to: mailbox("alice@a.example.test"),
        envid: Some("QQ161803"),
        headers: headers(
            "Alice <alice@a.example.test>",
            "hank@h.example.test, ivy@i.example.test",
            "Contract",
            "n4.alice@a.example.test",
        ),
        smtputf8: false,
        date: T0 + 3,
        rcpts: vec![
            Rcpt {
                addr: mailbox("hank@h.example.test"),
                orcpt: orcpt("rfc822", "hank@h.example.test"),
                action: Action::Delivered,
                status: Enhanced::new(2, 0, 0),
                remote: Some("mx.h.example.test"),
                diag: Some("250 2.0.0 Ok: queued as 4Hk2Lm"),
                reason: "delivered via mx.h.example.test: 250 2.0.0 Ok: queued as 4Hk2Lm",
                last: Some(T0 + 2),
                until: None,
            },
            Rcpt {
                addr: mailbox("ivy@i.example.test"),
                orcpt: None,
                action: Action::Relayed,
                status: Enhanced::new(2, 0, 0),
                remote: Some("mx.i.example.test"),
                diag: Some("250 2.0.0 Ok"),
                reason: "relayed to mx.i.example.test, which does not offer DSN",
                last: Some(T0 + 2),
                // not a delay report: must not appear although given
                until: Some(T0 + 5 * DAY),
            },
        ],
    }
}

fn smtputf8() -> Case {
    Case {
        name: "smtputf8",
        // an ASCII sender: sisimai 4.25 drops every record of a report whose original sender
        // is not an ASCII address (see tests/dsn_parsers.rs)
        to: mailbox("alice@a.example.test"),
        envid: None,
        headers: headers(
            "Alice Müller <alice@a.example.test>",
            "jürgen@bücher.example.test, kim@k.example.test",
            "Grüße aus Köln",
            "n5.jose@a.example.test",
        ),
        smtputf8: true,
        date: T0 + 40,
        rcpts: vec![
            Rcpt {
                addr: mailbox("jürgen@bücher.example.test"),
                orcpt: orcpt("utf-8", "Jürgen@bücher.example.test"),
                action: Action::Failed,
                status: Enhanced::new(5, 1, 1),
                remote: Some("mx.bücher.example.test"),
                diag: Some("550 5.1.1 <jürgen@bücher.example.test>: Empfänger unbekannt"),
                reason: "host mx.bücher.example.test said: 550 5.1.1 \
                         <jürgen@bücher.example.test>: Empfänger unbekannt (in reply to RCPT TO \
                         command)",
                last: Some(T0 + 39),
                until: None,
            },
            Rcpt {
                addr: mailbox("kim@k.example.test"),
                orcpt: None,
                action: Action::Failed,
                status: Enhanced::new(5, 1, 1),
                remote: Some("mx.k.example.test"),
                diag: Some("550 5.1.1 <kim@k.example.test>: User unknown"),
                reason: "host mx.k.example.test said: 550 5.1.1 <kim@k.example.test>: User \
                         unknown (in reply to RCPT TO command)",
                last: Some(T0 + 39),
                until: None,
            },
        ],
    }
}
