//! Local subscriptions and broadcasts: routing a publish to the nodes that
//! have subscribers, holding a first subscriber until peers acknowledged its
//! route, and handing presence diffs to the coalescer.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::{CommandError, CommandOutcome, Event, Node, PeerState};
use crate::codec::Body;
use crate::id::{NodeId, SubscriberId, Topic};
use crate::subs::SubChange;

#[derive(Debug)]
pub(super) struct PendingSub {
    pub(super) topic: Topic,
    pub(super) sub: SubscriberId,
    pub(super) seq: u64,
    pub(super) deadline: Instant,
}

impl Node {
    /// Delivers to the subscribers of `topic` on `node` only.
    pub(super) fn direct_publish(
        &mut self,
        node: NodeId,
        topic: Topic,
        payload: Bytes,
    ) -> Result<CommandOutcome, CommandError> {
        if node == self.cfg.id {
            let local = self.deliver_local(&topic, &payload, None);
            return Ok(CommandOutcome::Published {
                local,
                remote_nodes: 0,
            });
        }
        let addr = self
            .peers
            .get(&node)
            .filter(|p| p.state == PeerState::Up)
            .and_then(|p| p.addr)
            .ok_or_else(|| CommandError::UnknownNode(node.clone()))?;
        self.send(Some(node), addr, Body::Broadcast { topic, payload });
        self.stats.broadcasts_sent += 1;
        Ok(CommandOutcome::Published {
            local: false,
            remote_nodes: 1,
        })
    }

    pub(super) fn subscribe(
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

    pub(super) fn check_pending_subs(&mut self, now: Instant) {
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

    pub(super) fn publish(
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

    pub(super) fn deliver_local(
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

    /// Moves diffs produced by the last input into the coalescer: every one
    /// (see [`Node::diffs_for_all_topics`]), or only those of topics with a
    /// local subscriber or a window already open.
    pub(super) fn drain_diffs(&mut self, now: Instant) {
        if !self.all_diffs && self.subs.local_topics().next().is_none() && self.coalescer.is_idle()
        {
            // Nobody here can see a diff: a new node merging a large state
            // transfer spent half its time building diffs nobody read.
            self.scratch.clear();
            return;
        }
        for (topic, item) in self.scratch.drain(..) {
            if !self.all_diffs
                && self.subs.local_subscribers(&topic).is_none()
                && !self.coalescer.is_pending(&topic)
            {
                continue;
            }
            let size = self.presence.topic_len(&topic);
            self.coalescer.push(now, topic, item, size);
        }
    }

    /// Whether presence diffs are made for every topic (`true`, the default:
    /// a consumer of every diff, such as the runtime's presence tap or the
    /// simulator's replay, sees each change of the view) or only for topics
    /// with a local subscriber (`false`).
    ///
    /// With `false` a change in a topic with no local subscriber and no
    /// window open is not collected. Nobody holds that topic's view, so no
    /// diff is owed: a subscriber that arrives later lists the view
    /// (`presence_state`) after subscribing, and every change from its
    /// subscription on is collected. A window that is open stays fed until it
    /// closes, even if its last subscriber left, so a subscriber arriving
    /// within it gets a diff that is true to every change the window saw.
    pub fn diffs_for_all_topics(&mut self, all: bool) {
        self.all_diffs = all;
    }

    /// Emits every pending presence diff now (tests and shutdown).
    pub fn flush_diffs(&mut self) {
        for (topic, diff) in self.coalescer.flush_all() {
            self.events.push_back(Event::PresenceDiff { topic, diff });
        }
    }
}
