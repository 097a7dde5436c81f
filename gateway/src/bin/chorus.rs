//! `chorus`: one Chorus node (cluster engine, Phoenix Channels server, the
//! configured channels), and `chorus token`, which mints client tokens.
//!
//! Settings come from the built-in default config or `--config FILE`, then
//! `CHORUS_*` environment variables, then flags. Secrets come from the
//! environment (or the file), never from flags, and are never logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use chorus_engine::runtime::{DnsName, Engine, EngineConfig, Seed};
use chorus_engine::{NodeConfig, NodeId};
use chorus_gateway::builtin::App;
use chorus_gateway::channel::RoomStore;
use chorus_gateway::config::{Config, Profile};
use chorus_gateway::server::{ApiKey, LongPollKey, Server, ServerConfig, ServerTls, TlsFiles};
use chorus_gateway::token::{Claims, TokenAuth, Tokens};
use chorus_gateway::webhooks;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};

/// A Chorus node: Phoenix Channels and presence, clustered.
#[derive(Debug, Parser)]
#[command(name = "chorus", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a client token signed with the token secret (CHORUS_TOKEN_SECRET
    /// or the config's auth.token_secret).
    Token(TokenArgs),
    /// Probe a running node: GET /healthz (or --path) from the configured listen
    /// address (CHORUS_LISTEN; 0.0.0.0 is probed on 127.0.0.1) and exit 0 on
    /// 200, 1 otherwise. The container image's HEALTHCHECK (it has no curl).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// The path to probe (/healthz: the node serves; /readyz: it takes clients).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// `chorus health`: exits 0 when the node answers 200.
