//! The milter protocol: an MTA's packets read at every cut of the input, each command's
//! fields, bad input, and the responses' exact bytes.

use backstop_proto::milter::{Command, Decoder, Error, MAX_PACKET, Response, VERSION};

fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

/// What Postfix sends for one message, in order.
fn session() -> (Vec<u8>, Vec<Command>) {
    let mut wire = Vec::new();
    let mut neg = 6u32.to_be_bytes().to_vec();
    neg.extend_from_slice(&0x1ffu32.to_be_bytes());
    neg.extend_from_slice(&0x1fffffu32.to_be_bytes());
    wire.extend(packet(b'O', &neg));
    wire.extend(packet(b'D', b"Cj\0mx.example.test\0{daemon_name}\0smtpd\0"));
    wire.extend(packet(b'C', b"client.test\x004\x9c\x40192.0.2.7\0"));
    wire.extend(packet(b'H', b"client.test\0"));
    wire.extend(packet(b'D', b"M{auth_authen}\0alice\0"));
    wire.extend(packet(b'M', b"<alice@example.test>\0SIZE=100\0"));
    wire.extend(packet(b'R', b"<bob@remote.test>\0"));
    wire.extend(packet(b'T', b""));
    wire.extend(packet(b'L', b"Subject\0 hello\0"));
    wire.extend(packet(b'N', b""));
    wire.extend(packet(b'B', b"body\r\n"));
    wire.extend(packet(b'E', b""));
    wire.extend(packet(b'K', b""));
    wire.extend(packet(b'C', b"unknown\0U"));
    wire.extend(packet(b'A', b""));
    wire.extend(packet(b'Q', b""));
    let want = vec![
        Command::Negotiate {
            version: 6,
            actions: 0x1ff,
            steps: 0x1fffff,
        },
        Command::Macros {
            of: b'C',
            pairs: vec![
                ("j".into(), "mx.example.test".into()),
                ("{daemon_name}".into(), "smtpd".into()),
            ],
        },
        Command::Connect {
            host: "client.test".into(),
            family: b'4',
            port: 40000,
            address: "192.0.2.7".into(),
        },
        Command::Helo("client.test".into()),
        Command::Macros {
            of: b'M',
            pairs: vec![("{auth_authen}".into(), "alice".into())],
        },
        Command::Mail(vec!["<alice@example.test>".into(), "SIZE=100".into()]),
        Command::Rcpt(vec!["<bob@remote.test>".into()]),
        Command::Data,
        Command::Header("Subject".into(), " hello".into()),
        Command::EndOfHeaders,
        Command::Body(b"body\r\n".to_vec()),
        Command::EndOfMessage,
        Command::QuitNewConnection,
        Command::Connect {
            host: "unknown".into(),
            family: b'U',
            port: 0,
            address: String::new(),
        },
        Command::Abort,
        Command::Quit,
    ];
    (wire, want)
}

#[test]
fn a_session_is_read_whatever_the_cut() {
    let (wire, want) = session();
    for cut in 0..=wire.len() {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        d.push(&wire[..cut]);
        while let Some(c) = d.next_command() {
            got.push(c.unwrap());
        }
        d.push(&wire[cut..]);
        while let Some(c) = d.next_command() {
            got.push(c.unwrap());
        }
        assert_eq!(got, want, "cut {cut}");
    }
}

#[test]
fn what_is_not_the_protocol_is_an_error_once() {
    let cases: [(Vec<u8>, Error); 4] = [
        (vec![0, 0, 0, 0], Error::Empty),
        (
            ((MAX_PACKET + 1) as u32).to_be_bytes().to_vec(),
            Error::TooLarge(MAX_PACKET + 1),
        ),
        (packet(b'Z', b""), Error::UnknownCommand(b'Z')),
        (packet(b'O', b"\0\0\0\x06"), Error::Malformed(b'O')),
    ];
    for (wire, err) in cases {
        let mut d = Decoder::new();
        d.push(&wire);
        d.push(&packet(b'Q', b""));
        assert_eq!(d.next_command(), Some(Err(err)));
        assert_eq!(d.next_command(), None, "nothing after an error");
    }
    // a connect without its address, a header without its name
    for (cmd, data) in [(b'C', &b"host\x004\x00"[..]), (b'C', b"host"), (b'L', b"")] {
        let mut d = Decoder::new();
        d.push(&packet(cmd, data));
        assert_eq!(
            d.next_command(),
            Some(Err(Error::Malformed(cmd))),
            "{data:?}"
        );
    }
    // an HTTP request is not a milter
    let mut d = Decoder::new();
    d.push(b"GET / HTTP/1.0\r\n\r\n");
    assert!(matches!(d.next_command(), Some(Err(Error::TooLarge(_)))));
}

