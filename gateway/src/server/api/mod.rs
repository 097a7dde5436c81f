//! The HTTP API under `/api`, for application backends: JSON in and out,
//! authenticated by an API key (`Authorization: Bearer <key>`).
//!
//! The routes are the table [`ROUTES`]; each endpoint lives in its own module
//! ([`broadcast`], [`presence`], [`disconnect`], [`cluster`], [`rooms`]). The OpenAPI 3
//! document `gateway/openapi.json` describes them all and is served, without
//! authentication, at `GET /api/openapi.json`. To add an endpoint: a module here, a row in [`ROUTES`], an arm in [`dispatch`], and its
//! description in `openapi.json` (the API tests fail on a route it lacks).
//!
//! Every error is `{"error":{"code":..,"message":..}}` with a fitting status:
//! 400 malformed JSON or a missing field, or a body nested deeper or with longer
//! strings than `[limits]` allows (`json_limit_exceeded`), 401 a missing or wrong
//! key, 404 an unknown route, 405 a known route with another method, 408 a body
//! that does not arrive within the handshake timeout, 413 a body over the
//! server's `max_frame_size`, 503 the API disabled (no key configured) or the
//! engine unavailable.

pub mod broadcast;
pub mod cluster;
pub mod disconnect;
pub mod idempotency;
pub mod presence;
pub mod rooms;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::http::{json_error, method_not_allowed, raw_json, HttpBody};
use super::{metrics, Shared};
use crate::protocol::check_json;
use crate::protocol::Query;
use idempotency::Idempotency;

/// Every API path starts with this.
pub const API_PREFIX: &str = "/api";

/// The OpenAPI 3 document of the API (and of `/readyz`, `/healthz`, `/metrics`).
pub const OPENAPI_JSON: &str = include_str!("../../../openapi.json");

/// The API's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/broadcast`.
    Broadcast,
    /// `GET /api/presence`.
    Presence,
    /// `GET /api/presence/count`.
    PresenceCount,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `GET /api/cluster`.
    Cluster,
    /// `GET /api/history`.
    History,
    /// `GET /api/rooms`.
    Rooms,
    /// `POST /api/rooms`.
    CreateRoom,
    /// `DELETE /api/rooms/{id}`.
    DeleteRoom,
    /// `GET /api/openapi.json` (no key needed).
    OpenApi,
}

/// The route table: `(method, path, endpoint)`. The dispatcher reads nothing else.
/// A `{name}` segment matches one non-empty path segment.
pub const ROUTES: &[(&str, &str, Endpoint)] = &[
    ("POST", "/api/broadcast", Endpoint::Broadcast),
    ("GET", "/api/presence", Endpoint::Presence),
    ("GET", "/api/presence/count", Endpoint::PresenceCount),
    ("POST", "/api/disconnect", Endpoint::Disconnect),
    ("GET", "/api/cluster", Endpoint::Cluster),
    ("GET", "/api/history", Endpoint::History),
    ("GET", "/api/rooms", Endpoint::Rooms),
    ("POST", "/api/rooms", Endpoint::CreateRoom),
    ("DELETE", "/api/rooms/{id}", Endpoint::DeleteRoom),
    ("GET", "/api/openapi.json", Endpoint::OpenApi),
];

/// An API key. Its `Debug` is redacted, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key; callers present it as `Authorization: Bearer <key>`.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// Whether `presented` is this key, in time independent of where they
    /// differ. An empty key matches nothing: an empty `CHORUS_API_KEY` (what
    /// `KEY=${UNSET}` gives) must not open the API to an empty bearer token.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        !a.is_empty()
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The API's state on one server (present only when a key is configured).
#[derive(Debug)]
pub(crate) struct Api {
    key: ApiKey,
    pub(crate) idempotency: Arc<Idempotency>,
}

impl Api {
    pub(crate) fn new(key: ApiKey) -> Self {
        Self {
            key,
            idempotency: Arc::new(Idempotency::new(idempotency::WINDOW, idempotency::MAX_KEYS)),
        }
    }
}

