//! Anti-entropy: periodic version-vector digests with one random peer (and
//! repeated to new contacts until they answer), and the per-origin repair a
//! digest asks for, paced by acknowledgements.
//!
//! # Repair pacing
//!
//! A digest from a node that lacks much (a new node in a cluster holding 1M
//! presences) asks for many repair messages. They are cut from one snapshot
//! of the store (so a full slice stays consistent across its parts) into a
//! [`RepairJob`], and sent while the unacknowledged repairs to that peer
//! total at most [`NodeConfig::repair_window`](super::NodeConfig) bytes (one
//! at least). The peer acknowledges each repair once merged
//! ([`Body::RepairAck`]), which frees room for the next. So a transfer never
//! puts more than the window in the transport's peer queue, and the
//! receiver's input never holds more than a window of repairs ahead of its
//! probes. While a job to a peer makes progress, its digests do not start
//! another copy of the same state; a job that has not been acknowledged for
//! `down_after` (a lost link), or whose peer went down, is dropped, and the
//! next digest starts afresh from what the peer holds by then.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;

use super::{Node, PeerState};
use crate::codec::Body;
use crate::id::{NodeId, Topic};
use crate::presence::PresEntry;
use crate::store::{Cut, Delta, Part, Store};

/// Repairs for one peer, cut from one snapshot, sent as acknowledgements
/// free room in the window.
#[derive(Debug)]
pub(super) struct RepairJob {
    /// Repairs not sent yet, in order.
    todo: VecDeque<(Delta<PresEntry>, Delta<Topic>)>,
    /// Sent and not acknowledged: `(seq, encoded bytes)`, in order.
    in_flight: VecDeque<(u64, usize)>,
    /// Sum of the bytes in `in_flight`.
    in_flight_bytes: usize,
    /// When the job started or last saw an acknowledgement.
    progress: Instant,
    /// A repair came back unsent ([`Node::handle_unsent`]): the tick tries
    /// again even if no acknowledgement is due.
    returned: bool,
}

/// Anti-entropy rounds that repeat the digest to a new contact until it answers.
const SYNC_RETRIES: u8 = 3;

impl Node {
    /// Exchanges version vectors with one random up peer, and re-announces us to
    /// seeds we are not connected to.
    pub(super) fn anti_entropy(&mut self) {
        let up: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Up && p.addr.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let mut pick = None;
        if !up.is_empty() {
            let i = self.rng.random_range(0..up.len());
            pick = Some(up[i].clone());
        }
        for id in &up {
            let p = self.peers.get_mut(id).expect("listed above");
            if p.syncs_left > 0 {
                p.syncs_left -= 1;
                if pick.as_ref() != Some(id) {
                    self.send_digest(id, false);
                }
            }
        }
        if let Some(id) = pick {
            self.send_digest(&id, false);
        }
        let connected = self.up_addrs();
        for addr in self.cfg.seeds.clone() {
            if addr != self.cfg.addr && !connected.contains(&addr) {
                self.send(None, addr, Body::Hello { full: true });
            }
        }
    }

    /// Starts a digest exchange with a new contact (a peer that came up, fell
    /// behind the buffer, or whose address we just learned): nothing was pushed
    /// to it while it was away, so the exchange is all that repairs it. The
    /// digest is a datagram, so the next `SYNC_RETRIES` anti-entropy rounds
    /// send it again until a digest of the peer's arrives, which is what lets
    /// us repair it (a repair from it is not enough: it may be behind too, and
    /// its digest back was lost). One lost digest left a node missing a peer's
    /// ops from a partition until a random round picked that peer: 8.5 s after
    /// the heal in `lossy-network`.
    pub(super) fn sync_with(&mut self, id: &NodeId) {
        if let Some(p) = self.peers.get_mut(id) {
            p.syncs_left = SYNC_RETRIES;
        }
        self.send_digest(id, false);
    }

    /// A digest from `id`: we have seen what it lacks and repaired it.
    pub(super) fn synced(&mut self, id: &NodeId) {
        if let Some(p) = self.peers.get_mut(id) {
            p.syncs_left = 0;
        }
    }

    pub(super) fn send_digest(&mut self, to: &NodeId, reply: bool) {
        let Some(addr) = self.peers.get(to).and_then(|p| p.addr) else {
            return;
        };
        self.stats.digests_sent += 1;
        let body = Body::Digest {
            presence: self.presence.store().digest(),
            subs: self.subs.store().digest(),
            reply,
            members: self.up_members(),
        };
        self.send(Some(to.clone()), addr, body);
        self.send_records_digest(to.clone(), addr, false);
    }

