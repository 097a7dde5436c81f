//! The presence CRDT: `(topic, key, conn) -> meta`, each entry owned by the node
//! incarnation that tracked it, replicated as deltas of a [`Store`].
//!
//! On top of the store this keeps the indexes a server needs: visible entries by
//! topic and key (for `presence_state`), and this node's own entries by
//! `(topic, key, conn)` and by connection (for `update`, `untrack` and
//! `untrack_conn`). Every change of the visible view is reported as a join or a
//! leave, so a node computes its diffs from its own merges; diffs never travel.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use serde::{Deserialize, Serialize};

use crate::id::{ConnId, Key, Meta, NodeId, PhxRef, Topic};
use crate::store::{EntrySlot, Observer, Part, Slots, Store};

/// One replicated presence entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresEntry {
    /// The topic it is tracked in.
    pub topic: Topic,
    /// The presence key (user id).
    pub key: Key,
    /// The owner's connection that tracked it.
    pub conn: ConnId,
    /// The meta, as JSON object text.
    pub meta: Meta,
    /// Unique ref of this meta.
    pub phx_ref: PhxRef,
    /// The ref of the meta this one replaced, on update.
    pub prev_ref: Option<PhxRef>,
}

/// One meta of a key as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PresenceItem {
    /// The presence key.
    pub key: Key,
    /// `phx_ref`.
    pub phx_ref: PhxRef,
    /// `phx_ref_prev`, set on the new meta of an update.
    pub prev_ref: Option<PhxRef>,
    /// The meta JSON object text (without `phx_ref`).
    pub meta: Meta,
}

impl PresenceItem {
    fn of(e: &PresEntry) -> Self {
        PresenceItem {
            key: e.key.clone(),
            phx_ref: e.phx_ref,
            prev_ref: e.prev_ref,
            meta: e.meta.clone(),
        }
    }

    /// The item of an entry that is gone: its text moves, nothing is copied.
    fn from_entry(e: PresEntry) -> (Topic, Self) {
        let item = PresenceItem {
            key: e.key,
            phx_ref: e.phx_ref,
            prev_ref: e.prev_ref,
            meta: e.meta,
        };
        (e.topic, item)
    }
}

/// A change of the visible view, in one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffItem {
    /// A meta appeared.
    Join(PresenceItem),
    /// A meta disappeared.
    Leave(PresenceItem),
}

/// Errors of the local presence mutators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// This connection already tracks this key in this topic.
    #[error("already tracked: {topic} {key}")]
    AlreadyTracked {
        /// The topic.
        topic: Topic,
        /// The key.
        key: Key,
    },
    /// This connection does not track this key in this topic.
    #[error("not tracked: {topic} {key}")]
    NotTracked {
        /// The topic.
        topic: Topic,
        /// The key.
        key: Key,
    },
}

/// The presence table of one node. See the module docs.
#[derive(Debug)]
pub struct Presence {
    store: Store<PresEntry>,
    topics: Topics,
    local: BTreeMap<(Topic, Key, ConnId), u32>,
    by_conn: BTreeSet<(ConnId, u32)>,
    ref_prefix: [u8; 6],
}

impl Presence {
    /// An empty table owned by `me`. `ref_prefix` must be random per incarnation.
    pub fn new(me: NodeId, ref_prefix: [u8; 6], tomb_cap: usize) -> Self {
        Presence {
            store: Store::new(me, tomb_cap),
            topics: Topics(HashMap::with_hasher(FixedState::with_seed(
                u64::from_le_bytes([
                    ref_prefix[0],
                    ref_prefix[1],
                    ref_prefix[2],
                    ref_prefix[3],
                    ref_prefix[4],
                    ref_prefix[5],
                    0x5a,
                    0xc3,
                ]),
            ))),
            local: BTreeMap::new(),
            by_conn: BTreeSet::new(),
            ref_prefix,
        }
    }

    /// The replicated store underneath (digests, slices).
    pub fn store(&self) -> &Store<PresEntry> {
        &self.store
    }

    fn next_ref(&self) -> PhxRef {
        PhxRef::from_parts(self.ref_prefix, self.store.next_op())
    }

