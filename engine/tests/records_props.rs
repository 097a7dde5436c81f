//! Property tests of the replicated records (history logs, registers).
//!
//! Random writes by a few writers are delivered to replicas as random subsets,
//! in random orders, duplicated. Every replica must hold exactly what a model
//! computed from the writes it received says (the newest `cap` log entries per
//! topic, the greatest-stamped write per register), replicas that received the
//! same writes must agree in state and digest whatever the order, and one
//! bucket-repair exchange must bring any two replicas to the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chorus_engine::BUCKETS;
use chorus_engine::{NodeId, Record, Records, Stamp, Topic};
use proptest::collection::vec;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CAP: usize = 4;

/// One write: `(writer, time, is_log, topic_or_key, value)`; value 0 on a
/// register is a removal.
type Write = (u8, u8, bool, u8, u8);

fn writes() -> impl Strategy<Value = Vec<Write>> {
    vec((0u8..3, 0u8..20, any::<bool>(), 0u8..3, 0u8..4), 0..40)
}

/// Stamps every write as its writer would: per-writer counters.
fn records(writes: &[Write]) -> Vec<Record> {
    let mut seqs = [0u64; 3];
    writes
        .iter()
        .map(|&(w, t, is_log, k, v)| {
            seqs[w as usize] += 1;
            let stamp = Stamp {
                time_ms: u64::from(t),
                origin: NodeId::new(format!("n{w}"), 1),
                seq: seqs[w as usize],
            };
            if is_log {
                Record::Log {
                    topic: Topic::new(format!("room:{k}")),
                    stamp,
                    body: Arc::from(format!("m{v}")),
                }
            } else {
                Record::Reg {
                    space: Arc::from("room"),
                    key: Arc::from(format!("k{k}")),
                    stamp,
                    value: (v != 0).then(|| Arc::from(format!("v{v}"))),
                }
            }
        })
        .collect()
}

type RecordsView = (
    BTreeMap<String, Vec<(Stamp, String)>>,
    BTreeMap<String, String>,
);

/// What a replica that received `got` must show.
fn model(got: &[Record]) -> RecordsView {
    let mut logs: BTreeMap<String, BTreeSet<(Stamp, String)>> = BTreeMap::new();
    let mut regs: BTreeMap<String, (Stamp, Option<String>)> = BTreeMap::new();
    for r in got {
        match r {
            Record::Log { topic, stamp, body } => {
                logs.entry(topic.to_string())
                    .or_default()
                    .insert((stamp.clone(), body.to_string()));
            }
            Record::Reg {
                key, stamp, value, ..
            } => {
                let cur = regs.entry(key.to_string()).or_insert((stamp.clone(), None));
                if *stamp >= cur.0 {
                    *cur = (stamp.clone(), value.as_ref().map(|v| v.to_string()));
                }
            }
        }
    }
    let logs = logs
        .into_iter()
        .map(|(t, set)| {
            let all: Vec<_> = set.into_iter().collect();
            let keep = all[all.len().saturating_sub(CAP)..].to_vec();
            (t, keep)
        })
        .collect();
    let regs = regs
        .into_iter()
        .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
        .collect();
    (logs, regs)
}

fn view(r: &Records) -> RecordsView {
    let logs = (0..3)
        .map(|k| format!("room:{k}"))
        .map(|t| {
            let entries: Vec<_> = r
                .last(&t, usize::MAX)
                .into_iter()
                .map(|(s, b)| (s, b.to_string()))
                .collect();
            (t, entries)
        })
        .filter(|(_, e)| !e.is_empty())
        .collect();
    let regs = r
        .scan("room", "")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (logs, regs)
}

fn replica(got: &[Record]) -> Records {
    let mut r = Records::new(CAP);
    for rec in got {
        r.merge(rec);
    }
    r
}

/// Ships `from`'s records of the buckets where the two differ into `to`.
fn repair(from: &Records, to: &mut Records) {
    let differ: Vec<bool> = from
        .digest()
        .iter()
        .zip(to.digest())
        .map(|(a, b)| a != b)
        .collect();
    for rec in from.bucket_records(&differ) {
        to.merge(&rec);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any subset, any order, duplicates: the replica shows the model of what
    /// it received, and the same writes in another order give the same state.
    #[test]
    fn records_converge_under_any_delivery(ws in writes(), seed in any::<u64>()) {
        let all = records(&ws);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut got: Vec<Record> = all.iter().filter(|_| rng.random_bool(0.7)).cloned().collect();
        let dups: Vec<Record> = got.iter().filter(|_| rng.random_bool(0.3)).cloned().collect();
        got.extend(dups);
        got.shuffle(&mut rng);
        let a = replica(&got);
        prop_assert_eq!(view(&a), model(&got));
        got.shuffle(&mut rng);
        let b = replica(&got);
        prop_assert_eq!(view(&b), view(&a));
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.digest().len(), BUCKETS);
    }

    /// Two replicas that each missed different writes agree after one repair
    /// in each direction, and hold the model of all writes.
    #[test]
    fn one_bucket_exchange_repairs_any_loss(ws in writes(), seed in any::<u64>()) {
        let all = records(&ws);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (x, y): (Vec<Record>, Vec<Record>) = all.iter().cloned().partition(|_| rng.random_bool(0.5));
        let mut a = replica(&x);
        let mut b = replica(&y);
        repair(&a, &mut b);
        repair(&b, &mut a);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(view(&a), view(&b));
        prop_assert_eq!(view(&a), model(&all));
    }
}
