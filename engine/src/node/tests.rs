//! The node at its peer boundary: what an authenticated but wrong peer can
//! send must never panic it, nor let it believe a lie about who is speaking.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::*;
use crate::id::{ConnId, Meta, SubscriberId};
use crate::membership::{Swim, Update, UpdateKind};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400 + i))
}

fn node(name: &str, inc: u64, i: u16, now: Instant) -> Node {
    let mut cfg = NodeConfig::lan(NodeId::new(name, inc), addr(i));
    cfg.rng_seed = u64::from(i);
    Node::new(cfg, now)
}

fn track(n: &mut Node, now: Instant, key: &str) {
    n.handle_command(
        now,
        Command::Track {
            topic: Topic::new("room:1"),
            key: key.into(),
            conn: ConnId(1),
            meta: Meta::new("{}"),
        },
    )
    .expect("tracked");
}

fn msg(from: &NodeId, i: u16, body: Body) -> Message {
    Message {
        from: from.clone(),
        addr: addr(i),
        body,
    }
}

/// Two processes started with the same `--node`: the newer one's hello
/// reached `forget(self)` and the store's `assert_ne!` on the older.
#[test]
fn a_newer_incarnation_of_our_own_name_does_not_panic() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    track(&mut a, now, "alice");
    let twin = NodeId::new("n1", 2);
    a.handle_message(now, &twin, msg(&twin, 2, Body::Hello { full: false }));
}

/// A peer's SWIM update accusing us at incarnation `u64::MAX`: refuting it
/// computed `u.inc + 1`.
#[test]
fn an_accusation_at_the_last_incarnation_does_not_overflow() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    let b = NodeId::new("n2", 1);
    let ping = Swim::Ping {
        seq: 1,
        target: a.id().clone(),
        gossip: vec![Update {
            node: a.id().clone(),
            addr: addr(1),
            inc: u64::MAX,
            kind: UpdateKind::Suspect { by: b.clone() },
        }],
    };
    a.handle_message(now, &b, msg(&b, 2, Body::Swim(ping)));
}

/// Delivers every transmit by address, through the codec, until quiet or
/// `rounds` timer rounds passed; `nodes[i]` listens on `addr(i)`.
fn pump(nodes: &mut [Option<Node>], now: &mut Instant, rounds: usize) -> Vec<(usize, Event)> {
    let mut events = Vec::new();
    for _ in 0..rounds {
        let mut moved = true;
        while moved {
            moved = false;
            for i in 0..nodes.len() {
                let Some(n) = nodes[i].as_mut() else { continue };
                let mut out = Vec::new();
                while let Some(t) = n.poll_transmit() {
                    out.push(t);
                }
                while let Some(e) = n.poll_event() {
                    events.push((i, e));
                }
                for t in out {
                    let to = usize::from(t.addr.port() - 7400);
                    let m = Message::decode(&t.msg.encode()).expect("honest frames decode");
                    if let Some(Some(dst)) = nodes.get_mut(to) {
                        let from = m.from.clone();
                        dst.handle_message(*now, &from, m);
                        moved = true;
                    }
                }
            }
        }
        *now += std::time::Duration::from_millis(100);
        for n in nodes.iter_mut().flatten() {
            n.handle_timeout(*now);
        }
    }
    events
}

