//! The LongPoll transport end to end over raw HTTP/1.1: the 410 handshake, held
//! polls, POST batches (JSON and base64 lines), the limits and bad input, session
//! expiry, and a session used through two nodes in turn.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use chorus_engine::PeerState;
use chorus_gateway::channel::Assigns;
use chorus_gateway::server::{Denied, LongPollKey, ServerConfig, SocketInfo};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{eventually, Node, NodeBuilder};

const PATH: &str = "/socket/longpoll";

/// Short timings so every test stays fast.
fn config() -> ServerConfig {
    ServerConfig {
        longpoll_window: Duration::from_millis(300),
        longpoll_timeout: Duration::from_millis(600),
        ..ServerConfig::default()
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the HTTP status, headers, body.
async fn http(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<(u16, HeaderMap, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body.into()))?;
    let response = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .context("no HTTP response within 15 s")??;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, headers, String::from_utf8(body.to_vec())?))
}

/// A raw LongPoll client of one session, which may talk to any node.
struct Lp {
    token: Option<String>,
    params: String,
}

impl Lp {
    fn new(params: &str) -> Self {
        Self {
            token: None,
            params: params.to_owned(),
        }
    }

    fn target(&self) -> String {
        match &self.token {
            Some(token) => format!("{PATH}?{}&vsn=2.0.0&token={token}", self.params),
            None => format!("{PATH}?{}&vsn=2.0.0&", self.params),
        }
    }

    /// A GET: the JSON body (the HTTP status must be 200). Keeps the token of a
    /// first 410.
    async fn get(&mut self, addr: SocketAddr, headers: &[(&str, &str)]) -> anyhow::Result<Value> {
        let (code, _, body) = http(addr, Method::GET, &self.target(), headers, "").await?;
        assert_eq!(code, 200, "LongPoll answers are always HTTP 200");
        let body: Value = serde_json::from_str(&body)?;
        if self.token.is_none() {
            self.token = body["token"].as_str().map(str::to_owned);
        }
        Ok(body)
    }

    /// Starts the session on `addr`.
    async fn open(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let body = self.get(addr, &[]).await?;
        assert_eq!(body["status"], 410, "{body}");
        assert_eq!(body["messages"], json!([]));
        assert!(self.token.is_some());
        Ok(())
    }

    /// A POST of ndjson `lines`: the body's status.
    async fn post(&self, addr: SocketAddr, lines: &[&str]) -> anyhow::Result<Value> {
        self.post_body(addr, lines.join("\n")).await
    }

    async fn post_body(&self, addr: SocketAddr, body: String) -> anyhow::Result<Value> {
        let headers = [("content-type", "application/x-ndjson")];
        let (code, _, body) = http(addr, Method::POST, &self.target(), &headers, body).await?;
        assert_eq!(code, 200);
        Ok(serde_json::from_str::<Value>(&body)?["status"].clone())
    }

    /// Polls until the frames received so far satisfy `done`; every message must be a
    /// JSON-encoded string of a v2 array.
    async fn frames_until(
        &mut self,
        addr: SocketAddr,
        done: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frames = Vec::new();
        while !done(&frames) {
            if Instant::now() > deadline {
                bail!("timed out; frames so far: {frames:?}");
            }
            let body = self.get(addr, &[]).await?;
            assert_eq!(Some(body["token"].as_str()), Some(self.token.as_deref()));
            match body["status"].as_u64() {
                Some(200) => {
                    for msg in body["messages"].as_array().context("messages")? {
                        let text = msg.as_str().context("messages are JSON strings")?;
                        frames.push(serde_json::from_str(text)?);
                    }
                }
                Some(204) => assert_eq!(body["messages"], json!([])),
                _ => bail!("unexpected poll answer {body}"),
            }
        }
        Ok(frames)
    }

