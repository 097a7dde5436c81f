//! The bodies of Chorus's fuzz targets, one module per target, each a plain
//! `run(data: &[u8])`. The libFuzzer binaries in `fuzz_targets/` call them on
//! nightly (`make fuzz`); `tests/replay.rs` calls them on stable for every file
//! under `corpus/<target>/` and `regressions/<target>/` (`make test`), so a crash
//! found once stays fixed.
//!
//! A target panics only on a bug: a decoder that panics, or a decoded value that
//! breaks what the decoder promises (a field over its limit, a codec that does
//! not round-trip, a node that breaks an invariant).

pub mod api_body;
pub mod connect_query;
pub mod gossip_codec;
pub mod jwt;
pub mod longpoll_body;
pub mod longpoll_token;
pub mod node_messages;
pub mod phoenix;
pub mod subprotocol;
pub mod ws_client_frames;

pub use phoenix::{frame_v1_json, frame_v2_binary, frame_v2_json};

/// A target's body: one input, panics on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_v1_json", frame_v1_json::run),
    ("frame_v2_json", frame_v2_json::run),
    ("frame_v2_binary", frame_v2_binary::run),
    ("connect_query", connect_query::run),
    ("subprotocol", subprotocol::run),
    ("jwt", jwt::run),
    ("longpoll_body", longpoll_body::run),
    ("longpoll_token", longpoll_token::run),
    ("api_body", api_body::run),
    ("gossip_codec", gossip_codec::run),
    ("node_messages", node_messages::run),
    ("node_deltas", node_messages::run_forged),
    ("ws_client_frames", ws_client_frames::run),
];
