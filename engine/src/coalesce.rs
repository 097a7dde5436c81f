//! Per-topic coalescing of presence diffs.
//!
//! Every join and leave of the visible view is collected per topic over a window
//! that grows with the topic's size, then emitted as one diff that takes a
//! subscriber from the view it knows to the view at the window's end:
//!
//! - a ref visible at the end is a join (a join of a ref the client already
//!   holds changes nothing, so a ref that left and came back is a join too);
//! - a ref gone at the end is a leave only if a subscriber can hold it: it was
//!   visible when the window opened, or when the topic was listed for a
//!   subscriber's `presence_state` during the window ([`Coalescer::listed`]);
//! - a ref that appeared and disappeared inside the window, with no listing in
//!   between, is in no subscriber's view and is left out.
//!
//! So N updates of one key within a window (each replaces the key's meta with a
//! new ref) give one leave (the ref before the window) and one join (the last
//! ref), plus at most one leave per listing that happened in between, instead
//! of N leaves of the intermediate metas. A burst of N joins likewise reaches
//! each client in a handful of frames instead of N.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::id::{PhxRef, Topic};
use crate::presence::{DiffItem, PresenceItem};

/// How long diffs of a topic are held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// The window of a small topic.
    pub min_window: Duration,
    /// The window of a topic of `large_topic` metas or more.
    pub max_window: Duration,
    /// The size at which the window reaches `max_window`; it grows linearly
    /// from `min_window` below that.
    pub large_topic: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            min_window: Duration::from_millis(20),
            max_window: Duration::from_millis(500),
            large_topic: 5_000,
        }
    }
}

impl CoalesceConfig {
    /// The window for a topic holding `size` metas.
    pub fn window(&self, size: usize) -> Duration {
        let span = self.max_window.saturating_sub(self.min_window);
        let frac = size.min(self.large_topic) as u32;
        self.min_window + span * frac / self.large_topic.max(1) as u32
    }
}

/// A coalesced presence diff of one topic, keys then refs in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicDiff {
    /// Metas that appeared.
    pub joins: Vec<PresenceItem>,
    /// Metas that disappeared.
    pub leaves: Vec<PresenceItem>,
}

#[derive(Debug, Default)]
struct PendingDiff {
    refs: BTreeMap<PhxRef, PendingRef>,
    /// Listings of the topic during this window (see [`Coalescer::listed`]).
    listings: u64,
}

/// What a window knows of one ref.
#[derive(Debug)]
struct PendingRef {
    /// Its last op's item.
    item: PresenceItem,
    /// Visible now (its last op was a join).
    visible: bool,
    /// `listings` when it last became visible.
    joined_at: u64,
    /// A subscriber may hold it: visible when the window opened or at a listing.
    seen: bool,
}

