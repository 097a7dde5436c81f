//! Webhooks across a real 3-node cluster: 100 users join and leave `room:1`
//! over the three nodes, and the test's backend (`backend.rs`, signatures
//! checked) receives every `member_added` / `member_removed` and the topic's
//! `channel_occupied` / `channel_vacated`: exactly once without faults, at
//! least once when the node sending them is killed (`kill -9`) mid-way.
//!
//! The `chorus` binary is `$CHORUS_BIN` if set, else `target/<profile>/chorus`
//! (see [`bin::chorus_bin`]).

mod backend;
#[path = "../common/bin.rs"]
mod bin;
#[path = "../../../gateway/tests/api/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../../../gateway/tests/websocket/util.rs"]
#[allow(dead_code)]
mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use chorus_gateway::token::{Claims, Tokens};
use chorus_gateway::webhooks::rendezvous;
use serde_json::json;

use crate::backend::Backend;
use crate::http::{Req, KEY};
use crate::util::{eventually, Client};

const CLUSTER_SECRET: &str = "webhook-test-cluster-secret-0123456789";
const TOKEN_SECRET: &str = "webhook-test-token-secret-0123456789";
const WEBHOOK_SECRET: &str = "webhook-test-signing-secret";
const TOPIC: &str = "room:1";
const USERS: usize = 100;
/// Long enough for a killed node to be declared down (`lan`: 2 s) and its
/// events handed over, on a loaded CI machine.
const SETTLE: Duration = Duration::from_secs(30);

/// Three `chorus` processes on 127.0.0.1; killed when dropped.
struct Cluster {
    procs: Vec<Option<Child>>,
    http: Vec<SocketAddr>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_udp() -> anyhow::Result<Vec<SocketAddr>> {
    let sockets = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sockets
        .iter()
        .map(std::net::UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()?)
}

impl Cluster {
    async fn start(backend: &Backend) -> anyhow::Result<Self> {
        let bin = bin::chorus_bin()?;
        let dir = std::env::temp_dir().join(format!(
            "chorus-webhooks-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("webhooks.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[cluster]
profile = "lan"

[[topics]]
pattern = "room:{{id}}"
presence = true
events = {{ shout = "broadcast" }}

[[webhooks]]
url = "http://{}/events"
topics = ["room:{{id}}"]
events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "message"]
batch_ms = 20
retry_for_ms = 10000
"#,
                backend.addr
            ),
        )?;
        let gossip = free_udp()?;
        let mut http = Vec::new();
        let mut procs = Vec::new();
        for i in 0..3 {
            let listen = free_tcp()?;
            let seeds: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| gossip[j].to_string())
                .collect();
            let child = Command::new(&bin)
                .arg("--config")
                .arg(&config)
                .args(["--node", &format!("n{}", i + 1)])
                .args(["--listen", &listen.to_string()])
                .args(["--gossip", &gossip[i].to_string()])
                .args(["--seeds", &seeds.join(",")])
                .env("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET)
                .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
                .env("CHORUS_API_KEY", KEY)
                .env("CHORUS_WEBHOOK_SECRET", WEBHOOK_SECRET)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            procs.push(Some(child));
            http.push(listen);
        }
        let cluster = Self {
            procs,
            http,
            _dir: TempDir(dir),
        };
        for i in 0..3 {
            let addr = cluster.http[i];
            let formed = eventually(SETTLE, || async move {
                cluster_ids(addr).await.is_ok_and(|ids| ids.len() == 3)
            })
            .await;
            if !formed {
                bail!(
                    "n{} did not see the three nodes up within {SETTLE:?}",
                    i + 1
                );
            }
        }
        Ok(cluster)
    }

