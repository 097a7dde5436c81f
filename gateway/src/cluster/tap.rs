//! What the hub shows an observer (the `chorus` binary's webhooks): which
//! topics gain their first and lose their last local subscriber on this node,
//! and the broadcasts this node publishes. Only topics the observer's filter
//! accepts are reported; without an observer nothing is done.

use tokio::sync::mpsc;

use super::Hub;
use crate::protocol::Payload;

/// One thing the hub reports to its [`HubTap`].
#[derive(Debug)]
pub enum TapEvent {
    /// `topic` has a local subscriber now (its dispatcher started).
    Subscribed(String),
    /// `topic` lost its last local subscriber.
    Unsubscribed(String),
    /// This node published `event` with `payload` on `topic` (a client's
    /// broadcast, a channel's or the HTTP API's).
    Broadcast {
        /// Topic.
        topic: String,
        /// Event name.
        event: String,
        /// The payload as published.
        payload: Payload,
    },
}

/// An observer of the hub: `filter` chooses the topics, `tx` receives.
pub struct HubTap {
    /// Whether `topic` interests the observer.
    pub filter: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Where events go (unbounded: the hub never waits for the observer).
    pub tx: mpsc::UnboundedSender<TapEvent>,
}

impl std::fmt::Debug for HubTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubTap").finish_non_exhaustive()
    }
}

impl Hub {
    /// Installs the hub's one observer. Returns `false` (and changes nothing)
    /// if one is installed already.
    pub fn set_tap(&self, tap: HubTap) -> bool {
        self.tap.set(tap).is_ok()
    }

    /// Whether an observer wants events about `topic`.
    pub(super) fn tapping(&self, topic: &str) -> bool {
        self.tap.get().is_some_and(|tap| (tap.filter)(topic))
    }

    /// Reports `event` about `topic` if an observer wants it; `make` builds
    /// the event only then.
    pub(super) fn tap(&self, topic: &str, make: impl FnOnce() -> TapEvent) {
        if let Some(tap) = self.tap.get() {
            if (tap.filter)(topic) {
                let _ = tap.tx.send(make());
            }
        }
    }
}
