//! [`EngineHandle`], the cloneable front of a running engine, and
//! [`Subscription`], one local subscriber's stream of deliveries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::credit::Held;
use super::RecordsReader;
use super::RuntimeError;
use crate::coalesce::TopicDiff;
use crate::id::{ConnId, Key, Meta, NodeId, PhxRef, SubscriberId, Topic};
use crate::node::{self, Command, CommandError, CommandOutcome, PeerState};
use crate::presence::PresenceItem;
use crate::records::Stamp;

/// One item for a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A payload published to the topic (locally or on a peer).
    Broadcast(Bytes),
    /// A coalesced presence diff of the topic, shared between subscribers.
    PresenceDiff(Arc<TopicDiff>),
    /// An entry of the topic's log that this node just accepted (a local
    /// append or a peer's), already applied to the records replica: the
    /// live side of recoverable topics. Entries arrive in the order the
    /// node accepted them, which keeps each origin's order except where one
    /// overtook an earlier one (a dropped push repaired later).
    Logged {
        /// The entry's stamp: its origin and per-topic seq.
        stamp: Stamp,
        /// The entry.
        body: Arc<str>,
    },
}

/// A cluster member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's node incarnation.
    pub id: NodeId,
    /// Its gossip address, once heard from directly.
    pub addr: Option<SocketAddr>,
    /// Up or down.
    pub state: PeerState,
    /// How long ago this node last heard from it (any message), as of the
    /// [`EngineHandle::members`] call.
    pub silent: Duration,
}

/// Traffic with one peer address, counted by the node task when it hands a
/// frame to the transport (out) and when it receives a decoded one (in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages received.
    pub messages_in: u64,
    /// Bytes of encoded messages received.
    pub bytes_in: u64,
    /// Messages queued for sending.
    pub messages_out: u64,
    /// Bytes of encoded messages queued for sending.
    pub bytes_out: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped: u64,
    /// Connections authenticated with this peer address so far.
    pub connections: u64,
}

/// Counters of a running engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Per peer gossip address.
    pub peers: BTreeMap<SocketAddr, PeerStats>,
    /// Frames dropped on full peer queues, all peers.
    pub peer_queue_overflows: u64,
    /// Subscribers dropped because their queue was full.
    pub slow_subscribers: u64,
    /// Broadcasts that waited for a peer's credit before going out
    /// ([`credit`](super::credit)): that peer's subscribers were behind.
    pub credit_waits: u64,
    /// Times this node held back credit because its subscribers of the
    /// topic were behind (the sending peer's broadcasts then wait).
    pub credit_withheld: u64,
    /// Windows refilled after [`STALL`](super::credit::STALL) without credit
    /// back (credit lost with a connection, or a peer that returns none).
    pub credit_refills: u64,
    /// Broadcasts dropped while waiting for a peer's credit: past
    /// [`MAX_WAITING`](super::credit::MAX_WAITING) for that peer, or when the
    /// peer was marked down or gone.
    pub credit_dropped: u64,
    /// Connections closed for a missing or wrong cluster proof.
    pub auth_failures: u64,
    /// Connections closed for an undecodable or oversized frame.
    pub protocol_errors: u64,
    /// Peer messages that decoded but broke the codec's value checks (a
    /// meta that is not a JSON object, an oversized topic, ...), dropped
    /// whole; the connection stays.
    pub rejected_invalid: u64,
    /// Peer messages whose advertised address is not the one their
    /// connection authenticated, dropped.
    pub rejected_address: u64,
    /// Presence metas visible on this node, all topics (a gauge, not a counter).
    pub presence_entries: usize,
    /// Bytes of history (log entries) this node holds, as
    /// [`Records::log_bytes`](crate::Records::log_bytes) counts them (a gauge).
    pub history_bytes: usize,
    /// The node state machine's own counters.
    pub node: node::NodeStats,
}

/// The outcome of a publish started with [`EngineHandle::publish_queued`].
#[derive(Debug)]
#[must_use = "await the receipt for the outcome, or drop it explicitly"]
pub struct PublishReceipt {
    rx: oneshot::Receiver<Result<CommandOutcome, CommandError>>,
}

