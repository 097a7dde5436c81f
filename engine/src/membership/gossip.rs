//! Membership gossip: the wire types ([`Swim`] messages carrying
//! [`Update`]s), SWIM's precedence rules for applying an update, and the
//! piggyback queue that picks what each message carries.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Membership, Output, State};
use crate::id::NodeId;

/// A membership update, piggybacked on probe messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member.
    pub node: NodeId,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Its membership incarnation (a per-process counter, bumped to refute).
    pub inc: u64,
    /// What is said of it.
    pub kind: UpdateKind,
}

/// What an [`Update`] says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateKind {
    /// Alive at `inc`.
    Alive,
    /// Suspected at `inc` by `by`.
    Suspect {
        /// The suspecting member.
        by: NodeId,
    },
    /// Down at `inc`.
    Down,
    /// Left gracefully.
    Left,
}

/// A SWIM probe message. Membership owns it; the codec carries it as
/// [`Body::Swim`](crate::codec::Body::Swim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Swim {
    /// Probe of `target` (ignored by any other incarnation), with piggybacked
    /// membership updates.
    Ping {
        /// Probe sequence number, echoed by the ack.
        seq: u64,
        /// The probed node incarnation.
        target: NodeId,
        /// Membership updates.
        gossip: Vec<Update>,
    },
    /// Answers a [`Swim::Ping`] (directly, or relayed by a helper).
    PingAck {
        /// The ping's `seq`.
        seq: u64,
        /// Membership updates.
        gossip: Vec<Update>,
    },
    /// Asks the receiver to probe `target` and relay its ack (indirect probe).
    PingReq {
        /// The requester's probe sequence number.
        seq: u64,
        /// The node to probe.
        target: NodeId,
        /// Its gossip address.
        target_addr: SocketAddr,
        /// Membership updates.
        gossip: Vec<Update>,
    },
    /// A helper could not reach the target of a [`Swim::PingReq`] in time
    /// (Lifeguard: tells the requester its own link works).
    PingNack {
        /// The requester's probe sequence number.
        seq: u64,
    },
}

#[derive(Debug)]
pub(super) struct Queued {
    pub(super) update: Update,
    pub(super) transmits: u32,
    pub(super) order: u64,
    /// Members it was piggybacked to: none gets it twice before every member
    /// got it once.
    pub(super) sent_to: BTreeSet<NodeId>,
}

impl Membership {
    /// Applies what `from` piggybacked. If it held us suspect or down, it
    /// gets our refutation first on our next message to it: the queue may
    /// have sent it to others already, and fresher news would crowd it out.
    pub(super) fn apply_all(&mut self, now: Instant, from: &NodeId, gossip: Vec<Update>) {
        for u in gossip {
            let accuses = u.node == self.id && u.kind != UpdateKind::Alive;
            if accuses && self.members.contains_key(from) {
                self.accusers.insert(from.clone());
            }
            self.apply(now, u);
        }
    }

