//! The subscription table: "node N has local subscribers for topic T", as the
//! same single-writer delta CRDT as presence, plus this node's own subscribers.
//!
//! Routing reads [`Subs::nodes_for`]: a publish crosses the network once per
//! node listed there, never once per remote subscriber.

use std::collections::{BTreeMap, BTreeSet};

use crate::id::{NodeId, SubscriberId, Topic};
use crate::store::{Change, Part, Store};

/// The subscription table of one node.
#[derive(Debug)]
pub struct Subs {
    store: Store<Topic>,
    me: NodeId,
    /// Visible (up) nodes with subscribers, by topic, with their entry count
    /// (an owner may briefly have two when its re-subscribe overtakes its
    /// unsubscribe on the way to us).
    routes: BTreeMap<Topic, BTreeMap<NodeId, u32>>,
    /// This node's subscribers, by topic, and the slot of its own entry.
    local: BTreeMap<Topic, (usize, BTreeSet<SubscriberId>)>,
}

/// Why a local subscribe or unsubscribe was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubsError {
    /// This subscriber already has this topic.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(Topic),
    /// This subscriber does not have this topic.
    #[error("not subscribed to {0}")]
    NotSubscribed(Topic),
}

/// What a local subscribe or unsubscribe changed.
#[derive(Debug)]
pub enum SubChange {
    /// Nothing replicated changed (another local subscriber already had the topic).
    None,
    /// The first or last local subscriber: this op must be replicated.
    Replicate(Part<Topic>),
}

impl Subs {
    /// An empty table owned by `me`.
    pub fn new(me: NodeId, tomb_cap: usize) -> Self {
        Subs {
            store: Store::new(me.clone(), tomb_cap),
            me,
            routes: BTreeMap::new(),
            local: BTreeMap::new(),
        }
    }

    /// The replicated store underneath.
    pub fn store(&self) -> &Store<Topic> {
        &self.store
    }

    /// Adds a local subscriber.
    pub fn subscribe(&mut self, topic: Topic, sub: SubscriberId) -> Result<SubChange, SubsError> {
        if let Some((_, subs)) = self.local.get_mut(&topic) {
            return if subs.insert(sub) {
                Ok(SubChange::None)
            } else {
                Err(SubsError::AlreadySubscribed(topic))
            };
        }
        let (slot, part) = self.store.add(topic.clone());
        self.route(&topic, &self.me.clone());
        self.local.insert(topic, (slot, BTreeSet::from([sub])));
        Ok(SubChange::Replicate(part))
    }

    /// Removes a local subscriber.
    pub fn unsubscribe(
        &mut self,
        topic: &Topic,
        sub: SubscriberId,
    ) -> Result<SubChange, SubsError> {
        let Some((slot, subs)) = self.local.get_mut(topic) else {
            return Err(SubsError::NotSubscribed(topic.clone()));
        };
        if !subs.remove(&sub) {
            return Err(SubsError::NotSubscribed(topic.clone()));
        }
        if !subs.is_empty() {
            return Ok(SubChange::None);
        }
        let slot = *slot;
        self.local.remove(topic);
        let (_, part) = self.store.remove(slot);
        self.unroute(topic, &self.me.clone());
        Ok(SubChange::Replicate(part))
    }

    /// This node's subscribers of `topic`.
    pub fn local_subscribers(&self, topic: &Topic) -> Option<&BTreeSet<SubscriberId>> {
        self.local.get(topic).map(|(_, s)| s)
    }

    /// Topics with local subscribers.
    pub fn local_topics(&self) -> impl Iterator<Item = &Topic> {
        self.local.keys()
    }

    /// Up nodes (this one included) that have subscribers for `topic`.
    pub fn nodes_for(&self, topic: &Topic) -> impl Iterator<Item = &NodeId> {
        self.routes.get(topic).into_iter().flat_map(|m| m.keys())
    }

    /// Merges a peer's part. Returns the novel sub-part for relay (the part
    /// itself, cut down to what was new).
    pub fn merge(&mut self, part: Part<Topic>) -> Option<Part<Topic>> {
        let mut changes = Vec::new();
        let novel = self.store.merge(part, &mut changes);
        self.apply(changes);
        novel
    }

