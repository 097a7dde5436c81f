//! Replicated records on the node: stamping local writes, pushing them,
//! merging peers' records, and the bucket-digest anti-entropy that repairs
//! them. Every record accepted is reported as [`Event::Record`].

use std::net::SocketAddr;

use super::{Event, Node, PeerState};
use crate::codec::Body;
use crate::id::NodeId;
use crate::records::{Record, Stamp, LAST_STAMP_MS};

impl Node {
    /// A stamp past every one issued or seen. A peer can raise the clock to
    /// [`LAST_STAMP_MS`] (stamps are its to choose); the clock then stays
    /// there and stamps are ordered by origin and sequence.
    pub(super) fn next_stamp(&mut self, time_ms: u64) -> Stamp {
        self.record_clock = next_time(self.record_clock, time_ms);
        self.record_seq += 1;
        Stamp {
            time_ms: self.record_clock,
            origin: self.cfg.id.clone(),
            seq: self.record_seq,
        }
    }

    /// A stamp for this incarnation's next append to `topic`'s log: its time
    /// as [`Node::next_stamp`], its seq the topic's own counter (1, 2, 3, ...
    /// per topic), so each origin's entries of a topic are contiguous.
    pub(super) fn next_log_stamp(&mut self, topic: &crate::id::Topic, time_ms: u64) -> Stamp {
        self.record_clock = next_time(self.record_clock, time_ms);
        let seq = match self.log_seqs.get_mut(topic) {
            Some(seq) => seq,
            None => self.log_seqs.entry(topic.clone()).or_insert(0),
        };
        *seq += 1;
        Stamp {
            time_ms: self.record_clock,
            origin: self.cfg.id.clone(),
            seq: *seq,
        }
    }

    /// Applies a local write and pushes it to every up peer. Peers that miss
    /// it (down, partitioned) get it from anti-entropy.
    pub(super) fn write_record(&mut self, record: Record) {
        if self.records.merge(&record) {
            self.events.push_back(Event::Record(record.clone()));
            self.fit_budget();
        }
        let targets: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Up)
            .filter_map(|(id, p)| p.addr.map(|a| (id.clone(), a)))
            .collect();
        for (id, addr) in targets {
            self.stats.records_sent += 1;
            self.send(Some(id), addr, Body::Records(vec![record.clone()]));
        }
    }

    pub(super) fn merge_records(&mut self, records: Vec<Record>) {
        for record in records.into_iter().filter(Record::is_valid) {
            if cfg!(feature = "broken-merge") && matches!(record, Record::Reg { value: None, .. }) {
                continue;
            }
            self.record_clock = self.record_clock.max(record.stamp().time_ms);
            if self.records.merge(&record) {
                self.stats.records_merged += 1;
                self.events.push_back(Event::Record(record));
            }
        }
        self.fit_budget();
    }

    /// Over `history_budget`: raises the budget horizon past the oldest log
    /// entries until history fits. The horizon then reaches every peer in
    /// our records digests.
    fn fit_budget(&mut self) {
        let Some(budget) = self.cfg.history_budget else {
            return;
        };
        if let Some((horizon, expired)) = self.records.fit(budget) {
            self.budget_horizon = self.budget_horizon.max(horizon);
            self.stats.history_budget_evicted += expired.entries;
            self.stats.history_budget_exceeded += 1;
            self.events.push_back(Event::HistoryExpired { horizon });
        }
    }

    /// Adopts a peer's budget horizon, capped at our wall clock: a peer can
    /// make us drop what its budget dropped, never refuse what is written
    /// from now on. Anything below ours changes nothing.
    pub(super) fn adopt_budget_horizon(&mut self, theirs: u64) {
        let horizon = theirs.min(self.wall_ms);
        if horizon <= self.budget_horizon {
            return;
        }
        self.budget_horizon = horizon;
        // Our next write is stamped at or past the horizon, so it is kept.
        self.record_clock = self.record_clock.max(horizon);
        let expired = self.records.expire(horizon);
        if expired.entries > 0 {
            self.stats.history_budget_evicted += expired.entries;
            self.events.push_back(Event::HistoryExpired { horizon });
        }
    }

    /// Raises the history horizon to `time_ms - history_ttl`.
    pub(super) fn expire_history(&mut self, time_ms: u64) {
        let Some(ttl) = self.cfg.history_ttl else {
            return;
        };
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let horizon = time_ms.saturating_sub(ttl);
        let expired = self.records.expire(horizon);
        if expired.entries > 0 {
            self.stats.history_expired += expired.entries;
            self.events.push_back(Event::HistoryExpired { horizon });
        }
    }

    pub(super) fn send_records_digest(&mut self, to: NodeId, addr: SocketAddr, reply: bool) {
        let buckets = self.records.digest().to_vec();
        let horizon = self.budget_horizon;
        self.send(
            Some(to),
            addr,
            Body::RecordsDigest {
                buckets,
                reply,
                horizon,
            },
        );
    }

    /// Ships our records of every bucket that differs from the peer's, and
    /// answers a first digest with ours so the peer ships what we lack.
    pub(super) fn handle_records_digest(
        &mut self,
        from: &NodeId,
        addr: SocketAddr,
        theirs: &[u64],
        reply: bool,
    ) {
        let records = {
            let state = &self.records;
            let differ: Vec<bool> = state
                .digest()
                .iter()
                .zip(theirs)
                .map(|(a, b)| a != b)
                .collect();
            if !differ.contains(&true) {
                return;
            }
            state.bucket_records(&differ)
        };
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for record in records {
            bytes += record.size();
            chunk.push(record);
            if bytes >= self.cfg.records_chunk {
                self.stats.records_sent += 1;
                self.send(
                    Some(from.clone()),
                    addr,
                    Body::Records(std::mem::take(&mut chunk)),
                );
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.stats.records_sent += 1;
            self.send(Some(from.clone()), addr, Body::Records(chunk));
        }
        if !reply {
            self.send_records_digest(from.clone(), addr, true);
        }
    }
}

/// The time of the next stamp: `now`, or one past the clock when that is
/// later, never past [`LAST_STAMP_MS`].
fn next_time(clock: u64, now: u64) -> u64 {
    now.max(clock.saturating_add(1)).min(LAST_STAMP_MS)
}
