//! [`ConfiguredChannel`]: one instance per join of a topic some [`TopicRule`]
//! matches, doing what the rule says.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use chorus_engine::{NodeId, Position, Stamp};
use serde_json::{json, Map, Value};

use super::rules::{EventAction, JoinRule, TopicRule};
use super::{App, PresenceSlot, MAX_MESSAGE_CHARS, MEMBER_SPACE};
use crate::channel::recover::{self, Logged, LOGGED_EVENT};
use crate::channel::{
    reason, Channel, ChannelContext, HandleIn, HandleInfo, Info, JoinResult, PresenceCount, Reply,
    RoomStore, SocketAssigns,
};
use crate::hooks::{JoinDecision, PublishDecision, RpcDecision};
use crate::protocol::{encode_broadcast, JsonObject, Payload};
use crate::token::socket_id;
use crate::topics;

/// A channel following the [`TopicRule`] its topic matches.
#[derive(Debug)]
pub struct ConfiguredChannel {
    app: Arc<App>,
    rule: usize,
    /// The rule's variables bound by the topic (a few: a slice, not a map
    /// node). Boxed slices and strings, and the rarely used state below
    /// boxed: every joined channel keeps this for the life of its join.
    vars: Box<[(Box<str>, Box<str>)]>,
    user: Box<str>,
    name: Box<str>,
    /// The meta tracked for the user, when the rule tracks presence.
    meta: Option<Box<Map<String, Value>>>,
    /// The presence this join holds in `(user, topic)`, counted against
    /// `limits.presences_per_user_topic`.
    slot: Option<PresenceSlot>,
    /// On a recoverable topic: what this client has received.
    stream: Option<Box<Stream>>,
}

/// Most entries a client may hold ahead of a hole in an origin's sequence;
/// beyond, later ones are pushed again once the hole is filled.
const MAX_AHEAD: usize = 4096;

/// What a client of a recoverable topic has: its position, and the entries
/// pushed to it ahead of a hole in their origin's sequence (an entry that
/// reached this node before an earlier one of the same origin), which the
/// position does not claim until the hole is filled.
#[derive(Debug, Default)]
struct Stream {
    /// Shared with the other clients of this node at the same position
    /// (see [`recover::Fanout`]); changed copy-on-write.
    pos: Arc<Position>,
    ahead: BTreeSet<(NodeId, u64)>,
}

