//! Scenario asserts: every `Step::Assert` held within its deadline (the
//! runner notes each one's outcome as it plays the step).

use super::{first, Invariant, Verdict};
use crate::world::World;

/// Checks that every scenario assert held.
pub(super) fn check(w: &World) -> Verdict {
    let failed: Vec<&String> = w
        .log
        .asserts
        .iter()
        .filter(|a| !a.1)
        .map(|a| &a.0)
        .collect();
    Verdict {
        invariant: Invariant::Asserts,
        pass: failed.is_empty(),
        detail: if failed.is_empty() {
            format!("{} held", w.log.asserts.len())
        } else {
            first(&failed)
        },
    }
}
