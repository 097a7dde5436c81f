//! The JSON serializers: v2 (`[join_ref, ref, topic, event, payload]` arrays, vsn
//! 2.0.x) and v1 (`{"topic","event","payload","ref"}` objects, vsn 1.0.x or no vsn).
//!
//! Decoders borrow the text and keep the payload as raw JSON; encoders splice raw
//! payloads in without re-parsing them.

use std::fmt;

use bytes::Bytes;
use compact_str::CompactString;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::frame::{
    check_len, json_str_content, json_str_len, write_json_str, FrameError, InFrame, JsonObject,
    Payload, Ref,
};

/// Decodes a v2 text frame. Elements past the fifth are ignored, as Phoenix does.
pub fn decode_v2(text: &str) -> Result<InFrame, FrameError> {
    expect_shape(text, b'[', FrameError::NotAnArray)?;
    let elements: Elements<'_> = serde_json::from_str(text)?;
    let [Some(join_ref), Some(ref_), Some(topic), Some(event), Some(payload)] = elements.first
    else {
        return Err(FrameError::TooFewElements { len: elements.len });
    };
    frame_from_parts(Some(join_ref), ref_, topic, event, payload)
}

/// A v2 frame's first five elements, borrowed from its text, and how many
/// elements the array has. The elements past the fifth are checked for syntax
/// and skipped, and nothing is allocated for them.
struct Elements<'a> {
    first: [Option<&'a RawValue>; 5],
    len: usize,
}

impl<'de> Deserialize<'de> for Elements<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;

        impl<'de> Visitor<'de> for Visit {
            type Value = Elements<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut elements = Elements {
                    first: [None; 5],
                    len: 0,
                };
                for slot in &mut elements.first {
                    let Some(raw) = seq.next_element::<&RawValue>()? else {
                        return Ok(elements);
                    };
                    *slot = Some(raw);
                    elements.len += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    elements.len += 1;
                }
                Ok(elements)
            }
        }

        de.deserialize_seq(Visit)
    }
}

/// Decodes a v1 text frame. `topic`, `event`, `payload` and `ref` are required (each
/// may be present as `null` only where the type allows); `join_ref` is optional.
pub fn decode_v1(text: &str) -> Result<InFrame, FrameError> {
    expect_shape(text, b'{', FrameError::NotAnObject)?;
    let fields: V1Fields<'_> = serde_json::from_str(text)?;
    let topic = fields.topic.ok_or(FrameError::MissingField("topic"))?;
    let event = fields.event.ok_or(FrameError::MissingField("event"))?;
    let payload = fields.payload.ok_or(FrameError::MissingField("payload"))?;
    let ref_ = fields.ref_.ok_or(FrameError::MissingField("ref"))?;
    frame_from_parts(fields.join_ref, ref_, topic, event, payload)
}

/// Encodes a v2 message: `[join_ref, ref, topic, event, payload]`.
pub fn encode_v2(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &JsonObject,
) -> Bytes {
    let mut out = v2_head(join_ref, ref_, topic, event, payload.as_str().len() + 1);
    out.extend_from_slice(payload.as_str().as_bytes());
    out.push(b']');
    out.into()
}

/// Encodes a v2 reply: `[join_ref, ref, topic, "phx_reply", {"status":..,"response":..}]`.
pub fn encode_v2_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &JsonObject,
) -> Bytes {
    v2_reply(join_ref, ref_, topic, status, response).into()
}

/// [`encode_v2_reply`]'s bytes, in a buffer of exactly their length when no
/// string needs escaping (the common case): `Bytes` then takes the buffer as
/// it is, with no allocation of its own. (One that needs escaping grows it.)
fn v2_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &JsonObject,
) -> Vec<u8> {
    let extra = REPLY_PAYLOAD_LEN + json_str_len(status) + response.as_str().len() + 1;
    let mut out = v2_head(join_ref, ref_, topic, "phx_reply", extra);
    write_reply_payload(&mut out, status, response);
    out.push(b']');
    out
}

/// Encodes a v1 message: `{"topic":..,"event":..,"payload":..,"ref":..}`. v1 frames
/// carry no join_ref.
pub fn encode_v1(ref_: Option<&Ref>, topic: &str, event: &str, payload: &JsonObject) -> Bytes {
    let mut out = v1_head(topic, event, payload.as_str().len());
    out.extend_from_slice(payload.as_str().as_bytes());
    v1_tail(out, ref_)
}

