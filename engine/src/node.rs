//! The [`Node`] state machine: one cluster member's presence table, subscription
//! table, δ-buffer, peer table and timers.
//!
//! Inputs: [`Node::handle_command`] (local API), [`Node::handle_message`] (a
//! decoded peer message), [`Node::handle_timeout`]. Outputs, pulled:
//! [`Node::poll_transmit`], [`Node::poll_event`], [`Node::poll_timeout`]. After
//! any input, drain `poll_transmit` and `poll_event` until `None`, then sleep
//! until `poll_timeout` or the next input.
//!
//! Replication follows delta-state CRDTs (Almeida et al., Algorithm 2) with the
//! BP and RR refinements of Enes et al. 2019: local ops and the novel part of
//! every merged delta enter a δ-buffer with sequence numbers; each peer is sent
//! the δ-group from what it has acknowledged, minus what came from it; a peer too
//! far behind is repaired per origin from version vectors. See ALGORITHM.md.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::coalesce::{CoalesceConfig, Coalescer, TopicDiff};
use crate::codec::{Body, Message};
use crate::id::{ConnId, Key, Meta, NodeId, PhxRef, SubscriberId, Topic};
use crate::membership::{Membership, Output as SwimOutput, SwimConfig};
use crate::presence::{DiffItem, PresEntry, Presence, PresenceError, PresenceItem};
use crate::records::{Record, Records, Stamp};
use crate::store::{Delta, Part};
use crate::subs::{SubChange, Subs, SubsError};

/// Anti-entropy rounds that repeat the digest to a new contact until it answers.
const SYNC_RETRIES: u8 = 3;

/// Timing and sizing of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node incarnation.
    pub id: NodeId,
    /// Where it listens for gossip (advertised to peers).
    pub addr: SocketAddr,
    /// Addresses to announce ourselves to at start and after losing everyone.
    pub seeds: Vec<SocketAddr>,
    /// Seed of the node's RNG (ref prefixes, peer choice).
    pub rng_seed: u64,
    /// Delay between a local change and the delta push that carries it.
    pub flush_delay: Duration,
    /// SWIM protocol period (one probe each), also the period of
    /// retransmission checks.
    pub tick: Duration,
    /// Wait for a direct probe ack before asking helpers.
    pub probe_timeout: Duration,
    /// Helpers asked to probe a member that missed a direct probe (`k`).
    pub indirect_probes: usize,
    /// Shortest suspicion, reached with `indirect_probes` independent
    /// confirmations (scaled by `max(1, log10(N))`, capped at `down_after`).
    pub suspicion_min: Duration,
    /// Unacknowledged deltas are sent again after this long.
    pub retransmit_after: Duration,
    /// Period of version-vector exchange with one random peer.
    pub anti_entropy: Duration,
    /// Longest suspicion: a suspect member nobody confirms is down (entries
    /// hidden) after this long.
    pub down_after: Duration,
    /// A peer down for this long is purged (entries dropped).
    pub permdown_after: Duration,
    /// Longest wait of a first subscriber for peers to acknowledge its route.
    pub subscribe_wait: Duration,
    /// Presence diff coalescing.
    pub coalesce: CoalesceConfig,
    /// Most δ-buffer entries kept for slow peers (they are repaired after).
    pub buffer_cap: usize,
    /// Most tombstones kept per replica (a peer behind that is sent a full slice).
    pub tomb_cap: usize,
    /// Most entries per repair message.
    pub repair_chunk: usize,
    /// How many random peers a node relays the novel part of a delta to.
    pub relay_fanout: usize,
    /// Each membership update is piggybacked `gossip_mult * ceil(log10(N + 1))`
    /// times.
    pub gossip_mult: u32,
    /// Most membership updates piggybacked on one probe message.
    pub max_gossip: usize,
    /// Ceiling of the Lifeguard local health score.
    pub max_health: u32,
    /// One down member is pinged every this many periods (so a healed
    /// partition comes back).
    pub down_probe_every: u32,
    /// Entries kept per replicated log (topic history).
    pub history_cap: usize,
    /// Most bytes of records per repair message.
    pub records_chunk: usize,
}

impl NodeConfig {
    /// LAN defaults: 200 ms probe period, 100 ms probe timeout, suspicion
    /// 0.8 to 2 s, purged after 5 min.
    pub fn lan(id: NodeId, addr: SocketAddr) -> Self {
        NodeConfig {
            id,
            addr,
            seeds: Vec::new(),
            rng_seed: 0,
            flush_delay: Duration::from_millis(2),
            tick: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            indirect_probes: 3,
            suspicion_min: Duration::from_millis(800),
            retransmit_after: Duration::from_millis(600),
            anti_entropy: Duration::from_secs(1),
            down_after: Duration::from_secs(2),
            permdown_after: Duration::from_secs(300),
            subscribe_wait: Duration::from_millis(500),
            coalesce: CoalesceConfig::default(),
            buffer_cap: 4096,
            tomb_cap: 100_000,
            repair_chunk: 10_000,
            relay_fanout: 3,
            gossip_mult: 4,
            max_gossip: 6,
            max_health: 8,
            down_probe_every: 1,
            history_cap: 100,
            records_chunk: 1 << 20,
        }
    }

