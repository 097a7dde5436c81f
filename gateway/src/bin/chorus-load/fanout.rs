//! Broadcast fan-out: M subscribers of one topic, one publisher pushing the
//! `fanout` event (broadcast to the topic) at a fixed rate. Each payload
//! carries its send time and a sequence number; each subscriber records the
//! delivery latency and checks the order.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{interval, interval_at, Instant, MissedTickBehavior};

use crate::client::{frame, now_us, Frame, HEARTBEAT};
use crate::server::{Cpu, CpuMeter};
use crate::stats::Latency;
use crate::Ctx;

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Messages published per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Bytes of padding in each payload (besides the timestamp and sequence).
    #[arg(long, default_value_t = 32)]
    pub pad: usize,
    /// Seconds to wait for the last deliveries after the last publish.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// The topic.
    #[arg(long, default_value = "load:fanout")]
    pub topic: String,
}

#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub subs: usize,
    pub failed_joins: usize,
    pub rate: u32,
    pub published: u64,
    /// Subscribers × published.
    pub expected: u64,
    pub delivered: u64,
    /// Expected but not delivered when the run ended (after `--drain`).
    pub missing: u64,
    /// Deliveries with a sequence number below one already received.
    pub out_of_order: u64,
    /// Subscribers whose connection ended during the run.
    pub disconnected: usize,
    /// Deliveries per second offered (subscribers × rate).
    pub offered_per_sec: f64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub delivered_per_sec: f64,
    pub latency: Latency,
    /// From the first publish until every subscriber is done.
    pub cpu: Cpu,
}

#[derive(Deserialize)]
struct Stamp {
    t: u64,
    seq: u64,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    out_of_order: u64,
    last_us: u64,
    ended: bool,
}

pub async fn run(ctx: &Ctx, args: FanoutArgs) -> anyhow::Result<FanoutResult> {
    let total = u64::from(args.rate) * args.secs;
    anyhow::ensure!(
        total > 0,
        "nothing to publish: --rate and --secs must be positive"
    );
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, mut ready) = mpsc::channel(1024);
    let mut subs = JoinSet::new();
    for i in 0..args.subs {
        let (ctx, topic) = (ctx.clone(), args.topic.clone());
        let (ready_tx, stop) = (ready_tx.clone(), stop.clone());
        subs.spawn(subscriber(ctx, i, topic, total, ready_tx, stop));
    }
    drop(ready_tx);
    let mut failed_joins = 0;
    while let Some(r) = ready.recv().await {
        if let Err(e) = r {
            if failed_joins == 0 {
                eprintln!("fanout: a subscriber failed: {e:#}");
            }
            failed_joins += 1;
        }
    }

    let mut publisher = ctx.connect("publisher").await?;
    publisher.join(&args.topic, "1").await?;
    let (sent_tx, sent) = oneshot::channel();
    let meter = CpuMeter::start(ctx.pid);
    let pad = "x".repeat(args.pad);
    let publishing = tokio::spawn(publish(
        publisher,
        args.topic.clone(),
        args.rate,
        total,
        pad,
        sent_tx,
        stop.clone(),
    ));
    let (first_us, published) = sent.await.context("the publisher failed")?;

    // Wait for every subscriber to have all, or for the drain time.
    let deadline = Instant::now() + Duration::from_secs(args.drain);
    let mut seen = Vec::with_capacity(args.subs);
    let mut stopped = false;
    loop {
        tokio::select! {
            joined = subs.join_next() => match joined {
                Some(s) => seen.push(s?),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline), if !stopped => {
                stopped = true;
                stop_tx.send(true)?;
            }
        }
    }
    let cpu = meter.stop();
    let _ = stop_tx.send(true);
    publishing.await??;

    let seen: Vec<Seen> = seen.into_iter().flatten().collect();
    let delivered: u64 = seen.iter().map(|s| s.latencies_us.len() as u64).sum();
    let last_us = seen.iter().map(|s| s.last_us).max().unwrap_or(first_us);
    let mut all: Vec<u32> = seen
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    let window = (last_us.saturating_sub(first_us)) as f64 / 1e6;
    let expected = seen.len() as u64 * published;
    Ok(FanoutResult {
        scenario: "fanout",
        subs: seen.len(),
        failed_joins,
        rate: args.rate,
        published,
        expected,
        delivered,
        missing: expected.saturating_sub(delivered),
        out_of_order: seen.iter().map(|s| s.out_of_order).sum(),
        disconnected: seen.iter().filter(|s| s.ended).count(),
        offered_per_sec: seen.len() as f64 * f64::from(args.rate),
        delivered_per_sec: crate::stats::per_sec(delivered, window),
        latency: Latency::of(&mut all),
        cpu,
    })
}

