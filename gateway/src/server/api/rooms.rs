//! `GET /api/history?topic=&limit=`, `GET /api/rooms`, `POST /api/rooms`
//! `{id, name?}` and `DELETE /api/rooms/{id}`: the replicated records the
//! channels keep (through [`RoomStore`]; the built-in channels are one).
//!
//! Rooms from the config always exist and cannot be deleted (409); rooms
//! created here are registers replicated to every node, so a `room:{id}` join
//! on any node finds them a moment later.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiResult};
use crate::channel::RoomStore;
use crate::server::http::json_response;
use crate::server::Shared;

/// Longest room id.
const MAX_ROOM_ID: usize = 200;

fn app(shared: &Shared) -> Result<&Arc<dyn RoomStore>, ApiError> {
    shared.config.rooms.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "this server has no configured channels (no rooms or history)",
        )
    })
}

/// `GET /api/history`: the newest `limit` messages (default 50), oldest first.
/// A `limit` over the history cap asks for everything kept (the cap is per
/// cluster, so a client cannot know it); 0 or a non-integer is a 400.
pub(crate) fn history(topic: &str, limit: Option<&str>, shared: &Shared) -> ApiResult {
    let app = app(shared)?;
    let cap = app.history_cap().max(1);
    let limit = match limit {
        None => 50.min(cap),
        Some(l) => limit_of(l)?.min(cap),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "messages": app.history(topic, limit) }),
    ))
}

/// `GET /api/history?since=POS`: what a rejoin with `POS` would recover,
/// all or nothing (PROTOCOL.md of the repository).
pub(crate) fn history_since(topic: &str, since: &str, shared: &Shared) -> ApiResult {
    let answer = app(shared)?.history_since(topic, since);
    Ok(json_response(StatusCode::OK, &answer))
}

/// A positive decimal integer; one too large for `usize` is `usize::MAX`.
/// Refuses a `limit` that is not an integer of at least 1 (400), as
/// [`history`] does, for a request where it does not apply.
pub(crate) fn check_limit(limit: Option<&str>) -> Result<(), ApiError> {
    limit.map_or(Ok(()), |l| limit_of(l).map(drop))
}

fn limit_of(text: &str) -> Result<usize, ApiError> {
    parse_limit(text).ok_or_else(|| ApiError::invalid("`limit` must be an integer, at least 1"))
}

fn parse_limit(text: &str) -> Option<usize> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.parse::<usize>().unwrap_or(usize::MAX);
    (n >= 1).then_some(n)
}

/// `GET /api/rooms`.
pub(crate) fn list(shared: &Shared) -> ApiResult {
    let rooms: Vec<Value> = app(shared)?
        .rooms()
        .into_iter()
        .map(|(id, name)| json!({ "id": id, "name": name }))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "rooms": rooms })))
}

/// The body of `POST /api/rooms` (public so the fuzz targets can decode it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoom {
    id: String,
    /// Absent or a string (`null` is refused).
    #[serde(default, deserialize_with = "super::present")]
    name: Option<String>,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ROOM_ID
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "room id must be 1 to {MAX_ROOM_ID} ASCII letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// `POST /api/rooms`: 201 with the room, 409 if it exists.
pub(crate) async fn create(room: NewRoom, shared: &Arc<Shared>) -> ApiResult {
    check_id(&room.id)?;
    let app = app(shared)?;
    if app.room_exists(&room.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "room_exists",
            format!("room {:?} exists", room.id),
        ));
    }
    let name = room.name.unwrap_or_default();
    shared
        .hub
        .put(app.room_space(), &room.id, Some(&name))
        .await
        .map_err(|e| ApiError::engine(&e))?;
    let name = (!name.is_empty()).then_some(name);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "id": room.id, "name": name }),
    ))
}

/// `DELETE /api/rooms/{id}`: 204; 404 unknown, 409 a room of the config.
pub(crate) async fn delete(id: &str, shared: &Arc<Shared>) -> ApiResult {
    let app = app(shared)?;
    if app.is_static_room(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "static_room",
            format!("room {id:?} is defined in the config file"),
        ));
    }
    if !app.room_exists(id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "room_not_found",
            format!("no room {id:?}"),
        ));
    }
    shared
        .hub
        .put(app.room_space(), id, None)
        .await
        .map_err(|e| ApiError::engine(&e))?;
    let mut response = json_response(StatusCode::NO_CONTENT, &Value::Null);
    *response.body_mut() = http_body_util::Full::new(bytes::Bytes::new());
    Ok(response)
}
