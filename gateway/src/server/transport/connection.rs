//! One WebSocket client: one task owns its [`Session`] through a [`SessionDriver`] (which
//! executes the session's actions against the engine) and the socket. It reads
//! frames, takes the hub's deliveries, and writes what is queued whenever the
//! socket accepts it, so a client that is slow to read never stops the task from
//! reading or from taking deliveries.
//!
//! The socket is a [`Wire`]. It reads the client's frames with
//! [`ClientReader`] from a buffer on the stack, keeping only the bytes of a
//! frame not all read yet: an idle connection holds no read buffer. What goes
//! to the client is written as finished WebSocket frames into one byte
//! buffer: the session's frames get their header there, and the plain
//! broadcasts the [`Hub`](crate::cluster::Hub) hands over already framed
//! ([`Inbound::Frames`]) are appended as they are; pongs and close frames go
//! between two frames. One `write` sends all that is queued.
//!
//! Everything queued for the client (replies, pushes, broadcasts handed over by the
//! hub) is charged to one byte [`Budget`] (default 1 MiB) until it is written. A client that stops
//! reading exhausts it and is closed with 1008; the others never wait for it.
//!
//! One task, not a reader and a writer: an idle connection is what it costs in
//! memory, so it has no second task, no channel to a writer, and its rare large
//! futures (actions against the engine, cleanup) are boxed while they run.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, warn};

use super::driver::{Exit, HookAnswer, SessionDriver};
use crate::cluster::mailbox::{Budget, Inbound};
use crate::limits::ByteLimiter;
use crate::protocol::wsframe::{self, opcode, ClientMessage, ClientReader, ReadError, Step};
use crate::protocol::{decode_binary, decode_text, FrameError};
use crate::server::shutdown::Drain;
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
    Frame(Result<ClientMessage, Received>),
    /// The byte-rate pause is over: read again.
    Resume,
    /// Writing to the socket failed: the client is gone.
    WriteFailed,
    Idle,
}

/// What the loop does after an event, at its one await.
enum Then {
    /// Nothing more: the next turn.
    Loop,
    /// Run the actions the session queued and queue its frames.
    Settle,
    /// Hand the waiting deliveries to the session.
    Deliver,
}

/// A connection's session and the connect request's headers some backend
/// hook forwards.
pub(crate) type Setup = (Box<Session>, Vec<(String, String)>);

pub(crate) struct Connection<S> {
    driver: SessionDriver,
    wire: Wire<S>,
    /// Client frames read since the last write.
    reads: usize,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A connection for an upgraded socket `io`; `setup` is its session and
    /// the connect request's headers some backend hook forwards. Boxed, and
    /// built outside the task's `run` future: values moved into an `async fn`
    /// keep their argument slot for the whole life of the future, so passing
    /// the session and socket by value would store them twice in every idle
    /// connection's task. `setup` comes boxed, as the task captured it, and
    /// its box is freed here: moved out of in the task, it would be freed
    /// only when the task ends.
    #[allow(clippy::boxed_local)]
    pub(crate) fn new(shared: Arc<Shared>, conn: u64, setup: Box<Setup>, io: S) -> Box<Self> {
        let (session, hook_headers) = *setup;
        let budget = Arc::new(Budget::new(shared.config.outbound_queue_bytes));
        let wire = Wire::new(io, budget.clone(), shared.config.max_frame_size);
        let driver = SessionDriver::with_budget(shared, conn, *session, true, budget)
            .with_hooks(hook_headers);
        Box::new(Connection {
            driver,
            wire,
            reads: 0,
        })
    }

    /// Starts the connection with `early`, bytes the client sent that were
    /// read before it was handed over (behind its upgrade request).
    pub(crate) fn with_early_bytes(mut self: Box<Self>, early: &[u8]) -> Box<Self> {
        self.wire.start_with(early);
        self
    }

    /// How the server tells this connection to close when it drains.
    pub(crate) fn drain(&self) -> Drain {
        Drain::Inbox(self.driver.budget().clone(), self.driver.inbox().clone())
    }

    /// Serves the socket until it closes.
    pub(crate) async fn run(mut self: Box<Self>) {
        let shared = self.driver.shared.clone();
        let exit = self.serve().await;
        Box::pin(self.driver.cleanup()).await;
        let close = match exit {
            Exit::Close(code, reason) => Some((code, reason)),
            Exit::SlowConsumer => {
                shared.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                // Whatever is queued is abandoned: the client is not reading it.
                self.wire.abandon();
                self.wire.push_close(close::SLOW_CONSUMER, "slow consumer");
                let wire = &mut self.wire;
                let _ = timeout(Duration::from_secs(1), poll_fn(|cx| wire.poll_send(cx))).await;
                return;
            }
            Exit::Gone => None,
        };
        let _ = timeout(Duration::from_secs(5), Box::pin(self.finish(close))).await;
        self.wire.abandon();
    }

