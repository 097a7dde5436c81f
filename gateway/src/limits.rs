//! What one client may do, and the counter of every refusal.
//!
//! - [`ClientLimits`]: the limits the server holds every connection to (frame
//!   rate, JSON shape of payloads); the `chorus` binary's `[limits]` section
//!   ([`LimitsSection`](crate::config::LimitsSection)) sets them;
//! - [`TokenBucket`]: the rate limiter they use, sans-IO (`now` is passed in);
//! - [`FrameLimiter`]: one connection's frame rate, with the escalation from
//!   one error reply to a disconnect;
//! - [`ConnectionLimiter`]: new connections per client address, checked when
//!   a TCP connection is accepted and when a LongPoll session starts;
//! - [`LimitCounter`]: `chorus_limit_exceeded_total{limit="<config key>"}`,
//!   shared by the server and the built-in channels.
//!
//! Deterministic: nothing here reads a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::protocol::JsonLimits;

/// Default `frame_rate`: frames per second per connection. A phoenix.js client
/// sends a heartbeat every 30 s plus what the user does; 100/s is far above a
/// person and far below a loop.
pub const DEFAULT_FRAME_RATE: u32 = 100;
/// Default `frame_burst`: a page joining dozens of channels at once fits.
pub const DEFAULT_FRAME_BURST: u32 = 200;

/// Default `byte_rate`: bytes per second one WebSocket connection may send
/// before the server stops reading from it for a while. A person's client sends
/// a few KB a second at most; a client sending big frames in a loop is paced.
pub const DEFAULT_BYTE_RATE: u32 = 1 << 20;
/// Default `byte_burst`: four frames of the largest size pass at once.
pub const DEFAULT_BYTE_BURST: u32 = 4 << 20;

/// The limits every connection is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Frames per second, all events (0: no limit).
    pub frame_rate: u32,
    /// Frames in a burst above the rate.
    pub frame_burst: u32,
    /// Bytes per second read from a WebSocket connection (0: no limit).
    pub byte_rate: u32,
    /// Bytes read in a burst above the rate.
    pub byte_burst: u32,
    /// Nesting depth and string length of a frame's JSON payload.
    pub json: JsonLimits,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            frame_rate: DEFAULT_FRAME_RATE,
            frame_burst: DEFAULT_FRAME_BURST,
            byte_rate: DEFAULT_BYTE_RATE,
            byte_burst: DEFAULT_BYTE_BURST,
            json: JsonLimits::default(),
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second. A rate of 0
/// never refuses.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes a token at `now` if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (the client kept to the rate long
    /// enough to earn its whole burst back).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
    }
}

/// A connection's inbound byte rate: the server reads a frame, charges its
/// bytes, and when the bucket is in debt stops reading from that connection
/// until the debt is paid back. Nothing is refused or closed: TCP pushes back on
/// the client, and the frames it sends wait in its own buffers, not the server's.
#[derive(Clone, Debug)]
pub struct ByteLimiter {
    /// Its tokens go below zero: the debt.
    bucket: TokenBucket,
}

impl ByteLimiter {
    /// A full bucket of `burst` bytes refilled at `rate` a second; a rate of 0
    /// never pauses.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            bucket: TokenBucket::new(rate, burst),
        }
    }

    /// Charges `bytes` read at `now`: how long to stop reading, if the bucket
    /// went into debt.
    pub fn charge(&mut self, now: Instant, bytes: usize) -> Option<Duration> {
        let b = &mut self.bucket;
        if b.rate == 0.0 {
            return None;
        }
        b.refill(now);
        b.tokens -= bytes as f64;
        (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / b.rate))
    }
}

/// Default `connection_rate`: new connections per second from one address. A
/// browser opens one socket per tab; an office behind one NAT reconnecting after
/// a deploy fits in the burst; a client reconnecting in a loop does not.
pub const DEFAULT_CONNECTION_RATE: u32 = 50;
/// Default `connection_burst`.
pub const DEFAULT_CONNECTION_BURST: u32 = 500;

/// Default `connection_rate_exempt`: loopback, where a reverse proxy on the
/// same host connects from (every client would share its address).
pub fn default_connection_rate_exempt() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|net| net.parse().expect("a valid network"))
        .collect()
}

