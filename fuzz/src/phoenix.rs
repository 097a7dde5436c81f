//! Phoenix client frames: v1 JSON objects, v2 JSON arrays, v2 binary pushes
//! (`gateway::protocol::decode_text` / `decode_binary`).

use chorus_gateway::protocol::{decode_binary, decode_text, InFrame, Payload, Vsn, MAX_FIELD_LEN};

/// What every decoded frame promises the session: a topic of at most
/// `MAX_FIELD_LEN` bytes (any serializer), and a JSON payload that is a JSON
/// object. Events and refs of JSON frames are not bounded by the decoder (only
/// the frame size is; encoding them into a binary reply refuses them), so only a
/// binary frame's are checked, by [`check_binary`].
pub fn check(frame: &InFrame) {
    assert!(frame.topic.len() <= MAX_FIELD_LEN, "topic over the limit");
    if let Payload::Json(json) = &frame.payload {
        // Syntactically JSON and an object. Not parsed into a `Map` or `Value`:
        // numbers of any size are valid JSON (serde_json refuses `1e400` as a
        // `Value`, so do the channels that parse the payload), and with the
        // `raw_value` feature `{"$serde_json::private::RawValue":…}` is not an
        // object as a `Value`. See FUZZING.md.
        let text = json.as_str();
        assert!(text.starts_with('{'), "payload is not an object: {text:?}");
        assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
            "payload is not JSON: {text:?}"
        );
    }
}

/// A binary frame's fields have one-byte lengths.
pub fn check_binary(frame: &InFrame) {
    check(frame);
    assert!(frame.event.len() <= MAX_FIELD_LEN, "event over the limit");
    for r in [&frame.join_ref, &frame.ref_].into_iter().flatten() {
        assert!(r.as_str().len() <= MAX_FIELD_LEN, "ref over the limit");
    }
}

/// v1 JSON: `{"topic":…,"event":…,"payload":…,"ref":…,"join_ref":…}`.
pub mod frame_v1_json {
    use super::*;

    /// WebSocket text frames are UTF-8 (the WebSocket layer checks), so other
    /// bytes never reach the decoder.
    pub fn run(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(frame) = decode_text(Vsn::V1, text) {
                check(&frame);
            }
        }
    }
}

/// v2 JSON: `[join_ref, ref, topic, event, payload]`.
pub mod frame_v2_json {
    use super::*;

    /// See [`super::frame_v1_json::run`].
    pub fn run(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(frame) = decode_text(Vsn::V2, text) {
                check(&frame);
            }
        }
    }
}

/// v2 binary: a kind-0 push; v1 refuses every binary frame.
pub mod frame_v2_binary {
    use super::*;

    /// Any bytes.
    pub fn run(data: &[u8]) {
        let bytes = bytes::Bytes::copy_from_slice(data);
        if let Ok(frame) = decode_binary(Vsn::V2, bytes.clone()) {
            check_binary(&frame);
        }
        assert!(
            decode_binary(Vsn::V1, bytes).is_err(),
            "v1 has no binary frames"
        );
    }
}
