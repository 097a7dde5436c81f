//! `POST /api/broadcast` `{topic, event, payload, idempotency_key?}`: Phoenix's
//! `Endpoint.broadcast` over HTTP. Subscribers on every node receive
//! `[null,null,topic,event,payload]`, exactly as from a channel's `broadcast`.
//! On a recoverable topic (PROTOCOL.md of the repository) the broadcast goes
//! into the topic's log like a client's: delivered with `_id` and `_pos`,
//! recovered on rejoin; the answer then carries its `_id`.
//!
//! Answers 202 `{"status":"sent"}` (`{"status":"sent","_id":…}` on a
//! recoverable topic), or 200 `{"status":"duplicate"}` when the
//! idempotency key was used within the last five minutes for the same request,
//! or 409 `idempotency_conflict` when it was used for another one (see
//! [`super::idempotency`]). A topic or event with a control character is a 400
//! `invalid_request`, one of the server's own topics a 400 `reserved_topic`.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::idempotency::{self, Claim, MAX_KEY_LEN};
use super::{check_printable, ApiError, ApiResult};
use crate::channel::recover;
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
    check_printable("topic", &req.topic)?;
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
    check_printable("event", &req.event)?;
    let fingerprint = idempotency::fingerprint(&req.topic, &req.event, req.payload.get());
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
        match api.idempotency.claim(key, fingerprint, Instant::now()) {
            Claim::New => {}
            Claim::Duplicate => {
                shared.metrics.api_broadcast("duplicate");
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"status": "duplicate"}),
                ));
            }
            Claim::Conflict => {
                shared.metrics.api_broadcast("conflict");
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_conflict",
                    "this idempotency_key was used within 5 minutes for another request (topic, event or payload)",
                ));
            }
        }
    }
    let recoverable = shared
        .config
        .rooms
        .as_ref()
        .is_some_and(|rooms| rooms.recoverable(&req.topic));
    let sent = if recoverable {
        let entry = recover::entry(&req.event, &payload, false);
        shared
            .hub
            .append(&req.topic, entry.as_str().to_owned())
            .await
            .map(|stamp| Some(recover::message_id(&stamp)))
            .map_err(|e| e.to_string())
    } else {
        shared
            .hub
            .broadcast(&req.topic, &req.event, Payload::Json(payload))
            .await
            .map(|()| None)
            .map_err(|e| e.to_string())
    };
    let id = match sent {
        Ok(id) => id,
        Err(e) => {
            if let Some(key) = key {
                api.idempotency.release(key);
            }
            return Err(ApiError::engine(&e));
        }
    };
    if let Some(key) = key {
        api.idempotency
            .announce(&shared.hub, key, &fingerprint)
            .await;
    }
    shared.metrics.api_broadcast("sent");
    let answer = match id {
        Some(id) => json!({"status": "sent", "_id": id}),
        None => json!({"status": "sent"}),
    };
    Ok(json_response(StatusCode::ACCEPTED, &answer))
}
