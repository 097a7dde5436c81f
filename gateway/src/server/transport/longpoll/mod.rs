//! The LongPoll transport at `/socket/longpoll` (PROTOCOL §6), for clients that
//! cannot keep a WebSocket open (phoenix.js `transport: LongPoll`, or its
//! `longPollFallbackMs` fallback).
//!
//! Every answer is HTTP 200 with the protocol status in a JSON body
//! (`{"status":410,"token":…,"messages":[]}`); `OPTIONS` is the CORS preflight.
//!
//! - `GET` without a valid session token runs the connect hook (query params,
//!   `X-Phoenix-AuthToken`) and starts a session: 410 and a new token (403 if
//!   refused). With a token it polls: 200 and the waiting frames at once, or held
//!   up to the window (10 s) and 204; a session that has ended: 410 without a
//!   token (phoenix.js: `session_gone`, it reconnects).
//! - `POST` (`application/x-ndjson`, at most 100 lines, base64 lines are binary
//!   frames) runs the frames and answers 200; their replies come on the next poll.
//!   No session: 410; over `max_frame_size`: 413; a line that does not decode: 400;
//!   a body not read within the handshake timeout, no place in the session's
//!   queue within the window (its body is not read), or not run within the
//!   window: 408.
//! - A session is bound to the connect request that started it (token.rs): a
//!   request with other params or another auth-token header gets 403.
//!
//! A session lives on the node that started it (`session`); its token is signed
//! with the cluster-wide [`LongPollKey`] and names that node (`token`), so a
//! request that lands anywhere in the cluster is verified there and forwarded to
//! the owner (`forward`): no sticky sessions needed.

mod forward;
mod session;
mod token;

pub use session::{body_lines, decode_line, LineError, MAX_LINES};
pub use token::{derive_key, sign as sign_token, verify as verify_token, Binding, SessionRef};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::driver::SessionDriver;
use crate::limits::ConnectionVerdict;
use crate::protocol::Query;
use crate::server::http::{text, HttpBody};
use crate::server::metrics::limit;
use crate::server::{Peer, ServerConfig, Shared};
use crate::socket::{Session, SessionConfig};
use forward::Forwarded;
use session::{status, Answer, LpSession, LpTiming, Op};

/// The LongPoll endpoint (Phoenix's `socket "/socket"` + `/longpoll`).
pub const LONGPOLL_PATH: &str = "/socket/longpoll";

/// The key LongPoll session tokens are signed with. Every node of a cluster needs
/// the same key so that any node can verify any token: derive it from the cluster
/// secret with [`LongPollKey::derive`]. Its `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct LongPollKey([u8; 32]);

impl LongPollKey {
    /// A random key: tokens verify on this server only.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// `HMAC-SHA256(cluster_secret, "chorus longpoll v1")`.
    pub fn derive(cluster_secret: &[u8]) -> Self {
        Self(derive_key(cluster_secret))
    }

    /// A key given as bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for LongPollKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LongPollKey(..)")
    }
}

/// Places in one session's request queue: requests waiting for the session, and
/// POSTs whose body is being read (a POST takes its place first). Why 4:
/// phoenix.js has one POST and one poll in flight; the rest is room for a poll
/// that a newer one replaces and a forwarded requeue. A POST body is at most
/// `max_frame_size`, so the requests waiting for one session hold at most
/// 4 × 1 MiB by default, and one more body is the one the session runs. Past
/// them, while the session pays its byte-rate debt, a request waits for a place
/// up to the window, then gets 408 (a POST, its body unread, counted in
/// `chorus_limit_exceeded_total{limit="byte_rate"}`) or 500 (a poll).
pub(crate) const SESSION_QUEUE: usize = 4;

/// The node's LongPoll state: its sessions and its forwarded requests in flight.
#[derive(Default)]
pub(crate) struct LongPoll {
    sessions: Mutex<HashMap<u64, mpsc::Sender<session::LpRequest>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

impl LongPoll {
    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<session::LpRequest>>> {
        self.sessions.lock().expect("longpoll sessions lock")
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.pending.lock().expect("longpoll pending lock")
    }

    /// Live sessions owned by this node.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions().len()
    }
}

/// Starts serving forwarded requests for this node's sessions (see [`forward`]).
pub(crate) async fn start(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    forward::start(shared).await
}

