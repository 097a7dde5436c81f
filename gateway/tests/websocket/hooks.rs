//! Backend hooks against a real HTTP backend started by the test (hyper on
//! 127.0.0.1:0): connect, join, publish and rpc hooks allow, deny, rewrite,
//! time out and answer garbage; a slow join hook holds neither the socket's
//! other topics nor the order of the frames on its own; a failing backend opens
//! the circuit breaker. (The main cases run over phoenix.js in
//! tests/js/hooks.test.mjs.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chorus_gateway::config::Config;
use chorus_gateway::token::{Claims, TokenAuth, Tokens};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::util::{Client, Node, NodeBuilder};

const TOKEN_SECRET: &[u8] = b"hooks-test-token-secret-0123456789";

/// What the backend answers.
enum Answer {
    Json(Value),
    Status(u16, &'static str),
    /// A redirect: the status and the `Location`.
    Redirect(u16, &'static str),
    /// Answer only once the notify fires (the hook is slow).
    After(Arc<Notify>, Value),
}

type Handler = Arc<dyn Fn(&str, &Value) -> Answer + Send + Sync>;

/// A backend on 127.0.0.1:0: records each request's path and JSON body.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Backend {
    async fn start(handler: Handler) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let seen = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let bytes = req.into_body().collect().await?.to_bytes();
                            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            seen.lock().unwrap().push((path.clone(), body.clone()));
                            let mut location = None;
                            let (status, text) = match handler(&path, &body) {
                                Answer::Json(v) => (200, v.to_string()),
                                Answer::Status(s, t) => (s, t.to_owned()),
                                Answer::Redirect(s, to) => {
                                    location = Some(to);
                                    (s, String::new())
                                }
                                Answer::After(notify, v) => {
                                    notify.notified().await;
                                    (200, v.to_string())
                                }
                            };
                            let mut response = Response::new(Full::new(Bytes::from(text)));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            if let Some(to) = location {
                                response.headers_mut().insert(
                                    "location",
                                    hyper::header::HeaderValue::from_static(to),
                                );
                            }
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// A node serving `room:{id}` (presence, history, `new_message` stored,
/// `shout` broadcast) with every hook pointing at `backend`; `timeout_ms` for
/// the topic hooks.
async fn node(backend: &Backend, timeout_ms: u64) -> anyhow::Result<Node> {
    let toml = format!(
        r#"
[server]
connect_hook = {{ url = "{connect}", timeout_ms = {timeout_ms}, forward_headers = ["x-app", "cookie"] }}

[[topics]]
pattern = "room:{{id}}"
presence = true
history = 10
events = {{ new_message = "message", shout = "broadcast", plain = "broadcast" }}
join_hook = {{ url = "{join}", timeout_ms = {timeout_ms}, forward_headers = ["x-app"] }}
publish_hook = {{ url = "{publish}", timeout_ms = {timeout_ms}, events = ["new_message", "shout"] }}
rpc_hook = {{ url = "{rpc}", timeout_ms = {timeout_ms}, events = ["ask"] }}

[[topics]]
pattern = "open:{{id}}"
events = {{ shout = "broadcast" }}
"#,
        connect = backend.url("/connect"),
        join = backend.url("/join"),
        publish = backend.url("/publish"),
        rpc = backend.url("/rpc"),
    );
    let config = Config::parse(&toml, "hooks.toml")?;
    NodeBuilder::new()
        .app(config)
        .auth(TokenAuth::new(Tokens::new(TOKEN_SECRET)))
        .start()
        .await
}

/// The usual backend: connect `?user=` as that user (deny `mallory`), allow
/// joins with extra reply and meta (deny `room:secret`), rewrite
/// `new_message` bodies, deny a `shout` of "no", answer `ask` (error on "fail").
fn usual(path: &str, body: &Value) -> Answer {
    match path {
        "/connect" => match body["params"]["user"].as_str() {
            Some("mallory") | None => Answer::Json(json!({"allow": false, "reason": "banned"})),
            Some(user) => Answer::Json(json!({
                "allow": true, "user_id": user, "claims": {"name": format!("{user}!"), "role": "member"}
            })),
        },
        "/join" if body["topic"] == "room:secret" => {
            Answer::Json(json!({"allow": false, "reason": "not_invited"}))
        }
        "/join" => Answer::Json(json!({
            "allow": true, "response": {"welcome": body["topic"]}, "meta": {"level": 7}
        })),
        "/publish" if body["payload"]["message"] == "no" || body["payload"]["text"] == "no" => {
            Answer::Json(json!({"allow": false, "reason": "moderated"}))
        }
        "/publish" if body["event"] == "new_message" => Answer::Json(json!({
            "allow": true,
            "payload": {"message": body["payload"]["message"].as_str().unwrap_or("").to_uppercase()},
            "skip_history": body["payload"]["message"] == "ephemeral",
        })),
        "/publish" => Answer::Json(json!({"allow": true, "reply": {"seen": true}})),
        "/rpc" if body["payload"]["q"] == "fail" => Answer::Json(json!({"error": "no_answer"})),
        "/rpc" => Answer::Json(
            json!({"reply": {"a": format!("re: {}", body["payload"]["q"].as_str().unwrap_or(""))}}),
        ),
        _ => Answer::Status(404, "no such hook"),
    }
}

/// A client with a token for `user` (the connect hook is not asked).
async fn with_token(node: &Node, user: &str) -> anyhow::Result<Client> {
    let token = Tokens::new(TOKEN_SECRET).sign(&Claims::new(user, Duration::from_secs(600)));
    node.client(&format!("vsn=2.0.0&token={token}")).await
}

/// The status of a WebSocket handshake that was refused.
async fn refused_status(node: &Node, query: &str) -> Option<u16> {
    match Client::connect(&node.url(query)).await {
        Ok(_) => None,
        Err(e) => match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
            _ => Some(0),
        },
    }
}

/// The value of the first `/metrics` sample line starting with `prefix`.
async fn metric(node: &Node, prefix: &str) -> anyhow::Result<u64> {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://{}/metrics", node.addr))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no sample {prefix} in /metrics"))?;
    Ok(line.rsplit(' ').next().unwrap_or("0").parse::<f64>()? as u64)
}

/// Reads frames until the reply to `ref_`.
async fn reply_to(client: &mut Client, ref_: &str) -> anyhow::Result<Value> {
    loop {
        let v = client.recv_json(true).await?;
        if v[1] == ref_ && v[3] == "phx_reply" {
            return Ok(v);
        }
    }
}

/// The reply to `ref_` and the `message` broadcast it caused, in either order.
async fn reply_and_broadcast(client: &mut Client, ref_: &str) -> anyhow::Result<(Value, Value)> {
    let (mut reply, mut broadcast) = (None, None);
    while reply.is_none() || broadcast.is_none() {
        let v = client.recv_json(true).await?;
        if v[1] == ref_ && v[3] == "phx_reply" {
            reply = Some(v);
        } else if v[3] == "message" {
            broadcast = Some(v);
        }
    }
    Ok((reply.unwrap_or_default(), broadcast.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hook_decides_without_a_token_and_never_with_one() -> anyhow::Result<()> {
    let backend = Backend::start(Arc::new(usual)).await?;
    let node = node(&backend, 1000).await?;

    // Allowed: the hook's user id and claims are the socket's, headers forwarded.
    let url = node.url("vsn=2.0.0&user=alice");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    request.headers_mut().insert("x-app", "web-7".parse()?);
    request.headers_mut().insert("x-other", "secret".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    let mut alice = Client { ws };
    let connect = backend.calls("/connect");
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0]["hook"], "connect");
    assert_eq!(connect[0]["params"]["user"], "alice");
    assert_eq!(connect[0]["headers"], json!({"x-app": "web-7"}));
    let reply = alice.join("1", "room:1", r#"{"hello":1}"#).await?;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let join = backend.calls("/join");
    assert_eq!(join[0]["user_id"], "alice");
    assert_eq!(join[0]["claims"]["name"], "alice!");
    assert_eq!(join[0]["claims"]["role"], "member");
    assert_eq!(join[0]["payload"], json!({"hello": 1}));
    assert_eq!(join[0]["headers"], json!({"x-app": "web-7"}));

    // Denied: 403, as a bad token.
    assert_eq!(
        refused_status(&node, "vsn=2.0.0&user=mallory").await,
        Some(403)
    );
    // A token decides alone: valid connects, forged is 403; the hook is not asked.
    let before = backend.calls("/connect").len();
    with_token(&node, "bob").await?;
    assert_eq!(
        refused_status(&node, "vsn=2.0.0&token=forged").await,
        Some(403)
    );
    assert_eq!(backend.calls("/connect").len(), before);
    assert_eq!(
        metric(
            &node,
            r#"chorus_hook_calls_total{hook="connect",result="allow"}"#
        )
        .await?,
        1
    );
    assert_eq!(
        metric(
            &node,
            r#"chorus_hook_calls_total{hook="connect",result="deny"}"#
        )
        .await?,
        1
    );
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_hook_allows_with_reply_and_meta_and_denies_with_its_reason() -> anyhow::Result<()> {
    let backend = Backend::start(Arc::new(usual)).await?;
    let node = node(&backend, 1000).await?;
    let mut c = with_token(&node, "carol").await?;

    let reply = c.join("1", "room:1", "{}").await?;
    assert_eq!(
        reply,
        json!(["1", "1", "room:1", "phx_reply", {"status": "ok", "response": {"welcome": "room:1"}}])
    );
    let state = c.recv_event("presence_state").await?;
    let meta = &state[4]["carol"]["metas"][0];
    assert_eq!(meta["level"], 7, "{state}");
    assert_eq!(meta["username"], "carol");

    let reply = c.join("2", "room:secret", "{}").await?;
    assert_eq!(
        reply,
        json!(["2", "2", "room:secret", "phx_reply", {"status": "error", "response": {"reason": "not_invited"}}])
    );
    // A topic without hooks calls none.
    let before = backend.calls("/join").len();
    assert_eq!(c.join("3", "open:1", "{}").await?[4]["status"], "ok");
    assert_eq!(backend.calls("/join").len(), before);
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_hook_rewrites_replies_skips_history_and_denies() -> anyhow::Result<()> {
    let backend = Backend::start(Arc::new(usual)).await?;
    let node = node(&backend, 1000).await?;
    let mut c = with_token(&node, "dave").await?;
    assert_eq!(c.join("1", "room:1", "{}").await?[4]["status"], "ok");

    // Rewritten: the broadcast and the stored message carry the backend's payload.
    c.send(r#"["1","2","room:1","new_message",{"message":"hello"}]"#)
        .await?;
    let (reply, broadcast) = reply_and_broadcast(&mut c, "2").await?;
    assert_eq!(broadcast[4]["body"], "HELLO");
    assert_eq!(reply[4]["status"], "ok");
    let publish = &backend.calls("/publish")[0];
    assert_eq!(publish["hook"], "publish");
    assert_eq!(publish["event"], "new_message");
    assert_eq!(publish["user_id"], "dave");
    assert_eq!(publish["topic"], "room:1");
    assert_eq!(publish["payload"], json!({"message": "hello"}));

    // skip_history: broadcast, not stored.
    c.send(r#"["1","3","room:1","new_message",{"message":"ephemeral"}]"#)
        .await?;
    let (reply, broadcast) = reply_and_broadcast(&mut c, "3").await?;
    assert_eq!(broadcast[4]["body"], "EPHEMERAL");
    assert_eq!(reply[4]["status"], "ok");

    // The backend's reply data answers the push.
    c.send(r#"["1","4","room:1","shout",{"text":"hi"}]"#)
        .await?;
    let reply = reply_to(&mut c, "4").await?;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"seen": true}})
    );

    // Denied: error push and error reply with the reason; nothing broadcast.
    c.send(r#"["1","5","room:1","shout",{"text":"no"}]"#)
        .await?;
    let mut frames = Vec::new();
    while frames.last().is_none_or(|v: &Value| v[1] != "5") {
        let v = c.recv_json(true).await?;
        // The accepted shout's broadcast may come late; the denied one never.
        if v[3] == "shout" {
            assert_eq!(v[4], json!({"text": "hi"}));
            continue;
        }
        frames.push(v);
    }
    let [error, reply] = &frames[..] else {
        panic!("an error push and a reply: {frames:?}");
    };
    assert_eq!(
        *error,
        json!(["1", null, "room:1", "error", {"reason": "moderated"}])
    );
    assert_eq!(
        *reply,
        json!(["1", "5", "room:1", "phx_reply", {"status": "error", "response": {"reason": "moderated"}}])
    );
    // An event without a publish hook is not sent to the backend.
    let before = backend.calls("/publish").len();
    c.send(r#"["1","6","room:1","plain",{"x":1}]"#).await?;
    assert_eq!(reply_to(&mut c, "6").await?[4]["status"], "ok");
    assert_eq!(backend.calls("/publish").len(), before);

    // A new join's history: the rewritten message, not the skipped one.
    let mut e = with_token(&node, "erin").await?;
    e.join("1", "room:1", "{}").await?;
    let history = e.recv_event("messages_history").await?;
    let bodies: Vec<&str> = history[4]["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["HELLO"]);
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_hook_answers_the_push_and_broadcasts_nothing() -> anyhow::Result<()> {
    let backend = Backend::start(Arc::new(usual)).await?;
    let node = node(&backend, 1000).await?;
    let mut c = with_token(&node, "fay").await?;
    c.join("1", "room:1", "{}").await?;
    c.send(r#"["1","2","room:1","ask",{"q":"why"}]"#).await?;
    assert_eq!(
        reply_to(&mut c, "2").await?[4],
        json!({"status": "ok", "response": {"a": "re: why"}})
    );
    let rpc = &backend.calls("/rpc")[0];
    assert_eq!(
        (&rpc["hook"], &rpc["event"], &rpc["topic"], &rpc["user_id"]),
        (
            &json!("rpc"),
            &json!("ask"),
            &json!("room:1"),
            &json!("fay")
        )
    );
    c.send(r#"["1","3","room:1","ask",{"q":"fail"}]"#).await?;
    // The error reply is the next frame: no broadcast came in between.
    assert_eq!(
        c.recv_json(true).await?,
        json!(["1", "3", "room:1", "phx_reply", {"status": "error", "response": {"reason": "no_answer"}}])
    );
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hooks_deny_closed_and_the_breaker_opens() -> anyhow::Result<()> {
    let hang = Arc::new(Notify::new());
    let held = hang.clone();
    let backend = Backend::start(Arc::new(move |path: &str, body: &Value| {
        match (
            path,
            body["topic"].as_str().or(body["params"]["mode"].as_str()),
        ) {
            (_, Some("room:slow") | Some("slow")) => {
                Answer::After(held.clone(), json!({"allow": true}))
            }
            (_, Some("room:garbage") | Some("garbage")) => Answer::Status(200, "this is not json"),
            (_, Some("room:wrong")) => Answer::Json(json!({"allow": "yes"})),
            (_, Some("room:500") | Some("500")) => Answer::Status(500, "boom"),
            _ => Answer::Json(json!({"allow": true, "user_id": "u"})),
        }
    }))
    .await?;
    let node = node(&backend, 200).await?;
    let mut c = with_token(&node, "gus").await?;
    let unavailable = |r: &str, t: &str| json!([r, r, t, "phx_reply", {"status": "error", "response": {"reason": "hook_unavailable"}}]);
    let error = |r: &str, t: &str| json!([r, r, t, "phx_reply", {"status": "error", "response": {"reason": "hook_error"}}]);
    // Timeout (200 ms), garbage, a wrong shape, a 500: denied.
    assert_eq!(
        c.join("1", "room:slow", "{}").await?,
        unavailable("1", "room:slow")
    );
    assert_eq!(
        c.join("2", "room:garbage", "{}").await?,
        error("2", "room:garbage")
    );
    assert_eq!(
        c.join("3", "room:wrong", "{}").await?,
        error("3", "room:wrong")
    );
    // The connect hook fails closed too: 403.
    assert_eq!(
        refused_status(&node, "vsn=2.0.0&mode=garbage").await,
        Some(403)
    );
    // A hook answering 500 opens the breaker after 5 failures in a row that
    // say the backend is unwell (timeouts, connection errors, 5xx). The join
    // hook had one (the timeout; the garbage and the wrong shape were answers):
    // four 500s open it, and the next call is not made.
    for r in ["4", "5", "6", "7"] {
        assert_eq!(c.join(r, "room:500", "{}").await?, error(r, "room:500"));
    }
    let calls = backend.calls("/join").len();
    assert_eq!(
        c.join("8", "room:ok", "{}").await?,
        unavailable("8", "room:ok")
    );
    assert_eq!(
        backend.calls("/join").len(),
        calls,
        "the open breaker calls nobody"
    );
    let m = |result: &str| format!(r#"chorus_hook_calls_total{{hook="join",result="{result}"}}"#);
    assert_eq!(metric(&node, &m("timeout")).await?, 1);
    assert_eq!(metric(&node, &m("error")).await?, 6);
    assert_eq!(metric(&node, &m("circuit_open")).await?, 1);
    assert_eq!(
        metric(&node, r#"chorus_hook_duration_seconds_count{hook="join"}"#).await?,
        7
    );
    hang.notify_waiters();
    node.stop().await
}

/// A publish hook whose backend refuses bodies over 100 kB with 413, as
/// Express's `json()` does by default. One client's oversized payloads (well
/// within the 1 MiB frame limit) are refused, each `hook_error`, but they say
/// nothing about the backend's health: the rule's breaker stays closed and
/// another user's ordinary publish is still asked and allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_refused_payloads_do_not_open_the_breaker_for_others() -> anyhow::Result<()> {
    let backend = Backend::start(Arc::new(|path: &str, body: &Value| {
        if body.to_string().len() > 100_000 {
            Answer::Status(413, "request entity too large")
        } else {
            usual(path, body)
        }
    }))
    .await?;
    let node = node(&backend, 1000).await?;
    let mut mallory = with_token(&node, "mallory").await?;
    let mut bob = with_token(&node, "bob").await?;
    assert_eq!(mallory.join("1", "room:1", "{}").await?[4]["status"], "ok");
    assert_eq!(bob.join("1", "room:1", "{}").await?[4]["status"], "ok");
    let chunk = "x".repeat(60_000);
    let big = json!({"a": chunk, "b": chunk}).to_string();
    // Twice what opens the breaker when failures count.
    for r in 2..12 {
        mallory
            .send(&format!(r#"["1","{r}","room:1","shout",{big}]"#))
            .await?;
        let reply = reply_to(&mut mallory, &r.to_string()).await?;
        assert_eq!(reply[4]["response"]["reason"], "hook_error", "{reply}");
    }
    let calls = backend.calls("/publish").len();
    assert_eq!(calls, 10, "each oversized publish was asked");
    bob.send(r#"["1","2","room:1","shout",{"text":"hi"}]"#)
        .await?;
    let reply = reply_to(&mut bob, "2").await?;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"seen": true}}),
        "bob's ordinary publish was refused because of mallory's payloads"
    );
    assert_eq!(
        backend.calls("/publish").len(),
        calls + 1,
        "bob's was asked"
    );
    let m =
        |result: &str| format!(r#"chorus_hook_calls_total{{hook="publish",result="{result}"}}"#);
    assert_eq!(metric(&node, &m("error")).await?, 10);
    node.stop().await
}

/// A hook answered with a redirect is denied `hook_error` and the redirect is
/// not followed: a 302 would turn the `POST` into a bodiless `GET` whose
/// answer then decides a join it never saw; a 307 would send the request
/// where nobody configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_answered_with_a_redirect_denies_and_is_not_followed() -> anyhow::Result<()> {
    let backend = Backend::start(Arc::new(|path: &str, body: &Value| {
        match (path, body["topic"].as_str()) {
            ("/join", Some("room:302")) => Answer::Redirect(302, "/moved"),
            ("/join", Some("room:307")) => Answer::Redirect(307, "/moved"),
            ("/moved", _) => Answer::Json(json!({"allow": true})),
            _ => usual(path, body),
        }
    }))
    .await?;
    let node = node(&backend, 1000).await?;
    let mut c = with_token(&node, "kim").await?;
    for (r, topic) in [("1", "room:302"), ("2", "room:307")] {
        assert_eq!(
            c.join(r, topic, "{}").await?,
            json!([r, r, topic, "phx_reply", {"status": "error", "response": {"reason": "hook_error"}}])
        );
    }
    assert_eq!(backend.calls("/join").len(), 2);
    assert!(
        backend.calls("/moved").is_empty(),
        "a redirect was followed"
    );
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_join_hook_holds_only_its_own_topic_in_order() -> anyhow::Result<()> {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let backend = Backend::start(Arc::new(move |path: &str, body: &Value| {
        match (path, body["topic"].as_str()) {
            ("/join", Some("room:slow")) => Answer::After(held.clone(), json!({"allow": true})),
            _ => usual(path, body),
        }
    }))
    .await?;
    let node = node(&backend, 5000).await?;
    let mut c = with_token(&node, "hal").await?;
    let mut other = with_token(&node, "ivy").await?;
    // The slow join, then a push on its topic: both wait for the hook.
    c.send(r#"["1","1","room:slow","phx_join",{}]"#).await?;
    c.send(r#"["1","2","room:slow","shout",{"text":"after join"}]"#)
        .await?;
    // Meanwhile another topic on the same socket, and another socket, join.
    assert_eq!(c.join("3", "room:fast", "{}").await?[4]["status"], "ok");
    assert_eq!(
        other.join("1", "room:other", "{}").await?[4]["status"],
        "ok"
    );
    assert!(
        backend.calls("/publish").is_empty(),
        "the push waits behind its join"
    );
    // The hook answers (a permit: whether or not the backend waits yet): the
    // join reply, then the push, in the client's order.
    release.notify_one();
    let mut order = Vec::new();
    while order.len() < 2 {
        let v = c.recv_json(true).await?;
        if v[3] == "phx_reply" && v[2] == "room:slow" {
            assert_eq!(v[4]["status"], "ok", "{v}");
            order.push(v[1].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(order, ["1", "2"]);
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rpc_and_connect_hooks_fail_closed_on_timeouts_and_garbage() -> anyhow::Result<()> {
    let never = Arc::new(Notify::new());
    let held = never.clone();
    let backend = Backend::start(Arc::new(move |path: &str, body: &Value| {
        let mode = body["payload"]["mode"]
            .as_str()
            .or(body["params"]["mode"].as_str());
        match (path, mode) {
            (_, Some("slow")) => Answer::After(held.clone(), json!({"allow": true})),
            (_, Some("garbage")) => Answer::Status(200, "{\"allow\":"),
            ("/rpc", Some("empty")) => Answer::Json(json!({})),
            ("/rpc", Some("huge")) => {
                // Over the 1 MiB an answer may have.
                let reply = format!(r#"{{"reply":{{"x":"{}"}}}}"#, "x".repeat(1 << 20));
                Answer::Status(200, Box::leak(reply.into_boxed_str()))
            }
            ("/rpc", _) => Answer::Json(json!({"reply": {"ok": 1}})),
            _ => Answer::Json(json!({"allow": true})),
        }
    }))
    .await?;
    let node = node(&backend, 200).await?;
    let mut c = with_token(&node, "jo").await?;
    assert_eq!(c.join("1", "room:1", "{}").await?[4]["status"], "ok");
    // The join's pushes (history, then presence) come first.
    c.recv_event("presence_state").await?;
    for (r, mode, why) in [
        ("2", "slow", "hook_unavailable"),
        ("3", "garbage", "hook_error"),
    ] {
        c.send(&format!(
            r#"["1","{r}","room:1","shout",{{"mode":"{mode}"}}]"#
        ))
        .await?;
        assert_eq!(
            c.recv_json(true).await?,
            json!(["1", null, "room:1", "error", {"reason": why}])
        );
        assert_eq!(
            c.recv_json(true).await?,
            json!(["1", r, "room:1", "phx_reply", {"status": "error", "response": {"reason": why}}])
        );
    }
    for (r, mode, why) in [
        ("4", "slow", "hook_unavailable"),
        ("5", "garbage", "hook_error"),
        ("6", "empty", "hook_error"),
        ("7", "huge", "hook_error"),
    ] {
        c.send(&format!(
            r#"["1","{r}","room:1","ask",{{"mode":"{mode}"}}]"#
        ))
        .await?;
        assert_eq!(
            c.recv_json(true).await?,
            json!(["1", r, "room:1", "phx_reply", {"status": "error", "response": {"reason": why}}])
        );
    }
    // The connect hook times out: 403.
    assert_eq!(
        refused_status(&node, "vsn=2.0.0&mode=slow").await,
        Some(403)
    );
    let m = |hook: &str, result: &str| {
        format!(r#"chorus_hook_calls_total{{hook="{hook}",result="{result}"}}"#)
    };
    assert_eq!(metric(&node, &m("publish", "timeout")).await?, 1);
    assert_eq!(metric(&node, &m("publish", "error")).await?, 1);
    assert_eq!(metric(&node, &m("rpc", "timeout")).await?, 1);
    assert_eq!(metric(&node, &m("rpc", "error")).await?, 3);
    assert_eq!(metric(&node, &m("connect", "timeout")).await?, 1);
    never.notify_waiters();
    node.stop().await
}