    /// Phoenix.Tracker's timing: 1.5 s period, down after at most 30 s of
    /// suspicion (15 s when confirmed), purged after 20 min.
    pub fn phoenix(id: NodeId, addr: SocketAddr) -> Self {
        NodeConfig {
            tick: Duration::from_millis(1500),
            probe_timeout: Duration::from_millis(750),
            suspicion_min: Duration::from_secs(15),
            retransmit_after: Duration::from_millis(4500),
            anti_entropy: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            permdown_after: Duration::from_secs(1200),
            ..NodeConfig::lan(id, addr)
        }
    }

    /// The failure detector's part of the configuration.
    pub fn swim(&self) -> SwimConfig {
        SwimConfig {
            period: self.tick,
            probe_timeout: self.probe_timeout,
            indirect_probes: self.indirect_probes,
            suspicion_min: self.suspicion_min,
            suspicion_max: self.down_after,
            permdown_after: self.permdown_after,
            gossip_mult: self.gossip_mult,
            max_gossip: self.max_gossip,
            max_health: self.max_health,
            down_probe_every: self.down_probe_every,
        }
    }
}

/// A local request.
#[derive(Clone, Debug)]
pub enum Command {
    /// Track `key` in `topic` for connection `conn`.
    Track {
        /// Topic.
        topic: Topic,
        /// Key.
        key: Key,
        /// Connection.
        conn: ConnId,
        /// Meta JSON object.
        meta: Meta,
    },
    /// Replace the meta of a tracked key.
    Update {
        /// Topic.
        topic: Topic,
        /// Key.
        key: Key,
        /// Connection.
        conn: ConnId,
        /// New meta JSON object.
        meta: Meta,
    },
    /// Stop tracking.
    Untrack {
        /// Topic.
        topic: Topic,
        /// Key.
        key: Key,
        /// Connection.
        conn: ConnId,
    },
    /// Stop tracking everything of a connection.
    UntrackConn {
        /// Connection.
        conn: ConnId,
    },
    /// Add a local subscriber; [`Event::SubscribeReady`] follows.
    Subscribe {
        /// Topic.
        topic: Topic,
        /// Subscriber.
        sub: SubscriberId,
    },
    /// Remove a local subscriber.
    Unsubscribe {
        /// Topic.
        topic: Topic,
        /// Subscriber.
        sub: SubscriberId,
    },
    /// Deliver to every subscriber of `topic` in the cluster, but `exclude`.
    Publish {
        /// Topic.
        topic: Topic,
        /// Opaque payload.
        payload: Bytes,
        /// A local subscriber not to deliver to (broadcast_from).
        exclude: Option<SubscriberId>,
    },
    /// Deliver to the subscribers of `topic` on one node only.
    DirectPublish {
        /// Target node.
        node: NodeId,
        /// Topic.
        topic: Topic,
        /// Opaque payload.
        payload: Bytes,
    },
    /// Append `body` to `topic`'s replicated log (history); `time_ms` is the
    /// caller's wall clock, raised past every stamp this node has seen.
    Append {
        /// Topic.
        topic: Topic,
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The entry (opaque; the gateway stores JSON).
        body: Arc<str>,
    },
    /// Write register `(space, key)`; `None` removes it. Last writer wins.
    Put {
        /// Namespace, e.g. `room`.
        space: Arc<str>,
        /// Key within the space.
        key: Arc<str>,
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The value, or `None` to remove.
        value: Option<Arc<str>>,
    },
    /// Graceful shutdown: tell every peer to drop our entries now.
    Leave,
}

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Tracked or updated, with the new meta's ref.
    Tracked(PhxRef),
    /// Done.
    Done,
    /// A record was written with this stamp.
    Recorded(Stamp),
    /// Published: delivered locally (`local`) and sent to `remote_nodes` nodes.
    Published {
        /// Whether local subscribers got it.
        local: bool,
        /// How many peer nodes it was sent to.
        remote_nodes: usize,
    },
}

/// Why a command failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A presence mutator refused.
    #[error(transparent)]
    Presence(#[from] PresenceError),
    /// A subscribe or unsubscribe was refused.
    #[error(transparent)]
    Subs(#[from] SubsError),
    /// A direct publish to a node that is not an up member.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
}

/// A message to send to a peer.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// The peer's node id, when known (seeds are addressed by address only).
    pub to: Option<NodeId>,
    /// The peer's gossip address.
    pub addr: SocketAddr,
    /// The message.
    pub msg: Message,
}

