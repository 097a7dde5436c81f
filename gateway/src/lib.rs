//! Chorus gateway: the Phoenix Channels protocol for the unmodified `phoenix` client.
//!
//! - [`protocol`]: frame codec (v1/v2 JSON, v2 binary), connect-time parsing, encode-once
//!   broadcasts;
//! - [`socket`]: the per-connection [`Session`](socket::Session) (channel table, the
//!   join/leave/heartbeat rules of PROTOCOL.md §3, presence payloads), sans-IO;
//! - [`channel`]: the [`Channel`](channel::Channel) trait and the topic
//!   [`Router`](channel::Router).
//!
//! Everything here is synchronous and deterministic; the transports and the cluster
//! engine drive it.

pub mod channel;
pub mod protocol;
pub mod socket;
