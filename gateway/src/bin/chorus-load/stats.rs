//! Latency summaries.

use serde::Serialize;

/// Percentiles of a set of samples in microseconds (nearest rank), in ms.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarises `samples_us` (sorted in place).
    pub fn of(samples_us: &mut [u32]) -> Self {
        if samples_us.is_empty() {
            return Self::default();
        }
        samples_us.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples_us.len() as f64).ceil() as usize).clamp(1, samples_us.len());
            f64::from(samples_us[rank - 1]) / 1000.0
        };
        Self {
            count: samples_us.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms / p99 {:.3} ms / max {:.3} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// `count` per second over `secs` (0 for an empty window).
pub fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::of(&mut s);
        assert_eq!(
            (l.count, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(&mut []).count, 0);
    }
}
