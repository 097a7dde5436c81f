//! The single-writer delta-state store under presence and subscriptions.
//!
//! Every entry is owned by the replica (node incarnation) that created it, and
//! only that replica changes it. Each change takes the next operation counter of
//! its owner, so the owner's operations form a log `1, 2, 3, ...`:
//! - an *add* creates an entry whose dot is the op counter;
//! - a *remove* (op `n`) kills the entry with dot `k < n` and leaves a tombstone
//!   `n -> k`;
//! - a *replace* is one op that does both.
//!
//! A [`Part`] describes a set of one replica's ops: the counters it covers, the
//! live entries among them and the removals among them. Its causal context is
//! those counters plus the removed dots, so merging finds everything to delete
//! from the part itself (`removes`) and the per-replica dot index: merge cost is
//! proportional to the part, never to the local state. The state is a join
//! semilattice (union of contexts, an entry survives unless the other side's
//! context covers its dot without holding it), so merge is commutative,
//! associative and idempotent.
//!
//! Deterministic: no clock, no randomness, ordered maps only.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use slab::Slab;

use crate::context::{Context, Ranges};
use crate::dots::DotMap;
use crate::id::NodeId;

/// The ops of one replica carried by a delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part<E> {
    /// The replica that made these ops.
    pub origin: NodeId,
    /// Every op counter this part fully describes.
    pub ops: Ranges,
    /// Live entries created by ops of `ops`, sorted by dot.
    pub adds: Vec<(u64, E)>,
    /// Removals `(op, removed dot)` made by ops of `ops`, sorted by op.
    pub removes: Vec<(u64, u64)>,
    /// Removals are not listed (the sender had dropped their tombstones), so
    /// the slice starts at op 1, possibly split over several parts. In every part, a dot inside `ops` missing from
    /// `adds` is dead; a full part relies on that alone.
    pub full: bool,
}

/// How much one part of a [`Store::slice`] may carry: entries, and bytes of
/// entries as the caller counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Most entries.
    pub adds: usize,
    /// Most bytes of entries (one entry goes alone whatever its size).
    pub bytes: usize,
}

impl<E> Part<E> {
    fn empty(origin: NodeId) -> Self {
        Part {
            origin,
            ops: Ranges::new(),
            adds: Vec::new(),
            removes: Vec::new(),
            full: false,
        }
    }

    /// Number of ops described (the part's size for cost accounting).
    pub fn op_count(&self) -> u64 {
        self.ops.count()
    }

    /// Checks what a peer could get wrong: sorted, inside `ops`, removals of
    /// earlier dots only.
    pub fn is_well_formed(&self) -> bool {
        let top = self.ops.spans().last().map_or(0, |s| s.1);
        self.ops.is_well_formed()
            && (!self.full || self.removes.is_empty())
            && top < u64::MAX
            && self.adds.windows(2).all(|w| w[0].0 < w[1].0)
            && self.adds.iter().all(|(d, _)| self.ops.contains(*d))
            && self.removes.windows(2).all(|w| w[0].0 < w[1].0)
            && self
                .removes
                .iter()
                .all(|&(n, k)| k >= 1 && k < n && self.ops.contains(n))
    }
}

/// A delta: parts of any number of replicas, one part per replica, sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta<E> {
    /// One part per origin, sorted by origin.
    pub parts: Vec<Part<E>>,
}

impl<E> Default for Delta<E> {
    fn default() -> Self {
        Delta { parts: Vec::new() }
    }
}

impl<E: Clone> Delta<E> {
    /// Whether it carries no op.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.ops.is_empty())
    }

    /// Total ops described.
    pub fn op_count(&self) -> u64 {
        self.parts.iter().map(Part::op_count).sum()
    }

    /// Joins non-full parts into one delta (the δ-group of Almeida et al.):
    /// contexts are united and an add removed by any part is dropped.
    pub fn join<'a>(parts: impl IntoIterator<Item = &'a Part<E>>) -> Self
    where
        E: 'a,
    {
        let mut by_origin: BTreeMap<&NodeId, Part<E>> = BTreeMap::new();
        for p in parts {
            debug_assert!(!p.full, "full parts are never buffered");
            let acc = by_origin
                .entry(&p.origin)
                .or_insert_with(|| Part::empty(p.origin.clone()));
            acc.ops.union(&p.ops);
            acc.adds.extend(p.adds.iter().cloned());
            acc.removes.extend(p.removes.iter().copied());
        }
        let parts = by_origin
            .into_values()
            .map(|mut p| {
                p.removes.sort_unstable();
                p.removes.dedup();
                let dead: BTreeSet<u64> = p.removes.iter().map(|r| r.1).collect();
                p.adds.sort_by_key(|a| a.0);
                p.adds.dedup_by_key(|a| a.0);
                p.adds.retain(|a| !dead.contains(&a.0));
                p
            })
            .collect();
        Delta { parts }
    }
}

