//! Replicated application records: bounded per-topic message logs (chat
//! history) and last-writer-wins registers (rooms, memberships).
//!
//! Both are state-based CRDTs whose join is a plain set operation, so records
//! can be shipped in any order, any number of times, one by one or a whole
//! topic at once:
//!
//! - a **log** keeps, per topic, the newest `cap` entries of everything ever
//!   appended, ordered by [`Stamp`] (time, origin, sequence). Merging is
//!   `top_cap(A ∪ B)`: commutative, associative and idempotent, and an entry
//!   older than a full log's oldest is simply dominated;
//! - a **register** `(space, key)` holds the value with the greatest stamp; a
//!   removal is a write of `None` (a tombstone, kept so an older write arriving
//!   late cannot resurrect the key).
//!
//! Unlike presence, records do not belong to a live node: they are not hidden
//! when their origin goes down nor purged when it is gone, which is what lets
//! history survive the crash of the node it was posted on.
//!
//! **Expiry.** A log entry older than the records' **horizon** (a stamp time
//! that only moves forward, [`Records::expire`]) is dropped, and merge refuses
//! one, so a peer cannot bring it back. Logs stay a join: the state is
//! `top_cap(A ∪ B)` filtered by the greater horizon, and since stamps order
//! by time first, filtering and keeping the top `cap` commute. The node raises
//! the horizon from its wall clock (`history_ttl`); registers never expire.
//!
//! Anti-entropy compares [`Records::digest`]: [`BUCKETS`] order-independent
//! sums of record hashes, a topic's log and a register each living in one
//! bucket. A differing bucket is repaired by shipping its records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::id::{NodeId, Topic};
use crate::position::{Position, MAX_CLOCK_SKEW_MS};

/// Why a log entry left (or never entered) a node's log, as
/// [`Records::since`] reports a position it cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gap {
    /// Pushed out by newer entries (`history_cap`).
    Trimmed,
    /// Older than the horizon (`history_ttl`, or the budget horizon).
    Expired,
    /// The position names an origin this node knows nothing of in the topic,
    /// or a message it does not hold yet (a hole a repair has not filled).
    Unknown,
}

/// Digest buckets.
pub const BUCKETS: usize = 256;
/// Longest log body or register value accepted, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Longest topic, space or key accepted, in bytes.
pub const MAX_NAME: usize = 1024;
/// The latest time a stamp may carry, one before `u64::MAX`: a horizon can
/// then always be raised past every entry held ([`Records::fit`]).
pub const LAST_STAMP_MS: u64 = u64::MAX - 1;

/// Orders records: wall-clock milliseconds, then the writing node, then its
/// write counter. Unique per write, since `(origin, seq)` is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, as the writer's clock (raised past
    /// every stamp it had seen) read them.
    pub time_ms: u64,
    /// The writing node incarnation.
    pub origin: NodeId,
    /// The writer's record counter.
    pub seq: u64,
}

/// One replicated record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// An entry of `topic`'s log.
    Log {
        /// The log's topic.
        topic: Topic,
        /// The entry's stamp.
        stamp: Stamp,
        /// The entry (opaque to the engine; the gateway stores JSON).
        body: Arc<str>,
    },
    /// A write of register `(space, key)`.
    Reg {
        /// A namespace, e.g. `room`.
        space: Arc<str>,
        /// The key within the space.
        key: Arc<str>,
        /// The write's stamp.
        stamp: Stamp,
        /// The value; `None` removes the key.
        value: Option<Arc<str>>,
    },
}

impl Record {
    /// Whether a record from a peer is within the limits (names, values, and
    /// a stamp no later than [`LAST_STAMP_MS`]).
    pub fn is_valid(&self) -> bool {
        if self.stamp().time_ms > LAST_STAMP_MS {
            return false;
        }
        match self {
            Record::Log { topic, body, .. } => {
                topic.as_str().len() <= MAX_NAME && body.len() <= MAX_VALUE
            }
            Record::Reg {
                space, key, value, ..
            } => {
                space.len() <= MAX_NAME
                    && key.len() <= MAX_NAME
                    && value.as_ref().is_none_or(|v| v.len() <= MAX_VALUE)
            }
        }
    }

    /// The record's stamp.
    pub fn stamp(&self) -> &Stamp {
        match self {
            Record::Log { stamp, .. } | Record::Reg { stamp, .. } => stamp,
        }
    }

