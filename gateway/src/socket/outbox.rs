//! The session's outputs, and how one callback's effects become frames and actions.

use std::collections::{BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::channel::context::Effect;
use crate::channel::{Info, Reply};
use crate::protocol::{encode_push, encode_reply, FrameError, OutFrame, Ref, Vsn};

use super::{Action, Joined};

/// The session's outputs: frames, actions, and messages channels sent themselves.
pub(super) struct Outbox {
    pub(super) vsn: Vsn,
    pub(super) transmit: VecDeque<OutFrame>,
    pub(super) actions: VecDeque<Action>,
    pub(super) infos: VecDeque<PendingInfo>,
}

/// A [`ChannelContext::send_self`](crate::channel::ChannelContext::send_self) message waiting for the current input to finish.
pub(super) struct PendingInfo {
    pub(super) topic: String,
    pub(super) join_ref: Ref,
    pub(super) msg: Info,
}

impl Outbox {
    pub(super) fn new(vsn: Vsn) -> Self {
        Self {
            vsn,
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            infos: VecDeque::new(),
        }
    }

    /// Queues a frame the session built itself. Those cannot fail to encode: topics
    /// are checked on input and their payloads are JSON objects.
    pub(super) fn send(&mut self, frame: Result<OutFrame, FrameError>) {
        if let Ok(frame) = frame {
            self.transmit.push_back(frame);
        }
    }

    /// A reply the session makes on the channel layer's behalf (rows b, c, e, f, h, j, l).
    pub(super) fn reply(
        &mut self,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        r: &Reply,
    ) {
        let frame = encode_reply(self.vsn, join_ref, ref_, topic, &r.status, &r.response);
        self.send(frame);
    }

    /// Emits one callback's effects, in order, for the join `join_ref` of `topic`.
    /// Without `frames` (the connection is gone), pushes and replies are dropped. An
    /// effect that cannot be encoded (a binary push on v1, an event over 255 bytes in
    /// a binary frame) stops the flush with an error: the channel crashed.
    pub(super) fn flush(
        &mut self,
        topic: &str,
        join_ref: &Ref,
        tracked: &mut BTreeSet<String>,
        effects: impl IntoIterator<Item = Effect>,
        frames: bool,
    ) -> Result<(), FrameError> {
        for effect in effects {
            match effect {
                Effect::Push { event, payload } if frames => {
                    let frame = encode_push(self.vsn, Some(join_ref), topic, &event, &payload)?;
                    self.transmit.push_back(frame);
                }
                Effect::Reply { ref_, reply } if frames => {
                    let frame = encode_reply(
                        self.vsn,
                        Some(join_ref),
                        ref_.as_ref(),
                        topic,
                        &reply.status,
                        &reply.response,
                    )?;
                    self.transmit.push_back(frame);
                }
                Effect::Forward(encoded) if frames => {
                    // A JSON broadcast: the same text frame for any transport.
                    self.transmit.extend(encoded.for_vsn(self.vsn, false));
                }
                Effect::Push { .. } | Effect::Reply { .. } | Effect::Forward(_) => {}
                Effect::Action(action) => {
                    match &action {
                        Action::Track { key, .. } => _ = tracked.insert(key.clone()),
                        Action::Untrack { key, .. } => _ = tracked.remove(key),
                        _ => {}
                    }
                    self.actions.push_back(action);
                }
                Effect::Info(msg) => self.infos.push_back(PendingInfo {
                    topic: topic.to_owned(),
                    join_ref: join_ref.clone(),
                    msg,
                }),
            }
        }
        Ok(())
    }

    /// The actions that undo a join: untrack its presences, then unsubscribe. The
    /// channel instance is dropped here (a panicking `Drop` is contained too).
    pub(super) fn cleanup(&mut self, topic: &str, entry: Joined) {
        let Joined {
            join_ref,
            channel,
            tracked,
            ..
        } = entry;
        let _ = catch_unwind(AssertUnwindSafe(move || drop(channel)));
        if !tracked.is_empty() {
            self.actions.push_back(Action::UntrackAll {
                topic: topic.to_owned(),
                join_ref: join_ref.clone(),
            });
        }
        self.actions.push_back(Action::Unsubscribe {
            topic: topic.to_owned(),
            join_ref,
        });
    }
}