fn health(config: &Config, args: &HealthArgs) -> anyhow::Result<()> {
    let addr = config.server.listen;
    let status = chorus_gateway::server::probe(addr, &args.path, args.timeout)
        .with_context(|| format!("probing http://{addr}{}", args.path))?;
    if status != 200 {
        bail!("http://{addr}{} answered {status}", args.path);
    }
    println!("{} {status}", args.path);
    Ok(())
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file (TOML). Default: the built-in dev config.
    #[arg(long, env = "CHORUS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// HTTP address for clients, the API and the demo page.
    #[arg(long, env = "CHORUS_LISTEN")]
    listen: Option<SocketAddr>,
    /// This node's name in the cluster.
    #[arg(long, env = "CHORUS_NODE")]
    node: Option<String>,
    /// UDP address for cluster gossip (QUIC).
    #[arg(long, env = "CHORUS_GOSSIP")]
    gossip: Option<SocketAddr>,
    /// The gossip address other nodes dial, if not --gossip (NAT, a relay,
    /// or --gossip on 0.0.0.0) (cluster.advertise).
    #[arg(long, env = "CHORUS_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Nodes to join through, comma-separated: gossip addresses (IP:PORT) and
    /// DNS names (dns:NAME:PORT, every address of the name, re-resolved).
    #[arg(long, env = "CHORUS_SEEDS", value_delimiter = ',')]
    seeds: Option<Vec<Seed>>,
    /// How often dns: seeds are resolved again, e.g. 5s (cluster.discovery_interval).
    #[arg(long, env = "CHORUS_DISCOVERY_INTERVAL", value_parser = humantime::parse_duration)]
    discovery_interval: Option<Duration>,
    /// Failure-detection timing.
    #[arg(long, env = "CHORUS_PROFILE", value_enum)]
    profile: Option<Profile>,
    /// Development mode: the demo page, and tokens for any name from /dev/token.
    /// Off unless asked for (`--dev-mode`, `--dev-mode true`, or the config).
    #[arg(long, env = "CHORUS_DEV_MODE", num_args = 0..=1, default_missing_value = "true")]
    dev_mode: Option<bool>,
    /// Allows dev mode while a token secret is set (its /dev/token tokens are then
    /// accepted by every node sharing the secret). Without it, dev mode with a
    /// token secret refuses to start.
    #[arg(
        long,
        env = "CHORUS_DEV_MODE_WITH_TOKEN_SECRET",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    dev_mode_with_token_secret: Option<bool>,
    /// A LongPoll session without a poll for this long ends (milliseconds).
    #[arg(long, env = "CHORUS_LONGPOLL_TIMEOUT_MS")]
    longpoll_timeout_ms: Option<u64>,
    /// Browser origins allowed to open sockets, comma-separated (empty: any).
    #[arg(long, env = "CHORUS_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// The live dashboard at /dashboard (needs CHORUS_API_KEY): `--dashboard false`
    /// turns it off (server.dashboard).
    #[arg(long, env = "CHORUS_DASHBOARD", num_args = 0..=1, default_missing_value = "true")]
    dashboard: Option<bool>,
    /// Messages kept per topic history (the same on every node).
    #[arg(long, env = "CHORUS_HISTORY_CAP")]
    history_cap: Option<usize>,
    /// History older than this is dropped, e.g. 10m, 24h, 7days (the same on
    /// every node).
    #[arg(long, env = "CHORUS_HISTORY_TTL", value_parser = humantime::parse_duration)]
    history_ttl: Option<Duration>,
    // -- [limits]: the server's edge --
    /// The HTTP request headers, a request body and a WebSocket upgrade must
    /// arrive within this many milliseconds (limits.handshake_timeout_ms).
    #[arg(long, env = "CHORUS_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// Most live client connections, and most TCP connections in their HTTP
    /// phase; beyond, 503 (limits.max_connections).
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// New connections per second from one client address; beyond, 429
    /// (limits.connection_rate; 0: none).
    #[arg(long, env = "CHORUS_CONNECTION_RATE")]
    connection_rate: Option<u32>,
    /// New connections one address may open in a burst (limits.connection_burst).
    #[arg(long, env = "CHORUS_CONNECTION_BURST")]
    connection_burst: Option<u32>,
    /// Networks connection_rate does not apply to, comma-separated CIDRs, e.g.
    /// a reverse proxy's (limits.connection_rate_exempt; default: loopback).
    #[arg(long, env = "CHORUS_CONNECTION_RATE_EXEMPT", value_delimiter = ',')]
    connection_rate_exempt: Option<Vec<ipnet::IpNet>>,
    // -- end of the server's edge --
    // -- [limits]: the node's memory --
    /// Most bytes of topic history this node holds; past it the oldest go
    /// first, on every node alike (limits.history_budget_bytes; 0: none).
    #[arg(long, env = "CHORUS_HISTORY_BUDGET_BYTES")]
    history_budget_bytes: Option<usize>,
    // -- end of the node's memory --
    // -- [server]: TLS for clients --
    /// PEM certificate chain: serve wss:// and https:// (server.tls_cert; with
    /// --tls-key). SIGHUP reloads it.
    #[arg(long, env = "CHORUS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (server.tls_key; with --tls-cert).
    #[arg(long, env = "CHORUS_TLS_KEY")]
    tls_key: Option<PathBuf>,
    // -- end of TLS for clients --
    /// Log format.
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    client_limits: ClientLimitArgs,
}

/// `[limits]` of one client (0 turns a limit off).
#[derive(Debug, Args)]
struct ClientLimitArgs {
    /// Frames per second one connection may send (limits.frame_rate).
    #[arg(long, env = "CHORUS_FRAME_RATE")]
    frame_rate: Option<u32>,
    /// Frames one connection may send in a burst (limits.frame_burst).
    #[arg(long, env = "CHORUS_FRAME_BURST")]
    frame_burst: Option<u32>,
    /// Bytes per second read from one WebSocket connection (limits.byte_rate).
    #[arg(long, env = "CHORUS_BYTE_RATE")]
    byte_rate: Option<u32>,
    /// Bytes one WebSocket connection may send in a burst (limits.byte_burst).
    #[arg(long, env = "CHORUS_BYTE_BURST")]
    byte_burst: Option<u32>,
    /// Publishes and presence updates per second per user on this node
    /// (limits.user_publish_rate).
    #[arg(long, env = "CHORUS_USER_PUBLISH_RATE")]
    user_publish_rate: Option<u32>,
    /// Publishes and presence updates per user in a burst (limits.user_publish_burst).
    #[arg(long, env = "CHORUS_USER_PUBLISH_BURST")]
    user_publish_burst: Option<u32>,
    /// Largest presence meta in bytes of JSON (limits.presence_meta_bytes).
    #[arg(long, env = "CHORUS_PRESENCE_META_BYTES")]
    presence_meta_bytes: Option<usize>,
    /// Presences per user per topic on this node (limits.presences_per_user_topic).
    #[arg(long, env = "CHORUS_PRESENCES_PER_USER_TOPIC")]
    presences_per_user_topic: Option<usize>,
    /// Deepest JSON nesting in a client payload or API body (limits.json_max_depth).
    #[arg(long, env = "CHORUS_JSON_MAX_DEPTH")]
    json_max_depth: Option<usize>,
    /// Longest JSON string in a client payload or API body, bytes (limits.json_max_string_bytes).
    #[arg(long, env = "CHORUS_JSON_MAX_STRING_BYTES")]
    json_max_string_bytes: Option<usize>,
}

