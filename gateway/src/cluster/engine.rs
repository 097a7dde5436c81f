//! What the rest of the gateway asks of the engine, besides topics: presence,
//! replicated records, the cluster's state, and the raw internal topics
//! ([`crate::topics`]). Every call goes through here, so the [`Hub`] is the one
//! holder of the engine handle.

use std::net::SocketAddr;

use bytes::Bytes;
use chorus_engine::runtime::{MemberInfo, RuntimeError, RuntimeStats, Subscription};
use chorus_engine::{ConnId, Meta, NodeId, PresenceItem, Stamp, Topic, TopicDiff};

use super::{unix_ms, Hub, TapEvent};
use crate::channel::recover;
use crate::protocol::{JsonObject, Payload};
use crate::topics;

impl Hub {
    /// Tracks presence `key` of connection `conn` on `topic` with `meta`.
    pub async fn track(
        &self,
        topic: &str,
        key: &str,
        conn: u64,
        meta: &JsonObject,
    ) -> Result<(), RuntimeError> {
        let meta = Meta::new(meta.as_str());
        self.engine.track(topic, key, ConnId(conn), meta).await?;
        Ok(())
    }

    /// Replaces the meta of presence `key` of connection `conn` on `topic`.
    pub async fn update(
        &self,
        topic: &str,
        key: &str,
        conn: u64,
        meta: &JsonObject,
    ) -> Result<(), RuntimeError> {
        let meta = Meta::new(meta.as_str());
        self.engine.update(topic, key, ConnId(conn), meta).await?;
        Ok(())
    }

    /// Stops tracking presence `key` of connection `conn` on `topic`.
    pub async fn untrack(&self, topic: &str, key: &str, conn: u64) -> Result<(), RuntimeError> {
        self.engine.untrack(topic, key, ConnId(conn)).await
    }

    /// Removes every presence of connection `conn`.
    pub async fn untrack_conn(&self, conn: u64) -> Result<(), RuntimeError> {
        self.engine.untrack_conn(ConnId(conn)).await
    }

    /// The presences of `topic` cluster-wide, sorted by key.
    pub async fn presence(&self, topic: &str) -> Result<Vec<PresenceItem>, RuntimeError> {
        self.engine.presence(topic).await
    }

    /// `(users, connections)` present in `topic` cluster-wide, counted in the
    /// engine (no metas copied).
    pub async fn presence_count(&self, topic: &str) -> Result<(usize, usize), RuntimeError> {
        self.engine.presence_count(topic).await
    }

    /// Appends `body` (JSON object text) to `log`'s replicated history, stamped
    /// with the wall clock; returns the entry's stamp. A recoverable
    /// broadcast's entry ([`recover::entry`]) is reported to the hub's
    /// observer as the broadcast it is (webhooks' `message`).
    pub async fn append(&self, log: &str, body: String) -> Result<Stamp, RuntimeError> {
        let body: std::sync::Arc<str> = body.into();
        let stamp = self.engine.append(log, unix_ms(), body.clone()).await?;
        let entry = (recover::is_entry(&body) && self.tapping(log))
            .then(|| recover::parse_entry(&body))
            .flatten();
        if let Some(entry) = entry {
            if let Ok(payload) = JsonObject::from_raw(entry.payload) {
                self.tap(log, || TapEvent::Broadcast {
                    topic: log.to_owned(),
                    event: entry.event,
                    payload: Payload::Json(payload),
                });
            }
        }
        Ok(stamp)
    }

    /// Writes the replicated register `(space, key)`, stamped with the wall
    /// clock; `None` removes it.
    pub async fn put(
        &self,
        space: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), RuntimeError> {
        self.engine.put(space, key, unix_ms(), value).await?;
        Ok(())
    }

    /// The replicated register `(space, key)` as this node holds it.
    pub fn register(&self, space: &str, key: &str) -> Option<String> {
        self.engine
            .records()
            .read()
            .get(space, key)
            .map(|v| v.to_string())
    }

    /// Every presence diff of every topic from now on
    /// ([`EngineHandle::presence_tap`](chorus_engine::runtime::EngineHandle::presence_tap)).
    pub async fn presence_tap(
        &self,
    ) -> Result<
        tokio::sync::mpsc::UnboundedReceiver<(Topic, std::sync::Arc<TopicDiff>)>,
        RuntimeError,
    > {
        self.engine.presence_tap().await
    }

    /// Why the engine stopped on its own (a panic, an abort, a name clash),
    /// if it did; see [`EngineHandle::failed`](chorus_engine::runtime::EngineHandle::failed).
    pub fn engine_failure(&self) -> Option<RuntimeError> {
        self.engine.failure()
    }

    /// Whether the engine's task is serving (not failed, not shut down).
    pub fn engine_running(&self) -> bool {
        self.engine.is_running()
    }

    /// Resolves when the engine stops on its own, with why; pending while it
    /// runs or after an ordinary shutdown.
    pub async fn engine_failed(&self) -> RuntimeError {
        self.engine.failed().await
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.engine.node_id()
    }

    /// The engine's gossip address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    /// The configured seeds.
    pub fn seeds(&self) -> &[SocketAddr] {
        self.engine.seeds()
    }

    /// Every peer the engine knows and its state.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, RuntimeError> {
        self.engine.members().await
    }

    /// The engine's counters.
    pub async fn engine_stats(&self) -> Result<RuntimeStats, RuntimeError> {
        self.engine.stats().await
    }

    /// Subscribes to one of the server's own topics, raw: deliveries are the
    /// bytes published, not broadcast envelopes.
    pub(crate) async fn subscribe_internal(
        &self,
        topic: Topic,
    ) -> Result<Subscription, RuntimeError> {
        debug_assert!(topics::is_internal(topic.as_str()), "{topic}");
        self.engine.subscribe(topic).await
    }

    /// Publishes `bytes` on one of the server's own topics, to every node that
    /// subscribes to it.
    pub(crate) async fn publish_internal(
        &self,
        topic: &str,
        bytes: Bytes,
    ) -> Result<(), RuntimeError> {
        debug_assert!(topics::is_internal(topic), "{topic}");
        self.engine.publish(topic, bytes).await?;
        Ok(())
    }

    /// Publishes `bytes` on one of the server's own topics to node `to` only.
    pub(crate) async fn send_internal(
        &self,
        to: NodeId,
        topic: Topic,
        bytes: Bytes,
    ) -> Result<(), RuntimeError> {
        debug_assert!(topics::is_internal(topic.as_str()), "{topic}");
        self.engine.direct_publish(to, topic, bytes).await?;
        Ok(())
    }
}
