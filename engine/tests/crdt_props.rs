//! Property tests of the engine's CRDT algebra.
//!
//! Random op sequences run on 2-4 replicas; every op's [`Part`] is then
//! delivered to other replicas in random orders, with duplicates and loss, in
//! random δ-groups built with [`Delta::join`]. Every receiver must end with the
//! view of a reference model computed directly from the op sequence (a plain
//! set of live entries, cross-checked against `crdts::Orswot`), its diffs must
//! replay to its view, and anti-entropy slices must repair any loss.
//!
//! Under `--features broken-merge` (removals ignored) the convergence
//! properties fail: that is how we know they can.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use chorus_engine::Presence;
use chorus_engine::{
    Body, ConnId, DiffItem, Key, Message, Meta, NodeId, PhxRef, PresEntry, PresenceError,
    SubscriberId, Topic,
};
use chorus_engine::{Cut, Delta, Part};
use chorus_engine::{SubChange, Subs, SubsError};
use crdts::{CmRDT, CvRDT, Orswot};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A visible presence row, as [`Presence::view`] lists it.
type Row = (Topic, Key, PhxRef, Meta);

/// An Orswot member: `(topic, key, phx_ref)`.
type OrMember = (String, String, [u8; 12]);

/// One replica's own entries in the model: `(topic, key, conn) -> (ref, meta)`.
type LocalModel = BTreeMap<(u8, u8, u8), (PhxRef, u8)>;

const BIG_TOMB_CAP: usize = 1024;

/// `cases` per property, or `PROPTEST_CASES` for a longer sweep. Failures
/// are saved next to this file (`crdt_props.proptest-regressions`).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        // The deliberately broken build fails on purpose: keep its seeds out.
        failure_persistence: (!cfg!(feature = "broken-merge")).then(|| {
            Box::new(FileFailurePersistence::WithSource("proptest-regressions")) as Box<_>
        }),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- ops ----

/// One local presence call. Small domains so that calls collide: tracking
/// what is tracked, updating and untracking what is not, all happen.
#[derive(Clone, Debug)]
enum PresOp {
    Track { t: u8, k: u8, c: u8, m: u8 },
    Update { t: u8, k: u8, c: u8, m: u8 },
    Untrack { t: u8, k: u8, c: u8 },
    UntrackConn { c: u8 },
}

fn pres_op() -> impl Strategy<Value = PresOp> {
    prop_oneof![
        4 => (0..3u8, 0..2u8, 0..3u8, 0..4u8).prop_map(|(t, k, c, m)| PresOp::Track { t, k, c, m }),
        3 => (0..3u8, 0..2u8, 0..3u8, 0..4u8).prop_map(|(t, k, c, m)| PresOp::Update { t, k, c, m }),
        2 => (0..3u8, 0..2u8, 0..3u8).prop_map(|(t, k, c)| PresOp::Untrack { t, k, c }),
        1 => (0..3u8).prop_map(|c| PresOp::UntrackConn { c }),
    ]
}

/// `(replica count, [(replica, op)])`.
fn pres_history() -> impl Strategy<Value = (usize, Vec<(usize, PresOp)>)> {
    (2usize..=4).prop_flat_map(|n| (Just(n), vec((0..n, pres_op()), 0..60)))
}

fn topic(t: u8) -> Topic {
    Topic::new(format!("room:{t}"))
}

fn key(k: u8) -> Key {
    format!("user{k}").into()
}

fn meta(m: u8) -> Meta {
    Meta::new(format!("{{\"m\":{m}}}"))
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("n{i}"), 1)
}

fn prefix(i: usize) -> [u8; 6] {
    [i as u8 + 1; 6]
}

// -------------------------------------------------------------- model ----

/// A replica of the presence table plus what it reported.
struct PresRx {
    p: Presence,
    diff: Vec<(Topic, DiffItem)>,
    novel: Vec<Part<PresEntry>>,
}

impl PresRx {
    fn new(id: NodeId, prefix: [u8; 6], tomb_cap: usize) -> Self {
        PresRx {
            p: Presence::new(id, prefix, tomb_cap),
            diff: Vec::new(),
            novel: Vec::new(),
        }
    }

    fn merge(&mut self, part: &Part<PresEntry>) {
        if let Some(n) = self.p.merge(part.clone(), &mut self.diff) {
            self.novel.push(n);
        }
    }

    fn merge_all(&mut self, groups: &[Delta<PresEntry>]) {
        for d in groups {
            for part in &d.parts {
                self.merge(part);
            }
        }
    }
}

