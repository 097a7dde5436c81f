//! The [`Node`] state machine: one cluster member's presence table, subscription
//! table, δ-buffer, peer table and timers.
//!
//! Inputs: [`Node::handle_command`] (local API), [`Node::handle_message`] (a
//! decoded peer message), [`Node::handle_timeout`], [`Node::handle_wall_clock`]
//! (the wall clock, which the core never reads itself). Outputs, pulled:
//! [`Node::poll_transmit`], [`Node::poll_event`], [`Node::poll_timeout`]. After
//! any input, drain `poll_transmit` and `poll_event` until `None`, then sleep
//! until `poll_timeout` or the next input.
//!
//! Replication follows delta-state CRDTs (Almeida et al., Algorithm 2) with the
//! BP and RR refinements of Enes et al. 2019: local ops and the novel part of
//! every merged delta enter a δ-buffer with sequence numbers; each peer is sent
//! the δ-group from what it has acknowledged, minus what came from it; a peer too
//! far behind is repaired per origin from version vectors. See ALGORITHM.md.
//!
//! This file holds the struct and its public inputs and outputs; the rest is
//! split by concern, mostly as `impl Node` blocks: `types.rs` (the API's
//! words), `config.rs` ([`NodeConfig`]), `peers.rs` (peer table, admission,
//! failure verdicts), `replicate.rs` (δ-buffer, merge, push,
//! retransmission), `anti_entropy.rs` (digests and repair), `pubsub.rs`
//! (subscriptions, broadcasts, presence diffs), `records.rs` (history and
//! registers) and `timers.rs` (the node's own timers, as data).

mod anti_entropy;
mod config;
mod peers;
mod pubsub;
mod records;
mod replicate;
mod timers;
mod types;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use config::NodeConfig;
pub use types::{Command, CommandError, CommandOutcome, Event, NodeStats, PeerState, Transmit};

