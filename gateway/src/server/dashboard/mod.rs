//! The live dashboard: `GET /dashboard`, a self-contained page (inline script,
//! the phoenix.js the demo page uses), and its socket
//! ([`socket::DASHBOARD_SOCKET_PATH`]).
//!
//! On only with the HTTP API key configured and `ServerConfig::dashboard`
//! (`[server] dashboard`, default true); otherwise both paths answer 404. The
//! page holds no data: it asks for the API key (or reads it from the URL
//! fragment, `/dashboard#key=...`, which browsers never send to a server or
//! put in logs) and joins the internal topic [`topics::DASHBOARD`] over its
//! own socket, authorized by that key.
//!
//! Where the numbers come from: each node publishes its own snapshot on the
//! topic every [`INTERVAL`] ([`publish`]): its client connections and channels,
//! frames in and out so far ([`super::metrics::Metrics::client_totals`]), its
//! gossip traffic and queue overflows ([`EngineHandle::stats`]), the members it
//! sees and their state, and its busiest topics with their local subscribers
//! and cluster-wide presence counts, and with backend hooks configured each
//! hook's calls and failures. The cluster's pub/sub carries every
//! node's snapshot to each page, whatever node it is connected to; the page
//! turns totals into rates. A node that stops stops publishing; the member
//! states shown are those of the node the page is connected to.
//!
//! [`EngineHandle::stats`]: chorus_engine::runtime::EngineHandle::stats

pub mod socket;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chorus_engine::PeerState;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tracing::debug;

use super::api::ApiKey;
use super::http::{text, HttpBody};
use super::Shared;
use crate::topics;

/// The dashboard page.
pub const DASHBOARD_PATH: &str = "/dashboard";

/// The page (inline CSS and script; loads `/assets/phoenix.min.js`).
pub const DASHBOARD_HTML: &str = include_str!("../../../assets/dashboard.html");

/// How often each node publishes its snapshot.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A member the failure detector still counts up but this node has not heard
/// from for this long is shown `suspect`. The engine's SWIM suspicion is
/// internal; with the `lan` profile's 200 ms probe period a live peer is heard
/// from several times a second, and it is declared down after 2 s.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(1);

/// Topics in each node's snapshot: its busiest by local subscribers.
pub const TOPICS: usize = 10;

/// The API key, when the dashboard is on.
fn enabled_key(shared: &Shared) -> Option<&ApiKey> {
    shared
        .config
        .api_key
        .as_ref()
        .filter(|_| shared.config.dashboard)
}

/// 404: the dashboard is off.
fn disabled() -> Response<HttpBody> {
    text(
        StatusCode::NOT_FOUND,
        "not found (the dashboard needs the HTTP API key, CHORUS_API_KEY, and server.dashboard = true)\n",
    )
}

/// `GET /dashboard`.
pub(crate) fn page(shared: &Shared) -> Response<HttpBody> {
    if enabled_key(shared).is_none() {
        return disabled();
    }
    let mut r = Response::new(HttpBody::from(Bytes::from_static(
        DASHBOARD_HTML.as_bytes(),
    )));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        "text/html; charset=utf-8".parse().expect("valid header"),
    );
    // The page is the server's own: nothing of it may be framed or cached.
    h.insert("x-frame-options", "DENY".parse().expect("valid header"));
    h.insert("cache-control", "no-store".parse().expect("valid header"));
    r
}

/// Starts publishing this node's snapshot every [`INTERVAL`] when the
/// dashboard is on; abort the task to stop.
pub(crate) fn start(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    enabled_key(shared)?;
    Some(tokio::spawn(publish(shared.clone())))
}

/// Publishes a snapshot every [`INTERVAL`] (a late tick is skipped, not made up).
async fn publish(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let body = snapshot(&shared).await;
        let bytes = Bytes::from(body.to_string());
        if let Err(e) = shared.hub.publish_internal(topics::DASHBOARD, bytes).await {
            debug!(error = %e, "dashboard snapshot not published");
        }
    }
}