#[test]
fn responses_have_their_exact_bytes() {
    assert_eq!(Response::Continue.encode(), b"\0\0\0\x01c");
    assert_eq!(Response::Accept.encode(), b"\0\0\0\x01a");
    assert_eq!(Response::TempFail.encode(), b"\0\0\0\x01t");
    assert_eq!(
        Response::Negotiate {
            version: VERSION,
            actions: 0x45,
            steps: 0x10,
        }
        .encode(),
        b"\0\0\0\x0dO\0\0\0\x06\0\0\0\x45\0\0\0\x10"
    );
    assert_eq!(
        Response::ReplyCode("550 5.7.1 no".into()).encode(),
        b"\0\0\0\x0ey550 5.7.1 no\0"
    );
    assert_eq!(
        Response::AddHeader("X-A".into(), "b".into()).encode(),
        b"\0\0\0\x07hX-A\0b\0"
    );
    assert_eq!(
        Response::ChangeFrom("<prvs=1@x.test>".into(), Some("SIZE=5".into())).encode(),
        b"\0\0\0\x18e<prvs=1@x.test>\0SIZE=5\0"
    );
    assert_eq!(
        Response::DeleteRcpt("<a@b>".into()).encode(),
        b"\0\0\0\x07-<a@b>\0"
    );
    assert_eq!(
        Response::AddRcpt("<a@b>".into()).encode(),
        b"\0\0\0\x07+<a@b>\0"
    );
    // a NUL or a line end inside a string cannot end it early or split a reply
    assert_eq!(
        Response::Quarantine("a\0b\r\nc".into()).encode(),
        b"\0\0\0\x08qa b  c\0"
    );
}

mod session {
    use super::packet;
    use backstop_proto::milter::session::{Config, Output, Session};
    use backstop_proto::milter::{Response, actions};

