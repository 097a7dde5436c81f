//! The soak's clients: one lightweight task per client, each a raw Phoenix v2
//! WebSocket client joined to one `soak:{t}` topic. A client replays its
//! presence view from `presence_state` / `presence_diff` (as phoenix.js
//! does), records every `message` broadcast it receives (checking at once
//! that none arrives twice and each publisher connection's come in order),
//! and, if it is a publisher, pushes `new_message` at a steady rate. When its
//! connection ends it reconnects to a random node that is up, as a client
//! behind a load balancer would.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_gateway::token::{Claims, Tokens};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{timeout, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::nodes::{NODES, TOKEN_SECRET};

/// One acknowledged publish: the node answered `ok` to the push.
#[derive(Clone, Debug)]
pub struct Sent {
    pub publisher: u32,
    pub seq: u32,
    pub topic: usize,
    /// The node the publisher was connected to.
    pub node: usize,
    pub sent: Instant,
    pub acked: Instant,
}

/// What one client is and has seen.
#[derive(Debug, Default)]
pub struct ClientState {
    pub topic: usize,
    /// The node it is joined on; `None` while (re)connecting.
    pub node: Option<usize>,
    /// The node it is joined on or connecting to (for balancing reconnects).
    pub target: Option<usize>,
    /// When the current join was answered `ok`.
    pub joined_at: Option<Instant>,
    /// Joins so far (its connection number).
    pub conn: u32,
    /// Its presence view: key -> the `phx_ref`s of its metas.
    pub view: BTreeMap<String, BTreeSet<String>>,
    /// Every `(publisher, seq)` received, all connections.
    pub received: HashSet<(u32, u32)>,
    /// The last seq received per (publisher, publisher's connection).
    last: HashMap<(u32, u32), u32>,
}

/// Everything the clients and the checker share.
pub struct Board {
    pub addrs: [SocketAddr; NODES],
    /// Nodes a (re)connecting client may pick.
    pub up: [AtomicBool; NODES],
    pub clients: Vec<Mutex<ClientState>>,
    /// Clients of each topic.
    pub by_topic: Vec<Vec<usize>>,
    pub publishers_per_topic: usize,
    pub publish_every: Duration,
    /// Broken invariants seen by the clients themselves (duplicates, order).
    pub violations: Mutex<Vec<String>>,
    pub sent: Mutex<Vec<Sent>>,
    pub publishing: AtomicBool,
    pub stop: watch::Sender<bool>,
    pub deliveries: AtomicU64,
    pub joins: AtomicU64,
    /// Joined connections that ended other than by the board's stop.
    pub dropped: AtomicU64,
    pub push_errors: AtomicU64,
    /// The first few error replies to pushes, for the summary.
    pub push_error_samples: Mutex<Vec<String>>,
    tokens: Vec<String>,
}

impl Board {
    pub fn new(
        addrs: [SocketAddr; NODES],
        clients: usize,
        topics: usize,
        publishers_per_topic: usize,
        publish_every: Duration,
    ) -> Self {
        let signer = Tokens::new(TOKEN_SECRET.as_bytes());
        let tokens = (0..clients)
            .map(|i| signer.sign(&Claims::new(user(i), Duration::from_secs(24 * 3600))))
            .collect();
        let mut by_topic = vec![Vec::new(); topics];
        let states = (0..clients)
            .map(|i| {
                by_topic[i % topics].push(i);
                Mutex::new(ClientState {
                    topic: i % topics,
                    ..ClientState::default()
                })
            })
            .collect();
        Self {
            addrs,
            up: std::array::from_fn(|_| AtomicBool::new(true)),
            clients: states,
            by_topic,
            publishers_per_topic,
            publish_every,
            violations: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            publishing: AtomicBool::new(true),
            stop: watch::channel(false).0,
            deliveries: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            push_errors: AtomicU64::new(0),
            push_error_samples: Mutex::new(Vec::new()),
            tokens,
        }
    }