/// Publishes `total` messages at `rate` per second (catching up if late),
/// reports `(first send time, count)`, then drains its socket until stopped.
async fn publish(
    mut conn: crate::client::Conn,
    topic: String,
    rate: u32,
    total: u64,
    pad: String,
    sent_tx: oneshot::Sender<(u64, u64)>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let period = Duration::from_secs(1)
        .checked_div(rate.max(1))
        .unwrap_or_default()
        .max(Duration::from_millis(1));
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let first_us = now_us();
    let mut sent = 0u64;
    let mut errors = 0u64;
    let mut report = Some(sent_tx);
    loop {
        tokio::select! {
            _ = tick.tick(), if sent < total => {
                let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as u64 + 1).min(total);
                while sent < due {
                    let payload = format!(r#"{{"t":{},"seq":{sent},"pad":"{pad}"}}"#, now_us());
                    conn.feed(frame(Some("1"), &sent.to_string(), &topic, "fanout", &payload)).await?;
                    sent += 1;
                }
                conn.flush().await?;
                if sent == total {
                    if let Some(report) = report.take() {
                        let _ = report.send((first_us, sent));
                    }
                }
            }
            _ = stop.changed() => break,
            f = conn.recv() => {
                let f = f.context("the publisher's connection")?;
                if f.event == "phx_reply" && crate::client::check_ok(&f).is_err() {
                    errors += 1;
                }
            }
        }
    }
    if errors > 0 {
        eprintln!("fanout: {errors} pushes were refused");
    }
    conn.close().await;
    Ok(())
}

/// One subscriber: connect, join, report, then record every `fanout` delivery
/// until it has `total` or is stopped. `None` if it never joined.
async fn subscriber(
    ctx: Ctx,
    i: usize,
    topic: String,
    total: u64,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
) -> Option<Seen> {
    let opened = async {
        let mut conn = ctx.connect(&format!("sub{i}")).await?;
        conn.join(&topic, "1").await?;
        anyhow::Ok(conn)
    }
    .await;
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return None;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    let mut seen = Seen {
        latencies_us: Vec::with_capacity(total as usize),
        ..Seen::default()
    };
    let mut next_seq = 0;
    let mut heartbeat = interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    while (seen.latencies_us.len() as u64) < total {
        tokio::select! {
            _ = stop.changed() => break,
            _ = heartbeat.tick() => {
                if conn.heartbeat().await.is_err() {
                    seen.ended = true;
                    return Some(seen);
                }
            }
            f = conn.recv() => match f {
                Ok(f) => record(&f, &mut seen, &mut next_seq),
                Err(_) => {
                    seen.ended = true;
                    return Some(seen);
                }
            }
        }
    }
    conn.close().await;
    Some(seen)
}

fn record(f: &Frame, seen: &mut Seen, next_seq: &mut u64) {
    if f.event != "fanout" {
        return;
    }
    let Ok(stamp) = serde_json::from_str::<Stamp>(f.payload.get()) else {
        return;
    };
    let now = now_us();
    seen.latencies_us
        .push(now.saturating_sub(stamp.t).min(u64::from(u32::MAX)) as u32);
    seen.last_us = now;
    if stamp.seq < *next_seq {
        seen.out_of_order += 1;
    }
    *next_seq = (*next_seq).max(stamp.seq + 1);
}

impl std::fmt::Display for FanoutResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fanout: {} subscribers ({} failed to join), {} msg/s, {} published, {:.0} deliveries/s offered",
            self.subs, self.failed_joins, self.rate, self.published, self.offered_per_sec
        )?;
        writeln!(
            f,
            "fanout: {} of {} delivered ({} missing at the end, {} out of order, {} subscribers disconnected): {:.0} deliveries/s",
            self.delivered, self.expected, self.missing, self.out_of_order, self.disconnected, self.delivered_per_sec
        )?;
        writeln!(f, "fanout: latency {}", self.latency)?;
        write!(f, "fanout: {}", self.cpu)
    }
}
