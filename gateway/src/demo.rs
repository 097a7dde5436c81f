//! A small hand-written channel: an example of the [`Channel`] trait for Rust
//! users (the `chorus` binary serves the configured channels of
//! [`crate::builtin`] instead), used by the gateway's protocol tests. It
//! authorizes nobody and stores nothing.
//!
//! `room:*`:
//! - **join**: accepted for anyone. Tracks presence under the key given as the join
//!   param `user_id`, else the connect param `user_id`, else `"anonymous"`, with
//!   meta `{"online_at": "<unix ms>"}`; `presence_state` follows the join reply.
//! - **`new_msg`**: broadcast to the whole topic (sender included), reply `ok`.
//! - **`shout`**: broadcast to everyone else (`broadcast_from`), reply `ok`.
//! - **`ping`**: reply `ok` echoing the payload (JSON or binary).
//! - anything else: reply `error` `{"reason":"unknown event"}`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::channel::{
    reason, Channel, ChannelContext, HandleIn, JoinResult, Reply, RouteError, Router,
};
use crate::protocol::{JsonObject, Payload};

/// The demo `room:*` channel.
#[derive(Debug, Default)]
pub struct RoomChannel;

/// A router with the demo channel on `room:*`.
pub fn demo_router() -> Result<Router, RouteError> {
    Router::new().channel("room:*", || RoomChannel)
}

fn user_id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Channel for RoomChannel {
    fn join(&mut self, _topic: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> JoinResult {
        let from_join = match &payload {
            Payload::Json(json) => {
                serde_json::from_str::<serde_json::Map<String, Value>>(json.as_str())
                    .ok()
                    .and_then(|params| user_id(params.get("user_id")))
            }
            Payload::Binary(_) => None,
        };
        let key = from_join
            .or_else(|| user_id(ctx.assigns().get("user_id")))
            .unwrap_or_else(|| "anonymous".to_owned());
        let online_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let meta =
            JsonObject::from_value(&serde_json::json!({ "online_at": online_at.to_string() }))
                .expect("a one-key map is a JSON object");
        ctx.track(key, meta);
        Ok(None)
    }

    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        match event {
            "new_msg" => {
                ctx.broadcast("new_msg", payload);
                HandleIn::Reply(Reply::ok())
            }
            "shout" => {
                ctx.broadcast_from("shout", payload);
                HandleIn::Reply(Reply::ok())
            }
            "ping" => HandleIn::Reply(Reply::ok_with(payload)),
            _ => HandleIn::Reply(Reply::error(reason("unknown event"))),
        }
    }
}
