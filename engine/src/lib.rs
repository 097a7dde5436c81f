//! Chorus engine: the replicated presence and subscription tables and the
//! node state machine that keeps them in sync across a cluster.
//!
//! Everything but [`runtime`] is sans-IO and deterministic: [`Node`] never
//! reads a clock, never draws OS randomness, never touches a socket and holds
//! no lock. Inputs arrive through `handle_*` methods with the current time
//! passed in; outputs are pulled with `poll_*`. The tokio + QUIC runtime and
//! the simulator are drivers of it.
//!
//! # The life of a byte, the short version
//!
//! In, from a peer:
//! 1. `runtime/transport.rs`: the connection task's `read_stream` (ordered
//!    lane) or `read_datagrams` (loss-tolerant lane) calls
//!    [`Message::decode`] (`codec.rs`), and sends `PeerInbound::Message` to
//!    the node task;
//! 2. `runtime/driver.rs`: `NodeDriver::on_inbound` calls
//!    [`Node::handle_message`] (`node/mod.rs`), which admits the sender
//!    (`node/peers.rs`) and dispatches on [`Body`]: `Delta`/`Repair` to
//!    `node/replicate.rs` (`merge`, into `presence.rs` and `subs.rs` over
//!    `store/`), `Ack` there too, `Digest` to `node/anti_entropy.rs`,
//!    `Records`/`RecordsDigest` to `node/records.rs` (into `records.rs`),
//!    `Swim` to `membership/` then `Node::apply_swim` (`node/peers.rs`),
//!    `Broadcast` to `node/pubsub.rs`;
//! 3. the node queues [`Event`]s (presence diffs go through `coalesce.rs`);
//!    `NodeDriver::drain` pulls them with [`Node::poll_event`]: `on_event`
//!    offers broadcasts and diffs to each `runtime::Subscription` of the
//!    topic (`fan_out`), and applies [`Event::Record`]s to the
//!    [`runtime::RecordsReader`] replica.
//!
//! Out, from the gateway: [`runtime::EngineHandle::publish`]
//! (`runtime/handle.rs`) sends an `EngineRequest::Command` to the node task;
//! `NodeDriver::on_request` calls [`Node::handle_command`], which delivers
//! locally and queues one `Body::Broadcast` per peer with subscribers
//! (`node/pubsub.rs`); `NodeDriver::drain` pulls each [`Transmit`] with
//! [`Node::poll_transmit`], encodes it ([`Message::encode`]) and pushes a
//! `PeerFrame` on the peer's queue (`NodeDriver::transmit`), which that
//! connection's `write_loop` (`runtime/transport.rs`) sends.

#![warn(missing_docs)]

pub(crate) mod coalesce;
pub(crate) mod codec;
pub(crate) mod context;
pub(crate) mod dots;
pub(crate) mod id;
pub(crate) mod membership;
pub(crate) mod node;
pub(crate) mod position;
pub(crate) mod presence;
pub(crate) mod records;
#[cfg(feature = "runtime")]
pub mod runtime;
pub(crate) mod store;
pub(crate) mod subs;

pub use codec::{
    Body, DecodeError, Message, MAX_FRAME, MAX_KEY, MAX_META, MAX_NAME, MAX_SWIM_INC, MAX_TOPIC,
    WIRE_VERSION,
};
pub use id::{ConnId, Key, Meta, NodeId, PhxRef, SubscriberId, Topic};
pub use node::{
    Command, CommandError, CommandOutcome, Event, Node, NodeConfig, NodeStats, PeerState, Transmit,
};
pub use position::{Position, MAX_CLOCK_SKEW_MS, MAX_POSITION_BYTES};
pub use presence::{DiffItem, PresEntry, PresenceError, PresenceItem};
pub use records::{Expired, Gap, Record, Records, Stamp, BUCKETS};

// The types a Node's configuration, events and accessors are made of.
pub use coalesce::{CoalesceConfig, TopicDiff};
pub use presence::Presence;
pub use subs::{SubChange, Subs, SubsError};

// The parts of the wire format a Body carries: presence and subscription
// deltas (a Part per origin, its ops as Ranges) and SWIM messages. The Store
// is what Presence::store and Subs::store return; the engine's property tests,
// benches and merge profile drive it directly.
pub use context::Ranges;
pub use membership::{Swim, Update, UpdateKind};
pub use store::{Cut, Delta, Part, Store};
