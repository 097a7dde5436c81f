//! Recovery storm: N clients join a recoverable topic and keep the join
//! reply's `pos`, all disconnect, one publisher sends M messages, then all N
//! rejoin at once with `{"since": pos}`. Measured from the first rejoin: when
//! every client has its M recovered messages, and the server's CPU.
//!
//! With `--restart` (and `--spawn`): after a node restart. Two nodes A and B;
//! the N clients join on B and leave, B is killed, the M messages are
//! published on A while B is down, B starts again (a new incarnation, with
//! nothing: its log comes back from A), and once B holds A's messages all N
//! rejoin on B at once. Measured besides: from B answering `/healthz` again
//! to B holding the M messages.

use std::net::SocketAddr;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::{timeout, Duration, Instant};

use crate::client::{check_ok, frame, Conn, Frame};
use crate::server::{free_port, get_authed, Cpu, CpuMeter, Spawned};
use crate::Ctx;

#[derive(Clone, Debug, Args)]
pub struct RecoverArgs {
    /// Clients that leave and rejoin.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Messages published while they are away.
    #[arg(long, default_value_t = 100)]
    pub missed: usize,
    /// Give up this many seconds after the first rejoin.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The topic (a recoverable rule with `history` >= `missed`).
    #[arg(long, default_value = "recover:bench")]
    pub topic: String,
    /// After a node restart: two spawned nodes, the clients' node restarted
    /// while the messages are published on the other (needs `--spawn`).
    #[arg(long)]
    pub restart: bool,
}

#[derive(Debug, Serialize)]
pub struct RecoverResult {
    pub scenario: &'static str,
    pub clients: usize,
    pub missed: usize,
    /// Rejoins answered `recovered: true`.
    pub recovered: usize,
    /// Clients that got all `missed` messages.
    pub complete: usize,
    /// Seconds from the first rejoin: the last join reply, and the moment the
    /// last client had every missed message.
    pub last_reply_s: Option<f64>,
    pub all_recovered_s: Option<f64>,
    /// With `--restart`: seconds from the restarted node answering
    /// `/healthz` until it held every missed message (its log back from the
    /// other node).
    pub restart_synced_s: Option<f64>,
    /// From the first rejoin until the end (with `--restart`: the restarted
    /// node's CPU).
    pub cpu: Cpu,
}

#[derive(Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    response: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct JoinResponse {
    pos: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
}

/// Joins with `params` and returns the reply's response.
async fn join(conn: &mut Conn, topic: &str, params: &str) -> anyhow::Result<JoinResponse> {
    conn.send(frame(Some("1"), "1", topic, "phx_join", params))
        .await?;
    loop {
        let f: Frame = conn.recv().await?;
        if f.event == "phx_reply" && f.reference.as_deref() == Some("1") {
            check_ok(&f)?;
            let reply: Reply = serde_json::from_str(f.payload.get())?;
            anyhow::ensure!(reply.status == "ok", "join refused");
            let response = reply.response.map_or("{}".into(), |r| r.get().to_owned());
            return Ok(serde_json::from_str(&response)?);
        }
    }
}

pub async fn run(ctx: &Ctx, args: RecoverArgs) -> anyhow::Result<RecoverResult> {
    let mut publisher = ctx.connect("publisher").await?;
    join(&mut publisher, &args.topic, "{}").await?;
    let positions = positions(ctx, &args).await?;
    // While they are away.
    publish(&mut publisher, &args).await?;
    let result = rejoin(ctx, &args, positions).await;
    publisher.close().await;
    result
}

/// Everyone joins once and keeps its position, then leaves.
async fn positions(ctx: &Ctx, args: &RecoverArgs) -> anyhow::Result<Vec<String>> {
    let mut joins = JoinSet::new();
    for i in 0..args.clients {
        let (ctx, topic) = (ctx.clone(), args.topic.clone());
        joins.spawn(async move {
            let mut conn = ctx.connect(&format!("user{i}")).await?;
            let pos = join(&mut conn, &topic, "{}").await?.pos;
            conn.close().await;
            pos.ok_or_else(|| anyhow::anyhow!("no pos in the join reply"))
        });
    }
    let mut positions = Vec::new();
    while let Some(r) = joins.join_next().await {
        positions.push(r??);
    }
    Ok(positions)
}

