//! Delta replication (Almeida et al., Algorithm 2, with the BP and RR
//! refinements of Enes et al. 2019): the δ-buffer, merging peer deltas,
//! relaying their novel part, pushing each peer the δ-group it lacks, and
//! retransmission of unacknowledged deltas.

use std::time::Instant;

use rand::Rng;

use super::timers::Timer;
use super::{Node, PeerState};
use crate::codec::Body;
use crate::id::{NodeId, Topic};
use crate::presence::PresEntry;
use crate::store::{Delta, Part};

#[derive(Debug)]
pub(super) struct Buffered {
    pub(super) seq: u64,
    pub(super) from: Option<NodeId>,
    /// Relayed entries go to a few random peers only (`None`: to every peer).
    pub(super) to: Option<Vec<NodeId>>,
    pub(super) presence: Vec<Part<PresEntry>>,
    pub(super) subs: Vec<Part<Topic>>,
}

impl Node {
    /// A peer acknowledged the delta `start..seq`. Only an ack that continues
    /// what the peer already holds moves it: if an earlier delta was lost,
    /// retransmission resends it.
    pub(super) fn handle_ack(&mut self, now: Instant, from: &NodeId, start: u64, seq: u64) {
        if let Some(p) = self.peers.get_mut(from) {
            if start <= p.acked {
                let was = p.acked;
                p.acked = p.acked.max(seq.min(self.next_seq));
                p.sent = p.sent.max(p.acked);
                if p.acked > was && p.acked < p.sent {
                    // The oldest outstanding delta is now a later one, sent
                    // at most now.
                    p.unacked_since = now;
                }
            }
        }
        self.check_pending_subs(now);
        self.gc_buffer();
    }

    /// Buffers a local op and schedules the push. Returns its buffer seq.
    pub(super) fn buffer_local(
        &mut self,
        now: Instant,
        presence: Vec<Part<PresEntry>>,
        subs: Vec<Part<Topic>>,
    ) -> u64 {
        self.push_buffer(now, None, None, presence, subs)
    }