/// Pending diffs of every topic.
#[derive(Debug, Default)]
pub struct Coalescer {
    config: CoalesceConfig,
    pending: BTreeMap<Topic, PendingDiff>,
    due: BTreeSet<(Instant, Topic)>,
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new(config: CoalesceConfig) -> Self {
        Coalescer {
            config,
            pending: BTreeMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// Adds one change of `topic`, which now holds `topic_size` metas.
    pub fn push(&mut self, now: Instant, topic: Topic, item: DiffItem, topic_size: usize) {
        let p = match self.pending.get_mut(&topic) {
            Some(p) => p,
            None => {
                let due = now + self.config.window(topic_size);
                self.due.insert((due, topic.clone()));
                self.pending.entry(topic).or_default()
            }
        };
        let listings = p.listings;
        match item {
            DiffItem::Join(i) => match p.refs.get_mut(&i.phx_ref) {
                Some(r) => {
                    r.item = i;
                    r.visible = true;
                    r.joined_at = listings;
                }
                None => {
                    let r = PendingRef {
                        item: i,
                        visible: true,
                        joined_at: listings,
                        seen: false,
                    };
                    p.refs.insert(r.item.phx_ref, r);
                }
            },
            DiffItem::Leave(i) => match p.refs.get_mut(&i.phx_ref) {
                Some(r) => {
                    // Listed while visible: a subscriber may hold it.
                    r.seen |= r.visible && r.joined_at < listings;
                    if r.seen {
                        r.item = i;
                        r.visible = false;
                    } else {
                        // Born and gone inside the window, unseen: forget it,
                        // so a flood of updates keeps no state per update.
                        p.refs.remove(&i.phx_ref);
                    }
                }
                None => {
                    let r = PendingRef {
                        item: i,
                        visible: false,
                        joined_at: listings,
                        seen: true,
                    };
                    p.refs.insert(r.item.phx_ref, r);
                }
            },
        }
    }

    /// `topic` was listed for a subscriber (its `presence_state`) now: every
    /// ref visible at this point stays a leave of the pending diff if it goes,
    /// since that subscriber holds it. Nothing to do without a pending window:
    /// the next one opens on the view listed now.
    pub fn listed(&mut self, topic: &Topic) {
        if let Some(p) = self.pending.get_mut(topic) {
            p.listings += 1;
        }
    }

    /// When the next topic's window closes.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(t, _)| *t)
    }

    /// The next topic whose window has closed by `now`, with its diff (which may
    /// be empty when everything cancelled out: such diffs are skipped).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Topic, TopicDiff)> {
        loop {
            let (due, _) = self.due.first()?;
            if *due > now {
                return None;
            }
            let (_, topic) = self.due.pop_first().expect("checked above");
            let p = self.pending.remove(&topic).expect("due topics are pending");
            let mut diff = TopicDiff::default();
            for r in p.refs.into_values() {
                if r.visible {
                    diff.joins.push(r.item);
                } else if r.seen {
                    diff.leaves.push(r.item);
                }
            }
            if diff.joins.is_empty() && diff.leaves.is_empty() {
                continue;
            }
            diff.joins.sort_unstable();
            diff.leaves.sort_unstable();
            return Some((topic, diff));
        }
    }

    /// Emits everything pending now, whatever the windows say.
    pub fn flush_all(&mut self) -> Vec<(Topic, TopicDiff)> {
        let far = self.due.last().map(|(t, _)| *t);
        let mut out = Vec::new();
        if let Some(far) = far {
            while let Some(d) = self.pop_due(far) {
                out.push(d);
            }
        }
        out
    }

    /// Whether no window is open.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `topic` has a window open.
    pub fn is_pending(&self, topic: &Topic) -> bool {
        self.pending.contains_key(topic)
    }

    /// Number of topics with a pending diff.
    #[cfg(test)]
    pub fn pending_topics(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Meta;

    fn item(n: u64) -> PresenceItem {
        PresenceItem {
            key: format!("u{n}").into(),
            phx_ref: PhxRef::from_parts([0; 6], n),
            prev_ref: None,
            meta: Meta::new("{}"),
        }
    }

    #[test]
    fn window_grows_with_topic_size() {
        let c = CoalesceConfig::default();
        assert_eq!(c.window(0), Duration::from_millis(20));
        assert_eq!(c.window(2_500), Duration::from_millis(260));
        assert_eq!(c.window(1_000_000), Duration::from_millis(500));
    }

    #[test]
    fn a_burst_becomes_one_diff_and_the_last_op_of_a_ref_wins() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(CoalesceConfig::default());
        let topic = Topic::new("r");
        for n in 0..100 {
            c.push(t0, topic.clone(), DiffItem::Join(item(n)), n as usize);
        }
        c.listed(&topic);
        c.push(t0, topic.clone(), DiffItem::Leave(item(5)), 100);
        // Joined and gone before anyone listed it: in no client's view.
        c.push(t0, topic.clone(), DiffItem::Join(item(200)), 100);
        c.push(t0, topic.clone(), DiffItem::Leave(item(200)), 100);
        assert!(c.pop_due(t0 + Duration::from_millis(19)).is_none());
        let (t, d) = c.pop_due(t0 + Duration::from_millis(20)).unwrap();
        assert_eq!(t, topic);
        assert_eq!(d.joins.len(), 99);
        assert_eq!(
            d.leaves,
            vec![item(5)],
            "a client that listed ref 5 must drop it"
        );
        assert!(c.pop_due(t0 + Duration::from_secs(10)).is_none());
    }

    /// One key updated `n` times in a window: each update leaves the old ref
    /// and joins a new one.
    fn updates(c: &mut Coalescer, t0: Instant, topic: &Topic, n: u64) {
        for i in 0..n {
            c.push(t0, topic.clone(), DiffItem::Leave(item_ref("u", i)), 1);
            c.push(t0, topic.clone(), DiffItem::Join(item_ref("u", i + 1)), 1);
        }
    }

