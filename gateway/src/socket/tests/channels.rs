//! The channels the session tests run, modelled on the capture's server: `room:*`
//! (presence after join, `new_msg` broadcast, crashes on an unknown event) and
//! `bench:*` (replies to `ping` with its payload, JSON or binary).

use std::sync::Arc;

use bytes::Bytes;

use super::{obj, Harness, Log};
use crate::channel::{
    reason, Channel, ChannelContext, HandleIn, HandleInfo, Info, JoinResult, Reply, Router,
    StopReason,
};
use crate::protocol::{Payload, Ref, Vsn};
use crate::socket::{Session, SessionConfig};

/// `send(self(), :after_join)`.
struct AfterJoin;

/// A message asking the room to answer the ref it kept from a `later` event.
pub struct AnswerLater;

/// A message that makes the room push `tick`.
pub struct Tick;

/// The routes of the tests. `nope:*` is deliberately absent.
pub fn router(log: &Log) -> Arc<Router> {
    let room_log = log.clone();
    let router = Router::new()
        .channel("room:*", move || Room {
            log: room_log.clone(),
            ..Room::default()
        })
        .and_then(|r| r.channel("bench:*", || Bench))
        .and_then(|r| r.channel("faulty:*", faulty_factory));
    Arc::new(router.expect("valid patterns"))
}

/// A route whose factory panics before any channel exists.
fn faulty_factory() -> Bench {
    panic!("the factory crashed on purpose")
}

#[derive(Default)]
struct Room {
    log: Log,
    user: String,
    later: Option<Ref>,
    bad_terminate: bool,
}

