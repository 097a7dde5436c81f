//! Stream positions of recoverable topics: a version vector over publishing
//! node incarnations.
//!
//! Every node numbers its own appends to a topic's log `1, 2, 3, ...` (per
//! topic, per incarnation: contiguous), so "all of origin `o`'s messages of
//! this topic up to `n`" is one number per origin. A [`Position`] holds one
//! such entry per origin; an origin it does not name counts as 0 (nothing of
//! it). Merge order, partitions and late arrivals do not matter: a message
//! `o:k` is covered exactly when `k <= position[o]`. See ALGORITHM.md
//! ("Stream positions").
//!
//! A position also carries the wall-clock time it was handed out
//! ([`Position::time_ms`]): every message it lacks that was published later
//! is stamped no earlier than that (less the clocks' skew), so once the
//! history horizon passes it such a message may have expired on every node,
//! including ones the answering node never saw ([`crate::Records::since`]).
//!
//! Encoding ([`Position::to_bytes`]): a version byte (2), varint time, then
//! per origin in order: varint name length, name bytes, varint incarnation,
//! varint seq. The gateway hands it to clients as base64 (`_pos`), opaque to
//! them.

use std::collections::BTreeMap;

use compact_str::CompactString;

use crate::id::NodeId;

const VERSION: u8 = 2;

/// Longest encoded position [`Position::from_bytes`] reads (the gateway
/// refuses longer ones before decoding).
pub const MAX_POSITION_BYTES: usize = 16 * 1024;

/// How far apart the cluster's wall clocks may be. A position's time less
/// this is a lower bound on the stamp of any message published after it was
/// handed out (a stamp is at least its writer's wall clock): the margin
/// [`crate::Records::since`] keeps from the history horizon. A writer whose
/// clock is further behind may have a message expire unseen that a recovery
/// then does not know of (ALGORITHM.md, "Stream positions").
pub const MAX_CLOCK_SKEW_MS: u64 = 2_000;

/// What a client has of a topic: per origin, every message up to a seq.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Per origin, the greatest seq covered (every one before it too).
    pub seqs: BTreeMap<NodeId, u64>,
    /// The wall-clock time (ms since the Unix epoch) this position was handed
    /// to a client; 0 when it never was (a position computed, not given).
    pub time_ms: u64,
}

impl Position {
    /// The entry of `origin` (0: none of its messages).
    pub fn get(&self, origin: &NodeId) -> u64 {
        self.seqs.get(origin).copied().unwrap_or(0)
    }

    /// Whether message `origin:seq` is covered.
    pub fn covers(&self, origin: &NodeId, seq: u64) -> bool {
        seq <= self.get(origin)
    }

    /// Raises `origin`'s entry to `seq` (a lower one changes nothing).
    pub fn advance(&mut self, origin: &NodeId, seq: u64) {
        if seq > self.get(origin) {
            self.seqs.insert(origin.clone(), seq);
        }
    }

    /// The compact binary encoding, with [`Position::time_ms`].
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_at(self.time_ms)
    }

    /// The compact binary encoding, stamped handed out at `time_ms`.
    pub fn to_bytes_at(&self, time_ms: u64) -> Vec<u8> {
        let mut out = vec![VERSION];
        put_varint(&mut out, time_ms);
        for (id, seq) in &self.seqs {
            put_varint(&mut out, id.name.len() as u64);
            out.extend_from_slice(id.name.as_bytes());
            put_varint(&mut out, id.incarnation);
            put_varint(&mut out, *seq);
        }
        out
    }

    /// Decodes [`Position::to_bytes`]; `None` for anything else (another
    /// version, truncated, trailing bytes, origins out of order, a name that
    /// is not UTF-8, a 0 entry).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_POSITION_BYTES {
            return None;
        }
        let (&version, mut rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let time_ms = get_varint(&mut rest)?;
        let mut map = BTreeMap::new();
        let mut last: Option<NodeId> = None;
        while !rest.is_empty() {
            let len = usize::try_from(get_varint(&mut rest)?).ok()?;
            if len > rest.len() {
                return None;
            }
            let (name, tail) = rest.split_at(len);
            rest = tail;
            let name = std::str::from_utf8(name).ok()?;
            let incarnation = get_varint(&mut rest)?;
            let seq = get_varint(&mut rest)?;
            let id = NodeId {
                name: CompactString::from(name),
                incarnation,
            };
            if seq == 0 || last.as_ref().is_some_and(|l| *l >= id) {
                return None;
            }
            last = Some(id.clone());
            map.insert(id, seq);
        }
        Some(Self { seqs: map, time_ms })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut p = Position {
            time_ms: 1_700_000_000_000,
            ..Position::default()
        };
        p.advance(&NodeId::new("a", 7), 3);
        p.advance(&NodeId::new("b", u64::MAX), 300);
        p.advance(&NodeId::new("a", 7), 2);
        assert_eq!(p.get(&NodeId::new("a", 7)), 3, "never moves back");
        let bytes = p.to_bytes();
        assert_eq!(Position::from_bytes(&bytes), Some(p.clone()));
        assert_eq!(Position::from_bytes(&[2, 0]), Some(Position::default()));
        assert_eq!(Position::from_bytes(&[]), None);
        assert_eq!(Position::from_bytes(&[2]), None, "no time");
        assert_eq!(Position::from_bytes(&[1]), None, "version 1 had no time");
        assert_eq!(Position::from_bytes(&[3, 0]), None);
        assert_eq!(p.to_bytes_at(5)[1], 5, "the time follows the version");
        for cut in 1..bytes.len() - 1 {
            assert!(
                Position::from_bytes(&bytes[..cut]).is_none_or(|q| q != p),
                "cut at {cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0x80);
        assert_eq!(Position::from_bytes(&trailing), None);
        // Out of order origins are refused.
        let mut out = vec![2, 0];
        for name in ["b", "a"] {
            put_varint(&mut out, 1);
            out.extend_from_slice(name.as_bytes());
            put_varint(&mut out, 1);
            put_varint(&mut out, 1);
        }
        assert_eq!(Position::from_bytes(&out), None);
        assert!(p.covers(&NodeId::new("b", u64::MAX), 300));
        assert!(!p.covers(&NodeId::new("b", u64::MAX), 301));
        assert!(!p.covers(&NodeId::new("c", 1), 1));
    }
}
