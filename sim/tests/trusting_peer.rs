//! Proves the hostile-peer checker can fail: with the engine's
//! `trusting-peer` feature (a message claiming another sender is taken, a
//! non-object meta decodes), every seed of `hostile-peer` must fail
//! `hostile-contained`, with a spoof taken and a bad value decoded.
//!
//! Run alone: `cargo test -p chorus-sim --features trusting-peer --test trusting_peer`.
#![cfg(feature = "trusting-peer")]

use chorus_sim::builtin;
use chorus_sim::check::Invariant;
use chorus_sim::run_scenario;

#[test]
fn the_hostile_checker_catches_a_trusting_peer_boundary() {
    let sc = builtin::scenario("hostile-peer", 5).expect("built-in");
    for seed in 0..10 {
        let r = run_scenario(&sc, seed);
        let v = r
            .verdicts
            .iter()
            .find(|v| v.invariant == Invariant::HostileContained)
            .expect("checked with a hostile peer");
        assert!(!v.pass, "seed {seed}: a trusting boundary went unnoticed");
        assert!(
            !v.detail.starts_with("0 spoofs taken") && !v.detail.contains(" 0 bad frames decoded"),
            "seed {seed}: both a spoof taken and a bad value decoded: {}",
            v.detail
        );
    }
}
