//! How a join begins and ends: joins (PROTOCOL.md §3 rows b–g) and the end of a join
//! (stop, crash, duplicate join, closed connection). Every channel callback runs under
//! `catch_unwind`, so a panicking channel harms nobody else.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::channel::context::{Effect, Scope};
use crate::channel::{reason, ChannelContext, HandleIn, HandleInfo, Reply, StopReason};
use crate::protocol::{encode_close, encode_error, encode_reply, OutFrame, Payload, Ref};
use crate::topics;

use super::{Action, Joined, Session};

/// What a callback asked for besides its effects.
#[derive(Default)]
pub(super) struct Callback {
    pub(super) reply: Option<Reply>,
    pub(super) stop: Option<StopReason>,
}

impl From<HandleIn> for Callback {
    fn from(result: HandleIn) -> Self {
        match result {
            HandleIn::NoReply => Self::default(),
            HandleIn::Reply(reply) => Self {
                reply: Some(reply),
                stop: None,
            },
            HandleIn::Stop { reason, reply } => Self {
                reply,
                stop: Some(reason),
            },
        }
    }
}

impl From<HandleInfo> for Callback {
    fn from(result: HandleInfo) -> Self {
        match result {
            HandleInfo::NoReply => Self::default(),
            HandleInfo::Stop(reason) => Self {
                reply: None,
                stop: Some(reason),
            },
        }
    }
}

impl Session {
    /// Rows b–g: route, cap, join; a duplicate join closes the current one first and
    /// sends its `phx_close` right after the new join's reply.
    pub(super) fn join(
        &mut self,
        join_ref: Ref,
        ref_: Option<Ref>,
        topic: String,
        payload: Payload,
        attached: Option<crate::channel::Info>,
    ) {
        let old_close = match self.channels.remove(&topic) {
            Some(old) => self.end(&topic, *old, StopReason::DuplicateJoin),
            None => None,
        };
        let ref_ = ref_.as_ref();
        let refusal = if topics::is_internal(&topic) || !self.router.matches(&topic) {
            Some((None, "unmatched topic"))
        } else if self.channels.len() >= self.config.max_channels {
            Some((Some(&join_ref), "too many channels joined"))
        } else {
            None
        };
        // The router's factory is application code too: a panic there is a crash.
        let routed = match refusal {
            Some(_) => None,
            None => catch_unwind(AssertUnwindSafe(|| self.router.route(&topic))).ok(),
        };
        let Some(Some(mut channel)) = routed else {
            let (join_ref, text) = refusal.unwrap_or((Some(&join_ref), "join crashed"));
            match text {
                "unmatched topic" => self.joins.unmatched_topic += 1,
                "too many channels joined" => self.joins.too_many_channels += 1,
                _ => self.joins.crashed += 1,
            }
            self.outbox
                .reply(join_ref, ref_, &topic, &Reply::error(reason(text)));
            self.outbox.transmit.extend(old_close);
            return;
        };
        let mut ctx = ChannelContext::new(Scope {
            topic: &topic,
            join_ref: &join_ref,
            msg_ref: ref_,
            socket_id: self.id.as_deref(),
            assigns: &self.assigns,
            presence: &[],
        })
        .with_attached(attached.as_deref());
        let result = catch_unwind(AssertUnwindSafe(|| channel.join(&topic, payload, &mut ctx)));
        let mut effects = ctx.into_effects();
        let vsn = self.outbox.vsn;
        let (ok, frame) = match result {
            Ok(Ok(response)) => {
                let response = response.unwrap_or_else(Payload::empty);
                let frame = encode_reply(vsn, Some(&join_ref), ref_, &topic, "ok", &response);
                (true, frame.ok())
            }
            Ok(Err(response)) => {
                let frame = encode_reply(vsn, Some(&join_ref), ref_, &topic, "error", &response);
                (false, frame.ok())
            }
            Err(_) => (false, None),
        };
        match (ok, frame.is_some()) {
            (true, true) => self.joins.ok += 1,
            (false, true) => self.joins.refused += 1,
            (_, false) => self.joins.crashed += 1,
        }
        // Row f: a panic, or a reply that cannot be encoded, is a crashed join.
        let ok = ok && frame.is_some();
        let frame = frame.map_or_else(
            || {
                let crashed = reason("join crashed");
                encode_reply(vsn, Some(&join_ref), ref_, &topic, "error", &crashed)
            },
            Ok,
        );
        self.outbox.send(frame);
        self.outbox.transmit.extend(old_close);
        if !ok {
            // Row e: no channel is registered and no phx_close follows. A failed join
            // never existed; only the broadcasts it made had already happened.
            effects.retain(|e| matches!(e, Effect::Action(Action::Broadcast { .. })));
            let _ = self
                .outbox
                .flush(&topic, &join_ref, &mut BTreeSet::new(), effects, false);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(channel)));
            return;
        }
        self.outbox.actions.push_back(Action::Subscribe {
            topic: topic.clone(),
            join_ref: join_ref.clone(),
        });
        let mut entry = Joined {
            join_ref,
            channel,
            tracked: BTreeSet::new(),
            presence: Vec::new(),
        };
        let flushed = self
            .outbox
            .flush(&topic, &entry.join_ref, &mut entry.tracked, effects, true);
        self.channels.insert(&topic, Box::new(entry));
        if flushed.is_err() {
            self.crash(&topic, Vec::new());
        }
    }
}

