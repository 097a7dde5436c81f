//! The client transports: how a client's bytes become session input and the
//! session's frames reach the client.
//!
//! - [`websocket`]: the handshake at `GET /socket/websocket` (method, `vsn`,
//!   subprotocols, [`origin`] check, connect auth through the
//!   [`Authenticator`](crate::socket::Authenticator)), then one `connection` task per
//!   client owning its socket;
//! - [`longpoll`]: the LongPoll transport at `/socket/longpoll`, its sessions, their
//!   signed tokens, and the forwarding of a request that lands on another node to the
//!   session's owner (over an internal engine topic, through the hub);
//! - `driver`: what both transports do with a [`Session`](crate::socket::Session) once
//!   the bytes are decoded: carry out its actions against the
//!   [`Hub`](crate::cluster::Hub), hand it the deliveries of its mailbox, clean up.
//!
//! Not deterministic: this is the I/O around the sans-IO session.

mod connection;
pub(crate) mod driver;
pub mod longpoll;
pub mod origin;
pub mod websocket;

pub use connection::close;
