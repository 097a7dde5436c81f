//! Recovery storm: N clients join a recoverable topic and keep the join
//! reply's `pos`, all disconnect, one publisher sends M messages, then all N
//! rejoin at once with `{"since": pos}`. Measured from the first rejoin: when
//! every client has its M recovered messages, and the server's CPU.

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::{timeout, Duration, Instant};

use crate::client::{check_ok, frame, Conn, Frame};
use crate::server::{Cpu, CpuMeter};
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
    /// From the first rejoin until the end.
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
    // Everyone joins once and keeps its position.
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
    // While they are away.
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
    // All rejoin at once.
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
    publisher.close().await;
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
        cpu,
    })
}

impl std::fmt::Display for RecoverResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.3} s"));
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
