//! The invariants, checked at the end of a run against the world and what it
//! recorded ([`crate::log::Log`]): convergence to the truth, no zombie
//! entries, honest presence diffs, broadcasts on healthy links, replicated
//! records (in [`crate::records`]), clean codec and commands, scenario
//! asserts. Determinism is checked by the runner (it replays the seed and
//! compares trace hashes).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::world::{fmt_t, ViewItem, World};

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
    w.take_sample();
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
    let truth = w.truth();
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
