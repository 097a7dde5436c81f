//! Ping round trips: connections joined to one topic push `ping` (answered
//! with its own payload by the `echo` action), each keeping a fixed number of
//! pushes in flight for a fixed time; the round trip is from the push to its
//! `phx_reply`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::client::{check_ok, frame, Conn};
use crate::server::{Cpu, CpuMeter};
use crate::stats::Latency;
use crate::Ctx;

#[derive(Clone, Debug, Args)]
pub struct PingArgs {
    /// Connections.
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// Pushes in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Seconds of pushing.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Milliseconds between pushes on each connection (light load); 0: the
    /// next push goes out as soon as a reply comes back.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// The topic.
    #[arg(long, default_value = "bench:ping")]
    pub topic: String,
}

#[derive(Debug, Serialize)]
pub struct PingResult {
    pub scenario: &'static str,
    pub conns: usize,
    pub inflight: usize,
    /// Milliseconds between pushes per connection; 0: closed loop.
    pub interval_ms: u64,
    pub replies: u64,
    /// Replies that were not `ok`.
    pub errors: u64,
    /// Connections that ended early.
    pub disconnected: usize,
    /// Replies per second, from the start to the last reply.
    pub replies_per_sec: f64,
    pub rtt: Latency,
    /// From the first push until every connection is done.
    pub cpu: Cpu,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    rtts_us: Vec<u32>,
    errors: u64,
    ended: bool,
    /// When the last reply arrived.
    last: Option<Instant>,
}

pub async fn run(ctx: &Ctx, args: PingArgs) -> anyhow::Result<PingResult> {
    anyhow::ensure!(args.inflight > 0, "--inflight must be positive");
    let pace = (args.interval_ms > 0).then(|| Duration::from_millis(args.interval_ms));
    let (start_tx, start) = watch::channel(None);
    let (ready_tx, mut ready) = mpsc::channel(1024);
    let mut tasks = JoinSet::new();
    for i in 0..args.conns {
        let (ctx, topic) = (ctx.clone(), args.topic.clone());
        let (ready_tx, start) = (ready_tx.clone(), start.clone());
        tasks.spawn(async move {
            let opened = async {
                let mut conn = ctx.connect(&format!("ping{i}")).await?;
                conn.join(&topic, "1").await?;
                anyhow::Ok(conn)
            }
            .await;
            match opened {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(())).await;
                    drop(ready_tx);
                    Some(pinger(conn, topic, args.inflight, pace, start).await)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e)).await;
                    None
                }
            }
        });
    }
    drop(ready_tx);
    while let Some(r) = ready.recv().await {
        r.context("a ping connection failed")?;
    }
    let meter = CpuMeter::start(ctx.pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    start_tx.send(Some(deadline))?;
    let mut seen = Vec::new();
    while let Some(s) = tasks.join_next().await {
        seen.extend(s?);
    }
    let cpu = meter.stop();
    let last = seen.iter().filter_map(|s| s.last).max().unwrap_or(started);
    let elapsed = last.duration_since(started).as_secs_f64();
    let replies: u64 = seen.iter().map(|s| s.rtts_us.len() as u64).sum();
    let mut all: Vec<u32> = seen
        .iter()
        .flat_map(|s| s.rtts_us.iter().copied())
        .collect();
    Ok(PingResult {
        scenario: "ping",
        conns: seen.len(),
        inflight: args.inflight,
        interval_ms: args.interval_ms,
        replies,
        errors: seen.iter().map(|s| s.errors).sum(),
        disconnected: seen.iter().filter(|s| s.ended).count(),
        replies_per_sec: crate::stats::per_sec(replies, elapsed),
        rtt: Latency::of(&mut all),
        cpu,
    })
}

/// Until the deadline: unpaced, keeps `inflight` pushes outstanding (a new
/// push for each reply); paced, sends one push per `pace` while fewer than
/// `inflight` are outstanding. Then waits (at most 5 s) for the outstanding
/// replies.
async fn pinger(
    mut conn: Conn,
    topic: String,
    inflight: usize,
    pace: Option<Duration>,
    mut start: watch::Receiver<Option<Instant>>,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(deadline) = start
        .wait_for(Option::is_some)
        .await
        .map(|d| d.expect("checked"))
    else {
        return seen;
    };
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut next = 0u64;
    // Unpaced, the timer only wakes the loop up to notice the deadline.
    let mut tick = interval(pace.unwrap_or(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ran = async {
        if pace.is_none() {
            for _ in 0..inflight {
                push(&mut conn, &topic, &mut next, &mut sent_at).await?;
            }
            conn.flush().await?;
        }
        while Instant::now() < deadline || !sent_at.is_empty() {
            let f = tokio::select! {
                _ = tick.tick() => {
                    if pace.is_some() && Instant::now() < deadline && sent_at.len() < inflight {
                        push(&mut conn, &topic, &mut next, &mut sent_at).await?;
                        conn.flush().await?;
                    }
                    continue;
                }
                f = conn.recv() => f?,
            };
            let Some(reference) = f.reference.as_deref() else {
                continue;
            };
            let Some(at) = (f.event == "phx_reply")
                .then(|| sent_at.remove(reference))
                .flatten()
            else {
                continue;
            };
            let now = Instant::now();
            seen.last = Some(now);
            seen.rtts_us
                .push(now.duration_since(at).as_micros().min(u128::from(u32::MAX)) as u32);
            if check_ok(&f).is_err() {
                seen.errors += 1;
            }
            if pace.is_none() && now < deadline {
                push(&mut conn, &topic, &mut next, &mut sent_at).await?;
                conn.flush().await?;
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout_at(deadline + Duration::from_secs(5), ran).await {
        Ok(Ok(())) => conn.close().await,
        Ok(Err(_)) | Err(_) => seen.ended = true,
    }
    seen
}

async fn push(
    conn: &mut Conn,
    topic: &str,
    next: &mut u64,
    sent_at: &mut HashMap<String, Instant>,
) -> anyhow::Result<()> {
    let reference = next.to_string();
    *next += 1;
    let payload = format!(r#"{{"n":{reference}}}"#);
    conn.feed(frame(Some("1"), &reference, topic, "ping", &payload))
        .await?;
    sent_at.insert(reference, Instant::now());
    Ok(())
}

impl std::fmt::Display for PingResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pacing = if self.interval_ms == 0 {
            format!("{} in flight", self.inflight)
        } else {
            format!(
                "one push every {} ms (at most {} in flight)",
                self.interval_ms, self.inflight
            )
        };
        writeln!(
            f,
            "ping: {} connections x {}: {} replies ({} errors, {} connections ended early), {:.0} replies/s",
            self.conns, pacing, self.replies, self.errors, self.disconnected, self.replies_per_sec
        )?;
        writeln!(f, "ping: round trip {}", self.rtt)?;
        write!(f, "ping: {}", self.cpu)
    }
}
