//! The node's topic dispatcher: one engine [`Subscription`] per topic with local
//! subscribers, whose deliveries are decoded and encoded **once per node** and then
//! handed to every local connection as the same [`Arc<Encoded>`].
//!
//! Socket ids (disconnect-by-id) are not topics here: every node subscribes once to
//! [`topics::DISCONNECT`], a `disconnect` broadcast is published there too, and the
//! hub hands it to the local connections registered under that id. An engine
//! subscription per connection (a task, a queue, the engine's routing entries)
//! was about 4 KB of every idle connection.
//!
//! A connection never waits on another: handing over is a non-blocking push into the
//! connection's [`Mailbox`], charged against that connection's outbound byte budget.
//! A connection whose budget is exhausted is flagged as a slow consumer (its own task
//! closes it); the dispatcher moves on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chorus_engine::runtime::{Delivery, EngineHandle, RuntimeError, Subscription};
use chorus_engine::{PresenceItem, Topic};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::envelope::{Envelope, Exclude};
use crate::channel::{presence_diff, PresenceEntry, StateWriter};
use crate::protocol::{encode_broadcast, Encoded, FrameError, JsonObject, Payload, Vsn};
use crate::topics;

/// What the dispatcher hands a connection.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A broadcast on a topic the connection subscribed to.
    Broadcast { encoded: Arc<Encoded>, cost: usize },
    /// A presence diff: its `presence_diff` broadcast plus the entries for `list`.
    PresenceDiff {
        encoded: Arc<Encoded>,
        diff: Arc<RenderedDiff>,
        cost: usize,
    },
}

impl Inbound {
    /// The bytes charged to the connection's budget for this item.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Self::Broadcast { cost, .. } | Self::PresenceDiff { cost, .. } => *cost,
        }
    }
}

/// A presence diff converted once per node for the sessions' `list` snapshots.
#[derive(Debug)]
pub(crate) struct RenderedDiff {
    pub(crate) joins: Vec<PresenceEntry>,
    pub(crate) leaves: Vec<PresenceEntry>,
}

/// A connection's outbound byte budget: frames waiting in its mailbox or writer
/// queue. Exceeding it flags the connection as a slow consumer.
#[derive(Debug)]
pub(crate) struct Budget {
    queued: AtomicUsize,
    limit: usize,
    overflow: AtomicBool,
    pub(crate) notify: Notify,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            limit,
            overflow: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Reserves `n` bytes; on failure flags the overflow and wakes the connection.
    /// An empty queue always admits one frame, however large.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + n <= self.limit).then_some(queued + n)
            })
            .is_ok();
        if !taken && !self.overflow.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
        taken
    }

    /// Returns `n` bytes once written (or dropped).
    pub(crate) fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether the budget was exceeded.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Acquire)
    }

    /// Bytes currently queued.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Deliveries waiting for one connection, in order. A locked queue rather than a
/// channel: tokio's unbounded channel allocates its first 32-slot block and a
/// cache-padded header up front (about 1.8 KB per idle connection), an empty
/// `VecDeque` nothing. The byte [`Budget`] bounds it.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<Inbound>>,
    /// Woken when the queue goes from empty to non-empty.
    ready: Notify,
}

impl Inbox {
    /// Queues `items` under one lock, waking the connection once if its queue
    /// was empty.
    fn push_all(&self, items: impl IntoIterator<Item = Inbound>) {
        let mut queue = self.queue.lock().expect("inbox lock");
        let first = queue.is_empty();
        queue.extend(items);
        let woken = first && !queue.is_empty();
        drop(queue);
        if woken {
            self.ready.notify_one();
        }
    }

    /// Moves every waiting delivery to the back of `into`, under one lock:
    /// a connection takes a burst at once rather than one lock per delivery.
    /// When `into` is empty the two queues are swapped, so the inbox gets
    /// back the room `into` had and a burst allocates nothing.
    pub(crate) fn take_all(&self, into: &mut VecDeque<Inbound>) {
        let mut queue = self.queue.lock().expect("inbox lock");
        if into.is_empty() {
            std::mem::swap(&mut *queue, into);
        } else {
            into.append(&mut queue);
        }
    }

