//! Cross-node flow control: a credit window per (peer, topic) for broadcasts
//! (ALGORITHM.md, "Cross-node flow control").
//!
//! A node may have at most [`WINDOW`] broadcasts to one topic in flight to one
//! peer: sent, and not yet returned by that peer with [`Body::Credit`]. The
//! receiver returns them once its subscribers of the topic have room
//! ([`Credit::returnable`]), so a peer that publishes faster than the
//! receiver's subscribers take is held back, not overflowing them. What has no
//! credit waits here, in order ([`Credit::admit`]), and the topic is *held*:
//! the gateway's publishers wait while it is ([`Held`]), as they wait for their
//! own node's backlog.
//!
//! Credit can go missing with a connection (broadcasts or credits on a
//! connection that died): a new connection to a peer restarts its windows
//! full ([`Credit::reset_peer`]), and a window that got nothing back for
//! [`STALL`] while broadcasts waited on it is refilled ([`Credit::expire`]), so
//! neither a lost credit nor a peer that never returns any stalls a topic for
//! good; a peer that does not keep up then meets its own subscriber-queue
//! limit, as before.
//!
//! [`Body::Credit`]: crate::codec::Body::Credit

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::id::Topic;

/// Broadcasts to one topic a node may have in flight to one peer.
pub const WINDOW: u32 = 128;

/// Broadcasts returned in one [`Body::Credit`](crate::codec::Body::Credit) at
/// least (a receiver returns credit in batches, once its subscribers have room).
pub const BATCH: u32 = WINDOW / 4;

/// How long a window may get nothing back while broadcasts wait on it before
/// it is refilled (credit lost with a connection, or a peer that returns none).
pub const STALL: Duration = Duration::from_secs(1);

/// Broadcasts waiting for credit per (peer, topic), past which new ones to that
/// peer are dropped and counted. The gateway's publishers wait while a topic is
/// held, so only an embedding application that publishes without looking at
/// [`Held`] gets near it.
pub const MAX_WAITING: usize = 4096;

/// Peers whose windows a subscriber's queue makes room for, at most: past
/// that many connected peers, all of them flooding one topic at once can
/// still fill it.
pub const PEER_ROOM: usize = 64;

/// The capacity of a subscriber's queue: the node's own `subscriber_queue`
/// and a window for each of up to [`PEER_ROOM`] peers. Only what is queued
/// takes memory.
pub(crate) fn subscriber_capacity(queue: usize) -> usize {
    queue.saturating_add(PEER_ROOM * WINDOW as usize)
}

/// Deliveries queued at which a subscriber is dropped as too slow, with
/// `peers` connected: `subscriber_queue`, and a window for each peer (up to
/// [`PEER_ROOM`]), which is what they may have in flight to it while their
/// credit is held back.
pub(crate) fn subscriber_limit(queue: usize, peers: usize) -> usize {
    queue.saturating_add(peers.min(PEER_ROOM) * WINDOW as usize)
}

/// Deliveries queued at or below which a node returns credit for a topic: a
/// quarter of `subscriber_queue` (the gateway's publishers wait at the same
/// mark for their own node's dispatcher).
pub(crate) fn room_mark(queue: usize) -> usize {
    queue / 4
}

/// The sending side of one (peer, topic).
#[derive(Debug)]
struct Outflow<T> {
    /// Broadcasts that may still be sent before credit comes back.
    avail: u32,
    /// Broadcasts waiting for credit, in publish order.
    waiting: VecDeque<T>,
    /// When a broadcast last found the window empty, or credit last came
    /// back while some wait.
    stalled: Option<Instant>,
}

impl<T> Outflow<T> {
    fn new() -> Self {
        Outflow {
            avail: WINDOW,
            waiting: VecDeque::new(),
            stalled: None,
        }
    }
}

/// What happened to a broadcast offered to [`Credit::admit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit<T> {
    /// Send it now.
    Send(T),
    /// It waits for credit.
    Waiting,
    /// [`MAX_WAITING`] wait already: dropped.
    Dropped,
}

/// Both sides of flow control for one node. `T` is what waits (the driver's
/// outgoing message).
#[derive(Debug)]
pub(crate) struct Credit<T> {
    out: HashMap<(SocketAddr, Topic), Outflow<T>>,
    /// Broadcasts received per (peer, topic) and not returned yet.
    owed: HashMap<(SocketAddr, Topic), u32>,
    /// Owed credit held back because the topic's subscribers had no room.
    withheld: HashSet<(SocketAddr, Topic)>,
    /// Times credit was withheld so far.
    withheld_total: u64,
    held: std::sync::Arc<Held>,
}

