//! The tokio + QUIC runtime end to end: real engines on 127.0.0.1, each test
//! bounded in time.

#![cfg(feature = "runtime")]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_engine::runtime::auth::{self, PeerHello, Role};
use chorus_engine::runtime::transport::{codes, transport_config};
use chorus_engine::runtime::{tls, Delivery, Engine, EngineConfig, EngineHandle, Subscription};
use chorus_engine::MAX_FRAME;
use chorus_engine::{
    Body, ConnId, Delta, Message, Meta, NodeConfig, NodeId, Part, PeerState, PhxRef, PresEntry,
    Ranges, Swim,
};
use tokio::time::{sleep, timeout, Instant};

const SECRET: &[u8] = b"test-cluster-secret-0123456789ab";

fn config(name: &str, incarnation: u64, bind: SocketAddr, seeds: &[SocketAddr]) -> EngineConfig {
    let mut node = NodeConfig::lan(NodeId::new(name, incarnation), bind);
    node.rng_seed = incarnation * 1000 + name.bytes().map(u64::from).sum::<u64>();
    let mut c = EngineConfig::new(node, SECRET);
    c.seeds = seeds.to_vec();
    c
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(name: &str, seeds: &[SocketAddr]) -> EngineHandle {
    Engine::start(config(name, 1, any_port(), seeds))
        .await
        .expect("engine starts")
}

/// Polls `check` every 20 ms until it holds; panics after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if check().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "not within {within:?}: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

async fn up_names(h: &EngineHandle) -> BTreeSet<String> {
    h.members()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.state == PeerState::Up)
        .map(|m| m.id.name.to_string())
        .collect()
}

async fn keys(h: &EngineHandle, topic: &str) -> BTreeSet<String> {
    h.presence(topic)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key.to_string())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn cluster_of_three() -> (EngineHandle, EngineHandle, EngineHandle) {
    let n1 = start("n1", &[]).await;
    let n2 = start("n2", &[n1.local_addr()]).await;
    let n3 = start("n3", &[n1.local_addr()]).await;
    for (h, others) in [
        (&n1, ["n2", "n3"]),
        (&n2, ["n1", "n3"]),
        (&n3, ["n1", "n2"]),
    ] {
        eventually(
            Duration::from_secs(5),
            "three nodes see each other",
            || async { up_names(h).await == names(&others) },
        )
        .await;
    }
    (n1, n2, n3)
}

/// The next broadcast of a subscription, skipping presence diffs.
async fn next_broadcast(sub: &mut Subscription) -> Option<Bytes> {
    loop {
        match sub.recv().await? {
            Delivery::Broadcast(b) => return Some(b),
            Delivery::PresenceDiff(_) | Delivery::Logged { .. } => {}
        }
    }
}

