//! Clean codec and commands: every frame a node sent decoded at its receiver,
//! and the engine accepted every client command the scenario or the workload
//! gave it.

use super::{first, Invariant, Verdict};
use crate::world::World;

/// Checks that no frame was refused by the codec and no command by the engine.
pub(super) fn check(w: &World) -> Verdict {
    let errs: Vec<&String> = w
        .log
        .codec_errors
        .iter()
        .chain(&w.log.command_errors)
        .collect();
    Verdict {
        invariant: Invariant::CodecAndCommands,
        pass: errs.is_empty(),
        detail: first(&errs),
    }
}
