//! The durable queue (spool): messages accepted for store-and-forward, with a status and retry
//! schedule per recipient.
//!
//! Responsible for: making a message durable before [`Spool::enqueue`] returns (the caller says
//! `250` only then), keeping each recipient's status (queued with its next attempt, delivered,
//! failed) with the original DSN parameters, handing due messages to delivery as leases, the
//! operator's hold/release/retry/delete, replaying everything after a restart or crash, and
//! reclaiming disk space.
//! Not responsible for: where mail goes or what an attempt's outcome means (delivery decides and
//! reports statuses), or sending delivery reports.
//!
//! Invariant: every change is applied to the index and handed to the writer under the index's
//! lock, so the log replays in the order the changes happened.

mod log;
mod state;
#[cfg(test)]
mod tests;

pub use state::{
    Lease, LeasedRcpt, Pending, RcptRecord, RcptSummary, Record, Status, Summary, Trust,
};

use log::{Landed, Request, Writer};
use state::{BodyLoc, Change, Entry, Index, Meta, RcptMeta};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use backstop_proto::address::{Mailbox, ReversePath};
use backstop_proto::smtp::command::{MailParams, PeerSupport, RcptParams};

/// Segments are closed for writing at this size; old ones are removed once nothing in them is
/// still queued.
pub const SEGMENT_SIZE: u64 = 16 << 20;

/// Why the spool could not take or change a message.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The disk (or quota) is full: `452 4.3.1`.
    #[error("spool: insufficient storage: {0}")]
    Full(io::Error),
    /// Any other I/O failure: `451 4.3.0`.
    #[error("spool: {0}")]
    Io(io::Error),
    /// The spool is used by another process.
    #[error("spool {0} is in use by another backstop process")]
    Locked(PathBuf),
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> SpoolError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => SpoolError::Full(e),
            _ => SpoolError::Io(e),
        }
    }
}

/// A message to queue.
pub struct NewMessage {
    /// Queue id.
    pub id: String,
    /// Arrival time (unix seconds).
    pub arrived: u64,
    /// Envelope sender.
    pub from: ReversePath,
    /// MAIL parameters (DSN RET/ENVID kept for reports).
    pub params: MailParams,
    /// Recipients with their DSN parameters.
    pub rcpts: Vec<(Mailbox, RcptParams)>,
    /// The message as it will be delivered (our trace header first), CRLF line ends.
    pub data: Vec<Vec<u8>>,
    /// What follows `data`: the rest of a large message's body, in its spill file, with the
    /// CRC-32 of those bytes (so the frame's checksum needs no second read).
    pub rest: Option<(crate::content::FileRange, crc32fast::Hasher)>,
    /// Whether its sender may ever get a delivery report.
    pub trust: Trust,
}

/// The durable queue. Shared (`Arc`) by inbound, delivery and the control socket.
pub struct Spool {
    dir: PathBuf,
    index: Mutex<Index>,
    writer: mpsc::Sender<Request>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// Woken when something becomes due earlier than before (a new message, a retry).
    pub wake: tokio::sync::Notify,
    stats: Arc<log::Stats>,
    _lock: File,
}

