//! What the world can be told to do: add, crash, restart and pause nodes; cut,
//! heal and flap links; client commands (track, update, untrack, subscribe,
//! publish). Also turns node events into the records the checkers read.

use std::time::Duration;

use bytes::Bytes;
use chorus_engine::{
    Command, CommandOutcome, ConnId, Event, Meta, Node, NodeConfig, SubscriberId, Topic,
};
use rand::Rng;

use crate::log::{PubRec, Receipt, SubRec};
use crate::world::{fmt_t, Ev, NodeSlot, World};

impl World {
    /// Adds a node (the next index) and starts it.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(NodeSlot {
            name: format!("n{i}"),
            addr: World::addr(i),
            incarnation: 1,
            gen: 0,
            node: None,
            paused_until: None,
            inbox: Default::default(),
            timer_at: None,
            truth: Default::default(),
            replay: Default::default(),
            subs: Default::default(),
            next_conn: 1,
            pub_seq: 0,
            past: Vec::new(),
            peaks: (0, 0),
            overflows: 0,
            ops_ended: 0,
            wall_fed_ms: None,
        });
        self.start_node(i);
        i
    }

    fn start_node(&mut self, i: usize) {
        let seeds = (0..3).map(World::addr).collect();
        let slot = &self.nodes[i];
        let mut cfg = NodeConfig::lan(slot.id(), slot.addr);
        cfg.seeds = seeds;
        cfg.rng_seed = self.rng.random();
        if let Some(d) = self.timing.down_after {
            cfg.down_after = d;
        }
        if let Some(d) = self.timing.permdown_after {
            cfg.permdown_after = d;
        }
        if let Some(c) = self.timing.history_cap {
            cfg.history_cap = c;
        }
        cfg.history_ttl = self.timing.history_ttl;
        cfg.history_budget = self.timing.history_budget;
        self.log.records.budget = cfg.history_budget;
        self.log.records.cap = cfg.history_cap;
        self.log.records.ttl_ms = cfg.history_ttl.map(|d| d.as_millis() as u64);
        let wall = self.wall_ms(i);
        let mut node = Node::new(cfg, self.base + self.now);
        node.handle_wall_clock(wall);
        self.nodes[i].node = Some(node);
        self.nodes[i].wall_fed_ms = Some(wall);
        self.disturb(i, "start");
        self.after_input(i);
    }

    /// Crashes node `i`: all its state is lost, its connections break.
    pub fn crash(&mut self, i: usize) {
        let now = self.now;
        let slot = &mut self.nodes[i];
        let Some(node) = slot.node.take() else { return };
        slot.overflows += node.stats().buffer_overflows;
        slot.ops_ended += node.presence().store().next_op() - 1 + node.subs().store().next_op() - 1;
        slot.past.push((slot.id(), now, None));
        slot.gen += 1;
        slot.paused_until = None;
        slot.inbox.clear();
        slot.timer_at = None;
        slot.wall_fed_ms = None;
        slot.truth.clear();
        slot.replay.clear();
        slot.subs.clear();
        self.net.reset_node(i);
        self.disturb(i, "crash");
    }

    /// Restarts node `i` as a new incarnation (crashing it first if running).
    pub fn restart(&mut self, i: usize) {
        self.crash(i);
        let now = self.now;
        let slot = &mut self.nodes[i];
        if let Some(last) = slot.past.last_mut() {
            last.2.get_or_insert(now);
        }
        slot.incarnation += 1;
        slot.gen += 1;
        self.start_node(i);
        self.disturb(i, "restart");
    }

    /// Pauses node `i` for `d` (a long GC): it handles nothing until then.
    pub fn pause(&mut self, i: usize, d: Duration) {
        let slot = &mut self.nodes[i];
        if slot.node.is_none() || slot.paused_until.is_some() {
            return;
        }
        slot.paused_until = Some(self.now + d);
        self.schedule(self.now + d, Ev::Resume(i));
        self.disturb(i, "pause");
    }

    pub(crate) fn resume(&mut self, i: usize) {
        let slot = &mut self.nodes[i];
        if slot.paused_until.take().is_none() {
            return;
        }
        let inbox = std::mem::take(&mut slot.inbox);
        self.disturb(i, "resume");
        // Which the driver sees first after a long pause is a race: draw it.
        let timer_first = self.rng.random::<bool>();
        if timer_first {
            self.fire(i);
        }
        for a in inbox {
            self.handle_arrival(a);
        }
        if !timer_first {
            self.fire(i);
        }
    }

    /// Fires node `i`'s due timers, after handing it its (skewed) wall
    /// clock, as the runtime does.
    pub(crate) fn fire(&mut self, i: usize) {
        let wall = self.wall_ms(i);
        let now = self.base + self.now;
        let slot = &mut self.nodes[i];
        if let Some(node) = slot.node.as_mut() {
            node.handle_wall_clock(wall);
            slot.wall_fed_ms = Some(wall);
            node.handle_timeout(now);
            self.after_input(i);
        }
    }

    /// Partitions the listed groups from each other (both directions).
    pub fn cut_groups(&mut self, groups: &[Vec<usize>]) {
        for (g, ga) in groups.iter().enumerate() {
            for gb in groups.iter().skip(g + 1) {
                for &a in ga {
                    for &b in gb {
                        self.net.cut(self.now, a, b);
                        self.net.cut(self.now, b, a);
                    }
                }
            }
        }
        self.fault(format!("cut {groups:?}"));
    }

    /// Cuts every `from -> to` direction only.
    pub fn cut_one_way(&mut self, from: &[usize], to: &[usize]) {
        for &a in from {
            for &b in to {
                self.net.cut(self.now, a, b);
            }
        }
        self.fault(format!("cut {from:?} -> {to:?}"));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.net.heal_all(self.now);
        self.fault("heal".into());
    }

    /// Flaps the `a <-> b` link until `now + d`, toggling every `period / 2`
    /// (with jitter); the link is up afterwards.
    pub fn start_flap(&mut self, a: usize, b: usize, d: Duration) {
        self.fault(format!("flap n{a}<->n{b} for {}", fmt_t(d)));
        self.flap(a, b, self.now + d);
    }

    pub(crate) fn flap(&mut self, a: usize, b: usize, until: Duration) {
        if self.now >= until {
            self.net.heal(self.now, a, b);
            self.net.heal(self.now, b, a);
            self.fault(format!("flap n{a}<->n{b} ends"));
            return;
        }
        if self.net.is_cut(a, b) {
            self.net.heal(self.now, a, b);
            self.net.heal(self.now, b, a);
        } else {
            self.net.cut(self.now, a, b);
            self.net.cut(self.now, b, a);
        }
        let next = self.now + Duration::from_millis(self.rng.random_range(100..1500));
        self.schedule(next.min(until), Ev::Flap { a, b, until });
    }

    fn fault(&mut self, label: String) {
        self.trace.record(self.now, 4);
        self.trace.text(&label);
        self.log.last_fault = self.now;
        self.log.faults.push((self.now, label));
    }

    fn disturb(&mut self, i: usize, what: &str) {
        self.log.node_faults.push((self.now, i));
        if what != "start" || self.now > Duration::ZERO {
            self.fault(format!("{what} n{i}"));
        }
    }

    /// Sends a client command to node `i`; `None` if it is crashed or paused.
    pub fn command(&mut self, i: usize, cmd: Command) -> Option<CommandOutcome> {
        let now = self.base + self.now;
        self.trace.record(self.now, 3);
        self.trace.text(&format!("n{i} {cmd:?}"));
        let slot = &mut self.nodes[i];
        if slot.paused_until.is_some() {
            return None;
        }
        let out = slot.node.as_mut()?.handle_command(now, cmd);
        self.after_input(i);
        self.log.last_change = self.now;
        match out {
            Ok(o) => Some(o),
            Err(e) => {
                self.log
                    .command_errors
                    .push(format!("{} n{i}: {e}", fmt_t(self.now)));
                None
            }
        }
    }

    /// Tracks `key` in `topic` on node `i` (a new connection unless `conn`).
    pub fn track(&mut self, i: usize, topic: &str, key: &str, conn: Option<u64>) {
        let slot = &mut self.nodes[i];
        let conn = ConnId(conn.unwrap_or_else(|| {
            slot.next_conn += 1;
            slot.next_conn
        }));
        let meta = Meta::new(format!("{{\"n\":{}}}", self.stats.steps));
        let (topic, key) = (Topic::new(topic), chorus_engine::Key::from(key));
        let cmd = Command::Track {
            topic: topic.clone(),
            key: key.clone(),
            conn,
            meta: meta.clone(),
        };
        if let Some(CommandOutcome::Tracked(r)) = self.command(i, cmd) {
            self.nodes[i].truth.insert((topic, key, conn), (r, meta));
        }
    }

    /// Replaces the meta of a tracked key.
    pub fn update(&mut self, i: usize, topic: &Topic, key: &chorus_engine::Key, conn: ConnId) {
        let meta = Meta::new(format!("{{\"u\":{}}}", self.stats.steps));
        let cmd = Command::Update {
            topic: topic.clone(),
            key: key.clone(),
            conn,
            meta: meta.clone(),
        };
        if let Some(CommandOutcome::Tracked(r)) = self.command(i, cmd) {
            self.nodes[i]
                .truth
                .insert((topic.clone(), key.clone(), conn), (r, meta));
        }
    }

    /// Stops tracking a key.
    pub fn untrack(&mut self, i: usize, topic: &Topic, key: &chorus_engine::Key, conn: ConnId) {
        let cmd = Command::Untrack {
            topic: topic.clone(),
            key: key.clone(),
            conn,
        };
        if self.command(i, cmd).is_some() {
            self.nodes[i]
                .truth
                .remove(&(topic.clone(), key.clone(), conn));
        }
    }

    /// Subscribes node `i` to `topic` (once).
    pub fn subscribe(&mut self, i: usize, topic: &str) {
        let topic = Topic::new(topic);
        if self.nodes[i].subs.contains_key(&topic) || !self.nodes[i].is_live() {
            return;
        }
        let cmd = Command::Subscribe {
            topic: topic.clone(),
            sub: SubscriberId(1),
        };
        let (now, inc) = (self.now, self.nodes[i].incarnation);
        self.nodes[i].subs.insert(topic.clone(), (now, None));
        if self.command(i, cmd).is_none() {
            self.nodes[i].subs.remove(&topic);
            return;
        }
        let ready = self.nodes[i].subs.get(&topic).and_then(|s| s.1);
        self.log.subs.push(SubRec {
            node: i,
            inc,
            topic,
            at: now,
            ready,
        });
    }

    /// Publishes a numbered payload from node `i` to `topic`.
    pub fn publish(&mut self, i: usize, topic: &str) {
        let slot = &mut self.nodes[i];
        if !slot.is_live() || slot.paused_until.is_some() {
            return;
        }
        slot.pub_seq += 1;
        let (seq, inc) = (slot.pub_seq, slot.incarnation);
        let mut payload = Vec::with_capacity(20);
        payload.extend_from_slice(&(i as u32).to_le_bytes());
        payload.extend_from_slice(&inc.to_le_bytes());
        payload.extend_from_slice(&seq.to_le_bytes());
        let topic = Topic::new(topic);
        self.log.publishes.push(PubRec {
            from: i,
            inc,
            seq,
            topic: topic.clone(),
            at: self.now,
        });
        let cmd = Command::Publish {
            topic,
            payload: Bytes::from(payload),
            exclude: None,
        };
        self.command(i, cmd);
    }

    /// Records a node event for the checkers.
    pub(crate) fn on_event(&mut self, i: usize, e: Event) {
        self.trace.record(self.now, 2);
        self.trace.text(&format!("n{i} {e:?}"));
        let now = self.now;
        let slot = &mut self.nodes[i];
        match e {
            Event::Broadcast { payload, topic, .. } => {
                if payload.len() == 20 {
                    let (from, rest) = payload.split_at(4);
                    let (inc, seq) = rest.split_at(8);
                    self.log.receipts.push(Receipt {
                        node: i,
                        inc: slot.incarnation,
                        topic,
                        from: u32::from_le_bytes(from.try_into().expect("4 bytes")) as usize,
                        from_inc: u64::from_le_bytes(inc.try_into().expect("8 bytes")),
                        seq: u64::from_le_bytes(seq.try_into().expect("8 bytes")),
                        at: now,
                    });
                }
            }
            Event::PresenceDiff { topic, diff } => {
                // Applied as phoenix.js `Presence.syncDiff` does: joins first
                // (a known ref is kept once), then leaves (an unknown ref is
                // ignored). A window keeps only the last op of each ref, so
                // both happen legitimately; what must hold is that the replay
                // ends equal to the view (checked at the end) and that no
                // diff carries a ref as both joined and left.
                for l in &diff.leaves {
                    if diff.joins.iter().any(|j| j.phx_ref == l.phx_ref) {
                        let e = format!(
                            "{} {}: ref {:?} both joined and left in one diff",
                            fmt_t(now),
                            slot.id(),
                            l.phx_ref
                        );
                        self.log.diff_errors.push(e);
                    }
                }
                for j in diff.joins {
                    slot.replay
                        .insert((topic.clone(), j.key, j.phx_ref, j.meta));
                }
                for l in diff.leaves {
                    slot.replay
                        .remove(&(topic.clone(), l.key, l.phx_ref, l.meta));
                }
            }
            Event::SubscribeReady { topic, .. } => {
                if let Some(s) = slot.subs.get_mut(&topic) {
                    s.1.get_or_insert(now);
                }
                let inc = slot.incarnation;
                if let Some(rec) = self
                    .log
                    .subs
                    .iter_mut()
                    .rev()
                    .find(|r| r.node == i && r.inc == inc && r.topic == topic)
                {
                    rec.ready.get_or_insert(now);
                }
            }
            Event::NameClash(other) => {
                let err = format!("{}: n{i} stopped: {other} runs under its name", fmt_t(now));
                self.log.command_errors.push(err);
            }
            Event::MemberUp(_)
            | Event::MemberDown(_)
            | Event::MemberGone(_)
            | Event::Record(_)
            | Event::HistoryExpired { .. } => {}
        }
    }
}
