//! One WebSocket client: a task that owns its [`Session`], reads frames, executes the
//! session's [`Action`]s against the engine, and a writer task that owns the socket's
//! sink and writes queued frames in batches (several frames fed, then one flush).
//!
//! Everything queued for the client (replies, pushes, broadcasts handed over by the
//! [`Hub`]) is charged to one byte [`Budget`] (default 1 MiB). A client that stops
//! reading exhausts it and is closed with 1008; the others never wait for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chorus_engine::{ConnId, Meta};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use super::hub::{entries, Budget, Hub, Inbound, Mailbox};
use super::metrics::{Transport, TransportMetrics};
use super::Shared;
use crate::protocol::{decode_binary, decode_text, FrameError, OutFrame, Ref};
use crate::socket::{Action, Session};

/// Close codes the server uses; never 1000, so phoenix.js reconnects (PROTOCOL §1.5).
pub mod close {
    /// Disconnected by socket id.
    pub const DISCONNECTED: u16 = 1001;
    /// A frame that does not decode (malformed JSON, not a 5-array, …).
    pub const INVALID_FRAME: u16 = 1007;
    /// The client stopped reading: its outbound queue is full.
    pub const SLOW_CONSUMER: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// A WebSocket protocol violation.
    pub const PROTOCOL: u16 = 1002;
    /// No frame received for the idle timeout, or the engine failed.
    pub const SERVER_ERROR: u16 = 1011;
    /// The server is shutting down or restarting: reconnect elsewhere.
    pub const RESTART: u16 = 1012;
}

/// How a connection ends.
#[derive(Debug)]
enum Exit {
    /// Write what is queued, then close with this code.
    Close(u16, &'static str),
    /// The client is not reading: close at once with 1008.
    SlowConsumer,
    /// The client closed or the socket failed: nothing more to send.
    Gone,
}

/// One input of the connection task.
enum Event {
    Drain,
    Overflow,
    Inbound(Option<Inbound>),
    Frame(Option<Result<Message, WsError>>),
    Idle,
}

/// What the writer task receives, in order.
enum Outbound {
    Frame(OutFrame, usize),
    Close(CloseFrame),
}

pub(crate) struct Connection {
    conn: u64,
    session: Session,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    writer: mpsc::UnboundedSender<Outbound>,
    /// Local subscriptions held in the hub, with counts.
    subscribed: BTreeMap<String, usize>,
    /// Presence keys tracked per topic, by join.
    tracked: HashMap<String, (Ref, BTreeSet<String>)>,
    tracked_any: bool,
    metrics: TransportMetrics,
}

impl Connection {
    /// Serves one upgraded socket until it closes.
    pub(crate) async fn run<S>(
        shared: Arc<Shared>,
        conn: u64,
        session: Session,
        ws: WebSocketStream<S>,
        drain: Arc<Notify>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = shared.metrics.transport(Transport::WebSocket);
        metrics.connections.inc();
        metrics.connections_opened.inc();
        let (sink, mut stream) = ws.split();
        let budget = Arc::new(Budget::new(shared.config.outbound_queue_bytes));
        let (tx, inbox) = mpsc::unbounded_channel();
        let (writer, writer_rx) = mpsc::unbounded_channel();
        let (kill, kill_rx) = oneshot::channel();
        let writer_task = tokio::spawn(write_loop(
            sink,
            writer_rx,
            kill_rx,
            budget.clone(),
            shared.config.write_batch,
        ));
        let mailbox = Mailbox {
            conn,
            vsn: session.vsn(),
            binary_frames: true,
            tx,
            budget,
        };
        let mut this = Connection {
            conn,
            session,
            shared,
            mailbox,
            inbox,
            writer,
            subscribed: BTreeMap::new(),
            tracked: HashMap::new(),
            tracked_any: false,
            metrics,
        };
        let exit = this.serve(&mut stream, &drain).await;
        this.cleanup().await;
        let stats = &this.shared.stats;
        match exit {
            Exit::Close(code, reason) => {
                let _ = this.writer.send(Outbound::Close(close_frame(code, reason)));
            }
            Exit::SlowConsumer => {
                stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                let _ = kill.send(close_frame(close::SLOW_CONSUMER, "slow consumer"));
            }
            Exit::Gone => {}
        }
        this.metrics.connections.dec();
        drop(this);
        drop(stream);
        let mut writer_task = writer_task;
        if timeout(Duration::from_secs(5), &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
        }
    }

