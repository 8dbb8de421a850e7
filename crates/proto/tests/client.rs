//! The client state machine against the server session, pumped in memory (no sockets).

use backstop_proto::address::{ForwardPath, Mailbox, ReversePath};
use backstop_proto::smtp::client::{Client, Event, Expect};
use backstop_proto::smtp::command::{MailParams, Notify, RcptParams, Ret};
use backstop_proto::smtp::reply::{Enhanced, Reply};
use backstop_proto::smtp::server::{Check, Output, Session, SessionConfig};
use std::sync::Arc;
use std::time::Instant;

/// Moves bytes both ways until neither side has anything to say; the server accepts recipients
/// whose local part starts with "ok" and records each message it receives.
fn pump(
    c: &mut Client,
    s: &mut Session,
    now: Instant,
    got: &mut Vec<(Vec<String>, Vec<u8>)>,
) -> Vec<Event> {
    loop {
        let mut moved = false;
        while let Some(o) = s.poll_output() {
            moved = true;
            match o {
                Output::Reply(r) => c.handle_input(&r.to_bytes()),
                Output::Check(ch) => {
                    let reply = match &ch {
                        Check::Rcpt {
                            to: ForwardPath::Mailbox(m),
                            ..
                        } if !m.local().starts_with("ok") => {
                            Reply::new(550, Enhanced::new(5, 1, 1), "User unknown")
                        }
                        Check::Data => Reply::plain(354, "go ahead"),
                        Check::Message { body, .. } => {
                            let t = s.transaction().unwrap();
                            let rcpts = t.recipients.iter().map(|r| r.path.to_string()).collect();
                            got.push((rcpts, body.clone()));
                            Reply::new(250, Enhanced::new(2, 0, 0), "Ok: queued as X1")
                        }
                        _ => Reply::new(250, Enhanced::new(2, 0, 0), "Ok"),
                    };
                    s.resolve(reply, now);
                }
                Output::StartTls | Output::Close | Output::Spill(_) => {}
            }
        }
        if c.has_transmit() {
            moved = true;
            s.handle_input(&c.take_transmit(), now);
        }
        if !moved {
            break;
        }
    }
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn codes(events: &[Event]) -> Vec<(Expect, u16)> {
    events
        .iter()
        .map(|e| match e {
            Event::Reply(x, r) => (*x, r.code),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn pipelined_transaction_with_dsn_and_dot_stuffing() {
    let now = Instant::now();
    let mut s = Session::new(Arc::new(SessionConfig::default()), now);
    let mut c = Client::new();
    let mut got = Vec::new();
    assert_eq!(
        codes(&pump(&mut c, &mut s, now, &mut got)),
        [(Expect::Greeting, 220)]
    );
    c.ehlo("gw.example.test");
    assert_eq!(
        codes(&pump(&mut c, &mut s, now, &mut got)),
        [(Expect::Ehlo, 250)]
    );
    assert!(c.capabilities().pipelining && c.capabilities().dsn);
    assert_eq!(c.capabilities().size, Some(10_240_000));

    let from = ReversePath::Mailbox(Mailbox::parse("a@client.test", false).unwrap());
    let params = MailParams {
        ret: Some(Ret::Hdrs),
        envid: Some("e 1".into()),
        ..MailParams::default()
    };
    c.mail(&from, &params);
    let notify = RcptParams {
        notify: Some(Notify {
            failure: true,
            ..Notify::default()
        }),
        orcpt: None,
    };
    for rcpt in [
        "ok1@example.test",
        "nobody@example.test",
        "ok2@example.test",
    ] {
        c.rcpt(
            &ForwardPath::Mailbox(Mailbox::parse(rcpt, false).unwrap()),
            &notify,
        );
    }
    c.data();
    assert_eq!(c.pending(), 5);
    let ev = pump(&mut c, &mut s, now, &mut got);
    assert_eq!(
        codes(&ev),
        [
            (Expect::Mail, 250),
            (Expect::Rcpt, 250),
            (Expect::Rcpt, 550),
            (Expect::Rcpt, 250),
            (Expect::Data, 354)
        ]
    );
    let tx = s.transaction().unwrap();
    assert_eq!(tx.params.envid.as_deref(), Some("e 1"));
    assert!(tx.recipients[1].params.notify.unwrap().failure);

    let body = b"Subject: t\r\n\r\n.leading dot\r\n.\r\nend\r\n";
    c.message(&[body]);
    let ev = pump(&mut c, &mut s, now, &mut got);
    assert_eq!(codes(&ev), [(Expect::Message, 250)]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, ["<ok1@example.test>", "<ok2@example.test>"]);
    assert_eq!(
        got[0].1, body,
        "stuffing and un-stuffing give back the same bytes"
    );
    c.quit();
    assert_eq!(
        codes(&pump(&mut c, &mut s, now, &mut got)),
        [(Expect::Quit, 221)]
    );
}

#[test]
fn protocol_error_and_unsolicited_replies() {
    let mut c = Client::new();
    c.handle_input(b"220 hi\r\n421 4.4.2 bye\r\n");
    assert!(matches!(
        c.poll_event(),
        Some(Event::Reply(Expect::Greeting, _))
    ));
    assert!(matches!(c.poll_event(), Some(Event::Unsolicited(r)) if r.code == 421));
    c.handle_input(b"garbage\r\n");
    assert!(matches!(c.poll_event(), Some(Event::ProtocolError(_))));
    assert!(c.is_broken());
}

#[test]
fn parameters_the_server_lacks_are_not_sent() {
    let mut c = Client::new();
    c.handle_input(b"220 hi\r\n");
    c.ehlo("gw.test");
    c.handle_input(b"250-old.test\r\n250 PIPELINING\r\n");
    c.take_transmit();
    let params = MailParams {
        size: Some(5),
        ret: Some(Ret::Full),
        ..MailParams::default()
    };
    c.mail(&ReversePath::Null, &params);
    assert_eq!(c.take_transmit(), b"MAIL FROM:<>\r\n");
}
