//! `GET /api/cluster`: this node and the peers it knows, with their state,
//! incarnation, gossip address and how long ago they were last heard from.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::{ApiError, ApiResult};
use crate::server::http::json_response;
use crate::server::metrics::state_label;
use crate::server::Shared;

pub(crate) async fn get(shared: &Arc<Shared>) -> ApiResult {
    let hub = &shared.hub;
    let members = hub.members().await.map_err(|e| ApiError::engine(&e))?;
    let me = hub.node_id();
    let members: Vec<_> = members
        .iter()
        .map(|m| {
            json!({
                "id": m.id.to_string(),
                "name": m.id.name.as_str(),
                "incarnation": m.id.incarnation,
                "state": state_label(m.state),
                "address": m.addr.map(|a| a.to_string()),
                "last_seen_ms_ago": u64::try_from(m.silent.as_millis()).unwrap_or(u64::MAX),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "node": {
                "id": me.to_string(),
                "name": me.name.as_str(),
                "incarnation": me.incarnation,
                "address": hub.gossip_addr().to_string(),
            },
            "members": members,
        }),
    ))
}
