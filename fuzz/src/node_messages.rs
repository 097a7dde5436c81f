//! Decode-then-`handle_message` on a live [`Node`], structure-aware: the input is
//! a sequence of [`Op`]s (built with `arbitrary`) that drives one target node
//! and three fake peers over virtual time.
//!
//! The fake peers are real `Node`s, so the deltas, digests and SWIM probes they
//! send are the real thing; the fuzzer decides when each is delivered, mutates
//! some (another sender, a stale or future incarnation, a flipped byte, a
//! replay), and injects hand-built bodies (member lists, digests, acks, records,
//! SWIM updates) naming nodes real and unknown. Every message to the target goes
//! through the codec (`encode`, then `Message::decode`) and reaches the node
//! with the identity its link authenticated, as in the runtime ([`deliver`]):
//! a fake peer's own for its messages (so a changed sender is a spoof the node
//! must drop), whatever the frame claims for raw frames.
//!
//! [`run_forged`] (target `node_deltas`) drives the same world with the same
//! steps plus hand-built `Delta`, `Repair` and `RepairAck` bodies: parts of
//! any origin, real or made up, claiming op ranges near 1 or near `u64::MAX`,
//! with adds and removals anywhere in them (what the decoder refuses as
//! malformed still exercises it). It is a target of its own because adding
//! variants to [`Op`] or [`ArbBody`] would change how every committed input
//! of this one decodes, and its regression inputs would no longer replay the
//! steps that found their bugs.
//!
//! Invariants after every step: no panic; everything the target sends comes from
//! it, is not addressed to it and round-trips through the codec; its δ-buffer
//! stays under `buffer_cap`; its timers move forward (firing what is due never
//! leaves something due at the same instant forever); it never lists itself as
//! a member.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use chorus_engine::{
    Body, Command, ConnId, Delta, Message, Meta, Node, NodeConfig, NodeId, Part, PhxRef, PresEntry,
    Ranges, Record, Stamp, SubscriberId, Swim, Topic, Update, UpdateKind, BUCKETS,
};

/// Fake peers beside the target.
const PEERS: usize = 3;
/// Steps per input: enough for joins, deltas, digests and a failure verdict.
const MAX_OPS: usize = 96;
/// Bound on the transmits moved per step, so one input stays fast.
const MAX_PUMP: usize = 256;

const TOPICS: &[&str] = &["room:lobby", "room:1", "user:42", "chorus:records", ""];
const KEYS: &[&str] = &["alice", "bob", "42", ""];
const METAS: &[&str] = &[
    r#"{"online_at":"1700000000"}"#,
    r#"{"typing":true,"name":"alice"}"#,
    r#"{}"#,
    r#"[1,2]"#,
    r#""not an object""#,
    "not json",
];
/// Node names used in messages; index 0 is the target's.
const NAMES: &[&str] = &["t", "p0", "p1", "p2", "stranger"];

/// One step.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Virtual time passes (8 ms per unit, up to 2 s); every timer due fires,
    /// on every node.
    Advance(u8),
    /// A local command on the target.
    Local(LocalCmd),
    /// A local command on a fake peer (so it has something to replicate).
    PeerLocal(u8, LocalCmd),
    /// A fake peer's next message to the target, maybe mutated.
    Deliver(u8, Option<Mutation>),
    /// Everything the target sent, delivered to the fake peers it addressed.
    Reply,
    /// A hand-built message from a fake peer.
    Inject(u8, ArbBody),
    /// A raw frame from the network (most fail to decode).
    Raw(Vec<u8>),
    /// A fake peer restarts: same name, next incarnation, empty state.
    Restart(u8),
}

