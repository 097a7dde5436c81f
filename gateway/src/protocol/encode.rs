//! Server-to-client frames for whichever serializer a connection speaks: replies,
//! pushes, `phx_close`/`phx_error`, heartbeat replies, and encode-once broadcasts.
//!
//! A JSON payload goes out as v1 or v2 text; a binary payload goes out as a v2 binary
//! frame and is an error on a v1 connection. Every function is pure: the caller
//! writes the returned [`OutFrame`].

use std::sync::OnceLock;

use bytes::Bytes;

use super::frame::{check_len, FrameError, JsonObject, OutFrame, Payload, Ref};
use super::vsn::Vsn;
use super::{binary, json};

/// The topic of heartbeats and their replies.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// `[join_ref, ref, topic, "phx_reply", {"status": status, "response": response}]`,
/// or the v1 object, or a kind-1 binary frame when `response` is binary. An
/// unmatched-topic reply passes `join_ref: None`.
pub fn encode_reply(
    vsn: Vsn,
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Result<OutFrame, FrameError> {
    check_len("topic", topic)?;
    match (vsn, response) {
        (Vsn::V2, Payload::Json(resp)) => Ok(OutFrame::Text(json::encode_v2_reply(
            join_ref, ref_, topic, status, resp,
        ))),
        (Vsn::V2, Payload::Binary(resp)) => {
            binary::encode_reply(join_ref, ref_, topic, status, resp).map(OutFrame::Binary)
        }
        (Vsn::V1, Payload::Json(resp)) => Ok(OutFrame::Text(json::encode_v1_reply(
            ref_, topic, status, resp,
        ))),
        (Vsn::V1, Payload::Binary(_)) => Err(FrameError::BinaryUnsupported),
    }
}

/// A push from a channel to its client: `[join_ref, null, topic, event, payload]`,
/// or a kind-0 binary frame (which has no ref field).
pub fn encode_push(
    vsn: Vsn,
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<OutFrame, FrameError> {
    check_len("topic", topic)?;
    match (vsn, payload) {
        (Vsn::V2, Payload::Json(p)) => Ok(OutFrame::Text(json::encode_v2(
            join_ref, None, topic, event, p,
        ))),
        (Vsn::V2, Payload::Binary(p)) => {
            binary::encode_push(join_ref, topic, event, p).map(OutFrame::Binary)
        }
        (Vsn::V1, Payload::Json(p)) => Ok(OutFrame::Text(json::encode_v1(None, topic, event, p))),
        (Vsn::V1, Payload::Binary(_)) => Err(FrameError::BinaryUnsupported),
    }
}

/// `[join_ref, join_ref, topic, "phx_close", {}]`: the channel of that join ended
/// normally. It must carry the join's own join_ref, never null.
pub fn encode_close(vsn: Vsn, join_ref: &Ref, topic: &str) -> Result<OutFrame, FrameError> {
    encode_join_event(vsn, join_ref, topic, "phx_close", &JsonObject::empty())
}

/// `[join_ref, join_ref, topic, "phx_error", {"reason":"channel_crash"}]`: the channel
/// of that join crashed; the client will rejoin.
pub fn encode_error(vsn: Vsn, join_ref: &Ref, topic: &str) -> Result<OutFrame, FrameError> {
    let payload =
        JsonObject::from_json(r#"{"reason":"channel_crash"}"#).expect("a constant JSON object");
    encode_join_event(vsn, join_ref, topic, "phx_error", &payload)
}

/// `[null, ref, "phoenix", "phx_reply", {"status":"ok","response":{}}]`, echoing the
/// heartbeat's ref with its JSON type. Sent whatever the channel state.
pub fn encode_heartbeat_reply(vsn: Vsn, ref_: Option<&Ref>) -> OutFrame {
    let empty = JsonObject::empty();
    OutFrame::Text(match vsn {
        Vsn::V2 => json::encode_v2_reply(None, ref_, PHOENIX_TOPIC, "ok", &empty),
        Vsn::V1 => json::encode_v1_reply(ref_, PHOENIX_TOPIC, "ok", &empty),
    })
}

/// Prepares a fastlane broadcast (`[null, null, topic, event, payload]`) to be sent to
/// many subscribers, encoding it at most once per serializer.
pub fn encode_broadcast(topic: &str, event: &str, payload: Payload) -> Result<Encoded, FrameError> {
    check_len("topic", topic)?;
    let binary = match &payload {
        Payload::Binary(p) => Some(binary::encode_broadcast(topic, event, p)?),
        Payload::Json(_) => None,
    };
    Ok(Encoded {
        topic: topic.into(),
        event: event.into(),
        payload,
        v1: OnceLock::new(),
        v2: binary.map_or_else(OnceLock::new, OnceLock::from),
    })
}

/// A broadcast encoded at most once per serializer; share it (e.g. in an `Arc`) across
/// the connections it goes to and call [`Encoded::for_vsn`] for each. The bytes are
/// built on first use and cloned by reference count after that.
#[derive(Debug)]
pub struct Encoded {
    topic: Box<str>,
    event: Box<str>,
    payload: Payload,
    /// The v1 text frame, built on first use (JSON payloads only).
    v1: OnceLock<Bytes>,
    /// The v2 frame: text built on first use for a JSON payload, or the kind-2 binary
    /// frame built up front (which checks the lengths) for a binary payload.
    v2: OnceLock<Bytes>,
}

impl Encoded {
    /// The frame for a connection speaking `vsn`. `binary_capable` is false for
    /// LongPoll, which cannot carry binary frames. `None` when this connection cannot
    /// receive a binary broadcast (v1, or not binary-capable): skip it.
    pub fn for_vsn(&self, vsn: Vsn, binary_capable: bool) -> Option<OutFrame> {
        self.bytes_for(vsn, binary_capable).map(|(bytes, text)| {
            if text {
                OutFrame::Text(bytes.clone())
            } else {
                OutFrame::Binary(bytes.clone())
            }
        })
    }

    /// The length of [`Encoded::for_vsn`]'s frame, without sharing its bytes
    /// (a reference count touched by every subscriber's core).
    pub fn len_for(&self, vsn: Vsn, binary_capable: bool) -> Option<usize> {
        self.bytes_for(vsn, binary_capable)
            .map(|(bytes, _)| bytes.len())
    }

    /// The frame's bytes for `vsn`, and whether they are a text frame: what
    /// [`Encoded::for_vsn`] shares, borrowed (to copy into a connection's
    /// buffer without touching the shared reference count).
    pub fn frame_for(&self, vsn: Vsn, binary_capable: bool) -> Option<(&[u8], bool)> {
        self.bytes_for(vsn, binary_capable)
            .map(|(bytes, text)| (&bytes[..], text))
    }

    /// The frame's bytes for `vsn`, and whether they are a text frame.
    fn bytes_for(&self, vsn: Vsn, binary_capable: bool) -> Option<(&Bytes, bool)> {
        match (&self.payload, vsn) {
            (Payload::Json(p), Vsn::V2) => Some((
                self.v2
                    .get_or_init(|| json::encode_v2(None, None, &self.topic, &self.event, p)),
                true,
            )),
            (Payload::Json(p), Vsn::V1) => Some((
                self.v1
                    .get_or_init(|| json::encode_v1(None, &self.topic, &self.event, p)),
                true,
            )),
            (Payload::Binary(_), Vsn::V2) if binary_capable => self.v2.get().map(|b| (b, false)),
            (Payload::Binary(_), _) => None,
        }
    }

    /// The broadcast's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The broadcast's event.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The broadcast's payload, for intercepting channels that re-push it.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
}

/// A frame about a join itself, where `ref` equals `join_ref`.
fn encode_join_event(
    vsn: Vsn,
    join_ref: &Ref,
    topic: &str,
    event: &str,
    payload: &JsonObject,
) -> Result<OutFrame, FrameError> {
    check_len("topic", topic)?;
    Ok(OutFrame::Text(match vsn {
        Vsn::V2 => json::encode_v2(Some(join_ref), Some(join_ref), topic, event, payload),
        Vsn::V1 => json::encode_v1(Some(join_ref), topic, event, payload),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> JsonObject {
        JsonObject::from_json(text).expect("test object")
    }

    fn as_text(frame: OutFrame) -> String {
        frame.as_text().expect("a text frame").to_owned()
    }

    #[test]
    fn heartbeat_reply_echoes_the_ref_type() {
        let reply = encode_heartbeat_reply(Vsn::V2, Some(&Ref::string("10")));
        assert_eq!(
            as_text(reply),
            r#"[null,"10","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        let numeric = encode_heartbeat_reply(Vsn::V2, Some(&Ref::number(10)));
        assert_eq!(
            as_text(numeric),
            r#"[null,10,"phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        let v1 = encode_heartbeat_reply(Vsn::V1, Some(&Ref::string("1")));
        assert_eq!(
            as_text(v1),
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#
        );
    }

    #[test]
    fn close_and_error_carry_the_join_ref_twice() {
        let two = Ref::string("2");
        let close = encode_close(Vsn::V2, &two, "room:lobby").expect("close");
        assert_eq!(as_text(close), r#"["2","2","room:lobby","phx_close",{}]"#);
        let error = encode_error(Vsn::V2, &Ref::string("1"), "room:lobby").expect("error");
        assert_eq!(
            as_text(error),
            r#"["1","1","room:lobby","phx_error",{"reason":"channel_crash"}]"#
        );
        let v1 = encode_close(Vsn::V1, &two, "room:v1").expect("v1 close");
        assert_eq!(
            as_text(v1),
            r#"{"topic":"room:v1","event":"phx_close","payload":{},"ref":"2"}"#
        );
    }

    #[test]
    fn replies_from_the_example_session() {
        let ok = encode_reply(
            Vsn::V2,
            Some(&Ref::string("3")),
            Some(&Ref::string("3")),
            "room:1",
            "ok",
            &Payload::empty(),
        );
        assert_eq!(
            as_text(ok.expect("ok")),
            r#"["3","3","room:1","phx_reply",{"status":"ok","response":{}}]"#
        );
        let unmatched = obj(r#"{"reason":"unmatched topic"}"#);
        let frame = encode_reply(
            Vsn::V2,
            None,
            Some(&Ref::string("7")),
            "room:nope",
            "error",
            &Payload::Json(unmatched),
        );
        assert_eq!(
            as_text(frame.expect("unmatched")),
            r#"[null,"7","room:nope","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
    }

    #[test]
    fn binary_payloads_pick_binary_frames() {
        let three = Ref::string("3");
        let bin = Payload::Binary(Bytes::from_static(&[1, 2, 3]));
        let push = encode_push(Vsn::V2, Some(&three), "room:1", "bin", &bin).expect("push");
        let expected: &[u8] = b"\x00\x01\x06\x033room:1bin\x01\x02\x03";
        assert_eq!(push, OutFrame::Binary(Bytes::from_static(expected)));
        let dead = Payload::Binary(Bytes::from_static(&[0xde, 0xad]));
        let reply = encode_reply(
            Vsn::V2,
            Some(&three),
            Some(&Ref::string("12")),
            "room:1",
            "ok",
            &dead,
        );
        let expected: &[u8] = b"\x01\x01\x02\x06\x02312room:1ok\xde\xad";
        assert_eq!(
            reply.expect("reply"),
            OutFrame::Binary(Bytes::from_static(expected))
        );
    }

    #[test]
    fn v1_rejects_binary_and_long_topics_are_rejected() {
        let bin = Payload::Binary(Bytes::from_static(&[1]));
        assert!(matches!(
            encode_push(Vsn::V1, None, "t", "e", &bin),
            Err(FrameError::BinaryUnsupported)
        ));
        assert!(matches!(
            encode_reply(Vsn::V1, None, None, "t", "ok", &bin),
            Err(FrameError::BinaryUnsupported)
        ));
        let long = "t".repeat(256);
        assert!(matches!(
            encode_push(Vsn::V2, None, &long, "e", &Payload::empty()),
            Err(FrameError::TooLong { field: "topic", .. })
        ));
        assert!(matches!(
            encode_broadcast(&long, "e", Payload::empty()),
            Err(FrameError::TooLong { .. })
        ));
        assert!(matches!(
            encode_close(Vsn::V2, &Ref::number(1), &long),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn broadcast_encodes_once_per_serializer() {
        let payload = Payload::Json(obj(r#"{"body":"hi"}"#));
        let encoded = encode_broadcast("room:1", "new_msg", payload).expect("broadcast");
        let a = encoded.for_vsn(Vsn::V2, true).expect("v2");
        let b = encoded.for_vsn(Vsn::V2, false).expect("v2 longpoll");
        assert_eq!(
            a.as_text(),
            Some(r#"[null,null,"room:1","new_msg",{"body":"hi"}]"#)
        );
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "the same buffer, not a re-encode"
        );
        let v1 = encoded.for_vsn(Vsn::V1, true).expect("v1");
        assert_eq!(
            v1.as_text(),
            Some(r#"{"topic":"room:1","event":"new_msg","payload":{"body":"hi"},"ref":null}"#)
        );
        assert_eq!((encoded.topic(), encoded.event()), ("room:1", "new_msg"));
    }

    #[test]
    fn binary_broadcast_only_reaches_binary_capable_v2() {
        let payload = Payload::Binary(Bytes::from_static(&[9, 8, 7]));
        let encoded = encode_broadcast("room:lobby", "new_msg", payload).expect("broadcast");
        let frame = encoded.for_vsn(Vsn::V2, true).expect("websocket v2");
        let mut expected = vec![2, 10, 7];
        expected.extend_from_slice(b"room:lobbynew_msg");
        expected.extend_from_slice(&[9, 8, 7]);
        assert_eq!(frame, OutFrame::Binary(expected.into()));
        assert_eq!(
            encoded.for_vsn(Vsn::V2, false),
            None,
            "longpoll cannot carry binary"
        );
        assert_eq!(
            encoded.for_vsn(Vsn::V1, true),
            None,
            "v1 has no binary frames"
        );
        let long_event = encode_broadcast("t", &"e".repeat(256), Payload::Binary(Bytes::new()));
        assert!(matches!(
            long_event,
            Err(FrameError::TooLong { field: "event", .. })
        ));
    }
}
