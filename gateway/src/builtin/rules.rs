//! Topic rules: the `[[topics]]` of the configuration. A rule matches topics by
//! a pattern with named segments (`org:{org}:team:{team}`) and says who may
//! join, what the join does, which client events are accepted and how often.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::hooks::HookConfig;

/// Who may join a topic.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinRule {
    /// Any authenticated user.
    #[default]
    Anyone,
    /// Only the user named by `{id}` (the token's `sub`).
    User,
    /// Users whose `org` claim equals `{org}`.
    Org,
    /// Users of org `{org}` with `{team}` in their `teams` claim.
    Team,
}

/// What an accepted client event does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// `{"message": text}`: validated (1 to 4,000 characters after trimming),
    /// stored in the topic's history, broadcast as `message`, and the push is
    /// answered with the saved message.
    Message,
    /// Merges the pushed object into the user's presence meta.
    UpdatePresence,
    /// `{"user_id": target, "message": text}`: delivered as `new_notification`
    /// to `notifications:{target}` and kept in its history, if the target is in
    /// the sender's `friends` claim.
    Notify,
    /// Broadcasts the payload as is, under the same event, to the whole topic.
    Broadcast,
    /// Broadcasts the payload as is to the topic, except the sender.
    BroadcastFrom,
    /// Replies `ok` with the payload as is (JSON or binary): a round-trip probe.
    Echo,
}

impl EventAction {
    /// Whether the event publishes or changes a presence, so counts against
    /// `limits.user_publish_rate` (everything but `echo`).
    pub fn publishes(self) -> bool {
        !matches!(self, Self::Echo)
    }
}

/// One `[[topics]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// `prefix:{name}:literal:{name}`: literal segments match exactly, `{name}`
    /// matches one non-empty segment without `:`.
    pub pattern: String,
    /// Who may join.
    #[serde(default)]
    pub join: JoinRule,
    /// The topic is a room: the join fails with `room_not_found` unless room
    /// `{id}` exists, and joining makes the user a member.
    #[serde(default)]
    pub room: bool,
    /// Track the user's presence with `online_at` and `username`.
    #[serde(default)]
    pub presence: bool,
    /// Messages of the topic's history pushed after the join
    /// (`messages_history`); 0: no history.
    #[serde(default)]
    pub history: usize,
    /// After the join, push `init` `{"user_id", "sockets"}`: how many sockets
    /// the user has open across the cluster.
    #[serde(default)]
    pub push_sockets: bool,
    /// The join reply is `{"rooms": [...]}`: the rooms the user is a member of.
    #[serde(default)]
    pub reply_rooms: bool,
    /// Client events accepted, and what each does. Others are answered with
    /// `unknown_event`.
    #[serde(default)]
    pub events: BTreeMap<String, EventAction>,
    /// Most pushes of an event per minute per user and topic, by event.
    #[serde(default)]
    pub rate_limit: BTreeMap<String, u32>,
    /// A backend asked about every join (README "Backend hooks").
    #[serde(default)]
    pub join_hook: Option<HookConfig>,
    /// A backend asked about every push of its `events` (events of `events`).
    #[serde(default)]
    pub publish_hook: Option<HookConfig>,
    /// A backend that answers every push of its `events` (not in `events`):
    /// the push is answered with the backend's reply, nothing is broadcast.
    #[serde(default)]
    pub rpc_hook: Option<HookConfig>,
    /// The topic is recoverable: every broadcast whose payload is a JSON
    /// object is kept in the topic's history and delivered with `_id` and
    /// `_pos`; a join with `{"since": pos}` gets what it missed (PROTOCOL.md
    /// of this repository). Needs `history` > 0.
    #[serde(default)]
    pub recover: bool,
    /// How far back a recovery may reach (`"10m"`): a gap holding a message
    /// older than this answers `recovered: false` (`expired`). At most
    /// `cluster.history_ttl`, which bounds what is kept at all; unset: that.
    #[serde(default, deserialize_with = "opt_duration")]
    pub history_ttl: Option<std::time::Duration>,
}