/// Same `--node` twice: the older process stops with a `NameClash` naming
/// the newer one, and the cluster keeps the newer one's entries only.
#[test]
fn the_older_of_two_processes_with_one_name_stops() {
    let mut now = Instant::now();
    let mut seed = node("n0", 1, 0, now);
    let mut old = node("n1", 1, 1, now);
    track(&mut old, now, "old");
    let mut cfg = NodeConfig::lan(NodeId::new("n1", 2), addr(2));
    cfg.seeds = vec![addr(0)];
    cfg.rng_seed = 2;
    let mut new = Node::new(cfg, now);
    track(&mut new, now, "new");
    // The old one joined first.
    seed.handle_message(
        now,
        &old.id().clone(),
        msg(old.id(), 1, Body::Hello { full: true }),
    );
    let mut nodes = [Some(seed), Some(old), None];
    pump(&mut nodes, &mut now, 5);
    nodes[2] = Some(new);
    let events = pump(&mut nodes, &mut now, 60);
    let clashes: Vec<_> = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::NameClash(_)))
        .collect();
    assert_eq!(
        clashes,
        [&(1, Event::NameClash(NodeId::new("n1", 2)))],
        "the older process, and only it, stops once"
    );
    let keys = |n: &Node| -> Vec<String> {
        n.list(&Topic::new("room:1"))
            .iter()
            .map(|i| i.key.to_string())
            .collect()
    };
    let [Some(seed), Some(old), Some(new)] = &nodes else {
        unreachable!()
    };
    assert_eq!(
        keys(seed),
        ["new"],
        "the cluster shows the newer one's entries"
    );
    assert_eq!(keys(new), ["new"]);
    assert!(old.poll_timeout().is_none(), "the older node stopped");
    let names: Vec<NodeId> = seed.members().into_iter().map(|m| m.0).collect();
    assert_eq!(names, [NodeId::new("n1", 2)]);
}

/// A peer that lies about a newer incarnation of our name (in a member
/// list) does not stop us: we only greet it.
#[test]
fn a_newer_twin_named_second_hand_is_greeted_not_believed() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    while a.poll_transmit().is_some() {}
    let b = NodeId::new("n2", 1);
    let ghost = NodeId::new("n1", 9);
    a.handle_message(
        now,
        &b,
        msg(&b, 2, Body::Members(vec![(ghost.clone(), addr(9))])),
    );
    let mut hellos = Vec::new();
    while let Some(t) = a.poll_transmit() {
        if matches!(t.msg.body, Body::Hello { .. }) {
            hellos.push(t.to);
        }
    }
    assert!(hellos.contains(&Some(ghost)));
    assert!(a.poll_timeout().is_some(), "still running");
    while let Some(e) = a.poll_event() {
        assert!(!matches!(e, Event::NameClash(_)));
    }
}

/// A delta from `relay` carrying one entry owned by `origin`, as a peer
/// relays (or forges) it.
fn relayed_entry(origin: &NodeId, key: &str) -> Body {
    let mut p = crate::presence::Presence::new(origin.clone(), [9; 6], 16);
    let (_, part) = p
        .track(
            Topic::new("room:1"),
            key.into(),
            ConnId(1),
            Meta::new("{}"),
            &mut Vec::new(),
        )
        .expect("tracked");
    Body::Delta {
        start: 0,
        seq: 1,
        presence: crate::store::Delta { parts: vec![part] },
        subs: crate::store::Delta::default(),
    }
}

/// A peer relays an entry under a future incarnation of an honest member:
/// the member was purged and its real incarnation refused until the fake one
/// expired. Now a newer incarnation is believed only from itself.
#[test]
fn a_future_incarnation_relayed_by_a_peer_is_not_believed() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    let b = NodeId::new("n2", 1);
    let h = NodeId::new("h", 1);
    a.handle_message(now, &b, msg(&b, 2, relayed_entry(&b, "bob")));
    a.handle_message(now, &h, msg(&h, 3, Body::Hello { full: false }));
    let fake = NodeId::new("n2", 99);
    a.handle_message(now, &h, msg(&h, 3, relayed_entry(&fake, "mallory")));
    let members: Vec<NodeId> = a.members().into_iter().map(|m| m.0).collect();
    assert!(members.contains(&b), "n2@1 kept: {members:?}");
    assert!(!members.contains(&fake), "n2@99 not believed: {members:?}");
    let keys: Vec<String> = a
        .list(&Topic::new("room:1"))
        .into_iter()
        .map(|i| i.key.as_str().to_owned())
        .collect();
    assert_eq!(keys, ["bob"]);
    // The real restart, heard from itself, still replaces n2@1.
    let b2 = NodeId::new("n2", 2);
    a.handle_message(now, &b2, msg(&b2, 2, relayed_entry(&b2, "bob2")));
    let members: Vec<NodeId> = a.members().into_iter().map(|m| m.0).collect();
    assert!(
        members.contains(&b2) && !members.contains(&b),
        "{members:?}"
    );
}