impl ClientLimitArgs {
    /// Puts the flags and environment given over the file's `[limits]`.
    fn apply(&self, limits: &mut chorus_gateway::config::LimitsSection) {
        let set = |to: &mut u32, from: Option<u32>| *to = from.unwrap_or(*to);
        set(&mut limits.frame_rate, self.frame_rate);
        set(&mut limits.frame_burst, self.frame_burst);
        set(&mut limits.byte_rate, self.byte_rate);
        set(&mut limits.byte_burst, self.byte_burst);
        set(&mut limits.user_publish_rate, self.user_publish_rate);
        set(&mut limits.user_publish_burst, self.user_publish_burst);
        let set = |to: &mut usize, from: Option<usize>| *to = from.unwrap_or(*to);
        set(&mut limits.presence_meta_bytes, self.presence_meta_bytes);
        set(
            &mut limits.presences_per_user_topic,
            self.presences_per_user_topic,
        );
        set(&mut limits.json_max_depth, self.json_max_depth);
        set(
            &mut limits.json_max_string_bytes,
            self.json_max_string_bytes,
        );
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Organisation.
    #[arg(long)]
    org: Option<String>,
    /// Role.
    #[arg(long)]
    role: Option<String>,
    /// Teams, comma-separated.
    #[arg(long, value_delimiter = ',')]
    teams: Vec<String>,
    /// Friends (user ids), comma-separated.
    #[arg(long, value_delimiter = ',')]
    friends: Vec<String>,
    /// Lifetime, e.g. `1h`, `30m`, `7days`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

const CLUSTER_SECRET_ENV: &str = "CHORUS_CLUSTER_SECRET";
const TOKEN_SECRET_ENV: &str = "CHORUS_TOKEN_SECRET";
const API_KEY_ENV: &str = "CHORUS_API_KEY";
/// Shortest secret accepted, in bytes.
const MIN_SECRET: usize = 16;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.serve.log_format);
    let config = load_config(&cli.serve)?;
    match cli.command {
        Some(Command::Token(args)) => print_token(&config, args),
        Some(Command::Health(args)) => health(&config, &args),
        // `serve` (and so the accept loop) runs on this thread, not on a
        // worker: accepting takes no worker, and with `serve` spawned on one
        // an idle connection held 550-730 more bytes of resident memory
        // (BENCHMARKS.md, "The attacker's core and the descriptor table").
        None => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(serve(config)),
    }
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The config file (or the built-in one) with environment and flags on top.
fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default_config(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dev) = args.dev_mode {
        config.server.dev_mode = dev;
    }
    if let Some(allow) = args.dev_mode_with_token_secret {
        config.server.dev_mode_with_token_secret = allow;
    }
    // [limits]: the server's edge.
    let limits = &mut config.limits;
    if let Some(ms) = args.handshake_timeout_ms {
        limits.handshake_timeout_ms = ms;
    }
    if let Some(n) = args.max_connections {
        limits.max_connections = n;
    }
    if let Some(n) = args.connection_rate {
        limits.connection_rate = n;
    }
    if let Some(n) = args.connection_burst {
        limits.connection_burst = n;
    }
    if let Some(nets) = &args.connection_rate_exempt {
        limits.connection_rate_exempt.clone_from(nets);
    }
    if let Some(n) = args.history_budget_bytes {
        limits.history_budget_bytes = n;
    }
    // [server]: TLS for clients.
    if let Some(cert) = &args.tls_cert {
        config.server.tls_cert = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        config.server.tls_key = Some(key.clone());
    }
    if let Some(node) = &args.node {
        config.cluster.node.clone_from(node);
    }
    if let Some(gossip) = args.gossip {
        config.cluster.gossip = gossip;
    }
    if let Some(advertise) = args.advertise {
        config.cluster.advertise = Some(advertise);
    }
    if let Some(seeds) = &args.seeds {
        config.cluster.seeds.clone_from(seeds);
    }
    if let Some(interval) = args.discovery_interval {
        config.cluster.discovery_interval = interval;
    }
    if let Some(profile) = args.profile {
        config.cluster.profile = profile;
    }
    if let Some(ms) = args.longpoll_timeout_ms {
        config.server.longpoll_timeout_ms = ms;
    }
    if let Some(origins) = &args.allowed_origins {
        config.server.allowed_origins.clone_from(origins);
    }
    if let Some(on) = args.dashboard {
        config.server.dashboard = on;
    }
    if let Some(cap) = args.history_cap {
        config.cluster.history_cap = cap;
    }
    if let Some(ttl) = args.history_ttl {
        config.cluster.history_ttl = ttl;
    }
    args.client_limits.apply(&mut config.limits);
    if let Ok(secret) = std::env::var(TOKEN_SECRET_ENV) {
        config.auth.token_secret = Some(chorus_gateway::config::Secret::new(secret));
    }
    if let Ok(key) = std::env::var(API_KEY_ENV) {
        config.api.key = Some(chorus_gateway::config::Secret::new(key));
    }
    if let Ok(secret) = std::env::var(CLUSTER_SECRET_ENV) {
        config.cluster.secret = Some(chorus_gateway::config::Secret::new(secret));
    }
    let name = args
        .config
        .as_ref()
        .map_or("<built-in default config>".into(), |p| {
            p.display().to_string()
        });
    config
        .check()
        .map_err(|e| anyhow::anyhow!("{name} (with flags and environment): {e}"))?;
    Ok(config)
}