/// A local command, over a small palette of topics, keys and metas.
#[derive(Arbitrary, Debug)]
pub enum LocalCmd {
    Track {
        topic: u8,
        key: u8,
        conn: u8,
        meta: u8,
    },
    Update {
        topic: u8,
        key: u8,
        conn: u8,
        meta: u8,
    },
    Untrack {
        topic: u8,
        key: u8,
        conn: u8,
    },
    UntrackConn {
        conn: u8,
    },
    Subscribe {
        topic: u8,
        sub: u8,
    },
    Unsubscribe {
        topic: u8,
        sub: u8,
    },
    Publish {
        topic: u8,
        payload: Vec<u8>,
        exclude: Option<u8>,
    },
    DirectPublish {
        node: u8,
        topic: u8,
    },
    Append {
        topic: u8,
        time_ms: u64,
        body: String,
    },
    Put {
        key: u8,
        time_ms: u64,
        value: Option<String>,
    },
    Leave,
}

/// A change to a real message on its way to the target.
#[derive(Arbitrary, Debug)]
pub enum Mutation {
    /// Claims another incarnation of the sender.
    Incarnation(u64),
    /// Claims another sender name (maybe the target's own).
    Name(u8),
    /// Claims another gossip address.
    Addr(u16),
    /// Delivered twice.
    Replay,
    /// One byte of the encoded frame XORed.
    FlipByte(u16, u8),
    /// The encoded frame cut short.
    Truncate(u16),
}

/// A node named in a hand-built body.
#[derive(Arbitrary, Debug)]
pub struct ArbNode {
    name: u8,
    /// `None`: the incarnation that node runs now.
    inc: Option<u64>,
}

/// A hand-built body (the δ kinds come from real peers instead).
#[derive(Arbitrary, Debug)]
pub enum ArbBody {
    Hello(bool),
    Members(Vec<(ArbNode, u16)>),
    Ack(u64, u64),
    Digest {
        presence: Vec<(ArbNode, u64)>,
        subs: Vec<(ArbNode, u64)>,
        reply: bool,
        members: u32,
    },
    Broadcast(u8, Vec<u8>),
    Leave,
    Records(Vec<ArbRecord>),
    RecordsDigest(Vec<u64>, bool, u64),
    Ping {
        seq: u64,
        target: ArbNode,
        gossip: Vec<ArbUpdate>,
    },
    PingAck {
        seq: u64,
        gossip: Vec<ArbUpdate>,
    },
    PingReq {
        seq: u64,
        target: ArbNode,
        port: u16,
        gossip: Vec<ArbUpdate>,
    },
    PingNack(u64),
}

/// One step of [`run_forged`]: a step of [`run`], or a forged δ body from a
/// fake peer.
#[derive(Arbitrary, Debug)]
pub enum ForgedOp {
    Step(Op),
    Forge(u8, ForgedBody),
}

/// A hand-built δ body.
#[derive(Arbitrary, Debug)]
pub enum ForgedBody {
    Delta {
        start: u64,
        seq: u64,
        presence: Vec<ArbPart>,
        subs: Vec<ArbPart>,
    },
    Repair {
        seq: u64,
        presence: Vec<ArbPart>,
        subs: Vec<ArbPart>,
    },
    RepairAck(u64),
}

/// A part of a δ-group: ops `lo..=lo + len` of `origin` (`lo` counted back
/// from `u64::MAX - 1` when `far`), adds and removals at offsets in the span.
#[derive(Arbitrary, Debug)]
pub struct ArbPart {
    origin: ArbNode,
    far: bool,
    lo: u16,
    len: u8,
    /// `(offset, topic, key, meta, conn)`.
    adds: Vec<(u8, u8, u8, u8, u8)>,
    /// `(offset of the op, offset of the removed dot)`.
    removes: Vec<(u8, u8)>,
    full: bool,
}

/// A SWIM membership update.
#[derive(Arbitrary, Debug)]
pub struct ArbUpdate {
    node: ArbNode,
    port: u16,
    inc: u64,
    kind: u8,
    by: ArbNode,
}

/// A record write.
#[derive(Arbitrary, Debug)]
pub struct ArbRecord {
    log: bool,
    name: u8,
    time_ms: u64,
    origin: ArbNode,
    seq: u64,
    value: Option<String>,
}

