//! One dispatcher per topic with local subscribers: it holds the topic's engine
//! [`Subscription`], decodes and encodes each delivery **once per node**, and
//! hands the same [`Arc<Encoded>`] to every local connection's [`Mailbox`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chorus_engine::runtime::{Delivery, EngineHandle, Subscription};
use chorus_engine::Topic;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::envelope::Envelope;
use super::mailbox::{Mailbox, Prepared, RenderedDiff};
use super::render::entries;
use super::{Hub, HubError, TapEvent};
use crate::channel::{presence_diff, recover};
use crate::protocol::{encode_broadcast, Payload};
use crate::topics;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ready {
    Pending,
    Routed,
    Failed(String),
}

pub(super) struct TopicState {
    /// The topic, as [`Inbound::Frames`](super::mailbox::Inbound::Frames) name it.
    name: Arc<str>,
    pub(super) locals: Mutex<HashMap<u64, Local>>,
    /// Deliveries waiting in the engine subscription after the dispatcher's
    /// last pass, plus this node's client publishes since: clients' publishes
    /// wait while it is at [`BACKLOG_HIGH`].
    pub(super) backlog: AtomicUsize,
    pub(super) ready: watch::Receiver<Ready>,
    pub(super) task: Mutex<Option<AbortHandle>>,
}

/// One local connection subscribed to a topic.
pub(super) struct Local {
    mailbox: Mailbox,
    /// Its subscriptions to the topic (a connection may join it twice).
    count: usize,
    /// Its channel on the topic intercepts no event: plain broadcasts go to it
    /// as finished frames ([`Mailbox::offer`]).
    framed: bool,
}

/// Deliveries of one topic fanned out together at most.
const FANOUT_BATCH: usize = 64;