    fn item_ref(key: &str, n: u64) -> PresenceItem {
        PresenceItem {
            key: key.into(),
            phx_ref: PhxRef::from_parts([0; 6], n),
            prev_ref: None,
            meta: Meta::new("{}"),
        }
    }

    #[test]
    fn n_updates_of_one_key_give_one_leave_and_one_join() {
        // Failed before: the diff listed a leave for all 5,000 intermediate refs.
        let t0 = Instant::now();
        let mut c = Coalescer::new(CoalesceConfig::default());
        let topic = Topic::new("r");
        updates(&mut c, t0, &topic, 5_000);
        assert!(c.pending[&topic].refs.len() <= 2, "no state per update");
        let diffs = c.flush_all();
        assert_eq!(diffs.len(), 1);
        let d = &diffs[0].1;
        assert_eq!(
            d.leaves,
            vec![item_ref("u", 0)],
            "the ref before the window"
        );
        assert_eq!(d.joins, vec![item_ref("u", 5_000)], "the last ref");
    }

    #[test]
    fn a_listing_mid_window_keeps_the_leave_of_what_it_listed() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(CoalesceConfig::default());
        let topic = Topic::new("r");
        updates(&mut c, t0, &topic, 10);
        c.listed(&topic); // a subscriber's presence_state holds ref 10
        updates_from(&mut c, t0, &topic, 10, 20);
        let d = c.flush_all().remove(0).1;
        let leaves: Vec<u64> = d.leaves.iter().map(|i| ref_n(i.phx_ref)).collect();
        assert_eq!(leaves, vec![0, 10]);
        assert_eq!(d.joins, vec![item_ref("u", 20)]);
    }

    fn updates_from(c: &mut Coalescer, t0: Instant, topic: &Topic, from: u64, to: u64) {
        for i in from..to {
            c.push(t0, topic.clone(), DiffItem::Leave(item_ref("u", i)), 1);
            c.push(t0, topic.clone(), DiffItem::Join(item_ref("u", i + 1)), 1);
        }
    }

    fn ref_n(r: PhxRef) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&r.0[6..]);
        u64::from_be_bytes(b)
    }

    /// phoenix.js `syncDiff` on a set of refs: joins add, leaves remove.
    fn apply(view: &mut BTreeSet<PhxRef>, d: &TopicDiff) {
        for j in &d.joins {
            view.insert(j.phx_ref);
        }
        for l in &d.leaves {
            view.remove(&l.phx_ref);
        }
    }

    #[test]
    fn every_subscriber_ends_on_the_view_whatever_the_ops_and_listings() {
        // Random joins, leaves, re-joins of the same ref and listings; a client
        // that held the view when the window opened and one per listing (its
        // presence_state) apply the diff and must all end on the final view.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let topic = Topic::new("r");
        let t0 = Instant::now();
        for _ in 0..500 {
            let mut c = Coalescer::new(CoalesceConfig::default());
            let mut view: BTreeSet<PhxRef> = (0..next(4)).map(|n| item(n).phx_ref).collect();
            let mut clients = vec![view.clone()];
            for _ in 0..next(40) {
                let r = item(next(12));
                match next(5) {
                    0 => {
                        c.listed(&topic);
                        clients.push(view.clone());
                    }
                    1 | 2 if view.insert(r.phx_ref) => {
                        c.push(t0, topic.clone(), DiffItem::Join(r), 1)
                    }
                    _ if view.remove(&r.phx_ref) => {
                        c.push(t0, topic.clone(), DiffItem::Leave(r), 1)
                    }
                    _ => {}
                }
            }
            let diffs = c.flush_all();
            for mut client in clients {
                for (_, d) in &diffs {
                    apply(&mut client, d);
                }
                assert_eq!(client, view);
            }
        }
    }

    #[test]
    fn leave_then_join_of_the_same_ref_keeps_the_join() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(CoalesceConfig::default());
        let topic = Topic::new("r");
        c.push(t0, topic.clone(), DiffItem::Leave(item(1)), 1);
        c.push(t0, topic.clone(), DiffItem::Join(item(1)), 1);
        let diffs = c.flush_all();
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].1.joins.len(), 1);
        assert!(diffs[0].1.leaves.is_empty());
        assert_eq!(c.pending_topics(), 0);
    }
}
