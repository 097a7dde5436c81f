//! Webhooks (`[[webhooks]]`): the node tells a backend, over signed HTTP
//! `POST`s, what happened in the cluster: `channel_occupied`,
//! `channel_vacated`, `member_added`, `member_removed` and `message`.
//!
//! Each event is sent by one node, chosen from the replicated state, and handed
//! over when that node goes (ALGORITHM.md, "Webhooks"):
//!
//! - every node derives the presence events from the presence CRDT it holds
//!   ([`view`]), so every node knows every event;
//! - the **sender** of a topic's events is the up member (as the engine sees
//!   them, this node included) with the highest rendezvous score for the topic
//!   ([`rendezvous`]); it batches and posts them ([`deliver`]);
//! - every other node **holds** its copy of each event, tagged with the sender
//!   of the moment (its owner), until the owner's delivered watermark (a
//!   replicated register in [`topics::WEBHOOK_DELIVERED`]: "every event I was
//!   the sender of and observed before this time is delivered or given up")
//!   passes it by [`LAG`], or until [`hold`] has passed. When the owner goes
//!   down, the rendezvous choice moves to another node, which posts what it
//!   holds: repeated, never lost;
//! - a `message` event is sent by the node that published the broadcast.

pub mod config;
pub mod deliver;
pub mod view;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_engine::runtime::RuntimeError;
use chorus_engine::PeerState;
use chorus_engine::Topic;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster::{unix_ms, Hub, HubTap, TapEvent};
use crate::protocol::{JsonObject, Payload};
use crate::topics;
pub use config::{EventKind, WebhookConfig};
use deliver::{Outcome, WireEvent};
use view::{Side, View};

/// The environment variable holding the key the requests are signed with.
pub const SECRET_ENV: &str = "CHORUS_WEBHOOK_SECRET";

/// How far apart two nodes may observe the same event (replication lag plus
/// clock skew) for a holder to trust its owner's watermark: a held event is
/// dropped once the owner's watermark is past its observation time plus this.
pub const LAG: Duration = Duration::from_secs(2);

/// How long a node holds an event it is not the sender of, at most: the
/// longest its owner may keep it undelivered (`retry_for_ms` waiting in the
/// queue, then `retry_for_ms` retrying the batch that took it), plus
/// `down_after` for the others to see the owner down if it dies, plus [`LAG`]
/// twice and a second of slack.
pub fn hold(retry_for: Duration, down_after: Duration) -> Duration {
    2 * retry_for + down_after + 2 * LAG + Duration::from_secs(1)
}

/// The member that sends `topic`'s events: the highest rendezvous score
/// (the first 8 bytes of SHA-256 of `node`, a NUL, `topic`) among `up`,
/// ties to the greater name. Every node that sees the same members chooses the
/// same one, and a member's going moves only its own topics.
pub fn rendezvous<'a>(topic: &str, up: &'a [String]) -> Option<&'a str> {
    up.iter()
        .map(|node| {
            let mut h = Sha256::new();
            h.update(node.as_bytes());
            h.update([0]);
            h.update(topic.as_bytes());
            let digest = h.finalize();
            let score = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
            (score, node.as_str())
        })
        .max()
        .map(|(_, node)| node)
}

/// The next batch to post from `mine` (the events this node sends, oldest
/// first), if one is due: `batch_max` of them wait, or the oldest has waited
/// `batch_ms`. At most `batch_max` events.
fn due_batch<'a>(
    mine: impl Iterator<Item = &'a Pending>,
    batch_max: usize,
    batch_ms: Duration,
    now: Instant,
) -> Option<Vec<&'a Pending>> {
    let batch: Vec<&Pending> = mine.take(batch_max).collect();
    let oldest = batch.first()?;
    let due = batch.len() >= batch_max || now.duration_since(oldest.queued) >= batch_ms;
    due.then_some(batch)
}

/// How often the member list is read while no event waits (with events
/// waiting: every tick), so an event's owner is chosen from a fresh list.
const MEMBERS_IDLE_REFRESH: Duration = Duration::from_secs(1);

/// What the webhooks need from the binary.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `[[webhooks]]` entries (none: nothing starts).
    pub hooks: Vec<WebhookConfig>,
    /// The signing key ([`SECRET_ENV`]).
    pub secret: Vec<u8>,
    /// The engine's `down_after`, for [`hold`].
    pub down_after: Duration,
}