impl Session {
    /// Ends a join already taken out of the table: `terminate`, then the frame that
    /// tells the client (`phx_close`, or `phx_error` for an error reason or a
    /// `terminate` that panicked), then the cleanup actions. The frame is returned so
    /// a duplicate join can send it after the new join's reply; `None` when the
    /// connection is gone.
    pub(super) fn end(
        &mut self,
        topic: &str,
        mut entry: Joined,
        reason: StopReason,
    ) -> Option<OutFrame> {
        let frames = reason != StopReason::Closed;
        let mut ctx = ChannelContext::new(Scope {
            topic,
            join_ref: &entry.join_ref,
            msg_ref: None,
            socket_id: self.id.as_deref(),
            assigns: &self.assigns,
            presence: &entry.presence,
        });
        let channel = &mut entry.channel;
        let terminated =
            catch_unwind(AssertUnwindSafe(|| channel.terminate(&reason, &mut ctx))).is_ok();
        let mut effects = ctx.into_effects();
        effects.retain(|e| !matches!(e, Effect::Info(_)));
        let flushed = self
            .outbox
            .flush(topic, &entry.join_ref, &mut entry.tracked, effects, frames)
            .is_ok();
        let vsn = self.outbox.vsn;
        let frame = if !frames {
            None
        } else if terminated && flushed && reason.is_clean() {
            encode_close(vsn, &entry.join_ref, topic).ok()
        } else {
            encode_error(vsn, &entry.join_ref, topic).ok()
        };
        self.outbox.cleanup(topic, entry);
        frame
    }

    /// Stops the joined channel on `topic` and sends its `phx_close`/`phx_error`.
    pub(super) fn stop(&mut self, topic: &str, reason: StopReason) {
        if let Some(entry) = self.channels.remove(topic) {
            let frame = self.end(topic, *entry, reason);
            self.outbox.transmit.extend(frame);
        }
    }

    /// A callback panicked, or asked for a frame that cannot be encoded. What it did
    /// before goes out, then `[join_ref, join_ref, topic, "phx_error",
    /// {"reason":"channel_crash"}]`, then the cleanup actions. The entry is gone, so
    /// later events on the topic get `unmatched topic`; `terminate` is not called on
    /// the poisoned instance.
    pub(super) fn crash(&mut self, topic: &str, mut before: Vec<Effect>) {
        let Some(mut entry) = self.channels.remove(topic) else {
            return;
        };
        before.retain(|e| !matches!(e, Effect::Info(_)));
        let _ = self
            .outbox
            .flush(topic, &entry.join_ref, &mut entry.tracked, before, true);
        let error = encode_error(self.outbox.vsn, &entry.join_ref, topic);
        self.outbox.send(error);
        self.outbox.cleanup(topic, *entry);
    }
}

/// Whether a message's join_ref names an older join: a null join_ref never does.
pub(super) fn is_stale(msg_join_ref: Option<&Ref>, current: &Ref) -> bool {
    msg_join_ref.is_some_and(|j| j != current)
}
