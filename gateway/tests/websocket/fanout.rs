//! A client that stops reading during a broadcast flood is closed as a slow consumer
//! while another subscriber keeps receiving everything, in order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chorus_gateway::protocol::{JsonObject, Payload};
use chorus_gateway::server::ServerConfig;
use tokio::sync::watch;

use crate::util::{Client, Ended, NodeBuilder};

const MESSAGES: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_others_keep_receiving() -> anyhow::Result<()> {
    let config = ServerConfig {
        outbound_queue_bytes: 256 * 1024,
        ..ServerConfig::default()
    };
    let node = NodeBuilder::new().config(config).start().await?;
    // The slow client's socket buffers are small, so the server notices early.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(node.addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(
        node.url("vsn=2.0.0"),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await?;
    let mut slow = Client { ws };
    slow.join("1", "room:flood", "{}").await?;
    let mut fast = node.client("vsn=2.0.0").await?;
    fast.join("1", "room:flood", "{}").await?;

    // The fast reader counts flood messages and checks their order.
    let (seen_tx, mut seen) = watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut next = 0usize;
        while next < MESSAGES {
            let v = fast.recv_event("flood").await?;
            assert_eq!(v[4]["n"], next, "flood messages arrive in order");
            next += 1;
            seen_tx.send_replace(next);
        }
        anyhow::Ok(fast)
    });

    let filler = "y".repeat(2000);
    let hub = node.server.hub().clone();
    for n in 0..MESSAGES {
        let payload = JsonObject::from_value(&serde_json::json!({ "n": n, "fill": filler }))?;
        hub.broadcast("room:flood", "flood", Payload::Json(payload))
            .await?;
        // Keep the publisher within the fast reader's budget: at most 50 ahead.
        if n >= 50 {
            let target = n - 50;
            tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|s| *s >= target))
                .await??;
        }
    }
    let mut fast = tokio::time::timeout(Duration::from_secs(20), reader).await???;
    let slow_consumers = node.server.stats().slow_consumers.load(Ordering::Relaxed);
    assert_eq!(
        slow_consumers, 1,
        "exactly the slow client was disconnected"
    );
    let ended = slow.ended().await?;
    assert!(
        matches!(ended, Ended::Code(1008) | Ended::Abrupt),
        "slow consumer ended with {ended:?}"
    );
    fast.assert_alive("1", "room:flood").await?;
    node.stop().await
}
