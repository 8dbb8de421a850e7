//! Local delivery into a Maildir (`DIR/tmp`, `DIR/new`, `DIR/cur`): one file per recipient,
//! written to `tmp`, fsync'd, renamed into `new`, and the directory fsync'd before success is
//! reported. Files use LF line ends, as mail readers expect of a Maildir.

use backstop_proto::address::{Mailbox, ReversePath};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One delivery: who it is for and what to write.
pub struct Delivery<'a> {
    /// The envelope sender, written as `Return-Path:`.
    pub from: &'a ReversePath,
    /// The recipients; each gets a copy with its own `Delivered-To:`.
    pub rcpts: &'a [Mailbox],
    /// Header lines to put first (our `Received:`), CRLF line ends.
    pub trace: &'a [u8],
    /// The message as received, CRLF line ends.
    pub body: &'a [u8],
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
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut buf = Vec::with_capacity(d.trace.len() + d.body.len() + 128);
    buf.extend_from_slice(format!("Return-Path: {}\nDelivered-To: {}\n", d.from, rcpt).as_bytes());
    to_lf(d.trace, &mut buf);
    to_lf(d.body, &mut buf);
    f.write_all(&buf)?;
    f.sync_all()
}

fn to_lf(src: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < src.len() {
        if src[i] == b'\r' && src.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(src[i]);
        i += 1;
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
            body: b"Subject: hi\r\n\r\nbody\r\n",
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
}
