//! The built-in scenarios, each a function of the node count. [`NAMES`] lists
//! them; [`scenario`] builds one by name; [`default_nodes`] and
//! [`sweep_nodes`] give the sizes used by `run` and by sweeps.

use crate::net::NetConfig;
use crate::scenario::{Expect, Scenario, Step};
use crate::workload::Workload;

/// Every built-in scenario.
pub const NAMES: [&str; 9] = [
    "partition-heal",
    "asymmetric-partition",
    "flapping-link",
    "rolling-restart",
    "crash-during-join-storm",
    "lossy-network",
    "large-cluster",
    "dissemination-1000",
    "hostile-peer",
];

/// The node count a scenario is named or designed for.
pub fn default_nodes(name: &str) -> usize {
    match name {
        "large-cluster" => 100,
        "dissemination-1000" => 1000,
        _ => 5,
    }
}

/// The node count used when sweeping many seeds (smaller for the big ones).
pub fn sweep_nodes(name: &str) -> usize {
    match name {
        "large-cluster" => 10,
        "dissemination-1000" => 30,
        _ => 5,
    }
}

/// Builds a built-in scenario for `n` nodes (at least 3).
pub fn scenario(name: &str, n: usize) -> Option<Scenario> {
    let n = n.max(3);
    let steps = match name {
        "partition-heal" => partition_heal(n),
        "asymmetric-partition" => asymmetric(n),
        "flapping-link" => flapping(n),
        "rolling-restart" => rolling_restart(n),
        "crash-during-join-storm" => join_storm(n),
        "lossy-network" => lossy(n),
        "large-cluster" => large(n),
        "dissemination-1000" => dissemination(n),
        "hostile-peer" => hostile(n),
        _ => return None,
    };
    let mut sc = Scenario {
        name: name.into(),
        net: NetConfig::default(),
        down_after_ms: None,
        permdown_after_ms: None,
        // Small logs, so that appends overflow them and merges must keep the
        // newest entries; skewed clocks, so that last-writer-wins is decided
        // by stamps that disagree with virtual time.
        history_cap: Some(4),
        history_ttl_ms: None,
        history_budget: None,
        clock_skew_ms: (0..n).map(|i| SKEW_MS[i % SKEW_MS.len()]).collect(),
        converge_within_ms: 5_000,
        sample_ms: None,
        steps,
    };
    match name {
        "lossy-network" => sc.net = NetConfig::lossy(),
        // History expires while the cluster is cut and restarted: records
        // must still converge, each node to the writes its horizon keeps.
        "partition-heal" => sc.history_ttl_ms = Some(6_000),
        // History over a budget while a link flaps and a node pauses: the
        // budget horizon must reach every node, so all drop the same oldest
        // entries (about 20 entries of ~64 B fit the logs' caps; 640 B don't).
        "flapping-link" => sc.history_budget = Some(640),
        "rolling-restart" | "crash-during-join-storm" => sc.permdown_after_ms = Some(8_000),
        _ => {}
    }
    Some(sc)
}

/// Clock skews of the built-in scenarios' nodes, repeated past the fifth.
const SKEW_MS: [i64; 5] = [0, 350, -600, 1_200, -40];

fn wait(ms: u64) -> Step {
    Step::Wait { ms }
}

fn halves(n: usize) -> Vec<Vec<usize>> {
    vec![(0..n / 2).collect(), (n / 2..n).collect()]
}

/// Nodes start, everyone subscribes to `room:0`, each node tracks `per` keys.
fn setup(n: usize, per: usize) -> Vec<Step> {
    let mut s = vec![Step::AddNode { count: n }, wait(1_000)];
    for i in 0..n {
        s.push(Step::Subscribe {
            node: i,
            topic: "room:0".into(),
        });
        s.push(Step::TrackMany {
            node: i,
            topic: format!("room:{}", i % 3),
            prefix: format!("u{i}-"),
            count: per,
        });
    }
    s.push(wait(1_000));
    s
}

fn load(ms: u64, scale: f64) -> Step {
    let d = Workload::default();
    Step::Workload(Workload {
        duration_ms: ms,
        track_per_s: d.track_per_s * scale,
        update_per_s: d.update_per_s * scale,
        untrack_per_s: d.untrack_per_s * scale,
        subscribe_per_s: d.subscribe_per_s * scale,
        publish_per_s: d.publish_per_s * scale,
        append_per_s: 4.0 * scale,
        put_per_s: 3.0 * scale,
        ..d
    })
}

fn settle() -> Vec<Step> {
    vec![
        wait(500),
        Step::Assert {
            expect: Expect::Converged,
            within_ms: 5_000,
        },
        wait(1_000),
    ]
}

fn partition_heal(n: usize) -> Vec<Step> {
    let mut s = setup(n, 3);
    s.extend([
        load(4_000, 1.0),
        wait(1_000),
        Step::Cut { groups: halves(n) },
        wait(1_500),
        // A restart on the minority side while cut off: the majority must
        // drop the old incarnation's entries once it hears of the new one.
        Step::Restart { node: 0 },
        Step::TrackMany {
            node: 0,
            topic: "room:0".into(),
            prefix: "again-".into(),
            count: 2,
        },
        wait(2_500),
        Step::Heal,
        wait(2_500),
    ]);
    s.extend(settle());
    s
}

