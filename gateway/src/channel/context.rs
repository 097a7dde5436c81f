//! What a channel callback can do: Phoenix's `socket` argument, without I/O.
//!
//! Each call records an effect; after the callback returns, the session turns the
//! effects, in order, into frames for this client and [`Action`]s for the driver.
//! Nothing is sent while a callback runs, which is what makes a push from `join`
//! arrive after the join reply.

use std::any::Any;
use std::sync::Arc;

use super::presence::strip_reserved;
use super::{Action, PresenceEntry, SocketAssigns};
use crate::protocol::{Encoded, JsonObject, Payload, Ref};

use super::{Info, Reply};

/// The context of one channel callback: the channel's identity, the socket's assigns,
/// and the calls that push, reply, broadcast and track presence.
pub struct ChannelContext<'a> {
    topic: &'a str,
    join_ref: &'a Ref,
    msg_ref: Option<&'a Ref>,
    socket_id: Option<&'a str>,
    assigns: &'a SocketAssigns,
    presence: &'a [PresenceEntry],
    attached: Option<&'a (dyn Any + Send)>,
    effects: Vec<Effect>,
}

impl<'a> ChannelContext<'a> {
    /// The channel's topic, e.g. `room:lobby`.
    pub fn topic(&self) -> &str {
        self.topic
    }

    /// The join_ref of this join; every push and reply of the channel carries it.
    pub fn join_ref(&self) -> &Ref {
        self.join_ref
    }

    /// The ref of the client message being handled (`join` and `handle_in`), to keep
    /// for a later [`ChannelContext::reply`] (Phoenix's `socket_ref/1`). `None` in
    /// other callbacks or when the client sent a null ref.
    pub fn socket_ref(&self) -> Option<Ref> {
        self.msg_ref.cloned()
    }

    /// The socket's id (`id/1` in Phoenix), if the connection has one.
    pub fn socket_id(&self) -> Option<&str> {
        self.socket_id
    }

    /// The assigns the connection was authenticated with (user id, roles, ...).
    pub fn assigns(&self) -> &SocketAssigns {
        self.assigns
    }

    /// What the transport attached to the client frame being handled (`join` and
    /// `handle_in`), e.g. a backend hook's answer
    /// ([`Session::handle_frame_with`](crate::socket::Session::handle_frame_with)),
    /// or to the broadcast being handled (`handle_out`,
    /// [`Session::handle_broadcast_with`](crate::socket::Session::handle_broadcast_with)).
    /// Channels downcast it to the types they expect.
    pub fn attached(&self) -> Option<&(dyn Any + Send)> {
        self.attached
    }

    /// `push(socket, event, payload)`: `[join_ref, null, topic, event, payload]` to
    /// this client only.
    pub fn push(&mut self, event: impl Into<String>, payload: Payload) {
        self.effects.push(Effect::Push {
            event: event.into(),
            payload,
        });
    }

    /// Sends this client `encoded`, a broadcast frame (`[null, null, topic,
    /// event, payload]`, a JSON payload) built once and shared with other
    /// connections: what a recoverable channel does with a logged entry whose
    /// frame is the same for every client at the same position.
    pub(crate) fn forward(&mut self, encoded: Arc<Encoded>) {
        self.effects.push(Effect::Forward(encoded));
    }

    /// `reply(socket_ref, {status, payload})`: answers the client message whose ref
    /// is `ref_` (from [`ChannelContext::socket_ref`]), now or in a later callback.
    pub fn reply(&mut self, ref_: Ref, reply: Reply) {
        self.effects.push(Effect::Reply {
            ref_: Some(ref_),
            reply,
        });
    }

    /// `broadcast(socket, event, payload)`: to every subscriber of this topic,
    /// including this client.
    pub fn broadcast(&mut self, event: impl Into<String>, payload: Payload) {
        self.broadcast_action(self.topic.to_owned(), event.into(), payload, false);
    }

    /// `broadcast_from(socket, event, payload)`: to every subscriber of this topic
    /// except this channel.
    pub fn broadcast_from(&mut self, event: impl Into<String>, payload: Payload) {
        self.broadcast_action(self.topic.to_owned(), event.into(), payload, true);
    }

    /// `Endpoint.broadcast(topic, event, payload)`: to every subscriber of any topic.
    pub fn broadcast_to(
        &mut self,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: Payload,
    ) {
        self.broadcast_action(topic.into(), event.into(), payload, false);
    }

    /// `send(self(), msg)`: delivers `msg` to this channel's
    /// [`Channel::handle_info`](super::Channel::handle_info) right after the current
    /// callback's output (after the join reply, from `join`). Dropped if this join has
    /// ended by then.
    pub fn send_self(&mut self, msg: impl Any + Send) {
        self.effects.push(Effect::Info(Box::new(msg)));
    }

