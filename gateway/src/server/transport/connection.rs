//! One WebSocket client: one task owns its [`Session`] through a [`SessionDriver`] (which
//! executes the session's actions against the engine) and the socket. It reads
//! frames, takes the hub's deliveries, and writes queued frames in batches (up to
//! `write_batch` frames fed, then one flush) whenever the socket accepts them, so
//! a client that is slow to read never stops the task from reading or from taking
//! deliveries.
//!
//! Everything queued for the client (replies, pushes, broadcasts handed over by the
//! [`Hub`](crate::cluster::Hub)) is charged to one byte [`Budget`] (default 1 MiB). A client that stops
//! reading exhausts it and is closed with 1008; the others never wait for it.
//!
//! One task, not a reader and a writer: an idle connection is what it costs in
//! memory, so it has no second task, no channel to a writer, and its rare large
//! futures (actions against the engine, cleanup) are boxed while they run.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use super::driver::{Exit, HookAnswer, SessionDriver};
use crate::cluster::mailbox::{Budget, Inbound};
use crate::limits::ByteLimiter;
use crate::protocol::{decode_binary, decode_text, FrameError, OutFrame};
use crate::server::Shared;
use crate::socket::Session;

/// Close codes the server uses; never 1000, so phoenix.js reconnects (PROTOCOL §1.5).
pub mod close {
    /// Disconnected by socket id.
    pub const DISCONNECTED: u16 = 1001;
    /// A frame that does not decode (malformed JSON, not a 5-array, …).
    pub const INVALID_FRAME: u16 = 1007;
    /// The client stopped reading: its outbound queue is full.
    pub const SLOW_CONSUMER: u16 = 1008;
    /// The client went on sending over its frame rate after it was told
    /// (policy violation, as the slow consumer; the reason says which).
    pub const RATE_LIMITED: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// A WebSocket protocol violation.
    pub const PROTOCOL: u16 = 1002;
    /// No frame received for the idle timeout, or the engine failed.
    pub const SERVER_ERROR: u16 = 1011;
    /// The server is shutting down or restarting: reconnect elsewhere.
    pub const RESTART: u16 = 1012;
}

/// Deliveries handled per turn of the loop before the socket is served again.
const INBOUND_BATCH: usize = 256;

/// Client frames read in a row before the queued frames are written and the
/// deliveries get a turn.
const READ_BATCH: usize = 32;

/// One input of the connection task.
enum WsEvent {
    Drain,
    Overflow,
    Inbound(Inbound),
    /// A backend hook answered about a held frame.
    HookAnswer(HookAnswer),
    Frame(Option<Result<Message, WsError>>),
    /// The byte-rate pause is over: read again.
    Resume,
    /// Writing to the socket failed: the client is gone.
    WriteFailed,
    Idle,
}

pub(crate) struct Connection<S> {
    driver: SessionDriver,
    ws: WebSocketStream<S>,
    out: Outgoing,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A connection for an upgraded socket (`hook_headers`: its connect request's
    /// headers some backend hook forwards). Boxed, and built outside the task's
    /// future: values moved into an `async fn` keep their argument slot for the
    /// whole life of the future, so passing the session and socket by value would
    /// store them twice in every idle connection's task.
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn: u64,
        session: Box<Session>,
        ws: WebSocketStream<S>,
        hook_headers: Vec<(String, String)>,
    ) -> Box<Self> {
        let driver =
            SessionDriver::new(shared.clone(), conn, *session, true).with_hooks(hook_headers);
        let out = Outgoing::new(driver.budget().clone(), shared.config.write_batch);
        Box::new(Connection { driver, ws, out })
    }

    /// Serves the socket until it closes.
    pub(crate) async fn run(mut self: Box<Self>, drain: Arc<Notify>) {
        let shared = self.driver.shared.clone();
        let exit = self.serve(&drain).await;
        Box::pin(self.driver.cleanup()).await;
        let close = match exit {
            Exit::Close(code, reason) => Some(close_frame(code, reason)),
            Exit::SlowConsumer => {
                shared.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                // Whatever is queued is abandoned: the client is not reading it.
                self.out.abandon();
                let frame = close_frame(close::SLOW_CONSUMER, "slow consumer");
                let send = self.ws.send(Message::Close(Some(frame)));
                let _ = timeout(Duration::from_secs(1), send).await;
                return;
            }
            Exit::Gone => None,
        };
        let _ = timeout(Duration::from_secs(5), Box::pin(self.finish(close))).await;
        self.out.abandon();
    }

    /// Writes what is queued, then the close frame, and closes the socket.
    async fn finish(&mut self, close: Option<CloseFrame>) {
        let (ws, out) = (&mut self.ws, &mut self.out);
        if poll_fn(|cx| out.poll_write_all(ws, cx)).await.is_err() {
            return;
        }
        if let Some(frame) = close {
            let _ = ws.feed(Message::Close(Some(frame))).await;
            let _ = ws.flush().await;
        }
        let _ = timeout(Duration::from_secs(2), SinkExt::close(ws)).await;
    }

