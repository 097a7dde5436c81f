//! No sticky sessions: a poll or send that lands on a node other than the session's
//! owner is forwarded to the owner through the cluster, and the answer comes back
//! the same way.
//!
//! Every node subscribes one private engine topic, `phx_lp:<node>`. A node that
//! receives a request for a session owned elsewhere (the verified token names the
//! owner) `direct_publish`es a [`Wire::Request`] with a random request id to the
//! owner's topic and waits; the owner runs it against the session and
//! `direct_publish`es a [`Wire::Answer`] to the requester's topic, which wakes the
//! waiting HTTP handler. The owner verifies the token again: a message on the
//! topic can do no more than the token's holder could.
//!
//! A poll answer whose HTTP request has gone by the time it arrives (the client
//! hung up) is not lost: its frames are sent back to the owner ([`Op::Requeue`])
//! and go out with the next poll.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use chorus_engine::runtime::{Delivery, Subscription};
use chorus_engine::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::session::{status, Answer, Op};
use super::token;
use crate::server::Shared;
use crate::topics::longpoll_topic;

/// Marks a forwarding message (a channel broadcast envelope starts with byte 1).
const MAGIC: &[u8] = b"chorus-longpoll-v1\n";

/// How much longer than the session's own bound a forwarding node waits.
pub(crate) const SLACK: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireNode {
    name: String,
    incarnation: u64,
}

impl From<&NodeId> for WireNode {
    fn from(id: &NodeId) -> Self {
        Self {
            name: id.name.to_string(),
            incarnation: id.incarnation,
        }
    }
}

impl From<&WireNode> for NodeId {
    fn from(node: &WireNode) -> Self {
        NodeId::new(node.name.as_str(), node.incarnation)
    }
}

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Wire {
    /// Run `op` on the session of `token`; answer `reply_to` unless `id` is 0.
    Request {
        id: u64,
        reply_to: WireNode,
        token: String,
        op: Op,
    },
    /// The answer to request `id`, from the session's `owner`.
    Answer {
        id: u64,
        owner: WireNode,
        token: String,
        answer: Answer,
    },
}

impl Wire {
    fn encode(&self) -> Bytes {
        let json = serde_json::to_vec(self).expect("forwarding messages serialize");
        let mut out = BytesMut::with_capacity(MAGIC.len() + json.len());
        out.put_slice(MAGIC);
        out.put_slice(&json);
        out.freeze()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes.strip_prefix(MAGIC)?).ok()
    }
}

/// How a call to a session ended.
#[derive(Debug)]
pub(crate) enum Forwarded {
    /// The session answered.
    Answer(Answer),
    /// There is no such session (expired, ended, or its node is gone).
    Gone,
    /// The session or its node did not answer in time.
    TimedOut,
}

/// Forwards `op` to the session `session` on another node and waits up to `wait`.
pub(crate) async fn call(
    shared: &Arc<Shared>,
    session: &token::SessionRef,
    token: &str,
    op: Op,
    wait: Duration,
) -> Forwarded {
    let hub = &shared.hub;
    let id = rand::random::<u64>().max(1);
    let (tx, rx) = oneshot::channel();
    let pending = Pending::insert(shared, id, tx);
    let request = Wire::Request {
        id,
        reply_to: hub.node_id().into(),
        token: token.to_owned(),
        op,
    };
    let owner = session.owner.clone();
    let sent = hub
        .send_internal(owner.clone(), longpoll_topic(&owner), request.encode())
        .await;
    if let Err(e) = sent {
        debug!(owner = %owner, error = %e, "LongPoll: cannot forward to the session's node");
        return Forwarded::Gone;
    }
    let outcome = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(answer)) if answer.status == status::GONE => Forwarded::Gone,
        Ok(Ok(answer)) => Forwarded::Answer(answer),
        Ok(Err(_)) | Err(_) => Forwarded::TimedOut,
    };
    drop(pending);
    outcome
}

/// A waiting forwarded request; removed from the table when the wait ends, however
/// it ends (an HTTP handler dropped because its client hung up included).
struct Pending<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> Pending<'a> {
    fn insert(shared: &'a Shared, id: u64, tx: oneshot::Sender<Answer>) -> Self {
        shared.longpoll.pending().insert(id, tx);
        Self { shared, id }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.shared.longpoll.pending().remove(&self.id);
    }
}

