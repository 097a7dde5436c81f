//! One LongPoll session on the node that owns it: a task owning the client's
//! [`SessionDriver`] (so its [`Session`](crate::socket::Session)), the frames waiting for
//! the next poll, and at most one held poll. Polls and sends reach it as [`LpRequest`]s,
//! from this node's HTTP handlers or forwarded by another node.
//!
//! - a poll is answered at once with everything buffered, or held until something
//!   arrives or the window (10 s) passes (204);
//! - a send decodes the POST body's lines in order (at most 100; `[`/`{` lines are
//!   JSON frames, other lines base64 binary frames) and answers once they ran;
//! - with no poll held and none received for the session timeout (15 s), the session
//!   ends as a closed WebSocket does: channels terminate, presences are untracked;
//! - POST bodies are charged to the session's byte rate (`limits.byte_rate`): while
//!   it is in debt the session takes no request (the client's next POST and poll
//!   wait in its queue of [`SESSION_QUEUE`](super::SESSION_QUEUE) places), as a
//!   WebSocket connection stops reading. A POST whose caller stopped waiting
//!   (answered 408) is dropped when its turn comes, never run: its client was
//!   told it failed.
//!
//! A session in debt still ends once its client is gone: the pause a body buys
//! is at most that body's bytes over the rate (`max_frame_size / byte_rate`, 1 s
//! by default), the POSTs dropped unrun charge nothing, and when the pause ends
//! the session timeout counts from then. So a session whose client left ends at
//! most one such pause and one session timeout after the last POST it ran.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};

use crate::limits::ByteLimiter;
use crate::protocol::{decode_binary, decode_text, FrameError, InFrame, OutFrame, Vsn};
use crate::server::transport::close;
use crate::server::transport::driver::{Exit, HookAnswer, SessionDriver};

/// Most lines of one POST that are processed; the rest are dropped (as Phoenix).
pub const MAX_LINES: usize = 100;

/// Protocol statuses, carried in the JSON body of every answer (the HTTP status is
/// always 200).
pub(crate) mod status {
    pub(crate) const OK: u16 = 200;
    pub(crate) const NO_CONTENT: u16 = 204;
    pub(crate) const BAD_REQUEST: u16 = 400;
    pub(crate) const FORBIDDEN: u16 = 403;
    pub(crate) const TIMEOUT: u16 = 408;
    pub(crate) const GONE: u16 = 410;
    pub(crate) const TOO_LARGE: u16 = 413;
    pub(crate) const TOO_MANY_REQUESTS: u16 = 429;
    pub(crate) const SERVER_ERROR: u16 = 500;
}

/// What a client asks of its session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    /// A GET: the buffered frames, or wait for some.
    Poll,
    /// A POST body: newline-delimited frames, or one text frame (any other content type).
    Send { body: String, ndjson: bool },
    /// Frames a forwarded poll answer could not hand over (its client had gone):
    /// they go back in front of the buffer.
    Requeue(Vec<String>),
}

/// The session's answer: a status and, for a poll, the frames as JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) messages: Vec<String>,
}

impl Answer {
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status,
            messages: Vec::new(),
        }
    }
}

/// One request to a session task.
pub(crate) struct LpRequest {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// LpTiming of a session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LpTiming {
    pub(crate) window: std::time::Duration,
    pub(crate) timeout: std::time::Duration,
}

struct Held {
    reply: oneshot::Sender<Answer>,
    until: Instant,
}

enum LpEvent {
    Drain,
    Overflow,
    Request(Option<LpRequest>),
    Inbound(crate::cluster::mailbox::Inbound),
    HookAnswer(HookAnswer),
    PollGone,
    Timer,
}

/// The owner-side state of one LongPoll session.
pub(crate) struct LpSession {
    driver: SessionDriver,
    requests: mpsc::Receiver<LpRequest>,
    timing: LpTiming,
    /// Frames waiting for a poll, as JSON text, and their bytes (charged to the budget).
    buffer: Vec<String>,
    buffered_bytes: usize,
    held: Option<Held>,
    /// When the last poll arrived or was answered.
    last_poll: Instant,
    /// The byte rate of POST bodies, and when requests are taken again after
    /// a body put it in debt.
    bytes: ByteLimiter,
    resume: Option<Instant>,
}

impl LpSession {
    pub(crate) fn new(
        driver: SessionDriver,
        requests: mpsc::Receiver<LpRequest>,
        timing: LpTiming,
    ) -> Self {
        let limits = &driver.shared.config.client_limits;
        let bytes = ByteLimiter::new(limits.byte_rate, limits.byte_burst);
        Self {
            driver,
            requests,
            timing,
            buffer: Vec::new(),
            buffered_bytes: 0,
            held: None,
            last_poll: Instant::now(),
            bytes,
            resume: None,
        }
    }

