//! Records: every live node ends up holding exactly the records that
//! survived, with the same digest.
//!
//! A write **survives** when an incarnation alive at the end had it: its
//! writer, or a node that was handed a `Body::Records` message carrying it
//! (the world notes every delivery in the [`crate::records::Ledger`]). A
//! write that only ever lived on nodes that crashed since is legitimately
//! lost. The model is computed from the surviving writes alone, without the
//! engine's merge: per log topic the newest `history_cap` entries by stamp,
//! per register the greatest-stamped write (a removal included, as a
//! tombstone). Every live node must hold exactly that set, and its digest
//! must equal the digest of a fresh `Records` holding that set.
//!
//! With `history_ttl`, node `i`'s horizon is the wall clock the world last
//! handed it minus the ttl (computed here, not read from the node). A log
//! entry survives only if a live holder's horizon has not passed it (one that
//! every holder expired is gone, legitimately), and node `i`'s model keeps the
//! surviving entries at or past its own horizon. Nodes whose clocks differ
//! hold different sets for as long as the skew, so each is checked against
//! its own model.
//!
//! With `history_budget`, a node's horizon is also at least its **budget
//! horizon**, read from the node: where it lands depends on the order records
//! arrived in, which only the engine knows. What the checker holds it to: every
//! live node keeps its history within the budget, and once records agree
//! every live node has adopted the greatest budget horizon of the live nodes
//! (or its own wall clock, when that is behind it: peers' horizons are capped
//! there), so they all hold the same records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chorus_engine::BUCKETS;
use chorus_engine::{Record, Records, Stamp, Topic};

use super::{Invariant, Verdict};
use crate::records::EPOCH_MS;
use crate::world::{fmt_t, World};

/// A record in a comparable form: kind, topic or space, key, stamp, value.
type Canon = (char, Arc<str>, Arc<str>, Stamp, Option<Arc<str>>);

fn canon(r: &Record) -> Canon {
    match r {
        Record::Log { topic, stamp, body } => (
            'L',
            Arc::from(topic.as_str()),
            Arc::from(""),
            stamp.clone(),
            Some(body.clone()),
        ),
        Record::Reg {
            space,
            key,
            stamp,
            value,
        } => (
            'R',
            space.clone(),
            key.clone(),
            stamp.clone(),
            value.clone(),
        ),
    }
}

fn describe(c: &Canon) -> String {
    let (kind, name, key, s, value) = c;
    let t = i128::from(s.time_ms) - i128::from(EPOCH_MS);
    let at = format!("{t}ms/{}#{}", s.origin, s.seq);
    match kind {
        'L' => format!("log {name} @{at}"),
        _ => format!("reg {name}/{key} @{at} = {value:?}"),
    }
}

/// What every live node must hold: per log topic the newest `cap` surviving
/// entries, per register the greatest-stamped surviving write.
fn model<'a>(survived: impl Iterator<Item = &'a Record>, cap: usize) -> Vec<Record> {
    let mut logs: BTreeMap<&Topic, Vec<&Record>> = BTreeMap::new();
    let mut regs: BTreeMap<(&str, &str), &Record> = BTreeMap::new();
    for r in survived {
        match r {
            Record::Log { topic, .. } => logs.entry(topic).or_default().push(r),
            Record::Reg { space, key, .. } => {
                let cur = regs.entry((space, key)).or_insert(r);
                if r.stamp() > cur.stamp() {
                    *cur = r;
                }
            }
        }
    }
    let mut out = Vec::new();
    for mut entries in logs.into_values() {
        entries.sort_by(|a, b| b.stamp().cmp(a.stamp()));
        out.extend(entries.into_iter().take(cap.max(1)).cloned());
    }
    out.extend(regs.into_values().cloned());
    out
}

/// How long after the last fault or command the live nodes' digests agreed
/// for good (from the convergence samples).
fn agreed_after(w: &World) -> String {
    let since = w.log.last_fault.max(w.log.last_change);
    let mut at = None;
    for s in w.log.samples.iter().filter(|s| s.at >= since) {
        match (s.records_agree, at) {
            (true, None) => at = Some(s.at),
            (false, _) => at = None,
            _ => {}
        }
    }
    at.map_or("only at the end".into(), |a| {
        format!("{} after the last change", fmt_t(a - since))
    })
}

