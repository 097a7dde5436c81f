//! The cluster's presence and subscribers of the watched topics, as this node
//! sees them, and the webhook events their changes make (sans-IO).
//!
//! Every node holds the whole presence CRDT, so every node derives the same
//! transitions from it (a coalescing window apart): a user key's first meta in
//! a topic is `member_added`, its last gone `member_removed`; the topic's first
//! presence or subscriber node is `channel_occupied`, the last gone
//! `channel_vacated`.

use std::collections::{HashMap, HashSet};

use chorus_engine::{PhxRef, TopicDiff};

use super::config::EventKind;

/// One derived event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    /// What happened.
    pub kind: EventKind,
    /// The topic.
    pub topic: String,
    /// The presence key, for `member_*`.
    pub user_id: Option<String>,
}

/// One topic's view.
#[derive(Debug, Default)]
struct TopicView {
    /// Presence metas per user key.
    keys: HashMap<String, HashSet<PhxRef>>,
    /// Metas of the subscriber topic per node name (one per node with a local
    /// subscriber).
    subs: HashMap<String, HashSet<PhxRef>>,
}

impl TopicView {
    fn occupied(&self) -> bool {
        !self.keys.is_empty() || !self.subs.is_empty()
    }
}

/// Which of a diff's sides to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The topic's own presence (user keys).
    Presence,
    /// Its subscriber topic (node names).
    Subscribers,
}

/// The watched topics' views.
#[derive(Debug, Default)]
pub struct View {
    topics: HashMap<String, TopicView>,
}

impl View {
    /// Applies `diff` of `topic` (joins, then leaves, as phoenix.js does) and
    /// returns the events it makes, in order: `channel_occupied`, then each
    /// `member_added`, each `member_removed`, then `channel_vacated`.
    pub fn apply(&mut self, topic: &str, side: Side, diff: &TopicDiff) -> Vec<Derived> {
        let view = self.topics.entry(topic.to_owned()).or_default();
        let was_occupied = view.occupied();
        let map = match side {
            Side::Presence => &mut view.keys,
            Side::Subscribers => &mut view.subs,
        };
        let mut touched: Vec<(String, bool)> = Vec::new();
        let mut note = |map: &HashMap<String, HashSet<PhxRef>>, key: &str| {
            if !touched.iter().any(|(k, _)| k == key) {
                touched.push((key.to_owned(), map.contains_key(key)));
            }
        };
        for item in &diff.joins {
            note(map, item.key.as_str());
            map.entry(item.key.as_str().to_owned())
                .or_default()
                .insert(item.phx_ref);
        }
        for item in &diff.leaves {
            let key = item.key.as_str();
            note(map, key);
            if let Some(refs) = map.get_mut(key) {
                refs.remove(&item.phx_ref);
                if refs.is_empty() {
                    map.remove(key);
                }
            }
        }
        let mut out = Vec::new();
        let now_occupied = view.occupied();
        if now_occupied && !was_occupied {
            out.push(event(EventKind::ChannelOccupied, topic, None));
        }
        if side == Side::Presence {
            let mut added = Vec::new();
            let mut removed = Vec::new();
            for (key, before) in touched {
                match (before, view.keys.contains_key(&key)) {
                    (false, true) => added.push(key),
                    (true, false) => removed.push(key),
                    _ => {}
                }
            }
            added.sort();
            removed.sort();
            out.extend(
                added
                    .into_iter()
                    .map(|k| event(EventKind::MemberAdded, topic, Some(k))),
            );
            out.extend(
                removed
                    .into_iter()
                    .map(|k| event(EventKind::MemberRemoved, topic, Some(k))),
            );
        }
        if was_occupied && !now_occupied {
            out.push(event(EventKind::ChannelVacated, topic, None));
        }
        if !now_occupied {
            self.topics.remove(topic);
        }
        out
    }

    /// How many topics are occupied.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic is occupied.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

fn event(kind: EventKind, topic: &str, user_id: Option<String>) -> Derived {
    Derived {
        kind,
        topic: topic.to_owned(),
        user_id,
    }
}

#[cfg(test)]
mod tests {
    use chorus_engine::{Key, Meta, PresenceItem};

    use super::*;

    fn item(key: &str, r: u8) -> PresenceItem {
        let mut bytes = [0u8; 12];
        bytes[11] = r;
        PresenceItem {
            key: Key::from(key),
            phx_ref: PhxRef(bytes),
            prev_ref: None,
            meta: Meta::new("{}"),
        }
    }

    fn diff(joins: &[(&str, u8)], leaves: &[(&str, u8)]) -> TopicDiff {
        TopicDiff {
            joins: joins.iter().map(|&(k, r)| item(k, r)).collect(),
            leaves: leaves.iter().map(|&(k, r)| item(k, r)).collect(),
        }
    }

    fn names(events: &[Derived]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.user_id {
                Some(u) => format!("{} {u}", e.kind.name()),
                None => e.kind.name().to_owned(),
            })
            .collect()
    }

    #[test]
    fn first_and_last_meta_of_a_key_and_of_the_topic() {
        let mut v = View::default();
        let t = "room:1";
        assert_eq!(
            names(&v.apply(t, Side::Presence, &diff(&[("u1", 1)], &[]))),
            ["channel_occupied", "member_added u1"]
        );
        // A second tab of u1, and u2.
        assert_eq!(
            names(&v.apply(t, Side::Presence, &diff(&[("u1", 2), ("u2", 3)], &[]))),
            ["member_added u2"]
        );
        // An update: new meta joins, old leaves, in one diff: nothing.
        assert!(v
            .apply(t, Side::Presence, &diff(&[("u2", 4)], &[("u2", 3)]))
            .is_empty());
        assert!(v
            .apply(t, Side::Presence, &diff(&[], &[("u1", 1)]))
            .is_empty());
        // A leave of a ref never seen (coalesced away) changes nothing.
        assert!(v
            .apply(t, Side::Presence, &diff(&[], &[("u9", 9)]))
            .is_empty());
        assert_eq!(
            names(&v.apply(t, Side::Presence, &diff(&[], &[("u1", 2), ("u2", 4)]))),
            ["member_removed u1", "member_removed u2", "channel_vacated"]
        );
        assert!(v.is_empty());
    }

    #[test]
    fn a_subscriber_node_keeps_the_topic_occupied() {
        let mut v = View::default();
        let t = "room:2";
        assert_eq!(
            names(&v.apply(t, Side::Subscribers, &diff(&[("n1", 1)], &[]))),
            ["channel_occupied"]
        );
        assert_eq!(
            names(&v.apply(t, Side::Presence, &diff(&[("u1", 2)], &[]))),
            ["member_added u1"]
        );
        assert_eq!(
            names(&v.apply(t, Side::Presence, &diff(&[], &[("u1", 2)]))),
            ["member_removed u1"]
        );
        assert_eq!(
            names(&v.apply(t, Side::Subscribers, &diff(&[], &[("n1", 1)]))),
            ["channel_vacated"]
        );
    }
}