    /// Tracks `key` in `topic` for local connection `conn`.
    pub fn track(
        &mut self,
        topic: Topic,
        key: Key,
        conn: ConnId,
        meta: Meta,
        diff: &mut Vec<(Topic, DiffItem)>,
    ) -> Result<(PhxRef, Part<PresEntry>), PresenceError> {
        let id = (topic, key, conn);
        if self.local.contains_key(&id) {
            return Err(PresenceError::AlreadyTracked {
                topic: id.0,
                key: id.1,
            });
        }
        let phx_ref = self.next_ref();
        let topic = self.intern(id.0.clone());
        let entry = PresEntry {
            topic,
            key: id.1.clone(),
            conn,
            meta,
            phx_ref,
            prev_ref: None,
        };
        let (slot, part) = self.store.add(entry);
        self.local.insert(id, slot as u32);
        self.by_conn.insert((conn, slot as u32));
        self.index(slot, diff);
        Ok((phx_ref, part))
    }

    /// Replaces the meta of a tracked key: one op, one diff with the new meta
    /// (carrying `phx_ref_prev`) in joins and the old one in leaves.
    pub fn update(
        &mut self,
        topic: Topic,
        key: Key,
        conn: ConnId,
        meta: Meta,
        diff: &mut Vec<(Topic, DiffItem)>,
    ) -> Result<(PhxRef, Part<PresEntry>), PresenceError> {
        let id = (topic, key, conn);
        let Some(&slot) = self.local.get(&id) else {
            return Err(PresenceError::NotTracked {
                topic: id.0,
                key: id.1,
            });
        };
        let phx_ref = self.next_ref();
        let old = &self.store.slot(slot as usize).value;
        let entry = PresEntry {
            topic: old.topic.clone(),
            key: old.key.clone(),
            conn,
            meta,
            phx_ref,
            prev_ref: Some(old.phx_ref),
        };
        let pos = self.store.slot(slot as usize).aux;
        let (old, new_slot, part) = self.store.replace(slot as usize, entry);
        self.unindex(slot as usize, pos, old, diff);
        self.local.insert(id, new_slot as u32);
        self.by_conn.remove(&(conn, slot));
        self.by_conn.insert((conn, new_slot as u32));
        self.index(new_slot, diff);
        Ok((phx_ref, part))
    }

    /// Stops tracking `key` in `topic` for `conn`.
    pub fn untrack(
        &mut self,
        topic: Topic,
        key: Key,
        conn: ConnId,
        diff: &mut Vec<(Topic, DiffItem)>,
    ) -> Result<Part<PresEntry>, PresenceError> {
        let id = (topic, key, conn);
        let Some(slot) = self.local.remove(&id) else {
            return Err(PresenceError::NotTracked {
                topic: id.0,
                key: id.1,
            });
        };
        Ok(self.remove_local(slot, diff))
    }

    /// Stops tracking everything `conn` tracked, in every topic.
    pub fn untrack_conn(
        &mut self,
        conn: ConnId,
        diff: &mut Vec<(Topic, DiffItem)>,
    ) -> Vec<Part<PresEntry>> {
        let slots: Vec<u32> = self
            .by_conn
            .range((conn, 0)..=(conn, u32::MAX))
            .map(|&(_, s)| s)
            .collect();
        slots
            .into_iter()
            .map(|slot| {
                let e = &self.store.slot(slot as usize).value;
                self.local.remove(&(e.topic.clone(), e.key.clone(), e.conn));
                self.remove_local(slot, diff)
            })
            .collect()
    }

    fn remove_local(&mut self, slot: u32, diff: &mut Vec<(Topic, DiffItem)>) -> Part<PresEntry> {
        let pos = self.store.slot(slot as usize).aux;
        let (old, part) = self.store.remove(slot as usize);
        self.by_conn.remove(&(old.conn, slot));
        self.unindex(slot as usize, pos, old, diff);
        part
    }

