//! Honest diffs: no presence diff both joins and leaves one ref (the world
//! notes those as it replays them), and replaying each live node's emitted
//! diffs from empty gives exactly its view once pending diffs are flushed.

use super::{first, Invariant, Verdict};
use crate::world::World;

/// Flushes every live node's pending diffs, then checks the replayed views.
pub(super) fn check(w: &mut World) -> Verdict {
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