    /// Polls until a frame with `event` and `ref_` arrives; returns it.
    async fn reply(&mut self, addr: SocketAddr, ref_: &str) -> anyhow::Result<Value> {
        let frames = self
            .frames_until(addr, |f| f.iter().any(|v| is_reply(v, ref_)))
            .await?;
        Ok(frames
            .into_iter()
            .find(|v| is_reply(v, ref_))
            .expect("found"))
    }
}

fn is_reply(v: &Value, ref_: &str) -> bool {
    v[1] == ref_ && v[3] == "phx_reply"
}

#[tokio::test]
async fn handshake_410_then_idle_poll_204_and_cors() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(config()).start().await?;
    let (code, headers, body) = http(
        node.addr,
        Method::GET,
        &format!("{PATH}?user_id=u1&vsn=2.0.0&"),
        &[],
        "",
    )
    .await?;
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!(body["status"], 410);
    let token = body["token"].as_str().context("a token")?.to_owned();

    let mut lp = Lp::new("user_id=u1");
    lp.token = Some(token.clone());
    let started = Instant::now();
    let body = lp.get(node.addr, &[]).await?;
    assert_eq!(body, json!({"status": 204, "token": token, "messages": []}));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "held for the window"
    );

    let (code, headers, body) = http(
        node.addr,
        Method::OPTIONS,
        PATH,
        &[
            ("origin", "http://example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "x-phoenix-authtoken, content-type",
            ),
        ],
        "",
    )
    .await?;
    assert_eq!((code, body.as_str()), (200, ""));
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(
        headers["access-control-allow-headers"],
        "x-phoenix-authtoken, content-type"
    );
    assert_eq!(
        headers["access-control-allow-methods"],
        "get, post, options"
    );
    assert_eq!(headers["access-control-max-age"], "3600");

    let (code, _, _) = http(node.addr, Method::PUT, PATH, &[], "").await?;
    assert_eq!(code, 400, "other methods");
    assert_eq!(
        node.server
            .stats()
            .longpoll_sessions
            .load(Ordering::Relaxed),
        1
    );
    node.stop().await
}

#[tokio::test]
async fn the_auth_token_header_reaches_the_connect_hook() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(config())
        .auth(|params: &Assigns, token: Option<&str>| match token {
            Some("sekret") => Ok(SocketInfo {
                id: None,
                assigns: params.clone(),
            }),
            _ => Err(Denied),
        })
        .start()
        .await?;
    let mut lp = Lp::new("user_id=u1");
    assert_eq!(lp.get(node.addr, &[]).await?, json!({"status": 403}));
    let body = lp
        .get(node.addr, &[("x-phoenix-authtoken", "sekret")])
        .await?;
    assert_eq!(body["status"], 410);
    let (_, _, body) = http(
        node.addr,
        Method::GET,
        &format!("{PATH}?vsn=9.9.9"),
        &[("x-phoenix-authtoken", "sekret")],
        "",
    )
    .await?;
    assert_eq!(
        serde_json::from_str::<Value>(&body)?,
        json!({"status": 403}),
        "unsupported vsn"
    );
    node.stop().await
}