    /// Merges a part from a peer; reports the visible changes into `diff`.
    /// Returns the novel sub-part for relay (the part itself, cut down to
    /// what was new).
    pub fn merge(
        &mut self,
        part: Part<PresEntry>,
        diff: &mut Vec<(Topic, DiffItem)>,
    ) -> Option<Part<PresEntry>> {
        let mut indexer = Indexer {
            topics: &mut self.topics,
            diff,
        };
        self.store.merge(part, &mut indexer)
    }

    /// A peer went down (`up = false`: its entries leave the view) or came back
    /// (they join again, with no transfer).
    pub fn set_up(&mut self, node: &NodeId, up: bool, diff: &mut Vec<(Topic, DiffItem)>) {
        for slot in self.store.set_up(node, up) {
            if up {
                self.index(slot, diff);
            } else {
                let s = self.store.slot(slot);
                let (pos, value) = (s.aux, s.value.clone());
                self.unindex(slot, pos, value, diff);
            }
        }
    }

    /// Drops every entry of `node` for good.
    pub fn purge(&mut self, node: &NodeId, diff: &mut Vec<(Topic, DiffItem)>) {
        let mut indexer = Indexer {
            topics: &mut self.topics,
            diff,
        };
        self.store.purge(node, &mut indexer);
    }

    /// Lets a purged node's deltas in again.
    pub fn revive(&mut self, node: &NodeId) {
        self.store.revive(node);
    }

    fn intern(&self, topic: Topic) -> Topic {
        match self.topics.0.get_key_value(&topic) {
            Some((t, _)) => t.clone(),
            None => topic,
        }
    }

    fn index(&mut self, slot: usize, diff: &mut Vec<(Topic, DiffItem)>) {
        self.topics.insert(self.store.slots_mut(), slot);
        diff.push(join(&self.store.slot(slot).value));
    }

    fn unindex(&mut self, slot: usize, pos: u32, e: PresEntry, diff: &mut Vec<(Topic, DiffItem)>) {
        self.topics
            .remove(self.store.slots_mut(), &e.topic, slot, pos);
        diff.push(leave(e));
    }

    /// The visible metas of `topic`, by key, then by `phx_ref`.
    pub fn list(&self, topic: &Topic) -> Vec<PresenceItem> {
        let Some(set) = self.topics.0.get(topic) else {
            return Vec::new();
        };
        // Sort small references, then build the items in order.
        let mut order: Vec<(&str, PhxRef, u32)> = set
            .iter()
            .map(|&s| {
                let e = &self.store.slot(s as usize).value;
                (e.key.as_str(), e.phx_ref, s)
            })
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|(_, _, s)| PresenceItem::of(&self.store.slot(s as usize).value))
            .collect()
    }

    /// `(keys, metas)` visible in `topic`.
    pub fn count(&self, topic: &Topic) -> (usize, usize) {
        let Some(set) = self.topics.0.get(topic) else {
            return (0, 0);
        };
        let mut keys: Vec<&str> = set
            .iter()
            .map(|&s| self.store.slot(s as usize).value.key.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        (keys.len(), set.len())
    }

    /// Number of visible metas in `topic`.
    pub fn topic_len(&self, topic: &Topic) -> usize {
        self.topics.0.get(topic).map_or(0, Vec::len)
    }

    /// Every visible entry as `(topic, key, phx_ref, meta)`, ordered: the view
    /// that must be identical on every converged node.
    pub fn view(&self) -> BTreeSet<(Topic, Key, PhxRef, Meta)> {
        self.topics
            .0
            .iter()
            .flat_map(|(t, set)| {
                set.iter().map(move |&s| {
                    let e = &self.store.slot(s as usize).value;
                    (t.clone(), e.key.clone(), e.phx_ref, e.meta.clone())
                })
            })
            .collect()
    }

    /// Number of visible metas in all topics.
    pub fn visible_len(&self) -> usize {
        self.topics.0.values().map(Vec::len).sum()
    }
}

/// Visible slots by topic, each topic's slots in a flat list (any order:
/// listings sort, and the order only depends on the ops applied). An entry's
/// `EntrySlot::aux` is its position in that list, so adding is a push and removing
/// a swap with the last, with no search: a B-tree set per topic cost about
/// five cache misses per merged entry on a 2M-entry state. Slots only: the key
/// is in the entry (a copy here cost 24+ bytes per entry). A hash map, keyed
/// per incarnation from the random ref prefix (so topic names chosen by
/// clients cannot force collisions); never iterated where order could leak.
#[derive(Debug)]
struct Topics(HashMap<Topic, Vec<u32>, FixedState>);

