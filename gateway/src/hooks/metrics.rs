//! `chorus_hook_calls_total{hook,result}` and `chorus_hook_duration_seconds{hook}`:
//! made by the hooks' owner and registered by the server's `/metrics`
//! ([`ServerConfig::hook_metrics`](crate::server::ServerConfig::hook_metrics)).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What a hook call came to: the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend allowed (or, for `rpc`, replied).
    Allow,
    /// The backend denied (or, for `rpc`, answered `error`).
    Deny,
    /// The backend did not answer within `timeout_ms` (or no concurrency slot
    /// freed up in time).
    Timeout,
    /// A connection error, a status other than 200, or an answer that is not the
    /// hook's JSON.
    Error,
    /// Not called: the circuit breaker is open.
    CircuitOpen,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

type CallLabels = [(&'static str, &'static str); 2];
type HookLabel = [(&'static str, &'static str); 1];

fn histogram() -> Histogram {
    // 0.5 ms .. about 8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The hook counters, shared by every hook of a node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HookMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<HookLabel, Histogram, fn() -> Histogram>,
}

impl Default for HookMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(histogram),
        }
    }
}

impl HookMetrics {
    /// Counts one call of `hook` (`connect`, `join`, `publish`, `rpc`).
    pub fn record(&self, hook: &'static str, outcome: Outcome) {
        self.calls
            .get_or_create(&[("hook", hook), ("result", outcome.as_str())])
            .inc();
    }

    /// Observes the time one call of `hook` took, in seconds (calls the
    /// breaker refused are not observed).
    pub fn observe(&self, hook: &'static str, seconds: f64) {
        self.duration
            .get_or_create(&[("hook", hook)])
            .observe(seconds);
    }

    /// How many calls of `hook` ended with `outcome` (for tests and benches).
    pub fn count(&self, hook: &'static str, outcome: Outcome) -> u64 {
        self.calls
            .get_or_create(&[("hook", hook), ("result", outcome.as_str())])
            .get()
    }

    /// Registers both families in `registry` (prefix `chorus`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hook_calls",
            "Backend hook calls, by hook (connect, join, publish, rpc) and result (allow, deny, timeout, error, circuit_open)",
            self.calls.clone(),
        );
        registry.register(
            "hook_duration_seconds",
            "Time a backend hook call took, by hook",
            self.duration.clone(),
        );
    }
}
