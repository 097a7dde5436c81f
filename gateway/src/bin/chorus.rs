//! `chorus`: one Chorus node — a cluster engine plus the Phoenix Channels WebSocket
//! server, with the built-in demo channel `room:*`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use chorus_engine::runtime::{Engine, EngineConfig};
use chorus_engine::{Config, NodeId};
use chorus_gateway::demo::demo_router;
use chorus_gateway::server::{ApiKey, Server, ServerConfig};
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Start a Chorus node.
#[derive(Debug, Parser)]
#[command(
    name = "chorus",
    version,
    about = "Start one Chorus node: cluster engine plus Phoenix Channels WebSocket server"
)]
struct Args {
    /// HTTP address for WebSocket clients (`/socket/websocket`) and `/healthz`.
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// This node's name in the cluster.
    #[arg(long, default_value = "chorus")]
    node: String,
    /// UDP address for cluster gossip (QUIC).
    #[arg(long, default_value = "127.0.0.1:7400")]
    gossip: SocketAddr,
    /// Gossip addresses of nodes to join through, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<SocketAddr>,
    /// Failure-detection timing.
    #[arg(long, value_enum, default_value_t = Profile::Lan)]
    profile: Profile,
    /// Configuration file (not supported yet).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format; the level comes from `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Key of the HTTP API under `/api` (`Authorization: Bearer <key>`); without
    /// it the API is disabled. Never logged (its `Debug` is redacted).
    #[arg(long, env = "CHORUS_API_KEY", hide_env_values = true, value_parser = api_key)]
    api_key: Option<ApiKey>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Profile {
    /// Down after 2 s of silence, purged after 5 min.
    Lan,
    /// Phoenix.Tracker's timing: down after 30 s, purged after 20 min.
    Phoenix,
}

fn api_key(key: &str) -> Result<ApiKey, String> {
    if key.is_empty() {
        return Err("the API key must not be empty".into());
    }
    Ok(ApiKey::new(key))
}

/// The secret environment variable every cluster member must share.
const SECRET_ENV: &str = "CHORUS_CLUSTER_SECRET";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    );
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Some(path) = &args.config {
        bail!(
            "--config {}: config files arrive with issue 6; use the command-line flags for now",
            path.display()
        );
    }
    let secret = match std::env::var(SECRET_ENV) {
        Ok(secret) => secret.into_bytes(),
        Err(_) if !args.seeds.is_empty() => {
            bail!("{SECRET_ENV} must be set when --seeds is given: every cluster member needs the same secret")
        }
        Err(_) => {
            info!("{SECRET_ENV} not set: single-node mode with a random secret (no peer can join)");
            rand::random::<[u8; 32]>().to_vec()
        }
    };
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_millis() as u64;
    let id = NodeId::new(args.node.as_str(), incarnation);
    let mut node = match args.profile {
        Profile::Lan => Config::lan(id.clone(), args.gossip),
        Profile::Phoenix => Config::phoenix(id.clone(), args.gossip),
    };
    node.seeds = args.seeds.clone();
    node.rng_seed = rand::random();
    let engine = Engine::start(EngineConfig::new(node, secret))
        .await
        .context("starting the cluster engine")?;
    info!(node = %id, gossip = %engine.local_addr(), seeds = ?args.seeds, "engine started");

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let router = demo_router().context("building the demo router")?;
    let config = ServerConfig {
        api_key: args.api_key.clone(),
        ..ServerConfig::default()
    };
    if config.api_key.is_none() {
        info!("no API key (--api-key or CHORUS_API_KEY): the HTTP API under /api is disabled");
    }
    let server = Server::new(engine.clone(), router, config);
    info!(listen = %args.listen, "serving ws://{}/socket/websocket (demo channel room:*)", args.listen);
    server.run(listener, shutdown_signal()).await?;
    info!("connections drained; leaving the cluster");
    if let Err(e) = engine.shutdown().await {
        warn!(error = %e, "engine shutdown failed");
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("Ctrl-C: shutting down"),
        _ = term => info!("SIGTERM: shutting down"),
    }
}
