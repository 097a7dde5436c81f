//! The server's edge under abuse: connections that never finish their request
//! are closed after the handshake timeout while the node keeps answering, and
//! connections over the cap get a clear 503 instead of hanging.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chorus_gateway::server::{ApiKey, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{Client, NodeBuilder};

/// One request on a fresh connection (`Connection: close`); the whole answer.
async fn raw_request(addr: SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .context("no answer within 5 s")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn healthz(addr: SocketAddr) -> anyhow::Result<String> {
    raw_request(
        addr,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
}

/// `chorus_limit_exceeded_total{limit="<limit>"}` from `/metrics`.
async fn limit_count(addr: SocketAddr, limit: &str) -> anyhow::Result<u64> {
    let text = raw_request(
        addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await?;
    let series = format!("chorus_limit_exceeded_total{{limit=\"{limit}\"}} ");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .with_context(|| format!("no {series} in {text}"))?;
    Ok(line.trim().parse()?)
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_finished_requests_are_closed_and_health_still_answers() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(ServerConfig {
            handshake_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        })
        .start()
        .await?;
    // 200 clients each send half a request (the headers never end), plus one
    // that sends nothing at all.
    let mut loris = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(node.addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await?;
        loris.push(stream);
    }
    loris.push(TcpStream::connect(node.addr).await?);
    // The node answers others meanwhile.
    let answer = healthz(node.addr).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Every one of them is closed by the server after the timeout.
    let started = Instant::now();
    for (i, stream) in loris.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "connection {i} still open after {:?}",
            started.elapsed()
        );
    }
    assert!(healthz(node.addr).await?.starts_with("HTTP/1.1 200"));
    let counted = limit_count(node.addr, "handshake_timeout_ms").await?;
    assert!(counted >= 201, "{counted} timeouts counted");
    node.stop().await
}

#[tokio::test]
async fn a_body_that_never_arrives_is_cut_off_with_408() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(ServerConfig {
            handshake_timeout: Duration::from_millis(300),
            api_key: Some(ApiKey::new("k")),
            ..ServerConfig::default()
        })
        .start()
        .await?;
    // An API POST whose body stops after one byte: 408, and the connection
    // is closed (the rest of the body is not waited for).
    let mut stream = TcpStream::connect(node.addr).await?;
    stream
        .write_all(
            b"POST /api/broadcast HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .context("the connection stayed open")??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(limit_count(node.addr, "handshake_timeout_ms").await? >= 1);
    node.stop().await
}

#[tokio::test]
async fn over_the_cap_a_websocket_gets_503_and_a_longpoll_500() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        })
        .start()
        .await?;
    let _a = node.client("vsn=2.0.0").await?;
    let _b = node.client("vsn=2.0.0").await?;
    match Client::connect(&node.url("vsn=2.0.0")).await {
        Ok(_) => bail!("a third WebSocket was accepted over the cap of 2"),
        Err(e) => assert!(e.to_string().contains("503"), "{e}"),
    }
    let answer = raw_request(
        node.addr,
        "GET /socket/longpoll?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await?;
    assert!(answer.ends_with(r#"{"status":500}"#), "{answer}");
    assert_eq!(limit_count(node.addr, "max_connections").await?, 2);
    node.stop().await
}

#[tokio::test]
async fn over_the_cap_an_idle_tcp_connection_gets_503_at_once() -> anyhow::Result<()> {
    let node = NodeBuilder::new()
        .config(ServerConfig {
            max_connections: 3,
            ..ServerConfig::default()
        })
        .start()
        .await?;
    // Three connections that send nothing hold every slot of the HTTP phase.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(node.addr).await?);
    }
    // The next one is answered without sending anything, and closed.
    let mut over = TcpStream::connect(node.addr).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut answer))
        .await
        .context("the connection over the cap hung")??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
            && answer.ends_with("\r\n\r\ntoo many connections\n"),
        "{answer}"
    );
    // Once they go, the node answers again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = healthz(node.addr).await?;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        if Instant::now() > deadline {
            bail!("still refused after the idle connections closed: {answer}");
        }
        tokio::task::yield_now().await;
    }
    assert!(limit_count(node.addr, "max_connections").await? >= 1);
    node.stop().await
}
