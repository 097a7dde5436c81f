//! Frame types shared by every serializer: refs, payloads, the decoded incoming
//! frame, the ready-to-send outgoing frame, and the error every decoder and encoder
//! returns.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use compact_str::{CompactString, ToCompactString};
use serde::Serialize;
use serde_json::value::RawValue;

/// Longest topic, event, status or ref a binary frame can carry (a `u8` length), and
/// the longest topic any serializer accepts.
pub const MAX_FIELD_LEN: usize = 255;

/// A client's `ref` or `join_ref`, kept with its JSON type so it can be echoed back
/// identically: phoenix.js compares refs with `===`, so `"3"` and `3` are different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ref(RefRepr);

/// Refs are short (phoenix.js counts up from `"1"`), so their text is kept
/// inline up to 24 bytes: decoding, echoing and cloning one allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RefRepr {
    /// A JSON string (phoenix.js's form, `"3"`), unescaped.
    Str(CompactString),
    /// A JSON number, as the exact text the client sent (`3`, `-1.5e3`).
    Num(CompactString),
}

impl Ref {
    /// A string ref, e.g. `Ref::string("3")` is `"3"` on the wire.
    pub fn string(text: impl Into<CompactString>) -> Self {
        Self(RefRepr::Str(text.into()))
    }

    /// A numeric ref, e.g. `Ref::number(3)` is `3` on the wire.
    pub fn number(n: u64) -> Self {
        Self(RefRepr::Num(n.to_compact_string()))
    }

    /// Reads a ref from one raw JSON value: `null` is `None`, a string or a number is
    /// kept, anything else is [`FrameError::InvalidRef`] naming `field`.
    pub(crate) fn from_json(
        raw: &RawValue,
        field: &'static str,
    ) -> Result<Option<Self>, FrameError> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'n') => Ok(None),
            Some(b'"') => json_str_content(raw)
                .map(|s| Some(Self::string(s)))
                .ok_or(FrameError::InvalidRef { field }),
            Some(b'-' | b'0'..=b'9') => Ok(Some(Self(RefRepr::Num(text.into())))),
            _ => Err(FrameError::InvalidRef { field }),
        }
    }

    /// The ref's text: the string's content, or the number's digits. This is what a
    /// binary frame carries.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            RefRepr::Str(s) | RefRepr::Num(s) => s,
        }
    }

    /// Whether the client sent this ref as a JSON number.
    pub fn is_number(&self) -> bool {
        matches!(self.0, RefRepr::Num(_))
    }

    /// How many bytes [`Ref::write_json`] appends (for a string, when nothing
    /// in it needs escaping: see [`json_str_len`]).
    pub(crate) fn json_len(&self) -> usize {
        match &self.0 {
            RefRepr::Str(s) => json_str_len(s),
            RefRepr::Num(n) => n.len(),
        }
    }

    /// Appends the ref as JSON (a quoted, escaped string or the number's text).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            RefRepr::Str(s) => write_json_str(out, s),
            RefRepr::Num(n) => out.extend_from_slice(n.as_bytes()),
        }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JSON object kept as its raw text, so it can be forwarded and spliced into
/// outgoing frames without being parsed or re-encoded. Always an object: Phoenix
/// rejects any other payload.
#[derive(Clone, Debug)]
pub struct JsonObject(Box<RawValue>);

impl JsonObject {
    /// `{}`, the response of a bare `:ok` reply and the payload of `phx_close`.
    pub fn empty() -> Self {
        Self::from_raw(raw_from_static("{}")).expect("`{}` is an object")
    }

    /// Wraps raw JSON, checking that it is an object.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, FrameError> {
        if raw.get().starts_with('{') {
            Ok(Self(raw))
        } else {
            Err(FrameError::PayloadNotObject)
        }
    }

    /// Parses JSON text, checking that it is one object.
    pub fn from_json(text: impl Into<String>) -> Result<Self, FrameError> {
        Self::from_raw(RawValue::from_string(text.into())?)
    }

    /// Serializes a value, checking that it became an object.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, FrameError> {
        Self::from_raw(serde_json::value::to_raw_value(value)?)
    }

    /// The raw JSON text, e.g. `{"body":"hi"}`.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The raw value, for handing to serde without copying.
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonObject {}

/// A frame's payload: a JSON object, or (v2 binary frames only) raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A JSON object, as raw text.
    Json(JsonObject),
    /// The bytes after a binary frame's header (phoenix.js: an `ArrayBuffer`).
    Binary(Bytes),
}

impl Payload {
    /// The empty object `{}`.
    pub fn empty() -> Self {
        Self::Json(JsonObject::empty())
    }
}

/// One decoded client frame, whatever the serializer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFrame {
    /// The join this message belongs to; `None` for `null` (heartbeats, fresh joins
    /// from some clients) or a zero-length binary join_ref.
    pub join_ref: Option<Ref>,
    /// The client's ref, echoed in the reply.
    pub ref_: Option<Ref>,
    /// The topic, at most [`MAX_FIELD_LEN`] bytes (inline up to 24).
    pub topic: CompactString,
    /// The event, e.g. `phx_join`, `heartbeat` or an application event (inline
    /// up to 24 bytes).
    pub event: CompactString,
    /// The payload.
    pub payload: Payload,
}