/// Something for the local driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Deliver to this node's subscribers of `topic`, except `exclude`.
    Broadcast {
        /// Topic.
        topic: Topic,
        /// Payload.
        payload: Bytes,
        /// Subscriber to skip.
        exclude: Option<SubscriberId>,
    },
    /// The coalesced presence diff of a topic.
    PresenceDiff {
        /// Topic.
        topic: Topic,
        /// Joins and leaves.
        diff: TopicDiff,
    },
    /// A subscription is routed: live peers acknowledged it, or the wait ended.
    SubscribeReady {
        /// Topic.
        topic: Topic,
        /// Subscriber.
        sub: SubscriberId,
    },
    /// A peer is up (new, or back).
    MemberUp(NodeId),
    /// A peer is down: its presences left the view.
    MemberDown(NodeId),
    /// A peer is gone for good (permdown, graceful leave or replaced by a new
    /// incarnation): its entries are purged.
    MemberGone(NodeId),
    /// A record was accepted into this node's store: a local write, or a
    /// peer's record that changed it. Applying these, in order, to a copy of
    /// [`Node::records`] taken at start keeps the copy equal to it.
    Record(Record),
}

/// Visibility of a peer's entries (see [`Node::membership`] for the SWIM
/// state: an alive or suspect member is `Up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Alive or suspect: entries visible.
    Up,
    /// Declared down by the failure detector: entries hidden.
    Down,
}

#[derive(Debug)]
struct Peer {
    addr: Option<SocketAddr>,
    state: PeerState,
    /// Last message from it (shown to operators; liveness is SWIM's).
    last_heard: Instant,
    /// It holds every buffer entry below this.
    acked: u64,
    /// Entries below this were sent (maybe not acknowledged yet).
    sent: u64,
    last_delta: Instant,
    /// Anti-entropy rounds that will repeat our digest to it, until a digest
    /// of its own arrives (see [`Node::sync_with`]).
    syncs_left: u8,
}

#[derive(Debug)]
struct Buffered {
    seq: u64,
    from: Option<NodeId>,
    /// Relayed entries go to a few random peers only (`None`: to every peer).
    to: Option<Vec<NodeId>>,
    presence: Vec<Part<PresEntry>>,
    subs: Vec<Part<Topic>>,
}

#[derive(Debug)]
struct PendingSub {
    topic: Topic,
    sub: SubscriberId,
    seq: u64,
    deadline: Instant,
}

/// Counters for reports and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Delta messages sent.
    pub deltas_sent: u64,
    /// Repair messages sent.
    pub repairs_sent: u64,
    /// Digests sent.
    pub digests_sent: u64,
    /// Broadcast messages sent to peers.
    pub broadcasts_sent: u64,
    /// Largest δ-buffer length seen.
    pub peak_buffer: usize,
    /// Largest outgoing queue length seen.
    pub peak_transmits: usize,
    /// Buffer entries dropped before every peer acknowledged them.
    pub buffer_overflows: u64,
    /// Record messages sent (pushes and repairs).
    pub records_sent: u64,
    /// Records from peers that changed the local state.
    pub records_merged: u64,
}

/// One cluster member. See the module docs.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    rng: ChaCha8Rng,
    presence: Presence,
    subs: Subs,
    /// The replicated records; each one accepted is also reported as
    /// [`Event::Record`], so a driver can keep a read replica.
    records: Records,
    /// Counter of local record writes.
    record_seq: u64,
    /// The greatest stamp time issued or seen: local writes stamp past it.
    record_clock: u64,
    peers: BTreeMap<NodeId, Peer>,
    /// Peers up and with an address (what a digest reports, plus us): kept
    /// as a count because a joining node sends N digests.
    up_peers: u32,
    /// SWIM failure detection and membership gossip.
    swim: Membership,
    /// Members we said hello to lately, so many lists naming one cost one hello.
    greeted: BTreeMap<NodeId, Instant>,
    /// When we last answered a digest with our member list.
    list_sent: Option<Instant>,
    buffer: VecDeque<Buffered>,
    next_seq: u64,
    pending_subs: Vec<PendingSub>,
    coalescer: Coalescer,
    scratch: Vec<(Topic, DiffItem)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    flush_at: Option<Instant>,
    tick_at: Option<Instant>,
    anti_entropy_at: Option<Instant>,
    left: bool,
    stats: NodeStats,
}

