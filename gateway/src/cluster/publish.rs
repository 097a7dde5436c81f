//! Publishing: server-side broadcasts (Phoenix's `Endpoint.broadcast`) and
//! clients' broadcasts, which are queued behind the topic's backlog here and
//! on the peers (the engine's credit windows), so a publisher past saturation
//! is slowed down rather than overflowing the engine subscription of every
//! subscriber.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::warn;

use super::envelope::{Envelope, Exclude};
use super::topic::TopicState;
use super::{Hub, HubError, TapEvent};
use crate::protocol::Payload;
use crate::topics;

/// Deliveries waiting for a topic's dispatcher at which clients' publishes to
/// that topic wait: a quarter of the engine's default `subscriber_queue`.
const BACKLOG_HIGH: usize = 256;

/// Client publishes in the engine's queue at once, all topics together. With
/// [`BACKLOG_HIGH`], at most 512 deliveries of this node's clients can be
/// waiting for a topic's dispatcher: half the engine's default
/// `subscriber_queue` (1,024), whose overflow drops the subscription.
pub(super) const MAX_IN_FLIGHT: usize = 256;

impl Hub {
    /// Broadcasts `event` to every subscriber of `topic` in the cluster (Phoenix's
    /// `Endpoint.broadcast`). `broadcast(socket_id, "disconnect", {})` closes that
    /// socket's connections with 1001.
    pub async fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<(), HubError> {
        self.publish(topic, event, payload, None).await
    }

