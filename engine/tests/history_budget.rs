//! The global history budget (`NodeConfig::history_budget`) converges.
//!
//! Evicting the oldest entries on one node alone does not: with a per-topic
//! cap of 1 and a budget of 100 B, A = {a1: T1 @1 60 B, a2: T2 @2 60 B} trims
//! to {a2}; merging B = {b2: T2 @3 1 B} gives {b2}, while trimming A ∪ B gives
//! {a1, b2}. The budget horizon makes it a join again: each node over budget
//! raises a horizon past its oldest entries, gossips it in records digests,
//! and every node drops what is stamped before the greatest horizon it heard.
//! Here nodes exchange their records and digests in random orders and must
//! end up with the same records: the newest `cap` per topic of every write,
//! above one horizon, within the budget.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use chorus_engine::{
    Body, Command, CommandOutcome, Message, Node, NodeConfig, NodeId, Record, Stamp, Topic, BUCKETS,
};
use proptest::collection::vec;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
const ALL: [bool; BUCKETS] = [true; BUCKETS];

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16))
}

fn node(i: usize, cap: usize, budget: Option<usize>, now: Instant) -> Node {
    let mut cfg = NodeConfig::lan(NodeId::new(format!("n{i}"), 1), addr(i));
    cfg.rng_seed = i as u64;
    cfg.history_cap = cap;
    cfg.history_budget = budget;
    let mut n = Node::new(cfg, now);
    n.handle_wall_clock(T0 + 1_000_000);
    n
}

fn append(n: &mut Node, now: Instant, topic: &str, time_ms: u64, body: &str) -> Stamp {
    let cmd = Command::Append {
        topic: Topic::new(topic),
        time_ms,
        body: body.into(),
    };
    match n.handle_command(now, cmd) {
        Ok(CommandOutcome::Recorded(stamp)) => stamp,
        other => panic!("append: {other:?}"),
    }
}

fn drain(n: &mut Node) {
    while n.poll_transmit().is_some() {}
    while n.poll_event().is_some() {}
}

/// What `from` ships `to` in one anti-entropy round: all its records, then
/// its digest (which carries the budget horizon).
fn ship_records(nodes: &mut [Node], from: usize, to: usize, now: Instant) {
    let records = nodes[from].records().bucket_records(&ALL);
    let id = nodes[from].id().clone();
    let m = Message {
        from: id.clone(),
        addr: addr(from),
        body: Body::Records(records),
    };
    nodes[to].handle_message(now, &id, m);
    drain(&mut nodes[to]);
}

fn ship_digest(nodes: &mut [Node], from: usize, to: usize, now: Instant) {
    let id = nodes[from].id().clone();
    let m = Message {
        from: id.clone(),
        addr: addr(from),
        body: Body::RecordsDigest {
            buckets: nodes[from].records().digest().to_vec(),
            reply: true,
            horizon: nodes[from].budget_horizon(),
        },
    };
    nodes[to].handle_message(now, &id, m);
    drain(&mut nodes[to]);
}

fn logs(n: &Node) -> Vec<Record> {
    n.records().bucket_records(&ALL)
}

/// The brief's counterexample, through nodes: both end with the same
/// records, and a1 (the oldest) is what went.
#[test]
fn the_local_eviction_counterexample_converges() {
    let now = Instant::now();
    let mut nodes = vec![node(0, 1, Some(100), now), node(1, 1, Some(100), now)];
    // a1 and a2 are 60 B each counted (48 + topic + body).
    append(&mut nodes[0], now, "T1", T0 + 1, "aaaaaaaaaa");
    append(&mut nodes[0], now, "T2", T0 + 2, "aaaaaaaaaa");
    assert!(nodes[0].records().last("T1", 9).is_empty(), "a1 went first");
    assert_eq!(nodes[0].budget_horizon(), T0 + 2);
    assert_eq!(nodes[0].stats().history_budget_evicted, 1);
    append(&mut nodes[1], now, "T2", T0 + 3, "b");
    drain(&mut nodes[0]);
    drain(&mut nodes[1]);
    for (from, to) in [(1, 0), (0, 1), (0, 1), (1, 0)] {
        ship_records(&mut nodes, from, to, now);
        ship_digest(&mut nodes, from, to, now);
    }
    assert_eq!(logs(&nodes[0]), logs(&nodes[1]));
    assert_eq!(nodes[0].records().digest(), nodes[1].records().digest());
    let t2: Vec<String> = nodes[1]
        .records()
        .last("T2", 9)
        .into_iter()
        .map(|(_, b)| b.to_string())
        .collect();
    assert_eq!(t2, ["b"]);
    assert_eq!(nodes[1].budget_horizon(), T0 + 2);
}

/// A hostile or skewed peer's horizon past our wall clock is capped at it:
/// history older than the wall clock may go, what is written from now on is
/// kept.
/// A digest from `from` claiming a budget horizon at the end of time.
fn end_of_time_digest(from: &NodeId) -> Message {
    Message {
        from: from.clone(),
        addr: addr(9),
        body: Body::RecordsDigest {
            buckets: vec![0; BUCKETS],
            reply: true,
            horizon: u64::MAX,
        },
    }
}

