//! The hostile peer: one node slot whose process is a real, authenticated
//! [`chorus_engine::Node`] (it joins, gossips and replicates like any other)
//! and whose link also carries messages an adversary makes up: well-formed
//! but wrong, sent through the real codec with the slot's own authenticated
//! identity as the sender the receiver is handed.
//!
//! Every attack period the adversary picks one [`Attack`] and one honest
//! target with its own RNG (seeded from the world's, so a seed replays the
//! same attacks):
//!
//! - **replays**: a message an honest node sent the hostile node (deltas,
//!   repairs, member lists, digests, probes), sent again later, out of order,
//!   as the hostile node's own;
//! - **spoofs**: the same, or a made-up delta, still claiming its original
//!   sender in `msg.from` (the receiver must drop and count it);
//! - **future** and **stale incarnations** of honest nodes: entries under
//!   `n{j}@(inc ± k)` in a delta, and member lists and SWIM `Alive` gossip
//!   naming them at the real node's address;
//! - **enormous deltas**: [`BIG`] entries under the hostile node's own id;
//! - **ghost origins**: entries under names nobody runs;
//! - **bad values**: a meta that is not a JSON object, a topic over
//!   `MAX_TOPIC` (the receiver's decode must refuse the frame);
//! - **lying digests**: claiming every op of every replica, or none, and a
//!   member count of `u32::MAX` or 0;
//! - **a budget horizon at the end of time**: a records digest whose budget
//!   horizon is `u64::MAX` (the receiver caps it at its wall clock, so it
//!   refuses nothing written from then on).
//!
//! Entries the adversary makes up count against its quota ([`Hostile::quota`]):
//! the checkers bound honest nodes' memory by honest work plus that quota.
//! What the world records of it is in [`crate::log::HostileLog`].

use std::collections::VecDeque;
use std::time::Duration;

use chorus_engine::{
    Body, ConnId, Delta, Key, Message, Meta, NodeId, Part, PhxRef, PresEntry, Ranges, Swim, Topic,
    Update, UpdateKind, BUCKETS, MAX_TOPIC,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::world::{Ev, World};

/// Entries in one enormous delta: 10 times the largest honest join storm
/// of the built-in scenarios (200), small enough that a run stays fast.
pub const BIG: usize = 2_000;

/// Messages captured for replay (the oldest go first).
const CAPTURE: usize = 64;

/// Names the adversary invents (`ghost0`..): a bounded number, each a
/// member every honest node watches until it goes down.
const GHOSTS: u64 = 4;

/// What the adversary can do in one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// A captured message again, as the hostile node's own.
    Replay,
    /// A captured message or a made-up delta claiming another sender.
    Spoof,
    /// Entries under a future incarnation of an honest node.
    FutureEntries,
    /// Entries under a stale incarnation of an honest node.
    StaleEntries,
    /// Member list and SWIM gossip naming other incarnations of honest nodes.
    Incarnations,
    /// [`BIG`] entries at once under the hostile node's id.
    Enormous,
    /// Entries under names nobody runs.
    Ghosts,
    /// A value the decoder must refuse.
    BadValue,
    /// A digest claiming everything or nothing.
    LyingDigest,
    /// A records digest with a budget horizon of `u64::MAX`.
    EndOfTime,
}

/// Every attack, in the order they are drawn.
pub const ATTACKS: [Attack; 10] = [
    Attack::Replay,
    Attack::Spoof,
    Attack::FutureEntries,
    Attack::StaleEntries,
    Attack::Incarnations,
    Attack::Enormous,
    Attack::Ghosts,
    Attack::BadValue,
    Attack::LyingDigest,
    Attack::EndOfTime,
];

/// The adversary's state.
#[derive(Debug)]
pub struct Hostile {
    /// The slot it speaks from.
    pub node: usize,
    rng: ChaCha8Rng,
    every: Duration,
    until: Duration,
    /// Entries it may still make up.
    pub quota: u64,
    captured: VecDeque<Message>,
    next_dot: u64,
}