    /// Rough encoded size, for chunking; for a log entry also what it counts
    /// in [`Records::log_bytes`].
    pub fn size(&self) -> usize {
        48 + match self {
            Record::Log { topic, body, .. } => topic.as_str().len() + body.len(),
            Record::Reg {
                space, key, value, ..
            } => space.len() + key.len() + value.as_ref().map_or(0, |v| v.len()),
        }
    }
}

/// A register's current write.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reg {
    stamp: Stamp,
    value: Option<Arc<str>>,
}

/// What one [`Records::expire`] dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Log entries dropped.
    pub entries: u64,
    /// Their size, as [`Records::log_bytes`] counts it.
    pub bytes: u64,
}

/// What one log entry counts in [`Records::log_bytes`]: its body, its topic
/// and 48 bytes for the stamp and the map's bookkeeping (what
/// [`Record::size`] says of it).
fn entry_bytes(topic: &Topic, body: &str) -> usize {
    48 + topic.as_str().len() + body.len()
}

/// The records of one node: logs, registers and their digest.
#[derive(Clone, Debug)]
pub struct Records {
    cap: usize,
    logs: BTreeMap<Topic, BTreeMap<Stamp, Arc<str>>>,
    regs: BTreeMap<(Arc<str>, Arc<str>), Reg>,
    buckets: Vec<u64>,
    /// Log entries stamped before this time are dropped and refused. Only
    /// grows.
    horizon: u64,
    /// `(oldest entry's time, topic)` of every log: expiry walks it from the
    /// front, so it costs what it drops, not the number of logs.
    oldest: BTreeSet<(u64, Topic)>,
    /// Sum of [`entry_bytes`] over every log entry held.
    log_bytes: usize,
    /// Per topic, per origin: the greatest seq this node dropped (or refused)
    /// and why. Never shrinks: it is what lets [`Records::since`] answer a
    /// position about messages no longer held. Not replicated (each node
    /// knows what it dropped); the runtime's replica computes the same.
    dropped: BTreeMap<Topic, BTreeMap<NodeId, (u64, Gap)>>,
}

