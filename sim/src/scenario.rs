//! Scenarios as data: a [`Scenario`] is a list of [`Step`]s plus network and
//! timing settings, built in Rust or read from JSON; [`run_scenario`] plays one
//! on a fresh [`World`] with a seed and returns its [`Report`].
//!
//! JSON form: `{"name": "x", "steps": [{"step": "AddNode", "count": 3},
//! {"step": "Wait", "ms": 1000}, {"step": "Cut", "groups": [[0], [1, 2]]},
//! {"step": "Assert", "expect": "Converged", "within_ms": 5000}]}`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::check::{evaluate, Invariant, Verdict};
use crate::net::NetConfig;
use crate::report::Report;
use crate::workload::Workload;
use crate::world::{NodeTiming, World};

/// A scenario: settings and steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// Link behaviour at the start.
    #[serde(default)]
    pub net: NetConfig,
    /// Override of the nodes' `down_after`, in milliseconds.
    #[serde(default)]
    pub down_after_ms: Option<u64>,
    /// Override of the nodes' `permdown_after`, in milliseconds.
    #[serde(default)]
    pub permdown_after_ms: Option<u64>,
    /// Override of the nodes' `history_cap` (entries kept per log).
    #[serde(default)]
    pub history_cap: Option<usize>,
    /// The nodes' `history_ttl` in milliseconds (none: history never expires).
    #[serde(default)]
    pub history_ttl_ms: Option<u64>,
    /// The nodes' `history_budget` in bytes (none: no budget).
    #[serde(default)]
    pub history_budget: Option<usize>,
    /// Clock skew of node `i`, in milliseconds (0 past the end of the list):
    /// added to the virtual wall clock its record writes are stamped with.
    #[serde(default)]
    pub clock_skew_ms: Vec<i64>,
    /// Views must converge this long after the last fault or command.
    #[serde(default = "default_within")]
    pub converge_within_ms: u64,
    /// Convergence sampling period (default: 100 ms, 500 ms above 50 nodes).
    #[serde(default)]
    pub sample_ms: Option<u64>,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

fn default_within() -> u64 {
    5_000
}

fn one() -> usize {
    1
}

/// One step. Node arguments are node indices (`n{i}`, port `7400 + i`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "step", deny_unknown_fields)]
pub enum Step {
    /// Start `count` new nodes.
    AddNode {
        /// How many.
        #[serde(default = "one")]
        count: usize,
    },
    /// Track `key` in `topic` on `node` (new connection unless `conn`).
    Track {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// Key.
        key: String,
        /// Connection id.
        #[serde(default)]
        conn: Option<u64>,
    },
    /// Track `count` keys (`{prefix}{k}`) in `topic` on `node` at once: a join storm.
    TrackMany {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// Key prefix.
        prefix: String,
        /// How many.
        count: usize,
    },
    /// Untrack every meta of `key` in `topic` on `node`.
    Untrack {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// Key.
        key: String,
    },
    /// Update every meta of `key` in `topic` on `node`.
    Update {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// Key.
        key: String,
    },
    /// Subscribe `node` to `topic`.
    Subscribe {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
    },
    /// Publish `count` numbered payloads from `node` to `topic`.
    Publish {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// How many.
        #[serde(default = "one")]
        count: usize,
    },
    /// Append `count` numbered entries to `topic`'s history log on `node`.
    Append {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// How many.
        #[serde(default = "one")]
        count: usize,
    },
    /// Write register `(space, key)` on `node`; a `null` value removes it.
    Put {
        /// Node.
        node: usize,
        /// Namespace.
        space: String,
        /// Key.
        key: String,
        /// Value, or `null`.
        #[serde(default)]
        value: Option<String>,
    },
    /// Partition: nodes in different groups cannot talk (unlisted nodes can).
    Cut {
        /// The groups.
        groups: Vec<Vec<usize>>,
    },
    /// One-way partition: what `from` sends to `to` is lost.
    CutOneWay {
        /// Senders.
        from: Vec<usize>,
        /// Receivers.
        to: Vec<usize>,
    },
    /// Restore every link.
    Heal,
    /// Crash a node: all its state is lost.
    Crash {
        /// Node.
        node: usize,
    },
    /// Restart a node as a new incarnation (crashing it first if running).
    Restart {
        /// Node.
        node: usize,
    },
    /// Pause a node for `ms` (a long GC pause).
    Pause {
        /// Node.
        node: usize,
        /// How long.
        ms: u64,
    },
    /// Flap the `a <-> b` link for `ms`.
    Flap {
        /// One end.
        a: usize,
        /// Other end.
        b: usize,
        /// How long.
        ms: u64,
    },
    /// Change link behaviour.
    SetNet(NetConfig),
    /// Start background client load.
    Workload(Workload),
    /// Track `key` in `topic` on `node` and measure its spread to every node.
    Watch {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// Key.
        key: String,
    },
    /// Make `node` hostile for `ms`: every `every_ms` it sends one honest
    /// node a well-formed but wrong message (see [`crate::hostile`]),
    /// making up at most `quota` entries in all.
    Hostile {
        /// Node.
        node: usize,
        /// How long.
        ms: u64,
        /// Attack period.
        every_ms: u64,
        /// Entries it may make up.
        quota: u64,
    },
    /// Let virtual time pass.
    Wait {
        /// How long.
        ms: u64,
    },
    /// Require a condition to hold within `within_ms` (polled every 50 ms).
    Assert {
        /// The condition.
        expect: Expect,
        /// Deadline from now.
        within_ms: u64,
    },
}