/// The token secret, checked; `None` when none is configured.
fn token_secret(config: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    match &config.auth.token_secret {
        Some(s) if s.expose().len() < MIN_SECRET => {
            bail!("the token secret must be at least {MIN_SECRET} bytes")
        }
        Some(s) => Ok(Some(s.expose().as_bytes().to_vec())),
        None => Ok(None),
    }
}

fn print_token(config: &Config, args: TokenArgs) -> anyhow::Result<()> {
    let Some(secret) = token_secret(config)? else {
        bail!("no token secret: set {TOKEN_SECRET_ENV} or auth.token_secret in the config");
    };
    let mut claims = Claims::new(args.sub, args.ttl);
    claims.name = args.name;
    claims.org = args.org;
    claims.role = args.role;
    claims.teams = args.teams;
    claims.friends = args.friends;
    let tokens = Tokens::new(&secret);
    let token = tokens.sign(&claims);
    tokens
        .verify(&token)
        .context("the token would be refused")?;
    println!("{token}");
    Ok(())
}

/// The key client tokens are checked (and, in dev mode, minted) with. Dev mode
/// never signs with a secret other nodes accept unless told so explicitly: with
/// a configured secret it refuses to start, without one it draws a random
/// per-process secret.
fn token_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    let dev = config.server.dev_mode;
    match token_secret(config)? {
        Some(_) if dev && !config.server.dev_mode_with_token_secret => bail!(
            "dev mode is on and a token secret is set ({TOKEN_SECRET_ENV} or auth.token_secret): \
             /dev/token would mint tokens for any name that every node sharing this secret accepts. \
             Unset the secret (dev mode then signs with a random per-process secret), turn dev mode off, \
             or, if that is really meant, add --dev-mode-with-token-secret (server.dev_mode_with_token_secret = true)"
        ),
        Some(secret) => {
            if dev {
                warn!("dev mode with the configured token secret (--dev-mode-with-token-secret): /dev/token tokens are accepted by every node sharing it");
            }
            Ok(secret)
        }
        None if dev => {
            warn!("{TOKEN_SECRET_ENV} not set: dev mode signs tokens with a random per-process secret (they work on this node only)");
            Ok(rand::random::<[u8; 32]>().to_vec())
        }
        None => bail!(
            "no token secret: set {TOKEN_SECRET_ENV} (or auth.token_secret) to the HS256 secret your backend signs client tokens with (or start a demo node with --dev-mode)"
        ),
    }
}

