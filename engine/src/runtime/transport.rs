//! The QUIC transport between nodes: one endpoint per node, one connection per
//! peer, two lanes per connection.
//!
//! # Lanes
//!
//! - **Datagrams** (QUIC unreliable datagrams, RFC 9221) carry the bodies the
//!   core marks [`Body::loss_tolerant`](crate::codec::Body::loss_tolerant):
//!   `Hello`, `Digest` and the SWIM probes (`Ping`, `PingAck`, `PingReq`,
//!   `PingNack`). Each is idempotent and superseded by the next one the node's
//!   timers send anyway (hellos are repeated every anti-entropy period until the
//!   seed answers, probes every protocol period, digests every anti-entropy
//!   period), so retransmitting a lost one would only add latency and
//!   head-of-line blocking for newer information. Probes on datagrams also
//!   measure what failure detection needs: whether the peer's packets arrive
//!   now, not whether a retransmission eventually got through. A
//!   loss-tolerant body too big for one datagram (a digest of a very large
//!   cluster) goes on the stream instead.
//! - **One long-lived unidirectional stream per direction** carries everything
//!   else (`Members`, `Delta`, `Ack`, `Repair`, `Broadcast`, `Leave`) as frames
//!   of `u32` big-endian length + [`Message::encode`] bytes. One stream gives
//!   reliability and, crucially, order: broadcasts from one node reach another
//!   in publish order, a delta is never overtaken by a later one or by the
//!   `Leave` behind it, and acknowledgements stay meaningful. A stream per
//!   message would lose that order; several streams would need sequence numbers
//!   and a reorder buffer, which is what one stream already is. The cost is
//!   head-of-line blocking on loss between one pair of nodes, which affects only
//!   that pair.
//!
//! # Connections
//!
//! The node task dials an address on its first transmit to it and queues frames
//! while the handshake and [authentication](super::auth) run. Inbound
//! connections are accepted on the same endpoint. When two nodes dial each
//! other at once, both keep the connection dialed by the node with the smaller
//! advertised address; the other is drained (its queued frames are still
//! written, then its streams finished) and closed. A connection from a new
//! engine instance at a known address (a restarted node) replaces the old one
//! at once.
//!
//! # Back-pressure
//!
//! A slow or stuck peer never blocks the node task or other peers: each
//! connection has its own writer, and its queue is bounded in bytes
//! ([`super::EngineConfig::peer_queue_bytes`], 16 MiB by default). A frame that
//! does not fit is dropped and counted; the core's retransmission of unacked
//! deltas and its anti-entropy repair presence afterwards (a dropped broadcast
//! is lost, as with any overloaded PubSub). A large state transfer does not
//! rely on this: the core paces repairs by acknowledgement and keeps at most
//! `repair_window` bytes of them in flight per peer, capped at half this
//! queue, and the node task queues a repair only while the queue then holds
//! at most half its cap (`OutQueue::push_within`); one that does not fit
//! goes back to the core, which sends it again later. Inbound, each connection's stream reader waits for room in the node
//! task's bounded input channel, so QUIC flow control pushes back on a peer
//! that sends faster than the node can merge. Datagrams (probes, digests) go
//! to a separate control channel that the node task serves first, so a
//! backlog of stream frames never delays failure detection by more than the
//! message being handled; a datagram that finds the control channel full is
//! dropped, like any lost datagram.
//!
//! An authenticated connection is announced (`Up`) on the control channel
//! too, so the node installs it before handling any of its datagrams.
//!
//! A frame header announcing more than [`MAX_FRAME`] bytes, a frame or datagram
//! that does not decode, or a failed handshake closes that one connection with
//! an application error code from [`codes`]; the node keeps running.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, trace};

use super::auth::{self, AuthError, PeerHello, Role};
use crate::codec::{DecodeError, Message, MAX_FRAME};
use crate::id::NodeId;

/// Application error codes on connection close.
pub mod codes {
    /// Orderly close: drained duplicate, or both directions finished.
    pub const DONE: u32 = 0;
    /// The engine is shutting down.
    pub const SHUTDOWN: u32 = 1;
    /// Replaced by a connection from a newer instance of the peer.
    pub const REPLACED: u32 = 2;
    /// The cluster-secret proof was missing, malformed or wrong.
    pub const AUTH_FAILED: u32 = 0x10;
    /// A frame or datagram did not decode.
    pub const PROTOCOL: u32 = 0x11;
    /// A frame header announced more than `MAX_FRAME` bytes.
    pub const FRAME_TOO_LARGE: u32 = 0x12;
}