use self::anti_entropy::RepairJob;
use self::peers::Peer;
use self::pubsub::PendingSub;
use self::replicate::Buffered;
use self::timers::{Timer, Timers};
use crate::coalesce::Coalescer;
use crate::codec::{Body, Message};
use crate::id::{NodeId, Topic};
use crate::membership::Membership;
use crate::presence::{DiffItem, Presence, PresenceItem};
use crate::records::{Record, Records};
use crate::subs::{SubChange, Subs};

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
    /// Counter of local register writes.
    record_seq: u64,
    /// Per topic, the counter of this incarnation's appends to its log:
    /// contiguous per topic, so a stream position holds one number per
    /// origin (`position.rs`). Never dropped while the incarnation lives (a
    /// counter restarted at 1 would reuse seqs).
    log_seqs: std::collections::BTreeMap<Topic, u64>,
    /// The greatest stamp time issued or seen: local writes stamp past it.
    record_clock: u64,
    /// The budget horizon (`history_budget`): ours or the greatest a peer
    /// gossiped, capped at `wall_ms`. Only grows; gossiped in records digests.
    budget_horizon: u64,
    /// The greatest wall clock handed to [`Node::handle_wall_clock`] (0:
    /// none yet, so no peer's budget horizon is adopted).
    wall_ms: u64,
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
    /// Paced repairs in progress, per peer (see `anti_entropy.rs`).
    repairs: BTreeMap<NodeId, RepairJob>,
    /// Sequence number of the next repair sent.
    next_repair: u64,
    pending_subs: Vec<PendingSub>,
    coalescer: Coalescer,
    /// Diffs of every topic, or only of topics with local subscribers (see
    /// [`Node::diffs_for_all_topics`]).
    all_diffs: bool,
    scratch: Vec<(Topic, DiffItem)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    timers: Timers,
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
            log_seqs: std::collections::BTreeMap::new(),
            record_clock: 0,
            budget_horizon: 0,
            wall_ms: 0,
            coalescer: Coalescer::new(cfg.coalesce.clone()),
            all_diffs: true,
            rng,
            peers: BTreeMap::new(),
            up_peers: 0,
            swim: Membership::new(cfg.id.clone(), cfg.addr, cfg.swim(), cfg.rng_seed, now),
            greeted: BTreeMap::new(),
            list_sent: None,
            buffer: VecDeque::new(),
            next_seq: 0,
            repairs: BTreeMap::new(),
            next_repair: 0,
            pending_subs: Vec::new(),
            scratch: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timers: Timers::default(),
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

    /// The budget horizon: log entries stamped before it were dropped to
    /// keep history within `history_budget`, here or on a peer (see
    /// [`NodeConfig::history_budget`]).
    pub fn budget_horizon(&self) -> u64 {
        self.budget_horizon
    }

    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Visible presence metas of `topic`.
    pub fn list(&self, topic: &Topic) -> Vec<PresenceItem> {
        self.presence.list(topic)
    }

    /// Visible presence metas of `topic`, listed for a subscriber (its
    /// `presence_state`): the topic's pending diff then keeps a leave for each
    /// of them that goes before the window closes, since the subscriber holds
    /// it (see `coalesce.rs`). Use [`Node::list`] for reads no client applies
    /// diffs to.
    pub fn list_for_subscriber(&mut self, topic: &Topic) -> Vec<PresenceItem> {
        self.coalescer.listed(topic);
        self.presence.list(topic)
    }

    /// Peers and their state, in id order.
    pub fn members(&self) -> Vec<(NodeId, Option<SocketAddr>, PeerState)> {
        self.peers
            .iter()
            .map(|(id, p)| (id.clone(), p.addr, p.state))
            .collect()
    }

    /// The address `peer` is known at, if it is a member and has one.
    pub fn member_addr(&self, peer: &NodeId) -> Option<SocketAddr> {
        self.peers.get(peer).and_then(|p| p.addr)
    }

    /// When `peer` was last heard from (any message), if it is a member.
    pub fn last_heard(&self, peer: &NodeId) -> Option<Instant> {
        self.peers.get(peer).map(|p| p.last_heard)
    }

    /// Current δ-buffer length.
    pub fn buffer_len(&self) -> usize {
        self.buffer.len()
    }

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
                crate::codec::entry_ok(&topic, &key, &meta).map_err(CommandError::Invalid)?;
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
                crate::codec::entry_ok(&topic, &key, &meta).map_err(CommandError::Invalid)?;
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
                if topic.as_str().len() > crate::codec::MAX_TOPIC {
                    return Err(CommandError::Invalid("topic too long"));
                }
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
            } => self.direct_publish(node, topic, payload)?,
            Command::Append {
                topic,
                time_ms,
                body,
            } => {
                let stamp = self.next_log_stamp(&topic, time_ms);
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
                self.leave();
                CommandOutcome::Done
            }
        };
        self.drain_diffs(now);
        Ok(outcome)
    }

    /// Applies a message from `from`, the peer its link authenticated (the
    /// runtime's QUIC hello, the simulator's sender). A message claiming
    /// another sender is dropped and counted
    /// ([`NodeStats::rejected_identity`]). The transport has decoded it with
    /// [`Message::decode`], whose checks the node relies on for sizes and
    /// shapes; anything else a peer can say is handled without panicking.
    pub fn handle_message(&mut self, now: Instant, from: &NodeId, msg: Message) {
        if msg.from != *from && !cfg!(feature = "trusting-peer") {
            self.stats.rejected_identity += 1;
            return;
        }
        if self.left || msg.from == self.cfg.id {
            return;
        }
        let from = msg.from.clone();
        if from.same_name(&self.cfg.id) {
            self.twin(now, &from, msg.addr);
            return;
        }
        if !self.admit(now, &from, Some(msg.addr)) {
            self.tell_stale(now, &from, msg.addr);
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
                self.merge(now, Some(&from), presence, subs, true);
                self.send(Some(from.clone()), msg.addr, Body::Ack { start, seq });
            }
            Body::Ack { start, seq } => self.handle_ack(now, &from, start, seq),
            Body::Digest {
                presence,
                subs,
                reply,
                members,
            } => {
                self.synced(&from);
                self.members_backstop(now, &from, msg.addr, members);
                self.handle_digest(now, &from, msg.addr, &presence, &subs, reply);
            }
            Body::Repair {
                presence,
                subs,
                seq,
            } => {
                self.merge(now, Some(&from), presence, subs, false);
                self.send(Some(from.clone()), msg.addr, Body::RepairAck { seq });
            }
            Body::RepairAck { seq } => self.handle_repair_ack(now, &from, msg.addr, seq),
            Body::Broadcast { topic, payload } => {
                self.deliver_local(&topic, &payload, None);
            }
            // Flow control between two runtimes' queues: the driver's.
            Body::Credit { .. } => {}
            Body::Leave => {
                self.swim.leave(&from);
                self.forget(&from);
            }
            Body::Records(records) => self.merge_records(records),
            Body::RecordsDigest {
                buckets,
                reply,
                horizon,
            } => {
                self.adopt_budget_horizon(horizon);
                self.handle_records_digest(&from, msg.addr, &buckets, reply);
            }
        }
        self.drain_diffs(now);
    }

    /// The driver could not send `t`: its queue to the peer has no room.
    /// A [`Body::Repair`] is taken back and sent again later (when the peer
    /// acknowledges an earlier repair, or at the next tick), so a paced state
    /// transfer is never lost to a full queue; anything else is lost as the
    /// queue would have lost it (deltas are retransmitted, digests repeated).
    /// Produces no transmit itself.
    pub fn handle_unsent(&mut self, t: Transmit) {
        if let (
            Some(to),
            Body::Repair {
                presence,
                subs,
                seq,
            },
        ) = (t.to, t.msg.body)
        {
            self.return_repair(&to, seq, presence, subs);
        }
    }

    /// Fires every timer due at `now`. Spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.is_due(Timer::Flush, now) {
            self.timers.stop(Timer::Flush);
            self.flush(now);
        }
        if self.timers.is_due(Timer::Tick, now) {
            self.timers.set(Timer::Tick, now + self.cfg.tick);
            self.tick(now);
        }
        if self.timers.is_due(Timer::AntiEntropy, now) {
            self.timers
                .set(Timer::AntiEntropy, now + self.cfg.anti_entropy);
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

    /// Tells the node the wall clock, in milliseconds since the Unix epoch:
    /// with `history_ttl` set, log entries stamped more than `history_ttl`
    /// before it are dropped ([`Event::HistoryExpired`]) and refused from
    /// peers from now on. Feed it about once a second (the runtime does on
    /// every timeout); an earlier time than before changes nothing. The
    /// horizon follows this clock only, never record stamps, which peers
    /// choose. It also caps the budget horizons adopted from peers
    /// ([`NodeConfig::history_budget`]).
    pub fn handle_wall_clock(&mut self, time_ms: u64) {
        self.wall_ms = self.wall_ms.max(time_ms);
        self.expire_history(time_ms);
    }

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
            self.timers.next(),
            Some(self.swim.poll_timeout()),
            self.coalescer.next_due(),
            self.pending_subs.iter().map(|p| p.deadline).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The addresses of the peers this node holds up.
    pub(crate) fn up_addrs(&self) -> Vec<SocketAddr> {
        self.peers
            .values()
            .filter(|p| p.state == PeerState::Up)
            .filter_map(|p| p.addr)
            .collect()
    }

    /// Replaces the seed list: the static seeds plus what the runtime's DNS
    /// discovery resolved (the core never resolves names). A seed not in the
    /// old list, not this node and not a connected peer is greeted at once, as
    /// a seed is at start; every seed not connected is greeted again each
    /// anti-entropy round. A seed dropped from the list is no longer greeted: a
    /// member behind it is left to SWIM. Calling it with the same list does
    /// nothing.
    pub fn handle_seeds(&mut self, mut seeds: Vec<SocketAddr>) {
        seeds.sort_unstable();
        seeds.dedup();
        seeds.retain(|addr| *addr != self.cfg.addr);
        let connected = self.up_addrs();
        let old = std::mem::take(&mut self.cfg.seeds);
        for &addr in &seeds {
            if !old.contains(&addr) && !connected.contains(&addr) {
                self.send(None, addr, Body::Hello { full: true });
            }
        }
        self.cfg.seeds = seeds;
    }

    fn start(&mut self, now: Instant) {
        self.timers.set(Timer::Tick, now + self.cfg.tick);
        self.timers
            .set(Timer::AntiEntropy, now + self.cfg.anti_entropy);
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
}

#[cfg(test)]
mod tests;