    /// Up to `relay_fanout` random up peers other than `from` and the origins
    /// of what is relayed: the origins push their own ops to everyone, so
    /// relaying is the epidemic backup for links that are cut, not a second
    /// full broadcast (which would cost N² messages per change).
    pub(super) fn relay_targets(&mut self, from: &NodeId, origins: &[NodeId]) -> Vec<NodeId> {
        let mut candidates: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.state == PeerState::Up && p.addr.is_some() && *id != from && !origins.contains(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let k = self.cfg.relay_fanout.min(candidates.len());
        for i in 0..k {
            let j = self.rng.random_range(i..candidates.len());
            candidates.swap(i, j);
        }
        candidates.truncate(k);
        candidates
    }

    pub(super) fn push_buffer(
        &mut self,
        now: Instant,
        from: Option<NodeId>,
        to: Option<Vec<NodeId>>,
        presence: Vec<Part<PresEntry>>,
        subs: Vec<Part<Topic>>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.buffer.push_back(Buffered {
            seq,
            from,
            to,
            presence,
            subs,
        });
        if self.buffer.len() > self.cfg.buffer_cap {
            self.buffer.pop_front();
            self.stats.buffer_overflows += 1;
        }
        self.stats.peak_buffer = self.stats.peak_buffer.max(self.buffer.len());
        if !self.timers.is_set(Timer::Flush) {
            self.timers.set(Timer::Flush, now + self.cfg.flush_delay);
        }
        seq
    }

    /// Merges a delta (`relay`: its novel part is buffered for relay to
    /// `relay_fanout` peers) or a repair (not relayed: a repair answers one
    /// peer's digest, every other peer gets its own, and relaying a large
    /// state transfer would push it, unpaced, to every neighbour of the new
    /// node).
    pub(super) fn merge(
        &mut self,
        now: Instant,
        from: Option<&NodeId>,
        presence: Delta<PresEntry>,
        subs: Delta<Topic>,
        relay: bool,
    ) {
        let mut novel_p = Vec::new();
        let mut novel_s = Vec::new();
        for part in presence.parts {
            if self.admit_origin(now, &part.origin) {
                novel_p.extend(self.presence.merge(part, &mut self.scratch));
            }
        }
        for part in subs.parts {
            if self.admit_origin(now, &part.origin) {
                novel_s.extend(self.subs.merge(part));
            }
        }
        if relay && (!novel_p.is_empty() || !novel_s.is_empty()) {
            let to = from.map(|f| {
                let origins: Vec<NodeId> = novel_p
                    .iter()
                    .map(|p| p.origin.clone())
                    .chain(novel_s.iter().map(|p| p.origin.clone()))
                    .collect();
                self.relay_targets(f, &origins)
            });
            self.push_buffer(now, from.cloned(), to, novel_p, novel_s);
        }
    }

    /// Sends each up peer the δ-group it has not been sent, minus what came
    /// from it (BP).
    pub(super) fn flush(&mut self, now: Instant) {
        let front = self.buffer.front().map_or(self.next_seq, |b| b.seq);
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            let p = &self.peers[&id];
            let Some(addr) = p.addr else { continue };
            if p.state != PeerState::Up || p.sent >= self.next_seq {
                continue;
            }
            if p.acked < front {
                // Too far behind: entries it needs were dropped. Repair from
                // version vectors instead of replaying the buffer.
                let p = self.peers.get_mut(&id).expect("listed above");
                p.acked = self.next_seq;
                p.sent = self.next_seq;
                self.sync_with(&id);
                continue;
            }
            let start = (p.sent - front) as usize;
            let entries = self.buffer.range(start..).filter(|b| {
                b.from.as_ref() != Some(&id) && b.to.as_ref().is_none_or(|to| to.contains(&id))
            });
            let mut pp = Vec::new();
            let mut sp = Vec::new();
            for b in entries {
                pp.extend(b.presence.iter());
                sp.extend(b.subs.iter());
            }
            let presence = Delta::join(pp);
            let subs = Delta::join(sp);
            let p = self.peers.get_mut(&id).expect("listed above");
            let old_sent = p.sent;
            p.sent = self.next_seq;
            if presence.is_empty() && subs.is_empty() {
                // Nothing it lacks: count as acknowledged if all before was.
                if p.acked >= old_sent {
                    p.acked = self.next_seq;
                }
                continue;
            }
            if p.acked >= old_sent {
                // Nothing was outstanding: this delta is the oldest unacked.
                p.unacked_since = now;
            }
            self.stats.deltas_sent += 1;
            self.send(
                Some(id),
                addr,
                Body::Delta {
                    start: old_sent,
                    seq: self.next_seq,
                    presence,
                    subs,
                },
            );
        }
        self.check_pending_subs(now);
        self.gc_buffer();
    }

    /// Drops buffer entries every up peer has acknowledged.
    pub(super) fn gc_buffer(&mut self) {
        let min = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Up && p.addr.is_some())
            .map(|p| p.acked)
            .min()
            .unwrap_or(self.next_seq);
        while self.buffer.front().is_some_and(|b| b.seq < min) {
            self.buffer.pop_front();
        }
    }

    /// Retransmission of unacknowledged deltas (failure detection runs in
    /// [`Membership`]).
    pub(super) fn tick(&mut self, now: Instant) {
        let ae = self.cfg.anti_entropy;
        self.greeted
            .retain(|_, t| now.saturating_duration_since(*t) < ae);
        let mut retransmit = false;
        for p in self.peers.values_mut() {
            if p.state == PeerState::Up
                && p.acked < p.sent
                && now.saturating_duration_since(p.unacked_since) >= self.cfg.retransmit_after
            {
                p.sent = p.acked;
                retransmit = true;
            }
        }
        if retransmit {
            self.flush(now);
        }
        self.retry_returned_repairs();
        self.gc_buffer();
    }
}
