//! A message's bytes, without holding a large one whole: some parts in memory (our trace
//! header, the first part of the body), then the rest in a file (the body of a large message as
//! it arrived, spilled to `state_dir`, or a queued message in its spool segment), read a piece
//! at a time.
//!
//! Responsible for: the spill file a session writes a large message's body to (with its length
//! and CRC-32 kept as it grows, so the spool can frame it without reading it again), and reading
//! a message piece by piece, blocking (`Read`) or async (`pieces`). Not responsible for: where
//! the bytes go (the queue, the relay, the Maildir writer take them from here).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How much of a message is read (or sent) at a time.
pub const PIECE: usize = 256 * 1024;

/// Bytes of a file, from `offset`, `len` long.
#[derive(Clone, Debug)]
pub struct FileRange {
    /// The file (kept open: it may be unlinked already).
    pub file: Arc<File>,
    /// Where the bytes start.
    pub offset: u64,
    /// How many.
    pub len: u64,
}

impl FileRange {
    /// Reads at most `max` bytes at `at` (relative to the range); fewer only at its end.
    pub fn read(&self, at: u64, max: usize) -> io::Result<Vec<u8>> {
        let n = (self.len.saturating_sub(at)).min(max as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, self.offset + at)?;
        Ok(buf)
    }
}

/// A message: parts in memory, then maybe the rest in a file.
#[derive(Clone, Debug, Default)]
pub struct Content {
    /// In memory, in order (our trace header, the first part of the body, ...).
    pub parts: Vec<Arc<Vec<u8>>>,
    /// The rest, in a file.
    pub rest: Option<FileRange>,
}

impl Content {
    /// A message held in memory.
    pub fn of(parts: Vec<Vec<u8>>) -> Content {
        Content {
            parts: parts.into_iter().map(Arc::new).collect(),
            rest: None,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum::<u64>()
            + self.rest.as_ref().map_or(0, |r| r.len)
    }

    /// True when it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same message with `part` first (a header added in front).
    pub fn with_first(&self, part: Vec<u8>) -> Content {
        let mut parts = vec![Arc::new(part)];
        parts.extend(self.parts.iter().cloned());
        Content {
            parts,
            rest: self.rest.clone(),
        }
    }

    /// Reads it from the start, blocking (for a thread of the blocking pool).
    pub fn reader(&self) -> ContentReader {
        ContentReader {
            content: self.clone(),
            part: 0,
            at: 0,
        }
    }

    /// The next piece after `pos` (a position in the whole message), at most [`PIECE`]
    /// bytes; empty at the end. File reads run on the blocking pool.
    pub async fn piece(&self, pos: u64) -> io::Result<Vec<u8>> {
        let mut start = 0u64;
        for p in &self.parts {
            let end = start + p.len() as u64;
            if pos < end {
                let from = (pos - start) as usize;
                let to = (from + PIECE).min(p.len());
                return Ok(p[from..to].to_vec());
            }
            start = end;
        }
        let Some(rest) = self.rest.clone() else {
            return Ok(Vec::new());
        };
        let at = pos - start;
        tokio::task::spawn_blocking(move || rest.read(at, PIECE))
            .await
            .map_err(io::Error::other)?
    }

    /// All of it in one buffer (for what needs it whole; a large message costs its size).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.reader().read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Reads a [`Content`] from the start.
pub struct ContentReader {
    content: Content,
    part: usize,
    at: u64,
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(p) = self.content.parts.get(self.part) {
            let from = self.at as usize;
            if from < p.len() {
                let n = buf.len().min(p.len() - from);
                buf[..n].copy_from_slice(&p[from..from + n]);
                self.at += n as u64;
                return Ok(n);
            }
            self.part += 1;
            self.at = 0;
        }
        let Some(rest) = &self.content.rest else {
            return Ok(0);
        };
        let n = (rest.len.saturating_sub(self.at)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        rest.file
            .read_exact_at(&mut buf[..n], rest.offset + self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The body of a large message beyond what a session keeps in memory, as it arrives: a file in
/// `dir` (unlinked at once: it disappears with its last handle, even after a crash), its length
/// and CRC-32 kept as it grows.
pub struct Spill {
    file: File,
    len: u64,
    crc: crc32fast::Hasher,
}

impl Spill {
    /// A new, empty spill file in `dir` (created when missing).
    pub fn create(dir: &Path) -> io::Result<Spill> {
        std::fs::create_dir_all(dir)?;
        let path: PathBuf = dir.join(format!(
            "spill.{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(Spill {
            file,
            len: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Appends a piece.
    pub fn write(&mut self, piece: &[u8]) -> io::Result<()> {
        self.file.write_all(piece)?;
        self.crc.update(piece);
        self.len += piece.len() as u64;
        Ok(())
    }

    /// Bytes written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written, to read back, and their CRC-32 (to combine into a frame's).
    pub fn finish(self) -> (FileRange, crc32fast::Hasher) {
        let range = FileRange {
            file: Arc::new(self.file),
            offset: 0,
            len: self.len,
        };
        (range, self.crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &Path) -> Content {
        let mut s = Spill::create(dir).unwrap();
        s.write(b"3333").unwrap();
        s.write(b"44").unwrap();
        let (rest, crc) = s.finish();
        assert_eq!(crc.finalize(), crc32fast::hash(b"333344"));
        Content {
            parts: vec![Arc::new(b"1".to_vec()), Arc::new(b"22".to_vec())],
            rest: Some(rest),
        }
    }

    #[test]
    fn a_message_reads_the_same_whole_in_pieces_and_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let c = content(dir.path());
        assert_eq!(c.len(), 9);
        assert_eq!(c.to_vec().unwrap(), b"122333344");
        let mut small = [0u8; 2];
        let mut r = c.reader();
        let mut got = Vec::new();
        loop {
            let n = r.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"122333344");
        assert_eq!(c.with_first(b"0".to_vec()).to_vec().unwrap(), b"0122333344");
        // the spill file is gone from the directory already
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn pieces_walk_the_parts_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = content(dir.path());
        let mut pos = 0;
        let mut got = Vec::new();
        loop {
            let p = c.piece(pos).await.unwrap();
            if p.is_empty() {
                break;
            }
            pos += p.len() as u64;
            got.push(p);
        }
        assert_eq!(got, vec![b"1".to_vec(), b"22".to_vec(), b"333344".to_vec()]);
    }
}