impl Channel for Room {
    /// `{"deny":true}` refuses, `{"crash":true}` panics, `{"early":true}` pushes from
    /// inside the join and replies with a response; otherwise tracks after join.
    fn join(&mut self, topic: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> JoinResult {
        let text = match &payload {
            Payload::Json(object) => object.as_str().to_owned(),
            Payload::Binary(_) => String::new(),
        };
        if text.contains("deny") {
            return Err(reason("unauthorized"));
        }
        assert!(
            !text.contains("crash"),
            "join of {topic} crashed on purpose"
        );
        self.user = ctx.assigns()["user_id"]
            .as_str()
            .unwrap_or("anon")
            .to_owned();
        if text.contains("early") {
            ctx.push("welcome", Payload::Json(obj(r#"{"to":"early"}"#)));
            return Ok(Some(Payload::Json(obj(r#"{"hello":"x"}"#))));
        }
        ctx.send_self(AfterJoin);
        Ok(None)
    }

    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleIn {
        match event {
            "new_msg" => ctx.broadcast(event, payload),
            "shout" => ctx.broadcast_from(event, payload),
            "notify" => ctx.broadcast_to("user:bob", "ding", payload),
            "push_me" => {
                ctx.push("pushed", payload);
                return HandleIn::Reply(Reply::ok());
            }
            "push_binary" => ctx.push("bin", Payload::Binary(Bytes::from_static(&[1, 2, 3]))),
            "update" => {
                let Payload::Json(meta) = payload else {
                    panic!("json meta")
                };
                ctx.update(self.user.clone(), meta);
            }
            "untrack" => ctx.untrack(self.user.clone()),
            "who" => {
                let keys: Vec<&str> = ctx.list().iter().map(|e| e.key.as_str()).collect();
                let body = serde_json::json!({ "keys": keys });
                let body = crate::protocol::JsonObject::from_value(&body).expect("object");
                return HandleIn::Reply(Reply::ok_with(Payload::Json(body)));
            }
            "later" => self.later = ctx.socket_ref(),
            "stop" => {
                return HandleIn::Stop {
                    reason: StopReason::Normal,
                    reply: Some(Reply::ok()),
                };
            }
            "fail" => {
                return HandleIn::Stop {
                    reason: StopReason::Error("bad state".into()),
                    reply: None,
                };
            }
            "bad_terminate" => {
                self.bad_terminate = true;
                return HandleIn::Reply(Reply::ok());
            }
            "push_then_crash" => {
                ctx.push("last_words", payload);
                panic!("crash after a push");
            }
            // Like a Phoenix channel without a matching handle_in clause.
            other => panic!("no handle_in clause for {other}"),
        }
        HandleIn::NoReply
    }

    fn handle_info(&mut self, msg: Info, ctx: &mut ChannelContext<'_>) -> HandleInfo {
        if msg.is::<AfterJoin>() {
            ctx.track(self.user.clone(), obj(r#"{"online_at":"1795674323"}"#));
        } else if msg.is::<AnswerLater>() {
            let late = Reply::ok_with(Payload::Json(obj(r#"{"late":true}"#)));
            if let Some(ref_) = self.later.take() {
                ctx.reply(ref_, late);
            }
        } else if msg.is::<Tick>() {
            ctx.push("tick", Payload::empty());
        } else if let Some(text) = msg.downcast_ref::<&str>() {
            match *text {
                "stop" => return HandleInfo::Stop(StopReason::Shutdown("done".into())),
                "panic" => panic!("handle_info crashed on purpose"),
                _ => {}
            }
        }
        HandleInfo::NoReply
    }

    fn keeps_presence_list(&self) -> bool {
        true
    }

    fn intercepts(&self) -> &[&str] {
        &["secret", "loud", "explode"]
    }

    fn handle_out(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> HandleInfo {
        match event {
            "secret" => {}
            "loud" => ctx.push("loud", Payload::Json(obj(r#"{"loud":true}"#))),
            "explode" => panic!("handle_out crashed on purpose"),
            _ => ctx.push(event, payload.clone()),
        }
        HandleInfo::NoReply
    }

    fn terminate(&mut self, reason: &StopReason, ctx: &mut ChannelContext<'_>) {
        self.log.lock().expect("log lock").push(format!(
            "terminate {} {}: {reason:?}",
            ctx.topic(),
            ctx.join_ref()
        ));
        assert!(!self.bad_terminate, "terminate crashed on purpose");
        if *reason == StopReason::Normal {
            ctx.push("bye", Payload::empty());
        }
    }
}

/// The capture's BenchChannel: `ping` is answered with its own payload.
struct Bench;

impl Channel for Bench {
    fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<'_>) -> JoinResult {
        Ok(None)
    }

    fn handle_in(&mut self, event: &str, payload: Payload, _: &mut ChannelContext<'_>) -> HandleIn {
        match event {
            "ping" => HandleIn::Reply(Reply::ok_with(payload)),
            other => panic!("no handle_in clause for {other}"),
        }
    }
}

/// The server's own topics are refused even by a router that takes any topic:
/// a client cannot listen in on disconnects, socket counts, LongPoll forwarding
/// or the API's idempotency keys.
#[test]
fn internal_topics_cannot_be_joined() {
    let router = Router::new().channel("*", || Bench).expect("valid pattern");
    let mut h = Harness {
        session: Session::new(Vsn::V2, Arc::new(router), SessionConfig::default()),
        log: Log::default(),
    };
    let internal = [
        crate::topics::DISCONNECT.to_owned(),
        crate::topics::socket_topic("users_socket:alice"),
        crate::topics::longpoll_topic(&chorus_engine::NodeId::new("n1", 1))
            .as_str()
            .to_owned(),
        crate::topics::API_IDEMPOTENCY.to_owned(),
    ];
    for topic in &internal {
        assert_eq!(
            h.exchange(&format!(r#"["1","1","{topic}","phx_join",{{}}]"#)),
            [format!(
                r#"[null,"1","{topic}","phx_reply",{{"status":"error","response":{{"reason":"unmatched topic"}}}}]"#
            )],
        );
        assert_eq!(h.actions(), [], "{topic}: nothing subscribed");
    }
    h.join("room:any", "2");
}