#[tokio::test]
async fn three_nodes_converge_and_broadcast_once_in_order() {
    timeout(Duration::from_secs(30), async {
        let (n1, n2, n3) = cluster_of_three().await;
        let r = n1
            .track("room:1", "alice", ConnId(1), Meta::new("{\"d\":1}"))
            .await
            .unwrap();
        for h in [&n2, &n3] {
            eventually(Duration::from_secs(3), "alice visible", || async {
                h.presence("room:1")
                    .await
                    .unwrap()
                    .iter()
                    .any(|p| p.key == "alice" && p.phx_ref == r)
            })
            .await;
        }

        let mut s1 = n1.subscribe("chat").await.unwrap();
        let mut s2 = n2.subscribe("chat").await.unwrap();
        for i in 0..200u32 {
            n3.publish("chat", Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap();
        }
        for s in [&mut s1, &mut s2] {
            for i in 0..200u32 {
                let b = next_broadcast(s).await.expect("subscription open");
                assert_eq!(b.as_ref(), i.to_be_bytes(), "in publish order");
            }
            // Exactly once: nothing more arrives.
            assert!(
                timeout(Duration::from_millis(300), next_broadcast(s))
                    .await
                    .is_err(),
                "a duplicate arrived"
            );
        }

        // publish_from skips the excluded local subscriber only.
        let mut s1b = n1.subscribe("chat").await.unwrap();
        n1.publish_from("chat", Bytes::from_static(b"from"), s1.id())
            .await
            .unwrap();
        assert_eq!(next_broadcast(&mut s1b).await.unwrap().as_ref(), b"from");
        assert_eq!(next_broadcast(&mut s2).await.unwrap().as_ref(), b"from");
        assert!(timeout(Duration::from_millis(200), next_broadcast(&mut s1))
            .await
            .is_err());

        // direct_publish reaches one node only.
        n3.direct_publish(n2.node_id().clone(), "chat", Bytes::from_static(b"direct"))
            .await
            .unwrap();
        assert_eq!(next_broadcast(&mut s2).await.unwrap().as_ref(), b"direct");
        assert!(
            timeout(Duration::from_millis(200), next_broadcast(&mut s1b))
                .await
                .is_err()
        );

        // Counters saw the traffic.
        let stats = n3.stats().await.unwrap();
        let out: u64 = stats.peers.values().map(|p| p.messages_out).sum();
        assert!(out >= 400, "{stats:?}");
        assert_eq!(stats.peer_queue_overflows, 0);

        for h in [n1, n2, n3] {
            h.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn presence_diffs_reach_subscribers_and_untrack_leaves() {
    timeout(Duration::from_secs(20), async {
        let n1 = start("n1", &[]).await;
        let n2 = start("n2", &[n1.local_addr()]).await;
        eventually(Duration::from_secs(5), "pair", || async {
            up_names(&n2).await == names(&["n1"])
        })
        .await;
        let mut sub = n2.subscribe("room").await.unwrap();
        n1.track("room", "bob", ConnId(7), Meta::new("{}"))
            .await
            .unwrap();
        let joined = loop {
            match sub.recv().await.unwrap() {
                Delivery::PresenceDiff(d) if !d.joins.is_empty() => break d,
                _ => {}
            }
        };
        assert_eq!(joined.joins[0].key, "bob");
        n1.untrack_conn(ConnId(7)).await.unwrap();
        let left = loop {
            match sub.recv().await.unwrap() {
                Delivery::PresenceDiff(d) if !d.leaves.is_empty() => break d,
                _ => {}
            }
        };
        assert_eq!(left.leaves[0].key, "bob");
        assert!(n2.presence("room").await.unwrap().is_empty());
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// The presence tap sees every topic's diffs, on a node that subscribes to
/// none of them, a peer's as well as its own, after what was visible when it
/// started; dropping it ends it.
#[tokio::test]
async fn the_presence_tap_sees_every_topic_without_subscribing() {
    timeout(Duration::from_secs(20), async {
        let n1 = start("n1", &[]).await;
        let n2 = start("n2", &[n1.local_addr()]).await;
        eventually(Duration::from_secs(5), "pair", || async {
            up_names(&n2).await == names(&["n1"])
        })
        .await;
        n1.track("room:z", "zoe", ConnId(6), Meta::new("{}"))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "zoe", || async {
            keys(&n2, "room:z").await == names(&["zoe"])
        })
        .await;
        let mut tap = n2.presence_tap().await.unwrap();
        // First what is there already.
        let (topic, diff) = tap.recv().await.unwrap();
        assert_eq!(
            (topic.as_str(), diff.joins[0].key.as_str()),
            ("room:z", "zoe")
        );
        assert!(diff.leaves.is_empty());
        n1.track("room:a", "bob", ConnId(7), Meta::new("{}"))
            .await
            .unwrap();
        n2.track("room:b", "eve", ConnId(8), Meta::new("{}"))
            .await
            .unwrap();
        let mut joined = BTreeSet::new();
        while joined.len() < 2 {
            let (topic, diff) = tap.recv().await.unwrap();
            // (zoe's own diff may still come, after the listing: skipped.)
            for j in diff.joins.iter().filter(|_| topic.as_str() != "room:z") {
                joined.insert(format!("{topic} {}", j.key));
            }
        }
        assert_eq!(joined, names(&["room:a bob", "room:b eve"]));
        n1.untrack_conn(ConnId(7)).await.unwrap();
        let (topic, diff) = tap.recv().await.unwrap();
        assert_eq!(
            (topic.as_str(), diff.leaves[0].key.as_str()),
            ("room:a", "bob")
        );
        drop(tap);
        // A dropped tap is forgotten: the node keeps serving.
        n1.track("room:a", "bob", ConnId(9), Meta::new("{}"))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "bob again", || async {
            keys(&n2, "room:a").await == names(&["bob"])
        })
        .await;
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn slow_subscriber_is_dropped_and_counted() {
    timeout(Duration::from_secs(10), async {
        let mut c = config("solo", 1, any_port(), &[]);
        c.subscriber_queue = 4;
        let n = Engine::start(c).await.unwrap();
        let mut slow = n.subscribe("t").await.unwrap();
        let mut fast = n.subscribe("t").await.unwrap();
        for i in 0..10u8 {
            n.publish("t", Bytes::from(vec![i])).await.unwrap();
            // The fast one keeps up.
            assert_eq!(next_broadcast(&mut fast).await.unwrap().as_ref(), [i]);
        }
        let mut got = 0;
        while slow.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, 4, "the slow subscriber got its queue, then ended");
        assert_eq!(n.stats().await.unwrap().slow_subscribers, 1);
        n.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// Two engines, `n2` with a `subscriber_queue` of 64, seeing each other.
async fn pair_with_small_queue() -> (EngineHandle, EngineHandle) {
    let n1 = start("n1", &[]).await;
    let mut c = config("n2", 1, any_port(), &[n1.local_addr()]);
    c.subscriber_queue = 64;
    let n2 = Engine::start(c).await.unwrap();
    for (h, other) in [(&n1, "n2"), (&n2, "n1")] {
        eventually(
            Duration::from_secs(5),
            "two nodes see each other",
            || async { up_names(h).await == names(&[other]) },
        )
        .await;
    }
    (n1, n2)
}

/// Publishes `count` broadcasts `0..count` (big-endian u32) to `topic`, each
/// after waiting while the topic is held (as the gateway's publishers do).
async fn publish_paced(h: EngineHandle, topic: &'static str, count: u32) {
    for i in 0..count {
        while h.held(topic) {
            sleep(Duration::from_millis(1)).await;
        }
        h.publish(topic, Bytes::copy_from_slice(&i.to_be_bytes()))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_peer_is_held_back_while_a_subscriber_lags_and_nothing_is_lost() {
    timeout(Duration::from_secs(30), async {
        let (n1, n2) = pair_with_small_queue().await;
        let mut sub = n2.subscribe("t").await.unwrap();
        const COUNT: u32 = 2_000;
        let publisher = tokio::spawn(publish_paced(n1.clone(), "t", COUNT));
        // Not reading: n1 runs out of credit, and waits.
        eventually(Duration::from_secs(5), "n1 is held", || async {
            n1.held("t")
        })
        .await;
        for i in 0..COUNT {
            let got = next_broadcast(&mut sub).await.expect("still subscribed");
            assert_eq!(got.as_ref(), i.to_be_bytes(), "in order, none lost");
        }
        publisher.await.unwrap();
        let (s1, s2) = (n1.stats().await.unwrap(), n2.stats().await.unwrap());
        assert_eq!(s2.slow_subscribers, 0);
        assert!(s1.credit_waits > 0 && s2.credit_withheld > 0);
        assert_eq!(s1.credit_dropped, 0);
        n2.shutdown().await.unwrap();
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_subscriber_that_never_reads_holds_a_peer_back_only_until_it_is_dropped() {
    timeout(Duration::from_secs(30), async {
        let (n1, n2) = pair_with_small_queue().await;
        let mut stuck = n2.subscribe("t").await.unwrap();
        // The window runs out; a second later it is refilled (no credit came
        // back), which takes the stuck queue past its limit: it is dropped,
        // and the rest goes through.
        publish_paced(n1.clone(), "t", 1_000).await;
        let s1 = n1.stats().await.unwrap();
        assert!(s1.credit_refills >= 1, "refilled after a stall: {s1:?}");
        assert_eq!(n2.stats().await.unwrap().slow_subscribers, 1);
        let mut got = 0;
        while stuck.recv().await.is_some() {
            got += 1;
        }
        assert!(got >= 64, "it got its queue, then ended: {got}");
        n2.shutdown().await.unwrap();
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// Broadcasts waiting for a peer's credit are dropped when the peer is
/// marked down: its topics are not held for a node that is gone (before,
/// each stall refill released one more window, 2,000 waiting took 16 s).
#[tokio::test]
async fn a_peer_that_goes_down_holds_no_topic_back() {
    timeout(Duration::from_secs(30), async {
        let (n1, n2) = pair_with_small_queue().await;
        let _stuck = n2.subscribe("t").await.unwrap();
        for i in 0..2_200u32 {
            n1.publish("t", Bytes::copy_from_slice(&i.to_be_bytes()))
                .await
                .unwrap();
        }
        eventually(Duration::from_secs(5), "n1 is held", || async {
            n1.held("t")
        })
        .await;
        n2.abort();
        eventually(Duration::from_secs(5), "no longer held", || async {
            !n1.held("t")
        })
        .await;
        let s1 = n1.stats().await.unwrap();
        assert!(s1.credit_dropped >= 1_000, "dropped what waited: {s1:?}");
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn crashed_node_goes_down_within_lan_bound_and_restarts_as_new_incarnation() {
    timeout(Duration::from_secs(40), async {
        let (n1, n2, n3) = cluster_of_three().await;
        let n3_addr = n3.local_addr();
        n3.track("room", "old", ConnId(1), Meta::new("{}"))
            .await
            .unwrap();
        for h in [&n1, &n2] {
            eventually(Duration::from_secs(3), "old visible", || async {
                keys(h, "room").await.contains("old")
            })
            .await;
        }

        n3.abort();
        let t0 = Instant::now();
        for h in [&n1, &n2] {
            eventually(
                Duration::from_secs(3),
                "the crashed node's presence leaves",
                || async { !keys(h, "room").await.contains("old") },
            )
            .await;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        for h in [&n1, &n2] {
            assert!(!up_names(h).await.contains("n3"));
        }

        // Restart on the same address as incarnation 2.
        let restart = Instant::now();
        let n3b = loop {
            match Engine::start(config("n3", 2, n3_addr, &[n1.local_addr()])).await {
                Ok(h) => break h,
                Err(e) if restart.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {n3_addr}: {e}"),
            }
        };
        n3b.track("room", "new", ConnId(1), Meta::new("{}"))
            .await
            .unwrap();
        for h in [&n1, &n2] {
            eventually(
                Duration::from_secs(5),
                "new visible, old never back",
                || async {
                    let k = keys(h, "room").await;
                    assert!(!k.contains("old"), "an old entry reappeared");
                    k.contains("new")
                },
            )
            .await;
        }
        // And it stays that way through a few anti-entropy rounds.
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            for h in [&n1, &n2] {
                assert_eq!(keys(h, "room").await, names(&["new"]));
                let ids: Vec<NodeId> = h
                    .members()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| m.id)
                    .collect();
                assert!(
                    !ids.contains(&NodeId::new("n3", 1)),
                    "old incarnation listed"
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
        for h in [n1, n2, n3b] {
            h.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn graceful_shutdown_makes_presences_leave_at_once() {
    timeout(Duration::from_secs(20), async {
        let (n1, n2, n3) = cluster_of_three().await;
        n3.track("room", "leaver", ConnId(1), Meta::new("{}"))
            .await
            .unwrap();
        for h in [&n1, &n2] {
            eventually(Duration::from_secs(3), "leaver visible", || async {
                keys(h, "room").await.contains("leaver")
            })
            .await;
        }
        let t0 = Instant::now();
        n3.shutdown().await.unwrap();
        for h in [&n1, &n2] {
            eventually(
                Duration::from_secs(1),
                "presence leaves at once",
                || async { keys(h, "room").await.is_empty() },
            )
            .await;
        }
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(1000), "took {took:?}");
        assert!(
            n3.members().await.is_err(),
            "a stopped engine answers nothing"
        );
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn node_with_wrong_secret_cannot_join_or_inject() {
    timeout(Duration::from_secs(30), async {
        let n1 = start("n1", &[]).await;
        let n2 = start("n2", &[n1.local_addr()]).await;
        eventually(Duration::from_secs(5), "pair", || async {
            up_names(&n1).await == names(&["n2"])
        })
        .await;
        n1.track("room", "alice", ConnId(1), Meta::new("{}"))
            .await
            .unwrap();
        let mut sub = n1.subscribe("chat").await.unwrap();

        let mut c = config(
            "mallory",
            1,
            any_port(),
            &[n1.local_addr(), n2.local_addr()],
        );
        c.secret = b"not-the-cluster-secret-at-all!!".to_vec();
        let bad = Engine::start(c).await.unwrap();
        bad.track("room", "mallory", ConnId(1), Meta::new("{}"))
            .await
            .unwrap();
        let _bad_sub = bad.subscribe("chat").await.unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(3000) {
            bad.publish("chat", Bytes::from_static(b"injected"))
                .await
                .unwrap();
            for h in [&n1, &n2] {
                assert!(!up_names(h).await.contains("mallory"));
                assert_eq!(keys(h, "room").await, names(&["alice"]));
            }
            assert!(
                bad.members().await.unwrap().is_empty(),
                "it learned a member"
            );
            assert_eq!(keys(&bad, "room").await, names(&["mallory"]));
            sleep(Duration::from_millis(100)).await;
        }
        assert!(sub.try_recv().is_none(), "an injected broadcast arrived");
        // The attempts were made, and refused by the cluster's nodes.
        let refused =
            n1.stats().await.unwrap().auth_failures + n2.stats().await.unwrap().auth_failures;
        assert!(refused >= 2, "no refused connection: {refused}");
        for h in [n1, n2, bad] {
            h.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test timed out");
}

/// A QUIC client endpoint that speaks the transport but not necessarily the
/// secret.
fn client() -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(any_port()).unwrap();
    ep.set_default_client_config(tls::client_config(transport_config()).unwrap());
    ep
}

async fn closed_code(conn: &quinn::Connection) -> Option<u32> {
    match timeout(Duration::from_secs(7), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner() as u32),
        _ => None,
    }
}

async fn authenticated(ep: &quinn::Endpoint, to: SocketAddr) -> quinn::Connection {
    authenticated_as(ep, to, NodeId::new("probe", 1)).await
}

async fn authenticated_as(ep: &quinn::Endpoint, to: SocketAddr, id: NodeId) -> quinn::Connection {
    let conn = ep.connect(to, tls::SERVER_NAME).unwrap().await.unwrap();
    let me = PeerHello {
        instance: 42,
        addr: ep.local_addr().unwrap(),
        id,
    };
    let peer = auth::authenticate(&conn, Role::Dialer, SECRET, &me, Duration::from_secs(5))
        .await
        .expect("the node proves the secret back");
    assert_eq!(peer.addr, to);
    conn
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    timeout(Duration::from_secs(40), async {
        let n1 = start("n1", &[]).await;
        let n2 = start("n2", &[n1.local_addr()]).await;
        eventually(Duration::from_secs(5), "pair", || async {
            up_names(&n1).await == names(&["n2"])
        })
        .await;
        let target = n1.local_addr();

        // Random UDP datagrams, some shaped like QUIC long headers.
        let udp = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..300usize {
            let len = 1 + (i * 37) % 1400;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            if i % 3 == 0 {
                buf[0] = 0xc0 | (buf[0] & 0x0f);
            }
            udp.send_to(&buf, target).await.unwrap();
        }

        // A QUIC peer without the secret: garbage instead of a proof.
        let ep = client();
        let conn = ep.connect(target, tls::SERVER_NAME).unwrap().await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0xAB; 200]).await.unwrap();
        let _ = conn.send_datagram(Bytes::from_static(b"\x01garbage"));
        assert_eq!(closed_code(&conn).await, Some(codes::AUTH_FAILED));

        // A QUIC peer that never proves anything is closed at the timeout.
        let silent = ep.connect(target, tls::SERVER_NAME).unwrap().await.unwrap();
        assert_eq!(closed_code(&silent).await, Some(codes::AUTH_FAILED));

        // Authenticated, then an undecodable frame.
        let conn = authenticated(&ep, target).await;
        let mut uni = conn.open_uni().await.unwrap();
        uni.write_all(&5u32.to_be_bytes()).await.unwrap();
        uni.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert_eq!(closed_code(&conn).await, Some(codes::PROTOCOL));

        // Authenticated, then a frame header over MAX_FRAME.
        let conn = authenticated(&ep, target).await;
        let mut uni = conn.open_uni().await.unwrap();
        uni.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert_eq!(closed_code(&conn).await, Some(codes::FRAME_TOO_LARGE));

        // Authenticated, then a garbage datagram.
        let conn = authenticated(&ep, target).await;
        conn.send_datagram(Bytes::from_static(&[1, 2, 3])).unwrap();
        assert_eq!(closed_code(&conn).await, Some(codes::PROTOCOL));

        // The cluster is healthy.
        let stats = n1.stats().await.unwrap();
        assert!(stats.auth_failures >= 2, "{stats:?}");
        assert!(stats.protocol_errors >= 3, "{stats:?}");
        let mut sub = n2.subscribe("after").await.unwrap();
        n1.track("after", "ok", ConnId(1), Meta::new("{}"))
            .await
            .unwrap();
        eventually(Duration::from_secs(3), "gossip still flows", || async {
            keys(&n2, "after").await.contains("ok")
        })
        .await;
        n1.publish("after", Bytes::from_static(b"still"))
            .await
            .unwrap();
        assert_eq!(next_broadcast(&mut sub).await.unwrap().as_ref(), b"still");
        assert_eq!(up_names(&n1).await, names(&["n2"]));
        assert_eq!(up_names(&n2).await, names(&["n1"]));
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// A secret holder authenticated as `mallory` cannot speak as `n2`: the
/// message is dropped and counted. A message with a meta that is not a JSON
/// object is dropped whole and counted, and the connection stays: mallory's
/// own hello afterwards makes it a member.
#[tokio::test]
async fn a_peer_claiming_another_name_is_dropped() {
    timeout(Duration::from_secs(30), async {
        let n1 = start("n1", &[]).await;
        let ep = client();
        let me = ep.local_addr().unwrap();
        let mallory = NodeId::new("mallory", 1);
        let conn = authenticated_as(&ep, n1.local_addr(), mallory.clone()).await;
        let mut uni = conn.open_uni().await.unwrap();
        let frame = |from: &NodeId, body: Body| {
            let bytes = Message {
                from: from.clone(),
                addr: me,
                body,
            }
            .encode();
            let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&bytes);
            out
        };
        let n2 = NodeId::new("n2", 1);
        let forged = frame(&n2, Body::Hello { full: false });
        let bad_meta = frame(
            &mallory,
            Body::Delta {
                start: 0,
                seq: 1,
                presence: Delta {
                    parts: vec![Part {
                        origin: mallory.clone(),
                        ops: Ranges::span(1, 1),
                        adds: vec![(
                            1,
                            PresEntry {
                                topic: "room".into(),
                                key: "m".into(),
                                conn: ConnId(1),
                                meta: Meta::new("{\"a\":1}]},\"forged\":{\"metas\":[{"),
                                phx_ref: PhxRef([7; 12]),
                                prev_ref: None,
                            },
                        )],
                        removes: vec![],
                        full: false,
                    }],
                },
                subs: Delta::default(),
            },
        );
        let honest = frame(&mallory, Body::Hello { full: false });
        for f in [forged, bad_meta, honest] {
            uni.write_all(&f).await.unwrap();
        }
        eventually(
            Duration::from_secs(5),
            "mallory's own hello admitted",
            || async { up_names(&n1).await == names(&["mallory"]) },
        )
        .await;
        let stats = n1.stats().await.unwrap();
        assert_eq!(stats.node.rejected_identity, 1, "{stats:?}");
        assert_eq!(stats.rejected_invalid, 1, "{stats:?}");
        assert_eq!(stats.protocol_errors, 0, "the connection stayed");
        assert!(n1.presence("room").await.unwrap().is_empty());
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// A peer that answers every probe but reads nothing of our stream (a node
/// stuck merging, or one that stopped reading) stays up while 48 MiB of
/// broadcasts to it back up: more than its 8 MiB stream window and our 16 MiB
/// peer queue. Probes go out as datagrams at once, neither behind the blocked
/// stream nor dropped with the stream frames that overflow the queue, so
/// failure detection measures whether the peer's packets arrive, not our
/// backlog. (When probes waited in the queue behind the stream, none reached
/// mallory once the queue filled, and n1 marked it down within 2 s.)
#[tokio::test]
async fn a_peer_that_answers_probes_stays_up_while_its_stream_backs_up() {
    timeout(Duration::from_secs(60), async {
        let n1 = start("n1", &[]).await;
        let ep = client();
        let me = ep.local_addr().unwrap();
        let mallory = NodeId::new("mallory", 1);
        let conn = authenticated_as(&ep, n1.local_addr(), mallory.clone()).await;
        let message = |body: Body| {
            Message {
                from: mallory.clone(),
                addr: me,
                body,
            }
            .encode()
        };
        let hello = message(Body::Hello { full: false });
        let mut uni = conn.open_uni().await.unwrap();
        uni.write_all(&(hello.len() as u32).to_be_bytes())
            .await
            .unwrap();
        uni.write_all(&hello).await.unwrap();

        // mallory acks every ping that reaches it and never accepts n1's
        // stream.
        let pings = Arc::new(AtomicU64::new(0));
        let responder = {
            let (conn, pings, from) = (conn.clone(), pings.clone(), mallory.clone());
            let ack = move |seq| {
                let body = Body::Swim(Swim::PingAck {
                    seq,
                    gossip: vec![],
                });
                Message {
                    from: from.clone(),
                    addr: me,
                    body,
                }
                .encode()
            };
            tokio::spawn(async move {
                while let Ok(d) = conn.read_datagram().await {
                    if let Ok(Message {
                        body: Body::Swim(Swim::Ping { seq, .. }),
                        ..
                    }) = Message::decode(&d)
                    {
                        pings.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.send_datagram(Bytes::from(ack(seq)));
                    }
                }
            })
        };
        let answered = || pings.load(Ordering::Relaxed);
        eventually(Duration::from_secs(5), "mallory up", || async {
            up_names(&n1).await == names(&["mallory"])
        })
        .await;
        eventually(Duration::from_secs(5), "pings answered", || async {
            answered() >= 5
        })
        .await;

        let big = Bytes::from(vec![b'z'; 1 << 20]);
        for i in 0..48 {
            // A topic each, so no broadcast waits for credit.
            let topic = format!("big{i}");
            n1.direct_publish(mallory.clone(), topic.as_str(), big.clone())
                .await
                .unwrap();
        }
        eventually(
            Duration::from_secs(10),
            "n1's queue to mallory full",
            || async { n1.stats().await.unwrap().peer_queue_overflows > 0 },
        )
        .await;
        // 10 protocol periods (200 ms each) with the queue full: past the
        // suspicion timeout (0.8 s after a missed probe) many times over.
        let at_full = answered();
        eventually(
            Duration::from_secs(10),
            "pings reach mallory while its stream is backed up",
            || async {
                assert_eq!(
                    up_names(&n1).await,
                    names(&["mallory"]),
                    "mallory answers every probe that reaches it, yet is marked down \
                     ({} pings reached it since n1's queue to it filled)",
                    answered() - at_full
                );
                answered() >= at_full + 10
            },
        )
        .await;
        responder.abort();
        conn.close(0u32.into(), b"done");
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// Two processes started with the same node name: the older one's engine
/// stops with `NameClash` naming the newer one (what the `chorus` binary
/// prints before exiting non-zero), and the cluster keeps the newer one.
#[tokio::test]
async fn the_older_of_two_engines_with_one_name_stops() {
    timeout(Duration::from_secs(30), async {
        let n0 = start("n0", &[]).await;
        let old = Engine::start(config("n1", 1, any_port(), &[n0.local_addr()]))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "old joined", || async {
            up_names(&n0).await == names(&["n1"])
        })
        .await;
        let new = Engine::start(config("n1", 2, any_port(), &[n0.local_addr()]))
            .await
            .unwrap();
        let err = timeout(Duration::from_secs(10), old.failed())
            .await
            .expect("the older engine stops");
        match &err {
            chorus_engine::runtime::RuntimeError::NameClash { me, other } => {
                assert_eq!((me, other), (&NodeId::new("n1", 1), &NodeId::new("n1", 2)));
            }
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("\"n1\""), "{err}");
        let ids: Vec<NodeId> = n0
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [NodeId::new("n1", 2)]);
        new.shutdown().await.unwrap();
        n0.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

async fn late_joiner_gets_full_state(n: usize, within: Duration) {
    let n1 = start("n1", &[]).await;
    let n2 = start("n2", &[n1.local_addr()]).await;
    eventually(Duration::from_secs(5), "pair", || async {
        up_names(&n1).await == names(&["n2"])
    })
    .await;
    // Half the presences on each node, spread over a few topics.
    for i in 0..n {
        let h = if i % 2 == 0 { &n1 } else { &n2 };
        h.track(
            format!("big:{}", i % 4).as_str(),
            format!("u{i}"),
            ConnId(i as u64),
            Meta::new("{\"x\":1}"),
        )
        .await
        .unwrap();
    }
    let count = |h: &EngineHandle| {
        let h = h.clone();
        async move {
            let mut total = 0;
            for t in 0..4 {
                total += h.presence(format!("big:{t}").as_str()).await.unwrap().len();
            }
            total
        }
    };
    eventually(Duration::from_secs(20), "the founders converge", || async {
        count(&n1).await == n && count(&n2).await == n
    })
    .await;
    let t0 = Instant::now();
    let late = start("late", &[n2.local_addr()]).await;
    let took = eventually(within, "the late joiner holds every presence", || async {
        count(&late).await == n
    })
    .await;
    eprintln!(
        "late joiner received {n} presences in {:?}",
        t0.elapsed().max(took)
    );
    for h in [n1, n2, late] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn late_joiner_receives_20k_presences() {
    timeout(
        Duration::from_secs(120),
        late_joiner_gets_full_state(20_000, Duration::from_secs(30)),
    )
    .await
    .expect("test timed out");
}

/// About 80 s in a debug build, most of it tracking the 100k presences; the
/// join itself takes about 14 s.
#[tokio::test]
async fn late_joiner_receives_100k_presences() {
    timeout(
        Duration::from_secs(300),
        late_joiner_gets_full_state(100_000, Duration::from_secs(30)),
    )
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn history_and_registers_replicate_over_quic() {
    let (a, b, c) = cluster_of_three().await;
    a.append("room:1", 1_000, "{\"body\":\"hi\"}")
        .await
        .expect("append");
    b.put("room", "lobby", 1_000, Some("Lobby"))
        .await
        .expect("put");
    eventually(Duration::from_secs(5), "records on every node", || async {
        [&a, &b, &c].iter().all(|h| {
            let r = h.records().read();
            r.last("room:1", 50).len() == 1 && r.get("room", "lobby").is_some()
        })
    })
    .await;
    // The writer of the message goes away; the others keep it.
    a.abort();
    let r = c.records().read();
    assert_eq!(&*r.last("room:1", 50)[0].1, "{\"body\":\"hi\"}");
}

/// A resolver whose answer the test sets.
#[derive(Debug)]
struct TestResolver {
    answer: std::sync::Mutex<Result<Vec<SocketAddr>, std::io::ErrorKind>>,
    lookups: std::sync::atomic::AtomicUsize,
}

impl chorus_engine::runtime::Resolver for TestResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> chorus_engine::runtime::discovery::Lookup<'a> {
        assert_eq!((host, port), ("peers.test", 7400));
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { answer.map_err(std::io::Error::from) })
    }
}

/// `dns:` seeds: the runtime resolves the name with the injected resolver,
/// joins the addresses as they appear (never itself, though its own address
/// is in the answer), and a failing lookup is retried without harm.
#[tokio::test]
async fn dns_seeds_are_resolved_again_and_new_addresses_joined() {
    let b = start("b", &[]).await;
    let c = start("c", &[]).await;
    let resolver = std::sync::Arc::new(TestResolver {
        answer: std::sync::Mutex::new(Err(std::io::ErrorKind::NotFound)),
        lookups: Default::default(),
    });
    let mut cfg = config("a", 1, any_port(), &[]);
    cfg.discovery = chorus_engine::runtime::Discovery {
        names: vec![chorus_engine::runtime::DnsName {
            host: "peers.test".into(),
            port: 7400,
        }],
        interval: Duration::from_millis(50),
        resolver: resolver.clone(),
    };
    let a = Engine::start(cfg).await.expect("engine starts");
    let lookups = || resolver.lookups.load(std::sync::atomic::Ordering::SeqCst);
    eventually(
        Duration::from_secs(5),
        "lookups retried after failures",
        || {
            let n = lookups();
            async move { n >= 3 }
        },
    )
    .await;
    assert!(a.is_running(), "a failing lookup is not fatal");
    assert!(up_names(&a).await.is_empty());

    // The answer holds a's own address too, as a headless service's does.
    *resolver.answer.lock().unwrap() = Ok(vec![a.local_addr(), b.local_addr()]);
    eventually(Duration::from_secs(10), "a and b join", || async {
        up_names(&a).await == names(&["b"]) && up_names(&b).await == names(&["a"])
    })
    .await;

    // c appears in DNS later: joined.
    *resolver.answer.lock().unwrap() = Ok(vec![c.local_addr(), a.local_addr(), b.local_addr()]);
    eventually(Duration::from_secs(10), "c joins", || async {
        up_names(&a).await == names(&["b", "c"]) && up_names(&c).await == names(&["a", "b"])
    })
    .await;
    let stats = a.stats().await.unwrap();
    assert!(
        !stats.peers.contains_key(&a.local_addr()),
        "a never dialled itself: {stats:?}"
    );

    // The name fails again: nothing is lost, nothing stops.
    *resolver.answer.lock().unwrap() = Err(std::io::ErrorKind::TimedOut);
    let seen = lookups();
    eventually(Duration::from_secs(5), "more lookups", || {
        let n = lookups();
        async move { n >= seen + 3 }
    })
    .await;
    assert_eq!(up_names(&a).await, names(&["b", "c"]));
    for e in [a, b, c] {
        e.shutdown().await.unwrap();
    }
}

/// A real name through the system resolver: `dns:localhost:PORT` finds the
/// node listening on 127.0.0.1:PORT.
#[tokio::test]
async fn a_dns_seed_through_the_system_resolver() {
    let b = start("b", &[]).await;
    let mut cfg = config("a", 1, any_port(), &[]);
    cfg.discovery.names = vec![chorus_engine::runtime::DnsName {
        host: "localhost".into(),
        port: b.local_addr().port(),
    }];
    cfg.discovery.interval = Duration::from_millis(200);
    let a = Engine::start(cfg).await.expect("engine starts");
    eventually(
        Duration::from_secs(10),
        "a joins b through localhost",
        || async { up_names(&a).await == names(&["b"]) && up_names(&b).await == names(&["a"]) },
    )
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
