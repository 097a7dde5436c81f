//! Unit tests of the store: merge, deltas, removals, the novel part.

use super::*;

fn store(name: &str) -> Store<u32> {
    Store::new(NodeId::new(name, 1), 1000)
}

/// A cut that never limits the slices of these tests.
const ANY: Cut = Cut {
    adds: 100,
    bytes: usize::MAX,
};

fn values(s: &Store<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = s.iter().map(|(_, e)| e.value).collect();
    v.sort_unstable();
    v
}

#[test]
fn add_remove_replace_replicate() {
    let mut a = store("a");
    let mut b = store("b");
    let mut ch = Vec::new();
    let (s1, p1) = a.add(10);
    let (_, p2) = a.add(20);
    let (_, _, p3) = a.replace(s1, 11);
    for p in [&p3, &p1, &p2] {
        b.merge(p.clone(), &mut ch);
    }
    assert_eq!(values(&b), vec![11, 20]);
    // The add of dot 1 arrived after its replacement and stayed dead.
    assert_eq!(a.next_op(), 4);
}

#[test]
fn merge_is_idempotent_and_novel_part_shrinks() {
    let mut a = store("a");
    let mut b = store("b");
    let (_, p1) = a.add(1);
    let mut ch = Vec::new();
    assert!(b.merge(p1.clone(), &mut ch).is_some());
    assert_eq!(ch.len(), 1);
    ch.clear();
    assert!(b.merge(p1.clone(), &mut ch).is_none());
    assert!(ch.is_empty());
}

#[test]
fn novel_part_is_what_was_not_known() {
    let mut a = store("a");
    let (s1, p1) = a.add(1);
    let (_, p2) = a.add(2);
    let (_, p3) = a.remove(s1);
    let (_, p4) = a.add(4);
    let mut b = store("b");
    let mut ch = Vec::new();
    b.merge(p1.clone(), &mut ch);
    b.merge(p2.clone(), &mut ch);
    // A group of ops 1-4, of which b knows 1 and 2.
    let group = Delta::join([&p1, &p2, &p3, &p4]).parts.remove(0);
    let novel = b.merge(group, &mut ch).expect("ops 3 and 4 are new");
    assert!(novel.is_well_formed());
    assert_eq!(novel.ops.spans(), &[(3, 4)]);
    assert_eq!(novel.removes, vec![(3, 1)]);
    assert_eq!(novel.adds, vec![(4, 4)]);
    assert_eq!(values(&b), vec![2, 4]);
}

#[test]
fn slice_serves_a_peer_behind_and_full_slice_when_tombs_are_gone() {
    let mut a = Store::new(NodeId::new("a", 1), 2);
    let (s1, _) = a.add(1);
    let (s2, _) = a.add(2);
    let (s3, _) = a.add(3);
    a.remove(s1);
    a.remove(s2);
    a.remove(s3);
    // Only 2 tombstones kept: the floor moved past op 4.
    let part = a.slice(&NodeId::new("a", 1), 0, ANY, |_| 1).remove(0);
    assert!(part.full && part.is_well_formed());
    let mut b = store("b");
    let mut ch = Vec::new();
    let (_, p1) = {
        let mut a2 = Store::new(NodeId::new("a", 1), 10);
        a2.add(1)
    };
    b.merge(p1.clone(), &mut ch);
    assert_eq!(values(&b), vec![1]);
    b.merge(part.clone(), &mut ch);
    assert!(values(&b).is_empty());
    let tail = a.slice(&NodeId::new("a", 1), 5, ANY, |_| 1).remove(0);
    assert!(!tail.full);
    assert_eq!(tail.removes, vec![(6, 3)]);
}

