//! Backend hooks: Chorus asks the application's backend over HTTP whether a
//! client may connect (`connect_hook`), join (`join_hook`) or publish
//! (`publish_hook`), and lets it answer `rpc` events (`rpc_hook`).
//!
//! Every hook is a `POST` of a JSON object naming the hook (`"hook":"join"`),
//! answered 200 with JSON (README "Backend hooks", `gateway/hooks-openapi.json`).
//! A hook that times out, fails or answers garbage denies (fail closed), with
//! `hook_unavailable` (no answer) or `hook_error` (a wrong answer); each call is
//! counted and timed ([`HookMetrics`]); a backend that keeps failing (no
//! answer, or 5xx) is not called for a while ([`breaker`]).
//!
//! The server calls these without knowing the configured channels: [`Hooks`]
//! maps a topic to its rule's hooks with a function the channels' owner gives
//! (the built-in channels: `App::hooks`). The answer of a join, publish or rpc
//! hook is handed to the channel with the frame
//! ([`Session::handle_frame_with`](crate::socket::Session::handle_frame_with))
//! as a [`JoinDecision`], [`PublishDecision`] or [`RpcDecision`].

pub mod breaker;
mod client;
mod metrics;

pub use client::{Failure, HookClient, MAX_ANSWER_BYTES};
pub use metrics::{HookMetrics, Outcome};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::channel::{Assigns, Info, SocketAssigns};
use crate::protocol::{InFrame, JsonObject, Payload};
use crate::socket::{Denied, SocketInfo};

/// `timeout_ms` when not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// `max_concurrency` when not given.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;
/// Longest `timeout_ms` accepted.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}

/// One hook of the configuration:
/// `{ url, timeout_ms, forward_headers, max_concurrency, events }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Where the hook is `POST`ed: `http://` or `https://`.
    pub url: String,
    /// How long Chorus waits for the answer (including the wait for a
    /// concurrency slot) before denying; 1 to 60,000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Headers of the client's connect request passed in the hook's `"headers"`
    /// object (case-insensitive names; e.g. `["cookie"]`). None by default.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Most calls of this hook in flight at once on one node; further calls wait
    /// for a slot (within `timeout_ms`).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// `publish_hook` and `rpc_hook`: the client events the hook handles.
    #[serde(default)]
    pub events: Vec<String>,
}

impl HookConfig {
    /// Checks the URL, the timeout, the cap and the header names.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {:?}: must be http:// or https://", self.url));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "timeout_ms = {} must be 1 to {MAX_TIMEOUT_MS}",
                self.timeout_ms
            ));
        }
        if self.max_concurrency == 0 {
            return Err("max_concurrency must be at least 1".into());
        }
        for name in &self.forward_headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("forward_headers: {name:?} is not a header name"));
            }
        }
        Ok(())
    }
}

/// The join hook's answer, handed to the channel's `join`.
#[derive(Clone, Debug, PartialEq)]
pub enum JoinDecision {
    /// Join; `response` is merged into the join reply, `meta` into the
    /// presence meta.
    Allow {
        /// Keys added to the join reply.
        response: Map<String, Value>,
        /// Keys added to the tracked presence meta.
        meta: Map<String, Value>,
    },
    /// Refuse with `{"reason": reason}`.
    Deny(String),
}

/// The publish hook's answer, handed to the channel's `handle_in`.
#[derive(Clone, Debug, PartialEq)]
pub enum PublishDecision {
    /// Go on with the event.
    Allow {
        /// Replaces the client's payload.
        payload: Option<Payload>,
        /// Replaces the push's `ok` reply response.
        reply: Option<Payload>,
        /// Do not store the message in the topic's history.
        skip_history: bool,
    },
    /// Refuse: `error` pushed and the push answered `error` `{"reason": reason}`.
    Deny(String),
}

/// The rpc hook's answer, handed to the channel's `handle_in`.
#[derive(Clone, Debug, PartialEq)]
pub enum RpcDecision {
    /// The push is answered `ok` with this.
    Reply(Payload),
    /// The push is answered `error` `{"reason": reason}`.
    Error(String),
}

