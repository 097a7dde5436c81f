//! Presence join storm: K clients (one user each) connect, then join one
//! presence topic, all at once or at a fixed rate. Each client keeps its
//! presence view as phoenix.js does (`presence_state`, then `presence_diff`
//! joins and leaves by `phx_ref`; diffs before the state are held back) and
//! notes when the view first holds all K users.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{interval_at, Instant};

use crate::client::{check_ok, frame, now_us, Conn, Frame, HEARTBEAT};
use crate::server::{Cpu, CpuMeter};
use crate::Ctx;

#[derive(Clone, Debug, Args)]
pub struct StormArgs {
    /// Clients (and users).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Joins started per second; 0: all at once.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Give up this many seconds after the first join.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The topic.
    #[arg(long, default_value = "storm:lobby")]
    pub topic: String,
}

#[derive(Debug, Serialize)]
pub struct StormResult {
    pub scenario: &'static str,
    pub users: usize,
    pub rate: u32,
    pub connected: usize,
    pub joined: usize,
    pub failed_joins: usize,
    /// Clients whose connection ended during the storm.
    pub disconnected: usize,
    /// Seconds from the first join sent: the last join sent, the last join
    /// reply, and the moment every connected client's view held all users.
    pub last_join_sent_s: f64,
    pub last_join_ok_s: Option<f64>,
    pub all_seen_s: Option<f64>,
    /// Connected clients whose view never held all users (joined or not),
    /// and the smallest view among the connected clients.
    pub incomplete: usize,
    pub smallest_view: usize,
    /// Received by all clients together during the storm.
    pub frames_in: u64,
    pub diffs_in: u64,
    pub bytes_in: u64,
    /// From the first join until the end.
    pub cpu: Cpu,
}

// The wire shapes, borrowed from the frame: only the keys and `phx_ref`s
// are read, and the view keeps their hashes, so a client's view of an N-user
// storm costs no string copies (with 3,000 clients the generator otherwise
// spent more CPU on copying strings than the server did on serving them).

#[derive(Deserialize)]
struct Metas<'a> {
    #[serde(borrow)]
    metas: Vec<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    phx_ref: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Diff<'a> {
    #[serde(borrow)]
    joins: HashMap<Cow<'a, str>, Metas<'a>>,
    #[serde(borrow)]
    leaves: HashMap<Cow<'a, str>, Metas<'a>>,
}

/// A key or `phx_ref`, hashed. 64-bit hashes of a few thousand distinct
/// strings collide with a probability under 10^-12.
type Hashed = u64;

