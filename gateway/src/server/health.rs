//! `GET /healthz`: whether the node can serve at all (a supervisor restarts it
//! when not): 200 `ok` while the cluster engine's task runs, 503 naming why
//! once it failed (a panic, a name clash) or was shut down. Clients of a node
//! without an engine are deaf and their pushes go nowhere, so liveness is the
//! engine's, not just the process's.
//!
//! `GET /readyz`: whether a load balancer should send clients here. Ready means
//! all of:
//!
//! - the server is not draining (shutdown has not begun);
//! - the engine runs and answers;
//! - the cluster is joined: some peer is up, or the engine was started without
//!   seeds (a lone node, or the first of a cluster);
//! - there is room for another connection (the connection cap is not reached);
//! - with the HTTP API enabled, its cluster-wide idempotency listener is subscribed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chorus_engine::PeerState;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::http::{json_response, text, text_owned, HttpBody};
use super::Shared;

/// The readiness check.
pub const READY_PATH: &str = "/readyz";

/// The probe of `chorus health` (a container's `HEALTHCHECK`, where no curl
/// is installed): `GET path` from the node at `addr` over plain HTTP/1.1,
/// within `timeout`; the status code answered. An unspecified address
/// (`0.0.0.0:4000`, the listen address of a container) is probed on loopback.
pub fn probe(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    use std::io::{Error, ErrorKind, Read, Write};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: `write!` would make several, and a server that answers
    // after the first and closes fails the rest with a broken pipe.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // The status line is all we need: `HTTP/1.1 200 OK`.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("not an HTTP answer: {line:?}"),
            )
        })
}

/// Answers `GET /healthz`: 200 `ok`, or 503 `engine failed: ..` /
/// `engine stopped` (`text/plain`).
pub(crate) fn live(shared: &Shared) -> Response<HttpBody> {
    let hub = &shared.hub;
    if hub.engine_running() {
        return text(StatusCode::OK, "ok\n");
    }
    match hub.engine_failure() {
        Some(e) => text_owned(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("engine failed: {e}\n"),
        ),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "engine stopped\n"),
    }
}

/// Answers `GET /readyz`: 200 `{"status":"ready"}`, or 503
/// `{"status":"not_ready","reason":..}`.
pub(crate) async fn ready(shared: &Arc<Shared>) -> Response<HttpBody> {
    match not_ready(shared).await {
        None => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": reason}),
        ),
    }
}

/// Why the node is not ready, if it is not.
async fn not_ready(shared: &Shared) -> Option<&'static str> {
    if shared.draining.load(Ordering::Acquire) {
        return Some("draining: the server is shutting down");
    }
    let hub = &shared.hub;
    if !hub.engine_running() {
        return Some("the cluster engine has stopped");
    }
    let members = tokio::time::timeout(Duration::from_secs(2), hub.members()).await;
    let Ok(Ok(members)) = members else {
        return Some("the cluster engine is not answering");
    };
    let joined = hub.seeds().is_empty() || members.iter().any(|m| m.state == PeerState::Up);
    if !joined {
        return Some("no cluster peer reached yet (seeds configured)");
    }
    if shared.limit.available_permits() == 0 {
        return Some("at the connection limit");
    }
    if let Some(api) = &shared.api {
        if !api.idempotency.is_listening() {
            return Some("the HTTP API's idempotency listener is not subscribed yet");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-shot server answering `answer` to the first request.
    fn serve_once(answer: &'static str) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            // The whole request head, then the answer.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer.as_bytes());
        });
        addr
    }

    #[test]
    fn probe_reads_the_status_line() {
        let t = Duration::from_secs(5);
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert_eq!(probe(ok, "/healthz", t).expect("answers"), 200);
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(probe(down, "/healthz", t).expect("answers"), 503);
        let junk = serve_once("SSH-2.0-OpenSSH\r\n");
        assert!(probe(junk, "/healthz", t).is_err());
        let unspecified = serve_once("HTTP/1.1 200 OK\r\n\r\n");
        let any = std::net::SocketAddr::from(([0, 0, 0, 0], unspecified.port()));
        assert_eq!(probe(any, "/healthz", t).expect("on loopback"), 200);
    }
}