/// The reason of a deny with none given.
const DEFAULT_DENY: &str = "unauthorized";

#[derive(Deserialize)]
struct ConnectAnswer {
    allow: bool,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    claims: Option<Map<String, Value>>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct JoinAnswer {
    allow: bool,
    #[serde(default)]
    response: Option<Map<String, Value>>,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct PublishAnswer {
    allow: bool,
    #[serde(default)]
    payload: Option<Map<String, Value>>,
    #[serde(default)]
    reply: Option<Map<String, Value>>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct RpcAnswer {
    #[serde(default)]
    reply: Option<Map<String, Value>>,
    #[serde(default)]
    error: Option<String>,
}

fn object(map: Map<String, Value>) -> Payload {
    Payload::Json(JsonObject::from_value(&Value::Object(map)).expect("a map is an object"))
}

/// Which hook a client frame waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `phx_join` on a topic whose rule has a `join_hook`.
    Join,
    /// An event in the rule's `publish_hook.events`.
    Publish,
    /// An event in the rule's `rpc_hook.events`.
    Rpc,
}

/// The hooks of one `[[topics]]` rule.
#[derive(Debug, Default)]
pub struct TopicHooks {
    /// `join_hook`.
    pub join: Option<HookClient>,
    /// `publish_hook`.
    pub publish: Option<HookClient>,
    /// `rpc_hook`.
    pub rpc: Option<HookClient>,
}

/// The configurations of one rule's hooks, for [`Hooks::new`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TopicHookConfigs<'a> {
    /// `join_hook`.
    pub join: Option<&'a HookConfig>,
    /// `publish_hook`.
    pub publish: Option<&'a HookConfig>,
    /// `rpc_hook`.
    pub rpc: Option<&'a HookConfig>,
}

/// Maps a topic to the index of the rule (in the list given to [`Hooks::new`])
/// that governs it.
pub type Route = Box<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// A hook call's eventual answer, for the channel.
pub type Pending = Pin<Box<dyn Future<Output = Info> + Send>>;

/// Every hook of a node.
pub struct Hooks {
    connect: Option<HookClient>,
    topics: Vec<TopicHooks>,
    route: Route,
    /// Lowercase names of every header some hook forwards.
    forward: Vec<String>,
    metrics: HookMetrics,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("connect", &self.connect)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// The hooks of a node: `connect` (`[server] connect_hook`), and per rule its
    /// topic hooks, `route` telling which rule a topic falls under.
    pub fn new(
        connect: Option<&HookConfig>,
        topics: &[TopicHookConfigs<'_>],
        route: Route,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            // Hooks go to the backend directly, never through an environment proxy.
            .no_proxy()
            // Nor through a redirect: a followed 302 turns the POST into a
            // bodiless GET whose answer would decide a request it never saw, and
            // a 307 sends the request (claims, forwarded cookies) where nobody
            // configured. A 3xx is a wrong answer, `hook_error`.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let metrics = HookMetrics::default();
        let client = |name: &'static str, config: Option<&HookConfig>| {
            config
                .map(|c| {
                    HookClient::new(name, c, http.clone(), metrics.clone())
                        .map_err(|e| format!("{name}_hook: {e}"))
                })
                .transpose()
        };
        let connect = client("connect", connect)?;
        let topics = topics
            .iter()
            .map(|t| {
                Ok(TopicHooks {
                    join: client("join", t.join)?,
                    publish: client("publish", t.publish)?,
                    rpc: client("rpc", t.rpc)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut forward: Vec<String> = connect
            .iter()
            .chain(
                topics
                    .iter()
                    .flat_map(|t| t.join.iter().chain(&t.publish).chain(&t.rpc)),
            )
            .flat_map(|c| c.forwarded().iter().cloned())
            .collect();
        forward.sort();
        forward.dedup();
        Ok(Self {
            connect,
            topics,
            route,
            forward,
            metrics,
        })
    }

    /// Whether any hook is configured.
    pub fn is_empty(&self) -> bool {
        self.connect.is_none()
            && self
                .topics
                .iter()
                .all(|t| t.join.is_none() && t.publish.is_none() && t.rpc.is_none())
    }

    /// Whether a topic hook is configured (the sessions then route frames
    /// through [`Hooks::for_frame`]).
    pub fn has_topic_hooks(&self) -> bool {
        self.topics
            .iter()
            .any(|t| t.join.is_some() || t.publish.is_some() || t.rpc.is_some())
    }

    /// The counters, for `/metrics`.
    pub fn metrics(&self) -> &HookMetrics {
        &self.metrics
    }

    /// The headers of a connect request some hook forwards: lowercase names,
    /// several values joined with `, `.
    pub fn capture_headers(&self, headers: &hyper::HeaderMap) -> Vec<(String, String)> {
        self.forward
            .iter()
            .filter_map(|name| {
                let values: Vec<&str> = headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| (name.clone(), values.join(", ")))
            })
            .collect()
    }

    /// Whether a `connect_hook` is configured.
    pub fn has_connect(&self) -> bool {
        self.connect.is_some()
    }

    /// Asks the connect hook (if configured: else `None`) about a connect
    /// request with `params` and `headers` (from [`Hooks::capture_headers`]).
    /// Allowed, the socket id is `user_socket:{user_id}` and the assigns are the
    /// claims with `user_id` (and `name`, defaulting to it), as a token's.
    pub async fn connect(
        &self,
        params: &Assigns,
        headers: &[(String, String)],
    ) -> Option<Result<SocketInfo, Denied>> {
        let hook = self.connect.as_ref()?;
        let body = json!({
            "hook": "connect",
            "params": params,
            "headers": hook.headers(headers),
        });
        let answer = match hook.call::<ConnectAnswer>(&body).await {
            Ok(answer) => answer,
            Err(_) => return Some(Err(Denied)),
        };
        if !answer.allow {
            hook.decided(false);
            tracing::debug!(reason = ?answer.reason, "connect denied by the connect hook");
            return Some(Err(Denied));
        }
        let user = answer.user_id.unwrap_or_default();
        if user.is_empty() || user.len() > 256 || user.contains(':') {
            // Allowed without a usable user id: a wrong answer.
            tracing::warn!(
                user_id = user,
                "connect hook allowed without a user_id of 1 to 256 bytes without ':': denying"
            );
            hook.decided(false);
            return Some(Err(Denied));
        }
        hook.decided(true);
        let mut assigns = answer.claims.unwrap_or_default();
        assigns.insert("user_id".into(), Value::from(user.clone()));
        if !assigns.get("name").is_some_and(Value::is_string) {
            assigns.insert("name".into(), Value::from(user.clone()));
        }
        Some(Ok(SocketInfo {
            id: Some(crate::token::socket_id(&user)),
            assigns,
        }))
    }

    /// Which hook `frame` waits for, if any, and its rule. `joined` says whether
    /// the frame's topic is joined with a current (or null) join_ref: a push
    /// that the session would refuse or drop calls no hook.
    pub fn for_frame(&self, frame: &InFrame, joined: bool) -> Option<(Kind, usize)> {
        let event = frame.event.as_str();
        if event == "phx_leave" || event == "heartbeat" {
            return None;
        }
        let rule = (self.route)(&frame.topic)?;
        let hooks = self.topics.get(rule)?;
        if event == "phx_join" {
            return hooks.join.as_ref().map(|_| (Kind::Join, rule));
        }
        if !joined {
            return None;
        }
        if hooks.publish.as_ref().is_some_and(|h| h.has_event(event)) {
            return Some((Kind::Publish, rule));
        }
        if hooks.rpc.as_ref().is_some_and(|h| h.has_event(event)) {
            return Some((Kind::Rpc, rule));
        }
        None
    }

    /// Calls the `kind` hook of rule `rule` about `frame`, sent by a client with
    /// `assigns` whose connect request had `headers`. The future answers the
    /// decision to attach to the frame; it never fails (a failure denies).
    pub fn call(
        self: &Arc<Self>,
        kind: Kind,
        rule: usize,
        frame: &InFrame,
        assigns: &SocketAssigns,
        headers: &[(String, String)],
    ) -> Pending {
        let hooks = self.clone();
        let Payload::Json(payload) = &frame.payload else {
            // Binary payloads have no JSON to show the backend.
            return Box::pin(std::future::ready(deny(kind, "unsupported_payload")));
        };
        let payload: Box<RawValue> = serde_json::from_str(payload.as_str())
            .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("{} is JSON"));
        let Some(hook) = self.hook(kind, rule) else {
            return Box::pin(std::future::ready(deny(kind, "hook_unavailable")));
        };
        let mut body = json!({
            "hook": kind.name(),
            "user_id": assigns.get("user_id").cloned().unwrap_or(Value::Null),
            "claims": assigns,
            "topic": frame.topic,
            "payload": payload,
            "headers": hook.headers(headers),
        });
        if kind != Kind::Join {
            body["event"] = Value::from(frame.event.as_str());
        }
        Box::pin(async move {
            let hook = hooks.hook(kind, rule).expect("checked above");
            decide(kind, hook, &body).await
        })
    }

    fn hook(&self, kind: Kind, rule: usize) -> Option<&HookClient> {
        let hooks = self.topics.get(rule)?;
        match kind {
            Kind::Join => hooks.join.as_ref(),
            Kind::Publish => hooks.publish.as_ref(),
            Kind::Rpc => hooks.rpc.as_ref(),
        }
    }
}

impl Kind {
    /// The `"hook"` field and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Publish => "publish",
            Self::Rpc => "rpc",
        }
    }
}

fn deny(kind: Kind, reason: &str) -> Info {
    match kind {
        Kind::Join => Box::new(JoinDecision::Deny(reason.into())),
        Kind::Publish => Box::new(PublishDecision::Deny(reason.into())),
        Kind::Rpc => Box::new(RpcDecision::Error(reason.into())),
    }
}

async fn decide(kind: Kind, hook: &HookClient, body: &Value) -> Info {
    match kind {
        Kind::Join => match hook.call::<JoinAnswer>(body).await {
            Err(failure) => deny(kind, failure.reason()),
            Ok(a) => {
                hook.decided(a.allow);
                Box::new(if a.allow {
                    JoinDecision::Allow {
                        response: a.response.unwrap_or_default(),
                        meta: a.meta.unwrap_or_default(),
                    }
                } else {
                    JoinDecision::Deny(a.reason.unwrap_or_else(|| DEFAULT_DENY.into()))
                })
            }
        },
        Kind::Publish => match hook.call::<PublishAnswer>(body).await {
            Err(failure) => deny(kind, failure.reason()),
            Ok(a) => {
                hook.decided(a.allow);
                Box::new(if a.allow {
                    PublishDecision::Allow {
                        payload: a.payload.map(object),
                        reply: a.reply.map(object),
                        skip_history: a.skip_history,
                    }
                } else {
                    PublishDecision::Deny(a.reason.unwrap_or_else(|| DEFAULT_DENY.into()))
                })
            }
        },
        Kind::Rpc => match hook.call::<RpcAnswer>(body).await {
            Err(failure) => deny(kind, failure.reason()),
            Ok(RpcAnswer {
                reply: Some(reply),
                error: None,
            }) => {
                hook.decided(true);
                Box::new(RpcDecision::Reply(object(reply)))
            }
            Ok(RpcAnswer {
                reply: None,
                error: Some(error),
            }) => {
                hook.decided(false);
                Box::new(RpcDecision::Error(error))
            }
            Ok(_) => {
                tracing::warn!("rpc hook answered neither `reply` nor `error` (or both): denying");
                hook.garbage();
                deny(kind, "hook_error")
            }
        },
    }
}