/// The op sequence run on real replicas, with the reference models.
struct PresHistory {
    ids: Vec<NodeId>,
    authors: Vec<PresRx>,
    /// Every op's part, in the order the ops ran.
    parts: Vec<Part<PresEntry>>,
    /// The model: the live rows of each origin, computed from the ops alone.
    rows: Vec<BTreeSet<Row>>,
    /// The second model: each replica's own `Orswot`, then all merged.
    orswot: Orswot<OrMember, u8>,
}

impl PresHistory {
    fn model(&self) -> BTreeSet<Row> {
        self.rows.iter().flatten().cloned().collect()
    }

    fn model_without(&self, origin: usize) -> BTreeSet<Row> {
        self.rows
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != origin)
            .flat_map(|(_, r)| r.iter().cloned())
            .collect()
    }
}

fn or_member(t: u8, k: u8, r: PhxRef) -> OrMember {
    (topic(t).to_string(), key(k).to_string(), r.0)
}

/// Runs the ops on `n` replicas, checking each call against the model.
fn run_pres(
    n: usize,
    ops: &[(usize, PresOp)],
    tomb_cap: usize,
) -> Result<PresHistory, TestCaseError> {
    let ids: Vec<NodeId> = (0..n).map(node_id).collect();
    let mut authors: Vec<PresRx> = (0..n)
        .map(|i| PresRx::new(ids[i].clone(), prefix(i), tomb_cap))
        .collect();
    // Per replica: (topic, key, conn) -> (phx_ref, meta), and the next op counter.
    let mut local: Vec<LocalModel> = vec![BTreeMap::new(); n];
    let mut next = vec![1u64; n];
    let mut sets: Vec<Orswot<OrMember, u8>> = vec![Orswot::new(); n];
    let mut parts = Vec::new();
    for (i, op) in ops {
        let (i, a, l, set) = (*i, &mut authors[*i], &mut local[*i], &mut sets[*i]);
        let or_add = |set: &mut Orswot<OrMember, u8>, m: OrMember| {
            let ctx = set.read_ctx().derive_add_ctx(i as u8);
            let op = set.add(m, ctx);
            set.apply(op);
        };
        let or_rm = |set: &mut Orswot<OrMember, u8>, m: OrMember| {
            let ctx = set.contains(&m).derive_rm_ctx();
            let op = set.rm(m, ctx);
            set.apply(op);
        };
        match *op {
            PresOp::Track { t, k, c, m } => {
                let got =
                    a.p.track(topic(t), key(k), ConnId(c.into()), meta(m), &mut a.diff);
                match l.entry((t, k, c)) {
                    Entry::Occupied(_) => prop_assert!(
                        matches!(got, Err(PresenceError::AlreadyTracked { .. })),
                        "{:?}",
                        got
                    ),
                    Entry::Vacant(v) => {
                        let want = PhxRef::from_parts(prefix(i), next[i]);
                        next[i] += 1;
                        let (r, part) = got.expect("model says the track succeeds");
                        prop_assert_eq!(r, want);
                        v.insert((r, m));
                        or_add(set, or_member(t, k, r));
                        parts.push(part);
                    }
                }
            }
            PresOp::Update { t, k, c, m } => {
                let got =
                    a.p.update(topic(t), key(k), ConnId(c.into()), meta(m), &mut a.diff);
                match l.get(&(t, k, c)).copied() {
                    None => prop_assert!(
                        matches!(got, Err(PresenceError::NotTracked { .. })),
                        "{:?}",
                        got
                    ),
                    Some((old, _)) => {
                        let want = PhxRef::from_parts(prefix(i), next[i]);
                        next[i] += 1;
                        let (r, part) = got.expect("model says the update succeeds");
                        prop_assert_eq!(r, want);
                        l.insert((t, k, c), (r, m));
                        or_rm(set, or_member(t, k, old));
                        or_add(set, or_member(t, k, r));
                        parts.push(part);
                    }
                }
            }
            PresOp::Untrack { t, k, c } => {
                let got = a.p.untrack(topic(t), key(k), ConnId(c.into()), &mut a.diff);
                match l.remove(&(t, k, c)) {
                    None => prop_assert!(
                        matches!(got, Err(PresenceError::NotTracked { .. })),
                        "{:?}",
                        got
                    ),
                    Some((old, _)) => {
                        next[i] += 1;
                        or_rm(set, or_member(t, k, old));
                        parts.push(got.expect("model says the untrack succeeds"));
                    }
                }
            }
            PresOp::UntrackConn { c } => {
                let got = a.p.untrack_conn(ConnId(c.into()), &mut a.diff);
                let gone: Vec<_> = l
                    .iter()
                    .filter(|((_, _, cc), _)| *cc == c)
                    .map(|(id, v)| (*id, *v))
                    .collect();
                prop_assert_eq!(got.len(), gone.len());
                for ((t, k, c), (old, _)) in gone {
                    l.remove(&(t, k, c));
                    next[i] += 1;
                    or_rm(set, or_member(t, k, old));
                }
                parts.extend(got);
            }
        }
    }
    let rows: Vec<BTreeSet<Row>> = local
        .iter()
        .map(|l| {
            l.iter()
                .map(|(&(t, k, _), &(r, m))| (topic(t), key(k), r, meta(m)))
                .collect()
        })
        .collect();
    for (i, a) in authors.iter().enumerate() {
        prop_assert_eq!(&a.p.view(), &rows[i], "author {} sees its own ops", i);
    }
    let mut orswot = Orswot::new();
    for s in sets {
        orswot.merge(s);
    }
    Ok(PresHistory {
        ids,
        authors,
        parts,
        rows,
        orswot,
    })
}

