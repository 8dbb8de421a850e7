//! Counters over time: samples of the tally taken every minute and kept for a day, from which
//! the dashboard draws its charts and the JSON API its last-hour and last-day figures.
//!
//! Responsible for: keeping the samples (compactly: one number per counter per sample) and
//! answering "how much did these counters grow between then and now". Not responsible for:
//! taking the samples on time (the caller passes the time in) or surviving a restart (the
//! series are this node's since it started; the per-day totals in the store are for that).

use super::metrics::Reading;
use std::collections::VecDeque;

/// How long samples are kept.
pub const KEEP: u64 = 24 * 3600 + 120;

/// The samples.
#[derive(Debug, Default)]
pub struct Series {
    /// Counter names with labels, by index; a sample's values are in this order.
    keys: Vec<Reading>,
    samples: VecDeque<Sample>,
}

#[derive(Debug)]
struct Sample {
    at: u64,
    values: Vec<u64>,
}

/// One time bucket of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Its start (Unix seconds).
    pub start: u64,
    /// How much the counters grew in it.
    pub count: u64,
}

impl Series {
    /// Records the counters as they are at `now`, and forgets samples older than [`KEEP`].
    pub fn sample(&mut self, now: u64, counters: &[Reading]) {
        let mut values = vec![0; self.keys.len()];
        for r in counters {
            let i = match self.index(r) {
                Some(i) => i,
                None => {
                    self.keys.push(Reading {
                        value: 0,
                        ..r.clone()
                    });
                    values.push(0);
                    self.keys.len() - 1
                }
            };
            values[i] = r.value;
        }
        self.samples.push_back(Sample { at: now, values });
        while self
            .samples
            .front()
            .is_some_and(|s| s.at + KEEP < now && self.samples.len() > 1)
        {
            self.samples.pop_front();
        }
    }

    /// When the oldest sample was taken (what "since" means for young series).
    pub fn first(&self) -> Option<u64> {
        self.samples.front().map(|s| s.at)
    }

    fn index(&self, r: &Reading) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k.name == r.name && k.labels == r.labels)
    }

    /// The sum of the counters that `keep` selects, at the last sample taken at or before
    /// `t` (the first sample when none is that old; 0 when there is none).
    fn total_at(&self, t: u64, keep: &dyn Fn(&Reading) -> bool) -> u64 {
        let sample = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at <= t)
            .or(self.samples.front());
        let Some(s) = sample else { return 0 };
        self.keys
            .iter()
            .zip(&s.values)
            .filter(|(k, _)| keep(k))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Each counter's growth from the sample at or before `since` to `now_counters`.
    pub fn growth(&self, now_counters: &[Reading], since: u64) -> Vec<Reading> {
        now_counters
            .iter()
            .map(|r| {
                let before = self.total_at(since, &|k| k.name == r.name && k.labels == r.labels);
                Reading {
                    value: r.value.saturating_sub(before),
                    ..r.clone()
                }
            })
            .collect()
    }

    /// `n` buckets of `width` seconds ending at `now`: how much the counters `keep` selects
    /// grew in each (the last one measured against `now_counters`, so it is never stale).
    pub fn buckets(
        &self,
        now_counters: &[Reading],
        now: u64,
        n: u64,
        width: u64,
        keep: &dyn Fn(&Reading) -> bool,
    ) -> Vec<Bucket> {
        let live: u64 = now_counters
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.value)
            .sum();
        let start = now.saturating_sub(n * width);
        let first = self.first().unwrap_or(now);
        (0..n)
            .map(|i| {
                let (from, to) = (start + i * width, start + (i + 1) * width);
                let at = |t: u64| match t >= now {
                    true => live,
                    false if t < first => 0,
                    false => self.total_at(t, keep),
                };
                Bucket {
                    start: from,
                    count: at(to).saturating_sub(at(from)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, reason: &str, value: u64) -> Reading {
        Reading {
            name: name.into(),
            labels: vec![("reason".into(), reason.into())],
            value,
        }
    }

    #[test]
    fn growth_is_measured_from_the_sample_before() {
        let mut s = Series::default();
        s.sample(1000, &[r("a", "x", 0)]);
        s.sample(1060, &[r("a", "x", 5), r("a", "y", 1)]);
        s.sample(1120, &[r("a", "x", 7), r("a", "y", 1)]);
        let now = [r("a", "x", 10), r("a", "y", 4)];
        // from the sample at 1060
        assert_eq!(s.growth(&now, 1100), vec![r("a", "x", 5), r("a", "y", 3)]);
        // older than every sample: from the first one (a counter it lacked counts from 0)
        assert_eq!(s.growth(&now, 10), vec![r("a", "x", 10), r("a", "y", 4)]);
        assert_eq!(s.first(), Some(1000));
    }

    #[test]
    fn buckets_end_with_the_live_counters() {
        let mut s = Series::default();
        s.sample(1000, &[r("a", "x", 0)]);
        s.sample(1060, &[r("a", "x", 2)]);
        s.sample(1120, &[r("a", "x", 3), r("b", "x", 100)]);
        let now = [r("a", "x", 9), r("b", "x", 200)];
        let only_a = |k: &Reading| k.name == "a";
        let b = s.buckets(&now, 1150, 4, 60, &only_a);
        let counts: Vec<u64> = b.iter().map(|b| b.count).collect();
        // 910-970 and 970-1030 before the first sample; 1030-1090 has 1000→1060's 2; the last
        // ends now: 9 live minus 2 at 1060... measured from the sample at or before 1090
        assert_eq!(b[0].start, 910);
        assert_eq!(counts, vec![0, 0, 2, 7]);
    }

    #[test]
    fn old_samples_are_forgotten_but_one_stays() {
        let mut s = Series::default();
        s.sample(0, &[r("a", "x", 1)]);
        s.sample(KEEP + 10, &[r("a", "x", 2)]);
        assert_eq!(s.first(), Some(KEEP + 10));
        assert_eq!(s.samples.len(), 1);
    }
}
