//! Convergence: at the end every live node's presence view equals the truth
//! (the entries of live incarnations that clients did not untrack), and the
//! views agreed for good within the scenario's bound after the last fault or
//! client command, as the samples the world took while it ran show. With a
//! hostile peer, views and truth are those of honest nodes, restricted to
//! entries of live honest incarnations ([`World::view_of`]).

use std::time::Duration;

use super::{Invariant, Verdict};
use crate::world::{fmt_t, ViewItem, World};

/// Checks convergence, taking one last sample now. Returns the verdict and
/// how long after the last fault or command the views converged.
pub(super) fn check(w: &mut World, within: Duration) -> (Verdict, Option<Duration>) {
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
    for (i, s) in w.nodes.iter().enumerate() {
        let Some(view) = w.view_of(i) else { continue };
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
