//! The [`Report`] of one run: timing, traffic, peaks, the dissemination
//! measurement, every invariant's verdict and the trace hash; printed by
//! `chorus-sim run`.

use std::fmt;
use std::time::Duration;

use crate::check::Verdict;
use crate::log::Sample;
use crate::scenario::Scenario;
use crate::world::{fmt_t, World, KINDS, KIND_NAMES};

/// The outcome of one scenario run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Node names used.
    pub nodes: usize,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// Wall-clock time taken.
    pub wall: Duration,
    /// Events processed.
    pub events: u64,
    /// Verdicts, one per invariant.
    pub verdicts: Vec<Verdict>,
    /// Convergence delay after the last fault or command.
    pub converged_after: Option<Duration>,
    /// When the last fault or command was.
    pub last_change: Duration,
    /// Messages sent, by kind.
    pub msgs: [u64; KINDS],
    /// Bytes sent, by kind.
    pub bytes: [u64; KINDS],
    /// Messages the network dropped.
    pub dropped: u64,
    /// Largest event queue.
    pub peak_queue: usize,
    /// Largest inbox of a paused node.
    pub peak_inbox: usize,
    /// Largest transmit queue of a node.
    pub peak_transmits: usize,
    /// Largest δ-buffer of a node.
    pub peak_buffer: usize,
    /// δ-buffer overflows, all nodes.
    pub overflows: u64,
    /// Dissemination of the watched change: `(time, bytes, messages, rounds)`.
    pub dissemination: Option<(Duration, u64, u64, u32)>,
    /// Faults with labels.
    pub faults: Vec<(Duration, String)>,
    /// Convergence samples.
    pub samples: Vec<Sample>,
    /// Hash of the event trace.
    pub trace_hash: String,
}

impl Report {
    pub(crate) fn new(
        sc: &Scenario,
        seed: u64,
        w: &World,
        verdicts: Vec<Verdict>,
        converged_after: Option<Duration>,
        wall: Duration,
    ) -> Self {
        let live = w.nodes.iter().filter_map(|s| s.node.as_ref());
        let peak_transmits = w.nodes.iter().map(|s| s.peaks.0).max().unwrap_or(0);
        let peak_buffer = w.nodes.iter().map(|s| s.peaks.1).max().unwrap_or(0);
        let overflows = w.nodes.iter().map(|s| s.overflows).sum::<u64>()
            + live.map(|n| n.stats().buffer_overflows).sum::<u64>();
        Report {
            scenario: sc.name.clone(),
            seed,
            nodes: w.nodes.len(),
            virtual_time: w.now(),
            wall,
            events: w.stats.steps,
            verdicts,
            converged_after,
            last_change: w.log.last_fault.max(w.log.last_change),
            msgs: w.stats.msgs,
            bytes: w.stats.bytes,
            dropped: w.stats.dropped,
            peak_queue: w.stats.peak_queue,
            peak_inbox: w.stats.peak_inbox,
            peak_transmits,
            peak_buffer,
            overflows,
            dissemination: w.watch.as_ref().and_then(|x| x.done),
            faults: w.log.faults.clone(),
            samples: w.log.samples.clone(),
            trace_hash: w.trace.hex(),
        }
    }

    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
    }

    /// The invariants that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| !v.pass)
    }

    /// Messages and bytes per node per second of virtual time.
    pub fn per_node_second(&self) -> (f64, f64) {
        let d = self.virtual_time.as_secs_f64().max(1e-9) * self.nodes.max(1) as f64;
        let m: u64 = self.msgs.iter().sum();
        let b: u64 = self.bytes.iter().sum();
        (m as f64 / d, b as f64 / d)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario: {}  nodes: {}  seed: {}",
            self.scenario, self.nodes, self.seed
        )?;
        writeln!(
            f,
            "virtual time: {}  events: {}  wall: {:.2?}",
            fmt_t(self.virtual_time),
            self.events,
            self.wall
        )?;
        for (t, label) in self.faults.iter().take(12) {
            writeln!(f, "  {:>9}  {label}", fmt_t(*t))?;
        }
        if self.faults.len() > 12 {
            writeln!(f, "  ... {} more faults", self.faults.len() - 12)?;
        }
        match self.converged_after {
            Some(a) => writeln!(
                f,
                "converged: {} after the last fault/command (at {})",
                fmt_t(a),
                fmt_t(self.last_change)
            )?,
            None => writeln!(f, "converged: never")?,
        }
        let (m, b) = self.per_node_second();
        writeln!(
            f,
            "traffic: {m:.1} msgs/node/s, {b:.0} bytes/node/s, {} dropped by the network",
            self.dropped
        )?;
        let kinds: Vec<String> = (0..KINDS)
            .filter(|&k| self.msgs[k] > 0)
            .map(|k| format!("{} {}/{}B", KIND_NAMES[k], self.msgs[k], self.bytes[k]))
            .collect();
        writeln!(f, "  by kind: {}", kinds.join(", "))?;
        writeln!(
            f,
            "peaks: event queue {}, paused inbox {}, node transmit queue {}, δ-buffer {} ({} overflows)",
            self.peak_queue, self.peak_inbox, self.peak_transmits, self.peak_buffer, self.overflows
        )?;
        if let Some((t, bytes, msgs, rounds)) = self.dissemination {
            writeln!(
                f,
                "dissemination: every live node had the change after {} in {rounds} round(s); {msgs} messages, {bytes} bytes sent cluster-wide meanwhile",
                fmt_t(t)
            )?;
        }
        writeln!(f, "invariants:")?;
        for v in &self.verdicts {
            let mark = if v.pass { "PASS" } else { "FAIL" };
            writeln!(f, "  {:<15} {mark}  {}", v.invariant, v.detail)?;
        }
        writeln!(f, "trace-hash: {}", self.trace_hash)
    }
}