const ALL: PeerSupport = PeerSupport {
    size: true,
    eight_bit_mime: true,
    smtputf8: true,
    dsn: true,
};

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, replays it, and starts the writer.
    pub fn open(dir: &Path) -> Result<Arc<Spool>, SpoolError> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join("lock"))?;
        if lock.try_lock().is_err() {
            return Err(SpoolError::Locked(dir.to_path_buf()));
        }
        let segments = log::list_segments(dir)?;
        let mut index = Index::default();
        let mut readers = HashMap::new();
        for &n in &segments {
            let bytes = log::read_segment(dir, n)?;
            let (frames, damaged) = log::frames(&bytes);
            if let Some(at) = damaged {
                tracing::warn!(
                    segment = n,
                    offset = at,
                    "spool: segment ends in an incomplete write (a crash during a write that was never acknowledged); the rest is ignored"
                );
            }
            for f in frames {
                index.replay(n, &f);
            }
            index.segments.insert(n);
            readers.insert(n, log::open_reader(dir, n)?);
        }
        let next = segments.last().map_or(1, |n| n + 1);
        let writer = Writer::create(dir, next, SEGMENT_SIZE)?;
        readers.insert(next, log::open_reader(dir, next)?);
        index.segments.insert(next);
        index.current = next;
        let (tx, rx) = mpsc::channel();
        let stats = writer.stats();
        let spool = Arc::new(Spool {
            stats,
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
            writer: tx,
            readers: Mutex::new(readers),
            wake: tokio::sync::Notify::new(),
            _lock: lock,
        });
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                writer.run(rx, |n| {
                    if let Some(s) = weak.upgrade() {
                        s.new_segment(n);
                    }
                })
            })?;
        Ok(spool)
    }

    fn new_segment(&self, n: u64) {
        match log::open_reader(&self.dir, n) {
            Ok(f) => {
                lock(&self.readers).insert(n, f);
            }
            Err(e) => tracing::error!(error = %e, segment = n, "spool: cannot open new segment"),
        }
        let mut ix = self.lock();
        ix.segments.insert(n);
        ix.current = n;
    }

    /// Records made durable since start-up, and the syncs that took (group commit: fewer syncs
    /// than records under concurrent load).
    pub fn write_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.requests.load(Relaxed),
            self.stats.syncs.load(Relaxed),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn submit(&self, bytes: Vec<u8>) -> tokio::sync::oneshot::Receiver<io::Result<Landed>> {
        self.submit_with(bytes, None)
    }

    /// Frames to write, the last of which continues with the bytes of `file`.
    fn submit_with(
        &self,
        bytes: Vec<u8>,
        file: Option<crate::content::FileRange>,
    ) -> tokio::sync::oneshot::Receiver<io::Result<Landed>> {
        let (done, rx) = tokio::sync::oneshot::channel();
        if let Err(mpsc::SendError(r)) = self.writer.send(Request { bytes, file, done }) {
            let _ = r
                .done
                .send(Err(io::Error::other("spool writer has stopped")));
        }
        rx
    }

    async fn wait(rx: tokio::sync::oneshot::Receiver<io::Result<Landed>>) -> io::Result<Landed> {
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("spool writer has stopped")))
    }

    /// Writes a message durably; it is queued (and due at once) when this returns `Ok`.
    pub async fn enqueue(&self, m: NewMessage) -> Result<(), SpoolError> {
        let meta = Meta {
            id: m.id,
            arrived: m.arrived,
            mail: format!("MAIL FROM:{}{}", m.from, m.params.encode(ALL)),
            rcpts: m
                .rcpts
                .iter()
                .map(|(r, p)| RcptMeta {
                    rcpt: format!("RCPT TO:<{r}>{}", p.encode(ALL)),
                    status: Status::Queued {
                        attempts: 0,
                        next_attempt: m.arrived,
                        last: None,
                    },
                    report: None,
                })
                .collect(),
            held: false,
            trust: m.trust,
            reports: Vec::new(),
        };
        let parts: Vec<&[u8]> = m.data.iter().map(Vec::as_slice).collect();
        let tail = m.rest.as_ref().map(|(r, crc)| (r.len, crc));
        let (bytes, body_at) = state::message_frame(&meta, &parts, tail);
        let file = m.rest.map(|(r, _)| r);
        let len =
            parts.iter().map(|p| p.len() as u64).sum::<u64>() + file.as_ref().map_or(0, |r| r.len);
        let landed = Spool::wait(self.submit_with(bytes, file)).await?;
        let body = BodyLoc {
            segment: landed.segment,
            offset: landed.offset + body_at,
            len,
        };
        let entry = Entry::new(meta, body)
            .ok_or_else(|| SpoolError::Io(io::Error::other("envelope cannot be read back")))?;
        self.lock().insert(entry);
        self.wake.notify_one();
        Ok(())
    }

    /// Leases up to `max` messages due at `now` (not held, not already leased).
    pub fn take_due(&self, now: u64, max: usize) -> Vec<Lease> {
        self.lock().take_due(now, max)
    }

    /// When the next message falls due, if any is waiting.
    pub fn next_due(&self) -> Option<u64> {
        self.lock().next_due()
    }

    /// The message of a lease, as it is to be delivered (whole, in memory: tests only; the
    /// gateway reads a message with [`Spool::content`]).
    #[cfg(test)]
    pub async fn body(&self, lease: &Lease) -> io::Result<Vec<u8>> {
        self.read(lease.body, u64::MAX).await
    }

    /// The message of a lease, to read a piece at a time (the segment stays open while it
    /// is read).
    pub fn content(&self, lease: &Lease) -> io::Result<crate::content::Content> {
        let loc = lease.body;
        let file = lock(&self.readers)
            .get(&loc.segment)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("segment {} missing", loc.segment)))?;
        Ok(crate::content::Content {
            parts: Vec::new(),
            rest: Some(crate::content::FileRange {
                file,
                offset: loc.offset,
                len: loc.len,
            }),
        })
    }

    /// The size in bytes of a queued message; `None` when there is no such message.
    pub fn size(&self, id: &str) -> Option<u64> {
        self.lock().body_of(id).map(|loc| loc.len)
    }

    /// The first `max` bytes of a queued message (enough for its header section); `None` when
    /// there is no such message.
    pub async fn head(&self, id: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(loc) = self.lock().body_of(id) else {
            return Ok(None);
        };
        self.read(loc, max).await.map(Some)
    }

    async fn read(&self, loc: BodyLoc, max: u64) -> io::Result<Vec<u8>> {
        let len = loc.len.min(max);
        let file = lock(&self.readers)
            .get(&loc.segment)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("segment {} missing", loc.segment)))?;
        tokio::task::spawn_blocking(move || log::read_at(&file, loc.offset, len))
            .await
            .map_err(io::Error::other)?
    }

    /// Ends a lease with nothing tried: the message stays as it was (due again at once).
    pub fn hand_back(&self, lease: Lease) {
        self.lock().unlease(&lease.id);
    }

    /// Records the outcome of a lease: new statuses for (some of) its recipients, by index.
    /// Recipients not mentioned keep their status. The lease ends.
    pub async fn finish(&self, lease: Lease, updates: Vec<(usize, Status)>) {
        let rx = {
            let mut ix = self.lock();
            let change = Change::Update {
                id: lease.id.clone(),
                rcpts: updates.clone(),
            };
            if !ix.apply(&change) {
                return;
            }
            ix.unlease(&lease.id);
            self.submit(state::change_frame(&change))
        };
        if let Err(e) = Spool::wait(rx).await {
            // the statuses hold in memory; after a crash the message is tried again
            tracing::warn!(id = %lease.id, error = %e, "spool: status not written");
        }
    }

    /// Whether the spool can take a message now (for `/healthz`): a small file is written,
    /// synced and removed in its directory, as a message's segment would be.
    pub async fn usable(&self) -> io::Result<()> {
        let probe = self.dir.join(".healthz");
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut f = File::create(&probe)?;
            f.write_all(b"ok\n")?;
            f.sync_all()?;
            std::fs::remove_file(&probe)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every queued message, oldest first.
    pub fn list(&self) -> Vec<Summary> {
        self.lock().list()
    }

    /// One message.
    pub fn show(&self, id: &str) -> Option<Summary> {
        self.lock().summary(id)
    }

    /// A message's whole state, for deciding its reports.
    pub fn record(&self, id: &str) -> Option<Record> {
        self.lock().record(id)
    }

    /// Messages with a final recipient whose report is not decided yet.
    pub fn unreported(&self) -> Vec<String> {
        self.lock().unreported()
    }

    /// Records report decisions for recipients of `id` (by index) and the report `kind` sent
    /// or suppressed, if any; `done` removes the message (nothing left to deliver or show).
    pub async fn reported(
        &self,
        id: &str,
        kind: Option<&str>,
        rcpts: Vec<(usize, String)>,
        done: bool,
    ) -> Result<bool, SpoolError> {
        self.change(Change::Reported {
            id: id.to_string(),
            kind: kind.map(str::to_string),
            rcpts,
            done,
        })
        .await
    }

    /// Records whether the sender may get reports, decided after acceptance; false when the
    /// message is no longer queued.
    pub async fn set_trust(&self, id: &str, trust: Trust) -> Result<bool, SpoolError> {
        self.change(Change::Trust {
            id: id.to_string(),
            trust,
        })
        .await
    }

    /// Deletes finished messages (every recipient final, every report decided) whose last
    /// recipient ended before `before`; returns how many.
    pub async fn purge_finished(&self, before: u64) -> Result<usize, SpoolError> {
        let ids = self.lock().finished_before(before);
        let mut n = 0;
        for id in ids {
            n += usize::from(self.delete(&id).await?);
        }
        Ok(n)
    }

    /// Holds (`true`) or releases (`false`) a message; false when there is no such message.
    pub async fn hold(&self, id: &str, held: bool) -> Result<bool, SpoolError> {
        self.change(Change::Hold {
            id: id.to_string(),
            held,
        })
        .await
    }

    /// Deletes a message; false when there is no such message.
    pub async fn delete(&self, id: &str) -> Result<bool, SpoolError> {
        self.change(Change::Delete { id: id.to_string() }).await
    }

    /// Makes queued recipients of `id` (or of every message) due at `now`; returns how many
    /// messages that touched. Held messages are not touched.
    pub fn retry(&self, id: Option<&str>, now: u64) -> usize {
        let n = self.lock().retry(id, now);
        if n > 0 {
            self.wake.notify_one();
        }
        n
    }

    async fn change(&self, change: Change) -> Result<bool, SpoolError> {
        let rx = {
            let mut ix = self.lock();
            if !ix.apply(&change) {
                return Ok(false);
            }
            self.submit(state::change_frame(&change))
        };
        Spool::wait(rx).await?;
        self.wake.notify_one();
        Ok(true)
    }

    /// Reclaims space: removes old segments that hold nothing queued, and first moves the few
    /// messages still queued out of a mostly dead old segment. Returns the segments removed.
    pub async fn compact(&self) -> Result<usize, SpoolError> {
        self.relocate().await?;
        let dead = self.lock().take_dead_segments();
        for &n in &dead {
            lock(&self.readers).remove(&n);
            std::fs::remove_file(log::segment_path(&self.dir, n))?;
        }
        if !dead.is_empty() {
            log::sync_dir(&self.dir)?;
        }
        Ok(dead.len())
    }

    async fn relocate(&self) -> Result<(), SpoolError> {
        let Some(moves) = self.lock().to_relocate() else {
            return Ok(());
        };
        for id in moves {
            let Some(lease) = self.lock().lease_for_move(&id) else {
                continue;
            };
            let result = self.rewrite(&lease).await;
            self.lock()
                .moved(&id, result.as_ref().ok().copied().flatten());
            result?;
        }
        Ok(())
    }

    /// Writes a queued message again at the log's end; `None` if it was deleted meanwhile.
    /// The body is copied a piece at a time (its checksum first, in one more pass).
    async fn rewrite(&self, lease: &Lease) -> Result<Option<BodyLoc>, SpoolError> {
        let Some(range) = self.content(lease)?.rest else {
            return Ok(None);
        };
        let for_crc = range.clone();
        let crc = tokio::task::spawn_blocking(move || {
            let mut crc = crc32fast::Hasher::new();
            let mut at = 0;
            while at < for_crc.len {
                let piece = for_crc.read(at, crate::content::PIECE)?;
                crc.update(&piece);
                at += piece.len() as u64;
            }
            io::Result::Ok(crc)
        })
        .await
        .map_err(io::Error::other)??;
        let len = range.len;
        let (rx, body_at) = {
            let ix = self.lock();
            let Some(meta) = ix.meta(&lease.id) else {
                return Ok(None);
            };
            let (bytes, body_at) = state::message_frame(meta, &[], Some((len, &crc)));
            (self.submit_with(bytes, Some(range)), body_at)
        };
        let landed = Spool::wait(rx).await?;
        Ok(Some(BodyLoc {
            segment: landed.segment,
            offset: landed.offset + body_at,
            len,
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
