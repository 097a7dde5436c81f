//! Join throughput with a backend `join_hook`: a backend in this process
//! (hyper on 127.0.0.1) answers each join hook `{"allow":true}` after
//! `--delay-ms`; `--conns` connections each send their share of `--joins`
//! joins at once (pipelined on the socket) and time each from the send to its
//! reply. Hooks must not serialize joins: with a 1 ms backend and 10 joins in
//! flight per socket, serial joins would take 10 ms per socket.
//!
//! With `--spawn`, the server gets a rule `hook:{id}` whose `join_hook` points
//! at this backend; with `--url`, give the server such a rule pointing at
//! `--backend` (e.g. 127.0.0.1:9000). `--topic-prefix room` joins `room:*`
//! (no hook) instead: the same joins without a backend, for comparison.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{check_ok, frame};
use crate::server::{Cpu, CpuMeter};
use crate::stats::{per_sec, Latency};
use crate::Ctx;

#[derive(Clone, Debug, Args)]
pub struct HooksArgs {
    /// Joins in all.
    #[arg(long, default_value_t = 1000)]
    pub joins: usize,
    /// Connections the joins are spread over (sent at once on each).
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Milliseconds the backend takes to answer each join hook.
    #[arg(long, default_value_t = 1)]
    pub delay_ms: u64,
    /// The address the backend listens on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub backend: SocketAddr,
    /// The topics joined: `{prefix}:{n}` (`hook`: the join hook's rule;
    /// `load`: no hook).
    #[arg(long, default_value = "hook")]
    pub topic_prefix: String,
}

/// The backend answering join hooks.
pub struct Backend {
    pub addr: SocketAddr,
    calls: Arc<AtomicU64>,
}

impl Backend {
    /// Listens on `addr`, answering each request `{"allow":true}` after `delay`.
    pub async fn start(addr: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .context("binding the backend")?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let calls = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let calls = calls.clone();
                        async move {
                            let _ = req.into_body().collect().await?;
                            calls.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(delay).await;
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                Bytes::from_static(br#"{"allow":true}"#),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, calls })
    }

    /// The rule `--spawn` adds to the server's config.
    pub fn config(&self) -> String {
        format!(
            "\n[[topics]]\npattern = \"hook:{{id}}\"\njoin_hook = {{ url = \"http://{}/join\", timeout_ms = 10000 }}\n",
            self.addr
        )
    }
}

#[derive(Debug, Serialize)]
pub struct HooksResult {
    pub scenario: &'static str,
    pub topic_prefix: String,
    pub joins: usize,
    pub conns: usize,
    pub delay_ms: u64,
    /// Joins answered `ok`.
    pub ok: u64,
    /// Joins refused or lost.
    pub errors: u64,
    /// Join hooks the backend answered.
    pub backend_calls: u64,
    /// Joins per second, from the first join sent to the last reply.
    pub joins_per_sec: f64,
    /// From a join's send to its reply.
    pub latency: Latency,
    pub cpu: Cpu,
}

impl std::fmt::Display for HooksResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "hooks: {} joins of {}:* over {} connections, backend answering in {} ms",
            self.joins, self.topic_prefix, self.conns, self.delay_ms
        )?;
        writeln!(
            f,
            "  ok {} / errors {} / backend calls {}",
            self.ok, self.errors, self.backend_calls
        )?;
        writeln!(f, "  {:.0} joins/s", self.joins_per_sec)?;
        writeln!(f, "  join latency {}", self.latency)?;
        write!(f, "  {}", self.cpu)
    }
}

pub async fn run(ctx: &Ctx, args: HooksArgs, backend: &Backend) -> anyhow::Result<HooksResult> {
    anyhow::ensure!(
        args.conns > 0 && args.joins > 0,
        "--conns and --joins must be positive"
    );
    let mut conns = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        conns.push(ctx.connect(&format!("hooker{i}")).await?);
    }
    let calls_before = backend.calls.load(Ordering::Relaxed);
    let meter = CpuMeter::start(ctx.pid);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        // Connection i joins topics i, i + conns, i + 2 conns, ...
        let topics: Vec<usize> = (i..args.joins).step_by(args.conns).collect();
        let prefix = args.topic_prefix.clone();
        tasks.spawn(async move {
            let mut sent = Vec::with_capacity(topics.len());
            for (n, topic) in topics.iter().enumerate() {
                let r = n.to_string();
                conn.feed(frame(
                    Some(&r),
                    &r,
                    &format!("{prefix}:{topic}"),
                    "phx_join",
                    "{}",
                ))
                .await?;
                sent.push(Instant::now());
            }
            conn.flush().await?;
            let (mut ok, mut errors, mut lat_us, mut last) = (0u64, 0u64, Vec::new(), started);
            let mut pending = topics.len();
            let waited = tokio::time::timeout(Duration::from_secs(60), async {
                while pending > 0 {
                    let f = conn.recv().await?;
                    if f.event != "phx_reply" {
                        continue;
                    }
                    let Some(n) = f.reference.as_deref().and_then(|r| r.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    let now = Instant::now();
                    lat_us.push(now.duration_since(sent[n]).as_micros() as u32);
                    last = last.max(now);
                    match check_ok(&f) {
                        Ok(()) => ok += 1,
                        Err(_) => errors += 1,
                    }
                    pending -= 1;
                }
                anyhow::Ok(())
            })
            .await;
            if !matches!(waited, Ok(Ok(()))) {
                errors += pending as u64;
            }
            conn.close().await;
            anyhow::Ok((ok, errors, lat_us, last))
        });
    }
    let (mut ok, mut errors, mut lat_us, mut last) = (0, 0, Vec::new(), started);
    while let Some(done) = tasks.join_next().await {
        let (o, e, l, t) = done??;
        ok += o;
        errors += e;
        lat_us.extend(l);
        last = last.max(t);
    }
    let cpu = meter.stop();
    Ok(HooksResult {
        scenario: "hooks",
        topic_prefix: args.topic_prefix,
        joins: args.joins,
        conns: args.conns,
        delay_ms: args.delay_ms,
        ok,
        errors,
        backend_calls: backend.calls.load(Ordering::Relaxed) - calls_before,
        joins_per_sec: per_sec(ok, last.duration_since(started).as_secs_f64()),
        latency: Latency::of(&mut lat_us),
        cpu,
    })
}