/// Node `i`'s history horizon: log entries stamped before it are gone there.
fn horizon(w: &World, i: usize) -> u64 {
    let ttl = match (w.log.records.ttl_ms, w.nodes[i].wall_fed_ms) {
        (Some(ttl), Some(wall)) => wall.saturating_sub(ttl),
        _ => 0,
    };
    ttl.max(budget_horizon(w, i))
}

/// Node `i`'s budget horizon (0 when it is down).
fn budget_horizon(w: &World, i: usize) -> u64 {
    w.nodes[i].node.as_ref().map_or(0, |n| n.budget_horizon())
}

/// The budget's own checks, at the end: history within it on every live
/// node, and one budget horizon adopted by every live node, as far as its
/// wall clock allowed.
fn budget_violations(w: &World) -> Vec<String> {
    let live = || w.nodes.iter().enumerate().filter(|(_, s)| s.is_live());
    let mut bad = Vec::new();
    let Some(budget) = w.log.records.budget else {
        // No node raised a budget horizon: any it holds is a peer's (a
        // hostile one's), which must have been capped at its wall clock.
        for (i, s) in live() {
            let wall = s.wall_fed_ms.unwrap_or(0);
            let h = budget_horizon(w, i);
            if h > wall {
                bad.push(format!(
                    "{} took a budget horizon {h} past its wall clock {wall}",
                    s.id()
                ));
            }
        }
        return bad;
    };
    for (_, s) in live() {
        let held = s.node.as_ref().expect("live").records().log_bytes();
        if held > budget {
            bad.push(format!(
                "{} holds {held} B of history, over its {budget} B budget",
                s.id()
            ));
        }
    }
    let greatest = live().map(|(i, _)| budget_horizon(w, i)).max().unwrap_or(0);
    for (i, s) in live() {
        let wall = s.wall_fed_ms.unwrap_or(0);
        let h = budget_horizon(w, i);
        if h < greatest.min(wall.saturating_sub(ADOPT_SLACK_MS)) {
            bad.push(format!(
                "{} has budget horizon {h}, not the cluster's {greatest} (its clock: {wall})",
                s.id()
            ));
        }
    }
    bad
}

/// How far behind its wall clock a node may have last been handed a peer's
/// budget horizon: two anti-entropy rounds.
const ADOPT_SLACK_MS: u64 = 2_000;

/// Whether node `i`'s horizon keeps `r` (registers never expire).
fn kept(r: &Record, horizon: u64) -> bool {
    !matches!(r, Record::Log { .. }) || r.stamp().time_ms >= horizon
}

