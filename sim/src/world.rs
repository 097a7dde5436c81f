//! The world: node slots, the virtual clock, the event queue and the RNG, and
//! the loop that drives real engine [`Node`]s through them.
//!
//! Time is a [`Duration`] offset from one base [`Instant`] captured when the
//! world is made; nodes see `base + offset`, everything else sees offsets. The
//! queue is a `BTreeMap` keyed by `(time, sequence)`, so ties break in the
//! order events were scheduled. Faults, commands and workload live in `ops`.
//! What the checkers need is written to the [`Log`] as the world runs,
//! convergence samples included; the world never calls into `check`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chorus_engine::{Body, ConnId, Key, Message, Meta, Node, NodeId, PhxRef, Swim, Topic};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::hostile::Hostile;
use crate::log::{Footprint, Log, Sample};
use crate::net::{Lane, Net, NetConfig};
use crate::trace::Trace;

/// One visible presence as every converged node must list it.
pub type ViewItem = (Topic, Key, PhxRef, Meta);

/// First gossip port: node `i` listens on `127.0.0.1:(BASE_PORT + i)`.
pub const BASE_PORT: u16 = 7400;

/// Number of message kinds counted in [`WorldStats`].
pub const KINDS: usize = 17;

/// Names of the message kinds, indexed like the counters.
pub const KIND_NAMES: [&str; KINDS] = [
    "hello",
    "members",
    "heartbeat",
    "delta",
    "ack",
    "digest",
    "repair",
    "broadcast",
    "leave",
    "records",
    "records_digest",
    "ping",
    "ping-ack",
    "ping-req",
    "ping-nack",
    "repair-ack",
    "credit",
];

/// A scenario's overrides of the nodes' `NodeConfig::lan` (failure-detection
/// timing, history cap) and each node's clock skew.
#[derive(Clone, Debug, Default)]
pub struct NodeTiming {
    /// `NodeConfig::down_after`, if not the default.
    pub down_after: Option<Duration>,
    /// `NodeConfig::permdown_after`, if not the default.
    pub permdown_after: Option<Duration>,
    /// `NodeConfig::history_cap`, if not the default.
    pub history_cap: Option<usize>,
    /// `NodeConfig::history_ttl` (none by default): each node is handed its
    /// skewed wall clock whenever its timers fire.
    pub history_ttl: Option<Duration>,
    /// `NodeConfig::history_budget` (none by default).
    pub history_budget: Option<usize>,
    /// Clock skew of node `i` in milliseconds (0 when unlisted): what its
    /// clients pass as `time_ms` is the virtual wall clock plus this.
    pub clock_skew_ms: Vec<i64>,
}

/// World-wide counters.
#[derive(Clone, Debug, Default)]
pub struct WorldStats {
    /// Messages sent, by kind.
    pub msgs: [u64; KINDS],
    /// Encoded bytes sent, by kind.
    pub bytes: [u64; KINDS],
    /// Messages dropped by the network (loss, cuts, dead or restarted receiver).
    pub dropped: u64,
    /// Largest event queue seen.
    pub peak_queue: usize,
    /// Largest inbox of a paused node seen.
    pub peak_inbox: usize,
    /// Events processed.
    pub steps: u64,
}

/// One node name: its current incarnation and what the checkers know of it.
#[derive(Debug)]
pub struct NodeSlot {
    /// Node name (`n{i}`), stable across restarts.
    pub name: String,
    /// Fake gossip address.
    pub addr: SocketAddr,
    /// Current (or last, if crashed) incarnation number.
    pub incarnation: u64,
    /// Bumped on every crash and restart: messages to an older generation drop.
    pub gen: u64,
    /// The engine node; `None` while crashed.
    pub node: Option<Node>,
    /// Paused until this time.
    pub paused_until: Option<Duration>,
    pub(crate) inbox: VecDeque<Arrival>,
    pub(crate) timer_at: Option<Duration>,
    /// What clients tracked on this incarnation: the truth for convergence.
    pub truth: BTreeMap<(Topic, Key, ConnId), (PhxRef, Meta)>,
    /// The view rebuilt from this incarnation's emitted presence diffs.
    pub replay: BTreeSet<ViewItem>,
    /// Local subscriptions: topic -> (subscribed at, ready at).
    pub subs: BTreeMap<Topic, (Duration, Option<Duration>)>,
    pub(crate) next_conn: u64,
    pub(crate) pub_seq: u64,
    /// Ended incarnations: `(id, ended at, replaced at)`.
    pub past: Vec<(NodeId, Duration, Option<Duration>)>,
    /// Largest transmit queue and δ-buffer any incarnation reported.
    pub peaks: (usize, usize),
    /// δ-buffer overflows of every incarnation.
    pub overflows: u64,
    /// Presence and subscription ops made by ended incarnations.
    pub ops_ended: u64,
    /// The wall clock last handed to the current incarnation
    /// (`Node::handle_wall_clock`): with `history_ttl`, its history horizon
    /// is this minus the ttl.
    pub wall_fed_ms: Option<u64>,
}

