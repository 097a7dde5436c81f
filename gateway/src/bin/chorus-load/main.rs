//! `chorus-load`: a load generator for Phoenix Channels servers (Chorus, or
//! any server speaking the Phoenix v2 JSON protocol over WebSocket).
//!
//! Each scenario opens real WebSocket connections over the network, runs for
//! a bounded time and prints what it measured:
//!
//! - `idle`: N connections joined to one topic; the server's resident memory
//!   before, at N/2 and at N (needs the server's pid: `--spawn`, or `--pid`);
//! - `fanout`: M subscribers of one topic, one publisher at a fixed rate;
//!   delivery latency (timestamp in the payload) and deliveries per second;
//! - `ping`: connections pushing an echoed event with pushes in flight;
//!   round-trip times and replies per second;
//! - `storm`: K clients joining one presence topic; when each client's
//!   presence view holds all K users, frames and bytes received;
//! - `hooks`: joins of a topic with a backend `join_hook` (a backend in this
//!   process answering in `--delay-ms`): joins per second and join latency.
//! - `recover`: N clients leave a recoverable topic, M messages are published,
//!   all rejoin at once with their position; when every one has recovered.
//!
//! `--spawn BIN` starts a fresh `chorus` per scenario with
//! `gateway/bench/load.toml` on a free port of 127.0.0.1; `--url` points at a
//! running server, which then needs the topics of that file (`room:*` with
//! `new_msg` broadcast, `bench:*` with `ping` echoed, `storm:*` with
//! presence). Latencies are taken on this process's clock, so they include its
//! own scheduling.
//!
//! `--compare CEILING` (with `--spawn`) runs the scenario against a fresh
//! ceiling (`../shared/ceiling`: join anything, `new_msg` broadcast, `ping`
//! echoed) and then against a fresh `chorus`, and prints both and the ratio
//! of each figure (server CPU per delivery or round trip, bytes per idle
//! connection, latency percentiles). `--rounds N` does that N times,
//! alternating, and adds the medians and the range of each ratio.

mod client;
mod compare;
mod fanout;
mod hooks;
mod idle;
mod ping;
mod recover;
mod server;
mod stats;
mod storm;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use chorus_gateway::token::Tokens;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::Target;
use crate::compare::{Comparison, Outcome, Rounds};
use crate::server::Spawned;

/// Load generator for Phoenix Channels servers.
#[derive(Debug, Parser)]
#[command(name = "chorus-load")]
struct Cli {
    /// Start this `chorus` binary for the scenario (a fresh process with
    /// gateway/bench/load.toml on a free port), and stop it after.
    #[arg(long, conflicts_with = "url")]
    spawn: Option<PathBuf>,
    /// The socket URL of a running server, e.g.
    /// ws://127.0.0.1:4000/socket/websocket.
    #[arg(long, required_unless_present = "spawn")]
    url: Option<String>,
    /// With --url: the server's process id, to read its memory.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// HS256 secret: each client gets a `token` connect param for its own
    /// user. With --spawn, the server is given this secret.
    #[arg(
        long,
        env = "CHORUS_TOKEN_SECRET",
        default_value = "chorus-load-token-secret-0123456789"
    )]
    token_secret: String,
    /// With --spawn: run the scenario first against a fresh process of this
    /// ceiling binary (`../shared/ceiling/target/release/ceiling`), then
    /// against chorus, and print both and the ratios.
    #[arg(long, requires = "spawn")]
    compare: Option<PathBuf>,
    /// With --compare: the ceiling's runtime threads (its `--threads`; 1 is
    /// its default, a current-thread runtime).
    #[arg(long, default_value_t = 1, requires = "compare")]
    ceiling_threads: usize,
    /// With --compare: make the comparison this many times, the ceiling and
    /// chorus alternating, and print each round and, per figure, the
    /// medians and the range of the ratio.
    #[arg(long, default_value_t = 1, requires = "compare")]
    rounds: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Debug, Subcommand)]
enum Scenario {
    /// Server memory per idle connection.
    Idle(idle::IdleArgs),
    /// Broadcast to many subscribers of one topic at a fixed rate.
    Fanout(fanout::FanoutArgs),
    /// Echoed pushes: round-trip time and replies per second.
    Ping(ping::PingArgs),
    /// Many clients joining one presence topic.
    Storm(storm::StormArgs),
    /// Join throughput with a backend join hook.
    Hooks(hooks::HooksArgs),
    /// Many clients rejoining a recoverable topic at once with their position.
    Recover(recover::RecoverArgs),
}

/// What every scenario gets: where to connect and the server's pid.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub target: Target,
    /// The server's pid, when its memory can be read.
    pub pid: Option<u32>,
    /// Bounds the connection attempts in flight.
    pub connecting: Arc<Semaphore>,
}

impl Ctx {
    /// Opens a connection for `user` (waiting for a connect slot).
    pub async fn connect(&self, user: &str) -> anyhow::Result<client::Conn> {
        let _slot = self.connecting.acquire().await?;
        client::Conn::connect(&self.target.url_for(user)).await
    }

