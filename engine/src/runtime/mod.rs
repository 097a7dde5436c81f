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
//! - peers prove the cluster secret before any gossip (see [`auth`]);
//! - `dns:` seeds are resolved and re-resolved by a task of the node task
//!   (see [`discovery`]), which hands the addresses to the node.
//!
//! Built only with the `runtime` feature (on by default); the core builds
//! without tokio or quinn.

pub mod auth;
pub mod credit;
pub mod discovery;
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

pub use discovery::{Discovery, DnsName, Resolver, Seed, SeedError, SystemResolver};
pub use records::RecordsReader;

use handle::TaskState;
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
    /// DNS names whose addresses are joined through too, re-resolved
    /// periodically (see [`discovery`]); none by default.
    pub discovery: Discovery,
    /// Deliveries buffered per subscriber before it is dropped as too slow.
    pub subscriber_queue: usize,
    /// Bytes of stream frames queued per peer before more are dropped
    /// (datagrams do not count: they go out at once).
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
            discovery: Discovery::default(),
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
            .field("discovery", &self.discovery)
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
    /// The engine's task ended abnormally: it panicked (a bug in Chorus) or
    /// was aborted ([`EngineHandle::abort`]). Nothing it held survives: the
    /// process should exit (or start a new engine) so peers and clients
    /// recover.
    #[error("the cluster engine failed: {0}")]
    Crashed(String),
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
        let (state_tx, state) = tokio::sync::watch::channel(TaskState::Running);
        let state_tx = Arc::new(state_tx);
        let driver = driver::NodeDriver::new(
            node,
            &config,
            endpoint,
            requests_rx,
            drops_rx,
            state_tx.clone(),
        );
        let shared = Arc::new(handle::HandleShared {
            id,
            addr,
            seeds: config.seeds.clone(),
            requests,
            drops,
            records: driver.records(),
            held: driver.held(),
            subscriber_queue: config.subscriber_queue,
            task: Mutex::new(None),
            state,
        });
        let span = tracing::debug_span!("node", id = %shared.id);
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        *shared.task.lock().expect("fresh lock") = Some(task.abort_handle());
        tokio::spawn(watch_end(task, state_tx));
        Ok(EngineHandle { shared })
    }
}

/// Awaits the node task's end and publishes how it ended: `Stopped` after a
/// shutdown, `Crashed` after a panic or an abort (a name clash, set by the
/// task itself, stays). Handles see it through [`EngineHandle::failed`].
async fn watch_end(
    task: tokio::task::JoinHandle<()>,
    state: Arc<tokio::sync::watch::Sender<TaskState>>,
) {
    let end = match task.await {
        Ok(()) => TaskState::Stopped,
        Err(e) if e.is_panic() => {
            let why = panic_message(e.into_panic().as_ref());
            tracing::error!(panic = %why, "the engine's node task panicked: the engine is down");
            TaskState::Crashed(format!("the node task panicked: {why}"))
        }
        Err(_) => TaskState::Crashed("the node task was aborted".into()),
    };
    state.send_modify(|s| {
        if !matches!(s, TaskState::Clash(_)) {
            *s = end;
        }
    });
}

/// The text a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeConfig, NodeId};

    async fn start() -> EngineHandle {
        let node = NodeConfig::lan(NodeId::new("n1", 1), "127.0.0.1:0".parse().unwrap());
        Engine::start(EngineConfig::new(node, *b"unit-test-cluster-secret"))
            .await
            .unwrap()
    }

    /// A panic in the node task (a bug) is not silent: `failed` resolves with
    /// `Crashed` and the panic's text, the handle reports it without waiting,
    /// and every call answers `Stopped` instead of hanging or pretending.
    #[tokio::test]
    async fn a_panicking_node_task_is_reported_as_failed() {
        let engine = start().await;
        assert!(engine.is_running());
        assert!(engine.failure().is_none());
        handle::inject_panic(&engine).await;
        let err = tokio::time::timeout(Duration::from_secs(5), engine.failed())
            .await
            .expect("failed() resolves after a panic");
        assert!(
            matches!(&err, RuntimeError::Crashed(why) if why.contains("panic injected by a test")),
            "{err}"
        );
        assert!(!engine.is_running());
        assert!(matches!(engine.failure(), Some(RuntimeError::Crashed(_))));
        assert!(matches!(
            engine.publish("t", bytes::Bytes::from_static(b"x")).await,
            Err(RuntimeError::Stopped)
        ));
        assert!(matches!(
            engine.subscribe("t").await,
            Err(RuntimeError::Stopped)
        ));
        // Shutting a failed engine down is not an error.
        engine.shutdown().await.unwrap();
    }

    /// `abort` (a crash for tests and fault injection) is a failure too.
    #[tokio::test]
    async fn an_aborted_engine_is_reported_as_failed() {
        let engine = start().await;
        engine.abort();
        let err = tokio::time::timeout(Duration::from_secs(5), engine.failed())
            .await
            .expect("failed() resolves after an abort");
        assert!(
            matches!(&err, RuntimeError::Crashed(why) if why.contains("aborted")),
            "{err}"
        );
        assert!(!engine.is_running());
    }

    /// An ordinary shutdown is not a failure: `failed` stays pending.
    #[tokio::test]
    async fn a_shut_down_engine_has_not_failed() {
        let engine = start().await;
        engine.shutdown().await.unwrap();
        let other = engine.clone();
        let stopped = tokio::time::timeout(Duration::from_secs(5), async move {
            while other.is_running() {
                tokio::task::yield_now().await;
            }
        });
        stopped
            .await
            .expect("the state leaves Running after a shutdown");
        assert!(engine.failure().is_none());
        let pending = tokio::time::timeout(Duration::from_millis(200), engine.failed()).await;
        assert!(pending.is_err(), "failed() resolved after a shutdown");
    }
}