/// This node's snapshot (the `node` push of the dashboard channel).
pub(crate) async fn snapshot(shared: &Shared) -> Value {
    let hub = &shared.hub;
    let me = hub.node_id();
    let clients = shared.metrics.client_totals();
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut body = json!({
        "node": me.to_string(),
        "name": me.name.as_str(),
        "at_ms": at_ms,
        "connections": {"websocket": clients.websocket, "longpoll": clients.longpoll},
        "channels": clients.channels,
        "messages_in": clients.messages_in,
        "messages_out": clients.messages_out,
        "slow_consumers": shared.stats.slow_consumers.load(std::sync::atomic::Ordering::Relaxed),
    });
    let wait = Duration::from_secs(1);
    if let Ok(Ok(stats)) = tokio::time::timeout(wait, hub.engine_stats()).await {
        let (mut bi, mut bo, mut mi, mut mo) = (0u64, 0u64, 0u64, 0u64);
        for peer in stats.peers.values() {
            bi += peer.bytes_in;
            bo += peer.bytes_out;
            mi += peer.messages_in;
            mo += peer.messages_out;
        }
        body["gossip"] =
            json!({"bytes_in": bi, "bytes_out": bo, "messages_in": mi, "messages_out": mo});
        body["overflows"] = json!({
            "peer": stats.peer_queue_overflows,
            "subscriber": stats.slow_subscribers,
            "delta_buffer": stats.node.buffer_overflows,
        });
    }
    if let Ok(Ok(members)) = tokio::time::timeout(wait, hub.members()).await {
        let members: Vec<Value> = members
            .iter()
            .map(|m| {
                json!({
                    "node": m.id.to_string(),
                    "name": m.id.name.as_str(),
                    "state": member_state(m.state, m.silent),
                    "last_seen_ms": u64::try_from(m.silent.as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        body["members"] = Value::Array(members);
    }
    let mut topics = Vec::new();
    for (topic, subscribers) in hub.busiest_topics(TOPICS) {
        let presences = match tokio::time::timeout(wait, hub.presence_count(&topic)).await {
            Ok(Ok((users, _conns))) => json!(users),
            _ => Value::Null,
        };
        topics.push(json!({"topic": topic, "subscribers": subscribers, "presences": presences}));
    }
    body["topics"] = Value::Array(topics);
    if let Some(hooks) = &shared.config.hooks {
        body["hooks"] = hook_totals(hooks.metrics());
    }
    body
}

/// Per backend hook (`connect`, `join`, `publish`, `rpc`), its calls and those
/// that failed (timed out, errored, or refused by the open breaker).
fn hook_totals(metrics: &crate::hooks::HookMetrics) -> Value {
    use crate::hooks::Outcome;
    let mut hooks = serde_json::Map::new();
    for hook in ["connect", "join", "publish", "rpc"] {
        let count = |outcome| metrics.count(hook, outcome);
        let failed = count(Outcome::Timeout) + count(Outcome::Error) + count(Outcome::CircuitOpen);
        let calls = failed + count(Outcome::Allow) + count(Outcome::Deny);
        hooks.insert(hook.into(), json!({"calls": calls, "failed": failed}));
    }
    Value::Object(hooks)
}

/// `up`, `suspect` (up, silent for [`SUSPECT_AFTER`]) or `down`.
fn member_state(state: PeerState, silent: Duration) -> &'static str {
    match state {
        PeerState::Down => "down",
        PeerState::Up if silent >= SUSPECT_AFTER => "suspect",
        PeerState::Up => "up",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_up_member_is_suspect_and_down_stays_down() {
        let ms = Duration::from_millis;
        assert_eq!(member_state(PeerState::Up, ms(100)), "up");
        assert_eq!(member_state(PeerState::Up, SUSPECT_AFTER), "suspect");
        assert_eq!(member_state(PeerState::Down, ms(0)), "down");
    }

    #[test]
    fn hook_totals_count_failures_apart() {
        use crate::hooks::{HookMetrics, Outcome};
        let m = HookMetrics::default();
        m.record("join", Outcome::Allow);
        m.record("join", Outcome::Deny);
        m.record("join", Outcome::Timeout);
        m.record("publish", Outcome::CircuitOpen);
        m.record("publish", Outcome::Error);
        let t = hook_totals(&m);
        assert_eq!(t["join"], json!({"calls": 3, "failed": 1}));
        assert_eq!(t["publish"], json!({"calls": 2, "failed": 2}));
        assert_eq!(t["rpc"], json!({"calls": 0, "failed": 0}));
    }
}