impl Topics {
    /// Lists the entry at `slot` under its topic and notes its position.
    fn insert(&mut self, slots: &mut Slots<PresEntry>, slot: usize) {
        let s = slots.get_mut(slot);
        if let Some((topic, list)) = self.0.get_key_value_mut(&s.value.topic) {
            s.aux = u32::try_from(list.len()).expect("a topic holds fewer than 2^32 slots");
            list.push(slot as u32);
            // Entries decoded from the network each own their topic text:
            // share the indexed one instead (tens of bytes per entry).
            if !s.value.topic.same(topic) {
                s.value.topic = topic.clone();
            }
        } else {
            s.aux = 0;
            self.0.insert(s.value.topic.clone(), vec![slot as u32]);
        }
    }

    /// Takes `slot`, listed at `pos` under `topic`, out of the list.
    fn remove(&mut self, slots: &mut Slots<PresEntry>, topic: &Topic, slot: usize, pos: u32) {
        let Some(list) = self.0.get_mut(topic) else {
            debug_assert!(false, "a visible entry is listed under its topic");
            return;
        };
        let pos = pos as usize;
        debug_assert_eq!(list.get(pos), Some(&(slot as u32)), "aux is the position");
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            slots.get_mut(moved as usize).aux = pos as u32;
        }
        if list.is_empty() {
            self.0.remove(topic);
        } else if list.len() * 4 < list.capacity() {
            list.shrink_to(list.len() * 2);
        }
    }
}

/// Keeps the topic index and the diff in step with a merge or a purge, as
/// the store makes each change.
struct Indexer<'a> {
    topics: &'a mut Topics,
    diff: &'a mut Vec<(Topic, DiffItem)>,
}

impl Observer<PresEntry> for Indexer<'_> {
    fn added(&mut self, slots: &mut Slots<PresEntry>, slot: usize, _: &NodeId, visible: bool) {
        if visible {
            self.topics.insert(slots, slot);
            self.diff.push(join(&slots.get(slot).value));
        }
    }

    fn removed(
        &mut self,
        slots: &mut Slots<PresEntry>,
        slot: usize,
        old: EntrySlot<PresEntry>,
        _: &NodeId,
        visible: bool,
    ) {
        if visible {
            self.topics.remove(slots, &old.value.topic, slot, old.aux);
            self.diff.push(leave(old.value));
        }
    }
}

fn join(e: &PresEntry) -> (Topic, DiffItem) {
    (e.topic.clone(), DiffItem::Join(PresenceItem::of(e)))
}

