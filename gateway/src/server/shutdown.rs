//! Graceful shutdown: after the listener is gone, every live connection is told to
//! close with 1012 (restart: phoenix.js reconnects, to another node behind the load
//! balancer), a batch at a time so a large node does not stampede its peers with
//! reconnects at once (Phoenix drains 10,000 every 2 s).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;
use tracing::debug;

use super::Shared;
use crate::cluster::mailbox::{Budget, Inbox};

/// How a live connection is told to close when the server drains.
#[derive(Clone)]
pub(crate) enum Drain {
    /// A task waiting on this `Notify` (LongPoll, dashboard).
    Notify(Arc<Notify>),
    /// A WebSocket connection: its budget's drain flag, then a wake-up
    /// through its inbox. No `Notify` (and no `Notified` in its task) per
    /// idle connection.
    Inbox(Arc<Budget>, Arc<Inbox>),
}

impl Drain {
    fn signal(&self) {
        match self {
            Self::Notify(notify) => notify.notify_one(),
            Self::Inbox(budget, inbox) => {
                budget.drain();
                inbox.wake();
            }
        }
    }
}

/// Marks the server draining and closes every live connection in batches.
pub(crate) async fn drain(shared: &Arc<Shared>) {
    shared.draining.store(true, Ordering::Release);
    let conns: Vec<_> = shared
        .conns
        .lock()
        .expect("connection registry lock")
        .values()
        .cloned()
        .collect();
    if conns.is_empty() {
        return;
    }
    debug!(connections = conns.len(), "draining connections with 1012");
    let batch = shared.config.drain_batch.max(1);
    for (i, chunk) in conns.chunks(batch).enumerate() {
        if i > 0 {
            tokio::time::sleep(shared.config.drain_interval).await;
        }
        for drain in chunk {
            drain.signal();
        }
    }
}
