//! Message ids: short, unique within a node, roughly ordered by time (like Postfix queue ids).
//!
//! Responsible for: making ids from a time and a counter that are passed in or kept here.
//! Not responsible for: Message-ID headers (the client's business) or global uniqueness.

use std::sync::atomic::{AtomicU64, Ordering};

/// Makes ids `SSSSSSSSCCCCCC`: seconds since the epoch and a counter, in upper-case hex.
#[derive(Debug)]
pub struct IdGen {
    counter: AtomicU64,
}

impl IdGen {
    /// A generator whose counter starts at `seed` (random at start-up, so that ids made in the
    /// same second by a restarted process differ).
    pub fn new(seed: u64) -> IdGen {
        IdGen {
            counter: AtomicU64::new(seed),
        }
    }

    /// The next id for time `unix`.
    pub fn next(&self, unix: u64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF;
        format!("{:08X}{n:06X}", unix & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_exact() {
        let g = super::IdGen::new(0xFF_FFFE);
        assert_eq!(g.next(0x6A00_0000), "6A000000FFFFFE");
        assert_eq!(g.next(0x6A00_0000), "6A000000FFFFFF");
        assert_eq!(g.next(0x6A00_0001), "6A000001000000");
    }
}
