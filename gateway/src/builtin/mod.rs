//! The built-in, configuration-driven channels of the `chorus` server.
//!
//! One [`ConfiguredChannel`] serves every topic a [`TopicRule`] matches: the
//! rule says who may join, whether the join tracks presence, pushes history,
//! counts the user's sockets or lists their rooms, and what each accepted
//! client event does. Rooms, memberships and history live in the engine's
//! replicated records, so every node sees the same ones; rate limits are kept
//! per node.
//!
//! Records used:
//! - history: the log of the topic itself (`room:lobby`, `notifications:bob`);
//! - rooms: register `("room", id)`, value the display name;
//! - memberships: register `("member", "{user}:{room}")`.

mod channel;
pub mod rules;

pub use channel::{now_iso8601, ConfiguredChannel};

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use chorus_engine::runtime::RecordsReader;
use chorus_engine::{Gap, Position, Stamp};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::channel::{recover, RoomStore, RouteError, Router};
use crate::config::{Config, LimitsSection};
use crate::limits::LimitCounter;
use rules::TopicRule;

/// Longest message, in characters after trimming.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// Register space of rooms.
pub const ROOM_SPACE: &str = "room";
/// Register space of memberships (`{user}:{room}`).
pub const MEMBER_SPACE: &str = "member";

type Limiter = DefaultKeyedRateLimiter<(String, String)>;

/// Limiter entries kept before idle ones are dropped.
const LIMITER_PRUNE_AT: usize = 10_000;

/// Rules, rooms and limiters shared by every configured channel of a node.
pub struct App {
    rules: Vec<TopicRule>,
    static_rooms: BTreeMap<String, Option<String>>,
    records: RecordsReader,
    /// Per rule, per rate-limited event.
    limiters: Vec<BTreeMap<String, Limiter>>,
    /// `[limits]`.
    pub(crate) limits: LimitsSection,
    /// Publishes and presence updates per user, all topics
    /// (`limits.user_publish_rate`); `None` when off.
    publishes: Option<DefaultKeyedRateLimiter<String>>,
    /// Presences held per `(user, topic)` on this node, by live joins
    /// (`limits.presences_per_user_topic`). An entry goes with its last join.
    presences: Mutex<HashMap<(String, String), usize>>,
    /// Refusals, by limit.
    counter: LimitCounter,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("rules", &self.rules.len())
            .field("static_rooms", &self.static_rooms)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The channels of `config`, reading and writing `records`.
    pub fn new(config: &Config, records: RecordsReader) -> Arc<Self> {
        let rules = config.topic_rules().to_vec();
        let limiters = rules
            .iter()
            .map(|rule| {
                rule.rate_limit
                    .iter()
                    .filter_map(|(event, per_minute)| {
                        let n = NonZeroU32::new(*per_minute)?;
                        Some((event.clone(), RateLimiter::keyed(Quota::per_minute(n))))
                    })
                    .collect()
            })
            .collect();
        Arc::new(Self {
            rules,
            static_rooms: config
                .rooms
                .iter()
                .map(|r| (r.id.clone(), r.name.clone()))
                .collect(),
            records,
            limiters,
            limits: config.limits.clone(),
            publishes: user_publish_limiter(&config.limits),
            presences: Mutex::new(HashMap::new()),
            counter: LimitCounter::default(),
        })
    }

    /// The counter of the refusals these channels make
    /// (`user_publish_rate`, `presence_meta_bytes`, `presences_per_user_topic`):
    /// hand it to the server (`ServerConfig::limit_counter`) so `/metrics`
    /// shows them.
    pub fn limit_counter(&self) -> LimitCounter {
        self.counter.clone()
    }

    /// Whether a topic pushes a user's socket count (`push_sockets`): only
    /// then must the server track every connection's socket
    /// (`ServerConfig::count_sockets`).
    pub fn counts_sockets(&self) -> bool {
        self.rules.iter().any(|rule| rule.push_sockets)
    }

    /// Counts a refusal for breaching `limit`.
    pub(crate) fn refused(&self, limit: &'static str) {
        self.counter.hit(limit);
    }

    /// Whether `user` may publish or update a presence once more
    /// (`limits.user_publish_rate`, all topics, this node).
    pub(crate) fn allow_publish(&self, user: &str) -> bool {
        let Some(limiter) = &self.publishes else {
            return true;
        };
        if limiter.len() > LIMITER_PRUNE_AT {
            limiter.retain_recent();
        }
        limiter.check_key(&user.to_owned()).is_ok()
    }