/// A future incarnation forged before the real node is known (an
/// address-less member learned from relays) must not lock the real one out.
#[test]
fn a_forged_incarnation_does_not_lock_out_the_real_one() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    let h = NodeId::new("h", 1);
    a.handle_message(now, &h, msg(&h, 3, Body::Hello { full: false }));
    let fake = NodeId::new("n2", 99);
    a.handle_message(now, &h, msg(&h, 3, relayed_entry(&fake, "mallory")));
    let b = NodeId::new("n2", 1);
    a.handle_message(now, &b, msg(&b, 2, relayed_entry(&b, "bob")));
    let members: Vec<NodeId> = a.members().into_iter().map(|m| m.0).collect();
    assert!(members.contains(&b), "the real n2@1 admitted: {members:?}");
    assert!(!members.contains(&fake), "{members:?}");
    let keys: Vec<String> = a
        .list(&Topic::new("room:1"))
        .into_iter()
        .map(|i| i.key.as_str().to_owned())
        .collect();
    assert_eq!(keys, ["bob"]);
}

/// A peer's record stamped at `u64::MAX` raised the record clock there, and
/// the next local write computed `record_clock + 1`.
#[test]
fn a_record_stamped_at_the_end_of_time_does_not_overflow_the_next_write() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    let b = NodeId::new("n2", 1);
    let record = crate::records::Record::Log {
        topic: Topic::new("room:1"),
        stamp: crate::records::Stamp {
            time_ms: u64::MAX,
            origin: b.clone(),
            seq: 1,
        },
        body: "{}".into(),
    };
    a.handle_message(now, &b, msg(&b, 2, Body::Records(vec![record])));
    let out = a.handle_command(
        now,
        Command::Append {
            topic: Topic::new("room:1"),
            time_ms: 1,
            body: "{}".into(),
        },
    );
    assert!(matches!(out, Ok(CommandOutcome::Recorded(_))), "{out:?}");
}

fn with_ttl(name: &str, i: u16, ttl_ms: u64, now: Instant) -> Node {
    let mut cfg = NodeConfig::lan(NodeId::new(name, 1), addr(i));
    cfg.rng_seed = u64::from(i);
    cfg.history_ttl = Some(std::time::Duration::from_millis(ttl_ms));
    Node::new(cfg, now)
}

fn append_at(n: &mut Node, now: Instant, time_ms: u64, body: &str) -> crate::records::Stamp {
    let cmd = Command::Append {
        topic: Topic::new("room:1"),
        time_ms,
        body: body.into(),
    };
    match n.handle_command(now, cmd) {
        Ok(CommandOutcome::Recorded(stamp)) => stamp,
        other => panic!("append: {other:?}"),
    }
}

fn bodies(n: &Node) -> Vec<String> {
    n.records()
        .last("room:1", 100)
        .into_iter()
        .map(|(_, b)| b.to_string())
        .collect()
}

const T0: u64 = 1_700_000_000_000;

/// Failed before `history_ttl` existed: history was kept forever.
#[test]
fn history_older_than_the_ttl_is_dropped_and_a_peer_cannot_bring_it_back() {
    let now = Instant::now();
    let mut a = with_ttl("n1", 1, 10_000, now);
    let old = append_at(&mut a, now, T0, "old");
    append_at(&mut a, now, T0 + 6_000, "new");
    while a.poll_event().is_some() {}
    a.handle_wall_clock(T0 + 10_000);
    assert_eq!(bodies(&a), ["old", "new"], "exactly the ttl old: kept");
    a.handle_wall_clock(T0 + 10_001);
    assert_eq!(bodies(&a), ["new"]);
    assert_eq!(a.stats().history_expired, 1);
    assert_eq!(
        a.poll_event(),
        Some(Event::HistoryExpired { horizon: T0 + 1 })
    );
    // A peer that still holds it (its clock behind, or partitioned) pushes
    // it back, or repairs it: refused.
    let b = NodeId::new("n2", 1);
    let record = Record::Log {
        topic: Topic::new("room:1"),
        stamp: old,
        body: "old".into(),
    };
    a.handle_message(now, &b, msg(&b, 2, Body::Records(vec![record])));
    assert_eq!(bodies(&a), ["new"]);
    assert_eq!(a.stats().records_merged, 0);
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Record(_))),
        "{events:?}"
    );
    // A clock that goes back does not lower the horizon.
    a.handle_wall_clock(T0);
    let stale = Record::Log {
        topic: Topic::new("room:1"),
        stamp: crate::records::Stamp {
            time_ms: T0 + 1,
            origin: b.clone(),
            seq: 1,
        },
        body: "stale".into(),
    };
    a.handle_message(now, &b, msg(&b, 2, Body::Records(vec![stale])));
    assert_eq!(bodies(&a), ["stale", "new"], "at the horizon: kept");
}

