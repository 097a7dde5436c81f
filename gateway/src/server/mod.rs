//! The WebSocket and LongPoll server, shaped like mini-redis: [`Server::run`] takes a bound
//! listener and a shutdown future, accepts connections (a semaphore caps live
//! WebSocket connections), and gives every client one task owning its
//! [`Session`](crate::socket::Session) and its socket, with a bounded outbound
//! queue that the same task writes in batches.
//!
//! - [`http`]: the route table (`GET /healthz`, the endpoints below);
//! - [`transport`]: the client transports: the WebSocket handshake and connection
//!   task, LongPoll sessions and their forwarding between nodes, the origin check,
//!   and the driver that carries out a session's actions against the
//!   `Hub`;
//! - [`api`]: the HTTP API under `/api` (API key; broadcast, presence, disconnect,
//!   cluster, rooms and history through [`RoomStore`]; OpenAPI document);
//! - `health`: `GET /readyz`;
//! - [`metrics`]: `GET /metrics` (Prometheus text) and the live counters;
//! - [`dev`]: the demo page and `/dev/token` (dev mode only);
//! - [`dashboard`]: the live dashboard at `/dashboard` (API key) and the
//!   snapshot each node publishes for it;
//! - `shutdown`: stop accepting, close clients with 1012 in batches;
//! - [`tls`]: `wss://` and `https://` (a reloadable PEM certificate).
//!
//! The server hosts any [`Router`] of channels and never names the built-in ones.
//!
//! Not deterministic: this is the I/O layer around the sans-IO session.

pub mod api;
pub mod dashboard;
pub mod dev;
mod health;
pub mod http;
pub mod metrics;
mod shutdown;
pub mod tls;
pub mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_engine::runtime::EngineHandle;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, warn};

pub use crate::cluster::{Hub, HubError};
pub use crate::socket::{AllowAll, Authenticator, Denied, SocketInfo};
pub use api::ApiKey;
pub use health::{probe, READY_PATH};
pub use tls::{ServerTls, TlsError, TlsFiles};
pub use transport::close;
pub use transport::longpoll::LongPollKey;

