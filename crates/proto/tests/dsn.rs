//! Delivery reports: golden files, injection, caps, and properties of `backstop_proto::dsn`.
//!
//! Golden files: each case of `tests/parsers/cases.rs` is built and compared byte for byte with
//! `tests/golden/dsn/{name}.eml`. After an intended change of the output, rewrite them with
//!
//!     BLESS=1 cargo test -p backstop-proto --test dsn
//!
//! and review the diff (`git diff tests/golden`); `tests/dsn_parsers.rs` then checks that
//! Python's `email` package and sisimai still read them.

#[path = "parsers/cases.rs"]
mod cases;

use backstop_proto::address::Mailbox;
use backstop_proto::dsn::{self, Action, Original, Recipient, Report, header_section, message_id};
use backstop_proto::smtp::command::Orcpt;
use backstop_proto::smtp::reply::Enhanced;
use cases::T0;
use proptest::prelude::*;

fn golden(name: &str) {
    let case = cases::all()
        .into_iter()
        .find(|c| c.name == name)
        .expect("case");
    let got = case.build();
    assert_lines(&got);
    let path = case.path();
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &got).expect("write golden file");
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create)", path.display()));
    assert!(
        got == want,
        "{} differs (BLESS=1 rewrites it); got:\n{}",
        path.display(),
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn golden_failure_one() {
    golden("failure_one");
}

#[test]
fn golden_failure_many() {
    golden("failure_many");
}

#[test]
fn golden_delay() {
    golden("delay");
}

#[test]
fn golden_success() {
    golden("success");
}

#[test]
fn golden_smtputf8() {
    golden("smtputf8");
}

/// Every line ends in CRLF, no bare CR or LF, none longer than 998 bytes.
fn assert_lines(msg: &[u8]) {
    let body = msg.strip_suffix(b"\n").expect("ends with a line end");
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").expect("LF without CR");
        assert!(!line.contains(&b'\r'), "bare CR");
        assert!(line.len() <= 998, "line of {} bytes", line.len());
    }
}

fn lines(msg: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(msg)
        .split("\r\n")
        .map(str::to_string)
        .collect()
}

const BOUNDARY: &str = "b0undary";

struct Input {
    to: Mailbox,
    rcpt: Mailbox,
    orcpt: Orcpt,
    envid: String,
    remote: String,
    diag: String,
    reason: String,
    headers: Vec<u8>,
    smtputf8: bool,
}

impl Input {
    fn new() -> Input {
        Input {
            to: Mailbox::parse("alice@a.example.test", false).unwrap(),
            rcpt: Mailbox::parse("bob@b.example.test", false).unwrap(),
            orcpt: Orcpt {
                addr_type: "rfc822".into(),
                addr: "bob@b.example.test".into(),
            },
            envid: "E1".into(),
            remote: "mx.b.example.test".into(),
            diag: "550 5.1.1 unknown".into(),
            reason: "host said no".into(),
            headers: b"Subject: hi\r\nMessage-ID: <m1@a.example.test>\r\n\r\n".to_vec(),
            smtputf8: false,
        }
    }

    fn build(&self, boundary: &str, action: Action) -> Vec<u8> {
        let rcpt = Recipient {
            final_recipient: &self.rcpt,
            original: Some(&self.orcpt),
            action,
            status: Enhanced::new(5, 1, 1),
            remote_mta: Some(&self.remote),
            diagnostic: Some(&self.diag),
            reason: &self.reason,
            last_attempt: Some(T0),
            will_retry_until: Some(T0 + 86_400),
        };
        dsn::build(&Report {
            reporting_mta: "gw.example.test",
            postmaster: "MAILER-DAEMON@gw.example.test",
            to: &self.to,
            date: T0,
            message_id: "r1@gw.example.test",
            boundary,
            original: Original {
                queue_id: "Q1",
                envid: Some(&self.envid),
                arrival: T0,
                headers: &self.headers,
                smtputf8: self.smtputf8,
            },
            recipients: std::slice::from_ref(&rcpt),
        })
    }
}

/// The lines that are MIME delimiters of `boundary`: three parts and the close.
fn assert_structure(msg: &[u8], boundary: &str) {
    let l = lines(msg);
    let open = format!("--{boundary}");
    let close = format!("--{boundary}--");
    assert_eq!(l.iter().filter(|x| **x == open).count(), 3, "delimiters");
    assert_eq!(
        l.iter().filter(|x| **x == close).count(),
        1,
        "close delimiter"
    );
    assert!(
        l.iter()
            .filter(|x| x.starts_with(&open))
            .all(|x| *x == open || *x == close),
        "a line starts with the delimiter"
    );
}

