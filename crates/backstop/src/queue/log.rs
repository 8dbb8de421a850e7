//! The spool's on-disk form: append-only segment files of checksummed frames, written by one
//! thread that makes each batch durable with a single `fdatasync` (group commit).
//!
//! Responsible for: the frame format, appending batches (and cutting a failed batch off again so
//! no partial frame stays behind), rotating and removing segment files, and reading segments
//! back at start-up up to the first damaged frame.
//! Not responsible for: what the frames mean (the queue index replays them).
//!
//! Frame: `len: u32 LE` (of kind and payload), `crc32: u32 LE` (of kind and payload), `kind: u8`,
//! payload. A frame whose length or checksum does not hold ends the segment: it can only be the
//! tail of a write cut short by a crash, and nothing acknowledged was in it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

/// Frame kinds.
pub const KIND_MESSAGE: u8 = 1;
/// A change to a queued message (JSON).
pub const KIND_CHANGE: u8 = 2;

const HEADER: usize = 9;
/// Largest frame accepted when reading back (a message plus its envelope).
const MAX_FRAME: usize = 1 << 30;

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    frame_with_tail(out, kind, parts, None);
}

/// Appends the start of one frame to `out`: its header and `parts`; with `tail`, the frame
/// goes on with that many more bytes of that checksum, which the caller writes right after.
pub fn frame_with_tail(
    out: &mut Vec<u8>,
    kind: u8,
    parts: &[&[u8]],
    tail: Option<(u64, &crc32fast::Hasher)>,
) {
    let tail_len = tail.map_or(0, |(n, _)| n);
    let len = 1 + parts.iter().map(|p| p.len() as u64).sum::<u64>() + tail_len;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    if let Some((_, t)) = tail {
        crc.combine(t);
    }
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Where the payload of a frame starts, relative to the frame's start.
pub const PAYLOAD_OFFSET: u64 = HEADER as u64;

/// One frame read back: its kind, its payload and the payload's offset in the segment.
pub struct Frame<'a> {
    /// The kind byte.
    pub kind: u8,
    /// The payload.
    pub payload: &'a [u8],
    /// Offset of the payload in the segment file.
    pub offset: u64,
}

/// Splits a segment's bytes into frames; stops at the first damaged one and says where.
pub fn frames(bytes: &[u8]) -> (Vec<Frame<'_>>, Option<u64>) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + HEADER) else {
            return (out, Some(at as u64));
        };
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let end = at + 8 + len;
        if len == 0 || len > MAX_FRAME || end > bytes.len() {
            return (out, Some(at as u64));
        }
        let body = &bytes[at + 8..end];
        if crc32fast::hash(body) != crc {
            return (out, Some(at as u64));
        }
        out.push(Frame {
            kind: body[0],
            payload: &body[1..],
            offset: (at + HEADER) as u64,
        });
        at = end;
    }
    (out, None)
}

/// Segment file name for number `n`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.seg"))
}

/// The numbers of the segment files in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads a whole segment.
pub fn read_segment(dir: &Path, n: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(segment_path(dir, n))?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens a segment for reading bodies.
pub fn open_reader(dir: &Path, n: u64) -> io::Result<Arc<File>> {
    File::open(segment_path(dir, n)).map(Arc::new)
}

/// Reads `len` bytes at `offset`.
pub fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Makes a directory entry change durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Where a batch landed: segment number and the offset of the request's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landed {
    /// Segment number.
    pub segment: u64,
    /// Offset of the request's bytes in it.
    pub offset: u64,
}

/// A write request: frames already encoded, and who to tell once they are durable.
pub struct Request {
    /// One or more frames.
    pub bytes: Vec<u8>,
    /// The rest of the last frame, copied from a file after `bytes` (a large message).
    pub file: Option<crate::content::FileRange>,
    /// Told where the bytes landed, or why they did not.
    pub done: tokio::sync::oneshot::Sender<io::Result<Landed>>,
}

/// What the writer has done since start-up: requests written and syncs needed for them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests made durable.
    pub requests: std::sync::atomic::AtomicU64,
    /// `fdatasync` calls that did it (fewer than requests when batches formed).
    pub syncs: std::sync::atomic::AtomicU64,
}