/// QUIC transport parameters for gossip connections.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // One hello stream, one gossip stream each way.
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(1u8.into());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10)).expect("10 s is a valid timeout"),
    ));
    t.datagram_receive_buffer_size(Some(1 << 20));
    // Room for a large state transfer in flight to a late joiner.
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((16u32 << 20).into());
    t.send_window(16 << 20);
    Arc::new(t)
}

/// One encoded message on its way to a peer.
#[derive(Debug)]
pub(crate) struct PeerFrame {
    pub bytes: Bytes,
    pub datagram: bool,
}

/// Per-frame bookkeeping cost added to the queue's byte count, so a flood of
/// tiny frames is bounded too.
const FRAME_OVERHEAD: usize = 64;

/// The sending half of a peer's bounded outbound queue.
#[derive(Debug, Clone)]
pub(crate) struct OutQueue {
    tx: mpsc::UnboundedSender<PeerFrame>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

/// The receiving half, owned by the connection's writer.
#[derive(Debug)]
pub(crate) struct OutReceiver {
    rx: mpsc::UnboundedReceiver<PeerFrame>,
    queued: Arc<AtomicUsize>,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The queue holds `cap` bytes already.
    Full,
    /// The writer is gone.
    Closed,
}

pub(crate) fn out_queue(cap: usize) -> (OutQueue, OutReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        OutQueue {
            tx,
            queued: queued.clone(),
            cap,
        },
        OutReceiver { rx, queued },
    )
}

impl OutQueue {
    /// Whether [`OutQueue::push_within`] refuses any frame with `limit` now:
    /// the queue is not empty and holds `limit` bytes or more.
    pub fn refuses_within(&self, limit: usize) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        queued > 0 && queued >= limit.min(self.cap)
    }

    /// Queues without waiting. A frame larger than the cap still goes when the
    /// queue is empty.
    /// The frame comes back with the error.
    pub fn push(&self, frame: PeerFrame) -> Result<(), (QueueError, PeerFrame)> {
        self.push_within(frame, self.cap)
    }

    /// Queues without waiting if the queue then holds at most `limit` bytes
    /// (at most the cap; a frame larger than `limit` still goes when the
    /// queue is empty). The frame comes back with the error.
    pub fn push_within(
        &self,
        frame: PeerFrame,
        limit: usize,
    ) -> Result<(), (QueueError, PeerFrame)> {
        let cost = frame.bytes.len() + FRAME_OVERHEAD;
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued + cost > limit.min(self.cap) {
            return Err((QueueError::Full, frame));
        }
        self.queued.fetch_add(cost, Ordering::AcqRel);
        self.tx.send(frame).map_err(|e| {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            (QueueError::Closed, e.0)
        })
    }
}

impl OutReceiver {
    async fn recv(&mut self) -> Option<PeerFrame> {
        let f = self.rx.recv().await?;
        self.queued
            .fetch_sub(f.bytes.len() + FRAME_OVERHEAD, Ordering::AcqRel);
        Some(f)
    }
}

/// What connection tasks tell the node task.
#[derive(Debug)]
pub(crate) enum PeerInbound {
    /// A decoded message from an authenticated peer.
    Message {
        peer: SocketAddr,
        /// Who authenticated on the connection: the node drops a message
        /// that claims another sender.
        from: Arc<NodeId>,
        msg: Message,
        len: usize,
    },
    /// A message that decoded but broke the codec's checks
    /// ([`DecodeError::Invalid`]), or whose advertised address is not the
    /// one its connection authenticated: dropped whole, the connection kept.
    Rejected { peer: SocketAddr, why: Rejection },
    /// A connection authenticated.
    Up(LinkUp),
    /// A connection ended.
    Closed {
        /// Its key (the dialed address, or the peer's advertised address once
        /// known); `None` for an accepted connection that never authenticated.
        peer: Option<SocketAddr>,
        conn_id: u64,
        why: CloseWhy,
    },
    /// A new inbound connection to handshake.
    Incoming(Box<quinn::Incoming>),
}

