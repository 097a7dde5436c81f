//! The words of the node's API: its inputs ([`Command`]), what they return
//! ([`CommandOutcome`], [`CommandError`]) and its outputs ([`Transmit`],
//! [`Event`]), plus [`PeerState`] and the [`NodeStats`] counters.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::coalesce::TopicDiff;
use crate::codec::Message;
use crate::id::{ConnId, Key, Meta, NodeId, PhxRef, SubscriberId, Topic};
use crate::presence::PresenceError;
use crate::records::{Record, Stamp};
use crate::subs::SubsError;

#[cfg(doc)]
use super::Node;

/// A local request.
#[derive(Clone, Debug)]
pub enum Command {
    /// Track `key` in `topic` for connection `conn`.
    Track {
        /// Topic.
        topic: Topic,
        /// Key.
        key: Key,
        /// Connection.
        conn: ConnId,
        /// Meta JSON object.
        meta: Meta,
    },
    /// Replace the meta of a tracked key.
    Update {
        /// Topic.
        topic: Topic,
        /// Key.
        key: Key,
        /// Connection.
        conn: ConnId,
        /// New meta JSON object.
        meta: Meta,
    },
    /// Stop tracking.
    Untrack {
        /// Topic.
        topic: Topic,
        /// Key.
        key: Key,
        /// Connection.
        conn: ConnId,
    },
    /// Stop tracking everything of a connection.
    UntrackConn {
        /// Connection.
        conn: ConnId,
    },
    /// Add a local subscriber; [`Event::SubscribeReady`] follows.
    Subscribe {
        /// Topic.
        topic: Topic,
        /// Subscriber.
        sub: SubscriberId,
    },
    /// Remove a local subscriber.
    Unsubscribe {
        /// Topic.
        topic: Topic,
        /// Subscriber.
        sub: SubscriberId,
    },
    /// Deliver to every subscriber of `topic` in the cluster, but `exclude`.
    Publish {
        /// Topic.
        topic: Topic,
        /// Opaque payload.
        payload: Bytes,
        /// A local subscriber not to deliver to (broadcast_from).
        exclude: Option<SubscriberId>,
    },
    /// Deliver to the subscribers of `topic` on one node only.
    DirectPublish {
        /// Target node.
        node: NodeId,
        /// Topic.
        topic: Topic,
        /// Opaque payload.
        payload: Bytes,
    },
    /// Append `body` to `topic`'s replicated log (history); `time_ms` is the
    /// caller's wall clock, raised past every stamp this node has seen.
    Append {
        /// Topic.
        topic: Topic,
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The entry (opaque; the gateway stores JSON).
        body: Arc<str>,
    },
    /// Write register `(space, key)`; `None` removes it. Last writer wins.
    Put {
        /// Namespace, e.g. `room`.
        space: Arc<str>,
        /// Key within the space.
        key: Arc<str>,
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The value, or `None` to remove.
        value: Option<Arc<str>>,
    },
    /// Graceful shutdown: tell every peer to drop our entries now.
    Leave,
}

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Tracked or updated, with the new meta's ref.
    Tracked(PhxRef),
    /// Done.
    Done,
    /// A record was written with this stamp.
    Recorded(Stamp),
    /// Published: delivered locally (`local`) and sent to `remote_nodes` nodes.
    Published {
        /// Whether local subscribers got it.
        local: bool,
        /// How many peer nodes it was sent to.
        remote_nodes: usize,
    },
}

/// Why a command failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A presence mutator refused.
    #[error(transparent)]
    Presence(#[from] PresenceError),
    /// A subscribe or unsubscribe was refused.
    #[error(transparent)]
    Subs(#[from] SubsError),
    /// A direct publish to a node that is not an up member.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A value over the bounds peers accept ([`crate::MAX_TOPIC`],
    /// [`crate::MAX_KEY`], [`crate::MAX_META`]) or a meta that is not a JSON
    /// object: peers would drop it, so it is refused here.
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}

/// A message to send to a peer.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// The peer's node id, when known (seeds are addressed by address only).
    pub to: Option<NodeId>,
    /// The peer's gossip address.
    pub addr: SocketAddr,
    /// The message.
    pub msg: Message,
}