/// The records invariant: every live node holds exactly the model's records,
/// with the model's digest.
pub(super) fn check(w: &World) -> Verdict {
    let ledger = &w.log.records;
    let alive = |&(i, inc): &(usize, u64)| w.nodes[i].is_live() && w.nodes[i].incarnation == inc;
    let reached = ledger.writes.iter().filter(|x| x.holders.iter().any(alive));
    let lost = ledger.writes.len() - reached.clone().count();
    let survived: Vec<&Record> = reached
        .filter(|x| {
            x.holders
                .iter()
                .any(|h| alive(h) && kept(&x.record, horizon(w, h.0)))
        })
        .map(|x| &x.record)
        .collect();
    let expired = ledger.writes.len() - lost - survived.len();
    let every = [true; BUCKETS];
    let mut bad = budget_violations(w);
    let mut models = BTreeSet::new();
    for (i, s) in w.nodes.iter().enumerate().filter(|(_, s)| s.is_live()) {
        let h = horizon(w, i);
        let expected_records = model(survived.iter().copied().filter(|r| kept(r, h)), ledger.cap);
        let expected: BTreeSet<Canon> = expected_records.iter().map(canon).collect();
        let mut reference = Records::new(ledger.cap);
        for r in &expected_records {
            reference.merge(r);
        }
        models.insert((expected.len(), reference.digest().to_vec()));
        let state = s.node.as_ref().expect("live").records();
        let have: BTreeSet<Canon> = state.bucket_records(&every).iter().map(canon).collect();
        if have != expected {
            let missing: Vec<&Canon> = expected.difference(&have).collect();
            let extra: Vec<&Canon> = have.difference(&expected).collect();
            bad.push(format!(
                "{} lacks {} records, has {} extra (first lacking: {}; first extra: {})",
                s.id(),
                missing.len(),
                extra.len(),
                missing.first().map_or("-".into(), |c| describe(c)),
                extra.first().map_or("-".into(), |c| describe(c)),
            ));
        } else if state.digest() != reference.digest() {
            bad.push(format!(
                "{} holds the model's records but its digest differs from theirs",
                s.id()
            ));
        }
    }
    let detail = if bad.is_empty() {
        let counts: BTreeSet<usize> = models.iter().map(|m| m.0).collect();
        let held = match (counts.first(), counts.last()) {
            (Some(a), Some(b)) if a != b => format!("{a} to {b} records per live node"),
            (Some(a), _) => format!("{a} records on every live node"),
            _ => "no live node".into(),
        };
        let agreed = if models.len() > 1 {
            "differ by the horizons' clock skew, as the models do".into()
        } else {
            format!("agreed {}", agreed_after(w))
        };
        let mut expired = if ledger.ttl_ms.is_some() || ledger.budget.is_some() || expired > 0 {
            format!(", {expired} expired everywhere")
        } else {
            String::new()
        };
        if let Some(budget) = ledger.budget {
            let evicted: u64 = w
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref())
                .map(|n| n.stats().history_budget_evicted)
                .sum();
            let greatest = (0..w.nodes.len())
                .map(|i| budget_horizon(w, i))
                .max()
                .unwrap_or(0);
            expired.push_str(&format!(
                " ({evicted} evictions over the {budget} B budget on live nodes, budget horizon {greatest})"
            ));
        }
        format!(
            "{} writes ({lost} lost with every holder{expired}), {held}; digests {agreed}",
            ledger.writes.len(),
        )
    } else {
        let more = if bad.len() > 1 {
            format!(" (and {} more nodes)", bad.len() - 1)
        } else {
            String::new()
        };
        format!("{}{more}", bad[0])
    };
    Verdict {
        invariant: Invariant::Records,
        pass: bad.is_empty(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_engine::{Command, NodeId};

    use super::*;
    use crate::net::NetConfig;
    use crate::world::NodeTiming;

    fn world(skew: Vec<i64>) -> World {
        let timing = NodeTiming {
            clock_skew_ms: skew,
            ..NodeTiming::default()
        };
        let mut w = World::new(7, NetConfig::default(), timing, Duration::from_millis(100));
        for _ in 0..3 {
            w.add_node();
        }
        w.run_until(Duration::from_millis(1_500));
        w
    }

    fn wait(w: &mut World, ms: u64) {
        let t = w.now() + Duration::from_millis(ms);
        w.run_until(t);
    }

    fn value(w: &World, i: usize, key: &str) -> Option<String> {
        let reader = w.nodes[i].node.as_ref().expect("live").records();
        let value = reader.get("room", key).map(|v| v.to_string());
        value
    }

    #[test]
    fn writes_that_reached_a_survivor_are_required_and_writes_that_died_alone_are_not() {
        let mut w = world(Vec::new());
        w.append(0, "room:0");
        w.put(0, "room", "k", Some("kept"));
        wait(&mut w, 200);
        w.cut_groups(&[vec![0], vec![1, 2]]);
        w.append(0, "room:0");
        w.put(0, "room", "k", None);
        wait(&mut w, 100);
        w.crash(0);
        w.append(1, "room:0");
        wait(&mut w, 3_000);
        let v = check(&w);
        assert!(v.pass, "{}", v.detail);
        assert!(v.detail.starts_with("5 writes (2 lost"), "{}", v.detail);
        assert_eq!(value(&w, 2, "k").as_deref(), Some("kept"));
    }

    #[test]
    fn the_checker_reports_records_a_node_lacks() {
        let mut w = world(Vec::new());
        w.cut_groups(&[vec![0], vec![1, 2]]);
        w.append(0, "room:0");
        wait(&mut w, 500);
        let v = check(&w);
        assert!(!v.pass);
        assert!(v.detail.contains("lacks 1 records"), "{}", v.detail);
        w.heal();
        wait(&mut w, 5_000);
        let v = check(&w);
        assert!(v.pass, "repaired after the heal: {}", v.detail);
    }

    #[test]
    fn the_checker_reports_records_nobody_wrote() {
        let mut w = world(Vec::new());
        w.append(1, "room:0");
        // Behind the ledger's back: the model does not know this entry.
        let forged = Command::Append {
            topic: Topic::new("room:0"),
            time_ms: w.wall_ms(2),
            body: Arc::from("forged"),
        };
        w.command(2, forged);
        wait(&mut w, 2_000);
        let v = check(&w);
        assert!(!v.pass);
        assert!(v.detail.contains("has 1 extra"), "{}", v.detail);
        assert!(v.detail.contains("(and 2 more nodes)"), "{}", v.detail);
    }

    #[test]
    fn a_clock_ahead_wins_concurrent_writes_made_later() {
        let mut w = world(vec![0, 5_000, 0]);
        assert_eq!(w.wall_ms(1), w.wall_ms(0) + 5_000);
        w.cut_groups(&[vec![1], vec![0, 2]]);
        w.put(1, "room", "lobby", Some("ahead"));
        wait(&mut w, 1_000);
        w.put(2, "room", "lobby", Some("later"));
        wait(&mut w, 100);
        w.heal();
        wait(&mut w, 5_000);
        let v = check(&w);
        assert!(v.pass, "{}", v.detail);
        for i in 0..3 {
            assert_eq!(value(&w, i, "lobby").as_deref(), Some("ahead"), "n{i}");
        }
    }

    fn with_ttl(skew: Vec<i64>, ttl_ms: u64) -> World {
        let timing = NodeTiming {
            clock_skew_ms: skew,
            history_ttl: Some(Duration::from_millis(ttl_ms)),
            ..NodeTiming::default()
        };
        let mut w = World::new(7, NetConfig::default(), timing, Duration::from_millis(100));
        for _ in 0..3 {
            w.add_node();
        }
        w.run_until(Duration::from_millis(1_500));
        w
    }

    fn entries(w: &World, i: usize) -> usize {
        let records = w.nodes[i].node.as_ref().expect("live").records();
        records.last("room:0", 100).len()
    }

    #[test]
    fn history_expires_on_each_node_at_its_own_horizon_and_the_checker_follows() {
        // n1's clock is 1.5 s ahead: it drops an entry 1.5 s before the others.
        let mut w = with_ttl(vec![0, 1_500, 0], 3_000);
        w.append(0, "room:0");
        wait(&mut w, 1_000);
        w.append(2, "room:0");
        wait(&mut w, 100);
        assert_eq!((entries(&w, 0), entries(&w, 1)), (2, 2));
        // At 3.5 s: n1's horizon is 2.0 s (between the two entries), the
        // others' 0.5 s.
        wait(&mut w, 900);
        assert_eq!((entries(&w, 0), entries(&w, 1), entries(&w, 2)), (2, 1, 2));
        let v = check(&w);
        assert!(v.pass, "{}", v.detail);
        assert!(
            v.detail.contains("1 to 2 records per live node"),
            "{}",
            v.detail
        );
        // At 5 s: n0's and n2's horizon is 2.0 s, n1's 3.5 s.
        wait(&mut w, 1_500);
        let v = check(&w);
        assert!(v.pass, "{}", v.detail);
        assert!(v.detail.contains("1 expired everywhere"), "{}", v.detail);
        assert_eq!((entries(&w, 0), entries(&w, 1), entries(&w, 2)), (1, 0, 1));
    }

    /// A node cut off while the others trim to the budget keeps the oldest
    /// entry: its own model allows it (its horizon is lower), the budget
    /// check does not. After the heal it adopts the horizon and drops it.
    #[test]
    fn the_checker_reports_a_node_that_missed_the_budget_horizon() {
        let timing = NodeTiming {
            // Three entries of ~59 B do not fit, two do.
            history_budget: Some(150),
            ..NodeTiming::default()
        };
        let mut w = World::new(7, NetConfig::default(), timing, Duration::from_millis(100));
        for _ in 0..3 {
            w.add_node();
        }
        w.run_until(Duration::from_millis(1_500));
        w.append(0, "room:0");
        wait(&mut w, 500);
        assert_eq!(entries(&w, 2), 1);
        w.cut_groups(&[vec![0, 1], vec![2]]);
        w.append(0, "room:1");
        wait(&mut w, 10);
        w.append(0, "room:2");
        wait(&mut w, 2_000);
        assert_eq!(entries(&w, 0), 0, "the oldest went on n0");
        assert_eq!(entries(&w, 2), 1, "n2 did not hear of it");
        let v = check(&w);
        assert!(!v.pass);
        assert!(v.detail.contains("has budget horizon 0"), "{}", v.detail);
        w.heal();
        wait(&mut w, 5_000);
        let v = check(&w);
        assert!(v.pass, "{}", v.detail);
        assert_eq!(entries(&w, 2), 0);
        assert!(v.detail.contains("1 expired everywhere"), "{}", v.detail);
        // Told of a smaller budget than the nodes run with: over it.
        w.log.records.budget = Some(10);
        let v = check(&w);
        assert!(v.detail.contains("over its 10 B budget"), "{}", v.detail);
    }

    #[test]
    fn the_checker_reports_a_node_that_keeps_expired_history() {
        // The nodes keep history forever; the checker is told of a 1 s ttl.
        let mut w = world(Vec::new());
        w.log.records.ttl_ms = Some(1_000);
        w.append(0, "room:0");
        wait(&mut w, 2_000);
        let v = check(&w);
        assert!(!v.pass);
        assert!(v.detail.contains("has 1 extra"), "{}", v.detail);
    }

    #[test]
    fn the_checker_reports_a_node_that_expires_too_early() {
        let mut w = with_ttl(Vec::new(), 10_000);
        w.append(0, "room:0");
        wait(&mut w, 1_000);
        // A wall clock behind the world's back: node 2 drops the entry.
        let future = w.wall_ms(2) + 60_000;
        w.nodes[2]
            .node
            .as_mut()
            .expect("live")
            .handle_wall_clock(future);
        let v = check(&w);
        assert!(!v.pass);
        assert!(v.detail.contains("n2#1 lacks 1 records"), "{}", v.detail);
    }

    fn log(t: u64, seq: u64) -> Record {
        Record::Log {
            topic: Topic::new("room:0"),
            stamp: Stamp {
                time_ms: t,
                origin: NodeId::new("n0", 1),
                seq,
            },
            body: Arc::from(format!("{seq}")),
        }
    }

    fn reg(t: u64, seq: u64, value: Option<&str>) -> Record {
        Record::Reg {
            space: Arc::from("room"),
            key: Arc::from("k0"),
            stamp: Stamp {
                time_ms: t,
                origin: NodeId::new("n1", 1),
                seq,
            },
            value: value.map(Arc::from),
        }
    }

    #[test]
    fn the_model_keeps_the_newest_cap_entries_and_the_greatest_write() {
        let writes = [
            log(5, 1),
            log(1, 2),
            log(9, 3),
            log(7, 4),
            reg(3, 1, Some("a")),
            reg(8, 2, None),
            reg(6, 3, Some("b")),
        ];
        let m: Vec<Canon> = model(writes.iter(), 2).iter().map(canon).collect();
        let want: Vec<Canon> = [log(9, 3), log(7, 4), reg(8, 2, None)]
            .iter()
            .map(canon)
            .collect();
        assert_eq!(m, want);
    }
}