impl NodeSlot {
    /// Whether the node is running (not crashed).
    pub fn is_live(&self) -> bool {
        self.node.is_some()
    }

    /// The current incarnation's id.
    pub fn id(&self) -> NodeId {
        NodeId::new(self.name.as_str(), self.incarnation)
    }
}

/// A message on the wire.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub from: usize,
    /// The sender's id when it sent: what the link authenticated, handed to
    /// the receiver with the message (which may claim someone else).
    pub from_id: NodeId,
    pub to: usize,
    pub to_gen: u64,
    /// Stream messages: `(connection epoch, sender generation)`.
    pub stream: Option<(u64, u64)>,
    pub bytes: Vec<u8>,
    /// Hops of the watched change at the sender when sent (`u32::MAX`: none).
    pub hop: u32,
    /// Made up by the hostile peer with a value the decoder must refuse.
    pub bad: bool,
    /// Made up by the hostile peer claiming another sender.
    pub spoof: bool,
}

#[derive(Debug)]
pub(crate) enum Ev {
    Deliver(Box<Arrival>),
    Timer(usize),
    Resume(usize),
    Workload(usize),
    Flap { a: usize, b: usize, until: Duration },
    Attack,
}

/// The simulated cluster. See the module docs.
pub struct World {
    pub(crate) base: Instant,
    pub(crate) now: Duration,
    seq: u64,
    queue: BTreeMap<(Duration, u64), Ev>,
    pub(crate) rng: ChaCha8Rng,
    /// Link state and behaviour.
    pub net: Net,
    /// Node slots, by index.
    pub nodes: Vec<NodeSlot>,
    /// The event trace.
    pub trace: Trace,
    /// Counters.
    pub stats: WorldStats,
    /// What the checkers read.
    pub log: Log,
    pub(crate) timing: NodeTiming,
    pub(crate) sample_every: Duration,
    next_sample: Duration,
    pub(crate) workloads: Vec<crate::workload::Running>,
    pub(crate) watch: Option<crate::watch::Watch>,
    pub(crate) hostile: Option<Hostile>,
}

impl World {
    /// An empty world with the given seed, network and node timing.
    pub fn new(seed: u64, net: NetConfig, timing: NodeTiming, sample_every: Duration) -> Self {
        World {
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            net: Net::new(net),
            nodes: Vec::new(),
            trace: Trace::default(),
            stats: WorldStats::default(),
            log: Log::default(),
            timing,
            sample_every,
            next_sample: Duration::ZERO,
            workloads: Vec::new(),
            watch: None,
            hostile: None,
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The address of node `i`.
    pub fn addr(i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, BASE_PORT + i as u16))
    }

    /// Runs every event up to and including `until`, then sets the clock there.
    pub fn run_until(&mut self, until: Duration) {
        loop {
            let next = self.queue.first_key_value().map(|(k, _)| k.0);
            let due = next.filter(|t| *t <= until);
            if self.next_sample <= due.unwrap_or(until) {
                self.now = self.now.max(self.next_sample);
                self.take_sample();
                self.next_sample += self.sample_every;
                continue;
            }
            let Some(_) = due else { break };
            let ((at, _), ev) = self.queue.pop_first().expect("peeked above");
            self.now = at;
            self.stats.steps += 1;
            self.dispatch(ev);
        }
        self.now = until;
    }

