//! Rooms and topic history as the HTTP API reads them.
//!
//! The server hosts any channels and names none of them; a channel set that keeps
//! rooms and history (the built-in channels: [`crate::builtin::App`]) implements
//! [`RoomStore`], and `/api/rooms` and `/api/history` read it through
//! `ServerConfig::rooms`. Without one those routes answer 503.

use serde_json::value::RawValue;

/// What `/api/rooms` and `/api/history` read, and which replicated register a
/// room lives in.
pub trait RoomStore: std::fmt::Debug + Send + Sync + 'static {
    /// Messages kept per topic history: the largest `limit` `/api/history` takes.
    fn history_cap(&self) -> usize;
    /// The newest `n` history entries of `topic`, oldest first, as raw JSON.
    fn history(&self, topic: &str, n: usize) -> Vec<Box<RawValue>>;
    /// Every room, `(id, name)`, in id order.
    fn rooms(&self) -> Vec<(String, Option<String>)>;
    /// Whether room `id` exists.
    fn room_exists(&self, id: &str) -> bool;
    /// Whether room `id` comes from the config (and cannot be deleted).
    fn is_static_room(&self, id: &str) -> bool;
    /// The register space rooms are written to (`POST`/`DELETE /api/rooms`
    /// write `(space, id)` with the room's name).
    fn room_space(&self) -> &str;
    /// `GET /api/history?since=`: the all-or-nothing answer a rejoin with
    /// `since` gets (a topic that is not recoverable has no positions).
    fn history_since(&self, topic: &str, since: &str) -> serde_json::Value;
    /// Whether `topic` is recoverable: `POST /api/broadcast` then keeps a
    /// broadcast in the topic's log (delivered with `_id` and `_pos`, and
    /// recovered on rejoin) instead of publishing it on its own.
    fn recoverable(&self, topic: &str) -> bool;
}
