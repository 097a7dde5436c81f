//! Chaos soak: three real `chorus` processes, about 1,000 WebSocket clients
//! joined with presence to `soak:{t}` topics across the nodes, publishers
//! pushing `new_message` at a steady rate, and a fault loop that kills -9,
//! SIGTERMs and restarts nodes and (in network namespaces, which need root and
//! iproute2; elsewhere this fault type is skipped and the summary says so)
//! cuts a node off and heals it. `SOAK_SECS` (default 60; `make soak`: 600)
//! sets how long faults are injected; `SOAK_SEED` replays a fault schedule.
//!
//! The loop alternates *clean windows* and *fault steps*:
//!
//! - a fault step injects one fault (or its recovery: a restart, a heal) and
//!   then waits until the cluster has *settled*: every node that runs lists
//!   exactly the current incarnations of the nodes it can reach as up, every
//!   client is joined, and every client's presence view equals the truth;
//! - a clean window follows (2 to 4 s of steady publishing, no fault; a room
//!   is created through the API), then its messages are checked for loss.
//!
//! Invariants, each a failure with the seed and the fault schedule so far:
//!
//! - **presence**: after every fault step, within [`FAILURE_DETECTION`] +
//!   [`MARGIN`], every client's view (replayed from `presence_state` and
//!   `presence_diff`, as phoenix.js does) equals the truth: the keys of the
//!   clients of its topic that are joined on a node it can reach (all nodes,
//!   or its side of a cut), each with exactly one meta. Each client's
//!   convergence time is how long after the fault its view last became equal
//!   to the truth; the summary gives their distribution;
//! - **no loss**: a message is *checked* when it was acknowledged (`ok` reply
//!   to the push) and pushed during a clean window; a subscriber is *owed* it
//!   when, at the end of that window, it is still on the connection it had
//!   joined (join answered `ok`) before the push was sent, on a node on the
//!   same side as the publisher's node. No fault happens between the window's
//!   start (the cluster settled) and its check, so publisher and subscriber
//!   both stayed connected to nodes that stayed up and connected to each
//!   other for the message's whole flight. Every owed subscriber must receive
//!   it within [`FLIGHT`] after the window ends. Messages pushed during fault
//!   steps are not owed to anyone (they may be lost with a node), but they are
//!   still checked for the next two;
//! - **no duplicate**: no client ever receives the same message twice (all
//!   messages, all connections, faults or not);
//! - **order**: a client receives the messages of one publisher connection in
//!   the order they were pushed (all messages; a publisher that reconnects
//!   starts a new connection, whose messages may overtake the old one's
//!   in flight through another node);
//! - **no disconnects in clean windows**: healthy nodes do not drop healthy
//!   clients;
//! - **records**: after the last recovery, every node serves the same history
//!   of every topic (`/api/history`) and the same rooms (`/api/rooms`), and
//!   every room created in a clean window is there;
//! - **memory**: each node's RSS (`VmRSS`) stays under [`rss_cap`] and does not
//!   grow across fault cycles: a process that lived through 4 or more settled
//!   points ends within 1.5x (+32 MiB) of its early peak;
//! - no node exits on its own.

#[path = "../common/bin.rs"]
mod bin;
mod clients;
mod nodes;

#[path = "../../../gateway/tests/api/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../partition/net.rs"]
#[allow(dead_code)]
mod net;
#[path = "../../../gateway/tests/websocket/util.rs"]
#[allow(dead_code)]
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::clients::{Board, Sent};
use crate::http::Req;
use crate::nodes::{Cluster, NODES};

/// The `lan` profile's bound on declaring a dead node down (ALGORITHM.md §8).
const FAILURE_DETECTION: Duration = Duration::from_secs(3);
/// What presence may take on top of failure detection: clients of a dead node
/// reconnecting and rejoining elsewhere, a restarted node meshing, the diffs
/// reaching 1,000 clients, on a busy 2-core machine with debug builds.
const MARGIN: Duration = Duration::from_secs(12);
/// How long after a clean window a message may still be in flight.
const FLIGHT: Duration = Duration::from_secs(5);
/// Startup: three nodes and every client joined.
const STARTUP: Duration = Duration::from_secs(90);