/// Answers one request on [`LONGPOLL_PATH`].
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
    peer: &Peer,
) -> Response<HttpBody> {
    if !super::origin::allowed(&shared.config.allowed_origins, req.headers()) {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    match *req.method() {
        Method::OPTIONS => preflight(req.headers()),
        Method::GET => poll(&req, &shared, done, peer).await,
        Method::POST => send(req, &shared).await,
        _ => text(StatusCode::BAD_REQUEST, ""),
    }
}

/// The CORS preflight: Phoenix's headers, echoing the requested ones.
fn preflight(headers: &HeaderMap) -> Response<HttpBody> {
    let requested: Vec<&str> = headers
        .get_all("access-control-request-headers")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut response = text(StatusCode::OK, "");
    let out = response.headers_mut();
    out.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    if let Ok(value) = HeaderValue::from_str(&requested.join(", ")) {
        out.insert("access-control-allow-headers", value);
    }
    out.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("get, post, options"),
    );
    out.insert("access-control-max-age", HeaderValue::from_static("3600"));
    response
}

/// A JSON answer: HTTP 200, the status in the body, CORS open (requests are
/// authenticated by their token, not by cookies).
fn json_response(
    status: u16,
    token: Option<&str>,
    messages: Option<&[String]>,
) -> Response<HttpBody> {
    let mut body = json!({ "status": status });
    if let Some(token) = token {
        body["token"] = token.into();
    }
    if let Some(messages) = messages {
        body["messages"] = messages.into();
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

/// The session token: the `x-phoenix-longpoll-token` header (Phoenix ≥ 1.8.10) or
/// the `token` query param.
fn session_token<'a>(headers: &'a HeaderMap, query: Option<&'a Query>) -> Option<&'a str> {
    headers
        .get("x-phoenix-longpoll-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query.and_then(|q| q.get("token")))
        .filter(|t| !t.is_empty())
}

/// How long a caller waits for a session to answer `op`: a poll is held up to the
/// window, anything else runs at once.
pub(crate) fn wait_for(config: &ServerConfig, op: &Op) -> Duration {
    match op {
        Op::Poll => config.longpoll_window + forward::SLACK,
        Op::Send { .. } | Op::Requeue(_) => config.longpoll_window,
    }
}

/// Runs `op` on a session of this node, waiting up to `wait` in all: for a
/// place in its queue, then for its answer.
pub(crate) async fn call_local(shared: &Shared, id: u64, op: Op, wait: Duration) -> Forwarded {
    let deadline = Instant::now() + wait;
    match reserve(shared, id, deadline).await {
        Ok(place) => place.call(op, deadline).await,
        Err(Forwarded::TimedOut) if matches!(op, Op::Send { .. }) => {
            no_place_for_a_post(shared);
            Forwarded::TimedOut
        }
        Err(ended) => ended,
    }
}

/// A place taken in the queue of a session of this node ([`SESSION_QUEUE`]).
struct Place(mpsc::OwnedPermit<session::LpRequest>);

/// Takes a place in the queue of session `id`, waiting until `deadline` for
/// one: `Gone` if there is no such session, `TimedOut` if none came.
async fn reserve(shared: &Shared, id: u64, deadline: Instant) -> Result<Place, Forwarded> {
    let Some(tx) = shared.longpoll.sessions().get(&id).cloned() else {
        return Err(Forwarded::Gone);
    };
    match tokio::time::timeout_at(deadline, tx.reserve_owned()).await {
        Ok(Ok(permit)) => Ok(Place(permit)),
        Ok(Err(_)) => Err(Forwarded::Gone),
        Err(_) => Err(Forwarded::TimedOut),
    }
}

/// A POST found no place in its session's queue within the window: the session
/// is paying its byte-rate debt (nothing else keeps a queue full that long).
fn no_place_for_a_post(shared: &Shared) {
    shared.config.limit_counter.hit("byte_rate");
    debug!("LongPoll: no place for a POST in its session's queue within the window");
}

impl Place {
    /// Queues `op` and waits until `deadline` for the session's answer. A POST
    /// given up on here is not run later: the session drops a send whose
    /// caller is gone.
    async fn call(self, op: Op, deadline: Instant) -> Forwarded {
        let (reply, answer) = oneshot::channel();
        self.0.send(session::LpRequest { op, reply });
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) if answer.status == status::GONE => Forwarded::Gone,
            Ok(Ok(answer)) => Forwarded::Answer(answer),
            Ok(Err(_)) => Forwarded::Gone,
            Err(_) => Forwarded::TimedOut,
        }
    }
}

/// Runs `op` on the session `token` names (verified as `session`), wherever it lives.
async fn call(shared: &Arc<Shared>, session: &SessionRef, token: &str, op: Op) -> Forwarded {
    let wait = wait_for(&shared.config, &op);
    if session.owner == *shared.hub.node_id() {
        call_local(shared, session.id, op, wait).await
    } else {
        forward::call(shared, session, token, op, wait).await
    }
}

/// The `X-Phoenix-AuthToken` header.
fn auth_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok())
}

