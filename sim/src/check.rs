//! The invariants, and the records they read ([`Log`]): convergence to the
//! truth, no zombie entries, honest presence diffs, broadcasts on healthy
//! links, replicated records (in [`crate::records`]), clean codec and
//! commands, scenario asserts. Determinism is checked
//! by the runner (it replays the seed and compares trace hashes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chorus_engine::Topic;

use crate::world::{fmt_t, ViewItem, World};

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
    pub records: crate::records::Ledger,
}

/// An invariant the sim checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// Every live view is identical and equals the truth, in bounded time.
    Convergence,
    /// No entry of a crashed or replaced incarnation survives.
    NoZombies,
    /// Replaying each node's diffs from empty gives its view.
    DiffsHonest,
    /// Healthy pairs: nothing lost, nothing duplicated, order kept.
    Broadcasts,
    /// Every live node holds exactly the records that survived (the newest
    /// `history_cap` per log, the greatest write per register), same digest.
    Records,
    /// Every frame decoded and every command was accepted.
    CodecAndCommands,
    /// Every scenario assert held.
    Asserts,
    /// The same seed gives the same trace.
    Determinism,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Invariant::Convergence => "convergence",
            Invariant::NoZombies => "no-zombies",
            Invariant::DiffsHonest => "diffs-honest",
            Invariant::Broadcasts => "broadcasts",
            Invariant::Records => "records",
            Invariant::CodecAndCommands => "codec+commands",
            Invariant::Asserts => "asserts",
            Invariant::Determinism => "determinism",
        };
        f.pad(s)
    }
}

/// One invariant's result.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Which.
    pub invariant: Invariant,
    /// Whether it held.
    pub pass: bool,
    /// Numbers, or what went wrong.
    pub detail: String,
}

/// The truth: the entries of live incarnations that clients did not untrack.
pub fn truth(w: &World) -> BTreeSet<ViewItem> {
    w.nodes
        .iter()
        .filter(|s| s.is_live())
        .flat_map(|s| {
            s.truth
                .iter()
                .map(|((t, k, _), (r, m))| (t.clone(), k.clone(), *r, m.clone()))
        })
        .collect()
}

/// Records which nodes agree with the truth now.
pub fn take_sample(w: &mut World) {
    let truth = truth(w);
    let agree = w
        .nodes
        .iter()
        .map(|s| s.node.as_ref().map(|n| n.presence().view() == truth))
        .collect();
    let mut digests = w
        .nodes
        .iter()
        .filter_map(|s| s.node.as_ref().map(|n| n.records()));
    let records_agree = match digests.next() {
        Some(first) => digests.all(|d| d.digest() == first.digest()),
        None => true,
    };
    w.log.samples.push(Sample {
        at: w.now,
        agree,
        records_agree,
    });
}

/// Checks every invariant but determinism at the end of a run. Returns the
/// verdicts and how long after the last fault or command the views converged.
pub fn evaluate(w: &mut World, within: Duration) -> (Vec<Verdict>, Option<Duration>) {
    let mut out = Vec::new();
    let (v, after) = convergence(w, within);
    out.push(v);
    out.push(zombies(w, within));
    out.push(diffs(w));
    out.push(crate::check_bcast::broadcasts(w));
    out.push(crate::records::check(w));
    let errs: Vec<&String> = w
        .log
        .codec_errors
        .iter()
        .chain(&w.log.command_errors)
        .collect();
    out.push(Verdict {
        invariant: Invariant::CodecAndCommands,
        pass: errs.is_empty(),
        detail: first(&errs),
    });
    let failed: Vec<&String> = w
        .log
        .asserts
        .iter()
        .filter(|a| !a.1)
        .map(|a| &a.0)
        .collect();
    out.push(Verdict {
        invariant: Invariant::Asserts,
        pass: failed.is_empty(),
        detail: if failed.is_empty() {
            format!("{} held", w.log.asserts.len())
        } else {
            first(&failed)
        },
    });
    (out, after)
}