use crate::channel::{RoomStore, Router};
use crate::hooks::Hooks;
use crate::limits::{
    ClientLimits, ConnectionLimiter, ConnectionLimits, ConnectionVerdict, LimitCounter,
};
use crate::socket::SessionConfig;
use crate::token::Tokens;
use metrics::{limit, Metrics};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Per-connection session settings (channel cap).
    pub session: SessionConfig,
    /// Bytes of frames queued for one client before it is closed as a slow
    /// consumer (1008).
    pub outbound_queue_bytes: usize,
    /// A connection with no incoming frame for this long is closed (1011).
    pub idle_timeout: Duration,
    /// Largest incoming frame or message; larger closes the connection (1009).
    pub max_frame_size: usize,
    /// Most live connections (WebSocket connections plus LongPoll sessions);
    /// beyond, a WebSocket handshake gets 503 and a new LongPoll session status 500.
    /// Also the most TCP connections still in their HTTP phase (before an
    /// upgrade): beyond, a new one gets 503 at once and is closed.
    pub max_connections: usize,
    /// New connections per client address, checked when a TCP connection is
    /// accepted and when a LongPoll session starts (but for the first on its
    /// connection, which the accept paid for): beyond, 429 and close
    /// (`limits.connection_rate`).
    pub connection_limits: ConnectionLimits,
    /// The headers of each HTTP request (the first, and the next on a kept-alive
    /// connection), each request body the server reads, and a WebSocket upgrade
    /// must arrive within this; else the connection is closed (a body: 408).
    pub handshake_timeout: Duration,
    /// Connections closed per batch on shutdown.
    pub drain_batch: usize,
    /// Pause between shutdown batches.
    pub drain_interval: Duration,
    /// How long shutdown waits for connections to finish after the last batch.
    pub drain_timeout: Duration,
    /// Browser origins allowed to open sockets (Phoenix's `check_origin`);
    /// empty: every origin. See [`transport::origin`].
    pub allowed_origins: Vec<String>,
    /// The rooms and history of the channels that keep them, for `/api/rooms`
    /// and `/api/history`; without it those routes answer 503.
    pub rooms: Option<Arc<dyn RoomStore>>,
    /// Dev mode: the demo page at `/` and `/dev/token`, minting tokens for any
    /// name with these keys. `None` (the default) in production.
    pub dev_tokens: Option<Tokens>,
    /// How long a LongPoll poll is held when nothing is waiting (then 204).
    pub longpoll_window: Duration,
    /// A LongPoll session ends when no poll is held and none arrived for this
    /// long (its channels close, its presences leave).
    pub longpoll_timeout: Duration,
    /// The key LongPoll session tokens are signed with: the same on every node of
    /// a cluster (see [`LongPollKey::derive`]), random by default.
    pub longpoll_key: LongPollKey,
    /// The key of the HTTP API under `/api`; `None` disables the API (its routes
    /// answer 503). Its `Debug` is redacted.
    pub api_key: Option<ApiKey>,
    /// What each client may send: frame rate, JSON shape of payloads (the
    /// JSON shape holds for HTTP API bodies too: beyond, 400 `json_limit_exceeded`).
    pub client_limits: ClientLimits,
    /// `chorus_limit_exceeded_total`: give the built-in channels' counter
    /// ([`App::limit_counter`](crate::builtin::App::limit_counter)) so their
    /// refusals show in `/metrics` too.
    pub limit_counter: LimitCounter,
    /// The live dashboard at `/dashboard` (see [`dashboard`]): on only with
    /// `api_key` too, whose key it needs. Off: `/dashboard` answers 404 and
    /// no snapshot is published.
    pub dashboard: bool,
    /// TLS for every connection (`wss://`, `https://`); `None`: plain. The TLS
    /// handshake counts against `handshake_timeout` and `max_connections` like
    /// the HTTP request headers that follow it.
    pub tls: Option<Arc<ServerTls>>,
    /// Backend hooks (connect, join, publish, rpc) and their counters, shown in
    /// `/metrics`; `None` (the default): no hooks.
    pub hooks: Option<Arc<Hooks>>,
    /// Track each connection that has a socket id in the presence topic
    /// [`topics::socket_topic`](crate::topics::socket_topic), so a channel can
    /// count a user's sockets across the cluster
    /// ([`ChannelContext::count_presence`](crate::channel::ChannelContext::count_presence);
    /// the built-in `push_sockets`). Each such connection is then a presence
    /// entry on every node; `false` saves that where nothing counts sockets.
    /// Default `true`.
    pub count_sockets: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::websocket(),
            outbound_queue_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(60),
            max_frame_size: 1 << 20,
            max_connections: 100_000,
            connection_limits: ConnectionLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            drain_batch: 10_000,
            drain_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            rooms: None,
            dev_tokens: None,
            longpoll_window: Duration::from_secs(10),
            longpoll_timeout: Duration::from_secs(15),
            longpoll_key: LongPollKey::random(),
            api_key: None,
            client_limits: ClientLimits::default(),
            limit_counter: LimitCounter::default(),
            dashboard: true,
            tls: None,
            hooks: None,
            count_sockets: true,
        }
    }
}

/// Server counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// WebSocket connections upgraded so far.
    pub connections: AtomicU64,
    /// LongPoll sessions started so far.
    pub longpoll_sessions: AtomicU64,
    /// Connections closed because their outbound queue filled up (1008).
    pub slow_consumers: AtomicU64,
    /// Connections closed for bad input (1002, 1007, 1009).
    pub protocol_errors: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) hub: Arc<Hub>,
    pub(crate) router: Arc<Router>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) config: ServerConfig,
    pub(crate) stats: ServerStats,
    pub(crate) metrics: Metrics,
    /// The HTTP API, when a key is configured.
    pub(crate) api: Option<api::Api>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) draining: AtomicBool,
    pub(crate) limit: Arc<Semaphore>,
    /// New connections per client address: TCP connections as they are
    /// accepted, LongPoll sessions as they start ([`Shared::charge_session`]).
    per_address: Mutex<ConnectionLimiter>,
    /// TCP connections in their HTTP phase (accepted, not upgraded, not closed).
    http_conns: AtomicUsize,
    pub(crate) longpoll: transport::longpoll::LongPoll,
    /// Live connections (and LongPoll sessions) and their drain signal.
    conns: Mutex<BTreeMap<u64, shutdown::Drain>>,
}

impl Shared {
    pub(crate) fn register(&self, conn: u64, drain: shutdown::Drain) {
        self.conns
            .lock()
            .expect("connection registry lock")
            .insert(conn, drain);
    }

