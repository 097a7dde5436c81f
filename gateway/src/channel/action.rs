//! What a channel asks the server to do, through its session: subscriptions,
//! broadcasts, presence and record writes.
//!
//! The session owns no engine handle: these come out of
//! [`Session::poll_action`](crate::socket::Session::poll_action) as [`Action`]s, in
//! the order the protocol requires, and the driver carries them out for the
//! connection (it knows the connection's id; the session does not).

use std::borrow::Cow;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::protocol::{JsonObject, Payload, Ref};

/// Socket-wide data set at connect time (Phoenix's `socket.assigns`), as an
/// [`Authenticator`](crate::socket::Authenticator) gives them; channels read
/// them as [`SocketAssigns`] through
/// [`ChannelContext::assigns`](crate::channel::ChannelContext::assigns).
pub type Assigns = serde_json::Map<String, serde_json::Value>;

/// The assigns as a session keeps them for the life of its connection:
/// sorted by key in one allocation of exactly their size, the token's claim
/// names (`user_id`, `name`, `org`, `role`, `teams`, `friends`) not
/// allocated at all. The [`Assigns`] map (a `BTreeMap`) holds 11 slots in a
/// node whatever the count: 632 B of every idle connection for a token's six
/// claims. Read-only; serialized as the same JSON object (keys in order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SocketAssigns(Box<[(Cow<'static, str>, Value)]>);

/// Keys kept without an allocation of their own: the token's claims.
const KNOWN_KEYS: [&str; 6] = ["friends", "name", "org", "role", "teams", "user_id"];

impl SocketAssigns {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every key and value, keys in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// How many keys are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The assigns as a JSON map.
    pub fn to_map(&self) -> Assigns {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect()
    }
}

impl From<Assigns> for SocketAssigns {
    fn from(map: Assigns) -> Self {
        let mut entries: Vec<_> = map
            .into_iter()
            .map(
                |(k, v)| match KNOWN_KEYS.iter().find(|known| **known == k) {
                    Some(known) => (Cow::Borrowed(*known), v),
                    None => (Cow::Owned(k), v),
                },
            )
            .collect();
        // A map iterates in key order unless serde_json's `preserve_order`
        // is on somewhere in the build: sort anyway.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Self(entries.into_boxed_slice())
    }
}

/// `for (key, value) in &assigns`, keys in order.
impl<'a> IntoIterator for &'a SocketAssigns {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Cow<'static, str>, Value)>,
        fn(&'a (Cow<'static, str>, Value)) -> (&'a str, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

/// `assigns["key"]`: `null` when it is not set (as indexing a JSON object).
impl std::ops::Index<&str> for SocketAssigns {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(key).unwrap_or(&NULL)
    }
}

impl Serialize for SocketAssigns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

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

#[cfg(test)]
mod assigns_tests {
    use super::*;
    use serde_json::json;

    /// The compact assigns read and serialize as the map they came from,
    /// whatever its keys (claim names or others) and their order.
    #[test]
    fn socket_assigns_read_and_serialize_as_the_map() {
        let map: Assigns = serde_json::from_value(json!({
            "user_id": "u1", "name": "Ann", "zeta": 1, "teams": ["a"], "alpha": {"x": true},
            "friends": [], "org": "acme", "role": null
        }))
        .expect("a JSON object");
        let assigns = SocketAssigns::from(map.clone());
        assert_eq!(assigns.len(), map.len());
        for (k, v) in &map {
            assert_eq!(assigns.get(k), Some(v), "{k}");
            assert_eq!(&assigns[k.as_str()], v);
        }
        assert_eq!(assigns.get("missing"), None);
        assert_eq!(assigns["missing"], Value::Null);
        assert!(!assigns.contains_key("missing") && assigns.contains_key("zeta"));
        assert_eq!(
            serde_json::to_string(&assigns).expect("serialize"),
            serde_json::to_string(&map).expect("serialize")
        );
        assert_eq!(assigns.to_map(), map);
        assert!(assigns.keys().eq(map.keys().map(String::as_str)));
        assert!((&assigns)
            .into_iter()
            .eq(map.iter().map(|(k, v)| (k.as_str(), v))));
        assert!(assigns
            .0
            .iter()
            .all(|(k, _)| matches!(k, Cow::Borrowed(_)) == KNOWN_KEYS.contains(&k.as_ref())));
        assert!(SocketAssigns::from(Assigns::new()).is_empty());
    }
}