impl ConfiguredChannel {
    /// A channel instance for one join.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            app,
            rule: 0,
            vars: Box::default(),
            user: Box::default(),
            name: Box::default(),
            meta: None,
            slot: None,
            stream: None,
        }
    }

    /// Sends a logged entry to the client with `_id` and `_pos`; with
    /// `advance`, the position covers it first. `live`: as a broadcast frame
    /// (`[null, null, ...]`, as every live message of the topic); else pushed
    /// (a recovery during the join). A body that is not a recoverable
    /// broadcast (history kept before `recover` was set) is covered but not
    /// sent.
    fn push_entry(
        &mut self,
        ctx: &mut ChannelContext<'_>,
        stamp: &Stamp,
        body: &str,
        advance: bool,
        live: bool,
    ) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if advance {
            Arc::make_mut(&mut stream.pos).advance(&stamp.origin, stamp.seq);
        }
        let Some(entry) = recover::parse_entry(body) else {
            return;
        };
        let id = recover::message_id(stamp);
        let pos = recover::encode_pos(&stream.pos);
        let Some(payload) = recover::with_pos(entry.payload.get(), &id, &pos) else {
            return;
        };
        if !live {
            ctx.push(entry.event, Payload::Json(payload));
        } else if let Ok(frame) =
            encode_broadcast(ctx.topic(), &entry.event, Payload::Json(payload))
        {
            ctx.forward(Arc::new(frame));
        }
    }

    /// A logged entry reached this node. A client at the position another
    /// channel of this node already sent it from gets the same frame
    /// ([`recover::Fanout`]). Otherwise: push what the client lacks of its
    /// origin, in order, from the records replica (which already holds it),
    /// offering the entry's frame to the others when this client was right
    /// before it. An entry past a hole is pushed at once but not claimed by
    /// `_pos`.
    fn handle_logged(&mut self, payload: &str, ctx: &mut ChannelContext<'_>) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if stream.ahead.is_empty() {
            let shared = attached::<recover::Fanout>(ctx)
                .and_then(|fanout| fanout.for_position(&stream.pos))
                .map(|fast| (fast.after.clone(), fast.frame.clone()));
            if let Some((after, frame)) = shared {
                stream.pos = after;
                ctx.forward(frame);
                return;
            }
        }
        let Some((stamp, body)) = Logged::parse(payload) else {
            return;
        };
        let key = (stamp.origin.clone(), stamp.seq);
        if stream.pos.covers(&stamp.origin, stamp.seq) || stream.ahead.contains(&key) {
            return;
        }
        if stream.ahead.is_empty() && stamp.seq == stream.pos.get(&stamp.origin) + 1 {
            self.push_first(ctx, &stamp, body.get());
        }
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let have = stream.pos.get(&stamp.origin);
        let entries = self
            .app
            .records()
            .read()
            .after(ctx.topic(), &stamp.origin, have);
        for (s, b) in entries {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            if s.seq != stream.pos.get(&s.origin) + 1 {
                break;
            }
            if stream.ahead.remove(&(s.origin.clone(), s.seq)) {
                Arc::make_mut(&mut stream.pos).advance(&s.origin, s.seq);
                continue;
            }
            self.push_entry(ctx, &s, &b, true, true);
        }
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if !stream.pos.covers(&stamp.origin, stamp.seq) && !stream.ahead.contains(&key) {
            if stream.ahead.len() < MAX_AHEAD {
                stream.ahead.insert(key);
            }
            self.push_entry(ctx, &stamp, body.get(), false, true);
        }
    }

    /// Sends the logged entry `stamp` to a client right before it (nothing
    /// ahead, the next of its origin) and offers the frame to the other
    /// channels of this node at the same position.
    fn push_first(&mut self, ctx: &mut ChannelContext<'_>, stamp: &Stamp, body: &str) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let Some(entry) = recover::parse_entry(body) else {
            // Not a broadcast: covered, nothing to send (as push_entry does).
            Arc::make_mut(&mut stream.pos).advance(&stamp.origin, stamp.seq);
            return;
        };
        let before = stream.pos.clone();
        let mut after = (*before).clone();
        after.advance(&stamp.origin, stamp.seq);
        let after = Arc::new(after);
        let payload = recover::with_pos(
            entry.payload.get(),
            &recover::message_id(stamp),
            &recover::encode_pos(&after),
        );
        stream.pos = after.clone();
        let frame = payload.and_then(|payload| {
            encode_broadcast(ctx.topic(), &entry.event, Payload::Json(payload)).ok()
        });
        let Some(frame) = frame.map(Arc::new) else {
            return;
        };
        ctx.forward(frame.clone());
        if let Some(fanout) = attached::<recover::Fanout>(ctx) {
            fanout.offer(recover::Fast {
                before,
                after,
                frame,
            });
        }
    }

    /// Publishes `event` on `topic`: on a recoverable topic a JSON object
    /// payload goes into the topic's log (and reaches subscribers from
    /// there); anything else is a plain broadcast.
    fn publish_to(
        &self,
        ctx: &mut ChannelContext<'_>,
        topic: String,
        event: &str,
        payload: Payload,
        saved: bool,
    ) {
        match payload {
            Payload::Json(json) if self.rule().recover => {
                ctx.append(topic, recover::entry(event, &json, saved));
            }
            payload => ctx.broadcast_to(topic, event, payload),
        }
    }

    fn rule(&self) -> &TopicRule {
        &self.app.rules[self.rule]
    }

    /// The value of the topic's variable `name`.
    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// The topic of the same rule with `{id}` bound to `id`.
    fn topic_for(&self, id: &str) -> String {
        self.rule()
            .pattern
            .split(':')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some("id") => id.to_owned(),
                    Some(name) => self.var(name).unwrap_or_default().to_owned(),
                    None => seg.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join(":")
    }

    fn authorized(&self, join: JoinRule, assigns: &SocketAssigns) -> bool {
        let claim = |name: &str| assigns.get(name).and_then(Value::as_str);
        let var = |name: &str| self.var(name);
        let in_org = || claim("org").is_some() && claim("org") == var("org");
        match join {
            JoinRule::Anyone => true,
            JoinRule::User => var("id") == Some(&*self.user),
            JoinRule::Org => in_org(),
            JoinRule::Team => {
                in_org()
                    && assigns
                        .get("teams")
                        .and_then(Value::as_array)
                        .is_some_and(|teams| teams.iter().any(|t| t.as_str() == var("team")))
            }
        }
    }

    /// A saved item: `{id, user_id, username, body, inserted_at}`.
    fn item(&self, body: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(new_id()));
        m.insert("user_id".into(), Value::from(&*self.user));
        m.insert("username".into(), Value::from(&*self.name));
        m.insert("body".into(), Value::from(body));
        m.insert("inserted_at".into(), Value::from(now_iso8601()));
        m
    }

    fn handle_message(
        &mut self,
        payload: &Payload,
        skip_history: bool,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        let text = match validated_text(payload, "message") {
            Ok(text) => text,
            Err(errors) => return refuse(ctx, validation_error(errors)),
        };
        let item = object(&Value::Object(self.item(&text)));
        let topic = ctx.topic().to_owned();
        if !skip_history && !self.rule().recover {
            ctx.append(topic.clone(), item.clone());
        }
        // On a recoverable topic it goes into the log either way (recoverable),
        // listed in messages_history unless the publish hook said skip_history.
        self.publish_to(
            ctx,
            topic,
            "message",
            Payload::Json(item.clone()),
            !skip_history,
        );
        HandleIn::Reply(Reply::ok_with(Payload::Json(item)))
    }

    fn handle_notify(
        &mut self,
        payload: &Payload,
        skip_history: bool,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        let fields = json_fields(payload);
        let target = fields
            .as_ref()
            .and_then(|f| f.get("user_id"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && !t.contains(':'));
        let Some(target) = target.map(str::to_owned) else {
            return refuse(
                ctx,
                validation_error(json!({"user_id": ["can't be blank"]})),
            );
        };
        let text = match validated_text(payload, "message") {
            Ok(text) => text,
            Err(errors) => return refuse(ctx, validation_error(errors)),
        };
        let friend = ctx
            .assigns()
            .get("friends")
            .and_then(Value::as_array)
            .is_some_and(|friends| friends.iter().any(|f| f.as_str() == Some(&target)));
        if !friend {
            return HandleIn::Reply(Reply::error(reason("unauthorized")));
        }
        let mut item = self.item(&text);
        item.insert("to".into(), Value::from(target.clone()));
        let item = object(&Value::Object(item));
        let to = self.topic_for(&target);
        if !skip_history && !self.rule().recover {
            ctx.append(to.clone(), item.clone());
        }
        self.publish_to(
            ctx,
            to,
            "new_notification",
            Payload::Json(item.clone()),
            !skip_history,
        );
        HandleIn::Reply(Reply::ok_with(Payload::Json(item)))
    }

    fn handle_update_presence(
        &mut self,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        let (Some(fields), Some(meta)) = (json_fields(payload), self.meta.as_ref()) else {
            return refuse(ctx, validation_error(json!({"meta": ["is invalid"]})));
        };
        let mut meta = Map::clone(meta);
        for (k, v) in fields {
            if k != "phx_ref" && k != "phx_ref_prev" {
                meta.insert(k, v);
            }
        }
        let encoded = object(&Value::Object(meta));
        if let Err(refusal) = self.check_meta(&encoded) {
            // The meta stays as it was.
            return refuse(ctx, refusal);
        }
        self.meta = serde_json::from_str(encoded.as_str()).ok().map(Box::new);
        ctx.update(self.user.to_string(), encoded);
        HandleIn::Reply(Reply::ok())
    }
}