    pub(crate) fn unregister(&self, conn: u64) {
        self.conns
            .lock()
            .expect("connection registry lock")
            .remove(&conn);
    }

    /// The verdict of `connection_rate` on a new connection from `ip` at `now`.
    fn check_address(&self, ip: IpAddr, now: Instant) -> ConnectionVerdict {
        self.per_address
            .lock()
            .expect("connection rate lock")
            .check(ip, now)
    }

    /// Charges a LongPoll session starting on the connection `peer` to its
    /// address's `connection_rate`, as a new connection: a session is what a
    /// WebSocket connection is, and one kept-alive connection can start one per
    /// request. The first session on a connection was paid for when the
    /// connection was accepted.
    pub(crate) fn charge_session(&self, peer: &Peer) -> ConnectionVerdict {
        if peer.accept_unspent.swap(false, Ordering::AcqRel) {
            return ConnectionVerdict::Accept;
        }
        self.check_address(peer.addr.ip(), Instant::now())
    }
}

/// The TCP connection a request came on.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// The connection's accept has not yet paid for a LongPoll session.
    accept_unspent: AtomicBool,
}

/// A Phoenix Channels server over one engine. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server routing joins with `router`, publishing through `engine`, accepting
    /// every connect ([`AllowAll`]) until [`Server::with_authenticator`].
    pub fn new(engine: EngineHandle, router: Router, config: ServerConfig) -> Self {
        let origin = rand::random::<u64>();
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let per_address = Mutex::new(ConnectionLimiter::new(config.connection_limits.clone()));
        let hub = Hub::new(engine, origin);
        let mut metrics = Metrics::new(hub.fanout_histogram().clone(), &config.limit_counter);
        if let Some(hooks) = &config.hooks {
            metrics.register_hooks(hooks.metrics());
        }
        let api = config.api_key.clone().map(api::Api::new);
        Self {
            shared: Arc::new(Shared {
                hub,
                router: Arc::new(router),
                auth: Arc::new(AllowAll),
                config,
                stats: ServerStats::default(),
                metrics,
                api,
                next_conn: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                limit,
                per_address,
                http_conns: AtomicUsize::new(0),
                longpoll: transport::longpoll::LongPoll::default(),
                conns: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Replaces the connect hook. Call before [`Server::run`].
    ///
    /// # Panics
    /// If the server was cloned or is running.
    pub fn with_authenticator(mut self, auth: impl Authenticator) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("set the authenticator before cloning or running the server")
            .auth = Arc::new(auth);
        self
    }

    /// The topic dispatcher, for server-side broadcasts.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.shared.hub
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// Live LongPoll sessions owned by this node.
    pub fn longpoll_session_count(&self) -> usize {
        self.shared.longpoll.session_count()
    }

    /// The live metrics (`GET /metrics` adds the engine's at scrape time).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Live connections: WebSocket connections and LongPoll sessions.
    pub fn connection_count(&self) -> usize {
        self.shared
            .conns
            .lock()
            .expect("connection registry lock")
            .len()
    }

    /// Resolves when the engine stops on its own (its task panicked or was
    /// aborted, or a newer process took this node's name), with why. From
    /// then on `/healthz` and `/readyz` answer 503 and clients are deaf:
    /// select on this in [`Server::run`]'s `shutdown` and exit non-zero (or
    /// start a new engine and server), as the `chorus` binary does.
    pub async fn engine_failed(&self) -> chorus_engine::runtime::RuntimeError {
        self.shared.hub.engine_failed().await
    }

    /// Serves `listener` until `shutdown` resolves, then stops accepting, closes
    /// every client with 1012 in batches and waits (bounded) for their tasks. The
    /// engine is left running: shut it down afterwards. An engine that fails
    /// meanwhile does not end this by itself: see [`Server::engine_failed`].
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        reserve_fd_table(&listener);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let forwarding = transport::longpoll::start(&self.shared).await;
        let listener_task = self.shared.api.as_ref().map(|api| {
            tokio::spawn(api::idempotency::listen(
                api.idempotency.clone(),
                self.shared.hub.clone(),
            ))
        });
        let dashboard = dashboard::start(&self.shared);
        let accepted = tokio::select! {
            res = self.accept_loop(&listener, &done_tx, &stop_rx) => res,
            _ = shutdown => Ok(()),
        };
        drop(listener);
        if let Some(task) = listener_task {
            task.abort();
        }
        if let Some(task) = dashboard {
            task.abort();
        }
        let _ = stop_tx.send(true);
        shutdown::drain(&self.shared).await;
        drop(done_tx);
        let waited = tokio::time::timeout(self.shared.config.drain_timeout, done_rx.recv()).await;
        if waited.is_err() {
            warn!(
                open = self.connection_count(),
                "shutdown: connections still open after the drain timeout"
            );
        }
        if let Some(forwarding) = forwarding {
            forwarding.abort();
        }
        accepted
    }

    async fn accept_loop(
        &self,
        listener: &TcpListener,
        done: &mpsc::Sender<()>,
        stop: &watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            debug!(%addr, "accepting connections");
        }
        // Connections taken since the loop last gave its worker up.
        let mut since_yield = 0usize;
        let mut held = Held::new(&self.shared.config.connection_limits);
        loop {
            // A burst of connections (a reconnect storm, or clients
            // reconnecting in loops past the most held) keeps the listener's
            // backlog full: without this the loop would take up to tokio's
            // task budget (128) in one go on its worker, and each connection
            // it lets in puts a task to set up in the run queue ahead of the
            // frames of the clients already connected. tokio resumes a
            // yielded task once its worker has run what was ready and looked
            // for I/O again, so those frames go first. (Off a worker, as in
            // the `chorus` binary, a yield returns at once.)
            if since_yield == ACCEPTS_PER_TURN {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = held.next_due() => {
                    held.close_oldest();
                    continue;
                }
            };
            since_yield += 1;
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: give back the held
                    // ones, back off, keep serving.
                    warn!(error = %e, "accept failed");
                    held.close_all();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let now = Instant::now();
            let verdict = self.shared.check_address(peer.ip(), now);
            if let ConnectionVerdict::Refuse { tell } = verdict {
                self.shared.metrics.limit_exceeded(limit::CONNECTION_RATE);
                if tell {
                    debug!(%peer, "refusing a connection: too many new ones from its address");
                    let counted = HttpConn::count(&self.shared);
                    self.refuse(stream, counted, TOO_MANY_FROM_ADDRESS);
                } else {
                    // Told already: held unanswered, then closed; nothing
                    // else is done with it.
                    held.hold(stream, now);
                }
                continue;
            }
            let _ = stream.set_nodelay(true);
            let counted = HttpConn::count(&self.shared);
            if counted.open > self.shared.config.max_connections {
                self.shared.metrics.limit_exceeded(limit::MAX_CONNECTIONS);
                debug!(%peer, "refusing a connection: too many in their HTTP phase");
                self.refuse(stream, counted, TOO_MANY_CONNECTIONS);
                continue;
            }
            tokio::spawn(serve_http(
                self.shared.clone(),
                stream,
                peer,
                done.clone(),
                stop.clone(),
                counted,
            ));
        }
    }

    /// Answers a refused connection with `answer` and closes it; over TLS the
    /// answer would need a handshake first, so it is closed at once instead.
    fn refuse(&self, stream: TcpStream, counted: HttpConn, answer: &'static [u8]) {
        if self.shared.config.tls.is_none() {
            tokio::spawn(refuse(stream, counted, answer));
        }
    }
}

