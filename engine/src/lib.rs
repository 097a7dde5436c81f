//! Chorus engine: the replicated presence and subscription tables and the
//! node state machine that keeps them in sync across a cluster.
//!
//! Everything here is sans-IO and deterministic: [`Node`] never reads a clock,
//! never draws OS randomness and never touches a socket. Inputs arrive through
//! `handle_*` methods with the current time passed in; outputs are pulled with
//! `poll_*`. The tokio + QUIC runtime and the simulator are drivers of it.

#![warn(missing_docs)]

pub mod coalesce;
pub mod codec;
pub mod context;
pub mod dots;
pub mod id;
pub mod membership;
pub mod node;
pub mod presence;
pub mod records;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod store;
pub mod subs;

pub use codec::{Body, DecodeError, Message, WIRE_VERSION};
pub use id::{ConnId, Key, Meta, NodeId, PhxRef, SubscriberId, Topic};
pub use membership::Swim;
pub use node::{Command, CommandError, CommandOutcome, Event, Node, NodeConfig, Transmit};
pub use presence::{DiffItem, PresEntry, PresenceError, PresenceItem};
pub use records::{Record, Records, Stamp};