    async fn serve<S>(
        &mut self,
        stream: &mut SplitStream<WebSocketStream<S>>,
        drain: &Notify,
    ) -> Exit
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.shared.draining.load(Ordering::Acquire) {
            return Exit::Close(close::RESTART, "server restarting");
        }
        if let Some(id) = self.session.id().map(str::to_owned) {
            if let Err(exit) = self.subscribe(&id).await {
                return exit;
            }
        }
        let idle = self.shared.config.idle_timeout;
        let mut deadline = Instant::now() + idle;
        loop {
            if self.mailbox.budget.overflowed() {
                return Exit::SlowConsumer;
            }
            let event = tokio::select! {
                biased;
                _ = drain.notified() => Event::Drain,
                _ = self.mailbox.budget.notify.notified() => Event::Overflow,
                item = self.inbox.recv() => Event::Inbound(item),
                msg = stream.next() => Event::Frame(msg),
                _ = sleep_until(deadline) => Event::Idle,
            };
            let step = match event {
                Event::Drain => Err(Exit::Close(close::RESTART, "server restarting")),
                Event::Overflow => Err(Exit::SlowConsumer),
                Event::Inbound(Some(item)) => self.handle_inbound(item).await,
                Event::Inbound(None) => Err(Exit::Gone),
                Event::Frame(msg) => {
                    deadline = Instant::now() + idle;
                    self.handle_message(msg).await
                }
                Event::Idle => {
                    debug!(conn = self.conn, "idle timeout");
                    Err(Exit::Close(close::SERVER_ERROR, "idle timeout"))
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    async fn handle_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), Exit> {
        let vsn = self.session.vsn();
        if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &msg {
            let len = msg
                .as_ref()
                .map_or(0, |m| m.as_ref().map_or(0, Message::len));
            self.metrics.messages_in.inc();
            self.metrics.bytes_in.inc_by(len as u64);
        }
        let decoded = match msg {
            Some(Ok(Message::Text(text))) => decode_text(vsn, text.as_str()),
            Some(Ok(Message::Binary(bytes))) => decode_binary(vsn, bytes),
            Some(Ok(Message::Close(_))) | None => return Err(Exit::Gone),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(()),
            Some(Err(WsError::Capacity(e))) => {
                self.shared
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(conn = self.conn, error = %e, "closing connection: frame too large");
                return Err(Exit::Close(close::TOO_BIG, "frame too large"));
            }
            Some(Err(WsError::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))) => {
                // A tab closed or a network dropped: a disconnect, not bad input.
                debug!(conn = self.conn, "client went away without a close frame");
                return Err(Exit::Gone);
            }
            Some(Err(WsError::Protocol(e))) => {
                self.shared
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(conn = self.conn, error = %e, "closing connection: WebSocket protocol error");
                return Err(Exit::Close(close::PROTOCOL, "protocol error"));
            }
            Some(Err(WsError::Utf8)) => {
                self.shared
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    conn = self.conn,
                    "closing connection: text frame is not UTF-8"
                );
                return Err(Exit::Close(close::INVALID_FRAME, "invalid frame"));
            }
            Some(Err(e)) => {
                debug!(conn = self.conn, error = %e, "socket error");
                return Err(Exit::Gone);
            }
        };
        let handled = decoded.and_then(|frame| self.session.handle_frame(frame));
        self.metrics.record_joins(self.session.take_join_counts());
        if let Err(e) = handled {
            return Err(self.invalid(&e));
        }
        self.flush().await
    }

    fn invalid(&self, error: &FrameError) -> Exit {
        self.shared
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        warn!(conn = self.conn, error = %error, "closing connection: invalid frame");
        Exit::Close(close::INVALID_FRAME, "invalid frame")
    }

