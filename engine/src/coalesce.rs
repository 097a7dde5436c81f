//! Per-topic coalescing of presence diffs.
//!
//! Every join and leave of the visible view is collected per topic over a window
//! that grows with the topic's size, then emitted as one diff. Within a window
//! only the last of a join and a leave of one `phx_ref` is kept: a subscriber
//! that listed the topic (`presence_state`) in the middle of the window may or
//! may not hold that ref, and the last op is right in both cases (a join of a
//! known ref and a leave of an unknown one change nothing on the client),
//! whereas cancelling the pair would leave a zombie or miss a join. A burst of
//! N joins thus reaches each client in a handful of frames instead of N.

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

#[derive(Debug)]
struct PendingDiff {
    joins: BTreeMap<PhxRef, PresenceItem>,
    leaves: BTreeMap<PhxRef, PresenceItem>,
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
                self.pending.entry(topic).or_insert(PendingDiff {
                    joins: BTreeMap::new(),
                    leaves: BTreeMap::new(),
                })
            }
        };
        match item {
            DiffItem::Join(i) => {
                p.leaves.remove(&i.phx_ref);
                p.joins.insert(i.phx_ref, i);
            }
            DiffItem::Leave(i) => {
                p.joins.remove(&i.phx_ref);
                p.leaves.insert(i.phx_ref, i);
            }
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
            if p.joins.is_empty() && p.leaves.is_empty() {
                continue;
            }
            let mut diff = TopicDiff {
                joins: p.joins.into_values().collect(),
                leaves: p.leaves.into_values().collect(),
            };
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
        c.push(t0, topic.clone(), DiffItem::Leave(item(5)), 100);
        assert!(c.pop_due(t0 + Duration::from_millis(19)).is_none());
        let (t, d) = c.pop_due(t0 + Duration::from_millis(20)).unwrap();
        assert_eq!(t, topic);
        assert_eq!(d.joins.len(), 99);
        assert_eq!(d.leaves.len(), 1, "a client that listed ref 5 must drop it");
        assert!(c.pop_due(t0 + Duration::from_secs(10)).is_none());
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