impl ConfiguredChannel {
    /// `Ok` if `meta` fits `limits.presence_meta_bytes` (its JSON encoding,
    /// the `phx_ref` the engine adds aside); else the refusal to answer.
    fn check_meta(&self, meta: &JsonObject) -> Result<(), JsonObject> {
        let max = self.app.limits.presence_meta_bytes;
        let len = meta.as_str().len();
        if max == 0 || len <= max {
            return Ok(());
        }
        self.app.refused("presence_meta_bytes");
        Err(object(&json!({
            "reason": "presence_meta_too_large",
            "bytes": len,
            "max_bytes": max,
        })))
    }
}

impl Channel for ConfiguredChannel {
    fn join(&mut self, topic: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> JoinResult {
        let since = json_fields(&payload).and_then(|mut f| f.remove("since"));
        let Some((rule, vars)) = self.app.rule_for(topic) else {
            return Err(reason("unmatched topic"));
        };
        self.rule = rule;
        self.vars = vars
            .into_iter()
            .map(|(k, v)| (Box::from(k), Box::from(v)))
            .collect();
        let Some(user) = ctx.assigns().get("user_id").and_then(Value::as_str) else {
            return Err(reason("unauthorized"));
        };
        self.user = user.into();
        self.name = ctx
            .assigns()
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(user)
            .into();
        let rule = self.app.rules[self.rule].clone();
        // The backend's answer, when the rule has a join hook (the transport
        // called it before handing the join in; none attached: fail closed).
        let hooked = match rule
            .join_hook
            .as_ref()
            .map(|_| attached::<JoinDecision>(ctx))
        {
            None => None,
            Some(Some(JoinDecision::Allow { response, meta })) => {
                Some((response.clone(), meta.clone()))
            }
            Some(Some(JoinDecision::Deny(why))) => return Err(reason(why)),
            Some(None) => return Err(reason("hook_unavailable")),
        };
        let (hook_response, hook_meta) = hooked.unwrap_or_default();
        if !self.authorized(rule.join, ctx.assigns()) {
            return Err(reason("unauthorized"));
        }
        if rule.room {
            let id = self.var("id").unwrap_or_default().to_owned();
            if !self.app.room_exists(&id) {
                return Err(reason("room_not_found"));
            }
            let member = format!("{}:{id}", self.user);
            // One replicated write per new membership, not one per join.
            if !self.app.is_member(&member) {
                ctx.put(MEMBER_SPACE, &member, Some(String::new()));
            }
        }
        // The backend's join data first: the built-in keys win over it.
        let mut response = hook_response;
        let mut recovered = None;
        if rule.recover {
            let mut stream = Stream::default();
            if let Some(since) = &since {
                match self.app.recover(&rule, topic, since.as_str().unwrap_or("")) {
                    Ok((pos, entries)) => {
                        stream.pos = Arc::new(pos);
                        recovered = Some(entries);
                    }
                    Err(why) => {
                        response.insert("recovered".into(), Value::Bool(false));
                        response.insert("reason".into(), Value::from(why));
                    }
                }
            }
            if recovered.is_none() {
                stream.pos = Arc::new(self.app.records().read().position(topic));
            }
            self.stream = Some(Box::new(stream));
        }
        if let Some(entries) = recovered {
            for (stamp, body) in entries {
                self.push_entry(ctx, &stamp, &body, true, false);
            }
            response.insert("recovered".into(), Value::Bool(true));
        } else if rule.history > 0 {
            let messages = self.app.history(topic, rule.history);
            ctx.push(
                "messages_history",
                Payload::Json(object(&json!({ "messages": messages }))),
            );
        }
        if rule.presence {
            let mut meta = Map::new();
            meta.insert("online_at".into(), Value::from(now_iso8601()));
            meta.insert("username".into(), Value::from(&*self.name));
            for (k, v) in hook_meta {
                if k != "phx_ref" && k != "phx_ref_prev" {
                    meta.insert(k, v);
                }
            }
            let encoded = object(&Value::Object(meta.clone()));
            self.check_meta(&encoded).map_err(Payload::Json)?;
            let Some(slot) = self.app.presence_slot(&self.user, topic) else {
                self.app.refused("presences_per_user_topic");
                return Err(reason("too_many_presences"));
            };
            self.slot = Some(slot);
            ctx.track(self.user.to_string(), encoded);
            self.meta = Some(Box::new(meta));
        }
        if rule.push_sockets {
            ctx.count_presence(topics::socket_topic(&socket_id(&self.user)));
        }
        if let Some(stream) = &self.stream {
            response.insert("pos".into(), Value::from(recover::encode_pos(&stream.pos)));
        }
        if rule.reply_rooms {
            // The built-in key wins over the backend's.
            let rooms = self.app.rooms_of(&self.user);
            response.insert("rooms".into(), json!(rooms));
        }
        if response.is_empty() {
            return Ok(None);
        }
        Ok(Some(Payload::Json(object(&Value::Object(response)))))
    }

    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        let rule = self.rule();
        let rpc = rule.is_rpc(event);
        let hooked = rule.is_hooked_publish(event);
        let action = rule.events.get(event).copied();
        if action.is_none() && !rpc {
            return refuse(ctx, object(&json!({"reason": "unknown_event"})));
        }
        if !self.app.allow(self.rule, event, &self.user, ctx.topic()) {
            self.app.refused("rate_limit");
            return refuse(ctx, object(&json!({"reason": "rate_limit_exceeded"})));
        }
        let Some(action) = action else {
            // An rpc event: the backend's answer is the reply; nothing else happens.
            return HandleIn::Reply(match attached::<RpcDecision>(ctx) {
                Some(RpcDecision::Reply(reply)) => Reply::ok_with(reply.clone()),
                Some(RpcDecision::Error(why)) => Reply::error(reason(why)),
                None => Reply::error(reason("hook_unavailable")),
            });
        };
        if action.publishes() && !self.app.allow_publish(&self.user) {
            self.app.refused("user_publish_rate");
            return refuse(ctx, object(&json!({"reason": "rate_limit_exceeded"})));
        }
        let (payload, hook_reply, skip_history) = if hooked {
            match attached::<PublishDecision>(ctx) {
                Some(PublishDecision::Allow {
                    payload: replacement,
                    reply,
                    skip_history,
                }) => (
                    replacement.clone().unwrap_or(payload),
                    reply.clone(),
                    *skip_history,
                ),
                Some(PublishDecision::Deny(why)) => {
                    return refuse(ctx, object(&json!({ "reason": why })))
                }
                None => return refuse(ctx, object(&json!({"reason": "hook_unavailable"}))),
            }
        } else {
            (payload, None, false)
        };
        let handled = self.run_action(action, event, payload, skip_history, ctx);
        match (handled, hook_reply) {
            // The backend's reply data answers an accepted push.
            (HandleIn::Reply(reply), Some(data)) if reply.status == "ok" => {
                HandleIn::Reply(Reply::ok_with(data))
            }
            (handled, _) => handled,
        }
    }