    pub fn client(&self, i: usize) -> std::sync::MutexGuard<'_, ClientState> {
        self.clients[i].lock().expect("client state lock")
    }

    fn violation(&self, what: String) {
        self.violations.lock().expect("violations lock").push(what);
    }

    fn is_publisher(&self, i: usize) -> bool {
        i / self.by_topic.len() < self.publishers_per_topic
    }
}

/// Client `i`'s user id, its presence key.
pub fn user(i: usize) -> String {
    format!("u{i}")
}

pub fn topic(t: usize) -> String {
    format!("soak:{t}")
}

/// How a session ended.
enum End {
    Stop,
    Lost,
}

/// Client `i`: connects to `first`, then after each loss to the up node with
/// the fewest clients (ties broken at random, so a restarted node fills up
/// again), until the board says stop.
pub async fn run(board: Arc<Board>, i: usize, first: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut stop = board.stop.subscribe();
    let mut node = first;
    board.client(i).target = Some(first);
    let mut seq = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        if let Ok(End::Stop) = session(&board, i, node, &mut seq, &mut stop, &mut rng).await {
            return;
        }
        {
            let mut state = board.client(i);
            if state.node.take().is_some() {
                board.dropped.fetch_add(1, Ordering::Relaxed);
            }
            state.joined_at = None;
            state.target = None;
        }
        // A reconnect delay with jitter, as phoenix.js's reconnectAfterMs.
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
        if let Some(least) = least_loaded(&board, &mut rng) {
            node = least;
        }
        board.client(i).target = Some(node);
    }
}

/// The up node with the fewest clients joined or connecting to it.
fn least_loaded(board: &Board, rng: &mut StdRng) -> Option<usize> {
    let mut load = [0usize; NODES];
    for c in &board.clients {
        if let Some(n) = c.lock().expect("client state lock").target {
            load[n] += 1;
        }
    }
    let up = (0..NODES).filter(|&n| board.up[n].load(Ordering::Acquire));
    let least = up.clone().map(|n| load[n]).min()?;
    let ties: Vec<usize> = up.filter(|&n| load[n] == least).collect();
    Some(ties[rng.random_range(0..ties.len())])
}

async fn session(
    board: &Board,
    i: usize,
    node: usize,
    seq: &mut u32,
    stop: &mut watch::Receiver<bool>,
    rng: &mut StdRng,
) -> anyhow::Result<End> {
    let url = format!(
        "ws://{}/socket/websocket?token={}&vsn=2.0.0",
        board.addrs[node], board.tokens[i]
    );
    let (mut ws, _) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await??;
    let t = board.client(i).topic;
    let name = topic(t);
    ws.send(Message::text(format!(
        r#"["1","1","{name}","phx_join",{{}}]"#
    )))
    .await?;
    // The join reply is the first frame of the channel.
    let reply: Value = loop {
        let msg = timeout(Duration::from_secs(20), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed before the join reply"))??;
        if let Message::Text(text) = msg {
            break serde_json::from_str(text.as_str())?;
        }
    };
    if reply[3] != "phx_reply" || reply[4]["status"] != "ok" {
        anyhow::bail!("join refused: {reply}");
    }
    let conn = {
        let mut state = board.client(i);
        state.node = Some(node);
        state.joined_at = Some(Instant::now());
        state.conn += 1;
        state.view.clear();
        state.conn
    };
    board.joins.fetch_add(1, Ordering::Relaxed);

    let publisher = board.is_publisher(i);
    let every = board.publish_every;
    // Spread the publishers over the period.
    let offset = Duration::from_millis(rng.random_range(0..every.as_millis().max(1) as u64));
    let mut publish = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Push ref -> (seq, when sent).
    let mut pending: HashMap<String, (u32, Instant)> = HashMap::new();
    let mut next_ref = 2u64;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                        board.violation(format!("u{i}: a frame that is not JSON: {text}"));
                        continue;
                    };
                    if !on_frame(board, i, node, conn, &frame, &mut pending) {
                        return Ok(End::Lost);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(End::Lost),
                Some(Ok(_)) => {}
            },
            _ = publish.tick(), if publisher && board.publishing.load(Ordering::Acquire) => {
                *seq += 1;
                let r = next_ref.to_string();
                next_ref += 1;
                let body = format!("{i}:{conn}:{}", *seq);
                // Taken before the push leaves: a subscriber joined before
                // this instant was subscribed before the node saw the push.
                let sent = Instant::now();
                ws.send(Message::text(format!(
                    r#"["1","{r}","{name}","new_message",{{"message":"{body}"}}]"#
                )))
                .await?;
                pending.insert(r, (*seq, sent));
            }
            _ = heartbeat.tick() => {
                ws.send(Message::text(r#"[null,"hb","phoenix","heartbeat",{}]"#)).await?;
            }
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ok(End::Stop);
            }
        }
    }
}

