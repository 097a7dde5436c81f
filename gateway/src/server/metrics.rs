//! `GET /metrics`: the server's counters in the Prometheus (OpenMetrics) text format.
//!
//! Two kinds of values:
//! - **live** ones, moved where traffic flows (connection tasks, the hub): kept in
//!   [`Metrics`] as `prometheus-client` counters, gauges and a histogram;
//! - **scraped** ones, read at scrape time from the engine
//!   ([`EngineHandle::stats`](chorus_engine::runtime::EngineHandle::stats),
//!   [`members`](chorus_engine::runtime::EngineHandle::members)) and from
//!   [`ServerStats`](super::ServerStats), rendered from a registry built per scrape.
//!
//! Every name starts with `chorus_`; gateway/README.md lists them all.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chorus_engine::runtime::{MemberInfo, RuntimeStats};
use chorus_engine::PeerState;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::warn;

use super::http::{json_error, HttpBody};
use super::{ServerStats, Shared};
use crate::limits::LimitCounter;
use crate::socket::JoinCounts;

/// The metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of the exposition: OpenMetrics text, which Prometheus scrapes.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A client transport, the `transport` label of per-connection metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `/socket/websocket`.
    WebSocket,
    /// `/socket/longpoll`.
    LongPoll,
}

impl Transport {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::LongPoll => "longpoll",
        }
    }
}

type Labels1 = [(&'static str, &'static str); 1];

fn transport_label(transport: Transport) -> Labels1 {
    [("transport", transport.as_str())]
}

/// The live metrics of one server. Cheap handles for one transport come from
/// [`Metrics::transport`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<Labels1, Gauge>,
    connections_opened: Family<Labels1, Counter>,
    channels_joined: Family<Labels1, Gauge>,
    joins: Family<Labels1, Counter>,
    join_errors: Family<Labels1, Counter>,
    messages_in: Family<Labels1, Counter>,
    messages_out: Family<Labels1, Counter>,
    bytes_in: Family<Labels1, Counter>,
    bytes_out: Family<Labels1, Counter>,
    api_broadcasts: Family<Labels1, Counter>,
    limits: LimitCounter,
    /// Each transport's counters, made once and shared by its connections
    /// ([`Metrics::transport_shared`]).
    shared_transports: [std::sync::OnceLock<std::sync::Arc<TransportMetrics>>; 2],
}

/// One transport's live counters, cloned into each connection task (each field
/// is a shared handle: incrementing a clone moves the registered metric).
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    /// Live connections.
    pub connections: Gauge,
    /// Connections accepted so far.
    pub connections_opened: Counter,
    /// Channels currently joined.
    pub channels_joined: Gauge,
    /// Accepted joins.
    pub joins: Counter,
    /// Frames received from clients.
    pub messages_in: Counter,
    /// Frames queued for clients.
    pub messages_out: Counter,
    /// Bytes of frames received from clients.
    pub bytes_in: Counter,
    /// Bytes of frames queued for clients.
    pub bytes_out: Counter,
    join_errors: [Counter; 4],
}

impl TransportMetrics {
    /// Adds a session's join outcomes ([`crate::socket::Session::take_join_counts`]).
    pub fn record_joins(&self, counts: JoinCounts) {
        self.joins.inc_by(counts.ok);
        let [unmatched, too_many, crashed, refused] = &self.join_errors;
        unmatched.inc_by(counts.unmatched_topic);
        too_many.inc_by(counts.too_many_channels);
        crashed.inc_by(counts.crashed);
        refused.inc_by(counts.refused);
    }
}

/// The `limit` labels: each is the `[limits]` key of the setting.
pub mod limit {
    // -- the server's edge --
    /// `limits.handshake_timeout_ms`.
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout_ms";
    /// `limits.max_connections`.
    pub const MAX_CONNECTIONS: &str = "max_connections";
    /// `limits.connection_rate`.
    pub const CONNECTION_RATE: &str = "connection_rate";
}

/// The `outcome` label values of `chorus_api_broadcasts_total`.
const API_BROADCAST_OUTCOMES: [&str; 3] = ["sent", "duplicate", "conflict"];

/// The `reason` label values of `chorus_join_errors_total`, in the order of
/// [`TransportMetrics`]'s `join_errors`.
const JOIN_ERROR_REASONS: [&str; 4] =
    ["unmatched_topic", "too_many_channels", "crashed", "refused"];

