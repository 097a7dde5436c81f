//! The simulated network: link behaviour ([`NetConfig`]) and link state (cuts,
//! connection epochs, stream FIFO order). See the crate docs for how the two
//! QUIC lanes are modelled.
//!
//! Deterministic: every random choice draws from the world's RNG, passed in;
//! state lives in `BTreeMap`/`BTreeSet` only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How every link behaves (one setting for the whole network).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Fixed one-way latency, in milliseconds.
    pub latency_ms: f64,
    /// Mean of the exponential jitter added to the latency, in milliseconds.
    pub jitter_ms: f64,
    /// Probability that a packet is lost (a datagram is dropped, a stream
    /// message waits one retransmission timeout per loss).
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to `reorder_ms`, so that
    /// later ones overtake it.
    pub reorder: f64,
    /// Longest extra delay of a reordered datagram, in milliseconds.
    pub reorder_ms: f64,
    /// Retransmission timeout of a lost stream packet, in milliseconds.
    pub rto_ms: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_ms: 0.5,
            jitter_ms: 0.25,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_ms: 20.0,
            rto_ms: 5.0,
        }
    }
}

impl NetConfig {
    /// A bad network: 5% loss, 2% duplication, 5% reordering, 2 ms latency.
    pub fn lossy() -> Self {
        NetConfig {
            latency_ms: 2.0,
            jitter_ms: 1.0,
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            reorder_ms: 30.0,
            rto_ms: 10.0,
        }
    }
}

/// Which lane a message takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Reliable, ordered, per directed pair.
    Stream,
    /// May be lost, duplicated, reordered.
    Datagram,
}

/// Link state of the whole network.
#[derive(Debug, Default)]
pub struct Net {
    /// Behaviour of every link.
    pub config: NetConfig,
    /// Directed pairs `(from, to)` that are cut.
    cut: BTreeSet<(usize, usize)>,
    /// Connection epoch per directed pair: bumped when the direction is cut.
    epoch: BTreeMap<(usize, usize), u64>,
    /// Latest arrival time scheduled on each directed stream.
    fifo: BTreeMap<(usize, usize), Duration>,
    /// When each directed pair last changed state: `(time, from, to)`.
    pub changes: Vec<(Duration, usize, usize)>,
}

impl Net {
    /// A network with every link up.
    pub fn new(config: NetConfig) -> Self {
        Net {
            config,
            ..Net::default()
        }
    }

    /// Whether `from -> to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Whether any link is cut.
    pub fn any_cut(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Cuts `from -> to` (breaking its stream). Returns whether it changed.
    pub fn cut(&mut self, now: Duration, from: usize, to: usize) -> bool {
        if from == to || !self.cut.insert((from, to)) {
            return false;
        }
        *self.epoch.entry((from, to)).or_default() += 1;
        self.fifo.remove(&(from, to));
        self.changes.push((now, from, to));
        true
    }

    /// Restores `from -> to`. Returns whether it changed.
    pub fn heal(&mut self, now: Duration, from: usize, to: usize) -> bool {
        if !self.cut.remove(&(from, to)) {
            return false;
        }
        self.changes.push((now, from, to));
        true
    }

    /// Restores every link.
    pub fn heal_all(&mut self, now: Duration) {
        let all: Vec<(usize, usize)> = self.cut.iter().copied().collect();
        for (a, b) in all {
            self.heal(now, a, b);
        }
    }

    /// The current epoch of the `from -> to` connection.
    pub fn epoch(&self, from: usize, to: usize) -> u64 {
        self.epoch.get(&(from, to)).copied().unwrap_or(0)
    }

    /// Forgets stream order state of every pair touching `node` (its
    /// connections broke: a crash or a restart).
    pub fn reset_node(&mut self, node: usize) {
        self.fifo.retain(|&(a, b), _| a != node && b != node);
    }

    /// Arrival times of one message sent now from `from` to `to`: none when
    /// lost, two when duplicated.
    pub fn route(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: Duration,
        from: usize,
        to: usize,
        lane: Lane,
    ) -> Vec<Duration> {
        if self.is_cut(from, to) {
            return Vec::new();
        }
        let c = &self.config;
        match lane {
            Lane::Stream => {
                let mut delay = self.sample_delay(rng);
                // Each lost packet costs one retransmission timeout; give up
                // counting after 20 (loss < 1 makes that vanishingly rare).
                for _ in 0..20 {
                    if c.loss <= 0.0 || rng.random::<f64>() >= c.loss {
                        break;
                    }
                    delay += ms(self.config.rto_ms);
                }
                let last = self.fifo.entry((from, to)).or_default();
                let at = (now + delay).max(*last);
                *last = at;
                vec![at]
            }
            Lane::Datagram => {
                if c.loss > 0.0 && rng.random::<f64>() < c.loss {
                    return Vec::new();
                }
                let copies = if c.duplicate > 0.0 && rng.random::<f64>() < c.duplicate {
                    2
                } else {
                    1
                };
                (0..copies)
                    .map(|_| {
                        let mut d = self.sample_delay(rng);
                        if self.config.reorder > 0.0 && rng.random::<f64>() < self.config.reorder {
                            d += ms(rng.random::<f64>() * self.config.reorder_ms);
                        }
                        now + d
                    })
                    .collect()
            }
        }
    }

    fn sample_delay(&self, rng: &mut ChaCha8Rng) -> Duration {
        let c = &self.config;
        let u: f64 = rng.random::<f64>();
        let jitter = -c.jitter_ms * (1.0 - u).ln();
        ms(c.latency_ms + jitter.min(c.jitter_ms * 20.0))
    }
}

/// Milliseconds (fractional) as a duration, rounded to the microsecond.
pub fn ms(x: f64) -> Duration {
    Duration::from_micros((x.max(0.0) * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn streams_keep_order_and_datagrams_may_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut net = Net::new(NetConfig::lossy());
        let mut last = Duration::ZERO;
        let mut lost = 0;
        for i in 0..1000u64 {
            let now = Duration::from_micros(i * 100);
            let s = net.route(&mut rng, now, 0, 1, Lane::Stream);
            assert_eq!(s.len(), 1, "streams never drop");
            assert!(s[0] >= last, "streams never reorder");
            last = s[0];
            lost += usize::from(net.route(&mut rng, now, 0, 1, Lane::Datagram).is_empty());
        }
        assert!(
            (20..100).contains(&lost),
            "about 5% of datagrams lost: {lost}"
        );
        assert!(net.cut(Duration::ZERO, 0, 1));
        assert!(net.route(&mut rng, last, 0, 1, Lane::Stream).is_empty());
        assert_eq!(net.route(&mut rng, last, 1, 0, Lane::Stream).len(), 1);
        assert_eq!(net.epoch(0, 1), 1);
    }
}