/// Encodes a v1 reply:
/// `{"topic":..,"event":"phx_reply","payload":{"status":..,"response":..},"ref":..}`.
pub fn encode_v1_reply(
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &JsonObject,
) -> Bytes {
    let mut out = v1_head(
        topic,
        "phx_reply",
        status.len() + response.as_str().len() + 32,
    );
    write_reply_payload(&mut out, status, response);
    v1_tail(out, ref_)
}

/// The keys of a v1 frame. A key that is present holds `Some(raw)` even when its
/// value is `null`, so a missing `ref` can be told from `"ref":null`.
#[derive(Deserialize)]
struct V1Fields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default, deserialize_with = "present")]
    ref_: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    join_ref: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(de: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(de).map(Some)
}

/// Builds the frame from raw elements; `join_ref: None` means the key was absent.
fn frame_from_parts(
    join_ref: Option<&RawValue>,
    ref_: &RawValue,
    topic: &RawValue,
    event: &RawValue,
    payload: &RawValue,
) -> Result<InFrame, FrameError> {
    let join_ref = match join_ref {
        Some(raw) => Ref::from_json(raw, "join_ref")?,
        None => None,
    };
    let topic = json_string(topic, "topic")?;
    check_len("topic", &topic)?;
    Ok(InFrame {
        join_ref,
        ref_: Ref::from_json(ref_, "ref")?,
        topic,
        event: json_string(event, "event")?,
        payload: Payload::Json(JsonObject::from_raw(payload.to_owned())?),
    })
}

fn json_string(raw: &RawValue, field: &'static str) -> Result<CompactString, FrameError> {
    json_str_content(raw)
        .map(CompactString::from)
        .ok_or(FrameError::NotAString { field })
}

/// Checks that `text` starts with `open` (after JSON whitespace). If not, the error
/// is `shape_error` when the text is valid JSON of another kind, else the JSON error.
fn expect_shape(text: &str, open: u8, shape_error: FrameError) -> Result<(), FrameError> {
    let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if start.as_bytes().first() == Some(&open) {
        return Ok(());
    }
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => Err(shape_error),
        Err(err) => Err(FrameError::Json(err)),
    }
}

fn v2_head(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    extra: usize,
) -> Vec<u8> {
    // `[`, four commas, then what follows the fourth comma (`extra` bytes).
    let len = 5
        + ref_json_len(join_ref)
        + ref_json_len(ref_)
        + json_str_len(topic)
        + json_str_len(event)
        + extra;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    write_opt_ref(&mut out, join_ref);
    out.push(b',');
    write_opt_ref(&mut out, ref_);
    out.push(b',');
    write_json_str(&mut out, topic);
    out.push(b',');
    write_json_str(&mut out, event);
    out.push(b',');
    out
}