/// A presence entry over the palettes.
fn pres_entry(topic: u8, key: u8, meta: u8, conn: u8) -> PresEntry {
    PresEntry {
        topic: Topic::new(pick(TOPICS, topic)),
        key: pick(KEYS, key).into(),
        conn: ConnId(u64::from(conn)),
        meta: Meta::new(pick(METAS, meta)),
        phx_ref: PhxRef::from_parts([7; 6], u64::from(conn)),
        prev_ref: None,
    }
}

fn pick<'a>(palette: &[&'a str], i: u8) -> &'a str {
    palette[i as usize % palette.len()]
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, 1 + i as u8),
        7400,
    ))
}

/// Every node's `history_budget`, in bytes.
const BUDGET: usize = 4096;
/// The wall clock handed to the nodes at the start (then it follows `now`).
const WALL0: u64 = 1_700_000_000_000;

/// The target is slot 0, the fake peers slots 1..=PEERS.
struct World {
    start: Instant,
    now: Instant,
    nodes: Vec<Node>,
    /// Messages each fake peer sent the target, not delivered yet.
    to_target: Vec<Vec<Message>>,
    /// Messages the target sent (with their address), not delivered yet.
    replies: Vec<(SocketAddr, Message)>,
}

fn config(slot: usize, incarnation: u64, seed: u64) -> NodeConfig {
    let mut cfg = NodeConfig::lan(NodeId::new(NAMES[slot], incarnation), addr(slot));
    cfg.rng_seed = seed;
    // Down and purged within an input's reach (LAN: purged after 5 minutes).
    cfg.permdown_after = Duration::from_secs(6);
    // Small enough that an input's appends and forged records go past it.
    cfg.history_budget = Some(BUDGET);
    cfg.seeds = if slot == 0 {
        vec![addr(1)]
    } else {
        vec![addr(0)]
    };
    cfg
}