    async fn handle_inbound(&mut self, item: Inbound) -> Result<(), Exit> {
        let cost = item.cost();
        let mut closed = None;
        match item {
            Inbound::Broadcast { encoded, .. } => {
                if self.session.id() == Some(encoded.topic()) {
                    closed = self.session.handle_id_broadcast(encoded.event());
                }
                if closed.is_none() {
                    self.session.handle_broadcast(&encoded);
                }
            }
            Inbound::PresenceDiff { encoded, diff, .. } => {
                let topic = encoded.topic();
                self.session
                    .handle_presence_diff(topic, &diff.joins, &diff.leaves);
                self.session.handle_broadcast(&encoded);
            }
        }
        self.mailbox.budget.release(cost);
        if let Some(code) = closed {
            debug!(conn = self.conn, "disconnected by socket id");
            return Err(Exit::Close(code, "disconnected"));
        }
        self.flush().await
    }

    /// Carries out the session's actions, then queues its frames. Actions go first
    /// so a join's subscription is routed (and its presence state pushed) before the
    /// join reply is written: the reply still precedes everything for that join,
    /// because deliveries are only read from the mailbox after this returns.
    async fn flush(&mut self) -> Result<(), Exit> {
        while let Some(action) = self.session.poll_action() {
            self.execute(action).await?;
        }
        while let Some(frame) = self.session.poll_transmit() {
            let cost = frame.as_bytes().len();
            if !self.mailbox.budget.try_take(cost) {
                return Err(Exit::SlowConsumer);
            }
            self.metrics.messages_out.inc();
            self.metrics.bytes_out.inc_by(cost as u64);
            let _ = self.writer.send(Outbound::Frame(frame, cost));
        }
        Ok(())
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), Exit> {
        let hub: &Arc<Hub> = &self.shared.hub;
        *self.subscribed.entry(topic.to_owned()).or_default() += 1;
        hub.subscribe(topic, &self.mailbox).await.map_err(|e| {
            warn!(conn = self.conn, topic, error = %e, "closing connection: cannot subscribe");
            Exit::Close(close::SERVER_ERROR, "engine unavailable")
        })
    }

    fn unsubscribe(&mut self, topic: &str) {
        if let Some(count) = self.subscribed.get_mut(topic) {
            *count -= 1;
            if *count == 0 {
                self.subscribed.remove(topic);
            }
            self.shared.hub.unsubscribe(topic, self.conn);
        }
    }

