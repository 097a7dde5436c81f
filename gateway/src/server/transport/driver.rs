//! What every transport does with a [`Session`] once the bytes are decoded: carry
//! out its [`Action`]s against the [`Hub`] (subscriptions, broadcasts,
//! presence), hand it the broadcasts and presence diffs the hub delivers, charge the
//! frames it produces to the client's byte [`Budget`], and clean up when the client
//! is gone (channels terminate, subscriptions and presences are removed).
//!
//! The WebSocket [`Connection`](super::connection) and the LongPoll session task
//! each own one [`SessionDriver`]; they differ only in how frames arrive and leave.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, warn};

use super::close;
use crate::channel::{Action, Info, PresenceCount};
use crate::cluster::mailbox::{Budget, Inbound, Inbox, Mailbox, Taken};
use crate::cluster::render::{entries, state_json};
use crate::cluster::Hub;
use crate::hooks::Hooks;
use crate::limits::{FrameLimiter, FrameVerdict};
use crate::protocol::{check_json, wsframe, FrameError, InFrame, OutFrame, Payload, Ref};
use crate::server::metrics::{Transport, TransportMetrics};
use crate::server::Shared;
use crate::socket::Session;

/// Why a client's session ends.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Write what is queued, then close with this code.
    Close(u16, &'static str),
    /// The client is not reading: close at once with 1008.
    SlowConsumer,
    /// The client closed or the socket failed: nothing more to send.
    Gone,
}

/// One client's session wired to the hub.
pub(crate) struct SessionDriver {
    pub(crate) conn: u64,
    pub(crate) session: Session,
    pub(crate) shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Arc<Inbox>,
    /// Deliveries taken from the inbox in one go, not handled yet.
    taken: Taken,
    /// Local subscriptions held in the hub, with counts.
    /// A few entries at most (the channel cap): a `Vec`, not a map node.
    subscribed: Vec<(String, usize)>,
    /// Presence keys tracked per topic, by join.
    tracked: HashMap<String, (Ref, BTreeSet<String>)>,
    tracked_any: bool,
    /// The client's frame rate (`ServerConfig::client_limits`).
    frames: FrameLimiter,
    /// This transport's counters.
    pub(crate) metrics: Arc<TransportMetrics>,
    /// Frames waiting for a backend hook; `None` when no topic hook is configured.
    hooks: Option<Box<HookState>>,
}

/// Frames queued behind a hook call on one topic, most: beyond, a frame is
/// answered `{"reason":"hook_backlog"}`.
pub(crate) const MAX_WAITING_FRAMES: usize = 64;

/// A hook's answer about a frame: the frame and the decision to attach to it.
pub(crate) type HookAnswer = (InFrame, Info);

/// The join, publish and rpc hooks of one client. A frame that needs a hook is
/// held while the hook is called, and so is every later frame on the same topic
/// (the client's per-topic order holds); other topics go on meanwhile.
struct HookState {
    hooks: Arc<Hooks>,
    /// The connect request's headers some hook forwards.
    headers: Vec<(String, String)>,
    /// Topics with a hook call in flight, and the frames waiting behind it.
    waiting: HashMap<CompactString, VecDeque<InFrame>>,
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = HookAnswer> + Send>>>,
}