/// An entry in the store.
#[derive(Debug)]
pub struct EntrySlot<E> {
    /// Index of the owning replica inside this store.
    pub replica: u32,
    /// Free for the index built on top (presence keeps the entry's position
    /// in its topic's list here). Not replicated; the store sets it to 0 and
    /// never reads it. It fills what was padding after `replica`.
    pub aux: u32,
    /// The op counter that created it.
    pub dot: u64,
    /// The entry itself.
    pub value: E,
}

/// The entries of a store by slot, as an [`Observer`] sees them during a
/// merge: it may annotate them (`aux`) or share memory between equal values,
/// but must leave every value equal, as values replicate.
#[derive(Debug)]
pub struct Slots<E>(Slab<EntrySlot<E>>);

impl<E> Slots<E> {
    /// The entry in `slot`.
    pub fn get(&self, slot: usize) -> &EntrySlot<E> {
        &self.0[slot]
    }

    /// The entry in `slot`, mutably (see the type's docs).
    pub fn get_mut(&mut self, slot: usize) -> &mut EntrySlot<E> {
        &mut self.0[slot]
    }
}

/// Told of each entry a merge or a purge adds or removes, as it happens, so
/// the indexes above the store follow without an intermediate list of
/// changes. `visible`: the owner is up (visible entries are indexed and
/// diffed).
pub trait Observer<E> {
    /// The entry at `slot`, owned by `owner`, is new.
    fn added(&mut self, slots: &mut Slots<E>, slot: usize, owner: &NodeId, visible: bool);
    /// `old`, owned by `owner`, was removed from `slot`, which is free again.
    fn removed(
        &mut self,
        slots: &mut Slots<E>,
        slot: usize,
        old: EntrySlot<E>,
        owner: &NodeId,
        visible: bool,
    );
}

/// A change the store made. A `Vec` of them is the simplest [`Observer`]
/// (subscriptions and tests use it; presence indexes as changes happen).
#[derive(Debug)]
pub enum Change<E> {
    /// The entry at `slot` is new.
    Added {
        /// Where it lives.
        slot: usize,
        /// Whether its owner is up (visible entries are indexed and diffed).
        visible: bool,
    },
    /// An entry is gone; `slot` is free again.
    Removed {
        /// Where it lived.
        slot: usize,
        /// Its owner.
        owner: NodeId,
        /// What it held.
        value: E,
        /// Whether it was visible.
        visible: bool,
    },
}

impl<E> Observer<E> for Vec<Change<E>> {
    fn added(&mut self, _: &mut Slots<E>, slot: usize, _: &NodeId, visible: bool) {
        self.push(Change::Added { slot, visible });
    }

    fn removed(
        &mut self,
        _: &mut Slots<E>,
        slot: usize,
        old: EntrySlot<E>,
        owner: &NodeId,
        visible: bool,
    ) {
        self.push(Change::Removed {
            slot,
            owner: owner.clone(),
            value: old.value,
            visible,
        });
    }
}

/// Ignores every change (a bare store without indexes on top).
impl<E> Observer<E> for () {
    fn added(&mut self, _: &mut Slots<E>, _: usize, _: &NodeId, _: bool) {}

    fn removed(&mut self, _: &mut Slots<E>, _: usize, _: EntrySlot<E>, _: &NodeId, _: bool) {}
}

#[derive(Debug)]
struct Replica {
    id: NodeId,
    ctx: Context,
    /// Live entries by dot: dot -> slot.
    live: DotMap<u32>,
    /// Tombstones: removing op -> removed dot.
    tombs: DotMap<u64>,
    /// Dots removed by a known op whose own op is not known yet (a removal
    /// that overtook its add). Not marked in `ctx`: op `k` may be a replace
    /// that removes another dot, and marking it known would skip that.
    dead: BTreeSet<u64>,
    /// Ops at or below this may have had their tombstones dropped.
    tomb_floor: u64,
    up: bool,
}