impl PublishReceipt {
    /// Waits until the engine carried out the publish.
    pub async fn outcome(self) -> Result<CommandOutcome, RuntimeError> {
        Ok(self.rx.await.map_err(|_| RuntimeError::Stopped)??)
    }
}

/// A request from a handle to the node task.
#[derive(Debug)]
pub(crate) enum EngineRequest {
    Command {
        cmd: Command,
        reply: oneshot::Sender<Result<CommandOutcome, CommandError>>,
    },
    Subscribe {
        topic: Topic,
        tx: mpsc::Sender<Delivery>,
        reply: oneshot::Sender<Result<SubscriberId, CommandError>>,
    },
    Unsubscribe {
        topic: Topic,
        sub: SubscriberId,
        reply: Option<oneshot::Sender<Result<CommandOutcome, CommandError>>>,
    },
    Presence {
        topic: Topic,
        reply: oneshot::Sender<Vec<PresenceItem>>,
    },
    PresenceCount {
        topic: Topic,
        reply: oneshot::Sender<(usize, usize)>,
    },
    Members {
        reply: oneshot::Sender<Vec<MemberInfo>>,
    },
    PresenceTap {
        tx: mpsc::UnboundedSender<(Topic, Arc<TopicDiff>)>,
        reply: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<RuntimeStats>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Makes the node task panic: the unit tests' way to kill it like a bug
    /// would. Compiled only for this crate's own tests.
    #[cfg(test)]
    Panic,
}

/// Where the node task is in its life, as the handles see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Serving.
    Running,
    /// Leaving on its own: a newer incarnation runs under this node's name.
    Clash(NodeId),
    /// Ended after [`EngineHandle::shutdown`] or when every handle was dropped.
    Stopped,
    /// Ended abnormally (a panic, or [`EngineHandle::abort`]): why.
    Crashed(String),
}

#[derive(Debug)]
pub(crate) struct HandleShared {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub requests: mpsc::Sender<EngineRequest>,
    /// Unsubscribes from `Drop`, which cannot wait for room.
    pub drops: mpsc::UnboundedSender<(Topic, SubscriberId)>,
    pub records: RecordsReader,
    /// Topics whose broadcasts wait for a peer's credit, kept by the node task.
    pub held: Arc<Held>,
    pub subscriber_queue: usize,
    pub task: Mutex<Option<AbortHandle>>,
    /// The node task's state: set to `Clash` by the task itself, to `Stopped`
    /// or `Crashed` by the watcher that awaits its end (see `Engine::start`).
    pub state: watch::Receiver<TaskState>,
}

/// The handle of a running engine. Cheap to clone; every clone talks to the
/// same node task. When the last clone is dropped the engine leaves the
/// cluster as [`EngineHandle::shutdown`] does (subscriptions do not keep it
/// alive).
#[derive(Clone, Debug)]
pub struct EngineHandle {
    pub(crate) shared: Arc<HandleShared>,
}

/// One local subscriber of one topic. Yields what the topic receives from the
/// moment the subscription is routed; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
    topic: Topic,
    rx: mpsc::Receiver<Delivery>,
    drops: Option<mpsc::UnboundedSender<(Topic, SubscriberId)>>,
}

