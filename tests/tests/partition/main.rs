//! A real partition: three `chorus` processes, each in its own network
//! namespace, gossiping over a bridge. One is cut off and later reconnected:
//! both sides keep serving their own clients during the cut, and after the
//! heal every node's presence view is the same and holds exactly the live users.
//!
//! Network namespaces need root and iproute2 (`ip netns`); elsewhere the test
//! prints why it skipped and passes.
//!
//! The `chorus` binary is `$CHORUS_BIN` if set, else `target/<profile>/chorus`
//! next to this test's own executable (see [`bin::chorus_bin`]); `cargo test
//! --workspace` builds it, `cargo test -p chorus-tests` alone does not.

#[path = "../common/bin.rs"]
mod bin;
mod net;

// The gateway's own test helpers, shared by path rather than copied.
#[path = "../../../gateway/tests/api/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../../../gateway/tests/websocket/util.rs"]
#[allow(dead_code)]
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chorus_gateway::token::{Claims, Tokens};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::http::{Req, KEY};
use crate::net::Net;
use crate::util::{eventually, Client};

const CLUSTER_SECRET: &str = "partition-test-cluster-secret-0123456789";
const TOKEN_SECRET: &str = "partition-test-token-secret-0123";
/// `chat:*` in the built-in config tracks presence for any user with a token.
const TOPIC: &str = "chat:partition";
/// Longer than the `lan` profile needs to declare a cut-off node down (3 s)
/// and to find it again after the heal.
const SETTLE: Duration = Duration::from_secs(20);

/// A `chorus` process inside a namespace; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(net: &Net, bin: &Path, i: usize) -> anyhow::Result<Proc> {
    let seeds: Vec<String> = (1..=net.nodes())
        .filter(|&j| j != i)
        .map(|j| net.gossip_addr(j).to_string())
        .collect();
    let child = Command::new("ip")
        .args(["netns", "exec", &net.namespace(i)])
        .arg(bin)
        .args(["--node", &format!("n{i}")])
        .args(["--listen", &net.http_addr(i).to_string()])
        .args(["--gossip", &net.gossip_addr(i).to_string()])
        .args(["--seeds", &seeds.join(",")])
        .env("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET)
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .env("CHORUS_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn chorus in its namespace")?;
    Ok(Proc(child))
}

async fn listening(addr: SocketAddr) -> bool {
    eventually(SETTLE, || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// What one client has seen: its presence view, replayed from the
/// `presence_state` and `presence_diff` frames as phoenix.js does, and the
/// `notice` broadcasts it received.
#[derive(Default)]
struct Seen {
    /// key -> the phx_refs of its metas.
    presence: BTreeMap<String, BTreeSet<String>>,
    notices: Vec<String>,
}

impl Seen {
    fn keys(&self) -> BTreeSet<String> {
        self.presence.keys().cloned().collect()
    }

    fn apply(&mut self, frame: &Value) {
        let refs = |metas: &Value| -> BTreeSet<String> {
            metas["metas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
                .collect()
        };
        match frame[3].as_str() {
            Some("presence_state") => {
                self.presence = frame[4]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), refs(v)))
                    .collect();
            }
            Some("presence_diff") => {
                for (key, v) in frame[4]["joins"].as_object().into_iter().flatten() {
                    self.presence
                        .entry(key.clone())
                        .or_default()
                        .extend(refs(v));
                }
                for (key, v) in frame[4]["leaves"].as_object().into_iter().flatten() {
                    if let Some(held) = self.presence.get_mut(key) {
                        for r in refs(v) {
                            held.remove(&r);
                        }
                        if held.is_empty() {
                            self.presence.remove(key);
                        }
                    }
                }
            }
            Some("notice") => {
                if let Some(text) = frame[4]["text"].as_str() {
                    self.notices.push(text.to_owned());
                }
            }
            _ => {}
        }
    }
}

/// A client joined to [`TOPIC`] on one node; a task reads its frames into
/// [`Seen`]. Dropping it closes the connection.
struct User {
    seen: Arc<Mutex<Seen>>,
    reader: JoinHandle<()>,
}