    /// Waits until a delivery is pushed (or one was pushed since the last
    /// wait). Cancel-safe.
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await;
    }
}

/// Deliveries a connection took from its [`Inbox`] and has not handled yet.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    queue: VecDeque<Inbound>,
}

impl Taken {
    /// The next delivery, taking the inbox's whole queue when this one is
    /// empty. Once drained, a large capacity left by a burst is given back.
    pub(crate) fn pop(&mut self, inbox: &Inbox) -> Option<Inbound> {
        if self.queue.is_empty() {
            inbox.take_all(&mut self.queue);
        }
        let item = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 256 {
            self.queue = VecDeque::new();
        }
        item
    }

    /// The next delivery, waiting for one. Cancel-safe: taken deliveries stay
    /// here until returned.
    pub(crate) async fn recv(&mut self, inbox: &Inbox) -> Inbound {
        loop {
            if let Some(item) = self.pop(inbox) {
                return item;
            }
            // A push between the take and here stored a permit: no lost wake-up.
            inbox.pushed().await;
        }
    }
}

/// The dispatcher's handle on one local connection.
#[derive(Clone, Debug)]
pub(crate) struct Mailbox {
    pub(crate) conn: u64,
    pub(crate) vsn: Vsn,
    pub(crate) binary_frames: bool,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) budget: Arc<Budget>,
}

/// A delivery ready to hand to the local subscribers: encoded once, with the
/// connection it must skip (`broadcast_from` on this node).
struct Prepared {
    encoded: Arc<Encoded>,
    diff: Option<Arc<RenderedDiff>>,
    exclude: Option<u64>,
}

impl Mailbox {
    /// Hands the connection every delivery of `batch` that is not excluded for
    /// it: one budget charge, one lock and at most one wake-up for the whole
    /// batch. A batch over the budget flags the connection as a slow consumer
    /// (an empty queue admits any one batch).
    fn offer(&self, batch: &[Prepared]) {
        let for_us = |p: &&Prepared| p.exclude != Some(self.conn);
        let cost_of = |p: &Prepared| p.encoded.len_for(self.vsn, self.binary_frames).unwrap_or(0);
        let total: usize = batch.iter().filter(for_us).map(cost_of).sum();
        if !batch.iter().any(|p| for_us(&p)) || !self.budget.try_take(total) {
            return;
        }
        self.inbox.push_all(batch.iter().filter(for_us).map(|p| {
            let cost = cost_of(p);
            match &p.diff {
                None => Inbound::Broadcast {
                    encoded: p.encoded.clone(),
                    cost,
                },
                Some(diff) => Inbound::PresenceDiff {
                    encoded: p.encoded.clone(),
                    diff: diff.clone(),
                    cost,
                },
            }
        }));
    }
}

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The engine refused or stopped.
    #[error("engine subscription failed: {0}")]
    Engine(String),
    /// A broadcast that cannot be encoded (an event over 255 bytes).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The engine refused the publish.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The topic is one of the server's own ([`topics::is_internal`]).
    #[error("topic {0:?} is reserved for the server")]
    Reserved(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ready {
    Pending,
    Routed,
    Failed(String),
}

struct TopicState {
    locals: Mutex<HashMap<u64, (Mailbox, usize)>>,
    /// Deliveries waiting in the engine subscription after the dispatcher's
    /// last pass, plus this node's client publishes since: clients' publishes
    /// wait while it is at [`BACKLOG_HIGH`].
    backlog: AtomicUsize,
    ready: watch::Receiver<Ready>,
    task: Mutex<Option<AbortHandle>>,
}

/// Counters of the dispatcher.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Deliveries from the engine that could not be decoded.
    pub undecodable: AtomicU64,
    /// Engine subscriptions re-established after the engine dropped one.
    pub resubscribed: AtomicU64,
}

