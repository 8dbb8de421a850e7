//! `milter::Decoder` (an MTA's milter packets) and `milter::Response::encode`.
//!
//! Checks, for arbitrary input and an arbitrary split of it into chunks:
//! - the decoder never panics, and decoding in chunks gives the same commands (and the same
//!   error) as decoding the input in one push; nothing follows an error;
//! - every response encodes to a packet whose length field counts the rest of it, whose
//!   strings hold no line end and exactly the NULs that end them;
//! - a `Session` fed the same chunks (each end of message answered at once) never panics,
//!   keeps at most `keep` bytes of a message, hands over one message at a time, and after
//!   closing outputs nothing.

#![no_main]

use arbitrary::Arbitrary;
use backstop_proto::milter::session::{Config, Output, Session};
use backstop_proto::milter::{Command, Decoder, Error, Response};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    chunks: Vec<u16>,
    input: Vec<u8>,
    a: String,
    b: String,
}

fn drain(d: &mut Decoder, out: &mut Vec<Result<Command, Error>>) {
    while let Some(next) = d.next_command() {
        let failed = next.is_err();
        out.push(next);
        if failed {
            assert!(d.next_command().is_none(), "nothing after an error");
            return;
        }
    }
}

fuzz_target!(|inp: Input| {
    let mut whole = Decoder::new();
    whole.push(&inp.input);
    let mut one = Vec::new();
    drain(&mut whole, &mut one);

    let mut split = Decoder::new();
    let (mut rest, mut pieces) = (&inp.input[..], Vec::new());
    for c in &inp.chunks {
        let n = usize::from(*c).min(rest.len());
        split.push(&rest[..n]);
        drain(&mut split, &mut pieces);
        rest = &rest[n..];
    }
    split.push(rest);
    drain(&mut split, &mut pieces);
    assert_eq!(one, pieces);

    let mut session = Session::new(Config {
        actions: 0x7f,
        keep: 64,
    });
    let mut closed = false;
    let mut feed = |bytes: &[u8], s: &mut Session| {
        let mut out: std::collections::VecDeque<Output> = s.handle_input(bytes).into();
        while let Some(o) = out.pop_front() {
            assert!(!closed, "output after the close: {o:?}");
            match o {
                Output::EndOfMessage(m) => {
                    assert!(m.head.len() <= 64);
                    assert!(m.size >= m.head.len() as u64);
                    assert!(out.iter().all(|o| !matches!(o, Output::EndOfMessage(_))));
                    out.extend(s.resolve(vec![Response::Continue]));
                }
                Output::Close(_) => closed = true,
                Output::Send(_) => {}
            }
        }
    };
    let mut rest = &inp.input[..];
    for c in &inp.chunks {
        let n = usize::from(*c).min(rest.len());
        feed(&rest[..n], &mut session);
        rest = &rest[n..];
    }
    feed(rest, &mut session);

    let (a, b) = (inp.a, inp.b);
    let strings = [
        (Response::ReplyCode(a.clone()), 1),
        (Response::AddHeader(a.clone(), b.clone()), 2),
        (Response::AddRcpt(a.clone()), 1),
        (Response::DeleteRcpt(a.clone()), 1),
        (Response::ChangeFrom(a.clone(), Some(b.clone())), 2),
        (Response::ChangeFrom(a.clone(), None), 1),
        (Response::Quarantine(b), 1),
    ];
    for (r, nuls) in strings {
        let p = r.encode();
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        assert_eq!(len, p.len() - 4);
        let data = &p[5..];
        assert_eq!(data.iter().filter(|&&c| c == 0).count(), nuls, "{r:?}");
        assert!(data.ends_with(b"\0"));
        assert!(!data.contains(&b'\r') && !data.contains(&b'\n'));
    }
});
