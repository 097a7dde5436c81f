//! Several real `Node`s wired by an in-memory network: every message crosses the
//! codec, time is virtual, delivery order is deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_engine::PeerState;
use chorus_engine::{
    Body, Command, ConnId, Event, Message, Meta, Node, NodeConfig, NodeId, SubscriberId, Topic,
};

struct TestCluster {
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    now: Instant,
    queue: BTreeMap<(Instant, u64), (usize, Vec<u8>)>,
    seq: u64,
    /// Directed links that drop everything.
    cut: BTreeSet<(usize, usize)>,
    events: Vec<Vec<Event>>,
    latency: Duration,
    sent: Vec<Message>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16))
}

impl TestCluster {
    fn new(n: usize, tweak: impl Fn(&mut NodeConfig)) -> TestCluster {
        let now = Instant::now();
        let mut net = TestCluster {
            nodes: Vec::new(),
            addrs: (0..n).map(addr).collect(),
            now,
            queue: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            events: vec![Vec::new(); n],
            latency: Duration::from_millis(1),
            sent: Vec::new(),
        };
        for i in 0..n {
            let cfg = net.config(i, 1, &tweak);
            net.nodes.push(Some(Node::new(cfg, now)));
            net.drain(i);
        }
        net
    }

    fn config(&self, i: usize, incarnation: u64, tweak: &impl Fn(&mut NodeConfig)) -> NodeConfig {
        let mut cfg = NodeConfig::lan(NodeId::new(format!("n{i}"), incarnation), addr(i));
        cfg.seeds = vec![addr(0)];
        cfg.rng_seed = (i as u64) << 8 | incarnation;
        tweak(&mut cfg);
        cfg
    }

    fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("node is running")
    }

    fn cmd(&mut self, i: usize, cmd: Command) {
        let now = self.now;
        self.node(i)
            .handle_command(now, cmd)
            .expect("command succeeds");
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        while let Some(t) = node.poll_transmit() {
            let dst = self
                .addrs
                .iter()
                .position(|a| *a == t.addr)
                .expect("known address");
            let bytes = t.msg.encode();
            self.sent.push(t.msg);
            if self.cut.contains(&(i, dst)) {
                continue;
            }
            self.seq += 1;
            self.queue
                .insert((self.now + self.latency, self.seq), (dst, bytes));
        }
        while let Some(e) = node.poll_event() {
            self.events[i].push(e);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((n.as_ref()?.poll_timeout()?, i)))
                .min();
            let next = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m.min(t),
                (Some(m), None) => m,
                (None, Some((t, _))) => t,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let (_, (dst, bytes)) = self.queue.pop_first().expect("peeked");
                let msg = Message::decode(&bytes).expect("our own encoding decodes");
                let now = self.now;
                if let Some(node) = self.nodes[dst].as_mut() {
                    // Honest senders only: the link's identity is the one
                    // each message claims.
                    let from = msg.from.clone();
                    node.handle_message(now, &from, msg);
                    self.drain(dst);
                }
            } else if let Some((_, i)) = next_timer {
                let now = self.now;
                self.node(i).handle_timeout(now);
                self.drain(i);
            }
        }
        self.now = end;
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        self.queue.retain(|_, (dst, _)| *dst != i);
    }

    fn restart(&mut self, i: usize, incarnation: u64) {
        let cfg = self.config(i, incarnation, &|_| {});
        self.nodes[i] = Some(Node::new(cfg, self.now));
        self.events[i].clear();
        self.drain(i);
    }

    fn view(&self, i: usize) -> BTreeSet<(String, String)> {
        let node = self.nodes[i].as_ref().expect("running");
        node.presence()
            .view()
            .into_iter()
            .map(|(t, k, _, _)| (t.to_string(), k.to_string()))
            .collect()
    }
}

fn track(topic: &str, key: &str, conn: u64) -> Command {
    Command::Track {
        topic: Topic::new(topic),
        key: key.into(),
        conn: ConnId(conn),
        meta: Meta::new(format!("{{\"user\":\"{key}\"}}")),
    }
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(t, k)| (t.to_string(), k.to_string()))
        .collect()
}

