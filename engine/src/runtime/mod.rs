//! The tokio + quinn driver of [`Node`](crate::Node): one task owns the node,
//! QUIC connections carry its messages to peers, and an [`EngineHandle`] gives
//! the gateway (or any Rust user) subscribe, publish and presence calls.
//!
//! Not deterministic: this is the part that reads the clock and touches
//! sockets. Everything it decides is delegated to the sans-IO node; the runtime
//! only moves inputs in and outputs out:
//!
//! - the node task `select!`s over requests from handles, decoded messages and
//!   connection events from connection tasks, and a sleep until
//!   [`Node::poll_timeout`](crate::Node::poll_timeout); after each input it
//!   drains `poll_transmit` into per-peer queues and `poll_event` into
//!   subscriber queues;
//! - every connection has its own task (see [`transport`]), so nothing the node
//!   task does waits on the network or on a subscriber;
//! - peers prove the cluster secret before any gossip (see [`auth`]).
//!
//! Built only with the `runtime` feature (on by default); the core builds
//! without tokio or quinn.

pub mod auth;
mod driver;
mod handle;
mod records;
pub mod tls;
pub mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub use records::RecordsReader;

pub use handle::{
    Delivery, EngineHandle, MemberInfo, PeerStats, PublishReceipt, RuntimeStats, Subscription,
};

use crate::node::{CommandError, NodeConfig};

/// Shortest cluster secret accepted, in bytes (see [`auth`] on guessing).
pub const MIN_SECRET_LEN: usize = 16;

/// Everything needed to start an engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// The node's identity, timing and sizing. Its `addr` and `seeds` are
    /// replaced by [`EngineConfig::advertise`] (or the bound address) and
    /// [`EngineConfig::seeds`].
    pub node: NodeConfig,
    /// The cluster secret (`CHORUS_CLUSTER_SECRET`), at least
    /// [`MIN_SECRET_LEN`] bytes; every member must hold the same.
    pub secret: Vec<u8>,
    /// The UDP address to bind for gossip; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The address peers should dial; defaults to the bound address, which
    /// must then not be unspecified (`0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// Gossip addresses of nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// Deliveries buffered per subscriber before it is dropped as too slow.
    pub subscriber_queue: usize,
    /// Bytes queued per peer before frames to it are dropped.
    pub peer_queue_bytes: usize,
    /// Time for a connection to complete QUIC and the secret proof.
    pub auth_timeout: Duration,
}

impl EngineConfig {
    /// A configuration binding `node.addr` and joining through `node.seeds`,
    /// with default queue sizes.
    pub fn new(node: NodeConfig, secret: impl Into<Vec<u8>>) -> Self {
        EngineConfig {
            bind: node.addr,
            seeds: node.seeds.clone(),
            node,
            secret: secret.into(),
            advertise: None,
            subscriber_queue: 1024,
            peer_queue_bytes: 16 << 20,
            auth_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("node", &self.node)
            .field("secret", &"<redacted>")
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("subscriber_queue", &self.subscriber_queue)
            .field("peer_queue_bytes", &self.peer_queue_bytes)
            .field("auth_timeout", &self.auth_timeout)
            .finish()
    }
}

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The cluster secret is shorter than [`MIN_SECRET_LEN`].
    #[error("the cluster secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The gossip socket could not be bound.
    #[error("cannot bind the gossip endpoint: {0}")]
    Bind(#[from] std::io::Error),
    /// TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The node refused the command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Stopped,
    /// Another process runs under this node's name, with a newer
    /// incarnation (two processes started with the same `--node`): this one,
    /// the older, left the cluster and stopped. See SECURITY.md.
    #[error("another process runs under node name {:?} ({other}, newer than this {me}): this one stopped; give each process its own --node", me.name.as_str())]
    NameClash {
        /// This engine's node id.
        me: crate::NodeId,
        /// The newer incarnation that replaced it.
        other: crate::NodeId,
    },
    /// The node answered with an outcome the call does not expect (a bug).
    #[error("unexpected outcome {0}")]
    Unexpected(String),
}

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Binds the gossip endpoint, spawns the node task on the current tokio
    /// runtime and returns its handle. The node announces itself to its seeds
    /// at once.
    pub async fn start(config: EngineConfig) -> Result<EngineHandle, RuntimeError> {
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(RuntimeError::WeakSecret);
        }
        if config.node.id.name.is_empty() || config.node.id.name.len() > crate::codec::MAX_NAME {
            return Err(RuntimeError::Config("node names are 1 to 255 bytes"));
        }
        if config.subscriber_queue == 0 {
            return Err(RuntimeError::Config("subscriber_queue must be positive"));
        }
        let transport = transport::transport_config();
        let server = tls::server_config(transport.clone())?;
        let client = tls::client_config(transport)?;
        let mut endpoint = quinn::Endpoint::server(server, config.bind)?;
        endpoint.set_default_client_config(client);
        let bound = endpoint.local_addr()?;
        let addr = config.advertise.unwrap_or(bound);
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(RuntimeError::Config(
                "the gossip address to advertise is unspecified: set `advertise`",
            ));
        }
        let mut node = config.node.clone();
        node.addr = addr;
        node.seeds = config.seeds.clone();
        let (requests, requests_rx) = mpsc::channel(1024);
        let (drops, drops_rx) = mpsc::unbounded_channel();
        let id = node.id.clone();
        let (clash_tx, clash) = tokio::sync::watch::channel(None);
        let driver =
            driver::NodeDriver::new(node, &config, endpoint, requests_rx, drops_rx, clash_tx);
        let shared = Arc::new(handle::HandleShared {
            id,
            addr,
            seeds: config.seeds.clone(),
            requests,
            drops,
            records: driver.records(),
            subscriber_queue: config.subscriber_queue,
            task: Mutex::new(None),
            clash,
        });
        let span = tracing::debug_span!("node", id = %shared.id);
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        *shared.task.lock().expect("fresh lock") = Some(task.abort_handle());
        Ok(EngineHandle { shared })
    }
}
