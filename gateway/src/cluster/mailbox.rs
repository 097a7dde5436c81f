//! A connection's side of the dispatcher: its [`Inbox`] of deliveries, the byte
//! [`Budget`] that bounds it, and the [`Mailbox`] handle the dispatcher pushes
//! into.
//!
//! A connection never waits on another: handing over is a non-blocking push into
//! the connection's mailbox, charged against that connection's outbound byte
//! budget. A connection whose budget is exhausted is flagged as a slow consumer
//! (its own task closes it); the dispatcher moves on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::channel::recover::Fanout;
use crate::channel::PresenceEntry;
use crate::protocol::{Encoded, Vsn};

/// What the dispatcher hands a connection.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A broadcast on a topic the connection subscribed to; `logged`: for
    /// a logged entry of a recoverable topic, the frame its channels share.
    Broadcast {
        encoded: Arc<Encoded>,
        logged: Option<Arc<Fanout>>,
        cost: usize,
    },
    /// A presence diff: its `presence_diff` broadcast plus the entries for `list`.
    PresenceDiff {
        encoded: Arc<Encoded>,
        diff: Arc<RenderedDiff>,
        cost: usize,
    },
}
impl Inbound {
    /// The bytes charged to the connection's budget for this item.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Self::Broadcast { cost, .. } | Self::PresenceDiff { cost, .. } => *cost,
        }
    }
}
/// A presence diff converted once per node for the sessions' `list` snapshots.
#[derive(Debug)]
pub(crate) struct RenderedDiff {
    pub(crate) joins: Vec<PresenceEntry>,
    pub(crate) leaves: Vec<PresenceEntry>,
}
/// A connection's outbound byte budget: frames waiting in its mailbox or writer
/// queue. Exceeding it flags the connection as a slow consumer.
#[derive(Debug)]
pub(crate) struct Budget {
    queued: AtomicUsize,
    limit: usize,
    overflow: AtomicBool,
    pub(crate) notify: Notify,
}
impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            limit,
            overflow: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Reserves `n` bytes; on failure flags the overflow and wakes the connection.
    /// An empty queue always admits one frame, however large.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + n <= self.limit).then_some(queued + n)
            })
            .is_ok();
        if !taken && !self.overflow.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
        taken
    }

    /// Returns `n` bytes once written (or dropped).
    pub(crate) fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether the budget was exceeded.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Acquire)
    }

    /// Bytes currently queued.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}
/// Deliveries waiting for one connection, in order. A locked queue rather than a
/// channel: tokio's unbounded channel allocates its first 32-slot block and a
/// cache-padded header up front (about 1.8 KB per idle connection), an empty
/// `VecDeque` nothing. The byte [`Budget`] bounds it.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<Inbound>>,
    /// Woken when the queue goes from empty to non-empty.
    ready: Notify,
}
impl Inbox {
    /// Queues `items` under one lock, waking the connection once if its queue
    /// was empty.
    fn push_all(&self, items: impl IntoIterator<Item = Inbound>) {
        let mut queue = self.queue.lock().expect("inbox lock");
        let first = queue.is_empty();
        queue.extend(items);
        let woken = first && !queue.is_empty();
        drop(queue);
        if woken {
            self.ready.notify_one();
        }
    }

    /// Moves every waiting delivery to the back of `into`, under one lock:
    /// a connection takes a burst at once rather than one lock per delivery.
    /// When `into` is empty the two queues are swapped, so the inbox gets
    /// back the room `into` had and a burst allocates nothing.
    pub(crate) fn take_all(&self, into: &mut VecDeque<Inbound>) {
        let mut queue = self.queue.lock().expect("inbox lock");
        if into.is_empty() {
            std::mem::swap(&mut *queue, into);
        } else {
            into.append(&mut queue);
        }
    }

    /// Waits until a delivery is pushed (or one was pushed since the last
    /// wait). Cancel-safe.
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await;
    }
}
/// Deliveries a connection took from its [`Inbox`] and has not handled yet.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    queue: VecDeque<Inbound>,
}
impl Taken {
    /// Deliveries taken and not handled yet.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The next delivery, taking the inbox's whole queue when this one is
    /// empty. Once drained, a large capacity left by a burst is given back.
    pub(crate) fn pop(&mut self, inbox: &Inbox) -> Option<Inbound> {
        if self.queue.is_empty() {
            inbox.take_all(&mut self.queue);
        }
        let item = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 256 {
            self.queue = VecDeque::new();
        }
        item
    }

    /// The next delivery, waiting for one. Cancel-safe: taken deliveries stay
    /// here until returned.
    pub(crate) async fn recv(&mut self, inbox: &Inbox) -> Inbound {
        loop {
            if let Some(item) = self.pop(inbox) {
                return item;
            }
            // A push between the take and here stored a permit: no lost wake-up.
            inbox.pushed().await;
        }
    }
}
/// The dispatcher's handle on one local connection.
#[derive(Clone, Debug)]
pub(crate) struct Mailbox {
    pub(crate) conn: u64,
    pub(crate) vsn: Vsn,
    pub(crate) binary_frames: bool,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) budget: Arc<Budget>,
}
/// A delivery ready to hand to the local subscribers: encoded once, with the
/// connection it must skip (`broadcast_from` on this node).
pub(super) struct Prepared {
    pub(super) encoded: Arc<Encoded>,
    pub(super) logged: Option<Arc<Fanout>>,
    pub(super) diff: Option<Arc<RenderedDiff>>,
    pub(super) exclude: Option<u64>,
}
impl Mailbox {
    /// Hands the connection every delivery of `batch` that is not excluded for
    /// it: one budget charge, one lock and at most one wake-up for the whole
    /// batch. A batch over the budget flags the connection as a slow consumer
    /// (an empty queue admits any one batch).
    pub(super) fn offer(&self, batch: &[Prepared]) {
        let for_us = |p: &&Prepared| p.exclude != Some(self.conn);
        let cost_of = |p: &Prepared| p.encoded.len_for(self.vsn, self.binary_frames).unwrap_or(0);
        let total: usize = batch.iter().filter(for_us).map(cost_of).sum();
        if !batch.iter().any(|p| for_us(&p)) || !self.budget.try_take(total) {
            return;
        }
        self.inbox.push_all(batch.iter().filter(for_us).map(|p| {
            let cost = cost_of(p);
            match &p.diff {
                None => Inbound::Broadcast {
                    encoded: p.encoded.clone(),
                    logged: p.logged.clone(),
                    cost,
                },
                Some(diff) => Inbound::PresenceDiff {
                    encoded: p.encoded.clone(),
                    diff: diff.clone(),
                    cost,
                },
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_admits_one_frame_then_enforces_the_limit() {
        let budget = Budget::new(10);
        assert!(budget.try_take(50), "an empty queue admits any frame");
        assert!(!budget.try_take(1));
        assert!(budget.overflowed());
        budget.release(50);
        assert_eq!(budget.queued(), 0);
        let budget = Budget::new(10);
        assert!(budget.try_take(6));
        assert!(budget.try_take(4));
        assert!(!budget.try_take(1));
    }
}
