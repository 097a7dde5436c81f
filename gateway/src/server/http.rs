//! The HTTP router: every path the server answers, in one table. Each endpoint
//! lives in its own module; this one only dispatches and holds the small response
//! helpers they share.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::api;
use super::dev;
use super::health::{self, READY_PATH};
use super::metrics::{self, METRICS_PATH};
use super::transport::longpoll::{self, LONGPOLL_PATH};
use super::transport::websocket::{self, WEBSOCKET_PATH};
use super::Shared;

/// The health check: the process is up.
pub const HEALTH_PATH: &str = "/healthz";

/// Every response body: whole, in memory.
pub(crate) type HttpBody = Full<Bytes>;

/// Answers one HTTP request.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::Sender<()>,
) -> Result<Response<HttpBody>, Infallible> {
    let path = req.uri().path();
    if api::owns(path) {
        return Ok(api::handle(req, shared).await);
    }
    let response = match (req.method(), path) {
        (&Method::GET, HEALTH_PATH) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/") if shared.config.dev_tokens.is_some() => dev::index(),
        (&Method::GET, "/assets/phoenix.min.js") => dev::phoenix_js(),
        (&Method::GET, "/dev/token") => match &shared.config.dev_tokens {
            Some(tokens) => dev::token(tokens, req.uri().query()),
            None => text(StatusCode::NOT_FOUND, "not found (dev mode is off)\n"),
        },
        (&Method::GET, READY_PATH) => health::ready(&shared).await,
        (&Method::GET, METRICS_PATH) => metrics::respond(&shared).await,
        (&Method::GET, WEBSOCKET_PATH) => websocket::upgrade(&mut req, shared, done),
        (_, WEBSOCKET_PATH) => text(StatusCode::BAD_REQUEST, ""),
        (_, LONGPOLL_PATH) => longpoll::handle(req, shared, done).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<HttpBody> {
    raw_json(status, Bytes::from(body.to_string()))
}

/// A response whose body is already JSON text.
pub(crate) fn raw_json(status: StatusCode, body: Bytes) -> Response<HttpBody> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The error shape of the JSON endpoints: `{"error":{"code":..,"message":..}}`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<HttpBody> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}
