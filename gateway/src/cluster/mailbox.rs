//! A connection's side of the dispatcher: its [`Inbox`] of deliveries, the byte
//! [`Budget`] that bounds it, and the [`Mailbox`] handle the dispatcher pushes
//! into.
//!
//! A connection never waits on another: handing over is a non-blocking push into
//! the connection's mailbox, charged against that connection's outbound byte
//! budget. A connection whose budget is exhausted is flagged as a slow consumer
//! (its own task closes it); the dispatcher moves on.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::channel::recover::{self, Fanout};
use crate::channel::PresenceEntry;
use crate::protocol::{wsframe, Encoded, Vsn};

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
    /// Broadcasts on `topic` for a WebSocket client whose channel there
    /// intercepts none: finished WebSocket frames, back to back, `count` of
    /// them, for the socket as they are (the connection checks only that it
    /// is still joined to `topic`). Consecutive ones on a topic share one item.
    Frames {
        topic: Arc<str>,
        bytes: Vec<u8>,
        count: usize,
        /// The frames' payload bytes (without their headers), for the
        /// counters.
        payload: usize,
    },
}
impl Inbound {
    /// The bytes charged to the connection's budget for this item.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Self::Broadcast { cost, .. } | Self::PresenceDiff { cost, .. } => *cost,
            Self::Frames { bytes, .. } => bytes.len(),
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
    /// The server asks the connection to close (it drains): set by
    /// [`Budget::drain`]. Here, not in a `Notify` of the connection's own:
    /// this flag takes no room the struct did not have.
    draining: AtomicBool,
    pub(crate) notify: Notify,
}
impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            limit,
            overflow: AtomicBool::new(false),
            draining: AtomicBool::new(false),
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

    /// Charges `n` bytes whatever the limit: control frames the connection
    /// writes on its own (a pong, a close frame), small and not refusable.
    /// Past the limit the connection is flagged a slow consumer all the
    /// same (a client that sends pings and reads none of the pongs). Only
    /// the connection's own task calls this, so there is no one to wake.
    pub(crate) fn add(&self, n: usize) {
        let queued = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        if queued > self.limit {
            self.overflow.store(true, Ordering::Release);
        }
    }

    /// Returns `n` bytes once written (or dropped).
    pub(crate) fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether the budget was exceeded.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Acquire)
    }

    /// Asks the connection to close: the server drains. Wake it through
    /// its inbox ([`Inbox::wake`]).
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the connection was asked to close.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Bytes currently queued.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}
/// Deliveries waiting for one connection, in order. A locked queue rather than a
/// channel: tokio's unbounded channel allocates its first 32-slot block and a
/// cache-padded header up front (about 1.8 KB per idle connection), an empty
/// `VecDeque` nothing. The byte [`Budget`] bounds it. The connection's waker
/// waits under the same lock, so a push is one lock and at most one wake-up.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
}
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Inbound>,
    /// Left by the connection when it found `items` empty; taken and woken
    /// by the next push.
    waker: Option<Waker>,
}
impl Inbox {
    /// Lets `fill` queue deliveries under one lock, waking the connection
    /// if it waits for one.
    fn push_with(&self, fill: impl FnOnce(&mut VecDeque<Inbound>)) {
        let mut queue = self.queue.lock().expect("inbox lock");
        fill(&mut queue.items);
        let waker = match queue.items.is_empty() {
            true => None,
            false => queue.waker.take(),
        };
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Wakes the connection if it waits, with nothing to take: it is to look
    /// at its budget, which overflowed or is draining.
    pub(crate) fn wake(&self) {
        let waker = self.queue.lock().expect("inbox lock").waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves every waiting delivery to the back of `into`, under one lock:
    /// a connection takes a burst at once rather than one lock per delivery.
    /// When `into` is empty the two queues are swapped, so the inbox gets
    /// back the room `into` had and a burst allocates nothing. With nothing
    /// to take, `cx`'s waker (if given) is left for the next push.
    fn take_all(&self, into: &mut VecDeque<Inbound>, cx: Option<&Context<'_>>) {
        let mut queue = self.queue.lock().expect("inbox lock");
        if queue.items.is_empty() {
            if let Some(cx) = cx {
                match &queue.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => queue.waker = Some(cx.waker().clone()),
                }
            }
        } else if into.is_empty() {
            std::mem::swap(&mut queue.items, into);
        } else {
            into.append(&mut queue.items);
        }
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
    /// empty (and leaving `cx`'s waker there when it is empty too). Once
    /// drained, a large capacity left by a burst is given back.
    fn next(&mut self, inbox: &Inbox, cx: Option<&Context<'_>>) -> Option<Inbound> {
        if self.queue.is_empty() {
            inbox.take_all(&mut self.queue, cx);
        }
        let item = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 256 {
            self.queue = VecDeque::new();
        }
        item
    }

    /// Makes `item`, just taken, the next delivery again.
    pub(crate) fn put_back(&mut self, item: Inbound) {
        self.queue.push_front(item);
    }

    /// The next delivery if one is waiting.
    pub(crate) fn pop(&mut self, inbox: &Inbox) -> Option<Inbound> {
        self.next(inbox, None)
    }

    /// The next delivery, waiting for one. Cancel-safe: taken deliveries stay
    /// here until returned.
    pub(crate) fn recv<'a>(&'a mut self, inbox: &'a Inbox) -> impl Future<Output = Inbound> + 'a {
        // The waker is left under the inbox's lock when it is found empty:
        // no push can fall between the look and the wait.
        std::future::poll_fn(move |cx| match self.next(inbox, Some(cx)) {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        })
    }
}
/// The dispatcher's handle on one local connection.
#[derive(Clone, Debug)]
pub(crate) struct Mailbox {
    pub(crate) conn: u64,
    pub(crate) vsn: Vsn,
    pub(crate) binary_frames: bool,
    /// Whether the connection writes finished WebSocket frames
    /// ([`Inbound::Frames`]): WebSocket, not LongPoll.
    pub(crate) ws_frames: bool,
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
impl Prepared {
    /// Whether a channel that intercepts nothing sends it as it is: not a
    /// presence diff (the session keeps its `list`), not a recoverable
    /// topic's log entry (its channel's `handle_out` renders it).
    fn plain(&self) -> bool {
        self.diff.is_none() && self.encoded.event() != recover::LOGGED_EVENT
    }
}
impl Mailbox {
    /// Hands the connection every delivery of `batch` that is not excluded for
    /// it: one budget charge, one lock and at most one wake-up for the whole
    /// batch. A batch over the budget flags the connection as a slow consumer
    /// (an empty queue admits any one batch).
    ///
    /// `framed` is the topic when the connection's channel there intercepts no
    /// event: its plain broadcasts are then written here as finished WebSocket
    /// frames (a header and a copy of the bytes encoded once) rather than
    /// handed over as shared [`Encoded`]s for its session, so a delivery costs
    /// the connection no reference count shared with every other subscriber,
    /// no session work and no per-frame object.
    pub(super) fn offer(&self, batch: &[Prepared], framed: Option<&Arc<str>>) {
        let framed = framed.filter(|_| self.ws_frames);
        let for_us = |p: &&Prepared| p.exclude != Some(self.conn);
        let as_frame = |p: &Prepared| framed.is_some() && p.plain();
        let cost_of = |p: &Prepared| {
            let len = p.encoded.len_for(self.vsn, self.binary_frames);
            match len {
                Some(len) if as_frame(p) => wsframe::frame_len(len),
                len => len.unwrap_or(0),
            }
        };
        let total: usize = batch.iter().filter(for_us).map(cost_of).sum();
        if !batch.iter().any(|p| for_us(&p)) {
            return;
        }
        if !self.budget.try_take(total) {
            // Flagged a slow consumer: the connection closes itself.
            self.inbox.wake();
            return;
        }
        self.inbox.push_with(|queue| {
            for p in batch.iter().filter(for_us) {
                if let (Some(topic), true) = (framed, as_frame(p)) {
                    let Some((bytes, text)) = p.encoded.frame_for(self.vsn, self.binary_frames)
                    else {
                        continue;
                    };
                    let (buf, count, payload) = frames_item(queue, topic, total);
                    wsframe::write_frame(buf, text, bytes);
                    *count += 1;
                    *payload += bytes.len();
                    continue;
                }
                let cost = cost_of(p);
                queue.push_back(match &p.diff {
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
                });
            }
        });
    }
}

/// The [`Inbound::Frames`] item at the back of `queue` for `topic`, pushed
/// (with room for `room` bytes) unless the last item already is one.
fn frames_item<'q>(
    queue: &'q mut VecDeque<Inbound>,
    topic: &Arc<str>,
    room: usize,
) -> (&'q mut Vec<u8>, &'q mut usize, &'q mut usize) {
    let coalesce =
        matches!(queue.back(), Some(Inbound::Frames { topic: t, .. }) if Arc::ptr_eq(t, topic));
    if !coalesce {
        queue.push_back(Inbound::Frames {
            topic: topic.clone(),
            bytes: Vec::with_capacity(room),
            count: 0,
            payload: 0,
        });
    }
    match queue.back_mut() {
        Some(Inbound::Frames {
            bytes,
            count,
            payload,
            ..
        }) => (bytes, count, payload),
        _ => unreachable!("a frames item was just found or pushed"),
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

    /// Pongs and close frames are charged whatever the limit, but queueing
    /// them past it (pings from a client that reads nothing) still flags a
    /// slow consumer.
    #[test]
    fn control_frames_past_the_limit_flag_a_slow_consumer() {
        let budget = Budget::new(10);
        budget.add(6);
        budget.add(4);
        assert!(!budget.overflowed(), "at the limit");
        budget.add(1);
        assert!(budget.overflowed());
        assert_eq!(budget.queued(), 11, "charged all the same");
    }
}
