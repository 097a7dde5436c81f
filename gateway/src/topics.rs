//! Every engine topic the gateway uses for itself, in one place.
//!
//! These topics carry the server's own traffic between nodes: disconnect-by-id,
//! the count of a user's sockets, LongPoll forwarding, the HTTP API's
//! idempotency keys, the dashboard's snapshots. None of them is a channel: a client's `phx_join` to one
//! gets `unmatched topic` (whatever the router would match), and a broadcast to
//! one (a channel's, [`Hub::broadcast`](crate::cluster::Hub::broadcast), the
//! HTTP API's) is refused. [`is_internal`] is the one test every entry point
//! applies.

use chorus_engine::{NodeId, Topic};

/// Where every `disconnect` broadcast is also published, its payload the socket
/// id it was broadcast on: each node hands it to its connections with that id.
pub const DISCONNECT: &str = "phx_disconnect";

/// Prefix of the presence topics that track each connection of a socket id
/// ([`socket_topic`]).
pub const SOCKET_PREFIX: &str = "phx_socket:";

/// Prefix of each node's LongPoll forwarding topic ([`longpoll_topic`]).
pub const LONGPOLL_PREFIX: &str = "phx_lp:";

/// Where the HTTP API announces the idempotency keys it has used, so a retry to
/// another node is recognised.
pub const API_IDEMPOTENCY: &str = "chorus:api:idempotency";

/// Prefix of the presence topics where the webhooks track, per topic, the
/// nodes with a local subscriber of it (key: the node's name), so
/// `channel_occupied` counts subscribers cluster-wide ([`webhook_subs_topic`]).
pub const WEBHOOK_SUBS_PREFIX: &str = "chorus:webhooks:subs:";

/// Where the webhooks keep their replicated delivery watermarks: registers in
/// this record space, one per (webhook, sender node).
pub const WEBHOOK_DELIVERED: &str = "chorus:webhooks:delivered";

/// The presence topic that shows which nodes subscribe to `topic`.
pub fn webhook_subs_topic(topic: &str) -> String {
    format!("{WEBHOOK_SUBS_PREFIX}{topic}")
}

/// The presence topic where every connection of socket `id` is tracked (key:
/// the connection number), so a user's sockets can be counted cluster-wide.
pub fn socket_topic(id: &str) -> String {
    format!("{SOCKET_PREFIX}{id}")
}

/// Where every node publishes its dashboard snapshot each second; only the
/// dashboard's own socket (`/dashboard/websocket`, API key) joins it.
pub const DASHBOARD: &str = "chorus:dashboard";

/// The topic on which `node` takes LongPoll requests forwarded to it.
pub fn longpoll_topic(node: &NodeId) -> Topic {
    Topic::new(format!("{LONGPOLL_PREFIX}{node}"))
}

/// Whether `topic` is one of the server's own: never joined by a client, never
/// a target of a channel's or the API's broadcast.
pub fn is_internal(topic: &str) -> bool {
    topic == DISCONNECT
        || topic == API_IDEMPOTENCY
        || topic == DASHBOARD
        || topic == WEBHOOK_DELIVERED
        || topic.starts_with(WEBHOOK_SUBS_PREFIX)
        || topic.starts_with(SOCKET_PREFIX)
        || topic.starts_with(LONGPOLL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_topic_is_recognised_and_nothing_else() {
        let node = NodeId::new("n1", 7);
        for topic in [
            DISCONNECT.to_owned(),
            API_IDEMPOTENCY.to_owned(),
            DASHBOARD.to_owned(),
            WEBHOOK_DELIVERED.to_owned(),
            webhook_subs_topic("room:1"),
            socket_topic("user_socket:alice"),
            longpoll_topic(&node).as_str().to_owned(),
        ] {
            assert!(is_internal(&topic), "{topic}");
        }
        for topic in [
            "room:lobby",
            "user_socket:alice",
            "phx_disconnected",
            "chorus:api",
            "chorus:dashboard:x",
        ] {
            assert!(!is_internal(topic), "{topic}");
        }
        assert_eq!(longpoll_topic(&node).as_str(), "phx_lp:n1#7");
    }
}
