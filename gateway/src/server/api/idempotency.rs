//! Idempotency keys of `POST /api/broadcast`: a key seen within [`WINDOW`] is not
//! broadcast again.
//!
//! **Cluster-wide, best effort.** Each node keeps the keys it has seen in memory.
//! A node that broadcasts under a key then publishes the key on the internal
//! engine topic [`TOPIC`]; every node with the API enabled subscribes to it and
//! remembers the keys it hears. So a retry sent to *another* node (the usual
//! case behind a load balancer: the first attempt timed out) is recognised once
//! the key has crossed the cluster, which takes one gossip hop (milliseconds).
//! Not covered, because it would need consensus on every API call: two attempts
//! with the same key reaching two nodes within that hop (both broadcast), and a
//! node that joins after the key was published (it never heard it). On one node
//! the check is exact: claiming a key is atomic under a lock.
//!
//! Memory is bounded: at most [`MAX_KEYS`] keys; past that the oldest are
//! forgotten before their window ends.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chorus_engine::runtime::Delivery;
use chorus_engine::Topic;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cluster::Hub;

/// How long a key suppresses a repeated broadcast.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);

/// Most keys remembered per node.
pub const MAX_KEYS: usize = 100_000;

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The engine topic keys cross the cluster on.
pub const TOPIC: &str = crate::topics::API_IDEMPOTENCY;

/// The keys one node has seen.
#[derive(Debug)]
pub struct Idempotency {
    window: Duration,
    cap: usize,
    keys: Mutex<Keys>,
    listening: AtomicBool,
}

#[derive(Debug, Default)]
struct Keys {
    /// Key -> when its window ends.
    until: HashMap<String, Instant>,
    /// Insertion order, for expiry and the cap (windows end in this order).
    order: VecDeque<(Instant, String)>,
}

impl Keys {
    fn purge(&mut self, now: Instant, cap: usize) {
        while let Some((until, _)) = self.order.front() {
            if *until > now && self.until.len() <= cap {
                break;
            }
            let (until, key) = self.order.pop_front().expect("front exists");
            // A later remember of the same key has its own, later entry.
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: String, until: Instant) {
        self.until.insert(key.clone(), until);
        self.order.push_back((until, key));
    }
}

impl Idempotency {
    /// An empty store with this window and cap.
    pub fn new(window: Duration, cap: usize) -> Self {
        Self {
            window,
            cap,
            keys: Mutex::new(Keys::default()),
            listening: AtomicBool::new(false),
        }
    }

    /// Claims `key` for a broadcast now: true if it was not seen within the window
    /// (it is now), false for a repeat.
    pub fn claim(&self, key: &str, now: Instant) -> bool {
        let mut keys = self.keys.lock().expect("idempotency lock");
        keys.purge(now, self.cap);
        if keys.until.get(key).is_some_and(|until| *until > now) {
            return false;
        }
        keys.insert(key.to_owned(), now + self.window);
        true
    }

    /// Gives a claimed key back: its broadcast failed, so a retry must go out.
    pub fn release(&self, key: &str) {
        self.keys
            .lock()
            .expect("idempotency lock")
            .until
            .remove(key);
    }

    /// Remembers a key another node broadcast under.
    pub fn remember(&self, key: &str, now: Instant) {
        let mut keys = self.keys.lock().expect("idempotency lock");
        keys.purge(now, self.cap);
        if keys.until.get(key).is_none_or(|until| *until <= now) {
            keys.insert(key.to_owned(), now + self.window);
        }
    }

    /// Whether the cluster listener is subscribed (readiness).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Tells the cluster a key was used.
    pub(crate) async fn announce(&self, hub: &Hub, key: &str) {
        let bytes = Bytes::copy_from_slice(key.as_bytes());
        if let Err(e) = hub.publish_internal(TOPIC, bytes).await {
            warn!(error = %e, "cannot announce an idempotency key to the cluster");
        }
    }
}

/// Subscribes to [`TOPIC`] and remembers every key heard, until the engine stops.
/// A subscription the engine drops (too slow) is renewed.
pub(crate) async fn listen(store: Arc<Idempotency>, hub: Arc<Hub>) {
    loop {
        let mut sub = match hub.subscribe_internal(Topic::new(TOPIC)).await {
            Ok(sub) => sub,
            Err(e) => {
                debug!(error = %e, "idempotency listener: cannot subscribe; stopping");
                store.listening.store(false, Ordering::Release);
                return;
            }
        };
        store.listening.store(true, Ordering::Release);
        while let Some(delivery) = sub.recv().await {
            if let Delivery::Broadcast(bytes) = delivery {
                match std::str::from_utf8(&bytes) {
                    Ok(key) if key.len() <= MAX_KEY_LEN => store.remember(key, Instant::now()),
                    _ => warn!("idempotency listener: dropping a key that is not valid"),
                }
            }
        }
        store.listening.store(false, Ordering::Release);
        warn!(
            "idempotency listener: subscription ended; resubscribing (keys may have been missed)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_claimed_once_per_window() {
        let store = Idempotency::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert!(store.claim("k", t0));
        assert!(!store.claim("k", t0 + Duration::from_secs(9)));
        assert!(
            store.claim("k", t0 + Duration::from_secs(10)),
            "window over"
        );
        assert!(store.claim("other", t0));
    }

    #[test]
    fn released_and_remembered_keys() {
        let store = Idempotency::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert!(store.claim("k", t0));
        store.release("k");
        assert!(store.claim("k", t0), "a failed broadcast can be retried");
        store.remember("peer", t0);
        assert!(!store.claim("peer", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn the_cap_forgets_the_oldest() {
        let store = Idempotency::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for key in ["a", "b", "c"] {
            assert!(store.claim(key, t0));
        }
        // "a" is evicted on the next purge (3 keys > cap 2).
        assert!(store.claim("a", t0));
        assert!(!store.claim("c", t0));
    }
}