/// An optional humane duration string (`"10m"`).
fn opt_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"10m\" or \"24h\""
        ))
    })
}

/// A pattern segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(String),
}

/// A pattern's segments: `{name}` is a variable, anything else a literal.
fn pattern_segments(pattern: &str) -> Vec<Segment> {
    pattern
        .split(':')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Var(name.to_owned()),
                None => Segment::Literal(s.to_owned()),
            },
        )
        .collect()
}

/// `pattern`'s variables bound to `topic`'s segments, if `topic` matches it
/// (the topic pattern syntax of `[[topics]]`, also used by `[[webhooks]]`).
pub fn match_pattern(pattern: &str, topic: &str) -> Option<BTreeMap<String, String>> {
    let segments = pattern_segments(pattern);
    let parts: Vec<&str> = topic.split(':').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut vars = BTreeMap::new();
    for (seg, part) in segments.iter().zip(parts) {
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Var(name) if !part.is_empty() => {
                vars.insert(name.clone(), part.to_owned());
            }
            _ => return None,
        }
    }
    Some(vars)
}

impl TopicRule {
    fn segments(&self) -> Vec<Segment> {
        pattern_segments(&self.pattern)
    }

    /// The pattern's variables bound to `topic`'s segments, if it matches.
    pub fn matches(&self, topic: &str) -> Option<BTreeMap<String, String>> {
        match_pattern(&self.pattern, topic)
    }

    /// The literal prefix before the first variable, for the router
    /// (`org:{org}:team:{team}` routes as `org:*`).
    pub fn route(&self) -> String {
        match self.pattern.find('{') {
            Some(i) => format!("{}*", &self.pattern[..i]),
            None => self.pattern.clone(),
        }
    }

    /// Whether `event` is one of the `rpc_hook`'s events.
    pub fn is_rpc(&self, event: &str) -> bool {
        self.rpc_hook
            .as_ref()
            .is_some_and(|h| h.events.iter().any(|e| e == event))
    }

    /// Whether `event` goes through the `publish_hook`.
    pub fn is_hooked_publish(&self, event: &str) -> bool {
        self.publish_hook
            .as_ref()
            .is_some_and(|h| h.events.iter().any(|e| e == event))
    }