/// The replicated store. See the module docs.
#[derive(Debug)]
pub struct Store<E> {
    replicas: Slab<Replica>,
    by_id: BTreeMap<NodeId, u32>,
    slots: Slots<E>,
    purged: BTreeSet<NodeId>,
    tomb_cap: usize,
    me: u32,
}

impl<E: Clone> Store<E> {
    /// An empty store owned by `me`, keeping at most `tomb_cap` tombstones per
    /// replica.
    pub fn new(me: NodeId, tomb_cap: usize) -> Self {
        let mut s = Store {
            replicas: Slab::new(),
            by_id: BTreeMap::new(),
            slots: Slots(Slab::new()),
            purged: BTreeSet::new(),
            tomb_cap: tomb_cap.max(1),
            me: 0,
        };
        s.me = s.replica_idx(&me).expect("own id is never purged");
        s
    }

    /// The entry in `slot`.
    pub fn slot(&self, slot: usize) -> &EntrySlot<E> {
        self.slots.get(slot)
    }

    /// The owner of the replica index in a slot.
    pub fn replica_id(&self, replica: u32) -> &NodeId {
        &self.replicas[replica as usize].id
    }

    /// The entries, mutably, only to annotate them (`aux`) or to share
    /// memory between equal values (interning): values must stay equal, as
    /// they replicate.
    pub fn slots_mut(&mut self) -> &mut Slots<E> {
        &mut self.slots
    }

    /// Whether the entry in `slot` is visible (its owner is up).
    pub fn is_visible(&self, slot: usize) -> bool {
        self.replicas[self.slots.get(slot).replica as usize].up
    }

    /// Number of entries, visible or not.
    pub fn len(&self) -> usize {
        self.slots.0.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.slots.0.is_empty()
    }

    /// The next op counter of this node (for refs derived from it).
    pub fn next_op(&self) -> u64 {
        self.replicas[self.me as usize].ctx.max() + 1
    }

    fn replica_idx(&mut self, id: &NodeId) -> Option<u32> {
        if let Some(&i) = self.by_id.get(id) {
            return Some(i);
        }
        if self.purged.contains(id) {
            return None;
        }
        let i = self.replicas.insert(Replica {
            id: id.clone(),
            ctx: Context::default(),
            live: DotMap::new(),
            tombs: DotMap::new(),
            dead: BTreeSet::new(),
            tomb_floor: 0,
            up: true,
        }) as u32;
        self.by_id.insert(id.clone(), i);
        Some(i)
    }

    // ---- local mutators: each takes the next op of this node ----

    /// Adds an entry owned by this node.
    pub fn add(&mut self, value: E) -> (usize, Part<E>) {
        let me = self.me;
        let r = &mut self.replicas[me as usize];
        let n = r.ctx.max() + 1;
        r.ctx.insert(n);
        let slot = self.slots.0.insert(EntrySlot {
            replica: me,
            aux: 0,
            dot: n,
            value: value.clone(),
        });
        r.live.insert(n, slot as u32);
        let mut part = Part::empty(r.id.clone());
        part.ops.insert(n);
        part.adds.push((n, value));
        (slot, part)
    }

    /// Removes an entry owned by this node.
    pub fn remove(&mut self, slot: usize) -> (E, Part<E>) {
        let (value, part, _) = self.remove_and_maybe_add(slot, None);
        (value, part)
    }

    /// Replaces an entry owned by this node by a new one, in one op.
    pub fn replace(&mut self, slot: usize, value: E) -> (E, usize, Part<E>) {
        let (old, part, new_slot) = self.remove_and_maybe_add(slot, Some(value));
        (old, new_slot.expect("a value was given"), part)
    }

    fn remove_and_maybe_add(
        &mut self,
        slot: usize,
        value: Option<E>,
    ) -> (E, Part<E>, Option<usize>) {
        let me = self.me;
        let old = self.slots.0.remove(slot);
        assert_eq!(old.replica, me, "only the owner removes its entries");
        let r = &mut self.replicas[me as usize];
        let n = r.ctx.max() + 1;
        r.ctx.insert(n);
        r.live.remove(old.dot);
        r.tombs.insert(n, old.dot);
        let mut part = Part::empty(r.id.clone());
        part.ops.insert(n);
        part.removes.push((n, old.dot));
        let new_slot = value.map(|value| {
            let s = self.slots.0.insert(EntrySlot {
                replica: me,
                aux: 0,
                dot: n,
                value: value.clone(),
            });
            self.replicas[me as usize].live.insert(n, s as u32);
            part.adds.push((n, value));
            s
        });
        self.trim_tombs(me);
        (old.value, part, new_slot)
    }

