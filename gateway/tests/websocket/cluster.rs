//! Two nodes seeded to each other on 127.0.0.1: a broadcast from a client on node A
//! reaches a client on node B, and presence is visible across.

use std::time::Duration;

use chorus_engine::runtime::EngineHandle;
use chorus_engine::PeerState;
use serde_json::Value;

use crate::util::{eventually, Client, NodeBuilder};

async fn sees_peer(engine: &EngineHandle) -> bool {
    engine
        .members()
        .await
        .is_ok_and(|m| m.iter().any(|m| m.state == PeerState::Up))
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
        eventually(Duration::from_secs(10), || sees_peer(&a.engine)).await
            && eventually(Duration::from_secs(10), || sees_peer(&b.engine)).await,
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