impl Drop for User {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl User {
    async fn join(net: &Net, node: usize, name: &str) -> anyhow::Result<Self> {
        let tokens = Tokens::new(TOKEN_SECRET.as_bytes());
        let token = tokens.sign(&Claims::new(name, Duration::from_secs(600)));
        let url = format!(
            "ws://{}/socket/websocket?token={token}&vsn=2.0.0",
            net.http_addr(node)
        );
        let mut client = Client::connect(&url).await?;
        let reply = client.join("1", TOPIC, "{}").await?;
        if reply[4]["status"] != "ok" {
            bail!("{name} could not join on n{node}: {reply}");
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let reader = tokio::spawn(async move {
            let mut last_beat = Instant::now();
            loop {
                // Heartbeats keep the socket under the 60 s idle timeout.
                if last_beat.elapsed() > Duration::from_secs(20) {
                    let beat = r#"[null,"hb","phoenix","heartbeat",{}]"#;
                    if client.send(beat).await.is_err() {
                        return;
                    }
                    last_beat = Instant::now();
                }
                match client.recv_text().await {
                    Ok(text) => {
                        if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                            sink.lock().expect("seen lock").apply(&frame);
                        }
                    }
                    // recv times out after a few quiet seconds: keep reading.
                    Err(e) if e.to_string().contains("timed out") => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Self { seen, reader })
    }

    fn keys(&self) -> BTreeSet<String> {
        self.seen.lock().expect("seen lock").keys()
    }

    fn notices(&self) -> Vec<String> {
        self.seen.lock().expect("seen lock").notices.clone()
    }
}

/// The users node `i` lists in [`TOPIC`] (`GET /api/presence`).
async fn node_view(net: &Net, i: usize) -> anyhow::Result<BTreeSet<String>> {
    let reply = Req::authed("GET", &format!("/api/presence?topic={TOPIC}"))
        .send(net.http_addr(i))
        .await?;
    let state = reply.json()?;
    Ok(state
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default())
}

async fn broadcast(net: &Net, i: usize, text: &str) -> anyhow::Result<()> {
    let body = json!({"topic": TOPIC, "event": "notice", "payload": {"text": text}});
    let reply = Req::authed("POST", "/api/broadcast")
        .json(&body)
        .send(net.http_addr(i))
        .await?;
    if reply.status != 202 {
        bail!("broadcast on n{i}: {reply:?}");
    }
    Ok(())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until every listed node's API view and every listed user's replayed
/// view equal `want`; on timeout, fails with what each one holds.
async fn converge(
    net: &Net,
    nodes: &[usize],
    users: &[(&str, &User)],
    want: &BTreeSet<String>,
    what: &str,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + SETTLE;
    loop {
        let mut views = Vec::new();
        for &i in nodes {
            views.push((format!("node n{i}"), node_view(net, i).await?));
        }
        for (name, user) in users {
            views.push((format!("client {name}"), user.keys()));
        }
        if views.iter().all(|(_, v)| v == want) {
            eprintln!("{what}: converged in {:?}", start.elapsed());
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: wanted {want:?} everywhere within {SETTLE:?}, saw {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_and_reconnected_serves_its_clients_and_converges() -> anyhow::Result<()> {
    let net = match Net::create(3) {
        Ok(net) => net,
        Err(why) => {
            eprintln!(
                "skipped: the network-namespace partition test needs root and iproute2 ({why:#})"
            );
            return Ok(());
        }
    };
    let bin = bin::chorus_bin()?;
    eprintln!("chorus binary: {}", bin.display());
    let _procs = (1..=3)
        .map(|i| spawn(&net, &bin, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for i in 1..=3 {
        assert!(listening(net.http_addr(i)).await, "n{i} is not listening");
    }

    // One user per node; everyone sees everyone.
    let alice = User::join(&net, 1, "alice").await?;
    let bob = User::join(&net, 2, "bob").await?;
    let carol = User::join(&net, 3, "carol").await?;
    let all = [("alice", &alice), ("bob", &bob), ("carol", &carol)];
    converge(
        &net,
        &[1, 2, 3],
        &all,
        &set(&["alice", "bob", "carol"]),
        "formed",
    )
    .await?;

    // Cut n3 off. Each side declares the other down and its users leave.
    net.cut(3)?;
    converge(
        &net,
        &[1, 2],
        &all[..2],
        &set(&["alice", "bob"]),
        "majority side after the cut",
    )
    .await?;
    converge(&net, &[3], &all[2..], &set(&["carol"]), "n3 after the cut").await?;

    // Both sides keep serving their own clients: joins, leaves, broadcasts.
    let dave = User::join(&net, 3, "dave").await?;
    let erin = User::join(&net, 1, "erin").await?;
    drop(bob);
    let majority = [("alice", &alice), ("erin", &erin)];
    let minority = [("carol", &carol), ("dave", &dave)];
    converge(
        &net,
        &[1, 2],
        &majority,
        &set(&["alice", "erin"]),
        "majority side during the cut",
    )
    .await?;
    converge(
        &net,
        &[3],
        &minority,
        &set(&["carol", "dave"]),
        "n3 during the cut",
    )
    .await?;
    broadcast(&net, 1, "from n1 during the cut").await?;
    broadcast(&net, 3, "from n3 during the cut").await?;
    let delivered = |u: &User, text: &str| u.notices().iter().any(|n| n == text);
    for (name, user) in &majority {
        let ok = eventually(SETTLE, || async {
            delivered(user, "from n1 during the cut")
        })
        .await;
        assert!(
            ok,
            "{name} on the majority side missed its side's broadcast"
        );
    }
    for (name, user) in &minority {
        let ok = eventually(SETTLE, || async {
            delivered(user, "from n3 during the cut")
        })
        .await;
        assert!(ok, "{name} on n3 missed its side's broadcast");
    }

    // Heal: every node and every client holds exactly the live users, and
    // bob, who left during the cut, is gone from n3's view too.
    net.heal(3)?;
    let everyone = [
        ("alice", &alice),
        ("carol", &carol),
        ("dave", &dave),
        ("erin", &erin),
    ];
    let live = set(&["alice", "carol", "dave", "erin"]);
    converge(&net, &[1, 2, 3], &everyone, &live, "after the heal").await?;

    // A broadcast crosses the healed link again.
    broadcast(&net, 3, "from n3 after the heal").await?;
    for (name, user) in &everyone {
        let ok = eventually(SETTLE, || async {
            delivered(user, "from n3 after the heal")
        })
        .await;
        assert!(ok, "{name} missed a broadcast after the heal");
    }
    // `chat:*` is recoverable: an API broadcast is kept in the topic's log,
    // so what each side published during the cut reaches the other side's
    // clients after the heal (merged with the log), once.
    for (user, text) in [
        (&alice, "from n3 during the cut"),
        (&carol, "from n1 during the cut"),
    ] {
        let ok = eventually(SETTLE, || async { delivered(user, text) }).await;
        assert!(ok, "{text:?} never crossed the healed link");
        let times = user.notices().iter().filter(|n| *n == text).count();
        assert_eq!(times, 1, "{text:?} delivered {times} times");
    }
    Ok(())
}

/// This test's namespaces and subnets: apart from the other partition test's
/// (tests of one binary run at once) and the soak's.
const RECOVERY: net::Layout = net::Layout {
    tag: "chr",
    base: 231,
};
/// A recoverable topic of the built-in config.
const RECOVER_TOPIC: &str = "chat:recover";

/// A connection joined to [`RECOVER_TOPIC`] on node `i` as `user`, with join
/// params `params`; returns it and the join reply's response.
async fn join_recover(
    net: &Net,
    i: usize,
    user: &str,
    params: &Value,
) -> anyhow::Result<(Client, Value)> {
    let tokens = Tokens::new(TOKEN_SECRET.as_bytes());
    let token = tokens.sign(&Claims::new(user, Duration::from_secs(600)));
    let url = format!(
        "ws://{}/socket/websocket?token={token}&vsn=2.0.0",
        net.http_addr(i)
    );
    let mut client = Client::connect(&url).await?;
    let reply = client.join("1", RECOVER_TOPIC, &params.to_string()).await?;
    if reply[4]["status"] != "ok" {
        bail!("{user} could not join on n{i}: {reply}");
    }
    Ok((client, reply[4]["response"].clone()))
}

/// Whether node `i`'s only peer reaches `state` within [`SETTLE`]
/// (`GET /api/cluster`).
async fn peer_state(net: &Net, i: usize, state: &str) -> bool {
    let addr = net.http_addr(i);
    eventually(SETTLE, || async move {
        let Ok(r) = Req::authed("GET", "/api/cluster").send(addr).await else {
            return false;
        };
        r.json().is_ok_and(|v| {
            v["members"]
                .as_array()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|p| p["state"] == state))
        })
    })
    .await
}

/// Pushes `new_message` `text` and waits for its ok reply.
async fn say(client: &mut Client, n: u32, text: &str) -> anyhow::Result<()> {
    let reff = format!("m{n}");
    client
        .send(&format!(
            r#"["1","{reff}","{RECOVER_TOPIC}","new_message",{{"message":"{text}"}}]"#
        ))
        .await?;
    loop {
        let f = client.recv_json(true).await?;
        if f[3] == "phx_reply" && f[1] == reff.as_str() {
            if f[4]["status"] != "ok" {
                bail!("{text} refused: {f}");
            }
            return Ok(());
        }
    }
}

/// The `message` pushes a client reads until it has `n` of them.
async fn messages(client: &mut Client, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = client.recv_json(true).await?;
        if f[3] == "message" {
            out.push(f[4].clone());
        }
    }
    Ok(out)
}

/// The partition of the issue: a client leaves with its last position, the
/// cluster is cut in two, both sides publish, the cut heals, and the client
/// rejoining on either node recovers both sides' messages, each once, in
/// each publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_after_a_healed_partition_recovers_both_sides() -> anyhow::Result<()> {
    let net = match Net::create_with(2, RECOVERY) {
        Ok(net) => net,
        Err(why) => {
            eprintln!(
                "skipped: the network-namespace partition test needs root and iproute2 ({why:#})"
            );
            return Ok(());
        }
    };
    let bin = bin::chorus_bin()?;
    let _procs = (1..=2)
        .map(|i| spawn(&net, &bin, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for i in 1..=2 {
        assert!(listening(net.http_addr(i)).await, "n{i} is not listening");
    }
    let (mut p1, _) = join_recover(&net, 1, "p1", &json!({})).await?;
    let (mut p2, _) = join_recover(&net, 2, "p2", &json!({})).await?;
    let (mut alice, _) = join_recover(&net, 1, "alice", &json!({})).await?;
    // The nodes have met once alice on n1 sees a message sent on n2.
    let mut n = 0;
    let before = loop {
        n += 1;
        say(&mut p2, n, &format!("hello {n}")).await?;
        let got = tokio::time::timeout(Duration::from_secs(1), messages(&mut alice, 1)).await;
        if let Ok(got) = got {
            break got?.remove(0);
        }
        if n > 20 {
            bail!("n1 never delivered a message sent on n2");
        }
    };
    drop(before);
    // Every earlier hello came from n2 too: alice has them all (in order)
    // once she has this one, so its position covers them.
    n += 1;
    say(&mut p2, n, "ready").await?;
    let ready = loop {
        let m = messages(&mut alice, 1).await?.remove(0);
        if m["body"] == "ready" {
            break m;
        }
    };
    let pos = ready["_pos"].as_str().context("_pos")?.to_owned();
    drop(alice);

    net.cut(2)?;
    // A real cut: each side declares the other down (publishes then reach
    // the other side only by anti-entropy after the heal).
    for i in [1, 2] {
        assert!(
            peer_state(&net, i, "down").await,
            "n{i} never declared its peer down"
        );
    }
    for text in ["a1", "a2"] {
        n += 1;
        say(&mut p1, n, text).await?;
    }
    for text in ["b1", "b2"] {
        n += 1;
        say(&mut p2, n, text).await?;
    }
    net.heal(2)?;
    for i in [1, 2] {
        assert!(
            peer_state(&net, i, "up").await,
            "n{i} never found its peer again"
        );
    }

    // Once both sides' messages are on both nodes, a rejoin on either one
    // recovers the four.
    for i in [2, 1] {
        let addr = net.http_addr(i);
        let merged = eventually(SETTLE, || {
            let pos = pos.clone();
            async move {
                let path = format!("/api/history?topic={RECOVER_TOPIC}&since={pos}");
                let Ok(r) = Req::authed("GET", &path).send(addr).await else {
                    return false;
                };
                r.json().is_ok_and(|v| {
                    v["recovered"] == true && v["messages"].as_array().map_or(0, Vec::len) == 4
                })
            }
        })
        .await;
        assert!(merged, "n{i} never held both sides' messages");
        let (mut back, reply) = join_recover(&net, i, "alice", &json!({ "since": pos })).await?;
        assert_eq!(reply["recovered"], true, "on n{i}: {reply}");
        let got = messages(&mut back, 4).await?;
        let bodies: Vec<&str> = got.iter().filter_map(|m| m["body"].as_str()).collect();
        let at = |b: &str| bodies.iter().position(|x| *x == b).expect("recovered");
        assert!(
            at("a1") < at("a2") && at("b1") < at("b2"),
            "n{i}: {bodies:?}"
        );
        let ids: BTreeSet<&str> = got.iter().filter_map(|m| m["_id"].as_str()).collect();
        assert_eq!(ids.len(), 4, "n{i}: each once");
        // Positions carry the time they were handed out: compare what they cover.
        let covers = |v: &Value| {
            v.as_str()
                .and_then(chorus_gateway::channel::recover::decode_pos)
                .map(|p| p.seqs)
        };
        assert_eq!(
            covers(&reply["pos"]),
            covers(&got[3]["_pos"]),
            "n{i}: the reply's pos is the position after them"
        );
    }
    Ok(())
}
