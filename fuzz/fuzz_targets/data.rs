//! `DataReceiver` (end of DATA, dot-unstuffing, bare CR/LF, size limit) and `stuff`.
//!
//! Checks, for arbitrary input and an arbitrary split of it into chunks, with a small limit:
//! - `feed` never reports more bytes consumed than it was given;
//! - feeding in chunks gives the same `Received` and the same consumed total as one `feed`;
//! - the result agrees with a simple reference model written from RFC 5321 §4.5.2 (the end is
//!   the first `.CRLF` at the start of the data or right after a CRLF; a leading dot is removed
//!   from every other line; a CR not before LF, or a LF not after CR, sets the bare flags);
//! - `stuff(body)` read back by a receiver gives `body` (plus the CRLF `stuff` appends when
//!   `body` does not end in one), all of the stuffed bytes consumed, no bare flags, and the
//!   size limit applied as documented;
//! - a spilling receiver (keeping `keep` bytes) fed the same chunks keeps at most `keep`, and
//!   what it kept followed by the pieces it handed out is the whole message, `spilled` counting
//!   the pieces.

#![no_main]

use arbitrary::Arbitrary;
use backstop_proto::smtp::data::{DataReceiver, Received, stuff};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Size limit of the receiver; kept small so `too_big` is reached.
    limit: u8,
    /// Bytes a spilling receiver keeps.
    keep: u8,
    /// Chunk lengths for the split feed; the rest goes in one last chunk.
    chunks: Vec<u8>,
    /// A message body for the `stuff` round trip (bare CR/LF are normalised to CRLF).
    body: Vec<u8>,
    /// Bytes on the wire after DATA's 354.
    input: Vec<u8>,
}

fuzz_target!(|inp: Input| {
    let limit = u64::from(inp.limit);
    let input = &inp.input[..];

    // one piece
    let mut rx = DataReceiver::new(limit);
    let (whole_n, whole) = rx.feed(input);
    assert!(
        whole_n <= input.len(),
        "consumed {whole_n} of {}",
        input.len()
    );
    if whole.is_none() {
        assert_eq!(whole_n, input.len(), "stopped early without a message");
    }
    check_received(&whole, limit);
    let (ref_n, ref_result) = reference(input, limit);
    assert_eq!(whole, ref_result, "result vs reference model");
    assert_eq!(whole_n, ref_n, "consumed count vs reference model");

    // in chunks
    let (chunk_n, chunked) = feed_in_chunks(input, &inp.chunks, limit);
    assert_eq!(chunked, whole, "chunked vs whole result");
    assert_eq!(chunk_n, whole_n, "chunked vs whole consumed total");
    check_spilling(input, &inp.chunks, limit, u64::from(inp.keep), &whole);

    // stuff round trip
    let body = normalise(&inp.body);
    let mut expect = body.clone();
    if !expect.is_empty() && !expect.ends_with(b"\r\n") {
        expect.extend_from_slice(b"\r\n"); // what stuff() appends
    }
    let mut wire = Vec::new();
    stuff(&body, &mut wire);
    assert!(wire.ends_with(b".\r\n"));

    let (n, got) = DataReceiver::new(u64::MAX).feed(&wire);
    assert_eq!(
        n,
        wire.len(),
        "stuffed message not consumed exactly: {wire:?}"
    );
    let got = got.expect("stuffed message did not end");
    assert_eq!(got.body, expect, "round trip of {body:?} via {wire:?}");
    assert_eq!(got.size, expect.len() as u64);
    assert!(!got.bare_cr && !got.bare_lf && !got.too_big, "{got:?}");

    // again with the small limit and the arbitrary chunks
    let (n, got) = feed_in_chunks(&wire, &inp.chunks, limit);
    assert_eq!(n, wire.len());
    let got = got.expect("stuffed message did not end (chunked)");
    assert_eq!(got.size, expect.len() as u64);
    assert_eq!(got.too_big, got.size > limit);
    assert_eq!(got.body, if got.too_big { Vec::new() } else { expect });
    assert!(!got.bare_cr && !got.bare_lf, "{got:?}");
});