impl Hostile {
    /// An adversary on slot `node`, attacking every `every` until `until`,
    /// allowed `quota` made-up entries.
    pub fn new(node: usize, seed: u64, every: Duration, until: Duration, quota: u64) -> Self {
        Hostile {
            node,
            rng: ChaCha8Rng::seed_from_u64(seed),
            every,
            until,
            quota,
            captured: VecDeque::new(),
            // Far above the hostile process's own ops, so the two never mix.
            next_dot: 1 << 40,
        }
    }

    /// Keeps a copy of a message the hostile node received, for replay.
    pub(crate) fn capture(&mut self, msg: &Message) {
        if self.captured.len() == CAPTURE {
            self.captured.pop_front();
        }
        self.captured.push_back(msg.clone());
    }

    /// `n` made-up entries owned by `origin`: from op 1 for another node's
    /// id (as its first ops would be), else from fresh high dots.
    fn entries(&mut self, origin: &NodeId, n: usize, meta: &str, own: bool) -> Part<PresEntry> {
        let mut ops = Ranges::new();
        let mut adds = Vec::with_capacity(n);
        let base = if own {
            let b = self.next_dot;
            self.next_dot += n as u64;
            b
        } else {
            1
        };
        for k in 0..n as u64 {
            let dot = base + k;
            ops.insert(dot);
            adds.push((
                dot,
                PresEntry {
                    topic: Topic::new(format!("room:{}", k % 3)),
                    key: Key::from(format!("forged-{dot}").as_str()),
                    conn: ConnId(dot),
                    meta: Meta::new(meta),
                    phx_ref: PhxRef::from_parts(self.rng.random(), dot),
                    prev_ref: None,
                },
            ));
        }
        Part {
            origin: origin.clone(),
            ops,
            adds,
            removes: Vec::new(),
            full: false,
        }
    }
}

fn delta(parts: Vec<Part<PresEntry>>) -> Body {
    Body::Delta {
        start: 0,
        seq: 1,
        presence: Delta { parts },
        subs: Delta::default(),
    }
}

impl World {
    /// Makes slot `node` hostile from now on for `ms`, attacking every
    /// `every_ms` with at most `quota` made-up entries.
    pub fn start_hostile(&mut self, node: usize, ms: u64, every_ms: u64, quota: u64) {
        let seed = self.rng.random();
        let every = Duration::from_millis(every_ms.max(1));
        let until = self.now + Duration::from_millis(ms);
        self.hostile = Some(Hostile::new(node, seed, every, until, quota));
        self.schedule(self.now + every, Ev::Attack);
    }

    /// Whether slot `i` is the hostile one.
    pub fn is_hostile(&self, i: usize) -> bool {
        self.hostile.as_ref().is_some_and(|h| h.node == i)
    }