/// The horizon follows the wall clock only: a peer that raises the record
/// clock to the end of time (stamps are its to choose) wipes nothing.
#[test]
fn a_peer_at_the_end_of_time_cannot_wipe_history() {
    let now = Instant::now();
    let mut a = with_ttl("n1", 1, 10_000, now);
    append_at(&mut a, now, T0, "mine");
    let b = NodeId::new("n2", 1);
    let forged = Record::Log {
        topic: Topic::new("room:2"),
        stamp: crate::records::Stamp {
            time_ms: u64::MAX,
            origin: b.clone(),
            seq: 1,
        },
        body: "forged".into(),
    };
    a.handle_message(now, &b, msg(&b, 2, Body::Records(vec![forged])));
    a.handle_wall_clock(T0 + 1_000);
    append_at(&mut a, now, T0 + 1_000, "after");
    a.handle_wall_clock(T0 + 2_000);
    assert_eq!(bodies(&a), ["mine", "after"]);
    assert_eq!(a.stats().history_expired, 0);
    assert_eq!(a.records().horizon(), T0 + 2_000 - 10_000);
}

/// Without `history_ttl` (the engine's default) the wall clock expires nothing.
#[test]
fn without_a_ttl_history_is_kept() {
    let now = Instant::now();
    let mut a = node("n1", 1, 1, now);
    append_at(&mut a, now, T0, "kept");
    a.handle_wall_clock(u64::MAX);
    assert_eq!(bodies(&a), ["kept"]);
}

/// Seeds found later (DNS discovery in the runtime) are greeted at once and
/// joined; this node's own address among them, and a seed already greeted,
/// are not greeted (again).
#[test]
fn seeds_handed_in_later_are_greeted_once_and_joined() {
    let mut now = Instant::now();
    let mut a = node("n0", 1, 0, now);
    while a.poll_transmit().is_some() {}
    let hellos = |n: &mut Node| -> Vec<SocketAddr> {
        let mut to = Vec::new();
        while let Some(t) = n.poll_transmit() {
            assert!(matches!(t.msg.body, Body::Hello { .. }), "{t:?}");
            to.push(t.addr);
        }
        to
    };
    a.handle_seeds(vec![addr(0), addr(1), addr(1)]);
    assert_eq!(hellos(&mut a), [addr(1)], "not itself, and once");
    a.handle_seeds(vec![addr(1), addr(0)]);
    assert_eq!(hellos(&mut a), [], "the same list again: nothing new");
    a.handle_seeds(vec![addr(2), addr(1)]);
    assert_eq!(hellos(&mut a), [addr(2)], "only the new one");
    assert_eq!(a.config().seeds, [addr(1), addr(2)]);

    // The hellos reach real nodes: all three join.
    let mut nodes = [
        Some(node("n0", 1, 0, now)),
        Some(node("n1", 1, 1, now)),
        Some(node("n2", 1, 2, now)),
    ];
    pump(&mut nodes, &mut now, 3);
    let up = |n: &Node| n.members().iter().filter(|m| m.2 == PeerState::Up).count();
    assert_eq!(up(nodes[0].as_ref().unwrap()), 0, "no seeds: alone");
    nodes[0]
        .as_mut()
        .unwrap()
        .handle_seeds(vec![addr(1), addr(2)]);
    pump(&mut nodes, &mut now, 10);
    for n in nodes.iter().flatten() {
        assert_eq!(up(n), 2, "{} sees both others up", n.id());
    }
}

