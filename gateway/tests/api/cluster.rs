//! Two nodes with the API: a broadcast through node A reaches a WebSocket client on
//! node B once, an idempotency key holds on both nodes, presence and the cluster
//! view are answered, and a disconnect closes a user's sockets on both nodes.

use std::time::Duration;

use chorus_engine::runtime::Delivery;
use chorus_gateway::channel::Assigns;
use chorus_gateway::server::api::idempotency;
use chorus_gateway::server::{ApiKey, Authenticator, ServerConfig, SocketInfo};
use serde_json::{json, Value};

use crate::http::{Req, KEY};
use crate::util::{eventually, Client, Ended, Node, NodeBuilder, WAIT};

/// Gives each socket the id `user_socket:<user_id>`, as an application's connect
/// hook would.
fn user_sockets() -> impl Authenticator {
    |params: &Assigns, _: Option<&str>| {
        Ok(SocketInfo {
            id: params
                .get("user_id")
                .and_then(Value::as_str)
                .map(|u| format!("user_socket:{u}")),
            assigns: params.clone(),
        })
    }
}

fn with_key() -> ServerConfig {
    ServerConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..ServerConfig::default()
    }
}

pub async fn ready(node: &Node) -> bool {
    Req::new("GET", "/readyz")
        .send(node.addr)
        .await
        .is_ok_and(|r| r.status == 200)
}

/// Reads frames until one with `event`, counting the frames with `counted` on the way.
async fn count_until(client: &mut Client, counted: &str, event: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    loop {
        let v = client.recv_json(true).await?;
        if v[3] == counted {
            n += 1;
        }
        if v[3] == event {
            return Ok(n);
        }
    }
}

/// A broadcast expected to be refused: its status (and a documented answer).
async fn conflict(node: &Node, body: Value) -> anyhow::Result<u16> {
    let reply = Req::authed("POST", "/api/broadcast")
        .json(&body)
        .send(node.addr)
        .await?;
    anyhow::ensure!(reply.error_code() == "idempotency_conflict", "{reply:?}");
    Ok(reply.status)
}

async fn broadcast(node: &Node, body: Value) -> anyhow::Result<Value> {
    let reply = Req::authed("POST", "/api/broadcast")
        .json(&body)
        .send(node.addr)
        .await?;
    anyhow::ensure!(
        matches!(reply.status, 200 | 202),
        "broadcast answered {}",
        reply.status
    );
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_broadcast_presence_cluster_and_disconnect() -> anyhow::Result<()> {
    let a = NodeBuilder::new()
        .config(with_key())
        .seeds("a", Vec::new())
        .auth(user_sockets())
        .start()
        .await?;
    let b = NodeBuilder::new()
        .config(with_key())
        .seeds("b", vec![a.engine.local_addr()])
        .auth(user_sockets())
        .start()
        .await?;
    // Ready: peers up, idempotency listeners subscribed.
    assert!(
        eventually(Duration::from_secs(10), || ready(&a)).await
            && eventually(Duration::from_secs(10), || ready(&b)).await,
        "the nodes never became ready"
    );

    // Watches the keys crossing to B.
    let mut probe = b.engine.subscribe(idempotency::TOPIC).await?;
    let mut alice_a = a.client("user_id=alice&vsn=2.0.0").await?;
    let mut alice_b = b.client("user_id=alice&vsn=2.0.0").await?;
    let mut bob_b = b.client("user_id=bob&vsn=2.0.0").await?;
    for client in [&mut alice_a, &mut alice_b, &mut bob_b] {
        client.join("1", "room:api", "{}").await?;
    }

    // Broadcast through A reaches B's client, as a channel broadcast would.
    let sent = broadcast(
        &a,
        json!({"topic": "room:api", "event": "news", "payload": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await?;
    assert_eq!(sent, json!({"status": "sent"}));
    let got = bob_b.recv_event("news").await?;
    assert_eq!(got, json!([null, null, "room:api", "news", {"n": 1}]));

    // The key repeats on A (same node) and, once it crossed, on B: the same
    // request is a duplicate, another one a conflict.
    let again =
        json!({"topic": "room:api", "event": "news", "payload": {"n": 1}, "idempotency_key": "k1"});
    let other =
        json!({"topic": "room:api", "event": "news", "payload": {"n": 2}, "idempotency_key": "k1"});
    assert_eq!(
        broadcast(&a, again.clone()).await?,
        json!({"status": "duplicate"})
    );
    assert_eq!(conflict(&a, other.clone()).await?, 409);
    let heard = tokio::time::timeout(WAIT, probe.recv()).await?;
    let Some(Delivery::Broadcast(heard)) = heard else {
        anyhow::bail!("no announcement: {heard:?}");
    };
    assert_eq!(heard[0], 0xFF, "an announcement with a fingerprint");
    assert!(heard.ends_with(b"k1"), "{heard:?}");
    // B's own listener got the same delivery; give its task a moment to record it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        broadcast(&b, again).await?,
        json!({"status": "duplicate"}),
        "node B broadcast a key node A had used"
    );
    assert_eq!(
        conflict(&b, other).await?,
        409,
        "node B knows the request too"
    );
    broadcast(
        &a,
        json!({"topic": "room:api", "event": "marker", "payload": {}}),
    )
    .await?;
    assert_eq!(
        count_until(&mut bob_b, "news", "marker").await?,
        0,
        "a duplicate was delivered"
    );

    // Presence, cluster-wide, from B: alice twice (two sockets), bob once.
    let counted = eventually(Duration::from_secs(10), || async {
        Req::authed("GET", "/api/presence/count?topic=room:api")
            .send(b.addr)
            .await
            .is_ok_and(|r| r.json().ok() == Some(json!({"users": 2, "connections": 3})))
    })
    .await;
    assert!(
        counted,
        "presence count never reached 2 users / 3 connections"
    );
    let state = Req::authed("GET", "/api/presence?topic=room%3Aapi")
        .send(b.addr)
        .await?
        .json()?;
    let keys: Vec<&String> = state.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["alice", "bob"]);
    assert_eq!(state["alice"]["metas"].as_array().map(Vec::len), Some(2));
    assert!(state["bob"]["metas"][0]["phx_ref"].is_string());
    let empty = Req::authed("GET", "/api/presence/count?topic=room:nobody")
        .send(b.addr)
        .await?
        .json()?;
    assert_eq!(empty, json!({"users": 0, "connections": 0}));

    // The cluster as A sees it.
    let cluster = Req::authed("GET", "/api/cluster")
        .send(a.addr)
        .await?
        .json()?;
    assert_eq!(cluster["node"]["name"], "a");
    let members = cluster["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{cluster}");
    assert_eq!(members[0]["name"], "b");
    assert_eq!(members[0]["state"], "up");
    assert_eq!(members[0]["address"], b.engine.local_addr().to_string());
    assert!(members[0]["last_seen_ms_ago"]
        .as_u64()
        .is_some_and(|ms| ms < 5_000));

    // Disconnect alice: both her sockets close with 1001; bob stays.
    let reply = Req::authed("POST", "/api/disconnect")
        .json(&json!({"user_id": "alice"}))
        .send(b.addr)
        .await?;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()?, json!({"socket_id": "user_socket:alice"}));
    assert_eq!(alice_a.ended().await?, Ended::Code(1001));
    assert_eq!(alice_b.ended().await?, Ended::Code(1001));
    bob_b.assert_alive("1", "room:api").await?;

    b.stop().await?;
    a.stop().await
}
