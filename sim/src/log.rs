//! What the world records while it runs, for the checkers and the report to
//! read afterwards: publishes, delivered broadcasts, subscriptions, faults,
//! refused frames and commands, convergence samples, scenario asserts and the
//! records [`Ledger`]. Plain data: the world writes it, `check` and `report`
//! read it, and nothing here computes a verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus_engine::{NodeId, Topic};

use crate::hostile::Attack;
use crate::records::Ledger;

/// A publish made by the workload or a step.
#[derive(Clone, Debug)]
pub struct PubRec {
    /// Publisher node index and incarnation.
    pub from: usize,
    /// Publisher incarnation.
    pub inc: u64,
    /// Per-publisher-incarnation sequence number (in the payload).
    pub seq: u64,
    /// Topic.
    pub topic: Topic,
    /// When.
    pub at: Duration,
}

/// A broadcast delivered to a node.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// Receiving node and its incarnation.
    pub node: usize,
    /// Receiving incarnation.
    pub inc: u64,
    /// Topic.
    pub topic: Topic,
    /// Publisher, its incarnation and sequence number (from the payload).
    pub from: usize,
    /// Publisher incarnation.
    pub from_inc: u64,
    /// Sequence number.
    pub seq: u64,
    /// When.
    pub at: Duration,
}

/// A subscription of one node incarnation.
#[derive(Clone, Debug)]
pub struct SubRec {
    /// Node and incarnation.
    pub node: usize,
    /// Incarnation.
    pub inc: u64,
    /// Topic.
    pub topic: Topic,
    /// Subscribed at.
    pub at: Duration,
    /// `SubscribeReady` at.
    pub ready: Option<Duration>,
}

/// Which live nodes' views equal the truth at one instant (`None`: crashed).
#[derive(Clone, Debug)]
pub struct Sample {
    /// When.
    pub at: Duration,
    /// Per node.
    pub agree: Vec<Option<bool>>,
    /// Whether every live node's records digest was the same.
    pub records_agree: bool,
}

/// What the checkers read, recorded while the world runs.
#[derive(Debug, Default)]
pub struct Log {
    /// Every publish.
    pub publishes: Vec<PubRec>,
    /// Every delivered broadcast.
    pub receipts: Vec<Receipt>,
    /// Every subscription.
    pub subs: Vec<SubRec>,
    /// Node-level disturbances `(time, node)`: start, crash, restart, pause, resume.
    pub node_faults: Vec<(Duration, usize)>,
    /// Faults with labels, for the report and the plot.
    pub faults: Vec<(Duration, String)>,
    /// The last fault or heal.
    pub last_fault: Duration,
    /// The last client command.
    pub last_change: Duration,
    /// Diff errors (a ref both joined and left in one diff).
    pub diff_errors: Vec<String>,
    /// Frames the codec refused.
    pub codec_errors: Vec<String>,
    /// Commands the engine refused.
    pub command_errors: Vec<String>,
    /// Convergence samples.
    pub samples: Vec<Sample>,
    /// Scenario asserts: `(description, passed)`.
    pub asserts: Vec<(String, bool)>,
    /// Every record written, and which incarnations it reached.
    pub records: Ledger,
    /// What the hostile peer did and what came of it.
    pub hostile: HostileLog,
}

/// What the hostile peer sent and how honest nodes took it.
#[derive(Debug, Default)]
pub struct HostileLog {
    /// Attacks made, by kind.
    pub sent: BTreeMap<Attack, u64>,
    /// Entries it made up (its quota spent).
    pub made_up: u64,
    /// Node ids it named that no process runs (other incarnations, ghosts).
    pub named: BTreeSet<NodeId>,
    /// Frames with bad values that an honest node's decoder refused.
    pub refused: u64,
    /// Frames with bad values that decoded anyway (each a failure).
    pub accepted_bad: Vec<String>,
    /// Messages claiming another sender that the receiver dropped.
    pub spoofs_rejected: u64,
    /// Messages claiming another sender that the receiver took (failures).
    pub spoofs_accepted: Vec<String>,
    /// One sample per honest live node per convergence sample.
    pub footprints: Vec<Footprint>,
}

/// An honest node's memory at one instant, next to its bound.
#[derive(Clone, Debug)]
pub struct Footprint {
    /// When.
    pub at: Duration,
    /// Which node.
    pub node: usize,
    /// Presence and subscription entries in its stores, visible or not.
    pub entries: u64,
    /// Ops ever made by every process (each creates at most one entry)
    /// plus the entries the hostile peer made up.
    pub entries_bound: u64,
    /// Members in its peer table.
    pub members: u64,
    /// Incarnations ever started plus ids the hostile peer named.
    pub members_bound: u64,
    /// δ-buffer entries.
    pub buffer: u64,
    /// Its `buffer_cap`.
    pub buffer_bound: u64,
}
