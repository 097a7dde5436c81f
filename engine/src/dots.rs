//! An ordered map from one replica's op counters (dots) to small values: the
//! store's index of a replica's live entries and of its tombstones.
//!
//! A replica's dots arrive mostly in increasing order and leave in any order.
//! A `BTreeMap` pays an allocation every few appends and a pointer chase per
//! level, and on a 2M-entry state its allocations were a quarter of a delta
//! merge. Here keys sit in sorted chunks of at most 256, found by a binary
//! search over a flat array holding each chunk's largest key: an append is a
//! push (one allocation per 256 keys), a lookup reads that array and one
//! chunk, and a range walks adjacent memory. A chunk gives back space when
//! half of it is unused, and one that falls under a quarter full joins a
//! neighbour when both fit in one.
//!
//! Deterministic: iteration is in key order.

/// Most keys in one chunk.
const CAP: usize = 256;

/// An ordered map `u64 -> V`. See the module docs.
#[derive(Clone, Debug)]
pub struct DotMap<V> {
    /// The largest key of each chunk, in order: what lookups search.
    maxes: Vec<u64>,
    /// Non-empty, sorted, disjoint, in key order; at most `CAP` keys each.
    chunks: Vec<Chunk<V>>,
    len: usize,
}

#[derive(Clone, Debug)]
struct Chunk<V> {
    keys: Vec<u64>,
    vals: Vec<V>,
}

impl<V> Chunk<V> {
    fn new(key: u64, val: V) -> Self {
        let mut keys = Vec::with_capacity(CAP);
        let mut vals = Vec::with_capacity(CAP);
        keys.push(key);
        vals.push(val);
        Chunk { keys, vals }
    }

    fn max(&self) -> u64 {
        *self.keys.last().expect("chunks are never empty")
    }

    /// Room for one more key, growing by doubling but never past `CAP`.
    fn make_room(&mut self) {
        debug_assert!(self.keys.len() < CAP, "full chunks split first");
        if self.keys.len() == self.keys.capacity() {
            let more = self.keys.len().clamp(1, CAP - self.keys.len());
            self.keys.reserve_exact(more);
            self.vals.reserve_exact(more);
        }
    }
}