/// An authenticated connection, offered to the node task.
#[derive(Debug)]
pub(crate) struct LinkUp {
    /// The key: the dialed address, or the peer's advertised one.
    pub peer: SocketAddr,
    pub conn_id: u64,
    pub dialed: bool,
    pub hello: PeerHello,
    pub conn: quinn::Connection,
    /// The queue of an accepted connection (dialed ones got theirs at dial).
    pub queue: Option<OutQueue>,
}

/// Why a message was dropped whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// It broke the codec's checks on values (a meta that is not a JSON
    /// object, an oversized topic, ...).
    Invalid,
    /// Its `addr` is not the address its connection authenticated.
    Address,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseWhy {
    /// Drained and closed in order.
    Done,
    /// Dial, handshake or path failure.
    Lost,
    /// The peer did not prove the secret.
    AuthFailed,
    /// A bad frame or datagram.
    Protocol,
}

/// What every connection task needs.
#[derive(Clone, Debug)]
pub(crate) struct LinkCtx {
    pub secret: Arc<[u8]>,
    pub me: PeerHello,
    pub auth_timeout: Duration,
    pub queue_cap: usize,
    pub inbound: mpsc::Sender<PeerInbound>,
    /// The node task's datagram-lane input, served before `inbound`.
    pub control: mpsc::Sender<PeerInbound>,
    pub shutdown: watch::Receiver<bool>,
}

/// How a connection starts.
enum Start {
    Dial(quinn::Connecting, OutReceiver),
    Accept(Box<quinn::Incoming>),
}

/// Dials `peer` and runs the connection; frames pushed to the queue before the
/// handshake completes are sent after it.
pub(crate) async fn run_dialed(
    ctx: LinkCtx,
    endpoint: quinn::Endpoint,
    peer: SocketAddr,
    conn_id: u64,
    rx: OutReceiver,
) {
    let why = match endpoint.connect(peer, super::tls::SERVER_NAME) {
        Ok(connecting) => {
            let mut key = Some(peer);
            run_inner(&ctx, &mut key, conn_id, Start::Dial(connecting, rx)).await
        }
        Err(e) => {
            debug!(peer = %peer, error = %e, "dial refused");
            CloseWhy::Lost
        }
    };
    let _ = ctx
        .inbound
        .send(PeerInbound::Closed {
            peer: Some(peer),
            conn_id,
            why,
        })
        .await;
}

/// Handshakes and runs an inbound connection.
pub(crate) async fn run_accepted(ctx: LinkCtx, incoming: Box<quinn::Incoming>, conn_id: u64) {
    let mut key = None;
    let why = run_inner(&ctx, &mut key, conn_id, Start::Accept(incoming)).await;
    let _ = ctx
        .inbound
        .send(PeerInbound::Closed {
            peer: key,
            conn_id,
            why,
        })
        .await;
}

