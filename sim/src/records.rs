//! Replicated records in the simulator: client writes (`Append`, `Put`)
//! stamped with each node's skewed wall clock, and the [`Ledger`] of which
//! node incarnations every write reached (the world notes every
//! `Body::Records` delivery). The invariant that reads the ledger is in
//! `check/records.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_engine::{Command, CommandOutcome, Position, Record, Stamp, Topic};

use crate::world::World;

/// The virtual wall clock at virtual time zero, in milliseconds since the
/// Unix epoch (2023-11-14).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// One client write and the incarnations that had it.
#[derive(Clone, Debug)]
pub struct Written {
    /// The record as the writer stamped it.
    pub record: Record,
    /// When it was written (virtual time).
    pub at: Duration,
    /// `(node, incarnation)` of the writer and of every receiver of a
    /// message that carried it.
    pub holders: Vec<(usize, u64)>,
}

/// A stream position a client joining `topic` on `node` got at `at`.
#[derive(Clone, Debug)]
pub struct Sampled {
    /// When (virtual time).
    pub at: Duration,
    /// The node it joined.
    pub node: usize,
    /// The topic.
    pub topic: Topic,
    /// The position (`Records::position`).
    pub pos: Position,
}

/// Every record written through [`World::append`] and [`World::put`].
#[derive(Debug, Default)]
pub struct Ledger {
    /// `NodeConfig::history_cap` of the nodes.
    pub cap: usize,
    /// `NodeConfig::history_ttl` of the nodes, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// `NodeConfig::history_budget` of the nodes, in bytes.
    pub budget: Option<usize>,
    /// The writes, in order.
    pub writes: Vec<Written>,
    /// Stream positions clients took during the run (check/recovery.rs).
    pub positions: Vec<Sampled>,
    index: BTreeMap<Stamp, usize>,
}

impl Ledger {
    fn wrote(&mut self, node: usize, inc: u64, record: Record, at: Duration) {
        self.index.insert(record.stamp().clone(), self.writes.len());
        self.writes.push(Written {
            record,
            at,
            holders: vec![(node, inc)],
        });
    }

    /// Notes that `records` were handed to incarnation `inc` of `node`.
    /// Records not written through the ledger are not followed.
    pub(crate) fn delivered(&mut self, node: usize, inc: u64, records: &[Record]) {
        for r in records {
            if let Some(&k) = self.index.get(r.stamp()) {
                let holders = &mut self.writes[k].holders;
                if !holders.contains(&(node, inc)) {
                    holders.push((node, inc));
                }
            }
        }
    }
}

impl World {
    /// Node `i`'s wall clock in milliseconds: virtual time plus its skew.
    pub fn wall_ms(&self, i: usize) -> u64 {
        let skew = self.timing.clock_skew_ms.get(i).copied().unwrap_or(0);
        let now = i64::try_from(self.now.as_millis()).unwrap_or(i64::MAX);
        EPOCH_MS.saturating_add_signed(now.saturating_add(skew))
    }

    /// Appends a numbered entry to `topic`'s log on node `i`.
    pub fn append(&mut self, i: usize, topic: &str) {
        let topic = Topic::new(topic);
        // A client of the next node joins (or rejoins) now: its position is
        // checked at the end against every live node (check/recovery.rs).
        // Chosen without the rng, so scenarios run as before.
        let j = (i + 1) % self.nodes.len();
        if let Some(node) = self.nodes[j].node.as_ref() {
            let pos = Position {
                time_ms: self.wall_ms(j),
                ..node.records().position(topic.as_str())
            };
            self.log.records.positions.push(Sampled {
                at: self.now,
                node: j,
                topic: topic.clone(),
                pos,
            });
        }
        let body: Arc<str> = Arc::from(format!("n{i} #{}", self.log.records.writes.len()));
        let cmd = Command::Append {
            topic: topic.clone(),
            time_ms: self.wall_ms(i),
            body: body.clone(),
        };
        if let Some(CommandOutcome::Recorded(stamp)) = self.command(i, cmd) {
            let record = Record::Log { topic, stamp, body };
            self.log
                .records
                .wrote(i, self.nodes[i].incarnation, record, self.now);
        }
    }

    /// Writes register `(space, key)` on node `i`; `None` removes it.
    pub fn put(&mut self, i: usize, space: &str, key: &str, value: Option<&str>) {
        let (space, key): (Arc<str>, Arc<str>) = (Arc::from(space), Arc::from(key));
        let value = value.map(Arc::from);
        let cmd = Command::Put {
            space: space.clone(),
            key: key.clone(),
            time_ms: self.wall_ms(i),
            value: value.clone(),
        };
        if let Some(CommandOutcome::Recorded(stamp)) = self.command(i, cmd) {
            let record = Record::Reg {
                space,
                key,
                stamp,
                value,
            };
            self.log
                .records
                .wrote(i, self.nodes[i].incarnation, record, self.now);
        }
    }
}
