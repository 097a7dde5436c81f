//! Chorus gateway: the Phoenix Channels protocol for the unmodified `phoenix` client.
//!
//! Folders follow the path of a byte, and dependencies point one way: each
//! imports only those above it.
//!
//! - [`protocol`]: frame codec (v1/v2 JSON, v2 binary), connect-time parsing,
//!   encode-once broadcasts; no I/O;
//! - [`channel`]: the public channel API ([`Channel`](channel::Channel), the
//!   [`Router`](channel::Router), [`ChannelContext`](channel::ChannelContext)) and
//!   the words it uses (actions, assigns, presence entries, [`RoomStore`](channel::RoomStore));
//! - [`socket`]: the sans-IO per-connection [`Session`](socket::Session) (channel
//!   table, the join/leave/heartbeat rules of PROTOCOL.md §3) and the connect hook
//!   ([`Authenticator`](socket::Authenticator));
//! - [`topics`]: every internal engine topic, refused to clients;
//! - [`cluster`]: the bridge to the engine: the [`Hub`](cluster::Hub) (one
//!   dispatcher per topic, encode once per node, mailboxes per connection), the one
//!   holder of the engine handle;
//! - [`hooks`]: backend hooks (connect, join, publish, rpc): the HTTP calls,
//!   their answers, circuit breaker and metrics;
//! - [`server`]: the I/O: `server::transport` (WebSocket, LongPoll, origin check,
//!   the session driver), `server::api` (the HTTP API), health, metrics, shutdown;
//! - [`builtin`], [`config`], [`token`]: the `chorus` binary's configured channels
//!   (one implementation of `channel`; the server never names them), its TOML
//!   configuration and JWT connect auth;
//! - [`demo`]: a small hand-written example channel (`room:*`), used by the tests;
//! - [`limits`]: what one client may do (frame rate, JSON shape), the token
//!   bucket they use, and `chorus_limit_exceeded_total`; no I/O.
//!
//! The life of a client's broadcast (ARCHITECTURE.md has every step):
//! `server::transport::connection` reads a WebSocket message →
//! `protocol::decode_text` → `SessionDriver::admit` (client limits) → `SessionDriver::handle_frame` → [`Session::handle_frame`](socket::Session::handle_frame)
//! → the channel's `handle_in` (e.g. `builtin::ConfiguredChannel`) asks
//! `ChannelContext::broadcast` → the session yields `Action::Broadcast` →
//! `SessionDriver::execute` → `Hub::publish_queued` (`cluster/publish.rs`) →
//! the engine. Back: the topic's dispatcher (`cluster/topic.rs`, `dispatch`) gets
//! the delivery, encodes it once (`Hub::prepare`) and offers it to every local
//! connection's mailbox (`Hub::fan_out`, `Mailbox::offer`); the connection task
//! takes it → [`Session::handle_broadcast`](socket::Session::handle_broadcast) →
//! `poll_transmit` → the socket.
//!
//! `protocol`, `channel` and `socket` are synchronous and deterministic; `cluster` and
//! `server` are the I/O layer that drives them. The `chorus` binary starts an engine,
//! builds the built-in channels' router and runs a server.

pub mod builtin;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod hooks;
pub mod limits;
pub mod protocol;
pub mod server;
pub mod socket;
pub mod token;
pub mod topics;
pub mod webhooks;