    pub(super) fn handle_digest(
        &mut self,
        now: Instant,
        from: &NodeId,
        addr: SocketAddr,
        presence: &[(NodeId, u64)],
        subs: &[(NodeId, u64)],
        reply: bool,
    ) {
        // Acknowledgements travel on the reliable stream: one missing for
        // longer than the failure detector takes to mark an unreachable peer
        // down means the link lost it (a new connection), not a slow merge.
        let patience = self.cfg.down_after.max(self.cfg.anti_entropy);
        let busy = self
            .repairs
            .get(from)
            .is_some_and(|job| now.saturating_duration_since(job.progress) < patience);
        if !busy {
            self.start_repair(now, from, addr, presence, subs);
        }
        if !reply && (behind(self.presence.store(), presence) || behind(self.subs.store(), subs)) {
            self.send_digest(from, true);
        }
    }

    /// Cuts what `from`'s version vectors show it lacks into a new repair
    /// job (replacing any stale one) and sends its first window.
    fn start_repair(
        &mut self,
        now: Instant,
        from: &NodeId,
        addr: SocketAddr,
        presence: &[(NodeId, u64)],
        subs: &[(NodeId, u64)],
    ) {
        // A repair carries at most `repair_chunk` entries, and about
        // `repair_window` bytes of them (one entry at least): the window is
        // what the peer queue may hold, and one frame stays far below
        // `MAX_FRAME` whatever the metas.
        let cut = Cut {
            adds: self.cfg.repair_chunk.max(1),
            bytes: self.cfg.repair_window,
        };
        // Serve our own ops, and those of origins that cannot serve themselves
        // (not up here): an up origin answers the same peer's digest with its
        // own slice, so a joining node receives each entry once, not once per
        // member.
        let serves = |id: &NodeId| {
            id != from
                && (*id == self.cfg.id
                    || self
                        .peers
                        .get(id)
                        .is_none_or(|p| p.state != PeerState::Up || p.addr.is_none()))
        };
        let mut p_parts = slices(self.presence.store(), presence, &serves, cut, pres_bytes);
        let mut s_parts = slices(self.subs.store(), subs, &serves, cut, sub_bytes);
        // One part per origin per message; a long slice takes several messages.
        let mut todo = VecDeque::new();
        while !p_parts.is_empty() || !s_parts.is_empty() {
            let mut load = Load::default();
            let presence = take_batch(&mut p_parts, &mut load, cut, pres_bytes);
            let subs = take_batch(&mut s_parts, &mut load, cut, sub_bytes);
            todo.push_back((Delta { parts: presence }, Delta { parts: subs }));
        }
        if todo.is_empty() {
            self.repairs.remove(from);
            return;
        }
        self.repairs.insert(
            from.clone(),
            RepairJob {
                todo,
                in_flight: VecDeque::new(),
                in_flight_bytes: 0,
                progress: now,
                returned: false,
            },
        );
        self.pump_repair(from, addr);
    }

    /// Sends `to`'s next repairs while the window has room (always one when
    /// nothing is in flight); ends the job when all are acknowledged.
    fn pump_repair(&mut self, to: &NodeId, addr: SocketAddr) {
        let window = self.cfg.repair_window;
        loop {
            let Some(job) = self.repairs.get_mut(to) else {
                return;
            };
            if job.todo.is_empty() && job.in_flight.is_empty() {
                self.repairs.remove(to);
                return;
            }
            if !job.in_flight.is_empty() && job.in_flight_bytes >= window {
                return;
            }
            let Some((presence, subs)) = job.todo.pop_front() else {
                return;
            };
            let seq = self.next_repair;
            self.next_repair += 1;
            self.stats.repairs_sent += 1;
            self.send(
                Some(to.clone()),
                addr,
                Body::Repair {
                    presence,
                    subs,
                    seq,
                },
            );
            let bytes = self.transmits.back().map_or(0, |t| t.msg.encoded_len());
            let job = self.repairs.get_mut(to).expect("present above");
            job.in_flight.push_back((seq, bytes));
            job.in_flight_bytes += bytes;
        }
    }

    /// The driver could not queue repair `seq` to `to` (its queue to that
    /// peer holds all the repairs it may): the repair goes back to the front
    /// of the job, out of the window, and is sent again when an
    /// acknowledgement frees room or at the next tick. A repair of a job
    /// that was replaced since is dropped: the new job covers it.
    pub(super) fn return_repair(
        &mut self,
        to: &NodeId,
        seq: u64,
        presence: Delta<PresEntry>,
        subs: Delta<Topic>,
    ) {
        let Some(job) = self.repairs.get_mut(to) else {
            return;
        };
        let Some(i) = job.in_flight.iter().position(|&(s, _)| s == seq) else {
            return;
        };
        let (_, bytes) = job.in_flight.remove(i).expect("found above");
        job.in_flight_bytes -= bytes;
        job.todo.push_front((presence, subs));
        job.returned = true;
        self.stats.repairs_returned += 1;
    }

