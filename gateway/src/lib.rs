//! Chorus gateway: the Phoenix Channels protocol for the unmodified `phoenix` client.
//!
//! - [`protocol`]: frame codec (v1/v2 JSON, v2 binary), connect-time parsing, encode-once
//!   broadcasts;
//! - [`socket`]: the per-connection [`Session`](socket::Session) (channel table, the
//!   join/leave/heartbeat rules of PROTOCOL.md §3, presence payloads), sans-IO;
//! - [`channel`]: the [`Channel`](channel::Channel) trait and the topic
//!   [`Router`](channel::Router);
//! - [`server`]: the WebSocket and LongPoll server (hyper + tokio-tungstenite) that drives sessions
//!   against the cluster engine, and the per-node topic dispatcher;
//! - [`config`], [`rules`], [`token`], [`app`]: the `chorus` binary's configuration,
//!   JWT auth and configured channels;
//! - [`demo`]: a small hand-written example channel (`room:*`), used by the tests.
//!
//! `protocol`, `socket` and `channel` are synchronous and deterministic; `server` is
//! the I/O layer that drives them. The `chorus` binary starts an engine and a server.

pub mod builtin;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod protocol;
pub mod server;
pub mod socket;
pub mod token;
pub mod topics;
