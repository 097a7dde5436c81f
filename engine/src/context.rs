//! Causal context of one replica: which of its operation counters are known.
//!
//! A replica numbers its operations 1, 2, 3, ... Peers learn them in any order,
//! so the context is a contiguous prefix `1..=max` (the version-vector entry)
//! plus a cloud of counter ranges seen beyond a gap.

use std::collections::BTreeMap;

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
///
/// Exact for any span: counters known beyond a gap are kept as disjoint,
/// non-touching ranges `lo -> hi`, so a huge δ-group or slice past a gap is
/// remembered in O(1) space instead of being forgotten (which let stale adds
/// of dots it declared dead come back, and made `missing` overstate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    max: u64,
    cloud: BTreeMap<u64, u64>,
}

impl Context {
    /// Every counter `1..=max` is known (the version-vector entry).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The highest counter known, contiguous or not.
    #[cfg(test)]
    pub fn top(&self) -> u64 {
        self.cloud
            .last_key_value()
            .map_or(self.max, |(_, &hi)| hi.max(self.max))
    }

    /// Whether counter `n` is known.
    pub fn contains(&self, n: u64) -> bool {
        n <= self.max
            || self
                .cloud
                .range(..=n)
                .next_back()
                .is_some_and(|(_, &hi)| n <= hi)
    }

    /// Marks `n` known.
    pub fn insert(&mut self, n: u64) {
        self.insert_span(n, n);
    }

    /// Marks `lo..=hi` known.
    pub fn insert_span(&mut self, lo: u64, hi: u64) {
        let lo = lo.max(self.max + 1);
        if lo > hi {
            return;
        }
        if lo == self.max + 1 {
            self.max = hi;
            self.compact();
            return;
        }
        // Merge with a range that starts before and reaches lo - 1 or further...
        let (mut lo, mut hi) = (lo, hi);
        if let Some((&plo, &phi)) = self.cloud.range(..lo).next_back() {
            if phi.saturating_add(1) >= lo {
                self.cloud.remove(&plo);
                lo = plo;
                hi = hi.max(phi);
            }
        }
        // ...and with every range that starts inside or right after it.
        while let Some((&nlo, &nhi)) = self.cloud.range(lo..).next() {
            if nlo > hi.saturating_add(1) {
                break;
            }
            self.cloud.remove(&nlo);
            hi = hi.max(nhi);
        }
        self.cloud.insert(lo, hi);
    }

    /// The counters of `ranges` not yet known.
    pub fn missing(&self, ranges: &Ranges) -> Ranges {
        let mut out = Ranges::new();
        for &(lo, hi) in ranges.spans() {
            let lo = lo.max(self.max + 1);
            if lo > hi {
                continue;
            }
            // The first counter not yet accounted for (`None`: past u64::MAX).
            let mut next = Some(lo);
            // A cloud range starting before lo may still cover its start.
            if let Some((_, &phi)) = self.cloud.range(..lo).next_back() {
                if phi >= lo {
                    next = phi.checked_add(1);
                }
            }
            for (&clo, &chi) in self.cloud.range(lo..=hi) {
                match next {
                    Some(n) if n < clo => out.insert_span(n, clo - 1),
                    _ => {}
                }
                next = chi.checked_add(1);
            }
            if let Some(n) = next.filter(|&n| n <= hi) {
                out.insert_span(n, hi);
            }
        }
        out
    }

    /// Absorbs cloud ranges that became contiguous with `max`.
    fn compact(&mut self) {
        while let Some((&lo, &hi)) = self.cloud.first_key_value() {
            if lo > self.max.saturating_add(1) {
                break;
            }
            self.cloud.pop_first();
            self.max = self.max.max(hi);
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

    #[test]
    fn huge_spans_past_a_gap_are_remembered_exactly() {
        let mut c = Context::default();
        c.insert_span(10, 1_000_000);
        c.insert(5);
        c.insert_span(1_000_002, 2_000_000);
        assert!(c.contains(10) && c.contains(500_000) && c.contains(5));
        assert!(!c.contains(4) && !c.contains(6) && !c.contains(1_000_001));
        assert_eq!((c.max(), c.top()), (0, 2_000_000));
        let m = c.missing(&Ranges::span(1, 3_000_000));
        assert_eq!(
            m.spans(),
            &[
                (1, 4),
                (6, 9),
                (1_000_001, 1_000_001),
                (2_000_001, 3_000_000)
            ]
        );
        // A span starting inside a known range only misses what follows it.
        let m = c.missing(&Ranges::span(999_999, 1_000_005));
        assert_eq!(m.spans(), &[(1_000_001, 1_000_001)]);
        c.insert_span(1, 4);
        assert_eq!(c.max(), 5);
        c.insert_span(6, 1_000_001);
        assert_eq!((c.max(), c.top()), (2_000_000, 2_000_000));
        assert!(c.missing(&Ranges::span(1, 2_000_000)).is_empty());
    }
}