/// One event waiting on this node.
#[derive(Debug)]
struct Pending {
    id: u64,
    event: WireEvent,
    /// This node's wall clock when it derived the event (ms).
    observed_ms: u64,
    /// When it was queued, for `batch_ms`.
    queued: Instant,
    /// The sender when it was derived (a `NodeId` as text).
    owner: String,
    /// A `message` this node published: sent by this node whoever the sender.
    local: bool,
    /// Since when this node is its sender (first seen so at a tick): an event
    /// not delivered `retry_for_ms` after is dropped, so a backend that stays
    /// down costs a bounded queue.
    sending_since: Option<Instant>,
}

/// One webhook's queue.
#[derive(Debug)]
struct Hook {
    config: WebhookConfig,
    /// The register key of this node's watermark for this webhook.
    index: usize,
    pending: VecDeque<Pending>,
    /// Ids of the batch being posted, and when it was formed (wall ms).
    in_flight: Option<(Vec<u64>, u64)>,
    /// When the last batch ended (wall ms), if no watermark was published
    /// after it once nothing was left to send ([`Runner::trail`]).
    trailing: Option<u64>,
    hold: Duration,
}

impl Hook {
    fn watermark_key(&self, node: &str) -> String {
        format!("{}|{}|{node}", self.index, self.config.url)
    }
}

struct Done {
    hook: usize,
    outcome: Outcome,
}

struct Runner {
    hub: Arc<Hub>,
    client: reqwest::Client,
    secret: Arc<[u8]>,
    me: String,
    /// The up members, this node included, as text `NodeId`s.
    up: Vec<String>,
    /// When `up` was read last.
    refreshed: Option<Instant>,
    /// Whether this node has joined its cluster (as `/healthz` counts it), or
    /// has been alone for `alone_after` since it started.
    joined: bool,
    started: Instant,
    alone_after: Duration,
    view: View,
    hooks: Vec<Hook>,
    next_id: u64,
    done_tx: mpsc::UnboundedSender<Done>,
}

/// Starts the webhooks of `settings` on `hub`'s node; `None` if none are
/// configured.
pub async fn start(
    hub: Arc<Hub>,
    settings: Settings,
) -> Result<Option<JoinHandle<()>>, RuntimeError> {
    if settings.hooks.is_empty() {
        return Ok(None);
    }
    let presence = hub.presence_tap().await?;
    let (tap_tx, tap_rx) = mpsc::unbounded_channel();
    let filter_hooks = settings.hooks.clone();
    let installed = hub.set_tap(HubTap {
        filter: Box::new(move |topic| {
            !topics::is_internal(topic) && filter_hooks.iter().any(|h| h.matches(topic))
        }),
        tx: tap_tx,
    });
    assert!(installed, "the webhooks are the hub's one observer");
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let me = hub.node_id().to_string();
    let hooks = settings
        .hooks
        .iter()
        .enumerate()
        .map(|(index, config)| Hook {
            hold: hold(
                Duration::from_millis(config.retry_for_ms),
                settings.down_after,
            ),
            config: config.clone(),
            index,
            pending: VecDeque::new(),
            in_flight: None,
            trailing: None,
        })
        .collect::<Vec<_>>();
    let tick = hooks
        .iter()
        .map(|h| h.config.batch_ms / 2)
        .min()
        .unwrap_or(25)
        .clamp(5, 100);
    info!(webhooks = hooks.len(), "webhooks started");
    let runner = Runner {
        client: deliver::client(),
        secret: Arc::from(settings.secret.as_slice()),
        up: vec![me.clone()],
        refreshed: None,
        joined: false,
        started: Instant::now(),
        alone_after: settings.down_after + LAG,
        me,
        hub,
        view: View::default(),
        hooks,
        next_id: 0,
        done_tx,
    };
    Ok(Some(tokio::spawn(runner.run(
        presence,
        tap_rx,
        done_rx,
        Duration::from_millis(tick),
    ))))
}