/// `b` merges `repair` from `a` and acknowledges it exactly once; `a` gets
/// the acknowledgement.
fn merge_and_acknowledge(a: &mut Node, b: &mut Node, now: Instant, repair: Message) {
    let (aid, bid) = (a.id().clone(), b.id().clone());
    b.handle_message(now, &aid, repair);
    let acks: Vec<Message> = std::iter::from_fn(|| b.poll_transmit())
        .map(|t| t.msg)
        .filter(|m| matches!(m.body, Body::RepairAck { .. }))
        .collect();
    assert_eq!(acks.len(), 1, "each repair is acknowledged once merged");
    for ack in acks {
        a.handle_message(now, &bid, ack);
    }
}

/// n1 holding 5,000 entries, sent in repairs of 100, and an empty n2; no
/// transmit pending on either.
fn repair_pair(now: Instant) -> (Node, Node) {
    let mut a = node("n1", 1, 1, now);
    a.cfg.repair_chunk = 100;
    let mut b = node("n2", 1, 2, now);
    for i in 0..5_000 {
        track(&mut a, now, &format!("u{i}"));
    }
    while a.poll_transmit().is_some() {}
    while b.poll_transmit().is_some() {}
    (a, b)
}

/// Repair pacing: a digest asking for 5,000 entries in repairs of 100 gets
/// only what fits the window (one repair at least); each acknowledgement
/// releases the next, another digest meanwhile does not start a second copy,
/// and the receiver ends up with every entry.
#[test]
fn a_large_repair_is_paced_by_acknowledgements() {
    let now = Instant::now();
    let (mut a, mut b) = repair_pair(now);
    // The encoded size of one 100-entry repair, to set a window of three.
    let digest = |n: &Node| Body::Digest {
        presence: n.presence.store().digest(),
        subs: n.subs.store().digest(),
        reply: true,
        members: 1,
    };
    let bid = b.id().clone();
    let repairs_of = |a: &mut Node| -> Vec<Message> {
        std::iter::from_fn(|| a.poll_transmit())
            .map(|t| t.msg)
            .filter(|m| matches!(m.body, Body::Repair { .. }))
            .collect()
    };
    a.handle_message(now, &bid, msg(&bid, 2, digest(&b)));
    let first = repairs_of(&mut a);
    assert_eq!(
        first.len(),
        50,
        "without a window cap every repair goes at once"
    );
    let one = first[0].encoded_len();
    // Start again with a window of three repairs.
    let mut a2 = node("n1", 1, 1, now);
    a2.cfg.repair_chunk = 100;
    a2.cfg.repair_window = 3 * one;
    for i in 0..5_000 {
        track(&mut a2, now, &format!("u{i}"));
    }
    while a2.poll_transmit().is_some() {}
    let mut a = a2;
    a.handle_message(now, &bid, msg(&bid, 2, digest(&b)));
    let mut in_flight: VecDeque<Message> = repairs_of(&mut a).into();
    assert_eq!(in_flight.len(), 3, "the first window");
    // A digest while the job progresses starts no second copy.
    a.handle_message(now, &bid, msg(&bid, 2, digest(&b)));
    assert!(repairs_of(&mut a).is_empty());
    let mut delivered = 3;
    while let Some(repair) = in_flight.pop_front() {
        merge_and_acknowledge(&mut a, &mut b, now, repair);
        let next = repairs_of(&mut a);
        assert!(next.len() <= 1, "an acknowledgement frees room for one");
        delivered += next.len();
        in_flight.extend(next);
        assert!(in_flight.len() <= 3, "never more than the window in flight");
    }
    assert_eq!(delivered, 50);
    assert_eq!(b.presence().count(&Topic::new("room:1")).0, 5_000);
    assert!(
        a.repairs.is_empty(),
        "the job ends when all are acknowledged"
    );
}