// ----------------------------------------------------------- delivery ----

/// Delivers `parts` in a random order, each dropped with probability `drop_p`
/// and duplicated with probability `dup_p`, joined into δ-groups of 1-4 parts.
fn schedule<E: Clone>(
    parts: &[Part<E>],
    rng: &mut ChaCha8Rng,
    drop_p: f64,
    dup_p: f64,
) -> Vec<Delta<E>> {
    let mut order: Vec<usize> = Vec::new();
    for i in 0..parts.len() {
        if rng.random_bool(drop_p) {
            continue;
        }
        order.push(i);
        while rng.random_bool(dup_p) {
            order.push(i);
        }
    }
    order.shuffle(rng);
    let mut groups = Vec::new();
    let mut rest = &order[..];
    while !rest.is_empty() {
        let len = rng.random_range(1..=4).min(rest.len());
        groups.push(Delta::join(rest[..len].iter().map(|&i| &parts[i])));
        rest = &rest[len..];
    }
    groups
}

/// Replays a receiver's diffs on an empty table: every join must add a row
/// that was absent, every leave must remove one that was present.
fn replay(diff: &[(Topic, DiffItem)]) -> Result<BTreeSet<Row>, TestCaseError> {
    let mut rows: BTreeMap<(Topic, Key, PhxRef), Meta> = BTreeMap::new();
    for (t, item) in diff {
        match item {
            DiffItem::Join(p) => {
                let old = rows.insert((t.clone(), p.key.clone(), p.phx_ref), p.meta.clone());
                prop_assert!(old.is_none(), "join of a visible meta {:?} {:?}", t, p);
            }
            DiffItem::Leave(p) => {
                let old = rows.remove(&(t.clone(), p.key.clone(), p.phx_ref));
                prop_assert_eq!(old, Some(p.meta.clone()), "leave of an absent meta {:?}", t);
            }
        }
    }
    Ok(rows
        .into_iter()
        .map(|((t, k, r), m)| (t, k, r, m))
        .collect())
}

fn check_honest(rx: &PresRx) -> Result<(), TestCaseError> {
    prop_assert_eq!(&replay(&rx.diff)?, &rx.p.view(), "diffs replay to the view");
    Ok(())
}

/// A strategy for one slicing cut: `adds` entries, `bytes` bytes.
fn cut_by(adds: usize, bytes: usize) -> Just<Cut> {
    Just(Cut { adds, bytes })
}

/// A cut by entry count only.
fn cut_by_adds(adds: usize) -> Cut {
    Cut {
        adds,
        bytes: usize::MAX,
    }
}

/// Brings `rx` up to date with `source` for every origin, with anti-entropy
/// slices cut at `cut` (bytes: each entry's key and meta), delivered in a
/// random order.
fn repair(rx: &mut PresRx, source: &Presence, origins: &[NodeId], cut: Cut, rng: &mut ChaCha8Rng) {
    let size = |e: &PresEntry| e.key.len() + e.meta.as_str().len();
    let mut parts: Vec<Part<PresEntry>> = origins
        .iter()
        .flat_map(|o| source.store().slice(o, rx.p.store().known(o), cut, size))
        .collect();
    parts.shuffle(rng);
    for part in &parts {
        assert!(part.is_well_formed(), "the store sliced a malformed part");
        rx.merge(part);
    }
}

fn observer(name: &str, tomb_cap: usize) -> PresRx {
    PresRx::new(NodeId::new(name, 1), [0xEE; 6], tomb_cap)
}

