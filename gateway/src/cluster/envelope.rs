//! How a channel broadcast crosses the cluster: one compact byte encoding of
//! `(event, payload, kind)` plus an optional excluded sender, carried by the engine as
//! an opaque [`Bytes`] payload and decoded once per node on delivery.
//!
//! Layout (all lengths are big-endian):
//!
//! ```text
//! u8 version (1)
//! u8 flags        bit 0: binary payload; bit 1: an excluded sender follows
//! [u64 origin, u64 conn]   only with bit 1: the node tag and connection to skip
//! u8 len(event), event (UTF-8, at most 255 bytes)
//! payload…        the rest: JSON object text, or the raw binary payload
//! ```
//!
//! The excluded sender (`broadcast_from`) is named by the publishing node's random
//! tag and its local connection id, so only that node skips it; on every other node
//! nobody is excluded, as in Phoenix.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{FrameError, JsonObject, Payload, MAX_FIELD_LEN};

const VERSION: u8 = 1;
const FLAG_BINARY: u8 = 1;
const FLAG_EXCLUDE: u8 = 2;

/// A connection to skip on the node that published: `(node tag, connection id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exclude {
    /// The publishing node's random tag ([`Hub::origin`](super::Hub::origin)).
    pub origin: u64,
    /// The sender's connection id on that node.
    pub conn: u64,
}

/// A decoded broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The event.
    pub event: String,
    /// The payload, JSON or binary.
    pub payload: Payload,
    /// The sender to skip, for `broadcast_from`.
    pub exclude: Option<Exclude>,
}

/// Why a delivered broadcast could not be decoded (a peer on another version, or a
/// bug): the delivery is dropped with a warning.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than its header says.
    #[error("broadcast envelope truncated")]
    Truncated,
    /// An unknown format version.
    #[error("broadcast envelope version {0} is not supported")]
    Version(u8),
    /// The event is not UTF-8.
    #[error("broadcast event is not UTF-8")]
    EventNotUtf8,
    /// A JSON payload that is not a JSON object.
    #[error("broadcast payload: {0}")]
    Payload(#[from] FrameError),
}

impl Envelope {
    /// Encodes for [`chorus_engine::runtime::EngineHandle::publish`]. Fails only for an
    /// event over 255 bytes.
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        if self.event.len() > MAX_FIELD_LEN {
            return Err(FrameError::TooLong {
                field: "event",
                len: self.event.len(),
            });
        }
        let body: &[u8] = match &self.payload {
            Payload::Json(json) => json.as_str().as_bytes(),
            Payload::Binary(bytes) => bytes,
        };
        let mut out = BytesMut::with_capacity(2 + 16 + 1 + self.event.len() + body.len());
        let mut flags = 0;
        if matches!(self.payload, Payload::Binary(_)) {
            flags |= FLAG_BINARY;
        }
        if self.exclude.is_some() {
            flags |= FLAG_EXCLUDE;
        }
        out.put_u8(VERSION);
        out.put_u8(flags);
        if let Some(exclude) = self.exclude {
            out.put_u64(exclude.origin);
            out.put_u64(exclude.conn);
        }
        out.put_u8(self.event.len() as u8);
        out.put_slice(self.event.as_bytes());
        out.put_slice(body);
        Ok(out.freeze())
    }

    /// Decodes a delivered payload; a binary payload shares `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Self, EnvelopeError> {
        let header = bytes.get(..2).ok_or(EnvelopeError::Truncated)?;
        let (version, flags) = (header[0], header[1]);
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let mut at = 2;
        let exclude = if flags & FLAG_EXCLUDE != 0 {
            let ids = bytes.get(at..at + 16).ok_or(EnvelopeError::Truncated)?;
            at += 16;
            let (origin, conn) = ids.split_at(8);
            Some(Exclude {
                origin: u64::from_be_bytes(origin.try_into().expect("8 bytes")),
                conn: u64::from_be_bytes(conn.try_into().expect("8 bytes")),
            })
        } else {
            None
        };
        let len = usize::from(*bytes.get(at).ok_or(EnvelopeError::Truncated)?);
        at += 1;
        let event = bytes.get(at..at + len).ok_or(EnvelopeError::Truncated)?;
        let event = std::str::from_utf8(event)
            .map_err(|_| EnvelopeError::EventNotUtf8)?
            .to_owned();
        at += len;
        let body = bytes.slice(at..);
        let payload = if flags & FLAG_BINARY != 0 {
            Payload::Binary(body)
        } else {
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| FrameError::PayloadNotObject)
                .map_err(EnvelopeError::Payload)?;
            Payload::Json(JsonObject::from_json(text)?)
        };
        Ok(Self {
            event,
            payload,
            exclude,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Payload {
        Payload::Json(JsonObject::from_json(text).expect("object"))
    }

    #[test]
    fn round_trips_json_and_binary() {
        let cases = [
            Envelope {
                event: "new_msg".into(),
                payload: json(r#"{"body":"hi"}"#),
                exclude: None,
            },
            Envelope {
                event: "bin".into(),
                payload: Payload::Binary(Bytes::from_static(&[0, 1, 255])),
                exclude: Some(Exclude {
                    origin: u64::MAX,
                    conn: 7,
                }),
            },
        ];
        for envelope in cases {
            let bytes = envelope.encode().expect("encodes");
            assert_eq!(Envelope::decode(bytes).expect("decodes"), envelope);
        }
    }

    /// Pinned bytes: the wire format between nodes must not drift silently.
    #[test]
    fn golden_bytes() {
        let envelope = Envelope {
            event: "e".into(),
            payload: json("{}"),
            exclude: None,
        };
        assert_eq!(&envelope.encode().expect("encodes")[..], b"\x01\x00\x01e{}");
    }

    #[test]
    fn rejects_damaged_input() {
        let good = Envelope {
            event: "event".into(),
            payload: json(r#"{"a":1}"#),
            exclude: Some(Exclude { origin: 1, conn: 2 }),
        }
        .encode()
        .expect("encodes");
        for cut in 0..good.len() {
            assert!(Envelope::decode(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            Envelope::decode(Bytes::from_static(b"\x09\x00\x00{}")),
            Err(EnvelopeError::Version(9))
        ));
        assert!(Envelope::decode(Bytes::from_static(b"\x01\x00\x01e[1]")).is_err());
        let long = Envelope {
            event: "x".repeat(256),
            payload: json("{}"),
            exclude: None,
        };
        assert!(long.encode().is_err());
    }
}
