//! The DATA receiver: finds the end of a message and removes dot-stuffing (RFC 5321 §4.5.2).
//!
//! Responsible for: ending a message only on `CRLF.CRLF` (the very first line counts as
//! following a CRLF), un-stuffing leading dots, spotting bare CR and bare LF (never treating them
//! as line ends, which is what SMTP smuggling abuses) and NUL bytes (not allowed in a message, RFC
//! 5322 §2.3, and a server downstream that stops at one may see another end of data), and
//! counting bytes against a size limit
//! while keeping at most that many bytes; beyond a first part kept whole, the bytes are handed
//! out in pieces ([`DataReceiver::take_spill`]) for the driver to store elsewhere.
//! Not responsible for: what happens to the message or which reply is sent (the session).

/// Where the receiver is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    /// Right after CRLF (or at the start of the data).
    LineStart,
    /// A `.` seen at the start of a line.
    Dot,
    /// `.` then CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR seen inside a line.
    Cr,
}

/// The finished message, once `CRLF.CRLF` arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The message, un-stuffed, with CRLF line ends; empty when `too_big`. Only its first
    /// part when the rest was spilled (see `spilled`).
    pub body: Vec<u8>,
    /// Bytes after `body` (past the kept part): handed out by [`DataReceiver::take_spill`],
    /// the last of them still to be taken when this is returned.
    pub spilled: u64,
    /// Size of the un-stuffed message in bytes (counted even past the limit).
    pub size: u64,
    /// A LF not preceded by CR appeared.
    pub bare_lf: bool,
    /// A CR not followed by LF appeared.
    pub bare_cr: bool,
    /// A NUL byte appeared.
    pub nul: bool,
    /// `size` is over the limit.
    pub too_big: bool,
}

/// Incremental receiver for one message.
#[derive(Debug)]
pub struct DataReceiver {
    pos: Pos,
    body: Vec<u8>,
    /// Bytes past `keep`, not taken yet.
    spill: Vec<u8>,
    spilled: u64,
    size: u64,
    limit: u64,
    keep: u64,
    bare_lf: bool,
    bare_cr: bool,
    nul: bool,
}

impl DataReceiver {
    /// A receiver that keeps at most `limit` bytes of message.
    pub fn new(limit: u64) -> DataReceiver {
        DataReceiver::spilling(limit, u64::MAX)
    }

    /// A receiver for messages of at most `limit` bytes that keeps the first `keep` in its
    /// body and hands the rest out through [`DataReceiver::take_spill`].
    pub fn spilling(limit: u64, keep: u64) -> DataReceiver {
        DataReceiver {
            pos: Pos::LineStart,
            body: Vec::new(),
            spill: Vec::new(),
            spilled: 0,
            size: 0,
            limit,
            keep,
            bare_lf: false,
            bare_cr: false,
            nul: false,
        }
    }

    /// Bytes past the kept part waiting to be taken.
    pub fn spill_len(&self) -> usize {
        self.spill.len()
    }

    /// Takes the bytes past the kept part that arrived since the last call.
    pub fn take_spill(&mut self) -> Vec<u8> {
        self.spilled += self.spill.len() as u64;
        std::mem::take(&mut self.spill)
    }