    fn intercepts(&self) -> &[&str] {
        if self.stream.is_some() {
            &[LOGGED_EVENT]
        } else {
            &[]
        }
    }

    fn handle_out(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleInfo {
        if let (LOGGED_EVENT, Payload::Json(json)) = (event, payload) {
            self.handle_logged(json.as_str(), ctx);
        }
        HandleInfo::NoReply
    }

    fn handle_info(&mut self, msg: Info, ctx: &mut ChannelContext<'_>) -> HandleInfo {
        if let Ok(count) = msg.downcast::<PresenceCount>() {
            let init = json!({ "user_id": self.user, "sockets": count.count });
            ctx.push("init", Payload::Json(object(&init)));
        }
        HandleInfo::NoReply
    }
}

impl ConfiguredChannel {
    /// Carries out `action` for an accepted push of `event`.
    fn run_action(
        &mut self,
        action: EventAction,
        event: &str,
        payload: Payload,
        skip_history: bool,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        match action {
            EventAction::Message => self.handle_message(&payload, skip_history, ctx),
            EventAction::Notify => self.handle_notify(&payload, skip_history, ctx),
            EventAction::UpdatePresence => self.handle_update_presence(&payload, ctx),
            EventAction::Broadcast => {
                let topic = ctx.topic().to_owned();
                self.publish_to(ctx, topic, event, payload, false);
                HandleIn::Reply(Reply::ok())
            }
            EventAction::BroadcastFrom => {
                ctx.broadcast_from(event, payload);
                HandleIn::Reply(Reply::ok())
            }
            EventAction::Echo => HandleIn::Reply(Reply::ok_with(payload)),
        }
    }
}

/// What the transport attached to the frame being handled, if it is a `T`.
fn attached<'c, T: 'static>(ctx: &'c ChannelContext<'_>) -> Option<&'c T> {
    ctx.attached().and_then(|a| a.downcast_ref::<T>())
}

