//! One webhook request: the JSON body, its signature, and the retries.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tracing::{debug, warn};

use super::config::EventKind;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Chorus-Signature";

/// The first retry's delay; each next one doubles, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// The longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One event as the backend receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct WireEvent {
    /// What happened.
    pub kind: EventKind,
    /// The topic.
    pub topic: String,
    /// The presence key (`member_added`, `member_removed`).
    pub user_id: Option<String>,
    /// The broadcast's event name and payload (`message`).
    pub message: Option<(String, Value)>,
}

impl WireEvent {
    fn to_json(&self) -> Value {
        let mut object = json!({"name": self.kind.name(), "topic": self.topic});
        if let Some(user) = &self.user_id {
            object["user_id"] = Value::String(user.clone());
        }
        if let Some((event, payload)) = &self.message {
            object["event"] = Value::String(event.clone());
            object["payload"] = payload.clone();
        }
        object
    }
}

/// The request body: `{"time_ms": ..., "events": [...]}`.
pub fn body(time_ms: u64, events: &[WireEvent]) -> Vec<u8> {
    let events: Vec<Value> = events.iter().map(WireEvent::to_json).collect();
    serde_json::to_vec(&json!({"time_ms": time_ms, "events": events}))
        .expect("a JSON value serializes")
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`, the signature header's value.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The delay before attempt `n + 1` (after `n` failures, `n >= 1`).
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The HTTP client webhooks are posted with. It does not follow redirects: a
/// 301/302/303 would turn the `POST` into a bodiless `GET` whose 2xx reads as a
/// delivery (the batch lost), and a 307/308 would move the events (and their
/// signature) to a URL nobody configured. A 3xx is a failed attempt.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        // What `reqwest::Client::new` expects too: only a TLS backend that
        // cannot start fails here.
        .expect("the HTTP client builds")
}

/// How a delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered 2xx, after this many attempts.
    Delivered(u32),
    /// Every attempt failed for `retry_for`; this many were made.
    GaveUp(u32),
}

/// POSTs `body` signed with `secret` to `url` until the backend answers 2xx,
/// retrying with [`backoff`] while the next attempt would start within
/// `retry_for` of the first. `client` should be [`client`]: one that follows
/// redirects counts the 2xx at the end of them.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    body: Vec<u8>,
    timeout: Duration,
    retry_for: Duration,
) -> Outcome {
    let signature = sign(secret, &body);
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => {
                return Outcome::Delivered(attempts);
            }
            Ok(response) => {
                debug!(url, status = %response.status(), attempts, "webhook refused");
            }
            Err(e) => debug!(url, error = %e, attempts, "webhook request failed"),
        }
        let delay = backoff(attempts);
        if started.elapsed() + delay > retry_for {
            warn!(
                url,
                attempts,
                bytes = body.len(),
                "webhook batch dropped: the backend did not accept it within retry_for_ms"
            );
            return Outcome::GaveUp(attempts);
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn signs_with_hmac_sha256_as_rfc_4231_says() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_carries_the_time_and_each_event_with_its_fields() {
        let events = [
            WireEvent {
                kind: EventKind::MemberAdded,
                topic: "room:1".into(),
                user_id: Some("u1".into()),
                message: None,
            },
            WireEvent {
                kind: EventKind::ChannelVacated,
                topic: "room:2".into(),
                user_id: None,
                message: None,
            },
            WireEvent {
                kind: EventKind::Message,
                topic: "room:1".into(),
                user_id: None,
                message: Some(("shout".into(), json!({"text": "hi"}))),
            },
        ];
        let body: Value = serde_json::from_slice(&body(1_790_000_000_000, &events)).unwrap();
        assert_eq!(
            body,
            json!({"time_ms": 1_790_000_000_000u64, "events": [
                {"name": "member_added", "topic": "room:1", "user_id": "u1"},
                {"name": "channel_vacated", "topic": "room:2"},
                {"name": "message", "topic": "room:1", "event": "shout", "payload": {"text": "hi"}},
            ]})
        );
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_5s() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    /// Serves HTTP/1 on a port of 127.0.0.1, each request answered by
    /// `answer`: the URL of its `/events`.
    async fn serve<F, A>(answer: F) -> String
    where
        F: Fn(Request<Incoming>) -> A + Clone + Send + Sync + 'static,
        A: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        url
    }

    /// A backend that answers 503 to its first `fail` requests, then 200; it
    /// records each body and signature header it got.
    async fn backend(fail: usize) -> (String, Arc<Mutex<Vec<(Vec<u8>, String)>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let url = serve(move |req: Request<Incoming>| {
            let (seen, calls) = (seen.clone(), calls.clone());
            async move {
                let signature = req
                    .headers()
                    .get(SIGNATURE_HEADER)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                seen.lock().unwrap().push((body.to_vec(), signature));
                let mut r = Response::new(Full::new(Bytes::new()));
                if calls.fetch_add(1, Ordering::SeqCst) < fail {
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                r
            }
        })
        .await;
        (url, got)
    }

    #[tokio::test]
    async fn a_backend_that_fails_first_gets_the_same_signed_body_again() {
        let (url, got) = backend(2).await;
        let client = client();
        let body = br#"{"time_ms":1,"events":[]}"#.to_vec();
        let outcome = post(
            &client,
            &url,
            b"k",
            body.clone(),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(outcome, Outcome::Delivered(3));
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 3);
        for (b, signature) in got.iter() {
            assert_eq!(b, &body);
            assert_eq!(signature, &sign(b"k", &body));
        }
    }

    #[tokio::test]
    async fn retries_stop_within_retry_for() {
        let (url, got) = backend(usize::MAX).await;
        let client = client();
        let started = Instant::now();
        let outcome = post(
            &client,
            &url,
            b"k",
            b"{}".to_vec(),
            Duration::from_secs(5),
            Duration::from_millis(1_000),
        )
        .await;
        // Attempts at 0, 100, 300 and 700 ms; the next would start at 1,500 ms
        // (a slow machine may fit one fewer): no attempt starts after 1 s.
        let Outcome::GaveUp(attempts) = outcome else {
            panic!("{outcome:?}");
        };
        assert!((2..=4).contains(&attempts), "{attempts}");
        assert_eq!(got.lock().unwrap().len(), attempts as usize);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A backend whose webhook URL answers `status` with `Location: /moved`
    /// (a moved endpoint, a login page, an http->https hop) and whose `/moved`
    /// answers 200 to anything; it records each request's method and path.
    async fn redirecting(status: StatusCode) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let url = serve(move |req: Request<Incoming>| {
            let path = req.uri().path().to_owned();
            seen.lock()
                .unwrap()
                .push((req.method().to_string(), path.clone()));
            async move {
                let mut r = Response::new(Full::new(Bytes::new()));
                if path == "/events" {
                    *r.status_mut() = status;
                    r.headers_mut()
                        .insert("location", "/moved".parse().unwrap());
                }
                r
            }
        })
        .await;
        (url, got)
    }

    #[tokio::test]
    async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
        // 302 turns a followed POST into a bodiless GET; 307 keeps the POST
        // but sends it where nobody configured.
        for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
            let (url, got) = redirecting(status).await;
            let outcome = post(
                &client(),
                &url,
                b"k",
                b"{}".to_vec(),
                Duration::from_secs(2),
                Duration::from_millis(350),
            )
            .await;
            let requests = got.lock().unwrap().clone();
            // Attempts at 0, 100 and 300 ms (a slow machine may fit one fewer).
            assert!(
                matches!(outcome, Outcome::GaveUp(2..=3)),
                "{status}: {outcome:?}, the backend saw {requests:?}"
            );
            assert!(
                requests.iter().all(|(m, p)| m == "POST" && p == "/events"),
                "{status}: the redirect was followed: {requests:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_backend_that_is_not_there_is_retried_then_given_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        drop(listener);
        let outcome = post(
            &client(),
            &url,
            b"k",
            b"{}".to_vec(),
            Duration::from_secs(1),
            Duration::from_millis(350),
        )
        .await;
        // Attempts at 0, 100 and 300 ms (a slow machine may fit one fewer).
        assert!(matches!(outcome, Outcome::GaveUp(2..=3)), "{outcome:?}");
    }
}

#[cfg(test)]
mod schema {
    use super::*;

    /// `gateway/webhooks-schema.json` names every event and the fields each
    /// one carries in [`body`].
    #[test]
    fn the_schema_document_matches_the_body() {
        let doc: Value = serde_json::from_str(include_str!("../../webhooks-schema.json")).unwrap();
        let event = &doc["components"]["schemas"]["WebhookEvent"];
        let names: Vec<&str> = event["properties"]["name"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let kinds = [
            EventKind::ChannelOccupied,
            EventKind::ChannelVacated,
            EventKind::MemberAdded,
            EventKind::MemberRemoved,
            EventKind::Message,
        ];
        assert_eq!(names, kinds.map(EventKind::name));
        let example = &doc["webhooks"]["events"]["post"]["requestBody"]["content"]
            ["application/json"]["example"];
        let events: Vec<WireEvent> = example["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| WireEvent {
                kind: kinds.into_iter().find(|k| k.name() == e["name"]).unwrap(),
                topic: e["topic"].as_str().unwrap().to_owned(),
                user_id: e["user_id"].as_str().map(str::to_owned),
                message: e["event"]
                    .as_str()
                    .map(|ev| (ev.to_owned(), e["payload"].clone())),
            })
            .collect();
        let time = example["time_ms"].as_u64().unwrap();
        let ours: Value = serde_json::from_slice(&body(time, &events)).unwrap();
        assert_eq!(&ours, example);
    }
}