fn or_view(rows: &BTreeSet<Row>) -> BTreeSet<OrMember> {
    rows.iter()
        .map(|(t, k, r, _)| (t.to_string(), k.to_string(), r.0))
        .collect()
}

// ------------------------------------------------------ presence props ----

proptest! {
    #![proptest_config(config(256))]

    /// Any order, duplicates and grouping give the same view: merge is
    /// commutative, associative and idempotent, and relaying novel sub-parts
    /// loses nothing.
    #[test]
    fn presence_converges_under_any_delivery((n, ops) in pres_history(), seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = run_pres(n, &ops, BIG_TOMB_CAP)?;
        let model = h.model();
        let orswot: BTreeSet<OrMember> = h.orswot.read().val.into_iter().collect();
        prop_assert_eq!(&orswot, &or_view(&model), "both models agree");

        let PresHistory { authors, parts, ids, .. } = h;
        let mut rxs = authors;
        rxs.push(observer("obs", BIG_TOMB_CAP));
        for rx in &mut rxs {
            // Own parts included: a node must ignore its own ops coming back.
            let groups = schedule(&parts, &mut rng, 0.0, 0.3);
            rx.merge_all(&groups);
            prop_assert_eq!(&rx.p.view(), &model);
            check_honest(rx)?;
        }

        // A node that only hears the observer's relays converges too.
        let obs = rxs.last().expect("observer");
        let mut relay = observer("relay", BIG_TOMB_CAP);
        let groups = schedule(&obs.novel, &mut rng, 0.0, 0.3);
        relay.merge_all(&groups);
        prop_assert_eq!(&relay.p.view(), &model, "relayed novel parts carry everything");
        check_honest(&relay)?;
        for part in &obs.novel {
            prop_assert!(part.is_well_formed(), "novel part {:?}", part);
        }

        // Redelivery changes nothing and relays nothing.
        let obs = rxs.last_mut().expect("observer");
        let (diffs, novels) = (obs.diff.len(), obs.novel.len());
        let groups = schedule(&parts, &mut rng, 0.0, 0.0);
        obs.merge_all(&groups);
        prop_assert_eq!(&obs.p.view(), &model);
        prop_assert_eq!(obs.diff.len(), diffs, "a duplicate makes no diff");
        prop_assert_eq!(obs.novel.len(), novels, "a duplicate is not relayed");
        let known = |rx: &PresRx| ids.iter().map(|id| rx.p.store().known(id)).collect::<Vec<_>>();
        prop_assert_eq!(known(&rxs[0]), known(rxs.last().expect("observer")));
    }

    /// `Delta::join` itself is a semilattice: grouping and order of the parts
    /// do not change the joined delta, and joining twice changes nothing.
    #[test]
    fn delta_join_is_a_semilattice(
        (n, ops) in pres_history(),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = run_pres(n, &ops, BIG_TOMB_CAP)?;
        let pick = |rng: &mut ChaCha8Rng| -> Vec<&Part<PresEntry>> {
            h.parts.iter().filter(|_| rng.random_bool(0.5)).collect()
        };
        let (a, b, c) = (pick(&mut rng), pick(&mut rng), pick(&mut rng));
        let abc = Delta::join(a.iter().chain(&b).chain(&c).copied());
        let ab = Delta::join(a.iter().chain(&b).copied());
        let bc = Delta::join(b.iter().chain(&c).copied());
        prop_assert_eq!(&Delta::join(ab.parts.iter().chain(c.iter().copied())), &abc);
        prop_assert_eq!(&Delta::join(a.iter().copied().chain(&bc.parts)), &abc);
        prop_assert_eq!(&Delta::join(c.iter().chain(&b).chain(&a).copied()), &abc);
        prop_assert_eq!(&Delta::join(abc.parts.iter().chain(&abc.parts)), &abc);
        for p in &abc.parts {
            prop_assert!(p.is_well_formed());
        }

        // Merging the joined group equals merging the three groups, any order.
        let mut one = observer("one", BIG_TOMB_CAP);
        one.merge_all(&[abc]);
        let mut three = observer("three", BIG_TOMB_CAP);
        three.merge_all(&[Delta::join(c), Delta::join(a), Delta::join(b)]);
        prop_assert_eq!(one.p.view(), three.p.view());
        check_honest(&one)?;
        check_honest(&three)?;
    }

    /// Whatever was lost, one round of anti-entropy slices from the origins
    /// (or from a node already repaired) restores the model. Tiny tombstone
    /// caps force full slices, small cuts (by count or by bytes) split slices.
    #[test]
    fn anti_entropy_repairs_any_loss(
        (n, ops) in pres_history(),
        seed in any::<u64>(),
        drop_p in 0.0..0.9f64,
        tiny_tombs in any::<bool>(),
        chunk in prop_oneof![cut_by(1, usize::MAX), cut_by(2, usize::MAX), cut_by(3, usize::MAX),
            cut_by(usize::MAX, 1), cut_by(usize::MAX, 12), cut_by(usize::MAX, usize::MAX)],
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cap = if tiny_tombs { 1 } else { BIG_TOMB_CAP };
        let h = run_pres(n, &ops, cap)?;
        let model = h.model();
        let PresHistory { authors, parts, ids, .. } = h;
        let mut rxs = authors;
        rxs.push(observer("obs", cap));
        rxs.push(observer("obs2", cap));
        for rx in &mut rxs {
            let groups = schedule(&parts, &mut rng, drop_p, 0.1);
            rx.merge_all(&groups);
            check_honest(rx)?;
        }
        // The observer is repaired from the origins themselves...
        let (authors, observers) = rxs.split_at_mut(n);
        for (i, id) in ids.iter().enumerate() {
            repair(&mut observers[0], &authors[i].p, std::slice::from_ref(id), chunk, &mut rng);
        }
        prop_assert_eq!(&observers[0].p.view(), &model, "repaired from the origins");
        // ...the others from the observer, a third party with its own tombstones.
        let (first, rest) = observers.split_at_mut(1);
        repair(&mut rest[0], &first[0].p, &ids, chunk, &mut rng);
        for rx in authors.iter_mut() {
            repair(rx, &first[0].p, &ids, chunk, &mut rng);
        }
        for rx in &rxs {
            prop_assert_eq!(&rx.p.view(), &model);
            check_honest(rx)?;
        }
    }

    /// Down hides a node's entries, up shows them again, purge drops them for
    /// good: later parts of the purged incarnation are refused until revived.
    #[test]
    fn down_up_and_purge(
        (n, ops) in pres_history(),
        seed in any::<u64>(),
        victim in 0..4usize,
        cut in 0.0..1.0f64,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = run_pres(n, &ops, BIG_TOMB_CAP)?;
        let victim = victim % n;
        let vid = h.ids[victim].clone();
        let model = h.model();
        let without = h.model_without(victim);
        let mut groups = schedule(&h.parts, &mut rng, 0.0, 0.2);
        let later = groups.split_off((groups.len() as f64 * cut) as usize);

        // Down between the two halves: what arrives while down stays hidden.
        let mut rx = observer("obs", BIG_TOMB_CAP);
        rx.merge_all(&groups);
        rx.p.set_up(&vid, false, &mut rx.diff);
        rx.merge_all(&later);
        prop_assert_eq!(&rx.p.view(), &without, "down hides");
        prop_assert_eq!(rx.p.store().len(), model.len(), "down keeps the entries");
        check_honest(&rx)?;
        rx.p.set_up(&vid, true, &mut rx.diff);
        prop_assert_eq!(&rx.p.view(), &model, "up shows again");
        check_honest(&rx)?;

        // Purge between the two halves: no zombie from what arrives later.
        let mut rx = observer("obs", BIG_TOMB_CAP);
        rx.merge_all(&groups);
        rx.p.set_up(&vid, false, &mut rx.diff);
        rx.p.purge(&vid, &mut rx.diff);
        rx.merge_all(&later);
        rx.merge_all(&groups);
        for part in h.authors[victim].p.store().slice(&vid, 0, cut_by_adds(2), |_| 0) {
            rx.merge(&part);
        }
        prop_assert_eq!(&rx.p.view(), &without, "purged entries never come back");
        prop_assert!(rx.p.store().slots_of(&vid).is_empty());
        prop_assert!(rx.p.store().is_purged(&vid));
        check_honest(&rx)?;

        // Purge while up, then revive: the incarnation's deltas count again.
        let mut rx = observer("obs", BIG_TOMB_CAP);
        rx.merge_all(&groups);
        rx.p.purge(&vid, &mut rx.diff);
        prop_assert!(rx.p.view().iter().all(|(_, _, r, _)| r.0[..6] != prefix(victim)));
        check_honest(&rx)?;
        rx.p.revive(&vid);
        rx.merge_all(&later);
        rx.merge_all(&groups);
        prop_assert_eq!(&rx.p.view(), &model, "revived");
        check_honest(&rx)?;
    }
}

