//! [`NodeConfig`]: timing and sizing of a node, with presets.

use std::net::SocketAddr;
use std::time::Duration;

use crate::coalesce::CoalesceConfig;
use crate::id::NodeId;
use crate::membership::SwimConfig;

/// Timing and sizing of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node incarnation.
    pub id: NodeId,
    /// Where it listens for gossip (advertised to peers).
    pub addr: SocketAddr,
    /// Addresses to announce ourselves to at start and after losing everyone.
    pub seeds: Vec<SocketAddr>,
    /// Seed of the node's RNG (ref prefixes, peer choice).
    pub rng_seed: u64,
    /// Delay between a local change and the delta push that carries it.
    pub flush_delay: Duration,
    /// SWIM protocol period (one probe each), also the period of
    /// retransmission checks.
    pub tick: Duration,
    /// Wait for a direct probe ack before asking helpers.
    pub probe_timeout: Duration,
    /// Helpers asked to probe a member that missed a direct probe (`k`).
    pub indirect_probes: usize,
    /// Shortest suspicion, reached with `indirect_probes` independent
    /// confirmations (scaled by `max(1, log10(N))`, capped at `down_after`).
    pub suspicion_min: Duration,
    /// Unacknowledged deltas are sent again after this long.
    pub retransmit_after: Duration,
    /// Period of version-vector exchange with one random peer.
    pub anti_entropy: Duration,
    /// Longest suspicion: a suspect member nobody confirms is down (entries
    /// hidden) after this long.
    pub down_after: Duration,
    /// A peer down for this long is purged (entries dropped).
    pub permdown_after: Duration,
    /// Longest wait of a first subscriber for peers to acknowledge its route.
    pub subscribe_wait: Duration,
    /// Presence diff coalescing.
    pub coalesce: CoalesceConfig,
    /// Most δ-buffer entries kept for slow peers (they are repaired after).
    pub buffer_cap: usize,
    /// Most tombstones kept per replica (a peer behind that is sent a full slice).
    pub tomb_cap: usize,
    /// Most entries per repair message.
    pub repair_chunk: usize,
    /// Most bytes of repair messages sent to one peer and not acknowledged
    /// yet (one is always allowed): the pacing of a large state transfer. The
    /// runtime caps it at half its peer queue, so a transfer never fills the
    /// queue. It also bounds one message: a repair carries about this many
    /// bytes of entries at most (one entry at least).
    pub repair_window: usize,
    /// How many random peers a node relays the novel part of a delta to.
    pub relay_fanout: usize,
    /// Each membership update is piggybacked `gossip_mult * ceil(log10(N + 1))`
    /// times.
    pub gossip_mult: u32,
    /// Most membership updates piggybacked on one probe message.
    pub max_gossip: usize,
    /// Ceiling of the Lifeguard local health score.
    pub max_health: u32,
    /// One down member is pinged every this many periods (so a healed
    /// partition comes back).
    pub down_probe_every: u32,
    /// Entries kept per replicated log (topic history).
    pub history_cap: usize,
    /// Log entries stamped more than this long before the wall clock given
    /// to [`Node::handle_wall_clock`](super::Node::handle_wall_clock) are
    /// dropped and refused from peers. `None`: history never expires. Like
    /// `history_cap`, the same on every node.
    pub history_ttl: Option<Duration>,
    /// Most bytes of history ([`Records::log_bytes`](crate::Records::log_bytes))
    /// the node holds: past it, it raises its **budget horizon** past its
    /// oldest entries until they fit, and gossips it in every records digest;
    /// every node adopts the greatest it hears, capped at its own wall clock.
    /// `None`: no budget (peers' budget horizons are still adopted). The
    /// smallest budget of the cluster rules, so set it alike on every node.
    pub history_budget: Option<usize>,
    /// Most bytes of records per repair message.
    pub records_chunk: usize,
}

impl NodeConfig {
    /// LAN defaults: 200 ms probe period, 100 ms probe timeout, suspicion
    /// 0.8 to 2 s, purged after 5 min.
    pub fn lan(id: NodeId, addr: SocketAddr) -> Self {
        NodeConfig {
            id,
            addr,
            seeds: Vec::new(),
            rng_seed: 0,
            flush_delay: Duration::from_millis(2),
            tick: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            indirect_probes: 3,
            suspicion_min: Duration::from_millis(800),
            retransmit_after: Duration::from_millis(600),
            anti_entropy: Duration::from_secs(1),
            down_after: Duration::from_secs(2),
            permdown_after: Duration::from_secs(300),
            subscribe_wait: Duration::from_millis(500),
            coalesce: CoalesceConfig::default(),
            buffer_cap: 4096,
            tomb_cap: 100_000,
            repair_chunk: 10_000,
            repair_window: 4 << 20,
            relay_fanout: 3,
            gossip_mult: 4,
            max_gossip: 6,
            max_health: 8,
            down_probe_every: 1,
            history_cap: 100,
            history_ttl: None,
            history_budget: None,
            records_chunk: 1 << 20,
        }
    }

    /// Phoenix.Tracker's timing: 1.5 s period, down after at most 30 s of
    /// suspicion (15 s when confirmed), purged after 20 min.
    pub fn phoenix(id: NodeId, addr: SocketAddr) -> Self {
        NodeConfig {
            tick: Duration::from_millis(1500),
            probe_timeout: Duration::from_millis(750),
            suspicion_min: Duration::from_secs(15),
            retransmit_after: Duration::from_millis(4500),
            anti_entropy: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            permdown_after: Duration::from_secs(1200),
            ..NodeConfig::lan(id, addr)
        }
    }

    /// The failure detector's part of the configuration.
    pub fn swim(&self) -> SwimConfig {
        SwimConfig {
            period: self.tick,
            probe_timeout: self.probe_timeout,
            indirect_probes: self.indirect_probes,
            suspicion_min: self.suspicion_min,
            suspicion_max: self.down_after,
            permdown_after: self.permdown_after,
            gossip_mult: self.gossip_mult,
            max_gossip: self.max_gossip,
            max_health: self.max_health,
            down_probe_every: self.down_probe_every,
        }
    }
}
