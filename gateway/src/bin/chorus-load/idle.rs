//! Server memory per idle connection: open N connections (joined to one topic,
//! or to none) in two halves and read the server's resident memory before, at
//! N/2 and at N.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{interval_at, Instant};

use crate::client::HEARTBEAT;
use crate::server::rss;
use crate::Ctx;

#[derive(Clone, Debug, Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// The topic every connection joins; `none`: connect only.
    #[arg(long, default_value = "room:idle")]
    pub topic: String,
    /// Seconds to wait after each half is open before reading the memory.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
}

#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub scenario: &'static str,
    pub topic: Option<String>,
    /// Connections open (and joined) at the end.
    pub open: usize,
    /// Connections that failed to open or join.
    pub failed: usize,
    /// Connections the server closed while idle.
    pub dropped: usize,
    /// Seconds to open (and join) all of them.
    pub open_secs: f64,
    pub rss_before: Option<u64>,
    pub rss_half: Option<u64>,
    pub rss_after: Option<u64>,
    /// (after − before) / open.
    pub bytes_per_conn: Option<f64>,
    /// (after − half) / (connections opened in the second half).
    pub marginal_bytes_per_conn: Option<f64>,
}

pub async fn run(ctx: &Ctx, args: IdleArgs) -> anyhow::Result<IdleResult> {
    let topic = (args.topic != "none").then_some(args.topic);
    let read_rss = |pid: Option<u32>| pid.map(rss).transpose();
    let settle = Duration::from_secs(args.settle);
    let (stop_tx, stop) = watch::channel(false);
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();

    let before = read_rss(ctx.pid)?;
    let mut open_secs = 0.0;
    let mut failed = 0;
    // The memory after each half, and how many were open then.
    let mut readings = Vec::new();
    let half = args.conns / 2;
    for range in [0..half, half..args.conns] {
        let started = Instant::now();
        let (ready_tx, mut ready) = mpsc::channel(1024);
        for i in range.clone() {
            let (ctx, topic, ready_tx) = (ctx.clone(), topic.clone(), ready_tx.clone());
            let (stop, dropped) = (stop.clone(), dropped.clone());
            tasks.spawn(client(ctx, i, topic, ready_tx, stop, dropped));
        }
        drop(ready_tx);
        let mut first_error = None;
        while let Some(r) = ready.recv().await {
            if let Err(e) = r {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        open_secs += started.elapsed().as_secs_f64();
        if let Some(e) = first_error {
            eprintln!("idle: {failed} connections failed so far; the first here: {e:#}");
        }
        tokio::time::sleep(settle).await;
        readings.push((read_rss(ctx.pid)?, range.end - failed));
    }
    stop_tx.send(true).context("stopping the clients")?;
    while tasks.join_next().await.is_some() {}

    let (half_rss, half_open) = readings[0];
    let (after, open) = readings[1];
    let per = |from: Option<u64>, to: Option<u64>, n: usize| match (from, to) {
        (Some(a), Some(b)) if n > 0 => Some((b as f64 - a as f64) / n as f64),
        _ => None,
    };
    Ok(IdleResult {
        scenario: "idle",
        topic,
        open,
        failed,
        dropped: dropped.load(Ordering::Relaxed),
        open_secs,
        rss_before: before,
        rss_half: half_rss,
        rss_after: after,
        bytes_per_conn: per(before, after, open),
        marginal_bytes_per_conn: per(half_rss, after, open - half_open),
    })
}

/// One idle client: connect, join, report, then heartbeat and drain until told
/// to stop.
async fn client(
    ctx: Ctx,
    i: usize,
    topic: Option<String>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
    dropped: Arc<AtomicUsize>,
) {
    let opened = async {
        let mut conn = ctx.connect(&format!("idle{i}")).await?;
        if let Some(topic) = &topic {
            conn.join(topic, "1").await?;
        }
        anyhow::Ok(conn)
    }
    .await;
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    let mut heartbeat = interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = heartbeat.tick() => {
                if conn.heartbeat().await.is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            r = conn.recv() => {
                if r.is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    conn.close().await;
}

impl std::fmt::Display for IdleResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topic = self.topic.as_deref().unwrap_or("no topic");
        writeln!(
            f,
            "idle: {} connections open ({topic}), {} failed, {} dropped by the server; opened in {:.1} s",
            self.open, self.failed, self.dropped, self.open_secs
        )?;
        let mb =
            |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        write!(
            f,
            "idle: server RSS before {}, at half {}, after {}",
            mb(self.rss_before),
            mb(self.rss_half),
            mb(self.rss_after)
        )?;
        if let (Some(avg), Some(marginal)) = (self.bytes_per_conn, self.marginal_bytes_per_conn) {
            write!(
                f,
                "\nidle: {avg:.0} bytes per connection (all), {marginal:.0} bytes per connection (second half)"
            )?;
        }
        Ok(())
    }
}
