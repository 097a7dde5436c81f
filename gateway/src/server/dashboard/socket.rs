//! `GET /dashboard/websocket`: the dashboard's own Phoenix socket. It speaks the
//! v2 JSON protocol (phoenix.js's default) for one channel, the internal topic
//! [`topics::DASHBOARD`], and is authorized by the API key (phoenix.js's
//! `authToken`, sent as the `base64url.bearer.phx.` subprotocol, or
//! `Authorization: Bearer`), never by a user token: the user socket at
//! `/socket/websocket` refuses the topic like every internal one.
//!
//! The channel relays, as `node` pushes, the snapshot every node of the cluster
//! publishes on the topic each second ([`super::publish`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use chorus_engine::runtime::{Delivery, Subscription};
use chorus_engine::Topic;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::protocol::Query;
use crate::server::http::{text, HttpBody};
use crate::server::metrics::limit;
use crate::server::transport::close;
use crate::server::transport::websocket::{bearer, offered_subprotocols, upgrade_key};
use crate::server::Shared;
use crate::topics;

/// The dashboard's socket endpoint (phoenix.js `new Socket("/dashboard")`).
pub const DASHBOARD_SOCKET_PATH: &str = "/dashboard/websocket";

/// Largest frame the dashboard accepts from its page (joins, heartbeats).
const MAX_FRAME: usize = 64 * 1024;

/// Answers the upgrade: 404 when the dashboard is off, 400 when not a
/// WebSocket upgrade, 403 for a wrong origin, `vsn` or key.
pub(crate) fn upgrade(
    req: &mut Request<Incoming>,
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::Sender<()>,
) -> Response<HttpBody> {
    let Some(key) = super::enabled_key(&shared) else {
        return super::disabled();
    };
    let headers = req.headers();
    let Some(ws_key) = upgrade_key(headers) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if !crate::server::transport::origin::allowed(&shared.config.allowed_origins, headers) {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let vsn_ok = Query::parse(req.uri().query().unwrap_or(""))
        .ok()
        .is_some_and(|q| q.get("vsn").is_some_and(|v| v.starts_with("2.")));
    if !vsn_ok {
        return text(StatusCode::FORBIDDEN, "the dashboard speaks vsn 2.0.0\n");
    }
    let Ok(subprotocols) = offered_subprotocols(headers) else {
        return text(StatusCode::FORBIDDEN, "");
    };
    let presented = subprotocols
        .as_ref()
        .and_then(|s| s.auth_token.as_deref())
        .or(bearer(headers));
    if !presented.is_some_and(|p| key.matches(p)) {
        debug!("refusing a dashboard socket: missing or wrong API key");
        return text(StatusCode::FORBIDDEN, "the dashboard needs the API key\n");
    }
    if shared.draining.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "");
    }
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        shared.metrics.limit_exceeded(limit::MAX_CONNECTIONS);
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    let on_upgrade = hyper::upgrade::on(req);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let upgraded = match tokio::time::timeout(shared.config.handshake_timeout, on_upgrade).await
        {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => {
                debug!(error = %e, "dashboard upgrade failed");
                return;
            }
            Err(_) => {
                shared.metrics.limit_exceeded(limit::HANDSHAKE_TIMEOUT);
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let drain = Arc::new(Notify::new());
        shared.register(conn, crate::server::shutdown::Drain::Notify(drain.clone()));
        let code = serve(&shared, ws, &drain).await;
        shared.unregister(conn);
        debug!(conn, code, "dashboard socket closed");
        drop(permit);
        drop(done);
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(ws_key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    if subprotocols.is_some() {
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("phoenix"),
        );
    }
    response
}

/// One incoming frame, as phoenix.js v2 sends it:
/// `[join_ref, ref, topic, event, payload]`.
type InFrame = (Option<String>, Option<String>, String, String, Value);

/// What ended the socket: the close code sent (0: the client left).
async fn serve<S>(shared: &Shared, mut ws: WebSocketStream<S>, drain: &Notify) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The channel, once joined: its join ref and the engine subscription.
    let mut joined: Option<(String, Subscription)> = None;
    // The page must send something (phoenix.js heartbeats every 30 s) within
    // the idle timeout, and take each frame within SEND_TIMEOUT.
    let idle = shared.config.idle_timeout;
    let mut quiet_until = tokio::time::Instant::now() + idle;
    let code = loop {
        let snapshot = async {
            match joined.as_mut() {
                Some((_, sub)) => sub.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = drain.notified() => break close::RESTART,
            () = tokio::time::sleep_until(quiet_until) => break close::SERVER_ERROR,
            read = ws.next() => {
                quiet_until = tokio::time::Instant::now() + idle;
                let text = match read {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break 0,
                    Some(Ok(Message::Binary(_))) => break close::INVALID_FRAME,
                    Some(Err(_)) => break close::PROTOCOL,
                };
                let Ok(frame) = serde_json::from_str::<InFrame>(text.as_str()) else {
                    break close::INVALID_FRAME;
                };
                let reply = handle(shared, frame, &mut joined).await;
                if !send(&mut ws, reply.to_string()).await {
                    break 0;
                }
            }
            delivery = snapshot => {
                let Some(delivery) = delivery else {
                    // Dropped by the engine (too slow) or the engine stopped:
                    // the page reconnects and joins again.
                    break close::SERVER_ERROR;
                };
                let Delivery::Broadcast(bytes) = delivery else { continue };
                // A peer's snapshot: checked to be JSON before it reaches a page.
                let Ok(body) = serde_json::from_slice::<Value>(&bytes) else { continue };
                let join_ref = joined.as_ref().map(|(r, _)| r.as_str());
                let push = json!([join_ref, null, topics::DASHBOARD, "node", body]);
                if !send(&mut ws, push.to_string()).await {
                    break 0;
                }
            }
        }
    };
    // Dropping the subscription unsubscribes.
    drop(joined);
    if code != 0 {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "dashboard socket closed".into(),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(None)).await;
    code
}

/// A page that does not take a frame within this long is dropped: its socket
/// is not read, and the task ends instead of waiting on it.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one text frame within [`SEND_TIMEOUT`]; false when it was not sent.
async fn send<S>(ws: &mut WebSocketStream<S>, text: String) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await,
        Ok(Ok(()))
    )
}