    fn trim_tombs(&mut self, replica: u32) {
        let cap = self.tomb_cap;
        let r = &mut self.replicas[replica as usize];
        while r.tombs.len() > cap {
            if let Some((n, _)) = r.tombs.pop_first() {
                r.tomb_floor = r.tomb_floor.max(n);
            }
        }
    }

    // ---- replication ----

    /// Merges a part from a peer, telling `obs` of each entry added or
    /// removed. Returns the novel sub-part (what was not known yet), to buffer
    /// for relay: the part itself, cut down in place, so a δ of new ops costs
    /// one copy of each entry (the store's) and no new buffer. A part of this
    /// node's own ops, of a purged replica, or a full part yields no relay.
    pub fn merge(&mut self, mut part: Part<E>, obs: &mut impl Observer<E>) -> Option<Part<E>> {
        let idx = self.replica_idx(&part.origin)?;
        if idx == self.me {
            return None;
        }
        let slots = &mut self.slots;
        let r = &mut self.replicas[idx as usize];
        let visible = r.up;
        // Removals first: an add that the same part removes (a peer may send
        // both) is then skipped, never added and removed in one batch.
        part.removes.retain(|&(n, k)| {
            if r.ctx.contains(n) || cfg!(feature = "broken-merge") {
                return false;
            }
            if let Some(slot) = r.live.remove(k) {
                let old = slots.0.remove(slot as usize);
                obs.removed(slots, slot as usize, old, &r.id, visible);
            }
            if !r.ctx.contains(k) {
                r.dead.insert(k);
            }
            r.tombs.insert(n, k);
            true
        });
        // Every dot inside `ops` that the part does not hold is dead: this
        // kills what a full slice leaves out, and costs one range scan of the
        // owner's dot index per span, never a scan of the state. It runs
        // before the adds, so it only meets entries held before this part
        // (none, for a δ of new ops): an add is never one it would kill.
        for &(lo, hi) in part
            .ops
            .spans()
            .iter()
            .filter(|_| !cfg!(feature = "broken-merge"))
        {
            let mut held = part.adds.iter().map(|a| a.0).peekable();
            let dead: Vec<(u64, u32)> = r
                .live
                .range(lo, hi)
                .filter(|&(d, _)| {
                    while held.next_if(|&h| h < d).is_some() {}
                    held.peek() != Some(&d)
                })
                .collect();
            for (d, slot) in dead {
                r.live.remove(d);
                let old = slots.0.remove(slot as usize);
                obs.removed(slots, slot as usize, old, &r.id, visible);
            }
        }
        part.adds.retain(|(d, value)| {
            if r.ctx.contains(*d) || r.dead.contains(d) {
                return false;
            }
            let mut slot = None;
            r.live.insert_with(*d, || {
                let s = slots.0.insert(EntrySlot {
                    replica: idx,
                    aux: 0,
                    dot: *d,
                    value: value.clone(),
                });
                slot = Some(s);
                s as u32
            });
            if let Some(slot) = slot {
                obs.added(slots, slot, &r.id, visible);
            }
            // Its op stays in the novel part's ops: dropping the add would
            // declare it dead.
            true
        });
        let novel_ops = r.ctx.missing(&part.ops);
        if part.full {
            // Its removals were not listed: we cannot serve them to others.
            let hi = part.ops.spans().last().map_or(0, |s| s.1);
            r.tomb_floor = r.tomb_floor.max(hi);
            r.tombs.remove_to(hi);
        }
        for &(lo, hi) in part.ops.spans() {
            r.ctx.insert_span(lo, hi);
        }
        if !r.dead.is_empty() {
            let ctx = &r.ctx;
            r.dead.retain(|d| !ctx.contains(*d));
        }
        self.trim_tombs(idx);
        part.ops = novel_ops;
        // No add of the novel part is killed by its removals: those were
        // applied first, and the adds loop skipped what they killed.
        (!part.full && !part.ops.is_empty()).then_some(part)
    }

