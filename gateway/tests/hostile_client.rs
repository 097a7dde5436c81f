//! A hostile client against one node running the built-in channels (issue 19):
//! every client limit of `[limits]` is breached over a real socket, and each
//! test checks the documented error or close code, the
//! `chorus_limit_exceeded_total{limit=..}` counter in `/metrics`, and that
//! another client of the same node goes on unaffected. The memory attacks
//! (a 1 MB `update_presence` before 200 watchers, an `update_presence` flood,
//! 60 × 4 KB messages into each of 300 topics' history) also check the
//! server's health and a bound on the process's memory.
//!
//! Servers bind 127.0.0.1:0; every wait is on a condition.

#[path = "websocket/util.rs"]
#[allow(dead_code)]
mod util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chorus_gateway::config::Config;
use chorus_gateway::server::{ServerConfig, MAX_HELD};
use chorus_gateway::token::{Claims, TokenAuth, Tokens};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use util::{Client, Ended, Node, NodeBuilder};

const TOKEN_SECRET: &[u8] = b"hostile-client-token-secret-0123";

/// The memory attacks measure this process's RSS: they run one at a time.
static MEMORY: Mutex<()> = Mutex::const_new(());

/// `chat:{id}` tracks presence; `new_msg` is broadcast, `update` merges into
/// the meta, `ping` is echoed. `limits` is appended as the `[limits]` body.
fn config(limits: &str) -> Config {
    let text = format!(
        r#"
[[topics]]
pattern = "chat:{{id}}"
presence = true
events = {{ new_msg = "broadcast", update = "update_presence", ping = "echo" }}

[limits]
{limits}
"#
    );
    Config::parse(&text, "hostile.toml").expect("the test config parses")
}

async fn node(config: Config) -> anyhow::Result<Node> {
    node_with(config, |_| {}).await
}

/// [`node`] with server settings that `[limits]` does not hold changed by `tweak`.
async fn node_with(config: Config, tweak: impl FnOnce(&mut ServerConfig)) -> anyhow::Result<Node> {
    let mut server = ServerConfig {
        client_limits: config.limits.client(),
        connection_limits: config.limits.connections(),
        ..ServerConfig::default()
    };
    tweak(&mut server);
    NodeBuilder::new()
        .config(server)
        .app(config)
        .auth(TokenAuth::new(Tokens::new(TOKEN_SECRET)))
        .start()
        .await
}

fn query(user: &str) -> String {
    let token = Tokens::new(TOKEN_SECRET).sign(&Claims::new(user, Duration::from_secs(600)));
    format!("token={token}&vsn=2.0.0")
}

/// A client of `user` joined to `topic` (join_ref "1"), past its join reply.
async fn joined(node: &Node, user: &str, topic: &str) -> anyhow::Result<Client> {
    let mut c = node.client(&query(user)).await?;
    let reply = c.join("1", topic, "{}").await?;
    if reply[4]["status"] != "ok" {
        bail!("{user} could not join {topic}: {reply}");
    }
    Ok(c)
}

/// The reply to `ref_`, skipping every other frame.
async fn reply_to(c: &mut Client, ref_: &str) -> anyhow::Result<Value> {
    loop {
        let v = c.recv_json(false).await?;
        if v[1] == ref_ && v[3] == "phx_reply" {
            return Ok(v);
        }
    }
}

/// Joins `topic` with `join_ref` and returns the reply, skipping frames left
/// from earlier joins.
async fn join(c: &mut Client, join_ref: &str, topic: &str, payload: &str) -> anyhow::Result<Value> {
    c.send(&format!(
        r#"["{join_ref}","{join_ref}","{topic}","phx_join",{payload}]"#
    ))
    .await?;
    reply_to(c, join_ref).await
}