/// Answers the push with an error and pushes `error` with the same payload.
fn refuse(ctx: &mut ChannelContext<'_>, payload: JsonObject) -> HandleIn {
    ctx.push("error", Payload::Json(payload.clone()));
    HandleIn::Reply(Reply::error(Payload::Json(payload)))
}

fn validation_error(errors: Value) -> JsonObject {
    object(&json!({ "reason": "validation_error", "errors": errors }))
}

fn object(value: &Value) -> JsonObject {
    JsonObject::from_value(value).expect("a JSON map serializes to an object")
}

fn json_fields(payload: &Payload) -> Option<Map<String, Value>> {
    match payload {
        Payload::Json(json) => serde_json::from_str(json.as_str()).ok(),
        Payload::Binary(_) => None,
    }
}

/// The trimmed string field `field`, 1 to [`MAX_MESSAGE_CHARS`] characters,
/// or the errors in Ecto's words.
fn validated_text(payload: &Payload, field: &str) -> Result<String, Value> {
    let fields = json_fields(payload).unwrap_or_default();
    let text = match fields.get(field) {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(json!({ field: ["is invalid"] })),
    };
    let chars = text.chars().count();
    if chars == 0 {
        Err(json!({ field: ["can't be blank"] }))
    } else if chars > MAX_MESSAGE_CHARS {
        Err(json!({ field: [format!("should be at most {MAX_MESSAGE_CHARS} character(s)")] }))
    } else {
        Ok(text.to_owned())
    }
}

/// 16 url-safe random characters.
fn new_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
}

/// Now, as ISO 8601 in UTC with milliseconds (`2026-11-26T13:40:00.123Z`).
pub fn now_iso8601() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