    /// Checks the rule against itself and the history bounds.
    pub fn check(
        &self,
        history_cap: usize,
        cluster_ttl: std::time::Duration,
    ) -> Result<(), String> {
        if self.recover && self.history == 0 {
            return Err("`recover = true` needs `history` > 0".into());
        }
        if let Some(ttl) = self.history_ttl {
            if !self.recover {
                return Err("`history_ttl` needs `recover = true`".into());
            }
            if ttl.is_zero() {
                return Err("history_ttl must be at least 1ms".into());
            }
            if ttl > cluster_ttl {
                return Err(format!(
                    "history_ttl = {} exceeds cluster.history_ttl = {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(cluster_ttl)
                ));
            }
        }
        let segments = self.segments();
        let has = |name: &str| segments.contains(&Segment::Var(name.to_owned()));
        for seg in &segments {
            match seg {
                Segment::Literal(l) if l.is_empty() || l.contains(['{', '}', '*']) => {
                    return Err(format!("bad segment {l:?} (use {{name}} for variables)"));
                }
                Segment::Var(v) if v.is_empty() => return Err("empty variable name".into()),
                _ => {}
            }
        }
        if !matches!(segments.first(), Some(Segment::Literal(_))) {
            return Err("the pattern must start with a literal segment".into());
        }
        let needs: &[&str] = match self.join {
            JoinRule::Anyone => &[],
            JoinRule::User => &["id"],
            JoinRule::Org => &["org"],
            JoinRule::Team => &["org", "team"],
        };
        if self.room && !has("id") {
            return Err("`room = true` needs an {id} segment".into());
        }
        for need in needs {
            if !has(need) {
                return Err(format!("join = {:?} needs a {{{need}}} segment", self.join));
            }
        }
        if self.history > history_cap {
            return Err(format!(
                "history = {} exceeds cluster.history_cap = {history_cap}",
                self.history
            ));
        }
        let message_events = self.events.values().any(|a| *a == EventAction::Message);
        if message_events && self.history == 0 {
            return Err("a `message` event needs `history` > 0 to store messages".into());
        }
        if self
            .events
            .values()
            .any(|a| *a == EventAction::UpdatePresence)
            && !self.presence
        {
            return Err("`update_presence` needs `presence = true`".into());
        }
        if let Some(hook) = &self.join_hook {
            hook.check().map_err(|e| format!("join_hook: {e}"))?;
            if !hook.events.is_empty() {
                return Err("join_hook: `events` is for publish_hook and rpc_hook".into());
            }
        }
        if let Some(hook) = &self.publish_hook {
            hook.check().map_err(|e| format!("publish_hook: {e}"))?;
            if hook.events.is_empty() {
                return Err("publish_hook: `events` must list the events it decides on".into());
            }
            if let Some(e) = hook.events.iter().find(|e| !self.events.contains_key(*e)) {
                return Err(format!("publish_hook: event {e:?} is not in `events`"));
            }
        }
        if let Some(hook) = &self.rpc_hook {
            hook.check().map_err(|e| format!("rpc_hook: {e}"))?;
            if hook.events.is_empty() {
                return Err("rpc_hook: `events` must list the events it answers".into());
            }
            if let Some(e) = hook.events.iter().find(|e| self.events.contains_key(*e)) {
                return Err(format!(
                    "rpc_hook: event {e:?} is also in `events` (an event is either one)"
                ));
            }
            if let Some(e) = hook.events.iter().find(|e| e.starts_with("phx_")) {
                return Err(format!("rpc_hook: event {e:?} is reserved"));
            }
        }
        for (event, limit) in &self.rate_limit {
            if !self.events.contains_key(event) && !self.is_rpc(event) {
                return Err(format!(
                    "rate_limit for {event:?}, which is not in `events` nor rpc_hook.events"
                ));
            }
            if *limit == 0 {
                return Err(format!("rate_limit for {event:?} must be at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str) -> TopicRule {
        TopicRule {
            pattern: pattern.into(),
            join: JoinRule::Anyone,
            room: false,
            presence: false,
            history: 0,
            push_sockets: false,
            reply_rooms: false,
            events: BTreeMap::new(),
            rate_limit: BTreeMap::new(),
            join_hook: None,
            publish_hook: None,
            rpc_hook: None,
            recover: false,
            history_ttl: None,
        }
    }

    #[test]
    fn patterns_bind_named_segments() {
        let r = rule("org:{org}:team:{team}");
        let vars = r.matches("org:7:team:3").expect("matches");
        assert_eq!(vars["org"], "7");
        assert_eq!(vars["team"], "3");
        assert_eq!(r.matches("org:7"), None);
        assert_eq!(r.matches("org:7:team:"), None);
        assert_eq!(r.matches("org:7:group:3"), None);
        assert_eq!(rule("org:{org}").matches("org:7:team:3"), None);
        assert_eq!(r.route(), "org:*");
        assert_eq!(rule("rooms:user:{id}").route(), "rooms:user:*");
    }

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    #[test]
    fn recover_needs_history_and_its_ttl_stays_within_the_cluster_one() {
        let mut r = rule("room:{id}");
        r.recover = true;
        assert!(r.check(100, DAY).unwrap_err().contains("history"));
        r.history = 50;
        assert_eq!(r.check(100, DAY), Ok(()));
        r.history_ttl = Some(std::time::Duration::from_secs(600));
        assert_eq!(r.check(100, DAY), Ok(()));
        r.history_ttl = Some(2 * DAY);
        assert!(r
            .check(100, DAY)
            .unwrap_err()
            .contains("cluster.history_ttl"));
        r.recover = false;
        r.history_ttl = Some(std::time::Duration::from_secs(600));
        assert!(r.check(100, DAY).unwrap_err().contains("recover"));
        let parsed: TopicRule = toml::from_str(
            "pattern = \"chat:{id}\"\nhistory = 5\nrecover = true\nhistory_ttl = \"10m\"\n",
        )
        .expect("parses");
        assert_eq!(
            parsed.history_ttl,
            Some(std::time::Duration::from_secs(600))
        );
        assert!(
            toml::from_str::<TopicRule>("pattern = \"c:{id}\"\nhistory_ttl = \"soon\"\n").is_err()
        );
    }

    #[test]
    fn checks_catch_inconsistent_rules() {
        let mut r = rule("x:{id}");
        r.join = JoinRule::Team;
        assert!(r.check(100, DAY).unwrap_err().contains("{org}"));
        let mut r = rule("room:{id}");
        r.history = 500;
        assert!(r.check(100, DAY).unwrap_err().contains("history_cap"));
        let mut r = rule("room:{id}");
        r.events.insert("new_message".into(), EventAction::Message);
        assert!(r.check(100, DAY).unwrap_err().contains("history"));
        r.history = 50;
        r.rate_limit.insert("typo".into(), 5);
        assert!(r.check(100, DAY).unwrap_err().contains("typo"));
        assert!(rule("{id}").check(100, DAY).is_err());
        assert!(rule("room:*").check(100, DAY).is_err());
    }

    fn hook(url: &str, events: &[&str]) -> HookConfig {
        HookConfig {
            url: url.into(),
            timeout_ms: 1000,
            forward_headers: Vec::new(),
            max_concurrency: 8,
            events: events.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn checks_catch_inconsistent_hooks() {
        let mut r = rule("room:{id}");
        r.events.insert("shout".into(), EventAction::Broadcast);
        r.join_hook = Some(hook("http://127.0.0.1:9000/join", &[]));
        r.publish_hook = Some(hook("http://127.0.0.1:9000/p", &["shout"]));
        r.rpc_hook = Some(hook("https://backend.example/rpc", &["ask"]));
        r.rate_limit.insert("ask".into(), 10);
        assert_eq!(r.check(100, DAY), Ok(()));
        assert!(r.is_rpc("ask") && !r.is_rpc("shout"));
        assert!(r.is_hooked_publish("shout") && !r.is_hooked_publish("ask"));

        let bad = |f: &dyn Fn(&mut TopicRule), needle: &str| {
            let mut b = r.clone();
            f(&mut b);
            let e = b.check(100, DAY).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(&|b| b.join_hook = Some(hook("ftp://x/join", &[])), "http");
        bad(&|b| b.join_hook = Some(hook("not a url", &[])), "url");
        bad(
            &|b| b.join_hook = Some(hook("http://x/", &["shout"])),
            "events",
        );
        bad(
            &|b| b.publish_hook = Some(hook("http://x/", &[])),
            "must list",
        );
        bad(
            &|b| b.publish_hook = Some(hook("http://x/", &["nope"])),
            "not in `events`",
        );
        bad(
            &|b| b.rpc_hook = Some(hook("http://x/", &["shout"])),
            "also in `events`",
        );
        bad(
            &|b| b.rpc_hook = Some(hook("http://x/", &["phx_join"])),
            "reserved",
        );
        bad(
            &|b| b.join_hook.as_mut().unwrap().timeout_ms = 0,
            "timeout_ms",
        );
        bad(
            &|b| b.join_hook.as_mut().unwrap().max_concurrency = 0,
            "max_concurrency",
        );
        bad(
            &|b| b.join_hook.as_mut().unwrap().forward_headers = vec!["bad header".into()],
            "header",
        );
    }
}