/// The one call of `Node::handle_message`, with the identity the link
/// authenticated (`link`), as the runtime passes it.
fn deliver(node: &mut Node, now: Instant, link: &NodeId, msg: Message) {
    node.handle_message(now, link, msg);
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let nodes = (0..=PEERS)
            .map(|slot| Node::new(config(slot, 1, slot as u64), now))
            .collect();
        let mut world = World {
            start: now,
            now,
            nodes,
            to_target: vec![Vec::new(); PEERS],
            replies: Vec::new(),
        };
        world.pump();
        world
    }

    fn node_id(&self, arb: &ArbNode) -> NodeId {
        let slot = arb.name as usize % NAMES.len();
        let current = self.nodes.get(slot).map_or(1, |n| n.id().incarnation);
        NodeId::new(NAMES[slot], arb.inc.unwrap_or(current))
    }

    fn peer(i: u8) -> usize {
        1 + i as usize % PEERS
    }

    /// Moves every pending transmit: peer to peer at once (an honest network),
    /// peer to target and target to peer into the queues the fuzzer drains.
    fn pump(&mut self) {
        for _ in 0..MAX_PUMP {
            let mut moved = false;
            let target_id = self.nodes[0].id().clone();
            while let Some(t) = self.nodes[0].poll_transmit() {
                check_own_transmit(&target_id, &t.msg, t.to.as_ref());
                self.replies.push((t.addr, t.msg));
                // Keep only the newest few: a peer that is never answered is fine.
                if self.replies.len() > 64 {
                    self.replies.remove(0);
                }
            }
            for slot in 1..=PEERS {
                while let Some(t) = self.nodes[slot].poll_transmit() {
                    moved = true;
                    if t.addr == addr(0) {
                        let queue = &mut self.to_target[slot - 1];
                        queue.push(t.msg);
                        if queue.len() > 64 {
                            queue.remove(0);
                        }
                    } else if let Some(to) = (1..=PEERS).find(|&s| addr(s) == t.addr) {
                        let msg = round_trip(&t.msg);
                        let (now, link) = (self.now, self.nodes[slot].id().clone());
                        deliver(&mut self.nodes[to], now, &link, msg);
                    }
                }
            }
            for node in &mut self.nodes {
                while node.poll_event().is_some() {}
            }
            if !moved {
                return;
            }
        }
    }

    fn advance(&mut self, units: u8) {
        let until = self.now + Duration::from_millis(8 * u64::from(units));
        for slot in 0..self.nodes.len() {
            let mut fired = 0;
            while let Some(due) = self.nodes[slot].poll_timeout() {
                if due > until {
                    break;
                }
                let at = due.max(self.now);
                self.nodes[slot].handle_timeout(at);
                // Firing what is due must move it on, or this loop never ends.
                fired += 1;
                assert!(fired < 100_000, "node {slot}: a timer stays due at {at:?}");
            }
        }
        self.now = until;
        let wall = self.wall();
        for node in &mut self.nodes {
            node.handle_wall_clock(wall);
        }
        self.pump();
    }

    /// The wall clock the nodes were last handed: it follows `now`.
    fn wall(&self) -> u64 {
        WALL0 + u64::try_from((self.now - self.start).as_millis()).unwrap_or(u64::MAX - WALL0)
    }

    /// Decodes `frame` and hands it to the target, as the transport does, from
    /// the link authenticated as `link`; `None` is a peer that authenticated
    /// as whatever the frame claims (the cluster secret lets it choose any
    /// hello), so raw frames reach past the identity check.
    fn send_to_target(&mut self, link: Option<usize>, frame: &[u8]) {
        let Ok(msg) = Message::decode(frame) else {
            return;
        };
        let link = match link {
            Some(slot) => self.nodes[slot].id().clone(),
            None => msg.from.clone(),
        };
        let now = self.now;
        deliver(&mut self.nodes[0], now, &link, msg);
        self.pump();
    }

    fn command(&mut self, slot: usize, cmd: &LocalCmd) {
        let topic = |i: u8| Topic::new(pick(TOPICS, i));
        let conn = |i: u8| ConnId(u64::from(i % 4));
        let command = match cmd {
            LocalCmd::Track {
                topic: t,
                key,
                conn: c,
                meta,
            } => Command::Track {
                topic: topic(*t),
                key: pick(KEYS, *key).into(),
                conn: conn(*c),
                meta: Meta::new(pick(METAS, *meta)),
            },
            LocalCmd::Update {
                topic: t,
                key,
                conn: c,
                meta,
            } => Command::Update {
                topic: topic(*t),
                key: pick(KEYS, *key).into(),
                conn: conn(*c),
                meta: Meta::new(pick(METAS, *meta)),
            },
            LocalCmd::Untrack {
                topic: t,
                key,
                conn: c,
            } => Command::Untrack {
                topic: topic(*t),
                key: pick(KEYS, *key).into(),
                conn: conn(*c),
            },
            LocalCmd::UntrackConn { conn: c } => Command::UntrackConn { conn: conn(*c) },
            LocalCmd::Subscribe { topic: t, sub } => Command::Subscribe {
                topic: topic(*t),
                sub: SubscriberId(u64::from(*sub % 4)),
            },
            LocalCmd::Unsubscribe { topic: t, sub } => Command::Unsubscribe {
                topic: topic(*t),
                sub: SubscriberId(u64::from(*sub % 4)),
            },
            LocalCmd::Publish {
                topic: t,
                payload,
                exclude,
            } => Command::Publish {
                topic: topic(*t),
                payload: Bytes::copy_from_slice(payload),
                exclude: exclude.map(|s| SubscriberId(u64::from(s % 4))),
            },
            LocalCmd::DirectPublish { node, topic: t } => Command::DirectPublish {
                node: self.node_id(&ArbNode {
                    name: *node,
                    inc: None,
                }),
                topic: topic(*t),
                payload: Bytes::from_static(b"direct"),
            },
            LocalCmd::Append {
                topic: t,
                time_ms,
                body,
            } => Command::Append {
                topic: topic(*t),
                time_ms: *time_ms,
                body: Arc::from(body.as_str()),
            },
            LocalCmd::Put {
                key,
                time_ms,
                value,
            } => Command::Put {
                space: Arc::from("room"),
                key: Arc::from(pick(KEYS, *key)),
                time_ms: *time_ms,
                value: value.as_deref().map(Arc::from),
            },
            LocalCmd::Leave => Command::Leave,
        };
        let now = self.now;
        // Refusals (untracking what is not tracked, a direct publish to a
        // stranger) are typed errors; only a panic is a bug.
        let _ = self.nodes[slot].handle_command(now, command);
        self.pump();
    }

    fn body(&self, body: &ArbBody) -> Body {
        let update = |u: &ArbUpdate| Update {
            node: self.node_id(&u.node),
            addr: addr(u.port as usize % (PEERS + 2)),
            inc: u.inc,
            kind: match u.kind % 4 {
                0 => UpdateKind::Alive,
                1 => UpdateKind::Suspect {
                    by: self.node_id(&u.by),
                },
                2 => UpdateKind::Down,
                _ => UpdateKind::Left,
            },
        };
        match body {
            ArbBody::Hello(full) => Body::Hello { full: *full },
            ArbBody::Members(list) => Body::Members(
                list.iter()
                    .map(|(n, port)| (self.node_id(n), addr(*port as usize % (PEERS + 2))))
                    .collect(),
            ),
            ArbBody::Ack(start, seq) => Body::Ack {
                start: *start,
                seq: *seq,
            },
            ArbBody::Digest {
                presence,
                subs,
                reply,
                members,
            } => Body::Digest {
                presence: presence
                    .iter()
                    .map(|(n, c)| (self.node_id(n), *c))
                    .collect(),
                subs: subs.iter().map(|(n, c)| (self.node_id(n), *c)).collect(),
                reply: *reply,
                members: *members,
            },
            ArbBody::Broadcast(t, payload) => Body::Broadcast {
                topic: Topic::new(pick(TOPICS, *t)),
                payload: Bytes::copy_from_slice(payload),
            },
            ArbBody::Leave => Body::Leave,
            ArbBody::Records(records) => Body::Records(
                records
                    .iter()
                    .map(|r| {
                        let stamp = Stamp {
                            time_ms: r.time_ms,
                            origin: self.node_id(&r.origin),
                            seq: r.seq,
                        };
                        if r.log {
                            Record::Log {
                                topic: Topic::new(pick(TOPICS, r.name)),
                                stamp,
                                body: Arc::from(r.value.as_deref().unwrap_or("")),
                            }
                        } else {
                            Record::Reg {
                                space: Arc::from("room"),
                                key: Arc::from(pick(KEYS, r.name)),
                                stamp,
                                value: r.value.as_deref().map(Arc::from),
                            }
                        }
                    })
                    .collect(),
            ),
            ArbBody::RecordsDigest(buckets, reply, horizon) => {
                // Mostly the right size, so it gets past the decoder.
                let mut b = buckets.clone();
                if b.len() != BUCKETS + 1 {
                    b.resize(BUCKETS, 0);
                }
                Body::RecordsDigest {
                    buckets: b,
                    reply: *reply,
                    horizon: *horizon,
                }
            }
            ArbBody::Ping {
                seq,
                target,
                gossip,
            } => Body::Swim(Swim::Ping {
                seq: *seq,
                target: self.node_id(target),
                gossip: gossip.iter().map(update).collect(),
            }),
            ArbBody::PingAck { seq, gossip } => Body::Swim(Swim::PingAck {
                seq: *seq,
                gossip: gossip.iter().map(update).collect(),
            }),
            ArbBody::PingReq {
                seq,
                target,
                port,
                gossip,
            } => Body::Swim(Swim::PingReq {
                seq: *seq,
                target: self.node_id(target),
                target_addr: addr(*port as usize % (PEERS + 2)),
                gossip: gossip.iter().map(update).collect(),
            }),
            ArbBody::PingNack(seq) => Body::Swim(Swim::PingNack { seq: *seq }),
        }
    }

    /// `body` from fake peer `i` to the target, through the codec.
    fn inject(&mut self, i: u8, body: Body) {
        let slot = Self::peer(i);
        let msg = Message {
            from: self.nodes[slot].id().clone(),
            addr: addr(slot),
            body,
        };
        self.send_to_target(Some(slot), &msg.encode());
    }

    fn forged_body(&self, body: &ForgedBody) -> Body {
        let topic = |t, _, _, _| Topic::new(pick(TOPICS, t));
        match body {
            ForgedBody::Delta {
                start,
                seq,
                presence,
                subs,
            } => Body::Delta {
                start: *start,
                seq: *seq,
                presence: self.delta(presence, pres_entry),
                subs: self.delta(subs, topic),
            },
            ForgedBody::Repair {
                seq,
                presence,
                subs,
            } => Body::Repair {
                seq: *seq,
                presence: self.delta(presence, pres_entry),
                subs: self.delta(subs, topic),
            },
            ForgedBody::RepairAck(seq) => Body::RepairAck { seq: *seq },
        }
    }

    /// Parts as claimed: the decoder checks them (sorted, inside their ops,
    /// one removal per op) and refuses what is malformed.
    fn delta<E>(&self, parts: &[ArbPart], entry: impl Fn(u8, u8, u8, u8) -> E) -> Delta<E> {
        let parts = parts
            .iter()
            .map(|p| {
                let lo = if p.far {
                    (u64::MAX - 1).saturating_sub(u64::from(p.lo))
                } else {
                    1 + u64::from(p.lo)
                };
                let hi = lo.saturating_add(u64::from(p.len)).min(u64::MAX - 1);
                let at = |off: u8| lo + u64::from(off) % (hi - lo + 1);
                let mut adds: Vec<(u64, E)> = Vec::new();
                for &(off, topic, key, meta, conn) in &p.adds {
                    let dot = at(off);
                    if adds.last().is_none_or(|(d, _)| *d < dot) {
                        adds.push((dot, entry(topic, key, meta, conn)));
                    }
                }
                let mut removes: Vec<(u64, u64)> = Vec::new();
                for &(op, dot) in &p.removes {
                    let (op, dot) = (at(op), at(dot));
                    if removes.last().is_none_or(|(o, _)| *o < op) {
                        removes.push((op, dot));
                    }
                }
                Part {
                    origin: self.node_id(&p.origin),
                    ops: Ranges::span(lo, hi),
                    adds,
                    removes,
                    full: p.full,
                }
            })
            .collect();
        Delta { parts }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Advance(ms) => self.advance(*ms),
            Op::Local(cmd) => self.command(0, cmd),
            Op::PeerLocal(i, cmd) => self.command(Self::peer(*i), cmd),
            Op::Deliver(i, mutation) => {
                let slot = Self::peer(*i);
                let queue = &mut self.to_target[slot - 1];
                if queue.is_empty() {
                    return;
                }
                let mut msg = queue.remove(0);
                let mut times = 1;
                match mutation {
                    None => {}
                    Some(Mutation::Incarnation(inc)) => msg.from.incarnation = *inc,
                    Some(Mutation::Name(n)) => msg.from.name = pick(NAMES, *n).into(),
                    Some(Mutation::Addr(port)) => msg.addr = addr(*port as usize % (PEERS + 2)),
                    Some(Mutation::Replay) => times = 2,
                    Some(Mutation::FlipByte(..)) | Some(Mutation::Truncate(_)) => {}
                }
                let mut frame = msg.encode();
                match mutation {
                    Some(Mutation::FlipByte(at, xor)) => {
                        let at = *at as usize % frame.len();
                        frame[at] ^= xor;
                    }
                    Some(Mutation::Truncate(len)) => frame.truncate(*len as usize),
                    _ => {}
                }
                for _ in 0..times {
                    self.send_to_target(Some(slot), &frame);
                }
            }
            Op::Reply => self.reply(),
            Op::Inject(i, body) => {
                let body = self.body(body);
                self.inject(*i, body);
            }
            Op::Raw(frame) => self.send_to_target(None, frame),
            Op::Restart(i) => {
                let slot = Self::peer(*i);
                let inc = self.nodes[slot].id().incarnation.saturating_add(1);
                self.nodes[slot] = Node::new(config(slot, inc, inc), self.now);
                let wall = self.wall();
                self.nodes[slot].handle_wall_clock(wall);
                self.to_target[slot - 1].clear();
                self.pump();
            }
        }
        self.check_target();
    }

    /// Delivers what the target sent to the peers at the addresses it used.
    fn reply(&mut self) {
        let msgs = std::mem::take(&mut self.replies);
        let now = self.now;
        for (to, msg) in msgs {
            if let Some(slot) = (1..=PEERS).find(|&s| addr(s) == to) {
                let link = msg.from.clone();
                deliver(&mut self.nodes[slot], now, &link, round_trip(&msg));
            }
        }
        self.pump();
    }

    fn check_target(&self) {
        let node = &self.nodes[0];
        let me = node.id();
        assert!(
            node.records().log_bytes() <= BUDGET,
            "history over its budget"
        );

        assert!(
            node.buffer_len() <= node.config().buffer_cap,
            "δ-buffer over its cap"
        );
        assert!(
            node.members().iter().all(|(id, _, _)| id != me),
            "the target lists itself as a member"
        );
    }
}