impl<V> Default for DotMap<V> {
    fn default() -> Self {
        DotMap {
            maxes: Vec::new(),
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Copy> DotMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds `key` if any chunk does: the first whose largest
    /// key is not below it (`chunks.len()` when `key` is above them all).
    fn chunk_of(&self, key: u64) -> usize {
        self.maxes.partition_point(|&m| m < key)
    }

    /// The value of `key`.
    #[cfg(test)]
    pub fn get(&self, key: u64) -> Option<V> {
        let c = self.chunks.get(self.chunk_of(key))?;
        c.keys.binary_search(&key).ok().map(|j| c.vals[j])
    }

    /// Inserts `key` with the value `make()` unless it is present. Returns
    /// whether it was inserted (`make` is called only then).
    pub fn insert_with(&mut self, key: u64, make: impl FnOnce() -> V) -> bool {
        let i = self.chunk_of(key);
        if i == self.chunks.len() {
            // Above every key: the common case, an append.
            match self.chunks.last_mut() {
                Some(c) if c.keys.len() < CAP => {
                    c.make_room();
                    c.keys.push(key);
                    c.vals.push(make());
                    *self.maxes.last_mut().expect("one max per chunk") = key;
                }
                _ => {
                    self.chunks.push(Chunk::new(key, make()));
                    self.maxes.push(key);
                }
            }
            self.len += 1;
            return true;
        }
        let Err(mut j) = self.chunks[i].keys.binary_search(&key) else {
            return false;
        };
        let mut i = i;
        if self.chunks[i].keys.len() == CAP {
            // Split before inserting, so no chunk outgrows its capacity.
            let c = &mut self.chunks[i];
            let right = Chunk {
                keys: c.keys.split_off(CAP / 2),
                vals: c.vals.split_off(CAP / 2),
            };
            self.maxes[i] = c.max();
            self.maxes.insert(i + 1, right.max());
            self.chunks.insert(i + 1, right);
            if j >= CAP / 2 {
                i += 1;
                j -= CAP / 2;
            }
        }
        // `key` is below this chunk's largest key: the max stays.
        let c = &mut self.chunks[i];
        c.make_room();
        c.keys.insert(j, key);
        c.vals.insert(j, make());
        self.len += 1;
        true
    }

    /// Sets `key` to `val`. Returns the value it replaced.
    pub fn insert(&mut self, key: u64, val: V) -> Option<V> {
        if self.insert_with(key, || val) {
            return None;
        }
        let i = self.chunk_of(key);
        let c = &mut self.chunks[i];
        let j = c.keys.binary_search(&key).expect("present");
        Some(std::mem::replace(&mut c.vals[j], val))
    }

    /// Removes `key`. Returns its value.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let i = self.chunk_of(key);
        let c = self.chunks.get_mut(i)?;
        let j = c.keys.binary_search(&key).ok()?;
        c.keys.remove(j);
        let val = c.vals.remove(j);
        self.len -= 1;
        self.after_removal(i);
        Some(val)
    }

    /// Keeps chunk `i` non-empty, its max current, at least half of its
    /// reserved space used, and joins it with a neighbour when it is under a
    /// quarter full and both fit in one.
    fn after_removal(&mut self, i: usize) {
        let c = &mut self.chunks[i];
        let n = c.keys.len();
        if n == 0 {
            self.chunks.remove(i);
            self.maxes.remove(i);
            return;
        }
        self.maxes[i] = c.max();
        if n * 2 <= c.keys.capacity() {
            c.keys.shrink_to(n);
            c.vals.shrink_to(n);
        }
        if n >= CAP / 4 {
            return;
        }
        let next_fits = self
            .chunks
            .get(i + 1)
            .is_some_and(|c| c.keys.len() + n <= CAP);
        let prev_fits = i > 0 && self.chunks[i - 1].keys.len() + n <= CAP;
        let left = if next_fits {
            i
        } else if prev_fits {
            i - 1
        } else {
            return;
        };
        let right = self.chunks.remove(left + 1);
        self.maxes.remove(left + 1);
        let c = &mut self.chunks[left];
        c.keys.reserve_exact(right.keys.len());
        c.vals.reserve_exact(right.keys.len());
        c.keys.extend_from_slice(&right.keys);
        c.vals.extend(right.vals);
        self.maxes[left] = c.max();
    }

    /// The smallest key and its value.
    pub fn first(&self) -> Option<(u64, V)> {
        self.chunks.first().map(|c| (c.keys[0], c.vals[0]))
    }

    /// Removes the smallest key. Returns it with its value.
    pub fn pop_first(&mut self) -> Option<(u64, V)> {
        let (key, _) = self.first()?;
        self.remove(key).map(|val| (key, val))
    }

    /// Removes every key up to `hi` (inclusive).
    pub fn remove_to(&mut self, hi: u64) {
        // Chunks wholly at or below `hi` go at once.
        let whole = self.maxes.partition_point(|&m| m <= hi);
        for c in self.chunks.drain(..whole) {
            self.len -= c.keys.len();
        }
        self.maxes.drain(..whole);
        if let Some(c) = self.chunks.first_mut() {
            let j = c.keys.partition_point(|&k| k <= hi);
            if j > 0 {
                c.keys.drain(..j);
                c.vals.drain(..j);
                self.len -= j;
                self.after_removal(0);
            }
        }
    }

    /// The keys in `lo..=hi` with their values, in key order.
    pub fn range(&self, lo: u64, hi: u64) -> Range<'_, V> {
        let i = self.chunk_of(lo);
        let chunks = self.chunks.get(i..).unwrap_or(&[]);
        let pos = chunks
            .first()
            .map_or(0, |c| c.keys.partition_point(|&k| k < lo));
        Range { chunks, pos, hi }
    }

    /// Every key with its value, in key order.
    #[cfg(test)]
    pub fn iter(&self) -> Range<'_, V> {
        self.range(0, u64::MAX)
    }

    /// Every value, in key order.
    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.chunks.iter().flat_map(|c| c.vals.iter().copied())
    }
}

/// Keys of a [`DotMap`] in a range, in order, with their values.
#[derive(Debug)]
pub struct Range<'a, V> {
    chunks: &'a [Chunk<V>],
    pos: usize,
    hi: u64,
}