#[test]
fn peer_values_cannot_add_header_lines() {
    let mut i = Input::new();
    let evil = "x\r\nBcc: victim@v.example.test\r\n\r\n--b0undary\r\nContent-Type: text/html";
    i.envid = format!("E1{evil}");
    i.diag = format!("550 no{evil}");
    i.reason = format!("no{evil}");
    i.remote = format!("mx{evil}");
    i.orcpt.addr = format!("bob@b{evil}");
    i.orcpt.addr_type = format!("rfc822{evil}");
    let msg = i.build(BOUNDARY, Action::Failed);
    assert_lines(&msg);
    assert_structure(&msg, BOUNDARY);
    let l = lines(&msg);
    assert!(!l.iter().any(|x| x.starts_with("Bcc:")), "{l:#?}");
    assert_eq!(
        l.iter()
            .filter(|x| x.starts_with("Content-Type: text/html"))
            .count(),
        0
    );
    let text = String::from_utf8_lossy(&msg);
    assert!(text.contains("Original-Envelope-Id: E1x Bcc: victim@v.example.test --b0undary"));
    assert!(text.contains("Diagnostic-Code: smtp; 550 nox Bcc:"));
}

#[test]
fn only_the_header_section_is_returned() {
    let mut i = Input::new();
    i.headers = b"Subject: hi\r\n\r\nSECRET BODY\r\n".to_vec();
    let msg = String::from_utf8(i.build(BOUNDARY, Action::Failed)).unwrap();
    assert!(!msg.contains("SECRET"));
    assert!(msg.contains("Content-Type: text/rfc822-headers\r\n"));
    assert!(msg.contains("\r\n\r\nSubject: hi\r\n\r\n--b0undary--\r\n"));
}

#[test]
fn a_header_line_like_the_boundary_is_renamed() {
    let mut i = Input::new();
    i.headers = b"Subject: hi\r\n--b0undary\r\n--b0undary--: x\r\nX: y\r\n".to_vec();
    let msg = i.build(BOUNDARY, Action::Failed);
    assert_structure(&msg, BOUNDARY);
    let msg = String::from_utf8(msg).unwrap();
    assert!(msg.contains("\r\nX---b0undary\r\nX---b0undary--: x\r\nX: y\r\n"));
}

#[test]
fn bad_boundary_is_restricted_to_mime_characters() {
    let i = Input::new();
    let msg = i.build("a\"b\r\nc d", Action::Failed);
    assert_structure(&msg, "abcd");
    let msg = i.build("\r\n\"", Action::Failed);
    assert_structure(&msg, "=_backstop-report");
    let long = "x".repeat(100);
    let msg = i.build(&long, Action::Failed);
    assert_structure(&msg, &long[..70]);
}

#[test]
fn headers_are_capped_at_64_kib_on_a_line_boundary() {
    let mut i = Input::new();
    let mut h = String::new();
    for n in 0..3000 {
        h += &format!("X-Filler-{n:04}: {}\r\n", "f".repeat(60));
    }
    i.headers = h.into_bytes();
    let msg = String::from_utf8(i.build(BOUNDARY, Action::Failed)).unwrap();
    let part = msg
        .split("Content-Transfer-Encoding: 7bit\r\n\r\n")
        .nth(4)
        .unwrap()
        .strip_suffix("\r\n--b0undary--\r\n")
        .unwrap();
    assert!(part.len() <= 64 * 1024, "{}", part.len());
    assert!(part.len() > 60 * 1024);
    assert!(
        part.split("\r\n")
            .filter(|l| !l.is_empty())
            .all(|l| l.len() == 75)
    );
    assert!(msg.contains("The headers were cut at 64 KiB"));
}

#[test]
fn long_header_lines_are_folded() {
    let mut i = Input::new();
    i.headers = format!("X-Long: {}\r\n", "z".repeat(5000)).into_bytes();
    let msg = i.build(BOUNDARY, Action::Failed);
    assert_lines(&msg);
    assert!(String::from_utf8(msg).unwrap().contains(&"z".repeat(900)));
}

#[test]
fn will_retry_until_only_in_delay_reports() {
    let i = Input::new();
    let failed = String::from_utf8(i.build(BOUNDARY, Action::Failed)).unwrap();
    assert!(!failed.contains("Will-Retry-Until"));
    assert!(failed.contains("Subject: Undelivered Mail Returned to Sender\r\n"));
    let delayed = String::from_utf8(i.build(BOUNDARY, Action::Delayed)).unwrap();
    assert!(delayed.contains("Will-Retry-Until: Tue, 24 Nov 2026 00:00:00 +0000\r\n"));
    assert!(delayed.contains("Subject: Delayed Mail (still being retried)\r\n"));
}

#[test]
fn non_ascii_without_smtputf8_stays_seven_bit() {
    let mut i = Input::new();
    i.diag = "550 Empfänger unbekannt".into();
    i.orcpt = Orcpt {
        addr_type: "utf-8".into(),
        addr: "jürgen@b.example.test".into(),
    };
    let msg = i.build(BOUNDARY, Action::Failed);
    assert!(msg.is_ascii());
    let msg = String::from_utf8(msg).unwrap();
    assert!(msg.contains("Content-Type: message/delivery-status\r\n"));
    assert!(msg.contains("Original-Recipient: utf-8; j\\x{FC}rgen@b.example.test\r\n"));
    assert!(msg.contains("Diagnostic-Code: smtp; 550 Empf?nger unbekannt\r\n"));
    assert!(msg.contains("Content-Transfer-Encoding: 7bit\r\n\r\nThis is a MIME"));
}

