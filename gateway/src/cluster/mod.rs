//! The cluster bridge: everything the gateway does with the engine goes through
//! the [`Hub`], the one holder of the [`EngineHandle`].
//!
//! - `topic`: one dispatcher per topic with local subscribers (one engine
//!   subscription; each delivery decoded and encoded once per node, then handed to
//!   every local connection as the same `Arc<Encoded>`);
//! - `mailbox`: a connection's inbox and outbound byte budget, pushed into without
//!   waiting;
//! - `publish`: server-side and client broadcasts, queued behind the topic's
//!   backlog;
//! - `socket_id`: disconnect-by-socket-id and the count of a user's sockets;
//! - `engine`: presence, records and cluster state, and the raw internal topics
//!   ([`crate::topics`]) LongPoll forwarding and the API's idempotency keys use;
//! - [`envelope`]: the bytes a broadcast crosses the cluster as;
//! - [`render`]: engine presence items as Phoenix presence payloads;
//! - `tap`: the one observer of local subscriptions and published broadcasts
//!   (the webhooks).
//!
//! Not deterministic: this is I/O (tokio tasks and the engine's channels).

mod engine;
pub mod envelope;
pub(crate) mod mailbox;
mod publish;
pub mod render;
mod socket_id;
mod tap;
mod topic;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use chorus_engine::runtime::{EngineHandle, RuntimeError};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::Semaphore;

use crate::protocol::FrameError;
use mailbox::Mailbox;
use topic::TopicState;

pub use render::state_json;
pub use tap::{HubTap, TapEvent};

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The engine refused or stopped.
    #[error("engine subscription failed: {0}")]
    Engine(String),
    /// A broadcast that cannot be encoded (an event over 255 bytes).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The engine refused the publish.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The topic is one of the server's own ([`crate::topics::is_internal`]).
    #[error("topic {0:?} is reserved for the server")]
    Reserved(String),
}

/// Counters of the dispatcher.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Deliveries from the engine that could not be decoded.
    pub undecodable: AtomicU64,
    /// Engine subscriptions re-established after the engine dropped one.
    pub resubscribed: AtomicU64,
}

/// The node's bridge to the cluster engine: the per-topic dispatcher, the entry
/// point for server-side broadcasts (Phoenix's `Endpoint.broadcast`), and the
/// one holder of the [`EngineHandle`] in the gateway.
pub struct Hub {
    engine: EngineHandle,
    origin: u64,
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
    /// Local connections by socket id, for [`crate::topics::DISCONNECT`].
    ids: Mutex<HashMap<String, Vec<Mailbox>>>,
    stats: HubStats,
    fanout: Histogram,
    /// Client publishes handed to the engine and not carried out yet: with the
    /// backlog check this bounds what can reach a topic's subscription queue
    /// at once, so a flood is slowed down, not dropped.
    in_flight: Arc<Semaphore>,
    /// The observer of subscriptions and broadcasts, if any ([`HubTap`]).
    tap: OnceLock<HubTap>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A dispatcher over `engine`. `origin` tags this node's `broadcast_from`
    /// exclusions; draw it at random per process.
    pub fn new(engine: EngineHandle, origin: u64) -> Arc<Self> {
        Arc::new(Self {
            engine,
            origin,
            topics: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            stats: HubStats::default(),
            fanout: fanout_histogram(),
            in_flight: Arc::new(Semaphore::new(publish::MAX_IN_FLIGHT)),
            tap: OnceLock::new(),
        })
    }

    /// This node's tag in `broadcast_from` exclusions.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Seconds each delivery took to reach every local subscriber's queue.
    pub fn fanout_histogram(&self) -> &Histogram {
        &self.fanout
    }

    /// How many topics have a local subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().expect("hub topics lock").len()
    }

    /// The `n` client topics (internal ones left out) with the most local
    /// subscribers (connections), with their counts, most first (ties by
    /// name). Reads every topic: for the dashboard's once-a-second snapshot,
    /// not for a hot path.
    pub fn busiest_topics(&self, n: usize) -> Vec<(String, usize)> {
        let states: Vec<(String, Arc<TopicState>)> = self
            .topics
            .lock()
            .expect("hub topics lock")
            .iter()
            .filter(|(topic, _)| !crate::topics::is_internal(topic))
            .map(|(topic, state)| (topic.clone(), state.clone()))
            .collect();
        let mut counted: Vec<(String, usize)> = states
            .into_iter()
            .map(|(topic, state)| {
                let n = state.locals.lock().expect("topic locals lock").len();
                (topic, n)
            })
            .collect();
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counted.truncate(n);
        counted
    }
}

/// The histogram the hub records fan-out times in: 10 µs to about 10 s.
pub(crate) fn fanout_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): the
/// wall clock that stamps record writes, positions handed to clients and
/// webhook events.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