struct Settings {
    secs: u64,
    seed: u64,
    clients: usize,
    topics: usize,
    publishers_per_topic: usize,
    publish_every: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
        Ok(Self {
            secs: env_or("SOAK_SECS", 60)?,
            seed: env_or("SOAK_SEED", random_seed % 1_000_000)?,
            clients: env_or("SOAK_CLIENTS", 1000)?,
            topics: env_or("SOAK_TOPICS", 20)?,
            publishers_per_topic: 2,
            publish_every: Duration::from_millis(env_or("SOAK_PUBLISH_MS", 1000)?),
        })
    }

    fn repro(&self) -> String {
        format!(
            "SOAK_SEED={} SOAK_SECS={} SOAK_CLIENTS={} SOAK_TOPICS={} cargo test -p chorus-tests --test soak -- --nocapture",
            self.seed, self.secs, self.clients, self.topics
        )
    }
}

/// RSS bound per node: `SOAK_RSS_CAP_MIB`, default 512 MiB.
fn rss_cap() -> anyhow::Result<u64> {
    Ok(env_or("SOAK_RSS_CAP_MIB", 512u64)? * 1024)
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill9(usize),
    Term(usize),
    Cut(usize),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill9(i) => write!(f, "kill -9 n{}", i + 1),
            Fault::Term(i) => write!(f, "SIGTERM n{}", i + 1),
            Fault::Cut(i) => write!(f, "cut n{} off", i + 1),
        }
    }
}

struct Soak {
    settings: Settings,
    cluster: Cluster,
    board: Arc<Board>,
    rng: StdRng,
    start: Instant,
    /// Which side of a cut each node is on (all 0 when whole).
    sides: [u8; NODES],
    running: [bool; NODES],
    schedule: Vec<String>,
    faults: BTreeMap<&'static str, u32>,
    /// Per client and fault step: how long its view took to equal the truth.
    convergence: Vec<Duration>,
    /// The slowest fault step: how long until every view was right, and which.
    worst: (Duration, String),
    windows: u32,
    checked_messages: u64,
    owed_pairs: u64,
    /// Rooms created in clean windows (they must survive).
    rooms: Vec<String>,
    /// RSS samples (KiB) per node and process number.
    rss: BTreeMap<(usize, u32), Vec<u64>>,
    partitions_skipped: Option<String>,
}

impl Soak {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn note(&mut self, what: String) {
        let line = format!("t={:7.2}s {what}", self.t());
        eprintln!("soak: {line}");
        self.schedule.push(line);
    }

    /// Fails on what the clients saw or a node that exited on its own.
    fn check_violations(&mut self) -> anyhow::Result<()> {
        if let Some(v) = self.board.violations.lock().expect("lock").first() {
            bail!("{v}");
        }
        if let Some(e) = self.cluster.exited() {
            bail!("{e}");
        }
        Ok(())
    }