/// What the target sends: from itself, not to itself, through the codec intact.
fn check_own_transmit(me: &NodeId, msg: &Message, to: Option<&NodeId>) {
    assert_eq!(&msg.from, me, "a transmit not from the target");
    assert_ne!(to, Some(me), "the target sends to itself: {:?}", msg.body);
    assert_eq!(&round_trip(msg), msg, "a transmit does not round-trip");
}

fn round_trip(msg: &Message) -> Message {
    Message::decode(&msg.encode()).expect("an encoded message decodes")
}

/// Runs one input: the ops decoded from `data` with `arbitrary`, at most
/// [`MAX_OPS`] of them.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut world = World::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        world.step(&op);
    }
}

/// Runs one input of target `node_deltas`: [`ForgedOp`]s, at most
/// [`MAX_OPS`] of them, on the same world and invariants as [`run`].
pub fn run_forged(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut world = World::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = ForgedOp::arbitrary(&mut u) else {
            break;
        };
        match &op {
            ForgedOp::Step(op) => world.step(op),
            ForgedOp::Forge(i, body) => {
                let body = world.forged_body(body);
                world.inject(*i, body);
                world.check_target();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forged bodies are not all refused at decode: a part of a made-up
    /// origin with its adds and a removal inside its ops, near `u64::MAX`
    /// or not, reaches the node.
    #[test]
    fn forged_parts_within_their_ops_decode() {
        let world = World::new();
        for far in [false, true] {
            let part = ArbPart {
                origin: ArbNode {
                    name: 4,
                    inc: Some(1),
                },
                far,
                lo: 3,
                len: 4,
                adds: vec![(0, 0, 0, 0, 1), (1, 1, 1, 2, 2)],
                removes: vec![(3, 0)],
                full: false,
            };
            let body = world.forged_body(&ForgedBody::Delta {
                start: 0,
                seq: 1,
                presence: vec![part],
                subs: vec![],
            });
            let msg = Message {
                from: world.nodes[1].id().clone(),
                addr: addr(1),
                body,
            };
            let decoded = Message::decode(&msg.encode());
            assert!(decoded.is_ok(), "far {far}: {decoded:?}");
        }
    }
}