#[test]
fn three_nodes_join_from_a_seed_and_converge() {
    let mut net = TestCluster::new(3, |_| {});
    net.run_for(Duration::from_millis(100));
    for i in 0..3 {
        let up = net
            .node(i)
            .members()
            .iter()
            .filter(|m| m.2 == PeerState::Up)
            .count();
        assert_eq!(up, 2, "node {i} sees both peers");
    }
    net.cmd(0, track("room:1", "alice", 1));
    net.cmd(1, track("room:1", "bob", 1));
    net.cmd(2, track("room:2", "carol", 1));
    net.run_for(Duration::from_millis(50));
    let want = set(&[("room:1", "alice"), ("room:1", "bob"), ("room:2", "carol")]);
    for i in 0..3 {
        assert_eq!(net.view(i), want, "node {i}");
    }
    // Each node reported the remote joins as coalesced diffs.
    let joins: usize = net.events[2]
        .iter()
        .filter_map(|e| match e {
            Event::PresenceDiff { topic, diff } if topic.as_str() == "room:1" => {
                Some(diff.joins.len())
            }
            _ => None,
        })
        .sum();
    assert_eq!(joins, 2);
}

/// Forming a cluster costs each node a few member lists: the seed answers each
/// joiner's hello, and a digest from a node that knows fewer members gets a
/// list at most once per anti-entropy period. (Every such digest got one:
/// about N² lists of N members, 11 GB to form 1,000 nodes in the simulator.)
#[test]
fn forming_a_cluster_sends_each_node_a_few_member_lists() {
    let n = 40;
    let mut net = TestCluster::new(n, |_| {});
    net.run_for(Duration::from_secs(2));
    for i in 0..n {
        let up = net
            .node(i)
            .members()
            .iter()
            .filter(|m| m.2 == PeerState::Up && m.1.is_some())
            .count();
        assert_eq!(up, n - 1, "node {i} knows every other node");
    }
    let lists = net
        .sent
        .iter()
        .filter(|m| matches!(m.body, Body::Members(_)))
        .count();
    assert!(lists <= 3 * n, "{lists} member lists to form {n} nodes");
}

#[test]
fn publish_crosses_the_network_once_per_interested_node() {
    let mut net = TestCluster::new(3, |_| {});
    net.run_for(Duration::from_millis(100));
    let t = Topic::new("room:9");
    for sub in 1..=5 {
        net.cmd(
            1,
            Command::Subscribe {
                topic: t.clone(),
                sub: SubscriberId(sub),
            },
        );
    }
    net.run_for(Duration::from_millis(50));
    let ready = net.events[1]
        .iter()
        .filter(|e| matches!(e, Event::SubscribeReady { .. }))
        .count();
    assert_eq!(ready, 5);
    net.sent.clear();
    for n in 0..10u8 {
        net.cmd(
            0,
            Command::Publish {
                topic: t.clone(),
                payload: Bytes::from(vec![n]),
                exclude: None,
            },
        );
    }
    net.run_for(Duration::from_millis(20));
    let broadcasts: Vec<_> = net
        .sent
        .iter()
        .filter(|m| matches!(m.body, chorus_engine::Body::Broadcast { .. }))
        .collect();
    assert_eq!(
        broadcasts.len(),
        10,
        "one transmit per publish, to node 1 only"
    );
    let got: Vec<u8> = net.events[1]
        .iter()
        .filter_map(|e| match e {
            Event::Broadcast { payload, .. } => Some(payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        (0..10).collect::<Vec<u8>>(),
        "in publish order, once each"
    );
    assert!(!net.events[2]
        .iter()
        .any(|e| matches!(e, Event::Broadcast { .. })));
}

#[test]
fn first_subscriber_waits_for_peers_to_acknowledge_its_route() {
    let mut net = TestCluster::new(3, |_| {});
    net.run_for(Duration::from_millis(100));
    net.cmd(
        2,
        Command::Subscribe {
            topic: Topic::new("x"),
            sub: SubscriberId(1),
        },
    );
    assert!(!net.events[2]
        .iter()
        .any(|e| matches!(e, Event::SubscribeReady { .. })));
    net.run_for(Duration::from_millis(10));
    assert!(net.events[2]
        .iter()
        .any(|e| matches!(e, Event::SubscribeReady { .. })));
    // By then every peer routes the topic to node 2.
    for i in 0..2 {
        let nodes: Vec<_> = net
            .node(i)
            .subs()
            .nodes_for(&Topic::new("x"))
            .cloned()
            .collect();
        assert_eq!(nodes, vec![NodeId::new("n2", 1)]);
    }
    // With peers unreachable, the wait is bounded.
    net.cut.insert((2, 0));
    net.cut.insert((2, 1));
    net.events[2].clear();
    net.cmd(
        2,
        Command::Subscribe {
            topic: Topic::new("y"),
            sub: SubscriberId(1),
        },
    );
    net.run_for(Duration::from_millis(499));
    assert!(!net.events[2]
        .iter()
        .any(|e| matches!(e, Event::SubscribeReady { .. })));
    net.run_for(Duration::from_millis(2));
    assert!(net.events[2]
        .iter()
        .any(|e| matches!(e, Event::SubscribeReady { .. })));
}

#[test]
fn a_crashed_node_goes_down_then_permdown_and_its_restart_brings_no_zombie() {
    let mut net = TestCluster::new(3, |c| c.permdown_after = Duration::from_secs(10));
    net.run_for(Duration::from_millis(100));
    net.cmd(2, track("room:1", "carol", 1));
    net.cmd(0, track("room:1", "alice", 1));
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.view(0).len(), 2);
    net.crash(2);
    net.run_for(Duration::from_millis(2300));
    assert_eq!(
        net.view(0),
        set(&[("room:1", "alice")]),
        "down within 2.3 s: hidden"
    );
    assert!(net.events[0]
        .iter()
        .any(|e| matches!(e, Event::MemberDown(id) if id.name == "n2")));
    // Restart as a new incarnation: the old one is purged as soon as it speaks.
    net.restart(2, 2);
    net.run_for(Duration::from_millis(200));
    for i in 0..3 {
        assert_eq!(net.view(i), set(&[("room:1", "alice")]), "node {i}");
    }
    assert!(net.events[0]
        .iter()
        .any(|e| matches!(e, Event::MemberGone(id) if *id == NodeId::new("n2", 1))));
}

#[test]
fn permdown_purges_a_node_that_never_returns() {
    let mut net = TestCluster::new(3, |c| c.permdown_after = Duration::from_secs(5));
    net.run_for(Duration::from_millis(100));
    net.cmd(2, track("room:1", "carol", 1));
    net.run_for(Duration::from_millis(50));
    net.crash(2);
    net.run_for(Duration::from_secs(8));
    assert!(net
        .node(0)
        .presence()
        .store()
        .is_purged(&NodeId::new("n2", 1)));
    assert!(net.node(0).presence().store().is_empty());
    assert!(net.node(1).presence().store().is_empty());
}

#[test]
fn graceful_leave_drops_presences_at_once() {
    let mut net = TestCluster::new(2, |_| {});
    net.run_for(Duration::from_millis(100));
    net.cmd(1, track("room:1", "bob", 1));
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.view(0).len(), 1);
    net.cmd(1, Command::Leave);
    net.run_for(Duration::from_millis(5));
    assert!(net.view(0).is_empty());
}

