//! The per-connection session: one client's channel table and the behaviour of
//! PROTOCOL.md §3, without I/O.
//!
//! A transport (WebSocket, LongPoll) decodes each client frame and feeds it to
//! [`Session::handle_frame`]; the cluster side feeds broadcasts
//! ([`Session::handle_broadcast`]), presence state ([`Session::handle_presence_state`])
//! and channel messages ([`Session::handle_info`]). After every input the driver drains
//! [`Session::poll_transmit`] (frames for this client, in wire order) and
//! [`Session::poll_action`] (subscriptions, broadcasts and presence changes to carry
//! out for this connection, in order). The session is deterministic: it reads no
//! clock, draws no randomness and never blocks.
//!
//! ```
//! use std::sync::Arc;
//! use chorus_gateway::channel::Router;
//! use chorus_gateway::protocol::{decode_text, Vsn};
//! use chorus_gateway::socket::{Session, SessionConfig};
//!
//! let mut session = Session::new(Vsn::V2, Arc::new(Router::new()), SessionConfig::default());
//! session.handle_frame(decode_text(Vsn::V2, r#"["7","7","nope:1","phx_join",{}]"#)?)?;
//! let reply = session.poll_transmit().expect("a reply");
//! assert_eq!(
//!     reply.as_text(),
//!     Some(r#"[null,"7","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#)
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
mod config;
mod dispatch;
mod lifecycle;
mod outbox;

pub use auth::{AllowAll, Authenticator, Denied, SocketInfo};
pub use config::{SessionConfig, DEFAULT_MAX_CHANNELS, DISCONNECT_CLOSE_CODE};

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use compact_str::CompactString;

use crate::channel::presence;
use crate::channel::{
    Action, Assigns, Channel, Info, PresenceEntry, Router, SocketAssigns, StopReason,
};
use crate::protocol::{
    encode_heartbeat_reply, Encoded, FrameError, InFrame, JsonObject, OutFrame, Payload, Ref, Vsn,
    MAX_FIELD_LEN, PHOENIX_TOPIC,
};
use outbox::Outbox;

/// One client connection's protocol state: its serializer, socket id, assigns and
/// channel table `topic -> (join_ref, channel, tracked presences)`.
pub struct Session {
    config: SessionConfig,
    router: Arc<Router>,
    id: Option<String>,
    assigns: SocketAssigns,
    channels: Channels,
    outbox: Outbox,
    joins: JoinCounts,
}

/// Join outcomes counted by a session, for metrics: taken (and reset) with
/// [`Session::take_join_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinCounts {
    /// Joins the channel accepted.
    pub ok: u64,
    /// Refused: no route for the topic.
    pub unmatched_topic: u64,
    /// Refused: the connection's channel cap is reached.
    pub too_many_channels: u64,
    /// The channel (or its factory) panicked, or its reply could not be encoded.
    pub crashed: u64,
    /// The channel's `join` answered with an error.
    pub refused: u64,
}

/// The joined channels by topic, in topic order: a sorted `Vec` with exactly
/// the room it needs, not a `BTreeMap`, whose node holds 11 slots whatever
/// the count (368 B for a connection with one channel, `chorus-load idle`).
/// At most `max_channels` entries; joins and leaves are rare, lookups a
/// binary search. Each `Joined` is boxed so that an entry is 32 bytes, and a
/// topic of up to 24 bytes is kept in the entry itself: a delivery's lookup
/// then reads no other memory than the table to compare topics.
#[derive(Default)]
struct Channels(Vec<(CompactString, Box<Joined>)>);

impl Channels {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(t, _)| t.as_str().cmp(topic))
    }

    fn get(&self, topic: &str) -> Option<&Joined> {
        self.find(topic).ok().map(|i| &*self.0[i].1)
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut Joined> {
        let i = self.find(topic).ok()?;
        Some(&mut *self.0[i].1)
    }

    fn insert(&mut self, topic: &str, entry: Box<Joined>) {
        match self.find(topic) {
            Ok(i) => self.0[i].1 = entry,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (topic.into(), entry));
            }
        }
    }

    fn remove(&mut self, topic: &str) -> Option<Box<Joined>> {
        let i = self.find(topic).ok()?;
        let (_, entry) = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(entry)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = &(CompactString, Box<Joined>)> {
        self.0.iter()
    }
}