fn v1_head(topic: &str, event: &str, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + event.len() + extra + 60);
    out.extend_from_slice(br#"{"topic":"#);
    write_json_str(&mut out, topic);
    out.extend_from_slice(br#","event":"#);
    write_json_str(&mut out, event);
    out.extend_from_slice(br#","payload":"#);
    out
}

fn v1_tail(mut out: Vec<u8>, ref_: Option<&Ref>) -> Bytes {
    out.extend_from_slice(br#","ref":"#);
    write_opt_ref(&mut out, ref_);
    out.push(b'}');
    out.into()
}

/// The bytes [`write_reply_payload`] writes besides the status and response:
/// `{"status":`, `,"response":` and `}`.
const REPLY_PAYLOAD_LEN: usize = 10 + 12 + 1;

fn write_reply_payload(out: &mut Vec<u8>, status: &str, response: &JsonObject) {
    out.extend_from_slice(br#"{"status":"#);
    write_json_str(out, status);
    out.extend_from_slice(br#","response":"#);
    out.extend_from_slice(response.as_str().as_bytes());
    out.push(b'}');
}

/// What [`write_opt_ref`] writes, in bytes (when nothing is escaped: see
/// [`json_str_len`]).
fn ref_json_len(r: Option<&Ref>) -> usize {
    match r {
        Some(r) => r.json_len(),
        None => 4,
    }
}

fn write_opt_ref(out: &mut Vec<u8>, r: Option<&Ref>) {
    match r {
        Some(r) => r.write_json(out),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> JsonObject {
        JsonObject::from_json(text).expect("test object")
    }

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).expect("utf8")
    }

    #[test]
    fn decodes_phoenix_js_frames() {
        let f = decode_v2(r#"["3","3","room:1","phx_join",{"name":"x"}]"#).expect("join");
        assert_eq!(f.join_ref, Some(Ref::string("3")));
        assert_eq!(f.ref_, Some(Ref::string("3")));
        assert_eq!((f.topic.as_str(), f.event.as_str()), ("room:1", "phx_join"));
        assert_eq!(f.payload, Payload::Json(obj(r#"{"name":"x"}"#)));
        let hb = decode_v2(r#"[null,"10","phoenix","heartbeat",{}]"#).expect("heartbeat");
        assert_eq!((hb.join_ref, hb.ref_), (None, Some(Ref::string("10"))));
    }

    #[test]
    fn v2_keeps_payload_text_and_ignores_extra_elements() {
        let f =
            decode_v2(r#" [ 1 , 2 , "t" , "e" , { "a" : [1, 2] } , "extra", 9 ] "#).expect("ok");
        assert_eq!(f.join_ref, Some(Ref::number(1)));
        assert_eq!(f.payload, Payload::Json(obj(r#"{ "a" : [1, 2] }"#)));
        let esc = decode_v2(r#"[null,null,"room:\u00e9","ev\"t",{}]"#).expect("escapes");
        assert_eq!(
            (esc.topic.as_str(), esc.event.as_str()),
            ("room:é", "ev\"t")
        );
    }

    /// A reply's buffer is exactly as long as its bytes when nothing is
    /// escaped (so `Bytes` adopts it without an allocation); escaped strings
    /// are written whole.
    #[test]
    fn reply_buffers_are_sized_to_their_bytes() {
        let response = obj(r#"{"body":"hi"}"#);
        let (num, text) = (Ref::number(12), Ref::string("7"));
        for (join_ref, ref_, topic) in [
            (Some(&text), Some(&num), "room:1"),
            (None, Some(&text), "bench:9"),
            (None, None, ""),
        ] {
            let out = v2_reply(join_ref, ref_, topic, "ok", &response);
            assert_eq!(
                out.len(),
                out.capacity(),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
        let escaped = Ref::string("a\"b");
        let out = v2_reply(Some(&escaped), None, "room:\n", "ok", &response);
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            r#"["a\"b",null,"room:\n","phx_reply",{"status":"ok","response":{"body":"hi"}}]"#
        );
    }

    #[test]
    fn v2_errors_name_the_problem() {
        let cases = [
            ("this is not json", "invalid JSON: "),
            (r#"{"topic":"x"}"#, "a v2 frame must be a JSON array"),
            (r#"[null,null,"t","e"]"#, "a v2 frame needs 5 elements"),
            (
                r#"[null,true,"t","e",{}]"#,
                "`ref` must be null, a string or a number",
            ),
            (
                r#"[{},null,"t","e",{}]"#,
                "`join_ref` must be null, a string or a number",
            ),
            (r#"[null,null,1,"e",{}]"#, "`topic` must be a string"),
            (r#"[null,null,"t",null,{}]"#, "`event` must be a string"),
            (
                r#"[null,null,"t","e",[]]"#,
                "the payload must be a JSON object",
            ),
            (
                r#"[null,null,"t","e","s"]"#,
                "the payload must be a JSON object",
            ),
            (r#"[null,null,"t","e",{}"#, "invalid JSON: "),
        ];
        for (input, message) in cases {
            let err = decode_v2(input).expect_err(input).to_string();
            assert!(err.starts_with(message), "{input}: got {err:?}");
        }
        let short = decode_v2("[1,2]").expect_err("short").to_string();
        assert_eq!(
            short,
            "a v2 frame needs 5 elements [join_ref, ref, topic, event, payload], got 2"
        );
    }

    #[test]
    fn topics_over_255_bytes_are_rejected() {
        let v2 = |topic: &str| format!(r#"[null,null,"{topic}","e",{{}}]"#);
        assert!(decode_v2(&v2(&"t".repeat(255))).is_ok());
        let err = decode_v2(&v2(&"t".repeat(256))).expect_err("long topic");
        assert_eq!(err.to_string(), "`topic` is 256 bytes, the limit is 255");
        let v1 = format!(
            r#"{{"topic":"{}","event":"e","payload":{{}},"ref":null}}"#,
            "t".repeat(300)
        );
        let err = decode_v1(&v1).expect_err("long v1 topic");
        assert_eq!(err.to_string(), "`topic` is 300 bytes, the limit is 255");
    }

    #[test]
    fn decodes_v1_frames_from_the_capture() {
        let hb = decode_v1(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
            .expect("hb");
        assert_eq!((hb.join_ref, hb.ref_), (None, Some(Ref::string("1"))));
        let join =
            r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#;
        let join = decode_v1(join).expect("join");
        assert_eq!(join.join_ref, Some(Ref::string("2")));
        assert_eq!(
            (join.topic.as_str(), join.event.as_str()),
            ("room:v1", "phx_join")
        );
    }

    #[test]
    fn v1_requires_its_keys_but_allows_null_ref() {
        let null_ref =
            decode_v1(r#"{"topic":"t","event":"e","payload":{},"ref":null}"#).expect("ok");
        assert_eq!(null_ref.ref_, None);
        let cases = [
            (r#"{"event":"e","payload":{},"ref":"1"}"#, "topic"),
            (r#"{"topic":"t","payload":{},"ref":"1"}"#, "event"),
            (r#"{"topic":"t","event":"e","ref":"1"}"#, "payload"),
            (r#"{"topic":"t","event":"e","payload":{}}"#, "ref"),
        ];
        for (input, key) in cases {
            let err = decode_v1(input).expect_err(input).to_string();
            assert_eq!(err, format!("a v1 frame needs the key `{key}`"), "{input}");
        }
        let not_object = decode_v1("[1,2,3,4,5]").expect_err("array");
        assert_eq!(not_object.to_string(), "a v1 frame must be a JSON object");
        assert!(matches!(decode_v1("nope"), Err(FrameError::Json(_))));
        let bad_payload = r#"{"topic":"t","event":"e","payload":1,"ref":"1"}"#;
        assert!(matches!(
            decode_v1(bad_payload),
            Err(FrameError::PayloadNotObject)
        ));
    }

    #[test]
    fn v2_encoders_match_the_protocol_examples() {
        let three = Ref::string("3");
        let push = encode_v2(
            Some(&three),
            None,
            "room:1",
            "presence_state",
            &obj(r#"{"u1":{}}"#),
        );
        assert_eq!(
            text(push),
            r#"["3",null,"room:1","presence_state",{"u1":{}}]"#
        );
        let reply = encode_v2_reply(
            Some(&three),
            Some(&Ref::string("8")),
            "room:1",
            "ok",
            &JsonObject::empty(),
        );
        assert_eq!(
            text(reply),
            r#"["3","8","room:1","phx_reply",{"status":"ok","response":{}}]"#
        );
        let unmatched = encode_v2_reply(
            None,
            Some(&Ref::string("7")),
            "room:nope",
            "error",
            &obj(r#"{"reason":"unmatched topic"}"#),
        );
        assert_eq!(
            text(unmatched),
            r#"[null,"7","room:nope","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
    }

    #[test]
    fn v1_encoders_have_no_join_ref() {
        let reply = encode_v1_reply(
            Some(&Ref::string("2")),
            "room:v1",
            "ok",
            &JsonObject::empty(),
        );
        assert_eq!(
            text(reply),
            r#"{"topic":"room:v1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#
        );
        let bcast = encode_v1(None, "room:v1", "new_msg", &obj(r#"{"body":"v1"}"#));
        assert_eq!(
            text(bcast),
            r#"{"topic":"room:v1","event":"new_msg","payload":{"body":"v1"},"ref":null}"#
        );
    }

    #[test]
    fn encoded_frames_decode_back() {
        let r = Ref::number(42);
        let wire = encode_v2(Some(&r), Some(&r), "t\"q", "é", &obj(r#"{"k":"v"}"#));
        let f = decode_v2(std::str::from_utf8(&wire).expect("utf8")).expect("round trip");
        assert_eq!((f.join_ref, f.ref_), (Some(r.clone()), Some(r)));
        assert_eq!((f.topic.as_str(), f.event.as_str()), ("t\"q", "é"));
        let v1 = encode_v1(Some(&Ref::string("5")), "t", "e", &JsonObject::empty());
        let f = decode_v1(std::str::from_utf8(&v1).expect("utf8")).expect("v1 round trip");
        assert_eq!(f.ref_, Some(Ref::string("5")));
    }
}