/// A frame ready to be written to a WebSocket (or, for `Text`, a LongPoll buffer).
/// Cloning is cheap: both variants share their buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutFrame {
    /// A text frame; always valid UTF-8 JSON.
    Text(Bytes),
    /// A binary frame (v2 only).
    Binary(Bytes),
}

impl OutFrame {
    /// The frame's bytes, whatever its opcode.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }

    /// The text of a text frame; `None` for a binary frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(b) => std::str::from_utf8(b).ok(),
            Self::Binary(_) => None,
        }
    }
}

/// Why a frame could not be decoded or encoded. Every variant names what was wrong
/// so the connection can log one clear line before closing (Phoenix closes with 1011).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The text is not valid JSON (or a JSON payload could not be serialized).
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A v2 text frame that is valid JSON but not an array.
    #[error("a v2 frame must be a JSON array")]
    NotAnArray,
    /// A v2 text frame with fewer than 5 elements.
    #[error("a v2 frame needs 5 elements [join_ref, ref, topic, event, payload], got {len}")]
    TooFewElements {
        /// How many elements the array had.
        len: usize,
    },
    /// A v1 text frame that is valid JSON but not an object.
    #[error("a v1 frame must be a JSON object")]
    NotAnObject,
    /// A v1 frame without one of its required keys.
    #[error("a v1 frame needs the key `{0}`")]
    MissingField(&'static str),
    /// A `ref` or `join_ref` that is not null, a string or a number.
    #[error("`{field}` must be null, a string or a number")]
    InvalidRef {
        /// `ref` or `join_ref`.
        field: &'static str,
    },
    /// A topic or event that is not a JSON string.
    #[error("`{field}` must be a string")]
    NotAString {
        /// `topic` or `event`.
        field: &'static str,
    },
    /// A payload that is not a JSON object.
    #[error("the payload must be a JSON object")]
    PayloadNotObject,
    /// A field over [`MAX_FIELD_LEN`] bytes: a topic (any serializer) or, when
    /// encoding a binary frame, a ref, event or status.
    #[error("`{field}` is {len} bytes, the limit is 255")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// An empty binary frame.
    #[error("empty binary frame")]
    EmptyBinary,
    /// A binary frame of a kind clients do not send (only kind 0, push, is valid).
    #[error("binary frame kind {0} cannot come from a client (only 0, push)")]
    UnexpectedKind(u8),
    /// A binary frame shorter than its header says.
    #[error("binary frame truncated: needs at least {needed} bytes, has {len}")]
    Truncated {
        /// Bytes the header requires.
        needed: usize,
        /// Bytes the frame has.
        len: usize,
    },
    /// A binary frame string field that is not UTF-8.
    #[error("binary frame field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// `join_ref`, `ref`, `topic` or `event`.
        field: &'static str,
    },
    /// A binary frame or payload on a connection using the v1 serializer.
    #[error("the v1 serializer has no binary frames")]
    BinaryUnsupported,
}

/// Fails with [`FrameError::TooLong`] if `value` is over [`MAX_FIELD_LEN`] bytes.
pub(crate) fn check_len(field: &'static str, value: &str) -> Result<(), FrameError> {
    if value.len() > MAX_FIELD_LEN {
        return Err(FrameError::TooLong {
            field,
            len: value.len(),
        });
    }
    Ok(())
}

/// Whether JSON writes `b` in a string as it is: serde_json escapes only `"`,
/// `\` and the control characters below 0x20.
fn plain_in_json(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

/// Whether JSON writes `s` as it is, between quotes. Every byte is looked at
/// (no early exit), which the compiler turns into a few wide comparisons.
fn plain_json_str(s: &str) -> bool {
    let escaped = s
        .bytes()
        .fold(0u8, |any, b| any | u8::from(!plain_in_json(b)));
    escaped == 0
}

/// Appends `s` as a quoted, escaped JSON string, as serde_json writes it.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if plain_json_str(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("serializing a str into a Vec cannot fail");
    }
}

/// The length of `s` as [`write_json_str`] writes it when nothing in it needs
/// escaping, as is almost always so (a topic, an event, a ref): the room a
/// buffer is made with. Not looked at: a string that needs escaping makes
/// the buffer grow.
pub(crate) fn json_str_len(s: &str) -> usize {
    s.len() + 2
}

/// The content of `raw` if it is a JSON string; `None` if it is anything else.
/// Without an escape sequence it is the text between the quotes, borrowed:
/// `raw` is valid JSON, so a string without a backslash holds no control
/// character. With one, serde_json unescapes it.
pub(crate) fn json_str_content(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str(text).ok().map(Cow::Owned)
}

