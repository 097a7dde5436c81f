//! One WebSocket client: a task that owns its [`Session`] through a [`Driver`] (which
//! executes the session's actions against the engine), reads frames, and a writer
//! task that owns the socket's sink and writes queued frames in batches (several
//! frames fed, then one flush).
//!
//! Everything queued for the client (replies, pushes, broadcasts handed over by the
//! [`Hub`](super::hub::Hub)) is charged to one byte [`Budget`] (default 1 MiB). A client that stops
//! reading exhausts it and is closed with 1008; the others never wait for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

use super::driver::{Driver, Exit};
use super::hub::{Budget, Inbound};
use super::Shared;
use crate::protocol::{decode_binary, decode_text, FrameError, OutFrame};
use crate::socket::Session;

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
    driver: Driver,
    writer: mpsc::UnboundedSender<Outbound>,
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
        let (sink, mut stream) = ws.split();
        let driver = Driver::new(shared.clone(), conn, session, true);
        let (writer, writer_rx) = mpsc::unbounded_channel();
        let (kill, kill_rx) = oneshot::channel();
        let writer_task = tokio::spawn(write_loop(
            sink,
            writer_rx,
            kill_rx,
            driver.budget().clone(),
            shared.config.write_batch,
        ));
        let mut this = Connection { driver, writer };
        let exit = this.serve(&mut stream, &drain).await;
        this.driver.cleanup().await;
        match exit {
            Exit::Close(code, reason) => {
                let _ = this.writer.send(Outbound::Close(close_frame(code, reason)));
            }
            Exit::SlowConsumer => {
                shared.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                let _ = kill.send(close_frame(close::SLOW_CONSUMER, "slow consumer"));
            }
            Exit::Gone => {}
        }
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
        if self.driver.shared.draining.load(Ordering::Acquire) {
            return Exit::Close(close::RESTART, "server restarting");
        }
        if let Err(exit) = self.driver.start().await {
            return exit;
        }
        let idle = self.driver.shared.config.idle_timeout;
        let mut deadline = Instant::now() + idle;
        let budget = self.driver.budget().clone();
        loop {
            if budget.overflowed() {
                return Exit::SlowConsumer;
            }
            let event = tokio::select! {
                biased;
                _ = drain.notified() => Event::Drain,
                _ = budget.notify.notified() => Event::Overflow,
                item = self.driver.recv() => Event::Inbound(item),
                msg = stream.next() => Event::Frame(msg),
                _ = sleep_until(deadline) => Event::Idle,
            };
            let step = match event {
                Event::Drain => Err(Exit::Close(close::RESTART, "server restarting")),
                Event::Overflow => Err(Exit::SlowConsumer),
                Event::Inbound(Some(item)) => match self.driver.handle_inbound(item).await {
                    Ok(()) => self.flush(),
                    Err(exit) => Err(exit),
                },
                Event::Inbound(None) => Err(Exit::Gone),
                Event::Frame(msg) => {
                    deadline = Instant::now() + idle;
                    self.handle_message(msg).await
                }
                Event::Idle => {
                    debug!(conn = self.driver.conn, "idle timeout");
                    Err(Exit::Close(close::SERVER_ERROR, "idle timeout"))
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
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
        let handled = decoded.and_then(|frame| self.driver.handle_frame(frame, len));
        if let Err(e) = handled {
            return Err(self.invalid(&e));
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

    /// Queues the session's frames for the writer (the actions already ran).
    fn flush(&mut self) -> Result<(), Exit> {
        while let Some((frame, cost)) = self.driver.take_frame()? {
            let _ = self.writer.send(Outbound::Frame(frame, cost));
        }
        Ok(())
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