    /// [`Ctx::connect`] with a read buffer of `read_buffer` bytes.
    pub async fn connect_with_buffer(
        &self,
        user: &str,
        read_buffer: usize,
    ) -> anyhow::Result<client::Conn> {
        let _slot = self.connecting.acquire().await?;
        client::Conn::connect_with_buffer(&self.target.url_for(user), read_buffer).await
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    client::now_us();
    // The hooks scenario's backend runs before the server, which is told its address.
    let backend = match &cli.scenario {
        Scenario::Hooks(args) => Some(
            hooks::Backend::start(
                args.backend,
                std::time::Duration::from_millis(args.delay_ms),
            )
            .await?,
        ),
        _ => None,
    };
    let extra = backend
        .as_ref()
        .map(hooks::Backend::config)
        .unwrap_or_default();
    if let (Some(ceiling), Some(bin)) = (&cli.compare, &cli.spawn) {
        if matches!(
            cli.scenario,
            Scenario::Storm(_) | Scenario::Hooks(_) | Scenario::Recover(_)
        ) {
            bail!("the ceiling has no presence, hooks or recovery: `storm`, `hooks` and `recover` cannot be compared");
        }
        let mut rounds = Vec::new();
        for _ in 0..cli.rounds.max(1) {
            let server = Spawned::ceiling(ceiling, cli.ceiling_threads).await?;
            let ceiling = scenario(&cli, &server.url, Some(server.pid()), None).await?;
            drop(server);
            let server = Spawned::start(bin, &cli.token_secret, &extra).await?;
            let chorus = scenario(&cli, &server.url, Some(server.pid()), None).await?;
            drop(server);
            rounds.push(Comparison::new(ceiling, chorus));
        }
        match rounds.len() {
            1 => print(cli.json, &rounds.remove(0)),
            _ => print(cli.json, &Rounds::new(rounds)),
        }
        return Ok(());
    }
    if let Scenario::Recover(args) = &cli.scenario {
        if args.restart {
            let bin = cli
                .spawn
                .clone()
                .context("`recover --restart` starts its two nodes: give --spawn")?;
            let spawn = |name: &'static str,
                         http,
                         gossip: std::net::SocketAddr,
                         seed: std::net::SocketAddr| {
                let (bin, token) = (bin.clone(), cli.token_secret.clone());
                async move {
                    let flags = [
                        "--node".to_owned(),
                        name.to_owned(),
                        "--gossip".to_owned(),
                        gossip.to_string(),
                        "--seeds".to_owned(),
                        seed.to_string(),
                    ];
                    let env = [
                        ("CHORUS_CLUSTER_SECRET", RESTART_CLUSTER_SECRET),
                        ("CHORUS_API_KEY", RESTART_API_KEY),
                    ];
                    Spawned::start_with(&bin, &token, "", http, &flags, &env).await
                }
            };
            let result = recover::run_restart(args.clone(), RESTART_API_KEY, spawn, |node| {
                context(&cli, &node.url, Some(node.pid()))
            })
            .await?;
            print(cli.json, &Outcome::Recover(result));
            return Ok(());
        }
    }
    let spawned = match &cli.spawn {
        Some(bin) => Some(Spawned::start(bin, &cli.token_secret, &extra).await?),
        None => None,
    };
    let (url, pid) = match (&spawned, &cli.url) {
        (Some(s), _) => (s.url.clone(), Some(s.pid())),
        (None, Some(url)) => (url.clone(), cli.pid),
        (None, None) => bail!("give --spawn or --url"),
    };
    print(
        cli.json,
        &scenario(&cli, &url, pid, backend.as_ref()).await?,
    );
    drop(spawned);
    Ok(())
}

/// Runs the scenario of `cli` against the server at `url` (process `pid`);
/// the hooks scenario with its `backend`.
async fn scenario(
    cli: &Cli,
    url: &str,
    pid: Option<u32>,
    backend: Option<&hooks::Backend>,
) -> anyhow::Result<Outcome> {
    let ctx = context(cli, url, pid);
    Ok(match cli.scenario.clone() {
        Scenario::Idle(args) => Outcome::Idle(idle::run(&ctx, args).await?),
        Scenario::Fanout(args) => Outcome::Fanout(fanout::run(&ctx, args).await?),
        Scenario::Ping(args) => Outcome::Ping(ping::run(&ctx, args).await?),
        Scenario::Storm(args) => Outcome::Storm(storm::run(&ctx, args).await?),
        Scenario::Hooks(args) => {
            let backend = backend.context("the hooks scenario starts its backend first")?;
            Outcome::Hooks(hooks::run(&ctx, args, backend).await?)
        }
        Scenario::Recover(args) => Outcome::Recover(recover::run(&ctx, args).await?),
    })
}

/// The cluster secret and API key of `recover --restart`'s two nodes.
const RESTART_CLUSTER_SECRET: &str = "chorus-load-cluster-secret-0123456789";
const RESTART_API_KEY: &str = "chorus-load-api-key-0123456789";

/// The clients' context for the server at `url` (process `pid`).
fn context(cli: &Cli, url: &str, pid: Option<u32>) -> Ctx {
    Ctx {
        target: Target {
            url: url.to_owned(),
            tokens: Some(Tokens::new(cli.token_secret.as_bytes())),
        },
        pid,
        connecting: Arc::new(Semaphore::new(cli.connect_concurrency.max(1))),
    }
}

fn print<R: Serialize + std::fmt::Display>(json: bool, result: &R) {
    if json {
        println!(
            "{}",
            serde_json::to_string(result).expect("results serialize")
        );
    } else {
        println!("{result}");
    }
}
