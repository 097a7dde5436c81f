//! What a channel asks the server to do, through its session: subscriptions,
//! broadcasts, presence and record writes.
//!
//! The session owns no engine handle: these come out of
//! [`Session::poll_action`](crate::socket::Session::poll_action) as [`Action`]s, in
//! the order the protocol requires, and the driver carries them out for the
//! connection (it knows the connection's id; the session does not).

use crate::protocol::{JsonObject, Payload, Ref};

/// Socket-wide data set at connect time (Phoenix's `socket.assigns`), read by
/// channels through [`ChannelContext::assigns`](crate::channel::ChannelContext::assigns).
pub type Assigns = serde_json::Map<String, serde_json::Value>;

/// A side effect for the driver to perform on behalf of this connection.
///
/// Channel-scoped actions carry the `join_ref` of the join they belong to, so a driver
/// can tell a replaced join's cleanup from the new join's setup on the same topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver this topic's broadcasts to the session
    /// ([`Session::handle_broadcast`](crate::socket::Session::handle_broadcast)). Emitted when
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
    /// [`Session::handle_presence_state`](crate::socket::Session::handle_presence_state).
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
