//! How long the store's flushes (one group commit: the batch applied, then fsync) take: a
//! histogram of fixed buckets plus the last and the longest, for the metrics endpoint and the
//! control API's `status`. Atomics only: the writer thread records, readers never block it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: an fsync on an SSD takes a millisecond or two, on
/// a disk or a busy VM tens to hundreds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
pub struct FlushTimes {
    /// Flushes per bucket of [`BUCKETS`] (not cumulative); the last one counts those longer
    /// than every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    last_us: AtomicU64,
    max_us: AtomicU64,
}

/// A reading of [`FlushTimes`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlushSnapshot {
    /// (upper bound in seconds, flushes in that bucket), not cumulative; the last bound is
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: Duration,
    pub last: Duration,
    pub max: Duration,
}

impl FlushTimes {
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.last_us.store(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> FlushSnapshot {
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(b, n)| (b, n.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, so that the `+Inf` bucket and `_count` always agree
        // (a flush recorded while this reads is in both or in neither).
        let count = buckets.iter().map(|(_, n)| n).sum();
        let us = |a: &AtomicU64| Duration::from_micros(a.load(Ordering::Relaxed));
        FlushSnapshot {
            buckets,
            count,
            sum: us(&self.sum_us),
            last: us(&self.last_us),
            max: us(&self.max_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_land_in_their_bucket_with_last_and_max() {
        let t = FlushTimes::default();
        t.record(Duration::from_micros(300));
        t.record(Duration::from_millis(30));
        t.record(Duration::from_millis(2));
        t.record(Duration::from_secs(9));
        let s = t.snapshot();
        assert_eq!(s.count, 4);
        let n = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(n(0.0005), 1);
        assert_eq!(n(0.0025), 1);
        assert_eq!(n(0.05), 1);
        assert_eq!(n(f64::INFINITY), 1);
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 4);
        assert_eq!(s.last, Duration::from_secs(9));
        assert_eq!(s.max, Duration::from_secs(9));
        assert_eq!(
            s.sum,
            Duration::from_micros(300 + 30_000 + 2_000 + 9_000_000)
        );
    }
}