/// The per-node topic dispatcher; also the entry point for server-side broadcasts
/// (Phoenix's `Endpoint.broadcast`).
pub struct Hub {
    engine: EngineHandle,
    origin: u64,
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
    /// Local connections by socket id, for [`topics::DISCONNECT`].
    ids: Mutex<HashMap<String, Vec<Mailbox>>>,
    stats: HubStats,
    fanout: Histogram,
    /// Client publishes handed to the engine and not carried out yet: with the
    /// backlog check this bounds what can reach a topic's subscription queue
    /// at once, so a flood is slowed down, not dropped.
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A dispatcher over `engine`. `origin` tags this node's `broadcast_from`
    /// exclusions; draw it at random per process.
    pub fn new(engine: EngineHandle, origin: u64) -> Arc<Self> {
        Arc::new(Self {
            engine,
            origin,
            topics: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            stats: HubStats::default(),
            fanout: super::metrics::fanout_histogram(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// The engine this hub publishes through.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// This node's tag in `broadcast_from` exclusions.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Seconds each delivery took to reach every local subscriber's queue.
    pub fn fanout_histogram(&self) -> &Histogram {
        &self.fanout
    }

    /// How many topics have a local subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().expect("hub topics lock").len()
    }

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
        self.engine.publish(topic, bytes).await?;
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
        let payload = envelope.encode()?;
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the in-flight semaphore is never closed");
        if let Some(state) = self.wait_for_backlog(topic).await {
            // Counted at once: the dispatcher's figure is from its last pass,
            // and publishes until its next pass must count against it too.
            state.backlog.fetch_add(1, Ordering::AcqRel);
        }
        let receipt = self.engine.publish_queued(topic, payload).await?;
        let topic = topic.to_owned();
        tokio::spawn(async move {
            if let Err(e) = receipt.outcome().await {
                warn!(topic, error = %e, "broadcast failed");
            }
            drop(permit);
        });
        Ok(())
    }

    /// Waits while this node's dispatcher of `topic` is behind: the engine
    /// drops a subscription whose queue fills up, and a publisher that does
    /// not wait for the engine's reply could otherwise outrun the dispatcher
    /// and lose deliveries for every local subscriber. Stops waiting if the
    /// topic loses its last local subscriber meanwhile.
    async fn wait_for_backlog(&self, topic: &str) -> Option<Arc<TopicState>> {
        let current = || {
            self.topics
                .lock()
                .expect("hub topics lock")
                .get(topic)
                .cloned()
        };
        let state = current()?;
        while state.backlog.load(Ordering::Acquire) >= BACKLOG_HIGH {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            if !current().is_some_and(|now| Arc::ptr_eq(&now, &state)) {
                return None;
            }
        }
        Some(state)
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

    /// Adds `mailbox` as a local subscriber of `topic` and waits until the topic's
    /// engine subscription is routed (so a publish started after this returns
    /// reaches it). Subscribing twice counts twice.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        mailbox: &Mailbox,
    ) -> Result<(), HubError> {
        let state = {
            let mut topics = self.topics.lock().expect("hub topics lock");
            let state = self.topic_state(&mut topics, topic);
            let mut locals = state.locals.lock().expect("hub locals lock");
            locals
                .entry(mailbox.conn)
                .or_insert_with(|| (mailbox.clone(), 0))
                .1 += 1;
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
        if let Some((_, count)) = locals.get_mut(&conn) {
            *count -= 1;
            if *count == 0 {
                locals.remove(&conn);
            }
        }
        if locals.is_empty() {
            drop(locals);
            if let Some(state) = topics.remove(topic) {
                if let Some(task) = state.task.lock().expect("hub task lock").take() {
                    task.abort();
                }
            }
        }
    }

    /// `topic`'s state in `topics` (the locked map), its dispatcher started
    /// if it had none.
    fn topic_state(
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
        state
    }
}

/// Waits until the topic's engine subscription is routed.
async fn routed(state: &TopicState) -> Result<(), HubError> {
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
        let Some(hub) = hub.upgrade() else { return };
        hub.stats.resubscribed.fetch_add(1, Ordering::Relaxed);
        warn!(topic = %topic, "engine subscription ended; resubscribing (deliveries may have been lost)");
    }
}

/// Deliveries of one topic fanned out together at most.
const FANOUT_BATCH: usize = 64;

/// Deliveries waiting for a topic's dispatcher at which clients' publishes to
/// that topic wait: a quarter of the engine's default `subscriber_queue`.
const BACKLOG_HIGH: usize = 256;

/// Client publishes in the engine's queue at once, all topics together. With
/// [`BACKLOG_HIGH`], at most 512 deliveries of this node's clients can be
/// waiting for a topic's dispatcher: half the engine's default
/// `subscriber_queue` (1,024), whose overflow drops the subscription.
const MAX_IN_FLIGHT: usize = 256;

impl Hub {
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
                        diff: None,
                        exclude,
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
        for (mailbox, _) in locals.values() {
            mailbox.offer(batch);
        }
        drop(locals);
        // Every delivery of the batch waited for the whole pass.
        let elapsed = started.elapsed().as_secs_f64();
        for _ in batch {
            self.fanout.observe(elapsed);
        }
    }

    /// A `disconnect` published on [`topics::DISCONNECT`]: handed, as a broadcast
    /// on the socket id's topic, to the local connections with that id.
    fn disconnect(&self, envelope: Envelope) {
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
            diff: None,
            exclude: None,
        }];
        for mailbox in mailboxes {
            mailbox.offer(&batch);
        }
    }

    fn undecodable(&self, topic: &Topic, error: &dyn std::fmt::Display) {
        self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
        warn!(topic = %topic, error = %error, "dropping a broadcast that cannot be decoded");
    }
}