    /// What a peer that knows `origin`'s ops `1..=after` lacks of them, split
    /// into parts of at most `cut.adds` entries and `cut.bytes` bytes of
    /// entries (by `size`; one entry at least) each (empty if it lacks
    /// nothing we know). Starts from op 1 (a full slice) when the tombstones
    /// it needs were dropped.
    pub fn slice(
        &self,
        origin: &NodeId,
        after: u64,
        cut: Cut,
        size: impl Fn(&E) -> usize,
    ) -> Vec<Part<E>> {
        let Some(&i) = self.by_id.get(origin) else {
            return Vec::new();
        };
        let r = &self.replicas[i as usize];
        let hi = r.ctx.max();
        if after >= hi {
            return Vec::new();
        }
        let full = after < r.tomb_floor;
        let mut lo = if full { 1 } else { after + 1 };
        let mut out = Vec::new();
        while lo <= hi {
            let mut part = Part::empty(origin.clone());
            part.full = full;
            let mut bytes = 0;
            let mut cut_short = false;
            for (d, s) in r.live.range(lo, hi) {
                let value = &self.slots.get(s as usize).value;
                let n = size(value);
                if !part.adds.is_empty() && (part.adds.len() >= cut.adds || bytes + n > cut.bytes) {
                    cut_short = true;
                    break;
                }
                bytes += n;
                part.adds.push((d, value.clone()));
            }
            // A part cut short ends at its last add; the next starts after it.
            let end = if cut_short {
                part.adds.last().map_or(hi, |a| a.0)
            } else {
                hi
            };
            part.ops.insert_span(lo, end);
            if !full {
                part.removes = r.tombs.range(lo, end).collect();
            }
            out.push(part);
            lo = end + 1;
        }
        out
    }

    /// Version vector: every replica and the contiguous prefix of its ops known.
    pub fn digest(&self) -> Vec<(NodeId, u64)> {
        self.by_id
            .iter()
            .map(|(id, &i)| (id.clone(), self.replicas[i as usize].ctx.max()))
            .collect()
    }

    /// The contiguous prefix known of `origin`'s ops (0 if unknown).
    pub fn known(&self, origin: &NodeId) -> u64 {
        self.by_id
            .get(origin)
            .map_or(0, |&i| self.replicas[i as usize].ctx.max())
    }

    /// Whether a replica was purged (its deltas are refused).
    pub fn is_purged(&self, id: &NodeId) -> bool {
        self.purged.contains(id)
    }

    /// Lets a purged replica back in (it was heard from directly again).
    pub fn revive(&mut self, id: &NodeId) {
        self.purged.remove(id);
    }

    /// Hides (`up = false`) or shows a replica's entries. Returns the slots whose
    /// visibility changed. A replica not heard of yet is remembered as down, so
    /// entries of it relayed by others later stay hidden too.
    pub fn set_up(&mut self, id: &NodeId, up: bool) -> Vec<usize> {
        let known = if up {
            self.by_id.get(id).copied()
        } else {
            self.replica_idx(id)
        };
        let Some(i) = known else {
            return Vec::new();
        };
        if i == self.me {
            return Vec::new();
        }
        let r = &mut self.replicas[i as usize];
        if r.up == up {
            return Vec::new();
        }
        r.up = up;
        r.live.values().map(|s| s as usize).collect()
    }

    /// Drops a replica and everything it owned, for good (permdown, or a newer
    /// incarnation seen). Its later deltas are refused.
    pub fn purge(&mut self, id: &NodeId, obs: &mut impl Observer<E>) {
        self.purged.insert(id.clone());
        let Some(i) = self.by_id.remove(id) else {
            return;
        };
        assert_ne!(i, self.me, "a node never purges itself");
        let r = self.replicas.remove(i as usize);
        for slot in r.live.values() {
            let old = self.slots.0.remove(slot as usize);
            obs.removed(&mut self.slots, slot as usize, old, &r.id, r.up);
        }
    }

    /// Replicas known, with whether they are up.
    pub fn replicas(&self) -> impl Iterator<Item = (&NodeId, bool)> {
        self.by_id
            .iter()
            .map(|(id, &i)| (id, self.replicas[i as usize].up))
    }

    /// Known incarnations of `id`'s name (itself included, if known).
    pub fn incarnations_of(&self, id: &NodeId) -> impl Iterator<Item = &NodeId> {
        self.by_id.range(id.incarnations()).map(|(id, _)| id)
    }

    /// Live slots of one replica, in dot order.
    pub fn slots_of(&self, id: &NodeId) -> Vec<usize> {
        self.by_id.get(id).map_or_else(Vec::new, |&i| {
            self.replicas[i as usize]
                .live
                .values()
                .map(|s| s as usize)
                .collect()
        })
    }

    /// Every slot, in slab order (for tests and full listings).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &EntrySlot<E>)> {
        self.slots.0.iter()
    }
}

#[cfg(test)]
mod tests;
