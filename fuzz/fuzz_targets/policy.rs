//! `policy::Reader` (Postfix's policy delegation requests) and `policy::answer`.
//!
//! Checks, for arbitrary input and an arbitrary split of it into chunks:
//! - the reader never panics, and reading in chunks gives the same requests (and the same
//!   error) as reading the input in one push;
//! - after an error it yields nothing more;
//! - every request's attribute names are non-empty and hold no `=`, and no name or value holds
//!   a line end;
//! - a request written back as `name=value` lines reads back as itself;
//! - `answer` of any text is one `action=` line and the empty line.

#![no_main]

use arbitrary::Arbitrary;
use backstop_proto::policy::{Error, Reader, Request, answer};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    chunks: Vec<u16>,
    input: Vec<u8>,
    text: String,
}

fn drain(r: &mut Reader, out: &mut Vec<Result<Request, Error>>) {
    while let Some(next) = r.next_request() {
        let failed = next.is_err();
        out.push(next);
        if failed {
            assert!(r.next_request().is_none(), "nothing after an error");
            return;
        }
    }
}

fuzz_target!(|inp: Input| {
    let mut whole = Reader::new();
    whole.push(&inp.input);
    let mut one = Vec::new();
    drain(&mut whole, &mut one);

    let mut split = Reader::new();
    let (mut rest, mut pieces) = (&inp.input[..], Vec::new());
    for c in &inp.chunks {
        let n = usize::from(*c).min(rest.len());
        split.push(&rest[..n]);
        drain(&mut split, &mut pieces);
        rest = &rest[n..];
    }
    split.push(rest);
    drain(&mut split, &mut pieces);
    // an error in the one-push reading ends it; the chunked one ends at the same point
    assert_eq!(one, pieces);

    for req in one.iter().filter_map(|r| r.as_ref().ok()) {
        let mut text = Vec::new();
        for (name, value) in req.attrs() {
            assert!(!name.is_empty() && !name.contains('='));
            assert!(!name.contains(['\n']) && !value.contains(['\n']));
            // CRLF: the reader takes one CR off a line end, a value may end in CRs of its own
            text.extend_from_slice(format!("{name}={value}\r\n").as_bytes());
        }
        text.push(b'\n');
        let mut again = Reader::new();
        again.push(&text);
        if text.len() <= backstop_proto::policy::MAX_REQUEST {
            assert_eq!(again.next_request(), Some(Ok(req.clone())));
        }
    }

    let a = answer(&inp.text);
    assert!(a.starts_with(b"action=") && a.ends_with(b"\n\n"));
    assert_eq!(a.iter().filter(|&&b| b == b'\n').count(), 2);
    assert!(!a.contains(&b'\r'));
});
