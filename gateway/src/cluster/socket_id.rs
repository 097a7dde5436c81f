//! Socket ids (disconnect-by-id) and the count of a user's sockets.
//!
//! Socket ids are not topics here: every node subscribes once to
//! [`topics::DISCONNECT`], a `disconnect` broadcast is published there too, and
//! the hub hands it to the local connections registered under that id. An engine
//! subscription per connection (a task, a queue, the engine's routing entries)
//! was about 4 KB of every idle connection.

use std::sync::Arc;

use super::envelope::Envelope;
use super::mailbox::{Mailbox, Prepared};
use super::topic::routed;
use super::{Hub, HubError};
use crate::protocol::{encode_broadcast, Payload};
use crate::topics;

impl Hub {
    /// Tracks connection `conn` of socket `id` in [`topics::socket_topic`]. The
    /// entry leaves with the connection's other presences (`untrack_conn`).
    pub async fn track_socket(&self, id: &str, conn: u64) -> Result<(), HubError> {
        self.engine
            .track(
                topics::socket_topic(id).as_str(),
                conn.to_string(),
                chorus_engine::ConnId(conn),
                chorus_engine::Meta::new("{}"),
            )
            .await?;
        Ok(())
    }

    /// Registers `mailbox` under socket `id`: a `disconnect` broadcast on `id`
    /// reaches it (as a broadcast on topic `id`). Waits until this node's
    /// [`topics::DISCONNECT`] subscription is routed.
    pub(crate) async fn register_id(
        self: &Arc<Self>,
        id: &str,
        mailbox: &Mailbox,
    ) -> Result<(), HubError> {
        let state = {
            let mut topics = self.topics.lock().expect("hub topics lock");
            let state = self.topic_state(&mut topics, topics::DISCONNECT);
            let mut ids = self.ids.lock().expect("hub ids lock");
            let mailboxes = ids.entry(id.to_owned()).or_default();
            mailboxes.reserve_exact(1);
            mailboxes.push(mailbox.clone());
            state
        };
        routed(&state).await
    }

    /// Removes connection `conn` from socket `id`.
    pub(crate) fn unregister_id(&self, id: &str, conn: u64) {
        let mut ids = self.ids.lock().expect("hub ids lock");
        if let Some(mailboxes) = ids.get_mut(id) {
            mailboxes.retain(|m| m.conn != conn);
            if mailboxes.is_empty() {
                ids.remove(id);
            }
        }
    }

    /// A `disconnect` published on [`topics::DISCONNECT`]: handed, as a broadcast
    /// on the socket id's topic, to the local connections with that id.
    pub(super) fn disconnect(&self, envelope: Envelope) {
        let Payload::Binary(id) = envelope.payload else {
            return;
        };
        let Ok(id) = std::str::from_utf8(&id) else {
            return;
        };
        let ids = self.ids.lock().expect("hub ids lock");
        let Some(mailboxes) = ids.get(id) else {
            return;
        };
        let Ok(encoded) = encode_broadcast(id, &envelope.event, Payload::empty()) else {
            return;
        };
        let batch = [Prepared {
            encoded: Arc::new(encoded),
            logged: None,
            diff: None,
            exclude: None,
        }];
        for mailbox in mailboxes {
            mailbox.offer(&batch, None);
        }
    }
}
