//! Session tests: frames fed exactly as phoenix.js and the reference capture
//! (`shared/reference/phoenix-1.7.24-frames.txt`) send them, exact output asserted.
//!
//! Note on key order: Chorus writes replies as `{"status":..,"response":..}`; the
//! capture's Phoenix wrote `{"response":..,"status":..}`. JSON objects are unordered
//! and phoenix.js reads them by key, so expectations use Chorus's order.

mod channels;
mod crash;
mod pitfalls;
mod presence;
mod rows;

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Action, JoinCounts, Session, SessionConfig};
use crate::protocol::{
    decode_binary, decode_text, encode_broadcast, JsonObject, OutFrame, Payload, Ref, Vsn,
};

/// What channels did that the wire does not show (terminate calls).
pub(super) type Log = Arc<Mutex<Vec<String>>>;

/// A session over the test router, with the assigns the capture's users had.
pub(super) struct Harness {
    pub session: Session,
    pub log: Log,
}

impl Harness {
    pub fn v2() -> Self {
        Self::new(Vsn::V2, SessionConfig::default())
    }

    pub fn v1() -> Self {
        Self::new(Vsn::V1, SessionConfig::default())
    }

    pub fn new(vsn: Vsn, config: SessionConfig) -> Self {
        let log = Log::default();
        let mut assigns = super::Assigns::new();
        assigns.insert("user_id".into(), "alice".into());
        let session = Session::new(vsn, channels::router(&log), config)
            .with_id(Some("users_socket:alice".into()))
            .with_assigns(assigns);
        Self { session, log }
    }

    /// Feeds one text frame, as the transport would after decoding it.
    pub fn send(&mut self, text: &str) {
        let frame = decode_text(self.session.vsn(), text).expect("a valid test frame");
        self.session.handle_frame(frame).expect("a short topic");
    }

    /// Feeds one binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) {
        let frame = decode_binary(self.session.vsn(), Bytes::copy_from_slice(bytes))
            .expect("a valid binary frame");
        self.session.handle_frame(frame).expect("a short topic");
    }

    /// Feeds one text frame and returns the frames it produced.
    pub fn exchange(&mut self, text: &str) -> Vec<String> {
        self.send(text);
        self.frames()
    }

    /// Delivers a broadcast the way the driver would, encoded once.
    pub fn broadcast(&mut self, topic: &str, event: &str, payload: Payload) {
        let encoded = encode_broadcast(topic, event, payload).expect("encodable");
        self.session.handle_broadcast(&encoded);
    }

    /// Drains the frames: text as is, binary as `BINARY(len) hex=..` like the capture.
    pub fn frames(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.session.poll_transmit())
            .map(|frame| match frame {
                OutFrame::Text(_) => frame.as_text().expect("utf-8 text").to_owned(),
                OutFrame::Binary(bytes) => format!("BINARY({}) hex={}", bytes.len(), hex(&bytes)),
            })
            .collect()
    }

    pub fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.session.poll_action()).collect()
    }

    /// Drains and returns the channel log.
    pub fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().expect("log lock"))
    }

    /// Joins `topic` with `join_ref` and checks the ok reply, discarding the outputs.
    pub fn join(&mut self, topic: &str, join_ref: &str) {
        let frames = self.exchange(&format!(
            r#"["{join_ref}","{join_ref}","{topic}","phx_join",{{}}]"#
        ));
        assert_eq!(
            frames.first().map(String::as_str),
            Some(format!(r#"["{join_ref}","{join_ref}","{topic}","phx_reply",{{"status":"ok","response":{{}}}}]"#).as_str())
        );
        let _ = self.actions();
    }
}

pub(super) fn r(text: &str) -> Ref {
    Ref::string(text)
}

pub(super) fn json(text: &str) -> Payload {
    Payload::Json(obj(text))
}

pub(super) fn obj(text: &str) -> JsonObject {
    JsonObject::from_json(text).expect("test JSON object")
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("test hex"))
        .collect()
}

pub(super) fn subscribe(topic: &str, join_ref: &str) -> Action {
    Action::Subscribe {
        topic: topic.into(),
        join_ref: r(join_ref),
    }
}

pub(super) fn unsubscribe(topic: &str, join_ref: &str) -> Action {
    Action::Unsubscribe {
        topic: topic.into(),
        join_ref: r(join_ref),
    }
}

pub(super) fn untrack_all(topic: &str, join_ref: &str) -> Action {
    Action::UntrackAll {
        topic: topic.into(),
        join_ref: r(join_ref),
    }
}

/// The Track the test room channel makes after its join.
pub(super) fn track_alice(topic: &str, join_ref: &str) -> Action {
    Action::Track {
        topic: topic.into(),
        join_ref: r(join_ref),
        key: "alice".into(),
        meta: obj(r#"{"online_at":"1795674323"}"#),
    }
}
