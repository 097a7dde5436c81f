//! The broadcast invariant: per receiver incarnation, no publish arrives twice
//! and each publisher's publishes arrive in order; and between nodes that
//! stayed connected, nothing is lost.
//!
//! "Stayed connected" for a publish from `a` at `t` to a subscription of `b`
//! made at `s` (and ready at `r <= t`): no start, crash, restart, pause or
//! resume of `a` or `b`, and no cut or heal of `a <-> b`, within
//! `[s - before, t + after]`, where `before` covers failure detection
//! (`down_after` + 1 s) and `after` covers delivery (2 s). Publishes later than
//! `after` before the end are not judged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Invariant, Verdict};
use crate::world::{fmt_t, World};

const AFTER: Duration = Duration::from_secs(2);

/// Checks the broadcast invariant.
pub(super) fn check(w: &World) -> Verdict {
    let before = w.timing.down_after.unwrap_or(Duration::from_secs(2)) + Duration::from_secs(1);
    let mut dups = 0u64;
    let mut reordered = 0u64;
    let mut first_bad = None;
    let mut got = BTreeSet::new();
    let mut last: BTreeMap<(usize, u64, usize, u64), u64> = BTreeMap::new();
    for r in &w.log.receipts {
        if !got.insert((r.node, r.inc, r.from, r.from_inc, r.seq)) {
            dups += 1;
            first_bad.get_or_insert_with(|| {
                format!(
                    "{} n{} got n{}#{} seq {} twice",
                    fmt_t(r.at),
                    r.node,
                    r.from,
                    r.from_inc,
                    r.seq
                )
            });
        }
        let l = last.entry((r.node, r.inc, r.from, r.from_inc)).or_default();
        if r.seq < *l {
            reordered += 1;
            first_bad.get_or_insert_with(|| {
                format!(
                    "{} n{} got n{}#{} seq {} after seq {}",
                    fmt_t(r.at),
                    r.node,
                    r.from,
                    r.from_inc,
                    r.seq,
                    *l
                )
            });
        }
        *l = (*l).max(r.seq);
    }

    let mut node_faults: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    for &(t, n) in &w.log.node_faults {
        node_faults.entry(n).or_default().push(t);
    }
    let mut link_changes: BTreeMap<(usize, usize), Vec<Duration>> = BTreeMap::new();
    for &(t, a, b) in &w.net.changes {
        link_changes
            .entry((a.min(b), a.max(b)))
            .or_default()
            .push(t);
    }
    let any_in = |v: Option<&Vec<Duration>>, lo: Duration, hi: Duration| {
        v.is_some_and(|v| {
            let i = v.partition_point(|t| *t < lo);
            i < v.len() && v[i] <= hi
        })
    };

    let mut subs_by_topic: BTreeMap<&chorus_engine::Topic, Vec<&crate::log::SubRec>> =
        BTreeMap::new();
    for s in &w.log.subs {
        subs_by_topic.entry(&s.topic).or_default().push(s);
    }
    let (mut expected, mut lost) = (0u64, 0u64);
    for p in &w.log.publishes {
        let hi = p.at + AFTER;
        if hi > w.now {
            continue;
        }
        for s in subs_by_topic.get(&p.topic).into_iter().flatten() {
            if s.ready.is_none_or(|r| r > p.at) {
                continue;
            }
            let lo = s.at.saturating_sub(before);
            let (a, b) = (p.from, s.node);
            if any_in(node_faults.get(&a), lo, hi)
                || any_in(node_faults.get(&b), lo, hi)
                || any_in(link_changes.get(&(a.min(b), a.max(b))), lo, hi)
            {
                continue;
            }
            expected += 1;
            if !got.contains(&(b, s.inc, a, p.inc, p.seq)) {
                lost += 1;
                first_bad.get_or_insert_with(|| {
                    format!(
                        "n{a}#{} seq {} to {} at {} never reached n{b}#{} (subscribed {})",
                        p.inc,
                        p.seq,
                        p.topic,
                        fmt_t(p.at),
                        s.inc,
                        fmt_t(s.at)
                    )
                });
            }
        }
    }
    let pass = dups == 0 && reordered == 0 && lost == 0;
    let mut detail = format!(
        "{} published, {} delivered, {expected} judged: {lost} lost, {dups} duplicated, {reordered} reordered",
        w.log.publishes.len(),
        w.log.receipts.len()
    );
    if let Some(b) = first_bad {
        detail.push_str("; first: ");
        detail.push_str(&b);
    }
    Verdict {
        invariant: Invariant::Broadcasts,
        pass,
        detail,
    }
}