impl Metrics {
    /// Registers every live metric; `fanout` is the hub's fan-out histogram,
    /// `limits` the counter of limit breaches.
    pub fn new(fanout: Histogram, limits: &LimitCounter) -> Self {
        let mut registry = Registry::with_prefix("chorus");
        let this = Self {
            registry: Registry::default(),
            connections: Family::default(),
            connections_opened: Family::default(),
            channels_joined: Family::default(),
            joins: Family::default(),
            join_errors: Family::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            api_broadcasts: Family::default(),
            limits: limits.clone(),
            shared_transports: Default::default(),
        };
        let families = [
            (
                "connections",
                "Live client connections",
                &this.connections as &dyn Register,
            ),
            (
                "connections_opened",
                "Client connections accepted",
                &this.connections_opened,
            ),
            (
                "channels_joined",
                "Channels currently joined",
                &this.channels_joined,
            ),
            ("joins", "Channel joins accepted", &this.joins),
            (
                "join_errors",
                "Channel joins refused, by reason",
                &this.join_errors,
            ),
            (
                "messages_in",
                "Frames received from clients",
                &this.messages_in,
            ),
            (
                "messages_out",
                "Frames queued for clients",
                &this.messages_out,
            ),
            (
                "received_bytes",
                "Bytes of frames received from clients",
                &this.bytes_in,
            ),
            (
                "sent_bytes",
                "Bytes of frames queued for clients",
                &this.bytes_out,
            ),
            (
                "api_broadcasts",
                "POST /api/broadcast requests, by outcome (sent, duplicate)",
                &this.api_broadcasts,
            ),
        ];
        for (name, help, family) in families {
            family.register(&mut registry, name, help);
        }
        registry.register(
            "broadcast_fanout_seconds",
            "Time to hand one delivery to every local subscriber of its topic (decode, encode once, enqueue)",
            fanout,
        );
        registry.register(
            "limit_exceeded",
            "Breaches of a [limits] setting, by its config key",
            limits.family().clone(),
        );
        let this = Self { registry, ..this };
        // WebSocket series exist (at 0) before the first connection, and the
        // API's outcomes before the first call, so dashboards show 0, not "no data".
        let _ = this.transport(Transport::WebSocket);
        for outcome in API_BROADCAST_OUTCOMES {
            let _ = this.api_broadcasts.get_or_create(&[("outcome", outcome)]);
        }
        this
    }

    /// The counters of `transport`. Every join-error reason is created at once, so
    /// each appears (at 0) before its first occurrence.
    pub fn transport(&self, transport: Transport) -> TransportMetrics {
        let label = transport_label(transport);
        let join_errors = JOIN_ERROR_REASONS.map(|reason| {
            self.join_errors
                .get_or_create(&[("reason", reason)])
                .clone()
        });
        TransportMetrics {
            connections: self.connections.get_or_create(&label).clone(),
            connections_opened: self.connections_opened.get_or_create(&label).clone(),
            channels_joined: self.channels_joined.get_or_create(&label).clone(),
            joins: self.joins.get_or_create(&label).clone(),
            messages_in: self.messages_in.get_or_create(&label).clone(),
            messages_out: self.messages_out.get_or_create(&label).clone(),
            bytes_in: self.bytes_in.get_or_create(&label).clone(),
            bytes_out: self.bytes_out.get_or_create(&label).clone(),
            join_errors,
        }
    }

    /// The counters of `transport`, one `Arc` for all its connections: a
    /// [`TransportMetrics`] is twelve handles (96 B), which every connection
    /// would otherwise keep a copy of.
    pub fn transport_shared(&self, transport: Transport) -> std::sync::Arc<TransportMetrics> {
        let slot = &self.shared_transports[transport as usize];
        slot.get_or_init(|| std::sync::Arc::new(self.transport(transport)))
            .clone()
    }

    /// Shows the backend hooks' counters (`chorus_hook_calls_total`,
    /// `chorus_hook_duration_seconds`).
    pub fn register_hooks(&mut self, hooks: &crate::hooks::HookMetrics) {
        hooks.register(&mut self.registry);
    }

    /// Counts one `POST /api/broadcast` by outcome (`sent` or `duplicate`).
    pub(crate) fn api_broadcast(&self, outcome: &'static str) {
        self.api_broadcasts
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Counts one breach of the `[limits]` key `limit`
    /// (`chorus_limit_exceeded_total{limit=..}`).
    pub fn limit_exceeded(&self, limit: &'static str) {
        self.limits.hit(limit);
    }

    /// Brings the limits the engine enforces (`history_budget_bytes`) into
    /// `chorus_limit_exceeded_total`.
    pub(crate) fn engine_limits(&self, stats: &RuntimeStats) {
        self.limits
            .raise_to("history_budget_bytes", stats.node.history_budget_exceeded);
    }

    /// The exposition: the live metrics, then the values scraped now.
    pub(crate) fn render(&self, scraped: &Registry) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, scraped)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// This node's client traffic so far, both transports together: what the
/// dashboard's snapshot reports (`/metrics` has the same per transport).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientTotals {
    /// Live WebSocket connections.
    pub websocket: i64,
    /// Live LongPoll sessions.
    pub longpoll: i64,
    /// Channels currently joined.
    pub channels: i64,
    /// Frames received from clients.
    pub messages_in: u64,
    /// Frames queued for clients.
    pub messages_out: u64,
}