    async fn execute(&mut self, action: Action) -> Result<(), Exit> {
        let engine = self.shared.hub.engine().clone();
        let conn = ConnId(self.conn);
        match action {
            Action::Subscribe { topic, .. } => {
                self.metrics.channels_joined.inc();
                self.subscribe(&topic).await?
            }
            Action::Unsubscribe { topic, .. } => {
                self.metrics.channels_joined.dec();
                self.unsubscribe(&topic)
            }
            Action::Broadcast {
                topic,
                event,
                payload,
                exclude_self,
            } => {
                let exclude = exclude_self.then_some(self.conn);
                if let Err(e) = self
                    .shared
                    .hub
                    .publish(&topic, &event, payload, exclude)
                    .await
                {
                    warn!(conn = self.conn, topic, error = %e, "broadcast failed");
                }
            }
            Action::Track {
                topic,
                join_ref,
                key,
                meta,
            } => {
                self.tracked_any = true;
                let tracked = engine
                    .track(topic.as_str(), key.as_str(), conn, Meta::new(meta.as_str()))
                    .await;
                if let Err(e) = tracked {
                    warn!(conn = self.conn, topic, error = %e, "presence track failed");
                    return Ok(());
                }
                let entry = self
                    .tracked
                    .entry(topic.clone())
                    .or_insert_with(|| (join_ref.clone(), BTreeSet::new()));
                if entry.0 != join_ref {
                    *entry = (join_ref.clone(), BTreeSet::new());
                }
                entry.1.insert(key);
                match engine.presence(topic.as_str()).await {
                    Ok(items) => {
                        let _ =
                            self.session
                                .handle_presence_state(&topic, &join_ref, entries(&items));
                    }
                    Err(e) => warn!(conn = self.conn, topic, error = %e, "presence list failed"),
                }
            }
            Action::Update {
                topic, key, meta, ..
            } => {
                let meta = Meta::new(meta.as_str());
                if let Err(e) = engine
                    .update(topic.as_str(), key.as_str(), conn, meta)
                    .await
                {
                    warn!(conn = self.conn, topic, error = %e, "presence update failed");
                }
            }
            Action::Untrack { topic, key, .. } => {
                if let Some((_, keys)) = self.tracked.get_mut(&topic) {
                    keys.remove(&key);
                }
                if let Err(e) = engine.untrack(topic.as_str(), key.as_str(), conn).await {
                    warn!(conn = self.conn, topic, error = %e, "presence untrack failed");
                }
            }
            Action::UntrackAll { topic, join_ref } => {
                let keys = match self.tracked.remove(&topic) {
                    Some((owner, keys)) if owner == join_ref => keys,
                    Some(other) => {
                        self.tracked.insert(topic.clone(), other);
                        BTreeSet::new()
                    }
                    None => BTreeSet::new(),
                };
                for key in keys {
                    if let Err(e) = engine.untrack(topic.as_str(), key.as_str(), conn).await {
                        warn!(conn = self.conn, topic, error = %e, "presence untrack failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection is gone: channels terminate, hub subscriptions and presences
    /// of this connection are removed.
    async fn cleanup(&mut self) {
        self.session.handle_close();
        while let Some(action) = self.session.poll_action() {
            if let Action::Unsubscribe { topic, .. } = action {
                self.metrics.channels_joined.dec();
                self.unsubscribe(&topic);
            }
        }
        while self.session.poll_transmit().is_some() {}
        let remaining = std::mem::take(&mut self.subscribed);
        for (topic, count) in remaining {
            for _ in 0..count {
                self.shared.hub.unsubscribe(&topic, self.conn);
            }
        }
        if self.tracked_any {
            let engine = self.shared.hub.engine();
            if let Err(e) = engine.untrack_conn(ConnId(self.conn)).await {
                debug!(conn = self.conn, error = %e, "untrack on close failed");
            }
        }
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }
}

/// An outgoing frame as a WebSocket message. Text frames are passed as raw frames:
/// their bytes are valid UTF-8 by construction (encoded JSON) and are shared between
/// subscribers, so they are not validated again per connection.
fn message(frame: OutFrame) -> Message {
    match frame {
        OutFrame::Text(bytes) => {
            Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
        }
        OutFrame::Binary(bytes) => Message::Binary(bytes),
    }
}

enum Step {
    Continue,
    End,
}

/// Owns the sink: writes queued frames in batches of up to `batch` frames per flush,
/// returns their bytes to the budget once flushed, and closes. A `kill` (slow
/// consumer) abandons whatever is queued.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    mut kill: oneshot::Receiver<CloseFrame>,
    budget: Arc<Budget>,
    batch: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let step = tokio::select! {
            biased;
            frame = &mut kill => match frame {
                Ok(frame) => {
                    let _ = timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
                    return;
                }
                Err(_) => Step::End,
            },
            step = write_batch(&mut sink, &mut rx, &budget, batch) => step,
        };
        if let Step::End = step {
            break;
        }
    }
    let _ = timeout(Duration::from_secs(2), sink.close()).await;
}

async fn write_batch<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    rx: &mut mpsc::UnboundedReceiver<Outbound>,
    budget: &Budget,
    batch: usize,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(first) = rx.recv().await else {
        return Step::End;
    };
    let mut next = Some(first);
    let (mut bytes, mut frames) = (0, 0);
    while let Some(item) = next.take() {
        match item {
            Outbound::Frame(frame, cost) => {
                bytes += cost;
                if sink.feed(message(frame)).await.is_err() {
                    return Step::End;
                }
            }
            Outbound::Close(frame) => {
                let _ = sink.feed(Message::Close(Some(frame))).await;
                let _ = sink.flush().await;
                budget.release(bytes);
                return Step::End;
            }
        }
        frames += 1;
        if frames < batch {
            next = rx.try_recv().ok();
        }
    }
    if sink.flush().await.is_err() {
        return Step::End;
    }
    budget.release(bytes);
    Step::Continue
}
