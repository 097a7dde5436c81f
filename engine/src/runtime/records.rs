//! [`RecordsReader`]: the runtime's read replica of the node's records.
//!
//! The sans-IO [`Node`](crate::Node) owns its [`Records`] and holds no lock.
//! It reports every record it accepts as
//! [`Event::Record`](crate::Event::Record) and every expiry of history as
//! [`Event::HistoryExpired`](crate::Event::HistoryExpired); the node task
//! applies those, in order, to this replica, which handles read from any
//! thread. The replica
//! starts as a copy of the node's records, and a record merged into equal
//! states gives equal states, so after each drain of the node's events the
//! replica equals [`Node::records`](crate::Node::records) (the test below
//! checks it through local writes, pushes and anti-entropy repairs).

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use crate::records::{Record, Records};

/// A change the node made to its records, to apply to the replica.
#[derive(Clone, Debug)]
pub(crate) enum RecordChange {
    /// A record accepted.
    Merge(Record),
    /// Log entries stamped before this time dropped.
    Expire(u64),
}

/// Shared read access to a running node's records (history, registers): the
/// node task writes, readers on other threads (a gateway deciding a join)
/// take short read locks.
#[derive(Clone, Debug)]
pub struct RecordsReader(Arc<RwLock<Records>>);

impl RecordsReader {
    /// A replica starting from `records` (the node's at start).
    pub(crate) fn new(records: Records) -> Self {
        RecordsReader(Arc::new(RwLock::new(records)))
    }

    /// Locks the records for reading. Keep the guard briefly: the node task
    /// waits for it to apply what the node accepted.
    pub fn read(&self) -> RwLockReadGuard<'_, Records> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the node's changes, in the order it made them, under one
    /// write lock.
    pub(crate) fn apply(&self, changes: impl IntoIterator<Item = RecordChange>) {
        let mut state = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            match change {
                RecordChange::Merge(record) => {
                    state.merge(&record);
                }
                RecordChange::Expire(horizon) => {
                    state.expire(horizon);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::id::{NodeId, Topic};
    use crate::node::{Command, Event, Node, NodeConfig};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7400 + i))
    }

    fn node(name: &str, i: u16, seeds: Vec<SocketAddr>, now: Instant) -> Node {
        let mut cfg = NodeConfig::lan(NodeId::new(name, 1), addr(i));
        cfg.seeds = seeds;
        cfg.history_cap = 3;
        cfg.history_ttl = Some(Duration::from_millis(1_000));
        cfg.rng_seed = u64::from(i);
        Node::new(cfg, now)
    }

    /// Delivers every transmit (through the codec) until both nodes are quiet;
    /// node 0's accepted records go to `replica`.
    fn pump(nodes: &mut [Node; 2], replica: &RecordsReader, now: Instant) -> usize {
        let mut applied = 0;
        loop {
            let mut busy = false;
            for i in 0..2 {
                while let Some(t) = nodes[i].poll_transmit() {
                    busy = true;
                    let msg = crate::Message::decode(&t.msg.encode()).expect("round trip");
                    let to = usize::from(t.addr == addr(1));
                    if to != i {
                        let from = msg.from.clone();
                        nodes[to].handle_message(now, &from, msg);
                    }
                }
                while let Some(e) = nodes[i].poll_event() {
                    busy = true;
                    match (i, e) {
                        (0, Event::Record(r)) => {
                            replica.apply([RecordChange::Merge(r)]);
                            applied += 1;
                        }
                        (0, Event::HistoryExpired { horizon }) => {
                            replica.apply([RecordChange::Expire(horizon)]);
                            applied += 1;
                        }
                        _ => {}
                    }
                }
            }
            if !busy {
                return applied;
            }
        }
    }

    fn same(replica: &RecordsReader, node: &Node) -> bool {
        let every = [true; crate::records::BUCKETS];
        let r = replica.read();
        r.digest() == node.records().digest()
            && r.bucket_records(&every) == node.records().bucket_records(&every)
    }

    fn put(n: &mut Node, now: Instant, key: &str, t: u64, value: Option<&str>) {
        let cmd = Command::Put {
            space: "room".into(),
            key: key.into(),
            time_ms: t,
            value: value.map(Arc::from),
        };
        n.handle_command(now, cmd).expect("put");
    }

    fn append(n: &mut Node, now: Instant, t: u64, body: &str) {
        let cmd = Command::Append {
            topic: Topic::new("room:1"),
            time_ms: t,
            body: body.into(),
        };
        n.handle_command(now, cmd).expect("append");
    }

    #[test]
    fn a_replica_fed_the_accepted_records_equals_the_nodes_store() {
        let mut now = Instant::now();
        // b writes before it knows a: a gets those by anti-entropy repair.
        let mut b = node("b", 1, Vec::new(), now);
        for t in 0..5 {
            append(&mut b, now, 10 + t, "old from b");
        }
        put(&mut b, now, "x", 10, Some("b"));
        put(&mut b, now, "gone", 11, Some("b"));
        put(&mut b, now, "gone", 12, None);
        let mut nodes = [node("a", 0, vec![addr(1)], now), b];
        let replica = RecordsReader::new(nodes[0].records().clone());
        // a's local writes, some older than what b holds (dominated there).
        put(&mut nodes[0], now, "x", 5, Some("a"));
        append(&mut nodes[0], now, 1, "old from a");
        let mut applied = pump(&mut nodes, &replica, now);
        assert!(same(&replica, &nodes[0]));
        for _ in 0..40 {
            now += Duration::from_millis(100);
            for n in &mut nodes {
                n.handle_timeout(now);
            }
            applied += pump(&mut nodes, &replica, now);
            assert!(same(&replica, &nodes[0]));
        }
        // Pushed writes after the nodes met, from both sides.
        append(&mut nodes[1], now, 100, "new from b");
        put(&mut nodes[0], now, "y", 100, Some("a"));
        applied += pump(&mut nodes, &replica, now);
        assert!(same(&replica, &nodes[0]));
        assert_eq!(nodes[0].records().digest(), nodes[1].records().digest());
        assert!(nodes[0].records().get("room", "gone").is_none());
        assert_eq!(
            nodes[0].records().last("room:1", 10).len(),
            3,
            "the log is capped"
        );
        assert!(applied >= 8, "repairs and pushes were applied: {applied}");
        // Expiry: the stamps above are small, so a wall clock of 1,050 ms
        // with a ttl of 1 s drops the log entries before 50 ms.
        append(&mut nodes[0], now, 60, "kept");
        pump(&mut nodes, &replica, now);
        let before = nodes[0].records().last("room:1", 10).len();
        nodes[0].handle_wall_clock(1_050);
        assert!(
            pump(&mut nodes, &replica, now) >= 1,
            "the expiry reached the replica"
        );
        assert!(same(&replica, &nodes[0]));
        let left: Vec<u64> = nodes[0]
            .records()
            .last("room:1", 10)
            .iter()
            .map(|(s, _)| s.time_ms)
            .collect();
        assert!(
            left.len() < before && left.iter().all(|&t| t >= 50),
            "{left:?}"
        );
        assert_eq!(replica.read().log_bytes(), nodes[0].records().log_bytes());
    }
}
