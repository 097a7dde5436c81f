//! The node's own timers as data: one deadline per [`Timer`], `None` when
//! stopped. [`Node::handle_timeout`](super::Node::handle_timeout) fires what
//! is due; the failure detector, the coalescer and pending subscriptions keep
//! their own deadlines, which `poll_timeout` takes the earliest of.

use std::time::Instant;

/// What a node waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Push the δ-buffer to peers (armed by a buffered change).
    Flush,
    /// Retransmission check, every `tick`.
    Tick,
    /// Digest exchange with one random peer, every `anti_entropy`.
    AntiEntropy,
}

impl Timer {
    const COUNT: usize = 3;
}

/// A deadline per timer.
#[derive(Debug, Default)]
pub(super) struct Timers([Option<Instant>; Timer::COUNT]);

impl Timers {
    /// Arms `timer` for `at`, replacing its deadline.
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    /// Whether `timer` is armed.
    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.0[timer as usize].is_some()
    }

    /// Whether `timer` is armed and due at `now`.
    pub(super) fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.0[timer as usize].is_some_and(|t| t <= now)
    }

    /// Disarms `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    /// The earliest deadline, if any timer is armed.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_earliest_armed_timer_is_next_and_a_stopped_one_is_never_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::Tick, t0 + Duration::from_millis(200));
        timers.set(Timer::Flush, t0 + Duration::from_millis(2));
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(2)));
        assert!(timers.is_due(Timer::Flush, t0 + Duration::from_millis(2)));
        assert!(!timers.is_due(Timer::Tick, t0 + Duration::from_millis(2)));
        timers.stop(Timer::Flush);
        assert!(!timers.is_set(Timer::Flush));
        assert!(!timers.is_due(Timer::Flush, t0 + Duration::from_secs(9)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(200)));
    }
}