impl<T> Credit<T> {
    pub(crate) fn new(held: std::sync::Arc<Held>) -> Self {
        Credit {
            out: HashMap::new(),
            owed: HashMap::new(),
            withheld: HashSet::new(),
            withheld_total: 0,
            held,
        }
    }

    /// Whether a timer must call [`Credit::expire`] and
    /// [`Credit::returnable`]: broadcasts wait, or credit is withheld.
    pub(crate) fn busy(&self) -> bool {
        !self.withheld.is_empty() || self.out.values().any(|o| !o.waiting.is_empty())
    }

    /// A broadcast of `topic` for `peer`: sent if the window has room and
    /// nothing waits before it, else it waits.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        topic: &Topic,
        t: T,
    ) -> Admit<T> {
        let out = self
            .out
            .entry((peer, topic.clone()))
            .or_insert_with(Outflow::new);
        if out.waiting.is_empty() && out.avail > 0 {
            out.avail -= 1;
            return Admit::Send(t);
        }
        if out.waiting.len() >= MAX_WAITING {
            return Admit::Dropped;
        }
        if out.waiting.is_empty() {
            self.held.add(topic);
            out.stalled = Some(now);
        }
        out.waiting.push_back(t);
        Admit::Waiting
    }

    /// `peer` returned `n` broadcasts of `topic`: what may go now, in order.
    pub(crate) fn returned(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        topic: &Topic,
        n: u32,
    ) -> Vec<T> {
        if n == 0 {
            // Returns nothing: it must not count as the peer being alive
            // either, or one empty credit every half second would keep the
            // window from being refilled after `STALL` for ever.
            return Vec::new();
        }
        let key = (peer, topic.clone());
        let Some(out) = self.out.get_mut(&key) else {
            return Vec::new();
        };
        // Never more than a window: a peer returning more than it got (or
        // credit for a connection that was reset since) cannot widen it.
        out.avail = out.avail.saturating_add(n).min(WINDOW);
        out.stalled = Some(now);
        let sent = release(out, topic, &self.held);
        if out.avail == WINDOW && out.waiting.is_empty() {
            self.out.remove(&key);
        }
        sent
    }

    /// A connection to `peer` is up: what waits goes, within each window.
    /// Windows are not refilled here: broadcasts sent while the connection
    /// came up are in its queue and count against them; what the last
    /// connection lost was given back when it ended ([`Credit::forget_peer`]).
    pub(crate) fn resume_peer(&mut self, peer: SocketAddr) -> Vec<T> {
        let mut sent = Vec::new();
        let held = &self.held;
        self.out.retain(|(addr, topic), out| {
            if *addr != peer {
                return true;
            }
            sent.extend(release(out, topic, held));
            out.avail < WINDOW || !out.waiting.is_empty()
        });
        sent
    }

    /// The connection to `peer` ended (or its process restarted): what was
    /// in flight on it, broadcasts and credit alike, is gone with it. What
    /// it was owed is forgotten, windows with nothing waiting too (a peer
    /// that never comes back leaves nothing behind), and windows with
    /// broadcasts waiting are refilled; those go when a connection is up
    /// again ([`Credit::resume_peer`]), or at a stall ([`Credit::expire`]).
    pub(crate) fn forget_peer(&mut self, peer: SocketAddr) {
        self.out.retain(|(addr, _), out| {
            if *addr != peer {
                return true;
            }
            out.avail = WINDOW;
            !out.waiting.is_empty()
        });
        self.forget_owed(peer);
    }

    /// Nothing is owed to `peer` any more, withheld or not.
    fn forget_owed(&mut self, peer: SocketAddr) {
        self.owed.retain(|(addr, _), _| *addr != peer);
        self.withheld.retain(|(addr, _)| *addr != peer);
    }

    /// `peer` is down or gone: what waits for it is dropped (a member that
    /// is down misses broadcasts, and its anti-entropy does not bring them
    /// back), so its topics are no longer held for it, and nothing owed to it
    /// is kept. Returns how many broadcasts were dropped.
    pub(crate) fn drop_peer(&mut self, peer: SocketAddr) -> u64 {
        let mut dropped = 0;
        let held = &self.held;
        self.out.retain(|(addr, topic), out| {
            if *addr != peer {
                return true;
            }
            if !out.waiting.is_empty() {
                dropped += out.waiting.len() as u64;
                held.remove(topic);
            }
            false
        });
        self.forget_owed(peer);
        dropped
    }

    /// Credit for `n` broadcasts of `topic` that could not be sent to `peer`
    /// (its queue was full): owed again, and retried as withheld credit is.
    pub(crate) fn give_back(&mut self, peer: SocketAddr, topic: Topic, n: u32) {
        let key = (peer, topic);
        let owed = self.owed.entry(key.clone()).or_default();
        *owed = owed.saturating_add(n);
        self.withheld.insert(key);
    }

    /// Refills every window that got nothing back for [`STALL`] while
    /// broadcasts waited on it. Returns what may go now, and how many windows
    /// were refilled.
    pub(crate) fn expire(&mut self, now: Instant) -> (Vec<(SocketAddr, T)>, u64) {
        let mut sent = Vec::new();
        let mut refilled = 0;
        for ((peer, topic), out) in &mut self.out {
            let stalled = out
                .stalled
                .is_some_and(|at| now.saturating_duration_since(at) >= STALL);
            if out.waiting.is_empty() || !stalled {
                continue;
            }
            refilled += 1;
            out.avail = WINDOW;
            out.stalled = Some(now);
            sent.extend(
                release(out, topic, &self.held)
                    .into_iter()
                    .map(|t| (*peer, t)),
            );
        }
        (sent, refilled)
    }

    /// Times credit was withheld for want of room so far.
    pub(crate) fn withheld_total(&self) -> u64 {
        self.withheld_total
    }

    /// A broadcast of `topic` arrived from `peer`.
    pub(crate) fn received(&mut self, peer: SocketAddr, topic: &Topic) {
        let owed = self.owed.entry((peer, topic.clone())).or_default();
        *owed = owed.saturating_add(1);
    }

    /// The credit to return now to `peer` for `topic`: what it is owed, once
    /// that is at least `batch` and `room(topic)` says the topic's
    /// subscribers have room; without room it is withheld until
    /// [`Credit::release_withheld`] finds some. The batch is [`BATCH`], or 1
    /// for a topic without subscribers here (nothing to protect, and nothing
    /// else would return it).
    pub(crate) fn returnable(
        &mut self,
        peer: SocketAddr,
        topic: &Topic,
        batch: u32,
        room: impl Fn(&Topic) -> bool,
    ) -> Option<u32> {
        let key = (peer, topic.clone());
        let owed = *self.owed.get(&key)?;
        if owed < batch {
            return None;
        }
        if !room(topic) {
            if self.withheld.insert(key) {
                self.withheld_total += 1;
            }
            return None;
        }
        self.withheld.remove(&key);
        self.owed.remove(&key);
        Some(owed)
    }

    /// Withheld credit whose topic now has room and whose peer can take it
    /// (`open`: its queue is not full), as `(peer, topic, n)`. Credit for a
    /// peer that cannot take it stays withheld as it is.
    pub(crate) fn release_withheld(
        &mut self,
        room: impl Fn(&Topic) -> bool,
        open: impl Fn(SocketAddr) -> bool,
    ) -> Vec<(SocketAddr, Topic, u32)> {
        let mut back = Vec::new();
        let owed = &mut self.owed;
        self.withheld.retain(|key| {
            if !open(key.0) || !room(&key.1) {
                return true;
            }
            if let Some(n) = owed.remove(key) {
                back.push((key.0, key.1.clone(), n));
            }
            false
        });
        back
    }

    /// Everything owed for `topic`, to every peer, as `(peer, n)`: its last
    /// subscriber here went, so nothing is left to protect.
    pub(crate) fn return_topic(&mut self, topic: &Topic) -> Vec<(SocketAddr, u32)> {
        let mut back = Vec::new();
        self.owed.retain(|(peer, t), n| {
            if t != topic {
                return true;
            }
            back.push((*peer, *n));
            false
        });
        self.withheld.retain(|(_, t)| t != topic);
        back
    }
}