#[test]
fn a_partitioned_node_hides_then_heals_without_transfer_of_known_entries() {
    let mut net = TestCluster::new(3, |_| {});
    net.run_for(Duration::from_millis(100));
    net.cmd(0, track("room:1", "alice", 1));
    net.cmd(2, track("room:1", "carol", 1));
    net.run_for(Duration::from_millis(50));
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        net.cut.insert((a, b));
    }
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.view(0), set(&[("room:1", "alice")]));
    assert_eq!(net.view(2), set(&[("room:1", "carol")]));
    // Both sides keep changing during the cut.
    net.cmd(0, track("room:1", "ann", 2));
    net.cmd(
        2,
        Command::Untrack {
            topic: Topic::new("room:1"),
            key: "carol".into(),
            conn: ConnId(1),
        },
    );
    net.cmd(2, track("room:1", "cat", 2));
    net.run_for(Duration::from_secs(1));
    net.cut.clear();
    net.run_for(Duration::from_secs(2));
    let want = set(&[("room:1", "alice"), ("room:1", "ann"), ("room:1", "cat")]);
    for i in 0..3 {
        assert_eq!(net.view(i), want, "node {i}");
    }
}

#[test]
fn a_peer_behind_a_dropped_buffer_is_repaired_per_origin() {
    let mut net = TestCluster::new(2, |c| c.buffer_cap = 4);
    net.run_for(Duration::from_millis(100));
    // One direction silently loses deltas for a while (not long enough to go down).
    net.cut.insert((0, 1));
    for k in 0..50u64 {
        net.cmd(0, track("room:1", &format!("u{k}"), k));
    }
    for k in 0..20u64 {
        net.cmd(
            0,
            Command::Untrack {
                topic: Topic::new("room:1"),
                key: format!("u{k}").into(),
                conn: ConnId(k),
            },
        );
    }
    net.run_for(Duration::from_millis(500));
    assert!(net.node(0).stats().buffer_overflows > 0);
    net.cut.clear();
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.view(1).len(), 30);
    assert_eq!(net.view(0), net.view(1));
}