impl Metrics {
    /// The client totals, read without creating a transport's series.
    pub fn client_totals(&self) -> ClientTotals {
        let mut t = ClientTotals::default();
        for transport in [Transport::WebSocket, Transport::LongPoll] {
            let label = transport_label(transport);
            let gauge = |f: &Family<Labels1, Gauge>| f.get(&label).map_or(0, |g| g.get());
            let counter = |f: &Family<Labels1, Counter>| f.get(&label).map_or(0, |c| c.get());
            let live = gauge(&self.connections);
            match transport {
                Transport::WebSocket => t.websocket = live,
                Transport::LongPoll => t.longpoll = live,
            }
            t.channels += gauge(&self.channels_joined);
            t.messages_in += counter(&self.messages_in);
            t.messages_out += counter(&self.messages_out);
        }
        t
    }
}

/// Registering a family without naming its metric type.
trait Register {
    fn register(&self, registry: &mut Registry, name: &str, help: &str);
}

impl<M> Register for Family<Labels1, M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.clone());
    }
}

/// Values read at scrape time, as a registry built for this scrape.
fn scraped(server: &ServerStats, engine: Option<(&RuntimeStats, &[MemberInfo])>) -> Registry {
    let mut registry = Registry::with_prefix("chorus");
    let counter = |value: u64| {
        let c: Counter = Counter::default();
        c.inc_by(value);
        c
    };
    registry.register(
        "slow_consumer_disconnects",
        "Clients (WebSocket and LongPoll) ended because their outbound queue filled up",
        counter(server.slow_consumers.load(Ordering::Relaxed)),
    );
    registry.register(
        "protocol_errors",
        "Clients (WebSocket and LongPoll) refused or ended for bad input",
        counter(server.protocol_errors.load(Ordering::Relaxed)),
    );
    let up = Gauge::<i64>::default();
    up.set(i64::from(engine.is_some()));
    registry.register("engine_up", "1 when the engine answered this scrape", up);
    let Some((stats, members)) = engine else {
        return registry;
    };
    let presence = Gauge::<i64>::default();
    presence.set(i64::try_from(stats.presence_entries).unwrap_or(i64::MAX));
    registry.register(
        "presence_entries",
        "Presence metas visible on this node, all topics",
        presence,
    );
    let history = Gauge::<i64>::default();
    history.set(i64::try_from(stats.history_bytes).unwrap_or(i64::MAX));
    registry.register(
        "history_bytes",
        "Bytes of topic history this node holds (each message's body and topic plus 48 bytes)",
        history,
    );
    let evicted = Family::<Labels1, Counter>::default();
    evicted
        .get_or_create(&[("reason", "ttl")])
        .inc_by(stats.node.history_expired);
    evicted
        .get_or_create(&[("reason", "budget")])
        .inc_by(stats.node.history_budget_evicted);
    registry.register(
        "history_evicted",
        "History messages dropped from this node, by reason (ttl: older than cluster.history_ttl; budget: the oldest, past limits.history_budget_bytes here or on a peer)",
        evicted,
    );
    let by_state = Family::<Labels1, Gauge>::default();
    for state in ["up", "down"] {
        let n = members
            .iter()
            .filter(|m| state_label(m.state) == state)
            .count();
        by_state
            .get_or_create(&[("state", state)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register(
        "cluster_members",
        "Peers this node knows (itself excluded), by state",
        by_state,
    );
    let (mut bytes_in, mut bytes_out, mut msgs_in, mut msgs_out) = (0, 0, 0, 0);
    for peer in stats.peers.values() {
        bytes_in += peer.bytes_in;
        bytes_out += peer.bytes_out;
        msgs_in += peer.messages_in;
        msgs_out += peer.messages_out;
    }
    let direction = |i: u64, o: u64| {
        let family = Family::<Labels1, Counter>::default();
        family.get_or_create(&[("direction", "in")]).inc_by(i);
        family.get_or_create(&[("direction", "out")]).inc_by(o);
        family
    };
    registry.register(
        "gossip_bytes",
        "Bytes of encoded cluster messages, all peers",
        direction(bytes_in, bytes_out),
    );
    registry.register(
        "gossip_messages",
        "Cluster messages, all peers",
        direction(msgs_in, msgs_out),
    );
    let overflows = Family::<Labels1, Counter>::default();
    overflows
        .get_or_create(&[("queue", "peer")])
        .inc_by(stats.peer_queue_overflows);
    overflows
        .get_or_create(&[("queue", "subscriber")])
        .inc_by(stats.slow_subscribers);
    overflows
        .get_or_create(&[("queue", "delta_buffer")])
        .inc_by(stats.node.buffer_overflows);
    overflows
        .get_or_create(&[("queue", "credit")])
        .inc_by(stats.credit_dropped);
    registry.register(
        "queue_overflows",
        "Engine queues that overflowed: frames dropped to a slow peer, subscribers dropped, delta-buffer entries dropped, broadcasts dropped waiting for a peer's credit",
        overflows,
    );
    let credit = Family::<Labels1, Counter>::default();
    for (event, n) in [
        ("waited", stats.credit_waits),
        ("withheld", stats.credit_withheld),
        ("refilled", stats.credit_refills),
    ] {
        credit.get_or_create(&[("event", event)]).inc_by(n);
    }
    registry.register(
        "cluster_credit",
        "Cross-node flow control: broadcasts that waited for a peer's credit, times this node withheld credit (its subscribers were behind), windows refilled after a stall",
        credit,
    );
    registry.register(
        "cluster_auth_failures",
        "Cluster connections closed for a missing or wrong secret proof",
        counter(stats.auth_failures),
    );
    let rejected = Family::<Labels1, Counter>::default();
    for (reason, n) in [
        ("identity", stats.node.rejected_identity),
        ("address", stats.rejected_address),
        ("invalid", stats.rejected_invalid),
    ] {
        rejected.get_or_create(&[("reason", reason)]).inc_by(n);
    }
    registry.register(
        "peer_messages_rejected",
        "Messages from authenticated peers dropped whole: claiming another sender than the connection authenticated (identity), advertising another address (address), or breaking the codec's value checks (invalid)",
        rejected,
    );
    registry
}

/// The `state` label of a member.
pub(crate) fn state_label(state: PeerState) -> &'static str {
    match state {
        PeerState::Up => "up",
        PeerState::Down => "down",
    }
}

/// Answers `GET /metrics`.
pub(crate) async fn respond(shared: &Arc<Shared>) -> Response<HttpBody> {
    let hub = &shared.hub;
    // A stopped or wedged engine must not hang the scrape.
    let wait = Duration::from_secs(2);
    let read = tokio::time::timeout(wait, async {
        Some((hub.engine_stats().await.ok()?, hub.members().await.ok()?))
    })
    .await
    .ok()
    .flatten();
    if let Some((stats, _)) = &read {
        shared.metrics.engine_limits(stats);
    }
    let scraped = scraped(&shared.stats, read.as_ref().map(|(s, m)| (s, m.as_slice())));
    match shared.metrics.render(&scraped) {
        Ok(text) => {
            let mut response = Response::new(HttpBody::from(text));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
            );
            response
        }
        Err(e) => {
            warn!(error = %e, "cannot encode metrics");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the metrics could not be encoded",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_live_and_scraped_metrics() {
        let metrics = Metrics::new(crate::cluster::fanout_histogram(), &LimitCounter::default());
        let ws = metrics.transport(Transport::WebSocket);
        ws.messages_in.inc_by(3);
        ws.record_joins(JoinCounts {
            ok: 2,
            refused: 1,
            ..JoinCounts::default()
        });
        let text = metrics
            .render(&scraped(&ServerStats::default(), None))
            .expect("encodes");
        assert!(
            text.contains("chorus_messages_in_total{transport=\"websocket\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_joins_total{transport=\"websocket\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_join_errors_total{reason=\"refused\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_join_errors_total{reason=\"crashed\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("chorus_engine_up 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn renders_rejected_peer_messages() {
        let metrics = Metrics::new(crate::cluster::fanout_histogram(), &LimitCounter::default());
        let mut stats = chorus_engine::runtime::RuntimeStats::default();
        stats.node.rejected_identity = 2;
        stats.rejected_invalid = 5;
        stats.node.history_expired = 7;
        stats.node.history_budget_evicted = 9;
        stats.node.history_budget_exceeded = 3;
        stats.history_bytes = 4096;
        metrics.engine_limits(&stats);
        metrics.engine_limits(&stats);
        let text = metrics
            .render(&scraped(&ServerStats::default(), Some((&stats, &[]))))
            .expect("encodes");
        for line in [
            "chorus_peer_messages_rejected_total{reason=\"identity\"} 2\n",
            "chorus_peer_messages_rejected_total{reason=\"address\"} 0\n",
            "chorus_peer_messages_rejected_total{reason=\"invalid\"} 5\n",
            "chorus_history_bytes 4096\n",
            "chorus_history_evicted_total{reason=\"ttl\"} 7\n",
            "chorus_history_evicted_total{reason=\"budget\"} 9\n",
            "chorus_limit_exceeded_total{limit=\"history_budget_bytes\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