/// Whether a request carrying the session token of `session` comes from the
/// connect request that started it: the same query params (the session token's
/// own pair aside) and, when `check_auth` or the request carries one, the same
/// auth-token header. See [`token`] on binding.
fn bound(
    shared: &Shared,
    session: &SessionRef,
    token: &str,
    query: Option<&Query>,
    headers: &HeaderMap,
    check_auth: bool,
) -> bool {
    let auth = auth_header(headers);
    let pairs = query.into_iter().flat_map(Query::pairs);
    let binding = Binding::of(shared.config.longpoll_key.bytes(), pairs, Some(token), auth);
    let params = binding.params == session.binding.params;
    let auth_ok = (!check_auth && auth.is_none()) || binding.auth == session.binding.auth;
    if !(params && auth_ok) {
        debug!("LongPoll: refusing a request bound to another connect request (403)");
    }
    params && auth_ok
}

async fn poll(
    req: &Request<Incoming>,
    shared: &Arc<Shared>,
    done: mpsc::Sender<()>,
    peer: &Peer,
) -> Response<HttpBody> {
    let Ok(query) = Query::parse(req.uri().query().unwrap_or("")) else {
        return json_response(status::FORBIDDEN, None, None);
    };
    let token = session_token(req.headers(), Some(&query));
    let key = shared.config.longpoll_key.bytes();
    // A token that does not verify is no session token: start one, as for a
    // first poll (the token param is then the app's, phoenix.js's first poll).
    if let Some((token, session)) = token.and_then(|t| Some((t, token::verify(key, t)?))) {
        if !bound(shared, &session, token, Some(&query), req.headers(), true) {
            return json_response(status::FORBIDDEN, None, None);
        }
        return match call(shared, &session, token, Op::Poll).await {
            Forwarded::Answer(answer)
                if matches!(answer.status, status::OK | status::NO_CONTENT) =>
            {
                json_response(answer.status, Some(token), Some(&answer.messages))
            }
            // phoenix.js knows no other poll status: it reconnects on 500.
            Forwarded::Answer(_) | Forwarded::TimedOut => {
                json_response(status::SERVER_ERROR, None, None)
            }
            // The session ended (timed out, closed, its node gone): 410, and no
            // new session. The client holds a token, so this is `session_gone`
            // to it: it reconnects from scratch, with its first poll's params.
            Forwarded::Gone => json_response(status::GONE, None, Some(&[][..])),
        };
    }
    new_session(req.headers(), &query, shared, done, peer).await
}

