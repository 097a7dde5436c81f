//! The invariants, checked at the end of a run against the world and what it
//! recorded ([`crate::log::Log`]): convergence to the truth, no zombie
//! entries, honest presence diffs, broadcasts on healthy links, replicated
//! records (in [`crate::records`]), clean codec and commands, scenario
//! asserts. Determinism is checked by the runner (it replays the seed and
//! compares trace hashes).

use std::fmt;
use std::time::Duration;

use crate::world::World;

mod asserts;
mod broadcasts;
mod codec;
mod convergence;
mod diffs;
mod hostile;
mod records;
mod recovery;
mod zombies;

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
    /// A stream position answered on any live node: exactly the surviving
    /// messages it does not cover, in each publisher's order, or a true
    /// reason it cannot.
    Recovery,
    /// Every frame decoded and every command was accepted.
    CodecAndCommands,
    /// Every scenario assert held.
    Asserts,
    /// A hostile peer's spoofs were dropped, its bad values refused at
    /// decode, and honest nodes' memory stayed within its bound.
    HostileContained,
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
            Invariant::Recovery => "recovery",
            Invariant::CodecAndCommands => "codec+commands",
            Invariant::Asserts => "asserts",
            Invariant::HostileContained => "hostile-contained",
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
    let (convergence, after) = convergence::check(w, within);
    let mut out = vec![
        convergence,
        zombies::check(w, within),
        diffs::check(w),
        broadcasts::check(w),
        records::check(w),
        recovery::check(w),
        codec::check(w),
        asserts::check(w),
    ];
    if w.hostile.is_some() {
        out.push(hostile::check(w));
    }
    (out, after)
}

/// The first of `errs`, and how many more there are.
fn first(errs: &[&String]) -> String {
    match errs {
        [] => String::new(),
        [e] => (*e).clone(),
        [e, rest @ ..] => format!("{e} (and {} more)", rest.len()),
    }
}