/// Raises the open-files soft limit to the hard limit (connections are files),
/// and says what it got.
fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            info!(limit, "open files limit (soft) raised to the hard limit");
            // Live connections, as many in their HTTP phase, the refused
            // ones held, and some for the rest.
            let wanted = (max_connections as u64)
                .saturating_mul(2)
                .saturating_add(chorus_gateway::server::MAX_HELD as u64 + 256);
            if limit < wanted {
                warn!(
                    limit,
                    max_connections,
                    "the open files limit is below 2 x limits.max_connections + 512: accepts may fail before the cap answers 503; lower the cap or raise the hard limit (ulimit -Hn)"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open files limit"),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let dev = config.server.dev_mode;
    let token_secret = token_key(&config)?;
    let tls = client_tls(&config)?;
    raise_fd_limit(config.limits.max_connections);
    let seeds = config.cluster.seeds.clone();
    // Static addresses go to the node as they are; names to DNS discovery.
    let (static_seeds, dns_seeds) = split_seeds(&seeds);
    let cluster_secret = match &config.cluster.secret {
        Some(s) if s.expose().len() < MIN_SECRET => {
            bail!("the cluster secret must be at least {MIN_SECRET} bytes")
        }
        Some(s) => s.expose().as_bytes().to_vec(),
        None if !seeds.is_empty() => bail!(
            "{CLUSTER_SECRET_ENV} must be set when seeds are given: every cluster member needs the same secret"
        ),
        None => {
            info!("{CLUSTER_SECRET_ENV} not set: single-node mode with a random secret (no peer can join)");
            rand::random::<[u8; 32]>().to_vec()
        }
    };
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_millis() as u64;
    let id = NodeId::new(config.cluster.node.as_str(), incarnation);
    let mut node = match config.cluster.profile {
        Profile::Lan => NodeConfig::lan(id.clone(), config.cluster.gossip),
        Profile::Phoenix => NodeConfig::phoenix(id.clone(), config.cluster.gossip),
    };
    node.seeds = static_seeds;
    node.rng_seed = rand::random();
    node.history_cap = config.cluster.history_cap;
    node.history_ttl = Some(config.cluster.history_ttl);
    node.history_budget = config.limits.history_budget();
    // [[webhooks]]: signed with CHORUS_WEBHOOK_SECRET; none configured, none run.
    let webhooks = webhook_settings(&config, node.down_after)?;
    let mut engine_config = EngineConfig::new(node, cluster_secret.clone());
    engine_config.advertise = config.cluster.advertise;
    engine_config.discovery.names = dns_seeds;
    engine_config.discovery.interval = config.cluster.discovery_interval;
    let engine = Engine::start(engine_config)
        .await
        .context("starting the cluster engine")?;
    let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
    info!(node = %id, gossip = %engine.local_addr(), ?seeds, "engine started");

    let app = App::new(&config, engine.records().clone());
    let router = app.router().context("building the channel router")?;
    let tokens = Tokens::new(&token_secret);
    let hooks = app
        .hooks(config.server.connect_hook.as_ref())
        .map_err(|e| anyhow::anyhow!("backend hooks: {e}"))?;
    let server_config = ServerConfig {
        dev_tokens: dev.then(|| tokens.clone()),
        // LongPoll session tokens must verify on every node: their key derives
        // from the cluster secret.
        longpoll_key: LongPollKey::derive(&cluster_secret),
        longpoll_timeout: Duration::from_millis(config.server.longpoll_timeout_ms),
        api_key: config.api.key.as_ref().map(|k| ApiKey::new(k.expose())),
        rooms: Some(app.clone()),
        allowed_origins: config.server.allowed_origins.clone(),
        // [limits]
        handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
        max_connections: config.limits.max_connections,
        connection_limits: config.limits.connections(),
        client_limits: config.limits.client(),
        limit_counter: app.limit_counter(),
        dashboard: config.server.dashboard,
        tls: tls.clone(),
        hooks,
        count_sockets: app.counts_sockets(),
        ..ServerConfig::default()
    };
    let listener = chorus_gateway::server::bind(config.server.listen)
        .with_context(|| format!("binding {}", config.server.listen))?;
    // The bound address: with port 0 (`--listen 127.0.0.1:0`) the system picks it.
    let listen = listener.local_addr().context("reading the bound address")?;
    let server = Server::new(engine.clone(), router, server_config)
        .with_authenticator(TokenAuth::new(tokens));
    webhooks::start(server.hub().clone(), webhooks)
        .await
        .context("starting the webhooks")?;
    let rooms: Vec<String> = app.rooms().into_iter().map(|(id, _)| id).collect();
    info!(
        ?rooms,
        topics = config.topic_rules().len(),
        "channels configured"
    );
    let (ws, http) = if tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    if dev {
        warn!("DEV MODE: GET /dev/token gives anyone a token for any name. Never run dev mode in production (drop --dev-mode, or set server.dev_mode = false).");
        info!("demo page: {http}://{listen}/");
    }
    if config.api.key.is_none() {
        info!("{API_KEY_ENV} not set: the HTTP API under /api and the dashboard are disabled");
    } else if config.server.dashboard {
        info!("dashboard: http://{listen}/dashboard (asks for the API key)");
    }
    if let Some(tls) = tls {
        tokio::spawn(reload_on_sighup(tls));
    }
    info!(%listen, "serving {ws}://{listen}/socket/websocket");
    // The engine may stop on its own (a panic, another process under our
    // node name): its clients are deaf from then on, and /healthz answers
    // 503. Drain the connections (1012: clients reconnect elsewhere) as on a
    // signal, then exit non-zero so a supervisor restarts the node.
    let (failed_tx, mut failed) = tokio::sync::oneshot::channel();
    let watched = server.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            e = watched.engine_failed() => {
                error!(error = %e, "the cluster engine failed: draining clients and exiting non-zero for a restart");
                let _ = failed_tx.send(e);
            }
        }
    };
    server.run(listener, stop).await?;
    info!("connections drained; leaving the cluster");
    if let Err(e) = engine.shutdown().await {
        warn!(error = %e, "engine shutdown failed");
    }
    if let Ok(e) = failed.try_recv() {
        return Err(e).context("exiting: the cluster engine failed");
    }
    Ok(())
}

