//! The HTTP router: every path the server answers, in one table. Each endpoint
//! lives in its own module; this one only dispatches and holds the small response
//! helpers they share.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::dev;
use super::longpoll::{self, LONGPOLL_PATH};
use super::websocket::{self, WEBSOCKET_PATH};
use super::Shared;

/// The health check: the process is up.
pub const HEALTH_PATH: &str = "/healthz";

/// Every response body: whole, in memory.
pub(crate) type Body = Full<Bytes>;

/// Answers one HTTP request.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::Sender<()>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let response = match (req.method(), path) {
        (&Method::GET, HEALTH_PATH) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/") if shared.config.dev_tokens.is_some() => dev::index(),
        (&Method::GET, "/assets/phoenix.min.js") => dev::phoenix_js(),
        (&Method::GET, "/dev/token") => match &shared.config.dev_tokens {
            Some(tokens) => dev::token(tokens, req.uri().query()),
            None => text(StatusCode::NOT_FOUND, "not found (dev mode is off)\n"),
        },
        (&Method::GET, WEBSOCKET_PATH) => websocket::upgrade(&mut req, shared, done),
        (_, WEBSOCKET_PATH) => text(StatusCode::BAD_REQUEST, ""),
        (_, LONGPOLL_PATH) => longpoll::handle(req, shared, done).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
