//! Suspicion (Lifeguard): the timeout that shrinks with independent
//! confirmations, suspects pinged with the charge so they can refute, down
//! verdicts, and permdown.

use std::time::{Duration, Instant};

use super::{Membership, Output, State, Update, UpdateKind};
use crate::id::NodeId;

impl Membership {
    /// The current suspicion timeout for `confirmations` independent
    /// confirmations (Lifeguard): `max - (max - min) * log(C + 1) / log(K + 1)`,
    /// where `K` is `indirect_probes`, or 0 (timeout = min) when there are too
    /// few members to confirm.
    pub fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let n = self.live_count() + 1;
        let scale = (n as f64).log10().max(1.0);
        let max = self.cfg.suspicion_max;
        let min = self.cfg.suspicion_min.mul_f64(scale).min(max);
        let k = self.cfg.indirect_probes;
        if n < k + 2 || k == 0 {
            return min;
        }
        let frac = ((confirmations as f64 + 1.0).ln() / (k as f64 + 1.0).ln()).min(1.0);
        max - (max - min).mul_f64(frac)
    }

    /// Permdown, and down for members whose address we never learned.
    pub(super) fn purge(&mut self, now: Instant) {
        let mut gone = Vec::new();
        let mut down = Vec::new();
        for (id, m) in &self.members {
            let age = now.saturating_duration_since(m.since);
            match m.state {
                State::Down if age >= self.cfg.permdown_after => gone.push(id.clone()),
                State::Alive if m.addr.is_none() && age >= self.cfg.suspicion_max => {
                    down.push(id.clone())
                }
                _ => {}
            }
        }
        for id in down {
            self.set_down(now, &id);
        }
        for id in gone {
            self.remove(&id);
            self.outputs.push_back(Output::Gone(id));
        }
    }

    /// Lifeguard's buddy system, made active: every period the suspects whose
    /// suspicion ends soonest (at most `indirect_probes`) are pinged with the
    /// charge piggybacked, so a live suspect hears it and refutes in its ack
    /// to the very member that holds the suspicion, instead of depending on
    /// the round-robin reaching it (or on gossip) before the timeout.
    pub(super) fn ping_suspects(&mut self) {
        let mut due: Vec<(Instant, NodeId)> = self
            .deadlines
            .iter()
            .filter(|(id, _)| self.probe.as_ref().is_none_or(|p| &p.target != *id))
            .map(|(id, t)| (*t, id.clone()))
            .collect();
        due.sort();
        due.truncate(self.cfg.indirect_probes.max(1));
        for (_, id) in due {
            self.ping_suspect(&id);
        }
    }

    pub(super) fn ping_suspect(&mut self, id: &NodeId) {
        let Some(addr) = self
            .members
            .get(id)
            .filter(|m| m.state == State::Suspect)
            .and_then(|m| m.addr)
        else {
            return;
        };
        self.ping(id.clone(), addr);
    }

    /// Marks `id` suspect at its current incarnation, as suspected by `by`
    /// (`None`: by us), and gossips it.
    pub(super) fn suspect(&mut self, now: Instant, id: &NodeId, by: Option<NodeId>) {
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        let by = by.unwrap_or_else(|| self.id.clone());
        let new = m.state == State::Alive;
        match m.state {
            State::Down => return,
            // Already suspected by others: ours is a confirmation (once).
            State::Suspect if !m.suspecters.insert(by.clone()) => return,
            State::Suspect => {}
            State::Alive => {
                m.state = State::Suspect;
                m.since = now;
                m.suspecters.clear();
                m.suspecters.insert(by.clone());
            }
        }
        let (inc, addr) = (m.inc, m.addr);
        self.reschedule(id);
        if let Some(addr) = addr {
            self.enqueue(Update {
                node: id.clone(),
                addr,
                inc,
                kind: UpdateKind::Suspect { by },
            });
        }
        if new {
            self.ping_suspect(id);
        }
    }

    /// Sets the suspicion deadline from the confirmations heard so far.
    pub(super) fn reschedule(&mut self, id: &NodeId) {
        let Some(m) = self.members.get(id) else {
            return;
        };
        let confirmations = m.suspecters.len().saturating_sub(1);
        let at = m.since + self.suspicion_timeout(confirmations);
        self.deadlines.insert(id.clone(), at);
    }

    pub(super) fn set_down(&mut self, now: Instant, id: &NodeId) {
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if m.state == State::Down {
            return;
        }
        m.state = State::Down;
        m.since = now;
        m.suspecters.clear();
        self.deadlines.remove(id);
        self.outputs.push_back(Output::Down(id.clone()));
    }
}
