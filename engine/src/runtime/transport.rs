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
//! The node task dials an address on its first transmit to it and queues stream
//! frames (and holds datagrams, below) while the handshake and
//! [authentication](super::auth) run. Inbound
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
//! connection has its own writer, and its stream queue is bounded in bytes
//! ([`super::EngineConfig::peer_queue_bytes`], 16 MiB by default). A stream
//! frame that does not fit is dropped and counted; the core's retransmission of unacked
//! deltas and its anti-entropy repair presence afterwards (a dropped broadcast
//! is lost, as with any overloaded PubSub). A large state transfer does not
//! rely on this: the core paces repairs by acknowledgement and keeps at most
//! `repair_window` bytes of them in flight per peer, capped at half this
//! queue, and the node task queues a repair only while the queue then holds
//! at most half its cap (`OutQueue::push_within`); one that does not fit
//! goes back to the core, which sends it again later.
//!
//! Datagrams never enter that queue: `OutQueue::push` hands them to quinn's
//! `send_datagram` at once, which never waits (quinn keeps at most 1 MiB of
//! unsent datagrams, dropping the oldest, and packs datagrams ahead of stream
//! data). So a probe never waits behind stream frames held back by the peer's
//! flow control, nor is dropped because they fill the queue: failure
//! detection measures whether the peer's packets arrive, not our backlog to
//! it. (A probe used to wait in the same queue: a burst of 48 MiB of
//! broadcasts to a peer that read slowly got it marked down while it
//! answered every probe that reached it.) Until the connection
//! authenticates, datagrams are held apart (the newest
//! `PENDING_DATAGRAM_BYTES`, 64 KiB) and sent as it comes up.
//!
//! A peer that answers probes but never reads its stream therefore stays up,
//! as a slow node does (down means its packets stop arriving): its queue
//! stays full, every further stream frame to it is dropped and counted
//! (deltas are resent and dropped again, broadcasts are lost), repairs go
//! back to the core, and broadcasts to it wait for credit it never returns,
//! a window per topic per second (ALGORITHM.md §7, §9). It costs the node
//! this queue and a stream window in flight; nothing closes the connection.
//!
//! Inbound, each connection's stream reader waits for room in the node
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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// A loss-tolerant body: sent as a datagram if it fits one.
    pub datagram: bool,
}

/// Per-frame bookkeeping cost added to the queue's byte count, so a flood of
/// tiny frames is bounded too.
const FRAME_OVERHEAD: usize = 64;

/// Datagrams held while a dialed connection handshakes and authenticates
/// (at most `auth_timeout`, 5 s), counted with [`FRAME_OVERHEAD`] each. The
/// node's timers send a peer a few small ones in that time (a hello, a digest
/// every anti-entropy period, a probe every protocol period): a few KiB.
/// Past this bound the oldest go first, as the network may drop any
/// datagram. A loss-tolerant body bigger than this is never a datagram (a
/// QUIC datagram fits in one UDP packet, under 64 KiB) and is queued on the
/// stream at once.
const PENDING_DATAGRAM_BYTES: usize = 64 << 10;

/// The sending half of a peer's outbound lanes: datagrams go to quinn at once
/// (held in a small buffer until the connection authenticates), stream
/// frames to a queue bounded in bytes.
#[derive(Debug, Clone)]
pub(crate) struct OutQueue {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    cap: usize,
    datagrams: Arc<DatagramLane>,
}

/// The receiving half, owned by the connection's writer.
#[derive(Debug)]
pub(crate) struct OutReceiver {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    datagrams: Arc<DatagramLane>,
}

/// A peer's datagrams. They never wait behind stream frames, nor count
/// against the stream queue's bytes: a probe must measure whether the
/// peer's packets arrive now, not how far its stream is behind.
#[derive(Debug, Default)]
struct DatagramLane(Mutex<Lane>);

#[derive(Debug)]
enum Lane {
    /// Dialing or authenticating: the newest datagrams, at most
    /// [`PENDING_DATAGRAM_BYTES`] with overhead.
    Pending { held: VecDeque<Bytes>, bytes: usize },
    /// Authenticated: each datagram goes to `send_datagram`, which never
    /// waits (quinn drops the oldest unsent ones past its 1 MiB send buffer,
    /// and puts datagrams ahead of stream data in every packet).
    Open(quinn::Connection),
}