async fn run_inner(
    ctx: &LinkCtx,
    key: &mut Option<SocketAddr>,
    conn_id: u64,
    start: Start,
) -> CloseWhy {
    let deadline = tokio::time::Instant::now() + ctx.auth_timeout;
    let (conn, rx, auth_role) = match start {
        Start::Dial(connecting, rx) => match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => (conn, Some(rx), Role::Dialer),
            Ok(Err(e)) => {
                debug!(peer = ?key, error = %e, "dial failed");
                return CloseWhy::Lost;
            }
            Err(_) => {
                debug!(peer = ?key, "dial timed out");
                return CloseWhy::Lost;
            }
        },
        Start::Accept(incoming) => {
            let connecting = match (*incoming).accept() {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "inbound connection refused");
                    return CloseWhy::Lost;
                }
            };
            match tokio::time::timeout_at(deadline, connecting).await {
                Ok(Ok(conn)) => (conn, None, Role::Acceptor),
                Ok(Err(e)) => {
                    debug!(error = %e, "inbound handshake failed");
                    return CloseWhy::Lost;
                }
                Err(_) => return CloseWhy::Lost,
            }
        }
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let hello = match auth::authenticate(&conn, auth_role, &ctx.secret, &ctx.me, remaining).await {
        Ok(hello) => hello,
        Err(e) => {
            debug!(remote = %conn.remote_address(), error = %e, "authentication failed");
            let why = match e {
                AuthError::Io(_) => CloseWhy::Lost,
                _ => CloseWhy::AuthFailed,
            };
            conn.close(codes::AUTH_FAILED.into(), b"authentication failed");
            return why;
        }
    };
    let peer = key.unwrap_or(hello.addr);
    *key = Some(peer);
    trace!(peer = %peer, remote = %conn.remote_address(), "authenticated");
    let (rx, queue) = match rx {
        Some(rx) => (rx, None),
        None => {
            let (q, rx) = out_queue(ctx.queue_cap);
            (rx, Some(q))
        }
    };
    let up = LinkUp {
        peer,
        conn_id,
        dialed: auth_role == Role::Dialer,
        hello: hello.clone(),
        conn: conn.clone(),
        queue,
    };
    // On the control channel, ahead of this connection's datagrams (which
    // the node task serves before its input channel): a datagram handled
    // before its connection is installed would make the node dial the peer
    // for the answer and duplicate the connection.
    if ctx.control.send(PeerInbound::Up(up)).await.is_err() {
        conn.close(codes::SHUTDOWN.into(), b"shutdown");
        return CloseWhy::Done;
    }
    let result = serve(ctx, &conn, peer, &hello, rx).await;
    match result {
        Ok(()) => {
            let code = if *ctx.shutdown.borrow() {
                codes::SHUTDOWN
            } else {
                codes::DONE
            };
            conn.close(code.into(), b"done");
            CloseWhy::Done
        }
        Err(Fault::Lost) => CloseWhy::Lost,
        Err(Fault::Protocol(code, why)) => {
            debug!(peer = %peer, reason = why, "closing connection on a bad frame");
            conn.close(code.into(), why.as_bytes());
            CloseWhy::Protocol
        }
    }
}

enum Fault {
    Lost,
    Protocol(u32, &'static str),
}

/// Runs the writer, the stream reader and the datagram reader of an
/// authenticated connection. Ends `Ok` when our queue is closed and drained
/// and (unless shutting down) the peer finished its stream too.
async fn serve(
    ctx: &LinkCtx,
    conn: &quinn::Connection,
    peer: SocketAddr,
    hello: &PeerHello,
    rx: OutReceiver,
) -> Result<(), Fault> {
    let link = Inbound {
        peer,
        hello,
        from: Arc::new(hello.id.clone()),
        tx: &ctx.inbound,
        control: &ctx.control,
    };
    let writer = write_loop(conn, rx);
    let reader = read_stream(conn, &link);
    let datagrams = read_datagrams(conn, &link);
    tokio::pin!(writer, reader, datagrams);
    let mut shutdown = ctx.shutdown.clone();
    let (mut wrote, mut read) = (false, false);
    loop {
        tokio::select! {
            r = &mut writer, if !wrote => { r?; wrote = true; }
            r = &mut reader, if !read => { r?; read = true; }
            r = &mut datagrams => return r,
            _ = shutdown.changed(), if !*shutdown.borrow() => {}
        }
        if wrote && (read || *shutdown.borrow()) {
            return Ok(());
        }
    }
}

async fn write_loop(conn: &quinn::Connection, mut rx: OutReceiver) -> Result<(), Fault> {
    let mut stream = conn.open_uni().await.map_err(|_| Fault::Lost)?;
    while let Some(frame) = rx.recv().await {
        if frame.datagram
            && conn
                .max_datagram_size()
                .is_some_and(|m| frame.bytes.len() <= m)
        {
            match conn.send_datagram(frame.bytes.clone()) {
                Ok(()) => continue,
                Err(quinn::SendDatagramError::ConnectionLost(_)) => return Err(Fault::Lost),
                Err(_) => {}
            }
        }
        let len = u32::try_from(frame.bytes.len()).expect("frames are under MAX_FRAME");
        stream
            .write_all(&len.to_be_bytes())
            .await
            .map_err(|_| Fault::Lost)?;
        stream
            .write_chunk(frame.bytes)
            .await
            .map_err(|_| Fault::Lost)?;
    }
    // Drained and closed: finish the stream and wait until the peer has it all.
    let _ = stream.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stopped()).await;
    Ok(())
}

/// Where an authenticated connection's readers send what they decode.
struct Inbound<'a> {
    peer: SocketAddr,
    hello: &'a PeerHello,
    from: Arc<NodeId>,
    tx: &'a mpsc::Sender<PeerInbound>,
    control: &'a mpsc::Sender<PeerInbound>,
}

