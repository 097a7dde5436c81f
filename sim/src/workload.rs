//! Client workload: presences tracked, updated and untracked, topics
//! subscribed and published to, history entries appended and registers
//! written or removed, at configurable cluster-wide rates (a Poisson process
//! drawn from the world's RNG). Record writes carry the node's skewed wall
//! clock ([`World::wall_ms`]).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::world::{Ev, World};

/// Rates of client operations over a period, cluster-wide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// How long the clients keep going, in milliseconds.
    pub duration_ms: u64,
    /// Tracks per second.
    pub track_per_s: f64,
    /// Meta updates per second.
    pub update_per_s: f64,
    /// Untracks per second.
    pub untrack_per_s: f64,
    /// New subscriptions per second.
    pub subscribe_per_s: f64,
    /// Publishes per second.
    pub publish_per_s: f64,
    /// History appends per second (to a random topic's log).
    pub append_per_s: f64,
    /// Register writes per second, one in four a removal.
    pub put_per_s: f64,
    /// Number of topics (`room:0` ...) the clients use.
    pub topics: usize,
    /// Number of registers (`room` / `k0` ...) the clients write.
    pub registers: usize,
    /// The nodes clients connect to (all, when empty).
    pub nodes: Vec<usize>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            duration_ms: 5_000,
            track_per_s: 20.0,
            update_per_s: 5.0,
            untrack_per_s: 5.0,
            subscribe_per_s: 2.0,
            publish_per_s: 20.0,
            append_per_s: 0.0,
            put_per_s: 0.0,
            topics: 4,
            registers: 4,
            nodes: Vec::new(),
        }
    }
}

impl Workload {
    fn total(&self) -> f64 {
        self.track_per_s
            + self.update_per_s
            + self.untrack_per_s
            + self.subscribe_per_s
            + self.publish_per_s
            + self.append_per_s
            + self.put_per_s
    }
}

/// A workload in progress.
#[derive(Debug)]
pub(crate) struct Running {
    cfg: Workload,
    until: Duration,
    next_key: u64,
}

impl World {
    /// Starts a workload now; it runs in the background of later steps.
    pub fn start_workload(&mut self, cfg: Workload) {
        if cfg.total() <= 0.0 || cfg.duration_ms == 0 {
            return;
        }
        let id = self.workloads.len();
        self.workloads.push(Running {
            until: self.now + Duration::from_millis(cfg.duration_ms),
            cfg,
            next_key: 0,
        });
        self.next_op(id);
    }

    fn next_op(&mut self, id: usize) {
        let w = &self.workloads[id];
        let u: f64 = self.rng.random();
        let gap = -(1.0 - u).ln() / w.cfg.total();
        let at = self.now + Duration::from_secs_f64(gap);
        if at < w.until {
            self.schedule(at, Ev::Workload(id));
        }
    }

    pub(crate) fn workload_tick(&mut self, id: usize) {
        let cfg = self.workloads[id].cfg.clone();
        let node = if cfg.nodes.is_empty() {
            self.rng.random_range(0..self.nodes.len())
        } else {
            cfg.nodes[self.rng.random_range(0..cfg.nodes.len())]
        };
        let topic = format!("room:{}", self.rng.random_range(0..cfg.topics.max(1)));
        let mut pick: f64 = self.rng.random::<f64>() * cfg.total();
        let mut op = 0;
        for (k, rate) in [
            cfg.track_per_s,
            cfg.update_per_s,
            cfg.untrack_per_s,
            cfg.subscribe_per_s,
            cfg.publish_per_s,
            cfg.append_per_s,
            cfg.put_per_s,
        ]
        .into_iter()
        .enumerate()
        {
            op = k;
            if pick < rate {
                break;
            }
            pick -= rate;
        }
        let live = node < self.nodes.len()
            && self.nodes[node].is_live()
            && self.nodes[node].paused_until.is_none();
        if live {
            match op {
                0 => {
                    let w = &mut self.workloads[id];
                    w.next_key += 1;
                    let key = format!("w{id}-{}", w.next_key);
                    self.track(node, &topic, &key, None);
                }
                1 | 2 => {
                    let truth = &self.nodes[node].truth;
                    if !truth.is_empty() {
                        let n = self.rng.random_range(0..truth.len());
                        let (t, k, c) = truth.keys().nth(n).cloned().expect("n < len");
                        if op == 1 {
                            self.update(node, &t, &k, c);
                        } else {
                            self.untrack(node, &t, &k, c);
                        }
                    }
                }
                3 => self.subscribe(node, &topic),
                4 => self.publish(node, &topic),
                5 => self.append(node, &topic),
                _ => {
                    let key = format!("k{}", self.rng.random_range(0..cfg.registers.max(1)));
                    let value =
                        (self.rng.random_range(0..4) > 0).then(|| format!("v{}", self.stats.steps));
                    self.put(node, "room", &key, value.as_deref());
                }
            }
        }
        self.next_op(id);
    }
}