    /// The truth: the entries of live honest incarnations that clients did
    /// not untrack.
    pub fn truth(&self) -> BTreeSet<ViewItem> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_live() && !self.is_hostile(*i))
            .map(|(_, s)| s)
            .flat_map(|s| {
                s.truth
                    .iter()
                    .map(|((t, k, _), (r, m))| (t.clone(), k.clone(), *r, m.clone()))
            })
            .collect()
    }

    /// What node `i` shows that must equal the truth: its whole view, or,
    /// with a hostile peer in the world, the entries of live honest
    /// incarnations in it (the hostile peer's own and made-up entries may
    /// differ between nodes). `None` for a crashed or the hostile node.
    pub fn view_of(&self, i: usize) -> Option<BTreeSet<ViewItem>> {
        let node = self.nodes[i].node.as_ref()?;
        if self.hostile.is_none() {
            return Some(node.presence().view());
        }
        if self.is_hostile(i) {
            return None;
        }
        let honest: BTreeSet<NodeId> = (0..self.nodes.len())
            .filter(|&j| self.nodes[j].is_live() && !self.is_hostile(j))
            .map(|j| self.nodes[j].id())
            .collect();
        let store = node.presence().store();
        let view = store
            .iter()
            .filter(|(slot, e)| {
                store.is_visible(*slot) && honest.contains(store.replica_id(e.replica))
            })
            .map(|(_, e)| {
                let v = &e.value;
                (v.topic.clone(), v.key.clone(), v.phx_ref, v.meta.clone())
            })
            .collect();
        Some(view)
    }

    /// Records in the log which nodes agree with the truth now, and whether
    /// every live node's records digest is the same.
    pub(crate) fn take_sample(&mut self) {
        let truth = self.truth();
        let agree = (0..self.nodes.len())
            .map(|i| self.view_of(i).map(|v| v == truth))
            .collect();
        if self.hostile.is_some() {
            self.take_footprints();
        }
        let mut digests = self
            .nodes
            .iter()
            .filter_map(|s| s.node.as_ref().map(|n| n.records()));
        let records_agree = match digests.next() {
            Some(first) => digests.all(|d| d.digest() == first.digest()),
            None => true,
        };
        self.log.samples.push(Sample {
            at: self.now,
            agree,
            records_agree,
        });
    }

    /// Records each honest live node's memory next to its bound (see
    /// [`Footprint`]).
    fn take_footprints(&mut self) {
        let ops = |n: &Node| n.presence().store().next_op() - 1 + n.subs().store().next_op() - 1;
        let all_ops: u64 = self
            .nodes
            .iter()
            .map(|s| s.ops_ended + s.node.as_ref().map_or(0, ops))
            .sum();
        let incarnations: u64 = self.nodes.iter().map(|s| s.incarnation).sum();
        let entries_bound = all_ops + self.log.hostile.made_up;
        let members_bound = incarnations + self.log.hostile.named.len() as u64;
        for (i, s) in self.nodes.iter().enumerate() {
            let Some(n) = s.node.as_ref().filter(|_| !self.is_hostile(i)) else {
                continue;
            };
            self.log.hostile.footprints.push(Footprint {
                at: self.now,
                node: i,
                entries: (n.presence().store().len() + n.subs().store().len()) as u64,
                entries_bound,
                members: n.members().len() as u64,
                members_bound,
                buffer: n.buffer_len() as u64,
                buffer_bound: n.config().buffer_cap as u64,
            });
        }
    }

    pub(crate) fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
        self.stats.peak_queue = self.stats.peak_queue.max(self.queue.len());
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver(a) => self.deliver(*a),
            Ev::Timer(i) => {
                let slot = &mut self.nodes[i];
                if slot.timer_at != Some(self.now) {
                    return;
                }
                slot.timer_at = None;
                if slot.paused_until.is_some() {
                    return;
                }
                self.fire(i);
            }
            Ev::Resume(i) => self.resume(i),
            Ev::Workload(w) => self.workload_tick(w),
            Ev::Flap { a, b, until } => self.flap(a, b, until),
            Ev::Attack => self.attack(),
        }
    }

    fn deliver(&mut self, a: Arrival) {
        let slot = &self.nodes[a.to];
        let stale_stream = a.stream.is_some_and(|(epoch, from_gen)| {
            epoch != self.net.epoch(a.from, a.to) || from_gen != self.nodes[a.from].gen
        });
        if slot.node.is_none() || slot.gen != a.to_gen || stale_stream {
            self.stats.dropped += 1;
            return;
        }
        if slot.paused_until.is_some() {
            let slot = &mut self.nodes[a.to];
            slot.inbox.push_back(a);
            self.stats.peak_inbox = self.stats.peak_inbox.max(slot.inbox.len());
            return;
        }
        self.handle_arrival(a);
    }

    pub(crate) fn handle_arrival(&mut self, a: Arrival) {
        self.trace.record(self.now, 1);
        self.trace.word(((a.from as u64) << 32) | a.to as u64);
        self.trace.bytes(&a.bytes);
        let msg = match Message::decode(&a.bytes) {
            Ok(m) => m,
            Err(_) if a.bad => {
                self.log.hostile.refused += 1;
                return;
            }
            Err(e) => {
                let err = format!("{}: n{} -> n{}: {e}", fmt_t(self.now), a.from, a.to);
                self.log.codec_errors.push(err);
                return;
            }
        };
        if a.bad {
            let err = format!("{}: n{} -> n{} decoded", fmt_t(self.now), a.from, a.to);
            self.log.hostile.accepted_bad.push(err);
        }
        if let Some(h) = self.hostile.as_mut().filter(|h| h.node == a.to) {
            h.capture(&msg);
        }
        let slot = &mut self.nodes[a.to];
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        // The node merges every record handed to it (a stream message always
        // comes from its sender's current incarnation, which nodes admit).
        if let Body::Records(records) = &msg.body {
            self.log.records.delivered(a.to, slot.incarnation, records);
        }
        let rejected = node.stats().rejected_identity;
        let claimed = msg.from.clone();
        node.handle_message(self.base + self.now, &a.from_id, msg);
        if a.spoof {
            if node.stats().rejected_identity > rejected {
                self.log.hostile.spoofs_rejected += 1;
            } else {
                let err = format!(
                    "{}: n{} -> n{} as {claimed} taken",
                    fmt_t(self.now),
                    a.from,
                    a.to
                );
                self.log.hostile.spoofs_accepted.push(err);
            }
        }
        self.after_input(a.to);
        self.watch_arrival(a.to, a.hop);
    }

    /// Drains a node's transmits and events, and re-arms its timer.
    pub(crate) fn after_input(&mut self, i: usize) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let timeout;
        {
            let slot = &mut self.nodes[i];
            let Some(node) = slot.node.as_mut() else {
                return;
            };
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            timeout = node.poll_timeout();
            let st = node.stats();
            slot.peaks.0 = slot.peaks.0.max(st.peak_transmits);
            slot.peaks.1 = slot.peaks.1.max(st.peak_buffer);
        }
        for t in transmits {
            self.send(i, &t.addr, &t.msg);
        }
        for e in events {
            self.on_event(i, e);
        }
        if let Some(t) = timeout {
            let at = t.saturating_duration_since(self.base).max(self.now);
            let slot = &mut self.nodes[i];
            if slot.timer_at.is_none_or(|cur| at < cur) {
                slot.timer_at = Some(at);
                self.schedule(at, Ev::Timer(i));
            }
        }
    }

    fn send(&mut self, from: usize, addr: &SocketAddr, msg: &Message) {
        self.send_with(from, addr, msg, false, false);
    }

    /// Sends a message the hostile peer on `from` made up to node `to`,
    /// through the codec, on `from`'s authenticated link.
    pub(crate) fn send_forged(
        &mut self,
        from: usize,
        to: usize,
        msg: &Message,
        bad: bool,
        spoof: bool,
    ) {
        self.send_with(from, &World::addr(to), msg, bad, spoof);
    }

    fn send_with(&mut self, from: usize, addr: &SocketAddr, msg: &Message, bad: bool, spoof: bool) {
        let bytes = msg.encode();
        let kind = kind_of(&msg.body);
        self.stats.msgs[kind] += 1;
        self.stats.bytes[kind] += bytes.len() as u64;
        let to = usize::from(addr.port().wrapping_sub(BASE_PORT));
        if to >= self.nodes.len() || *addr != World::addr(to) {
            self.stats.dropped += 1;
            return;
        }
        let lane = if msg.body.loss_tolerant() {
            Lane::Datagram
        } else {
            Lane::Stream
        };
        let arrivals = self.net.route(&mut self.rng, self.now, from, to, lane);
        if arrivals.is_empty() {
            self.stats.dropped += 1;
        }
        let stream =
            (lane == Lane::Stream).then(|| (self.net.epoch(from, to), self.nodes[from].gen));
        let hop = self.watch_hop(from);
        let n = arrivals.len();
        let mut bytes = Some(bytes);
        for (k, at) in arrivals.into_iter().enumerate() {
            let bytes = if k + 1 == n {
                bytes.take().expect("the last copy takes the bytes")
            } else {
                bytes.clone().expect("taken only by the last copy")
            };
            let arrival = Arrival {
                from,
                from_id: self.nodes[from].id(),
                to,
                to_gen: self.nodes[to].gen,
                stream,
                bytes,
                hop,
                bad,
                spoof,
            };
            self.schedule(at, Ev::Deliver(Box::new(arrival)));
        }
    }
}

/// Index of a message kind in the counters.
pub fn kind_of(body: &Body) -> usize {
    match body {
        Body::Hello { .. } => 0,
        Body::Members(_) => 1,
        Body::Delta { .. } => 3,
        Body::Ack { .. } => 4,
        Body::Digest { .. } => 5,
        Body::Repair { .. } => 6,
        Body::Broadcast { .. } => 7,
        Body::Leave => 8,
        Body::Records(_) => 9,
        Body::RecordsDigest { .. } => 10,
        Body::Swim(Swim::Ping { .. }) => 11,
        Body::Swim(Swim::PingAck { .. }) => 12,
        Body::Swim(Swim::PingReq { .. }) => 13,
        Body::Swim(Swim::PingNack { .. }) => 14,
        Body::RepairAck { .. } => 15,
        Body::Credit { .. } => 16,
    }
}

/// A virtual time as `12.345s`.
pub fn fmt_t(t: Duration) -> String {
    format!("{}.{:03}s", t.as_secs(), t.subsec_millis())
}