    /// Serves requests until the session expires, is disconnected or drained; then
    /// cleans up as a closed WebSocket does. A held poll is answered 410.
    pub(crate) async fn run(mut self, drain: Arc<Notify>) {
        let exit = self.serve(&drain).await;
        let conn = self.driver.conn;
        match &exit {
            Exit::SlowConsumer => {
                warn!(
                    conn,
                    "ending LongPoll session: too many bytes waiting for a poll"
                );
                let stats = &self.driver.shared.stats;
                stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            }
            Exit::Close(code, reason) => debug!(conn, code, reason, "LongPoll session ends"),
            Exit::Gone => debug!(conn, "LongPoll session expired"),
        }
        self.requests.close();
        if let Some(held) = self.held.take() {
            let _ = held.reply.send(Answer::status(status::GONE));
        }
        // Requests that raced the end: their callers see the session gone.
        while let Ok(request) = self.requests.try_recv() {
            let _ = request.reply.send(Answer::status(status::GONE));
        }
        self.driver.cleanup().await;
        self.driver.budget().release(self.buffered_bytes);
    }

    async fn serve(&mut self, drain: &Notify) -> Exit {
        if let Err(exit) = self.driver.start().await {
            return exit;
        }
        let budget = self.driver.budget().clone();
        loop {
            if budget.overflowed() {
                return Exit::SlowConsumer;
            }
            let wake = match &self.held {
                Some(held) => held.until,
                None => self.last_poll + self.timing.timeout,
            };
            let wake = self.resume.map_or(wake, |resume| wake.min(resume));
            let paused = self.resume.is_some();
            let (inbound, hook_answer) = self.driver.events();
            let event = tokio::select! {
                biased;
                _ = drain.notified() => LpEvent::Drain,
                _ = budget.notify.notified() => LpEvent::Overflow,
                request = self.requests.recv(), if !paused => LpEvent::Request(request),
                item = inbound => LpEvent::Inbound(item),
                answer = hook_answer => LpEvent::HookAnswer(answer),
                _ = poll_gone(&mut self.held) => LpEvent::PollGone,
                _ = sleep_until(wake) => LpEvent::Timer,
            };
            let step = match event {
                LpEvent::Drain => Err(Exit::Close(close::RESTART, "server restarting")),
                LpEvent::Overflow => Err(Exit::SlowConsumer),
                LpEvent::Request(Some(request)) => self.handle_request(request).await,
                LpEvent::Request(None) => Err(Exit::Gone),
                LpEvent::Inbound(item) => match self.driver.handle_inbound(item).await {
                    Ok(()) => self.collect(),
                    Err(exit) => Err(exit),
                },
                LpEvent::HookAnswer(answer) => self.handle_hook_answer(answer).await,
                LpEvent::PollGone => {
                    self.held = None;
                    self.last_poll = Instant::now();
                    Ok(())
                }
                LpEvent::Timer => self.handle_timer(),
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// A backend hook answered about a held frame: it runs now, and the frames
    /// that waited behind it. (A frame that decoded cannot fail here but for a
    /// topic too long, which the decoder refuses first.)
    async fn handle_hook_answer(&mut self, answer: HookAnswer) -> Result<(), Exit> {
        if let Err(e) = self.driver.handle_hook_answer(answer) {
            warn!(conn = self.driver.conn, error = %e, "LongPoll: dropping a held frame");
        }
        self.driver.run_actions().await?;
        self.collect()
    }

    fn handle_timer(&mut self) -> Result<(), Exit> {
        let now = Instant::now();
        if self.resume.is_some_and(|resume| resume <= now) {
            // The client's polls waited in the queue meanwhile: the session
            // timeout counts from now.
            self.resume = None;
            self.last_poll = self.last_poll.max(now);
        }
        match self.held.take() {
            Some(held) if held.until <= now => {
                let _ = held.reply.send(Answer::status(status::NO_CONTENT));
                self.last_poll = now;
                Ok(())
            }
            Some(held) => {
                self.held = Some(held);
                Ok(())
            }
            None if self.resume.is_none() && self.last_poll + self.timing.timeout <= now => {
                Err(Exit::Gone)
            }
            None => Ok(()),
        }
    }

    async fn handle_request(&mut self, request: LpRequest) -> Result<(), Exit> {
        let LpRequest { op, reply } = request;
        if matches!(op, Op::Send { .. }) && reply.is_closed() {
            debug!(
                conn = self.driver.conn,
                "LongPoll: dropping a POST its caller gave up on"
            );
            return Ok(());
        }
        match op {
            Op::Poll => {
                let now = Instant::now();
                self.last_poll = now;
                if let Some(old) = self.held.take() {
                    // A newer poll replaces an older one; the older one gets nothing.
                    let _ = old.reply.send(Answer::status(status::NO_CONTENT));
                }
                self.held = Some(Held {
                    reply,
                    until: now + self.timing.window,
                });
                self.deliver();
                Ok(())
            }
            Op::Send { body, ndjson } => {
                let now = Instant::now();
                if let Some(pause) = self.bytes.charge(now.into_std(), body.len()) {
                    self.driver.shared.config.limit_counter.hit("byte_rate");
                    self.resume = Some(now + pause);
                }
                let (answer, result) = self.handle_send(&body, ndjson).await;
                let _ = reply.send(Answer::status(answer));
                result
            }
            Op::Requeue(messages) => {
                let bytes: usize = messages.iter().map(String::len).sum();
                if !self.driver.budget().try_take(bytes) {
                    return Err(Exit::SlowConsumer);
                }
                self.buffered_bytes += bytes;
                self.buffer.splice(0..0, messages);
                let _ = reply.send(Answer::status(status::OK));
                self.deliver();
                Ok(())
            }
        }
    }

    /// Runs a POST body's frames in order. A line that does not decode stops the
    /// batch (the lines before it ran) and is answered 400; the session goes on.
    async fn handle_send(&mut self, body: &str, ndjson: bool) -> (u16, Result<(), Exit>) {
        let lines = body_lines(body, ndjson);
        let vsn = self.driver.session.vsn();
        for line in lines {
            let len = line.len();
            let admitted = decode_line(vsn, line).map(|frame| {
                let admitted = self.driver.admit(&frame, len, std::time::Instant::now());
                (frame, admitted)
            });
            let handled = match admitted {
                Ok((frame, Ok(true))) => self.driver.handle_frame(frame).map_err(LineError::from),
                Ok((_, Ok(false))) => Ok(()),
                Ok((_, Err(exit))) => {
                    // Still over the frame rate after it was told: the session
                    // ends as a WebSocket would close (1008).
                    return (status::TOO_MANY_REQUESTS, Err(exit));
                }
                Err(e) => Err(e),
            };
            if let Err(e) = handled {
                let stats = &self.driver.shared.stats;
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                warn!(conn = self.driver.conn, error = %e, "LongPoll: refusing a line that does not decode");
                return (status::BAD_REQUEST, Ok(()));
            }
            if let Err(exit) = self.driver.run_actions().await {
                return (status::SERVER_ERROR, Err(exit));
            }
            if let Err(exit) = self.collect() {
                return (status::SERVER_ERROR, Err(exit));
            }
        }
        (status::OK, Ok(()))
    }

    /// Moves the session's frames into the buffer and hands them to a held poll.
    /// LongPoll carries text only: a binary frame (a reply or push with a binary
    /// payload) cannot be delivered and is dropped.
    fn collect(&mut self) -> Result<(), Exit> {
        while let Some((frame, cost)) = self.driver.take_frame()? {
            match frame {
                OutFrame::Text(bytes) => {
                    self.buffer
                        .push(String::from_utf8_lossy(&bytes).into_owned());
                    self.buffered_bytes += cost;
                }
                OutFrame::Binary(_) => {
                    self.driver.budget().release(cost);
                    debug!(conn = self.driver.conn, "LongPoll: dropping a binary frame");
                }
            }
        }
        self.deliver();
        Ok(())
    }

    /// Answers the held poll with everything buffered, if both exist. A poll whose
    /// client has gone gets nothing and the frames stay for the next one.
    fn deliver(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let Some(held) = self.held.take() else {
            return;
        };
        self.last_poll = Instant::now();
        let answer = Answer {
            status: status::OK,
            messages: std::mem::take(&mut self.buffer),
        };
        match held.reply.send(answer) {
            Ok(()) => {
                self.driver.budget().release(self.buffered_bytes);
                self.buffered_bytes = 0;
            }
            Err(answer) => self.buffer = answer.messages,
        }
    }
}

/// The frames of a POST body: one per non-empty line of an ndjson body (a `\r\n`
/// ending is allowed), at most [`MAX_LINES`]; any other body is one frame.
pub fn body_lines(body: &str, ndjson: bool) -> Vec<&str> {
    if ndjson {
        body.split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|line| !line.is_empty())
            .take(MAX_LINES)
            .collect()
    } else {
        vec![body]
    }
}

/// Why a POSTed line was refused.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Neither JSON nor standard base64.
    #[error("line is neither a JSON frame nor standard base64")]
    Base64,
    /// The frame does not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A line starting with `[` (v2) or `{` (v1) is a JSON frame; any other line is the
/// standard base64 of a binary frame.
pub fn decode_line(vsn: Vsn, line: &str) -> Result<InFrame, LineError> {
    if line.starts_with('[') || line.starts_with('{') {
        return Ok(decode_text(vsn, line)?);
    }
    let bytes = STANDARD.decode(line).map_err(|_| LineError::Base64)?;
    Ok(decode_binary(vsn, Bytes::from(bytes))?)
}

/// Resolves when the held poll's client stops waiting; never without one.
async fn poll_gone(held: &mut Option<Held>) {
    match held {
        Some(held) => held.reply.closed().await,
        None => std::future::pending().await,
    }
}