/// A repair the driver cannot queue (its queue to the peer holds all the
/// repairs it may) comes back through `handle_unsent`: it leaves the window,
/// goes out again at the next acknowledgement or, with nothing in flight, at
/// the next tick, and the peer still ends up with every entry, each
/// delivered repair acknowledged once.
#[test]
fn a_repair_the_driver_cannot_queue_is_sent_again() {
    let now = Instant::now();
    let (mut a, mut b) = repair_pair(now);
    let bid = b.id().clone();
    let digest = Body::Digest {
        presence: b.presence.store().digest(),
        subs: b.subs.store().digest(),
        reply: true,
        members: 1,
    };
    let repairs_of = |a: &mut Node| -> Vec<Transmit> {
        std::iter::from_fn(|| a.poll_transmit())
            .filter(|t| matches!(t.msg.body, Body::Repair { .. }))
            .collect()
    };
    // Size the window to three repairs.
    a.handle_message(now, &bid, msg(&bid, 2, digest.clone()));
    let one = repairs_of(&mut a)[0].msg.encoded_len();
    a.repairs.clear();
    a.cfg.repair_window = 3 * one;
    a.handle_message(now, &bid, msg(&bid, 2, digest));
    let first = repairs_of(&mut a);
    assert_eq!(first.len(), 3, "the first window");
    // None fits the queue: all three come back, and nothing goes out until
    // the tick.
    for t in first {
        a.handle_unsent(t);
    }
    assert_eq!(a.stats().repairs_returned, 3);
    assert!(a.poll_transmit().is_none(), "handing back sends nothing");
    let later = now + a.cfg.tick;
    a.handle_timeout(later);
    let resent = repairs_of(&mut a);
    assert_eq!(resent.len(), 3, "the tick sends the window again");
    // The second and third do not fit this time either.
    let mut resent = resent.into_iter();
    let mut in_flight: VecDeque<Message> = VecDeque::from([resent.next().unwrap().msg]);
    for t in resent {
        a.handle_unsent(t);
    }
    let mut delivered = 0;
    while let Some(repair) = in_flight.pop_front() {
        merge_and_acknowledge(&mut a, &mut b, later, repair);
        delivered += 1;
        let next = repairs_of(&mut a);
        assert!(next.len() <= 3, "never more than the window in flight");
        in_flight.extend(next.into_iter().map(|t| t.msg));
    }
    assert_eq!(delivered, 50, "each repair delivered once");
    assert_eq!(b.presence().count(&Topic::new("room:1")).0, 5_000);
    assert!(
        a.repairs.is_empty(),
        "the job ends when all are acknowledged"
    );
}