// ---------------------------------------------------------- subs props ----

#[derive(Clone, Debug)]
enum SubOp {
    Subscribe { t: u8, s: u8 },
    Unsubscribe { t: u8, s: u8 },
}

fn sub_history() -> impl Strategy<Value = (usize, Vec<(usize, SubOp)>)> {
    let op = prop_oneof![
        (0..3u8, 0..3u8).prop_map(|(t, s)| SubOp::Subscribe { t, s }),
        (0..3u8, 0..3u8).prop_map(|(t, s)| SubOp::Unsubscribe { t, s }),
    ];
    (2usize..=4).prop_flat_map(move |n| (Just(n), vec((0..n, op.clone()), 0..60)))
}

fn merge_subs(rx: &mut Subs, groups: &[Delta<Topic>]) {
    for d in groups {
        for p in &d.parts {
            rx.merge(p.clone());
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// The subscription table converges to its model under any delivery, and
    /// anti-entropy repairs any loss.
    #[test]
    fn subs_converge_and_repair(
        (n, ops) in sub_history(),
        seed in any::<u64>(),
        drop_p in 0.0..0.9f64,
        tiny_tombs in any::<bool>(),
        chunk in prop_oneof![cut_by(1, usize::MAX), cut_by(2, usize::MAX),
            cut_by(usize::MAX, 8), cut_by(usize::MAX, usize::MAX)],
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cap = if tiny_tombs { 1 } else { BIG_TOMB_CAP };
        let ids: Vec<NodeId> = (0..n).map(node_id).collect();
        let mut subs: Vec<Subs> = ids.iter().map(|id| Subs::new(id.clone(), cap)).collect();
        let mut local: Vec<BTreeMap<u8, BTreeSet<u8>>> = vec![BTreeMap::new(); n];
        let mut parts = Vec::new();
        for (i, op) in &ops {
            let (s, l) = (&mut subs[*i], &mut local[*i]);
            match *op {
                SubOp::Subscribe { t, s: sub } => {
                    let got = s.subscribe(topic(t), SubscriberId(sub.into()));
                    let set = l.entry(t).or_default();
                    let first = set.is_empty();
                    if !set.insert(sub) {
                        prop_assert!(matches!(got, Err(SubsError::AlreadySubscribed(_))));
                    } else if first {
                        let Ok(SubChange::Replicate(p)) = got else {
                            return Err(TestCaseError::fail("first subscriber replicates"));
                        };
                        parts.push(p);
                    } else {
                        prop_assert!(matches!(got, Ok(SubChange::None)));
                    }
                }
                SubOp::Unsubscribe { t, s: sub } => {
                    let got = s.unsubscribe(&topic(t), SubscriberId(sub.into()));
                    let set = l.entry(t).or_default();
                    if !set.remove(&sub) {
                        prop_assert!(matches!(got, Err(SubsError::NotSubscribed(_))));
                    } else if set.is_empty() {
                        let Ok(SubChange::Replicate(p)) = got else {
                            return Err(TestCaseError::fail("last subscriber replicates"));
                        };
                        parts.push(p);
                    } else {
                        prop_assert!(matches!(got, Ok(SubChange::None)));
                    }
                }
            }
        }
        let model: BTreeSet<(Topic, NodeId)> = local
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(move |(t, _)| (topic(*t), node_id(i)))
            })
            .collect();

        // Lossless, any order, duplicates, δ-groups.
        let mut rxs: Vec<Subs> = subs;
        rxs.push(Subs::new(NodeId::new("obs", 1), cap));
        for rx in &mut rxs {
            let groups = schedule(&parts, &mut rng, 0.0, 0.3);
            merge_subs(rx, &groups);
            prop_assert_eq!(&rx.view(), &model);
        }

        // Lossy, then repaired from the origins.
        let mut lossy = Subs::new(NodeId::new("lossy", 1), cap);
        let groups = schedule(&parts, &mut rng, drop_p, 0.1);
        merge_subs(&mut lossy, &groups);
        let mut fixes: Vec<Part<Topic>> = ids
            .iter()
            .enumerate()
            .flat_map(|(i, id)| {
                rxs[i]
                    .store()
                    .slice(id, lossy.store().known(id), chunk, |t| t.as_str().len())
            })
            .collect();
        fixes.shuffle(&mut rng);
        for p in &fixes {
            prop_assert!(p.is_well_formed());
            lossy.merge(p.clone());
        }
        prop_assert_eq!(&lossy.view(), &model, "repaired");
        for t in 0..3 {
            let want: Vec<&NodeId> = model.iter().filter(|(tt, _)| *tt == topic(t)).map(|(_, n)| n).collect();
            prop_assert_eq!(lossy.nodes_for(&topic(t)).collect::<Vec<_>>(), want);
        }
    }
}