/// One TCP connection counted in [`Shared::http_conns`] until dropped.
struct HttpConn {
    shared: Arc<Shared>,
    /// Connections in their HTTP phase, this one included, when it was accepted.
    open: usize,
}

impl HttpConn {
    fn count(shared: &Arc<Shared>) -> Self {
        let open = shared.http_conns.fetch_add(1, Ordering::AcqRel) + 1;
        Self {
            shared: shared.clone(),
            open,
        }
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.shared.http_conns.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections the kernel queues for the accept loop (the listen backlog);
/// past it, new connections' handshakes are dropped and their clients retry
/// a second later. tokio's `bind` asks for 128, which a few hundred clients
/// connecting at once overflow.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener on `addr` with a backlog of [`LISTEN_BACKLOG`] (the system
/// may cap it: `net.core.somaxconn`), for [`Server::run`].
///
/// # Panics
///
/// Outside a tokio runtime, as the listener registers with its reactor.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's `bind` does: a restarted node can listen again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Descriptors the process's table is grown to hold before the first
/// connection is accepted (less if the open-files soft limit is lower):
/// about half a MiB of table.
pub const FD_TABLE_RESERVE: u64 = 65_536;

/// Grows the process's file-descriptor table (Linux) to
/// [`FD_TABLE_RESERVE`] descriptors, or to the open-files soft limit if that
/// is lower, by duplicating `listener` to the highest of them and closing
/// the copy; once per process.
///
/// Linux doubles the table when a new descriptor does not fit, and in a
/// process with threads each doubling waits for an RCU grace period: 5-50 ms
/// on a small VM, during which the thread in `accept` and any other thread
/// opening a descriptor are stalled; with `Server::run` on a tokio worker,
/// so is the I/O that worker would have polled: a burst of 500 connections
/// to a fresh node went through three doublings and held other clients'
/// frames for up to 48 ms. The table never shrinks, so growing it once here,
/// before anyone is connected, keeps those waits out of a reconnect storm.
#[cfg(target_os = "linux")]
fn reserve_fd_table(listener: &TcpListener) {
    // Once per process: servers started side by side (tests, embeddings)
    // would otherwise each dup to the top, and one could find the other's
    // copy there and double the table again.
    static RESERVED: std::sync::Once = std::sync::Once::new();
    RESERVED.call_once(|| {
        let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
            return;
        };
        let top = soft.min(FD_TABLE_RESERVE).saturating_sub(1);
        let Ok(top) = i32::try_from(top) else {
            return;
        };
        // The lowest free descriptor at or above `top`: never one in use.
        match rustix::io::fcntl_dupfd_cloexec(listener, top) {
            Ok(copy) => {
                drop(copy);
                debug!(descriptors = top + 1, "file-descriptor table grown");
            }
            Err(e) => debug!(error = %e, "cannot grow the file-descriptor table"),
        }
    });
}

/// Elsewhere growing the table costs no such wait: nothing to do.
#[cfg(not(target_os = "linux"))]
fn reserve_fd_table(_listener: &TcpListener) {}

/// Connections the accept loop takes (lets in or refuses) before it yields
/// its worker.
const ACCEPTS_PER_TURN: usize = 16;

/// Most refused connections held at once; past it they are closed at once.
pub const MAX_HELD: usize = 256;

/// Connections past their address's `connection_rate` (told 429 already),
/// held unanswered until the address has earned one more connection
/// (`1 / connection_rate`: 20 ms by default, at most a second), then closed;
/// oldest first.
///
/// Closing a refused connection at once lets a client that reconnects in a
/// loop come straight back: one such loop made about 14,000 connections a
/// second, each an accept and a reset for the node, for the 50 a second it
/// was allowed. Held, its next try comes about when it may be accepted. A
/// client with many loops in parallel is held up to [`MAX_HELD`] connections
/// at a time; the rest are closed at once.
struct Held<S = TcpStream> {
    hold: Duration,
    queue: std::collections::VecDeque<(Instant, S)>,
}

impl<S> Held<S> {
    fn new(limits: &ConnectionLimits) -> Self {
        let hold = match limits.rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs(1) / rate,
        };
        Self {
            hold,
            queue: Default::default(),
        }
    }