    /// Takes one of `user`'s presence slots in `topic`, if
    /// `limits.presences_per_user_topic` leaves one; dropping the slot gives
    /// it back.
    pub(crate) fn presence_slot(self: &Arc<Self>, user: &str, topic: &str) -> Option<PresenceSlot> {
        let max = self.limits.presences_per_user_topic;
        let key = (user.to_owned(), topic.to_owned());
        let mut held = self.presences.lock().expect("presence slots lock");
        let n = held.entry(key.clone()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(PresenceSlot {
            app: self.clone(),
            key,
        })
    }

    /// The backend hooks of the rules and `connect` (`[server] connect_hook`):
    /// `None` when none is configured. Hand them to the server
    /// (`ServerConfig::hooks`): it calls them and attaches the answers to the
    /// frames these channels handle.
    pub fn hooks(
        &self,
        connect: Option<&crate::hooks::HookConfig>,
    ) -> Result<Option<Arc<crate::hooks::Hooks>>, String> {
        let topics: Vec<crate::hooks::TopicHookConfigs<'_>> = self
            .rules
            .iter()
            .map(|r| crate::hooks::TopicHookConfigs {
                join: r.join_hook.as_ref(),
                publish: r.publish_hook.as_ref(),
                rpc: r.rpc_hook.as_ref(),
            })
            .collect();
        let rules = self.rules.clone();
        let route =
            Box::new(move |topic: &str| rules.iter().position(|r| r.matches(topic).is_some()));
        let hooks = crate::hooks::Hooks::new(connect, &topics, route)?;
        Ok((!hooks.is_empty()).then(|| Arc::new(hooks)))
    }

    /// A router sending every topic some rule could match to a
    /// [`ConfiguredChannel`].
    pub fn router(self: &Arc<Self>) -> Result<Router, RouteError> {
        let mut routes: Vec<String> = self.rules.iter().map(TopicRule::route).collect();
        routes.dedup();
        let mut router = Router::new();
        let mut seen = Vec::new();
        for route in routes {
            if seen.contains(&route) {
                continue;
            }
            let app = self.clone();
            router = router.channel(&route, move || ConfiguredChannel::new(app.clone()))?;
            seen.push(route);
        }
        Ok(router)
    }

    /// The first rule matching `topic`, with its bound variables.
    pub fn rule_for(&self, topic: &str) -> Option<(usize, BTreeMap<String, String>)> {
        self.rules
            .iter()
            .enumerate()
            .find_map(|(i, rule)| rule.matches(topic).map(|vars| (i, vars)))
    }

    /// The records replica (history, rooms), for recovery.
    pub(crate) fn records(&self) -> &RecordsReader {
        &self.records
    }

    /// Answers a rejoin's (or `GET /api/history`'s) `since` on `topic` of
    /// recoverable `rule`: the position to start from and every entry it
    /// does not cover, oldest first, or the reason it recovers nothing (all
    /// or nothing): `unknown_position`, `trimmed` (more than the rule's
    /// `history` missed, or dropped), `expired` (older than the rule's
    /// `history_ttl`, or dropped by the cluster's).
    pub(crate) fn recover(
        &self,
        rule: &TopicRule,
        topic: &str,
        since: &str,
    ) -> Result<Recovered, &'static str> {
        let Some(pos) = recover::decode_pos(since) else {
            return Err("unknown_position");
        };
        let entries = self
            .records
            .read()
            .since(topic, &pos)
            .map_err(|gap| match gap {
                Gap::Trimmed => "trimmed",
                Gap::Expired => "expired",
                Gap::Unknown => "unknown_position",
            })?;
        if entries.len() > rule.history {
            return Err("trimmed");
        }
        if let Some(ttl) = rule.history_ttl {
            let oldest = crate::cluster::unix_ms().saturating_sub(ttl.as_millis() as u64);
            if entries.iter().any(|(s, _)| s.time_ms < oldest) {
                return Err("expired");
            }
        }
        // The time is the client's copy's; a channel's position carries
        // none (each `_pos` is stamped when sent), so it compares equal to
        // the node's positions for the shared frames.
        let pos = Position { time_ms: 0, ..pos };
        Ok((pos, entries))
    }

    /// Whether the membership `{user}:{room}` is recorded.
    pub(crate) fn is_member(&self, member: &str) -> bool {
        self.records.read().get(MEMBER_SPACE, member).is_some()
    }

    /// The existing rooms `user` is a member of, in id order.
    pub fn rooms_of(&self, user: &str) -> Vec<String> {
        let prefix = format!("{user}:");
        let ids: Vec<String> = {
            let records = self.records.read();
            records
                .scan(MEMBER_SPACE, &prefix)
                .map(|(k, _)| k[prefix.len()..].to_owned())
                .collect()
        };
        ids.into_iter().filter(|id| self.room_exists(id)).collect()
    }

