//! Proves the checkers can fail: with the engine's `broken-merge` feature
//! (removals from peers are ignored, register removals included), the sweep
//! must find failing seeds, and the records checker must be among the
//! invariants that notice.
//!
//! Run alone: `cargo test -p chorus-sim --features broken-merge --test broken_merge`.
#![cfg(feature = "broken-merge")]

use chorus_sim::builtin;
use chorus_sim::check::Invariant;
use chorus_sim::sweep::sweep;

#[test]
fn the_sweep_catches_a_merge_that_ignores_removals() {
    let sc = builtin::scenario("partition-heal", 3).expect("built-in");
    let r = sweep(&sc, 0..20, 2);
    assert!(
        r.failures.len() >= 10,
        "broken merge went unnoticed: only {} of 20 seeds failed",
        r.failures.len()
    );
    assert!(r
        .failures
        .iter()
        .all(|f| f.invariants.contains(&Invariant::Convergence)));
    let records = r
        .failures
        .iter()
        .filter(|f| f.invariants.contains(&Invariant::Records))
        .count();
    // Only seeds where some node merges a peer's register removal before
    // the end expose this bug, and how many do depends on timing (15 of 20
    // with heartbeat membership, 9 of 20 with SWIM): require a clear share.
    assert!(
        records >= 5,
        "ignored register removals went unnoticed: the records checker failed only {records} of 20 seeds"
    );
}