/// A condition of [`Step::Assert`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Expect {
    /// Every live view equals the truth.
    Converged,
    /// `node` lists `metas` metas in `topic`.
    Count {
        /// Node.
        node: usize,
        /// Topic.
        topic: String,
        /// Metas.
        metas: usize,
    },
    /// The watched change reached every live node.
    Disseminated,
}

impl Scenario {
    /// Parses a scenario from JSON.
    pub fn from_json(text: &str) -> anyhow::Result<Scenario> {
        Ok(serde_json::from_str(text)?)
    }

    /// The scenario as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("scenarios serialize")
    }
}

/// Plays `sc` with `seed` and checks every invariant but determinism.
pub fn run_scenario(sc: &Scenario, seed: u64) -> Report {
    let wall = Instant::now();
    let timing = NodeTiming {
        down_after: sc.down_after_ms.map(Duration::from_millis),
        permdown_after: sc.permdown_after_ms.map(Duration::from_millis),
        history_cap: sc.history_cap,
        history_ttl: sc.history_ttl_ms.map(Duration::from_millis),
        history_budget: sc.history_budget,
        clock_skew_ms: sc.clock_skew_ms.clone(),
    };
    let nodes: usize = sc
        .steps
        .iter()
        .map(|s| {
            if let Step::AddNode { count } = s {
                *count
            } else {
                0
            }
        })
        .sum();
    let sample = sc.sample_ms.unwrap_or(if nodes > 50 { 500 } else { 100 });
    let mut w = World::new(seed, sc.net.clone(), timing, Duration::from_millis(sample));
    for step in &sc.steps {
        apply(&mut w, step);
    }
    let within = Duration::from_millis(sc.converge_within_ms);
    let (verdicts, after) = evaluate(&mut w, within);
    Report::new(sc, seed, &w, verdicts, after, wall.elapsed())
}

/// Plays `sc` twice and adds the determinism verdict to the first report.
pub fn run_checked(sc: &Scenario, seed: u64) -> Report {
    let mut r = run_scenario(sc, seed);
    let again = run_scenario(sc, seed);
    r.verdicts.push(Verdict {
        invariant: Invariant::Determinism,
        pass: again.trace_hash == r.trace_hash,
        detail: format!("replay gave {}", again.trace_hash),
    });
    r
}

fn apply(w: &mut World, step: &Step) {
    let now = w.now();
    match step {
        Step::AddNode { count } => {
            for _ in 0..*count {
                w.add_node();
            }
        }
        Step::Track {
            node,
            topic,
            key,
            conn,
        } => w.track(*node, topic, key, *conn),
        Step::TrackMany {
            node,
            topic,
            prefix,
            count,
        } => {
            for k in 0..*count {
                w.track(*node, topic, &format!("{prefix}{k}"), None);
            }
        }
        Step::Untrack { node, topic, key } | Step::Update { node, topic, key } => {
            let targets: Vec<_> = w.nodes[*node]
                .truth
                .keys()
                .filter(|(t, k, _)| t.as_str() == topic && k.as_str() == key)
                .cloned()
                .collect();
            for (t, k, c) in targets {
                if matches!(step, Step::Untrack { .. }) {
                    w.untrack(*node, &t, &k, c);
                } else {
                    w.update(*node, &t, &k, c);
                }
            }
        }
        Step::Subscribe { node, topic } => w.subscribe(*node, topic),
        Step::Publish { node, topic, count } => {
            for _ in 0..*count {
                w.publish(*node, topic);
            }
        }
        Step::Append { node, topic, count } => {
            for _ in 0..*count {
                w.append(*node, topic);
            }
        }
        Step::Put {
            node,
            space,
            key,
            value,
        } => w.put(*node, space, key, value.as_deref()),
        Step::Cut { groups } => w.cut_groups(groups),
        Step::CutOneWay { from, to } => w.cut_one_way(from, to),
        Step::Heal => w.heal(),
        Step::Crash { node } => w.crash(*node),
        Step::Restart { node } => w.restart(*node),
        Step::Pause { node, ms } => w.pause(*node, Duration::from_millis(*ms)),
        Step::Flap { a, b, ms } => w.start_flap(*a, *b, Duration::from_millis(*ms)),
        Step::SetNet(net) => w.net.config = net.clone(),
        Step::Workload(cfg) => w.start_workload(cfg.clone()),
        Step::Watch { node, topic, key } => {
            w.track(*node, topic, key, None);
            w.watch(*node, topic, key);
        }
        Step::Hostile {
            node,
            ms,
            every_ms,
            quota,
        } => w.start_hostile(*node, *ms, *every_ms, *quota),
        Step::Wait { ms } => w.run_until(now + Duration::from_millis(*ms)),
        Step::Assert { expect, within_ms } => {
            let deadline = now + Duration::from_millis(*within_ms);
            let desc = format!(
                "{expect:?} within {within_ms} ms (from {})",
                crate::world::fmt_t(now)
            );
            loop {
                if holds(w, expect) {
                    w.log.asserts.push((desc, true));
                    break;
                }
                if w.now() >= deadline {
                    w.log.asserts.push((desc, false));
                    break;
                }
                let next = (w.now() + Duration::from_millis(50)).min(deadline);
                w.run_until(next);
            }
        }
    }
}

fn holds(w: &World, expect: &Expect) -> bool {
    match expect {
        Expect::Converged => {
            let t = w.truth();
            (0..w.nodes.len()).all(|i| w.view_of(i).is_none_or(|v| v == t))
        }
        Expect::Count { node, topic, metas } => w.nodes[*node]
            .node
            .as_ref()
            .is_some_and(|n| n.list(&chorus_engine::Topic::new(topic.as_str())).len() == *metas),
        Expect::Disseminated => w.watch.as_ref().is_some_and(|x| x.done.is_some()),
    }
}