/// How many new connections one client address may open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// New connections per second per address (0: no limit).
    pub rate: u32,
    /// New connections in a burst above the rate.
    pub burst: u32,
    /// Networks not limited (a proxy's address, loopback).
    pub exempt: Vec<IpNet>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            rate: DEFAULT_CONNECTION_RATE,
            burst: DEFAULT_CONNECTION_BURST,
            exempt: default_connection_rate_exempt(),
        }
    }
}

/// The address a connection rate is kept for: an IPv4 address, or the /64 of
/// an IPv6 address (one host usually holds a whole /64).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.to_bits()),
            IpAddr::V6(v6) => Source::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// What to do with a newly accepted connection under [`ConnectionLimiter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionVerdict {
    /// Within its address's rate: serve it.
    Accept,
    /// Over the rate. `tell` is set for the first refusal since the address
    /// was last accepted: answer it (429). The others are closed unanswered
    /// (the server holds them `1 / rate` first), so a client reconnecting in
    /// a loop costs an accept and a close.
    Refuse {
        /// Answer this one.
        tell: bool,
    },
}

/// One address's bucket, and whether it has been refused since it was last
/// accepted (it has been told).
#[derive(Debug)]
struct SourceState {
    bucket: TokenBucket,
    refused: bool,
}

/// New connections per client address ([`ConnectionLimits`]), checked once per
/// accepted TCP connection, before anything is read from it, and once per
/// LongPoll session started beyond the first on a connection (each is what a
/// WebSocket connection is). The server keeps one behind a lock that the
/// accept loop and the LongPoll endpoint take for one check each. Addresses
/// whose bucket has filled up again are forgotten, so the table holds only the
/// addresses seen in the last `burst / rate` seconds or so.
#[derive(Debug)]
pub struct ConnectionLimiter {
    limits: ConnectionLimits,
    buckets: HashMap<Source, SourceState>,
    /// The table is swept of full buckets when it grows past this.
    sweep_at: usize,
}

/// The table size below which [`ConnectionLimiter`] never sweeps.
const CONNECTION_TABLE_MIN_SWEEP: usize = 1024;

impl ConnectionLimiter {
    /// A limiter with nobody seen yet.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            buckets: HashMap::new(),
            sweep_at: CONNECTION_TABLE_MIN_SWEEP,
        }
    }

    /// The verdict on a connection from `ip` accepted at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> ConnectionVerdict {
        if self.limits.rate == 0 || self.limits.exempt.iter().any(|net| net.contains(&ip)) {
            return ConnectionVerdict::Accept;
        }
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, source| !source.bucket.is_full(now));
            self.sweep_at = (self.buckets.len() * 2).max(CONNECTION_TABLE_MIN_SWEEP);
        }
        let (rate, burst) = (self.limits.rate, self.limits.burst);
        let source = self
            .buckets
            .entry(Source::from(ip))
            .or_insert_with(|| SourceState {
                bucket: TokenBucket::new(rate, burst),
                refused: false,
            });
        if source.bucket.try_take(now) {
            source.refused = false;
            ConnectionVerdict::Accept
        } else {
            let tell = !source.refused;
            source.refused = true;
            ConnectionVerdict::Refuse { tell }
        }
    }

    /// Whether a connection from `ip` accepted at `now` may go on.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.check(ip, now) == ConnectionVerdict::Accept
    }

    /// Addresses in the table.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// What to do with a client frame under [`FrameLimiter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameVerdict {
    /// Within the rate: handle it.
    Accept,
    /// Over the rate: drop it. `notify` is set for the first frame dropped in
    /// an episode: answer it with an error reply.
    Refuse {
        /// Answer this one (the client hears once per episode).
        notify: bool,
    },
    /// Still over the rate after another burst's worth of frames was refused:
    /// close the connection.
    Disconnect,
}

/// One connection's inbound frame rate. Frames over the rate are dropped; the
/// first of an episode gets an error reply, and a client that goes on until
/// `burst` more frames were refused in the same episode is disconnected. An
/// episode ends once the bucket is full again (the client slowed down).
#[derive(Clone, Debug)]
pub struct FrameLimiter {
    bucket: TokenBucket,
    burst: u32,
    /// Frames refused in the current episode (0: none going on).
    refused: u32,
}