/// Subscribes this node's forwarding topic and serves it until the server is
/// dropped. `None` (with a warning) if the engine refuses: sessions of this node
/// are then reachable only through it.
pub(crate) async fn start(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let hub = &shared.hub;
    match hub.subscribe_internal(longpoll_topic(hub.node_id())).await {
        Ok(sub) => Some(tokio::spawn(inbox(Arc::downgrade(shared), sub))),
        Err(e) => {
            warn!(error = %e, "LongPoll: cannot subscribe the forwarding topic; no forwarding to this node");
            None
        }
    }
}

async fn inbox(shared: Weak<Shared>, mut sub: Subscription) {
    loop {
        while let Some(delivery) = sub.recv().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match delivery {
                Delivery::Broadcast(bytes) => match Wire::decode(&bytes) {
                    Some(wire) => handle(&shared, wire),
                    None => debug!("LongPoll: ignoring an undecodable forwarding message"),
                },
                Delivery::PresenceDiff(_) | Delivery::Logged { .. } => {}
            }
        }
        // Our queue filled up or the engine stopped: subscribe again (a stopped
        // engine refuses, which ends this task). Forwarded requests that were
        // dropped time out at their sender.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let hub = &shared.hub;
        warn!("LongPoll: forwarding subscription ended; resubscribing");
        match hub.subscribe_internal(longpoll_topic(hub.node_id())).await {
            Ok(again) => sub = again,
            Err(_) => return,
        }
    }
}

fn handle(shared: &Arc<Shared>, wire: Wire) {
    match wire {
        Wire::Request {
            id,
            reply_to,
            token,
            op,
        } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let answer = run_here(&shared, &token, op).await;
                if id == 0 {
                    return;
                }
                let hub = &shared.hub;
                let answer = Wire::Answer {
                    id,
                    owner: hub.node_id().into(),
                    token,
                    answer,
                };
                let to = NodeId::from(&reply_to);
                if let Err(e) = hub
                    .send_internal(to.clone(), longpoll_topic(&to), answer.encode())
                    .await
                {
                    debug!(to = %to, error = %e, "LongPoll: cannot return a forwarded answer");
                }
            });
        }
        Wire::Answer {
            id,
            owner,
            token,
            answer,
        } => {
            let waiting = shared.longpoll.pending().remove(&id);
            let undelivered = match waiting {
                Some(tx) => tx.send(answer).err(),
                None => Some(answer),
            };
            if let Some(answer) = undelivered.filter(|a| !a.messages.is_empty()) {
                requeue(shared, &owner, token, answer.messages);
            }
        }
    }
}

/// Runs a forwarded request against a session of this node.
async fn run_here(shared: &Arc<Shared>, token: &str, op: Op) -> Answer {
    let session = token::verify(shared.config.longpoll_key.bytes(), token)
        .filter(|s| s.owner == *shared.hub.node_id());
    let Some(session) = session else {
        return Answer::status(status::GONE);
    };
    let wait = super::wait_for(&shared.config, &op);
    match super::call_local(shared, session.id, op, wait).await {
        Forwarded::Answer(answer) => answer,
        Forwarded::Gone => Answer::status(status::GONE),
        Forwarded::TimedOut => Answer::status(status::TIMEOUT),
    }
}

/// Sends frames an answer could not hand over back to their session.
fn requeue(shared: &Arc<Shared>, owner: &WireNode, token: String, messages: Vec<String>) {
    let hub = shared.hub.clone();
    let request = Wire::Request {
        id: 0,
        reply_to: hub.node_id().into(),
        token,
        op: Op::Requeue(messages),
    };
    let owner = NodeId::from(owner);
    tokio::spawn(async move {
        if let Err(e) = hub
            .send_internal(owner.clone(), longpoll_topic(&owner), request.encode())
            .await
        {
            debug!(owner = %owner, error = %e, "LongPoll: cannot requeue undelivered frames");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trips_and_refuses_other_payloads() {
        let request = Wire::Request {
            id: 9,
            reply_to: WireNode {
                name: "b".into(),
                incarnation: 2,
            },
            token: "t".into(),
            op: Op::Send {
                body: "[\"1\",\"1\",\"room:1\",\"phx_join\",{}]\nAAEB".into(),
                ndjson: true,
            },
        };
        assert_eq!(Wire::decode(&request.encode()), Some(request));
        assert_eq!(
            Wire::decode(b"\x01\x00\x01e{}"),
            None,
            "a channel broadcast"
        );
        assert_eq!(Wire::decode(b"chorus-longpoll-v1\n{"), None);
    }
}