    fn sent(out: &[Output]) -> Vec<u8> {
        out.iter()
            .flat_map(|o| match o {
                Output::Send(b) => b.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn cfg(keep: usize) -> Config {
        Config {
            actions: actions::ADD_HEADERS | actions::CHANGE_FROM | actions::QUARANTINE,
            keep,
        }
    }

    fn negotiate() -> Vec<u8> {
        offering(0x1fffff)
    }

    /// Negotiation from an MTA offering these steps.
    fn offering(steps: u32) -> Vec<u8> {
        let mut d = 6u32.to_be_bytes().to_vec();
        d.extend_from_slice(&0x1ffu32.to_be_bytes());
        d.extend_from_slice(&steps.to_be_bytes());
        packet(b'O', &d)
    }

    fn message(subject: &str) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend(packet(b'D', b"M{auth_authen}\0alice\0"));
        w.extend(packet(b'M', b"<alice@example.test>\0"));
        w.extend(packet(b'R', b"<bob@remote.test>\0"));
        w.extend(packet(b'R', b"<carol@remote.test>\0NOTIFY=NEVER\0"));
        w.extend(packet(b'T', b""));
        w.extend(packet(b'L', format!("Subject\0{subject}\0").as_bytes()));
        w.extend(packet(b'N', b""));
        w.extend(packet(b'B', b"0123456789"));
        w.extend(packet(b'E', b""));
        w
    }

    #[test]
    fn a_message_is_handed_over_at_its_end_and_the_answer_goes_back() {
        let mut s = Session::new(cfg(1000));
        let mut wire = negotiate();
        wire.extend(packet(b'D', b"Cj\0mx.example.test\0"));
        wire.extend(packet(b'C', b"client.test\x004\x9c\x40192.0.2.7\0"));
        wire.extend(packet(b'H', b"client.test\0"));
        wire.extend(message("hello"));
        let out = s.handle_input(&wire);
        // negotiation keeps only the actions both allow, and asks for no reply to any step
        // but the end of the message, and no DATA or unknown commands
        let want = Response::Negotiate {
            version: 6,
            actions: 0x61 & 0x1ff,
            steps: 0xff000 | 0x80 | 0x100 | 0x200,
        }
        .encode();
        assert_eq!(sent(&out), want);
        let Some(Output::EndOfMessage(m)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(m.client.address, "192.0.2.7");
        assert_eq!((m.client.family, m.client.port), (b'4', 40000));
        assert_eq!(m.helo, "client.test");
        assert_eq!(m.from, ["<alice@example.test>"]);
        assert_eq!(m.rcpts.len(), 2);
        assert_eq!(m.rcpts[1], ["<carol@remote.test>", "NOTIFY=NEVER"]);
        assert_eq!(m.macro_value("{auth_authen}"), Some("alice"));
        assert_eq!(m.macro_value("j"), Some("mx.example.test"));
        assert_eq!(m.head, b"Subject: hello\r\n\r\n0123456789");
        assert_eq!(m.size, 28);

        // nothing more is read until the answer, then the answer leaves in order
        assert!(s.handle_input(&packet(b'Q', b"")).is_empty());
        let answer = vec![
            Response::AddHeader("X-Backstop".into(), "yes".into()),
            Response::Continue,
        ];
        let out = s.resolve(answer.clone());
        let mut want: Vec<u8> = Vec::new();
        for r in &answer {
            want.extend(r.encode());
        }
        assert_eq!(out[0], Output::Send(want));
        assert_eq!(out[1], Output::Close(None));
        assert!(s.is_closed());
    }

    #[test]
    fn an_mta_that_expects_every_reply_gets_continue_to_every_step() {
        let mut s = Session::new(cfg(1000));
        let mut wire = offering(0);
        wire.extend(packet(b'C', b"client.test\x004\x9c\x40192.0.2.7\0"));
        wire.extend(packet(b'H', b"client.test\0"));
        wire.extend(message("hello"));
        let out = s.handle_input(&wire);
        let mut want = Response::Negotiate {
            version: 6,
            actions: 0x61,
            steps: 0,
        }
        .encode();
        // C, H, M, R, R, T, L, N, B
        for _ in 0..9 {
            want.extend(Response::Continue.encode());
        }
        assert_eq!(sent(&out), want);
        assert!(matches!(out.last(), Some(Output::EndOfMessage(_))));
    }

    #[test]
    fn the_next_message_starts_clean_and_keeps_the_connection_macros() {
        let mut s = Session::new(cfg(8));
        let mut wire = negotiate();
        wire.extend(packet(b'D', b"Cj\0mx.example.test\0"));
        wire.extend(packet(b'C', b"client.test\x004\x9c\x40192.0.2.7\0"));
        wire.extend(message("first"));
        s.handle_input(&wire);
        // only `keep` bytes are kept, all are counted
        s.resolve(vec![Response::Continue]);
        let mut second = packet(b'A', b"");
        second.extend(packet(b'M', b"<>\0"));
        second.extend(packet(b'R', b"<bob@example.test>\0"));
        second.extend(packet(b'E', b""));
        let out = s.handle_input(&second);
        let Some(Output::EndOfMessage(m)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(m.from, ["<>"]);
        assert_eq!(m.rcpts, [["<bob@example.test>"]]);
        assert_eq!(
            m.macro_value("{auth_authen}"),
            None,
            "that was the first message's"
        );
        assert_eq!(m.macro_value("j"), Some("mx.example.test"));
        assert_eq!(m.client.address, "192.0.2.7");
        assert!(m.head.is_empty());
        // a new connection on the same socket forgets the client
        s.resolve(vec![Response::Continue]);
        let mut third = packet(b'K', b"");
        third.extend(packet(b'M', b"<x@y.test>\0"));
        third.extend(packet(b'E', b""));
        let out = s.handle_input(&third);
        let Some(Output::EndOfMessage(m)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(m.client.address, "");
        assert_eq!(m.macro_value("j"), None);
    }

    #[test]
    fn the_head_is_bounded_and_bad_input_closes() {
        let mut s = Session::new(cfg(8));
        let mut wire = negotiate();
        wire.extend(message("a long subject"));
        let out = s.handle_input(&wire);
        let Some(Output::EndOfMessage(m)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(m.head, b"Subject:");
        assert_eq!(m.size, 37);
        s.resolve(vec![]);
        let out = s.handle_input(b"\0\0\0\x01Z");
        assert!(
            matches!(out.last(), Some(Output::Close(Some(_)))),
            "{out:?}"
        );
        assert!(s.handle_input(&packet(b'Q', b"")).is_empty());
        // an answer nobody asked for sends nothing
        assert!(s.resolve(vec![Response::Accept]).is_empty());
    }
}
