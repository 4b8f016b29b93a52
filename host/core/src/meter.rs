//! What the host measures about itself, in plain counters the crates above fill in and the
//! metrics endpoint reads: a latency histogram with fixed buckets (batches, queries,
//! checkpoints). No metrics library here: the HTTP crate alone turns these into Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds, in seconds, of the latency buckets every histogram uses (a last one, `+Inf`,
/// is implied): from half a millisecond to half a minute.
pub const LATENCY_BOUNDS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// Durations counted into [`LATENCY_BOUNDS`]; updated from any thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative), the last one past every bound.
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Count one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BOUNDS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// What it has counted so far.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram as read at one moment: per bucket of [`LATENCY_BOUNDS`] (and `+Inf` last), how
/// many durations fell in it, and their sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Count per bucket, not cumulative; `LATENCY_BOUNDS.len() + 1` of them (empty: nothing seen).
    pub counts: Vec<u64>,
    /// Sum of every duration counted, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, count)` per bucket, the last bound `f64::MAX` (`+Inf`).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .enumerate()
            .map(|(i, bound)| (bound, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }

    /// The upper bound, in seconds, of the bucket holding quantile `q` (0.99: p99); `None` with
    /// nothing counted, `f64::MAX` past the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.buckets().into_iter().find_map(|(bound, n)| {
            seen += n;
            (seen >= rank).then_some(bound)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_buckets_and_add_up() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let seen = histogram.snapshot();
        assert_eq!(seen.count(), 4);
        let buckets = seen.buckets();
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 2));
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)));
        assert_eq!(seen.quantile(0.5), Some(0.005));
        assert_eq!(seen.quantile(0.25), Some(0.0005));
        assert_eq!(seen.quantile(1.0), Some(f64::MAX));
        assert_eq!(Histogram::default().quantile(0.99), None);
        assert!((seen.sum_seconds - 60.0061).abs() < 1e-6);
    }
}