    /// One attack period: one attack on one honest node, then the next.
    pub(crate) fn attack(&mut self) {
        let Some(h) = self.hostile.as_mut() else {
            return;
        };
        if self.now >= h.until {
            // The last attack is the last fault: honest nodes must converge
            // within the scenario's bound after it.
            self.log.last_fault = self.log.last_fault.max(self.now);
            return;
        }
        let me = h.node;
        let next = self.now + h.every;
        self.schedule(next, Ev::Attack);
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != me && self.nodes[i].is_live())
            .collect();
        if honest.is_empty() || !self.nodes[me].is_live() {
            return;
        }
        let h = self.hostile.as_mut().expect("checked above");
        let to = honest[h.rng.random_range(0..honest.len())];
        let other = honest[h.rng.random_range(0..honest.len())];
        let attack = ATTACKS[h.rng.random_range(0..ATTACKS.len())];
        let me_id = self.nodes[me].id();
        let me_addr = self.nodes[me].addr;
        let other_id = self.nodes[other].id();
        let other_addr = self.nodes[other].addr;
        let own = |body| Message {
            from: me_id.clone(),
            addr: me_addr,
            body,
        };
        let mut bad = false;
        let msgs: Vec<Message> = match attack {
            Attack::Replay => {
                let h = self.hostile.as_mut().expect("checked above");
                if h.captured.is_empty() {
                    return;
                }
                let k = h.rng.random_range(0..h.captured.len());
                vec![own(h.captured[k].body.clone())]
            }
            Attack::Spoof => {
                let h = self.hostile.as_mut().expect("checked above");
                let made_up = h.entries(&other_id, 1, "{}", false);
                let mut out = vec![Message {
                    from: other_id.clone(),
                    addr: other_addr,
                    body: delta(vec![made_up]),
                }];
                if !h.captured.is_empty() {
                    let k = h.rng.random_range(0..h.captured.len());
                    out.push(h.captured[k].clone());
                }
                out
            }
            Attack::FutureEntries | Attack::StaleEntries => {
                let h = self.hostile.as_mut().expect("checked above");
                let inc = if attack == Attack::FutureEntries {
                    other_id.incarnation + h.rng.random_range(1..1_000)
                } else {
                    other_id.incarnation.saturating_sub(1)
                };
                let fake = NodeId::new(other_id.name.clone(), inc);
                if h.quota < 3 {
                    return;
                }
                h.quota -= 3;
                self.log.hostile.made_up += 3;
                self.log.hostile.named.insert(fake.clone());
                vec![own(delta(vec![h.entries(&fake, 3, "{}", false)]))]
            }
            Attack::Incarnations => {
                let h = self.hostile.as_mut().expect("checked above");
                let future = NodeId::new(
                    other_id.name.clone(),
                    other_id.incarnation + h.rng.random_range(1..1_000),
                );
                let stale = NodeId::new(
                    other_id.name.clone(),
                    other_id.incarnation.saturating_sub(1),
                );
                self.log.hostile.named.insert(future.clone());
                self.log.hostile.named.insert(stale.clone());
                let gossip = [&future, &stale]
                    .into_iter()
                    .map(|id| Update {
                        node: id.clone(),
                        addr: other_addr,
                        inc: 0,
                        kind: UpdateKind::Alive,
                    })
                    .collect();
                let target = self.nodes[to].id();
                vec![
                    own(Body::Members(vec![
                        (future.clone(), other_addr),
                        (stale, other_addr),
                    ])),
                    own(Body::Swim(Swim::Ping {
                        seq: h.rng.random(),
                        target,
                        gossip,
                    })),
                ]
            }
            Attack::Enormous => {
                let h = self.hostile.as_mut().expect("checked above");
                if h.quota < BIG as u64 {
                    return;
                }
                h.quota -= BIG as u64;
                self.log.hostile.made_up += BIG as u64;
                vec![own(delta(vec![h.entries(
                    &me_id,
                    BIG,
                    "{\"big\":true}",
                    true,
                )]))]
            }
            Attack::Ghosts => {
                let h = self.hostile.as_mut().expect("checked above");
                if h.quota < 2 {
                    return;
                }
                h.quota -= 2;
                self.log.hostile.made_up += 2;
                let ghost = NodeId::new(format!("ghost{}", h.rng.random_range(0..GHOSTS)), 1);
                self.log.hostile.named.insert(ghost.clone());
                vec![own(delta(vec![h.entries(&ghost, 2, "{}", true)]))]
            }
            Attack::BadValue => {
                let h = self.hostile.as_mut().expect("checked above");
                bad = true;
                let mut part = h.entries(&me_id, 1, "[\"not\", \"an object\"]", true);
                if h.rng.random::<bool>() {
                    part.adds[0].1.meta = Meta::new("{\"ok\":true}");
                    part.adds[0].1.topic = Topic::new("t".repeat(MAX_TOPIC + 1));
                }
                vec![own(delta(vec![part]))]
            }
            Attack::LyingDigest => {
                let h = self.hostile.as_mut().expect("checked above");
                let all = h.rng.random::<bool>();
                let claim: Vec<(NodeId, u64)> = if all {
                    self.nodes
                        .iter()
                        .filter(|s| s.is_live())
                        .map(|s| (s.id(), 1 << 40))
                        .collect()
                } else {
                    Vec::new()
                };
                vec![own(Body::Digest {
                    presence: claim.clone(),
                    subs: claim,
                    reply: false,
                    members: if all { u32::MAX } else { 0 },
                })]
            }
            Attack::EndOfTime => vec![own(Body::RecordsDigest {
                buckets: vec![0; BUCKETS],
                reply: true,
                horizon: u64::MAX,
            })],
        };
        *self.log.hostile.sent.entry(attack).or_default() += 1;
        for m in msgs {
            let spoof = m.from != me_id;
            self.send_forged(me, to, &m, bad, spoof);
        }
    }
}
