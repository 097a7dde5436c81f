//! Channels: the application side of a topic, mirroring `Phoenix.Channel`.
//!
//! A [`Channel`] is one joined topic on one connection. The [`Router`] makes a fresh
//! instance for every `phx_join` whose topic matches a registered pattern (`room:*`),
//! and the connection's [`Session`](crate::socket::Session) calls it: [`Channel::join`]
//! once, then [`Channel::handle_in`] for client events, [`Channel::handle_info`] for
//! messages from the server side, [`Channel::handle_out`] for intercepted broadcasts,
//! and [`Channel::terminate`] when it stops.
//!
//! Callbacks are synchronous and never do I/O themselves: everything a channel wants to
//! happen (`push`, `reply`, `broadcast`, presence `track`, ...) goes through its
//! [`ChannelContext`], and the session turns it into frames and driver actions in the
//! order it was asked for. A callback that panics takes down its own channel only
//! (`phx_error` for that join); the connection and its other channels carry on.

mod action;
pub(crate) mod context;
pub mod presence;
pub mod recover;
mod rooms;
mod router;

pub use action::{Action, Assigns, PresenceCount, SocketAssigns};
pub use context::ChannelContext;
pub use presence::{presence_diff, presence_state, PresenceEntry, StateWriter};
pub use rooms::RoomStore;
pub use router::{RouteError, Router, TopicPattern};

use std::any::Any;
use std::borrow::Cow;

use crate::protocol::{JsonObject, Payload};

/// A message for [`Channel::handle_info`], like an Erlang message sent to a channel
/// process. Channels downcast it to the types they expect.
pub type Info = Box<dyn Any + Send>;

/// What [`Channel::join`] returns: `Ok(None)` is `{:ok, socket}` (response `{}`),
/// `Ok(Some(reply))` is `{:ok, reply, socket}`, `Err(reply)` is `{:error, reply}`.
pub type JoinResult = Result<Option<Payload>, Payload>;

/// A reply to one client message: `{"status": status, "response": response}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status the client matches on (`receive("ok", ...)`); usually `ok` or `error`.
    pub status: Cow<'static, str>,
    /// The response, `{}` when there is nothing to say.
    pub response: Payload,
}

impl Reply {
    /// `{:reply, :ok, socket}`: status `ok`, response `{}`.
    pub fn ok() -> Self {
        Self::new("ok", Payload::empty())
    }

    /// `{:reply, {:ok, response}, socket}`.
    pub fn ok_with(response: Payload) -> Self {
        Self::new("ok", response)
    }

    /// `{:reply, {:error, response}, socket}`.
    pub fn error(response: Payload) -> Self {
        Self::new("error", response)
    }

    /// A reply with any status.
    pub fn new(status: impl Into<Cow<'static, str>>, response: Payload) -> Self {
        Self {
            status: status.into(),
            response,
        }
    }
}

/// What [`Channel::handle_in`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleIn {
    /// `{:noreply, socket}`: nothing is sent (the client's push may time out, or be
    /// answered later with [`ChannelContext::reply`]).
    NoReply,
    /// `{:reply, reply, socket}`: answered with the message's ref.
    Reply(Reply),
    /// `{:stop, reason, socket}` or `{:stop, reason, reply, socket}`: the reply (if
    /// any) is sent first, then the channel terminates.
    Stop {
        /// Why the channel stops; decides between `phx_close` and `phx_error`.
        reason: StopReason,
        /// An optional reply to the message being handled.
        reply: Option<Reply>,
    },
}

/// What [`Channel::handle_info`] and [`Channel::handle_out`] return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleInfo {
    /// `{:noreply, socket}`: carry on.
    NoReply,
    /// `{:stop, reason, socket}`: terminate the channel.
    Stop(StopReason),
}