fn diff_refs(n: &mut Node) -> Vec<(Topic, Vec<String>, Vec<String>)> {
    n.flush_diffs();
    std::iter::from_fn(|| n.poll_event())
        .filter_map(|e| match e {
            Event::PresenceDiff { topic, diff } => Some((
                topic,
                diff.joins.iter().map(|i| i.key.to_string()).collect(),
                diff.leaves.iter().map(|i| i.key.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// With diffs only for subscribed topics, a topic nobody subscribes to
/// yields none; one with a subscriber yields its changes; and a window that
/// is open when its last subscriber leaves stays fed, so a ref that joined
/// and left inside it is not announced as a join.
#[test]
fn diffs_only_where_someone_subscribes() {
    let now = Instant::now();
    let mut n = node("n1", 1, 1, now);
    n.diffs_for_all_topics(false);
    let room = Topic::new("room:1");
    track(&mut n, now, "nobody-sees");
    assert!(diff_refs(&mut n).is_empty(), "no subscriber, no diff");
    let sub = SubscriberId(7);
    n.handle_command(
        now,
        Command::Subscribe {
            topic: room.clone(),
            sub,
        },
    )
    .expect("subscribed");
    track(&mut n, now, "seen");
    assert_eq!(
        diff_refs(&mut n),
        vec![(room.clone(), vec!["seen".to_string()], vec![])]
    );
    // A window opens, its subscriber leaves, the ref goes: no phantom join.
    track(&mut n, now, "brief");
    n.handle_command(
        now,
        Command::Unsubscribe {
            topic: room.clone(),
            sub,
        },
    )
    .expect("unsubscribed");
    n.handle_command(
        now,
        Command::Untrack {
            topic: room.clone(),
            key: "brief".into(),
            conn: ConnId(1),
        },
    )
    .expect("untracked");
    assert!(
        diff_refs(&mut n).iter().all(|(_, j, _)| j.is_empty()),
        "a ref born and gone in the window is not a join"
    );
    // The default (every topic) is what the simulator's replay needs.
    n.diffs_for_all_topics(true);
    track(&mut n, now, "all");
    assert_eq!(
        diff_refs(&mut n),
        vec![(room, vec!["all".to_string()], vec![])]
    );
}

/// A delta lost on the way is resent `retransmit_after` after it was sent,
/// even while newer deltas keep going out and being acknowledged. The timer
/// used to restart with every delta sent, so a peer that kept changing never
/// resent a delta lost in a partition: after a 50/50 heal at 100 nodes, the
/// views waited up to 1.6 s for a pause in the traffic.
#[test]
fn a_lost_delta_is_resent_while_newer_ones_keep_flowing() {
    let mut now = Instant::now();
    // `pump` delivers to the node at index `port - 7400`.
    let mut nodes: Vec<Option<Node>> = (0..2u16)
        .map(|i| {
            let mut cfg = NodeConfig::lan(NodeId::new(format!("n{i}"), 1), addr(i));
            cfg.rng_seed = u64::from(i) + 1;
            // No anti-entropy round within the test: only retransmission
            // can bring the lost delta.
            cfg.anti_entropy = std::time::Duration::from_secs(600);
            cfg.seeds = vec![addr(0)];
            Some(Node::new(cfg, now))
        })
        .collect();
    pump(&mut nodes, &mut now, 20);
    let b_id = nodes[1].as_ref().unwrap().id().clone();
    let up = nodes[0]
        .as_ref()
        .unwrap()
        .members()
        .into_iter()
        .any(|(id, _, state)| id == b_id && state == PeerState::Up);
    assert!(up, "the two nodes see each other");
    // The delta carrying "lost" never reaches n1.
    let a = nodes[0].as_mut().unwrap();
    track(a, now, "lost");
    a.handle_timeout(now + std::time::Duration::from_millis(10));
    let dropped = std::iter::from_fn(|| a.poll_transmit())
        .filter(|t| matches!(t.msg.body, Body::Delta { .. }))
        .count();
    assert_eq!(dropped, 1, "one delta for n1");
    let room = Topic::new("room:1");
    let has_lost = |nodes: &[Option<Node>]| {
        nodes[1]
            .as_ref()
            .unwrap()
            .presence()
            .view()
            .iter()
            .any(|(topic, key, _, _)| *topic == room && key.as_str() == "lost")
    };
    // A new change every 100 ms, each delivered and acknowledged.
    let started = now;
    let mut resent_after = None;
    for i in 0..20 {
        track(nodes[0].as_mut().unwrap(), now, &format!("k{i}"));
        pump(&mut nodes, &mut now, 1);
        if has_lost(&nodes) {
            resent_after = Some(now - started);
            break;
        }
    }
    let resent_after = resent_after.expect("the lost delta was never resent");
    assert!(
        resent_after <= std::time::Duration::from_millis(1_000),
        "resent {resent_after:?} after, retransmit_after is 600 ms"
    );
}

/// A peer stamps its records as it likes. One at `u64::MAX` is refused; one
/// at the last valid time pins the record clock there, so every later local
/// append is stamped at that time too, and the history budget must still
/// drop them (it used to raise the horizon to `u64::MAX` over and over,
/// dropping nothing: the node task hung).
#[test]
fn a_peer_stamp_at_the_end_of_time_cannot_hang_the_budget_trim() {
    use crate::records::{Stamp, LAST_STAMP_MS};
    let (tx, rx) = std::sync::mpsc::channel();
    let node = std::thread::spawn(move || {
        let now = Instant::now();
        let mut cfg = NodeConfig::lan(NodeId::new("n1", 1), addr(1));
        cfg.history_budget = Some(4096);
        let mut a = Node::new(cfg, now);
        let b = NodeId::new("n2", 1);
        let poison = |time_ms, seq| Record::Log {
            topic: Topic::new("room:9"),
            stamp: Stamp {
                time_ms,
                origin: b.clone(),
                seq,
            },
            body: "{}".into(),
        };
        assert!(!poison(u64::MAX, 1).is_valid(), "past the last stamp");
        let records = vec![poison(u64::MAX, 1), poison(LAST_STAMP_MS, 2)];
        a.handle_message(now, &b, msg(&b, 2, Body::Records(records)));
        for i in 0..100 {
            let _ = tx.send(Some(i));
            append_at(&mut a, now, T0 + i, &"x".repeat(100));
        }
        let _ = tx.send(None);
        a.records().log_bytes()
    });
    let mut last = 0;
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Some(i)) => last = i,
            Ok(None) => break,
            Err(_) => panic!("the node hung in append #{last}, trimming to the budget"),
        }
    }
    let held = node.join().expect("the node's thread ends");
    assert!(
        held <= 4096,
        "{held} bytes of history held, the budget is 4096"
    );
}

/// Repairs were cut by entry count only (`repair_chunk`, 10,000), so a
/// slice of entries with big (valid) metas became one `Repair` over
/// `MAX_FRAME`, which every receiver refuses: the joiner never got the
/// state. Here a peer relays 75 entries of 1 MB under a made-up origin (in
/// three valid 25 MB deltas); that origin goes down (never heard from
/// directly), so this node serves its slice to a joiner.
#[test]
fn repairs_of_big_metas_stay_within_the_frame_limit() {
    use crate::context::Ranges;
    use crate::presence::PresEntry;
    use crate::store::{Delta, Part};
    let mut now = Instant::now();
    let mut a = node("a", 1, 1, now);
    let r = NodeId::new("r", 1);
    a.handle_message(now, &r, msg(&r, 2, Body::Hello { full: false }));
    let fake = NodeId::new("f", 1);
    let meta = Meta::new(format!("{{\"a\":\"{}\"}}", "x".repeat(1_000_000 - 8)));
    for k in 0..3u64 {
        let lo = 25 * k + 1;
        let adds = (lo..lo + 25)
            .map(|d| {
                let e = PresEntry {
                    topic: Topic::new("room:1"),
                    key: format!("u{d}").into(),
                    conn: ConnId(d),
                    meta: meta.clone(),
                    phx_ref: crate::id::PhxRef::from_parts([9; 6], d),
                    prev_ref: None,
                };
                (d, e)
            })
            .collect();
        let part = Part {
            origin: fake.clone(),
            ops: Ranges::span(lo, lo + 24),
            adds,
            removes: vec![],
            full: false,
        };
        let m = msg(
            &r,
            2,
            Body::Delta {
                start: k,
                seq: k + 1,
                presence: Delta { parts: vec![part] },
                subs: Delta::default(),
            },
        );
        m.validate().expect("each delta is valid");
        assert!(m.encoded_len() < crate::codec::MAX_FRAME);
        a.handle_message(now, &r, m);
    }
    for _ in 0..40 {
        now += std::time::Duration::from_millis(100);
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {}
        while a.poll_event().is_some() {}
    }
    let c = NodeId::new("c", 1);
    a.handle_message(now, &c, msg(&c, 3, Body::Hello { full: false }));
    let digest = Body::Digest {
        presence: vec![],
        subs: vec![],
        reply: false,
        members: 1,
    };
    a.handle_message(now, &c, msg(&c, 3, digest));
    let mut repairs = 0;
    while let Some(t) = a.poll_transmit() {
        if let Body::Repair { .. } = t.msg.body {
            repairs += 1;
            let len = t.msg.encoded_len();
            assert!(
                len <= crate::codec::MAX_FRAME,
                "a Repair of {len} bytes (MAX_FRAME {}): {:?}",
                crate::codec::MAX_FRAME,
                Message::decode(&t.msg.encode()).err()
            );
        }
    }
    assert!(repairs > 0, "the joiner was sent a repair");
}