fn raw_from_static(json: &'static str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("static JSON is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("test JSON")
    }

    fn json_of(r: &Ref) -> String {
        let mut out = Vec::new();
        r.write_json(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn refs_keep_their_json_type() {
        let s = Ref::from_json(&raw(r#""10""#), "ref")
            .expect("ok")
            .expect("some");
        assert_eq!(json_of(&s), r#""10""#);
        assert!(!s.is_number());
        let n = Ref::from_json(&raw("10"), "ref")
            .expect("ok")
            .expect("some");
        assert_eq!(json_of(&n), "10");
        assert!(n.is_number());
        assert_ne!(s, n, "\"10\" and 10 differ for a === comparison");
        assert_eq!(s.as_str(), n.as_str());
        let exotic = Ref::from_json(&raw("-1.5e3"), "ref")
            .expect("ok")
            .expect("some");
        assert_eq!(json_of(&exotic), "-1.5e3");
        assert_eq!(Ref::from_json(&raw("null"), "ref").expect("ok"), None);
    }

    #[test]
    fn refs_of_other_types_are_rejected() {
        for bad in ["true", "{}", "[1]"] {
            let err = Ref::from_json(&raw(bad), "join_ref").expect_err(bad);
            assert!(
                matches!(err, FrameError::InvalidRef { field: "join_ref" }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn string_refs_are_escaped_on_output() {
        assert_eq!(json_of(&Ref::string("a\"b\\")), r#""a\"b\\""#);
        assert_eq!(json_of(&Ref::number(7)), "7");
    }

    #[test]
    fn json_object_accepts_only_objects() {
        assert_eq!(JsonObject::empty().as_str(), "{}");
        assert_eq!(
            JsonObject::from_json(r#"{"a":1}"#)
                .expect("object")
                .as_str(),
            r#"{"a":1}"#
        );
        assert!(matches!(
            JsonObject::from_json("[1]"),
            Err(FrameError::PayloadNotObject)
        ));
        assert!(matches!(
            JsonObject::from_json("{"),
            Err(FrameError::Json(_))
        ));
        let v = serde_json::json!({"reason": "x"});
        assert_eq!(
            JsonObject::from_value(&v).expect("object").as_str(),
            r#"{"reason":"x"}"#
        );
        assert!(matches!(
            JsonObject::from_value(&3),
            Err(FrameError::PayloadNotObject)
        ));
    }

    #[test]
    fn check_len_allows_255_bytes() {
        assert!(check_len("topic", &"t".repeat(255)).is_ok());
        let err = check_len("topic", &"t".repeat(256)).expect_err("too long");
        assert_eq!(err.to_string(), "`topic` is 256 bytes, the limit is 255");
    }

    #[test]
    fn out_frame_accessors() {
        let text = OutFrame::Text(Bytes::from_static(b"[1]"));
        assert_eq!(text.as_text(), Some("[1]"));
        let bin = OutFrame::Binary(Bytes::from_static(&[1, 2]));
        assert_eq!(bin.as_text(), None);
        assert_eq!(bin.as_bytes(), &[1, 2]);
    }

    mod strings {
        use super::super::*;
        use proptest::prelude::*;

        /// Text with what JSON escapes (quotes, backslashes, control
        /// characters) and what it does not (`/`, DEL, non-ASCII), or not.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z:0-9]{0,40}",
                "[a-z\"\\\\/\u{0}-\u{1f}\u{7f}é€😀 ]{0,40}",
            ]
        }

        proptest! {
            /// The fast paths agree with serde_json: `write_json_str` writes
            /// what it writes, `json_str_len` is its length when nothing is
            /// escaped, and `json_str_content` reads what it reads, borrowed
            /// when nothing is escaped.
            #[test]
            fn json_strings_match_serde_json(s in text()) {
                let mut ours = Vec::new();
                write_json_str(&mut ours, &s);
                let theirs = serde_json::to_vec(&s).expect("a str serializes");
                prop_assert_eq!(&ours, &theirs);
                if plain_json_str(&s) {
                    prop_assert_eq!(json_str_len(&s), ours.len());
                }
                let raw = RawValue::from_string(String::from_utf8(ours).expect("utf8"))
                    .expect("valid JSON");
                let content = json_str_content(&raw);
                prop_assert_eq!(content.as_deref(), Some(s.as_str()));
                let borrowed = matches!(content, Some(Cow::Borrowed(_)));
                prop_assert_eq!(borrowed, !raw.get().contains('\\'));
            }
        }

        #[test]
        fn string_content_is_borrowed_without_escapes_and_only_for_strings() {
            let raw = |t: &str| RawValue::from_string(t.to_owned()).expect("json");
            let content = |t: &str| json_str_content(&raw(t)).map(|c| c.into_owned());
            assert!(matches!(
                json_str_content(&raw(r#""room:1""#)),
                Some(Cow::Borrowed("room:1"))
            ));
            assert!(matches!(
                json_str_content(&raw(r#""""#)),
                Some(Cow::Borrowed(""))
            ));
            assert!(
                matches!(json_str_content(&raw(r#""a\"b""#)), Some(Cow::Owned(s)) if s == "a\"b")
            );
            assert_eq!(content("3"), None);
            assert_eq!(content("null"), None);
        }
    }
}
