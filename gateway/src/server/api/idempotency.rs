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
//! A key remembers the fingerprint of its request (SHA-256 of topic, event and
//! payload): a repeat with the same request is a duplicate (200), one with
//! another request is a conflict (409 `idempotency_conflict`), as payment APIs
//! answer, instead of silently dropping the new request. The fingerprint crosses
//! the cluster with the key; a key heard from a node of an older build, which
//! sends no fingerprint, counts as a duplicate of any request.
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
use sha2::{Digest, Sha256};
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

/// What a key is remembered with: SHA-256 of the request it was used for.
pub type Fingerprint = [u8; 32];

/// First byte of an announcement carrying a fingerprint (`0xFF`, fingerprint,
/// key). It is not valid UTF-8, so nodes of an older build, which read the whole
/// announcement as a key, drop it.
const WITH_FINGERPRINT: u8 = 0xFF;

/// The fingerprint of a broadcast request: its topic, event and payload (the
/// payload's text as sent).
pub fn fingerprint(topic: &str, event: &str, payload: &str) -> Fingerprint {
    let mut h = Sha256::new();
    for part in [topic, event, payload] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The outcome of [`Idempotency::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not seen within the window: go ahead (the key is now taken).
    New,
    /// Seen with the same request (or from a node that sent no fingerprint).
    Duplicate,
    /// Seen with another request.
    Conflict,
}

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
    /// Key -> when its window ends, and its request's fingerprint (`None`: heard
    /// without one).
    until: HashMap<String, (Instant, Option<Fingerprint>)>,
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
            if self.until.get(&key).map(|(u, _)| u) == Some(&until) {
                self.until.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: String, until: Instant, fingerprint: Option<Fingerprint>) {
        self.until.insert(key.clone(), (until, fingerprint));
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

    /// Claims `key` for a broadcast of the request `fingerprint` now.
    pub fn claim(&self, key: &str, fingerprint: Fingerprint, now: Instant) -> Claim {
        let mut keys = self.keys.lock().expect("idempotency lock");
        keys.purge(now, self.cap);
        match keys.until.get(key) {
            Some((until, seen)) if *until > now => {
                if seen.is_some_and(|seen| seen != fingerprint) {
                    Claim::Conflict
                } else {
                    Claim::Duplicate
                }
            }
            _ => {
                keys.insert(key.to_owned(), now + self.window, Some(fingerprint));
                Claim::New
            }
        }
    }

    /// Gives a claimed key back: its broadcast failed, so a retry must go out.
    pub fn release(&self, key: &str) {
        self.keys
            .lock()
            .expect("idempotency lock")
            .until
            .remove(key);
    }

    /// Remembers a key another node broadcast under (with its request's
    /// fingerprint, when that node sent one).
    pub fn remember(&self, key: &str, fingerprint: Option<Fingerprint>, now: Instant) {
        let mut keys = self.keys.lock().expect("idempotency lock");
        keys.purge(now, self.cap);
        if keys.until.get(key).is_none_or(|(until, _)| *until <= now) {
            keys.insert(key.to_owned(), now + self.window, fingerprint);
        }
    }

    /// Whether the cluster listener is subscribed (readiness).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Tells the cluster a key was used, for the request `fingerprint`.
    pub(crate) async fn announce(&self, hub: &Hub, key: &str, fingerprint: &Fingerprint) {
        let bytes = encode_announcement(key, fingerprint);
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
                match decode_announcement(&bytes) {
                    Some((key, fingerprint)) => store.remember(key, fingerprint, Instant::now()),
                    None => warn!("idempotency listener: dropping a key that is not valid"),
                }
            }
        }
        store.listening.store(false, Ordering::Release);
        warn!(
            "idempotency listener: subscription ended; resubscribing (keys may have been missed)"
        );
    }
}

/// `0xFF`, the fingerprint, the key.
fn encode_announcement(key: &str, fingerprint: &Fingerprint) -> Bytes {
    let mut out = Vec::with_capacity(1 + fingerprint.len() + key.len());
    out.push(WITH_FINGERPRINT);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(key.as_bytes());
    Bytes::from(out)
}

/// A key and its fingerprint, or (an older node's announcement) a bare key.
fn decode_announcement(bytes: &[u8]) -> Option<(&str, Option<Fingerprint>)> {
    let (key, fingerprint) = match bytes.split_first() {
        Some((&WITH_FINGERPRINT, rest)) if rest.len() > 32 => {
            let (fingerprint, key) = rest.split_at(32);
            (key, Some(fingerprint.try_into().expect("32 bytes")))
        }
        _ => (bytes, None),
    };
    let key = std::str::from_utf8(key).ok()?;
    (!key.is_empty() && key.len() <= MAX_KEY_LEN).then_some((key, fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Fingerprint = [1; 32];
    const B: Fingerprint = [2; 32];

    #[test]
    fn a_key_is_claimed_once_per_window() {
        let store = Idempotency::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(store.claim("k", A, t0), Claim::New);
        assert_eq!(
            store.claim("k", A, t0 + Duration::from_secs(9)),
            Claim::Duplicate
        );
        assert_eq!(
            store.claim("k", B, t0 + Duration::from_secs(9)),
            Claim::Conflict
        );
        assert_eq!(
            store.claim("k", B, t0 + Duration::from_secs(10)),
            Claim::New,
            "window over"
        );
        assert_eq!(store.claim("other", A, t0), Claim::New);
    }

    #[test]
    fn released_and_remembered_keys() {
        let store = Idempotency::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(store.claim("k", A, t0), Claim::New);
        store.release("k");
        assert_eq!(
            store.claim("k", B, t0),
            Claim::New,
            "a failed broadcast can be retried"
        );
        store.remember("peer", Some(A), t0);
        assert_eq!(
            store.claim("peer", A, t0 + Duration::from_secs(1)),
            Claim::Duplicate
        );
        assert_eq!(
            store.claim("peer", B, t0 + Duration::from_secs(1)),
            Claim::Conflict
        );
        store.remember("old-node", None, t0);
        assert_eq!(store.claim("old-node", B, t0), Claim::Duplicate);
    }

    #[test]
    fn announcements_carry_the_fingerprint_and_old_ones_still_read() {
        let bytes = encode_announcement("msg-42", &A);
        assert_eq!(decode_announcement(&bytes), Some(("msg-42", Some(A))));
        assert_eq!(decode_announcement(b"msg-42"), Some(("msg-42", None)));
        assert_eq!(decode_announcement(b""), None);
        assert_eq!(decode_announcement(&[0xFF; 3]), None, "not UTF-8");
        assert!(std::str::from_utf8(&bytes).is_err(), "older nodes drop it");
        assert_ne!(fingerprint("t", "e", "{}"), fingerprint("t", "e", "{ }"));
        assert_ne!(fingerprint("ab", "c", "{}"), fingerprint("a", "bc", "{}"));
    }

    #[test]
    fn the_cap_forgets_the_oldest() {
        let store = Idempotency::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for key in ["a", "b", "c"] {
            assert_eq!(store.claim(key, A, t0), Claim::New);
        }
        // "a" is evicted on the next purge (3 keys > cap 2).
        assert_eq!(store.claim("a", A, t0), Claim::New);
        assert_eq!(store.claim("c", A, t0), Claim::Duplicate);
    }
}
