//! `GET /api/presence?topic=` and `GET /api/presence/count?topic=`: who is in a
//! topic, cluster-wide, as this node sees it.
//!
//! The list is Phoenix's `presence_state` payload, `{key: {"metas": [..]}}`, the
//! same bytes a joining client receives. The count is `{"users": keys,
//! "connections": metas}`, counted inside the engine without copying the metas,
//! so it stays cheap on huge topics.

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;

use super::{ApiError, ApiResult};
use crate::cluster::state_json;
use crate::server::http::{json_response, raw_json};
use crate::server::Shared;

pub(crate) async fn get(topic: &str, shared: &Arc<Shared>) -> ApiResult {
    let items = shared
        .hub
        .presence(topic)
        .await
        .map_err(|e| ApiError::engine(&e))?;
    let state = state_json(&items);
    Ok(raw_json(
        StatusCode::OK,
        Bytes::from(state.as_str().to_owned()),
    ))
}

pub(crate) async fn count(topic: &str, shared: &Arc<Shared>) -> ApiResult {
    let (users, connections) = shared
        .hub
        .presence_count(topic)
        .await
        .map_err(|e| ApiError::engine(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"users": users, "connections": connections}),
    ))
}
