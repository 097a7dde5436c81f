//! Anti-entropy: periodic version-vector digests with one random peer (and
//! repeated to new contacts until they answer), and the per-origin repair a
//! digest asks for.

use std::net::SocketAddr;

use rand::Rng;

use super::{Node, PeerState};
use crate::codec::Body;
use crate::id::NodeId;
use crate::store::{Delta, Part, Store};

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
        from: &NodeId,
        addr: SocketAddr,
        presence: &[(NodeId, u64)],
        subs: &[(NodeId, u64)],
        reply: bool,
    ) {
        let chunk = self.cfg.repair_chunk;
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
        let mut p_parts = slices(self.presence.store(), presence, &serves, chunk);
        let mut s_parts = slices(self.subs.store(), subs, &serves, chunk);
        // One part per origin per message; a long slice takes several messages.
        while !p_parts.is_empty() || !s_parts.is_empty() {
            let mut size = 0;
            let presence = take_batch(&mut p_parts, &mut size, chunk);
            let subs = take_batch(&mut s_parts, &mut size, chunk);
            self.stats.repairs_sent += 1;
            self.send(
                Some(from.clone()),
                addr,
                Body::Repair {
                    presence: Delta { parts: presence },
                    subs: Delta { parts: subs },
                },
            );
        }
        if !reply && (behind(self.presence.store(), presence) || behind(self.subs.store(), subs)) {
            self.send_digest(from, true);
        }
    }
}

/// What a peer whose version vector is `theirs` lacks of `store`, one slice
/// per origin we serve, each of at most `chunk` adds.
fn slices<E: Clone>(
    store: &Store<E>,
    theirs: &[(NodeId, u64)],
    serves: &dyn Fn(&NodeId) -> bool,
    chunk: usize,
) -> Vec<Part<E>> {
    let mut parts = Vec::new();
    for (id, _) in store.digest() {
        if serves(&id) {
            let after = theirs
                .binary_search_by(|(k, _)| k.cmp(&id))
                .map_or(0, |i| theirs[i].1);
            parts.extend(store.slice(&id, after, chunk));
        }
    }
    parts
}

/// Takes from `parts` the batch for one repair message: at most one part per
/// origin, and parts while the message's adds (`size`, shared by its presence
/// and subscription halves; a part counts at least one) stay within `chunk`.
/// A part bigger than `chunk` goes alone. The rest stays in `parts`, in order.
fn take_batch<E>(parts: &mut Vec<Part<E>>, size: &mut usize, chunk: usize) -> Vec<Part<E>> {
    let mut batch: Vec<Part<E>> = Vec::new();
    let mut rest = Vec::new();
    for part in parts.drain(..) {
        if batch.iter().any(|b| b.origin == part.origin)
            || (*size > 0 && *size + part.adds.len() > chunk)
        {
            rest.push(part);
        } else {
            *size += part.adds.len().max(1);
            batch.push(part);
        }
    }
    *parts = rest;
    batch
}

/// Whether a peer's version vector shows ops we lack (of an origin not
/// purged here), so our digest back lets it repair us.
fn behind<E: Clone>(store: &Store<E>, theirs: &[(NodeId, u64)]) -> bool {
    theirs
        .iter()
        .any(|(id, max)| !store.is_purged(id) && *max > store.known(id))
}