impl Runner {
    async fn run(
        mut self,
        mut presence: mpsc::UnboundedReceiver<(Topic, Arc<chorus_engine::TopicDiff>)>,
        mut tap: mpsc::UnboundedReceiver<TapEvent>,
        mut done: mpsc::UnboundedReceiver<Done>,
        tick: Duration,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                diff = presence.recv() => match diff {
                    Some((topic, diff)) => self.on_diff(topic.as_str(), &diff),
                    None => {
                        debug!("the engine stopped: webhooks end");
                        return;
                    }
                },
                Some(event) = tap.recv() => self.on_tap(event).await,
                Some(d) = done.recv() => self.on_done(d).await,
                _ = ticker.tick() => self.on_tick().await,
            }
        }
    }

    fn on_diff(&mut self, topic: &str, diff: &chorus_engine::TopicDiff) {
        let (topic, side) = match topic.strip_prefix(topics::WEBHOOK_SUBS_PREFIX) {
            Some(t) => (t, Side::Subscribers),
            None if topics::is_internal(topic) => return,
            None => (topic, Side::Presence),
        };
        if !self.hooks.iter().any(|h| h.config.matches(topic)) {
            return;
        }
        let derived = self.view.apply(topic, side, diff);
        if derived.is_empty() {
            return;
        }
        let owner = rendezvous(topic, &self.up).unwrap_or(&self.me).to_owned();
        let observed_ms = unix_ms();
        for d in derived {
            let event = WireEvent {
                kind: d.kind,
                topic: d.topic,
                user_id: d.user_id,
                message: None,
            };
            self.enqueue(event, observed_ms, &owner, false);
        }
    }

    fn enqueue(&mut self, event: WireEvent, observed_ms: u64, owner: &str, local: bool) {
        for hook in &mut self.hooks {
            if hook.config.wants(event.kind, &event.topic) {
                self.next_id += 1;
                hook.pending.push_back(Pending {
                    id: self.next_id,
                    event: event.clone(),
                    observed_ms,
                    queued: Instant::now(),
                    owner: owner.to_owned(),
                    local,
                    sending_since: None,
                });
            }
        }
    }

    async fn on_tap(&mut self, event: TapEvent) {
        match event {
            TapEvent::Subscribed(topic) => {
                let result = self
                    .hub
                    .track(
                        &topics::webhook_subs_topic(&topic),
                        &self.me,
                        0,
                        &JsonObject::empty(),
                    )
                    .await;
                if let Err(e) = result {
                    warn!(topic, error = %e, "webhooks: cannot record a local subscriber");
                }
            }
            TapEvent::Unsubscribed(topic) => {
                let result = self
                    .hub
                    .untrack(&topics::webhook_subs_topic(&topic), &self.me, 0)
                    .await;
                if let Err(e) = result {
                    warn!(topic, error = %e, "webhooks: cannot record a subscriber gone");
                }
            }
            TapEvent::Broadcast {
                topic,
                event,
                payload,
            } => {
                if !self
                    .hooks
                    .iter()
                    .any(|h| h.config.wants(EventKind::Message, &topic))
                {
                    return;
                }
                let payload = match &payload {
                    Payload::Json(object) => {
                        serde_json::from_str(object.as_str()).unwrap_or(Value::Null)
                    }
                    Payload::Binary(bytes) => {
                        use base64::Engine as _;
                        serde_json::json!({
                            "binary": base64::engine::general_purpose::STANDARD.encode(bytes)
                        })
                    }
                };
                let wire = WireEvent {
                    kind: EventKind::Message,
                    topic,
                    user_id: None,
                    message: Some((event, payload)),
                };
                let me = self.me.clone();
                self.enqueue(wire, unix_ms(), &me, true);
            }
        }
    }

    /// Whether this node sends `p` now. A node that has not joined its
    /// cluster yet (seeds given, no peer up, for less than `down_after` plus
    /// [`LAG`]) sends no presence event: its view of the members is only
    /// itself, and it would report every user the cluster already reported.
    fn mine(&self, p: &Pending) -> bool {
        p.local || (self.joined && rendezvous(&p.event.topic, &self.up) == Some(self.me.as_str()))
    }

    /// Reads the up members from the engine; `false` if it stopped.
    async fn refresh_members(&mut self) -> bool {
        match self.hub.members().await {
            Ok(members) => {
                let mut up: Vec<String> = members
                    .into_iter()
                    .filter(|m| m.state == PeerState::Up)
                    .map(|m| m.id.to_string())
                    .collect();
                // Joined: no seeds, a peer up, or alone for longer than a
                // peer would take to answer (its seeds are all gone).
                self.joined |= self.hub.seeds().is_empty()
                    || !up.is_empty()
                    || self.started.elapsed() >= self.alone_after;
                up.push(self.me.clone());
                up.sort();
                up.dedup();
                self.up = up;
                self.refreshed = Some(Instant::now());
                true
            }
            Err(e) => {
                debug!(error = %e, "webhooks: the engine stopped");
                false
            }
        }
    }

    async fn on_tick(&mut self) {
        let idle = self.hooks.iter().all(|h| h.pending.is_empty());
        let stale = self
            .refreshed
            .is_none_or(|at| at.elapsed() >= MEMBERS_IDLE_REFRESH);
        if (!idle || stale) && !self.refresh_members().await {
            return;
        }
        if idle {
            for i in 0..self.hooks.len() {
                self.trail(i).await;
            }
            return;
        }
        let now_ms = unix_ms();
        for i in 0..self.hooks.len() {
            self.prune(i, now_ms);
            self.send(i, now_ms);
            self.trail(i).await;
        }
    }

    /// Once [`LAG`] after a batch ended with nothing left to send, publishes
    /// the watermark "now": everything this node observed until now is
    /// delivered, so holders drop their copies of the last batches too
    /// (otherwise they would keep them for [`hold`], and send them again if
    /// this node went meanwhile).
    async fn trail(&mut self, i: usize) {
        let now_ms = unix_ms();
        let hook = &self.hooks[i];
        let Some(ended) = hook.trailing else {
            return;
        };
        if hook.in_flight.is_some()
            || now_ms < ended + LAG.as_millis() as u64
            || hook.pending.iter().any(|p| !p.local && self.mine(p))
        {
            return;
        }
        self.hooks[i].trailing = None;
        self.publish_mark(i, now_ms).await;
    }

    async fn publish_mark(&self, i: usize, mark: u64) {
        let key = self.hooks[i].watermark_key(&self.me);
        if let Err(e) = self
            .hub
            .put(topics::WEBHOOK_DELIVERED, &key, Some(&mark.to_string()))
            .await
        {
            warn!(error = %e, "webhooks: cannot publish the delivered watermark");
        }
    }

    /// Drops the held events this node need not send any more: covered by
    /// their owner's watermark, or held for [`hold`].
    fn prune(&mut self, i: usize, now_ms: u64) {
        let now = Instant::now();
        let mine: Vec<bool> = self.hooks[i].pending.iter().map(|p| self.mine(p)).collect();
        for (p, mine) in self.hooks[i].pending.iter_mut().zip(&mine) {
            if *mine && p.sending_since.is_none() {
                p.sending_since = Some(now);
            }
        }
        let hook = &self.hooks[i];
        let retry_for = Duration::from_millis(hook.config.retry_for_ms);
        let in_flight: &[u64] = hook.in_flight.as_ref().map_or(&[], |(ids, _)| ids);
        let mut expired = 0usize;
        let hold_ms = hook.hold.as_millis() as u64;
        let lag_ms = LAG.as_millis() as u64;
        let mut marks: Vec<(String, u64)> = Vec::new();
        let keep: Vec<bool> = hook
            .pending
            .iter()
            .zip(&mine)
            .map(|(p, &mine)| {
                if in_flight.contains(&p.id) {
                    return true;
                }
                if mine {
                    let late = p
                        .sending_since
                        .is_some_and(|since| now.duration_since(since) > retry_for);
                    expired += usize::from(late);
                    return !late;
                }
                if now_ms.saturating_sub(p.observed_ms) >= hold_ms {
                    return false;
                }
                if p.owner == self.me {
                    return true;
                }
                let mark = match marks.iter().find(|(o, _)| *o == p.owner) {
                    Some((_, m)) => *m,
                    None => {
                        let m = self
                            .hub
                            .register(topics::WEBHOOK_DELIVERED, &hook.watermark_key(&p.owner))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0u64);
                        marks.push((p.owner.clone(), m));
                        m
                    }
                };
                mark <= p.observed_ms + lag_ms
            })
            .collect();
        if expired > 0 {
            warn!(
                url = hook.config.url,
                events = expired,
                "webhook events dropped: not delivered within retry_for_ms"
            );
        }
        let mut keep = keep.into_iter();
        self.hooks[i]
            .pending
            .retain(|_| keep.next().expect("one verdict per event"));
    }

    /// Starts posting the next batch of webhook `i`, if none is in flight and
    /// `batch_max` events wait or the oldest has waited `batch_ms`.
    fn send(&mut self, i: usize, now_ms: u64) {
        let hook = &self.hooks[i];
        if hook.in_flight.is_some() {
            return;
        }
        let Some(mine) = due_batch(
            hook.pending.iter().filter(|p| self.mine(p)),
            hook.config.batch_max,
            Duration::from_millis(hook.config.batch_ms),
            Instant::now(),
        ) else {
            return;
        };
        let ids: Vec<u64> = mine.iter().map(|p| p.id).collect();
        let events: Vec<WireEvent> = mine.iter().map(|p| p.event.clone()).collect();
        let body = deliver::body(now_ms, &events);
        let client = self.client.clone();
        let url = hook.config.url.clone();
        let secret = self.secret.clone();
        let timeout = Duration::from_millis(hook.config.timeout_ms);
        let retry_for = Duration::from_millis(hook.config.retry_for_ms);
        let done = self.done_tx.clone();
        self.hooks[i].in_flight = Some((ids, now_ms));
        tokio::spawn(async move {
            let outcome = deliver::post(&client, &url, &secret, body, timeout, retry_for).await;
            let _ = done.send(Done { hook: i, outcome });
        });
    }

    /// A batch ended: drops its events and publishes the watermark.
    async fn on_done(&mut self, done: Done) {
        let hook = &mut self.hooks[done.hook];
        let Some((ids, formed_ms)) = hook.in_flight.take() else {
            return;
        };
        hook.pending.retain(|p| !ids.contains(&p.id));
        match done.outcome {
            Outcome::Delivered(attempts) => {
                debug!(
                    url = hook.config.url,
                    events = ids.len(),
                    attempts,
                    "webhook batch delivered"
                )
            }
            Outcome::GaveUp(attempts) => warn!(
                url = hook.config.url,
                events = ids.len(),
                attempts,
                "webhook batch dropped after retry_for_ms"
            ),
        }
        // Everything this node sends and observed before the batch was formed
        // is delivered, except what still waits.
        let hook = &self.hooks[done.hook];
        let waiting = hook
            .pending
            .iter()
            .filter(|p| !p.local && self.mine(p))
            .map(|p| p.observed_ms)
            .min();
        let mark = waiting.map_or(formed_ms, |w| w.min(formed_ms));
        self.hooks[done.hook].trailing = Some(unix_ms());
        self.publish_mark(done.hook, mark).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rendezvous_is_deterministic_spread_and_moves_only_the_lost_nodes_topics() {
        let all = nodes(&["n1#1", "n2#1", "n3#1"]);
        let topics: Vec<String> = (0..300).map(|i| format!("room:{i}")).collect();
        let chosen: Vec<String> = topics
            .iter()
            .map(|t| rendezvous(t, &all).unwrap().to_owned())
            .collect();
        // The order of the member list does not matter.
        let reversed: Vec<String> = all.iter().rev().cloned().collect();
        for (t, c) in topics.iter().zip(&chosen) {
            assert_eq!(rendezvous(t, &reversed), Some(c.as_str()));
        }
        // Each node sends for about a third of the topics.
        for n in &all {
            let share = chosen.iter().filter(|c| *c == n).count();
            assert!((70..=130).contains(&share), "{n}: {share} of 300");
        }
        // n2 goes: its topics move, nobody else's do.
        let without = nodes(&["n1#1", "n3#1"]);
        for (t, c) in topics.iter().zip(&chosen) {
            let now = rendezvous(t, &without).unwrap();
            if c != "n2#1" {
                assert_eq!(now, c, "{t}");
            }
            assert_ne!(now, "n2#1");
        }
        // A restarted n2 is a new incarnation: a different member.
        assert!(topics.iter().any(|t| {
            rendezvous(t, &nodes(&["n1#1", "n2#1", "n3#1"]))
                != rendezvous(t, &nodes(&["n1#1", "n2#2", "n3#1"]))
        }));
        assert_eq!(rendezvous("room:1", &[]), None);
    }

    fn pending(id: u64, queued: Instant) -> Pending {
        Pending {
            id,
            event: WireEvent {
                kind: EventKind::MemberAdded,
                topic: "room:1".into(),
                user_id: Some(format!("u{id}")),
                message: None,
            },
            observed_ms: 0,
            queued,
            owner: "n1#1".into(),
            local: false,
            sending_since: None,
        }
    }

    #[test]
    fn a_batch_is_due_at_batch_max_events_or_after_batch_ms() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let queue: Vec<Pending> = (0..5).map(|i| pending(i, t0 + ms(i))).collect();
        let ids = |b: Option<Vec<&Pending>>| b.map(|b| b.iter().map(|p| p.id).collect::<Vec<_>>());
        // 5 waiting, max 10, the oldest 10 ms old: not yet.
        assert_eq!(ids(due_batch(queue.iter(), 10, ms(50), t0 + ms(10))), None);
        // The oldest has waited 50 ms: all of them.
        assert_eq!(
            ids(due_batch(queue.iter(), 10, ms(50), t0 + ms(50))),
            Some(vec![0, 1, 2, 3, 4])
        );
        // 5 waiting, max 3: the 3 oldest at once.
        assert_eq!(
            ids(due_batch(queue.iter(), 3, ms(50), t0)),
            Some(vec![0, 1, 2])
        );
        assert_eq!(ids(due_batch([].iter(), 3, ms(50), t0 + ms(99))), None);
    }

    #[test]
    fn a_holder_outlasts_the_owners_retries_and_its_detection() {
        let h = hold(Duration::from_secs(30), Duration::from_secs(2));
        assert_eq!(h, Duration::from_secs(2 * 30 + 2 + 4 + 1));
    }
}