impl FrameLimiter {
    /// A limiter of `rate` frames per second with a burst of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            bucket: TokenBucket::new(rate, burst),
            burst: burst.max(1),
            refused: 0,
        }
    }

    /// The verdict on a frame that arrived at `now`.
    pub fn check(&mut self, now: Instant) -> FrameVerdict {
        if self.refused > 0 && self.bucket.is_full(now) {
            self.refused = 0;
        }
        if self.bucket.try_take(now) {
            return FrameVerdict::Accept;
        }
        self.refused = self.refused.saturating_add(1);
        if self.refused > self.burst {
            FrameVerdict::Disconnect
        } else {
            FrameVerdict::Refuse {
                notify: self.refused == 1,
            }
        }
    }
}

type LimitLabel = [(&'static str, &'static str); 1];

/// `chorus_limit_exceeded_total{limit="<config key>"}`: one count per refused
/// frame, push, join or meta. Cheap to clone: clones count into the same
/// series.
#[derive(Clone, Debug)]
pub struct LimitCounter(Family<LimitLabel, Counter>);

/// The `limit` label values (the `[limits]` keys, and `rate_limit`, a topic
/// rule's per user and topic), created at 0 so each series exists before its
/// first breach.
pub const LIMIT_KEYS: [&str; 12] = [
    "handshake_timeout_ms",
    "max_connections",
    "connection_rate",
    "frame_rate",
    "byte_rate",
    "user_publish_rate",
    "presence_meta_bytes",
    "presences_per_user_topic",
    "json_max_depth",
    "json_max_string_bytes",
    "history_budget_bytes",
    "rate_limit",
];

impl Default for LimitCounter {
    fn default() -> Self {
        let family = Family::default();
        for key in LIMIT_KEYS {
            let _ = family.get_or_create(&[("limit", key)]);
        }
        Self(family)
    }
}

impl LimitCounter {
    /// Counts one breach of `limit` (one of [`LIMIT_KEYS`]).
    pub fn hit(&self, limit: &'static str) {
        self.0.get_or_create(&[("limit", limit)]).inc();
    }

    /// Raises the count of `limit` to `total` (a count kept elsewhere, e.g.
    /// the engine's; a lower one changes nothing, so concurrent calls cannot
    /// count twice).
    pub fn raise_to(&self, limit: &'static str, total: u64) {
        self.0
            .get_or_create(&[("limit", limit)])
            .inner()
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
    }

    /// Breaches of `limit` so far.
    pub fn count(&self, limit: &'static str) -> u64 {
        self.0.get_or_create(&[("limit", limit)]).get()
    }