/// Parts are cut at the entry count or the byte limit, whichever comes
/// first; an entry bigger than the limit goes alone; the parts cover every
/// op once, in order, and together carry the whole state.
#[test]
fn slice_cuts_parts_by_count_and_by_bytes() {
    let mut a = store("a");
    let (s1, _) = a.add(4);
    for v in [4, 4, 30, 4, 4, 4] {
        a.add(v);
    }
    a.remove(s1);
    let parts = a.slice(&NodeId::new("a", 1), 0, Cut { adds: 3, bytes: 10 }, |v| {
        *v as usize
    });
    let adds: Vec<Vec<u32>> = parts
        .iter()
        .map(|p| p.adds.iter().map(|(_, v)| *v).collect())
        .collect();
    assert_eq!(adds, [vec![4, 4], vec![30], vec![4, 4], vec![4]]);
    let mut next = 1;
    for part in &parts {
        assert!(part.is_well_formed());
        let spans = part.ops.spans();
        assert_eq!(spans.first().map(|s| s.0), Some(next), "{spans:?}");
        next = spans.last().expect("a span").1 + 1;
    }
    assert_eq!(next, 9, "the parts cover ops 1..=8");
    let mut b = store("b");
    let mut ch = Vec::new();
    for part in parts {
        b.merge(part, &mut ch);
    }
    assert_eq!(values(&b), values(&a));
    let by_count = a.slice(
        &NodeId::new("a", 1),
        0,
        Cut {
            adds: 3,
            bytes: 1000,
        },
        |v| *v as usize,
    );
    assert_eq!(
        by_count.iter().map(|p| p.adds.len()).collect::<Vec<_>>(),
        [3, 3]
    );
}

#[test]
fn removal_that_overtakes_a_replace_leaves_no_zombie() {
    let mut a = store("a");
    let (s1, p1) = a.add(1);
    let (_, s2, p2) = a.replace(s1, 2);
    let (_, p3) = a.remove(s2);
    let mut ch = Vec::new();
    for order in [[&p1, &p3, &p2], [&p3, &p2, &p1], [&p2, &p3, &p1]] {
        let mut b = store("b");
        for p in order {
            b.merge(p.clone(), &mut ch);
        }
        assert!(values(&b).is_empty(), "replaced value came back");
        assert_eq!(b.known(&NodeId::new("a", 1)), 3);
    }
    // Until the replace arrives, op 2 is not known: a peer must still send it.
    let mut b = store("b");
    b.merge(p1.clone(), &mut ch);
    b.merge(p3.clone(), &mut ch);
    assert_eq!(values(&b), vec![1]);
    assert_eq!(b.known(&NodeId::new("a", 1)), 1);
}

#[test]
fn down_before_the_first_delta_still_hides() {
    let mut a = store("a");
    let mut b = store("b");
    let a_id = NodeId::new("a", 1);
    let (_, p1) = a.add(1);
    assert!(b.set_up(&a_id, false).is_empty());
    let mut ch = Vec::new();
    b.merge(p1.clone(), &mut ch);
    assert!(matches!(ch[..], [Change::Added { visible: false, .. }]));
    assert_eq!(b.set_up(&a_id, true).len(), 1);
}

#[test]
fn purge_refuses_later_parts() {
    let mut a = store("a");
    let mut b = store("b");
    let (_, p1) = a.add(1);
    let (_, p2) = a.add(2);
    let mut ch = Vec::new();
    b.merge(p1.clone(), &mut ch);
    b.purge(&NodeId::new("a", 1), &mut ch);
    assert!(b.is_empty());
    assert!(b.merge(p2.clone(), &mut ch).is_none());
    assert!(b.is_empty());
}

#[test]
fn join_drops_adds_killed_in_the_group() {
    let mut a = store("a");
    let (s1, p1) = a.add(1);
    let (_, p2) = a.remove(s1);
    let (_, p3) = a.add(3);
    let d = Delta::join([&p1, &p2, &p3]);
    assert_eq!(d.parts.len(), 1);
    let p = &d.parts[0];
    assert_eq!(p.ops.spans(), &[(1, 3)]);
    assert_eq!(p.adds, vec![(3, 3)]);
    assert_eq!(p.removes, vec![(2, 1)]);
    assert!(p.is_well_formed());
}

#[test]
fn malformed_parts_are_detected() {
    let mut p: Part<u32> = Part::empty(NodeId::new("x", 1));
    p.ops.insert_span(1, 3);
    p.removes.push((2, 5));
    assert!(!p.is_well_formed());
    p.removes.clear();
    p.adds.push((9, 0));
    assert!(!p.is_well_formed());
}
