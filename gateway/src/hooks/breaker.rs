//! The circuit breaker of one hook: after [`FAILURES_TO_OPEN`] failures in a row
//! the hook is not called for [`OPEN_FOR`]; calls meanwhile are denied at once.
//! Sans-IO: the caller passes the time, and decides what is a failure: only
//! what says the backend is unwell
//! ([`Failure::counts_toward_breaker`](super::Failure::counts_toward_breaker)),
//! as one breaker serves every client of the hook.

use std::time::{Duration, Instant};

/// Consecutive failures (timeouts, connection errors, 5xx answers) that open
/// the breaker. Other failures (a 4xx, garbage) neither count nor reset.
pub const FAILURES_TO_OPEN: u32 = 5;

/// How long an open breaker denies without calling the backend. Then calls go
/// through again: one success closes it, one more failure opens it again.
pub const OPEN_FOR: Duration = Duration::from_secs(5);

/// Failures in a row, and until when the breaker is open.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether a call may go to the backend at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// A call succeeded: the count starts again, the breaker closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// A call failed at `now`. Returns true when this failure opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= FAILURES_TO_OPEN && self.allows(now) {
            self.open_until = Some(now + OPEN_FOR);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!b.failure(t0));
            assert!(b.allows(t0));
        }
        assert!(b.failure(t0), "the fifth failure opens it");
        assert!(!b.allows(t0));
        assert!(!b.allows(t0 + OPEN_FOR - Duration::from_millis(1)));
        // Half-open: calls go through again; one more failure reopens.
        let later = t0 + OPEN_FOR;
        assert!(b.allows(later));
        assert!(b.failure(later));
        assert!(!b.allows(later));
        let later = later + OPEN_FOR;
        b.success();
        assert!(b.allows(later));
        assert!(
            !b.failure(later),
            "one failure after a success does not open it"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            b.failure(t0);
        }
        b.success();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!b.failure(t0));
        }
        assert!(b.allows(t0));
    }
}