/// An API error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 for a request that is well-formed JSON but not what the endpoint takes.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 503 for an engine that refused or stopped.
    pub(crate) fn engine(error: &dyn fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            format!("the cluster engine failed: {error}"),
        )
    }

    fn into_response(self) -> Response<HttpBody> {
        let mut response = json_error(self.status, self.code, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What a handler answers.
pub(crate) type ApiResult = Result<Response<HttpBody>, ApiError>;

/// Whether `path` belongs to the API.
pub(crate) fn owns(path: &str) -> bool {
    path == API_PREFIX || path.starts_with("/api/")
}

/// The methods and paths the API answers, for documentation checks.
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES.iter().map(|(method, path, _)| (*method, *path))
}

/// Answers one request under `/api`.
pub(crate) async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<HttpBody> {
    let path = req.uri().path();
    let matching: Vec<_> = ROUTES
        .iter()
        .filter(|(_, p, _)| path_matches(p, path))
        .collect();
    let Some((_, _, endpoint)) = matching
        .iter()
        .find(|(method, _, _)| *method == req.method().as_str())
    else {
        if matching.is_empty() {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no API route {path}"),
            )
            .into_response();
        }
        let allowed: Vec<&str> = matching.iter().map(|(m, _, _)| *m).collect();
        return method_not_allowed(path, &allowed);
    };
    let endpoint = *endpoint;
    let authorized = if endpoint == Endpoint::OpenApi {
        Ok(())
    } else {
        authorize(&req, &shared)
    };
    let result = match authorized {
        Ok(()) => dispatch(endpoint, req, &shared).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Whether `path` matches the route `route` (`{name}` matches one segment).
fn path_matches(route: &str, path: &str) -> bool {
    let (mut r, mut p) = (route.split('/'), path.split('/'));
    loop {
        match (r.next(), p.next()) {
            (None, None) => return true,
            (Some(seg), Some(got)) if seg.starts_with('{') => {
                if got.is_empty() {
                    return false;
                }
            }
            (Some(seg), Some(got)) if seg == got => {}
            _ => return false,
        }
    }
}

/// The last path segment, percent-decoded (`DELETE /api/rooms/{id}`): as a
/// path, not a query (`&`, `=` and `+` are themselves; decoding it as one
/// let `scratch&v=payroll` name `payroll`).
fn last_segment(req: &Request<Incoming>) -> Result<String, ApiError> {
    let raw = req.uri().path().rsplit('/').next().unwrap_or("");
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|e| ApiError::invalid(format!("bad path segment: {e}")))
}

/// Checks the API is enabled and the request carries its key.
fn authorize(req: &Request<Incoming>, shared: &Shared) -> Result<(), ApiError> {
    let Some(api) = &shared.api else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_disabled",
            "the HTTP API is disabled: start the server with an API key (CHORUS_API_KEY or `[api] key` in the config)",
        ));
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(key) if api.key.matches(key.trim()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong API key",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing API key: send `Authorization: Bearer <key>`",
        )),
    }
}

async fn dispatch(endpoint: Endpoint, req: Request<Incoming>, shared: &Arc<Shared>) -> ApiResult {
    match endpoint {
        Endpoint::Broadcast => broadcast::post(json_body(req, shared).await?, shared).await,
        Endpoint::Presence => presence::get(&topic_param(&req)?, shared).await,
        Endpoint::PresenceCount => presence::count(&topic_param(&req)?, shared).await,
        Endpoint::Disconnect => disconnect::post(json_body(req, shared).await?, shared).await,
        Endpoint::Cluster => cluster::get(shared).await,
        Endpoint::History => {
            let query = Query::parse(req.uri().query().unwrap_or(""))
                .map_err(|e| ApiError::invalid(format!("bad query string: {e}")))?;
            match query.get("since") {
                Some(since) => {
                    // `limit` does not apply then, but a bad one is still refused.
                    rooms::check_limit(query.get("limit"))?;
                    rooms::history_since(&topic_param(&req)?, since, shared)
                }
                None => rooms::history(&topic_param(&req)?, query.get("limit"), shared),
            }
        }
        Endpoint::Rooms => rooms::list(shared),
        Endpoint::CreateRoom => rooms::create(json_body(req, shared).await?, shared).await,
        Endpoint::DeleteRoom => rooms::delete(&last_segment(&req)?, shared).await,
        Endpoint::OpenApi => Ok(raw_json(
            StatusCode::OK,
            Bytes::from_static(OPENAPI_JSON.as_bytes()),
        )),
    }
}

/// The request body as `T`: 413 past `max_frame_size`, 400 if it is not JSON or
/// not a `T` (serde's message names the field).
async fn json_body<T: DeserializeOwned>(
    req: Request<Incoming>,
    shared: &Shared,
) -> Result<T, ApiError> {
    let limit = shared.config.max_frame_size;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = Limited::new(req.into_body(), limit).collect();
    let Ok(read) = tokio::time::timeout(shared.config.handshake_timeout, read).await else {
        shared
            .metrics
            .limit_exceeded(metrics::limit::HANDSHAKE_TIMEOUT);
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body did not arrive within the handshake timeout",
        ));
    };
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body could not be read: {e}"),
            ))
        }
    };
    if let Err(e) = check_json(&body, shared.config.client_limits.json) {
        shared.metrics.limit_exceeded(e.limit());
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "json_limit_exceeded",
            format!("the body breaks a limit: {e}"),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_request"
        } else {
            "malformed_json"
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

/// For an optional body field: absent is `None`, but an explicit `null` is refused
/// like any other value of the wrong type (openapi.json declares these fields as
/// strings, not nullable). Use with `#[serde(default, deserialize_with = "...")]`.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// The `topic` query parameter, without control characters.
fn topic_param(req: &Request<Incoming>) -> Result<String, ApiError> {
    let query = Query::parse(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("bad query string: {e}")))?;
    match query.get("topic") {
        Some(topic) if !topic.is_empty() => {
            check_printable("topic", topic)?;
            Ok(topic.to_owned())
        }
        _ => Err(ApiError::invalid("missing query parameter `topic`")),
    }
}

/// 400 `invalid_request` for a name with a control character (Unicode `Cc`:
/// U+0000–U+001F, U+007F–U+009F): topics and events end up in logs, frames and
/// other systems' keys, where these characters forge lines or cut strings.
pub(crate) fn check_printable(field: &str, value: &str) -> Result<(), ApiError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(ApiError::invalid(format!(
            "`{field}` must not contain control characters (found U+{:04X})",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole_and_debug_redacts() {
        let key = ApiKey::new("s3cret-key");
        assert!(key.matches("s3cret-key"));
        assert!(!key.matches("s3cret-kez"));
        assert!(!key.matches("s3cret"));
        assert!(!key.matches(""));
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!(!ApiKey::new("").matches(""), "an empty key matches nothing");
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        for (method, path) in routes() {
            let op = &doc["paths"][path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path} is not in openapi.json");
        }
    }
}
