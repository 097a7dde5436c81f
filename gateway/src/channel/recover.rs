//! Recoverable topics (PROTOCOL.md of this repository): how a broadcast is
//! kept in the topic's replicated log, how the node hands a logged entry to
//! the channels, and the client-facing `_id` and `_pos` strings.
//!
//! - A **log entry** of a recoverable broadcast is the JSON object
//!   `{"_r":1,"e":event,"h":0|1,"p":payload}`: `h` says whether it is a saved
//!   message (one `messages_history` lists). Other history entries (topics
//!   that are not recoverable) are the saved message itself.
//! - The topic dispatcher hands each newly accepted entry to the channels as
//!   the internal broadcast [`LOGGED_EVENT`] with payload
//!   `{"o":name,"i":incarnation,"s":seq,"t":time_ms,"b":entry}`, with a
//!   [`Fanout`] attached; a channel of a recoverable topic intercepts it and
//!   sends the entry's event with `_id` and `_pos` added, as a broadcast
//!   frame shared by every channel at the same position. Nothing else ever
//!   sees the internal event.
//! - `_pos` is the base64url (no padding) of [`Position::to_bytes`], with
//!   the time it was handed out; `_id` is the same encoding of the one-origin
//!   position `{origin: seq}` at time 0, unique within the topic and the
//!   same on every node. A channel's own position carries no time.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use chorus_engine::{NodeId, Position, Stamp, MAX_POSITION_BYTES};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cluster::unix_ms;
use crate::protocol::{Encoded, JsonObject};

/// The internal event a logged entry travels under, from the topic
/// dispatcher to the channels' `handle_out`. Starts with a control
/// character, so no configured or client event can be named so.
pub const LOGGED_EVENT: &str = "\u{1}logged";

const PREFIX: &str = "{\"_r\":1,";

/// A recoverable broadcast as kept in the log.
#[derive(Debug, Deserialize)]
pub struct Entry {
    /// The event pushed to clients.
    #[serde(rename = "e")]
    pub event: String,
    /// Whether it is a saved message (`messages_history` lists it).
    #[serde(rename = "h")]
    pub saved: u8,
    /// The payload, a JSON object.
    #[serde(rename = "p")]
    pub payload: Box<RawValue>,
}

/// The log entry of a broadcast of `event` with `payload`.
pub fn entry(event: &str, payload: &JsonObject, saved: bool) -> JsonObject {
    let event = serde_json::to_string(event).expect("a string serializes");
    let text = format!(
        "{PREFIX}\"e\":{event},\"h\":{},\"p\":{}}}",
        u8::from(saved),
        payload.as_str()
    );
    JsonObject::from_json(text).expect("an object of valid JSON parts")
}

/// Whether a log body is a recoverable broadcast's entry.
pub fn is_entry(body: &str) -> bool {
    body.starts_with(PREFIX)
}

/// Parses a log body written by [`entry`]; `None` for other history.
pub fn parse_entry(body: &str) -> Option<Entry> {
    if !is_entry(body) {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// The payload the dispatcher hands the channels for a logged entry.
pub fn logged(stamp: &Stamp, body: &str) -> JsonObject {
    let name = serde_json::to_string(stamp.origin.name.as_str()).expect("a string serializes");
    let text = format!(
        "{{\"o\":{name},\"i\":{},\"s\":{},\"t\":{},\"b\":{body}}}",
        stamp.origin.incarnation, stamp.seq, stamp.time_ms
    );
    JsonObject::from_json(text).expect("an entry is a JSON object")
}

/// A logged entry as a channel receives it.
#[derive(Debug, Deserialize)]
pub struct Logged {
    #[serde(rename = "o")]
    name: String,
    #[serde(rename = "i")]
    incarnation: u64,
    #[serde(rename = "s")]
    seq: u64,
    #[serde(rename = "t")]
    time_ms: u64,
    #[serde(rename = "b")]
    body: Box<RawValue>,
}

impl Logged {
    /// Parses [`logged`]'s payload.
    pub fn parse(payload: &str) -> Option<(Stamp, Box<RawValue>)> {
        let l: Logged = serde_json::from_str(payload).ok()?;
        Some((
            Stamp {
                time_ms: l.time_ms,
                origin: NodeId::new(&l.name, l.incarnation),
                seq: l.seq,
            },
            l.body,
        ))
    }
}

/// One logged entry's frame, shared by the channels of this node that push
/// it from the same position: the first to push it with nothing pending
/// ahead ([`Fanout::offer`]) leaves its position before, its position after
/// and the broadcast frame (`_id`, and `_pos` = `after`); any other channel
/// whose position equals `before` sends the same frame and takes `after`.
/// So the entry is encoded once per node wherever the bytes are the same,
/// and `_pos` still covers exactly what each client received. The
/// dispatcher attaches one to each logged delivery.
#[derive(Debug, Default)]
pub struct Fanout {
    first: OnceLock<Fast>,
}

/// What [`Fanout`] holds once a channel pushed its entry.
#[derive(Debug)]
pub struct Fast {
    /// The position the frame was made for (before the entry).
    pub before: Arc<Position>,
    /// `before` with the entry: the frame's `_pos`.
    pub after: Arc<Position>,
    /// `[null, null, topic, event, payload + _id + _pos]`.
    pub frame: Arc<Encoded>,
}

impl Fanout {
    /// The shared frame, if a channel made one.
    pub fn get(&self) -> Option<&Fast> {
        self.first.get()
    }

    /// Offers the frame made for `fast.before`; the first offer stays.
    pub fn offer(&self, fast: Fast) {
        let _ = self.first.set(fast);
    }

    /// The frame for a client at `pos` (its `after`), if one was made for
    /// that position: the same `Arc` (the usual case, as every client that
    /// took the previous frame holds its `after`) or an equal vector.
    pub fn for_position(&self, pos: &Arc<Position>) -> Option<&Fast> {
        self.get()
            .filter(|fast| Arc::ptr_eq(&fast.before, pos) || *fast.before == **pos)
    }
}

/// The client-facing string of a position (`_pos`, `pos`), handed out now:
/// it carries this node's wall clock, which bounds from below the stamps of
/// what is published after it (`Records::since`).
pub fn encode_pos(pos: &Position) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pos.to_bytes_at(unix_ms()))
}

