//! Per-endpoint, per-hour attempt figures (succeeded, failed, a latency histogram) and the percentiles read from them. Pure: no I/O, no clock.
//!
//! The store adds each settled attempt to its endpoint's record for the hour it was made in, in the
//! settle transaction (`store::stats`), so `GET /v1/endpoints/{id}/stats` and `/metrics` read a few
//! small records instead of the attempt log. Latency is kept as counts in fixed, roughly
//! log-spaced buckets ([`LATENCY_BOUNDS_MS`]); a percentile is interpolated inside its bucket, so
//! it is exact to within that bucket's width (at most about half its value).

use serde::{Deserialize, Serialize};

/// One hour, in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// Upper bounds (inclusive, milliseconds) of the latency buckets; one more bucket takes the rest.
/// Changing them changes the stored record: bump its version (`store::stats`).
pub const LATENCY_BOUNDS_MS: [u32; 28] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000,
    3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 60_000,
];

/// The number of latency buckets: one per bound, and the overflow.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Attempts of one endpoint in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourStats {
    pub succeeded: u64,
    pub failed: u64,
    /// Attempts per latency bucket ([`LATENCY_BOUNDS_MS`], then the overflow).
    pub latency: Vec<u64>,
}

impl Default for HourStats {
    fn default() -> HourStats {
        HourStats {
            succeeded: 0,
            failed: 0,
            latency: vec![0; LATENCY_BUCKETS],
        }
    }
}

impl HourStats {
    /// Counts one attempt that took `duration_ms`.
    pub fn add(&mut self, succeeded: bool, duration_ms: u32) {
        if succeeded {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        if self.latency.len() != LATENCY_BUCKETS {
            self.latency.resize(LATENCY_BUCKETS, 0);
        }
        self.latency[bucket_of(duration_ms)] += 1;
    }

    /// Adds another hour's figures (for a window's totals).
    pub fn merge(&mut self, other: &HourStats) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }

    pub fn attempts(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// The latency at quantile `q` (0 < q ≤ 1) in milliseconds, interpolated inside its bucket;
    /// 0 when there were no attempts. The overflow bucket answers its lower bound (60 s).
    pub fn percentile_ms(&self, q: f64) -> u32 {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        for (i, &count) in self.latency.iter().enumerate() {
            if count == 0 || below + count < rank {
                below += count;
                continue;
            }
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_MS[i - 1] };
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return lower;
            };
            let within = (rank - below) as f64 / count as f64;
            return lower + ((upper - lower) as f64 * within).round() as u32;
        }
        LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]
    }

    /// Succeeded attempts over all attempts; 1.0 when there were none (nothing failed).
    pub fn success_rate(&self) -> f64 {
        match self.attempts() {
            0 => 1.0,
            n => self.succeeded as f64 / n as f64,
        }
    }
}

/// The bucket a latency falls in.
pub fn bucket_of(duration_ms: u32) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|&bound| bound < duration_ms)
}

/// The hour (hours since the epoch) that `ms` falls in.
pub fn hour_of(ms: u64) -> u64 {
    ms / HOUR_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_their_upper_bound() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(100), 11);
        assert_eq!(bucket_of(101), 12);
        assert_eq!(bucket_of(60_000), 27);
        assert_eq!(bucket_of(60_001), 28);
        assert_eq!(bucket_of(u32::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn percentiles_fall_inside_the_right_bucket() {
        let mut h = HourStats::default();
        assert_eq!(h.percentile_ms(0.5), 0);
        assert_eq!(h.success_rate(), 1.0);
        // 90 fast attempts (~10 ms) and 10 slow ones (~800 ms).
        for _ in 0..90 {
            h.add(true, 10);
        }
        for _ in 0..10 {
            h.add(false, 800);
        }
        let p50 = h.percentile_ms(0.5);
        assert!((7..=10).contains(&p50), "{p50}");
        let p95 = h.percentile_ms(0.95);
        assert!((700..=1_000).contains(&p95), "{p95}");
        assert_eq!(h.percentile_ms(1.0), 1_000);
        assert_eq!(h.attempts(), 100);
        assert!((h.success_rate() - 0.9).abs() < 1e-9);
        let mut sum = HourStats::default();
        sum.merge(&h);
        sum.merge(&h);
        assert_eq!(sum.attempts(), 200);
        assert_eq!(sum.percentile_ms(0.5), p50);
    }

    #[test]
    fn the_overflow_bucket_answers_its_lower_bound() {
        let mut h = HourStats::default();
        h.add(false, 120_000);
        assert_eq!(h.percentile_ms(0.5), 60_000);
    }

    #[test]
    fn a_record_with_fewer_buckets_still_adds() {
        let mut h = HourStats {
            latency: vec![],
            ..HourStats::default()
        };
        h.add(true, 5);
        assert_eq!(h.latency.len(), LATENCY_BUCKETS);
        assert_eq!(h.percentile_ms(0.5), 5);
    }
}