    /// The family, for registering.
    pub(crate) fn family(&self) -> &Family<LimitLabel, Counter> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        assert_eq!((0..8).filter(|_| b.try_take(t0)).count(), 5);
        // 100 ms at 10/s earn one token.
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        assert!(b.is_full(t0 + Duration::from_secs(10)));
        let mut off = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| off.try_take(t0)));
    }

    #[test]
    fn a_flood_is_told_once_then_disconnected() {
        let t0 = Instant::now();
        let mut l = FrameLimiter::new(100, 200);
        let verdicts: Vec<FrameVerdict> = (0..402).map(|_| l.check(t0)).collect();
        assert!(verdicts[..200].iter().all(|v| *v == FrameVerdict::Accept));
        assert_eq!(verdicts[200], FrameVerdict::Refuse { notify: true });
        assert!(verdicts[201..400]
            .iter()
            .all(|v| *v == FrameVerdict::Refuse { notify: false }));
        assert_eq!(verdicts[400], FrameVerdict::Disconnect);
    }

    #[test]
    fn a_client_that_slows_down_starts_afresh() {
        let t0 = Instant::now();
        let mut l = FrameLimiter::new(100, 200);
        for _ in 0..200 {
            assert_eq!(l.check(t0), FrameVerdict::Accept);
        }
        assert_eq!(l.check(t0), FrameVerdict::Refuse { notify: true });
        // Two quiet seconds refill the burst: a new episode, told again.
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..200 {
            assert_eq!(l.check(t1), FrameVerdict::Accept);
        }
        assert_eq!(l.check(t1), FrameVerdict::Refuse { notify: true });
    }

    #[test]
    fn the_counter_starts_every_client_limit_at_zero() {
        let c = LimitCounter::default();
        assert_eq!(c.count("frame_rate"), 0);
        c.hit("frame_rate");
        c.clone().hit("frame_rate");
        assert_eq!(c.count("frame_rate"), 2);
    }

    #[test]
    fn a_byte_bucket_pauses_reading_for_its_debt_only() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut bytes = ByteLimiter::new(1000, 2000);
        assert_eq!(bytes.charge(t0, 2000), None, "the burst passes");
        assert_eq!(bytes.charge(t0, 500), Some(Duration::from_millis(500)));
        // 500 ms later the debt is paid: 100 more bytes cost 100 ms.
        assert_eq!(bytes.charge(ms(500), 100), Some(Duration::from_millis(100)));
        // Idle time refills up to the burst, not beyond.
        assert_eq!(bytes.charge(ms(60_000), 2000), None);
        assert!(bytes.charge(ms(60_000), 1).is_some());
        let mut off = ByteLimiter::new(0, 0);
        assert_eq!(off.charge(t0, usize::MAX), None, "0 is no limit");
    }

    #[test]
    fn each_address_gets_its_own_connection_burst() {
        let t0 = Instant::now();
        let mut l = ConnectionLimiter::new(ConnectionLimits {
            rate: 10,
            burst: 3,
            exempt: default_connection_rate_exempt(),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..5).filter(|_| l.allow(a, t0)).count(), 3);
        assert!(l.allow(b, t0), "another address is not charged for a");
        // The same host over IPv4-mapped IPv6 is the same address.
        assert!(!l.allow("::ffff:192.0.2.1".parse().unwrap(), t0));
        assert!(l.allow(a, t0 + Duration::from_millis(100)));
        // Loopback is exempt by default.
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..100).all(|_| l.allow(local, t0)));
        assert!((0..100).all(|_| l.allow("::1".parse().unwrap(), t0)));
    }

    #[test]
    fn an_address_is_told_once_then_closed_until_it_is_accepted_again() {
        let t0 = Instant::now();
        let mut l = ConnectionLimiter::new(ConnectionLimits {
            rate: 10,
            burst: 1,
            exempt: vec![],
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.check(a, t0), ConnectionVerdict::Accept);
        assert_eq!(l.check(a, t0), ConnectionVerdict::Refuse { tell: true });
        assert_eq!(l.check(a, t0), ConnectionVerdict::Refuse { tell: false });
        assert_eq!(l.check(a, t0), ConnectionVerdict::Refuse { tell: false });
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(a, t1), ConnectionVerdict::Accept);
        assert_eq!(l.check(a, t1), ConnectionVerdict::Refuse { tell: true });
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let t0 = Instant::now();
        let mut l = ConnectionLimiter::new(ConnectionLimits {
            rate: 1,
            burst: 2,
            exempt: vec![],
        });
        assert!(l.allow("2001:db8:0:1::1".parse().unwrap(), t0));
        assert!(l.allow("2001:db8:0:1::2".parse().unwrap(), t0));
        assert!(!l.allow("2001:db8:0:1:ffff::9".parse().unwrap(), t0));
        assert!(l.allow("2001:db8:0:2::1".parse().unwrap(), t0));
        assert!((0..10).all(|_| ConnectionLimiter::new(ConnectionLimits {
            rate: 0,
            burst: 1,
            exempt: vec![],
        })
        .allow("2001:db8::1".parse().unwrap(), t0)));
    }

    #[test]
    fn the_connection_table_forgets_addresses_that_calmed_down() {
        let t0 = Instant::now();
        let mut l = ConnectionLimiter::new(ConnectionLimits {
            rate: 10,
            burst: 10,
            exempt: vec![],
        });
        for i in 0..5000u32 {
            assert!(l.allow(IpAddr::V4(std::net::Ipv4Addr::from_bits(i)), t0));
        }
        // All 5,000 are still paying for their connection: none is forgotten.
        assert_eq!(l.tracked(), 5000);
        // A second later their buckets are full again: the next sweep (when
        // the table reaches twice its size after the last one, 8,192) forgets
        // them and keeps only the 4,000 new addresses.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..4000u32 {
            assert!(l.allow(IpAddr::V4(std::net::Ipv4Addr::from_bits(1 << 24 | i)), t1));
        }
        assert_eq!(l.tracked(), 4000);
    }
}