fn asymmetric(n: usize) -> Vec<Step> {
    let mut s = setup(n, 3);
    s.extend([
        load(7_000, 1.0),
        wait(500),
        Step::CutOneWay {
            from: vec![0],
            to: (1..n).collect(),
        },
        wait(3_000),
        Step::Heal,
        Step::CutOneWay {
            from: (1..n).collect(),
            to: vec![n - 1],
        },
        wait(3_000),
        Step::Heal,
        wait(1_000),
    ]);
    s.extend(settle());
    s
}

fn flapping(n: usize) -> Vec<Step> {
    let mut s = setup(n, 3);
    s.extend([
        load(8_000, 1.0),
        Step::Flap {
            a: 0,
            b: 1,
            ms: 6_000,
        },
        wait(1_000),
        Step::Pause { node: 2, ms: 3_000 },
        wait(6_000),
    ]);
    s.extend(settle());
    s
}

fn rolling_restart(n: usize) -> Vec<Step> {
    let mut s = setup(n, 3);
    s.push(load(2_000 * n as u64, 1.0));
    for i in 0..n {
        s.push(Step::Restart { node: i });
        s.push(Step::TrackMany {
            node: i,
            topic: "room:1".into(),
            prefix: format!("r{i}-"),
            count: 2,
        });
        s.push(wait(2_000));
    }
    s.push(wait(1_000));
    s.extend(settle());
    s
}

fn join_storm(n: usize) -> Vec<Step> {
    let mut s = setup(n, 1);
    s.push(load(4_000, 1.0));
    for i in 0..n {
        s.push(Step::TrackMany {
            node: i,
            topic: "room:storm".into(),
            prefix: format!("s{i}-"),
            count: 40,
        });
        if i == 1 {
            s.push(wait(1));
            s.push(Step::Crash { node: 1 });
        }
    }
    s.extend([
        wait(3),
        Step::Crash { node: 2 },
        wait(3_000),
        Step::Restart { node: 1 },
        Step::TrackMany {
            node: 1,
            topic: "room:storm".into(),
            prefix: "back-".into(),
            count: 20,
        },
        // Node 2 stays down: its entries must be purged at permdown (8 s).
        wait(13_000),
    ]);
    s.extend(settle());
    s
}

fn lossy(n: usize) -> Vec<Step> {
    let mut s = setup(n, 3);
    s.extend([
        load(8_000, 1.5),
        wait(3_000),
        Step::Cut {
            groups: vec![vec![0], (1..n).collect()],
        },
        wait(2_500),
        Step::Heal,
        wait(4_000),
    ]);
    s.extend(settle());
    s
}

fn large(n: usize) -> Vec<Step> {
    let mut s = setup(n, 5);
    s.extend([
        load(6_000, 2.0),
        wait(1_000),
        Step::Cut { groups: halves(n) },
        wait(3_000),
        Step::Heal,
        wait(3_000),
    ]);
    s.extend(settle());
    s
}

fn dissemination(n: usize) -> Vec<Step> {
    vec![
        Step::AddNode { count: n },
        wait(2_000),
        Step::Watch {
            node: 0,
            topic: "room:0".into(),
            key: "spread".into(),
        },
        Step::Assert {
            expect: Expect::Disseminated,
            within_ms: 3_000,
        },
        wait(200),
    ]
}

/// The last node is hostile for 6 s: every 20 ms it sends an honest node a
/// well-formed but wrong message (replays, spoofs, other incarnations of
/// honest nodes, enormous deltas, ghosts, bad values, lying digests; see
/// `hostile.rs`), while clients load the honest nodes and one of them
/// restarts. Honest nodes must converge among themselves after it.
fn hostile(n: usize) -> Vec<Step> {
    let h = n - 1;
    let mut s = vec![Step::AddNode { count: n }, wait(1_000)];
    for i in 0..h {
        s.push(Step::Subscribe {
            node: i,
            topic: "room:0".into(),
        });
        s.push(Step::TrackMany {
            node: i,
            topic: format!("room:{}", i % 3),
            prefix: format!("u{i}-"),
            count: 3,
        });
    }
    s.push(wait(1_000));
    let mut work = load(6_000, 1.0);
    if let Step::Workload(w) = &mut work {
        w.nodes = (0..h).collect();
    }
    s.extend([
        work,
        Step::Hostile {
            node: h,
            ms: 6_000,
            every_ms: 20,
            // Two enormous deltas and about 200 small made-up entries.
            quota: 2 * crate::hostile::BIG as u64 + 200,
        },
        wait(2_500),
        Step::Restart { node: 1 },
        Step::TrackMany {
            node: 1,
            topic: "room:1".into(),
            prefix: "r1-".into(),
            count: 2,
        },
        wait(4_000),
    ]);
    s.extend(settle());
    s
}

#[cfg(test)]
mod tests {
    use super::SKEW_MS;

    /// The recovery invariant holds the engine to positions answered within
    /// `MAX_CLOCK_SKEW_MS` of the horizon: the scenarios' clocks must stay
    /// within it of each other, or the check would blame the engine for the
    /// documented limit.
    #[test]
    fn skews_stay_within_the_engines_assumption() {
        let spread = SKEW_MS.iter().max().unwrap() - SKEW_MS.iter().min().unwrap();
        assert!(spread.unsigned_abs() <= chorus_engine::MAX_CLOCK_SKEW_MS);
    }
}