impl Node {
    /// A node started at `now`: its hellos to the seeds are already waiting in
    /// [`Node::poll_transmit`], and its timers are armed.
    pub fn new(cfg: NodeConfig, now: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed);
        let mut prefix = [0u8; 6];
        rng.fill(&mut prefix[..]);
        let mut node = Node {
            presence: Presence::new(cfg.id.clone(), prefix, cfg.tomb_cap),
            subs: Subs::new(cfg.id.clone(), cfg.tomb_cap),
            records: Records::new(cfg.history_cap),
            record_seq: 0,
            record_clock: 0,
            coalescer: Coalescer::new(cfg.coalesce.clone()),
            rng,
            peers: BTreeMap::new(),
            up_peers: 0,
            swim: Membership::new(cfg.id.clone(), cfg.addr, cfg.swim(), cfg.rng_seed, now),
            greeted: BTreeMap::new(),
            list_sent: None,
            buffer: VecDeque::new(),
            next_seq: 0,
            pending_subs: Vec::new(),
            scratch: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            flush_at: None,
            tick_at: None,
            anti_entropy_at: None,
            left: false,
            stats: NodeStats::default(),
            cfg,
        };
        node.start(now);
        node
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.cfg.id
    }

    /// Its configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The presence table (for listing and tests).
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The subscription table.
    pub fn subs(&self) -> &Subs {
        &self.subs
    }

    /// The replicated records (history, registers). A driver that serves
    /// reads from other threads keeps its own replica, fed by
    /// [`Event::Record`].
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Visible presence metas of `topic`.
    pub fn list(&self, topic: &Topic) -> Vec<PresenceItem> {
        self.presence.list(topic)
    }

    /// Peers and their state, in id order.
    pub fn members(&self) -> Vec<(NodeId, Option<SocketAddr>, PeerState)> {
        self.peers
            .iter()
            .map(|(id, p)| (id.clone(), p.addr, p.state))
            .collect()
    }

    /// The SWIM member table and failure detector.
    pub fn membership(&self) -> &Membership {
        &self.swim
    }

    /// When `peer` was last heard from (any message), if it is a member.
    pub fn last_heard(&self, peer: &NodeId) -> Option<Instant> {
        self.peers.get(peer).map(|p| p.last_heard)
    }

    /// Current δ-buffer length.
    pub fn buffer_len(&self) -> usize {
        self.buffer.len()
    }

    // ---------------------------------------------------------------- inputs

    /// Applies a local command.
    pub fn handle_command(
        &mut self,
        now: Instant,
        cmd: Command,
    ) -> Result<CommandOutcome, CommandError> {
        let outcome = match cmd {
            Command::Track {
                topic,
                key,
                conn,
                meta,
            } => {
                let (r, part) = self
                    .presence
                    .track(topic, key, conn, meta, &mut self.scratch)?;
                self.buffer_local(now, vec![part], vec![]);
                CommandOutcome::Tracked(r)
            }
            Command::Update {
                topic,
                key,
                conn,
                meta,
            } => {
                let (r, part) = self
                    .presence
                    .update(topic, key, conn, meta, &mut self.scratch)?;
                self.buffer_local(now, vec![part], vec![]);
                CommandOutcome::Tracked(r)
            }
            Command::Untrack { topic, key, conn } => {
                let part = self.presence.untrack(topic, key, conn, &mut self.scratch)?;
                self.buffer_local(now, vec![part], vec![]);
                CommandOutcome::Done
            }
            Command::UntrackConn { conn } => {
                let parts = self.presence.untrack_conn(conn, &mut self.scratch);
                if !parts.is_empty() {
                    self.buffer_local(now, parts, vec![]);
                }
                CommandOutcome::Done
            }
            Command::Subscribe { topic, sub } => {
                self.subscribe(now, topic, sub)?;
                CommandOutcome::Done
            }
            Command::Unsubscribe { topic, sub } => {
                if let SubChange::Replicate(part) = self.subs.unsubscribe(&topic, sub)? {
                    self.buffer_local(now, vec![], vec![part]);
                }
                self.pending_subs
                    .retain(|p| !(p.sub == sub && p.topic == topic));
                CommandOutcome::Done
            }
            Command::Publish {
                topic,
                payload,
                exclude,
            } => self.publish(topic, payload, exclude),
            Command::DirectPublish {
                node,
                topic,
                payload,
            } => {
                if node == self.cfg.id {
                    let local = self.deliver_local(&topic, &payload, None);
                    CommandOutcome::Published {
                        local,
                        remote_nodes: 0,
                    }
                } else {
                    let addr = self
                        .peers
                        .get(&node)
                        .filter(|p| p.state == PeerState::Up)
                        .and_then(|p| p.addr)
                        .ok_or_else(|| CommandError::UnknownNode(node.clone()))?;
                    self.send(Some(node), addr, Body::Broadcast { topic, payload });
                    self.stats.broadcasts_sent += 1;
                    CommandOutcome::Published {
                        local: false,
                        remote_nodes: 1,
                    }
                }
            }
            Command::Append {
                topic,
                time_ms,
                body,
            } => {
                let stamp = self.next_stamp(time_ms);
                self.write_record(Record::Log {
                    topic,
                    stamp: stamp.clone(),
                    body,
                });
                CommandOutcome::Recorded(stamp)
            }
            Command::Put {
                space,
                key,
                time_ms,
                value,
            } => {
                let stamp = self.next_stamp(time_ms);
                self.write_record(Record::Reg {
                    space,
                    key,
                    stamp: stamp.clone(),
                    value,
                });
                CommandOutcome::Recorded(stamp)
            }
            Command::Leave => {
                self.left = true;
                let targets: Vec<(NodeId, SocketAddr)> = self
                    .peers
                    .iter()
                    .filter_map(|(id, p)| p.addr.map(|a| (id.clone(), a)))
                    .collect();
                for (id, addr) in targets {
                    self.send(Some(id), addr, Body::Leave);
                }
                CommandOutcome::Done
            }
        };
        self.drain_diffs(now);
        Ok(outcome)
    }

    /// Applies a message from a peer (already authenticated by the transport).
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        if self.left || msg.from == self.cfg.id {
            return;
        }
        let from = msg.from.clone();
        if !self.admit(now, &from, Some(msg.addr)) {
            return;
        }
        match msg.body {
            Body::Hello { full } => {
                if full {
                    let members = self.member_list();
                    self.send(Some(from.clone()), msg.addr, Body::Members(members));
                }
            }
            Body::Members(list) => {
                for (id, addr) in list {
                    self.learn(now, id, addr);
                }
            }
            Body::Swim(swim) => {
                self.swim.handle_message(now, &from, msg.addr, swim);
                self.apply_swim(now);
            }
            Body::Delta {
                start,
                seq,
                presence,
                subs,
            } => {
                self.merge(now, Some(&from), presence, subs);
                self.send(Some(from.clone()), msg.addr, Body::Ack { start, seq });
            }
            Body::Ack { start, seq } => {
                // Only an ack that continues what the peer already holds moves
                // it: if an earlier delta was lost, retransmission resends it.
                if let Some(p) = self.peers.get_mut(&from) {
                    if start <= p.acked {
                        p.acked = p.acked.max(seq.min(self.next_seq));
                        p.sent = p.sent.max(p.acked);
                    }
                }
                self.check_pending_subs(now);
                self.gc_buffer();
            }
            Body::Digest {
                presence,
                subs,
                reply,
                members,
            } => {
                self.synced(&from);
                // Push-pull backstop for members the gossip missed: at most
                // one list per anti-entropy period, whoever asks.
                if self
                    .list_sent
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.anti_entropy)
                    && members < self.up_members()
                {
                    self.list_sent = Some(now);
                    let list = self.member_list();
                    self.send(Some(from.clone()), msg.addr, Body::Members(list));
                }
                self.handle_digest(&from, msg.addr, &presence, &subs, reply);
            }
            Body::Repair { presence, subs } => {
                self.merge(now, Some(&from), presence, subs);
            }
            Body::Broadcast { topic, payload } => {
                self.deliver_local(&topic, &payload, None);
            }
            Body::Leave => {
                self.swim.leave(&from);
                self.forget(&from);
            }
            Body::Records(records) => self.merge_records(records),
            Body::RecordsDigest { buckets, reply } => {
                self.handle_records_digest(&from, msg.addr, &buckets, reply);
            }
        }
        self.drain_diffs(now);
    }

    /// Fires every timer due at `now`. Spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_at = None;
            self.flush(now);
        }
        if self.tick_at.is_some_and(|t| t <= now) {
            self.tick_at = Some(now + self.cfg.tick);
            self.tick(now);
        }
        if self.anti_entropy_at.is_some_and(|t| t <= now) {
            self.anti_entropy_at = Some(now + self.cfg.anti_entropy);
            self.anti_entropy();
        }
        if self.swim.poll_timeout() <= now {
            self.swim.handle_timeout(now);
            self.apply_swim(now);
        }
        self.check_pending_subs(now);
        self.drain_diffs(now);
        while let Some((topic, diff)) = self.coalescer.pop_due(now) {
            self.events.push_back(Event::PresenceDiff { topic, diff });
        }
    }

    // --------------------------------------------------------------- outputs

    /// The next message to send, if any. Poll until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next local event, if any. Poll until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next. Changes after every
    /// input, so ask again each time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        [
            self.flush_at,
            self.tick_at,
            self.anti_entropy_at,
            Some(self.swim.poll_timeout()),
            self.coalescer.next_due(),
            self.pending_subs.iter().map(|p| p.deadline).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ------------------------------------------------------------- internals

    fn start(&mut self, now: Instant) {
        self.tick_at = Some(now + self.cfg.tick);
        self.anti_entropy_at = Some(now + self.cfg.anti_entropy);
        for addr in self.cfg.seeds.clone() {
            if addr != self.cfg.addr {
                self.send(None, addr, Body::Hello { full: true });
            }
        }
    }

    fn send(&mut self, to: Option<NodeId>, addr: SocketAddr, body: Body) {
        self.transmits.push_back(Transmit {
            to,
            addr,
            msg: Message {
                from: self.cfg.id.clone(),
                addr: self.cfg.addr,
                body,
            },
        });
        self.stats.peak_transmits = self.stats.peak_transmits.max(self.transmits.len());
    }

    /// Membership bookkeeping for a message from `from`. Returns false if the
    /// message must be ignored (an incarnation older than one we know).
    fn admit(&mut self, now: Instant, from: &NodeId, addr: Option<SocketAddr>) -> bool {
        if !self.peers.contains_key(from) {
            // A node we have not heard from: refuse a stale incarnation, and let a
            // newer one replace every older one, including incarnations we only
            // know through entries relayed by others.
            if self.newer_peer(from) {
                return false;
            }
            let older: Vec<NodeId> = self
                .peers
                .range(from.incarnations())
                .map(|(id, _)| id)
                .chain(self.presence.store().incarnations_of(from))
                .chain(self.subs.store().incarnations_of(from))
                .filter(|id| id.incarnation < from.incarnation)
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for old in older {
                self.forget(&old);
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
                        last_delta: now,
                        syncs_left: 0,
                    },
                );
                self.events.push_back(Event::MemberUp(from.clone()));
                self.sync_with(from);
            }
        }
        true
    }

    /// A member named in someone's list: say hello if it is new to us (once
    /// per anti-entropy period, however many lists name it).
    fn learn(&mut self, now: Instant, id: NodeId, addr: SocketAddr) {
        if id == self.cfg.id || self.peers.contains_key(&id) {
            if self.peers.get(&id).is_some_and(|p| p.addr.is_none()) {
                self.set_addr(now, &id, addr);
            }
            return;
        }
        if self.newer_peer(&id) || self.presence.store().is_purged(&id) {
            return;
        }
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

    /// Fills in a peer's address. The first one makes it a new contact, as a
    /// peer that comes up is: it was known only through entries relayed by
    /// others, nothing was pushed to it, and it may know nothing of us, so we
    /// exchange digests (both sides stayed address-less for seconds after a
    /// heal otherwise, one missing the other's oldest entries until a random
    /// anti-entropy round picked the right peer).
    fn set_addr(&mut self, now: Instant, id: &NodeId, addr: SocketAddr) {
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

    /// Whether a newer incarnation of `id`'s name is a peer.
    fn newer_peer(&self, id: &NodeId) -> bool {
        self.peers
            .range(id.incarnations())
            .any(|(k, _)| k.incarnation > id.incarnation)
    }

    fn up_members(&self) -> u32 {
        debug_assert_eq!(
            self.up_peers as usize,
            self.peers
                .values()
                .filter(|p| p.state == PeerState::Up && p.addr.is_some())
                .count()
        );
        1 + self.up_peers
    }

    fn member_list(&self) -> Vec<(NodeId, SocketAddr)> {
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
    fn forget(&mut self, id: &NodeId) {
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
        if let Some(p) = self.peers.remove(id) {
            if p.state == PeerState::Up && p.addr.is_some() {
                self.up_peers -= 1;
            }
            self.events.push_back(Event::MemberGone(id.clone()));
        }
        self.gc_buffer();
    }

    fn subscribe(
        &mut self,
        now: Instant,
        topic: Topic,
        sub: SubscriberId,
    ) -> Result<(), CommandError> {
        let change = self.subs.subscribe(topic.clone(), sub)?;
        let seq = match change {
            SubChange::Replicate(part) => Some(self.buffer_local(now, vec![], vec![part])),
            // Someone else subscribed first: wait for the same acknowledgement.
            SubChange::None => self
                .pending_subs
                .iter()
                .find(|p| p.topic == topic)
                .map(|p| p.seq),
        };
        match seq {
            Some(seq) if self.peers.values().any(|p| p.state == PeerState::Up) => {
                self.pending_subs.push(PendingSub {
                    topic,
                    sub,
                    seq,
                    deadline: now + self.cfg.subscribe_wait,
                });
            }
            _ => self.events.push_back(Event::SubscribeReady { topic, sub }),
        }
        Ok(())
    }

    fn check_pending_subs(&mut self, now: Instant) {
        if self.pending_subs.is_empty() {
            return;
        }
        let peers = &self.peers;
        let events = &mut self.events;
        self.pending_subs.retain(|p| {
            let acked = peers
                .values()
                .filter(|peer| peer.state == PeerState::Up)
                .all(|peer| peer.acked > p.seq);
            if acked || p.deadline <= now {
                events.push_back(Event::SubscribeReady {
                    topic: p.topic.clone(),
                    sub: p.sub,
                });
                false
            } else {
                true
            }
        });
    }

    fn publish(
        &mut self,
        topic: Topic,
        payload: Bytes,
        exclude: Option<SubscriberId>,
    ) -> CommandOutcome {
        let local = self.deliver_local(&topic, &payload, exclude);
        let targets: Vec<(NodeId, SocketAddr)> = self
            .subs
            .nodes_for(&topic)
            .filter(|n| **n != self.cfg.id)
            .filter_map(|n| {
                let p = self.peers.get(n)?;
                (p.state == PeerState::Up).then_some((n.clone(), p.addr?))
            })
            .collect();
        let remote_nodes = targets.len();
        for (id, addr) in targets {
            self.send(
                Some(id),
                addr,
                Body::Broadcast {
                    topic: topic.clone(),
                    payload: payload.clone(),
                },
            );
            self.stats.broadcasts_sent += 1;
        }
        CommandOutcome::Published {
            local,
            remote_nodes,
        }
    }

    fn deliver_local(
        &mut self,
        topic: &Topic,
        payload: &Bytes,
        exclude: Option<SubscriberId>,
    ) -> bool {
        let has = self
            .subs
            .local_subscribers(topic)
            .is_some_and(|s| s.iter().any(|&x| Some(x) != exclude));
        if has {
            self.events.push_back(Event::Broadcast {
                topic: topic.clone(),
                payload: payload.clone(),
                exclude,
            });
        }
        has
    }

    /// Buffers a local op and schedules the push. Returns its buffer seq.
    fn buffer_local(
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
    fn relay_targets(&mut self, from: &NodeId, origins: &[NodeId]) -> Vec<NodeId> {
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

    fn push_buffer(
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
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.cfg.flush_delay);
        }
        seq
    }

    fn merge(
        &mut self,
        now: Instant,
        from: Option<&NodeId>,
        presence: Delta<PresEntry>,
        subs: Delta<Topic>,
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
        if !novel_p.is_empty() || !novel_s.is_empty() {
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

    /// Whether to merge ops of `origin`: not ours, not an incarnation older than
    /// one we know. A newer incarnation purges the older one.
    fn admit_origin(&mut self, now: Instant, origin: &NodeId) -> bool {
        if *origin == self.cfg.id
            || (origin.same_name(&self.cfg.id) && origin.incarnation < self.cfg.id.incarnation)
        {
            return false;
        }
        if self.peers.contains_key(origin) {
            return true;
        }
        if self.presence.store().is_purged(origin) {
            return false;
        }
        // Heard of only through others: watch it like a peer, so that if we
        // never hear from it directly its entries go down and then away.
        if self.newer_peer(origin) {
            return false;
        }
        let older: Vec<NodeId> = self
            .peers
            .range(origin.incarnations())
            .map(|(k, _)| k)
            .filter(|k| k.incarnation < origin.incarnation)
            .cloned()
            .collect();
        for old in older {
            self.forget(&old);
        }
        self.swim.insert(now, origin.clone(), None);
        self.peers.insert(
            origin.clone(),
            Peer {
                addr: None,
                state: PeerState::Up,
                last_heard: now,
                acked: self.next_seq,
                sent: self.next_seq,
                last_delta: now,
                syncs_left: 0,
            },
        );
        self.events.push_back(Event::MemberUp(origin.clone()));
        true
    }

    /// Sends each up peer the δ-group it has not been sent, minus what came
    /// from it (BP).
    fn flush(&mut self, now: Instant) {
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
            p.last_delta = now;
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
    fn gc_buffer(&mut self) {
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
    fn tick(&mut self, now: Instant) {
        let ae = self.cfg.anti_entropy;
        self.greeted
            .retain(|_, t| now.saturating_duration_since(*t) < ae);
        let mut retransmit = false;
        for p in self.peers.values_mut() {
            if p.state == PeerState::Up
                && p.acked < p.sent
                && now.saturating_duration_since(p.last_delta) >= self.cfg.retransmit_after
            {
                p.sent = p.acked;
                retransmit = true;
            }
        }
        if retransmit {
            self.flush(now);
        }
        self.gc_buffer();
    }

    /// Carries out what the failure detector decided.
    fn apply_swim(&mut self, now: Instant) {
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

    /// Exchanges version vectors with one random up peer, and re-announces us to
    /// seeds we are not connected to.
    fn anti_entropy(&mut self) {
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
        let connected: Vec<SocketAddr> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Up)
            .filter_map(|p| p.addr)
            .collect();
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
    fn sync_with(&mut self, id: &NodeId) {
        if let Some(p) = self.peers.get_mut(id) {
            p.syncs_left = SYNC_RETRIES;
        }
        self.send_digest(id, false);
    }

    /// A digest from `id`: we have seen what it lacks and repaired it.
    fn synced(&mut self, id: &NodeId) {
        if let Some(p) = self.peers.get_mut(id) {
            p.syncs_left = 0;
        }
    }

    fn send_digest(&mut self, to: &NodeId, reply: bool) {
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

    // --------------------------------------------------------------- records

    fn next_stamp(&mut self, time_ms: u64) -> Stamp {
        self.record_clock = time_ms.max(self.record_clock + 1);
        self.record_seq += 1;
        Stamp {
            time_ms: self.record_clock,
            origin: self.cfg.id.clone(),
            seq: self.record_seq,
        }
    }

    /// Applies a local write and pushes it to every up peer. Peers that miss
    /// it (down, partitioned) get it from anti-entropy.
    fn write_record(&mut self, record: Record) {
        if self.records.merge(&record) {
            self.events.push_back(Event::Record(record.clone()));
        }
        let targets: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Up)
            .filter_map(|(id, p)| p.addr.map(|a| (id.clone(), a)))
            .collect();
        for (id, addr) in targets {
            self.stats.records_sent += 1;
            self.send(Some(id), addr, Body::Records(vec![record.clone()]));
        }
    }

    fn merge_records(&mut self, records: Vec<Record>) {
        for record in records.into_iter().filter(Record::is_valid) {
            if cfg!(feature = "broken-merge") && matches!(record, Record::Reg { value: None, .. }) {
                continue;
            }
            self.record_clock = self.record_clock.max(record.stamp().time_ms);
            if self.records.merge(&record) {
                self.stats.records_merged += 1;
                self.events.push_back(Event::Record(record));
            }
        }
    }

    fn send_records_digest(&mut self, to: NodeId, addr: SocketAddr, reply: bool) {
        let buckets = self.records.digest().to_vec();
        self.send(Some(to), addr, Body::RecordsDigest { buckets, reply });
    }

    /// Ships our records of every bucket that differs from the peer's, and
    /// answers a first digest with ours so the peer ships what we lack.
    fn handle_records_digest(
        &mut self,
        from: &NodeId,
        addr: SocketAddr,
        theirs: &[u64],
        reply: bool,
    ) {
        let records = {
            let state = &self.records;
            let differ: Vec<bool> = state
                .digest()
                .iter()
                .zip(theirs)
                .map(|(a, b)| a != b)
                .collect();
            if !differ.contains(&true) {
                return;
            }
            state.bucket_records(&differ)
        };
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for record in records {
            bytes += record.size();
            chunk.push(record);
            if bytes >= self.cfg.records_chunk {
                self.stats.records_sent += 1;
                self.send(
                    Some(from.clone()),
                    addr,
                    Body::Records(std::mem::take(&mut chunk)),
                );
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.stats.records_sent += 1;
            self.send(Some(from.clone()), addr, Body::Records(chunk));
        }
        if !reply {
            self.send_records_digest(from.clone(), addr, true);
        }
    }

    fn handle_digest(
        &mut self,
        from: &NodeId,
        addr: SocketAddr,
        presence: &[(NodeId, u64)],
        subs: &[(NodeId, u64)],
        reply: bool,
    ) {
        let their = |vv: &[(NodeId, u64)], id: &NodeId| {
            vv.binary_search_by(|(k, _)| k.cmp(id))
                .map_or(0, |i| vv[i].1)
        };
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
        let mut p_parts: Vec<Part<PresEntry>> = Vec::new();
        for (id, _) in self.presence.store().digest() {
            if serves(&id) {
                p_parts.extend(
                    self.presence
                        .store()
                        .slice(&id, their(presence, &id), chunk),
                );
            }
        }
        let mut s_parts: Vec<Part<Topic>> = Vec::new();
        for (id, _) in self.subs.store().digest() {
            if serves(&id) {
                s_parts.extend(self.subs.store().slice(&id, their(subs, &id), chunk));
            }
        }
        // One part per origin per message; a long slice takes several messages.
        while !p_parts.is_empty() || !s_parts.is_empty() {
            let mut batch_p: Vec<Part<PresEntry>> = Vec::new();
            let mut batch_s: Vec<Part<Topic>> = Vec::new();
            let mut size = 0;
            let mut rest_p = Vec::new();
            for part in p_parts.drain(..) {
                if batch_p.iter().any(|b| b.origin == part.origin)
                    || (size > 0 && size + part.adds.len() > chunk)
                {
                    rest_p.push(part);
                } else {
                    size += part.adds.len().max(1);
                    batch_p.push(part);
                }
            }
            let mut rest_s = Vec::new();
            for part in s_parts.drain(..) {
                if batch_s.iter().any(|b| b.origin == part.origin)
                    || (size > 0 && size + part.adds.len() > chunk)
                {
                    rest_s.push(part);
                } else {
                    size += part.adds.len().max(1);
                    batch_s.push(part);
                }
            }
            p_parts = rest_p;
            s_parts = rest_s;
            self.stats.repairs_sent += 1;
            self.send(
                Some(from.clone()),
                addr,
                Body::Repair {
                    presence: Delta { parts: batch_p },
                    subs: Delta { parts: batch_s },
                },
            );
        }
        if !reply {
            let behind = |vv: &[(NodeId, u64)], known: &dyn Fn(&NodeId) -> u64| {
                vv.iter().any(|(id, max)| *max > known(id))
            };
            let ps = self.presence.store();
            let ss = self.subs.store();
            let lacking = behind(presence, &|id| {
                if ps.is_purged(id) {
                    u64::MAX
                } else {
                    ps.known(id)
                }
            }) || behind(subs, &|id| {
                if ss.is_purged(id) {
                    u64::MAX
                } else {
                    ss.known(id)
                }
            });
            if lacking {
                self.send_digest(from, true);
            }
        }
    }

    /// Moves diffs produced by the last input into the coalescer.
    fn drain_diffs(&mut self, now: Instant) {
        for (topic, item) in self.scratch.drain(..) {
            let size = self.presence.topic_len(&topic);
            self.coalescer.push(now, topic, item, size);
        }
    }

    /// Emits every pending presence diff now (tests and shutdown).
    pub fn flush_diffs(&mut self) {
        for (topic, diff) in self.coalescer.flush_all() {
            self.events.push_back(Event::PresenceDiff { topic, diff });
        }
    }
}