#[test]
fn eight_bit_headers_without_smtputf8_are_labelled() {
    let mut i = Input::new();
    i.headers = b"Subject: caf\xe9\r\n".to_vec();
    let msg = i.build(BOUNDARY, Action::Failed);
    let at = |s: &[u8]| msg.windows(s.len()).position(|w| w == s);
    assert!(at(b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit").is_some());
    assert!(at(b"Content-Transfer-Encoding: 8bit\r\n\r\nThis is a MIME").is_some());
    assert!(at(b"Subject: caf\xe9\r\n").is_some());
}

#[test]
fn utf8_sender_and_recipient() {
    let mut i = Input::new();
    i.to = Mailbox::parse("josé@a.example.test", true).unwrap();
    i.rcpt = Mailbox::parse("jürgen@b.example.test", true).unwrap();
    i.smtputf8 = true;
    let msg = i.build(BOUNDARY, Action::Failed);
    assert_lines(&msg);
    let msg = String::from_utf8(msg).unwrap();
    assert!(msg.contains("\r\nTo: <josé@a.example.test>\r\n"));
    assert!(msg.contains("Content-Type: message/global-delivery-status\r\n"));
    assert!(msg.contains("\r\nFinal-Recipient: utf-8; jürgen@b.example.test\r\n"));
    assert!(msg.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    assert!(msg.contains("\r\n<jürgen@b.example.test>: host said no\r\n"));
    assert!(msg.contains("Content-Type: message/global-headers\r\n"));
}

#[test]
fn message_id_of_odd_headers() {
    let id = |h: &[u8]| message_id(h);
    assert_eq!(id(b"Message-ID: <a@b>\r\n"), Some("a@b".into()));
    assert_eq!(
        id(b"message-id:\r\n\t<a.1@b.test>\r\n\r\n"),
        Some("a.1@b.test".into())
    );
    assert_eq!(
        id(b"X: 1\nMESSAGE-ID : (c<o>m) <x@y>\nY: 2\n"),
        Some("x@y".into())
    );
    assert_eq!(id(b"Message-ID: x@y\r\n"), Some("x@y".into()));
    assert_eq!(id(b"Message-ID: <no at sign>\r\n"), None);
    assert_eq!(id(b"Message-ID: <a b@c>\r\n"), None);
    assert_eq!(id(b"Message-ID: <a@b\r\nInjected: x>\r\n"), None);
    assert_eq!(id(b"Subject: x\r\n Message-ID: <a@b>\r\n"), None);
    assert_eq!(id(b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n"), None);
    assert_eq!(id(b"Message-ID: <\xc3\xa9@b>\r\n"), None);
    assert_eq!(
        id(b"Message-ID: <first@a>\r\nMessage-ID: <second@a>\r\n"),
        Some("first@a".into())
    );
    let long = format!("Message-ID: <{}@b>\r\n", "a".repeat(1000));
    assert_eq!(id(long.as_bytes()), None);
}

#[test]
fn header_section_of_lf_only_input() {
    assert_eq!(header_section(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n\n");
    assert_eq!(header_section(b"A: 1\nB: 2\n"), b"A: 1\nB: 2\n");
    assert_eq!(header_section(b"A: 1\r\n\r\nbody"), b"A: 1\r\n\r\n");
    let mut i = Input::new();
    i.headers = b"Subject: lf\nMessage-ID: <lf@a>\n\nBODYTEXT\n".to_vec();
    let msg = String::from_utf8(i.build(BOUNDARY, Action::Failed)).unwrap();
    assert!(msg.contains("In-Reply-To: <lf@a>\r\nReferences: <lf@a>\r\n"));
    assert!(msg.contains("\r\n\r\nSubject: lf\r\nMessage-ID: <lf@a>\r\n\r\n--b0undary--"));
    assert!(!msg.contains("BODYTEXT"));
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Failed),
        Just(Action::Delayed),
        Just(Action::Delivered),
        Just(Action::Relayed),
    ]
}

proptest! {
    #[test]
    fn build_never_panics_and_keeps_lines_short(
        envid in ".{0,1200}",
        diag in ".{0,2500}",
        reason in ".{0,2500}",
        remote in ".{0,300}",
        orcpt in ".{0,600}",
        orcpt_type in ".{0,20}",
        headers in proptest::collection::vec(any::<u8>(), 0..3000),
        smtputf8 in any::<bool>(),
        action in action(),
    ) {
        let i = Input {
            orcpt: Orcpt { addr_type: orcpt_type, addr: orcpt },
            envid, remote, diag, reason, headers, smtputf8,
            ..Input::new()
        };
        let msg = i.build(BOUNDARY, action);
        assert_lines(&msg);
        assert_structure(&msg, BOUNDARY);
    }

    #[test]
    fn any_boundary_and_ids_never_panic(
        boundary in ".{0,100}",
        headers in proptest::collection::vec(any::<u8>(), 0..500),
    ) {
        let i = Input { headers, ..Input::new() };
        assert_lines(&i.build(&boundary, Action::Failed));
        let _ = message_id(&i.headers);
        let _ = header_section(&i.headers);
    }
}