    /// Holds `stream` from `now` for the hold, or drops (closes) it at once
    /// when [`MAX_HELD`] are held already.
    fn hold(&mut self, stream: S, now: Instant) {
        if self.queue.len() < MAX_HELD {
            self.queue.push_back((now + self.hold, stream));
        }
    }

    /// Resolves when the oldest held connection is due to be closed; never
    /// while none is held.
    async fn next_due(&self) {
        match self.queue.front() {
            Some((due, _)) => tokio::time::sleep_until((*due).into()).await,
            None => std::future::pending().await,
        }
    }

    fn close_oldest(&mut self) {
        self.queue.pop_front();
    }

    fn close_all(&mut self) {
        self.queue.clear();
    }
}

/// The answer to a connection over the cap, written before any request is read.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// The answer to a connection over its address's `connection_rate`, written
/// before any request is read.
const TOO_MANY_FROM_ADDRESS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 39\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from your address\n";

/// [`TOO_MANY_FROM_ADDRESS`] as the answer to a request on a connection
/// already accepted (a LongPoll session started past the rate): the same
/// status, headers and body, and the connection is closed after it, so the
/// client's next try is a new connection, held to the rate by the accept loop.
pub(crate) fn too_many_from_address() -> hyper::Response<http::HttpBody> {
    let mut response = http::text(
        hyper::StatusCode::TOO_MANY_REQUESTS,
        "too many connections from your address\n",
    );
    let headers = response.headers_mut();
    headers.insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    headers.insert(
        "connection",
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

/// Most time a refused connection is kept to deliver its 503: the client's
/// request is read (and dropped) until it closes, so that closing does not reset
/// the connection before the client has read the answer.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// Answers a refused connection with `answer` and closes it.
async fn refuse(mut stream: TcpStream, counted: HttpConn, answer: &'static [u8]) {
    let linger = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, linger).await;
    drop(counted);
}

/// Serves one TCP connection: its TLS handshake if TLS is on (within the
/// handshake timeout: a client that never finishes it cannot hold a
/// descriptor), then its HTTP requests.
async fn serve_http(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    done: mpsc::Sender<()>,
    stop: watch::Receiver<bool>,
    counted: HttpConn,
) {
    let Some(tls) = shared.config.tls.clone() else {
        return serve_requests(shared, stream, peer, done, stop, counted).await;
    };
    let timeout = shared.config.handshake_timeout;
    let mut stopping = stop.clone();
    let handshake = tokio::time::timeout(timeout, tls.acceptor().accept(stream));
    let res = tokio::select! {
        res = handshake => res,
        // Shutting down: a handshake still under way is dropped.
        _ = async { let _ = stopping.wait_for(|stopped| *stopped).await; } => return,
    };
    match res {
        Ok(Ok(stream)) => serve_requests(shared, stream, peer, done, stop, counted).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            shared.metrics.limit_exceeded(limit::HANDSHAKE_TIMEOUT);
            debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Serves one connection's HTTP requests until it upgrades or closes.
async fn serve_requests<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    done: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
    counted: HttpConn,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics_shared = shared.clone();
    let timeout = shared.config.handshake_timeout;
    let peer = Arc::new(Peer {
        addr: peer,
        accept_unspent: AtomicBool::new(true),
    });
    let conn_peer = peer.clone();
    let service =
        service_fn(move |req| http::handle(req, shared.clone(), done.clone(), conn_peer.clone()));
    // Every request's headers (and the next one's on a kept-alive connection)
    // must arrive within the handshake timeout, or hyper closes the connection:
    // a client that never finishes its request cannot hold a descriptor.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                if e.is_timeout() {
                    metrics_shared.metrics.limit_exceeded(limit::HANDSHAKE_TIMEOUT);
                }
                debug!(peer = %peer.addr, error = %e, "http connection error");
            }
        }
        _ = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
    drop(counted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refused_connections_are_held_one_connections_time_oldest_first_at_most_max_held() {
        let limits = ConnectionLimits {
            rate: 4,
            ..ConnectionLimits::default()
        };
        let hold = Duration::from_millis(250);
        let mut held = Held::new(&limits);
        let now = Instant::now();
        for i in 0..MAX_HELD + 10 {
            held.hold(i, now + Duration::from_millis(i as u64));
        }
        assert_eq!(held.queue.len(), MAX_HELD, "past MAX_HELD, closed at once");
        held.next_due().await;
        assert!(tokio::time::Instant::now().into_std() >= now + hold);
        held.close_oldest();
        assert_eq!(held.queue.front().map(|(_, i)| *i), Some(1));
        held.next_due().await;
        assert!(tokio::time::Instant::now().into_std() >= now + hold + Duration::from_millis(1));
        let none = Held::<usize>::new(&limits);
        let waited = tokio::time::timeout(Duration::from_secs(3600), none.next_due()).await;
        assert!(waited.is_err(), "nothing held, nothing due");
    }

    /// The table is grown before the first connection: `FDSize` in
    /// `/proc/self/status` is the number of descriptors it holds.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_descriptor_table_is_grown_before_connections_come() {
        let fd_size = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("FDSize:"))
                .and_then(|n| n.trim().parse().ok())
                .expect("an FDSize line")
        };
        // Read first: limits only rise (another test may raise them), and
        // the table is grown to the limit it finds, at least this one.
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        let wanted = soft.min(FD_TABLE_RESERVE);
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        reserve_fd_table(&listener);
        let size = fd_size();
        assert!(size >= wanted, "FDSize {size}, wanted {wanted}");
        let copy = format!("/proc/self/fd/{}", wanted - 1);
        assert!(
            !std::path::Path::new(&copy).exists(),
            "the copy made to grow it is closed again"
        );
    }
}
