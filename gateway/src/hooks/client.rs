//! [`HookClient`]: one configured hook's HTTP calls: a JSON `POST` within
//! `timeout_ms`, at most `max_concurrency` at once, behind a circuit breaker,
//! counted and timed in `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::breaker::Breaker;
use super::metrics::{HookMetrics, Outcome};
use super::HookConfig;

/// Largest answer body read from a backend; a longer one is garbage.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a hook call gave no answer. Every failure denies (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No answer (or no concurrency slot) within `timeout_ms`.
    #[error("no answer within the timeout")]
    Timeout,
    /// The circuit breaker is open: the backend was not called.
    #[error("circuit breaker open")]
    CircuitOpen,
    /// The request failed (connection refused, reset, ...).
    #[error("request failed: {0}")]
    Request(String),
    /// The backend answered with a status other than 200.
    #[error("status {0}")]
    Status(u16),
    /// The answer is not the hook's JSON.
    #[error("bad answer: {0}")]
    Garbage(String),
}

impl Failure {
    /// The reason the client is given: `hook_unavailable` when the backend did
    /// not answer (timeout, connection error, breaker open), `hook_error` when it
    /// answered wrongly (status, garbage).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout | Self::CircuitOpen | Self::Request(_) => "hook_unavailable",
            Self::Status(_) | Self::Garbage(_) => "hook_error",
        }
    }

    /// Whether the failure says the backend is unwell, and so counts toward
    /// the breaker: no answer (timeout, connection error) or a 5xx. The breaker
    /// is shared by every client of the hook, so a failure that one client can
    /// cause with its own request must not count, or that client turns the hook
    /// off for everyone (a publish over Express's 100 kB body limit is 413):
    /// - a 3xx or 4xx is an answer about this request (redirects are not
    ///   followed) from a backend that is up;
    /// - a 429 neither: every call comes from the node's address, so a backend
    ///   limits by user (or by a forwarded cookie), and one user's flood must
    ///   not deny the others;
    /// - a 2xx that is not the hook's JSON (or is over [`MAX_ANSWER_BYTES`])
    ///   came from a backend that is up, and may depend on the request (an rpc
    ///   reply echoing a large payload); a backend that answers garbage to
    ///   every call answers fast, so the breaker would spare it little.
    ///
    /// Every failure still denies its own call.
    pub fn counts_toward_breaker(&self) -> bool {
        match self {
            Self::Timeout | Self::Request(_) => true,
            Self::Status(status) => *status >= 500,
            Self::CircuitOpen | Self::Garbage(_) => false,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Self::Timeout => Outcome::Timeout,
            Self::CircuitOpen => Outcome::CircuitOpen,
            Self::Request(_) | Self::Status(_) | Self::Garbage(_) => Outcome::Error,
        }
    }
}

/// One configured hook (`connect_hook`, a rule's `join_hook`, ...).
pub struct HookClient {
    hook: &'static str,
    url: reqwest::Url,
    timeout: Duration,
    /// Lowercase header names forwarded from the client's connect request.
    forward: Vec<String>,
    events: Vec<String>,
    slots: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    http: reqwest::Client,
    metrics: HookMetrics,
}

impl std::fmt::Debug for HookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookClient")
            .field("hook", &self.hook)
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HookClient {
    /// The client of `config`, named `hook` in logs and metrics.
    pub fn new(
        hook: &'static str,
        config: &HookConfig,
        http: reqwest::Client,
        metrics: HookMetrics,
    ) -> Result<Self, String> {
        config.check()?;
        let url = reqwest::Url::parse(&config.url).map_err(|e| format!("url: {e}"))?;
        Ok(Self {
            hook,
            url,
            timeout: Duration::from_millis(config.timeout_ms),
            forward: config
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            events: config.events.clone(),
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            breaker: Mutex::new(Breaker::default()),
            http,
            metrics,
        })
    }

    /// Whether `event` is one of the hook's `events`.
    pub fn has_event(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// The header names this hook forwards (lowercase).
    pub fn forwarded(&self) -> &[String] {
        &self.forward
    }

    /// The captured connect headers this hook forwards, as the `"headers"` object.
    pub fn headers(&self, captured: &[(String, String)]) -> Map<String, Value> {
        captured
            .iter()
            .filter(|(name, _)| self.forward.contains(name))
            .map(|(name, value)| (name.clone(), Value::from(value.clone())))
            .collect()
    }

    /// Counts a decided call (`allow` or `deny`).
    pub fn decided(&self, allowed: bool) {
        let outcome = if allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        self.metrics.record(self.hook, outcome);
    }

    /// An answer that parsed but means nothing (an rpc answer with neither
    /// `reply` nor `error`): counted as an error. The breaker has already
    /// counted the call as a success: the backend answered.
    pub fn garbage(&self) {
        self.metrics.record(self.hook, Outcome::Error);
    }

    /// Posts `body` and parses the 200 answer as `T`. A failure is counted and
    /// logged, and fed to the breaker if it says the backend is unwell
    /// ([`Failure::counts_toward_breaker`]); a success closes the breaker (count it
    /// with [`HookClient::decided`] once its meaning is known).
    pub async fn call<T: DeserializeOwned>(&self, body: &Value) -> Result<T, Failure> {
        let start = Instant::now();
        if !self.breaker.lock().expect("breaker lock").allows(start) {
            self.metrics.record(self.hook, Outcome::CircuitOpen);
            debug!(hook = self.hook, url = %self.url, "hook not called: circuit breaker open");
            return Err(Failure::CircuitOpen);
        }
        let answer = match tokio::time::timeout(self.timeout, self.post(body)).await {
            Ok(Ok(bytes)) => {
                serde_json::from_slice::<T>(&bytes).map_err(|e| Failure::Garbage(e.to_string()))
            }
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::Timeout),
        };
        let now = Instant::now();
        self.metrics
            .observe(self.hook, now.duration_since(start).as_secs_f64());
        let mut breaker = self.breaker.lock().expect("breaker lock");
        match &answer {
            Ok(_) => breaker.success(),
            Err(failure) => {
                self.metrics.record(self.hook, failure.outcome());
                let opened = failure.counts_toward_breaker() && breaker.failure(now);
                drop(breaker);
                warn!(hook = self.hook, url = %self.url, error = %failure, "hook failed: denying");
                if opened {
                    warn!(
                        hook = self.hook,
                        url = %self.url,
                        "circuit breaker open: the hook is not called for {} s",
                        super::breaker::OPEN_FOR.as_secs()
                    );
                }
            }
        }
        answer
    }

    async fn post(&self, body: &Value) -> Result<bytes::Bytes, Failure> {
        // The timeout around this covers the wait for a slot too.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Failure::Request("closed".into()))?;
        let response = self
            .http
            .post(self.url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| Failure::Request(e.without_url().to_string()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(Failure::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(Failure::Garbage("answer too large".into()));
        }
        // Read chunk by chunk, so an answer without a length is bounded too.
        let mut response = response;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::Request(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Failure::Garbage("answer too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}
