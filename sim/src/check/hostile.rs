//! Hostile peer contained: with a hostile node in the world, every message it
//! sent claiming another sender was dropped by its receiver, every frame it
//! made with a bad value was refused by the receiver's decoder (and at least
//! one of each was delivered, so both paths ran), and each honest node's
//! memory stayed within its bound at every sample:
//!
//! - store entries (presence and subscriptions, visible or not) at most the
//!   ops every process ever made (an op creates at most one entry, and an
//!   entry is created by exactly one op, so replays and relays add nothing)
//!   plus the entries the hostile peer made up (its quota): K = 1;
//! - peer table at most the incarnations ever started plus the ids the
//!   hostile peer named;
//! - δ-buffer at most `buffer_cap`.
//!
//! Honest convergence among honest nodes is the convergence invariant
//! (restricted to honest entries when a hostile node is present).

use super::{first, Invariant, Verdict};
use crate::world::{fmt_t, World};

/// Checks what the hostile peer could not do.
pub(super) fn check(w: &World) -> Verdict {
    let h = &w.log.hostile;
    let mut errs: Vec<String> = Vec::new();
    errs.extend(h.spoofs_accepted.iter().cloned());
    errs.extend(h.accepted_bad.iter().cloned());
    if h.spoofs_rejected == 0 {
        errs.push("no spoofed message reached an honest node".into());
    }
    if h.refused == 0 {
        errs.push("no bad value reached an honest node's decoder".into());
    }
    let mut worst = (0.0f64, 0usize);
    for f in &h.footprints {
        let ratio = f.entries as f64 / f.entries_bound.max(1) as f64;
        if ratio > worst.0 {
            worst = (ratio, f.node);
        }
        if f.entries > f.entries_bound || f.members > f.members_bound || f.buffer > f.buffer_bound {
            errs.push(format!(
                "{}: n{} holds {} entries (bound {}), {} members (bound {}), buffer {} (bound {})",
                fmt_t(f.at),
                f.node,
                f.entries,
                f.entries_bound,
                f.members,
                f.members_bound,
                f.buffer,
                f.buffer_bound
            ));
        }
    }
    let refs: Vec<&String> = errs.iter().collect();
    Verdict {
        invariant: Invariant::HostileContained,
        pass: errs.is_empty(),
        detail: if errs.is_empty() {
            format!(
                "{} attacks, {} spoofs dropped, {} bad frames refused, {} entries made up; peak entries {:.0}% of bound (n{})",
                h.sent.values().sum::<u64>(),
                h.spoofs_rejected,
                h.refused,
                h.made_up,
                worst.0 * 100.0,
                worst.1
            )
        } else {
            format!(
                "{} spoofs taken, {} bad frames decoded: {}",
                h.spoofs_accepted.len(),
                h.accepted_bad.len(),
                first(&refs)
            )
        },
    }
}