    /// Consumes bytes up to and including the end marker. Returns how many bytes of `input`
    /// were used and the message when it ended; bytes after the marker are left to the caller.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Received>) {
        for (i, &b) in input.iter().enumerate() {
            if self.step(b) {
                return (i + 1, Some(self.finish()));
            }
        }
        (input.len(), None)
    }

    /// Bytes counted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Handles one byte; true when it completed `CRLF.CRLF`.
    fn step(&mut self, b: u8) -> bool {
        match (self.pos, b) {
            (Pos::LineStart, b'.') => self.pos = Pos::Dot,
            (Pos::Dot, b'\r') => self.pos = Pos::DotCr,
            (Pos::DotCr, b'\n') => return true,
            (Pos::DotCr, _) => {
                // ".\r" then something else: the CR is bare; the dot was a stuffing dot
                self.bare_cr = true;
                self.emit(b'\r');
                self.pos = Pos::Mid;
                return self.step(b);
            }
            (Pos::Dot, _) => {
                // a stuffed dot: drop it, then treat the byte as the line's first
                self.pos = Pos::Mid;
                return self.step_mid(b);
            }
            (Pos::Cr, b'\n') => {
                self.emit(b'\n');
                self.pos = Pos::LineStart;
            }
            (Pos::Cr, _) => {
                self.bare_cr = true;
                self.pos = Pos::Mid;
                return self.step_mid(b);
            }
            (Pos::LineStart | Pos::Mid, _) => return self.step_mid(b),
        }
        false
    }

    fn step_mid(&mut self, b: u8) -> bool {
        match b {
            b'\r' => self.pos = Pos::Cr,
            b'\n' => {
                self.bare_lf = true;
                self.pos = Pos::Mid;
            }
            0 => {
                self.nul = true;
                self.pos = Pos::Mid;
            }
            _ => self.pos = Pos::Mid,
        }
        self.emit(b);
        false
    }

    fn emit(&mut self, b: u8) {
        self.size += 1;
        match self.size {
            n if n > self.limit => {}
            n if n <= self.keep => self.body.push(b),
            _ => self.spill.push(b),
        }
    }

    fn finish(&mut self) -> Received {
        let too_big = self.size > self.limit;
        Received {
            body: if too_big {
                Vec::new()
            } else {
                std::mem::take(&mut self.body)
            },
            spilled: self.spilled + self.spill.len() as u64,
            size: self.size,
            bare_lf: self.bare_lf,
            bare_cr: self.bare_cr,
            nul: self.nul,
            too_big,
        }
    }
}

/// Dot-stuffs a message for sending and appends the end marker: every line that starts with
/// `.` gets one more, and a message not ending in CRLF gets one. Used by the client.
pub fn stuff(body: &[u8], out: &mut Vec<u8>) {
    stuff_parts(&[body], out);
}

/// [`stuff`] for a message given in consecutive parts (a trace header, then the body), so the
/// parts need not be copied into one buffer first.
pub fn stuff_parts(parts: &[&[u8]], out: &mut Vec<u8>) {
    out.reserve(parts.iter().map(|p| p.len()).sum::<usize>() + 8);
    let mut s = Stuffer::default();
    for p in parts {
        s.push(p, out);
    }
    s.finish(out);
}

/// Dot-stuffing for a message given piece by piece, as it is read (from a file, a spool): the
/// same output as [`stuff_parts`] over all the pieces, without holding them together.
#[derive(Clone, Copy, Debug)]
pub struct Stuffer {
    at_line_start: bool,
    last: [u8; 2],
    empty: bool,
}

impl Default for Stuffer {
    fn default() -> Stuffer {
        Stuffer {
            at_line_start: true,
            last: [0; 2],
            empty: true,
        }
    }
}