impl Inbound<'_> {
    /// Decodes one frame and hands it to the node task. A frame that is not
    /// a message closes the connection; a message that breaks the codec's
    /// value checks, or advertises another address than the connection
    /// authenticated, is dropped whole and counted.
    ///
    /// A datagram goes to the node task's control lane without waiting: when
    /// that is full (the node is far behind) it is dropped, as the network
    /// may drop any datagram. A stream frame waits for room, which is how
    /// QUIC flow control pushes back on a peer sending faster than the node
    /// merges.
    async fn deliver(&self, frame: &[u8], what: &'static str, datagram: bool) -> Result<(), Fault> {
        let inbound = match Message::decode(frame) {
            Ok(msg) if msg.addr != self.hello.addr => PeerInbound::Rejected {
                peer: self.peer,
                why: Rejection::Address,
            },
            Ok(msg) => PeerInbound::Message {
                peer: self.peer,
                from: self.from.clone(),
                msg,
                len: frame.len(),
            },
            Err(DecodeError::Invalid { .. }) => PeerInbound::Rejected {
                peer: self.peer,
                why: Rejection::Invalid,
            },
            Err(_) => return Err(Fault::Protocol(codes::PROTOCOL, what)),
        };
        if datagram {
            return match self.control.try_send(inbound) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Fault::Lost),
            };
        }
        self.tx.send(inbound).await.map_err(|_| Fault::Lost)
    }
}

async fn read_stream(conn: &quinn::Connection, link: &Inbound<'_>) -> Result<(), Fault> {
    let mut stream = conn.accept_uni().await.map_err(|_| Fault::Lost)?;
    loop {
        let mut head = [0u8; 4];
        match stream.read_exact(&mut head).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(()),
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return Err(Fault::Protocol(codes::PROTOCOL, "truncated frame header"))
            }
            Err(quinn::ReadExactError::ReadError(_)) => return Err(Fault::Lost),
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(Fault::Protocol(codes::FRAME_TOO_LARGE, "frame too large"));
        }
        let mut buf = vec![0u8; len];
        match stream.read_exact(&mut buf).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return Err(Fault::Protocol(codes::PROTOCOL, "truncated frame"))
            }
            Err(quinn::ReadExactError::ReadError(_)) => return Err(Fault::Lost),
        }
        link.deliver(&buf, "undecodable frame", false).await?;
    }
}

async fn read_datagrams(conn: &quinn::Connection, link: &Inbound<'_>) -> Result<(), Fault> {
    loop {
        let bytes = conn.read_datagram().await.map_err(|_| Fault::Lost)?;
        link.deliver(&bytes, "undecodable datagram", true).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> PeerFrame {
        PeerFrame {
            bytes: Bytes::from(vec![0u8; n]),
            datagram: false,
        }
    }

    #[tokio::test]
    async fn queue_is_bounded_in_bytes_and_drains() {
        let (q, mut rx) = out_queue(1000);
        // A frame larger than the cap goes through an empty queue.
        q.push(frame(5000)).unwrap();
        assert_eq!(q.push(frame(10)).unwrap_err().0, QueueError::Full);
        assert_eq!(rx.recv().await.unwrap().bytes.len(), 5000);
        for _ in 0..10 {
            q.push(frame(20)).unwrap();
        }
        assert_eq!(q.push(frame(300)).unwrap_err().0, QueueError::Full);
        for _ in 0..10 {
            rx.recv().await.unwrap();
        }
        q.push(frame(300)).unwrap();
        drop(rx);
        assert_eq!(q.push(frame(1)).unwrap_err().0, QueueError::Closed);
    }

    /// `refuses_within` says, without a frame, when `push_within` refuses
    /// every frame: the queue is not empty and holds the limit (at most the
    /// cap) already.
    #[test]
    fn refuses_within_agrees_with_push_within() {
        let (q, _rx) = out_queue(1000);
        assert!(!q.refuses_within(0), "an empty queue takes any frame");
        q.push(frame(300 - FRAME_OVERHEAD)).unwrap();
        assert!(!q.refuses_within(301));
        assert!(q.refuses_within(300));
        assert_eq!(
            q.push_within(frame(1), 300).unwrap_err().0,
            QueueError::Full
        );
        assert!(!q.refuses_within(5000), "the cap, 1000, is not reached");
    }
}