#[tokio::test]
async fn a_post_batch_runs_in_order_and_replies_come_on_the_poll() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(config()).start().await?;
    let mut lp = Lp::new("user_id=u1");
    lp.open(node.addr).await?;
    let status = lp
        .post(
            node.addr,
            &[
                r#"["1","1","room:lp","phx_join",{}]"#,
                r#"["1","2","room:lp","ping",{"n":1}]"#,
                r#"["1","3","room:lp","new_msg",{"body":"hi"}]"#,
            ],
        )
        .await?;
    assert_eq!(status, 200);
    let frames = lp
        .frames_until(node.addr, |f| f.iter().any(|v| v[3] == "new_msg"))
        .await?;
    let events: Vec<_> = frames
        .iter()
        .filter(|v| v[3] != "presence_diff")
        .map(|v| (v[1].clone(), v[3].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        events,
        vec![
            (json!("1"), "phx_reply".to_owned()),
            (Value::Null, "presence_state".to_owned()),
            (json!("2"), "phx_reply".to_owned()),
            (json!("3"), "phx_reply".to_owned()),
            (Value::Null, "new_msg".to_owned()),
        ]
    );
    assert_eq!(
        frames[0],
        json!(["1", "1", "room:lp", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert!(frames
        .iter()
        .any(|v| v
            == &json!(["1", "2", "room:lp", "phx_reply", {"status": "ok", "response": {"n": 1}}])));
    assert!(
        frames[1][4]["u1"]["metas"].is_array(),
        "presence_state tracks u1"
    );
    node.stop().await
}

#[tokio::test]
async fn base64_lines_are_binary_frames() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(config()).start().await?;
    let mut ws = node.client("user_id=ws&vsn=2.0.0").await?;
    ws.join("1", "room:bin", "{}").await?;
    let mut lp = Lp::new("user_id=lp");
    lp.open(node.addr).await?;
    assert_eq!(
        lp.post(node.addr, &[r#"["5","5","room:bin","phx_join",{}]"#])
            .await?,
        200
    );
    lp.reply(node.addr, "5").await?;
    // A kind-0 push: join_ref "5", ref "6", topic room:bin, event new_msg, payload 01 02 ff.
    let mut frame = vec![0, 1, 1, 8, 7];
    frame.extend_from_slice(b"56room:binnew_msg");
    frame.extend_from_slice(&[1, 2, 255]);
    let line = STANDARD.encode(&frame);
    assert_eq!(lp.post(node.addr, &[&line]).await?, 200);
    assert_eq!(
        lp.reply(node.addr, "6").await?,
        json!(["5", "6", "room:bin", "phx_reply", {"status": "ok", "response": {}}])
    );
    loop {
        match ws.recv().await? {
            Message::Binary(bytes) => {
                let mut expected = vec![2, 8, 7];
                expected.extend_from_slice(b"room:binnew_msg");
                expected.extend_from_slice(&[1, 2, 255]);
                assert_eq!(&bytes[..], &expected[..], "a kind-2 binary broadcast");
                break;
            }
            Message::Text(_) => continue,
            other => bail!("unexpected {other:?}"),
        }
    }
    node.stop().await
}

#[tokio::test]
async fn only_the_first_100_lines_of_a_post_run() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(config()).start().await?;
    let mut lp = Lp::new("user_id=u1");
    lp.open(node.addr).await?;
    let mut lines = vec![r#"["1","1","room:many","phx_join",{}]"#.to_owned()];
    lines.extend((2..=150).map(|r| format!(r#"["1","{r}","room:many","ping",{{}}]"#)));
    assert_eq!(lp.post_body(node.addr, lines.join("\n")).await?, 200);
    let frames = lp
        .frames_until(node.addr, |f| f.iter().any(|v| is_reply(v, "100")))
        .await?;
    let mut frames = frames;
    // Poll until idle: nothing beyond line 100 ran.
    loop {
        let body = lp.get(node.addr, &[]).await?;
        match body["status"].as_u64() {
            Some(204) => break,
            Some(200) => {
                for msg in body["messages"].as_array().context("messages")? {
                    frames.push(serde_json::from_str(msg.as_str().context("string")?)?);
                }
            }
            _ => bail!("unexpected {body}"),
        }
    }
    let replies: Vec<_> = frames.iter().filter(|v| v[3] == "phx_reply").collect();
    assert_eq!(replies.len(), 100, "the join and 99 pings");
    assert!(!frames.iter().any(|v| is_reply(v, "101")));
    node.stop().await
}

#[tokio::test]
async fn bad_lines_and_big_bodies_are_refused_and_the_session_goes_on() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(ServerConfig {
            max_frame_size: 4096,
            ..config()
        })
        .start()
        .await?;
    let mut lp = Lp::new("user_id=u1");
    lp.open(node.addr).await?;
    let join = r#"["1","1","room:bad","phx_join",{}]"#;
    let status = lp
        .post(
            node.addr,
            &[
                join,
                r#"["1","2","room:bad","ping""#,
                r#"["1","3","room:bad","ping",{}]"#,
            ],
        )
        .await?;
    assert_eq!(status, 400, "a malformed JSON line");
    assert_eq!(lp.post(node.addr, &["not base64!"]).await?, 400);
    assert_eq!(
        lp.post(node.addr, &[&STANDARD.encode([9, 9, 9])]).await?,
        400,
        "base64 of a bad binary frame"
    );
    let big = format!(
        r#"["1","4","room:bad","ping",{{"pad":"{}"}}]"#,
        "x".repeat(5000)
    );
    assert_eq!(lp.post(node.addr, &[&big]).await?, 413);
    assert_eq!(
        node.server.stats().protocol_errors.load(Ordering::Relaxed),
        4
    );

    // The join before the bad line ran; nothing after it did; the session still works.
    assert_eq!(
        lp.post(node.addr, &[r#"["1","5","room:bad","ping",{"ok":1}]"#])
            .await?,
        200
    );
    let frames = lp
        .frames_until(node.addr, |f| f.iter().any(|v| is_reply(v, "5")))
        .await?;
    assert!(frames.iter().any(|v| is_reply(v, "1")));
    assert!(!frames.iter().any(|v| is_reply(v, "3") || is_reply(v, "4")));
    node.stop().await
}

#[tokio::test]
async fn forged_or_foreign_tokens_find_no_session() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(config()).start().await?;
    let other = NodeBuilder::new().config(config()).start().await?;
    let mut lp = Lp::new("user_id=u1");
    lp.open(node.addr).await?;
    let good = lp.token.clone().context("token")?;
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&good)?;
    bytes[1] ^= 1; // another session id, same MAC
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    let mut foreign = Lp::new("user_id=u2");
    foreign.open(other.addr).await?; // signed with the other server's random key
    for token in [
        forged,
        foreign.token.clone().context("token")?,
        "garbage".to_owned(),
    ] {
        let fake = Lp {
            token: Some(token.clone()),
            params: "user_id=x".into(),
        };
        let mut probe = Lp {
            token: Some(token),
            params: "user_id=x".into(),
        };
        assert_eq!(
            fake.post(node.addr, &[r#"["1","1","room:x","phx_join",{}]"#])
                .await?,
            410
        );
        let body = probe.get(node.addr, &[]).await?;
        assert_eq!(body["status"], 410, "a new session instead");
        assert_ne!(body["token"].as_str(), Some(good.as_str()));
    }
    // The real session was not disturbed.
    assert_eq!(
        lp.post(node.addr, &[r#"["1","1","room:x","phx_join",{}]"#])
            .await?,
        200
    );
    lp.reply(node.addr, "1").await?;
    other.stop().await?;
    node.stop().await
}

#[tokio::test]
async fn an_expired_session_leaves_its_presences_and_answers_410() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(config()).start().await?;
    let mut ws = node.client("user_id=watcher&vsn=2.0.0").await?;
    ws.join("1", "room:exp", "{}").await?;
    let mut lp = Lp::new("user_id=sleeper");
    lp.open(node.addr).await?;
    assert_eq!(
        lp.post(node.addr, &[r#"["1","1","room:exp","phx_join",{}]"#])
            .await?,
        200
    );
    lp.reply(node.addr, "1").await?;
    // The watcher's own join may come in an earlier diff of its own.
    loop {
        let diff = ws.recv_event("presence_diff").await?;
        if diff[4]["joins"].get("sleeper").is_some() {
            break;
        }
    }
    assert_eq!(node.server.longpoll_session_count(), 1);

    // No more polls: the session ends after the timeout and its presence leaves.
    let started = Instant::now();
    let left = loop {
        let diff = ws.recv_event("presence_diff").await?;
        if diff[4]["leaves"].get("sleeper").is_some() {
            break diff;
        }
    };
    assert!(left[4]["leaves"]["sleeper"]["metas"].is_array());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(2), || async {
            node.server.longpoll_session_count() == 0
        })
        .await
    );
    // The old token: 410 and no new session (phoenix.js, holding a token,
    // reports session_gone and reconnects with its first poll's params).
    let body = lp.get(node.addr, &[]).await?;
    assert_eq!(
        body,
        json!({"status": 410, "messages": []}),
        "the session is gone"
    );
    assert_eq!(node.server.longpoll_session_count(), 0, "none started");
    let mut again = Lp::new("user_id=sleeper");
    again.open(node.addr).await?;
    assert_ne!(again.token, lp.token);
    node.stop().await
}

/// An authenticator that takes `token=jwt-<user>` (or the same in the auth-token
/// header) for user `<user>`, as a JWT check would.
fn user_tokens() -> impl Fn(&Assigns, Option<&str>) -> Result<SocketInfo, Denied> {
    |params: &Assigns, header: Option<&str>| {
        let token = params.get("token").and_then(Value::as_str).or(header);
        match token.and_then(|t| t.strip_prefix("jwt-")) {
            Some(user) => {
                let mut assigns = Assigns::new();
                assigns.insert("user_id".into(), Value::from(user));
                Ok(SocketInfo {
                    id: Some(format!("user_socket:{user}")),
                    assigns,
                })
            }
            None => Err(Denied),
        }
    }
}

#[tokio::test]
async fn a_session_token_with_another_users_jwt_is_refused() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(config())
        .auth(user_tokens())
        .start()
        .await?;
    // Alice's session, phoenix.js style: her JWT in the params of every request.
    let mut alice = Lp::new("token=jwt-alice");
    alice.open(node.addr).await?;
    assert_eq!(
        alice
            .post(node.addr, &[r#"["1","1","room:a","phx_join",{}]"#])
            .await?,
        200
    );
    alice.reply(node.addr, "1").await?;
    // Mallory has Alice's session token and her own valid JWT.
    for params in ["token=jwt-mallory", "", "token=jwt-alice&extra=1"] {
        let mut mallory = Lp {
            token: alice.token.clone(),
            params: params.into(),
        };
        assert_eq!(
            mallory.get(node.addr, &[]).await?,
            json!({"status": 403}),
            "poll with {params:?}"
        );
        assert_eq!(
            mallory
                .post(node.addr, &[r#"["1","2","room:a","ping",{}]"#])
                .await?,
            403,
            "send with {params:?}"
        );
    }
    // The auth-token header is bound too: a GET must carry Alice's, a POST
    // (phoenix.js sends none) may carry none but not another.
    let mut header_user = Lp::new("");
    let body = header_user
        .get(node.addr, &[("x-phoenix-authtoken", "jwt-alice")])
        .await?;
    assert_eq!(body["status"], 410);
    let poll = |h: &'static [(&'static str, &'static str)]| {
        let mut lp = Lp {
            token: header_user.token.clone(),
            params: String::new(),
        };
        async move { lp.get(node.addr, h).await }
    };
    assert_eq!(
        poll(&[]).await?,
        json!({"status": 403}),
        "GET without the header"
    );
    assert_eq!(
        poll(&[("x-phoenix-authtoken", "jwt-mallory")]).await?,
        json!({"status": 403})
    );
    assert_eq!(
        poll(&[("x-phoenix-authtoken", "jwt-alice")]).await?["status"],
        204
    );
    let send = |h: &'static [(&'static str, &'static str)]| {
        let target = header_user.target();
        async move {
            let mut headers = vec![("content-type", "application/x-ndjson")];
            headers.extend_from_slice(h);
            let (_, _, body) = http(
                node.addr,
                Method::POST,
                &target,
                &headers,
                r#"["1","1","room:h","phx_join",{}]"#,
            )
            .await?;
            anyhow::Ok(serde_json::from_str::<Value>(&body)?["status"].clone())
        }
    };
    assert_eq!(send(&[("x-phoenix-authtoken", "jwt-mallory")]).await?, 403);
    assert_eq!(send(&[]).await?, 200);
    // Alice's own session was never disturbed.
    assert_eq!(
        alice
            .post(node.addr, &[r#"["1","3","room:a","ping",{"me":1}]"#])
            .await?,
        200
    );
    assert_eq!(
        alice.reply(node.addr, "3").await?[4]["response"],
        json!({"me": 1})
    );
    node.stop().await
}

async fn two_nodes() -> anyhow::Result<(Node, Node)> {
    let key = LongPollKey::from_bytes([7; 32]);
    let shared = || ServerConfig {
        longpoll_key: key.clone(),
        ..config()
    };
    let a = NodeBuilder::new()
        .config(shared())
        .seeds("a", Vec::new())
        .start()
        .await?;
    let b = NodeBuilder::new()
        .config(shared())
        .seeds("b", vec![a.engine.local_addr()])
        .start()
        .await?;
    let up = |node: &Node| {
        let engine = node.engine.clone();
        async move {
            engine
                .members()
                .await
                .is_ok_and(|m| m.iter().any(|m| m.state == PeerState::Up))
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || up(&a)).await
            && eventually(Duration::from_secs(10), || up(&b)).await,
        "the nodes never saw each other"
    );
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_served_by_two_nodes_in_turn() -> anyhow::Result<()> {
    let (a, b) = two_nodes().await?;
    let mut watcher = b.client("user_id=watcher&vsn=2.0.0").await?;
    watcher.join("1", "room:two", "{}").await?;

    let mut lp = Lp::new("user_id=roamer");
    lp.open(a.addr).await?; // owned by a
    assert_eq!(
        lp.post(b.addr, &[r#"["1","1","room:two","phx_join",{}]"#])
            .await?,
        200
    );
    let join = lp.reply(a.addr, "1").await?;
    assert_eq!(join[4]["status"], "ok");
    assert_eq!(
        lp.post(a.addr, &[r#"["1","2","room:two","ping",{"via":"a"}]"#])
            .await?,
        200
    );
    assert_eq!(
        lp.reply(b.addr, "2").await?[4]["response"],
        json!({"via": "a"})
    );
    assert_eq!(
        lp.post(
            b.addr,
            &[r#"["1","3","room:two","new_msg",{"body":"roaming"}]"#]
        )
        .await?,
        200
    );
    // The roamer's join (a coalesced presence diff) and its broadcast reach
    // the watcher in either order.
    let (mut joined, mut got) = (false, None);
    while !joined || got.is_none() {
        let frame = watcher.recv_json(false).await?;
        match frame[3].as_str() {
            Some("presence_diff") if frame[4]["joins"].get("roamer").is_some() => joined = true,
            Some("new_msg") => got = Some(frame),
            _ => {}
        }
    }
    assert_eq!(
        got.expect("loop ends with it"),
        json!([null, null, "room:two", "new_msg", {"body": "roaming"}])
    );
    lp.frames_until(b.addr, |f| f.iter().any(|v| v[3] == "new_msg"))
        .await?;

    // A poll held through b is answered when b's WebSocket client broadcasts.
    let b_addr = b.addr;
    let mut roamer = Lp {
        token: lp.token.clone(),
        params: "user_id=roamer".into(),
    };
    let held = tokio::spawn(async move {
        roamer
            .frames_until(b_addr, |f| f.iter().any(|v| v[4]["body"] == "to the poll"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher
        .send(r#"["1","9","room:two","new_msg",{"body":"to the poll"}]"#)
        .await?;
    held.await??;
    assert_eq!(
        b.server.stats().longpoll_sessions.load(Ordering::Relaxed),
        0,
        "b started none"
    );
    assert_eq!(a.server.longpoll_session_count(), 1, "one session, on a");
    a.stop().await?;
    b.stop().await
}