impl EngineHandle {
    /// This node's incarnation.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.id
    }

    /// The gossip address peers reach this node at (use it as a seed).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The gossip addresses this node was started with to join through.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.shared.seeds
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> EngineRequest,
    ) -> Result<T, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .requests
            .send(make(tx))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    async fn command(&self, cmd: Command) -> Result<CommandOutcome, RuntimeError> {
        Ok(self
            .request(|reply| EngineRequest::Command { cmd, reply })
            .await??)
    }

    /// Subscribes a new local subscriber to `topic`. Resolves once the
    /// subscription is routed: live peers acknowledged it (bounded by the
    /// node's `subscribe_wait`), so a publish started anywhere after this
    /// returns reaches it.
    pub async fn subscribe(&self, topic: impl Into<Topic>) -> Result<Subscription, RuntimeError> {
        let topic = topic.into();
        // Room for what peers may have in flight besides this node's own
        // `subscriber_queue`; the node task enforces the limit.
        let capacity = super::credit::subscriber_capacity(self.shared.subscriber_queue);
        let (tx, rx) = mpsc::channel(capacity);
        let t = topic.clone();
        let id = self
            .request(|reply| EngineRequest::Subscribe {
                topic: t,
                tx,
                reply,
            })
            .await??;
        Ok(Subscription {
            id,
            topic,
            rx,
            drops: Some(self.shared.drops.clone()),
        })
    }

    /// Removes subscriber `sub` from `topic` (what dropping its
    /// [`Subscription`] does, but waited for).
    pub async fn unsubscribe(&self, topic: &Topic, sub: SubscriberId) -> Result<(), RuntimeError> {
        let topic = topic.clone();
        self.request(|reply| EngineRequest::Unsubscribe {
            topic,
            sub,
            reply: Some(reply),
        })
        .await??;
        Ok(())
    }

    /// Publishes `payload` to every subscriber of `topic` in the cluster.
    pub async fn publish(
        &self,
        topic: impl Into<Topic>,
        payload: Bytes,
    ) -> Result<CommandOutcome, RuntimeError> {
        self.command(Command::Publish {
            topic: topic.into(),
            payload,
            exclude: None,
        })
        .await
    }

    /// Hands a publish to the engine without waiting for it to be carried out:
    /// it is queued behind this handle's earlier requests (so publishes from
    /// one task keep their order), waiting only for room in the engine's
    /// queue. A sender that does not need the outcome before its next publish
    /// saves a round trip through the engine task per message; await the
    /// receipt for the outcome, or drop it.
    pub async fn publish_queued(
        &self,
        topic: impl Into<Topic>,
        payload: Bytes,
    ) -> Result<PublishReceipt, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish {
            topic: topic.into(),
            payload,
            exclude: None,
        };
        self.shared
            .requests
            .send(EngineRequest::Command { cmd, reply })
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        Ok(PublishReceipt { rx })
    }

    /// Publishes to every subscriber of `topic` but the local `exclude`
    /// (Phoenix's `broadcast_from`).
    pub async fn publish_from(
        &self,
        topic: impl Into<Topic>,
        payload: Bytes,
        exclude: SubscriberId,
    ) -> Result<CommandOutcome, RuntimeError> {
        self.command(Command::Publish {
            topic: topic.into(),
            payload,
            exclude: Some(exclude),
        })
        .await
    }

    /// Publishes to the subscribers of `topic` on `node` only.
    pub async fn direct_publish(
        &self,
        node: NodeId,
        topic: impl Into<Topic>,
        payload: Bytes,
    ) -> Result<CommandOutcome, RuntimeError> {
        self.command(Command::DirectPublish {
            node,
            topic: topic.into(),
            payload,
        })
        .await
    }

    /// Whether broadcasts to `topic` wait for a peer's credit: that peer's
    /// subscribers of `topic` are behind (cross-node flow control,
    /// [`credit`](super::credit)). A publisher that wants nothing dropped
    /// waits while this is true; past [`MAX_WAITING`](super::credit::MAX_WAITING)
    /// waiting broadcasts per peer, the node drops new ones for that peer.
    /// Answered here, without a round trip to the node task.
    pub fn held(&self, topic: &str) -> bool {
        self.shared.held.is_held(topic)
    }

    /// Tracks `key` in `topic` for connection `conn`; returns the meta's ref.
    pub async fn track(
        &self,
        topic: impl Into<Topic>,
        key: impl Into<Key>,
        conn: ConnId,
        meta: Meta,
    ) -> Result<PhxRef, RuntimeError> {
        let cmd = Command::Track {
            topic: topic.into(),
            key: key.into(),
            conn,
            meta,
        };
        tracked(self.command(cmd).await?)
    }

    /// Replaces the meta of a tracked key; returns the new ref.
    pub async fn update(
        &self,
        topic: impl Into<Topic>,
        key: impl Into<Key>,
        conn: ConnId,
        meta: Meta,
    ) -> Result<PhxRef, RuntimeError> {
        let cmd = Command::Update {
            topic: topic.into(),
            key: key.into(),
            conn,
            meta,
        };
        tracked(self.command(cmd).await?)
    }

    /// Stops tracking `key` in `topic` for `conn`.
    pub async fn untrack(
        &self,
        topic: impl Into<Topic>,
        key: impl Into<Key>,
        conn: ConnId,
    ) -> Result<(), RuntimeError> {
        self.command(Command::Untrack {
            topic: topic.into(),
            key: key.into(),
            conn,
        })
        .await?;
        Ok(())
    }

    /// Stops tracking everything of `conn` (a closed client connection).
    pub async fn untrack_conn(&self, conn: ConnId) -> Result<(), RuntimeError> {
        self.command(Command::UntrackConn { conn }).await?;
        Ok(())
    }

    /// Appends `body` to `topic`'s replicated history log (the newest
    /// [`NodeConfig::history_cap`](crate::NodeConfig::history_cap) entries are
    /// kept, ordered by stamp). `time_ms` is the wall clock in ms.
    pub async fn append(
        &self,
        topic: impl Into<Topic>,
        time_ms: u64,
        body: impl Into<Arc<str>>,
    ) -> Result<Stamp, RuntimeError> {
        let cmd = Command::Append {
            topic: topic.into(),
            time_ms,
            body: body.into(),
        };
        recorded(self.command(cmd).await?)
    }

    /// Writes register `(space, key)`, or removes it with `None`. The write
    /// with the greatest stamp wins on every node.
    pub async fn put(
        &self,
        space: &str,
        key: &str,
        time_ms: u64,
        value: Option<&str>,
    ) -> Result<Stamp, RuntimeError> {
        let cmd = Command::Put {
            space: space.into(),
            key: key.into(),
            time_ms,
            value: value.map(Arc::from),
        };
        recorded(self.command(cmd).await?)
    }

    /// Synchronous read access to the replicated records (history, registers)
    /// as this node holds them.
    pub fn records(&self) -> &RecordsReader {
        &self.shared.records
    }

    /// The visible presence metas of `topic`, cluster-wide. Listed as for a
    /// subscriber's `presence_state` ([`Node::list_for_subscriber`](crate::Node::list_for_subscriber)):
    /// the topic's next diff then leaves whichever of them go.
    pub async fn presence(
        &self,
        topic: impl Into<Topic>,
    ) -> Result<Vec<PresenceItem>, RuntimeError> {
        let topic = topic.into();
        self.request(|reply| EngineRequest::Presence { topic, reply })
            .await
    }

    /// `(keys, metas)` visible in `topic`, cluster-wide: counted in the node
    /// task, so nothing is copied however large the topic.
    pub async fn presence_count(
        &self,
        topic: impl Into<Topic>,
    ) -> Result<(usize, usize), RuntimeError> {
        let topic = topic.into();
        self.request(|reply| EngineRequest::PresenceCount { topic, reply })
            .await
    }

    /// The presence view of every topic, whether or not this node subscribes
    /// to it: first what is visible now (one diff of joins per topic), then
    /// every coalesced diff from now on. Each node holds the whole presence
    /// view, so this is the cluster's presence as this node sees it change
    /// (the webhooks derive `member_added` and the like from it). Replaying it
    /// the way phoenix.js does (a set of refs per key; joins, then leaves)
    /// keeps a copy of the view (ALGORITHM.md §6). Unbounded: read it
    /// promptly; dropping the receiver ends the tap.
    pub async fn presence_tap(
        &self,
    ) -> Result<mpsc::UnboundedReceiver<(Topic, Arc<TopicDiff>)>, RuntimeError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.request(|reply| EngineRequest::PresenceTap { tx, reply })
            .await?;
        Ok(rx)
    }

    /// The peers this node knows, in id order.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, RuntimeError> {
        self.request(|reply| EngineRequest::Members { reply }).await
    }

    /// Traffic and drop counters.
    pub async fn stats(&self) -> Result<RuntimeStats, RuntimeError> {
        self.request(|reply| EngineRequest::Stats { reply }).await
    }

    /// Leaves the cluster gracefully: peers are told to drop this node's
    /// presences at once, queued frames are flushed (bounded), then the
    /// endpoint closes. Every subscription ends. Idempotent.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        match self
            .request(|reply| EngineRequest::Shutdown { reply })
            .await
        {
            Ok(()) | Err(RuntimeError::Stopped) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resolves when the engine stopped on its own, with why: its task
    /// panicked or was aborted ([`RuntimeError::Crashed`]: a bug, or
    /// [`EngineHandle::abort`]), or another process runs under this node's
    /// name with a newer incarnation ([`RuntimeError::NameClash`]; the engine
    /// left the cluster). Pending forever while the engine runs or after an
    /// ordinary shutdown. Every call on a failed engine answers
    /// [`RuntimeError::Stopped`]: a server selects on this and exits (or
    /// stops serving) with the error, so a supervisor can restart it.
    pub async fn failed(&self) -> RuntimeError {
        let mut rx = self.shared.state.clone();
        // An error means the watcher is gone: the state is final either way.
        let _ = rx
            .wait_for(|s| matches!(s, TaskState::Clash(_) | TaskState::Crashed(_)))
            .await;
        match self.failure() {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    /// Why the engine stopped on its own, if it did (what
    /// [`EngineHandle::failed`] resolves with), without waiting.
    pub fn failure(&self) -> Option<RuntimeError> {
        match &*self.shared.state.borrow() {
            TaskState::Running | TaskState::Stopped => None,
            TaskState::Clash(other) => Some(RuntimeError::NameClash {
                me: self.shared.id.clone(),
                other: other.clone(),
            }),
            TaskState::Crashed(why) => Some(RuntimeError::Crashed(why.clone())),
        }
    }

    /// Whether the node task is serving: `false` once it failed
    /// ([`EngineHandle::failure`]), is leaving on a name clash, or was shut
    /// down. A health check reports this.
    pub fn is_running(&self) -> bool {
        *self.shared.state.borrow() == TaskState::Running
    }

    /// Stops the engine at once, like a crash: no `Leave`, nothing flushed;
    /// peers find out by failure detection, and [`EngineHandle::failed`]
    /// resolves with [`RuntimeError::Crashed`]. For tests and fault injection.
    pub fn abort(&self) {
        let task = self.shared.task.lock().expect("abort handle lock").take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// Makes the node task panic (see [`EngineRequest::Panic`]).
#[cfg(test)]
pub(crate) async fn inject_panic(handle: &EngineHandle) {
    handle
        .shared
        .requests
        .send(EngineRequest::Panic)
        .await
        .expect("the node task is running");
}

fn tracked(outcome: CommandOutcome) -> Result<PhxRef, RuntimeError> {
    match outcome {
        CommandOutcome::Tracked(r) => Ok(r),
        other => Err(RuntimeError::Unexpected(format!("{other:?}"))),
    }
}

fn recorded(outcome: CommandOutcome) -> Result<Stamp, RuntimeError> {
    match outcome {
        CommandOutcome::Recorded(stamp) => Ok(stamp),
        other => Err(RuntimeError::Unexpected(format!("{other:?}"))),
    }
}

impl Subscription {
    /// This subscriber's id (for [`EngineHandle::publish_from`]).
    pub fn id(&self) -> SubscriberId {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The next delivery. `None` once the subscriber was dropped for being too
    /// slow (its queue filled up) or the engine stopped.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The next delivery if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// Deliveries queued and not received yet. The node drops a subscription
    /// whose queue is full (`subscriber_queue`, plus room for what peers may
    /// have in flight under flow control), so a publisher that wants nothing
    /// lost can wait while this is high.
    pub fn backlog(&self) -> usize {
        self.rx.len()
    }

    /// Unsubscribes now and waits for the node to apply it.
    pub async fn unsubscribe(mut self, handle: &EngineHandle) -> Result<(), RuntimeError> {
        self.drops = None;
        match handle.unsubscribe(&self.topic, self.id).await {
            Err(RuntimeError::Command(CommandError::Subs(_))) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(drops) = self.drops.take() {
            let _ = drops.send((self.topic.clone(), self.id));
        }
    }
}