    /// Whether each running node lists exactly the current incarnations of
    /// the running nodes on its side as up; `Err` with what is off.
    async fn meshed(&self) -> anyhow::Result<Result<(), String>> {
        let mut ids = BTreeMap::new();
        let mut ups = BTreeMap::new();
        for i in (0..NODES).filter(|&i| self.running[i]) {
            let reply = Req::authed("GET", "/api/cluster")
                .send(self.cluster.http(i))
                .await
                .with_context(|| format!("GET /api/cluster on n{}", i + 1))?;
            let v = reply.json()?;
            ids.insert(i, v["node"]["id"].as_str().unwrap_or_default().to_owned());
            let up: BTreeSet<String> = v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["state"] == "up")
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect();
            ups.insert(i, up);
        }
        for (&i, up) in &ups {
            let want: BTreeSet<String> = ids
                .iter()
                .filter(|(&j, _)| j != i && self.sides[j] == self.sides[i])
                .map(|(_, id)| id.clone())
                .collect();
            if *up != want {
                return Ok(Err(format!(
                    "n{} lists {up:?} as up, wants {want:?}",
                    i + 1
                )));
            }
        }
        Ok(Ok(()))
    }

    /// Clients whose view is not the truth now: `(client, why)`.
    fn presence_off(&self) -> Vec<(usize, String)> {
        let board = &self.board;
        let mut off = Vec::new();
        for members in &board.by_topic {
            // The truth per side: the joined clients of the topic there.
            let mut truth: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
            let mut joined = Vec::new();
            for &c in members {
                let node = board.client(c).node;
                if let Some(n) = node {
                    truth
                        .entry(self.sides[n])
                        .or_default()
                        .insert(clients::user(c));
                }
                joined.push((c, node));
            }
            for (c, node) in joined {
                let Some(n) = node else {
                    off.push((c, "not joined".to_owned()));
                    continue;
                };
                let want = truth.get(&self.sides[n]).cloned().unwrap_or_default();
                let state = board.client(c);
                let keys: BTreeSet<String> = state.view.keys().cloned().collect();
                if keys != want {
                    let extra: Vec<_> = keys.difference(&want).take(5).collect();
                    let missing: Vec<_> = want.difference(&keys).take(5).collect();
                    off.push((
                        c,
                        format!(
                            "on n{}: extra {extra:?}, missing {missing:?} ({} keys, truth {})",
                            n + 1,
                            keys.len(),
                            want.len()
                        ),
                    ));
                } else if let Some((k, refs)) = state.view.iter().find(|(_, r)| r.len() != 1) {
                    off.push((
                        c,
                        format!("on n{}: {k} has {} metas {refs:?}", n + 1, refs.len()),
                    ));
                }
            }
        }
        off
    }

    /// Waits until the cluster settled (see the module docs) and records
    /// each client's convergence time, counted from `from`.
    async fn settle(&mut self, what: &str, from: Instant, within: Duration) -> anyhow::Result<()> {
        let n = self.board.clients.len();
        let mut since: Vec<Option<Instant>> = vec![None; n];
        let mut mesh_checked = Instant::now() - Duration::from_secs(1);
        let mut mesh: Result<(), String> = Err("not checked yet".into());
        // The last clients found off, for a note on slow steps.
        let mut last_off: Vec<String> = Vec::new();
        loop {
            self.check_violations()?;
            let now = Instant::now();
            let off = self.presence_off();
            let mut is_off = vec![false; n];
            for (c, _) in &off {
                is_off[*c] = true;
            }
            if !off.is_empty() {
                last_off = off
                    .iter()
                    .take(3)
                    .map(|(c, why)| format!("u{c} {why}"))
                    .collect();
                last_off.push(format!("{} clients off", off.len()));
            }
            for c in 0..n {
                if is_off[c] {
                    since[c] = None;
                } else if since[c].is_none() {
                    since[c] = Some(now);
                }
            }
            if off.is_empty() && mesh_checked.elapsed() > Duration::from_millis(250) {
                mesh = self.meshed().await?;
                mesh_checked = Instant::now();
            }
            if off.is_empty() && mesh.is_ok() {
                let took = from.elapsed();
                for s in since.iter().flatten() {
                    self.convergence.push(s.saturating_duration_since(from));
                }
                if took > self.worst.0 {
                    self.worst = (took, what.to_owned());
                }
                self.note(format!("settled {what} in {:.2}s", took.as_secs_f64()));
                if took > 2 * FAILURE_DETECTION {
                    self.note(format!("  slow step; last off: {}", last_off.join("; ")));
                }
                self.sample_rss();
                return Ok(());
            }
            if from.elapsed() > within {
                let shown: Vec<String> = off
                    .iter()
                    .take(5)
                    .map(|(c, why)| format!("u{c}: {why}"))
                    .collect();
                bail!(
                    "presence: not settled {within:?} {what}: {} of {n} clients off ({}), mesh: {mesh:?}",
                    off.len(),
                    shown.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sample_rss(&mut self) {
        for i in (0..NODES).filter(|&i| self.running[i]) {
            if let Some(kib) = self.cluster.rss_kib(i) {
                self.rss
                    .entry((i, self.cluster.generation(i)))
                    .or_default()
                    .push(kib);
            }
        }
    }

    /// A clean window: steady publishing, a room created, then every message
    /// pushed in it checked for loss.
    async fn window(&mut self) -> anyhow::Result<()> {
        let from = Instant::now();
        let dropped = self.board.dropped.load(Ordering::Relaxed);
        self.windows += 1;
        let room = format!("soak-{}", self.windows);
        let running: Vec<usize> = (0..NODES).filter(|&i| self.running[i]).collect();
        let via = running[self.rng.random_range(0..running.len())];
        let reply = Req::authed("POST", "/api/rooms")
            .json(&json!({"id": room, "name": format!("Soak room {}", self.windows)}))
            .send(self.cluster.http(via))
            .await?;
        if reply.status != 201 {
            bail!(
                "records: creating room {room} on n{} in a clean window: {reply:?}",
                via + 1
            );
        }
        self.rooms.push(room);
        let hold = Duration::from_millis(self.rng.random_range(2000..4000));
        tokio::time::sleep(hold).await;
        let upto = Instant::now();
        self.check_violations()?;
        let sent: Vec<Sent> = self
            .board
            .sent
            .lock()
            .expect("sent lock")
            .iter()
            .filter(|m| m.sent >= from && m.sent <= upto)
            .cloned()
            .collect();
        loop {
            let (owed, missing) = self.missing(&sent);
            if missing.is_empty() {
                self.checked_messages += sent.len() as u64;
                self.owed_pairs += owed;
                break;
            }
            if upto.elapsed() > FLIGHT {
                bail!(
                    "lost: {} of {owed} owed deliveries of the clean window {:.2}s-{:.2}s missing {FLIGHT:?} after it, e.g. {}",
                    missing.len(),
                    (from - self.start).as_secs_f64(),
                    (upto - self.start).as_secs_f64(),
                    missing[..missing.len().min(3)].join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now_dropped = self.board.dropped.load(Ordering::Relaxed);
        if now_dropped != dropped {
            bail!(
                "{} client connection(s) to healthy nodes ended during the clean window from t={:.2}s",
                now_dropped - dropped,
                (from - self.start).as_secs_f64()
            );
        }
        self.check_violations()
    }

    /// Owed deliveries of `sent` (see the module docs) and those missing.
    fn missing(&self, sent: &[Sent]) -> (u64, Vec<String>) {
        let board = &self.board;
        let mut owed = 0;
        let mut missing = Vec::new();
        for m in sent {
            for &s in &board.by_topic[m.topic] {
                let state = board.client(s);
                let (Some(n), Some(joined)) = (state.node, state.joined_at) else {
                    continue;
                };
                if joined > m.sent || self.sides[n] != self.sides[m.node] {
                    continue;
                }
                owed += 1;
                if !state.received.contains(&(m.publisher, m.seq)) {
                    missing.push(format!(
                        "u{}'s message {} (via n{}, acked {:.0} ms after the push) not at u{s} on n{}",
                        m.publisher,
                        m.seq,
                        m.node + 1,
                        (m.acked - m.sent).as_secs_f64() * 1000.0,
                        n + 1
                    ));
                }
            }
        }
        (owed, missing)
    }

    fn pick_fault(&mut self) -> Fault {
        let node = self.rng.random_range(0..NODES);
        let kinds = if self.cluster.can_partition() { 3 } else { 2 };
        match self.rng.random_range(0..kinds) {
            0 => Fault::Kill9(node),
            1 => Fault::Term(node),
            _ => Fault::Cut(node),
        }
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        self.note(format!("fault: {fault}"));
        let t0 = Instant::now();
        match fault {
            Fault::Kill9(i) => {
                self.board.up[i].store(false, Ordering::Release);
                self.cluster.kill9(i)?;
                self.running[i] = false;
                *self.faults.entry("kill -9").or_default() += 1;
            }
            Fault::Term(i) => {
                self.board.up[i].store(false, Ordering::Release);
                self.cluster.term(i).await?;
                self.note(format!(
                    "  n{} exited {:.2}s after SIGTERM",
                    i + 1,
                    t0.elapsed().as_secs_f64()
                ));
                self.running[i] = false;
                *self.faults.entry("SIGTERM").or_default() += 1;
            }
            Fault::Cut(i) => {
                self.cluster.cut(i)?;
                self.sides[i] = 1;
                *self.faults.entry("partition").or_default() += 1;
            }
        }
        self.settle(&format!("after {fault}"), t0, FAILURE_DETECTION + MARGIN)
            .await
    }

    async fn recover(&mut self, fault: Fault) -> anyhow::Result<()> {
        let what = match fault {
            Fault::Kill9(i) | Fault::Term(i) => format!("restart n{}", i + 1),
            Fault::Cut(i) => format!("heal n{}", i + 1),
        };
        self.note(what.clone());
        let t1 = Instant::now();
        match fault {
            Fault::Kill9(i) | Fault::Term(i) => {
                self.cluster.start(i).await?;
                self.running[i] = true;
                self.board.up[i].store(true, Ordering::Release);
                *self.faults.entry("restart").or_default() += 1;
            }
            Fault::Cut(i) => {
                self.cluster.heal(i)?;
                self.sides[i] = 0;
                *self.faults.entry("heal").or_default() += 1;
            }
        }
        self.settle(&format!("after {what}"), t1, FAILURE_DETECTION + MARGIN)
            .await
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        for i in 0..NODES {
            self.cluster.start(i).await?;
            self.running[i] = true;
        }
        for i in 0..self.settings.clients {
            tokio::spawn(clients::run(
                self.board.clone(),
                i,
                i % NODES,
                self.settings.seed,
            ));
        }
        let start = Instant::now();
        self.settle("at start", start, STARTUP).await?;
        // Startup does not count as a fault.
        self.convergence.clear();
        self.worst = (Duration::ZERO, String::new());
        let deadline = Instant::now() + Duration::from_secs(self.settings.secs);
        while Instant::now() < deadline {
            self.window().await?;
            let fault = self.pick_fault();
            self.inject(fault).await?;
            self.window().await?;
            self.recover(fault).await?;
        }
        self.window().await?;
        self.board.publishing.store(false, Ordering::Release);
        self.records_agree().await?;
        self.memory_bounded()?;
        self.check_violations()
    }

    /// History of every topic and the rooms: the same on every node, and every
    /// room created in a clean window present.
    async fn records_agree(&mut self) -> anyhow::Result<()> {
        let within = FAILURE_DETECTION + MARGIN;
        let start = Instant::now();
        loop {
            let off = self.records_off().await?;
            let Some(off) = off else {
                self.note(format!(
                    "records agree on every node in {:.2}s",
                    start.elapsed().as_secs_f64()
                ));
                return Ok(());
            };
            if start.elapsed() > within {
                bail!("records: after the last recovery, {within:?} later: {off}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn records_off(&self) -> anyhow::Result<Option<String>> {
        let mut rooms = Vec::new();
        for i in 0..NODES {
            let reply = Req::authed("GET", "/api/rooms")
                .send(self.cluster.http(i))
                .await?;
            let ids: BTreeSet<String> = reply.json()?["rooms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect();
            rooms.push((reply.json()?, ids));
        }
        for i in 1..NODES {
            if rooms[i].0 != rooms[0].0 {
                return Ok(Some(format!(
                    "rooms differ: n1 has {:?}, n{} has {:?}",
                    rooms[0].1,
                    i + 1,
                    rooms[i].1
                )));
            }
        }
        if let Some(lost) = self.rooms.iter().find(|r| !rooms[0].1.contains(*r)) {
            return Ok(Some(format!(
                "room {lost}, created in a clean window, is gone"
            )));
        }
        for t in 0..self.settings.topics {
            let target = format!("/api/history?topic={}&limit=1000", clients::topic(t));
            let mut histories = Vec::new();
            for i in 0..NODES {
                let reply = Req::authed("GET", &target)
                    .send(self.cluster.http(i))
                    .await?;
                histories.push(reply.json()?["messages"].clone());
            }
            for i in 1..NODES {
                if histories[i] != histories[0] {
                    let len = |v: &Value| v.as_array().map_or(0, Vec::len);
                    return Ok(Some(format!(
                        "history of {} differs: n1 has {} messages, n{} has {}",
                        clients::topic(t),
                        len(&histories[0]),
                        i + 1,
                        len(&histories[i])
                    )));
                }
            }
        }
        Ok(None)
    }

    fn memory_bounded(&self) -> anyhow::Result<()> {
        let cap = rss_cap()?;
        for ((i, process), samples) in &self.rss {
            if let Some(max) = samples.iter().max().filter(|&&m| m > cap) {
                bail!(
                    "memory: n{} (process {process}) reached {} MiB RSS, over the {} MiB bound",
                    i + 1,
                    max / 1024,
                    cap / 1024
                );
            }
            if samples.len() >= 4 {
                let early = samples[..samples.len() / 2]
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or(0);
                let last = *samples.last().expect("samples");
                if last > early * 3 / 2 + 32 * 1024 {
                    bail!(
                        "memory: n{} (process {process}) grew across fault cycles: {} MiB early, {} MiB at the end ({samples:?} KiB)",
                        i + 1,
                        early / 1024,
                        last / 1024
                    );
                }
            }
        }
        Ok(())
    }

    /// What the run did; `passed` adds what it proved.
    fn summary(&self, passed: bool) -> String {
        let mut out = String::new();
        let b = &self.board;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        out += &format!(
            "soak summary: seed {}, {} s of faults, {} clients on {} topics, {} nodes {}\n",
            self.settings.seed,
            self.settings.secs,
            self.settings.clients,
            self.settings.topics,
            NODES,
            if self.cluster.can_partition() {
                "in network namespaces"
            } else {
                "on 127.0.0.1"
            }
        );
        if let Some(why) = &self.partitions_skipped {
            out += &format!("  partitions skipped: {why}\n");
        }
        out += &format!("  faults injected: {}\n", faults.join(", "));
        let published = b.sent.lock().expect("sent lock").len();
        out += &format!(
            "  messages: {published} acknowledged, {} deliveries received; {} checked in {} clean windows: {} owed deliveries{}; {} push errors\n",
            b.deliveries.load(Ordering::Relaxed),
            self.checked_messages,
            self.windows,
            self.owed_pairs,
            if passed {
                ", none lost; no duplicate, none out of order (all deliveries)"
            } else {
                ""
            },
            b.push_errors.load(Ordering::Relaxed),
        );
        for sample in b.push_error_samples.lock().expect("lock").iter() {
            out += &format!("    push error: {sample}\n");
        }
        let mut conv = self.convergence.clone();
        conv.sort();
        let pct = |p: f64| {
            conv.get(((conv.len() as f64 - 1.0) * p).round() as usize)
                .map_or(0.0, Duration::as_secs_f64)
        };
        out += &format!(
            "  presence convergence per client after each fault step ({} samples): p50 {:.2}s, p90 {:.2}s, p99 {:.2}s, max {:.2}s (bound {:?})\n",
            conv.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0),
            FAILURE_DETECTION + MARGIN
        );
        out += &format!(
            "  worst convergence: {:.2}s {}; joins {}\n",
            self.worst.0.as_secs_f64(),
            self.worst.1,
            b.joins.load(Ordering::Relaxed)
        );
        if passed {
            out += &format!(
                "  records: {} topics' history and {} rooms created in clean windows identical on every node\n",
                self.settings.topics,
                self.rooms.len()
            );
        }
        for ((i, process), samples) in &self.rss {
            let first = samples.first().copied().unwrap_or(0);
            let max = samples.iter().max().copied().unwrap_or(0);
            let last = samples.last().copied().unwrap_or(0);
            out += &format!(
                "  RSS n{} process {process}: {} samples, first {:.1} MiB, peak {:.1} MiB, last {:.1} MiB\n",
                i + 1,
                samples.len(),
                first as f64 / 1024.0,
                max as f64 / 1024.0,
                last as f64 / 1024.0
            );
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let bin = bin::chorus_bin()?;
    let logs = std::env::temp_dir().join(format!("chorus-soak-{}", std::process::id()));
    let (cluster, skipped) = Cluster::new(bin.clone(), &logs)?;
    eprintln!(
        "soak: seed {}, {} s, chorus binary {}, node logs in {}",
        settings.seed,
        settings.secs,
        bin.display(),
        logs.display()
    );
    if let Some(why) = &skipped {
        eprintln!("soak: partitions skipped (nodes on 127.0.0.1): {why}");
    }
    let addrs = std::array::from_fn(|i| cluster.http(i));
    let board = Arc::new(Board::new(
        addrs,
        settings.clients,
        settings.topics,
        settings.publishers_per_topic,
        settings.publish_every,
    ));
    let mut soak = Soak {
        rng: StdRng::seed_from_u64(settings.seed),
        settings,
        cluster,
        board: board.clone(),
        start: Instant::now(),
        sides: [0; NODES],
        running: [false; NODES],
        schedule: Vec::new(),
        faults: BTreeMap::new(),
        convergence: Vec::new(),
        worst: (Duration::ZERO, String::new()),
        windows: 0,
        checked_messages: 0,
        owed_pairs: 0,
        rooms: Vec::new(),
        rss: BTreeMap::new(),
        partitions_skipped: skipped,
    };
    let result = soak.run().await;
    let _ = board.stop.send(true);
    eprint!("{}", soak.summary(result.is_ok()));
    match result {
        Ok(()) => {
            drop(soak);
            let _ = std::fs::remove_dir_all(&logs);
            Ok(())
        }
        Err(e) => bail!(
            "soak failed: {e:#}\n  reproduce: {}\n  fault schedule:\n    {}\n  node logs: {}",
            soak.settings.repro(),
            soak.schedule.join("\n    "),
            logs.display()
        ),
    }
}
