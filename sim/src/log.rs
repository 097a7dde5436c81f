//! What the world records while it runs, for the checkers and the report to
//! read afterwards: publishes, delivered broadcasts, subscriptions, faults,
//! refused frames and commands, convergence samples, scenario asserts and the
//! records [`Ledger`]. Plain data: the world writes it, `check` and `report`
//! read it, and nothing here computes a verdict.

use std::time::Duration;

use chorus_engine::Topic;

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
}