impl SessionDriver {
    /// A driver for connection `conn`. `binary_frames` says whether the transport
    /// can carry binary broadcasts (WebSocket) or not (LongPoll).
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn: u64,
        session: Session,
        binary_frames: bool,
    ) -> Self {
        let budget = Arc::new(Budget::new(shared.config.outbound_queue_bytes));
        Self::with_budget(shared, conn, session, binary_frames, budget)
    }

    /// [`SessionDriver::new`] charging the client's frames to `budget`.
    pub(crate) fn with_budget(
        shared: Arc<Shared>,
        conn: u64,
        session: Session,
        binary_frames: bool,
        budget: Arc<Budget>,
    ) -> Self {
        let transport = if binary_frames {
            Transport::WebSocket
        } else {
            Transport::LongPoll
        };
        let metrics = shared.metrics.transport_shared(transport);
        metrics.connections.inc();
        metrics.connections_opened.inc();
        let limits = &shared.config.client_limits;
        let frames = FrameLimiter::new(limits.frame_rate, limits.frame_burst);
        let inbox = Arc::new(Inbox::default());
        let mailbox = Mailbox {
            conn,
            vsn: session.vsn(),
            binary_frames,
            ws_frames: binary_frames,
            inbox: inbox.clone(),
            budget,
        };
        Self {
            conn,
            session,
            shared,
            mailbox,
            inbox,
            taken: Taken::default(),
            subscribed: Vec::new(),
            tracked: HashMap::new(),
            tracked_any: false,
            frames,
            metrics,
            hooks: None,
        }
    }

    /// Routes this client's frames through the topic hooks, if any is
    /// configured; `headers` are its connect request's (from
    /// [`Hooks::capture_headers`]).
    pub(crate) fn with_hooks(mut self, headers: Vec<(String, String)>) -> Self {
        if let Some(hooks) = self.shared.config.hooks.clone() {
            if hooks.has_topic_hooks() {
                self.hooks = Some(Box::new(HookState {
                    hooks,
                    headers,
                    waiting: HashMap::new(),
                    inflight: FuturesUnordered::new(),
                }));
            }
        }
        self
    }

    /// Counts one decoded client frame and holds it to the client limits:
    /// `Ok(true)` to handle it, `Ok(false)` when it was refused (an error reply
    /// is queued where the client must hear of it), `Err` to close the client
    /// (it went on over its frame rate after it was told).
    ///
    /// - over `frame_rate`: dropped; the first of an episode is answered
    ///   `{"reason":"frame_rate_exceeded"}`; another `frame_burst` frames
    ///   refused in the same episode close the client with 1008;
    /// - a JSON payload over `json_max_depth` or `json_max_string_bytes`:
    ///   answered `{"reason":"payload_too_deep"}` or
    ///   `{"reason":"string_too_long"}`; the connection stays.
    ///
    /// `now` is when the frame arrived (the transport reads the clock once per
    /// frame for its own timers too).
    pub(crate) fn admit(
        &mut self,
        frame: &InFrame,
        bytes: usize,
        now: Instant,
    ) -> Result<bool, Exit> {
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.inc_by(bytes as u64);
        let counter = &self.shared.config.limit_counter;
        match self.frames.check(now) {
            FrameVerdict::Accept => {}
            FrameVerdict::Refuse { notify } => {
                counter.hit("frame_rate");
                if notify {
                    debug!(conn = self.conn, "frame rate exceeded: refusing frames");
                    self.session.refuse_frame(frame, "frame_rate_exceeded");
                }
                return Ok(false);
            }
            FrameVerdict::Disconnect => {
                counter.hit("frame_rate");
                warn!(
                    conn = self.conn,
                    "closing connection: still over the frame rate after a burst of refused frames"
                );
                return Err(Exit::Close(close::RATE_LIMITED, "frame rate exceeded"));
            }
        }
        if let Payload::Json(json) = &frame.payload {
            let limits = self.shared.config.client_limits.json;
            if let Err(e) = check_json(json.as_str(), limits) {
                counter.hit(e.limit());
                debug!(conn = self.conn, error = %e, "refusing a frame: {}", e.reason());
                self.session.refuse_frame(frame, e.reason());
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Hands one admitted client frame ([`SessionDriver::admit`]) to the
    /// session, counting the join outcomes it caused. A frame that needs a backend hook (a join, publish or rpc hook) is held
    /// until the hook answers ([`SessionDriver::events`]), and so are the
    /// frames on its topic that follow it.
    pub(crate) fn handle_frame(&mut self, frame: InFrame) -> Result<(), FrameError> {
        let Some(frame) = self.hold(frame) else {
            return Ok(());
        };
        let handled = self.session.handle_frame(frame);
        self.metrics.record_joins(self.session.take_join_counts());
        handled
    }

    /// Queues `frame` behind its topic's hook call, or starts a hook call for
    /// it; gives it back when it is to be handled now.
    fn hold(&mut self, frame: InFrame) -> Option<InFrame> {
        let Some(state) = self.hooks.as_deref_mut() else {
            return Some(frame);
        };
        if let Some(queue) = state.waiting.get_mut(&frame.topic) {
            if queue.len() >= MAX_WAITING_FRAMES {
                debug!(
                    conn = self.conn,
                    topic = frame.topic.as_str(),
                    "refusing a frame: too many waiting for a hook"
                );
                self.session.refuse_frame(&frame, "hook_backlog");
            } else {
                queue.push_back(frame);
            }
            return None;
        }
        let joined = self
            .session
            .joined(&frame.topic)
            .is_some_and(|current| frame.join_ref.as_ref().is_none_or(|j| j == current));
        let Some((kind, rule)) = state.hooks.for_frame(&frame, joined) else {
            return Some(frame);
        };
        let call = state
            .hooks
            .call(kind, rule, &frame, self.session.assigns(), &state.headers);
        state.waiting.insert(frame.topic.clone(), VecDeque::new());
        state.inflight.push(Box::pin(async move {
            let decision = call.await;
            (frame, decision)
        }));
        None
    }

    /// The next delivery from the hub, and the next hook answer (pending
    /// forever when no hook call is in flight): two cancel-safe futures to
    /// select on. The hook answer's is a `poll_fn` holding two references:
    /// every idle connection's task carries the select's futures.
    pub(crate) fn events(
        &mut self,
    ) -> (
        impl Future<Output = Inbound> + '_,
        impl Future<Output = HookAnswer> + '_,
    ) {
        let (taken, inbox, hooks) = (&mut self.taken, &self.inbox, &mut self.hooks);
        let answer = std::future::poll_fn(move |cx| match hooks.as_deref_mut() {
            Some(state) if !state.inflight.is_empty() => match state.inflight.poll_next_unpin(cx) {
                std::task::Poll::Ready(Some(answer)) => std::task::Poll::Ready(answer),
                _ => std::task::Poll::Pending,
            },
            _ => std::task::Poll::Pending,
        });
        (taken.recv(inbox), answer)
    }

    /// Hands a frame to the session with its hook's answer, then the frames
    /// that waited behind it (until one needs a hook again).
    pub(crate) fn handle_hook_answer(&mut self, answer: HookAnswer) -> Result<(), FrameError> {
        let (frame, decision) = answer;
        let topic = frame.topic.clone();
        // The topic is free again whatever happens to this frame.
        let mut queue = match self.hooks.as_deref_mut() {
            Some(state) => state.waiting.remove(&topic).unwrap_or_default(),
            None => VecDeque::new(),
        };
        let handled = self.session.handle_frame_with(frame, Some(decision));
        self.metrics.record_joins(self.session.take_join_counts());
        handled?;
        while let Some(frame) = queue.pop_front() {
            let Some(frame) = self.hold(frame) else {
                // A hook call started again: the rest waits behind it.
                if let Some(state) = self.hooks.as_deref_mut() {
                    state.waiting.entry(topic).or_default().extend(queue);
                }
                break;
            };
            let handled = self.session.handle_frame(frame);
            self.metrics.record_joins(self.session.take_join_counts());
            handled?;
        }
        Ok(())
    }

    /// The client's inbox, which the hub fills.
    pub(crate) fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// The client's outbound byte budget.
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.mailbox.budget
    }

    /// Registers the socket id, if the connect hook gave one, so a `disconnect`
    /// broadcast on it reaches this client, and, if the server counts sockets
    /// ([`ServerConfig::count_sockets`](crate::server::ServerConfig::count_sockets)),
    /// tracks the connection in [`topics::socket_topic`](crate::topics::socket_topic)
    /// so the user's sockets can be counted.
    pub(crate) async fn start(&mut self) -> Result<(), Exit> {
        if let Some(id) = self.session.id().map(str::to_owned) {
            self.shared
                .hub
                .register_id(&id, &self.mailbox)
                .await
                .map_err(|e| {
                    warn!(conn = self.conn, error = %e, "ending client: cannot register the socket id");
                    Exit::Close(close::SERVER_ERROR, "engine unavailable")
                })?;
            if self.shared.config.count_sockets {
                self.tracked_any = true;
                if let Err(e) = self.shared.hub.track_socket(&id, self.conn).await {
                    warn!(conn = self.conn, error = %e, "tracking the socket failed");
                }
            }
        }
        Ok(())
    }

    /// The next delivery if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Inbound> {
        self.taken.pop(&self.inbox)
    }

    /// Gives back a delivery taken from [`SessionDriver::events`]: it is the
    /// next one again.
    pub(crate) fn put_back(&mut self, item: Inbound) {
        self.taken.put_back(item);
    }

    /// Hands a delivery to the session and carries out what follows. A
    /// `disconnect` on the socket id ends the client with 1001.
    pub(crate) async fn handle_inbound(&mut self, item: Inbound) -> Result<(), Exit> {
        let cost = item.cost();
        let delivered = self.deliver(item);
        self.mailbox.budget.release(cost);
        delivered?;
        self.run_actions().await
    }

    /// Makes room in the session's frame queue, in one allocation, for a
    /// delivery just taken and what is taken behind it (at most `max` of
    /// those), before the session handles them.
    pub(crate) fn reserve_for_taken(&mut self, max: usize) {
        self.session.reserve_frames(self.taken.len().min(max) + 1);
    }

    /// [`SessionDriver::handle_inbound`] for one of a batch, without its
    /// actions: the caller runs them ([`SessionDriver::run_actions`]) when
    /// the delivery queued some ([`Session::has_actions`]), before the next
    /// delivery, so a plain broadcast costs no await of its own.
    pub(crate) fn take_delivery(&mut self, item: Inbound) -> Result<(), Exit> {
        let cost = item.cost();
        let delivered = self.deliver(item);
        self.mailbox.budget.release(cost);
        delivered
    }

    /// Whether finished frames on `topic` ([`Inbound::Frames`]: `count`
    /// frames, `payload` bytes without headers, `cost` charged) go to the
    /// client: only while it is still joined to `topic`, as a broadcast
    /// handed to the session would. They stay charged to the budget until
    /// written; otherwise their charge is given back here.
    pub(crate) fn frames_delivered(
        &mut self,
        topic: &str,
        count: usize,
        payload: usize,
        cost: usize,
    ) -> bool {
        if self.session.joined(topic).is_none() {
            self.mailbox.budget.release(cost);
            return false;
        }
        self.metrics.messages_out.inc_by(count as u64);
        self.metrics.bytes_out.inc_by(payload as u64);
        true
    }

    /// Hands one delivery to the session; its budget and the actions it
    /// queued are the caller's. A `disconnect` on the socket id is an error.
    fn deliver(&mut self, item: Inbound) -> Result<(), Exit> {
        let mut closed = None;
        match item {
            Inbound::Broadcast {
                encoded, logged, ..
            } => {
                if self.session.id() == Some(encoded.topic()) {
                    closed = self.session.handle_id_broadcast(encoded.event());
                }
                if closed.is_none() {
                    let logged = logged.as_deref().map(|f| f as &(dyn std::any::Any + Send));
                    self.session.handle_broadcast_with(&encoded, logged);
                }
            }
            Inbound::PresenceDiff { encoded, diff, .. } => {
                let topic = encoded.topic();
                self.session
                    .handle_presence_diff(topic, &diff.joins, &diff.leaves);
                self.session.handle_broadcast(&encoded);
            }
            // Only a WebSocket connection's mailbox is given finished frames,
            // and it takes them before they reach here; nothing else can
            // send them.
            Inbound::Frames { .. } => {}
        }
        if let Some(code) = closed {
            debug!(conn = self.conn, "disconnected by socket id");
            return Err(Exit::Close(code, "disconnected"));
        }
        Ok(())
    }

    /// Carries out every action the session has queued. Run it before taking the
    /// frames, so a join's subscription is routed (and its presence state pushed)
    /// before the join reply leaves: the reply still precedes everything for that
    /// join, because deliveries are only read from the mailbox after this returns.
    pub(crate) async fn run_actions(&mut self) -> Result<(), Exit> {
        loop {
            // Boxed: the future of an action against the engine is large, and
            // every connection's task would carry its size while idle. The
            // action is moved into it in a scope of its own, so this future
            // keeps no slot for one across the await.
            let execute = match self.session.poll_action() {
                Some(action) => Box::pin(self.execute(action)),
                None => return Ok(()),
            };
            execute.await?;
        }
    }

    /// The session's next frame for the client with its byte cost, charged to the
    /// budget (give it back with [`Budget::release`] once written). An exhausted
    /// budget ends the client as a slow consumer.
    pub(crate) fn take_frame(&mut self) -> Result<Option<(OutFrame, usize)>, Exit> {
        let Some(frame) = self.session.poll_transmit() else {
            return Ok(None);
        };
        let cost = frame.as_bytes().len();
        if !self.mailbox.budget.try_take(cost) {
            return Err(Exit::SlowConsumer);
        }
        self.metrics.messages_out.inc();
        self.metrics.bytes_out.inc_by(cost as u64);
        Ok(Some((frame, cost)))
    }

    /// Appends every frame the session has queued to `out` as WebSocket
    /// frames, in order; the budget is charged their whole length (headers
    /// too: what the socket will be given) and the counters counted once for
    /// them all (an empty budget admits the whole burst). An exhausted budget
    /// ends the client as a slow consumer, and the frames are not left in
    /// `out`.
    pub(crate) fn write_frames(&mut self, out: &mut Vec<u8>) -> Result<(), Exit> {
        let before = out.len();
        let (mut frames, mut payload) = (0, 0);
        while let Some(frame) = self.session.poll_transmit() {
            let (bytes, text) = match &frame {
                OutFrame::Text(bytes) => (bytes, true),
                OutFrame::Binary(bytes) => (bytes, false),
            };
            wsframe::write_frame(out, text, bytes);
            frames += 1;
            payload += bytes.len();
        }
        if frames == 0 {
            return Ok(());
        }
        if !self.mailbox.budget.try_take(out.len() - before) {
            out.truncate(before);
            return Err(Exit::SlowConsumer);
        }
        self.metrics.messages_out.inc_by(frames);
        self.metrics.bytes_out.inc_by(payload as u64);
        Ok(())
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), Exit> {
        let hub: &Arc<Hub> = &self.shared.hub;
        match self.subscribed.iter_mut().find(|(t, _)| t == topic) {
            Some((_, count)) => *count += 1,
            None => {
                // One entry's room at a time: a first push would make room
                // for four (128 B) in every connection joined to one topic.
                self.subscribed.reserve_exact(1);
                self.subscribed.push((topic.to_owned(), 1));
            }
        }
        // Plain broadcasts reach a channel that intercepts none as they are:
        // the hub may hand them over as finished frames. Not on the socket
        // id's topic, whose broadcasts the session reads (`disconnect`).
        let framed = self.mailbox.ws_frames
            && self.session.intercepts_none(topic)
            && self.session.id() != Some(topic);
        hub.subscribe(topic, &self.mailbox, framed)
            .await
            .map_err(|e| {
                warn!(conn = self.conn, topic, error = %e, "ending client: cannot subscribe");
                Exit::Close(close::SERVER_ERROR, "engine unavailable")
            })
    }

    fn unsubscribe(&mut self, topic: &str) {
        if let Some(i) = self.subscribed.iter().position(|(t, _)| t == topic) {
            self.subscribed[i].1 -= 1;
            if self.subscribed[i].1 == 0 {
                self.subscribed.swap_remove(i);
            }
            self.shared.hub.unsubscribe(topic, self.conn);
        }
    }

    async fn execute(&mut self, action: Action) -> Result<(), Exit> {
        let hub = &self.shared.hub;
        let conn = self.conn;
        match action {
            Action::Subscribe { topic, .. } => {
                self.metrics.channels_joined.inc();
                self.subscribe(&topic).await?;
            }
            Action::Unsubscribe { topic, .. } => {
                self.metrics.channels_joined.dec();
                self.unsubscribe(&topic);
            }
            Action::Broadcast {
                topic,
                event,
                payload,
                exclude_self,
            } => {
                let exclude = exclude_self.then_some(self.conn);
                if let Err(e) = self
                    .shared
                    .hub
                    .publish_queued(&topic, &event, payload, exclude)
                    .await
                {
                    warn!(conn = self.conn, topic, error = %e, "broadcast failed");
                }
            }
            Action::Track {
                topic,
                join_ref,
                key,
                meta,
            } => {
                self.tracked_any = true;
                let tracked = hub.track(&topic, &key, conn, &meta).await;
                if let Err(e) = tracked {
                    warn!(conn = self.conn, topic, error = %e, "presence track failed");
                    return Ok(());
                }
                let entry = self
                    .tracked
                    .entry(topic.clone())
                    .or_insert_with(|| (join_ref.clone(), BTreeSet::new()));
                if entry.0 != join_ref {
                    *entry = (join_ref.clone(), BTreeSet::new());
                }
                entry.1.insert(key);
                match hub.presence(&topic).await {
                    Ok(items) => {
                        let _ = self.session.handle_presence_state_json(
                            &topic,
                            &join_ref,
                            state_json(&items),
                            || entries(&items),
                        );
                    }
                    Err(e) => warn!(conn = self.conn, topic, error = %e, "presence list failed"),
                }
            }
            Action::Update {
                topic, key, meta, ..
            } => {
                if let Err(e) = hub.update(&topic, &key, conn, &meta).await {
                    warn!(conn = self.conn, topic, error = %e, "presence update failed");
                }
            }
            Action::Untrack { topic, key, .. } => {
                if let Some((_, keys)) = self.tracked.get_mut(&topic) {
                    keys.remove(&key);
                }
                if let Err(e) = hub.untrack(&topic, &key, conn).await {
                    warn!(conn = self.conn, topic, error = %e, "presence untrack failed");
                }
            }
            Action::UntrackAll { topic, join_ref } => {
                let keys = match self.tracked.remove(&topic) {
                    Some((owner, keys)) if owner == join_ref => keys,
                    Some(other) => {
                        self.tracked.insert(topic.clone(), other);
                        BTreeSet::new()
                    }
                    None => BTreeSet::new(),
                };
                for key in keys {
                    if let Err(e) = hub.untrack(&topic, &key, conn).await {
                        warn!(conn = self.conn, topic, error = %e, "presence untrack failed");
                    }
                }
            }
            Action::Append { topic, log, body } => {
                if let Err(e) = hub.append(&log, body).await {
                    warn!(conn = self.conn, topic, log, error = %e, "history append failed");
                }
            }
            Action::Put {
                topic,
                space,
                key,
                value,
            } => {
                if let Err(e) = hub.put(&space, &key, value.as_deref()).await {
                    warn!(conn = self.conn, topic, space, error = %e, "record write failed");
                }
            }
            Action::CountPresence {
                topic,
                join_ref,
                of,
            } => match hub.presence_count(&of).await {
                // Counted in the engine: no metas are copied.
                Ok((_users, connections)) => {
                    let count = PresenceCount {
                        of,
                        count: connections,
                    };
                    self.session
                        .handle_info(&topic, Some(&join_ref), Box::new(count));
                }
                Err(e) => warn!(conn = self.conn, topic, error = %e, "presence count failed"),
            },
        }
        Ok(())
    }

    /// The client is gone: channels terminate, hub subscriptions and presences of
    /// this connection are removed, and nothing more is sent.
    pub(crate) async fn cleanup(&mut self) {
        self.metrics.connections.dec();
        if let Some(id) = self.session.id() {
            self.shared.hub.unregister_id(id, self.conn);
        }
        self.session.handle_close();
        while let Some(action) = self.session.poll_action() {
            if let Action::Unsubscribe { topic, .. } = action {
                self.metrics.channels_joined.dec();
                self.unsubscribe(&topic);
            }
        }
        while self.session.poll_transmit().is_some() {}
        let remaining = std::mem::take(&mut self.subscribed);
        for (topic, count) in remaining {
            for _ in 0..count {
                self.shared.hub.unsubscribe(&topic, self.conn);
            }
        }
        if self.tracked_any {
            if let Err(e) = self.shared.hub.untrack_conn(self.conn).await {
                debug!(conn = self.conn, error = %e, "untrack on close failed");
            }
        }
    }
}
