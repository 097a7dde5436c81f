//! The dissemination watch: follows one presence change from its origin to
//! every live node, counting hops (rounds), time, messages and bytes.

use std::time::Duration;

use chorus_engine::Topic;

use crate::world::World;

/// Following one change through the cluster (dissemination).
#[derive(Debug)]
pub(crate) struct Watch {
    pub topic: Topic,
    pub key: chorus_engine::Key,
    pub start: Duration,
    pub hop: Vec<Option<u32>>,
    pub bytes0: u64,
    pub msgs0: u64,
    /// `(time after start, bytes, messages, rounds)` once every live node has it.
    pub done: Option<(Duration, u64, u64, u32)>,
}

impl World {
    /// Starts following the presence `key` in `topic`, just tracked on `origin`.
    pub fn watch(&mut self, origin: usize, topic: &str, key: &str) {
        let mut hop = vec![None; self.nodes.len()];
        hop[origin] = Some(0);
        self.watch = Some(Watch {
            topic: Topic::new(topic),
            key: key.into(),
            start: self.now,
            hop,
            bytes0: self.stats.bytes.iter().sum(),
            msgs0: self.stats.msgs.iter().sum(),
            done: None,
        });
    }

    pub(crate) fn watch_hop(&self, from: usize) -> u32 {
        self.watch
            .as_ref()
            .and_then(|w| w.hop.get(from).copied().flatten())
            .unwrap_or(u32::MAX)
    }

    pub(crate) fn watch_arrival(&mut self, to: usize, hop: u32) {
        let Some(w) = self.watch.as_mut() else { return };
        if w.done.is_some() || w.hop.get(to).is_none_or(|h| h.is_some()) {
            return;
        }
        let Some(node) = self.nodes[to].node.as_ref() else {
            return;
        };
        if node.list(&w.topic).iter().any(|p| p.key == w.key) {
            w.hop[to] = Some(hop.saturating_add(1));
            let all = self
                .nodes
                .iter()
                .zip(&w.hop)
                .all(|(s, h)| !s.is_live() || h.is_some());
            if all {
                let rounds = w.hop.iter().flatten().copied().max().unwrap_or(0);
                let bytes = self.stats.bytes.iter().sum::<u64>() - w.bytes0;
                let msgs = self.stats.msgs.iter().sum::<u64>() - w.msgs0;
                w.done = Some((self.now - w.start, bytes, msgs, rounds));
            }
        }
    }
}