fn leave(e: PresEntry) -> (Topic, DiffItem) {
    let (topic, item) = PresenceItem::from_entry(e);
    (topic, DiffItem::Leave(item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Presence {
        Presence::new(NodeId::new(name, 1), [name.as_bytes()[0]; 6], 1024)
    }

    fn t(s: &str) -> Topic {
        Topic::new(s)
    }

    #[test]
    fn update_is_one_diff_with_prev_ref() {
        let mut a = node("a");
        let mut d = Vec::new();
        let (r1, _) = a
            .track(
                t("room"),
                "u1".into(),
                ConnId(1),
                Meta::new("{\"x\":1}"),
                &mut d,
            )
            .unwrap();
        d.clear();
        let (r2, _) = a
            .update(
                t("room"),
                "u1".into(),
                ConnId(1),
                Meta::new("{\"x\":2}"),
                &mut d,
            )
            .unwrap();
        assert_eq!(d.len(), 2);
        let DiffItem::Leave(old) = &d[0].1 else {
            panic!("leave first")
        };
        let DiffItem::Join(new) = &d[1].1 else {
            panic!("then join")
        };
        assert_eq!((old.phx_ref, new.phx_ref, new.prev_ref), (r1, r2, Some(r1)));
        assert_eq!(new.meta.as_str(), "{\"x\":2}");
    }

    #[test]
    fn track_twice_and_untrack_unknown_are_errors() {
        let mut a = node("a");
        let mut d = Vec::new();
        let m = Meta::new("{}");
        a.track(t("r"), "k".into(), ConnId(1), m.clone(), &mut d)
            .unwrap();
        assert!(matches!(
            a.track(t("r"), "k".into(), ConnId(1), m.clone(), &mut d),
            Err(PresenceError::AlreadyTracked { .. })
        ));
        // The same key from another connection is another meta.
        a.track(t("r"), "k".into(), ConnId(2), m, &mut d).unwrap();
        assert_eq!(a.count(&t("r")), (1, 2));
        assert!(a.untrack(t("r"), "x".into(), ConnId(1), &mut d).is_err());
    }

    #[test]
    fn untrack_conn_removes_all_of_a_connection() {
        let mut a = node("a");
        let mut b = node("b");
        let mut d = Vec::new();
        let m = Meta::new("{}");
        let mut parts = Vec::new();
        for topic in ["r1", "r2", "r3"] {
            parts.push(
                a.track(t(topic), "k".into(), ConnId(7), m.clone(), &mut d)
                    .unwrap()
                    .1,
            );
        }
        parts.push(
            a.track(t("r1"), "j".into(), ConnId(8), m, &mut d)
                .unwrap()
                .1,
        );
        parts.extend(a.untrack_conn(ConnId(7), &mut d));
        assert_eq!(a.visible_len(), 1);
        for p in parts.iter().rev() {
            b.merge(p.clone(), &mut d);
        }
        assert_eq!(a.view(), b.view());
    }

    #[test]
    fn topic_lists_follow_removals_from_the_middle() {
        let mut a = node("a");
        let mut b = node("b");
        let mut d = Vec::new();
        let mut parts = Vec::new();
        for k in ["k0", "k1", "k2", "k3"] {
            let (_, p) = a
                .track(t("r"), k.into(), ConnId(1), Meta::new("{}"), &mut d)
                .unwrap();
            parts.push(p);
        }
        parts.push(a.untrack(t("r"), "k1".into(), ConnId(1), &mut d).unwrap());
        let (_, p) = a
            .update(
                t("r"),
                "k0".into(),
                ConnId(1),
                Meta::new("{\"x\":1}"),
                &mut d,
            )
            .unwrap();
        parts.push(p);
        parts.push(a.untrack(t("r"), "k3".into(), ConnId(1), &mut d).unwrap());
        let keys = |p: &Presence| -> Vec<String> {
            p.list(&t("r"))
                .into_iter()
                .map(|i| i.key.to_string())
                .collect()
        };
        assert_eq!(keys(&a), ["k0", "k2"]);
        for p in &parts {
            b.merge(p.clone(), &mut d);
        }
        assert_eq!(keys(&b), ["k0", "k2"]);
        assert_eq!(a.view(), b.view());
        for k in ["k0", "k2"] {
            a.untrack(t("r"), k.into(), ConnId(1), &mut d).unwrap();
        }
        assert_eq!((a.topic_len(&t("r")), a.visible_len()), (0, 0));
    }

    #[test]
    fn down_hides_up_shows_purge_drops() {
        let mut a = node("a");
        let mut b = node("b");
        let mut d = Vec::new();
        let (_, p) = a
            .track(t("r"), "k".into(), ConnId(1), Meta::new("{}"), &mut d)
            .unwrap();
        b.merge(p.clone(), &mut d);
        let id = NodeId::new("a", 1);
        d.clear();
        b.set_up(&id, false, &mut d);
        assert!(matches!(d[..], [(_, DiffItem::Leave(_))]));
        assert_eq!(b.visible_len(), 0);
        d.clear();
        b.set_up(&id, true, &mut d);
        assert!(matches!(d[..], [(_, DiffItem::Join(_))]));
        d.clear();
        b.purge(&id, &mut d);
        assert!(matches!(d[..], [(_, DiffItem::Leave(_))]));
        assert!(b.store().is_empty());
        b.merge(p.clone(), &mut d);
        assert!(b.store().is_empty(), "no zombie after purge");
    }
}