/// The `presence_state` payload of engine presence items, written straight
/// from them: the engine lists a topic sorted by key, and its metas are JSON
/// objects (checked when tracked), so nothing is parsed or copied per meta.
pub(crate) fn state_json(items: &[PresenceItem]) -> JsonObject {
    let mut w = StateWriter::with_capacity(items.len());
    for item in items {
        let phx_ref = item.phx_ref.encode();
        let prev = item.prev_ref.map(|p| p.encode());
        w.push(
            item.key.as_str(),
            ref_text(&phx_ref),
            prev.as_ref().map(ref_text),
            item.meta.as_str(),
        );
    }
    w.finish()
}

fn ref_text(encoded: &[u8; 16]) -> &str {
    std::str::from_utf8(encoded).expect("phx_refs are url-safe base64")
}

/// Engine presence items as the session's presence entries. A meta that is not a
/// JSON object (a peer bug) is left out with a warning.
pub(crate) fn entries(items: &[PresenceItem]) -> Vec<PresenceEntry> {
    items
        .iter()
        .filter_map(|item| {
            let meta = match JsonObject::from_json(item.meta.as_str()) {
                Ok(meta) => meta,
                Err(e) => {
                    warn!(key = %item.key, error = %e, "skipping a presence meta that is not a JSON object");
                    return None;
                }
            };
            let phx_ref = String::from_utf8_lossy(&item.phx_ref.encode()).into_owned();
            let mut entry = PresenceEntry::new(item.key.as_str(), phx_ref, meta);
            if let Some(prev) = item.prev_ref {
                entry = entry.with_prev(String::from_utf8_lossy(&prev.encode()).into_owned());
            }
            Some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct writer and the entries path give the same bytes.
    #[test]
    fn state_json_matches_presence_state_of_the_entries() {
        use chorus_engine::{Meta, PhxRef};
        let item = |key: &str, r: u8, prev: Option<u8>, meta: &str| PresenceItem {
            key: key.into(),
            phx_ref: PhxRef([r; 12]),
            prev_ref: prev.map(|p| PhxRef([p; 12])),
            meta: Meta::new(meta),
        };
        let items = [
            item("alice", 1, None, r#"{"online_at":"1795674323"}"#),
            item("alice", 2, Some(1), r#"{"typing":true}"#),
            item("b\"ob", 3, None, "{}"),
            item("carol", 4, None, r#"{"n":[1,{"x":"}"}]}"#),
        ];
        let expected = crate::channel::presence_state(&entries(&items));
        assert_eq!(state_json(&items).as_str(), expected.as_str());
        assert_eq!(state_json(&[]).as_str(), "{}");
    }

    #[test]
    fn budget_admits_one_frame_then_enforces_the_limit() {
        let budget = Budget::new(10);
        assert!(budget.try_take(50), "an empty queue admits any frame");
        assert!(!budget.try_take(1));
        assert!(budget.overflowed());
        budget.release(50);
        assert_eq!(budget.queued(), 0);
        let budget = Budget::new(10);
        assert!(budget.try_take(6));
        assert!(budget.try_take(4));
        assert!(!budget.try_take(1));
    }
}