fn first(errs: &[&String]) -> String {
    match errs {
        [] => String::new(),
        [e] => (*e).clone(),
        [e, rest @ ..] => format!("{e} (and {} more)", rest.len()),
    }
}

fn convergence(w: &mut World, within: Duration) -> (Verdict, Option<Duration>) {
    take_sample(w);
    let since = w.log.last_fault.max(w.log.last_change);
    let mut conv_at = None;
    for s in w.log.samples.iter().filter(|s| s.at >= since) {
        let ok = s.agree.iter().all(|a| *a != Some(false));
        match (ok, conv_at) {
            (true, None) => conv_at = Some(s.at),
            (false, _) => conv_at = None,
            _ => {}
        }
    }
    let after = conv_at.map(|t| t - since);
    let truth = truth(w);
    let mut bad = Vec::new();
    for s in w.nodes.iter().filter(|s| s.is_live()) {
        let view = s.node.as_ref().expect("live").presence().view();
        if view != truth {
            let missing = truth.difference(&view).count();
            let extra: Vec<&ViewItem> = view.difference(&truth).collect();
            bad.push(format!(
                "{} lacks {missing}, has {} extra (first: {:?})",
                s.id(),
                extra.len(),
                extra.first()
            ));
        }
    }
    let pass = bad.is_empty() && after.is_some_and(|a| a <= within);
    let detail = match after {
        _ if !bad.is_empty() => format!("{} nodes differ: {}", bad.len(), bad[0]),
        Some(a) => format!(
            "{} entries; converged {} after the last change at {}",
            truth.len(),
            fmt_t(a),
            fmt_t(since)
        ),
        None => "never converged".into(),
    };
    let v = Verdict {
        invariant: Invariant::Convergence,
        pass,
        detail,
    };
    (v, after)
}

fn zombies(w: &World, grace: Duration) -> Verdict {
    let down = w.timing.down_after.unwrap_or(Duration::from_secs(2));
    let perm = w.timing.permdown_after.unwrap_or(Duration::from_secs(300));
    // Every ended incarnation, and from when on it must be gone everywhere.
    let mut deadline = BTreeMap::new();
    for s in &w.nodes {
        for (id, ended, replaced) in &s.past {
            let by_perm = *ended + down + perm + grace;
            let by_restart = replaced.map(|r| r + grace);
            deadline.insert(id.clone(), by_restart.map_or(by_perm, |r| r.min(by_perm)));
        }
    }
    let mut found = Vec::new();
    for s in w.nodes.iter().filter(|s| s.is_live()) {
        let node = s.node.as_ref().expect("live");
        for (id, _) in node.presence().store().replicas() {
            let Some(&dl) = deadline.get(id) else {
                continue;
            };
            let n = node.presence().store().slots_of(id).len();
            if n > 0 && w.now >= dl {
                found.push(format!("{} holds {n} entries of {id}", s.id()));
            }
        }
    }
    Verdict {
        invariant: Invariant::NoZombies,
        pass: found.is_empty(),
        detail: if found.is_empty() {
            format!("{} ended incarnations checked", deadline.len())
        } else {
            first(&found.iter().collect::<Vec<_>>())
        },
    }
}

fn diffs(w: &mut World) -> Verdict {
    for i in 0..w.nodes.len() {
        if let Some(node) = w.nodes[i].node.as_mut() {
            node.flush_diffs();
            w.after_input(i);
        }
    }
    let mut bad: Vec<String> = w.log.diff_errors.clone();
    for s in w.nodes.iter().filter(|s| s.is_live()) {
        let view = s.node.as_ref().expect("live").presence().view();
        if view != s.replay {
            bad.push(format!(
                "{}: replayed diffs give {} entries, view has {}",
                s.id(),
                s.replay.len(),
                view.len()
            ));
        }
    }
    Verdict {
        invariant: Invariant::DiffsHonest,
        pass: bad.is_empty(),
        detail: first(&bad.iter().collect::<Vec<_>>()),
    }
}