/// Something for the local driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Deliver to this node's subscribers of `topic`, except `exclude`.
    Broadcast {
        /// Topic.
        topic: Topic,
        /// Payload.
        payload: Bytes,
        /// Subscriber to skip.
        exclude: Option<SubscriberId>,
    },
    /// The coalesced presence diff of a topic.
    PresenceDiff {
        /// Topic.
        topic: Topic,
        /// Joins and leaves.
        diff: TopicDiff,
    },
    /// A subscription is routed: live peers acknowledged it, or the wait ended.
    SubscribeReady {
        /// Topic.
        topic: Topic,
        /// Subscriber.
        sub: SubscriberId,
    },
    /// A peer is up (new, or back).
    MemberUp(NodeId),
    /// A peer is down: its presences left the view.
    MemberDown(NodeId),
    /// A peer is gone for good (permdown, graceful leave or replaced by a new
    /// incarnation): its entries are purged.
    MemberGone(NodeId),
    /// Another process runs under this node's name with a newer incarnation
    /// (two processes started with the same `--node`). The cluster already
    /// replaced this incarnation by the newer one, so this node left (its
    /// peers were told to drop its entries) and takes no more input: the
    /// driver must stop it and report the clash. Emitted once.
    NameClash(NodeId),
    /// A record was accepted into this node's store: a local write, or a
    /// peer's record that changed it. Applying these, in order, to a copy of
    /// [`Node::records`] taken at start keeps the copy equal to it.
    Record(Record),
    /// Log entries stamped before `horizon` were dropped (`history_ttl`,
    /// or the budget horizon: `history_budget`, ours or a peer's).
    /// A replica kept with [`Event::Record`] applies
    /// [`Records::expire`](crate::Records::expire)`(horizon)` at this point
    /// of the sequence to stay equal.
    HistoryExpired {
        /// The new horizon (stamp time in ms).
        horizon: u64,
    },
}

/// Visibility of a peer's entries (by the failure detector's verdict: an
/// alive or suspect member is `Up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Alive or suspect: entries visible.
    Up,
    /// Declared down by the failure detector: entries hidden.
    Down,
}

/// Counters for reports and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Delta messages sent.
    pub deltas_sent: u64,
    /// Repair messages sent.
    pub repairs_sent: u64,
    /// Digests sent.
    pub digests_sent: u64,
    /// Broadcast messages sent to peers.
    pub broadcasts_sent: u64,
    /// Largest δ-buffer length seen.
    pub peak_buffer: usize,
    /// Largest outgoing queue length seen.
    pub peak_transmits: usize,
    /// Buffer entries dropped before every peer acknowledged them.
    pub buffer_overflows: u64,
    /// Record messages sent (pushes and repairs).
    pub records_sent: u64,
    /// Records from peers that changed the local state.
    pub records_merged: u64,
    /// Log entries dropped because they were older than `history_ttl`.
    pub history_expired: u64,
    /// Log entries dropped by the budget horizon (`history_budget`, ours or
    /// one a peer gossiped).
    pub history_budget_evicted: u64,
    /// Times this node's history went over `history_budget` and it raised
    /// its budget horizon.
    pub history_budget_exceeded: u64,
    /// Messages dropped because they claimed another sender than the one
    /// their link authenticated (`msg.from` differs from `from`).
    pub rejected_identity: u64,
    /// Times a peer was marked down (each [`Event::MemberDown`]).
    pub peers_marked_down: u64,
    /// Repairs the driver could not queue and handed back
    /// ([`Node::handle_unsent`](super::Node::handle_unsent)): sent again later.
    pub repairs_returned: u64,
}