/// Pushes `event` with `payload` on `topic` (join_ref "1") and returns the reply.
async fn push(
    c: &mut Client,
    topic: &str,
    ref_: &str,
    event: &str,
    payload: &str,
) -> anyhow::Result<Value> {
    c.send(&format!(r#"["1","{ref_}","{topic}","{event}",{payload}]"#))
        .await?;
    reply_to(c, ref_).await
}

/// An echo round trip: the client is served.
async fn alive(c: &mut Client, topic: &str) -> anyhow::Result<()> {
    let v = push(c, topic, "alive", "ping", r#"{"ok":1}"#).await?;
    anyhow::ensure!(v[4]["status"] == "ok", "not served: {v}");
    Ok(())
}

/// One HTTP/1.1 exchange: status and body.
async fn http(
    addr: SocketAddr,
    method: Method,
    target: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string())
        .header("content-type", "application/x-ndjson")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .context("no HTTP response within 15 s")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// `chorus_limit_exceeded_total{limit="<limit>"}` as `/metrics` shows it.
async fn exceeded(node: &Node, limit: &str) -> anyhow::Result<u64> {
    metric(
        node,
        &format!("chorus_limit_exceeded_total{{limit=\"{limit}\"}}"),
    )
    .await
}

async fn healthy(node: &Node) -> anyhow::Result<()> {
    let (status, _) = http(node.addr, Method::GET, "/healthz", String::new()).await?;
    anyhow::ensure!(status == 200, "/healthz answered {status}");
    Ok(())
}

/// This process's resident memory, in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_frame_flood_is_told_once_then_closed_with_1008() -> anyhow::Result<()> {
    let node = node(config("frame_rate = 20\nframe_burst = 20")).await?;
    let mut other = joined(&node, "bob", "chat:1").await?;
    let mut flood = node.client(&query("mallory")).await?;
    // 20 frames pass (the burst), the next is answered with an error, 19 more
    // are dropped, the one after closes: 41 frames. Sent at once, the bucket
    // earns back one token per 50 ms.
    for i in 0..60 {
        let frame = format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#);
        if flood.ws.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
    let (mut ok, mut errors) = (0, Vec::new());
    let code = loop {
        match flood.ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(text.as_str())?;
                match v[4]["status"].as_str() {
                    Some("ok") => ok += 1,
                    _ => errors.push(v),
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("the socket failed before its close frame: {e}"),
            None => bail!("the socket ended without a close frame"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!((20..30).contains(&ok), "{ok} heartbeats answered");
    assert_eq!(errors.len(), 1, "told once: {errors:?}");
    assert_eq!(
        errors[0][4],
        json!({"status": "error", "response": {"reason": "frame_rate_exceeded"}})
    );
    assert!(exceeded(&node, "frame_rate").await? >= 21);
    alive(&mut other, "chat:1").await?;
    node.stop().await
}

#[tokio::test]
async fn a_longpoll_frame_flood_ends_the_session() -> anyhow::Result<()> {
    let node = node(config("frame_rate = 20\nframe_burst = 20")).await?;
    let mut other = joined(&node, "bob", "chat:1").await?;
    let base = format!("/socket/longpoll?{}", query("mallory"));
    let (_, body) = http(node.addr, Method::GET, &base, String::new()).await?;
    let started: Value = serde_json::from_str(&body)?;
    assert_eq!(started["status"], 410, "{started}");
    let token = started["token"].as_str().context("a session token")?;
    let target = format!("{base}&token={token}");
    assert_eq!(node.server.longpoll_session_count(), 1);
    // One POST of 60 heartbeats: 20 run, 20 are refused, the 41st ends it.
    let lines: Vec<String> = (0..60)
        .map(|i| format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
        .collect();
    let (_, body) = http(node.addr, Method::POST, &target, lines.join("\n")).await?;
    let answer: Value = serde_json::from_str(&body)?;
    assert_eq!(answer["status"], 429, "{answer}");
    let gone = util::eventually(Duration::from_secs(5), || async {
        node.server.longpoll_session_count() == 0
    })
    .await;
    assert!(gone, "the session ended");
    assert!(exceeded(&node, "frame_rate").await? >= 21);
    alive(&mut other, "chat:1").await?;
    node.stop().await
}

#[tokio::test]
async fn publishes_and_presence_updates_share_one_rate_per_user() -> anyhow::Result<()> {
    let node = node(config("user_publish_rate = 1\nuser_publish_burst = 4")).await?;
    // Two connections and two topics of one user draw on one bucket.
    let mut a = joined(&node, "alice", "chat:1").await?;
    let mut b = joined(&node, "alice", "chat:2").await?;
    let mut bob = joined(&node, "bob", "chat:1").await?;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let v = push(&mut a, "chat:1", &format!("a{i}"), "new_msg", "{}").await?;
        statuses.push(v[4].clone());
        let v = push(&mut b, "chat:2", &format!("b{i}"), "update", r#"{"s":1}"#).await?;
        statuses.push(v[4].clone());
    }
    let ok = statuses.iter().filter(|s| s["status"] == "ok").count();
    assert!(
        (4..=5).contains(&ok),
        "the burst of 4 (+1 earned): {statuses:?}"
    );
    let refused = json!({"status": "error", "response": {"reason": "rate_limit_exceeded"}});
    assert_eq!(statuses.last(), Some(&refused), "{statuses:?}");
    assert!(exceeded(&node, "user_publish_rate").await? >= 1);
    // Echo is not a publish, and bob has his own bucket.
    alive(&mut a, "chat:1").await?;
    let v = push(&mut bob, "chat:1", "m", "new_msg", "{}").await?;
    assert_eq!(v[4]["status"], "ok", "{v}");
    node.stop().await
}

/// A topic rule's `rate_limit` refuses like the user's rate and is counted
/// under its own key.
#[tokio::test]
async fn a_topic_rules_rate_limit_is_counted() -> anyhow::Result<()> {
    let text = r#"
[[topics]]
pattern = "chat:{id}"
events = { new_msg = "broadcast" }
rate_limit = { new_msg = 2 }
"#;
    let node = node(Config::parse(text, "rule-rate.toml")?).await?;
    let mut a = joined(&node, "alice", "chat:1").await?;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let v = push(&mut a, "chat:1", &format!("a{i}"), "new_msg", "{}").await?;
        statuses.push(v[4]["response"]["reason"].clone());
    }
    assert_eq!(
        statuses,
        [Value::Null, Value::Null, json!("rate_limit_exceeded")]
    );
    assert_eq!(exceeded(&node, "rate_limit").await?, 1);
    assert_eq!(exceeded(&node, "user_publish_rate").await?, 0);
    node.stop().await
}

#[tokio::test]
async fn a_presence_meta_over_the_limit_is_refused_and_kept() -> anyhow::Result<()> {
    let node = node(config("presence_meta_bytes = 1024")).await?;
    let mut a = joined(&node, "alice", "chat:1").await?;
    let mut watcher = joined(&node, "bob", "chat:1").await?;
    let big = format!(r#"{{"bio":"{}"}}"#, "x".repeat(2000));
    let v = push(&mut a, "chat:1", "big", "update", &big).await?;
    assert_eq!(v[4]["status"], "error", "{v}");
    assert_eq!(v[4]["response"]["reason"], "presence_meta_too_large", "{v}");
    assert_eq!(v[4]["response"]["max_bytes"], 1024, "{v}");
    assert_eq!(exceeded(&node, "presence_meta_bytes").await?, 1);
    // The meta stays as it was: the next small update carries no bio.
    let v = push(&mut a, "chat:1", "small", "update", r#"{"status":"away"}"#).await?;
    assert_eq!(v[4]["status"], "ok", "{v}");
    loop {
        let d = watcher.recv_event("presence_diff").await?;
        let meta = &d[4]["joins"]["alice"]["metas"][0];
        assert!(meta.get("bio").is_none(), "the refused meta went out: {d}");
        if meta["status"] == "away" {
            break;
        }
    }
    alive(&mut watcher, "chat:1").await?;
    node.stop().await
}

#[tokio::test]
async fn presences_per_user_and_topic_are_capped() -> anyhow::Result<()> {
    let node = node(config("presences_per_user_topic = 2")).await?;
    let _tab1 = joined(&node, "alice", "chat:1").await?;
    let mut tab2 = joined(&node, "alice", "chat:1").await?;
    let mut tab3 = node.client(&query("alice")).await?;
    let v = join(&mut tab3, "1", "chat:1", "{}").await?;
    assert_eq!(
        v[4],
        json!({"status": "error", "response": {"reason": "too_many_presences"}})
    );
    assert_eq!(exceeded(&node, "presences_per_user_topic").await?, 1);
    // Another topic, and another user, are not affected.
    let v = join(&mut tab3, "2", "chat:2", "{}").await?;
    assert_eq!(v[4]["status"], "ok", "{v}");
    let mut bob = joined(&node, "bob", "chat:1").await?;
    alive(&mut bob, "chat:1").await?;
    // A tab that leaves gives its place back.
    let v = push(&mut tab2, "chat:1", "bye", "phx_leave", "{}").await?;
    assert_eq!(v[4]["status"], "ok", "{v}");
    let v = join(&mut tab3, "3", "chat:1", "{}").await?;
    assert_eq!(v[4]["status"], "ok", "{v}");
    node.stop().await
}

#[tokio::test]
async fn deep_or_long_json_is_answered_with_an_error() -> anyhow::Result<()> {
    let node = node(config("json_max_depth = 8\njson_max_string_bytes = 100")).await?;
    let mut a = joined(&node, "alice", "chat:1").await?;
    let mut bob = joined(&node, "bob", "chat:1").await?;
    let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let v = push(&mut a, "chat:1", "deep", "ping", &deep).await?;
    assert_eq!(
        v,
        json!(["1", "deep", "chat:1", "phx_reply", {"status": "error", "response": {"reason": "payload_too_deep"}}])
    );
    let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(101));
    let v = push(&mut a, "chat:1", "long", "new_msg", &long).await?;
    assert_eq!(v[4]["response"]["reason"], "string_too_long", "{v}");
    let v = push(
        &mut a,
        "chat:1",
        "key",
        "ping",
        &format!(r#"{{"{}":1}}"#, "k".repeat(101)),
    )
    .await?;
    assert_eq!(v[4]["response"]["reason"], "string_too_long", "{v}");
    assert_eq!(exceeded(&node, "json_max_depth").await?, 1);
    assert_eq!(exceeded(&node, "json_max_string_bytes").await?, 2);
    // A join is refused the same way, and the connection stays.
    let v = join(&mut a, "5", "chat:5", &deep).await?;
    assert_eq!(v[4]["response"]["reason"], "payload_too_deep", "{v}");
    alive(&mut a, "chat:1").await?;
    alive(&mut bob, "chat:1").await?;
    node.stop().await
}

/// Watchers of `topic`, each read by a task until `done` says stop: the largest
/// `presence_diff` frame each saw, in bytes, and whether it ended.
struct Watchers {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Watched>>>,
}

/// What one watcher saw: its largest diff, and how it ended if it did.
type Watched = (usize, Option<Ended>);

impl Watchers {
    async fn start(
        node: &Node,
        n: usize,
        topic: &str,
        done: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut c = joined(node, &format!("w{i}"), topic).await?;
            let mut done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut largest = 0;
                loop {
                    tokio::select! {
                        _ = done.wait_for(|d| *d) => return Ok((largest, None)),
                        msg = c.ws.next() => match msg {
                            Some(Ok(Message::Text(t))) => {
                                if t.as_str().contains(r#""presence_diff""#) {
                                    largest = largest.max(t.len());
                                }
                            }
                            Some(Ok(Message::Close(f))) => {
                                let code = f.map_or(1005, |f| u16::from(f.code));
                                return Ok((largest, Some(Ended::Code(code))));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return Ok((largest, Some(Ended::Abrupt))),
                        },
                    }
                }
            }));
        }
        Ok(Self { tasks })
    }

    /// The largest diff any watcher saw; fails if one was cut.
    async fn finish(self) -> anyhow::Result<usize> {
        let mut largest = 0;
        for task in self.tasks {
            let (l, ended) = task.await??;
            anyhow::ensure!(ended.is_none(), "a watcher was cut: {ended:?}");
            largest = largest.max(l);
        }
        Ok(largest)
    }
}

#[tokio::test]
async fn a_one_megabyte_presence_meta_before_200_watchers_is_refused() -> anyhow::Result<()> {
    let _one = MEMORY.lock().await;
    let node = node(config("")).await?;
    let (stop, done) = tokio::sync::watch::channel(false);
    let watchers = Watchers::start(&node, 200, "chat:big", done).await?;
    let mut attacker = joined(&node, "mallory", "chat:big").await?;
    let before = rss();
    // 16 strings of 62,000 bytes: each under json_max_string_bytes (64 KiB),
    // the meta about 1 MB, the frame under max_frame_size (1 MiB).
    let fields: Vec<String> = (0..16)
        .map(|i| format!(r#""f{i}":"{}""#, "x".repeat(62_000)))
        .collect();
    let meta = format!("{{{}}}", fields.join(","));
    assert!(meta.len() > 990_000);
    for round in 0..3 {
        let v = push(
            &mut attacker,
            "chat:big",
            &format!("m{round}"),
            "update",
            &meta,
        )
        .await?;
        assert_eq!(v[4]["response"]["reason"], "presence_meta_too_large", "{v}");
    }
    healthy(&node).await?;
    alive(&mut attacker, "chat:big").await?;
    let grown = rss().saturating_sub(before);
    eprintln!(
        "1 MB meta x3 before 200 watchers: RSS +{} KiB",
        grown / 1024
    );
    // Issue 19 measured +198 MiB for one such update before 200 watchers.
    assert!(grown < 48 * MIB, "RSS grew by {} MiB", grown / MIB);
    let _ = stop.send(true);
    let largest = watchers.finish().await?;
    assert!(
        largest < 16 * 1024,
        "no big diff reached a watcher: {largest} bytes"
    );
    assert_eq!(exceeded(&node, "presence_meta_bytes").await?, 3);
    assert_eq!(
        node.server
            .stats()
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    node.stop().await
}

#[tokio::test]
async fn an_update_presence_flood_gives_bounded_diffs_and_cuts_no_watcher() -> anyhow::Result<()> {
    let _one = MEMORY.lock().await;
    // The rates off: the flood reaches presence, to test the coalesced diffs.
    let node = node(config("frame_rate = 0\nuser_publish_rate = 0")).await?;
    let (stop, done) = tokio::sync::watch::channel(false);
    let watchers = Watchers::start(&node, 100, "chat:flood", done).await?;
    let (mut sink, mut replies) = joined(&node, "mallory", "chat:flood").await?.ws.split();
    let before = rss();
    const UPDATES: usize = 2_000;
    let blob = "y".repeat(2_000);
    let reader = tokio::spawn(async move {
        // The attacker reads too: only its replies are counted.
        let mut answered = 0;
        while answered < UPDATES {
            match replies.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains("phx_reply") => answered += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        answered
    });
    for i in 0..UPDATES {
        let frame = format!(r#"["1","u{i}","chat:flood","update",{{"blob":"{blob}","n":{i}}}]"#);
        sink.send(Message::text(frame)).await?;
    }
    let answered = tokio::time::timeout(Duration::from_secs(20), reader).await??;
    assert_eq!(answered, UPDATES);
    // The last meta is the one a newcomer lists.
    let mut last = joined(&node, "late", "chat:flood").await?;
    let state = last.recv_event("presence_state").await?;
    assert_eq!(state[4]["mallory"]["metas"][0]["n"], UPDATES - 1);
    healthy(&node).await?;
    let grown = rss().saturating_sub(before);
    let _ = stop.send(true);
    let largest = watchers.finish().await?;
    eprintln!(
        "{UPDATES} updates of 2 KB before 100 watchers: largest presence_diff {largest} bytes, RSS +{} KiB",
        grown / 1024
    );
    // One leave and one join of a 2 KB meta, and a few listings at most.
    // Issue 19 measured diffs of up to 1.8 MiB and 55-65 of 100 watchers cut.
    assert!(largest < 16 * 1024, "largest presence_diff {largest} bytes");
    assert!(grown < 64 * MIB, "RSS grew by {} MiB", grown / MIB);
    assert_eq!(
        node.server
            .stats()
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    node.stop().await
}

/// `chat:{id}` keeps a history of 60 messages; `new_msg` is a `message`
/// (stored, broadcast, 4,000 characters at most), 60 per user, topic and
/// minute as in issue 19. `[cluster] history_ttl` is `ttl`.
fn history_config(ttl: &str) -> Config {
    let text = format!(
        r#"
[cluster]
history_ttl = "{ttl}"

[[topics]]
pattern = "chat:{{id}}"
history = 60
events = {{ new_msg = "message" }}
rate_limit = {{ new_msg = 60 }}
"#
    );
    Config::parse(&text, "hostile-history.toml").expect("the test config parses")
}

/// The first sample of `name` (with its labels, as `/metrics` writes them).
async fn metric(node: &Node, name: &str) -> anyhow::Result<u64> {
    let (status, text) = http(node.addr, Method::GET, "/metrics", String::new()).await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let prefix = format!("{name} ");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .with_context(|| format!("no {name} in /metrics"))?;
    Ok(line.trim().parse()?)
}

/// What the history-filling attack got through.
#[derive(Debug, Default)]
struct Filled {
    /// Connections the attacker opened (each ends when the server closes it).
    connections: usize,
    /// `new_msg` pushes answered `ok` (stored in history).
    accepted: usize,
    /// `new_msg` pushes answered `rate_limit_exceeded`.
    refused: usize,
    /// Connections the server closed with 1008 (frame rate exceeded).
    closed_1008: usize,
    /// Other close codes the server ended the attacker's connections with.
    other_closes: Vec<u16>,
    /// How long the attack ran.
    elapsed: Duration,
}

/// Issue 19's attack: one user writes 60 × 4,000-character messages into
/// each of 300 `chat:{id}` topics as fast as it can. A connection holds 100
/// channels at most, so each one joins the next 100 topics and writes 60
/// rounds into them; when the server closes it, the attacker reconnects, until
/// `run_for` has passed.
async fn fill_history(node: &Node, run_for: Duration) -> anyhow::Result<Filled> {
    const TOPICS: usize = 300;
    let text = "h".repeat(4_000);
    let started = std::time::Instant::now();
    let mut filled = Filled::default();
    let mut next_topic = 0;
    while started.elapsed() < run_for {
        let (mut sink, mut stream) = node.client(&query("mallory")).await?.ws.split();
        filled.connections += 1;
        let topics: Vec<usize> = (0..100).map(|k| (next_topic + k) % TOPICS).collect();
        next_topic = (next_topic + 100) % TOPICS;
        // The reader counts the answers to `new_msg` pushes (refs "m…") and
        // the close code; the writer stops when it has ended.
        let (ended, mut is_ended) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn(async move {
            let (mut ok, mut refused, mut close) = (0, 0, None);
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(t.as_str())?;
                        let is_push = v[1].as_str().is_some_and(|r| r.starts_with('m'));
                        if v[3] == "phx_reply" && is_push {
                            if v[4]["status"] == "ok" {
                                ok += 1;
                            } else if v[4]["response"]["reason"] == "rate_limit_exceeded" {
                                refused += 1;
                            }
                        }
                    }
                    Ok(Message::Close(f)) => {
                        close = Some(f.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = ended.send(true);
            anyhow::Ok((ok, refused, close))
        });
        let writer = async {
            for (k, topic) in topics.iter().enumerate() {
                let frame = format!(r#"["j{k}","j{k}","chat:{topic}","phx_join",{{}}]"#);
                sink.send(Message::text(frame)).await?;
            }
            for round in 0..60 {
                for (k, topic) in topics.iter().enumerate() {
                    let frame = format!(
                        r#"["j{k}","m{round}.{k}","chat:{topic}","new_msg",{{"message":"{text}"}}]"#
                    );
                    sink.send(Message::text(frame)).await?;
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            // Sending fails once the server has closed the connection.
            _ = writer => {}
            _ = is_ended.wait_for(|e| *e) => {}
        }
        // A connection that got through all its frames is closed by us.
        let _ = sink.close().await;
        let (ok, refused, close) = tokio::time::timeout(Duration::from_secs(15), reader)
            .await
            .context("the attacker's connection did not end")???;
        filled.accepted += ok;
        filled.refused += refused;
        match close {
            Some(1008) => filled.closed_1008 += 1,
            other => filled.other_closes.extend(other),
        }
    }
    filled.elapsed = started.elapsed();
    Ok(filled)
}

/// Issue 19 measured RSS 9 → 85 MiB for 18,000 such messages, kept after the
/// attacker left. With the default limits the user gets its burst (60) and 20
/// publishes a second, and its connections are closed for their frame rate.
#[tokio::test]
async fn a_history_filling_attack_is_throttled_and_bounded() -> anyhow::Result<()> {
    let _one = MEMORY.lock().await;
    let node = node(history_config("24h")).await?;
    let mut bob = node.client(&query("bob")).await?;
    let v = join(&mut bob, "1", "chat:bob", "{}").await?;
    assert_eq!(v[4]["status"], "ok", "{v}");
    let before = rss();
    let filled = fill_history(&node, Duration::from_secs(2)).await?;
    let grown = rss().saturating_sub(before);
    let history = metric(&node, "chorus_history_bytes").await?;
    eprintln!(
        "history-filling attack: {filled:?}, history {history} bytes, RSS +{} KiB",
        grown / 1024
    );
    // The user's bucket: 60 at once, 20 a second after (+20 of slack).
    let secs = filled.elapsed.as_secs_f64();
    let bound = 60.0 + 20.0 * secs + 20.0;
    assert!(filled.accepted >= 60, "the burst passes: {filled:?}");
    assert!(
        (filled.accepted as f64) <= bound,
        "{} accepted in {secs:.1} s, at most {bound:.0}: {filled:?}",
        filled.accepted
    );
    assert!(filled.refused > 0, "{filled:?}");
    // Refused by the user's rate or, once a topic had its 60 a minute, by
    // the topic rule's `rate_limit` (checked first): each counted once.
    let user = exceeded(&node, "user_publish_rate").await?;
    let rule = exceeded(&node, "rate_limit").await?;
    assert!(
        user > 0 && user + rule >= filled.refused as u64,
        "{user} + {rule} counted: {filled:?}"
    );
    // Too many frames: the attacker's connections are closed (1008), each
    // after its burst of frames and as many refused.
    assert!(filled.closed_1008 > 0, "{filled:?}");
    assert!(exceeded(&node, "frame_rate").await? > 0);
    // What was accepted is all history holds: the saved message (4,000
    // characters, its id, user and time), its topic and 48 bytes each, about
    // 4.2 KB (18,000 messages: 75 MB).
    assert!(history > 0, "the accepted messages are kept");
    assert!(
        history <= filled.accepted as u64 * 4_500,
        "{history} bytes of history for {} messages",
        filled.accepted
    );
    // Measured: +1.6 to +2.1 MiB (the attacker's side included).
    assert!(grown < 16 * MIB, "RSS grew by {} MiB", grown / MIB);
    healthy(&node).await?;
    let v = push(&mut bob, "chat:bob", "b", "new_msg", r#"{"message":"hi"}"#).await?;
    assert_eq!(v[4]["status"], "ok", "bob is served: {v}");
    node.stop().await
}

/// With a short `history_ttl` what the attack stored expires: the node holds
/// no history afterwards, and a newcomer is pushed none.
#[tokio::test]
async fn a_filled_history_expires_after_history_ttl() -> anyhow::Result<()> {
    let _one = MEMORY.lock().await;
    let node = node(history_config("1s")).await?;
    let filled = fill_history(&node, Duration::from_secs(1)).await?;
    assert!(filled.accepted >= 60, "the burst passes: {filled:?}");
    let emptied = util::eventually(Duration::from_secs(10), || async {
        metric(&node, "chorus_history_bytes").await.ok() == Some(0)
    })
    .await;
    assert!(emptied, "history still held: {filled:?}");
    let expired = metric(&node, "chorus_history_evicted_total{reason=\"ttl\"}").await?;
    assert_eq!(expired, filled.accepted as u64, "{filled:?}");
    // The topics the first connection wrote into push an empty history.
    let mut late = node.client(&query("late")).await?;
    for (i, topic) in [0, 1, 99].iter().enumerate() {
        let join_ref = format!("{}", i + 1);
        let v = join(&mut late, &join_ref, &format!("chat:{topic}"), "{}").await?;
        assert_eq!(v[4]["status"], "ok", "{v}");
        let pushed = late.recv_event("messages_history").await?;
        assert_eq!(pushed[4]["messages"], json!([]), "chat:{topic}: {pushed}");
    }
    healthy(&node).await?;
    node.stop().await
}

#[tokio::test]
async fn longpoll_posts_past_the_byte_rate_are_paced() -> anyhow::Result<()> {
    let node = node(config("byte_rate = 100000\nbyte_burst = 100000")).await?;
    let mut other = joined(&node, "bob", "chat:1").await?;
    let base = format!("/socket/longpoll?{}", query("mallory"));
    let (_, body) = http(node.addr, Method::GET, &base, String::new()).await?;
    let started: Value = serde_json::from_str(&body)?;
    let token = started["token"].as_str().context("a session token")?;
    let target = format!("{base}&token={token}");
    let join = r#"["1","1","chat:2","phx_join",{}]"#.to_owned();
    let (_, answer) = http(node.addr, Method::POST, &target, join).await?;
    assert_eq!(serde_json::from_str::<Value>(&answer)?["status"], 200);
    let ping = format!(
        r#"["1","p","chat:2","ping",{{"body":"{}"}}]"#,
        "x".repeat(50_000)
    );
    let start = std::time::Instant::now();
    for i in 0..6 {
        let (_, answer) = http(node.addr, Method::POST, &target, ping.clone()).await?;
        let answer: Value = serde_json::from_str(&answer)?;
        assert_eq!(answer["status"], 200, "POST {i}: {answer}");
    }
    // The burst covers two bodies; the sixth is taken only once the 150 KB
    // beyond it are paid for at 100 KB/s.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1400), "not paced: {took:?}");
    assert!(exceeded(&node, "byte_rate").await? >= 1);
    assert_eq!(
        node.server.longpoll_session_count(),
        1,
        "the session goes on"
    );
    alive(&mut other, "chat:1").await?;
    node.stop().await
}

/// Starts a LongPoll session for `user`: the target of its requests.
async fn longpoll_session(node: &Node, user: &str) -> anyhow::Result<String> {
    let base = format!("/socket/longpoll?{}", query(user));
    let (_, body) = http(node.addr, Method::GET, &base, String::new()).await?;
    let started: Value = serde_json::from_str(&body)?;
    anyhow::ensure!(started["status"] == 410, "no session: {started}");
    let token = started["token"].as_str().context("a session token")?;
    Ok(format!("{base}&token={token}"))
}

/// A LongPoll POST of `body` to `target`: the status of its answer.
async fn longpoll_post(addr: SocketAddr, target: &str, body: String) -> anyhow::Result<Value> {
    let (_, answer) = http(addr, Method::POST, target, body).await?;
    Ok(serde_json::from_str::<Value>(&answer)?["status"].clone())
}

/// A POST to `target` that sends its headers, announcing a body of `len`
/// bytes, and never the body: the answer, read to the close.
async fn post_without_body(addr: SocketAddr, target: &str, len: usize) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_string(&mut answer))
        .await
        .context("no answer within 15 s")??;
    Ok(answer)
}

/// While a LongPoll session pays its byte-rate debt it takes no request, and
/// the POSTs sent meanwhile wait for one of the few places in its queue: past
/// them a POST is answered 408 before its body is read, so what one session's
/// waiting POSTs hold is bounded, not the client's upload speed times the
/// pause. A POST answered 408 never runs later: its sender was told it failed.
#[tokio::test]
async fn longpoll_posts_during_a_byte_rate_pause_are_bounded_and_never_run_once_refused(
) -> anyhow::Result<()> {
    let node = node_with(config("byte_rate = 100000\nbyte_burst = 100000"), |s| {
        s.longpoll_window = Duration::from_millis(300);
        // A body that does not come is waited for a minute: far longer
        // than the test waits for any answer.
        s.handshake_timeout = Duration::from_secs(60);
    })
    .await?;
    let mut bob = joined(&node, "bob", "chat:1").await?;
    let target = longpoll_session(&node, "mallory").await?;
    let post = |body: String| longpoll_post(node.addr, &target, body);
    let join = r#"["1","1","chat:1","phx_join",{}]"#;
    assert_eq!(post(join.to_owned()).await?, 200);
    // 700 KB (a broadcast, then blank lines) against a burst of 100 KB at
    // 100 KB/s: the session takes no request for the next 6 s.
    let big = r#"["1","2","chat:1","new_msg",{"body":"m0"}]"#.to_owned() + &"\n".repeat(700_000);
    assert_eq!(post(big).await?, 200);
    assert_eq!(bob.recv_event("new_msg").await?[4]["body"], "m0");

    // Eight at once: some wait in the queue, the rest for a place in it;
    // the window passes and each is answered 408.
    let late = (0..8).map(|i| {
        post(format!(
            r#"["1","l{i}","chat:1","new_msg",{{"body":"late {i}"}}]"#
        ))
    });
    for (i, status) in futures_util::future::join_all(late)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status?, 408, "POST {i} during the pause");
    }
    // The queue is full until the debt is paid: a POST announcing a 1 MB
    // body is answered without it (the server waits a minute for a body it
    // reads).
    let answer = post_without_body(node.addr, &target, 1_000_000).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":408}"#), "{answer}");

    // Once the debt is paid the session takes requests again: a POST then
    // runs, and bob's next broadcast is that one, none of the eight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let after = r#"["1","3","chat:1","new_msg",{"body":"paid"}]"#;
        match post(after.to_owned()).await? {
            status if status == 200 => break,
            status if status == 408 && std::time::Instant::now() < deadline => {}
            status => bail!("a POST after the pause got {status}"),
        }
    }
    assert_eq!(bob.recv_event("new_msg").await?[4]["body"], "paid");
    assert!(exceeded(&node, "byte_rate").await? >= 1);
    node.stop().await
}

#[tokio::test]
async fn new_connections_past_an_addresss_rate_get_429_and_others_go_on() -> anyhow::Result<()> {
    let node = node(config(
        "connection_rate = 1\nconnection_burst = 5\nconnection_rate_exempt = []",
    ))
    .await?;
    // bob connected before the flood, from another address.
    let mut bob = joined(&node, "bob", "chat:1").await?;
    let mallory: std::net::IpAddr = "127.0.0.3".parse()?;
    for i in 0..5 {
        let (code, _) = healthz_from(mallory, node.addr).await?;
        anyhow::ensure!(code == 200, "connection {i} of the burst refused: {code}");
    }
    let (code, answer) = healthz_from(mallory, node.addr).await?;
    anyhow::ensure!(code == 429, "the sixth connection got {code}");
    anyhow::ensure!(answer.contains("retry-after: 1"), "{answer}");
    // Told once: until the address is accepted again, it gets no answer
    // (held, then closed: how long it is held is checked in the next test).
    // Both at once: a second later the address has a connection's worth of
    // rate again.
    let url = format!("ws://{}/socket/websocket?{}", node.addr, query("mallory"));
    let (upgraded, answered) = tokio::join!(
        ws_from(mallory, node.addr, &url),
        healthz_from(mallory, node.addr)
    );
    anyhow::ensure!(
        upgraded.is_err(),
        "a WebSocket upgrade past the rate went through"
    );
    anyhow::ensure!(answered.is_err(), "a second refusal was answered");
    assert_eq!(exceeded(&node, "connection_rate").await?, 3);
    // Another address, and a client already connected, are served.
    let (code, _) = healthz_from("127.0.0.4".parse()?, node.addr).await?;
    anyhow::ensure!(code == 200, "another address got {code}");
    alive(&mut bob, "chat:1").await?;
    node.stop().await
}

#[tokio::test]
async fn an_address_refused_in_a_loop_is_held_and_leaves_the_accept_loop_serving(
) -> anyhow::Result<()> {
    // Past the first refusal (told 429), each of mallory's connections is
    // held unanswered for a second (1 / connection_rate), at most 256 at a
    // time, and closed; the accept loop yields its worker every 16 of them.
    // 300 at once go through several yields and past the most held. They
    // must all reach the node within the second: a listen backlog the system
    // caps below them (`net.core.somaxconn`, 128 before Linux 5.4) would drop
    // handshakes to be retried a second later, so then 100 are sent.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(128);
    let n = if somaxconn >= 512 { 300 } else { 100 };
    // 2 sockets per attempt on top of the other tests running beside this.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let node = node(config(
        "connection_rate = 1\nconnection_burst = 5\nconnection_rate_exempt = []",
    ))
    .await?;
    let mut bob = joined(&node, "bob", "chat:1").await?;
    let mallory: std::net::IpAddr = "127.0.0.3".parse()?;
    for i in 0..5 {
        let (code, _) = healthz_from(mallory, node.addr).await?;
        anyhow::ensure!(code == 200, "connection {i} of the burst got {code}");
    }
    let (code, _) = healthz_from(mallory, node.addr).await?;
    anyhow::ensure!(code == 429, "the first refusal got {code}");
    let attempts = (0..n).map(|_| async move {
        let started = std::time::Instant::now();
        let answered = healthz_from(mallory, node.addr).await.is_ok();
        (answered, started.elapsed())
    });
    let results = futures_util::future::join_all(attempts).await;
    anyhow::ensure!(
        results.iter().all(|(answered, _)| !answered),
        "a refused connection was answered"
    );
    // Every connection the node held was closed no sooner than a second
    // after it was opened; the node holds 256 before it closes any at once.
    let held = results
        .iter()
        .filter(|(_, took)| *took >= Duration::from_secs(1))
        .count();
    anyhow::ensure!(
        held >= n.min(MAX_HELD),
        "only {held} of {n} were held a second"
    );
    assert_eq!(exceeded(&node, "connection_rate").await?, n as u64 + 1);
    let (code, _) = healthz_from("127.0.0.4".parse()?, node.addr).await?;
    anyhow::ensure!(code == 200, "another address got {code}");
    alive(&mut bob, "chat:1").await?;
    node.stop().await
}

/// GETs that start a LongPoll session, one after another on the kept-alive
/// connection `stream`, until one is not answered with a new session: how
/// many were, and the HTTP answer (status, headers) that was not.
async fn longpoll_sessions_on(
    stream: TcpStream,
    node: &Node,
    most: usize,
) -> anyhow::Result<(usize, Option<(u16, hyper::HeaderMap)>)> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let target = format!("/socket/longpoll?{}", query("mallory"));
    for started in 0..most {
        sender.ready().await?;
        let req = Request::builder()
            .uri(&target)
            .header("host", node.addr.to_string())
            .body(Full::new(bytes::Bytes::new()))?;
        let response = sender.send_request(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        if parts.status != 200 {
            return Ok((started, Some((parts.status.as_u16(), parts.headers))));
        }
        let answer: Value = serde_json::from_slice(&body)?;
        anyhow::ensure!(answer["status"] == 410, "GET {started}: {answer}");
    }
    anyhow::ensure!(
        sender.ready().await.is_ok(),
        "the connection was closed after {most} sessions"
    );
    Ok((most, None))
}

/// A LongPoll session is a new connection to the address's
/// `connection_rate`, as a WebSocket is: one kept-alive TCP connection
/// starting session after session is held to it (its accept covers its first
/// session; past the burst, the rate's 429 and the connection is closed), so
/// it cannot take every place of `max_connections` from other clients.
#[tokio::test]
async fn longpoll_sessions_on_one_connection_count_against_the_connection_rate(
) -> anyhow::Result<()> {
    let node = node_with(
        config("connection_rate = 1\nconnection_burst = 5\nconnection_rate_exempt = []"),
        |s| s.max_connections = 20,
    )
    .await?;
    let mallory: std::net::IpAddr = "127.0.0.3".parse()?;
    let stream = connect_from(mallory, node.addr).await?;
    let (started, refused) = longpoll_sessions_on(stream, &node, 30).await?;
    // The burst of 5: the connection, then 4 more sessions beyond the one
    // its accept covers (one more if a second passed meanwhile).
    anyhow::ensure!(
        (5..=6).contains(&started),
        "{started} sessions over one connection"
    );
    let (code, headers) = refused.context("no session was refused")?;
    assert_eq!(code, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["connection"], "close");
    assert_eq!(node.server.longpoll_session_count(), started);
    // The same limiter as the accept loop's: the address has been told, so
    // its next connection is held unanswered.
    anyhow::ensure!(
        healthz_from(mallory, node.addr).await.is_err(),
        "a connection past the rate was answered"
    );
    assert_eq!(exceeded(&node, "connection_rate").await?, 2);
    // Another client still gets in.
    let mut bob = joined(&node, "bob", "chat:1").await?;
    alive(&mut bob, "chat:1").await?;
    node.stop().await
}

#[tokio::test]
async fn loopback_is_exempt_from_the_connection_rate_by_default() -> anyhow::Result<()> {
    // A reverse proxy on the same host connects from 127.0.0.1 for everyone.
    let node = node(config("connection_rate = 1\nconnection_burst = 1")).await?;
    for i in 0..20 {
        let (code, _) = healthz_from("127.0.0.1".parse()?, node.addr).await?;
        anyhow::ensure!(code == 200, "loopback connection {i} refused: {code}");
    }
    // LongPoll sessions too, however many one connection starts.
    let stream = connect_from("127.0.0.1".parse()?, node.addr).await?;
    let (started, refused) = longpoll_sessions_on(stream, &node, 20).await?;
    assert_eq!((started, refused.map(|(code, _)| code)), (20, None));
    assert_eq!(exceeded(&node, "connection_rate").await?, 0);
    node.stop().await
}

/// The attacks the latency measurement runs, one at a time.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Heartbeats as fast as one connection can send them, joined to nothing
    /// (reconnecting when closed for its frame rate).
    FrameFlood,
    /// `new_msg` broadcasts into the measured client's topic.
    PublishFlood,
    /// `update` (update_presence) with 2 KB metas in the measured client's topic.
    PresenceFlood,
    /// `update` with a ~1 MB meta, over and over.
    BigMetas,
    /// 500 TCP connections that send an unfinished HTTP request, a header
    /// byte a second (reopened when the server closes them).
    Slowloris,
    // Not in the default run (`HOSTILE_ATTACKS` picks them): parts of
    // PublishFlood, to tell which of its costs reaches the measured client.
    /// Joins the measured client's topic (a presence), then heartbeats as
    /// FrameFlood: presence churn only, no publishes.
    JoinChurn,
    /// PublishFlood into another topic: the same work for the server, but
    /// nothing of it is delivered to the measured client.
    PublishFloodElsewhere,
    /// One connection that stays, publishing into the measured client's topic
    /// at 20/s (the user's rate, within the frame rate): publishes only.
    PublishPaced,
}

impl Attack {
    /// The next frame of a flood; `None` for slowloris.
    fn frame(self, i: u64, big: &tokio_tungstenite::tungstenite::Utf8Bytes) -> Option<Message> {
        let text = match self {
            Self::FrameFlood | Self::JoinChurn => {
                format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#)
            }
            Self::PublishFlood | Self::PublishPaced => {
                format!(r#"["1","{i}","chat:1","new_msg",{{"n":{i}}}]"#)
            }
            Self::PublishFloodElsewhere => {
                format!(r#"["1","{i}","chat:2","new_msg",{{"n":{i}}}]"#)
            }
            Self::PresenceFlood => format!(
                r#"["1","{i}","chat:1","update",{{"blob":"{}","n":{i}}}]"#,
                "y".repeat(2_000)
            ),
            Self::BigMetas => return Some(Message::Text(big.clone())),
            Self::Slowloris => return None,
        };
        Some(Message::text(text))
    }
}

/// The attacker's address (loopback, but not the other clients' 127.0.0.1).
const ATTACKER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to `addr` from the local address `source`.
async fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// A WebSocket client connected from `source` to `addr` with the request `url`.
async fn ws_from(source: std::net::IpAddr, addr: SocketAddr, url: &str) -> anyhow::Result<Client> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = connect_from(source, addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(
        url.into_client_request()?,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await?;
    Ok(Client { ws })
}

/// `GET /healthz` from `source`: the status line's code, read to the close.
async fn healthz_from(source: std::net::IpAddr, addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(source, addr).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_string(&mut answer))
        .await
        .context("no answer within 15 s")??;
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    Ok((code, answer))
}

/// Runs `attack` against `addr` until `stop`; returns how many frames it sent
/// and connections it opened, and counts the connections refused to it in
/// `refusals` as they come.
async fn run_attack(
    addr: SocketAddr,
    attack: Attack,
    mut stop: tokio::sync::watch::Receiver<bool>,
    refusals: Arc<AtomicU64>,
) -> anyhow::Result<(u64, u64)> {
    if let Attack::Slowloris = attack {
        return Ok((0, slowloris(addr, 500, stop).await?));
    }
    let fields: Vec<String> = (0..16)
        .map(|i| format!(r#""f{i}":"{}""#, "x".repeat(62_000)))
        .collect();
    let big = format!(r#"["1","big","chat:1","update",{{{}}}]"#, fields.join(","));
    let big = tokio_tungstenite::tungstenite::Utf8Bytes::from(big);
    let url = format!("ws://{addr}/socket/websocket?{}", query("mallory"));
    let (mut sent, mut connections) = (0u64, 0u64);
    while !*stop.borrow() {
        // Refused (429 past `connection_rate`): straight back at it.
        let Ok(client) = ws_from(ATTACKER, addr, &url).await else {
            refusals.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (mut sink, mut stream) = client.ws.split();
        connections += 1;
        if !matches!(attack, Attack::FrameFlood) {
            // Joined with a presence: to the measured client's topic, but
            // for PublishFloodElsewhere.
            let topic = match attack {
                Attack::PublishFloodElsewhere => "chat:2",
                _ => "chat:1",
            };
            sink.send(Message::text(format!(
                r#"["1","1","{topic}","phx_join",{{}}]"#
            )))
            .await?;
        }
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        // Replies are read and dropped, as a client that does not care.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        loop {
            let Some(frame) = attack.frame(sent, &big) else {
                break;
            };
            if let Attack::PublishPaced = attack {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = pace.tick() => {}
                }
                if sink.send(frame).await.is_err() {
                    break;
                }
                sent += 1;
                continue;
            }
            tokio::select! {
                _ = stop.changed() => break,
                fed = sink.feed(frame) => if fed.is_err() { break },
            }
            sent += 1;
            if sent % 32 == 0 && sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
        reader.abort();
    }
    Ok((sent, connections))
}

/// `n` connections that never finish their HTTP request.
async fn slowloris(
    addr: SocketAddr,
    n: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    use tokio::io::AsyncWriteExt;
    let mut opened = 0u64;
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        for slot in &mut conns {
            let alive = match slot {
                Some(s) => s.write_all(b"x").await.is_ok(),
                None => false,
            };
            if !alive {
                let Ok(mut s) = connect_from(ATTACKER, addr).await else {
                    continue;
                };
                opened += 1;
                let head = b"GET /socket/websocket HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                *slot = s.write_all(head).await.is_ok().then_some(s);
            }
        }
        tokio::select! {
            _ = stop.changed() => return Ok(opened),
            _ = tick.tick() => {}
        }
    }
}

/// Frames other than its replies (broadcasts, presence diffs) the measured
/// client read in [`round_trips`] since the last [`pushed_since`].
static PUSHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn pushed_since() -> u64 {
    PUSHED.swap(0, std::sync::atomic::Ordering::Relaxed)
}

/// Round trips of one `ping` (echo) at a time, one every 20 ms on average (a
/// normal client, under the default frame rate of 100/s), for `secs`: sorted,
/// in µs; or until `until` is above zero, if given.
/// The other frames it reads meanwhile are counted in [`PUSHED`].
async fn round_trips(
    c: &mut Client,
    secs: f64,
    until: Option<&AtomicU64>,
) -> anyhow::Result<Vec<u64>> {
    let started = std::time::Instant::now();
    let mut rtts = Vec::new();
    let mut i = 0;
    while started.elapsed().as_secs_f64() < secs
        && until.is_none_or(|n| n.load(Ordering::Relaxed) == 0)
    {
        // 10-30 ms apart at random, 20 ms on average. A fixed period samples
        // an attack that works in rounds always at the same point of its
        // round, so that every sample or none meets the round's burst,
        // depending on the phase: a flood gets one connection through
        // `connection_rate` (50/s) every 20 ms, each upgraded and joined, and
        // slowloris writes to its 500 connections once a second.
        tokio::time::sleep(Duration::from_micros(rand::random_range(10_000..30_000))).await;
        let sent = std::time::Instant::now();
        let ref_ = format!("p{i}");
        c.send(&format!(r#"["1","{ref_}","chat:1","ping",{{"ok":1}}]"#))
            .await?;
        let v = loop {
            let v = c.recv_json(false).await?;
            if v[1] == ref_.as_str() && v[3] == "phx_reply" {
                break v;
            }
            PUSHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        anyhow::ensure!(v[4]["status"] == "ok", "ping refused: {v}");
        rtts.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        i += 1;
    }
    rtts.sort_unstable();
    Ok(rtts)
}

fn percentile(sorted: &[u64], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `work` on its own OS thread and tokio runtime: a client apart from
/// the server's runtime, as a separate process would be (they share only the
/// cores).
fn on_thread<F, T>(
    name: &str,
    work: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(work())
        })
        .expect("a thread")
}

/// CPU time of this process's threads by name (`tokio-rt-worker`: the
/// server; `bob`; `attacker`): nanoseconds run and nanoseconds spent
/// runnable but waiting for a core, from the scheduler's
/// `/proc/self/task/*/schedstat` (Linux).
fn thread_times() -> std::collections::HashMap<String, (u64, u64)> {
    let mut times = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return times;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        let entry = times.entry(name.trim().to_owned()).or_insert((0, 0));
        entry.0 += run;
        entry.1 += wait;
    }
    times
}

/// Per second of `secs` between two [`thread_times`]: "run / wait" ms of the
/// server's workers, of bob's thread and of the attacker's.
fn cpu_between(
    before: &std::collections::HashMap<String, (u64, u64)>,
    after: &std::collections::HashMap<String, (u64, u64)>,
    secs: f64,
) -> String {
    ["tokio-rt-worker", "bob", "attacker"]
        .iter()
        .map(|name| {
            let (r0, w0) = before.get(*name).copied().unwrap_or_default();
            let (r1, w1) = after.get(*name).copied().unwrap_or_default();
            let per_s = |ns: u64| ns as f64 / 1e6 / secs;
            format!(
                "{:.0} / {:.0}",
                per_s(r1.saturating_sub(r0)),
                per_s(w1.saturating_sub(w0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sets the calling thread's nice value (Linux keeps one per thread) with
/// `renice` on its thread id, or without one its scheduling policy to
/// `SCHED_IDLE` with `chrt` (it then runs only on a core nothing else wants);
/// says so if it could not.
fn lower_priority(nice: Option<i32>) {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|t| t.to_string_lossy().into_owned()));
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let done = tid.is_some_and(|tid| match nice {
        Some(nice) => run("renice", &["-n", &nice.to_string(), "-p", &tid]),
        None => run("chrt", &["--idle", "-p", "0", &tid]),
    });
    if !done {
        println!("could not lower the attacker thread's priority");
    }
}

/// Most seconds of an attack's start measured apart from the rest of it.
const ATTACK_START: f64 = 3.0;

/// A measurement request to the normal client: seconds, an early stop (see
/// [`round_trips`]), and where to answer.
type Measure = (
    f64,
    Option<Arc<AtomicU64>>,
    tokio::sync::oneshot::Sender<anyhow::Result<Vec<u64>>>,
);

/// Not a test but a measurement (`make bench-hostile`): a normal client's
/// `ping` round trips (p50/p99) on an unloaded node, then while each attack
/// runs against the same node (its start, until the attacker is first
/// refused, in a row of its own), and the ratio to the unloaded run. Issue 19
/// asks for within 2×; speed is measured, not asserted (the project's rule).
/// The server runs on this test's runtime (2 workers, as `chorus` on this
/// machine); the normal client and the attacker each on a thread and
/// runtime of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: make bench-hostile"]
async fn hostile_latency() -> anyhow::Result<()> {
    let secs: f64 = std::env::var("HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    // The defaults of [limits], but loopback is not exempt from
    // `connection_rate` (the attacker comes from 127.0.0.2); HOSTILE_LIMITS
    // adds or overrides keys (e.g. "connection_rate = 0" for a run without it).
    let extra = std::env::var("HOSTILE_LIMITS").unwrap_or_default();
    let node = node(config(&format!(
        "connection_rate_exempt = []\n{}",
        extra.replace(';', "\n")
    )))
    .await?;
    println!("limits: connection_rate_exempt = [] {extra}");
    // The attacker's own CPU is not the server's cost. On one box it takes
    // more than its share: its loopback writes wake the server's workers
    // onto its own core (a sync wake-up, as if the writer would now sleep),
    // where they wait behind it, up to a 4 ms scheduler tick, while the
    // other core may idle (`perf sched`, BENCHMARKS.md). A client on
    // another machine cannot do that. So the attacker thread runs at
    // `SCHED_IDLE`, which gives way to any waking thread at once;
    // HOSTILE_ATTACKER_NICE=N runs it at nice N instead.
    let attacker_nice: Option<i32> = match std::env::var("HOSTILE_ATTACKER_NICE") {
        Ok(nice) => Some(
            nice.parse()
                .with_context(|| format!("HOSTILE_ATTACKER_NICE: not a nice value: {nice:?}"))?,
        ),
        Err(_) => None,
    };
    match attacker_nice {
        Some(nice) => println!("attacker thread at nice {nice}"),
        None => println!("attacker thread at SCHED_IDLE"),
    }
    let url = format!("ws://{}/socket/websocket?{}", node.addr, query("bob"));
    let (measure, mut requests) = tokio::sync::mpsc::channel::<Measure>(1);
    let bob = on_thread("bob", move || async move {
        let mut bob = Client::connect(&url).await?;
        let v = join(&mut bob, "1", "chat:1", "{}").await?;
        anyhow::ensure!(v[4]["status"] == "ok", "bob could not join: {v}");
        while let Some((secs, until, answer)) = requests.recv().await {
            let _ = answer.send(round_trips(&mut bob, secs, until.as_deref()).await);
        }
        Ok(())
    });
    let round_trips_until = |secs: f64, until: Option<Arc<AtomicU64>>| {
        let measure = measure.clone();
        async move {
            let (answer, answered) = tokio::sync::oneshot::channel();
            measure.send((secs, until, answer)).await?;
            answered.await?
        }
    };
    let round_trips = |secs: f64| round_trips_until(secs, None);
    // Warm up the connection and the allocator.
    round_trips(0.5).await?;
    pushed_since();
    let t0 = thread_times();
    let base = round_trips(secs).await?;
    let cpu = cpu_between(&t0, &thread_times(), secs);
    let (b50, b99) = (percentile(&base, 50), percentile(&base, 99));
    println!("hostile latency: ping round trips of one client, {secs} s per phase");
    println!("| phase | round trips | p50 ms | p99 ms | max ms | p50 ratio | p99 ratio | attacker: frames written, connections (refused) | frames pushed to the client /s | CPU ms/s run / waiting for a core: server; bob; attacker | load average |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let row = |phase: &str, rtts: &[u64], secs: f64, sent: &str, cpu: &str| {
        let (p50, p99) = (percentile(rtts, 50), percentile(rtts, 99));
        println!(
            "| {phase} | {} | {p50:.3} | {p99:.3} | {:.3} | {:.2} | {:.2} | {sent} | {:.0} | {cpu} | {} |",
            rtts.len(),
            percentile(rtts, 100),
            p50 / b50,
            p99 / b99,
            pushed_since() as f64 / secs,
            load_average()
        );
    };
    row("unloaded", &base, secs, "-", &cpu);
    // HOSTILE_ATTACKS: the phases to run, by name, comma-separated (default:
    // the five attacks of issue 19).
    let all = [
        Attack::FrameFlood,
        Attack::PublishFlood,
        Attack::PresenceFlood,
        Attack::BigMetas,
        Attack::Slowloris,
        Attack::JoinChurn,
        Attack::PublishFloodElsewhere,
        Attack::PublishPaced,
    ];
    let attacks: Vec<Attack> = match std::env::var("HOSTILE_ATTACKS") {
        Ok(names) => names
            .split(',')
            .map(|name| {
                all.iter()
                    .copied()
                    .find(|a| format!("{a:?}") == name.trim())
                    .with_context(|| format!("HOSTILE_ATTACKS: no attack {name:?}"))
            })
            .collect::<anyhow::Result<_>>()?,
        Err(_) => all[..5].to_vec(),
    };
    for attack in attacks {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let addr = node.addr;
        let refusals = Arc::new(AtomicU64::new(0));
        let attacker = on_thread("attacker", {
            let refusals = refusals.clone();
            move || {
                lower_priority(attacker_nice);
                run_attack(addr, attack, stopped, refusals)
            }
        });
        // The attack's start, apart: until the attacker is first refused
        // (its `connection_burst` spent: that many connections upgraded and
        // joined at once), at most ATTACK_START.
        let started = std::time::Instant::now();
        let t0 = thread_times();
        let start = round_trips_until(ATTACK_START, Some(refusals.clone())).await?;
        let took = started.elapsed().as_secs_f64();
        let cpu = cpu_between(&t0, &thread_times(), took);
        let label = if refusals.load(Ordering::Relaxed) > 0 {
            format!("{attack:?}, to its first refusal ({took:.1} s)")
        } else {
            format!("{attack:?}, its first {took:.1} s")
        };
        row(&label, &start, took, "-", &cpu);
        let t0 = thread_times();
        let rtts = round_trips(secs).await?;
        let cpu = cpu_between(&t0, &thread_times(), secs);
        let _ = stop.send(true);
        let (frames, connections) = tokio::task::spawn_blocking(move || attacker.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the attacker panicked"))??;
        let refused = refusals.load(Ordering::Relaxed);
        row(
            &format!("{attack:?}"),
            &rtts,
            secs,
            &format!("{frames}, {connections} ({refused})"),
            &cpu,
        );
        healthy(&node).await?;
    }
    let t0 = thread_times();
    let after = round_trips(secs).await?;
    row(
        "unloaded again",
        &after,
        secs,
        "-",
        &cpu_between(&t0, &thread_times(), secs),
    );
    drop(measure);
    tokio::task::spawn_blocking(move || bob.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the client panicked"))??;
    node.stop().await
}

/// A client sending big frames faster than `byte_rate` is paced, not cut: the
/// server stops reading it while it is in debt, every frame is still answered,
/// and another client is served meanwhile.
#[tokio::test]
async fn big_frames_past_the_byte_rate_are_paced_not_refused() -> anyhow::Result<()> {
    let node = node(config("byte_rate = 100000\nbyte_burst = 100000")).await?;
    let mut other = joined(&node, "bob", "chat:1").await?;
    let mut big = joined(&node, "mallory", "chat:2").await?;
    let body = "x".repeat(50_000);
    let start = std::time::Instant::now();
    for i in 0..6 {
        big.send(&format!(
            r#"["1","b{i}","chat:2","ping",{{"body":"{body}"}}]"#
        ))
        .await?;
    }
    alive(&mut other, "chat:1").await?;
    for i in 0..6 {
        let v = reply_to(&mut big, &format!("b{i}")).await?;
        anyhow::ensure!(v[4]["status"] == "ok", "frame {i} not answered: {v}");
    }
    // The burst covers two frames; the sixth is read only once the 150 KB
    // beyond it are paid for at 100 KB/s.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1400), "not paced: {took:?}");
    assert!(exceeded(&node, "byte_rate").await? >= 1);
    node.stop().await
}
