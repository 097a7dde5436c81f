//! A server on 127.0.0.1:0 with its own engine, and a raw WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use chorus_engine::runtime::{Engine, EngineConfig, EngineHandle};
use chorus_engine::{NodeConfig, NodeId};
use chorus_gateway::demo::demo_router;
use chorus_gateway::server::{self, Authenticator, Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"gateway-test-secret-0123456789";
/// How long a test waits for any one expected frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// One node: an engine and a server.
pub struct Node {
    pub addr: SocketAddr,
    pub server: Server,
    pub engine: EngineHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The engine's and the server's own runtimes, if they have them
    /// ([`NodeBuilder::engine_thread`], [`NodeBuilder::server_thread`]).
    _runtimes: Runtimes,
}

/// Runtimes of a node's own: shut down without blocking when dropped (a
/// test's runtime may not block).
#[derive(Default)]
struct Runtimes(Vec<tokio::runtime::Runtime>);

impl Drop for Runtimes {
    fn drop(&mut self) {
        for rt in self.0.drain(..) {
            rt.shutdown_background();
        }
    }
}

/// A runtime with one worker thread.
fn one_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

pub struct NodeBuilder {
    config: ServerConfig,
    seeds: Vec<SocketAddr>,
    name: String,
    auth: Option<Box<dyn FnOnce(Server) -> Server>>,
    /// Configured channels: built on the engine's records once it runs.
    app: Option<chorus_gateway::config::Config>,
    engine_thread: bool,
    server_thread: bool,
}

impl NodeBuilder {
    pub fn new() -> Self {
        Self {
            config: ServerConfig::default(),
            seeds: Vec::new(),
            name: "test".into(),
            auth: None,
            app: None,
            engine_thread: false,
            server_thread: false,
        }
    }

    /// Runs the server (its connections, the hub's dispatchers) on a thread
    /// of its own (a one-worker runtime): the node has one core's worth of
    /// time for its clients, whatever the test's other tasks do.
    #[allow(dead_code)]
    pub fn server_thread(mut self) -> Self {
        self.server_thread = true;
        self
    }

    /// Runs the engine's node task on a thread of its own (a one-worker
    /// runtime), as an embedding application may, instead of sharing the
    /// test's workers with the server's tasks.
    #[allow(dead_code)]
    pub fn engine_thread(mut self) -> Self {
        self.engine_thread = true;
        self
    }

    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    pub fn seeds(mut self, name: &str, seeds: Vec<SocketAddr>) -> Self {
        self.name = name.into();
        self.seeds = seeds;
        self
    }

    /// Serves the configured channels of `config` (rooms, history) and hands
    /// their state to the API. (Used by the API tests, which share this file.)
    #[allow(dead_code)]
    pub fn app(mut self, config: chorus_gateway::config::Config) -> Self {
        self.app = Some(config);
        self
    }

    pub fn auth(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Box::new(move |server: Server| {
            server.with_authenticator(auth)
        }));
        self
    }

    pub async fn start(self) -> anyhow::Result<Node> {
        let gossip: SocketAddr = "127.0.0.1:0".parse()?;
        let mut node = NodeConfig::lan(NodeId::new(self.name.as_str(), 1), gossip);
        node.seeds = self.seeds;
        node.rng_seed = rand::random();
        if let Some(app) = &self.app {
            // As the `chorus` binary does.
            node.history_cap = app.cluster.history_cap;
            node.history_ttl = Some(app.cluster.history_ttl);
            node.history_budget = app.limits.history_budget();
        }
        let engine_config = EngineConfig::new(node, SECRET);
        let mut runtimes = Runtimes::default();
        let engine = if self.engine_thread {
            let rt = one_thread()?;
            let engine = rt.spawn(Engine::start(engine_config)).await??;
            runtimes.0.push(rt);
            engine
        } else {
            Engine::start(engine_config).await?
        };
        let server_rt = if self.server_thread {
            Some(one_thread()?)
        } else {
            None
        };
        let listener = match &server_rt {
            // Registered with the runtime that serves it.
            Some(rt) => {
                rt.spawn(async { server::bind(([127, 0, 0, 1], 0).into()) })
                    .await??
            }
            None => server::bind(([127, 0, 0, 1], 0).into())?,
        };
        let addr = listener.local_addr()?;
        let mut config = self.config;
        let router = match &self.app {
            Some(app_config) => {
                let app = chorus_gateway::builtin::App::new(app_config, engine.records().clone());
                config.rooms = Some(app.clone());
                config.limit_counter = app.limit_counter();
                config.hooks = app
                    .hooks(app_config.server.connect_hook.as_ref())
                    .map_err(|e| anyhow!(e))?;
                app.router()?
            }
            None => demo_router()?,
        };
        let mut server = Server::new(engine.clone(), router, config);
        if let Some(auth) = self.auth {
            server = auth(server);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let running = server.clone();
        let serve = async move {
            running
                .run(listener, async move {
                    let _ = stopped.await;
                })
                .await
        };
        let task = match server_rt {
            Some(rt) => {
                let task = rt.spawn(serve);
                runtimes.0.push(rt);
                task
            }
            None => tokio::spawn(serve),
        };
        Ok(Node {
            addr,
            server,
            engine,
            stop: Some(stop),
            task: Some(task),
            _runtimes: runtimes,
        })
    }
}

impl Node {
    pub async fn start() -> anyhow::Result<Node> {
        NodeBuilder::new().start().await
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{query}", self.addr)
    }

    pub async fn client(&self, query: &str) -> anyhow::Result<Client> {
        Client::connect(&self.url(query)).await
    }

    /// Stops the server (closing clients with 1012) and the engine.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(Duration::from_secs(15), task).await???;
        }
        self.engine.shutdown().await?;
        Ok(())
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw Phoenix client: frames in and out, nothing hidden.
pub struct Client {
    pub ws: Ws,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Code(u16),
    /// The socket closed without a close frame (reset or EOF).
    Abrupt,
}

impl Client {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request()?).await?;
        Ok(Self { ws })
    }

    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await?;
        Ok(())
    }

    /// The next data frame (text or binary).
    pub async fn recv(&mut self) -> anyhow::Result<Message> {
        loop {
            let msg = timeout(WAIT, self.ws.next())
                .await
                .context("timed out waiting for a frame")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match msg {
                Message::Text(_) | Message::Binary(_) | Message::Close(_) => return Ok(msg),
                _ => continue,
            }
        }
    }

    /// The next text frame, as text.
    pub async fn recv_text(&mut self) -> anyhow::Result<String> {
        match self.recv().await? {
            Message::Text(text) => Ok(text.as_str().to_owned()),
            other => bail!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame, parsed; `presence_diff` broadcasts are skipped when
    /// `skip_diffs`.
    pub async fn recv_json(&mut self, skip_diffs: bool) -> anyhow::Result<Value> {
        loop {
            let value: Value = serde_json::from_str(&self.recv_text().await?)?;
            if skip_diffs && value.get(3) == Some(&Value::from("presence_diff")) {
                continue;
            }
            return Ok(value);
        }
    }

    /// The next frame with `event` (v2 arrays), skipping others.
    pub async fn recv_event(&mut self, event: &str) -> anyhow::Result<Value> {
        loop {
            let value: Value = serde_json::from_str(&self.recv_text().await?)?;
            if value.get(3) == Some(&Value::from(event)) {
                return Ok(value);
            }
        }
    }

    /// Joins `topic` with `join_ref` and returns the reply, skipping nothing else
    /// (the reply is always the first frame of a join).
    pub async fn join(
        &mut self,
        join_ref: &str,
        topic: &str,
        payload: &str,
    ) -> anyhow::Result<Value> {
        self.send(&format!(
            r#"["{join_ref}","{join_ref}","{topic}","phx_join",{payload}]"#
        ))
        .await?;
        self.recv_json(true).await
    }

    /// Reads until the connection ends; how it ended.
    pub async fn ended(&mut self) -> anyhow::Result<Ended> {
        loop {
            match timeout(Duration::from_secs(20), self.ws.next())
                .await
                .context("timed out waiting for the connection to end")?
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok(Ended::Code(u16::from(frame.code)))
                }
                Some(Ok(Message::Close(None))) => {
                    return Ok(Ended::Code(u16::from(CloseCode::Status)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Ended::Abrupt),
            }
        }
    }

    /// Pings on a joined `topic` and expects the echo reply: the connection works.
    pub async fn assert_alive(&mut self, join_ref: &str, topic: &str) -> anyhow::Result<()> {
        self.send(&format!(
            r#"["{join_ref}","99","{topic}","ping",{{"alive":true}}]"#
        ))
        .await?;
        loop {
            let v = self.recv_json(true).await?;
            if v[1] == "99" {
                assert_eq!(
                    v,
                    serde_json::json!([join_ref, "99", topic, "phx_reply", {"status": "ok", "response": {"alive": true}}])
                );
                return Ok(());
            }
        }
    }
}

/// Retries `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
