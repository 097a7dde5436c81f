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

use hyper::HeaderMap;

use crate::channel::Assigns;
use crate::server::Shared;
use crate::socket::{Denied, SocketInfo};

/// A connect request's verdict, and its headers that some backend hook
/// forwards. With a `connect_hook` configured and no credentials in the
/// request ([`Authenticator::has_credentials`](crate::socket::Authenticator::has_credentials):
/// no token), the hook decides; otherwise the authenticator does (a token,
/// valid or not, never reaches the hook), as Centrifugo's connect proxy.
pub(crate) async fn authenticate(
    shared: &Shared,
    params: &Assigns,
    auth_token: Option<&str>,
    headers: &HeaderMap,
) -> (Result<SocketInfo, Denied>, Vec<(String, String)>) {
    let Some(hooks) = &shared.config.hooks else {
        return (shared.auth.connect(params, auth_token), Vec::new());
    };
    let captured = hooks.capture_headers(headers);
    let verdict = if hooks.has_connect() && !shared.auth.has_credentials(params, auth_token) {
        match hooks.connect(params, &captured).await {
            Some(verdict) => verdict,
            None => shared.auth.connect(params, auth_token),
        }
    } else {
        shared.auth.connect(params, auth_token)
    };
    (verdict, captured)
}
