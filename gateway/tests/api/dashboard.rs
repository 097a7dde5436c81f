//! `/dashboard` and its socket over a real server: the page and the socket
//! need the API key, the socket relays the node's snapshot on the internal
//! topic, a user socket cannot join that topic, and without a key or with
//! `dashboard: false` there is no dashboard.

use chorus_gateway::server::{ApiKey, ServerConfig};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::http::{Req, KEY};
use crate::util::{Client, Node, NodeBuilder};

fn with_key(dashboard: bool) -> ServerConfig {
    ServerConfig {
        api_key: Some(ApiKey::new(KEY)),
        dashboard,
        ..ServerConfig::default()
    }
}

/// Opens the dashboard socket with `key` as a bearer token; the HTTP status of a refusal.
async fn open(node: &Node, key: Option<&str>) -> Result<Client, u16> {
    let url = format!("ws://{}/dashboard/websocket?vsn=2.0.0", node.addr);
    let mut req = url.into_client_request().expect("a request");
    if let Some(key) = key {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_socket_needs_the_key_and_relays_snapshots() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(with_key(true)).start().await?;
    let page = Req::new("GET", "/dashboard").send_raw(node.addr).await?;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("chorus:dashboard"));

    assert_eq!(open(&node, None).await.err(), Some(403));
    assert_eq!(open(&node, Some("not-the-key")).await.err(), Some(403));
    let mut dash = open(&node, Some(KEY)).await.expect("the key opens it");
    let reply = dash.join("1", "chorus:dashboard", "{}").await?;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    assert_eq!(reply[4]["response"]["name"], "test");
    let push = dash.recv_event("node").await?;
    assert_eq!(push[0], "1", "pushed on the join");
    assert_eq!(push[2], "chorus:dashboard");
    let snapshot = &push[4];
    assert_eq!(snapshot["name"], "test");
    for field in [
        "connections",
        "channels",
        "messages_in",
        "gossip",
        "overflows",
        "members",
        "topics",
    ] {
        assert!(snapshot.get(field).is_some(), "{field} in {snapshot}");
    }
    // Another topic, or a bad frame, on the dashboard socket.
    let other = dash.join("2", "room:1", "{}").await?;
    assert_eq!(other[4]["response"]["reason"], "unmatched topic");
    dash.send("not json").await?;
    assert_eq!(dash.ended().await?, crate::util::Ended::Code(1007));

    // A user socket cannot join the internal topic.
    let mut user = node.client("vsn=2.0.0").await?;
    let refused = user.join("1", "chorus:dashboard", "{}").await?;
    assert_eq!(
        refused[4]["response"]["reason"],
        Value::from("unmatched topic")
    );
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_dashboard_off_means_no_dashboard() -> anyhow::Result<()> {
    let off = NodeBuilder::new().config(with_key(false)).start().await?;
    let no_key = NodeBuilder::new().start().await?;
    for node in [&off, &no_key] {
        let page = Req::new("GET", "/dashboard").send_raw(node.addr).await?;
        assert_eq!(page.status, 404);
        assert_eq!(open(node, Some(KEY)).await.err(), Some(404));
    }
    off.stop().await?;
    no_key.stop().await
}

/// A server given an empty API key (an embedder's `ApiKey::new("")`; the
/// binary refuses one at start) opens its dashboard to nobody, not to a
/// client offering an empty bearer token in the subprotocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_api_key_opens_the_dashboard_to_nobody() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(ServerConfig {
            api_key: Some(ApiKey::new("")),
            ..ServerConfig::default()
        })
        .start()
        .await?;
    let url = format!("ws://{}/dashboard/websocket?vsn=2.0.0", node.addr);
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("phoenix, base64url.bearer.phx."),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 403);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the dashboard opened to an empty key"),
    }
    node.stop().await
}
