//! What a session asks its driver to do, and how a session is configured.
//!
//! The session owns no engine handle: subscriptions, broadcasts and presence changes
//! come out of [`Session::poll_action`](super::Session::poll_action) as [`Action`]s,
//! in the order the protocol requires, and the driver carries them out for this
//! connection (it knows the connection's id; the session does not).

use crate::protocol::{JsonObject, Payload, Ref};

/// Default cap on channels joined on one connection, as Phoenix's
/// `max_channels_per_transport`.
pub const DEFAULT_MAX_CHANNELS: usize = 100;

/// WebSocket close code for a disconnect-by-socket-id (Phoenix's
/// `{:shutdown, :disconnected}`); never 1000, so clients reconnect.
pub const DISCONNECT_CLOSE_CODE: u16 = 1001;

/// Per-connection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Joins beyond this many channels get `{"reason":"too many channels joined"}`.
    pub max_channels: usize,
    /// Whether the transport can write binary frames (WebSocket: yes; LongPoll: no).
    /// Binary broadcasts are skipped for connections that cannot carry them.
    pub binary_frames: bool,
}

impl SessionConfig {
    /// A WebSocket connection: 100 channels, binary frames.
    pub fn websocket() -> Self {
        Self {
            max_channels: DEFAULT_MAX_CHANNELS,
            binary_frames: true,
        }
    }

    /// A LongPoll session: 100 channels, no binary frames server to client.
    pub fn longpoll() -> Self {
        Self {
            binary_frames: false,
            ..Self::websocket()
        }
    }

    /// The same settings with another channel cap.
    pub fn with_max_channels(self, max_channels: usize) -> Self {
        Self {
            max_channels,
            ..self
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self::websocket()
    }
}

/// A side effect for the driver to perform on behalf of this connection.
///
/// Channel-scoped actions carry the `join_ref` of the join they belong to, so a driver
/// can tell a replaced join's cleanup from the new join's setup on the same topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver this topic's broadcasts to the session
    /// ([`Session::handle_broadcast`](super::Session::handle_broadcast)). Emitted when
    /// a join succeeds, before the join's own actions.
    Subscribe {
        /// The joined topic.
        topic: String,
        /// The join it belongs to.
        join_ref: Ref,
    },
    /// Stop delivering this topic's broadcasts: the join ended (leave, stop, crash,
    /// duplicate join, closed connection).
    Unsubscribe {
        /// The topic.
        topic: String,
        /// The join that ended.
        join_ref: Ref,
    },
    /// Publish to every subscriber of `topic` (cluster-wide), encoding it once.
    Broadcast {
        /// The destination topic.
        topic: String,
        /// The event.
        event: String,
        /// The payload.
        payload: Payload,
        /// `broadcast_from`: skip this connection's own subscription to `topic`.
        exclude_self: bool,
    },
    /// Track presence `key` with `meta` on `topic`, owned by this join. Once the
    /// track is in, hand the topic's state back with
    /// [`Session::handle_presence_state`](super::Session::handle_presence_state).
    Track {
        /// The topic.
        topic: String,
        /// The owning join.
        join_ref: Ref,
        /// The presence key, e.g. a user id.
        key: String,
        /// The meta, without `phx_ref`/`phx_ref_prev` (the presence system adds them).
        meta: JsonObject,
    },
    /// Replace the meta of a key this join tracks.
    Update {
        /// The topic.
        topic: String,
        /// The owning join.
        join_ref: Ref,
        /// The presence key.
        key: String,
        /// The new meta.
        meta: JsonObject,
    },
    /// Stop tracking one key of this join.
    Untrack {
        /// The topic.
        topic: String,
        /// The owning join.
        join_ref: Ref,
        /// The presence key.
        key: String,
    },
    /// Remove every presence this join tracked: the join ended (emitted before its
    /// [`Action::Unsubscribe`], and only if it tracked something).
    UntrackAll {
        /// The topic.
        topic: String,
        /// The join that ended.
        join_ref: Ref,
    },
    /// Append `body` (a JSON object) to `log`'s replicated history.
    Append {
        /// The channel that asked.
        topic: String,
        /// The topic whose history grows (may differ from `topic`).
        log: String,
        /// The entry, JSON object text.
        body: String,
    },
    /// Write the replicated register `(space, key)`; `None` removes it.
    Put {
        /// The channel that asked.
        topic: String,
        /// Namespace.
        space: String,
        /// Key.
        key: String,
        /// Value, or `None`.
        value: Option<String>,
    },
    /// Count the connections present in `of` cluster-wide and hand the number
    /// to the channel as a [`PresenceCount`] info.
    CountPresence {
        /// The channel that asked.
        topic: String,
        /// Its join.
        join_ref: Ref,
        /// The presence topic to count.
        of: String,
    },
}

/// The answer to [`Action::CountPresence`], delivered to
/// [`Channel::handle_info`](crate::channel::Channel::handle_info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceCount {
    /// The topic counted.
    pub of: String,
    /// Presence metas in it (one per tracking connection).
    pub count: usize,
}

impl Action {
    /// The topic the action is about.
    pub fn topic(&self) -> &str {
        match self {
            Self::Subscribe { topic, .. }
            | Self::Unsubscribe { topic, .. }
            | Self::Broadcast { topic, .. }
            | Self::Track { topic, .. }
            | Self::Update { topic, .. }
            | Self::Untrack { topic, .. }
            | Self::UntrackAll { topic, .. }
            | Self::Append { topic, .. }
            | Self::Put { topic, .. }
            | Self::CountPresence { topic, .. } => topic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        let ws = SessionConfig::default();
        assert_eq!(ws.max_channels, 100);
        assert!(ws.binary_frames);
        let lp = SessionConfig::longpoll().with_max_channels(3);
        assert_eq!((lp.max_channels, lp.binary_frames), (3, false));
    }

    #[test]
    fn every_action_names_its_topic() {
        let r = Ref::string("1");
        let actions = [
            Action::Subscribe {
                topic: "a".into(),
                join_ref: r.clone(),
            },
            Action::Broadcast {
                topic: "a".into(),
                event: "e".into(),
                payload: Payload::empty(),
                exclude_self: true,
            },
            Action::UntrackAll {
                topic: "a".into(),
                join_ref: r,
            },
        ];
        assert!(actions.iter().all(|a| a.topic() == "a"));
    }
}
