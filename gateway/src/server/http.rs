//! The HTTP router: every path the server answers, in one table. Each endpoint
//! lives in its own module; this one only dispatches and holds the small response
//! helpers they share.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::api;
use super::dashboard::{self, socket::DASHBOARD_SOCKET_PATH, DASHBOARD_PATH};
use super::dev;
use super::health::{self, READY_PATH};
use super::metrics::{self, METRICS_PATH};
use super::transport::longpoll::{self, LONGPOLL_PATH};
use super::transport::websocket::{self, WEBSOCKET_PATH};
use super::{Peer, Shared};

/// The health check: the process is up and its cluster engine runs.
pub const HEALTH_PATH: &str = "/healthz";

/// Every response body: whole, in memory.
pub(crate) type HttpBody = Full<Bytes>;

/// Answers one HTTP request.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::Sender<()>,
    peer: Arc<Peer>,
) -> Result<Response<HttpBody>, Infallible> {
    let path = req.uri().path();
    if api::owns(path) {
        return Ok(api::handle(req, shared).await);
    }
    let response = match (req.method(), path) {
        (&Method::GET, HEALTH_PATH) => health::live(&shared),
        // The operational endpoints take GET only: another method is a 405 with
        // `Allow`, as under /api (openapi.json: components.responses.MethodNotAllowed).
        (_, HEALTH_PATH | READY_PATH | METRICS_PATH) if req.method() != Method::GET => {
            method_not_allowed(path, &["GET"])
        }
        (&Method::GET, "/") if shared.config.dev_tokens.is_some() => dev::index(),
        (&Method::GET, "/assets/phoenix.min.js") => dev::phoenix_js(),
        (&Method::GET, "/dev/token") => match &shared.config.dev_tokens {
            Some(tokens) => dev::token(tokens, req.uri().query()),
            None => text(StatusCode::NOT_FOUND, "not found (dev mode is off)\n"),
        },
        (&Method::GET, DASHBOARD_PATH) => dashboard::page(&shared),
        (&Method::GET, DASHBOARD_SOCKET_PATH) => dashboard::socket::upgrade(&mut req, shared, done),
        (&Method::GET, READY_PATH) => health::ready(&shared).await,
        (&Method::GET, METRICS_PATH) => metrics::respond(&shared).await,
        (&Method::GET, WEBSOCKET_PATH) => websocket::upgrade(&mut req, shared, done).await,
        (_, WEBSOCKET_PATH) => text(StatusCode::BAD_REQUEST, ""),
        (_, LONGPOLL_PATH) => longpoll::handle(req, shared, done, &peer).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// The content type of [`text`] answers.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// A plain-text response (with `Content-Type: text/plain` unless the body is empty).
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    text_bytes(status, Bytes::from_static(body.as_bytes()))
}

/// [`text`] with a body made at run time.
pub(crate) fn text_owned(status: StatusCode, body: String) -> Response<HttpBody> {
    text_bytes(status, Bytes::from(body))
}

fn text_bytes(status: StatusCode, body: Bytes) -> Response<HttpBody> {
    let empty = body.is_empty();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if !empty {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    }
    response
}

/// 405 `method_not_allowed` for a known path, with `Allow` listing its methods.
pub(crate) fn method_not_allowed(path: &str, allowed: &[&str]) -> Response<HttpBody> {
    let allowed = allowed.join(", ");
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{path} takes {allowed}"),
    );
    if let Ok(allow) = HeaderValue::from_str(&allowed) {
        response.headers_mut().insert(ALLOW, allow);
    }
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