impl Default for Lane {
    fn default() -> Self {
        Lane::Pending {
            held: VecDeque::new(),
            bytes: 0,
        }
    }
}

/// Where a datagram went.
#[derive(Debug)]
enum Sent {
    /// Handed to quinn, or held until the connection authenticates.
    Datagram,
    /// Too big for a datagram on this connection: it goes on the stream.
    Stream(Bytes),
    /// The connection is gone.
    Lost(Bytes),
}

impl DatagramLane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lane> {
        // Nothing panics while holding it; a poisoned lane is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, bytes: Bytes) -> Sent {
        let conn = match &mut *self.lock() {
            Lane::Open(conn) => conn.clone(),
            Lane::Pending { .. } if bytes.len() + FRAME_OVERHEAD > PENDING_DATAGRAM_BYTES => {
                return Sent::Stream(bytes)
            }
            Lane::Pending { held, bytes: total } => {
                *total += bytes.len() + FRAME_OVERHEAD;
                held.push_back(bytes);
                while *total > PENDING_DATAGRAM_BYTES {
                    let old = held.pop_front().expect("the held bytes are counted");
                    *total -= old.len() + FRAME_OVERHEAD;
                    trace!("datagram held for a connection not up yet dropped");
                }
                return Sent::Datagram;
            }
        };
        send_datagram(&conn, bytes)
    }

    /// From now on datagrams go on `conn`; those held go now. Returns the
    /// held ones too big for a datagram, for the stream.
    fn open(&self, conn: &quinn::Connection) -> Vec<Bytes> {
        let held = match std::mem::replace(&mut *self.lock(), Lane::Open(conn.clone())) {
            Lane::Pending { held, .. } => held,
            Lane::Open(_) => VecDeque::new(),
        };
        held.into_iter()
            .filter_map(|bytes| match send_datagram(conn, bytes) {
                Sent::Stream(bytes) => Some(bytes),
                Sent::Datagram | Sent::Lost(_) => None,
            })
            .collect()
    }
}

fn send_datagram(conn: &quinn::Connection, bytes: Bytes) -> Sent {
    if conn.max_datagram_size().is_none_or(|max| bytes.len() > max) {
        return Sent::Stream(bytes);
    }
    match conn.send_datagram(bytes.clone()) {
        Ok(()) => Sent::Datagram,
        Err(quinn::SendDatagramError::ConnectionLost(_)) => Sent::Lost(bytes),
        // Too large for a path that shrank, or datagrams off.
        Err(_) => Sent::Stream(bytes),
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The queue holds `cap` bytes already.
    Full,
    /// The writer is gone.
    Closed,
}

/// A peer's outbound lanes; the stream queue holds at most `cap` bytes.
pub(crate) fn out_queue(cap: usize) -> (OutQueue, OutReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let datagrams = Arc::new(DatagramLane::default());
    (
        OutQueue {
            tx,
            queued: queued.clone(),
            cap,
            datagrams: datagrams.clone(),
        },
        OutReceiver {
            rx,
            queued,
            datagrams,
        },
    )
}

impl OutQueue {
    /// Whether [`OutQueue::push_within`] refuses any stream frame with
    /// `limit` now: the queue is not empty and holds `limit` bytes or more.
    pub fn refuses_within(&self, limit: usize) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        queued > 0 && queued >= limit.min(self.cap)
    }

    /// Sends or queues without waiting (see [`OutQueue::push_within`]),
    /// within the cap.
    pub fn push(&self, frame: PeerFrame) -> Result<(), (QueueError, PeerFrame)> {
        self.push_within(frame, self.cap)
    }

    /// Sends a datagram frame at once (held until the connection
    /// authenticates), whatever the stream queue holds; one too big for a
    /// datagram is a stream frame. Queues a stream frame without waiting if
    /// the queue then holds at most `limit` bytes (at most the cap; a frame
    /// larger than `limit` still goes when the queue is empty). The frame
    /// comes back with the error.
    pub fn push_within(
        &self,
        frame: PeerFrame,
        limit: usize,
    ) -> Result<(), (QueueError, PeerFrame)> {
        if self.tx.is_closed() {
            return Err((QueueError::Closed, frame));
        }
        let datagram = frame.datagram;
        let bytes = if datagram {
            match self.datagrams.send(frame.bytes) {
                Sent::Datagram => return Ok(()),
                Sent::Stream(bytes) => bytes,
                Sent::Lost(bytes) => {
                    return Err((
                        QueueError::Closed,
                        PeerFrame {
                            bytes,
                            datagram: true,
                        },
                    ))
                }
            }
        } else {
            frame.bytes
        };
        let cost = bytes.len() + FRAME_OVERHEAD;
        let queued = self.queued.load(Ordering::Acquire);
        let back = |e, bytes| Err((e, PeerFrame { bytes, datagram }));
        if queued > 0 && queued + cost > limit.min(self.cap) {
            return back(QueueError::Full, bytes);
        }
        self.queued.fetch_add(cost, Ordering::AcqRel);
        self.tx.send(bytes).or_else(|e| {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            back(QueueError::Closed, e.0)
        })
    }
}