    /// SWIM's precedence rules: alive needs a higher incarnation than what is
    /// known; suspect and down win at an equal one (down over suspect).
    pub(super) fn apply(&mut self, now: Instant, u: Update) {
        if u.node == self.id {
            if u.kind != UpdateKind::Alive {
                // Held suspect or down by a member we reach now: likely a
                // healed partition (in a quiet cluster, a lost probe; the
                // burst then pings the few members we doubt, if any).
                self.heal_seen = true;
            }
            if u.kind != UpdateKind::Alive {
                // Refute with a higher incarnation of our membership; a stale
                // verdict (our refutation was lost) gets the current one again.
                // The codec refuses incarnations past `MAX_SWIM_INC`, so
                // this cannot saturate from the network.
                if u.inc >= self.inc {
                    self.inc = u.inc.saturating_add(1);
                    self.raise_health(1);
                }
                self.enqueue(Update {
                    node: self.id.clone(),
                    addr: self.addr,
                    inc: self.inc,
                    kind: UpdateKind::Alive,
                });
            }
            return;
        }
        if u.node.same_name(&self.id) {
            // Another process under our name: the node decides (a newer one
            // stops us, see `Node::name_clash`).
            if u.node.incarnation > self.id.incarnation {
                self.outputs.push_back(Output::Learned(u.node, u.addr));
            }
            return;
        }
        let Some(m) = self.members.get_mut(&u.node) else {
            if matches!(u.kind, UpdateKind::Alive | UpdateKind::Suspect { .. }) {
                self.outputs.push_back(Output::Learned(u.node, u.addr));
            }
            return;
        };
        if m.addr.is_none() {
            m.addr = Some(u.addr);
            if matches!(u.kind, UpdateKind::Alive | UpdateKind::Suspect { .. }) {
                self.outputs
                    .push_back(Output::Learned(u.node.clone(), u.addr));
            }
        }
        match &u.kind {
            UpdateKind::Alive => {
                if u.inc <= m.inc && !(m.state == State::Alive && m.addr.is_none()) {
                    return;
                }
                m.inc = m.inc.max(u.inc);
                let was = m.state;
                if was != State::Alive {
                    m.state = State::Alive;
                    m.since = now;
                    m.suspecters.clear();
                    self.deadlines.remove(&u.node);
                }
                if was == State::Down {
                    self.outputs.push_back(Output::Up(u.node.clone()));
                }
                if was != State::Alive {
                    // A member we doubted refuted: others we doubt may be
                    // back too (a heal).
                    self.heal_seen = true;
                }
                self.enqueue(u);
            }
            UpdateKind::Suspect { by } => {
                let fresh = match m.state {
                    State::Alive => u.inc >= m.inc,
                    State::Suspect | State::Down => u.inc > m.inc,
                };
                if fresh {
                    let was = m.state;
                    m.inc = u.inc;
                    m.state = State::Suspect;
                    m.since = now;
                    m.suspecters.clear();
                    m.suspecters.insert(by.clone());
                    if was == State::Down {
                        self.outputs.push_back(Output::Up(u.node.clone()));
                    }
                    let id = u.node.clone();
                    self.reschedule(&id);
                    self.enqueue(u);
                    self.ping_suspect(&id);
                } else if m.state == State::Suspect && u.inc == m.inc {
                    // An independent confirmation shortens the suspicion.
                    if m.suspecters.insert(by.clone()) {
                        self.reschedule(&u.node);
                        self.enqueue(u);
                    }
                }
            }
            UpdateKind::Down => {
                // Someone else's down verdict only starts (or confirms) a
                // suspicion here: the member gets the suspicion timeout to
                // refute, and a node that was itself cut off cannot hide
                // members the rest of the cluster reaches.
                if m.state == State::Down || u.inc < m.inc {
                    return;
                }
                if u.inc > m.inc {
                    m.inc = u.inc;
                    m.state = State::Alive;
                }
                let id = u.node.clone();
                self.suspect(now, &id, Some(id.clone()));
            }
            UpdateKind::Left => {
                let id = u.node.clone();
                self.remove(&id);
                self.outputs.push_back(Output::Gone(id));
                self.enqueue(u);
            }
        }
    }

    /// Queues an update for piggybacking, replacing any older one about the
    /// same member.
    pub(super) fn enqueue(&mut self, update: Update) {
        let order = self.next_order;
        self.next_order += 1;
        if let Some(old) = self.queue.remove(&update.node) {
            self.by_priority
                .remove(&(old.transmits, Reverse(old.order), update.node.clone()));
        }
        self.by_priority
            .insert((0, Reverse(order), update.node.clone()));
        self.queue.insert(
            update.node.clone(),
            Queued {
                update,
                transmits: 0,
                order,
                sent_to: BTreeSet::new(),
            },
        );
    }

    /// The updates to piggyback on a message to `to`: our refutation if it
    /// held us suspect or down, what we hold against it (so it can refute),
    /// then the least-sent, newest updates.
    pub(super) fn gossip_for(&mut self, to: &NodeId) -> Vec<Update> {
        let mut out = Vec::new();
        if self.accusers.remove(to) {
            out.push(Update {
                node: self.id.clone(),
                addr: self.addr,
                inc: self.inc,
                kind: UpdateKind::Alive,
            });
        }
        if let Some(m) = self.members.get(to) {
            if let (State::Suspect | State::Down, Some(addr)) = (m.state, m.addr) {
                let by = m
                    .suspecters
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| self.id.clone());
                let kind = match m.state {
                    State::Suspect => UpdateKind::Suspect { by },
                    _ => UpdateKind::Down,
                };
                out.push(Update {
                    node: to.clone(),
                    addr,
                    inc: m.inc,
                    kind,
                });
            }
        }
        let n = self.members.len() as f64 + 1.0;
        let limit = self.cfg.gossip_mult * ((n + 1.0).log10().ceil() as u32).max(1);
        // A member knows what it says of itself (a charge against it went
        // first above); an update already sent to `to` waits until every
        // other member got it once, so a few transmissions reach distinct
        // members (in a small cluster, always the one that needs it).
        let others = self.members.len().saturating_sub(1);
        let picked: Vec<(u32, Reverse<u64>, NodeId)> = self
            .by_priority
            .iter()
            .filter(|(_, _, id)| id != to)
            .filter(|(_, _, id)| {
                let q = &self.queue[id];
                !q.sent_to.contains(to) || q.sent_to.len() >= others
            })
            .take(self.cfg.max_gossip.saturating_sub(out.len()))
            .cloned()
            .collect();
        for key in picked {
            self.by_priority.remove(&key);
            let q = self.queue.get_mut(&key.2).expect("indexed");
            q.transmits += 1;
            if q.sent_to.len() >= others {
                q.sent_to.clear();
            }
            q.sent_to.insert(to.clone());
            out.push(q.update.clone());
            if q.transmits >= limit {
                self.queue.remove(&key.2);
            } else {
                self.by_priority.insert((q.transmits, key.1, key.2));
            }
        }
        out
    }
}
