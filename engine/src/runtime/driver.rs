//! The node task: owns the [`Node`], the peer link table and the subscriber
//! table. Nothing here awaits the network or a subscriber.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, trace, warn};

use super::auth::PeerHello;
use super::credit::{self, Admit, Credit, Held};
use super::handle::{Delivery, EngineRequest, MemberInfo, RuntimeStats, TaskState};
use super::records::{RecordChange, RecordsReader};
use super::transport::{
    self, codes, out_queue, CloseWhy, LinkCtx, LinkUp, OutQueue, PeerFrame, PeerInbound,
    QueueError, Rejection,
};
use super::EngineConfig;
use crate::coalesce::TopicDiff;
use crate::codec::{Body, Message};
use crate::id::{SubscriberId, Topic};
use crate::node::{Command, CommandError, Event, Node, NodeConfig, Transmit};
use crate::presence::PresenceItem;
use crate::records::Record;

/// Datagram-lane messages waiting for the node task; past this, datagrams
/// are dropped (they are loss-tolerant by definition).
const CONTROL_QUEUE: usize = 1024;

/// How often the node task looks for withheld credit to return, and for
/// stalled windows, while there is any.
const CREDIT_TICK: Duration = Duration::from_millis(1);

/// The longest the credit tick backs off to while it finds nothing to do (a
/// subscriber that stopped reading, below its limit, keeps credit withheld
/// and nothing else changes): well inside the time a subscriber takes to
/// drain from its room mark, so no peer waits on the tick.
const CREDIT_TICK_MAX: Duration = Duration::from_millis(16);
/// Room a peer queue must have for withheld credit to be tried on it: a
/// credit frame (a topic and a count) with room to spare.
const CREDIT_ROOM: usize = 1024;

/// How long a graceful shutdown waits for queued frames to reach peers.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One peer connection as the node task sees it.
#[derive(Debug)]
struct Link {
    conn_id: u64,
    queue: OutQueue,
    /// Known once authenticated.
    conn: Option<quinn::Connection>,
    instance: Option<u64>,
    dialed: bool,
}