impl Records {
    /// Empty records keeping the newest `cap` entries of each log.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            logs: BTreeMap::new(),
            regs: BTreeMap::new(),
            buckets: vec![0; BUCKETS],
            horizon: 0,
            oldest: BTreeSet::new(),
            log_bytes: 0,
            dropped: BTreeMap::new(),
        }
    }

    /// Notes that `topic`'s entry `stamp` left this node (or was refused).
    fn note_dropped(
        dropped: &mut BTreeMap<Topic, BTreeMap<NodeId, (u64, Gap)>>,
        topic: &Topic,
        stamp: &Stamp,
        why: Gap,
    ) {
        let per_origin = match dropped.get_mut(topic) {
            Some(m) => m,
            None => dropped.entry(topic.clone()).or_default(),
        };
        match per_origin.get_mut(&stamp.origin) {
            Some(d) if d.0 >= stamp.seq => {}
            Some(d) => *d = (stamp.seq, why),
            None => {
                per_origin.insert(stamp.origin.clone(), (stamp.seq, why));
            }
        }
    }

    /// The position a client joining `topic` now starts from: per origin,
    /// the end of the contiguous run of entries held from its oldest (or
    /// what was dropped, when nothing is held). Entries held past a hole
    /// are not covered: they reach the client once the hole is filled.
    pub fn position(&self, topic: &str) -> Position {
        let mut pos = Position::default();
        let mut run_over: BTreeSet<&NodeId> = BTreeSet::new();
        if let Some(dropped) = self.dropped.get(topic) {
            for (origin, (seq, _)) in dropped {
                pos.advance(origin, *seq);
            }
        }
        let mut started: BTreeSet<&NodeId> = BTreeSet::new();
        if let Some(log) = self.logs.get(topic) {
            for stamp in log.keys() {
                let o = &stamp.origin;
                if run_over.contains(o) {
                    continue;
                }
                let cur = pos.get(o);
                if stamp.seq <= cur {
                    continue;
                }
                if stamp.seq == cur + 1 || !started.contains(o) {
                    // The first entry held starts the run (what came before
                    // it never reached this node: it predates the join).
                    pos.advance(o, stamp.seq);
                    started.insert(o);
                } else {
                    run_over.insert(o);
                }
            }
        }
        pos
    }

    /// Every entry of `topic` that `pos` does not cover, in log order (so in
    /// each origin's order), or why this node cannot give exactly that: an
    /// uncovered entry it dropped, one it never held before the oldest it
    /// holds of that origin, a hole, or an origin of `pos` it knows nothing
    /// of, or a full log whose oldest entry the position does not cover
    /// (older entries may have been pushed out before they reached this
    /// node), or a horizon past the position's time (less the clocks' skew):
    /// a message published after the position was handed out may then have
    /// expired on every node before it reached this one. All or nothing.
    pub fn since(&self, topic: &str, pos: &Position) -> Result<Vec<(Stamp, Arc<str>)>, Gap> {
        if self.horizon > pos.time_ms.saturating_sub(MAX_CLOCK_SKEW_MS) {
            return Err(Gap::Expired);
        }
        let dropped = self.dropped.get(topic);
        let mut known: BTreeSet<&NodeId> = BTreeSet::new();
        if let Some(dropped) = dropped {
            for (origin, (seq, why)) in dropped {
                if *seq > pos.get(origin) {
                    return Err(*why);
                }
                known.insert(origin);
            }
        }
        let mut out = Vec::new();
        let mut next: BTreeMap<&NodeId, u64> = BTreeMap::new();
        if let Some(log) = self.logs.get(topic) {
            // A full log may have pushed out, on any node, entries older than
            // its oldest that never reached this one: unless the position
            // covers the oldest entry, the gap may reach past it.
            if log.len() >= self.cap
                && log
                    .first_key_value()
                    .is_some_and(|(oldest, _)| !pos.covers(&oldest.origin, oldest.seq))
            {
                return Err(Gap::Trimmed);
            }
            for (stamp, body) in log {
                let o = &stamp.origin;
                known.insert(o);
                let have = pos.get(o);
                if stamp.seq <= have {
                    continue;
                }
                let want = next.get(o).copied().unwrap_or(have + 1);
                if stamp.seq != want {
                    return Err(Gap::Unknown);
                }
                next.insert(o, want.saturating_add(1));
                out.push((stamp.clone(), body.clone()));
            }
        }
        if pos.seqs.keys().any(|o| !known.contains(o)) {
            return Err(Gap::Unknown);
        }
        Ok(out)
    }

    /// `topic`'s entries of `origin` after `seq`, in order, as held (holes
    /// included). Walks the log from its newest entry, so a caller that is
    /// nearly caught up pays for what it lacks.
    pub fn after(&self, topic: &str, origin: &NodeId, seq: u64) -> Vec<(Stamp, Arc<str>)> {
        let Some(log) = self.logs.get(topic) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (stamp, body) in log.iter().rev() {
            if stamp.origin != *origin {
                continue;
            }
            if stamp.seq <= seq {
                break;
            }
            out.push((stamp.clone(), body.clone()));
        }
        out.reverse();
        out
    }

    /// Log entries stamped before this time are gone and refused.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Bytes of log entries held (body, topic and 48 bytes each; registers
    /// are not counted).
    pub fn log_bytes(&self) -> usize {
        self.log_bytes
    }

    /// Raises the horizon to `horizon` (a lower one changes nothing) and drops
    /// every log entry stamped before it, oldest logs first. Returns what it
    /// dropped. Costs O(dropped · log n).
    pub fn expire(&mut self, horizon: u64) -> Expired {
        let mut out = Expired::default();
        if horizon <= self.horizon {
            return out;
        }
        self.horizon = horizon;
        while self.oldest.first().is_some_and(|(t, _)| *t < horizon) {
            let (_, topic) = self.oldest.pop_first().expect("checked above");
            let Some(log) = self.logs.get_mut(&topic) else {
                continue;
            };
            let b = bucket_of(topic.as_str().as_bytes(), b"");
            while log
                .first_key_value()
                .is_some_and(|(s, _)| s.time_ms < horizon)
            {
                let (old, body) = log.pop_first().expect("checked above");
                Self::note_dropped(&mut self.dropped, &topic, &old, Gap::Expired);
                self.buckets[b] =
                    self.buckets[b].wrapping_sub(log_hash(topic.as_str(), &old, &body));
                let bytes = entry_bytes(&topic, &body);
                self.log_bytes -= bytes;
                out.entries += 1;
                out.bytes += bytes as u64;
            }
            match log.first_key_value() {
                Some((s, _)) => {
                    self.oldest.insert((s.time_ms, topic));
                }
                None => {
                    self.logs.remove(&topic);
                }
            }
        }
        out
    }

    /// Raises the horizon past the oldest log entries, oldest first, until
    /// the logs hold at most `budget` bytes ([`Records::log_bytes`]): every
    /// entry stamped at the oldest time goes at once, so the horizon is one
    /// past a stamp time. Returns the new horizon and what it dropped, or
    /// `None` when the logs already fit. Costs O(dropped · log n).
    pub fn fit(&mut self, budget: usize) -> Option<(u64, Expired)> {
        let mut out = Expired::default();
        while self.log_bytes > budget {
            let Some((t, _)) = self.oldest.first() else {
                break;
            };
            // Entries are stamped at most `LAST_STAMP_MS` and none is held
            // below the horizon, so this drops at least the oldest ones.
            let dropped = self.expire(t.saturating_add(1));
            if dropped.entries == 0 {
                break;
            }
            out.entries += dropped.entries;
            out.bytes += dropped.bytes;
        }
        (out.entries > 0).then_some((self.horizon, out))
    }

    /// Entries kept per log.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Joins one record in. Returns whether the state changed (a record that is
    /// known, dominated, older than a full log's oldest entry or, for a log
    /// entry, stamped before the horizon changes nothing).
    pub fn merge(&mut self, record: &Record) -> bool {
        match record {
            Record::Log { topic, stamp, body } => {
                if stamp.time_ms < self.horizon {
                    Self::note_dropped(&mut self.dropped, topic, stamp, Gap::Expired);
                    return false;
                }
                let log = self.logs.entry(topic.clone()).or_default();
                if log.contains_key(stamp) {
                    return false;
                }
                if log.len() >= self.cap
                    && log
                        .first_key_value()
                        .is_some_and(|(oldest, _)| stamp < oldest)
                {
                    Self::note_dropped(&mut self.dropped, topic, stamp, Gap::Trimmed);
                    return false;
                }
                let was_oldest = log.first_key_value().map(|(s, _)| s.time_ms);
                let b = bucket_of(topic.as_str().as_bytes(), b"");
                log.insert(stamp.clone(), body.clone());
                self.buckets[b] =
                    self.buckets[b].wrapping_add(log_hash(topic.as_str(), stamp, body));
                self.log_bytes += entry_bytes(topic, body);
                while log.len() > self.cap {
                    let (old, old_body) = log.pop_first().expect("a log over its cap is not empty");
                    Self::note_dropped(&mut self.dropped, topic, &old, Gap::Trimmed);
                    self.buckets[b] =
                        self.buckets[b].wrapping_sub(log_hash(topic.as_str(), &old, &old_body));
                    self.log_bytes -= entry_bytes(topic, &old_body);
                }
                let now_oldest = log.first_key_value().map(|(s, _)| s.time_ms);
                if was_oldest != now_oldest {
                    if let Some(t) = was_oldest {
                        self.oldest.remove(&(t, topic.clone()));
                    }
                    if let Some(t) = now_oldest {
                        self.oldest.insert((t, topic.clone()));
                    }
                }
                true
            }
            Record::Reg {
                space,
                key,
                stamp,
                value,
            } => {
                let b = bucket_of(space.as_bytes(), key.as_bytes());
                let slot = (space.clone(), key.clone());
                if let Some(cur) = self.regs.get(&slot) {
                    if cur.stamp >= *stamp {
                        return false;
                    }
                    self.buckets[b] = self.buckets[b].wrapping_sub(reg_hash(
                        space,
                        key,
                        &cur.stamp,
                        cur.value.as_deref(),
                    ));
                }
                self.buckets[b] =
                    self.buckets[b].wrapping_add(reg_hash(space, key, stamp, value.as_deref()));
                self.regs.insert(
                    slot,
                    Reg {
                        stamp: stamp.clone(),
                        value: value.clone(),
                    },
                );
                true
            }
        }
    }

    /// The newest `n` entries of `topic`'s log, oldest first.
    pub fn last(&self, topic: &str, n: usize) -> Vec<(Stamp, Arc<str>)> {
        let Some(log) = self.logs.get(topic) else {
            return Vec::new();
        };
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .map(|(s, b)| (s.clone(), b.clone()))
            .collect()
    }

    /// The live value of register `(space, key)`.
    pub fn get(&self, space: &str, key: &str) -> Option<&Arc<str>> {
        self.regs
            .get(&(Arc::from(space), Arc::from(key)))
            .and_then(|r| r.value.as_ref())
    }

    /// The live `(key, value)` pairs of `space` whose key starts with `prefix`,
    /// in key order.
    pub fn scan<'a>(
        &'a self,
        space: &str,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>)> + 'a {
        let from = (Arc::<str>::from(space), Arc::<str>::from(prefix));
        let space_owned = from.0.clone();
        self.regs
            .range(from..)
            .take_while(move |((s, k), _)| *s == space_owned && k.starts_with(prefix))
            .filter_map(|((_, k), r)| r.value.as_ref().map(|v| (k, v)))
    }

    /// Entries in logs plus registers (tombstones included).
    pub fn len(&self) -> usize {
        self.logs.values().map(BTreeMap::len).sum::<usize>() + self.regs.len()
    }

    /// Whether there is no record at all.
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty() && self.regs.is_empty()
    }

    /// The anti-entropy digest: one order-independent hash per bucket.
    pub fn digest(&self) -> &[u64] {
        &self.buckets
    }

    /// Every record in the buckets listed, for a repair.
    pub fn bucket_records(&self, wanted: &[bool]) -> Vec<Record> {
        let mut out = Vec::new();
        for (topic, log) in &self.logs {
            if wanted.get(bucket_of(topic.as_str().as_bytes(), b"")) == Some(&true) {
                out.extend(log.iter().map(|(stamp, body)| Record::Log {
                    topic: topic.clone(),
                    stamp: stamp.clone(),
                    body: body.clone(),
                }));
            }
        }
        for ((space, key), reg) in &self.regs {
            if wanted.get(bucket_of(space.as_bytes(), key.as_bytes())) == Some(&true) {
                out.push(Record::Reg {
                    space: space.clone(),
                    key: key.clone(),
                    stamp: reg.stamp.clone(),
                    value: reg.value.clone(),
                });
            }
        }
        out
    }

    /// The greatest stamp time known, so a writer can stamp past it.
    pub fn max_time(&self) -> u64 {
        let logs = self
            .logs
            .values()
            .filter_map(|l| l.last_key_value().map(|(s, _)| s.time_ms));
        let regs = self.regs.values().map(|r| r.stamp.time_ms);
        logs.chain(regs).max().unwrap_or(0)
    }
}

