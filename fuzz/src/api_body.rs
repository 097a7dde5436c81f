//! HTTP API request bodies, decoded as the API does (`serde_json::from_slice`
//! into the endpoint's request type) plus the checks that need no running node:
//! `POST /api/broadcast` (its payload must be a JSON object),
//! `POST /api/disconnect`, `POST /api/rooms`; and the JSON shape check every
//! body (and every client payload) passes first, against a parsed oracle.

use chorus_gateway::protocol::{check_json, JsonLimits, JsonObject};
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
    shape_check_agrees_with_the_parser(body);
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

/// Small limits, so the fuzzer reaches both sides of each.
const LIMITS: JsonLimits = JsonLimits {
    max_depth: 6,
    max_string_bytes: 16,
};

/// `check_json` passes only JSON within the limits (depth of the parsed value,
/// strings and keys decoded, which are never longer than as sent), and refuses
/// every JSON nested deeper.
fn shape_check_agrees_with_the_parser(body: &[u8]) {
    let verdict = check_json(body, LIMITS);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let (depth, longest) = shape(&value);
    if verdict.is_ok() {
        assert!(depth <= LIMITS.max_depth, "passed at depth {depth}");
        assert!(
            longest <= LIMITS.max_string_bytes,
            "passed a {longest}-byte string"
        );
    }
    if depth > LIMITS.max_depth {
        assert!(verdict.is_err(), "depth {depth} not refused");
    }
}

/// Nesting depth of arrays and objects, and the longest string or key.
fn shape(value: &serde_json::Value) -> (usize, usize) {
    use serde_json::Value;
    match value {
        Value::String(s) => (0, s.len()),
        Value::Array(items) => items
            .iter()
            .map(shape)
            .fold((1, 0), |(d, l), (di, li)| (d.max(di + 1), l.max(li))),
        Value::Object(map) => map.iter().fold((1, 0), |(d, l), (k, v)| {
            let (dv, lv) = shape(v);
            (d.max(dv + 1), l.max(lv).max(k.len()))
        }),
        _ => (0, 0),
    }
}