    /// Whether `user` may push `event` on `topic` once more (rule `rule`).
    pub(crate) fn allow(&self, rule: usize, event: &str, user: &str, topic: &str) -> bool {
        let Some(limiter) = self.limiters[rule].get(event) else {
            return true;
        };
        if limiter.len() > LIMITER_PRUNE_AT {
            limiter.retain_recent();
        }
        limiter
            .check_key(&(user.to_owned(), topic.to_owned()))
            .is_ok()
    }
}

/// A successful recovery: the position to go on from, and the entries the
/// `since` position did not cover, oldest first.
pub(crate) type Recovered = (Position, Vec<(Stamp, Arc<str>)>);

/// One presence a join holds in `(user, topic)`; given back when dropped (the
/// channel ends, however it ends).
#[derive(Debug)]
pub(crate) struct PresenceSlot {
    app: Arc<App>,
    key: (String, String),
}

impl Drop for PresenceSlot {
    fn drop(&mut self) {
        let Ok(mut held) = self.app.presences.lock() else {
            return;
        };
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The per-user limiter of `limits`, `None` when its rate is 0.
fn user_publish_limiter(limits: &LimitsSection) -> Option<DefaultKeyedRateLimiter<String>> {
    let rate = NonZeroU32::new(limits.user_publish_rate)?;
    let burst = NonZeroU32::new(limits.user_publish_burst).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RoomStore for App {
    /// Messages kept per topic history (the engine's log bound).
    fn history_cap(&self) -> usize {
        self.records.read().cap()
    }

    /// Whether room `id` exists: in the config, or created at run time.
    fn room_exists(&self, id: &str) -> bool {
        self.static_rooms.contains_key(id) || self.records.read().get(ROOM_SPACE, id).is_some()
    }

    /// Whether room `id` comes from the config (and cannot be deleted).
    fn is_static_room(&self, id: &str) -> bool {
        self.static_rooms.contains_key(id)
    }

    /// Every room, `(id, name)`, in id order.
    fn rooms(&self) -> Vec<(String, Option<String>)> {
        let mut rooms = self.static_rooms.clone();
        let records = self.records.read();
        for (id, name) in records.scan(ROOM_SPACE, "") {
            rooms
                .entry(id.to_string())
                .or_insert_with(|| Some(name.to_string()).filter(|n| !n.is_empty()));
        }
        rooms.into_iter().collect()
    }

    /// The newest `n` saved messages of `topic`, oldest first, as raw JSON.
    /// On a recoverable topic the log also keeps the other broadcasts: only
    /// the saved messages among them are listed.
    fn history(&self, topic: &str, n: usize) -> Vec<Box<RawValue>> {
        let records = self.records.read();
        let mut out: Vec<Box<RawValue>> = records
            .last(topic, records.cap())
            .into_iter()
            .rev()
            .filter_map(|(_, body)| match recover::parse_entry(&body) {
                Some(entry) => (entry.saved == 1).then_some(entry.payload),
                None if recover::is_entry(&body) => None,
                None => RawValue::from_string(body.to_string()).ok(),
            })
            .take(n)
            .collect();
        out.reverse();
        out
    }

    fn room_space(&self) -> &str {
        ROOM_SPACE
    }

    /// Whether a recoverable rule matches `topic`.
    fn recoverable(&self, topic: &str) -> bool {
        self.rule_for(topic)
            .is_some_and(|(i, _)| self.rules[i].recover)
    }

    /// `GET /api/history?since=`: what a rejoin with `since` would get, as
    /// `{"recovered": true, "pos", "messages": [{"event", "payload"}]}` (each
    /// payload with its `_id` and `_pos`) or `{"recovered": false, "reason"}`.
    /// A topic no recoverable rule matches has no positions:
    /// `unknown_position`.
    fn history_since(&self, topic: &str, since: &str) -> Value {
        let rule = self
            .rule_for(topic)
            .map(|(i, _)| &self.rules[i])
            .filter(|rule| rule.recover);
        let found = match rule {
            Some(rule) => self.recover(rule, topic, since),
            None => Err("unknown_position"),
        };
        let (mut pos, entries) = match found {
            Ok(found) => found,
            Err(why) => return json!({ "recovered": false, "reason": why }),
        };
        let mut messages = Vec::new();
        for (stamp, body) in entries {
            pos.advance(&stamp.origin, stamp.seq);
            let Some(entry) = recover::parse_entry(&body) else {
                continue;
            };
            let payload = recover::with_pos(
                entry.payload.get(),
                &recover::message_id(&stamp),
                &recover::encode_pos(&pos),
            );
            if let Some(payload) = payload {
                messages.push(json!({ "event": entry.event, "payload": payload.into_raw() }));
            }
        }
        json!({
            "recovered": true,
            "pos": recover::encode_pos(&pos),
            "messages": messages,
        })
    }
}
