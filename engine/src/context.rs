//! Causal context of one replica: which of its operation counters are known.
//!
//! A replica numbers its operations 1, 2, 3, ... Peers learn them in any order,
//! so the context is a contiguous prefix `1..=max` (the version-vector entry)
//! plus a dot cloud of counters seen beyond a gap.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Inclusive ranges of counters, sorted and disjoint: `[(1, 4), (7, 7)]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// No counters.
    pub fn new() -> Self {
        Ranges(Vec::new())
    }

    /// The counters `lo..=hi` (empty when `lo > hi`).
    pub fn span(lo: u64, hi: u64) -> Self {
        let mut r = Ranges::new();
        r.insert_span(lo, hi);
        r
    }

    /// Whether no counter is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sorted, disjoint inclusive ranges.
    pub fn spans(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Number of counters covered.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }

    /// Whether `n` is covered.
    pub fn contains(&self, n: u64) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < n);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= n)
    }

    /// Adds `n`.
    pub fn insert(&mut self, n: u64) {
        self.insert_span(n, n);
    }

    /// Adds `lo..=hi`, merging with neighbours.
    pub fn insert_span(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        // First range that ends at or after lo - 1 (touching counts as overlap).
        let start = self.0.partition_point(|&(_, h)| h.saturating_add(1) < lo);
        let mut end = start;
        let (mut nlo, mut nhi) = (lo, hi);
        while end < self.0.len() && self.0[end].0 <= hi.saturating_add(1) {
            nlo = nlo.min(self.0[end].0);
            nhi = nhi.max(self.0[end].1);
            end += 1;
        }
        self.0.splice(start..end, [(nlo, nhi)]);
    }

    /// Adds every counter of `other`.
    pub fn union(&mut self, other: &Ranges) {
        for &(lo, hi) in &other.0 {
            self.insert_span(lo, hi);
        }
    }

    /// Checks the invariants of a value decoded from the network.
    pub fn is_well_formed(&self) -> bool {
        self.0.iter().all(|&(lo, hi)| lo >= 1 && lo <= hi)
            && self.0.windows(2).all(|w| w[0].1.saturating_add(1) < w[1].0)
    }
}

/// What one node knows of one replica's operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    max: u64,
    cloud: BTreeSet<u64>,
}

impl Context {
    /// Every counter `1..=max` is known (the version-vector entry).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The highest counter known, contiguous or not.
    pub fn top(&self) -> u64 {
        self.cloud.last().copied().unwrap_or(self.max).max(self.max)
    }

    /// Whether counter `n` is known.
    pub fn contains(&self, n: u64) -> bool {
        n <= self.max || self.cloud.contains(&n)
    }

    /// Marks `n` known.
    pub fn insert(&mut self, n: u64) {
        if n <= self.max {
            return;
        }
        if n == self.max + 1 {
            self.max = n;
            self.compact();
        } else {
            self.cloud.insert(n);
        }
    }

    /// Marks `lo..=hi` known.
    pub fn insert_span(&mut self, lo: u64, hi: u64) {
        let lo = lo.max(self.max + 1);
        if lo > hi {
            return;
        }
        if lo == self.max + 1 {
            self.max = hi;
            // Drop cloud dots now below max, then absorb what became contiguous.
            self.cloud = self.cloud.split_off(&(hi + 1));
            self.compact();
        } else if hi - lo < 1 << 16 {
            self.cloud.extend(lo..=hi);
        } else {
            // A huge span past a gap only comes from a peer far ahead of us:
            // keep what is contiguous; anti-entropy fills the rest later.
        }
    }

    /// The counters of `ranges` not yet known.
    pub fn missing(&self, ranges: &Ranges) -> Ranges {
        let mut out = Ranges::new();
        for &(lo, hi) in ranges.spans() {
            let lo = lo.max(self.max + 1);
            if lo > hi {
                continue;
            }
            let mut run: Option<(u64, u64)> = None;
            if hi - lo < 1 << 16 {
                for n in lo..=hi {
                    if self.cloud.contains(&n) {
                        if let Some((a, b)) = run.take() {
                            out.insert_span(a, b);
                        }
                    } else {
                        run = Some(run.map_or((n, n), |(a, _)| (a, n)));
                    }
                }
                if let Some((a, b)) = run {
                    out.insert_span(a, b);
                }
            } else {
                out.insert_span(lo, hi);
            }
        }
        out
    }

    fn compact(&mut self) {
        while self.cloud.first() == Some(&(self.max + 1)) {
            self.cloud.pop_first();
            self.max += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_touching_and_overlapping_spans() {
        let mut r = Ranges::new();
        r.insert(5);
        r.insert_span(1, 3);
        assert_eq!(r.spans(), &[(1, 3), (5, 5)]);
        r.insert(4);
        assert_eq!(r.spans(), &[(1, 5)]);
        r.insert_span(9, 12);
        r.insert_span(7, 10);
        assert_eq!(r.spans(), &[(1, 5), (7, 12)]);
        assert!(r.contains(8) && !r.contains(6) && !r.contains(13));
        assert_eq!(r.count(), 11);
        assert!(r.is_well_formed());
        assert!(!Ranges(vec![(3, 2)]).is_well_formed());
        assert!(!Ranges(vec![(1, 2), (3, 4)]).is_well_formed());
    }

    #[test]
    fn context_compacts_cloud_into_max() {
        let mut c = Context::default();
        c.insert(2);
        c.insert(3);
        assert_eq!((c.max(), c.top()), (0, 3));
        assert!(!c.contains(1) && c.contains(3));
        c.insert(1);
        assert_eq!((c.max(), c.top()), (3, 3));
        c.insert_span(5, 6);
        assert_eq!(c.max(), 3);
        c.insert_span(2, 4);
        assert_eq!(c.max(), 6);
    }

    #[test]
    fn missing_subtracts_known_counters() {
        let mut c = Context::default();
        c.insert_span(1, 3);
        c.insert(6);
        let m = c.missing(&Ranges::span(2, 8));
        assert_eq!(m.spans(), &[(4, 5), (7, 8)]);
    }
}