impl IntoIterator for Channels {
    type Item = (CompactString, Box<Joined>);
    type IntoIter = std::vec::IntoIter<Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A joined channel. Leaving is synchronous here, so a channel is either joined (in
/// the table) or gone; there is no `:leaving` state to keep.
struct Joined {
    join_ref: Ref,
    channel: Box<dyn Channel>,
    /// Presence keys this join tracks, for [`Action::UntrackAll`] when it ends.
    tracked: BTreeSet<String>,
    /// The topic's presences as last handed in, for `list`.
    presence: Vec<PresenceEntry>,
}

impl Session {
    /// A session for a connection speaking `vsn`, routing joins with `router`.
    pub fn new(vsn: Vsn, router: Arc<Router>, config: SessionConfig) -> Self {
        Self {
            config,
            router,
            id: None,
            assigns: SocketAssigns::default(),
            channels: Channels::default(),
            outbox: Outbox::new(vsn),
            joins: JoinCounts::default(),
        }
    }

    /// Sets the socket id (Phoenix's `id/1`). The driver subscribes the connection to
    /// that topic and passes its events to [`Session::handle_id_broadcast`].
    pub fn with_id(mut self, id: Option<String>) -> Self {
        self.id = id;
        self
    }

    /// Sets the assigns the connect hook produced.
    pub fn with_assigns(mut self, assigns: Assigns) -> Self {
        self.assigns = assigns.into();
        self
    }

    /// The connection's serializer.
    pub fn vsn(&self) -> Vsn {
        self.outbox.vsn
    }

    /// The socket id, if the connect hook gave one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The socket-wide assigns.
    pub fn assigns(&self) -> &SocketAssigns {
        &self.assigns
    }

    /// The join_ref of the current join of `topic`, if joined.
    pub fn joined(&self, topic: &str) -> Option<&Ref> {
        self.channels.get(topic).map(|j| &j.join_ref)
    }

    /// Whether the channel joined on `topic` intercepts no broadcast event
    /// (its [`Channel::intercepts`](crate::channel::Channel::intercepts) is
    /// empty): every plain broadcast on the topic then goes to the client
    /// unchanged. False when the topic is not joined or the callback panics.
    pub fn intercepts_none(&self, topic: &str) -> bool {
        self.channels.get(topic).is_some_and(|entry| {
            let channel = &entry.channel;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                channel.intercepts().is_empty()
            }))
            .unwrap_or(false)
        })
    }

    /// The join outcomes since the last call (counters reset to zero).
    pub fn take_join_counts(&mut self) -> JoinCounts {
        std::mem::take(&mut self.joins)
    }

    /// How many channels are joined.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Handles one decoded client frame (PROTOCOL.md §3 rows a–l). Fails only for a
    /// topic over 255 bytes (which the decoders already refuse); the transport closes
    /// the connection on an error, as for a frame that does not decode.
    pub fn handle_frame(&mut self, frame: InFrame) -> Result<(), FrameError> {
        self.handle_frame_with(frame, None)
    }

    /// [`Session::handle_frame`] with `attached` handed to the channel's `join` or
    /// `handle_in` for this frame ([`ChannelContext::attached`](crate::channel::ChannelContext::attached)):
    /// what the transport learned about the frame before handing it in (a backend
    /// hook's answer). Ignored by the other events.
    pub fn handle_frame_with(
        &mut self,
        frame: InFrame,
        attached: Option<Info>,
    ) -> Result<(), FrameError> {
        let InFrame {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        } = frame;
        if topic.len() > MAX_FIELD_LEN {
            return Err(FrameError::TooLong {
                field: "topic",
                len: topic.len(),
            });
        }
        match event.as_str() {
            "heartbeat" if topic == PHOENIX_TOPIC => {
                let reply = encode_heartbeat_reply(self.outbox.vsn, ref_.as_ref());
                self.outbox.transmit.push_back(reply);
            }
            "phx_join" => {
                // A join without a join_ref (v1 clients) uses its ref, as Phoenix does.
                let join_ref = join_ref
                    .or_else(|| ref_.clone())
                    .unwrap_or_else(|| Ref::string(""));
                self.join(join_ref, ref_, topic.into_string(), payload, attached);
            }
            "phx_leave" => self.leave(join_ref, ref_, &topic),
            _ => self.message(join_ref, ref_, &topic, &event, payload, attached),
        }
        self.drain_infos();
        Ok(())
    }

    /// Answers a client frame with `reply` (its join_ref and ref, as
    /// [`Session::refuse_frame`] does) without handing it to a channel.
    pub fn reply_frame(&mut self, frame: &InFrame, reply: &crate::channel::Reply) {
        let join_ref = match (&frame.join_ref, frame.event.as_str()) {
            (None, "phx_join") => frame.ref_.as_ref(),
            (join_ref, _) => join_ref.as_ref(),
        };
        self.outbox
            .reply(join_ref, frame.ref_.as_ref(), &frame.topic, reply);
    }

    /// Answers a client frame the transport refuses to handle (a limit was
    /// breached) with `[join_ref, ref, topic, "phx_reply",
    /// {"status":"error","response":{"reason":reason}}]`, so the push's
    /// `receive("error")` fires; the frame does nothing else.
    pub fn refuse_frame(&mut self, frame: &InFrame, reason: &str) {
        let join_ref = match (&frame.join_ref, frame.event.as_str()) {
            (None, "phx_join") => frame.ref_.as_ref(),
            (join_ref, _) => join_ref.as_ref(),
        };
        let reply = crate::channel::Reply::error(crate::channel::reason(reason));
        self.outbox
            .reply(join_ref, frame.ref_.as_ref(), &frame.topic, &reply);
    }

    /// Handles a broadcast for a topic this connection subscribed to: written as the
    /// shared encoded frame (`[null, null, topic, event, payload]`), or passed to the
    /// channel's `handle_out` if it intercepts the event. Ignored if the topic is not
    /// joined (a broadcast racing a leave).
    pub fn handle_broadcast(&mut self, msg: &Encoded) {
        self.handle_broadcast_with(msg, None);
    }

    /// [`Session::handle_broadcast`] with what the dispatcher attached to the
    /// delivery, for an intercepting channel's `handle_out`
    /// ([`ChannelContext::attached`](crate::channel::ChannelContext::attached)).
    pub fn handle_broadcast_with(&mut self, msg: &Encoded, attached: Option<&(dyn Any + Send)>) {
        self.broadcast(msg, attached);
        self.drain_infos();
    }

    /// Delivers `msg` to the channel on `topic` (a timer, a message from the app).
    /// With `join_ref`, only that join receives it. Returns whether a channel got it.
    pub fn handle_info(&mut self, topic: &str, join_ref: Option<&Ref>, msg: Info) -> bool {
        let delivered = self.deliver_info(topic, join_ref, msg);
        self.drain_infos();
        delivered
    }

    /// Hands in the topic's presences after this join's track: pushes
    /// `[join_ref, null, topic, "presence_state", state]` and keeps `entries` for
    /// `list`. Ignored (false) if `join_ref` is no longer the topic's current join.
    pub fn handle_presence_state(
        &mut self,
        topic: &str,
        join_ref: &Ref,
        entries: Vec<PresenceEntry>,
    ) -> bool {
        let state = presence::presence_state(&entries);
        self.handle_presence_state_json(topic, join_ref, state, || entries)
    }

    /// [`Session::handle_presence_state`] with the payload already written;
    /// `entries` is called only if the channel keeps a presence `list`.
    pub fn handle_presence_state_json(
        &mut self,
        topic: &str,
        join_ref: &Ref,
        state: JsonObject,
        entries: impl FnOnce() -> Vec<PresenceEntry>,
    ) -> bool {
        let Some(entry) = self.channels.get_mut(topic) else {
            return false;
        };
        if entry.join_ref != *join_ref {
            return false;
        }
        if entry.channel.keeps_presence_list() {
            entry.presence = entries();
        }
        let frame = crate::protocol::encode_push(
            self.outbox.vsn,
            Some(join_ref),
            topic,
            "presence_state",
            &Payload::Json(state),
        );
        self.outbox.send(frame);
        true
    }

    /// Applies a presence diff to the topic's `list` snapshot. Sends nothing: the
    /// diff's `presence_diff` frame arrives as a broadcast.
    pub fn handle_presence_diff(
        &mut self,
        topic: &str,
        joins: &[PresenceEntry],
        leaves: &[PresenceEntry],
    ) {
        if let Some(entry) = self.channels.get_mut(topic) {
            if entry.channel.keeps_presence_list() {
                presence::apply_diff(&mut entry.presence, joins, leaves);
            }
        }
    }

    /// The connection is gone: every channel terminates with [`StopReason::Closed`],
    /// no frame is sent, and the cleanup actions (untrack, unsubscribe) come out.
    pub fn handle_close(&mut self) {
        for (topic, entry) in std::mem::take(&mut self.channels) {
            let _ = self.end(&topic, *entry, StopReason::Closed);
        }
        self.outbox.transmit.clear();
        self.outbox.infos.clear();
    }

    /// An event broadcast on the socket id's topic. `disconnect` closes the session
    /// as [`Session::handle_close`] does and returns the close code to use (1001);
    /// any other event is ignored.
    pub fn handle_id_broadcast(&mut self, event: &str) -> Option<u16> {
        if event != "disconnect" {
            return None;
        }
        self.handle_close();
        Some(DISCONNECT_CLOSE_CODE)
    }

    /// The next frame to write to the client. Poll until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<OutFrame> {
        let frame = self.outbox.transmit.pop_front();
        if frame.is_none() && self.outbox.transmit.capacity() > 0 {
            // Once drained, the queue's room goes too: one allocation per
            // burst of frames rather than some hundred bytes per idle connection.
            self.outbox.transmit = std::collections::VecDeque::new();
        }
        frame
    }

    /// Moves every frame queued for the client to the back of `into`, in
    /// order: what calling [`Session::poll_transmit`] until `None` gives, but
    /// the queue goes at once (swapped when `into` is empty). The session
    /// keeps no room afterwards.
    pub fn take_transmit(&mut self, into: &mut std::collections::VecDeque<OutFrame>) {
        if into.is_empty() {
            std::mem::swap(&mut self.outbox.transmit, into);
        } else {
            into.append(&mut self.outbox.transmit);
        }
        if self.outbox.transmit.capacity() > 0 {
            self.outbox.transmit = std::collections::VecDeque::new();
        }
    }

    /// Makes room for `n` more frames for the client (a burst of broadcasts
    /// about to be handed in), so the queue grows once rather than by doubling.
    pub fn reserve_frames(&mut self, n: usize) {
        self.outbox.transmit.reserve(n);
    }

    /// Whether an action is waiting for [`Session::poll_action`].
    pub fn has_actions(&self) -> bool {
        !self.outbox.actions.is_empty()
    }

    /// The next action to carry out for this connection. Poll until `None` after
    /// every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.outbox.actions.pop_front();
        if action.is_none() && self.outbox.actions.capacity() > 0 {
            // Actions are rare (joins, leaves, presence): an idle connection
            // need not keep their queue's room.
            self.outbox.actions = std::collections::VecDeque::new();
        }
        action
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let joins: BTreeMap<&str, &str> = self
            .channels
            .iter()
            .map(|(topic, j)| (topic.as_str(), j.join_ref.as_str()))
            .collect();
        f.debug_struct("Session")
            .field("vsn", &self.outbox.vsn)
            .field("id", &self.id)
            .field("channels", &joins)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