    /// `Presence.track(socket, key, meta)`: the presence `key` (a user id) with `meta`
    /// on this topic, owned by this channel and removed when it ends. `phx_ref` and
    /// `phx_ref_prev` in `meta` are dropped: the presence system assigns them.
    pub fn track(&mut self, key: impl Into<String>, meta: JsonObject) {
        let (topic, join_ref) = self.ids();
        self.effects.push(Effect::Action(Action::Track {
            topic,
            join_ref,
            key: key.into(),
            meta: strip_reserved(meta),
        }));
    }

    /// `Presence.update(socket, key, meta)`: replaces the meta of a tracked key (one
    /// diff with the new meta joined and the old one left).
    pub fn update(&mut self, key: impl Into<String>, meta: JsonObject) {
        let (topic, join_ref) = self.ids();
        self.effects.push(Effect::Action(Action::Update {
            topic,
            join_ref,
            key: key.into(),
            meta: strip_reserved(meta),
        }));
    }

    /// `Presence.untrack(socket, key)`.
    pub fn untrack(&mut self, key: impl Into<String>) {
        let (topic, join_ref) = self.ids();
        self.effects.push(Effect::Action(Action::Untrack {
            topic,
            join_ref,
            key: key.into(),
        }));
    }

    /// Appends `body` to the replicated history of `log` (this topic or
    /// another); every node's [`records`](chorus_engine::runtime::RecordsReader) gets it.
    pub fn append(&mut self, log: impl Into<String>, body: JsonObject) {
        self.effects.push(Effect::Action(Action::Append {
            topic: self.topic.to_owned(),
            log: log.into(),
            body: body.as_str().to_owned(),
        }));
    }

    /// Writes the replicated register `(space, key)`; `None` removes it.
    pub fn put(&mut self, space: &str, key: &str, value: Option<String>) {
        self.effects.push(Effect::Action(Action::Put {
            topic: self.topic.to_owned(),
            space: space.to_owned(),
            key: key.to_owned(),
            value,
        }));
    }

    /// Asks the driver how many connections are present in `of`, cluster-wide;
    /// the answer comes to `handle_info` as a
    /// [`PresenceCount`](crate::channel::PresenceCount).
    pub fn count_presence(&mut self, of: impl Into<String>) {
        let (topic, join_ref) = self.ids();
        self.effects.push(Effect::Action(Action::CountPresence {
            topic,
            join_ref,
            of: of.into(),
        }));
    }

    /// `Presence.list(socket)`: the topic's presences as last handed in by the driver
    /// (empty until the first `presence_state`, and always empty unless the
    /// channel's [`Channel::keeps_presence_list`](super::Channel::keeps_presence_list)
    /// says `true`). Render it with
    /// [`presence_state`](crate::channel::presence_state).
    pub fn list(&self) -> &[PresenceEntry] {
        self.presence
    }

    fn ids(&self) -> (String, Ref) {
        (self.topic.to_owned(), self.join_ref.clone())
    }

    fn broadcast_action(&mut self, topic: String, event: String, payload: Payload, from: bool) {
        self.effects.push(Effect::Action(Action::Broadcast {
            topic,
            event,
            payload,
            exclude_self: from,
        }));
    }
}

/// One thing a callback asked for, in the order it asked.
pub(crate) enum Effect {
    Push { event: String, payload: Payload },
    Forward(Arc<Encoded>),
    Reply { ref_: Option<Ref>, reply: Reply },
    Action(Action),
    Info(Info),
}

/// Where a context's borrowed data comes from; built by the session.
pub(crate) struct Scope<'a> {
    pub topic: &'a str,
    pub join_ref: &'a Ref,
    pub msg_ref: Option<&'a Ref>,
    pub socket_id: Option<&'a str>,
    pub assigns: &'a SocketAssigns,
    pub presence: &'a [PresenceEntry],
}

impl<'a> ChannelContext<'a> {
    pub(crate) fn new(scope: Scope<'a>) -> Self {
        Self {
            topic: scope.topic,
            join_ref: scope.join_ref,
            msg_ref: scope.msg_ref,
            socket_id: scope.socket_id,
            assigns: scope.assigns,
            presence: scope.presence,
            attached: None,
            effects: Vec::new(),
        }
    }

    pub(crate) fn with_attached(mut self, attached: Option<&'a (dyn Any + Send)>) -> Self {
        self.attached = attached;
        self
    }

    pub(crate) fn into_effects(self) -> Vec<Effect> {
        self.effects
    }
}