    pub(crate) async fn publish(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude_conn: Option<u64>,
    ) -> Result<(), HubError> {
        if topics::is_internal(topic) {
            return Err(HubError::Reserved(topic.to_owned()));
        }
        let envelope = self.envelope(event, payload, exclude_conn);
        let bytes = envelope.encode()?;
        self.wait_for_peers(topic).await;
        self.engine.publish(topic, bytes).await?;
        self.tap(topic, || TapEvent::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: envelope.payload.clone(),
        });
        if event == "disconnect" {
            let control = Envelope {
                event: event.to_owned(),
                payload: Payload::Binary(bytes::Bytes::copy_from_slice(topic.as_bytes())),
                exclude: None,
            };
            self.engine
                .publish(topics::DISCONNECT, control.encode()?)
                .await?;
        }
        Ok(())
    }

    /// A broadcast as it crosses the cluster; `exclude_conn` is a local
    /// connection that must not receive it (`broadcast_from`).
    fn envelope(&self, event: &str, payload: Payload, exclude_conn: Option<u64>) -> Envelope {
        Envelope {
            event: event.to_owned(),
            payload,
            exclude: exclude_conn.map(|conn| Exclude {
                origin: self.origin,
                conn,
            }),
        }
    }

    /// [`Hub::publish`] for a client's broadcast: handed to the engine behind
    /// the connection's earlier publishes (so they keep their order) without
    /// waiting for it to be carried out, which would cost the connection a
    /// round trip through the engine task per message. A failure is logged.
    /// A `disconnect` is published and waited for as by [`Hub::publish`].
    pub(crate) async fn publish_queued(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude_conn: Option<u64>,
    ) -> Result<(), HubError> {
        if topics::is_internal(topic) || event == "disconnect" {
            return self.publish(topic, event, payload, exclude_conn).await;
        }
        let envelope = self.envelope(event, payload, exclude_conn);
        let encoded = envelope.encode()?;
        // The topic's backlog first, then a place in flight: publishers
        // waiting on one busy (or held) topic must not take every place and
        // stall the publishes of every other topic on the node. With the
        // place, the topic is looked at again: while the places were all
        // taken, any number of publishers may have passed its first look,
        // and its backlog must still bound them.
        let (permit, state) = loop {
            self.wait_for_backlog(topic).await;
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the in-flight semaphore is never closed");
            if let Some(state) = self.free(topic) {
                break (permit, state);
            }
        };
        if let Some(state) = state {
            // Counted at once: the dispatcher's figure is from its last pass,
            // and publishes until its next pass must count against it too.
            state.backlog.fetch_add(1, Ordering::AcqRel);
        }
        let receipt = self.engine.publish_queued(topic, encoded).await?;
        self.tap(topic, || TapEvent::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: envelope.payload,
        });
        let topic = topic.to_owned();
        tokio::spawn(async move {
            if let Err(e) = receipt.outcome().await {
                warn!(topic, error = %e, "broadcast failed");
            }
            drop(permit);
        });
        Ok(())
    }

    /// Waits while this node's dispatcher of `topic` is behind, or a peer's
    /// subscribers of it are ([`Hub::wait_for_peers`]): the engine drops a
    /// subscription whose queue fills up, and a publisher that does not wait
    /// for the engine's reply could otherwise outrun the dispatcher and lose
    /// deliveries for every local subscriber. Stops waiting for the local
    /// backlog if the topic loses its last local subscriber meanwhile.
    async fn wait_for_backlog(&self, topic: &str) {
        while self.free(topic).is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// `Some` (with the topic's local state, if it has local subscribers)
    /// when a publish to `topic` may go now: its dispatcher is not behind and
    /// no peer holds it ([`Hub::wait_for_backlog`]).
    fn free(&self, topic: &str) -> Option<Option<Arc<TopicState>>> {
        let state = self
            .topics
            .lock()
            .expect("hub topics lock")
            .get(topic)
            .cloned();
        let behind = state
            .as_ref()
            .is_some_and(|s| s.backlog.load(Ordering::Acquire) >= BACKLOG_HIGH);
        (!behind && !self.engine.held(topic)).then_some(state)
    }

    /// Waits while broadcasts to `topic` wait for a peer's credit (that
    /// peer's subscribers of it are behind: cross-node flow control,
    /// ALGORITHM.md): the engine keeps them in order, but only so many.
    async fn wait_for_peers(&self, topic: &str) {
        while self.engine.held(topic) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_engine::runtime::{Engine, EngineConfig, EngineHandle};
    use chorus_engine::{NodeConfig, NodeId};

    use super::*;

    /// A hub over a node of its own, and the local state of its `topic`.
    async fn hub_with_topic(topic: &str) -> (EngineHandle, Arc<Hub>, Arc<TopicState>) {
        let node = NodeConfig::lan(NodeId::new("n1", 1), "127.0.0.1:0".parse().expect("addr"));
        let secret = b"test-cluster-secret-0123456789ab".to_vec();
        let engine = Engine::start(EngineConfig::new(node, secret))
            .await
            .expect("engine");
        let hub = Hub::new(engine.clone(), 1);
        let state = {
            let mut topics = hub.topics.lock().expect("hub topics lock");
            hub.topic_state(&mut topics, topic)
        };
        (engine, hub, state)
    }

    /// Publishers waiting on one topic's backlog hold none of the node's
    /// in-flight places: a publish to another topic still goes. (They used
    /// to take a place before waiting, so `MAX_IN_FLIGHT` of them on one
    /// busy or held topic stalled every publish on the node.)
    #[tokio::test]
    async fn publishers_waiting_on_one_topic_leave_the_others_free() {
        let (engine, hub, state) = hub_with_topic("t").await;
        state.backlog.store(BACKLOG_HIGH, Ordering::Release);
        let mut waiting = Vec::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..MAX_IN_FLIGHT {
            let mut publish = Box::pin(hub.publish_queued("t", "new_msg", Payload::empty(), None));
            let polled = std::future::Future::poll(publish.as_mut(), &mut cx);
            assert!(polled.is_pending(), "waits on t's backlog");
            waiting.push(publish);
        }
        let other = hub.publish_queued("u", "new_msg", Payload::empty(), None);
        tokio::time::timeout(Duration::from_secs(10), other)
            .await
            .expect("a publish to another topic goes")
            .expect("published");
        drop(waiting);
        engine.shutdown().await.expect("shutdown");
    }

    /// A topic that falls behind while its publishers wait for a place in
    /// flight still holds them: with a place, each looks at the backlog
    /// again, gives the place back and waits. (Looking only before taking a
    /// place let any number pass while the places were all taken.)
    #[tokio::test]
    async fn publishers_that_get_a_place_look_at_the_backlog_again() {
        let (engine, hub, state) = hub_with_topic("t").await;
        let places = hub
            .in_flight
            .clone()
            .acquire_many_owned(MAX_IN_FLIGHT as u32)
            .await
            .expect("every place");
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let mut publish = Box::pin(hub.publish_queued("t", "new_msg", Payload::empty(), None));
            let polled = std::future::Future::poll(publish.as_mut(), &mut cx);
            assert!(polled.is_pending(), "waits for a place");
            waiting.push(publish);
        }
        state.backlog.store(BACKLOG_HIGH, Ordering::Release);
        drop(places);
        for publish in &mut waiting {
            let polled = std::future::Future::poll(publish.as_mut(), &mut cx);
            assert!(polled.is_pending(), "waits on t's backlog again");
        }
        assert_eq!(state.backlog.load(Ordering::Acquire), BACKLOG_HIGH);
        assert_eq!(hub.in_flight.available_permits(), MAX_IN_FLIGHT);
        drop(waiting);
        engine.shutdown().await.expect("shutdown");
    }
}