/// The single writer: appends batches to the current segment and syncs each batch once.
pub struct Writer {
    dir: PathBuf,
    segment: u64,
    file: File,
    len: u64,
    max_len: u64,
    stats: Arc<Stats>,
}

impl Writer {
    /// Starts a new segment numbered `segment` in `dir`.
    pub fn create(dir: &Path, segment: u64, max_len: u64) -> io::Result<Writer> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, segment))?;
        sync_dir(dir)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            segment,
            file,
            len: 0,
            max_len,
            stats: Arc::default(),
        })
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until every sender is gone: takes what is waiting, writes it, syncs once, answers.
    pub fn run(mut self, rx: mpsc::Receiver<Request>, on_new_segment: impl Fn(u64)) {
        while let Ok(first) = rx.recv() {
            let size = |r: &Request| r.bytes.len() as u64 + r.file.as_ref().map_or(0, |f| f.len);
            let mut bytes = size(&first);
            let mut batch = vec![first];
            while bytes < 16 << 20 {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += size(&r);
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            if self.len >= self.max_len {
                match Writer::create(&self.dir, self.segment + 1, self.max_len) {
                    Ok(w) => {
                        self = Writer {
                            stats: self.stats,
                            ..w
                        };
                        on_new_segment(self.segment);
                    }
                    Err(e) => {
                        fail(batch, &e);
                        continue;
                    }
                }
            }
            self.write_batch(batch);
        }
    }

    fn write_batch(&mut self, batch: Vec<Request>) {
        let start = self.len;
        let mut offsets = Vec::with_capacity(batch.len());
        let mut at = start;
        let mut result = Ok(());
        // one request after another, a file's bytes copied as they are read: a large message
        // is never whole in memory
        for r in &batch {
            offsets.push(at);
            result = self.append(r);
            if result.is_err() {
                break;
            }
            at += r.bytes.len() as u64 + r.file.as_ref().map_or(0, |f| f.len);
        }
        let result = result.and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len = at;
                use std::sync::atomic::Ordering::Relaxed;
                self.stats.syncs.fetch_add(1, Relaxed);
                self.stats.requests.fetch_add(batch.len() as u64, Relaxed);
                for (r, offset) in batch.into_iter().zip(offsets) {
                    let _ = r.done.send(Ok(Landed {
                        segment: self.segment,
                        offset,
                    }));
                }
            }
            Err(e) => {
                // nothing of a failed batch may stay behind to be read back later
                if let Err(t) = self
                    .file
                    .set_len(start)
                    .and_then(|()| self.file.sync_data())
                {
                    tracing::error!(error = %t, "spool: cannot cut off a failed write");
                }
                fail(batch, &e);
            }
        }
    }

    fn append(&mut self, r: &Request) -> io::Result<()> {
        self.file.write_all(&r.bytes)?;
        let Some(f) = &r.file else {
            return Ok(());
        };
        let mut at = 0;
        while at < f.len {
            let piece = f.read(at, crate::content::PIECE)?;
            if piece.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spill file too short",
                ));
            }
            self.file.write_all(&piece)?;
            at += piece.len() as u64;
        }
        Ok(())
    }
}

fn fail(batch: Vec<Request>, e: &io::Error) {
    for r in batch {
        let _ = r.done.send(Err(io::Error::new(e.kind(), e.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let mut buf = Vec::new();
        frame(&mut buf, KIND_MESSAGE, &[b"meta", b"body"]);
        frame(&mut buf, KIND_CHANGE, &[b"{}"]);
        let (f, bad) = frames(&buf);
        assert_eq!(bad, None);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].kind, f[0].payload), (KIND_MESSAGE, &b"metabody"[..]));
        assert_eq!(f[0].offset, 9);
        assert_eq!((f[1].kind, f[1].payload), (KIND_CHANGE, &b"{}"[..]));
        // a torn tail: every cut inside the second frame keeps only the first
        let first_len = 9 + 8;
        for cut in first_len + 1..buf.len() {
            let (f, bad) = frames(&buf[..cut]);
            assert_eq!(f.len(), 1, "cut at {cut}");
            assert_eq!(bad, Some(first_len as u64));
        }
        // a flipped bit
        let mut bad_crc = buf.clone();
        bad_crc[first_len + 10] ^= 1;
        assert_eq!(frames(&bad_crc).1, Some(first_len as u64));
    }
}