impl Stuffer {
    /// Appends `piece`, stuffed, to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let mut from = 0;
        for (i, &b) in piece.iter().enumerate() {
            if self.at_line_start && b == b'.' {
                // copy what came before in one piece, then the extra dot
                out.extend_from_slice(&piece[from..i]);
                out.push(b'.');
                from = i;
            }
            self.at_line_start = b == b'\n';
        }
        out.extend_from_slice(&piece[from..]);
        match piece {
            [] => {}
            [b] => self.last = [self.last[1], *b],
            [.., a, b] => self.last = [*a, *b],
        }
        self.empty &= piece.is_empty();
    }

    /// Ends the message: a CRLF if it did not end with one, then `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.empty && self.last != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_in_pieces_is_stuffing_at_once() {
        let msg = b".first\r\nline\r\n..two\r\n.\r\nend\r\nno crlf.".as_slice();
        let mut whole = Vec::new();
        stuff(msg, &mut whole);
        for cut in 0..msg.len() {
            for cut2 in cut..msg.len() {
                let mut out = Vec::new();
                let mut s = Stuffer::default();
                for piece in [&msg[..cut], &msg[cut..cut2], &msg[cut2..]] {
                    s.push(piece, &mut out);
                }
                s.finish(&mut out);
                assert_eq!(out, whole, "cut at {cut} and {cut2}");
            }
        }
        let mut empty = Vec::new();
        Stuffer::default().finish(&mut empty);
        assert_eq!(empty, b".\r\n");
    }

    fn recv(input: &[u8]) -> (usize, Option<Received>) {
        DataReceiver::new(1 << 20).feed(input)
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf() {
        let (n, r) = recv(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n");
        let r = r.unwrap();
        assert_eq!(r.body, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(n, b"Subject: x\r\n\r\nhi\r\n.\r\n".len());
        assert!(!r.bare_lf && !r.bare_cr && !r.too_big);
    }

    #[test]
    fn empty_message() {
        let (n, r) = recv(b".\r\n");
        assert_eq!(n, 3);
        assert_eq!(r.unwrap().body, b"");
    }

    #[test]
    fn unstuffs_leading_dots() {
        let (_, r) = recv(b"..hidden\r\n...\r\n.\r\n");
        assert_eq!(r.unwrap().body, b".hidden\r\n..\r\n");
    }

    #[test]
    fn smuggling_sequences_are_not_ends() {
        for evil in [
            &b"a\n.\nMAIL FROM:<x@y.test>\r\n"[..],
            b"a\r\n.\nRCPT\r\n",
            b"a\n.\r\nX\r\n",
            b"a\r.\r\nX\r\n",
        ] {
            let (n, r) = recv(evil);
            assert_eq!(n, evil.len(), "{evil:?}");
            assert!(r.is_none(), "{evil:?} ended the data");
        }
        let mut d = DataReceiver::new(1 << 20);
        d.feed(b"a\n.\nMAIL FROM:<x@y.test>\r\n");
        let (_, r) = d.feed(b".\r\n");
        let r = r.unwrap();
        assert!(r.bare_lf);
        let mut d = DataReceiver::new(1 << 20);
        let (_, r) = d.feed(b"a\rb\r\n.\r\n");
        assert!(r.unwrap().bare_cr);
        let mut d = DataReceiver::new(1 << 20);
        let (_, r) = d.feed(b".\rX\r\n.\r\n");
        assert!(r.unwrap().bare_cr);
    }

    #[test]
    fn split_anywhere_gives_same_result() {
        let msg = b"Subject: s\r\n\r\n..a\r\nb\r\n.\r\n";
        let whole = recv(msg).1.unwrap();
        for cut in 0..msg.len() {
            let mut d = DataReceiver::new(1 << 20);
            let (n1, r1) = d.feed(&msg[..cut]);
            assert_eq!((n1, r1), (cut, None));
            let (_, r2) = d.feed(&msg[cut..]);
            assert_eq!(r2.unwrap(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn size_limit_counts_but_does_not_keep() {
        let mut d = DataReceiver::new(4);
        let (_, r) = d.feed(b"0123456789\r\n.\r\n");
        let r = r.unwrap();
        assert!(r.too_big);
        assert_eq!(r.size, 12);
        assert!(r.body.is_empty());
    }

    #[test]
    fn stuff_round_trips() {
        let body = b".a\r\nb\r\n..\r\n";
        let mut wire = Vec::new();
        stuff(body, &mut wire);
        assert_eq!(wire, b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(recv(&wire).1.unwrap().body, body);
        let mut wire = Vec::new();
        stuff(b"no newline", &mut wire);
        assert_eq!(wire, b"no newline\r\n.\r\n");
        let mut parts = Vec::new();
        stuff_parts(&[b"Received: x\r\n", b".a\r\nb\r\n..\r\n"], &mut parts);
        let mut whole = Vec::new();
        stuff(b"Received: x\r\n.a\r\nb\r\n..\r\n", &mut whole);
        assert_eq!(parts, whole, "a part boundary changes nothing");
        let mut cr = Vec::new();
        stuff_parts(&[b"x\r", b"\n"], &mut cr);
        assert_eq!(cr, b"x\r\n.\r\n");
    }
}
