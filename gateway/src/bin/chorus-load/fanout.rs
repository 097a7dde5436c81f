//! Broadcast fan-out: M subscribers of one topic, one publisher pushing the
//! `new_msg` event (broadcast to the topic, sender included) at a fixed rate, or with `--rate 0`
//! as fast as a bounded window of deliveries in flight allows. Each payload
//! carries its send time and a sequence number; each subscriber records the
//! delivery latency and checks the order.
//!
//! Subscribers read their socket in large batches and take only the stamp
//! from each `new_msg` frame (the full parser for any other frame), so that
//! the generator, on the same cores as the server, costs little per delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

#[derive(Clone, Debug, Args)]
pub struct FanoutArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Messages published per second; 0: as fast as `--window` allows, for
    /// `--secs`.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// With `--rate 0`: most messages in flight, counted as deliveries not
    /// yet received by the subscribers (`--window` × subscribers).
    #[arg(long, default_value_t = 100)]
    pub window: u64,
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
    #[arg(long, default_value = "room:fanout")]
    pub topic: String,
    /// Subscribers (besides `--subs`) that join and then never read their
    /// socket: the server should close them as slow consumers, and only them.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Another node's socket URL for the publisher (the subscribers stay on
    /// the target): every message crosses the cluster once.
    #[arg(long)]
    pub publish_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub subs: usize,
    pub failed_joins: usize,
    /// Subscribers that never read (`--stalled`), not counted in `subs`.
    pub stalled: usize,
    /// The server's `chorus_slow_consumer_disconnects_total` after the run
    /// (`None` if `/metrics` could not be read): the stalled subscribers, and
    /// any reader that could not keep up.
    pub slow_consumer_disconnects: Option<u64>,
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

/// Bytes each subscriber reads from its socket at most at once (about 120
/// deliveries). Larger is not cheaper: tungstenite zeroes the free part of
/// its buffer before every read.
const READ_BUFFER: usize = 16 * 1024;

/// The event published and broadcast: what the ceiling broadcasts too.
const EVENT: &str = "new_msg";

/// Frames a subscriber handles per wake-up at most.
const RECV_BATCH: usize = 1024;

/// Shared between the publisher and the subscribers.
struct Progress {
    /// Deliveries received by all subscribers together.
    delivered: AtomicU64,
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
    /// Deliveries already added to [`Progress::delivered`].
    reported: u64,
}

pub async fn run(ctx: &Ctx, args: FanoutArgs) -> anyhow::Result<FanoutResult> {
    // With --rate 0 the count is known once publishing ends: until then the
    // subscribers' target is "more than will ever come".
    let planned = u64::from(args.rate) * args.secs;
    anyhow::ensure!(
        args.secs > 0 && (args.rate == 0 || planned > 0),
        "nothing to publish: --secs must be positive"
    );
    anyhow::ensure!(args.window > 0, "--window must be positive");
    let (total_tx, total) = watch::channel(if args.rate == 0 { u64::MAX } else { planned });
    let progress = Arc::new(Progress {
        delivered: AtomicU64::new(0),
    });
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, mut ready) = mpsc::channel(1024);
    let mut subs = JoinSet::new();
    for i in 0..args.subs {
        let (ctx, topic) = (ctx.clone(), args.topic.clone());
        let (ready_tx, stop, total) = (ready_tx.clone(), stop.clone(), total.clone());
        let progress = progress.clone();
        subs.spawn(subscriber(ctx, i, topic, total, progress, ready_tx, stop));
    }
    drop(ready_tx);
    let mut stalled = Vec::with_capacity(args.stalled);
    for i in 0..args.stalled {
        // Joined, then never read again: the server's queue for it fills.
        let mut conn = ctx.connect(&format!("stalled{i}")).await?;
        conn.join(&args.topic, "1").await?;
        stalled.push(conn);
    }
    let mut failed_joins = 0;
    while let Some(r) = ready.recv().await {
        if let Err(e) = r {
            if failed_joins == 0 {
                eprintln!("fanout: a subscriber failed: {e:#}");
            }
            failed_joins += 1;
        }
    }

    let mut publisher = match &args.publish_url {
        Some(url) => {
            let target = crate::client::Target {
                url: url.clone(),
                tokens: ctx.target.tokens.clone(),
            };
            crate::client::Conn::connect_with_buffer(&target.url_for("publisher"), READ_BUFFER)
                .await?
        }
        None => ctx.connect_with_buffer("publisher", READ_BUFFER).await?,
    };
    publisher.join(&args.topic, "1").await?;
    let (sent_tx, sent) = oneshot::channel();
    let meter = CpuMeter::start(ctx.pid);
    let pad = "x".repeat(args.pad);
    let pace = match args.rate {
        0 => Pace::Window {
            secs: args.secs,
            deliveries: args.window * seen_subs(args.subs, failed_joins),
            subs: seen_subs(args.subs, failed_joins),
            progress: progress.clone(),
        },
        rate => Pace::Rate {
            rate,
            total: planned,
        },
    };
    let publishing = tokio::spawn(publish(
        publisher,
        args.topic.clone(),
        pace,
        pad,
        sent_tx,
        stop.clone(),
    ));
    let Ok((first_us, published)) = sent.await else {
        // The publisher ended before it had sent everything: say why.
        return match publishing.await {
            Ok(Err(e)) => Err(e.context("the publisher failed")),
            Ok(Ok(())) => Err(anyhow::anyhow!("the publisher stopped early")),
            Err(e) => Err(anyhow::Error::new(e).context("the publisher panicked")),
        };
    };
    total_tx.send_replace(published);

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
    let slow_consumer_disconnects =
        crate::server::metric(&ctx.target.url, "chorus_slow_consumer_disconnects_total").await;
    drop(stalled);

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
        stalled: args.stalled,
        slow_consumer_disconnects,
        rate: args.rate,
        published,
        expected,
        delivered,
        missing: expected.saturating_sub(delivered),
        out_of_order: seen.iter().map(|s| s.out_of_order).sum(),
        disconnected: seen.iter().filter(|s| s.ended).count(),
        offered_per_sec: if args.rate == 0 {
            f64::INFINITY
        } else {
            seen.len() as f64 * f64::from(args.rate)
        },
        delivered_per_sec: crate::stats::per_sec(delivered, window),
        latency: Latency::of(&mut all),
        cpu,
    })
}

