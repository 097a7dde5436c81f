//! Many seeds of one scenario, spread over threads; results come back in seed
//! order, so a sweep's output is as deterministic as each run.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::check::Invariant;
use crate::scenario::{run_scenario, Scenario};

/// A seed whose run broke an invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed (replay it with `chorus-sim run --seed`).
    pub seed: u64,
    /// The invariants that failed.
    pub invariants: Vec<Invariant>,
    /// The first failure's detail.
    pub detail: String,
}

/// What a sweep found.
#[derive(Clone, Debug, Default)]
pub struct SweepResult {
    /// Seeds run.
    pub runs: u64,
    /// Failing seeds, in seed order.
    pub failures: Vec<Failure>,
    /// Virtual seconds simulated in all.
    pub virtual_secs: f64,
    /// Per converged run: how long after the last fault or command the views
    /// converged for good (the scenario's bound applies to this).
    pub converged: Vec<Duration>,
    /// Per converged run with a fault: how long after the last fault (in a
    /// partition scenario, the heal) the views converged for good.
    pub since_fault: Vec<Duration>,
}

impl SweepResult {
    /// `(median, p99, max)` of `d` (nearest rank), if any.
    pub fn spread(d: &[Duration]) -> Option<(Duration, Duration, Duration)> {
        let mut v = d.to_vec();
        v.sort_unstable();
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        (!v.is_empty()).then(|| (at(0.5), at(0.99), *v.last().expect("not empty")))
    }
}

/// Runs `sc` for every seed in `seeds` on `threads` threads.
pub fn sweep(sc: &Scenario, seeds: Range<u64>, threads: usize) -> SweepResult {
    let next = AtomicU64::new(seeds.start);
    let out = Mutex::new(SweepResult::default());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let r = run_scenario(sc, seed);
                let mut o = out.lock().expect("no thread panics holding it");
                o.runs += 1;
                o.virtual_secs += r.virtual_time.as_secs_f64();
                if let Some(after) = r.converged_after {
                    o.converged.push(after);
                    if let Some(&(fault, _)) = r.faults.last() {
                        o.since_fault
                            .push((r.last_change + after).saturating_sub(fault));
                    }
                }
                if !r.passed() {
                    let first = r.failures().next().expect("failed");
                    o.failures.push(Failure {
                        seed,
                        invariants: r.failures().map(|v| v.invariant).collect(),
                        detail: format!("{}: {}", first.invariant, first.detail),
                    });
                }
            });
        }
    });
    let mut o = out.into_inner().expect("threads joined");
    o.failures.sort_by_key(|f| f.seed);
    o
}

/// Threads to use by default: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