impl OutReceiver {
    async fn recv(&mut self) -> Option<Bytes> {
        let bytes = self.rx.recv().await?;
        self.queued
            .fetch_sub(bytes.len() + FRAME_OVERHEAD, Ordering::AcqRel);
        Some(bytes)
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

/// Writes the stream frames. Datagrams do not pass here: from the start,
/// [`OutQueue::push`] sends them on the connection itself, so they never
/// wait while this loop waits for the peer's flow control.
async fn write_loop(conn: &quinn::Connection, mut rx: OutReceiver) -> Result<(), Fault> {
    let held = rx.datagrams.open(conn);
    let mut stream = conn.open_uni().await.map_err(|_| Fault::Lost)?;
    for bytes in held {
        write_frame(&mut stream, bytes).await?;
    }
    while let Some(bytes) = rx.recv().await {
        write_frame(&mut stream, bytes).await?;
    }
    // Drained and closed: finish the stream and wait until the peer has it all.
    let _ = stream.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stopped()).await;
    Ok(())
}

async fn write_frame(stream: &mut quinn::SendStream, bytes: Bytes) -> Result<(), Fault> {
    let len = u32::try_from(bytes.len()).expect("frames are under MAX_FRAME");
    stream
        .write_all(&len.to_be_bytes())
        .await
        .map_err(|_| Fault::Lost)?;
    stream.write_chunk(bytes).await.map_err(|_| Fault::Lost)
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
        assert_eq!(rx.recv().await.unwrap().len(), 5000);
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

    fn datagram(n: usize) -> PeerFrame {
        PeerFrame {
            bytes: Bytes::from(vec![1u8; n]),
            datagram: true,
        }
    }

    fn held(rx: &OutReceiver) -> (usize, usize) {
        match &*rx.datagrams.lock() {
            Lane::Pending { held, bytes } => (held.len(), *bytes),
            Lane::Open(_) => panic!("no connection in this test"),
        }
    }

    /// Datagrams neither count against the stream queue nor are refused by
    /// it when full: until the connection is up the newest are held, within
    /// `PENDING_DATAGRAM_BYTES`. One too big for any datagram is a stream
    /// frame.
    #[test]
    fn datagrams_bypass_a_full_stream_queue() {
        let (q, rx) = out_queue(1000);
        q.push(frame(5000)).unwrap();
        assert_eq!(q.push(frame(10)).unwrap_err().0, QueueError::Full);
        let queued = q.queued.load(Ordering::Acquire);
        for _ in 0..3 {
            q.push(datagram(100)).unwrap();
        }
        assert_eq!(held(&rx), (3, 3 * (100 + FRAME_OVERHEAD)));
        assert_eq!(q.queued.load(Ordering::Acquire), queued);

        let per = 1000 + FRAME_OVERHEAD;
        for _ in 0..PENDING_DATAGRAM_BYTES / per + 10 {
            q.push(datagram(1000)).unwrap();
        }
        let n = PENDING_DATAGRAM_BYTES / per;
        assert_eq!(held(&rx), (n, n * per), "only the newest are held");
        assert_eq!(q.queued.load(Ordering::Acquire), queued);

        let too_big = datagram(PENDING_DATAGRAM_BYTES);
        assert_eq!(q.push(too_big).unwrap_err().0, QueueError::Full);
        drop(rx);
        assert_eq!(q.push(datagram(10)).unwrap_err().0, QueueError::Closed);
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
