//! `POST /api/disconnect` `{user_id}`: closes every socket of a user, on every
//! node, with 1001.
//!
//! Phoenix's mechanism: a `disconnect` broadcast on the socket id topic. Sockets
//! whose connect hook gave them the id `user_socket:<user_id>` are subscribed to
//! that topic and close on it (see [`crate::socket::DISCONNECT_CLOSE_CODE`]).
//! Answers 202 `{"socket_id": "user_socket:<user_id>"}` once the broadcast is
//! handed to the cluster; sockets close as it arrives.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult};
use crate::protocol::{Payload, MAX_FIELD_LEN};
use crate::server::http::json_response;
use crate::server::Shared;

/// The prefix of the socket id a user's sockets carry.
pub const USER_SOCKET_PREFIX: &str = "user_socket:";

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// The user whose sockets to close.
    pub user_id: String,
}

pub(crate) async fn post(req: DisconnectRequest, shared: &Arc<Shared>) -> ApiResult {
    let socket_id = format!("{USER_SOCKET_PREFIX}{}", req.user_id);
    if req.user_id.is_empty() || socket_id.len() > MAX_FIELD_LEN {
        return Err(ApiError::invalid(format!(
            "`user_id` must be 1 to {} bytes",
            MAX_FIELD_LEN - USER_SOCKET_PREFIX.len()
        )));
    }
    shared
        .hub
        .broadcast(&socket_id, "disconnect", Payload::empty())
        .await
        .map_err(|e| ApiError::engine(&e))?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"socket_id": socket_id}),
    ))
}
