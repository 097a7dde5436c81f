//! PROTOCOL.md §1 and §3 over a real socket: handshake, heartbeat, joins, leaves,
//! broadcasts, presence, v1 and binary frames, disconnect by socket id.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::util::{Client, Ended, Node, NodeBuilder};
use chorus_gateway::channel::Assigns;
use chorus_gateway::protocol::Payload;
use chorus_gateway::server::{close, Denied, ServerConfig, SocketInfo};

#[tokio::test]
async fn heartbeat_is_answered_with_nothing_joined() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("vsn=2.0.0").await?;
    c.send(r#"[null,"10","phoenix","heartbeat",{}]"#).await?;
    assert_eq!(
        c.recv_text().await?,
        r#"[null,"10","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
    c.send(r#"[null,11,"phoenix","heartbeat",{}]"#).await?;
    assert_eq!(
        c.recv_text().await?,
        r#"[null,11,"phoenix","phx_reply",{"status":"ok","response":{}}]"#,
        "a numeric ref is echoed as a number"
    );
    node.stop().await
}

/// Frames a client sends in the same write as its upgrade request (read by
/// the HTTP server before the socket is handed over) are read first, in
/// order: the connection starts with them.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_handled() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start().await?;
    let mut bytes = b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let frames = [
        r#"["1","1","room:early","phx_join",{}]"#,
        r#"[null,"2","phoenix","heartbeat",{}]"#,
    ];
    for text in frames {
        // A masked text frame (the mask is zero: the payload goes as it is).
        bytes.extend_from_slice(&[0x81, 0x80 | text.len() as u8, 0, 0, 0, 0]);
        bytes.extend_from_slice(text.as_bytes());
    }
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await?;
    tcp.write_all(&bytes).await?;
    // The join's reply, then (after the join's presence pushes) the
    // heartbeat's.
    let want = [
        r#"["1","1","room:early","phx_reply",{"status":"ok","response":{}}]"#,
        r#"[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
    ];
    let mut got = Vec::new();
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(first) = text.find(want[0]) {
                if text[first..].contains(want[1]) {
                    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
                    return anyhow::Ok(());
                }
            }
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed after {text:?}");
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read).await??;
    node.stop().await
}

#[tokio::test]
async fn healthz_answers_200() -> anyhow::Result<()> {
    let node = Node::start().await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    node.stop().await
}

/// Rows d and §5: the join reply first, then `presence_state` with the join_ref,
/// then the tracker's diff as a broadcast.
#[tokio::test]
async fn join_reply_then_presence_state_then_diff() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("user_id=u1&vsn=2.0.0").await?;
    c.send(r#"["3","3","room:1","phx_join",{}]"#).await?;
    assert_eq!(
        c.recv_text().await?,
        r#"["3","3","room:1","phx_reply",{"status":"ok","response":{}}]"#
    );
    let state: Value = serde_json::from_str(&c.recv_text().await?)?;
    assert_eq!(state[0], "3");
    assert_eq!(state[1], Value::Null);
    assert_eq!(state[3], "presence_state");
    let metas = state[4]["u1"]["metas"].as_array().expect("u1 metas");
    assert_eq!(metas.len(), 1);
    let phx_ref = metas[0]["phx_ref"].as_str().expect("phx_ref");
    assert_eq!(phx_ref.len(), 16);
    assert!(metas[0]["online_at"].is_string());
    let diff = c.recv_event("presence_diff").await?;
    assert_eq!(diff[0], Value::Null);
    assert_eq!(diff[4]["joins"]["u1"]["metas"][0]["phx_ref"], phx_ref);
    assert_eq!(diff[4]["leaves"], json!({}));

    // A second user sees both, and the first sees the second join.
    let mut d = node.client("vsn=2.0.0").await?;
    d.join("1", "room:1", r#"{"user_id":"u2"}"#).await?;
    let state = d.recv_event("presence_state").await?;
    let mut keys: Vec<_> = state[4]
        .as_object()
        .expect("state")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, ["u1", "u2"]);
    let diff = c.recv_event("presence_diff").await?;
    assert!(diff[4]["joins"]["u2"].is_object(), "{diff}");

    // Leaving (closing the socket) is a leave diff for the others.
    drop(d);
    let diff = c.recv_event("presence_diff").await?;
    assert!(diff[4]["leaves"]["u2"].is_object(), "{diff}");
    node.stop().await
}