/// Connects and starts a session on this node: 410 with its token. A session
/// is a new connection to its address's `connection_rate`: past it, the
/// rate's own answer (HTTP 429, as to a connection the accept loop refuses;
/// phoenix.js reads no JSON in it and retries as after a 500) and the
/// connection is closed.
async fn new_session(
    headers: &HeaderMap,
    query: &Query,
    shared: &Arc<Shared>,
    done: mpsc::Sender<()>,
    peer: &Peer,
) -> Response<HttpBody> {
    if let ConnectionVerdict::Refuse { .. } = shared.charge_session(peer) {
        shared.metrics.limit_exceeded(limit::CONNECTION_RATE);
        debug!(peer = %peer.addr, "LongPoll: refusing a session: too many new connections from its address");
        return crate::server::too_many_from_address();
    }
    let Ok(vsn) = query.vsn() else {
        debug!("LongPoll: refusing connect: unsupported vsn");
        return json_response(status::FORBIDDEN, None, None);
    };
    let auth_token = auth_header(headers);
    let (verdict, hook_headers) =
        super::authenticate(shared, &query.params(), auth_token, headers).await;
    let Ok(info) = verdict else {
        debug!("LongPoll: refusing connect: denied by the authenticator");
        return json_response(status::FORBIDDEN, None, None);
    };
    if shared.draining.load(Ordering::Acquire) {
        return json_response(status::SERVER_ERROR, None, None);
    }
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        // 500, not 503: phoenix.js knows no other poll status (it reconnects).
        shared.metrics.limit_exceeded(limit::MAX_CONNECTIONS);
        return json_response(status::SERVER_ERROR, None, None);
    };
    let config = SessionConfig {
        binary_frames: false,
        ..shared.config.session.clone()
    };
    let session = Session::new(vsn, shared.router.clone(), config)
        .with_id(info.id)
        .with_assigns(info.assigns);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, requests) = mpsc::channel(SESSION_QUEUE);
    shared.longpoll.sessions().insert(conn, tx);
    let drain = Arc::new(Notify::new());
    shared.register(conn, crate::server::shutdown::Drain::Notify(drain.clone()));
    shared
        .stats
        .longpoll_sessions
        .fetch_add(1, Ordering::Relaxed);
    let timing = LpTiming {
        window: shared.config.longpoll_window,
        timeout: shared.config.longpoll_timeout,
    };
    let driver = SessionDriver::new(shared.clone(), conn, session, false).with_hooks(hook_headers);
    let task_shared = shared.clone();
    tokio::spawn(
        async move {
            LpSession::new(driver, requests, timing).run(drain).await;
            task_shared.longpoll.sessions().remove(&conn);
            task_shared.unregister(conn);
            drop(permit);
            drop(done);
        }
        .instrument(tracing::debug_span!("longpoll", id = conn)),
    );
    let token = token::sign(
        shared.config.longpoll_key.bytes(),
        &SessionRef {
            owner: shared.hub.node_id().clone(),
            id: conn,
            binding: Binding::of(
                shared.config.longpoll_key.bytes(),
                query.pairs(),
                None,
                auth_token,
            ),
        },
    );
    json_response(status::GONE, Some(&token), Some(&[][..]))
}

async fn send(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<HttpBody> {
    let query = Query::parse(req.uri().query().unwrap_or("")).ok();
    let Some(token) = session_token(req.headers(), query.as_ref()).map(str::to_owned) else {
        return json_response(status::GONE, None, None);
    };
    let Some(session) = token::verify(shared.config.longpoll_key.bytes(), &token) else {
        return json_response(status::GONE, None, None);
    };
    // phoenix.js sends no auth-token header on a POST: checked only when present.
    if !bound(
        shared,
        &session,
        &token,
        query.as_ref(),
        req.headers(),
        false,
    ) {
        return json_response(status::FORBIDDEN, None, None);
    }
    // A session of this node: a place in its queue first, then the body. While
    // the session pays its byte-rate debt its queue stays full, and a POST past
    // it is answered without its body being read. (A forwarded POST takes its
    // place on the owner, within the owner's window.)
    let wait = shared.config.longpoll_window;
    let place = if session.owner == *shared.hub.node_id() {
        match reserve(shared, session.id, Instant::now() + wait).await {
            Ok(place) => Some(place),
            Err(Forwarded::TimedOut) => {
                no_place_for_a_post(shared);
                return json_response(status::TIMEOUT, None, None);
            }
            Err(_) => return json_response(status::GONE, None, None),
        }
    } else {
        None
    };
    let ndjson = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let max = shared.config.max_frame_size;
    let read = Limited::new(req.into_body(), max).collect();
    let Ok(read) = tokio::time::timeout(shared.config.handshake_timeout, read).await else {
        shared.metrics.limit_exceeded(limit::HANDSHAKE_TIMEOUT);
        debug!("LongPoll: a POST body did not arrive within the handshake timeout");
        return json_response(status::TIMEOUT, None, None);
    };
    let body = match read {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            debug!(max, "LongPoll: refusing a POST body over the size limit");
            return json_response(status::TOO_LARGE, None, None);
        }
        Err(e) => {
            debug!(error = %e, "LongPoll: reading a POST body failed");
            return json_response(status::BAD_REQUEST, None, None);
        }
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        return json_response(status::BAD_REQUEST, None, None);
    };
    let op = Op::Send { body, ndjson };
    let outcome = match place {
        // The window again, from now: the body took its time to arrive.
        Some(place) => place.call(op, Instant::now() + wait).await,
        // The owner gives the POST the window and answers, a 408 of its own
        // included: waiting the slack longer, this node answers 408 only when
        // the owner did or its answer did not come back in time, not while the
        // owner may still run the POST.
        None => forward::call(shared, &session, &token, op, wait + forward::SLACK).await,
    };
    let answer = match outcome {
        Forwarded::Answer(answer) => answer.status,
        Forwarded::TimedOut => status::TIMEOUT,
        Forwarded::Gone => status::GONE,
    };
    json_response(answer, None, None)
}