impl<V: Copy> Iterator for Range<'_, V> {
    type Item = (u64, V);

    fn next(&mut self) -> Option<(u64, V)> {
        loop {
            let c = self.chunks.first()?;
            if let Some(&key) = c.keys.get(self.pos) {
                if key > self.hi {
                    self.chunks = &[];
                    return None;
                }
                self.pos += 1;
                return Some((key, c.vals[self.pos - 1]));
            }
            self.chunks = &self.chunks[1..];
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// The representation's invariants.
    fn check(m: &DotMap<u32>) {
        assert_eq!(m.maxes.len(), m.chunks.len());
        let mut prev = None;
        let mut len = 0;
        for (c, &max) in m.chunks.iter().zip(&m.maxes) {
            assert!(!c.keys.is_empty() && c.keys.len() <= CAP);
            assert!(c.keys.capacity() <= CAP, "a chunk outgrew its capacity");
            assert_eq!(c.keys.len(), c.vals.len());
            assert!(c.keys.windows(2).all(|w| w[0] < w[1]));
            assert!(prev < Some(c.keys[0]), "chunks overlap");
            assert_eq!(max, c.max());
            prev = Some(max);
            len += c.keys.len();
        }
        assert_eq!(len, m.len());
    }

    #[derive(Clone, Debug)]
    enum DotOp {
        Insert(u64),
        Append,
        Remove(u64),
        PopFirst,
        RemoveTo(u64),
        Range(u64, u64),
    }

    /// Inserts below `space`, appends above it (up to about `3 * space`),
    /// removals and ranges anywhere in both.
    fn op(space: u64) -> impl Strategy<Value = DotOp> {
        let all = 3 * space;
        prop_oneof![
            4 => (0..space).prop_map(DotOp::Insert),
            6 => Just(DotOp::Append),
            5 => (0..all).prop_map(DotOp::Remove),
            1 => Just(DotOp::PopFirst),
            1 => (0..space / 8).prop_map(DotOp::RemoveTo),
            2 => (0..all, 0..all).prop_map(|(a, b)| DotOp::Range(a.min(b), a.max(b))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any sequence of operations gives what a `BTreeMap` gives, and the
        /// chunks keep their invariants (splits and joins included: the key
        /// space holds several chunks).
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec(op(3_000), 1..4_000)) {
            let mut m = DotMap::new();
            let mut model = BTreeMap::new();
            let mut next = 3_000u64;
            for (n, op) in ops.into_iter().enumerate() {
                let v = n as u32;
                match op {
                    DotOp::Insert(k) => {
                        prop_assert_eq!(m.insert(k, v), model.insert(k, v));
                    }
                    DotOp::Append => {
                        next += 1 + u64::from(v % 3);
                        prop_assert!(m.insert_with(next, || v));
                        prop_assert!(!m.insert_with(next, || unreachable!("present")));
                        model.insert(next, v);
                    }
                    DotOp::Remove(k) => prop_assert_eq!(m.remove(k), model.remove(&k)),
                    DotOp::PopFirst => prop_assert_eq!(m.pop_first(), model.pop_first()),
                    DotOp::RemoveTo(hi) => {
                        m.remove_to(hi);
                        model = model.split_off(&(hi + 1));
                    }
                    DotOp::Range(lo, hi) => {
                        let got: Vec<_> = m.range(lo, hi).collect();
                        let want: Vec<_> = model.range(lo..=hi).map(|(k, v)| (*k, *v)).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                if n % 64 == 0 {
                    check(&m);
                }
            }
            check(&m);
            let all: Vec<_> = m.iter().collect();
            let want: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(all, want);
            let values: Vec<_> = m.values().collect();
            prop_assert_eq!(values, model.values().copied().collect::<Vec<_>>());
            for k in 0..next + 2 {
                prop_assert_eq!(m.get(k), model.get(&k).copied());
            }
        }
    }

    /// Bytes reserved on the heap, per key.
    fn bytes_per_key(m: &DotMap<u32>) -> f64 {
        let chunks: usize = m
            .chunks
            .iter()
            .map(|c| c.keys.capacity() * 8 + c.vals.capacity() * 4)
            .sum();
        let spine =
            m.chunks.capacity() * std::mem::size_of::<Chunk<u32>>() + m.maxes.capacity() * 8;
        (chunks + spine) as f64 / m.len() as f64
    }

    #[test]
    fn random_removals_leave_at_most_25_bytes_per_key() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut m = DotMap::new();
        let mut keys: Vec<u64> = (1..=200_000).collect();
        for &k in &keys {
            m.insert_with(k, || 0);
        }
        let dense = bytes_per_key(&m);
        assert!(
            dense < 13.0,
            "appended keys fill their chunks: {dense:.1} B"
        );
        keys.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        for (n, k) in keys.iter().enumerate() {
            m.remove(*k);
            // Sampled as the map thins out, down to 1 key in 20.
            if n % 10_000 == 0 && m.len() >= 10_000 {
                let sparse = bytes_per_key(&m);
                assert!(sparse <= 25.0, "{sparse:.1} B per key at {} keys", m.len());
            }
        }
        check(&m);
    }

    #[test]
    fn appends_fill_chunks_and_removals_join_them() {
        let mut m = DotMap::new();
        for k in 1..=10 * CAP as u64 {
            assert!(m.insert_with(k, || k as u32));
        }
        check(&m);
        assert_eq!(m.chunks.len(), 10, "appends fill each chunk");
        // Thin every chunk out to a few keys: they join.
        for k in 1..=10 * CAP as u64 {
            if k % 32 != 0 {
                m.remove(k);
            }
        }
        check(&m);
        assert_eq!(m.len(), 10 * CAP / 32);
        assert!(m.chunks.len() <= 2, "{} chunks", m.chunks.len());
        // A full chunk split by an insert in its middle.
        let mut m = DotMap::new();
        for k in 0..CAP as u64 {
            m.insert(2 * k, 0);
        }
        m.insert(CAP as u64 + 1, 1);
        check(&m);
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.get(CAP as u64 + 1), Some(1));
    }
}