    /// Hides or shows a node's routes (down / up).
    pub fn set_up(&mut self, node: &NodeId, up: bool) {
        for slot in self.store.set_up(node, up) {
            let topic = self.store.slot(slot).value.clone();
            if up {
                self.route(&topic, node);
            } else {
                self.unroute(&topic, node);
            }
        }
    }

    /// Drops a node's routes for good.
    pub fn purge(&mut self, node: &NodeId) {
        let mut changes = Vec::new();
        self.store.purge(node, &mut changes);
        self.apply(changes);
    }

    /// Lets a purged node's deltas in again.
    pub fn revive(&mut self, node: &NodeId) {
        self.store.revive(node);
    }

    fn apply(&mut self, changes: Vec<Change<Topic>>) {
        for c in changes {
            match c {
                Change::Added { slot, visible } => {
                    if visible {
                        let s = self.store.slot(slot);
                        let (topic, owner) =
                            (s.value.clone(), self.store.replica_id(s.replica).clone());
                        self.route(&topic, &owner);
                    }
                }
                Change::Removed {
                    owner,
                    value,
                    visible,
                    ..
                } => {
                    if visible {
                        self.unroute(&value, &owner);
                    }
                }
            }
        }
    }

    fn route(&mut self, topic: &Topic, node: &NodeId) {
        *self
            .routes
            .entry(topic.clone())
            .or_default()
            .entry(node.clone())
            .or_default() += 1;
    }

    fn unroute(&mut self, topic: &Topic, node: &NodeId) {
        if let Some(set) = self.routes.get_mut(topic) {
            if let Some(n) = set.get_mut(node) {
                *n -= 1;
                if *n == 0 {
                    set.remove(node);
                }
            }
            if set.is_empty() {
                self.routes.remove(topic);
            }
        }
    }

    /// Every visible route as `(topic, node)`: identical on converged nodes.
    pub fn view(&self) -> BTreeSet<(Topic, NodeId)> {
        self.routes
            .iter()
            .flat_map(|(t, ns)| ns.keys().map(move |n| (t.clone(), n.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_local_subscriber_replicate() {
        let mut a = Subs::new(NodeId::new("a", 1), 64);
        let mut b = Subs::new(NodeId::new("b", 1), 64);
        let t = Topic::new("room:1");
        let SubChange::Replicate(p1) = a.subscribe(t.clone(), SubscriberId(1)).unwrap() else {
            panic!("first subscriber replicates")
        };
        assert!(matches!(
            a.subscribe(t.clone(), SubscriberId(2)),
            Ok(SubChange::None)
        ));
        assert!(a.subscribe(t.clone(), SubscriberId(2)).is_err());
        b.merge(p1.clone());
        assert_eq!(
            b.nodes_for(&t).collect::<Vec<_>>(),
            vec![&NodeId::new("a", 1)]
        );
        assert!(matches!(
            a.unsubscribe(&t, SubscriberId(1)),
            Ok(SubChange::None)
        ));
        let SubChange::Replicate(p2) = a.unsubscribe(&t, SubscriberId(2)).unwrap() else {
            panic!("last subscriber replicates")
        };
        b.merge(p2.clone());
        assert_eq!(b.nodes_for(&t).count(), 0);
        assert_eq!(a.nodes_for(&t).count(), 0);
    }

    #[test]
    fn down_node_is_not_routed() {
        let mut a = Subs::new(NodeId::new("a", 1), 64);
        let mut b = Subs::new(NodeId::new("b", 1), 64);
        let t = Topic::new("x");
        let SubChange::Replicate(p) = a.subscribe(t.clone(), SubscriberId(1)).unwrap() else {
            panic!()
        };
        b.merge(p.clone());
        b.set_up(&NodeId::new("a", 1), false);
        assert_eq!(b.nodes_for(&t).count(), 0);
        b.set_up(&NodeId::new("a", 1), true);
        assert_eq!(b.nodes_for(&t).count(), 1);
        b.purge(&NodeId::new("a", 1));
        assert_eq!(b.nodes_for(&t).count(), 0);
    }
}