/// Takes one frame in; `false` when the channel ended (rejoin).
fn on_frame(
    board: &Board,
    i: usize,
    node: usize,
    conn: u32,
    frame: &Value,
    pending: &mut HashMap<String, (u32, Instant)>,
) -> bool {
    match frame[3].as_str() {
        Some("phx_reply") => {
            let Some(r) = frame[1].as_str() else {
                return true;
            };
            if let Some((seq, sent)) = pending.remove(r) {
                if frame[4]["status"] == "ok" {
                    let topic = board.client(i).topic;
                    board.sent.lock().expect("sent lock").push(Sent {
                        publisher: i as u32,
                        seq,
                        topic,
                        node,
                        sent,
                        acked: Instant::now(),
                    });
                } else {
                    board.push_errors.fetch_add(1, Ordering::Relaxed);
                    let mut samples = board.push_error_samples.lock().expect("samples lock");
                    if samples.len() < 5 {
                        samples.push(format!("u{i} on n{}: {frame}", node + 1));
                    }
                }
            }
        }
        Some("presence_state") => {
            let mut state = board.client(i);
            state.view = frame[4]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), refs(v)))
                .collect();
        }
        Some("presence_diff") => {
            let mut state = board.client(i);
            for (key, v) in frame[4]["joins"].as_object().into_iter().flatten() {
                state.view.entry(key.clone()).or_default().extend(refs(v));
            }
            for (key, v) in frame[4]["leaves"].as_object().into_iter().flatten() {
                if let Some(held) = state.view.get_mut(key) {
                    for r in refs(v) {
                        held.remove(&r);
                    }
                    if held.is_empty() {
                        state.view.remove(key);
                    }
                }
            }
        }
        Some("message") => on_message(board, i, conn, frame),
        Some("phx_error" | "phx_close") => return false,
        _ => {}
    }
    true
}

/// A `message` broadcast: body `publisher:its connection:seq`.
fn on_message(board: &Board, i: usize, conn: u32, frame: &Value) {
    let body = frame[4]["body"].as_str().unwrap_or_default();
    let parts: Vec<u32> = body.split(':').filter_map(|p| p.parse().ok()).collect();
    let [publisher, pub_conn, seq] = parts[..] else {
        board.violation(format!("u{i}: a message with a body not ours: {frame}"));
        return;
    };
    board.deliveries.fetch_add(1, Ordering::Relaxed);
    let mut state = board.client(i);
    if !state.received.insert((publisher, seq)) {
        drop(state);
        board.violation(format!(
            "duplicate: u{i} (connection {conn}) received u{publisher}'s message {seq} twice"
        ));
        return;
    }
    let last = state.last.insert((publisher, pub_conn), seq);
    if let Some(last) = last.filter(|&last| last > seq) {
        drop(state);
        board.violation(format!(
            "order: u{i} (connection {conn}) received u{publisher}'s message {seq} (its connection {pub_conn}) after {last}"
        ));
    }
}

fn refs(metas: &Value) -> BTreeSet<String> {
    metas["metas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
        .collect()
}