    /// Tries again the jobs a repair came back to (see
    /// [`Node::return_repair`]).
    pub(super) fn retry_returned_repairs(&mut self) {
        let ids: Vec<NodeId> = self
            .repairs
            .iter()
            .filter(|(_, job)| job.returned)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(addr) = self.peers.get(&id).and_then(|p| p.addr) else {
                continue;
            };
            if let Some(job) = self.repairs.get_mut(&id) {
                job.returned = false;
            }
            self.pump_repair(&id, addr);
        }
    }

    /// `from` merged our repair `seq` (and every one before it).
    pub(super) fn handle_repair_ack(
        &mut self,
        now: Instant,
        from: &NodeId,
        addr: SocketAddr,
        seq: u64,
    ) {
        let Some(job) = self.repairs.get_mut(from) else {
            return;
        };
        let mut freed = false;
        while let Some(&(s, bytes)) = job.in_flight.front() {
            if s > seq {
                break;
            }
            job.in_flight.pop_front();
            job.in_flight_bytes -= bytes;
            freed = true;
        }
        if freed {
            job.progress = now;
            self.pump_repair(from, addr);
        }
    }
}

/// What a peer whose version vector is `theirs` lacks of `store`, one slice
/// per origin we serve, each of at most `chunk` adds.
fn slices<E: Clone>(
    store: &Store<E>,
    theirs: &[(NodeId, u64)],
    serves: &dyn Fn(&NodeId) -> bool,
    cut: Cut,
    size: fn(&E) -> usize,
) -> Vec<Part<E>> {
    let mut parts = Vec::new();
    for (id, _) in store.digest() {
        if serves(&id) {
            let after = theirs
                .binary_search_by(|(k, _)| k.cmp(&id))
                .map_or(0, |i| theirs[i].1);
            parts.extend(store.slice(&id, after, cut, size));
        }
    }
    parts
}

/// What one repair message carries so far, over its presence and
/// subscription halves.
#[derive(Default)]
struct Load {
    /// Entries (a part counts one at least).
    adds: usize,
    /// Bytes, as [`part_bytes`] counts them.
    bytes: usize,
}

/// Takes from `parts` the batch for one repair message: at most one part per
/// origin, and parts while the message's `load` stays within `cut`. A part
/// bigger than `cut` goes alone. The rest stays in `parts`, in order.
fn take_batch<E>(
    parts: &mut Vec<Part<E>>,
    load: &mut Load,
    cut: Cut,
    size: fn(&E) -> usize,
) -> Vec<Part<E>> {
    let mut batch: Vec<Part<E>> = Vec::new();
    let mut rest = Vec::new();
    for part in parts.drain(..) {
        let bytes = part_bytes(&part, size);
        let empty = load.adds == 0;
        if batch.iter().any(|b| b.origin == part.origin)
            || (!empty
                && (load.adds + part.adds.len() > cut.adds || load.bytes + bytes > cut.bytes))
        {
            rest.push(part);
        } else {
            load.adds += part.adds.len().max(1);
            load.bytes += bytes;
            batch.push(part);
        }
    }
    *parts = rest;
    batch
}

/// Rough bytes of a part in a message: its entries by `size`, 16 per entry
/// and per removal for the dots, and its origin and op ranges.
fn part_bytes<E>(part: &Part<E>, size: fn(&E) -> usize) -> usize {
    let adds: usize = part.adds.iter().map(|(_, e)| size(e) + 16).sum();
    adds + 16 * part.removes.len() + 16 * part.ops.spans().len() + 64
}

/// Rough bytes of a presence entry in a message: its strings, and its
/// connection id and refs.
fn pres_bytes(e: &PresEntry) -> usize {
    e.topic.as_str().len() + e.key.len() + e.meta.as_str().len() + 48
}

/// Rough bytes of a subscription entry (a topic) in a message.
fn sub_bytes(t: &Topic) -> usize {
    t.as_str().len() + 8
}

/// Whether a peer's version vector shows ops we lack (of an origin not
/// purged here), so our digest back lets it repair us.
fn behind<E: Clone>(store: &Store<E>, theirs: &[(NodeId, u64)]) -> bool {
    theirs
        .iter()
        .any(|(id, max)| !store.is_purged(id) && *max > store.known(id))
}