#[tokio::test]
async fn broadcast_reaches_every_subscriber_including_the_sender() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut a = node.client("vsn=2.0.0").await?;
    let mut b = node.client("vsn=2.0.0").await?;
    a.join("1", "room:b", "{}").await?;
    b.join("7", "room:b", "{}").await?;
    a.send(r#"["1","2","room:b","new_msg",{"body":"hi"}]"#)
        .await?;
    assert_eq!(
        a.recv_event("phx_reply").await?,
        json!(["1", "2", "room:b", "phx_reply", {"status": "ok", "response": {}}])
    );
    let expected = r#"[null,null,"room:b","new_msg",{"body":"hi"}]"#;
    for client in [&mut a, &mut b] {
        let got = client.recv_event("new_msg").await?;
        assert_eq!(got, serde_json::from_str::<Value>(expected)?);
    }
    node.stop().await
}

#[tokio::test]
async fn broadcast_from_skips_the_sender() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut a = node.client("vsn=2.0.0").await?;
    let mut b = node.client("vsn=2.0.0").await?;
    a.join("1", "room:f", "{}").await?;
    b.join("1", "room:f", "{}").await?;
    a.send(r#"["1","2","room:f","shout",{"n":1}]"#).await?;
    assert_eq!(
        b.recv_event("shout").await?,
        json!([null, null, "room:f", "shout", {"n": 1}])
    );
    // By now the shout was offered to every local subscriber; the sender's next
    // frames are its reply and its ping reply, never the shout.
    a.send(r#"["1","3","room:f","ping",{}]"#).await?;
    loop {
        let v = a.recv_json(true).await?;
        assert_ne!(v[3], "shout", "the sender got its own broadcast_from");
        if v[1] == "3" {
            break;
        }
    }
    node.stop().await
}

/// Row g: the new join's reply, then the old join's `phx_close`.
#[tokio::test]
async fn duplicate_join_replies_then_closes_the_old_join() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("vsn=2.0.0").await?;
    c.join("1", "room:d", "{}").await?;
    c.send(r#"["5","5","room:d","phx_join",{}]"#).await?;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let v = c.recv_json(true).await?;
        if v[3] != "presence_state" {
            frames.push(v);
        }
    }
    assert_eq!(
        frames,
        [
            json!(["5", "5", "room:d", "phx_reply", {"status": "ok", "response": {}}]),
            json!(["1", "1", "room:d", "phx_close", {}]),
        ]
    );
    c.assert_alive("5", "room:d").await?;
    node.stop().await
}