/// Handles one frame of the page; returns the reply to send.
async fn handle(
    shared: &Shared,
    (join_ref, msg_ref, topic, event, _payload): InFrame,
    joined: &mut Option<(String, Subscription)>,
) -> Value {
    let reply = |status: &str, response: Value| json!([join_ref, msg_ref, topic, "phx_reply", {"status": status, "response": response}]);
    match (topic.as_str(), event.as_str()) {
        ("phoenix", "heartbeat") => reply("ok", json!({})),
        (topics::DASHBOARD, "phx_join") => {
            let Some(join_ref) = join_ref.clone() else {
                return reply("error", json!({"reason": "join without a join_ref"}));
            };
            // A second join replaces the first (its subscription dropped).
            *joined = None;
            match shared
                .hub
                .subscribe_internal(Topic::new(topics::DASHBOARD))
                .await
            {
                Ok(sub) => {
                    *joined = Some((join_ref, sub));
                    let me = shared.hub.node_id();
                    reply(
                        "ok",
                        json!({"node": me.to_string(), "name": me.name.as_str(),
                               "interval_ms": super::INTERVAL.as_millis() as u64}),
                    )
                }
                Err(e) => reply("error", json!({"reason": format!("engine: {e}")})),
            }
        }
        (topics::DASHBOARD, "phx_leave") => {
            *joined = None;
            reply("ok", json!({}))
        }
        (_, "phx_join") => reply("error", json!({"reason": "unmatched topic"})),
        _ => reply("error", json!({"reason": "unknown event"})),
    }
}
