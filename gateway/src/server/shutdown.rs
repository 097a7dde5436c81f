//! Graceful shutdown: after the listener is gone, every live connection is told to
//! close with 1012 (restart: phoenix.js reconnects, to another node behind the load
//! balancer), a batch at a time so a large node does not stampede its peers with
//! reconnects at once (Phoenix drains 10,000 every 2 s).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::debug;

use super::Shared;

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
            drain.notify_one();
        }
    }
}