/// FNV-1a 64: stable across builds and platforms, so digests of nodes running
/// the same wire version compare.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (splitmix64), so sums of hashes do not cancel easily.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn bucket_of(a: &[u8], b: &[u8]) -> usize {
    (fnv(&[a, b]) % BUCKETS as u64) as usize
}

fn stamp_bytes(s: &Stamp) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&s.time_ms.to_le_bytes());
    out[8..16].copy_from_slice(&s.origin.incarnation.to_le_bytes());
    out[16..].copy_from_slice(&s.seq.to_le_bytes());
    out
}

fn log_hash(topic: &str, stamp: &Stamp, body: &str) -> u64 {
    fnv(&[
        b"L",
        topic.as_bytes(),
        stamp.origin.name.as_bytes(),
        &stamp_bytes(stamp),
        body.as_bytes(),
    ])
}

fn reg_hash(space: &str, key: &str, stamp: &Stamp, value: Option<&str>) -> u64 {
    fnv(&[
        b"R",
        space.as_bytes(),
        key.as_bytes(),
        stamp.origin.name.as_bytes(),
        &stamp_bytes(stamp),
        value.map_or(b"\x00-none".as_slice(), str::as_bytes),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: u64, node: &str, seq: u64) -> Stamp {
        Stamp {
            time_ms: t,
            origin: NodeId::new(node, 1),
            seq,
        }
    }

    fn log(topic: &str, t: u64, body: &str) -> Record {
        Record::Log {
            topic: Topic::from(topic),
            stamp: stamp(t, "a", t),
            body: body.into(),
        }
    }

    fn reg(key: &str, t: u64, node: &str, value: Option<&str>) -> Record {
        Record::Reg {
            space: "room".into(),
            key: key.into(),
            stamp: stamp(t, node, t),
            value: value.map(Arc::from),
        }
    }

    #[test]
    fn logs_keep_the_newest_cap_entries_oldest_first() {
        let mut r = Records::new(3);
        for t in [5, 1, 4, 2, 3] {
            r.merge(&log("room:1", t, &t.to_string()));
        }
        let bodies: Vec<_> = r
            .last("room:1", 10)
            .into_iter()
            .map(|(_, b)| b.to_string())
            .collect();
        assert_eq!(bodies, ["3", "4", "5"]);
        assert_eq!(r.last("room:1", 2).len(), 2);
        assert!(
            !r.merge(&log("room:1", 1, "1")),
            "older than a full log: dominated"
        );
        assert!(!r.merge(&log("room:1", 5, "5")), "known");
    }

    #[test]
    fn registers_keep_the_greatest_stamp_and_tombstones_win_when_newer() {
        let mut r = Records::new(10);
        assert!(r.merge(&reg("lobby", 2, "a", Some("Lobby"))));
        assert!(!r.merge(&reg("lobby", 1, "b", Some("Old"))));
        assert_eq!(r.get("room", "lobby").map(|v| &**v), Some("Lobby"));
        assert!(r.merge(&reg("lobby", 3, "b", None)));
        assert_eq!(r.get("room", "lobby"), None);
        assert!(
            !r.merge(&reg("lobby", 2, "c", Some("Back"))),
            "the tombstone stays"
        );
    }

    #[test]
    fn scan_lists_live_keys_of_a_space_with_a_prefix() {
        let mut r = Records::new(10);
        r.merge(&reg("alice\u{0}1", 1, "a", Some("")));
        r.merge(&reg("alice\u{0}2", 1, "a", Some("")));
        r.merge(&reg("alice\u{0}3", 1, "a", Some("")));
        r.merge(&reg("alice\u{0}3", 2, "a", None));
        r.merge(&reg("bob\u{0}1", 1, "a", Some("")));
        let keys: Vec<_> = r
            .scan("room", "alice\u{0}")
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(keys, ["alice\u{0}1", "alice\u{0}2"]);
        assert_eq!(r.scan("other", "").count(), 0);
    }

    #[test]
    fn digests_match_exactly_when_states_match() {
        let records = [
            log("room:1", 1, "x"),
            log("room:1", 2, "y"),
            log("room:2", 3, "z"),
            reg("lobby", 1, "a", Some("L")),
            reg("lobby", 2, "b", None),
        ];
        let mut a = Records::new(2);
        let mut b = Records::new(2);
        for rec in &records {
            a.merge(rec);
        }
        for rec in records.iter().rev() {
            b.merge(rec);
        }
        assert_eq!(a.digest(), b.digest());
        b.merge(&log("room:1", 9, "new"));
        assert_ne!(a.digest(), b.digest());
        let differ: Vec<bool> = a
            .digest()
            .iter()
            .zip(b.digest())
            .map(|(x, y)| x != y)
            .collect();
        for rec in b.bucket_records(&differ) {
            a.merge(&rec);
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.last("room:1", 5), b.last("room:1", 5));
    }

    #[test]
    fn expiry_drops_entries_before_the_horizon_and_merge_refuses_them() {
        let mut r = Records::new(10);
        for t in [1, 2, 3] {
            r.merge(&log("room:1", t, "x"));
        }
        r.merge(&log("room:2", 2, "y"));
        r.merge(&reg("lobby", 1, "a", Some("L")));
        let before = r.log_bytes();
        assert_eq!(before, 4 * (48 + 6 + 1));
        let out = r.expire(3);
        assert_eq!(out.entries, 3, "room:1 @1 and @2, room:2 @2");
        assert_eq!(out.bytes as usize, before - r.log_bytes());
        assert_eq!(r.last("room:1", 10).len(), 1);
        assert!(r.last("room:2", 10).is_empty());
        assert_eq!(
            r.get("room", "lobby").map(|v| &**v),
            Some("L"),
            "registers stay"
        );
        // A peer that still holds the old entry cannot bring it back.
        assert!(!r.merge(&log("room:1", 2, "x")));
        assert!(!r.merge(&log("room:2", 1, "y")));
        assert!(r.merge(&log("room:2", 3, "new")));
        // The horizon never moves back.
        assert_eq!(r.expire(1), Expired::default());
        assert_eq!(r.horizon(), 3);
        assert!(!r.merge(&log("room:1", 2, "x")));
        // An emptied log is forgotten, not kept as an empty map.
        r.expire(100);
        assert!(r.logs.is_empty() && r.oldest.is_empty());
        assert_eq!(r.log_bytes(), 0);
        assert_eq!(r.len(), 1);
    }

    /// Expiry and merge commute: the state is top_cap(union) above the
    /// greatest horizon, whatever the order. The digest and the bytes agree.
    #[test]
    fn expiry_and_merge_give_one_state_in_any_order() {
        let a: Vec<Record> = (0..40)
            .map(|i| log(["t:0", "t:1", "t:2"][i % 3], (i * 7 % 40) as u64, "a"))
            .collect();
        // b's writer is another node: stamps are unique per write.
        let b: Vec<Record> = (0..40u64)
            .map(|i| Record::Log {
                topic: Topic::from(["t:1", "t:2", "t:3"][i as usize % 3]),
                stamp: stamp(i * 11 % 40 + 5, "b", i),
                body: "bb".into(),
            })
            .collect();
        let reference = {
            let mut r = Records::new(4);
            for rec in a.iter().chain(&b) {
                r.merge(rec);
            }
            r.expire(20);
            r
        };
        for order in 0..4 {
            let mut r = Records::new(4);
            let (first, second) = if order % 2 == 0 { (&a, &b) } else { (&b, &a) };
            for rec in first {
                r.merge(rec);
            }
            if order < 2 {
                r.expire(12);
                r.expire(20);
            }
            for rec in second.iter().rev() {
                r.merge(rec);
            }
            r.expire(20);
            let every = [true; BUCKETS];
            assert_eq!(r.digest(), reference.digest(), "order {order}");
            assert_eq!(r.bucket_records(&every), reference.bucket_records(&every));
            assert_eq!(r.log_bytes(), reference.log_bytes(), "order {order}");
            let total: usize = r.bucket_records(&every).iter().map(Record::size).sum();
            assert_eq!(r.log_bytes(), total);
        }
    }

    #[test]
    fn fit_drops_the_oldest_entries_of_every_log_until_the_budget_holds() {
        let mut r = Records::new(10);
        r.merge(&log("t:1", 1, "a"));
        r.merge(&log("t:2", 2, "b"));
        r.merge(&log("t:1", 3, "c"));
        r.merge(&log("t:2", 3, "d"));
        let each = 48 + 3 + 1;
        assert_eq!(r.fit(4 * each), None, "fits: nothing goes");
        assert_eq!(r.horizon(), 0);
        let (horizon, out) = r.fit(3 * each).expect("over budget");
        assert_eq!((horizon, out.entries), (2, 1), "t:1 @1 went");
        let (horizon, out) = r.fit(each).expect("over budget");
        assert_eq!(horizon, 4, "both entries @3 go together");
        assert_eq!((out.entries, out.bytes as usize), (3, 3 * each));
        assert_eq!(r.log_bytes(), 0);
        assert!(!r.merge(&log("t:1", 3, "c")), "below the horizon: refused");
    }

    fn entry(topic: &str, t: u64, node: &str, seq: u64) -> Record {
        Record::Log {
            topic: Topic::from(topic),
            stamp: stamp(t, node, seq),
            body: format!("{node}{seq}").into(),
        }
    }

    /// A position handed out at `HANDED_MS`, after every entry of the
    /// tests below was written.
    fn pos(entries: &[(&str, u64)]) -> Position {
        let mut p = Position {
            time_ms: HANDED_MS,
            ..Position::default()
        };
        for (node, seq) in entries {
            p.advance(&NodeId::new(*node, 1), *seq);
        }
        p
    }

    const HANDED_MS: u64 = 10_000;

    fn bodies(r: Result<Vec<(Stamp, Arc<str>)>, Gap>) -> Result<Vec<String>, Gap> {
        r.map(|v| v.into_iter().map(|(_, b)| b.to_string()).collect())
    }

    /// A position covers per origin; what it does not cover comes back in
    /// log order whatever the merge order, or the reason it cannot.
    #[test]
    fn since_gives_exactly_what_a_position_lacks_or_why_not() {
        let mut r = Records::new(4);
        // b's entries reach this node late (a partition), out of time order.
        for rec in [
            entry("t", 1, "a", 1),
            entry("t", 5, "a", 2),
            entry("t", 2, "b", 1),
            entry("t", 3, "b", 2),
        ] {
            r.merge(&rec);
        }
        let computed = |entries| Position {
            time_ms: 0,
            ..pos(entries)
        };
        assert_eq!(r.position("t"), computed(&[("a", 2), ("b", 2)]));
        assert_eq!(
            bodies(r.since("t", &pos(&[("a", 1)]))),
            Ok(vec!["b1".into(), "b2".into(), "a2".into()])
        );
        assert_eq!(
            bodies(r.since("t", &pos(&[("a", 2), ("b", 2)]))),
            Ok(vec![])
        );
        // An origin this node knows nothing of in the topic: it cannot vouch.
        assert_eq!(
            r.since("t", &pos(&[("a", 2), ("b", 2), ("c", 1)])),
            Err(Gap::Unknown)
        );
        // The log is full (4): a position that does not cover its oldest
        // entry (a1) may lack entries pushed out before they got here.
        assert_eq!(r.since("t", &pos(&[("c", 1)])), Err(Gap::Trimmed));
        assert_eq!(r.since("other", &pos(&[("a", 1)])), Err(Gap::Unknown));
        // A hole: b3 is missing while b4 is held.
        r.merge(&entry("t", 7, "b", 4));
        assert_eq!(r.since("t", &pos(&[("a", 2), ("b", 2)])), Err(Gap::Unknown));
        assert_eq!(
            r.position("t"),
            computed(&[("a", 2), ("b", 2)]),
            "b4 is past the hole"
        );
        // a1 is pushed out by the cap (4): a position before it is trimmed.
        r.merge(&entry("t", 6, "b", 3));
        assert_eq!(r.position("t"), computed(&[("a", 2), ("b", 4)]));
        assert_eq!(r.since("t", &pos(&[("b", 4)])), Err(Gap::Trimmed));
        assert_eq!(
            bodies(r.since("t", &pos(&[("a", 1), ("b", 2)]))),
            Ok(vec!["a2".into(), "b3".into(), "b4".into()])
        );
        // Expiry: what went is reported as expired, and stays known.
        r.expire(6);
        assert_eq!(r.since("t", &pos(&[("a", 1), ("b", 4)])), Err(Gap::Expired));
        assert_eq!(
            bodies(r.since("t", &pos(&[("a", 2), ("b", 2)]))),
            Ok(vec!["b3".into(), "b4".into()])
        );
        assert_eq!(
            bodies(r.since("t", &pos(&[("a", 2), ("b", 4)]))),
            Ok(vec![])
        );
        // after(): an origin's entries past a seq, as held.
        let after: Vec<u64> = r
            .after("t", &NodeId::new("b", 1), 2)
            .iter()
            .map(|(s, _)| s.seq)
            .collect();
        assert_eq!(after, [3, 4]);
        assert!(r.after("t", &NodeId::new("b", 1), 4).is_empty());
    }

    /// A message published after a position was handed out and expired on
    /// every node before it reached this one leaves no trace here: once the
    /// horizon passes the position's time less the clocks' skew, the answer
    /// is `Expired`, never a recovery without it.
    #[test]
    fn a_horizon_past_the_position_time_is_expired() {
        let mut r = Records::new(10);
        r.merge(&entry("t", 4_000, "a", 1));
        let p = Position {
            time_ms: 5_000,
            ..pos(&[("a", 1)])
        };
        // Anything published after p is stamped at least 5,000 - skew.
        r.expire(5_000 - MAX_CLOCK_SKEW_MS);
        assert_eq!(bodies(r.since("t", &p)), Ok(vec![]));
        r.expire(5_000 - MAX_CLOCK_SKEW_MS + 1);
        assert_eq!(r.since("t", &p), Err(Gap::Expired));
        // a2, stamped 5,500, expired elsewhere and never got here; a1 expired
        // here too, so this node holds nothing of `a` past the position.
        r.expire(6_000);
        assert!(!r.merge(&entry("t", 5_500, "a", 2)), "refused as expired");
        let unseen = {
            let mut r = Records::new(10);
            r.merge(&entry("t", 4_000, "a", 1));
            r.expire(6_000);
            r
        };
        assert_eq!(unseen.since("t", &p), Err(Gap::Expired));
        assert_eq!(r.since("t", &p), Err(Gap::Expired));
    }

    #[test]
    fn limits() {
        assert!(log("t", 1, "x").is_valid());
        assert!(!log("t", 1, &"x".repeat(MAX_VALUE + 1)).is_valid());
        assert!(!reg(&"k".repeat(MAX_NAME + 1), 1, "a", None).is_valid());
        assert!(log("t", LAST_STAMP_MS, "x").is_valid());
        assert!(!log("t", u64::MAX, "x").is_valid(), "a stamp past the last");
    }

    /// A peer's log entries carry any `seq`: one at `u64::MAX`, after a
    /// position that has the entry before it, is given back without
    /// overflowing the next seq expected.
    #[test]
    fn since_an_entry_at_the_last_seq_does_not_overflow() {
        let o = NodeId::new("rogue", 1);
        let mut r = Records::new(10);
        for (t, seq) in [(1, u64::MAX - 1), (2, u64::MAX)] {
            r.merge(&Record::Log {
                topic: Topic::from("t"),
                stamp: Stamp {
                    time_ms: t,
                    origin: o.clone(),
                    seq,
                },
                body: "{}".into(),
            });
        }
        let mut pos = Position::default();
        pos.advance(&o, u64::MAX - 1);
        pos.time_ms = 10_000;
        let got = r.since("t", &pos).expect("one entry after the position");
        assert_eq!(got.len(), 1);
    }
}
