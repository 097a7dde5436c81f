//! Engine presence items as Phoenix presence payloads.

use chorus_engine::PresenceItem;
use tracing::warn;

use crate::channel::{PresenceEntry, StateWriter};
use crate::protocol::JsonObject;

/// The `presence_state` payload of engine presence items, written straight
/// from them: the engine lists a topic sorted by key, and its metas are JSON
/// objects (checked when tracked, and when a peer's delta is decoded), so
/// nothing is parsed or copied per meta. Should a meta still not be one, the
/// result is the entries path's, which leaves such metas out: the
/// connection or API request rendering it must not die of a peer's bug.
pub fn state_json(items: &[PresenceItem]) -> JsonObject {
    let mut w = StateWriter::with_capacity(items.len());
    for item in items {
        let phx_ref = item.phx_ref.encode();
        let prev = item.prev_ref.map(|p| p.encode());
        w.push(
            item.key.as_str(),
            ref_text(&phx_ref),
            prev.as_ref().map(ref_text),
            item.meta.as_str(),
        );
    }
    match w.finish() {
        Ok(state) if items.iter().all(|i| braced(i.meta.as_str())) => state,
        _ => crate::channel::presence_state(&entries(items)),
    }
}

/// Whether `meta` is shaped like an object: the writer splices what is
/// between its braces, so `[1]` or `"x"` would come out as an empty meta.
fn braced(meta: &str) -> bool {
    let m = meta.trim_ascii();
    m.starts_with('{') && m.ends_with('}')
}

fn ref_text(encoded: &[u8; 16]) -> &str {
    std::str::from_utf8(encoded).expect("phx_refs are url-safe base64")
}

/// Engine presence items as the session's presence entries. A meta that is not a
/// JSON object (a peer bug) is left out with a warning.
pub fn entries(items: &[PresenceItem]) -> Vec<PresenceEntry> {
    items
        .iter()
        .filter_map(|item| {
            let meta = match JsonObject::from_json(item.meta.as_str()) {
                Ok(meta) => meta,
                Err(e) => {
                    warn!(key = %item.key, error = %e, "skipping a presence meta that is not a JSON object");
                    return None;
                }
            };
            let phx_ref = String::from_utf8_lossy(&item.phx_ref.encode()).into_owned();
            let mut entry = PresenceEntry::new(item.key.as_str(), phx_ref, meta);
            if let Some(prev) = item.prev_ref {
                entry = entry.with_prev(String::from_utf8_lossy(&prev.encode()).into_owned());
            }
            Some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct writer and the entries path give the same bytes.
    #[test]
    fn state_json_matches_presence_state_of_the_entries() {
        use chorus_engine::{Meta, PhxRef};
        let item = |key: &str, r: u8, prev: Option<u8>, meta: &str| PresenceItem {
            key: key.into(),
            phx_ref: PhxRef([r; 12]),
            prev_ref: prev.map(|p| PhxRef([p; 12])),
            meta: Meta::new(meta),
        };
        let items = [
            item("alice", 1, None, r#"{"online_at":"1795674323"}"#),
            item("alice", 2, Some(1), r#"{"typing":true}"#),
            item("b\"ob", 3, None, "{}"),
            item("carol", 4, None, r#"{"n":[1,{"x":"}"}]}"#),
        ];
        let expected = crate::channel::presence_state(&entries(&items));
        assert_eq!(state_json(&items).as_str(), expected.as_str());
        assert_eq!(state_json(&[]).as_str(), "{}");
    }

    /// A meta from a peer that is not a JSON object is left out, as the
    /// entries path leaves it out; it used to reach an `expect` and kill the
    /// connection task (or the API request) rendering the state.
    #[test]
    fn state_json_leaves_out_metas_that_are_not_objects() {
        use chorus_engine::{Meta, PhxRef};
        let item = |key: &str, r: u8, meta: &str| PresenceItem {
            key: key.into(),
            phx_ref: PhxRef([r; 12]),
            prev_ref: None,
            meta: Meta::new(meta),
        };
        for bad in [r#"{"a":}"#, "[1]", "1", r#""x""#, "{", "", r#"{"a":1}}"#] {
            let items = [
                item("alice", 1, r#"{"a":1}"#),
                item("mallory", 2, bad),
                item("zed", 3, "{}"),
            ];
            let expected = crate::channel::presence_state(&entries(&items));
            assert_eq!(state_json(&items).as_str(), expected.as_str(), "{bad}");
            assert!(!expected.as_str().contains("mallory"), "{bad}");
        }
    }
}