/// Publishes the `missed` messages, each acknowledged.
async fn publish(publisher: &mut Conn, args: &RecoverArgs) -> anyhow::Result<()> {
    for n in 0..args.missed {
        let payload = format!(r#"{{"n":{n}}}"#);
        publisher
            .send(frame(
                Some("1"),
                &format!("p{n}"),
                &args.topic,
                "msg",
                &payload,
            ))
            .await?;
        loop {
            let f = publisher.recv().await?;
            if f.event == "phx_reply" && f.reference.as_deref() == Some(&format!("p{n}")) {
                check_ok(&f)?;
                break;
            }
        }
    }
    Ok(())
}

/// All rejoin at once with their positions; measured from the first rejoin.
async fn rejoin(
    ctx: &Ctx,
    args: &RecoverArgs,
    positions: Vec<String>,
) -> anyhow::Result<RecoverResult> {
    let meter = CpuMeter::start(ctx.pid);
    let started = Instant::now();
    let mut rejoins = JoinSet::new();
    for (i, pos) in positions.into_iter().enumerate() {
        let (ctx, topic, missed) = (ctx.clone(), args.topic.clone(), args.missed);
        let limit = Duration::from_secs(args.timeout);
        rejoins.spawn(async move {
            let outcome = timeout(limit, async {
                let mut conn = ctx.connect(&format!("user{i}")).await?;
                let params = serde_json::json!({ "since": pos }).to_string();
                let reply = join(&mut conn, &topic, &params).await?;
                let replied = started.elapsed();
                let mut got = 0;
                while got < missed {
                    let f = conn.recv().await?;
                    if f.event == "msg" {
                        got += 1;
                    }
                }
                let done = started.elapsed();
                conn.close().await;
                anyhow::Ok((reply.recovered == Some(true), replied, done))
            })
            .await;
            outcome.map_err(anyhow::Error::from).and_then(|r| r)
        });
    }
    let (mut recovered, mut complete) = (0, 0);
    let (mut last_reply, mut last_done) = (None::<Duration>, None::<Duration>);
    while let Some(r) = rejoins.join_next().await {
        if let Ok(Ok((ok, replied, done))) = r {
            recovered += usize::from(ok);
            complete += 1;
            last_reply = last_reply.max(Some(replied));
            last_done = last_done.max(Some(done));
        }
    }
    let cpu = meter.stop();
    Ok(RecoverResult {
        scenario: "recover",
        clients: args.clients,
        missed: args.missed,
        recovered,
        complete,
        last_reply_s: last_reply.map(|d| d.as_secs_f64()),
        all_recovered_s: (complete == args.clients)
            .then_some(last_done)
            .flatten()
            .map(|d| d.as_secs_f64()),
        restart_synced_s: None,
        cpu,
    })
}

/// `--restart`: nodes A and B (`spawn(name, http, gossip, seeds)` starts
/// one, `ctx(&node)` is the context of its clients); the clients on B, B
/// restarted while A's publisher sends the missed messages, all rejoin on B.
pub async fn run_restart<S, Fut>(
    args: RecoverArgs,
    api_key: &str,
    spawn: S,
    ctx: impl Fn(&Spawned) -> Ctx,
) -> anyhow::Result<RecoverResult>
where
    S: Fn(&'static str, SocketAddr, SocketAddr, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Spawned>>,
{
    let (http_a, http_b) = (free_port()?, free_port()?);
    let (gossip_a, gossip_b) = (free_port()?, free_port()?);
    let a = spawn("a", http_a, gossip_a, gossip_b).await?;
    let b = spawn("b", http_b, gossip_b, gossip_a).await?;
    let met = |addr, peer: &'static str| async move {
        get_authed(addr, "/api/cluster", api_key)
            .await
            .and_then(|body| serde_json::from_str::<Cluster>(&body).ok())
            .is_some_and(|c| c.members.iter().any(|m| m.name == peer && m.state == "up"))
    };
    wait(Duration::from_secs(30), "the two nodes to meet", || async {
        met(http_a, "b").await && met(http_b, "a").await
    })
    .await?;
    let (ctx_a, ctx_b) = (ctx(&a), ctx(&b));
    let mut publisher = ctx_a.connect("publisher").await?;
    join(&mut publisher, &args.topic, "{}").await?;
    let positions = positions(&ctx_b, &args).await?;
    drop(b);
    publish(&mut publisher, &args).await?;
    let b = spawn("b", http_b, gossip_b, gossip_a).await?;
    let back = Instant::now();
    // B holds the missed messages once A's log reached it: what the first
    // client's position lacks is all of them.
    let since = format!(
        "/api/history?topic={}&since={}",
        args.topic,
        positions.first().map_or("", String::as_str)
    );
    wait(
        Duration::from_secs(60),
        "the restarted node to hold the log",
        || async {
            get_authed(http_b, &since, api_key)
                .await
                .and_then(|body| serde_json::from_str::<History>(&body).ok())
                .is_some_and(|h| h.recovered && h.messages.map_or(0, |m| m.len()) >= args.missed)
        },
    )
    .await?;
    let synced = back.elapsed();
    let result = rejoin(&ctx(&b), &args, positions).await;
    publisher.close().await;
    drop(a);
    let mut result = result?;
    result.restart_synced_s = Some(synced.as_secs_f64());
    Ok(result)
}

#[derive(Deserialize)]
struct Cluster {
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    name: String,
    state: String,
}

#[derive(Deserialize)]
struct History {
    recovered: bool,
    #[serde(default)]
    messages: Option<Vec<serde::de::IgnoredAny>>,
}

/// Polls `ready` every 50 ms until it holds, or fails after `limit`.
async fn wait<F, Fut>(limit: Duration, what: &str, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl std::fmt::Display for RecoverResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.3} s"));
        if let Some(synced) = self.restart_synced_s {
            writeln!(
                f,
                "recover: after a restart of the clients' node: it held the missed messages {synced:.3} s after answering again"
            )?;
        }
        writeln!(
            f,
            "recover: {} clients rejoining at once, {} missed messages each: {} recovered, {} complete",
            self.clients, self.missed, self.recovered, self.complete
        )?;
        writeln!(
            f,
            "recover: from the first rejoin: last join reply {}, every client has every message {}",
            s(self.last_reply_s),
            s(self.all_recovered_s)
        )?;
        write!(f, "recover: {}", self.cpu)
    }
}
