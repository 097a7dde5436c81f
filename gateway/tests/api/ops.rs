//! `/readyz` and `/metrics`.

use std::time::Duration;

use chorus_gateway::server::{ApiKey, ServerConfig};
use serde_json::json;

use crate::cluster::ready;
use crate::http::{Req, KEY};
use crate::prom::{parse, Exposition};
use crate::util::{eventually, Node, NodeBuilder};

async fn scrape(node: &Node) -> anyhow::Result<Exposition> {
    let reply = Req::new("GET", "/metrics").send(node.addr).await?;
    anyhow::ensure!(reply.status == 200, "/metrics answered {}", reply.status);
    parse(&reply.text())
}

const WS: &[(&str, &str)] = &[("transport", "websocket")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_needs_a_peer_when_seeds_are_configured() -> anyhow::Result<()> {
    let lone = NodeBuilder::new().start().await?;
    let reply = Req::new("GET", "/readyz").send(lone.addr).await?;
    assert_eq!(
        (reply.status, reply.json()?),
        (200, json!({"status": "ready"}))
    );

    // A seed that never answers: a bound UDP port with no engine behind it.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let waiting = NodeBuilder::new()
        .seeds("w", vec![silent.local_addr()?])
        .start()
        .await?;
    let reply = Req::new("GET", "/readyz").send(waiting.addr).await?;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()?["status"], "not_ready");
    assert!(reply.json()?["reason"]
        .as_str()
        .is_some_and(|r| r.contains("peer")));
    waiting.stop().await?;
    lone.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() -> anyhow::Result<()> {
    let config = ServerConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..ServerConfig::default()
    };
    let node = NodeBuilder::new().config(config).start().await?;
    assert!(eventually(Duration::from_secs(10), || ready(&node)).await);
    let before = scrape(&node).await?;
    assert_eq!(before.value("chorus_connections", WS), Some(0.0));
    assert_eq!(before.value("chorus_messages_in_total", WS), Some(0.0));
    assert_eq!(before.value("chorus_engine_up", &[]), Some(1.0));
    for family in [
        "chorus_connections",
        "chorus_connections_opened",
        "chorus_channels_joined",
        "chorus_joins",
        "chorus_join_errors",
        "chorus_messages_in",
        "chorus_messages_out",
        "chorus_received_bytes",
        "chorus_sent_bytes",
        "chorus_broadcast_fanout_seconds",
        "chorus_presence_entries",
        "chorus_cluster_members",
        "chorus_gossip_bytes",
        "chorus_gossip_messages",
        "chorus_queue_overflows",
        "chorus_slow_consumer_disconnects",
        "chorus_protocol_errors",
    ] {
        assert!(before.types.contains_key(family), "{family} is not exposed");
    }

    let mut client = node.client("user_id=carol&vsn=2.0.0").await?;
    let refused = client.join("2", "nope:1", "{}").await?;
    assert_eq!(refused[4]["status"], "error");
    client.join("1", "room:m", "{}").await?;
    client
        .send(r#"["1","3","room:m","new_msg",{"body":"hi"}]"#)
        .await?;
    client.recv_event("new_msg").await?;
    let sent = Req::authed("POST", "/api/broadcast")
        .json(&json!({"topic": "room:m", "event": "api", "payload": {}, "idempotency_key": "m1"}))
        .send(node.addr)
        .await?;
    assert_eq!(sent.status, 202);
    client.recv_event("api").await?;
    let dup = Req::authed("POST", "/api/broadcast")
        .json(&json!({"topic": "room:m", "event": "api", "payload": {}, "idempotency_key": "m1"}))
        .send(node.addr)
        .await?;
    assert_eq!(dup.status, 200);

    let after = scrape(&node).await?;
    let v = |name: &str, labels: &[(&str, &str)]| after.value(name, labels).unwrap_or(-1.0);
    assert_eq!(v("chorus_connections", WS), 1.0);
    assert_eq!(v("chorus_connections_opened_total", WS), 1.0);
    assert_eq!(v("chorus_channels_joined", WS), 1.0);
    assert_eq!(v("chorus_joins_total", WS), 1.0);
    assert_eq!(
        v("chorus_join_errors_total", &[("reason", "unmatched_topic")]),
        1.0
    );
    assert_eq!(
        v("chorus_messages_in_total", WS),
        3.0,
        "two joins and a push"
    );
    assert!(
        v("chorus_messages_out_total", WS) >= 5.0,
        "replies, presence, broadcasts"
    );
    assert!(v("chorus_received_bytes_total", WS) > 50.0);
    assert!(v("chorus_sent_bytes_total", WS) > v("chorus_received_bytes_total", WS));
    assert_eq!(
        v("chorus_api_broadcasts_total", &[("outcome", "sent")]),
        1.0
    );
    assert_eq!(
        v("chorus_api_broadcasts_total", &[("outcome", "duplicate")]),
        1.0
    );
    assert_eq!(v("chorus_presence_entries", &[]), 1.0, "carol");
    assert!(v("chorus_broadcast_fanout_seconds_count", &[]) >= 2.0);
    assert_eq!(v("chorus_cluster_members", &[("state", "up")]), 0.0);

    drop(client);
    let closed = eventually(Duration::from_secs(5), || async {
        scrape(&node).await.is_ok_and(|m| {
            m.value("chorus_connections", WS) == Some(0.0)
                && m.value("chorus_channels_joined", WS) == Some(0.0)
        })
    })
    .await;
    assert!(
        closed,
        "the gauges did not come back to 0 after the client left"
    );
    node.stop().await
}

/// Fail fast: a node whose engine task dies (killed here with `abort`, what
/// a panic does to it) stops calling itself healthy at once: `/healthz` and
/// `/readyz` answer 503 saying why, and `Server::engine_failed` resolves for
/// the embedder to exit (the `chorus` binary drains and exits non-zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_makes_health_and_readiness_fail() -> anyhow::Result<()> {
    let node = NodeBuilder::new().start().await?;
    let health = Req::new("GET", "/healthz").send(node.addr).await?;
    assert_eq!((health.status, health.text()), (200, "ok\n".to_owned()));

    let server = node.server.clone();
    let failed = tokio::spawn(async move { server.engine_failed().await });
    node.engine.abort();
    let err = tokio::time::timeout(Duration::from_secs(5), failed)
        .await
        .expect("engine_failed resolves once the engine task is gone")?;
    assert!(err.to_string().contains("aborted"), "{err}");

    let health = Req::new("GET", "/healthz").send(node.addr).await?;
    assert_eq!(health.status, 503, "{}", health.text());
    assert!(
        health.text().starts_with("engine failed: "),
        "{}",
        health.text()
    );
    let ready = Req::new("GET", "/readyz").send(node.addr).await?;
    assert_eq!(
        (ready.status, ready.json()?),
        (
            503,
            json!({"status": "not_ready", "reason": "the cluster engine has stopped"})
        )
    );
    node.stop().await
}
