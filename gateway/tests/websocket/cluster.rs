//! Two nodes seeded to each other on 127.0.0.1: a broadcast from a client on node A
//! reaches a client on node B, and presence is visible across.

use std::time::Duration;

use chorus_engine::runtime::EngineHandle;
use chorus_engine::PeerState;
use serde_json::Value;

use tokio_tungstenite::tungstenite::Message;

use crate::util::{eventually, Client, Node, NodeBuilder};

async fn sees_peer(engine: &EngineHandle) -> bool {
    engine
        .members()
        .await
        .is_ok_and(|m| m.iter().any(|m| m.state == PeerState::Up))
}

/// Whether `a` and `b` each see the other up within 10 s.
async fn see_each_other(a: &Node, b: &Node) -> bool {
    eventually(Duration::from_secs(10), || sees_peer(&a.engine)).await
        && eventually(Duration::from_secs(10), || sees_peer(&b.engine)).await
}

/// Reads frames until the client's presence view of `topic` holds `key`.
async fn wait_for_presence(client: &mut Client, key: &str) -> anyhow::Result<()> {
    loop {
        let v: Value = serde_json::from_str(&client.recv_text().await?)?;
        let found = match v[3].as_str() {
            Some("presence_state") => v[4].get(key).is_some(),
            Some("presence_diff") => v[4]["joins"].get(key).is_some(),
            _ => false,
        };
        if found {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_broadcasts_and_presence() -> anyhow::Result<()> {
    let a = NodeBuilder::new().seeds("a", Vec::new()).start().await?;
    let b = NodeBuilder::new()
        .seeds("b", vec![a.engine.local_addr()])
        .start()
        .await?;
    assert!(
        see_each_other(&a, &b).await,
        "the nodes never saw each other"
    );

    let mut on_a = a.client("user_id=alice&vsn=2.0.0").await?;
    let mut on_b = b.client("user_id=bob&vsn=2.0.0").await?;
    on_a.join("1", "room:c", "{}").await?;
    on_b.join("1", "room:c", "{}").await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        wait_for_presence(&mut on_b, "alice"),
    )
    .await??;
    tokio::time::timeout(Duration::from_secs(10), wait_for_presence(&mut on_a, "bob")).await??;

    on_a.send(r#"["1","5","room:c","new_msg",{"body":"from a"}]"#)
        .await?;
    let got = on_b.recv_event("new_msg").await?;
    assert_eq!(
        got,
        serde_json::json!([null, null, "room:c", "new_msg", {"body": "from a"}])
    );
    on_b.send(r#"["1","6","room:c","shout",{"body":"from b"}]"#)
        .await?;
    let got = on_a.recv_event("shout").await?;
    assert_eq!(
        got[4]["body"], "from b",
        "broadcast_from excludes only the sender, on its node"
    );

    b.stop().await?;
    a.stop().await
}

/// Subscribers of the flooded topic on node B: each delivery costs B's
/// dispatcher one mailbox offer per subscriber, and B's connections one
/// write each, so B takes a broadcast far slower than A accepts one.
const FLOOD_SUBSCRIBERS: usize = 256;
/// Clients on A flooding the topic at once, each as fast as A takes it.
const FLOOD_PUBLISHERS: usize = 1;
/// Broadcasts of each publisher.
const FLOOD_MESSAGES: usize = 5_000;

/// `(p, n)` of a `shout` frame `[null,null,"room:xflood","shout",{"p":P,"n":N}]`.
fn shout_ids(text: &str) -> Option<(usize, usize)> {
    let body = text.split_once(r#""shout",{"p":"#)?.1;
    let (p, rest) = body.split_once(r#","n":"#)?;
    let n = rest.strip_suffix("}]")?;
    Some((p.parse().ok()?, n.parse().ok()?))
}

/// Cross-node flow control: a client on A floods a topic past what B's
/// subscribers can take. A has at most a credit window of broadcasts to the
/// topic in flight to B, B returns credit only while its subscription has
/// room, and A's publish path waits while the topic is held, so every
/// subscriber on B gets every broadcast, in order, and B's engine never drops
/// the topic's subscription (`resubscribed` stays 0).
///
/// Without the credit window (A's engine sending every broadcast at once, as
/// before it), 5 runs of 5 lost deliveries: B's engine dropped the
/// subscription (`resubscribed` 1) and each reader found a gap or waited in
/// vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_node_flood_is_paced_not_dropped() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;

    use chorus_gateway::limits::ClientLimits;
    use chorus_gateway::server::ServerConfig;
    use futures_util::{SinkExt, StreamExt};

    // A's publisher may send as fast as it likes: no frame or byte rate.
    let unlimited = ServerConfig {
        client_limits: ClientLimits {
            frame_rate: 0,
            byte_rate: 0,
            ..ClientLimits::default()
        },
        ..ServerConfig::default()
    };
    // Each node's engine and server on a thread each: the node task takes
    // A's publishes and B's peer input as they come, and each server has one
    // thread, whatever the test's clients (on the test's two workers) cost.
    // B's server hands every broadcast to 160 connections, A's takes one from
    // a client: B's dispatcher, the stage this tests, cannot keep up.
    let a = NodeBuilder::new()
        .engine_thread()
        .server_thread()
        .config(unlimited)
        .seeds("a", Vec::new())
        .start()
        .await?;
    // B's subscribers read on the same two cores as everything else: room
    // for the whole flood in each one's outbound queue, so a reader that is
    // merely starved of CPU is not closed as a slow consumer (that is a
    // different defence; here only the topic's backlog may hold back).
    let roomy = ServerConfig {
        outbound_queue_bytes: 16 << 20,
        ..ServerConfig::default()
    };
    let b = NodeBuilder::new()
        .engine_thread()
        .server_thread()
        .config(roomy)
        .seeds("b", vec![a.engine.local_addr()])
        .start()
        .await?;
    assert!(
        see_each_other(&a, &b).await,
        "the nodes never saw each other"
    );

    let mut readers = Vec::new();
    for i in 0..FLOOD_SUBSCRIBERS {
        let mut sub = b.client(&format!("user_id=s{i}&vsn=2.0.0")).await?;
        sub.join("1", "room:xflood", "{}").await?;
        readers.push(tokio::spawn(async move {
            // Each publisher's broadcasts arrive complete and in its order.
            let mut next = [0usize; FLOOD_PUBLISHERS];
            let mut left = FLOOD_PUBLISHERS * FLOOD_MESSAGES;
            while left > 0 {
                // Read without a JSON parse: the readers share the cores with
                // the nodes, and must not be the stage that cannot keep up.
                let text = match sub.recv().await? {
                    Message::Text(t) => t,
                    other => anyhow::bail!("subscriber {i}: unexpected {other:?}"),
                };
                let Some((p, n)) = shout_ids(text.as_str()) else {
                    continue;
                };
                anyhow::ensure!(
                    p < FLOOD_PUBLISHERS,
                    "subscriber {i}: bad publisher in {text}"
                );
                anyhow::ensure!(
                    n == next[p],
                    "subscriber {i}: publisher {p}: expected {}, got {n}",
                    next[p]
                );
                next[p] += 1;
                left -= 1;
            }
            anyhow::Ok(())
        }));
    }

    let started = std::time::Instant::now();
    let mut publishers = Vec::new();
    for p in 0..FLOOD_PUBLISHERS {
        let mut publisher = a.client(&format!("user_id=pub{p}&vsn=2.0.0")).await?;
        publisher.join("1", "room:xflood", "{}").await?;
        publishers.push(tokio::spawn(async move {
            let (mut tx, mut rx) = publisher.ws.split();
            // Drains the publisher's replies (and the other publishers'
            // broadcasts) so its own mailbox never fills.
            let replies = tokio::spawn(async move {
                let mut n = 0usize;
                while n < FLOOD_MESSAGES {
                    match rx.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("phx_reply") => n += 1,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => anyhow::bail!("publisher {p} ended after {n} replies"),
                    }
                }
                anyhow::Ok(())
            });
            for n in 0..FLOOD_MESSAGES {
                let frame = format!(r#"["1","{n}","room:xflood","shout",{{"p":{p},"n":{n}}}]"#);
                tx.feed(Message::text(frame)).await?;
            }
            tx.flush().await?;
            replies.await?
        }));
    }
    for publisher in publishers {
        tokio::time::timeout(Duration::from_secs(60), publisher).await???;
    }
    let taken = started.elapsed();
    eprintln!(
        "cross-node flood: A took {FLOOD_PUBLISHERS} x {FLOOD_MESSAGES} broadcasts in {taken:?}"
    );
    let mut failed = None;
    for reader in readers {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(60), reader).await?? {
            failed.get_or_insert(e);
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = failed {
        let engine = b.engine.stats().await?;
        anyhow::bail!(
            "{e}; B: resubscribed {}, dropped subscriptions {}, credit withheld {} times",
            b.server.hub().stats().resubscribed.load(Ordering::Relaxed),
            engine.slow_subscribers,
            engine.credit_withheld
        );
    }

    let resubscribed = b.server.hub().stats().resubscribed.load(Ordering::Relaxed);
    let withheld = b.engine.stats().await?.credit_withheld;
    let a_stats = a.engine.stats().await?;
    let slow = b.server.stats().slow_consumers.load(Ordering::Relaxed);
    eprintln!(
        "cross-node flood: {FLOOD_SUBSCRIBERS} subscribers on B had them all in {elapsed:?}; \
         B withheld credit {withheld} times; A's broadcasts waited for credit {} times, \
         windows refilled {}, dropped {}; resubscribed {resubscribed}; slow consumers {slow}",
        a_stats.credit_waits, a_stats.credit_refills, a_stats.credit_dropped
    );
    assert_eq!(resubscribed, 0, "B's engine never dropped the subscription");
    assert_eq!(slow, 0, "no subscriber on B was dropped as a slow consumer");
    assert_eq!(a_stats.credit_dropped, 0, "A dropped no broadcast");
    assert!(
        a_stats.credit_waits > 0,
        "A never ran out of credit: the flood does not test flow control"
    );

    b.stop().await?;
    a.stop().await
}
