//! The origin replica that the presence bench (`benches/presence.rs`) and
//! the callgrind harness (`examples/merge_profile.rs`) both build deltas with.

use std::collections::VecDeque;

use chorus_engine::Presence;
use chorus_engine::{ConnId, DiffItem, Key, Meta, NodeId, PresEntry, Topic};
use chorus_engine::{Cut, Part};

pub type Diff = Vec<(Topic, DiffItem)>;

/// A meta of 29 bytes, different for every entry.
pub fn meta(n: u64) -> Meta {
    Meta::new(format!(
        "{{\"online_at\":\"{:013}\"}}",
        1_700_000_000_000 + n
    ))
}

/// An origin replica that remembers its entries oldest first.
pub struct Origin {
    pub id: NodeId,
    pub p: Presence,
    pub fifo: VecDeque<(Topic, Key, ConnId)>,
    next_conn: u64,
    diff: Diff,
}

impl Origin {
    pub fn new(name: &str, prefix: u8, tomb_cap: usize) -> Self {
        let id = NodeId::new(name, 1);
        Origin {
            p: Presence::new(id.clone(), [prefix; 6], tomb_cap),
            id,
            fifo: VecDeque::new(),
            next_conn: 0,
            diff: Vec::new(),
        }
    }

    pub fn track(&mut self, topic: Topic, key: Key) -> Part<PresEntry> {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let (_, part) = self
            .p
            .track(
                topic.clone(),
                key.clone(),
                conn,
                meta(conn.0),
                &mut self.diff,
            )
            .expect("every conn is new");
        self.diff.clear();
        self.fifo.push_back((topic, key, conn));
        part
    }

    pub fn untrack_oldest(&mut self) -> Part<PresEntry> {
        let (t, k, c) = self.fifo.pop_front().expect("the origin has entries");
        let part = self
            .p
            .untrack(t, k, c, &mut self.diff)
            .expect("the fifo holds tracked entries");
        self.diff.clear();
        part
    }

    /// Sends everything `rx` lacks of this origin, as anti-entropy does, in
    /// parts of `chunk` ops.
    pub fn feed(&self, rx: &mut Presence, diff: &mut Diff, chunk: usize) {
        let known = rx.store().known(&self.id);
        let cut = Cut {
            adds: chunk,
            bytes: usize::MAX,
        };
        for part in self.p.store().slice(&self.id, known, cut, |_| 0) {
            rx.merge(part, diff);
            diff.clear();
        }
    }
}