impl Hub {
    /// Adds `mailbox` as a local subscriber of `topic` and waits until the topic's
    /// engine subscription is routed (so a publish started after this returns
    /// reaches it). Subscribing twice counts twice. `framed`: the connection's
    /// channel on `topic` intercepts no event (see [`Mailbox::offer`]).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        mailbox: &Mailbox,
        framed: bool,
    ) -> Result<(), HubError> {
        let state = {
            let mut topics = self.topics.lock().expect("hub topics lock");
            let state = self.topic_state(&mut topics, topic);
            let mut locals = state.locals.lock().expect("hub locals lock");
            let local = locals.entry(mailbox.conn).or_insert_with(|| Local {
                mailbox: mailbox.clone(),
                count: 0,
                framed,
            });
            local.count += 1;
            local.framed = framed;
            drop(locals);
            state
        };
        routed(&state).await
    }

    /// Removes one subscription of `conn` to `topic`; the topic's engine
    /// subscription ends with its last local subscriber.
    pub(crate) fn unsubscribe(&self, topic: &str, conn: u64) {
        let mut topics = self.topics.lock().expect("hub topics lock");
        let Some(state) = topics.get(topic) else {
            return;
        };
        let mut locals = state.locals.lock().expect("hub locals lock");
        if let Some(local) = locals.get_mut(&conn) {
            local.count -= 1;
            if local.count == 0 {
                locals.remove(&conn);
            }
        }
        if locals.is_empty() {
            drop(locals);
            if let Some(state) = topics.remove(topic) {
                if let Some(task) = state.task.lock().expect("hub task lock").take() {
                    task.abort();
                }
                self.tap(topic, || TapEvent::Unsubscribed(topic.to_owned()));
            }
        }
    }

    /// `topic`'s state in `topics` (the locked map), its dispatcher started
    /// if it had none.
    pub(super) fn topic_state(
        self: &Arc<Self>,
        topics: &mut HashMap<String, Arc<TopicState>>,
        topic: &str,
    ) -> Arc<TopicState> {
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| self.spawn_topic(topic))
            .clone()
    }

    fn spawn_topic(self: &Arc<Self>, topic: &str) -> Arc<TopicState> {
        let (ready_tx, ready_rx) = watch::channel(Ready::Pending);
        let state = Arc::new(TopicState {
            name: topic.into(),
            locals: Mutex::new(HashMap::new()),
            backlog: AtomicUsize::new(0),
            ready: ready_rx,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(dispatch(
            Arc::downgrade(self),
            self.engine.clone(),
            Topic::new(topic),
            state.clone(),
            ready_tx,
        ));
        *state.task.lock().expect("hub task lock") = Some(task.abort_handle());
        self.tap(topic, || TapEvent::Subscribed(topic.to_owned()));
        state
    }

    /// Decodes and encodes one engine delivery (once for every local
    /// subscriber) onto `batch`; a `disconnect` control message is handled
    /// here and an undecodable one counted.
    fn prepare(&self, topic: &Topic, delivery: Delivery, batch: &mut Vec<Prepared>) {
        let prepared = match delivery {
            Delivery::Broadcast(bytes) => {
                let envelope = match Envelope::decode(bytes) {
                    Ok(envelope) => envelope,
                    Err(e) => return self.undecodable(topic, &e),
                };
                if topic.as_str() == topics::DISCONNECT {
                    return self.disconnect(envelope);
                }
                let exclude = envelope
                    .exclude
                    .filter(|e| e.origin == self.origin)
                    .map(|e| e.conn);
                match encode_broadcast(topic.as_str(), &envelope.event, envelope.payload) {
                    Ok(encoded) => Prepared {
                        encoded: Arc::new(encoded),
                        logged: None,
                        diff: None,
                        exclude,
                    },
                    Err(e) => return self.undecodable(topic, &e),
                }
            }
            Delivery::Logged { stamp, body } => {
                // Only recoverable broadcasts travel on; other history
                // entries were broadcast on their own.
                if !recover::is_entry(&body) {
                    return;
                }
                let payload = recover::logged(&stamp, &body);
                match encode_broadcast(
                    topic.as_str(),
                    recover::LOGGED_EVENT,
                    Payload::Json(payload),
                ) {
                    Ok(encoded) => Prepared {
                        encoded: Arc::new(encoded),
                        // Filled by the first channel to push it, reused by
                        // every other one at the same position.
                        logged: Some(Arc::new(recover::Fanout::default())),
                        diff: None,
                        exclude: None,
                    },
                    Err(e) => return self.undecodable(topic, &e),
                }
            }
            Delivery::PresenceDiff(diff) => {
                let rendered = RenderedDiff {
                    joins: entries(&diff.joins),
                    leaves: entries(&diff.leaves),
                };
                let payload = presence_diff(&rendered.joins, &rendered.leaves);
                match encode_broadcast(topic.as_str(), "presence_diff", Payload::Json(payload)) {
                    Ok(encoded) => Prepared {
                        encoded: Arc::new(encoded),
                        logged: None,
                        diff: Some(Arc::new(rendered)),
                        exclude: None,
                    },
                    Err(e) => return self.undecodable(topic, &e),
                }
            }
        };
        batch.push(prepared);
    }

    /// Hands `batch` to every local subscriber in one pass.
    fn fan_out(&self, state: &TopicState, batch: &[Prepared], started: std::time::Instant) {
        if batch.is_empty() {
            return;
        }
        let locals = state.locals.lock().expect("hub locals lock");
        for local in locals.values() {
            let framed = local.framed.then_some(&state.name);
            local.mailbox.offer(batch, framed);
        }
        drop(locals);
        // Every delivery of the batch waited for the whole pass.
        let elapsed = started.elapsed().as_secs_f64();
        for _ in batch {
            self.fanout.observe(elapsed);
        }
    }

    fn undecodable(&self, topic: &Topic, error: &dyn std::fmt::Display) {
        self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
        warn!(topic = %topic, error = %error, "dropping a broadcast that cannot be decoded");
    }
}

/// Waits until the topic's engine subscription is routed.
pub(super) async fn routed(state: &TopicState) -> Result<(), HubError> {
    let mut ready = state.ready.clone();
    let outcome = ready
        .wait_for(|r| *r != Ready::Pending)
        .await
        .map(|r| r.clone());
    match outcome {
        Ok(Ready::Routed) => Ok(()),
        Ok(Ready::Failed(e)) => Err(HubError::Engine(e)),
        Ok(Ready::Pending) | Err(_) => Err(HubError::Engine("dispatcher ended".into())),
    }
}

/// One topic's dispatcher: holds the engine subscription and fans out.
async fn dispatch(
    hub: std::sync::Weak<Hub>,
    engine: EngineHandle,
    topic: Topic,
    state: Arc<TopicState>,
    ready: watch::Sender<Ready>,
) {
    let mut first = true;
    loop {
        let mut sub: Subscription = match engine.subscribe(topic.clone()).await {
            Ok(sub) => sub,
            Err(e) => {
                debug!(topic = %topic, error = %e, "engine subscription failed");
                ready.send_replace(Ready::Failed(e.to_string()));
                return;
            }
        };
        if first {
            ready.send_replace(Ready::Routed);
            first = false;
        } else if let Some(hub) = hub.upgrade() {
            // Said only now: an engine that stopped (a shutdown) ends every
            // subscription too, and then refuses the new one above.
            hub.stats.resubscribed.fetch_add(1, Ordering::Relaxed);
            warn!(topic = %topic, "engine subscription ended; resubscribed (deliveries may have been lost)");
        }
        let mut batch = Vec::new();
        while let Some(delivery) = sub.recv().await {
            let Some(hub) = hub.upgrade() else { return };
            // Everything the engine has ready goes out in one pass: each
            // connection is woken once for the lot and writes it at once.
            let started = std::time::Instant::now();
            hub.prepare(&topic, delivery, &mut batch);
            while batch.len() < FANOUT_BATCH {
                let Some(delivery) = sub.try_recv() else {
                    break;
                };
                hub.prepare(&topic, delivery, &mut batch);
            }
            hub.fan_out(&state, &batch, started);
            state.backlog.store(sub.backlog(), Ordering::Release);
            batch.clear();
            if batch.capacity() > FANOUT_BATCH {
                batch = Vec::new();
            }
        }
        // The engine dropped us (our queue filled up) or stopped. Try again: a
        // stopped engine refuses, which ends this task.
    }
}