/// Feeds `input` in pieces of the given lengths (then the rest) until a message ends. Pieces
/// may be empty (a zero length, or lengths left over after the input ran out).
fn feed_in_chunks(input: &[u8], chunks: &[u8], limit: u64) -> (usize, Option<Received>) {
    let mut rx = DataReceiver::new(limit);
    let mut rest = input;
    let mut total = 0;
    let lens = chunks.iter().map(|&c| usize::from(c));
    for len in lens.chain(std::iter::once(usize::MAX)) {
        let piece = &rest[..len.min(rest.len())];
        let size_before = rx.size();
        let (n, r) = rx.feed(piece);
        assert!(
            n <= piece.len(),
            "consumed {n} of a {}-byte chunk",
            piece.len()
        );
        assert!(rx.size() >= size_before, "size went down");
        total += n;
        rest = &rest[n..];
        if r.is_some() {
            return (total, r);
        }
        assert_eq!(
            n,
            piece.len(),
            "stopped early within a chunk without a message"
        );
    }
    (total, None)
}

/// The same chunks through a receiver keeping `keep` bytes, its spill taken after each feed.
fn check_spilling(input: &[u8], chunks: &[u8], limit: u64, keep: u64, whole: &Option<Received>) {
    let mut rx = DataReceiver::spilling(limit, keep);
    let mut rest = input;
    let mut spill = Vec::new();
    let lens = chunks.iter().map(|&c| usize::from(c));
    for len in lens.chain(std::iter::once(usize::MAX)) {
        let (n, r) = rx.feed(&rest[..len.min(rest.len())]);
        rest = &rest[n..];
        spill.extend(rx.take_spill());
        let Some(r) = r else { continue };
        let whole = whole.as_ref().expect("ended only when spilling");
        assert_eq!(r.spilled, spill.len() as u64, "spilled count");
        assert!(
            r.body.len() as u64 <= keep,
            "kept {} of {keep}",
            r.body.len()
        );
        assert_eq!((r.size, r.too_big), (whole.size, whole.too_big));
        if !r.too_big {
            let mut all = r.body.clone();
            all.extend(&spill);
            assert_eq!(all, whole.body, "kept + spilled vs whole");
        }
        return;
    }
    assert!(whole.is_none(), "ended only when not spilling");
}

fn check_received(r: &Option<Received>, limit: u64) {
    if let Some(r) = r {
        assert_eq!(r.too_big, r.size > limit, "{r:?}");
        if r.too_big {
            assert!(r.body.is_empty());
        } else {
            assert_eq!(r.body.len() as u64, r.size, "{r:?}");
        }
    }
}

/// The expected consumed count and result, computed on the whole input at once.
fn reference(input: &[u8], limit: u64) -> (usize, Option<Received>) {
    // the end marker: ".\r\n" at offset 0, or right after "\r\n"
    let end = (0..input.len())
        .find(|&p| input[p..].starts_with(b".\r\n") && (p == 0 || input[..p].ends_with(b"\r\n")));
    let Some(p) = end else {
        return (input.len(), None);
    };
    let msg = &input[..p];
    let mut body = Vec::new();
    let mut line_start = true;
    for (i, &b) in msg.iter().enumerate() {
        if !(line_start && b == b'.') {
            body.push(b);
        }
        line_start = b == b'\n' && i > 0 && msg[i - 1] == b'\r';
    }
    let bare_lf = msg
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || msg[i - 1] != b'\r'));
    let bare_cr = msg
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && msg.get(i + 1) != Some(&b'\n'));
    let nul = msg.contains(&0);
    let size = body.len() as u64;
    let too_big = size > limit;
    let received = Received {
        body: if too_big { Vec::new() } else { body },
        spilled: 0,
        size,
        bare_lf,
        bare_cr,
        nul,
        too_big,
    };
    (p + 3, Some(received))
}

/// Turns every bare CR and bare LF into CRLF, so the body has CRLF line ends only.
fn normalise(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 8);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}