/// The `[[webhooks]]` settings: an error if webhooks are configured and
/// `CHORUS_WEBHOOK_SECRET` is unset or empty (requests are always signed).
fn webhook_settings(config: &Config, down_after: Duration) -> anyhow::Result<webhooks::Settings> {
    let secret = match std::env::var(webhooks::SECRET_ENV) {
        Ok(s) if !s.is_empty() => s.into_bytes(),
        _ if config.webhooks.is_empty() => Vec::new(),
        _ => bail!(
            "{} must be set when [[webhooks]] are configured: every request is signed with it",
            webhooks::SECRET_ENV
        ),
    };
    if !config.webhooks.is_empty() {
        info!(webhooks = config.webhooks.len(), "webhooks configured");
    }
    Ok(webhooks::Settings {
        hooks: config.webhooks.clone(),
        secret,
        down_after,
    })
}

/// The `seeds` setting split into gossip addresses and DNS names.
fn split_seeds(seeds: &[Seed]) -> (Vec<SocketAddr>, Vec<DnsName>) {
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for seed in seeds {
        match seed {
            Seed::Addr(addr) => addrs.push(*addr),
            Seed::Dns(name) => names.push(name.clone()),
        }
    }
    (addrs, names)
}

/// The client TLS of `server.tls_cert` and `server.tls_key`, loaded and
/// checked; `None` without them. An unusable file stops startup, named.
fn client_tls(config: &Config) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let tls = ServerTls::load(files)
        .context("loading the TLS certificate (server.tls_cert, server.tls_key)")?;
    info!(cert = %cert.display(), key = %key.display(), "TLS on: serving wss:// and https://; SIGHUP reloads the certificate");
    Ok(Some(Arc::new(tls)))
}

/// Reloads the TLS certificate and key on every SIGHUP: new handshakes get
/// the new certificate, open connections stay; a bad file keeps the old one.
async fn reload_on_sighup(tls: Arc<ServerTls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(sig) => sig,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP: the TLS certificate will not be reloaded");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => {
                    info!(cert = %tls.files().cert.display(), "SIGHUP: TLS certificate reloaded")
                }
                Err(e) => {
                    error!(error = %e, "SIGHUP: TLS certificate not reloaded, the old one stays in use")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
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