    async fn serve(&mut self, drain: &Notify) -> Exit {
        if self.driver.shared.draining.load(Ordering::Acquire) {
            return Exit::Close(close::RESTART, "server restarting");
        }
        if let Err(exit) = Box::pin(self.driver.start()).await {
            return exit;
        }
        let idle = self.driver.shared.config.idle_timeout;
        let mut deadline = Instant::now() + idle;
        let budget = self.driver.budget().clone();
        let limits = &self.driver.shared.config.client_limits;
        let mut bytes = ByteLimiter::new(limits.byte_rate, limits.byte_burst);
        // While the client is over its byte rate, its frames are not read.
        let mut resume: Option<Instant> = None;
        // Made once, not once per turn of the loop: a `Notified` polled in a
        // fresh `select!` locks its `Notify` to link and unlink a waiter, and a
        // fresh `Sleep` registers and deregisters a timer, on every frame and
        // every batch of deliveries. Both signals end the loop, so each fires
        // at most once. The idle timer is moved only when it fires early: a
        // frame just moves `deadline`.
        let drained = drain.notified();
        let overflowed = budget.notify.notified();
        let idle_timer = sleep_until(deadline);
        tokio::pin!(drained, overflowed, idle_timer);
        loop {
            if budget.overflowed() {
                return Exit::SlowConsumer;
            }
            let (ws, out) = (&mut self.ws, &mut self.out);
            let (inbound, hook_answer) = self.driver.events();
            // The socket comes before the deliveries so that, under a flood of
            // deliveries, queued frames are still written on every turn; it
            // yields after a batch of client frames so deliveries get theirs.
            let event = tokio::select! {
                biased;
                _ = &mut drained => WsEvent::Drain,
                _ = &mut overflowed => WsEvent::Overflow,
                event = poll_fn(|cx| poll_socket(ws, out, resume.is_none(), cx)) => event,
                item = inbound => WsEvent::Inbound(item),
                answer = hook_answer => WsEvent::HookAnswer(answer),
                _ = sleep_until(resume.unwrap_or(deadline)), if resume.is_some() => WsEvent::Resume,
                _ = &mut idle_timer => {
                    if Instant::now() < deadline {
                        idle_timer.as_mut().reset(deadline);
                        continue;
                    }
                    WsEvent::Idle
                }
            };
            let step = match event {
                WsEvent::Drain => Err(Exit::Close(close::RESTART, "server restarting")),
                WsEvent::Overflow => Err(Exit::SlowConsumer),
                WsEvent::Inbound(item) => self.handle_inbound(item).await,
                WsEvent::HookAnswer(answer) => self.handle_hook_answer(answer).await,
                WsEvent::WriteFailed => Err(Exit::Gone),
                WsEvent::Resume => {
                    resume = None;
                    Ok(())
                }
                WsEvent::Frame(msg) => {
                    let now = Instant::now();
                    deadline = now + idle;
                    let len = msg
                        .as_ref()
                        .and_then(|m| m.as_ref().ok())
                        .map_or(0, Message::len);
                    if let Some(pause) = bytes.charge(now.into_std(), len) {
                        self.driver.shared.config.limit_counter.hit("byte_rate");
                        resume = Some(now + pause);
                        deadline = deadline.max(now + pause + idle);
                    }
                    self.handle_message(msg).await
                }
                WsEvent::Idle => {
                    debug!(conn = self.driver.conn, "idle timeout");
                    Err(Exit::Close(close::SERVER_ERROR, "idle timeout"))
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// Hands `item` and whatever else is waiting (up to a batch) to the session,
    /// then queues the frames they produced.
    async fn handle_inbound(&mut self, item: Inbound) -> Result<(), Exit> {
        self.driver
            .handle_inbound_batch(item, INBOUND_BATCH)
            .await?;
        self.flush()
    }

    async fn handle_hook_answer(&mut self, answer: HookAnswer) -> Result<(), Exit> {
        if let Err(e) = self.driver.handle_hook_answer(answer) {
            return Err(self.invalid(&e));
        }
        self.driver.run_actions().await?;
        self.flush()
    }

    async fn handle_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), Exit> {
        let conn = self.driver.conn;
        let vsn = self.driver.session.vsn();
        let len = match &msg {
            Some(Ok(m)) => m.len(),
            _ => 0,
        };
        let decoded = match msg {
            Some(Ok(Message::Text(text))) => decode_text(vsn, text.as_str()),
            Some(Ok(Message::Binary(bytes))) => decode_binary(vsn, bytes),
            Some(Ok(Message::Close(_))) | None => return Err(Exit::Gone),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(()),
            Some(Err(WsError::Capacity(e))) => {
                self.count_protocol_error();
                warn!(conn, error = %e, "closing connection: frame too large");
                return Err(Exit::Close(close::TOO_BIG, "frame too large"));
            }
            Some(Err(WsError::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))) => {
                // A tab closed or a network dropped: a disconnect, not bad input.
                debug!(conn, "client went away without a close frame");
                return Err(Exit::Gone);
            }
            Some(Err(WsError::Protocol(e))) => {
                self.count_protocol_error();
                warn!(conn, error = %e, "closing connection: WebSocket protocol error");
                return Err(Exit::Close(close::PROTOCOL, "protocol error"));
            }
            Some(Err(WsError::Utf8)) => {
                self.count_protocol_error();
                warn!(conn, "closing connection: text frame is not UTF-8");
                return Err(Exit::Close(close::INVALID_FRAME, "invalid frame"));
            }
            Some(Err(e)) => {
                debug!(conn, error = %e, "socket error");
                return Err(Exit::Gone);
            }
        };
        let frame = decoded.map_err(|e| self.invalid(&e))?;
        if self.driver.admit(&frame, len)? {
            if let Err(e) = self.driver.handle_frame(frame) {
                return Err(self.invalid(&e));
            }
        }
        self.driver.run_actions().await?;
        self.flush()
    }

    fn count_protocol_error(&self) {
        let stats = &self.driver.shared.stats;
        stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn invalid(&self, error: &FrameError) -> Exit {
        self.count_protocol_error();
        warn!(conn = self.driver.conn, error = %error, "closing connection: invalid frame");
        Exit::Close(close::INVALID_FRAME, "invalid frame")
    }

    /// Queues the session's frames for the socket (the actions already ran).
    fn flush(&mut self) -> Result<(), Exit> {
        self.driver.take_frames(&mut self.out.queue)
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

/// Reads the next frame; once none is waiting (or after [`READ_BATCH`] in a
/// row), writes what the socket accepts. Reading first lets the replies to
/// frames that arrived together leave in one flush. Not `reading` (the client
/// is over its byte rate), only writes. Ready with a frame, the end of the
/// stream, or a write error; pending otherwise.
fn poll_socket<S>(
    ws: &mut WebSocketStream<S>,
    out: &mut Outgoing,
    reading: bool,
    cx: &mut Context<'_>,
) -> Poll<WsEvent>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let read_more = reading && out.reads < READ_BATCH;
    if read_more {
        if let Poll::Ready(msg) = ws.poll_next_unpin(cx) {
            out.reads += 1;
            return Poll::Ready(WsEvent::Frame(msg));
        }
    }
    out.reads = 0;
    if let Poll::Ready(Err(_)) = out.poll_write_all(ws, cx) {
        return Poll::Ready(WsEvent::WriteFailed);
    }
    if reading && !read_more {
        // Frames may still be waiting: come back once the deliveries had a turn.
        cx.waker().wake_by_ref();
    }
    Poll::Pending
}

/// Frames queued for the socket (each costs its length in the budget), and how
/// many were fed to the socket but not yet flushed.
struct Outgoing {
    queue: VecDeque<OutFrame>,
    budget: Arc<Budget>,
    batch: usize,
    fed: usize,
    fed_bytes: usize,
    /// Client frames read since the last write.
    reads: usize,
}

impl Outgoing {
    fn new(budget: Arc<Budget>, batch: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            budget,
            batch: batch.max(1),
            fed: 0,
            fed_bytes: 0,
            reads: 0,
        }
    }

    /// Feeds queued frames to the socket in batches of up to `batch`, flushing
    /// after each batch and returning its bytes to the budget. Ready(Ok) once
    /// everything is written; pending while the socket is full (the socket wakes
    /// the task when it drains).
    fn poll_write_all<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            while self.fed < self.batch {
                if self.queue.is_empty() {
                    break;
                }
                if let Err(e) = std::task::ready!(ws.poll_ready_unpin(cx)) {
                    return Poll::Ready(Err(e));
                }
                let Some(frame) = self.queue.pop_front() else {
                    break;
                };
                self.fed += 1;
                self.fed_bytes += frame.as_bytes().len();
                if let Err(e) = ws.start_send_unpin(message(frame)) {
                    return Poll::Ready(Err(e));
                }
            }
            if self.fed == 0 {
                // Everything is written: give the queue's room back (one
                // allocation per burst; an idle connection keeps none).
                if self.queue.capacity() > 0 {
                    self.queue = VecDeque::new();
                }
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = std::task::ready!(ws.poll_flush_unpin(cx)) {
                return Poll::Ready(Err(e));
            }
            self.budget.release(self.fed_bytes);
            self.fed = 0;
            self.fed_bytes = 0;
        }
    }

    /// Gives back the budget of every frame not written.
    fn abandon(&mut self) {
        let queued: usize = self.queue.drain(..).map(|f| f.as_bytes().len()).sum();
        self.budget.release(queued + self.fed_bytes);
        self.fed = 0;
        self.fed_bytes = 0;
    }
}