/// How the publisher paces itself.
enum Pace {
    /// `total` messages at `rate` per second (catching up if late).
    Rate { rate: u32, total: u64 },
    /// For `secs`, as fast as possible while at most `deliveries` are in
    /// flight (sent × `subs` minus received by the subscribers).
    Window {
        secs: u64,
        deliveries: u64,
        subs: u64,
        progress: Arc<Progress>,
    },
}

/// The subscribers that joined (each counts in the window).
fn seen_subs(subs: usize, failed: usize) -> u64 {
    subs.saturating_sub(failed) as u64
}

/// Publishes as `pace` says, reports `(first send time, count)`, then drains
/// its socket until stopped.
async fn publish(
    mut conn: crate::client::Conn,
    topic: String,
    pace: Pace,
    pad: String,
    sent_tx: oneshot::Sender<(u64, u64)>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let period = match &pace {
        Pace::Rate { rate, .. } => Duration::from_secs(1)
            .checked_div((*rate).max(1))
            .unwrap_or_default()
            .max(Duration::from_millis(1)),
        Pace::Window { .. } => Duration::from_millis(1),
    };
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let first_us = now_us();
    let mut sent = 0u64;
    let mut errors = 0u64;
    let mut report = Some(sent_tx);
    loop {
        tokio::select! {
            _ = tick.tick(), if report.is_some() => {
                let (due, done) = match &pace {
                    Pace::Rate { rate, total } => {
                        let due = ((started.elapsed().as_secs_f64() * f64::from(*rate)) as u64 + 1).min(*total);
                        (due, due == *total)
                    }
                    Pace::Window { secs, deliveries, subs, progress } => {
                        let received = progress.delivered.load(Ordering::Relaxed);
                        let in_flight = (sent * subs).saturating_sub(received);
                        let room = deliveries.saturating_sub(in_flight) / (*subs).max(1);
                        let over = started.elapsed() >= Duration::from_secs(*secs);
                        (if over { sent } else { sent + room }, over)
                    }
                };
                while sent < due {
                    let payload = format!(r#"{{"t":{},"seq":{sent},"pad":"{pad}"}}"#, now_us());
                    conn.feed(frame(Some("1"), &sent.to_string(), &topic, EVENT, &payload)).await?;
                    sent += 1;
                }
                conn.flush().await?;
                if done {
                    if let Some(report) = report.take() {
                        let _ = report.send((first_us, sent));
                    }
                }
            }
            _ = stop.changed() => break,
            // Its own broadcasts (sender included) are skipped unparsed: a
            // publisher that parsed each one fell behind with large payloads
            // on a loaded box and was cut as a slow consumer.
            got = conn.recv_texts(RECV_BATCH, |text| {
                if text.starts_with("[null,null,") {
                    return;
                }
                match serde_json::from_str::<Frame>(text) {
                    Ok(f) if f.event == "phx_reply" && crate::client::check_ok(&f).is_err() => {
                        errors += 1;
                    }
                    _ => {}
                }
            }) => {
                got.context("the publisher's connection")?;
            }
        }
    }
    if errors > 0 {
        eprintln!("fanout: {errors} pushes were refused");
    }
    conn.close().await;
    Ok(())
}

/// One subscriber: connect, join, report, then record every `new_msg` delivery
/// until it has the published total or is stopped. `None` if it never joined.
async fn subscriber(
    ctx: Ctx,
    i: usize,
    topic: String,
    mut total: watch::Receiver<u64>,
    progress: Arc<Progress>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
) -> Option<Seen> {
    let opened = async {
        let mut conn = ctx
            .connect_with_buffer(&format!("sub{i}"), READ_BUFFER)
            .await?;
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
    let planned = *total.borrow_and_update();
    let mut seen = Seen {
        latencies_us: Vec::with_capacity(if planned == u64::MAX {
            1 << 16
        } else {
            planned as usize
        }),
        ..Seen::default()
    };
    let mut next_seq = 0;
    let mut heartbeat = interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    while (seen.latencies_us.len() as u64) < *total.borrow() {
        tokio::select! {
            _ = stop.changed() => break,
            _ = total.changed() => {}
            _ = heartbeat.tick() => {
                if conn.heartbeat().await.is_err() {
                    seen.ended = true;
                    return Some(seen);
                }
            }
            got = conn.recv_texts(RECV_BATCH, |text| record(text, &mut seen, &mut next_seq)) => match got {
                Ok(_) => {}
                Err(_) => {
                    seen.ended = true;
                    return Some(seen);
                }
            }
        }
        let received = seen.latencies_us.len() as u64;
        if received > seen.reported {
            progress
                .delivered
                .fetch_add(received - seen.reported, Ordering::Relaxed);
            seen.reported = received;
        }
    }
    conn.close().await;
    Some(seen)
}

/// Records a `new_msg` delivery; other frames are ignored.
fn record(text: &str, seen: &mut Seen, next_seq: &mut u64) {
    let Some(stamp) = stamp(text) else {
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

/// The stamp of a `new_msg` frame; `None` for any other frame (or a `new_msg`
/// frame without a stamp, which then counts as missing).
fn stamp(text: &str) -> Option<Stamp> {
    if let Some(stamp) = quick_stamp(text) {
        return Some(stamp);
    }
    let f: Frame = serde_json::from_str(text).ok()?;
    if f.event != EVENT {
        return None;
    }
    serde_json::from_str(f.payload.get()).ok()
}

/// The stamp read straight from a broadcast as the server writes it and the
/// publisher formats it: `[null,null,"<topic>","new_msg",{"t":…,"seq":…,…}]`.
/// `None` for any other shape (the full parser decides then).
fn quick_stamp(text: &str) -> Option<Stamp> {
    let rest = text.strip_prefix(r#"[null,null,""#)?;
    let end = rest.bytes().position(|b| b == b'"' || b == b'\\')?;
    let rest = rest[end..].strip_prefix(r#"","new_msg",{"t":"#)?;
    let (t, rest) = leading_number(rest)?;
    let (seq, _) = leading_number(rest.strip_prefix(r#","seq":"#)?)?;
    Some(Stamp { t, seq })
}

/// The unsigned integer at the start of `s`, and what follows it.
fn leading_number(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    Some((s[..digits].parse().ok()?, &s[digits..]))
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
        if self.stalled > 0 {
            let cut = self
                .slow_consumer_disconnects
                .map_or("unknown".to_string(), |n| n.to_string());
            writeln!(
                f,
                "fanout: {} stalled subscribers; server's slow-consumer disconnects: {cut}",
                self.stalled
            )?;
        }
        write!(f, "fanout: {}", self.cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_stamp_reads_what_the_full_parser_reads() {
        let broadcast = r#"[null,null,"room:fanout","new_msg",{"t":1234567,"seq":42,"pad":"xx"}]"#;
        let quick = quick_stamp(broadcast).expect("the server's shape");
        assert_eq!((quick.t, quick.seq), (1234567, 42));
        let full = stamp(broadcast).expect("a stamp");
        assert_eq!((full.t, full.seq), (1234567, 42));

        // Other shapes go to the full parser, which still finds the stamp.
        let spaced = r#"[null, null, "room:fanout", "new_msg", {"seq": 7, "t": 9}]"#;
        assert!(quick_stamp(spaced).is_none());
        let full = stamp(spaced).expect("a stamp");
        assert_eq!((full.t, full.seq), (9, 7));
        let escaped = r#"[null,null,"room:\"x","new_msg",{"t":1,"seq":2}]"#;
        assert!(quick_stamp(escaped).is_none());
        assert_eq!(stamp(escaped).map(|s| s.seq), Some(2));

        // Not a fanout delivery.
        assert!(
            stamp(r#"[null,"hb","phoenix","phx_reply",{"status":"ok","response":{}}]"#).is_none()
        );
        assert!(stamp(r#"[null,null,"room:fanout","other",{"t":1,"seq":2}]"#).is_none());
    }
}
