//! `POST /api/broadcast` `{topic, event, payload, idempotency_key?}`: Phoenix's
//! `Endpoint.broadcast` over HTTP. Subscribers on every node receive
//! `[null,null,topic,event,payload]`, exactly as from a channel's `broadcast`.
//!
//! Answers 202 `{"status":"sent"}`, or 200 `{"status":"duplicate"}` when the
//! idempotency key was used within the last five minutes (see [`super::idempotency`]).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::idempotency::MAX_KEY_LEN;
use super::{ApiError, ApiResult};
use crate::protocol::{JsonObject, Payload, MAX_FIELD_LEN};
use crate::server::http::json_response;
use crate::server::Shared;
use crate::topics;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// The topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event, at most 255 bytes.
    pub event: String,
    /// A JSON object.
    pub payload: Box<RawValue>,
    /// Makes a retry safe: a key seen within five minutes is not broadcast again.
    /// Absent or a string (`null` is refused).
    #[serde(default, deserialize_with = "super::present")]
    pub idempotency_key: Option<String>,
}

pub(crate) async fn post(req: BroadcastRequest, shared: &Arc<Shared>) -> ApiResult {
    if req.topic.is_empty() || req.topic.len() > MAX_FIELD_LEN {
        return Err(ApiError::invalid(format!(
            "`topic` must be 1 to {MAX_FIELD_LEN} bytes"
        )));
    }
    if topics::is_internal(&req.topic) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_topic",
            format!("topic {:?} is reserved for the server", req.topic),
        ));
    }
    if req.event.is_empty() || req.event.len() > MAX_FIELD_LEN {
        return Err(ApiError::invalid(format!(
            "`event` must be 1 to {MAX_FIELD_LEN} bytes"
        )));
    }
    let payload = JsonObject::from_raw(req.payload)
        .map_err(|_| ApiError::invalid("`payload` must be a JSON object"))?;
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(ApiError::invalid(format!(
                "`idempotency_key` must be 1 to {MAX_KEY_LEN} bytes"
            )));
        }
    }
    let api = shared
        .api
        .as_ref()
        .expect("authorized requests have an API");
    let key = req.idempotency_key.as_deref();
    if let Some(key) = key {
        if !api.idempotency.claim(key, Instant::now()) {
            shared.metrics.api_broadcast("duplicate");
            return Ok(json_response(
                StatusCode::OK,
                &json!({"status": "duplicate"}),
            ));
        }
    }
    let sent = shared
        .hub
        .broadcast(&req.topic, &req.event, Payload::Json(payload))
        .await;
    if let Err(e) = sent {
        if let Some(key) = key {
            api.idempotency.release(key);
        }
        return Err(ApiError::engine(&e));
    }
    if let Some(key) = key {
        api.idempotency.announce(&shared.hub, key).await;
    }
    shared.metrics.api_broadcast("sent");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "sent"}),
    ))
}