#[tokio::test]
async fn unmatched_topic_and_unjoined_events() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("vsn=2.0.0").await?;
    c.send(r#"["7","7","nope:1","phx_join",{}]"#).await?;
    assert_eq!(
        c.recv_text().await?,
        r#"[null,"7","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
    c.send(r#"["8","9","room:z","new_msg",{}]"#).await?;
    assert_eq!(
        c.recv_text().await?,
        r#"[null,"9","room:z","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
    node.stop().await
}

/// Row h: leave replies ok then `phx_close` with the join_ref; the topic is then
/// unjoined (row l) and the presence left.
#[tokio::test]
async fn leave_replies_then_closes() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("vsn=2.0.0").await?;
    let mut watcher = node.client("vsn=2.0.0").await?;
    watcher.join("1", "room:l", r#"{"user_id":"w"}"#).await?;
    c.join("3", "room:l", r#"{"user_id":"leaver"}"#).await?;
    // The engine coalesces a join and leave inside one window into nothing, so
    // wait for the join to be seen first.
    loop {
        let diff = watcher.recv_event("presence_diff").await?;
        if diff[4]["joins"]["leaver"].is_object() {
            break;
        }
    }
    c.send(r#"["3","12","room:l","phx_leave",{}]"#).await?;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let v = c.recv_json(true).await?;
        if v[3] != "presence_state" {
            frames.push(v);
        }
    }
    assert_eq!(
        frames,
        [
            json!(["3", "12", "room:l", "phx_reply", {"status": "ok", "response": {}}]),
            json!(["3", "3", "room:l", "phx_close", {}]),
        ]
    );
    loop {
        let diff = watcher.recv_event("presence_diff").await?;
        if diff[4]["leaves"]["leaver"].is_object() {
            break;
        }
    }
    c.send(r#"["3","13","room:l","ping",{}]"#).await?;
    let v = c.recv_json(true).await?;
    assert_eq!(v[4]["response"]["reason"], "unmatched topic");
    node.stop().await
}

#[tokio::test]
async fn bad_vsn_is_refused_with_403() -> anyhow::Result<()> {
    let node = Node::start().await?;
    for query in ["vsn=3.0.0", "vsn=2.1.0", "vsn=x", "vsn[]=2.0.0"] {
        match Client::connect(&node.url(query)).await {
            Err(e) => match e.downcast_ref::<WsError>() {
                Some(WsError::Http(response)) => assert_eq!(response.status(), 403, "{query}"),
                other => panic!("{query}: expected HTTP 403, got {other:?}"),
            },
            Ok(_) => panic!("{query}: connected"),
        }
    }
    node.stop().await
}

#[tokio::test]
async fn auth_token_subprotocol_is_echoed_and_reaches_the_authenticator() -> anyhow::Result<()> {
    let auth = |_: &Assigns, token: Option<&str>| match token {
        Some("my-secret-token") => Ok(SocketInfo::default()),
        _ => Err(Denied),
    };
    let node = NodeBuilder::new().auth(auth).start().await?;
    let mut request = node.url("vsn=2.0.0").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("phoenix, base64url.bearer.phx.bXktc2VjcmV0LXRva2Vu"),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(
        response.headers().get("sec-websocket-protocol"),
        Some(&HeaderValue::from_static("phoenix"))
    );
    use futures_util::{SinkExt, StreamExt};
    ws.send(r#"[null,"1","phoenix","heartbeat",{}]"#.into())
        .await?;
    assert!(ws
        .next()
        .await
        .is_some_and(|m| m.is_ok_and(|m| m.is_text())));

    let refused = |headers: Option<&'static str>| {
        let url = node.url("vsn=2.0.0");
        async move {
            let mut request = url.into_client_request().expect("request");
            if let Some(value) = headers {
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(value));
            }
            match tokio_tungstenite::connect_async(request).await {
                Err(WsError::Http(response)) => response.status().as_u16(),
                Err(e) => panic!("expected an HTTP refusal, got {e}"),
                Ok(_) => 101,
            }
        }
    };
    assert_eq!(
        refused(None).await,
        403,
        "no token: the authenticator refuses"
    );
    assert_eq!(
        refused(Some("base64url.bearer.phx.bXktc2VjcmV0LXRva2Vu")).await,
        403,
        "subprotocols offered without `phoenix`"
    );
    assert_eq!(
        refused(Some("phoenix, base64url.bearer.phx.d3Jvbmc")).await,
        403
    );
    node.stop().await
}

/// §2.3: a missing vsn is v1 (JSON objects).
#[tokio::test]
async fn v1_objects_without_vsn() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("").await?;
    c.send(r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"1"}"#)
        .await?;
    let reply: Value = serde_json::from_str(&c.recv_text().await?)?;
    assert_eq!(
        reply,
        json!({"topic": "room:v1", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "1"})
    );
    c.send(r#"{"topic":"room:v1","event":"new_msg","payload":{"x":1},"ref":"2","join_ref":"1"}"#)
        .await?;
    loop {
        let v: Value = serde_json::from_str(&c.recv_text().await?)?;
        if v["event"] == "new_msg" {
            assert_eq!(
                v,
                json!({"topic": "room:v1", "event": "new_msg", "payload": {"x": 1}, "ref": null})
            );
            break;
        }
    }
    node.stop().await
}

/// §2.2: a binary push gets a binary reply; a binary broadcast is a kind-2 frame.
#[tokio::test]
async fn binary_frames() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("vsn=2.0.0").await?;
    c.join("1", "room:bin", "{}").await?;
    c.send_binary(b"\x00\x01\x01\x08\x04\x312room:binping\x01\x02\x03")
        .await?;
    loop {
        match c.recv().await? {
            tokio_tungstenite::tungstenite::Message::Binary(bytes) => {
                assert_eq!(
                    &bytes[..],
                    b"\x01\x01\x01\x08\x02\x312room:binok\x01\x02\x03"
                );
                break;
            }
            _ => continue,
        }
    }
    c.send_binary(b"\x00\x01\x01\x08\x07\x313room:binnew_msg\xde\xad")
        .await?;
    loop {
        match c.recv().await? {
            tokio_tungstenite::tungstenite::Message::Binary(bytes) => {
                assert_eq!(&bytes[..], b"\x02\x08\x07room:binnew_msg\xde\xad");
                break;
            }
            _ => continue,
        }
    }
    node.stop().await
}

/// Accepts `user_id` from the connect params as the socket id
/// `user_socket:{user_id}`.
fn user_socket_id(params: &Assigns, _: Option<&str>) -> Result<SocketInfo, Denied> {
    let user = params
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or(Denied)?;
    Ok(SocketInfo {
        id: Some(format!("user_socket:{user}")),
        assigns: params.clone(),
    })
}

/// §1.5: a `disconnect` broadcast on the socket id closes with 1001.
#[tokio::test]
async fn disconnect_by_socket_id_closes_with_1001() -> anyhow::Result<()> {
    let node = NodeBuilder::new().auth(user_socket_id).start().await?;
    let mut kicked = node.client("user_id=7&vsn=2.0.0").await?;
    let mut other = node.client("user_id=8&vsn=2.0.0").await?;
    kicked.join("1", "room:k", "{}").await?;
    other.join("1", "room:k", "{}").await?;
    node.server
        .hub()
        .broadcast("user_socket:7", "ignored", Payload::empty())
        .await?;
    kicked.assert_alive("1", "room:k").await?;
    node.server
        .hub()
        .broadcast("user_socket:7", "disconnect", Payload::empty())
        .await?;
    assert_eq!(kicked.ended().await?, Ended::Code(close::DISCONNECTED));
    other.assert_alive("1", "room:k").await?;
    // The hub's own disconnect topic cannot be published on to kick someone.
    let forged = node
        .server
        .hub()
        .broadcast(
            chorus_gateway::topics::DISCONNECT,
            "disconnect",
            Payload::Binary(bytes::Bytes::from_static(b"user_socket:8")),
        )
        .await;
    assert!(
        forged.is_err(),
        "publishing on the reserved topic must fail"
    );
    other.assert_alive("1", "room:k").await?;
    node.stop().await
}

/// A connection with a socket id is a presence in its `phx_socket:` topic
/// (for counting a user's sockets) only while the server counts sockets:
/// otherwise no presence entry is made for it on any node.
#[tokio::test]
async fn sockets_are_tracked_only_when_counted() -> anyhow::Result<()> {
    let topic = chorus_gateway::topics::socket_topic("user_socket:7");
    let mut entries = Vec::new();
    for count_sockets in [true, false] {
        let config = ServerConfig {
            count_sockets,
            ..ServerConfig::default()
        };
        let node = NodeBuilder::new()
            .config(config)
            .auth(user_socket_id)
            .start()
            .await?;
        let mut c = node.client("user_id=7&vsn=2.0.0").await?;
        // The socket is tracked before the connection reads its first frame.
        c.join("1", "room:t", "{}").await?;
        let (keys, _) = node.engine.presence_count(topic.as_str()).await?;
        assert_eq!(
            keys,
            usize::from(count_sockets),
            "count_sockets {count_sockets}"
        );
        entries.push(node.engine.stats().await?.presence_entries);
        node.stop().await?;
    }
    assert_eq!(
        entries[0],
        entries[1] + 1,
        "the socket's is the one entry more"
    );
    Ok(())
}

/// Shutdown closes clients with 1012 so they reconnect.
#[tokio::test]
async fn shutdown_closes_clients_with_1012() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut c = node.client("vsn=2.0.0").await?;
    c.join("1", "room:s", "{}").await?;
    let stopping = tokio::spawn(node.stop());
    assert_eq!(c.ended().await?, Ended::Code(close::RESTART));
    stopping.await??;
    Ok(())
}

/// §3: a connection with no incoming frame for the idle timeout is closed (1011,
/// never 1000); one that keeps sending heartbeats stays.
#[tokio::test]
async fn idle_connections_are_closed_but_heartbeats_keep_them() -> anyhow::Result<()> {
    use chorus_gateway::server::ServerConfig;
    use std::time::Duration;
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(400),
        ..ServerConfig::default()
    };
    let node = NodeBuilder::new().config(config).start().await?;
    let mut quiet = node.client("vsn=2.0.0").await?;
    let mut chatty = node.client("vsn=2.0.0").await?;
    let started = tokio::time::Instant::now();
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        chatty
            .send(&format!(r#"[null,"{n}","phoenix","heartbeat",{{}}]"#))
            .await?;
        chatty.recv_text().await?;
    }
    assert_eq!(quiet.ended().await?, Ended::Code(close::SERVER_ERROR));
    assert!(started.elapsed() >= Duration::from_millis(400));
    chatty
        .send(r#"[null,"x","phoenix","heartbeat",{}]"#)
        .await?;
    assert!(chatty.recv_text().await?.contains(r#""x""#));
    node.stop().await
}