#[test]
fn update_reaches_peers_as_one_diff_with_prev_ref() {
    let mut net = TestCluster::new(2, |_| {});
    net.run_for(Duration::from_millis(100));
    net.cmd(0, track("chat:1", "alice", 1));
    net.run_for(Duration::from_millis(100));
    net.events[1].clear();
    net.cmd(
        0,
        Command::Update {
            topic: Topic::new("chat:1"),
            key: "alice".into(),
            conn: ConnId(1),
            meta: Meta::new("{\"status\":\"away\"}"),
        },
    );
    net.run_for(Duration::from_millis(100));
    let diffs: Vec<_> = net.events[1]
        .iter()
        .filter_map(|e| match e {
            Event::PresenceDiff { diff, .. } => Some(diff.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(diffs.len(), 1);
    let d = &diffs[0];
    assert_eq!((d.joins.len(), d.leaves.len()), (1, 1));
    assert_eq!(d.joins[0].prev_ref, Some(d.leaves[0].phx_ref));
    assert_eq!(d.joins[0].meta.as_str(), "{\"status\":\"away\"}");
}

#[test]
fn a_join_storm_reaches_each_node_in_a_few_diffs() {
    let mut net = TestCluster::new(2, |_| {});
    net.run_for(Duration::from_millis(100));
    for k in 0..1000u64 {
        net.cmd(0, track("room:big", &format!("u{k}"), k));
        net.run_for(Duration::from_millis(1));
    }
    net.run_for(Duration::from_secs(1));
    let diffs = net.events[1]
        .iter()
        .filter(|e| matches!(e, Event::PresenceDiff { .. }))
        .count();
    assert_eq!(net.view(1).len(), 1000);
    assert!(diffs <= 20, "1000 joins over 1 s arrived in {diffs} diffs");
}

fn append(topic: &str, time_ms: u64, body: &str) -> Command {
    Command::Append {
        topic: Topic::new(topic),
        time_ms,
        body: body.into(),
    }
}

impl TestCluster {
    fn history(&self, i: usize, topic: &str) -> Vec<String> {
        let node = self.nodes[i].as_ref().expect("running");
        let r = node.records();
        r.last(topic, 100)
            .into_iter()
            .map(|(_, body)| body.to_string())
            .collect()
    }
}

#[test]
fn history_reaches_every_node_survives_a_crash_and_heals_a_partition() {
    let mut net = TestCluster::new(3, |_| {});
    net.run_for(Duration::from_millis(100));
    net.cmd(0, append("room:1", 1_000, "hello"));
    net.run_for(Duration::from_millis(10));
    for i in 0..3 {
        assert_eq!(net.history(i, "room:1"), ["hello"], "node {i}");
    }

    // Node 2 is cut off; both sides write; the heal merges by stamp.
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        net.cut.insert((a, b));
    }
    net.cmd(0, append("room:1", 2_000, "from 0"));
    net.cmd(2, append("room:1", 1_500, "from 2"));
    net.cmd(
        2,
        Command::Put {
            space: "room".into(),
            key: "lobby".into(),
            time_ms: 1_500,
            value: Some("Lobby".into()),
        },
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.history(1, "room:1"), ["hello", "from 0"]);
    net.cut.clear();
    net.run_for(Duration::from_secs(3));
    for i in 0..3 {
        assert_eq!(
            net.history(i, "room:1"),
            ["hello", "from 2", "from 0"],
            "node {i}"
        );
        let records = net.nodes[i].as_ref().expect("running").records();
        assert_eq!(
            records.get("room", "lobby").map(|v| v.to_string()),
            Some("Lobby".to_owned())
        );
    }

    // The node that wrote "from 0" crashes; a node restarted empty learns the
    // whole history from the survivors.
    net.crash(0);
    net.crash(2);
    net.restart(2, 2);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.history(2, "room:1"), ["hello", "from 2", "from 0"]);
}

#[test]
fn a_register_write_after_a_skewed_one_still_wins() {
    let mut net = TestCluster::new(2, |_| {});
    net.run_for(Duration::from_millis(100));
    let put = |time_ms: u64, value: Option<&str>| Command::Put {
        space: "room".into(),
        key: "r1".into(),
        time_ms,
        value: value.map(Into::into),
    };
    // Node 0's clock runs an hour ahead; node 1 then deletes the room with
    // its own (earlier) clock, after having seen node 0's write.
    net.cmd(0, put(3_600_000, Some("R1")));
    net.run_for(Duration::from_millis(10));
    net.cmd(1, put(1_000, None));
    net.run_for(Duration::from_millis(10));
    for i in 0..2 {
        let records = net.nodes[i].as_ref().expect("running").records();
        assert_eq!(records.get("room", "r1"), None, "node {i}");
    }
}
