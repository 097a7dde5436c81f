//! `GET /healthz`: whether the node can serve at all (a supervisor restarts it
//! when not): 200 `ok` while the cluster engine's task runs, 503 naming why
//! once it failed (a panic, a name clash) or was shut down. Clients of a node
//! without an engine are deaf and their pushes go nowhere, so liveness is the
//! engine's, not just the process's.
//!
//! `GET /readyz`: whether a load balancer should send clients here. Ready means
//! all of:
//!
//! - the server is not draining (shutdown has not begun);
//! - the engine runs and answers;
//! - the cluster is joined: some peer is up, or the engine was started without
//!   seeds (a lone node, or the first of a cluster);
//! - there is room for another connection (the connection cap is not reached);
//! - with the HTTP API enabled, its cluster-wide idempotency listener is subscribed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chorus_engine::PeerState;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::http::{json_response, text, text_owned, HttpBody};
use super::Shared;

/// The readiness check.
pub const READY_PATH: &str = "/readyz";

/// Answers `GET /healthz`: 200 `ok`, or 503 `engine failed: ..` /
/// `engine stopped` (`text/plain`).
pub(crate) fn live(shared: &Shared) -> Response<HttpBody> {
    let hub = &shared.hub;
    if hub.engine_running() {
        return text(StatusCode::OK, "ok\n");
    }
    match hub.engine_failure() {
        Some(e) => text_owned(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("engine failed: {e}\n"),
        ),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "engine stopped\n"),
    }
}

/// Answers `GET /readyz`: 200 `{"status":"ready"}`, or 503
/// `{"status":"not_ready","reason":..}`.
pub(crate) async fn ready(shared: &Arc<Shared>) -> Response<HttpBody> {
    match not_ready(shared).await {
        None => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": reason}),
        ),
    }
}

/// Why the node is not ready, if it is not.
async fn not_ready(shared: &Shared) -> Option<&'static str> {
    if shared.draining.load(Ordering::Acquire) {
        return Some("draining: the server is shutting down");
    }
    let hub = &shared.hub;
    if !hub.engine_running() {
        return Some("the cluster engine has stopped");
    }
    let members = tokio::time::timeout(Duration::from_secs(2), hub.members()).await;
    let Ok(Ok(members)) = members else {
        return Some("the cluster engine is not answering");
    };
    let joined = hub.seeds().is_empty() || members.iter().any(|m| m.state == PeerState::Up);
    if !joined {
        return Some("no cluster peer reached yet (seeds configured)");
    }
    if shared.limit.available_permits() == 0 {
        return Some("at the connection limit");
    }
    if let Some(api) = &shared.api {
        if !api.idempotency.is_listening() {
            return Some("the HTTP API's idempotency listener is not subscribed yet");
        }
    }
    None
}