#[test]
fn a_budget_horizon_past_our_wall_clock_is_capped() {
    let now = Instant::now();
    let mut a = node(0, 10, None, now);
    a.handle_wall_clock(T0 + 5_000);
    // The wall clock only goes forward: it is still T0 + 1_000_000.
    append(&mut a, now, "room:1", T0 + 999_000, "old");
    append(&mut a, now, "room:1", T0 + 1_000_000, "at the clock");
    drain(&mut a);
    let b = NodeId::new("evil", 1);
    let m = end_of_time_digest(&b);
    a.handle_message(now, &b, m);
    assert_eq!(
        a.budget_horizon(),
        T0 + 1_000_000,
        "capped at the wall clock"
    );
    assert_eq!(a.records().horizon(), T0 + 1_000_000);
    // A write whose caller's clock lags the horizon is still stamped at or
    // past it, so it is kept.
    append(&mut a, now, "room:1", T0 + 10, "after");
    let bodies: Vec<String> = a
        .records()
        .last("room:1", 9)
        .into_iter()
        .map(|(_, b)| b.to_string())
        .collect();
    assert_eq!(bodies, ["at the clock", "after"]);
    assert_eq!(a.stats().history_budget_evicted, 1);
    // Without a wall clock yet, no peer horizon is adopted at all.
    let mut cfg = NodeConfig::lan(NodeId::new("fresh", 1), addr(8));
    cfg.history_cap = 10;
    let mut fresh = Node::new(cfg, now);
    append(&mut fresh, now, "room:1", T0, "kept");
    let m = end_of_time_digest(&b);
    fresh.handle_message(now, &b, m);
    assert_eq!(fresh.budget_horizon(), 0);
    assert_eq!(fresh.records().last("room:1", 9).len(), 1);
}

/// One write: (node, topic, time offset, body length).
type Write = (usize, usize, u64, usize);
/// One delivery: (from, to, records or digest).
type Step = (usize, usize, bool);

fn writes() -> impl Strategy<Value = Vec<Write>> {
    vec((0..3usize, 0..4usize, 0..200u64, 0..80usize), 1..40)
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    vec((0..3usize, 0..3usize, any::<bool>()), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the order of writes, pushes and digests, every node ends
    /// with the newest `cap` entries per topic of every write, above the one
    /// greatest budget horizon, within the budget, and the dropped entries
    /// are all older than the kept ones.
    #[test]
    fn every_merge_order_converges_within_the_budget(
        writes in writes(),
        steps in steps(),
        cap in 1..4usize,
        budget in 150..800usize,
    ) {
        let now = Instant::now();
        let mut nodes: Vec<Node> = (0..3).map(|i| node(i, cap, Some(budget), now)).collect();
        let mut written: Vec<(Topic, Stamp, Arc<str>)> = Vec::new();
        let mut steps = steps.into_iter();
        for (i, topic, dt, len) in writes {
            let topic = format!("t:{topic}");
            let body = "x".repeat(len);
            let stamp = append(&mut nodes[i], now, &topic, T0 + dt, &body);
            written.push((Topic::new(topic), stamp, body.into()));
            drain(&mut nodes[i]);
            prop_assert!(nodes[i].records().log_bytes() <= budget);
            // Interleave some deliveries with the writes.
            if let Some((from, to, records)) = steps.next() {
                if records {
                    ship_records(&mut nodes, from, to, now);
                } else {
                    ship_digest(&mut nodes, from, to, now);
                }
                prop_assert!(nodes[to].records().log_bytes() <= budget);
            }
        }
        for (from, to, records) in steps {
            if records {
                ship_records(&mut nodes, from, to, now);
            } else {
                ship_digest(&mut nodes, from, to, now);
            }
        }
        // Full anti-entropy rounds until quiet.
        for _ in 0..3 {
            for from in 0..3 {
                for to in 0..3 {
                    if from != to {
                        ship_records(&mut nodes, from, to, now);
                        ship_digest(&mut nodes, from, to, now);
                    }
                }
            }
        }
        let horizon = nodes[0].budget_horizon();
        for n in &nodes {
            prop_assert_eq!(n.budget_horizon(), horizon);
            prop_assert_eq!(logs(n), logs(&nodes[0]));
            prop_assert_eq!(n.records().digest(), nodes[0].records().digest());
            prop_assert!(n.records().log_bytes() <= budget);
        }
        // The model: top `cap` per topic of everything written, above the
        // horizon.
        let mut top: BTreeMap<Topic, Vec<(Stamp, Arc<str>)>> = BTreeMap::new();
        for (topic, stamp, body) in &written {
            top.entry(topic.clone()).or_default().push((stamp.clone(), body.clone()));
        }
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for (topic, mut log) in top {
            log.sort();
            let skip = log.len().saturating_sub(cap);
            for (stamp, body) in log.into_iter().skip(skip) {
                let r = Record::Log { topic: topic.clone(), stamp, body };
                if r.stamp().time_ms >= horizon {
                    kept.push(r);
                } else {
                    dropped.push(r);
                }
            }
        }
        let have = logs(&nodes[0]);
        prop_assert_eq!(have.len(), kept.len());
        for r in &kept {
            prop_assert!(have.contains(r), "missing {:?}", r);
        }
        let newest_dropped = dropped.iter().map(|r| r.stamp().time_ms).max();
        let oldest_kept = kept.iter().map(|r| r.stamp().time_ms).min();
        if let (Some(d), Some(k)) = (newest_dropped, oldest_kept) {
            prop_assert!(d < k, "oldest first: dropped {} kept {}", d, k);
        }
    }
}
