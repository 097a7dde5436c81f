//! A minimal Phoenix Channels v2 JSON client: one WebSocket, frames as
//! `[join_ref, ref, topic, event, payload]` text, nothing else.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chorus_gateway::token::{Claims, Tokens};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a client waits for its join reply.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat period: the server closes a connection silent for 60 s.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Microseconds since the first call in this process: the clock every
/// timestamp in a payload uses, so any client can compare it with its own.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Where clients connect, and how they authenticate.
#[derive(Clone, Debug)]
pub struct Target {
    /// The socket URL, e.g. `ws://127.0.0.1:4000/socket/websocket`.
    pub url: String,
    /// Mints a `token` connect param per user, if set.
    pub tokens: Option<Tokens>,
}

impl Target {
    /// The connect URL of user `user`: `vsn=2.0.0` and, with a secret, a token.
    pub fn url_for(&self, user: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let mut url = format!("{}{sep}vsn=2.0.0", self.url);
        if let Some(tokens) = &self.tokens {
            let token = tokens.sign(&Claims::new(user, Duration::from_secs(3600)));
            url.push_str("&token=");
            url.push_str(&token);
        }
        url
    }
}

/// A received v2 frame; the payload is kept as raw JSON.
#[derive(Debug, Deserialize)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Box<RawValue>,
}

/// The payload of a `phx_reply`.
#[derive(Debug, Deserialize)]
pub struct ReplyPayload {
    pub status: String,
    #[serde(default)]
    pub response: Option<Box<RawValue>>,
}

/// One connection, with counts of what it received.
pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Data frames received.
    pub frames_in: u64,
    /// Bytes of data frames received (WebSocket payloads).
    pub bytes_in: u64,
}

impl Conn {
    /// Opens the WebSocket (small buffers: thousands of these share one box).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with_buffer(url, 4096).await
    }

    /// Opens the WebSocket with a read buffer of `read_buffer` bytes: each read
    /// from the socket takes at most that much.
    pub async fn connect_with_buffer(url: &str, read_buffer: usize) -> anyhow::Result<Self> {
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .context("connecting")?;
        Ok(Self {
            ws,
            frames_in: 0,
            bytes_in: 0,
        })
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Queues one text frame without flushing; [`Conn::flush`] sends it.
    pub async fn feed(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.feed(Message::text(text)).await?;
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.ws.flush().await?;
        Ok(())
    }

    /// Sends a heartbeat on the `phoenix` topic.
    pub async fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.send(frame(None, "hb", "phoenix", "heartbeat", "{}"))
            .await
    }

    /// The next frame; an error when the connection ended (with its close code).
    /// Cancel-safe: nothing is lost when the future is dropped.
    pub async fn recv(&mut self) -> anyhow::Result<Frame> {
        loop {
            let msg = self
                .ws
                .next()
                .await
                .ok_or_else(|| anyhow!("connection ended"))??;
            let text = match msg {
                Message::Text(text) => text,
                Message::Binary(b) => bail!("unexpected binary frame ({} bytes)", b.len()),
                Message::Close(close) => {
                    bail!("closed by the server: {:?}", close.map(|c| c.code))
                }
                _ => continue,
            };
            self.frames_in += 1;
            self.bytes_in += text.len() as u64;
            return serde_json::from_str(text.as_str())
                .with_context(|| format!("not a v2 frame: {}", text.as_str()));
        }
    }

    /// Waits for at least one text frame, then hands `f` every text frame
    /// already received (up to `max`), without parsing them: a receiver that
    /// needs little of each frame reads it itself. Returns how many frames `f`
    /// saw; an error when the connection ended (or sent a binary or close
    /// frame first). Other frames are skipped. Cancel-safe.
    pub async fn recv_texts(
        &mut self,
        max: usize,
        mut f: impl FnMut(&str),
    ) -> anyhow::Result<usize> {
        let mut seen = 0;
        std::future::poll_fn(|cx| {
            use std::task::Poll;
            while seen < max {
                let msg = match self.ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(msg))) => msg,
                    Poll::Ready(Some(Err(e))) if seen == 0 => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) if seen == 0 => {
                        return Poll::Ready(Err(anyhow!("connection ended")))
                    }
                    // An error or the end after some frames ends this batch;
                    // the next call finds the stream ended.
                    Poll::Ready(_) | Poll::Pending => break,
                };
                match msg {
                    Message::Text(text) => {
                        self.frames_in += 1;
                        self.bytes_in += text.len() as u64;
                        seen += 1;
                        f(text.as_str());
                    }
                    Message::Binary(b) if seen == 0 => {
                        return Poll::Ready(Err(anyhow!(
                            "unexpected binary frame ({} bytes)",
                            b.len()
                        )))
                    }
                    Message::Close(close) if seen == 0 => {
                        return Poll::Ready(Err(anyhow!(
                            "closed by the server: {:?}",
                            close.map(|c| c.code)
                        )))
                    }
                    _ => {}
                }
            }
            if seen == 0 {
                Poll::Pending
            } else {
                Poll::Ready(Ok(seen))
            }
        })
        .await
    }

    /// Joins `topic` with join ref `join_ref` and waits for the reply; frames
    /// received before it are dropped. Errors on a refused join.
    pub async fn join(&mut self, topic: &str, join_ref: &str) -> anyhow::Result<()> {
        self.send(frame(Some(join_ref), join_ref, topic, "phx_join", "{}"))
            .await?;
        tokio::time::timeout(JOIN_TIMEOUT, async {
            loop {
                let f = self.recv().await?;
                if f.event == "phx_reply" && f.reference.as_deref() == Some(join_ref) {
                    return check_ok(&f);
                }
            }
        })
        .await
        .context("no join reply")?
    }

    /// Closes the connection (a close frame, then waits briefly for the end).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Whether a `phx_reply` says `ok`; the error names the status and response.
pub fn check_ok(f: &Frame) -> anyhow::Result<()> {
    let reply: ReplyPayload = serde_json::from_str(f.payload.get())?;
    if reply.status == "ok" {
        Ok(())
    } else {
        bail!(
            "{} {}: {}",
            f.topic,
            reply.status,
            reply.response.as_deref().map_or("", RawValue::get)
        )
    }
}

/// A v2 text frame; `payload` must be JSON.
pub fn frame(
    join_ref: Option<&str>,
    reference: &str,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(
        "[{},{},{},{},{payload}]",
        join_ref.map_or("null".into(), q),
        q(reference),
        q(topic),
        q(event)
    )
}
