//! The WebSocket handshake at `GET /socket/websocket`, with Phoenix's checks in Phoenix's order (PROTOCOL §1.2):
//! method, `vsn` (403), subprotocols (403 when offered without `phoenix`; `phoenix`
//! echoed), then the connect hook (403). Only then is the connection upgraded and
//! handed to a [`Connection`] task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, Instrument};

use super::connection::{Connection, Setup};
use crate::protocol::{Query, Subprotocols};
use crate::server::http::{text, HttpBody};
use crate::server::metrics::limit;
use crate::server::Shared;
use crate::socket::Session;

/// The WebSocket endpoint (Phoenix's `socket "/socket"` + `/websocket`).
pub const WEBSOCKET_PATH: &str = "/socket/websocket";

/// A connection for a plain TCP socket taken out of hyper's `Upgraded`, with
/// the bytes hyper read past the upgrade request. A plain function, so that
/// nothing used to build it stays in the task's future.
fn plain_connection(
    shared: Arc<Shared>,
    conn: u64,
    setup: Box<Setup>,
    parts: hyper::upgrade::Parts<TokioIo<TcpStream>>,
) -> Box<Connection<TcpStream>> {
    Connection::new(shared, conn, setup, parts.io.into_inner()).with_early_bytes(&parts.read_buf)
}

/// Registers a connection for the server's drain and counts it. A plain
/// function: an `async fn` would keep its arguments in every connection's
/// task for the connection's whole life.
fn started<S>(shared: &Shared, conn: u64, connection: Box<Connection<S>>) -> Box<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.register(conn, connection.drain());
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    connection
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request
/// (`Upgrade: websocket`, `Connection: upgrade`, version 13), else `None`.
pub(crate) fn upgrade_key(headers: &HeaderMap) -> Option<String> {
    let is_websocket = has_token(headers, "upgrade", "websocket")
        && has_token(headers, "connection", "upgrade")
        && header(headers, "sec-websocket-version") == Some("13");
    header(headers, "sec-websocket-key")
        .filter(|_| is_websocket)
        .map(str::to_owned)
}

/// The subprotocols the client offered: `Ok(None)` when it offered none,
/// `Err(())` when they do not include `phoenix` (refuse with 403).
pub(crate) fn offered_subprotocols(headers: &HeaderMap) -> Result<Option<Subprotocols>, ()> {
    let offered: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    match Subprotocols::parse(&offered.join(",")) {
        Ok(s) if s.phoenix => Ok(Some(s)),
        Ok(_) | Err(_) => Err(()),
    }
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

pub(crate) async fn upgrade(
    req: &mut Request<Incoming>,
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::Sender<()>,
) -> Response<HttpBody> {
    let headers = req.headers();
    let Some(key) = upgrade_key(headers) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if !super::origin::allowed(&shared.config.allowed_origins, headers) {
        debug!(origin = ?headers.get("origin"), "refusing connect: origin not allowed");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let Ok(query) = Query::parse(req.uri().query().unwrap_or("")) else {
        return text(StatusCode::BAD_REQUEST, "");
    };
    let Ok(vsn) = query.vsn() else {
        debug!(query = ?req.uri().query(), "refusing connect: unsupported vsn");
        return text(StatusCode::FORBIDDEN, "");
    };
    let Ok(subprotocols) = offered_subprotocols(headers) else {
        debug!("refusing connect: subprotocols offered without `phoenix`");
        return text(StatusCode::FORBIDDEN, "");
    };
    let auth_token = subprotocols
        .as_ref()
        .and_then(|s| s.auth_token.as_deref())
        .or(bearer(headers));
    let (verdict, hook_headers) =
        super::authenticate(&shared, &query.params(), auth_token, headers).await;
    let Ok(info) = verdict else {
        debug!("refusing connect: denied by the authenticator");
        return text(StatusCode::FORBIDDEN, "");
    };
    if shared.draining.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "");
    }
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        shared.metrics.limit_exceeded(limit::MAX_CONNECTIONS);
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    // Boxed, with the headers some hook forwards, into one pointer: the task
    // below keeps what it captures for its whole life. 24 B less there puts
    // the task's cell (allocated in steps of 128 B) a step lower.
    let session = Box::new(
        Session::new(vsn, shared.router.clone(), shared.config.session.clone())
            .with_id(info.id)
            .with_assigns(info.assigns),
    );
    let setup = Box::new((session, hook_headers));
    let on_upgrade = hyper::upgrade::on(req);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("conn", id = conn);
    tokio::spawn(
        async move {
            let upgraded =
                match tokio::time::timeout(shared.config.handshake_timeout, on_upgrade).await {
                    Ok(Ok(upgraded)) => upgraded,
                    Ok(Err(e)) => {
                        debug!(error = %e, "upgrade failed");
                        return;
                    }
                    Err(_) => {
                        shared.metrics.limit_exceeded(limit::HANDSHAKE_TIMEOUT);
                        debug!("upgrade not completed within the handshake timeout");
                        return;
                    }
                };
            // A plain TCP socket is served as itself, not through hyper's
            // boxed `Upgraded` (two more layers of calls on every read and
            // write); the bytes hyper read past the request come first.
            // Anything else (TLS) stays in its `Upgraded`.
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let connection = plain_connection(shared.clone(), conn, setup, parts);
                    started(&shared, conn, connection).run().await;
                }
                Err(upgraded) => {
                    let connection =
                        Connection::new(shared.clone(), conn, setup, TokioIo::new(upgraded));
                    started(&shared, conn, connection).run().await;
                }
            }
            shared.unregister(conn);
            drop(permit);
            drop(done);
        }
        .instrument(span),
    );
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("connection", HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    if subprotocols.is_some() {
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("phoenix"),
        );
    }
    response
}