    /// Writes what is queued, then the close frame, and shuts the socket down.
    async fn finish(&mut self, close: Option<(u16, &'static str)>) {
        let wire = &mut self.wire;
        if poll_fn(|cx| wire.poll_send(cx)).await.is_err() {
            return;
        }
        if let Some((code, reason)) = close {
            wire.push_close(code, reason);
            if poll_fn(|cx| wire.poll_send(cx)).await.is_err() {
                return;
            }
        }
        let shutdown = poll_fn(|cx| Pin::new(&mut wire.io).poll_shutdown(cx));
        let _ = timeout(Duration::from_secs(2), shutdown).await;
    }

    async fn serve(&mut self) -> Exit {
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
        // Made once, not once per turn of the loop: a fresh `Sleep` registers
        // and deregisters a timer on every frame and every batch of
        // deliveries. One timer serves the end of a byte-rate pause and the
        // idle timeout; it is moved only when it fires early: a frame just
        // moves `deadline`. The server's drain and an overflowing budget are
        // flags in the budget that wake the task through its inbox
        // (`Drain::Inbox`, `Mailbox::offer`), not a `Notify` of its own.
        let timer = sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            if budget.overflowed() {
                return Exit::SlowConsumer;
            }
            let next = {
                let (wire, reads) = (&mut self.wire, &mut self.reads);
                let (inbound, hook_answer) = self.driver.events();
                // The socket comes before the deliveries so that, under a flood of
                // deliveries, queued frames are still written on every turn; it
                // yields after a batch of client frames so deliveries get theirs.
                let event: WsEvent = tokio::select! {
                    biased;
                    _ = poll_fn(|_| draining(&budget)) => WsEvent::Drain,
                    // Woken through the inbox, whose waker the deliveries' branch
                    // leaves (`Mailbox::offer`).
                    _ = poll_fn(|_| overflow(&budget)) => WsEvent::Overflow,
                    event = poll_fn(|cx| poll_socket(wire, reads, resume.is_none(), cx)) => event,
                    item = inbound => WsEvent::Inbound(item),
                    answer = hook_answer => WsEvent::HookAnswer(answer),
                    // Again, now that the inbox holds our waker: a flag set
                    // after the look above but before the waker was left
                    // found no waker to wake, and would wait for the next
                    // frame or delivery.
                    _ = poll_fn(|_| draining(&budget)) => WsEvent::Drain,
                    _ = poll_fn(|_| overflow(&budget)) => WsEvent::Overflow,
                    _ = &mut timer => {
                        let now = Instant::now();
                        if resume.is_some_and(|at| now >= at) {
                            WsEvent::Resume
                        } else if now < deadline {
                            timer.as_mut().reset(resume.unwrap_or(deadline).min(deadline));
                            continue;
                        } else {
                            WsEvent::Idle
                        }
                    }
                };
                // The event is handled without an await and its scope ends
                // before the one await of this turn: the loop's future keeps no
                // room for an event (a hook answer holds a whole client frame).
                match event {
                    WsEvent::Drain => Err(Exit::Close(close::RESTART, "server restarting")),
                    WsEvent::Overflow => Err(Exit::SlowConsumer),
                    WsEvent::Inbound(item) => {
                        // Handled from the queue with what else is waiting.
                        self.driver.put_back(item);
                        Ok(Then::Deliver)
                    }
                    WsEvent::HookAnswer(answer) => {
                        self.take_hook_answer(answer).map(|()| Then::Settle)
                    }
                    WsEvent::WriteFailed => Err(Exit::Gone),
                    WsEvent::Resume => {
                        resume = None;
                        timer.as_mut().reset(deadline);
                        Ok(Then::Loop)
                    }
                    WsEvent::Frame(msg) => {
                        let now = Instant::now();
                        deadline = now + idle;
                        let len = msg.as_ref().map_or(0, ClientMessage::len);
                        if let Some(pause) = bytes.charge(now.into_std(), len) {
                            self.driver.shared.config.limit_counter.hit("byte_rate");
                            resume = Some(now + pause);
                            deadline = deadline.max(now + pause + idle);
                            timer.as_mut().reset(now + pause);
                        }
                        self.take_message(msg, now.into_std())
                            .map(|()| Then::Settle)
                    }
                    WsEvent::Idle => {
                        debug!(conn = self.driver.conn, "idle timeout");
                        Err(Exit::Close(close::SERVER_ERROR, "idle timeout"))
                    }
                }
            };
            let step = match next {
                Ok(Then::Loop) => Ok(()),
                Ok(Then::Settle) => self.settle().await,
                Ok(Then::Deliver) => self.handle_inbound().await,
                Err(exit) => Err(exit),
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// Hands what is waiting (up to a batch) to the session, in order, and
    /// queues the frames they produced; finished frames ([`Inbound::Frames`])
    /// go straight to the socket's buffer, after the session's frames queued
    /// before them. Each delivery's budget is given back as the session
    /// handles it; finished frames keep theirs until written. A delivery's
    /// actions run before the next delivery; nothing of a delivery is held
    /// across that await.
    async fn handle_inbound(&mut self) -> Result<(), Exit> {
        // Room in the session's frame queue is made at the first delivery
        // that goes to the session: finished frames never enter that queue,
        // and a plain broadcast to a client that reads (one delivery per
        // wake-up) would otherwise allocate and free it on every wake-up.
        let mut reserved = false;
        for _ in 0..INBOUND_BATCH {
            let Some(item) = self.driver.try_recv() else {
                break;
            };
            if !reserved && !matches!(item, Inbound::Frames { .. }) {
                reserved = true;
                self.driver.reserve_for_taken(INBOUND_BATCH);
            }
            let actions = match item {
                Inbound::Frames {
                    topic,
                    bytes,
                    count,
                    payload,
                } => {
                    self.flush()?;
                    let cost = bytes.len();
                    if self.driver.frames_delivered(&topic, count, payload, cost) {
                        self.wire.push_frames(bytes);
                    }
                    false
                }
                item => {
                    self.driver.take_delivery(item)?;
                    self.driver.session.has_actions()
                }
            };
            if actions {
                self.driver.run_actions().await?;
            }
        }
        self.flush()
    }

    /// Runs the actions the session queued, then queues its frames for the
    /// socket. The only await after a client frame or a hook answer: those
    /// are handed to the session without one ([`Connection::take_message`]),
    /// so the loop's future holds neither while idle.
    async fn settle(&mut self) -> Result<(), Exit> {
        self.driver.run_actions().await?;
        self.flush()
    }

    fn take_hook_answer(&mut self, answer: HookAnswer) -> Result<(), Exit> {
        self.driver
            .handle_hook_answer(answer)
            .map_err(|e| self.invalid(&e))
    }

    /// Decodes a client frame that arrived at `now`, holds it to the client
    /// limits and hands it to the session; the caller runs what it queued
    /// ([`Connection::settle`]).
    fn take_message(
        &mut self,
        msg: Result<ClientMessage, Received>,
        now: std::time::Instant,
    ) -> Result<(), Exit> {
        let conn = self.driver.conn;
        let vsn = self.driver.session.vsn();
        let len = msg.as_ref().map_or(0, ClientMessage::len);
        let decoded = match msg {
            Ok(ClientMessage::Text(text)) => decode_text(vsn, &text),
            Ok(ClientMessage::Binary(bytes)) => decode_binary(vsn, bytes.into()),
            // The reply to a close frame is queued: write it and go.
            Ok(ClientMessage::Close(_)) | Err(Received::End) => return Err(Exit::Gone),
            Ok(ClientMessage::Ping(_) | ClientMessage::Pong(_)) => return Ok(()),
            Err(Received::Bad(ReadError::TooBig(size))) => {
                self.count_protocol_error();
                warn!(conn, size, "closing connection: frame too large");
                return Err(Exit::Close(close::TOO_BIG, "frame too large"));
            }
            Err(Received::Bad(ReadError::Protocol(e))) => {
                self.count_protocol_error();
                warn!(
                    conn,
                    error = e,
                    "closing connection: WebSocket protocol error"
                );
                return Err(Exit::Close(close::PROTOCOL, "protocol error"));
            }
            Err(Received::Bad(ReadError::Utf8)) => {
                self.count_protocol_error();
                warn!(conn, "closing connection: text frame is not UTF-8");
                return Err(Exit::Close(close::INVALID_FRAME, "invalid frame"));
            }
            Err(Received::Failed(e)) => {
                debug!(conn, error = %e, "socket error");
                return Err(Exit::Gone);
            }
        };
        let frame = decoded.map_err(|e| self.invalid(&e))?;
        if self.driver.admit(&frame, len, now)? {
            if let Err(e) = self.driver.handle_frame(frame) {
                return Err(self.invalid(&e));
            }
        }
        Ok(())
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
        self.driver.write_frames(&mut self.wire.buf)
    }
}

/// Ready once the server asked the connection to close.
fn draining(budget: &Budget) -> Poll<()> {
    if budget.draining() {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Ready once the budget overflowed: the client is a slow consumer.
fn overflow(budget: &Budget) -> Poll<()> {
    if budget.overflowed() {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Reads the next frame; once none is waiting (or after [`READ_BATCH`] in a
/// row), writes what the socket accepts. Reading first lets the replies to
/// frames that arrived together leave in one write. Not `reading` (the client
/// is over its byte rate), only writes. Ready with a frame, the end of the
/// stream, or a write error; pending otherwise.
fn poll_socket<S>(
    wire: &mut Wire<S>,
    reads: &mut usize,
    reading: bool,
    cx: &mut Context<'_>,
) -> Poll<WsEvent>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let read_more = reading && *reads < READ_BATCH;
    if read_more {
        if let Poll::Ready(msg) = wire.poll_message(cx) {
            *reads += 1;
            return Poll::Ready(WsEvent::Frame(msg));
        }
    }
    *reads = 0;
    if let Poll::Ready(Err(_)) = wire.poll_send(cx) {
        return Poll::Ready(WsEvent::WriteFailed);
    }
    if reading && !read_more {
        // Frames may still be waiting: come back once the deliveries had a turn.
        cx.waker().wake_by_ref();
    }
    Poll::Pending
}

/// Written bytes after which a buffer the socket has not taken all of is
/// compacted (its written part dropped).
const COMPACT_AFTER: usize = 64 * 1024;

/// Bytes read from the socket at once, into a buffer on the stack.
const READ_CHUNK: usize = 4096;

/// Why no client message came.
#[derive(Debug)]
enum Received {
    /// The client's frames break RFC 6455 or the size limit.
    Bad(ReadError),
    /// The stream ended.
    End,
    /// Reading failed.
    Failed(io::Error),
}

/// The client's socket: its frames read into messages, and every byte queued
/// for the client: finished WebSocket frames back to back in `buf`, of which
/// `sent` are written. Pongs and close frames are appended whole too, so
/// `buf` always starts with a frame and only ever holds whole frames. Each
/// byte is charged to the connection's [`Budget`] until written. Between
/// frames, read or written, it holds no allocation.
pub(crate) struct Wire<S> {
    io: S,
    buf: Vec<u8>,
    sent: usize,
    budget: Arc<Budget>,
    /// Client bytes read, of which the first `taken` are taken: the start
    /// of a frame not all read yet, frames that arrived behind the one
    /// returned, or at the start what the HTTP server read past the upgrade
    /// request ([`Wire::start_with`]). Usually empty. Frames are taken by
    /// moving `taken`, not by moving the bytes after them (a burst of small
    /// frames would move the rest of the burst once per frame).
    unread: Vec<u8>,
    /// `u32`s, with `max_frame`, so as to take no more room than one
    /// `usize`: `unread` never holds much more than a frame, or at the
    /// start what hyper read past the request (within its read buffer's
    /// limit, some hundred KiB).
    taken: u32,
    /// The size limit of a client frame and message (at most 4 GiB less
    /// 64 KiB, so that `unread`, a frame and a read more, fits `taken`).
    max_frame: u32,
    reader: ClientReader,
}

impl<S> Wire<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(io: S, budget: Arc<Budget>, max_frame: usize) -> Self {
        let max_frame = u32::try_from(max_frame)
            .unwrap_or(u32::MAX)
            .min(u32::MAX - (64 << 10));
        Self {
            io,
            buf: Vec::new(),
            sent: 0,
            budget,
            unread: Vec::new(),
            taken: 0,
            max_frame,
            reader: ClientReader::default(),
        }
    }

    /// Makes `early`, client bytes read before the socket was handed over,
    /// the first to be read.
    fn start_with(&mut self, early: &[u8]) {
        if !early.is_empty() {
            self.unread = early.to_vec();
            self.taken = 0;
        }
    }

    /// The client's next message. A ping's pong and a close frame's reply
    /// are queued here, before the message is returned (a close frame's
    /// code is echoed when RFC 6455 allows it, else 1002).
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<ClientMessage, Received>> {
        loop {
            if self.unread.is_empty() {
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut chunk);
                if let Err(e) = std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
                    return Poll::Ready(Err(Received::Failed(e)));
                }
                let data = read.filled();
                if data.is_empty() {
                    return Poll::Ready(Err(Received::End));
                }
                // Frames are taken straight from the chunk; what is left of
                // it (part of a frame, or frames behind a message) is kept.
                let mut at = 0;
                loop {
                    match self.reader.take(&data[at..], self.max_frame as usize) {
                        Err(e) => return Poll::Ready(Err(Received::Bad(e))),
                        Ok(Step::More(_)) => {
                            self.unread.extend_from_slice(&data[at..]);
                            break;
                        }
                        Ok(Step::Frame { used, message }) => {
                            at += used;
                            if let Some(message) = message {
                                self.unread.extend_from_slice(&data[at..]);
                                return Poll::Ready(Ok(self.answer(message)));
                            }
                        }
                    }
                }
                continue;
            }
            let taken = self.taken as usize;
            match self
                .reader
                .take(&self.unread[taken..], self.max_frame as usize)
            {
                Err(e) => return Poll::Ready(Err(Received::Bad(e))),
                Ok(Step::Frame { used, message }) => {
                    if taken + used == self.unread.len() {
                        self.unread = Vec::new();
                        self.taken = 0;
                    } else {
                        // Within `unread`, which is under 4 GiB (`max_frame`).
                        self.taken = (taken + used) as u32;
                    }
                    if let Some(message) = message {
                        return Poll::Ready(Ok(self.answer(message)));
                    }
                }
                Ok(Step::More(need)) => {
                    // The rest of a frame: read into `unread`, after dropping
                    // what was taken. Room grows with what arrived (at most
                    // doubling per read), not to the length a header
                    // announces: a client that sends the header of a 1 MiB
                    // frame and stops makes the server hold about 4 KiB, not
                    // 1 MiB.
                    self.unread.drain(..taken);
                    self.taken = 0;
                    let have = self.unread.len();
                    let room = need.min(have + have.max(READ_CHUNK)).max(have + READ_CHUNK);
                    if self.unread.capacity() > 2 * room {
                        // A large frame was taken; a small one follows.
                        self.unread.shrink_to(room);
                    }
                    self.unread.resize(room, 0);
                    let mut read = ReadBuf::new(&mut self.unread[have..]);
                    let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
                    let n = read.filled().len();
                    self.unread.truncate(have + n);
                    match polled {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Received::Failed(e))),
                        Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Err(Received::End)),
                        Poll::Ready(Ok(())) => {}
                    }
                }
            }
        }
    }

    /// Queues what a control message asks of the server: a pong, a close
    /// frame's reply.
    fn answer(&mut self, message: ClientMessage) -> ClientMessage {
        match &message {
            ClientMessage::Ping(payload) => {
                let before = self.buf.len();
                wsframe::write_op_frame(&mut self.buf, opcode::PONG, payload);
                self.budget.add(self.buf.len() - before);
            }
            ClientMessage::Close(code) => match code {
                None => {
                    let before = self.buf.len();
                    wsframe::write_op_frame(&mut self.buf, opcode::CLOSE, &[]);
                    self.budget.add(self.buf.len() - before);
                }
                Some((code, reason)) if CloseCode::from(*code).is_allowed() => {
                    self.push_close(*code, reason);
                }
                Some(_) => self.push_close(close::PROTOCOL, "Protocol violation"),
            },
            _ => {}
        }
        message
    }

    /// Queues a close frame (charged to the budget: it cannot be refused).
    fn push_close(&mut self, code: u16, reason: &str) {
        let before = self.buf.len();
        wsframe::write_close(&mut self.buf, code, reason);
        self.budget.add(self.buf.len() - before);
    }

    /// Appends finished frames, already charged to the budget.
    fn push_frames(&mut self, bytes: Vec<u8>) {
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Writes what the socket takes, giving its bytes back to the budget.
    /// Ready(Ok) once everything is written (the buffer's room goes too: one
    /// allocation per burst, none while idle); pending while the socket is full
    /// (it wakes the task when it drains).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    self.budget.release(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.compact();
                    return Poll::Pending;
                }
            }
        }
        if self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Drops the written frames from the front of a buffer the socket is slow
    /// to take, so it does not grow without bound while never quite drained.
    fn compact(&mut self) {
        if self.sent < COMPACT_AFTER || self.sent * 2 < self.buf.len() {
            return;
        }
        let start = self.frame_start(self.sent);
        self.buf.drain(..start);
        self.sent -= start;
    }

    /// The start of the frame that holds byte `at` (or `buf.len()`).
    fn frame_start(&self, at: usize) -> usize {
        let mut start = 0;
        while let Some(len) = wsframe::next_frame_len(&self.buf[start..]) {
            if start + len > at {
                break;
            }
            start += len;
        }
        start
    }

    /// Drops every frame not started yet and gives its bytes back to the
    /// budget; the one being written stays, so a close frame after it
    /// still reaches the client as a frame.
    fn abandon(&mut self) {
        let mut keep = self.frame_start(self.sent);
        if keep < self.sent {
            keep += wsframe::next_frame_len(&self.buf[keep..]).unwrap_or(0);
        }
        let keep = keep.min(self.buf.len());
        self.budget.release(self.buf.len() - keep);
        self.buf.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes, then is full, and gives
    /// the chunks in `incoming` one read each (at most what the reader has
    /// room for), then nothing (pending), or the end once `ended`.
    struct Narrow {
        written: Vec<u8>,
        room: usize,
        incoming: std::collections::VecDeque<Vec<u8>>,
        ended: bool,
        /// Bytes handed to the reader so far.
        delivered: usize,
    }

    impl AsyncRead for Narrow {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let Some(mut chunk) = self.incoming.pop_front() else {
                return if self.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            self.delivered += n;
            if n < chunk.len() {
                self.incoming.push_front(chunk.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Narrow {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(self.room);
            if n == 0 {
                return Poll::Pending;
            }
            self.room -= n;
            self.written.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames(n: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            wsframe::write_frame(&mut out, true, &vec![b'a' + (i % 26) as u8; len]);
        }
        out
    }

    fn wire(room: usize, queued: &[u8]) -> Wire<Narrow> {
        let budget = Arc::new(Budget::new(usize::MAX));
        assert!(budget.try_take(queued.len()));
        let mut wire = Wire::new(
            Narrow {
                written: Vec::new(),
                room,
                incoming: Default::default(),
                ended: false,
                delivered: 0,
            },
            budget,
            1 << 20,
        );
        wire.push_frames(queued.to_vec());
        wire
    }

    fn poll(wire: &mut Wire<Narrow>) -> Poll<io::Result<()>> {
        let waker = futures_util::task::noop_waker();
        wire.poll_send(&mut Context::from_waker(&waker))
    }

    /// Written bytes go back to the budget; once all is written the buffer
    /// keeps no room.
    #[test]
    fn written_bytes_are_released_and_the_buffer_freed() {
        let queued = frames(3, 40);
        let mut wire = wire(usize::MAX, &queued);
        assert!(matches!(poll(&mut wire), Poll::Ready(Ok(()))));
        assert_eq!(wire.io.written, queued);
        assert_eq!(wire.budget.queued(), 0);
        assert_eq!(wire.buf.capacity(), 0);
    }

    /// A socket that stops in the middle of a frame: compaction drops only
    /// whole written frames, and what follows is written intact.
    #[test]
    fn compaction_keeps_the_frame_being_written() {
        let queued = frames(400, 300);
        let stop = COMPACT_AFTER + 1_000;
        let mut wire = wire(stop, &queued);
        assert!(poll(&mut wire).is_pending());
        assert!(wire.sent < 304, "only the frame being written is kept");
        assert_eq!(wsframe::next_frame_len(&wire.buf), Some(304));
        wire.io.room = usize::MAX;
        assert!(matches!(poll(&mut wire), Poll::Ready(Ok(()))));
        assert_eq!(wire.io.written, queued);
        assert_eq!(wire.budget.queued(), 0);
    }

    /// Abandoning keeps the rest of a frame half written (a close frame
    /// after it is still a frame) and gives back the budget of the others.
    #[test]
    fn abandon_finishes_the_frame_being_written() {
        let queued = frames(10, 100);
        let mut wire = wire(150, &queued);
        assert!(poll(&mut wire).is_pending());
        wire.abandon();
        assert_eq!(wire.buf.len(), 2 * 102, "the second frame is kept whole");
        assert_eq!(wire.budget.queued(), 2 * 102 - 150);
        wire.io.room = usize::MAX;
        assert!(matches!(poll(&mut wire), Poll::Ready(Ok(()))));
        assert_eq!(wire.io.written, &queued[..2 * 102]);
        assert_eq!(wire.budget.queued(), 0);
    }

    /// A client frame (masked), final.
    fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wsframe::write_op_frame(&mut out, op, payload);
        out[1] |= 0x80;
        let mask = [1, 2, 3, 4];
        let body = out.split_off(wsframe::header_len(payload.len()));
        out.extend_from_slice(&mask);
        out.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn next(wire: &mut Wire<Narrow>) -> Poll<Result<ClientMessage, Received>> {
        let waker = futures_util::task::noop_waker();
        wire.poll_message(&mut Context::from_waker(&waker))
    }

    /// Frames split across reads, several in one read, one larger than a
    /// read: each message comes whole, pings are answered with a pong and a
    /// close with its echo, and between messages read to the end nothing is
    /// kept (no allocation).
    #[test]
    fn reads_keep_nothing_between_frames() {
        let big = "x".repeat(3 * READ_CHUNK);
        let mut bytes = client_frame(opcode::TEXT, b"[1,2]");
        bytes.extend(client_frame(opcode::PING, b"hi"));
        bytes.extend(client_frame(opcode::TEXT, big.as_bytes()));
        bytes.extend(client_frame(opcode::BINARY, b"bin"));
        let mut w = wire(usize::MAX, &[]);
        // One read of the first frame and half of the second, then the rest
        // in pieces of 1,000 bytes.
        let first = client_frame(opcode::TEXT, b"[1,2]").len() + 3;
        w.io.incoming.push_back(bytes[..first].to_vec());
        for piece in bytes[first..].chunks(1_000) {
            w.io.incoming.push_back(piece.to_vec());
        }
        let Poll::Ready(Ok(ClientMessage::Text(text))) = next(&mut w) else {
            panic!("no first message");
        };
        assert_eq!(text, "[1,2]");
        assert_eq!(w.unread.len(), 3, "the start of the ping is kept");
        assert!(matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Ping(p))) if p == b"hi"));
        let mut pong = Vec::new();
        wsframe::write_op_frame(&mut pong, opcode::PONG, b"hi");
        assert_eq!(w.buf, pong, "the pong is queued");
        assert_eq!(w.budget.queued(), pong.len(), "and charged");
        assert!(matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Text(t))) if t == big));
        assert!(matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Binary(b))) if b == b"bin"));
        assert_eq!(w.unread.capacity(), 0, "nothing kept between frames");
        assert!(next(&mut w).is_pending());
        assert_eq!(w.unread.capacity(), 0);

        // A burst of frames in one read: each in order, the kept bytes
        // taken in place (not moved), nothing kept after the last.
        let mut w = wire(usize::MAX, &[]);
        let burst: Vec<u8> = (0..100)
            .flat_map(|i| client_frame(opcode::TEXT, format!("[{i}]").as_bytes()))
            .collect();
        w.io.incoming.push_back(burst);
        for i in 0..100 {
            assert!(
                matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Text(t))) if t == format!("[{i}]"))
            );
            if i > 0 && i < 99 {
                assert!(w.taken > 0, "taken in place");
            }
        }
        assert_eq!((w.unread.capacity(), w.taken), (0, 0));

        // A close frame: echoed when its code is allowed, else 1002; then
        // the end of the stream.
        for (code, echo) in [(4000, 4000), (1005, close::PROTOCOL)] {
            let mut w = wire(usize::MAX, &[]);
            let mut payload = u16::to_be_bytes(code).to_vec();
            payload.extend_from_slice(b"bye");
            w.io.incoming
                .push_back(client_frame(opcode::CLOSE, &payload));
            w.io.ended = true;
            assert!(
                matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Close(Some((c, _))))) if c == code)
            );
            assert_eq!(u16::from_be_bytes([w.buf[2], w.buf[3]]), echo);
            assert!(matches!(next(&mut w), Poll::Ready(Err(Received::End))));
        }

        // The header of a frame at the size limit, then nothing: the room
        // kept follows what arrived, not what the header announced; the
        // frame still comes whole once it arrives.
        let payload = vec![b'y'; (1 << 20) - 16];
        let frame = client_frame(opcode::BINARY, &payload);
        let mut w = wire(usize::MAX, &[]);
        w.io.incoming.push_back(frame[..14].to_vec());
        assert!(next(&mut w).is_pending());
        assert!(
            w.unread.capacity() <= 2 * READ_CHUNK,
            "{}",
            w.unread.capacity()
        );
        for piece in frame[14..].chunks(64 * 1024) {
            w.io.incoming.push_back(piece.to_vec());
        }
        assert!(matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Binary(b))) if b == payload));
        assert_eq!(w.unread.capacity(), 0);

        // Bad frames end the connection with the reader's error.
        let mut w = wire(usize::MAX, &[]);
        let mut unmasked = Vec::new();
        wsframe::write_frame(&mut unmasked, true, b"[]");
        w.io.incoming.push_back(unmasked);
        assert!(matches!(
            next(&mut w),
            Poll::Ready(Err(Received::Bad(ReadError::Protocol(_))))
        ));
    }

    /// Bytes read before the socket was handed over (a whole frame and half
    /// of the next) come first; the rest of the split frame comes from the
    /// socket; nothing is kept once both are taken.
    #[test]
    fn early_bytes_are_read_first() {
        let mut bytes = client_frame(opcode::TEXT, b"[\"early\"]");
        let second = client_frame(opcode::TEXT, b"[\"split across\"]");
        let cut = bytes.len() + second.len() / 2;
        bytes.extend_from_slice(&second);
        let mut w = wire(usize::MAX, &[]);
        w.start_with(&bytes[..cut]);
        w.io.incoming.push_back(bytes[cut..].to_vec());
        assert!(
            matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Text(t))) if t == r#"["early"]"#)
        );
        assert!(
            matches!(next(&mut w), Poll::Ready(Ok(ClientMessage::Text(t))) if t == r#"["split across"]"#)
        );
        assert_eq!((w.unread.capacity(), w.taken), (0, 0));
        assert!(next(&mut w).is_pending());
    }

    /// A client's frames, some valid and some not, arriving in pieces of any
    /// size: the connection reads the same messages, and the same error, as
    /// the reader given the whole stream at once, and the room it keeps for
    /// a frame still arriving stays within a small multiple of the bytes
    /// that arrived, whatever a header announced.
    mod reads {
        use super::*;
        use proptest::prelude::*;

        /// Everything `ClientReader` makes of `stream` read whole.
        fn whole(stream: &[u8], max: usize) -> (Vec<ClientMessage>, Option<ReadError>) {
            let (mut reader, mut out, mut at) = (ClientReader::default(), Vec::new(), 0);
            loop {
                match reader.take(&stream[at..], max) {
                    Err(e) => return (out, Some(e)),
                    Ok(Step::More(_)) => return (out, None),
                    Ok(Step::Frame { used, message }) => {
                        at += used;
                        out.extend(message);
                    }
                }
            }
        }

        /// One message's frames: a data frame, or one cut in fragments with
        /// a control frame among them.
        fn message() -> impl Strategy<Value = Vec<u8>> {
            let data = (any::<bool>(), 0..9_000usize, 1..4usize, 0..126usize);
            prop_oneof![
                3 => data.prop_map(|(text, len, fragments, ping)| {
                    let op = if text { opcode::TEXT } else { opcode::BINARY };
                    let body = "é".repeat(len / 2);
                    let parts: Vec<&[u8]> = body.as_bytes().chunks(body.len() / fragments + 1).collect();
                    let mut out = Vec::new();
                    for (i, part) in parts.iter().enumerate() {
                        let mut f = client_frame(if i == 0 { op } else { opcode::CONTINUATION }, part);
                        if i + 1 < parts.len() {
                            f[0] &= 0x7f;
                            out.extend(f);
                            out.extend(client_frame(opcode::PING, &vec![b'p'; ping]));
                        } else {
                            out.extend(f);
                        }
                    }
                    if parts.is_empty() {
                        out.extend(client_frame(op, b""));
                    }
                    out
                }),
                1 => (0..126usize).prop_map(|len| client_frame(opcode::PONG, &vec![b'q'; len])),
            ]
        }

        /// What may end a stream: nothing, a header announcing up to 1 MiB
        /// and part of its frame, or bytes of any kind.
        fn tail() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                2 => Just(Vec::new()),
                1 => (0..(1u64 << 20), 0..5_000usize).prop_map(|(len, some)| {
                    let mut f = vec![0x82, 0xff];
                    f.extend_from_slice(&len.to_be_bytes());
                    f.extend_from_slice(&[1, 2, 3, 4]);
                    f.resize(f.len() + some.min(len as usize), b'z');
                    f
                }),
                1 => prop::collection::vec(any::<u8>(), 1..40),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn pieces_read_as_the_whole(
                messages in prop::collection::vec(message(), 0..12),
                tail in tail(),
                pieces in prop::collection::vec(1..9_000usize, 1..40),
            ) {
                let stream: Vec<u8> = [messages.concat(), tail].concat();
                let max = 1 << 20;
                let (want, want_err) = whole(&stream, max);
                let mut w = wire(usize::MAX, &[]);
                let mut at = 0;
                for len in pieces.iter().cycle() {
                    if at == stream.len() {
                        break;
                    }
                    let end = (at + len).min(stream.len());
                    w.io.incoming.push_back(stream[at..end].to_vec());
                    at = end;
                }
                w.io.ended = true;
                let mut got = Vec::new();
                let err = loop {
                    let polled = next(&mut w);
                    let bound = 4 * w.io.delivered + 4 * READ_CHUNK;
                    prop_assert!(
                        w.unread.capacity() <= bound,
                        "kept {} after {} bytes", w.unread.capacity(), w.io.delivered
                    );
                    match polled {
                        Poll::Ready(Ok(message)) => got.push(message),
                        Poll::Ready(Err(Received::Bad(e))) => break Some(e),
                        Poll::Ready(Err(Received::End)) => break None,
                        Poll::Ready(Err(Received::Failed(e))) => panic!("{e}"),
                        Poll::Pending => panic!("pending with the stream ended"),
                    }
                };
                prop_assert_eq!(got, want);
                prop_assert_eq!(err, want_err);
            }
        }
    }
}
