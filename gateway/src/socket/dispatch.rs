//! How a session routes traffic to joined channels: leaves (PROTOCOL.md §3 rows h–j),
//! other events (rows k–l), broadcasts (fastlane or `handle_out`) and `handle_info`
//! messages.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::channel::context::{Effect, Scope};
use crate::channel::{reason, Channel, ChannelContext, Info, Reply, StopReason};
use crate::protocol::{Encoded, Payload, Ref};

use super::lifecycle::{is_stale, Callback};
use super::Session;

impl Session {
    /// Rows h–j: a current (or null) join_ref leaves with an ok reply then
    /// `phx_close`; a stale one is ignored; an unjoined topic still gets an ok reply.
    pub(super) fn leave(&mut self, join_ref: Option<Ref>, ref_: Option<Ref>, topic: &str) {
        let Some(entry) = self.channels.get(topic) else {
            self.outbox
                .reply(join_ref.as_ref(), ref_.as_ref(), topic, &Reply::ok());
            return;
        };
        if is_stale(join_ref.as_ref(), &entry.join_ref) {
            return;
        }
        let current = entry.join_ref.clone();
        self.outbox
            .reply(Some(&current), ref_.as_ref(), topic, &Reply::ok());
        self.stop(topic, StopReason::Left);
    }

    /// Rows k and l: forwarded to `handle_in` when joined and the join_ref is current
    /// or null; dropped silently when stale; `unmatched topic` when not joined.
    pub(super) fn message(
        &mut self,
        join_ref: Option<Ref>,
        ref_: Option<Ref>,
        topic: &str,
        event: &str,
        payload: Payload,
        attached: Option<Info>,
    ) {
        let Some(entry) = self.channels.get(topic) else {
            let unmatched = Reply::error(reason("unmatched topic"));
            self.outbox.reply(None, ref_.as_ref(), topic, &unmatched);
            return;
        };
        if is_stale(join_ref.as_ref(), &entry.join_ref) {
            return;
        }
        self.run(topic, ref_.as_ref(), attached.as_deref(), |channel, ctx| {
            channel.handle_in(event, payload, ctx).into()
        });
    }

    /// A broadcast for a joined topic: the shared frame, or `handle_out` if the
    /// channel intercepts the event (with `attached`, what the dispatcher
    /// attached to the delivery, in its context).
    pub(super) fn broadcast(&mut self, msg: &Encoded, attached: Option<&(dyn Any + Send)>) {
        let topic = msg.topic();
        let Some(entry) = self.channels.get(topic) else {
            return;
        };
        let event = msg.event();
        let channel = &entry.channel;
        let intercepted = catch_unwind(AssertUnwindSafe(|| channel.intercepts().contains(&event)));
        match intercepted {
            // A logged entry is for a recoverable channel's handle_out only.
            Ok(false) if event == crate::channel::recover::LOGGED_EVENT => {}
            Ok(false) => {
                let frame = msg.for_vsn(self.outbox.vsn, self.config.binary_frames);
                self.outbox.transmit.extend(frame);
            }
            Ok(true) => self.run(topic, None, attached, |channel, ctx| {
                channel.handle_out(event, msg.payload(), ctx).into()
            }),
            Err(_) => self.crash(topic, Vec::new()),
        }
    }

    /// Delivers one message to `topic`'s channel if it is joined (and is the join
    /// `join_ref`, when given).
    pub(super) fn deliver_info(&mut self, topic: &str, join_ref: Option<&Ref>, msg: Info) -> bool {
        match self.channels.get(topic) {
            Some(entry) if join_ref.is_none_or(|j| *j == entry.join_ref) => {}
            _ => return false,
        }
        self.run(topic, None, None, |channel, ctx| {
            channel.handle_info(msg, ctx).into()
        });
        true
    }

    /// Delivers the messages channels sent themselves during this input, in order,
    /// including those sent while handling them.
    pub(super) fn drain_infos(&mut self) {
        while let Some(pending) = self.outbox.infos.pop_front() {
            self.deliver_info(&pending.topic, Some(&pending.join_ref), pending.msg);
        }
    }

    /// Runs one callback of the joined channel on `topic` under `catch_unwind`, then
    /// carries out its effects in order, its reply (to `msg_ref`), and its stop.
    /// `attached` is what the transport attached to the client frame, if any.
    fn run<F>(
        &mut self,
        topic: &str,
        msg_ref: Option<&Ref>,
        attached: Option<&(dyn Any + Send)>,
        callback: F,
    ) where
        F: FnOnce(&mut dyn Channel, &mut ChannelContext<'_>) -> Callback,
    {
        let Some(entry) = self.channels.get_mut(topic) else {
            return;
        };
        let mut ctx = ChannelContext::new(Scope {
            topic,
            join_ref: &entry.join_ref,
            msg_ref,
            socket_id: self.id.as_deref(),
            assigns: &self.assigns,
            presence: &entry.presence,
        })
        .with_attached(attached);
        let channel = entry.channel.as_mut();
        let result = catch_unwind(AssertUnwindSafe(|| callback(channel, &mut ctx)));
        let effects = ctx.into_effects();
        let Ok(step) = result else {
            return self.crash(topic, effects);
        };
        // The reply goes after the callback's pushes, chained rather than
        // pushed onto them: a callback that only replies allocates no list.
        let reply = step.reply.map(|reply| Effect::Reply {
            ref_: msg_ref.cloned(),
            reply,
        });
        let Some(entry) = self.channels.get_mut(topic) else {
            return;
        };
        let flushed = self.outbox.flush(
            topic,
            &entry.join_ref,
            &mut entry.tracked,
            effects.into_iter().chain(reply),
            true,
        );
        if flushed.is_err() {
            return self.crash(topic, Vec::new());
        }
        if let Some(reason) = step.stop {
            self.stop(topic, reason);
        }
    }
}
