//! The v2 binary serializer (WebSocket binary frames; phoenix.js sends one when a
//! payload is an `ArrayBuffer`). Every integer is a `u8`, every string is UTF-8 with a
//! one-byte length, and a nil ref is written as length 0.
//!
//! | kind | direction | layout |
//! | --- | --- | --- |
//! | 0 push | C→S | `0, len(join_ref), len(ref), len(topic), len(event), join_ref, ref, topic, event, payload` |
//! | 0 push | S→C | `0, len(join_ref), len(topic), len(event), join_ref, topic, event, payload` (no ref) |
//! | 1 reply | S→C | `1, len(join_ref), len(ref), len(topic), len(status), join_ref, ref, topic, status, payload` |
//! | 2 broadcast | S→C | `2, len(topic), len(event), topic, event, payload` |

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{FrameError, InFrame, Payload, Ref, MAX_FIELD_LEN};

/// Kind byte of a push (both directions).
pub const KIND_PUSH: u8 = 0;
/// Kind byte of a server reply.
pub const KIND_REPLY: u8 = 1;
/// Kind byte of a server broadcast.
pub const KIND_BROADCAST: u8 = 2;

/// Decodes a client's binary frame, which must be a kind-0 push. The payload is a
/// zero-copy slice of `frame`. A zero-length join_ref or ref decodes as `None`.
pub fn decode(frame: Bytes) -> Result<InFrame, FrameError> {
    const HEADER: usize = 5;
    let kind = *frame.first().ok_or(FrameError::EmptyBinary)?;
    if kind != KIND_PUSH {
        return Err(FrameError::UnexpectedKind(kind));
    }
    let Some(&[join_ref_len, ref_len, topic_len, event_len]) = frame.get(1..HEADER) else {
        return Err(FrameError::Truncated {
            needed: HEADER,
            len: frame.len(),
        });
    };
    let lens = [join_ref_len, ref_len, topic_len, event_len].map(usize::from);
    let payload_start = HEADER + lens.iter().sum::<usize>();
    if frame.len() < payload_start {
        return Err(FrameError::Truncated {
            needed: payload_start,
            len: frame.len(),
        });
    }
    let mut fields = Fields {
        frame: &frame,
        at: HEADER,
    };
    let [join_ref, ref_, topic, event] = [
        fields.take(lens[0], "join_ref")?,
        fields.take(lens[1], "ref")?,
        fields.take(lens[2], "topic")?,
        fields.take(lens[3], "event")?,
    ];
    Ok(InFrame {
        join_ref: non_empty_ref(join_ref),
        ref_: non_empty_ref(ref_),
        topic: topic.into(),
        event: event.into(),
        payload: Payload::Binary(frame.slice(payload_start..)),
    })
}

/// Encodes a server push (kind 0, no ref field).
pub fn encode_push(
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<Bytes, FrameError> {
    let join_ref = ref_text(join_ref);
    let parts = [("join_ref", join_ref), ("topic", topic), ("event", event)];
    encode(KIND_PUSH, &parts, payload)
}

/// Encodes a server reply (kind 1); the status takes the event's place.
pub fn encode_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    payload: &[u8],
) -> Result<Bytes, FrameError> {
    let parts = [
        ("join_ref", ref_text(join_ref)),
        ("ref", ref_text(ref_)),
        ("topic", topic),
        ("status", status),
    ];
    encode(KIND_REPLY, &parts, payload)
}

/// Encodes a broadcast (kind 2): only topic and event; the client reads both refs as
/// null.
pub fn encode_broadcast(topic: &str, event: &str, payload: &[u8]) -> Result<Bytes, FrameError> {
    encode(
        KIND_BROADCAST,
        &[("topic", topic), ("event", event)],
        payload,
    )
}