// --------------------------------------------------------------- codec ----

fn addr() -> SocketAddr {
    "10.0.0.1:7400".parse().expect("literal address")
}

proptest! {
    #![proptest_config(config(2048))]

    /// Arbitrary bytes never panic the decoder (with and without a valid
    /// version byte in front, so the body decoder is reached too).
    #[test]
    fn decode_arbitrary_bytes_never_panics(
        mut bytes in vec(any::<u8>(), 0..512),
        versioned in any::<bool>(),
    ) {
        if versioned {
            bytes.insert(0, chorus_engine::WIRE_VERSION);
        }
        let _ = Message::decode(&bytes);
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Real deltas and repairs round-trip through the codec, and corrupting
    /// their bytes gives errors, never panics.
    #[test]
    fn delta_messages_round_trip(
        (n, ops) in pres_history(),
        seed in any::<u64>(),
        seq in any::<u64>(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = run_pres(n, &ops, 2)?;
        let mut subs = Subs::new(node_id(0), 2);
        let mut sub_parts = Vec::new();
        for t in 0..3 {
            if let Ok(SubChange::Replicate(p)) = subs.subscribe(topic(t), SubscriberId(1)) {
                sub_parts.push(p);
            }
        }
        if let Ok(SubChange::Replicate(p)) = subs.unsubscribe(&topic(1), SubscriberId(1)) {
            sub_parts.push(p);
        }
        let chosen: Vec<&Part<PresEntry>> =
            h.parts.iter().filter(|_| rng.random_bool(0.7)).collect();
        let delta = Message {
            from: node_id(0),
            addr: addr(),
            body: Body::Delta {
                start: seq / 2,
                seq,
                presence: Delta::join(chosen),
                subs: Delta::join(&sub_parts),
            },
        };
        // A repair carries one slice part per origin, full ones included.
        let repair = Message {
            from: node_id(1),
            addr: addr(),
            body: Body::Repair {
                presence: Delta {
                    parts: h
                        .ids
                        .iter()
                        .enumerate()
                        .filter_map(|(i, id)| h.authors[i].p.store().slice(id, 0, cut_by_adds(3), |_| 0).into_iter().next())
                        .collect(),
                },
                subs: Delta { parts: subs.store().slice(&node_id(0), 0, cut_by_adds(8), |_| 0) },
                seq: 3,
            },
        };
        for msg in [delta, repair] {
            let bytes = msg.encode();
            prop_assert_eq!(bytes.len(), msg.encoded_len());
            let back = Message::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &msg);
            let mut bad = bytes.clone();
            for (i, b) in &flips {
                let i = i.index(bad.len());
                bad[i] ^= b | 1;
            }
            let _ = Message::decode(&bad);
            let _ = Message::decode(&bytes[..bytes.len() / 2]);
        }
    }
}

// --------------------------------------------------------- large spans ----

/// Spans of more than 65,536 ops (a δ-group after a burst or a partition, a
/// split slice with much churn) must obey the same laws as small ones.
mod large_spans {
    use super::*;
    use chorus_engine::Store;

    const CHURN: u64 = 70_000;

    fn dots(s: &Store<u64>) -> BTreeSet<u64> {
        s.iter().map(|(_, slot)| slot.dot).collect()
    }

    /// B knows op 1 and the last op, then gets everything between as one
    /// δ-group and relays what was new to it. C, which also had the last op,
    /// must not lose it: the relayed part may only describe ops B lacked.
    #[test]
    fn relay_of_a_huge_group_keeps_what_the_next_node_had() {
        let a_id = NodeId::new("a", 1);
        let mut a = Store::new(a_id, BIG_TOMB_CAP);
        let parts: Vec<Part<u64>> = (1..=CHURN).map(|i| a.add(i).1).collect();
        let mut b = Store::new(NodeId::new("b", 1), BIG_TOMB_CAP);
        let mut c = Store::new(NodeId::new("c", 1), BIG_TOMB_CAP);
        let mut ch = Vec::new();
        let last = parts.last().expect("ops");
        b.merge(last.clone(), &mut ch);
        c.merge(last.clone(), &mut ch);
        b.merge(parts[0].clone(), &mut ch);
        let group = Delta::join(&parts[1..]);
        let novel = b
            .merge(group.parts[0].clone(), &mut ch)
            .expect("B learned ops");
        c.merge(novel.clone(), &mut ch);
        assert_eq!(dots(&b).len() as u64, CHURN, "B has every op");
        let want: BTreeSet<u64> = (2..=CHURN).collect();
        let got = dots(&c);
        let lost: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            lost.is_empty() && extra.is_empty(),
            "C lost {lost:?}, gained {extra:?}"
        );
        assert!(novel.is_well_formed());
        assert!(!novel.ops.contains(CHURN), "B knew op {CHURN} already");
    }

    /// A full slice split in two arrives second half first, then a stale add
    /// of a dot that the second half declares dead: the dead dot must stay
    /// dead whatever the order.
    #[test]
    fn split_full_slice_out_of_order_leaves_no_zombie() {
        let a_id = NodeId::new("a", 1);
        let mut a = Store::new(a_id.clone(), 1);
        a.add(0);
        let (s, stale) = a.add(1);
        a.remove(s);
        for i in 0..CHURN / 2 {
            let (s, _) = a.add(i);
            a.remove(s);
        }
        a.add(7);
        let want = dots(&a);
        let slice = a.slice(&a_id, 0, cut_by_adds(1), |_| 0);
        assert!(slice.len() == 2 && slice.iter().all(|p| p.full));
        let mut ch = Vec::new();
        let mut in_order = Store::new(NodeId::new("b", 1), BIG_TOMB_CAP);
        for p in [&slice[0], &slice[1], &stale] {
            in_order.merge(p.clone(), &mut ch);
        }
        let mut reordered = Store::new(NodeId::new("c", 1), BIG_TOMB_CAP);
        for p in [&slice[1], &stale, &slice[0]] {
            reordered.merge(p.clone(), &mut ch);
        }
        assert_eq!(dots(&in_order), want);
        assert_eq!(dots(&reordered), want, "stale add came back to life");
        assert_eq!(
            reordered.known(&a_id),
            a.known(&a_id),
            "nothing left to repair"
        );
    }
}

