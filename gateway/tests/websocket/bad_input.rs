//! Each kind of bad input closes only the offending connection, with a clear close
//! code; another client on the same server keeps working.

use crate::util::{Ended, Node};
use chorus_gateway::server::close;

enum Bad {
    Text(String),
    Binary(Vec<u8>),
}

async fn closes_only_that_connection(bad: Bad, code: u16) -> anyhow::Result<()> {
    let node = Node::start().await?;
    let mut good = node.client("vsn=2.0.0").await?;
    good.join("1", "room:ok", "{}").await?;
    let mut offender = node.client("vsn=2.0.0").await?;
    offender.join("1", "room:ok", "{}").await?;
    match bad {
        Bad::Text(text) => offender.send(&text).await?,
        Bad::Binary(bytes) => offender.send_binary(&bytes).await?,
    }
    assert_eq!(offender.ended().await?, Ended::Code(code));
    good.assert_alive("1", "room:ok").await?;
    let mut fresh = node.client("vsn=2.0.0").await?;
    fresh.join("1", "room:ok", "{}").await?;
    fresh.assert_alive("1", "room:ok").await?;
    assert_eq!(
        node.server
            .stats()
            .protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    node.stop().await
}

#[tokio::test]
async fn malformed_json() -> anyhow::Result<()> {
    closes_only_that_connection(
        Bad::Text(r#"["1","2","room:ok","ping",{"#.into()),
        close::INVALID_FRAME,
    )
    .await
}

#[tokio::test]
async fn not_a_five_element_array() -> anyhow::Result<()> {
    closes_only_that_connection(
        Bad::Text(r#"["1","2","room:ok","ping"]"#.into()),
        close::INVALID_FRAME,
    )
    .await?;
    closes_only_that_connection(
        Bad::Text(r#"{"topic":"room:ok"}"#.into()),
        close::INVALID_FRAME,
    )
    .await
}

#[tokio::test]
async fn non_object_payload() -> anyhow::Result<()> {
    closes_only_that_connection(
        Bad::Text(r#"["1","2","room:ok","ping",[1,2]]"#.into()),
        close::INVALID_FRAME,
    )
    .await
}

#[tokio::test]
async fn topic_over_255_bytes() -> anyhow::Result<()> {
    let topic = format!("room:{}", "x".repeat(300));
    closes_only_that_connection(
        Bad::Text(format!(r#"["1","2","{topic}","phx_join",{{}}]"#)),
        close::INVALID_FRAME,
    )
    .await
}

#[tokio::test]
async fn frame_over_one_mib() -> anyhow::Result<()> {
    let body = "x".repeat((1 << 20) + 16);
    closes_only_that_connection(
        Bad::Text(format!(r#"["1","2","room:ok","ping",{{"b":"{body}"}}]"#)),
        close::TOO_BIG,
    )
    .await
}

#[tokio::test]
async fn binary_with_lying_lengths() -> anyhow::Result<()> {
    // Header claims a 200-byte topic in a 20-byte frame.
    closes_only_that_connection(
        Bad::Binary(b"\x00\x01\x01\xc8\x04\x312room:okping".to_vec()),
        close::INVALID_FRAME,
    )
    .await
}

/// The handshake status for `url` with an optional `Origin`.
async fn handshake_status(url: &str, origin: Option<&str>) -> anyhow::Result<u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = url.into_client_request()?;
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse()?);
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, response)) => Ok(response.status().as_u16()),
        Err(Error::Http(response)) => Ok(response.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn sockets_from_origins_not_allowed_get_403() -> anyhow::Result<()> {
    let config = chorus_gateway::server::ServerConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        ..Default::default()
    };
    let node = crate::util::NodeBuilder::new()
        .config(config)
        .start()
        .await?;
    let url = node.url("vsn=2.0.0");
    assert_eq!(
        handshake_status(&url, Some("https://app.example.com")).await?,
        101
    );
    assert_eq!(
        handshake_status(&url, Some("https://evil.example")).await?,
        403
    );
    assert_eq!(
        handshake_status(&url, None).await?,
        101,
        "no Origin: not a browser"
    );
    // LongPoll is checked the same way.
    let stream = tokio::net::TcpStream::connect(node.addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/socket/longpoll?vsn=2.0.0")
        .header("host", "127.0.0.1")
        .header("origin", "https://evil.example")
        .body(http_body_util::Empty::new())?;
    assert_eq!(send.send_request(req).await?.status(), 403);
    Ok(())
}
