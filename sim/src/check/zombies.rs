//! No zombies: no live node holds an entry of an ended incarnation past its
//! deadline. An incarnation that crashed must be gone everywhere by
//! `down_after + permdown_after + grace` after its end; one that was replaced
//! by a restart, by `grace` after the restart (whichever comes first).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{first, Invariant, Verdict};
use crate::world::World;

/// Checks that no ended incarnation's entries survive their deadline.
pub(super) fn check(w: &World, grace: Duration) -> Verdict {
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