// ------------------------------------------------------ hostile parts ----

/// A well-formed part as a peer could send it: anything the codec lets
/// through, not only what a correct replica makes.
fn hostile_part(origin: usize) -> impl Strategy<Value = Part<PresEntry>> {
    (
        vec((1..24u64, 0..3u64), 1..4),
        vec((any::<bool>(), 0..3u8, 0..2u8), 0..24),
        vec((1..24u64, 1..24u64), 0..6),
    )
        .prop_map(move |(spans, adds, removes)| {
            let mut ops = chorus_engine::Ranges::new();
            for (lo, len) in spans {
                ops.insert_span(lo, lo + len);
            }
            let adds: Vec<(u64, PresEntry)> = adds
                .into_iter()
                .enumerate()
                .filter(|(i, (keep, _, _))| *keep && ops.contains(*i as u64 + 1))
                .map(|(i, (_, t, k))| {
                    let dot = i as u64 + 1;
                    let entry = PresEntry {
                        topic: topic(t),
                        key: key(k),
                        conn: ConnId(dot),
                        meta: meta(0),
                        phx_ref: PhxRef::from_parts(prefix(origin), dot),
                        prev_ref: None,
                    };
                    (dot, entry)
                })
                .collect();
            let mut rm: BTreeMap<u64, u64> = BTreeMap::new();
            for (n, k) in removes {
                if k < n && ops.contains(n) {
                    rm.insert(n, k);
                }
            }
            Part {
                origin: node_id(origin),
                ops,
                adds,
                removes: rm.into_iter().collect(),
                full: false,
            }
        })
}

proptest! {
    #![proptest_config(config(512))]

    /// Whatever well-formed parts arrive (an add and its removal in one part,
    /// a dot re-added with another value, overlapping spans), merging never
    /// panics and the diffs still replay to the view.
    #[test]
    fn hostile_parts_never_panic_and_diffs_stay_honest(
        parts in vec((0..2usize).prop_flat_map(hostile_part), 1..12),
        down in any::<bool>(),
    ) {
        let mut rx = observer("obs", 4);
        for (i, part) in parts.iter().enumerate() {
            prop_assert!(part.is_well_formed());
            if down && i == parts.len() / 2 {
                rx.p.set_up(&node_id(0), false, &mut rx.diff);
            }
            rx.merge(part);
            check_honest(&rx)?;
        }
        rx.p.set_up(&node_id(0), true, &mut rx.diff);
        check_honest(&rx)?;
        rx.p.purge(&node_id(1), &mut rx.diff);
        check_honest(&rx)?;
    }
}