/// Sends what the window allows, in order; the topic is no longer held by
/// this outflow once nothing waits.
fn release<T>(out: &mut Outflow<T>, topic: &Topic, held: &Held) -> Vec<T> {
    let was_waiting = !out.waiting.is_empty();
    let n = out.waiting.len().min(out.avail as usize);
    out.avail -= n as u32;
    let sent: Vec<T> = out.waiting.drain(..n).collect();
    if was_waiting && out.waiting.is_empty() {
        held.remove(topic);
        out.stalled = None;
    }
    sent
}

/// The topics whose broadcasts wait for some peer's credit, as every
/// [`EngineHandle`](super::EngineHandle) reads them without a round trip
/// ([`EngineHandle::held`](super::EngineHandle::held)).
#[derive(Debug, Default)]
pub struct Held {
    /// (peer, topic) outflows with broadcasts waiting, all topics: lets
    /// [`Held::is_held`] skip the lock when there are none.
    waiting: AtomicUsize,
    topics: Mutex<HashMap<Topic, usize>>,
}

impl Held {
    /// Whether broadcasts of `topic` wait for some peer's credit.
    pub fn is_held(&self, topic: &str) -> bool {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.topics
            .lock()
            .expect("held topics lock")
            .contains_key(topic)
    }

    fn add(&self, topic: &Topic) {
        *self
            .topics
            .lock()
            .expect("held topics lock")
            .entry(topic.clone())
            .or_default() += 1;
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self, topic: &Topic) {
        let mut topics = self.topics.lock().expect("held topics lock");
        if let Some(n) = topics.get_mut(topic) {
            *n -= 1;
            if *n == 0 {
                topics.remove(topic);
            }
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A credit table, the topics it holds, and a peer, a topic and a time.
    fn fresh() -> (Arc<Held>, Credit<u32>, SocketAddr, Topic, Instant) {
        let held = Arc::new(Held::default());
        let c = Credit::new(held.clone());
        (held, c, peer(1), Topic::new("t"), Instant::now())
    }

    #[test]
    fn a_window_sends_then_holds_in_order_until_credit_returns() {
        let (held, mut c, a, t, now) = fresh();
        for i in 0..WINDOW {
            assert_eq!(c.admit(now, a, &t, i), Admit::Send(i));
        }
        assert!(!held.is_held("t"));
        assert_eq!(c.admit(now, a, &t, 1000), Admit::Waiting);
        assert_eq!(c.admit(now, a, &t, 1001), Admit::Waiting);
        assert!(held.is_held("t") && !held.is_held("u"));
        // Another peer's window and another topic are their own.
        assert_eq!(c.admit(now, peer(2), &t, 7), Admit::Send(7));
        assert_eq!(c.admit(now, a, &Topic::new("u"), 8), Admit::Send(8));
        // One returned: the oldest waiting goes, the topic is still held.
        assert_eq!(c.returned(now, a, &t, 1), vec![1000]);
        assert!(held.is_held("t"));
        assert_eq!(c.admit(now, a, &t, 1002), Admit::Waiting, "behind 1001");
        assert_eq!(c.returned(now, a, &t, 10), vec![1001, 1002]);
        assert!(!held.is_held("t"));
        // Eight left of the ten returned.
        for i in 0..8 {
            assert_eq!(c.admit(now, a, &t, i), Admit::Send(i));
        }
        assert_eq!(c.admit(now, a, &t, 9), Admit::Waiting);
    }

    #[test]
    fn a_window_never_grows_past_its_size() {
        let mut c: Credit<u32> = Credit::new(Arc::default());
        let (a, t, now) = (peer(1), Topic::new("t"), Instant::now());
        assert_eq!(c.admit(now, a, &t, 0), Admit::Send(0));
        c.returned(now, a, &t, u32::MAX);
        for i in 0..WINDOW {
            assert_eq!(c.admit(now, a, &t, i), Admit::Send(i));
        }
        assert_eq!(c.admit(now, a, &t, 0), Admit::Waiting);
    }

    #[test]
    fn a_new_connection_or_a_stall_refills_the_window() {
        let (held, mut c, a, t, now) = fresh();
        for i in 0..WINDOW {
            c.admit(now, a, &t, i);
        }
        assert_eq!(c.admit(now, a, &t, 1), Admit::Waiting);
        // A connection coming up refills nothing: the window's broadcasts
        // may be in its queue.
        assert_eq!(c.resume_peer(a), Vec::<u32>::new());
        assert!(held.is_held("t"));
        // The connection ending gives the window back; what waits goes on
        // the next one, still in order behind what came meanwhile.
        c.forget_peer(a);
        assert_eq!(c.admit(now, a, &t, 3), Admit::Waiting);
        assert_eq!(c.resume_peer(peer(2)), Vec::<u32>::new());
        assert_eq!(c.resume_peer(a), vec![1, 3]);
        assert!(!held.is_held("t"));
        for i in 0..WINDOW - 2 {
            assert_eq!(c.admit(now, a, &t, i), Admit::Send(i));
        }
        assert_eq!(c.admit(now, a, &t, 2), Admit::Waiting);
        assert_eq!(c.admit(now, a, &t, 4), Admit::Waiting);
        assert_eq!(c.expire(now + STALL / 2), (vec![], 0));
        // Credit coming back restarts the stall clock; empty credit does not
        // (a peer sending it every half second held the topic for ever).
        assert_eq!(c.returned(now + STALL / 2, a, &t, 0), Vec::<u32>::new());
        assert_eq!(c.returned(now + STALL / 2, a, &t, 1), vec![2]);
        assert_eq!(c.returned(now + STALL, a, &t, 0), Vec::<u32>::new());
        assert_eq!(c.expire(now + STALL), (vec![], 0));
        assert_eq!(c.expire(now + STALL / 2 + STALL), (vec![(a, 4)], 1));
        assert!(!held.is_held("t"));
        // A closed connection leaves nothing behind but what waits.
        c.received(a, &t);
        for i in 0..WINDOW {
            c.admit(now, peer(2), &t, i);
        }
        assert_eq!(c.admit(now, peer(2), &t, 0), Admit::Waiting);
        c.forget_peer(a);
        c.forget_peer(peer(2));
        assert_eq!(c.out.len(), 1, "peer 2's waiting window stays");
        assert!(c.owed.is_empty());
        assert!(held.is_held("t"));
    }

    /// A peer marked down holds no topic back: what waits for it is
    /// dropped and counted; credit that could not be sent is retried.
    #[test]
    fn a_down_peer_holds_nothing_and_unsent_credit_is_retried() {
        let (held, mut c, a, t, now) = fresh();
        for i in 0..WINDOW + 3 {
            c.admit(now, a, &t, i);
        }
        c.admit(now, peer(2), &t, 0);
        assert!(held.is_held("t"));
        c.received(a, &t);
        assert_eq!(c.drop_peer(a), 3);
        assert!(!held.is_held("t"));
        assert_eq!(c.out.len(), 1, "peer 2's window stays");
        assert!(c.owed.is_empty());

        c.give_back(peer(2), t.clone(), 40);
        assert_eq!(c.release_withheld(|_| false, |_| true), vec![]);
        // A peer whose queue cannot take it keeps it withheld, whole.
        assert_eq!(c.release_withheld(|_| true, |p| p != peer(2)), vec![]);
        assert_eq!(
            c.release_withheld(|_| true, |_| true),
            vec![(peer(2), t.clone(), 40)]
        );
        assert!(!c.busy());
    }

    #[test]
    fn waiting_is_bounded() {
        let mut c: Credit<usize> = Credit::new(Arc::default());
        let (a, t, now) = (peer(1), Topic::new("t"), Instant::now());
        for i in 0..WINDOW as usize + MAX_WAITING {
            assert_ne!(c.admit(now, a, &t, i), Admit::Dropped);
        }
        assert_eq!(c.admit(now, a, &t, 0), Admit::Dropped);
    }

    #[test]
    fn credit_is_returned_in_batches_when_there_is_room() {
        let mut c: Credit<()> = Credit::new(Arc::default());
        let (a, t) = (peer(1), Topic::new("t"));
        for _ in 0..BATCH - 1 {
            c.received(a, &t);
            assert_eq!(c.returnable(a, &t, BATCH, |_| true), None, "below a batch");
        }
        c.received(a, &t);
        assert_eq!(
            c.returnable(a, &t, BATCH, |_| false),
            None,
            "no room: withheld"
        );
        c.received(a, &t);
        assert_eq!(c.release_withheld(|_| false, |_| true), vec![]);
        assert_eq!(
            c.release_withheld(|_| true, |_| true),
            vec![(a, t.clone(), BATCH + 1)]
        );
        assert_eq!(c.release_withheld(|_| true, |_| true), vec![]);
        for _ in 0..BATCH {
            c.received(a, &t);
        }
        assert_eq!(c.returnable(a, &t, BATCH, |_| true), Some(BATCH));
        // A topic that lost its subscribers returns everything at once.
        c.received(a, &t);
        c.received(peer(2), &t);
        c.received(a, &Topic::new("u"));
        let mut back = c.return_topic(&t);
        back.sort();
        assert_eq!(back, vec![(a, 1), (peer(2), 1)]);
        assert_eq!(c.returnable(a, &Topic::new("u"), 1, |_| true), Some(1));
    }
}