/// A position a client sent back (`since`); `None` if it is not one.
pub fn decode_pos(text: &str) -> Option<Position> {
    if text.len() > MAX_POSITION_BYTES * 4 / 3 + 4 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    Position::from_bytes(&bytes)
}

/// The stable id of the entry stamped `stamp` (`_id`).
pub fn message_id(stamp: &Stamp) -> String {
    let mut one = Position::default();
    one.advance(&stamp.origin, stamp.seq);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(one.to_bytes_at(0))
}

/// `payload` (a JSON object) with `"_id"` and `"_pos"` added at its end.
pub fn with_pos(payload: &str, id: &str, pos: &str) -> Option<JsonObject> {
    let body = payload.trim_end().strip_suffix('}')?;
    let sep = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    JsonObject::from_json(format!("{body}{sep}\"_id\":\"{id}\",\"_pos\":\"{pos}\"}}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_logged_payloads_round_trip() {
        let payload = JsonObject::from_json(r#"{"body":"hi"}"#).unwrap();
        let e = entry("new_message", &payload, true);
        assert!(is_entry(e.as_str()));
        let parsed = parse_entry(e.as_str()).expect("an entry");
        assert_eq!(parsed.event, "new_message");
        assert_eq!(parsed.saved, 1);
        assert_eq!(parsed.payload.get(), r#"{"body":"hi"}"#);
        assert!(parse_entry(r#"{"id":"x","body":"old history"}"#).is_none());
        let stamp = Stamp {
            time_ms: 9,
            origin: NodeId::new("n\"1", 3),
            seq: 4,
        };
        let l = logged(&stamp, e.as_str());
        let (back, body) = Logged::parse(l.as_str()).expect("parses");
        assert_eq!(back, stamp);
        assert_eq!(body.get(), e.as_str());
    }

    #[test]
    fn a_fanout_frame_serves_exactly_the_clients_at_its_position() {
        use crate::protocol::{encode_broadcast, Payload};

        let a = NodeId::new("a", 1);
        let at = |n: u64| {
            let mut p = Position::default();
            p.advance(&a, n);
            Arc::new(p)
        };
        let frame = |n: u64| {
            let payload = JsonObject::from_json(format!("{{\"n\":{n}}}")).unwrap();
            Arc::new(encode_broadcast("chat:x", "message", Payload::Json(payload)).unwrap())
        };
        let fanout = Fanout::default();
        assert!(fanout.for_position(&at(1)).is_none(), "nothing offered yet");
        let before = at(1);
        fanout.offer(Fast {
            before: before.clone(),
            after: at(2),
            frame: frame(2),
        });
        // The first offer stays.
        fanout.offer(Fast {
            before: at(5),
            after: at(6),
            frame: frame(6),
        });
        let same = fanout.for_position(&before).expect("the same Arc");
        assert_eq!(*same.after, *at(2));
        assert!(Arc::ptr_eq(&same.frame, &fanout.get().unwrap().frame));
        assert!(fanout.for_position(&at(1)).is_some(), "an equal vector");
        assert!(fanout.for_position(&at(0)).is_none(), "behind it");
        assert!(fanout.for_position(&at(5)).is_none(), "ahead of it");
        let mut other = (*at(1)).clone();
        other.advance(&NodeId::new("b", 1), 1);
        assert!(
            fanout.for_position(&Arc::new(other)).is_none(),
            "another origin's message too"
        );
    }

    #[test]
    fn positions_and_ids_are_opaque_strings_that_round_trip() {
        let mut p = Position::default();
        p.advance(&NodeId::new("a", 1), 5);
        let before = unix_ms();
        let text = encode_pos(&p);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let back = decode_pos(&text).expect("a position");
        assert_eq!(back.seqs, p.seqs);
        assert!(back.time_ms >= before, "stamped when handed out");
        assert_eq!(decode_pos("not base64!"), None);
        assert_eq!(decode_pos("AAAA"), None);
        assert_eq!(decode_pos(&"A".repeat(100_000)), None);
        let stamp = Stamp {
            time_ms: 1,
            origin: NodeId::new("a", 1),
            seq: 2,
        };
        assert_eq!(
            message_id(&stamp),
            message_id(&Stamp {
                time_ms: 2,
                ..stamp.clone()
            }),
            "an id does not depend on time"
        );
        assert_ne!(
            message_id(&stamp),
            message_id(&Stamp {
                seq: 3,
                ..stamp.clone()
            })
        );
        assert_eq!(
            with_pos(r#"{"a":1}"#, "I", "P").unwrap().as_str(),
            r#"{"a":1,"_id":"I","_pos":"P"}"#
        );
        assert_eq!(
            with_pos("{ }", "I", "P").unwrap().as_str(),
            r#"{ "_id":"I","_pos":"P"}"#
        );
    }
}
