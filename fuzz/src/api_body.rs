//! HTTP API request bodies, decoded as the API does (`serde_json::from_slice`
//! into the endpoint's request type) plus the checks that need no running node:
//! `POST /api/broadcast` (its payload must be a JSON object),
//! `POST /api/disconnect`, `POST /api/rooms`.

use chorus_gateway::protocol::JsonObject;
use chorus_gateway::server::api::broadcast::BroadcastRequest;
use chorus_gateway::server::api::disconnect::DisconnectRequest;
use chorus_gateway::server::api::rooms::NewRoom;
use chorus_gateway::topics;

/// The first byte picks the endpoint; the rest is the body (any bytes: the API
/// reads the body as bytes).
pub fn run(data: &[u8]) {
    let Some((&endpoint, body)) = data.split_first() else {
        return;
    };
    match endpoint % 3 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<BroadcastRequest>(body) {
                let _ = topics::is_internal(&req.topic);
                if let Ok(payload) = JsonObject::from_raw(req.payload) {
                    let text = payload.as_str();
                    assert!(text.starts_with('{'), "payload is not an object");
                    assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
                }
            }
        }
        1 => {
            let _ = serde_json::from_slice::<DisconnectRequest>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<NewRoom>(body);
        }
    }
}