/// Why a channel stops. Clean reasons send `phx_close`, [`StopReason::Error`] sends
/// `phx_error` (the client rejoins), and [`StopReason::Closed`] sends nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The channel asked to stop (`:normal`): `phx_close`.
    Normal,
    /// `{:shutdown, reason}`: `phx_close`.
    Shutdown(Cow<'static, str>),
    /// The client sent `phx_leave`: ok reply, then `phx_close`.
    Left,
    /// A new `phx_join` for the same topic replaced this one: `phx_close` with this
    /// join's join_ref, sent after the new join's reply.
    DuplicateJoin,
    /// The connection went away: nothing can be sent.
    Closed,
    /// Any other reason (an abnormal exit): `phx_error`, and the client rejoins.
    Error(Cow<'static, str>),
}

impl StopReason {
    /// Whether the client gets `phx_close` (true) rather than `phx_error` (false).
    pub fn is_clean(&self) -> bool {
        !matches!(self, Self::Error(_))
    }
}

/// One joined topic on one connection. Implementations hold the channel's own state
/// (what Phoenix keeps in `socket.assigns`); the socket-wide assigns set at connect
/// time are on the [`ChannelContext`].
///
/// Every callback may panic without harming anything but this channel: the session
/// catches the panic, sends `phx_error` (or `{"reason":"join crashed"}` from `join`),
/// drops the instance without calling `terminate`, and cleans up its subscription
/// and presences.
pub trait Channel: Send + 'static {
    /// Authorizes the join. Pushes made here are sent after the join reply, as
    /// Phoenix's `send(self(), :after_join)` idiom achieves; presence tracked here is
    /// followed by `presence_state` once the driver hands it in.
    fn join(&mut self, topic: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> JoinResult;

    /// Handles one client event on the joined topic (anything but `phx_join` and
    /// `phx_leave`, which the session handles).
    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn;

    /// Handles a server-side message ([`ChannelContext::send_self`] or the driver's
    /// [`Session::handle_info`](crate::socket::Session::handle_info)). Ignores it by
    /// default.
    fn handle_info(&mut self, msg: Info, ctx: &mut ChannelContext<'_>) -> HandleInfo {
        let _ = (msg, ctx);
        HandleInfo::NoReply
    }

    /// Whether [`ChannelContext::list`] is kept current for this channel. Keeping
    /// it costs a copy of the topic's presences per joined connection (memory
    /// and diff work grow with the topic's users on every connection), so only
    /// channels that read the list ask for it. `false` by default: `list` is
    /// then empty.
    fn keeps_presence_list(&self) -> bool {
        false
    }

    /// The broadcast events that go through [`Channel::handle_out`] instead of
    /// straight to the client (Phoenix's `intercept`). None by default.
    fn intercepts(&self) -> &[&str] {
        &[]
    }

    /// Handles an intercepted broadcast. The default pushes it unchanged, as
    /// `[join_ref, null, topic, event, payload]`.
    fn handle_out(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleInfo {
        ctx.push(event, payload.clone());
        HandleInfo::NoReply
    }

    /// Called once when the channel stops for any reason but a panic. Pushes made
    /// here are sent before the `phx_close`, unless the connection is gone.
    fn terminate(&mut self, reason: &StopReason, ctx: &mut ChannelContext<'_>) {
        let _ = (reason, ctx);
    }
}

/// `{"reason": reason}`, the response shape Phoenix uses for its own errors.
pub fn reason(reason: &str) -> Payload {
    let object = JsonObject::from_value(&serde_json::json!({ "reason": reason }))
        .expect("a one-key map serializes to a JSON object");
    Payload::Json(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_constructors() {
        assert_eq!(Reply::ok(), Reply::new("ok", Payload::empty()));
        let err = Reply::error(reason("unauthorized"));
        assert_eq!(err.status, "error");
        let Payload::Json(body) = err.response else {
            panic!("a JSON response")
        };
        assert_eq!(body.as_str(), r#"{"reason":"unauthorized"}"#);
    }

    #[test]
    fn only_errors_are_unclean() {
        for clean in [
            StopReason::Normal,
            StopReason::Shutdown("bye".into()),
            StopReason::Left,
            StopReason::DuplicateJoin,
            StopReason::Closed,
        ] {
            assert!(clean.is_clean(), "{clean:?}");
        }
        assert!(!StopReason::Error("boom".into()).is_clean());
    }

    #[test]
    fn reason_escapes_its_text() {
        let Payload::Json(body) = reason("a \"quoted\" reason") else {
            panic!("a JSON payload")
        };
        assert_eq!(body.as_str(), r#"{"reason":"a \"quoted\" reason"}"#);
    }
}
