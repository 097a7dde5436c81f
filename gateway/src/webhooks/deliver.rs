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
/// `retry_for` of the first.
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
