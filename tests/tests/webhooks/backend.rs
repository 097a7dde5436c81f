//! The test's webhook backend: an HTTP server on 127.0.0.1:0 that checks each
//! request's `X-Chorus-Signature` (HMAC-SHA256 of the body, computed here with
//! the `hmac` crate, not with the server's code) and records the events of the
//! requests it accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Received {
    /// Every event of every accepted request, in arrival order.
    pub events: Vec<Value>,
    /// Requests accepted.
    pub requests: usize,
    /// Requests refused for a missing or wrong signature.
    pub bad_signatures: usize,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(given) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

impl Backend {
    /// Starts the backend; each accepted request is answered after `delay`.
    pub async fn start(secret: &'static str, delay: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let signature = req
                                .headers()
                                .get("x-chorus-signature")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = match req.into_body().collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            let status = if !valid(secret.as_bytes(), &body, signature.as_deref()) {
                                store.lock().expect("backend lock").bad_signatures += 1;
                                StatusCode::UNAUTHORIZED
                            } else if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                                tokio::time::sleep(delay).await;
                                let mut r = store.lock().expect("backend lock");
                                r.requests += 1;
                                r.events
                                    .extend(json["events"].as_array().cloned().unwrap_or_default());
                                StatusCode::OK
                            } else {
                                StatusCode::BAD_REQUEST
                            };
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// How many events named `name` (for `user`, if given) arrived.
    pub fn count(&self, name: &str, user: Option<&str>) -> usize {
        self.received
            .lock()
            .expect("backend lock")
            .events
            .iter()
            .filter(|e| e["name"] == name && user.is_none_or(|u| e["user_id"] == u))
            .count()
    }

    pub fn bad_signatures(&self) -> usize {
        self.received.lock().expect("backend lock").bad_signatures
    }

    pub fn events(&self) -> Vec<Value> {
        self.received.lock().expect("backend lock").events.clone()
    }
}