    /// The node (index) that sends `topic`'s events, by the rule the server uses.
    async fn sender(&self, topic: &str) -> anyhow::Result<usize> {
        let ids = cluster_ids(self.http[0]).await?;
        let chosen = rendezvous(topic, &ids).context("no member")?.to_owned();
        let name = chosen.split('#').next().unwrap_or_default().to_owned();
        let index: usize = name
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .context("a node name nN")?;
        Ok(index - 1)
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.procs[i].take() {
            // std's kill is SIGKILL: kill -9.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The up nodes `addr` sees, itself included, as `NodeId` text.
async fn cluster_ids(addr: SocketAddr) -> anyhow::Result<Vec<String>> {
    let reply = Req::authed("GET", "/api/cluster").send(addr).await?;
    let json = reply.json()?;
    let mut ids = vec![json["node"]["id"].as_str().context("node id")?.to_owned()];
    for m in json["members"].as_array().into_iter().flatten() {
        if m["state"] == "up" {
            ids.push(m["id"].as_str().context("member id")?.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Users present in [`TOPIC`] as node `addr` sees them.
async fn present(addr: SocketAddr) -> usize {
    let Ok(reply) = Req::authed("GET", &format!("/api/presence/count?topic={TOPIC}"))
        .send(addr)
        .await
    else {
        return usize::MAX;
    };
    reply
        .json()
        .ok()
        .and_then(|j| j["users"].as_u64())
        .map_or(usize::MAX, |n| n as usize)
}

async fn join(addr: SocketAddr, user: &str) -> anyhow::Result<Client> {
    let tokens = Tokens::new(TOKEN_SECRET.as_bytes());
    let token = tokens.sign(&Claims::new(user, Duration::from_secs(600)));
    let mut client = Client::connect(&format!(
        "ws://{addr}/socket/websocket?token={token}&vsn=2.0.0"
    ))
    .await?;
    let reply = client.join("1", TOPIC, "{}").await?;
    if reply[4]["status"] != "ok" {
        bail!("{user} could not join on {addr}: {reply}");
    }
    Ok(client)
}

fn user(i: usize) -> String {
    format!("u{i}")
}

/// Waits until `backend` holds at least `want` events named `name` for each
/// of `users` (or for the topic, with no users).
async fn received(
    backend: &Backend,
    name: &str,
    users: &[String],
    what: &str,
) -> anyhow::Result<()> {
    let ok = eventually(SETTLE, || async {
        if users.is_empty() {
            backend.count(name, None) >= 1
        } else {
            users.iter().all(|u| backend.count(name, Some(u)) >= 1)
        }
    })
    .await;
    if !ok {
        let missing: Vec<&String> = users
            .iter()
            .filter(|u| backend.count(name, Some(u)) == 0)
            .collect();
        bail!("{what}: {name} missing within {SETTLE:?} for {missing:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_every_event_arrives_exactly_once() -> anyhow::Result<()> {
    let backend = Backend::start(WEBHOOK_SECRET, Duration::ZERO).await?;
    let cluster = Cluster::start(&backend).await?;
    let users: Vec<String> = (0..USERS).map(user).collect();
    let mut clients = Vec::new();
    for (i, name) in users.iter().enumerate() {
        clients.push(join(cluster.http[i % 3], name).await?);
    }
    received(&backend, "member_added", &users, "joins").await?;
    // One broadcast: a `message` event, sent once by the node it was published on.
    clients[4]
        .send(&format!(r#"["1","2","{TOPIC}","shout",{{"text":"hi"}}]"#))
        .await?;
    received(&backend, "message", &[], "the broadcast").await?;
    drop(clients);
    received(&backend, "member_removed", &users, "leaves").await?;
    received(&backend, "channel_vacated", &[], "the topic emptied").await?;

    let events = backend.events();
    for u in &users {
        for name in ["member_added", "member_removed"] {
            let n = backend.count(name, Some(u));
            assert_eq!(n, 1, "{name} for {u} arrived {n} times: {events:?}");
        }
    }
    assert_eq!(backend.count("channel_occupied", None), 1, "{events:?}");
    assert_eq!(backend.count("channel_vacated", None), 1, "{events:?}");
    let messages: Vec<_> = events.iter().filter(|e| e["name"] == "message").collect();
    assert_eq!(
        messages,
        [&json!({"name": "message", "topic": TOPIC, "event": "shout", "payload": {"text": "hi"}})]
    );
    for e in &events {
        assert_eq!(e["topic"], TOPIC, "{e}");
    }
    assert_eq!(backend.bad_signatures(), 0);
    // Occupied came first, vacated last.
    assert_eq!(
        events.first().map(|e| &e["name"]),
        Some(&json!("channel_occupied"))
    );
    assert_eq!(
        events.last().map(|e| &e["name"]),
        Some(&json!("channel_vacated"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_killed_mid_way_loses_nothing() -> anyhow::Result<()> {
    // A slow backend: the sender has batches in flight and events waiting
    // when it is killed.
    let backend = Backend::start(WEBHOOK_SECRET, Duration::from_millis(150)).await?;
    let mut cluster = Cluster::start(&backend).await?;
    let sender = cluster.sender(TOPIC).await?;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != sender).collect();
    let users: Vec<String> = (0..USERS).map(user).collect();

    // The first half joins over the three nodes; every node sees all of them.
    let mut first = Vec::new();
    for (i, name) in users[..USERS / 2].iter().enumerate() {
        first.push(join(cluster.http[i % 3], name).await?);
    }
    for &i in &survivors {
        let addr = cluster.http[i];
        let seen = eventually(SETTLE, || async move { present(addr).await == USERS / 2 }).await;
        anyhow::ensure!(seen, "n{} did not see the first half", i + 1);
    }
    // A quarter leaves, and the sender dies at once, with events undelivered.
    first.drain(..USERS / 4);
    cluster.kill(sender);
    // The second half joins on the survivors, then everyone leaves.
    let mut second = Vec::new();
    for (i, name) in users[USERS / 2..].iter().enumerate() {
        second.push(join(cluster.http[survivors[i % 2]], name).await?);
    }
    received(&backend, "member_added", &users, "joins").await?;
    drop(first);
    drop(second);
    received(&backend, "member_removed", &users, "leaves").await?;
    let vacated = eventually(SETTLE, || async {
        backend.events().last().map(|e| e["name"].clone()) == Some(json!("channel_vacated"))
    })
    .await;
    anyhow::ensure!(
        vacated,
        "the last event is not channel_vacated: {:?}",
        backend.events()
    );
    assert!(backend.count("channel_occupied", None) >= 1);
    assert_eq!(backend.bad_signatures(), 0);
    let total = backend.events().len();
    eprintln!(
        "killed n{}: {total} events received for {} distinct ones",
        sender + 1,
        2 * USERS + 2
    );
    Ok(())
}

#[test]
fn a_webhook_without_its_secret_stops_startup() -> anyhow::Result<()> {
    let bin = bin::chorus_bin()?;
    let dir = TempDir(
        std::env::temp_dir().join(format!("chorus-webhooks-nosecret-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let config = dir.0.join("c.toml");
    std::fs::write(
        &config,
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/events\"\ntopics = [\"room:{id}\"]\nevents = [\"member_added\"]\n",
    )?;
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("CHORUS_WEBHOOK_SECRET")
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CHORUS_WEBHOOK_SECRET must be set when [[webhooks]] are configured"),
        "{stderr}"
    );
    Ok(())
}
