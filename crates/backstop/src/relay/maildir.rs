//! Local delivery into a Maildir (`DIR/tmp`, `DIR/new`, `DIR/cur`): one file per recipient,
//! written to `tmp`, fsync'd, renamed into `new`, and the directory fsync'd before success is
//! reported. Files use LF line ends, as mail readers expect of a Maildir.

use crate::content::Content;
use backstop_proto::address::{Mailbox, ReversePath};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// One delivery: who it is for and what to write.
pub struct Delivery<'a> {
    /// The envelope sender, written as `Return-Path:`.
    pub from: &'a ReversePath,
    /// The recipients; each gets a copy with its own `Delivered-To:`.
    pub rcpts: &'a [Mailbox],
    /// Header lines to put first (our `Received:`), CRLF line ends.
    pub trace: &'a [u8],
    /// The message as received, CRLF line ends (read a piece at a time).
    pub body: &'a Content,
    /// Unique part of the file names (the queue id).
    pub id: &'a str,
    /// Seconds since the epoch, first part of the file names.
    pub unix: u64,
    /// Our host name, last part of the file names.
    pub hostname: &'a str,
}

/// Writes one file per recipient into `dir/new`; returns their paths once all are durable.
pub fn deliver(dir: &Path, d: &Delivery<'_>) -> io::Result<Vec<PathBuf>> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let mut done = Vec::with_capacity(d.rcpts.len());
    for (i, rcpt) in d.rcpts.iter().enumerate() {
        let name = format!("{}.{}_{}.{}", d.unix, d.id, i, d.hostname);
        let tmp = dir.join("tmp").join(&name);
        let new = dir.join("new").join(&name);
        let result = write_one(&tmp, d, rcpt).and_then(|()| fs::rename(&tmp, &new));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            for p in &done {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        done.push(new);
    }
    File::open(dir.join("new"))?.sync_all()?;
    Ok(done)
}

fn write_one(path: &Path, d: &Delivery<'_>, rcpt: &Mailbox) -> io::Result<()> {
    let f = OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut out = BufWriter::new(f);
    write!(out, "Return-Path: {}\nDelivered-To: {}\n", d.from, rcpt)?;
    let mut lf = ToLf::default();
    lf.write(d.trace, &mut out)?;
    let mut reader = d.body.reader();
    let mut buf = vec![0u8; crate::content::PIECE];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lf.write(&buf[..n], &mut out)?;
    }
    lf.finish(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// CRLF to LF, for text given piece by piece (a CR at the end of a piece waits for the next).
#[derive(Default)]
struct ToLf {
    cr: bool,
}

impl ToLf {
    fn write(&mut self, src: &[u8], out: &mut impl Write) -> io::Result<()> {
        let mut from = 0;
        if self.cr {
            self.cr = false;
            if src.first() != Some(&b'\n') {
                out.write_all(b"\r")?;
            }
        }
        for (i, &b) in src.iter().enumerate() {
            if b == b'\r' && src.get(i + 1) == Some(&b'\n') {
                out.write_all(&src[from..i])?;
                from = i + 1;
            } else if b == b'\r' && i + 1 == src.len() {
                out.write_all(&src[from..i])?;
                self.cr = true;
                return Ok(());
            }
        }
        out.write_all(&src[from..])
    }

    fn finish(self, out: &mut impl Write) -> io::Result<()> {
        match self.cr {
            true => out.write_all(b"\r"),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_durable_file_per_recipient_in_new() {
        let dir = tempfile::tempdir().unwrap();
        let rcpts = [
            Mailbox::parse("alice@example.test", false).unwrap(),
            Mailbox::parse("bob@example.test", false).unwrap(),
        ];
        let from = ReversePath::Null;
        let d = Delivery {
            from: &from,
            rcpts: &rcpts,
            trace: b"Received: from x\r\n",
            body: &Content::of(vec![b"Subject: hi\r\n\r\nbody\r\n".to_vec()]),
            id: "ABC",
            unix: 1_800_000_000,
            hostname: "mx.example.test",
        };
        let files = deliver(dir.path(), &d).unwrap();
        assert_eq!(files.len(), 2);
        let a = fs::read_to_string(&files[0]).unwrap();
        assert_eq!(
            a,
            "Return-Path: <>\nDelivered-To: alice@example.test\nReceived: from x\nSubject: hi\n\nbody\n"
        );
        assert!(files[1].ends_with("new/1800000000.ABC_1.mx.example.test"));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn crlf_becomes_lf_wherever_the_pieces_are_cut() {
        let text = b"a\r\nb\rc\r\n\r\nd\r".as_slice();
        for cut in 0..=text.len() {
            let mut out = Vec::new();
            let mut lf = ToLf::default();
            lf.write(&text[..cut], &mut out).unwrap();
            lf.write(&text[cut..], &mut out).unwrap();
            lf.finish(&mut out).unwrap();
            assert_eq!(out, b"a\nb\rc\n\nd\r", "cut at {cut}");
        }
    }
}
