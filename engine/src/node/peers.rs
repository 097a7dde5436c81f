//! The peer table: admitting senders and origins (incarnations, addresses),
//! greeting members named in lists, carrying out the failure detector's
//! verdicts, and purging a node for good.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Event, Node, PeerState};
use crate::codec::Body;
use crate::id::NodeId;
use crate::membership::Output as SwimOutput;

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) addr: Option<SocketAddr>,
    pub(super) state: PeerState,
    /// Last message from it (shown to operators; liveness is SWIM's).
    pub(super) last_heard: Instant,
    /// It holds every buffer entry below this.
    pub(super) acked: u64,
    /// Entries below this were sent (maybe not acknowledged yet).
    pub(super) sent: u64,
    /// When the oldest delta it has not acknowledged was sent (meaningful
    /// while `acked < sent`): retransmission waits `retransmit_after` from
    /// it, however many newer deltas went out since.
    pub(super) unacked_since: Instant,
    /// Anti-entropy rounds that will repeat our digest to it, until a digest
    /// of its own arrives (see [`Node::sync_with`]).
    pub(super) syncs_left: u8,
    /// Heard from on a link that authenticated it, not only named in
    /// relayed entries: only such a peer makes other incarnations stale.
    pub(super) direct: bool,
}

impl Node {
    /// Graceful shutdown: every peer with an address is told to drop our
    /// entries now, and the node stops taking input.
    pub(super) fn leave(&mut self) {
        self.left = true;
        let targets: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.addr.map(|a| (id.clone(), a)))
            .collect();
        for (id, addr) in targets {
            self.send(Some(id), addr, Body::Leave);
        }
    }

    /// Push-pull backstop for members the gossip missed: a digest from a peer
    /// that knows fewer up `members` than we do gets our member list, at most
    /// one list per anti-entropy period, whoever asks.
    pub(super) fn members_backstop(
        &mut self,
        now: Instant,
        from: &NodeId,
        addr: SocketAddr,
        members: u32,
    ) {
        if self
            .list_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.anti_entropy)
            && members < self.up_members()
        {
            self.list_sent = Some(now);
            let list = self.member_list();
            self.send(Some(from.clone()), addr, Body::Members(list));
        }
    }

    /// Membership bookkeeping for a message from `from`, which the link
    /// authenticated. Returns false if the message must be ignored (an
    /// incarnation older than one heard from directly).
    pub(super) fn admit(&mut self, now: Instant, from: &NodeId, addr: Option<SocketAddr>) -> bool {
        if !self.peers.get(from).is_some_and(|p| p.direct) {
            // First time heard from directly: refuse a stale incarnation, and
            // let this one replace every other incarnation of its name that
            // was not heard from directly either: older ones, and any known
            // only through entries relayed by others (a relayed incarnation,
            // even a newer one, may be a peer's lie; this one is not).
            if self.newer_peer(from) {
                return false;
            }
            let others: Vec<NodeId> = self
                .peers
                .range(from.incarnations())
                .map(|(id, _)| id)
                .chain(self.presence.store().incarnations_of(from))
                .chain(self.subs.store().incarnations_of(from))
                .filter(|id| *id != from)
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for old in others {
                self.forget(&old);
            }
            if let Some(p) = self.peers.get_mut(from) {
                p.direct = true;
            }
        }
        // Liveness is SWIM's alone: other traffic from a known member (even a
        // down one) neither refreshes nor revives it.
        match self.peers.get_mut(from) {
            Some(p) => {
                p.last_heard = now;
                if let Some(addr) = addr {
                    self.set_addr(now, from, addr);
                }
            }
            None => {
                self.swim.insert(now, from.clone(), addr);
                self.presence.revive(from);
                self.subs.revive(from);
                self.up_peers += u32::from(addr.is_some());
                self.peers.insert(
                    from.clone(),
                    Peer {
                        addr,
                        state: PeerState::Up,
                        last_heard: now,
                        acked: self.next_seq,
                        sent: self.next_seq,
                        unacked_since: now,
                        syncs_left: 0,
                        direct: true,
                    },
                );
                self.events.push_back(Event::MemberUp(from.clone()));
                self.sync_with(from);
            }
        }
        true
    }

    /// A message straight from another incarnation of our own name (the
    /// transport authenticated `from`): a second process runs under our name.
    /// A newer one has replaced us in the cluster (peers purge an older
    /// incarnation when they admit a newer one), so this node leaves and
    /// reports [`Event::NameClash`]; an older one is told we exist, with a
    /// hello (at most one per anti-entropy period), so that it stops.
    pub(super) fn twin(&mut self, now: Instant, from: &NodeId, addr: SocketAddr) {
        if from.incarnation > self.cfg.id.incarnation {
            self.leave();
            self.events.push_back(Event::NameClash(from.clone()));
        } else if from.incarnation < self.cfg.id.incarnation {
            self.greet(now, from.clone(), addr);
        }
    }

    /// A message from `stale`, an incarnation older than a peer of its name:
    /// name that peer to it (at most once per anti-entropy period). A
    /// process that was replaced while it still runs (two processes with one
    /// name) learns of its twin this way, since no one else talks to it.
    pub(super) fn tell_stale(&mut self, now: Instant, stale: &NodeId, addr: SocketAddr) {
        let newer = self
            .peers
            .range(stale.incarnations())
            .filter(|(id, p)| id.incarnation > stale.incarnation && p.direct)
            .filter_map(|(id, p)| p.addr.map(|a| (id.clone(), a)))
            .next_back();
        let Some(newer) = newer else {
            return;
        };
        if self
            .greeted
            .get(stale)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.cfg.anti_entropy)
        {
            return;
        }
        self.greeted.insert(stale.clone(), now);
        self.send(Some(stale.clone()), addr, Body::Members(vec![newer]));
    }

    /// Says hello to `id` at `addr`, at most once per anti-entropy period.
    fn greet(&mut self, now: Instant, id: NodeId, addr: SocketAddr) {
        if self
            .greeted
            .get(&id)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.cfg.anti_entropy)
        {
            return;
        }
        self.greeted.insert(id.clone(), now);
        self.send(Some(id), addr, Body::Hello { full: false });
    }

    /// A member named in someone's list: say hello if it is new to us (once
    /// per anti-entropy period, however many lists name it). A newer
    /// incarnation of our own name is greeted too, never believed: only its
    /// own answer, on a link it authenticated, stops us (see [`Node::twin`]),
    /// so a peer that lies about it cannot.
    pub(super) fn learn(&mut self, now: Instant, id: NodeId, addr: SocketAddr) {
        if id.same_name(&self.cfg.id) {
            if id.incarnation > self.cfg.id.incarnation {
                self.greet(now, id, addr);
            }
            return;
        }
        if self.peers.contains_key(&id) {
            if self.peers.get(&id).is_some_and(|p| p.addr.is_none()) {
                self.set_addr(now, &id, addr);
            }
            return;
        }
        if self.newer_peer(&id) || self.presence.store().is_purged(&id) {
            return;
        }
        self.greet(now, id, addr);
    }

    /// Fills in a peer's address. The first one makes it a new contact, as a
    /// peer that comes up is: it was known only through entries relayed by
    /// others, nothing was pushed to it, and it may know nothing of us, so we
    /// exchange digests (both sides stayed address-less for seconds after a
    /// heal otherwise, one missing the other's oldest entries until a random
    /// anti-entropy round picked the right peer).
    pub(super) fn set_addr(&mut self, now: Instant, id: &NodeId, addr: SocketAddr) {
        let next = self.next_seq;
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        let first = p.addr.is_none() && p.state == PeerState::Up;
        p.addr = Some(addr);
        if first {
            p.acked = next;
            p.sent = next;
            self.up_peers += 1;
        }
        // The failure detector keeps its own copy of the address: fill it in
        // even when a member list gave us this one.
        self.swim.insert(now, id.clone(), Some(addr));
        if first {
            self.sync_with(id);
        }
    }

    /// Whether a newer incarnation of `id`'s name is a peer heard from
    /// directly (one known only through relayed entries does not count: a
    /// peer may have made it up).
    pub(super) fn newer_peer(&self, id: &NodeId) -> bool {
        self.peers
            .range(id.incarnations())
            .any(|(k, p)| k.incarnation > id.incarnation && p.direct)
    }

    pub(super) fn up_members(&self) -> u32 {
        debug_assert_eq!(
            self.up_peers as usize,
            self.peers
                .values()
                .filter(|p| p.state == PeerState::Up && p.addr.is_some())
                .count()
        );
        1 + self.up_peers
    }

    pub(super) fn member_list(&self) -> Vec<(NodeId, SocketAddr)> {
        std::iter::once((self.cfg.id.clone(), self.cfg.addr))
            .chain(
                self.peers
                    .iter()
                    .filter(|(_, p)| p.state == PeerState::Up)
                    .filter_map(|(id, p)| p.addr.map(|a| (id.clone(), a))),
            )
            .collect()
    }

    /// Purges a node for good: its entries leave, its buffered deltas go.
    pub(super) fn forget(&mut self, id: &NodeId) {
        if *id == self.cfg.id {
            // Never ourselves: callers filter our name out, this is the
            // backstop (the store asserts it).
            return;
        }
        self.presence.purge(id, &mut self.scratch);
        self.subs.purge(id);
        for b in &mut self.buffer {
            b.presence.retain(|p| &p.origin != id);
            b.subs.retain(|p| &p.origin != id);
            if b.from.as_ref() == Some(id) {
                b.from = None;
            }
        }
        self.swim.remove(id);
        self.repairs.remove(id);
        if let Some(p) = self.peers.remove(id) {
            if p.state == PeerState::Up && p.addr.is_some() {
                self.up_peers -= 1;
            }
            self.events.push_back(Event::MemberGone(id.clone()));
        }
        self.gc_buffer();
    }

    /// Whether to merge ops of `origin`, named in a delta relayed by a peer:
    /// not ours, not purged, and no other incarnation of its name known.
    /// Relayed news of a new incarnation is never believed (a peer can relay
    /// any `NodeId`): an older one is stale, and a newer one must say hello
    /// itself (a restarted node greets every member it learns of) before it
    /// replaces the incarnation we know ([`Node::admit`]).
    pub(super) fn admit_origin(&mut self, now: Instant, origin: &NodeId) -> bool {
        // Our own ops come from us; another incarnation of our name is not
        // believed second-hand (see [`Node::learn`]).
        if origin.same_name(&self.cfg.id) {
            return false;
        }
        if self.peers.contains_key(origin) {
            return true;
        }
        if self.presence.store().is_purged(origin) {
            return false;
        }
        if self.peers.range(origin.incarnations()).next().is_some() {
            return false;
        }
        // Heard of only through others: watch it like a peer, so that if we
        // never hear from it directly its entries go down and then away.
        self.swim.insert(now, origin.clone(), None);
        self.peers.insert(
            origin.clone(),
            Peer {
                addr: None,
                state: PeerState::Up,
                last_heard: now,
                acked: self.next_seq,
                sent: self.next_seq,
                unacked_since: now,
                syncs_left: 0,
                direct: false,
            },
        );
        self.events.push_back(Event::MemberUp(origin.clone()));
        true
    }

    /// Carries out what the failure detector decided.
    pub(super) fn apply_swim(&mut self, now: Instant) {
        while let Some(out) = self.swim.poll_output() {
            match out {
                SwimOutput::Send { to, addr, body } => self.send(Some(to), addr, Body::Swim(body)),
                SwimOutput::Up(id) => {
                    let next = self.next_seq;
                    let Some(p) = self.peers.get_mut(&id) else {
                        continue;
                    };
                    if p.state == PeerState::Up {
                        continue;
                    }
                    p.state = PeerState::Up;
                    self.up_peers += u32::from(p.addr.is_some());
                    self.repairs.remove(&id);
                    p.acked = next;
                    p.sent = next;
                    self.presence.set_up(&id, true, &mut self.scratch);
                    self.subs.set_up(&id, true);
                    self.events.push_back(Event::MemberUp(id.clone()));
                    self.sync_with(&id);
                }
                SwimOutput::Down(id) => {
                    let Some(p) = self.peers.get_mut(&id) else {
                        continue;
                    };
                    if p.state == PeerState::Down {
                        continue;
                    }
                    p.state = PeerState::Down;
                    self.up_peers -= u32::from(p.addr.is_some());
                    self.repairs.remove(&id);
                    self.stats.peers_marked_down += 1;
                    self.presence.set_up(&id, false, &mut self.scratch);
                    self.subs.set_up(&id, false);
                    self.events.push_back(Event::MemberDown(id));
                }
                SwimOutput::Gone(id) => self.forget(&id),
                SwimOutput::Learned(id, addr) => self.learn(now, id, addr),
            }
        }
        self.gc_buffer();
    }
}
