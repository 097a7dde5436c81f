//! The probe round: one member pinged per protocol period (round-robin over a
//! shuffled list), helpers asked to probe indirectly when the direct ack is
//! late, relays for other members' indirect probes, and the Lifeguard health
//! multiplier that stretches the period and the probe timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{Membership, State, Swim};
use crate::id::NodeId;

#[derive(Debug)]
pub(super) struct Probe {
    pub(super) target: NodeId,
    pub(super) seq: u64,
    pub(super) indirect_at: Instant,
    pub(super) asked: bool,
    pub(super) acked: bool,
    pub(super) expected_nacks: u32,
    pub(super) nacks: u32,
}

#[derive(Debug)]
pub(super) struct Relay {
    pub(super) requester: NodeId,
    pub(super) addr: SocketAddr,
    pub(super) seq: u64,
    pub(super) nack_at: Option<Instant>,
    pub(super) drop_at: Instant,
}

impl Membership {
    pub(super) fn multiplier(&self) -> u32 {
        self.health + 1
    }

    pub(super) fn period(&self) -> Duration {
        self.cfg.period * self.multiplier()
    }

    pub(super) fn probe_timeout(&self) -> Duration {
        self.cfg.probe_timeout * self.multiplier()
    }

    pub(super) fn raise_health(&mut self, by: u32) {
        self.health = (self.health + by).min(self.cfg.max_health);
    }

    pub(super) fn live_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.state != State::Down)
            .count()
    }

    /// One protocol period: judge the last probe, purge, probe the next member.
    pub(super) fn run_period(&mut self, now: Instant) {
        self.periods += 1;
        if let Some(p) = self.probe.take() {
            if p.acked {
                self.health = self.health.saturating_sub(1);
            } else {
                // Lifeguard: with helpers, only their missing nacks point at us;
                // without, any failed probe does.
                let delta = if p.expected_nacks > 0 {
                    p.expected_nacks.saturating_sub(p.nacks)
                } else {
                    1
                };
                self.raise_health(delta);
                self.suspect(now, &p.target, None);
            }
        }
        self.purge(now);
        if self.cfg.down_probe_every > 0 && self.periods % u64::from(self.cfg.down_probe_every) == 0
        {
            self.probe_down_member();
        }
        self.ping_suspects();
        if let Some(target) = self.next_target() {
            let addr = self.members[&target].addr.expect("targets have addresses");
            let seq = self.ping(target.clone(), addr);
            self.probe = Some(Probe {
                target,
                seq,
                indirect_at: now + self.probe_timeout(),
                asked: false,
                acked: false,
                expected_nacks: 0,
                nacks: 0,
            });
        }
        self.period_at = now + self.period();
    }

    /// Pings `target` and returns the ping's seq. Its gossip is led by what we
    /// hold against `target`, so a live target refutes in its ack. Outside the
    /// probe round (suspects, down members) no probe state is kept.
    pub(super) fn ping(&mut self, target: NodeId, addr: SocketAddr) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let gossip = self.gossip_for(&target);
        self.send(
            target.clone(),
            addr,
            Swim::Ping {
                seq,
                target,
                gossip,
            },
        );
        seq
    }

    /// After a sign that a partition healed (a member we doubted refuted, or
    /// a member holds us suspect or down), pings every down and suspect
    /// member at once instead of one per period: each ping carries the
    /// verdict it answers, so a live member refutes in its ack and is alive
    /// again a round trip later, and it bursts in turn. At 100 nodes a 50/50 heal otherwise waited for 50
    /// down members to be drawn one per period per node, up to 5 s. At most
    /// one burst per period.
    pub(super) fn heal_burst(&mut self, now: Instant) {
        if !self.heal_seen {
            return;
        }
        if self
            .last_burst
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.period)
        {
            return;
        }
        self.heal_seen = false;
        self.last_burst = Some(now);
        let down: Vec<(NodeId, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.state, State::Down | State::Suspect))
            .filter_map(|(id, m)| Some((id.clone(), m.addr?)))
            .collect();
        for (target, addr) in down {
            self.ping(target, addr);
        }
    }

    pub(super) fn probe_down_member(&mut self) {
        let down: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == State::Down && m.addr.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        if down.is_empty() {
            return;
        }
        let target = down[self.rng.random_range(0..down.len())].clone();
        let addr = self.members[&target].addr.expect("filtered");
        self.ping(target, addr);
    }

    /// Round-robin over a shuffled list of probeable members; reshuffled after
    /// each full pass.
    pub(super) fn next_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.cursor < self.order.len() {
                let id = self.order[self.cursor].clone();
                self.cursor += 1;
                if self
                    .members
                    .get(&id)
                    .is_some_and(|m| m.state != State::Down && m.addr.is_some())
                {
                    return Some(id);
                }
            }
            self.order = self
                .members
                .iter()
                .filter(|(_, m)| m.state != State::Down && m.addr.is_some())
                .map(|(id, _)| id.clone())
                .collect();
            for i in (1..self.order.len()).rev() {
                let j = self.rng.random_range(0..=i);
                self.order.swap(i, j);
            }
            self.cursor = 0;
        }
        None
    }

    pub(super) fn ask_helpers(&mut self) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        // Asked or not, this probe's indirect stage is over (a deadline left
        // pending would be due forever).
        p.asked = true;
        let target = p.target.clone();
        let seq = p.seq;
        let Some(target_addr) = self.members.get(&target).and_then(|m| m.addr) else {
            return;
        };
        let mut helpers: Vec<(NodeId, SocketAddr)> = self
            .members
            .iter()
            .filter(|(id, m)| **id != target && m.state == State::Alive)
            .filter_map(|(id, m)| Some((id.clone(), m.addr?)))
            .collect();
        let k = self.cfg.indirect_probes.min(helpers.len());
        for i in 0..k {
            let j = self.rng.random_range(i..helpers.len());
            helpers.swap(i, j);
        }
        helpers.truncate(k);
        let p = self.probe.as_mut().expect("checked above");
        p.expected_nacks = k as u32;
        for (id, addr) in helpers {
            let gossip = self.gossip_for(&id);
            self.send(
                id,
                addr,
                Swim::PingReq {
                    seq,
                    target: target.clone(),
                    target_addr,
                    gossip,
                },
            );
        }
    }
}