pub(crate) struct NodeDriver {
    node: Node,
    endpoint: quinn::Endpoint,
    ctx: LinkCtx,
    requests: mpsc::Receiver<EngineRequest>,
    drops: mpsc::UnboundedReceiver<(Topic, SubscriberId)>,
    inbound: mpsc::Receiver<PeerInbound>,
    /// The seed list from DNS discovery, each time it changes.
    discovered: mpsc::Receiver<Vec<SocketAddr>>,
    /// What arrived on the datagram lane (probes, digests, hellos): served
    /// before `inbound`, so a backlog of large stream frames (a state
    /// transfer being merged) never holds a probe or its answer back by more
    /// than the one message being handled.
    control: mpsc::Receiver<PeerInbound>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    links: HashMap<SocketAddr, Link>,
    next_conn: u64,
    subscribers: HashMap<SubscriberId, mpsc::Sender<Delivery>>,
    topics: HashMap<Topic, BTreeSet<SubscriberId>>,
    /// Receivers of every presence diff ([`EngineHandle::presence_tap`](super::EngineHandle::presence_tap)).
    presence_taps: Vec<mpsc::UnboundedSender<(Topic, Arc<TopicDiff>)>>,
    pending: HashMap<SubscriberId, oneshot::Sender<Result<SubscriberId, CommandError>>>,
    next_sub: u64,
    stats: RuntimeStats,
    /// The read replica of the node's records handed to every handle.
    records: RecordsReader,
    /// Changes the node made to its records, not applied to `records` yet.
    accepted: Vec<RecordChange>,
    /// Flow control of broadcasts between this node and each peer, per topic.
    credit: Credit<Transmit>,
    /// The topics `credit` holds, read by every handle.
    held: Arc<Held>,
    /// `EngineConfig::subscriber_queue`.
    subscriber_queue: usize,
    /// The task's state as handles see it: set to `Clash` when the node
    /// stops on a name clash (the task then leaves and ends).
    state: Arc<watch::Sender<TaskState>>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The wall clock in milliseconds since the Unix epoch (0 before 1970).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl NodeDriver {
    pub(crate) fn new(
        mut node: NodeConfig,
        config: &EngineConfig,
        endpoint: quinn::Endpoint,
        requests: mpsc::Receiver<EngineRequest>,
        drops: mpsc::UnboundedReceiver<(Topic, SubscriberId)>,
        state: Arc<watch::Sender<TaskState>>,
    ) -> Self {
        let (inbound_tx, inbound) = mpsc::channel(1024);
        let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
        // A paced repair never holds more than half the peer queue.
        node.repair_window = node.repair_window.min(config.peer_queue_bytes / 2).max(1);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = LinkCtx {
            secret: Arc::from(config.secret.as_slice()),
            me: PeerHello {
                instance: rand::random(),
                addr: node.addr,
                id: node.id.clone(),
            },
            auth_timeout: config.auth_timeout,
            queue_cap: config.peer_queue_bytes,
            inbound: inbound_tx,
            control: control_tx,
            shutdown: shutdown_rx,
        };
        let (discovered_tx, discovered) = mpsc::channel(1);
        let mut tasks = JoinSet::new();
        if !config.discovery.names.is_empty() {
            tasks.spawn(super::discovery::run(
                config.discovery.clone(),
                node.seeds.clone(),
                node.addr,
                discovered_tx,
            ));
        }
        let mut node = Node::new(node, now());
        // Diffs only where someone reads them (a subscriber here), until a
        // presence tap asks for every topic's.
        node.diffs_for_all_topics(false);
        let held = Arc::new(Held::default());
        NodeDriver {
            records: RecordsReader::new(node.records().clone()),
            accepted: Vec::new(),
            credit: Credit::new(held.clone()),
            held,
            subscriber_queue: config.subscriber_queue,
            state,
            node,
            endpoint,
            ctx,
            requests,
            drops,
            inbound,
            discovered,
            control,
            shutdown,
            tasks,
            links: HashMap::new(),
            next_conn: 0,
            subscribers: HashMap::new(),
            topics: HashMap::new(),
            presence_taps: Vec::new(),
            pending: HashMap::new(),
            next_sub: 0,
            stats: RuntimeStats::default(),
        }
    }

    /// The read replica of the node's records.
    pub(crate) fn records(&self) -> RecordsReader {
        self.records.clone()
    }

    /// The topics whose broadcasts wait for a peer's credit.
    pub(crate) fn held(&self) -> Arc<Held> {
        self.held.clone()
    }

    /// The node task. Ends on [`EngineRequest::Shutdown`] or when every handle is
    /// gone, after a graceful leave.
    pub(crate) async fn run(mut self) {
        let endpoint = self.endpoint.clone();
        let inbound = self.ctx.inbound.clone();
        let acceptor = self.tasks.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                if inbound
                    .send(PeerInbound::Incoming(Box::new(incoming)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        self.on_timeout();
        self.drain();
        let mut credit_period = CREDIT_TICK;
        let credit_tick = tokio::time::sleep(CREDIT_TICK);
        tokio::pin!(credit_tick);
        let reply = loop {
            let deadline = self.node.poll_timeout().map(Instant::from_std);
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
            tokio::select! {
                // In this order: failure detection first (a probe answered
                // late is a peer marked down), then timers, then the rest.
                biased;
                Some(inbound) = self.control.recv() => self.on_inbound(inbound),
                () = sleep, if deadline.is_some() => self.on_timeout(),
                () = &mut credit_tick, if self.credit.busy() => {
                    credit_period = if self.on_credit_tick() {
                        CREDIT_TICK
                    } else {
                        (credit_period * 2).min(CREDIT_TICK_MAX)
                    };
                    credit_tick.as_mut().reset(Instant::now() + credit_period);
                }
                req = self.requests.recv() => match req {
                    Some(req) => if let Some(reply) = self.on_request(req) { break Some(reply) },
                    None => break None,
                },
                Some((topic, sub)) = self.drops.recv() => self.unsubscribe(topic, sub, None),
                Some(inbound) = self.inbound.recv() => self.on_inbound(inbound),
                Some(seeds) = self.discovered.recv() => self.node.handle_seeds(seeds),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => on_task_end(done),
            }
            self.drain();
            if matches!(*self.state.borrow(), TaskState::Clash(_)) {
                break None;
            }
        };
        acceptor.abort();
        self.leave().await;
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Tells peers we leave, flushes, closes.
    async fn leave(&mut self) {
        if let Err(e) = self.node.handle_command(now(), Command::Leave) {
            warn!(error = %e, "leave refused");
        }
        self.drain();
        let _ = self.shutdown.send(true);
        // Dropping the queues lets every writer drain, finish its stream and
        // wait until the peer has it all.
        self.links.clear();
        self.subscribers.clear();
        self.topics.clear();
        self.pending.clear();
        let tasks = &mut self.tasks;
        let inbound = &mut self.inbound;
        let control = &mut self.control;
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            loop {
                tokio::select! {
                    done = tasks.join_next() => if done.is_none() { break },
                    Some(msg) = inbound.recv() => if let PeerInbound::Incoming(i) = msg { i.refuse() },
                    Some(_) = control.recv() => {}
                }
            }
        })
        .await;
        self.tasks.abort_all();
        self.endpoint.close(codes::SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Fires the node's due timers, after telling it the wall clock (history
    /// expiry). The node's tick timer wakes it every protocol period (200 ms
    /// on a LAN, 1.5 s with the Phoenix profile), so the clock is fed at least
    /// that often.
    fn on_timeout(&mut self) {
        self.node.handle_wall_clock(wall_ms());
        self.node.handle_timeout(now());
    }

    /// Sends every pending transmit and delivers every pending event.
    fn drain(&mut self) {
        loop {
            let mut busy = false;
            while let Some(t) = self.node.poll_transmit() {
                busy = true;
                if let Some(t) = self.transmit(t) {
                    self.node.handle_unsent(t);
                }
            }
            while let Some(e) = self.node.poll_event() {
                busy = true;
                self.on_event(e);
            }
            if !busy {
                break;
            }
        }
        self.apply_records();
    }

    /// Brings the read replica up to date with what the node accepted.
    fn apply_records(&mut self) {
        if !self.accepted.is_empty() {
            self.records.apply(self.accepted.drain(..));
        }
    }

    /// Carries out a handle's request. Returns the reply channel of a
    /// shutdown request, which ends the node task.
    fn on_request(&mut self, req: EngineRequest) -> Option<oneshot::Sender<()>> {
        match req {
            EngineRequest::Command { cmd, reply } => {
                let r = self.node.handle_command(now(), cmd);
                // A caller that wrote a record reads it back from the replica
                // once answered: apply it (and send what it caused) first.
                self.drain();
                let _ = reply.send(r);
            }
            EngineRequest::Subscribe { topic, tx, reply } => {
                let sub = SubscriberId(self.next_sub);
                self.next_sub += 1;
                self.subscribers.insert(sub, tx);
                self.topics.entry(topic.clone()).or_default().insert(sub);
                let cmd = Command::Subscribe {
                    topic: topic.clone(),
                    sub,
                };
                match self.node.handle_command(now(), cmd) {
                    Ok(_) => {
                        self.pending.insert(sub, reply);
                    }
                    Err(e) => {
                        self.forget_subscriber(&topic, sub);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            EngineRequest::Unsubscribe { topic, sub, reply } => self.unsubscribe(topic, sub, reply),
            EngineRequest::Presence { topic, reply } => {
                let _ = reply.send(self.node.list_for_subscriber(&topic));
            }
            EngineRequest::PresenceCount { topic, reply } => {
                let _ = reply.send(self.node.presence().count(&topic));
            }
            EngineRequest::PresenceTap { tx, reply } => {
                // What is visible now, as one diff of joins per topic; then
                // every diff from here on. A diff still coalescing repeats some
                // of these joins or leaves refs never listed: a set of refs
                // per key (as phoenix.js keeps) absorbs both.
                self.node.diffs_for_all_topics(true);
                let mut now: BTreeMap<Topic, Vec<PresenceItem>> = BTreeMap::new();
                for (topic, key, phx_ref, meta) in self.node.presence().view() {
                    now.entry(topic).or_default().push(PresenceItem {
                        key,
                        phx_ref,
                        prev_ref: None,
                        meta,
                    });
                }
                for (topic, joins) in now {
                    let diff = TopicDiff {
                        joins,
                        leaves: Vec::new(),
                    };
                    let _ = tx.send((topic, Arc::new(diff)));
                }
                self.presence_taps.push(tx);
                let _ = reply.send(());
            }
            EngineRequest::Members { reply } => {
                let now = now();
                let members = self
                    .node
                    .members()
                    .into_iter()
                    .map(|(id, addr, state)| {
                        let silent = self
                            .node
                            .last_heard(&id)
                            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                        MemberInfo {
                            id,
                            addr,
                            state,
                            silent,
                        }
                    })
                    .collect();
                let _ = reply.send(members);
            }
            EngineRequest::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.credit_withheld = self.credit.withheld_total();
                stats.node = self.node.stats().clone();
                stats.presence_entries = self.node.presence().visible_len();
                stats.history_bytes = self.node.records().log_bytes();
                let _ = reply.send(stats);
            }
            EngineRequest::Shutdown { reply } => return Some(reply),
            #[cfg(test)]
            EngineRequest::Panic => panic!("node task panic injected by a test"),
        }
        None
    }

    fn unsubscribe(
        &mut self,
        topic: Topic,
        sub: SubscriberId,
        reply: Option<oneshot::Sender<Result<crate::node::CommandOutcome, CommandError>>>,
    ) {
        self.forget_subscriber(&topic, sub);
        self.pending.remove(&sub);
        let r = self
            .node
            .handle_command(now(), Command::Unsubscribe { topic, sub });
        if let Some(reply) = reply {
            let _ = reply.send(r);
        }
    }

    fn forget_subscriber(&mut self, topic: &Topic, sub: SubscriberId) {
        self.subscribers.remove(&sub);
        if let Some(set) = self.topics.get_mut(topic) {
            set.remove(&sub);
            if set.is_empty() {
                self.topics.remove(topic);
                for (peer, n) in self.credit.return_topic(topic) {
                    self.send_credit(peer, topic.clone(), n);
                }
            }
        }
    }

    /// Returns what `peer` is owed for `topic` if it is due and the topic's
    /// subscribers have room (withheld otherwise, until they do).
    fn return_credit(&mut self, peer: SocketAddr, topic: &Topic) {
        let batch = if self.topics.contains_key(topic) {
            credit::BATCH
        } else {
            1
        };
        let (topics, subscribers) = (&self.topics, &self.subscribers);
        let mark = credit::room_mark(self.subscriber_queue);
        let room = |t: &Topic| has_room(topics, subscribers, mark, t);
        if let Some(n) = self.credit.returnable(peer, topic, batch, room) {
            self.send_credit(peer, topic.clone(), n);
        }
    }

    /// Sends `n` credit for `topic` to `peer`; credit that finds the peer's
    /// queue full is owed again and retried at a later credit tick. Whether
    /// it was queued.
    fn send_credit(&mut self, peer: SocketAddr, topic: Topic, n: u32) -> bool {
        let msg = Message {
            from: self.node.id().clone(),
            addr: self.ctx.me.addr,
            body: Body::Credit { topic, n },
        };
        let unsent = self.send_now(Transmit {
            to: None,
            addr: peer,
            msg,
        });
        match unsent.map(|t| t.msg.body) {
            Some(Body::Credit { topic, n }) => {
                self.credit.give_back(peer, topic, n);
                false
            }
            _ => true,
        }
    }

    /// Returns withheld credit whose topic has room now, and refills windows
    /// that got nothing back for too long. Whether it did anything: credit
    /// that only bounced off a full peer queue is not progress, so the tick
    /// backs off while a peer does not read (it used to retry every owed
    /// topic each millisecond, a core's worth of work).
    fn on_credit_tick(&mut self) -> bool {
        let (topics, subscribers) = (&self.topics, &self.subscribers);
        let mark = credit::room_mark(self.subscriber_queue);
        let room = |t: &Topic| has_room(topics, subscribers, mark, t);
        // A peer whose queue is (all but) full keeps its credit withheld,
        // untouched, until the queue drains.
        let (links, cap) = (&self.links, self.ctx.queue_cap);
        let open = |peer: SocketAddr| {
            links
                .get(&peer)
                .is_none_or(|l| !l.queue.refuses_within(cap.saturating_sub(CREDIT_ROOM)))
        };
        let back = self.credit.release_withheld(room, open);
        let mut moved = false;
        // Peers whose queue was full this tick: the rest of their credit is
        // owed again without being encoded only to bounce.
        let mut full: Vec<SocketAddr> = Vec::new();
        for (peer, topic, n) in back {
            if full.contains(&peer) {
                self.credit.give_back(peer, topic, n);
            } else if self.send_credit(peer, topic, n) {
                moved = true;
            } else {
                full.push(peer);
            }
        }
        let (sent, refilled) = self.credit.expire(now());
        self.stats.credit_refills += refilled;
        for (_, t) in sent {
            self.send_now(t);
        }
        moved || refilled > 0
    }

    fn on_event(&mut self, event: Event) {
        // Whoever hears of another event may read records: apply them first.
        if !matches!(event, Event::Record(_) | Event::HistoryExpired { .. }) {
            self.apply_records();
        }
        match event {
            Event::Broadcast {
                topic,
                payload,
                exclude,
            } => self.fan_out(&topic, exclude, Delivery::Broadcast(payload)),
            Event::PresenceDiff { topic, diff } => {
                let diff = Arc::new(diff);
                if !self.presence_taps.is_empty() {
                    self.presence_taps
                        .retain(|tap| tap.send((topic.clone(), diff.clone())).is_ok());
                    if self.presence_taps.is_empty() {
                        self.node.diffs_for_all_topics(false);
                    }
                }
                self.fan_out(&topic, None, Delivery::PresenceDiff(diff))
            }
            Event::SubscribeReady { topic, sub } => {
                if let Some(reply) = self.pending.remove(&sub) {
                    if reply.send(Ok(sub)).is_err() {
                        // The caller gave up before the subscription existed.
                        self.unsubscribe(topic, sub, None);
                    }
                }
            }
            Event::MemberUp(id) => debug!(peer = %id, "member up"),
            Event::MemberDown(id) | Event::MemberGone(id) => {
                debug!(peer = %id, "member down or gone");
                if let Some(addr) = self.node.member_addr(&id) {
                    self.stats.credit_dropped += self.credit.drop_peer(addr);
                }
            }
            Event::NameClash(other) => {
                warn!(other = %other, "another process runs under this node's name: stopping");
                self.state.send_replace(TaskState::Clash(other));
            }
            Event::Record(record) => {
                let logged = match &record {
                    Record::Log {
                        topic, stamp, body, ..
                    } if self.topics.contains_key(topic) => {
                        Some((topic.clone(), stamp.clone(), body.clone()))
                    }
                    _ => None,
                };
                self.accepted.push(RecordChange::Merge(record));
                if let Some((topic, stamp, body)) = logged {
                    // Subscribers read the replica when they see the entry.
                    self.apply_records();
                    self.fan_out(&topic, None, Delivery::Logged { stamp, body });
                }
            }
            Event::HistoryExpired { horizon } => self.accepted.push(RecordChange::Expire(horizon)),
        }
    }

    /// Offers `delivery` to each subscriber of `topic` without waiting; one
    /// whose queue is full ([`credit::subscriber_limit`]) is dropped.
    fn fan_out(&mut self, topic: &Topic, exclude: Option<SubscriberId>, delivery: Delivery) {
        let Some(subs) = self.topics.get(topic) else {
            return;
        };
        let mut dropped = Vec::new();
        let limit = credit::subscriber_limit(self.subscriber_queue, self.links.len());
        for &sub in subs {
            if Some(sub) == exclude {
                continue;
            }
            let Some(tx) = self.subscribers.get(&sub) else {
                continue;
            };
            // The channel has room for every peer's window; the limit counts
            // only the connected ones.
            let slow = if tx.max_capacity() - tx.capacity() >= limit {
                true
            } else {
                match tx.try_send(delivery.clone()) {
                    Ok(()) => false,
                    Err(mpsc::error::TrySendError::Full(_)) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        dropped.push(sub);
                        false
                    }
                }
            };
            if slow {
                self.stats.slow_subscribers += 1;
                debug!(topic = %topic, sub = sub.0, "dropping a slow subscriber");
                dropped.push(sub);
            }
        }
        for sub in dropped {
            self.unsubscribe(topic.clone(), sub, None);
        }
    }

    /// Sends `t`, a broadcast only within its (peer, topic) window
    /// ([`credit`]); one without credit waits for it. A repair that does not
    /// fit comes back (see [`Self::send_now`]).
    fn transmit(&mut self, t: Transmit) -> Option<Transmit> {
        if t.addr == self.ctx.me.addr {
            return None;
        }
        let Body::Broadcast { topic, .. } = &t.msg.body else {
            return self.send_now(t);
        };
        let topic = topic.clone();
        match self.credit.admit(now(), t.addr, &topic, t) {
            Admit::Send(t) => return self.send_now(t),
            Admit::Waiting => self.stats.credit_waits += 1,
            Admit::Dropped => self.stats.credit_dropped += 1,
        }
        None
    }

    /// Queues `t` for its peer. A repair is queued only while the peer's
    /// queue then holds at most half its cap (the rest stays free for
    /// everything else) and otherwise comes back, for the node to send again
    /// later ([`Node::handle_unsent`]); a credit that does not fit comes
    /// back too ([`Self::send_credit`] owes it again); any other frame that
    /// does not fit is dropped and counted.
    fn send_now(&mut self, t: Transmit) -> Option<Transmit> {
        let repair = matches!(t.msg.body, Body::Repair { .. });
        let credit = matches!(t.msg.body, Body::Credit { .. });
        let half = self.ctx.queue_cap / 2;
        if repair && self.link(t.addr).queue.refuses_within(half) {
            // Not encoded only to come back (the node retries it each tick
            // while the queue stays this full).
            return Some(t);
        }
        let bytes = Bytes::from(t.msg.encode());
        let len = bytes.len() as u64;
        let datagram = t.msg.body.loss_tolerant();
        let mut frame = PeerFrame { bytes, datagram };
        for _ in 0..2 {
            let link = self.link(t.addr);
            let pushed = if repair {
                link.queue.push_within(frame, half)
            } else {
                link.queue.push(frame)
            };
            match pushed {
                Ok(()) => {
                    let s = self.stats.peers.entry(t.addr).or_default();
                    s.messages_out += 1;
                    s.bytes_out += len;
                    return None;
                }
                Err((QueueError::Full, _)) if repair => {
                    trace!(peer = %t.addr, "peer queue holds its share of repairs, repair returned");
                    return Some(t);
                }
                Err((QueueError::Full, _)) if credit => {
                    trace!(peer = %t.addr, "peer queue full, credit kept to send again");
                    return Some(t);
                }
                Err((QueueError::Full, _)) => {
                    self.stats.peers.entry(t.addr).or_default().dropped += 1;
                    self.stats.peer_queue_overflows += 1;
                    trace!(peer = %t.addr, "peer queue full, frame dropped");
                    return None;
                }
                Err((QueueError::Closed, f)) => {
                    // The connection ended and we have not heard yet: redial.
                    // (Its close, when heard, names a link no longer here.)
                    self.links.remove(&t.addr);
                    self.credit.forget_peer(t.addr);
                    frame = f;
                }
            }
        }
        None
    }

    /// The link to `addr`, dialing it if there is none.
    fn link(&mut self, addr: SocketAddr) -> &mut Link {
        if !self.links.contains_key(&addr) {
            let (queue, rx) = out_queue(self.ctx.queue_cap);
            let conn_id = self.next_conn;
            self.next_conn += 1;
            trace!(peer = %addr, conn_id, "dialing");
            self.tasks.spawn(transport::run_dialed(
                self.ctx.clone(),
                self.endpoint.clone(),
                addr,
                conn_id,
                rx,
            ));
            self.links.insert(
                addr,
                Link {
                    conn_id,
                    queue,
                    conn: None,
                    instance: None,
                    dialed: true,
                },
            );
        }
        self.links.get_mut(&addr).expect("inserted above")
    }

    fn on_inbound(&mut self, inbound: PeerInbound) {
        match inbound {
            PeerInbound::Message {
                peer,
                from,
                msg,
                len,
            } => {
                let s = self.stats.peers.entry(peer).or_default();
                s.messages_in += 1;
                s.bytes_in += len as u64;
                // Flow control is between authenticated peers (the node drops
                // a message that claims another sender, and so do we).
                let flow = match &msg.body {
                    Body::Broadcast { topic, .. } | Body::Credit { topic, .. }
                        if msg.from == *from =>
                    {
                        Some(topic.clone())
                    }
                    _ => None,
                };
                let returned = match msg.body {
                    Body::Credit { n, .. } => Some(n),
                    _ => None,
                };
                self.node.handle_message(now(), &from, msg);
                match (flow, returned) {
                    (Some(topic), Some(n)) => {
                        for t in self.credit.returned(now(), peer, &topic, n) {
                            self.send_now(t);
                        }
                    }
                    (Some(topic), None) => {
                        // Fanned out first, so the room counts it.
                        self.drain();
                        self.credit.received(peer, &topic);
                        self.return_credit(peer, &topic);
                    }
                    (None, _) => {}
                }
            }
            PeerInbound::Rejected { peer, why } => {
                debug!(peer = %peer, why = ?why, "dropping an invalid peer message");
                match why {
                    Rejection::Invalid => self.stats.rejected_invalid += 1,
                    Rejection::Address => self.stats.rejected_address += 1,
                }
            }
            PeerInbound::Up(up) => self.on_up(up),
            PeerInbound::Closed { peer, conn_id, why } => {
                match why {
                    CloseWhy::AuthFailed => self.stats.auth_failures += 1,
                    CloseWhy::Protocol => self.stats.protocol_errors += 1,
                    CloseWhy::Done | CloseWhy::Lost => {}
                }
                if let Some(peer) = peer {
                    if self.links.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                        self.links.remove(&peer);
                        self.credit.forget_peer(peer);
                    }
                }
            }
            PeerInbound::Incoming(incoming) => {
                let conn_id = self.next_conn;
                self.next_conn += 1;
                self.tasks
                    .spawn(transport::run_accepted(self.ctx.clone(), incoming, conn_id));
            }
        }
    }

    /// Installs an authenticated connection, or keeps the one already there.
    /// See the transport docs for the rule.
    fn on_up(&mut self, up: LinkUp) {
        self.stats.peers.entry(up.peer).or_default().connections += 1;
        let mine = self.ctx.me.addr;
        let theirs = up.hello.addr;
        if let Some(link) = self.links.get_mut(&up.peer) {
            if link.conn_id == up.conn_id {
                link.instance = Some(up.hello.instance);
                link.conn = Some(up.conn);
                self.resume_credit(up.peer);
                return;
            }
            let Some(_) = up.queue else {
                // A dial superseded while it ran: it drains and closes.
                return;
            };
            let restarted = link.instance.is_some_and(|i| i != up.hello.instance);
            let replace = restarted
                || link.dialed == up.dialed
                || (if up.dialed { mine } else { theirs }) == mine.min(theirs);
            if !replace {
                trace!(peer = %up.peer, "keeping the existing connection");
                return;
            }
            if let Some(old) = self.links.remove(&up.peer) {
                if restarted {
                    if let Some(conn) = old.conn {
                        conn.close(codes::REPLACED.into(), b"replaced");
                    }
                    // The old process had what was in flight; the new one
                    // owes nothing for it. (Replaced otherwise, the old
                    // connection drains its queue and credit comes back.)
                    self.credit.forget_peer(up.peer);
                }
            }
        }
        let Some(queue) = up.queue else {
            return;
        };
        trace!(peer = %up.peer, conn_id = up.conn_id, "connection installed");
        self.links.insert(
            up.peer,
            Link {
                conn_id: up.conn_id,
                queue,
                conn: Some(up.conn),
                instance: Some(up.hello.instance),
                dialed: up.dialed,
            },
        );
        self.resume_credit(up.peer);
    }

    /// A connection to `peer` is up: broadcasts waiting for it go, within
    /// their windows.
    fn resume_credit(&mut self, peer: SocketAddr) {
        for t in self.credit.resume_peer(peer) {
            self.send_now(t);
        }
    }
}

/// Whether `topic`'s subscribers have room for more of peers' broadcasts:
/// each has at most `mark` deliveries queued.
fn has_room(
    topics: &HashMap<Topic, BTreeSet<SubscriberId>>,
    subscribers: &HashMap<SubscriberId, mpsc::Sender<Delivery>>,
    mark: usize,
    topic: &Topic,
) -> bool {
    topics.get(topic).is_none_or(|subs| {
        subs.iter()
            .filter_map(|sub| subscribers.get(sub))
            .all(|tx| tx.max_capacity() - tx.capacity() <= mark)
    })
}

/// A connection task ended: one that panicked (a bug) is logged; its link is
/// redialed when next needed, and the node keeps running.
fn on_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            error!(error = %e, "a connection task panicked");
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