/// Writes `kind`, one length byte per part, the parts, then the payload.
fn encode(kind: u8, parts: &[(&'static str, &str)], payload: &[u8]) -> Result<Bytes, FrameError> {
    let mut lens = Vec::with_capacity(parts.len());
    for &(field, value) in parts {
        let len = u8::try_from(value.len()).map_err(|_| FrameError::TooLong {
            field,
            len: value.len(),
        })?;
        lens.push(len);
    }
    let strings: usize = parts.iter().map(|(_, value)| value.len()).sum();
    let mut out = BytesMut::with_capacity(1 + parts.len() + strings + payload.len());
    out.put_u8(kind);
    out.put_slice(&lens);
    for (_, value) in parts {
        out.put_slice(value.as_bytes());
    }
    out.put_slice(payload);
    Ok(out.freeze())
}

/// A nil ref is written as the empty string, as Phoenix's `to_string(nil)` does.
fn ref_text(r: Option<&Ref>) -> &str {
    r.map_or("", Ref::as_str)
}

fn non_empty_ref(text: &str) -> Option<Ref> {
    (!text.is_empty()).then(|| Ref::string(text))
}

/// A cursor over the string fields; the caller has checked that they fit.
struct Fields<'a> {
    frame: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a str, FrameError> {
        debug_assert!(len <= MAX_FIELD_LEN);
        let end = self.at + len;
        let bytes = self.frame.get(self.at..end).ok_or(FrameError::Truncated {
            needed: end,
            len: self.frame.len(),
        })?;
        self.at = end;
        std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex without separators, e.g. `"0001"` -> `[0, 1]`.
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn decodes_the_verified_client_push() {
        let wire = concat(&[
            &[0, 1, 1, 6, 6],
            b"3",
            b"9",
            b"room:1",
            b"bin_up",
            &[9, 8, 7],
        ]);
        let f = decode(Bytes::from(wire)).expect("push");
        assert_eq!(f.join_ref, Some(Ref::string("3")));
        assert_eq!(f.ref_, Some(Ref::string("9")));
        assert_eq!((f.topic.as_str(), f.event.as_str()), ("room:1", "bin_up"));
        assert_eq!(f.payload, Payload::Binary(Bytes::from_static(&[9, 8, 7])));
    }

    #[test]
    fn decodes_the_capture_and_longpoll_frames() {
        // Capture §8: ping on bench:1 with join_ref "6", ref "8".
        let f =
            decode(hex("0001010704363862656e63683a3170696e67010203ff").into()).expect("capture");
        assert_eq!(
            (f.join_ref, f.ref_),
            (Some(Ref::string("6")), Some(Ref::string("8")))
        );
        assert_eq!((f.topic.as_str(), f.event.as_str()), ("bench:1", "ping"));
        assert_eq!(
            f.payload,
            Payload::Binary(Bytes::from_static(&[1, 2, 3, 0xff]))
        );
        // PROTOCOL.md §6.3: `AAEBBwM2OXJvb206bHBiaW4BAv8=` after base64.
        let lp = concat(&[
            &[0, 1, 1, 7, 3],
            b"6",
            b"9",
            b"room:lp",
            b"bin",
            &[1, 2, 0xff],
        ]);
        let f = decode(lp.into()).expect("longpoll line");
        assert_eq!((f.topic.as_str(), f.event.as_str()), ("room:lp", "bin"));
    }

    #[test]
    fn zero_length_refs_are_none_and_empty_payload_is_fine() {
        let wire = concat(&[&[0, 0, 0, 1, 1], b"t", b"e"]);
        let f = decode(wire.into()).expect("push");
        assert_eq!((f.join_ref, f.ref_), (None, None));
        assert_eq!(f.payload, Payload::Binary(Bytes::new()));
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        assert!(matches!(decode(Bytes::new()), Err(FrameError::EmptyBinary)));
        assert!(matches!(
            decode(vec![1, 0, 0, 0, 0].into()),
            Err(FrameError::UnexpectedKind(1))
        ));
        assert!(matches!(
            decode(vec![2, 0, 0].into()),
            Err(FrameError::UnexpectedKind(2))
        ));
        assert!(matches!(
            decode(vec![0, 1, 1].into()),
            Err(FrameError::Truncated { needed: 5, len: 3 })
        ));
        let short = concat(&[&[0, 1, 1, 6, 6], b"3", b"9", b"room:1", b"bin"]);
        assert!(matches!(
            decode(short.into()),
            Err(FrameError::Truncated {
                needed: 19,
                len: 16
            })
        ));
        let bad_utf8 = concat(&[&[0, 0, 0, 1, 1], &[0xff], b"e"]);
        assert!(matches!(
            decode(bad_utf8.into()),
            Err(FrameError::InvalidUtf8 { field: "topic" })
        ));
    }

    #[test]
    fn encodes_the_verified_server_frames() {
        let three = Ref::string("3");
        let push = encode_push(Some(&three), "room:1", "bin", &[1, 2, 3]).expect("push");
        assert_eq!(
            &push[..],
            &concat(&[&[0, 1, 6, 3], b"3", b"room:1", b"bin", &[1, 2, 3]])[..]
        );
        let reply = encode_reply(
            Some(&three),
            Some(&Ref::string("12")),
            "room:1",
            "ok",
            &[0xde, 0xad],
        )
        .expect("reply");
        let expected = concat(&[
            &[1, 1, 2, 6, 2],
            b"3",
            b"12",
            b"room:1",
            b"ok",
            &[0xde, 0xad],
        ]);
        assert_eq!(&reply[..], &expected[..]);
    }

    #[test]
    fn encodes_the_capture_frames() {
        // Capture §8: reply to the binary ping.
        let (six, eight) = (Ref::string("6"), Ref::string("8"));
        let reply = encode_reply(Some(&six), Some(&eight), "bench:1", "ok", &[1, 2, 3, 0xff])
            .expect("reply");
        assert_eq!(
            &reply[..],
            &hex("0101010702363862656e63683a316f6b010203ff")[..]
        );
        // Capture §19: broadcast of a binary new_msg.
        let bcast = encode_broadcast("room:lobby", "new_msg", &[9, 8, 7]).expect("broadcast");
        assert_eq!(
            &bcast[..],
            &hex("020a07726f6f6d3a6c6f6262796e65775f6d7367090807")[..]
        );
    }

    #[test]
    fn nil_and_numeric_refs() {
        let reply = encode_reply(None, Some(&Ref::number(12)), "t", "ok", &[]).expect("reply");
        assert_eq!(
            &reply[..],
            &concat(&[&[1, 0, 2, 1, 2], b"12", b"t", b"ok"])[..]
        );
        let push = encode_push(None, "t", "e", &[]).expect("push");
        assert_eq!(&push[..], &[0, 0, 1, 1, b't', b'e'][..]);
    }

    #[test]
    fn fields_over_255_bytes_are_errors() {
        let long = "x".repeat(256);
        let ok = "x".repeat(255);
        assert!(encode_broadcast(&ok, &ok, &[]).is_ok());
        let err = encode_broadcast(&long, "e", &[]).expect_err("topic");
        assert!(matches!(
            err,
            FrameError::TooLong {
                field: "topic",
                len: 256
            }
        ));
        let err = encode_push(None, "t", &long, &[]).expect_err("event");
        assert!(matches!(err, FrameError::TooLong { field: "event", .. }));
        let err = encode_reply(None, None, "t", &long, &[]).expect_err("status");
        assert!(matches!(
            err,
            FrameError::TooLong {
                field: "status",
                ..
            }
        ));
        let big_ref = Ref::string(long.clone());
        let err = encode_reply(None, Some(&big_ref), "t", "ok", &[]).expect_err("ref");
        assert!(matches!(err, FrameError::TooLong { field: "ref", .. }));
        let err = encode_push(Some(&big_ref), "t", "e", &[]).expect_err("join_ref");
        assert!(matches!(
            err,
            FrameError::TooLong {
                field: "join_ref",
                ..
            }
        ));
    }

    #[test]
    fn server_push_round_trips_through_client_layout() {
        // A client re-encoding what it received (with a ref) decodes to the same fields.
        let wire = concat(&[&[0, 2, 0, 3, 2], b"10", b"a:b", b"ev", b"data"]);
        let f = decode(wire.into()).expect("push");
        let again = encode_push(f.join_ref.as_ref(), &f.topic, &f.event, b"data").expect("encode");
        assert_eq!(
            &again[..],
            &concat(&[&[0, 2, 3, 2], b"10", b"a:b", b"ev", b"data"])[..]
        );
    }
}