fn hashed(s: &str) -> Hashed {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A user and the `phx_ref`s of its metas.
type Entry = (Hashed, Vec<Hashed>);

fn entries(map: HashMap<Cow<'_, str>, Metas<'_>>) -> Vec<Entry> {
    map.into_iter()
        .map(|(key, m)| {
            (
                hashed(&key),
                m.metas.iter().map(|m| hashed(&m.phx_ref)).collect(),
            )
        })
        .collect()
}

/// A client's presence view: user → its `phx_ref`s.
#[derive(Default)]
struct View {
    users: HashMap<Hashed, Vec<Hashed>>,
    synced: bool,
    /// Diffs (joins, leaves) that arrived before the state.
    pending: Vec<(Vec<Entry>, Vec<Entry>)>,
}

impl View {
    fn apply(&mut self, f: &Frame) -> anyhow::Result<()> {
        match f.event.as_str() {
            "presence_state" => {
                let state: HashMap<Cow<'_, str>, Metas<'_>> =
                    serde_json::from_str(f.payload.get())?;
                self.users = entries(state).into_iter().collect();
                self.synced = true;
                for (joins, leaves) in std::mem::take(&mut self.pending) {
                    self.merge(joins, leaves);
                }
            }
            "presence_diff" => {
                let diff: Diff<'_> = serde_json::from_str(f.payload.get())?;
                let (joins, leaves) = (entries(diff.joins), entries(diff.leaves));
                if self.synced {
                    self.merge(joins, leaves);
                } else {
                    self.pending.push((joins, leaves));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Joins first, then leaves, as phoenix.js applies a diff.
    fn merge(&mut self, joins: Vec<Entry>, leaves: Vec<Entry>) {
        for (key, refs) in joins {
            let held = self.users.entry(key).or_default();
            for r in refs {
                if !held.contains(&r) {
                    held.push(r);
                }
            }
        }
        for (key, refs) in leaves {
            if let Some(held) = self.users.get_mut(&key) {
                held.retain(|r| !refs.contains(r));
                if held.is_empty() {
                    self.users.remove(&key);
                }
            }
        }
    }
}

/// What one client saw; times in µs on [`now_us`].
#[derive(Default)]
struct Seen {
    joined_us: Option<u64>,
    complete_us: Option<u64>,
    failed: bool,
    ended: bool,
    view: usize,
    frames_in: u64,
    diffs_in: u64,
    bytes_in: u64,
}

/// Progress reported to the driver.
enum Progress {
    Joined,
    Failed(anyhow::Error),
    Complete,
}

pub async fn run(ctx: &Ctx, args: StormArgs) -> anyhow::Result<StormResult> {
    let (stop_tx, stop) = watch::channel(false);
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let mut connected = Vec::new();
    for i in 0..args.users {
        let (ctx, topic, progress) = (ctx.clone(), args.topic.clone(), progress_tx.clone());
        let (ready_tx, ready) = oneshot::channel();
        let stop = stop.clone();
        let users = args.users;
        tasks.spawn(async move {
            let conn = match ctx.connect(&format!("storm{i}")).await {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return None;
                }
            };
            let (go_tx, go) = oneshot::channel();
            let _ = ready_tx.send(Ok(go_tx));
            Some(client(conn, topic, users, go, progress, stop).await)
        });
        connected.push(ready);
    }
    drop(progress_tx);
    let mut go = Vec::new();
    for ready in connected {
        match ready.await {
            Ok(Ok(go_tx)) => go.push(go_tx),
            Ok(Err(e)) => eprintln!("storm: a client failed to connect: {e:#}"),
            Err(_) => {}
        }
    }
    let connected = go.len();

    let meter = CpuMeter::start(ctx.pid);
    let started = Instant::now();
    let first_us = now_us();
    for (i, go_tx) in go.into_iter().enumerate() {
        if args.rate > 0 {
            let at = Duration::from_secs_f64(i as f64 / f64::from(args.rate));
            tokio::time::sleep_until(started + at).await;
        }
        let _ = go_tx.send(());
    }
    let last_join_sent_s = started.elapsed().as_secs_f64();

    // Until every joined client is complete (or none can be), or the timeout.
    let deadline = started + Duration::from_secs(args.timeout);
    let (mut joined, mut failed, mut complete) = (0, 0, 0);
    let mut first_error = None;
    while failed < connected && (joined + failed < connected || complete < joined) {
        let Ok(Some(p)) = tokio::time::timeout_at(deadline, progress.recv()).await else {
            break;
        };
        match p {
            Progress::Joined => joined += 1,
            Progress::Failed(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Progress::Complete => complete += 1,
        }
    }
    if let Some(e) = first_error {
        eprintln!("storm: {failed} joins failed; the first: {e:#}");
    }
    // Anything still in flight (duplicates, late diffs) is counted too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = meter.stop();
    stop_tx.send(true)?;
    let mut seen = Vec::new();
    while let Some(s) = tasks.join_next().await {
        seen.extend(s?);
    }

    let secs = |us: u64| us.saturating_sub(first_us) as f64 / 1e6;
    let joined: Vec<&Seen> = seen.iter().filter(|s| s.joined_us.is_some()).collect();
    let last_join_ok_s = joined.iter().filter_map(|s| s.joined_us).max().map(secs);
    let incomplete = seen.iter().filter(|s| s.complete_us.is_none()).count();
    let all_seen_s = (incomplete == 0 && !joined.is_empty())
        .then(|| joined.iter().filter_map(|s| s.complete_us).max().map(secs))
        .flatten();
    Ok(StormResult {
        scenario: "storm",
        users: args.users,
        rate: args.rate,
        connected,
        joined: joined.len(),
        failed_joins: seen.iter().filter(|s| s.failed).count(),
        disconnected: seen.iter().filter(|s| s.ended).count(),
        last_join_sent_s,
        last_join_ok_s,
        all_seen_s,
        incomplete,
        smallest_view: seen.iter().map(|s| s.view).min().unwrap_or(0),
        frames_in: seen.iter().map(|s| s.frames_in).sum(),
        diffs_in: seen.iter().map(|s| s.diffs_in).sum(),
        bytes_in: seen.iter().map(|s| s.bytes_in).sum(),
        cpu,
    })
}

/// One client: waits for its turn, joins, and applies presence frames until
/// stopped.
async fn client(
    mut conn: Conn,
    topic: String,
    users: usize,
    go: oneshot::Receiver<()>,
    progress: mpsc::UnboundedSender<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    tokio::select! {
        r = go => if r.is_err() { return seen },
        _ = stop.changed() => return seen,
    }
    let mut view = View::default();
    let mut heartbeat = interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    let joining = conn
        .send(frame(Some("1"), "1", &topic, "phx_join", "{}"))
        .await;
    if let Err(e) = joining {
        seen.failed = true;
        let _ = progress.send(Progress::Failed(e));
        return seen;
    }
    loop {
        let f = tokio::select! {
            _ = stop.changed() => break,
            _ = heartbeat.tick() => match conn.heartbeat().await {
                Ok(()) => continue,
                Err(_) => { seen.ended = true; break }
            },
            f = conn.recv() => f,
        };
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                seen.ended = true;
                if seen.joined_us.is_none() {
                    seen.failed = true;
                    let _ = progress.send(Progress::Failed(e));
                }
                break;
            }
        };
        if f.event == "phx_reply" && f.reference.as_deref() == Some("1") {
            if let Err(e) = check_ok(&f) {
                seen.failed = true;
                let _ = progress.send(Progress::Failed(e));
                break;
            }
            seen.joined_us = Some(now_us());
            let _ = progress.send(Progress::Joined);
        }
        if f.event == "presence_diff" {
            seen.diffs_in += 1;
        }
        if let Err(e) = view.apply(&f) {
            eprintln!("storm: a bad presence frame: {e:#}");
        }
        seen.view = view.users.len();
        if seen.complete_us.is_none() && seen.view == users {
            seen.complete_us = Some(now_us());
            let _ = progress.send(Progress::Complete);
        }
    }
    seen.frames_in = conn.frames_in;
    seen.bytes_in = conn.bytes_in;
    conn.close().await;
    seen
}

impl std::fmt::Display for StormResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = if self.rate == 0 {
            "all at once".to_owned()
        } else {
            format!("{} joins/s", self.rate)
        };
        let s = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.3} s"));
        writeln!(
            f,
            "storm: {} users ({rate}): {} connected, {} joined, {} joins failed, {} disconnected",
            self.users, self.connected, self.joined, self.failed_joins, self.disconnected
        )?;
        writeln!(
            f,
            "storm: from the first join: last join sent {:.3} s, last join reply {}, every client sees all {} {}",
            self.last_join_sent_s,
            s(self.last_join_ok_s),
            self.users,
            s(self.all_seen_s)
        )?;
        if let Some(all) = self.all_seen_s {
            writeln!(
                f,
                "storm: all seen {:.3} s after the last join was sent",
                all - self.last_join_sent_s
            )?;
        } else {
            writeln!(
                f,
                "storm: {} clients never saw all; the smallest view holds {}",
                self.incomplete, self.smallest_view
            )?;
        }
        write!(
            f,
            "storm: received {} frames ({} presence_diff), {:.1} MB in all",
            self.frames_in,
            self.diffs_in,
            self.bytes_in as f64 / 1e6
        )?;
        write!(f, "\nstorm: {}", self.cpu)
    }
}
