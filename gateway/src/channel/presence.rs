//! Presence payloads in Phoenix's exact shape, spliced from pre-encoded metas.
//!
//! `presence_state` is `{"<key>":{"metas":[{"phx_ref":..,"phx_ref_prev":..,..meta}]}}`
//! and `presence_diff` is `{"joins":<state shape>,"leaves":<state shape>}`
//! (PROTOCOL.md §5.1). Keys come out sorted (as Phoenix's small maps do); the metas
//! of a key keep the order they were given in. An update is one diff with the new
//! meta (carrying `phx_ref_prev`) in `joins` and the old meta in `leaves`.

use crate::protocol::{FrameError, JsonObject};

/// One presence meta of one key, as the presence system hands it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The presence key, e.g. a user id.
    pub key: String,
    /// The meta's unique ref.
    pub phx_ref: String,
    /// On an updated meta, the ref of the meta it replaced.
    pub phx_ref_prev: Option<String>,
    /// The application's meta object, without `phx_ref`/`phx_ref_prev`.
    pub meta: JsonObject,
}

impl PresenceEntry {
    /// A freshly tracked meta.
    pub fn new(key: impl Into<String>, phx_ref: impl Into<String>, meta: JsonObject) -> Self {
        Self {
            key: key.into(),
            phx_ref: phx_ref.into(),
            phx_ref_prev: None,
            meta,
        }
    }

    /// The same meta marked as replacing `prev` (an update).
    pub fn with_prev(self, prev: impl Into<String>) -> Self {
        Self {
            phx_ref_prev: Some(prev.into()),
            ..self
        }
    }
}

/// The `presence_state` payload for `entries`.
pub fn presence_state(entries: &[PresenceEntry]) -> JsonObject {
    let mut out = String::with_capacity(64 * entries.len() + 2);
    write_state(&mut out, entries);
    into_object(out)
}

/// The `presence_diff` payload: `{"joins":{..},"leaves":{..}}`.
pub fn presence_diff(joins: &[PresenceEntry], leaves: &[PresenceEntry]) -> JsonObject {
    let mut out = String::with_capacity(64 * (joins.len() + leaves.len()) + 24);
    out.push_str(r#"{"joins":"#);
    write_state(&mut out, joins);
    out.push_str(r#","leaves":"#);
    write_state(&mut out, leaves);
    out.push('}');
    into_object(out)
}

/// Applies a diff to a state the way phoenix.js's `syncDiff` does: joins first (a
/// meta with the same `phx_ref` is replaced), then leaves (removed by `phx_ref`).
pub(crate) fn apply_diff(
    state: &mut Vec<PresenceEntry>,
    joins: &[PresenceEntry],
    leaves: &[PresenceEntry],
) {
    // One pass over the state per diff, not one per item: a join storm would
    // otherwise cost O(users) per joined user on every connection.
    let gone: std::collections::HashSet<(&str, &str)> = joins
        .iter()
        .chain(leaves)
        .map(|e| (e.key.as_str(), e.phx_ref.as_str()))
        .collect();
    let left: std::collections::HashSet<(&str, &str)> = leaves
        .iter()
        .map(|e| (e.key.as_str(), e.phx_ref.as_str()))
        .collect();
    state.retain(|e| !gone.contains(&(e.key.as_str(), e.phx_ref.as_str())));
    state.extend(
        joins
            .iter()
            .filter(|j| !left.contains(&(j.key.as_str(), j.phx_ref.as_str())))
            .cloned(),
    );
}

/// Drops `phx_ref` and `phx_ref_prev` from an application meta, so the spliced refs
/// are the only ones. Metas without them (the normal case) are returned untouched.
pub(crate) fn strip_reserved(meta: JsonObject) -> JsonObject {
    if !meta.as_str().contains("phx_ref") {
        return meta;
    }
    let parsed: Result<serde_json::Map<String, serde_json::Value>, _> =
        serde_json::from_str(meta.as_str());
    let Ok(mut map) = parsed else {
        return meta;
    };
    let removed = map.remove("phx_ref").is_some() | map.remove("phx_ref_prev").is_some();
    if !removed {
        return meta;
    }
    JsonObject::from_value(&map).unwrap_or(meta)
}

/// Writes `{"key":{"metas":[..]},..}`, keys sorted, metas in input order.
fn write_state(out: &mut String, entries: &[PresenceEntry]) {
    let mut sorted: Vec<&PresenceEntry> = entries.iter().collect();
    if !sorted.is_sorted_by(|a, b| a.key <= b.key) {
        // Stable: the metas of a key keep their order.
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
    }
    let mut w = StateWriter::into(std::mem::take(out));
    for e in sorted {
        w.push(
            &e.key,
            &e.phx_ref,
            e.phx_ref_prev.as_deref(),
            e.meta.as_str(),
        );
    }
    *out = w.finish_string();
}

/// Writes a `presence_state` shaped object from metas handed in sorted by key
/// (the metas of one key next to each other), straight from borrowed parts:
/// no per-meta copies, maps or allocations. The engine lists a topic's
/// presences in this order, so a joining client's `presence_state` is one pass.
pub struct StateWriter {
    out: String,
    /// The key whose `metas` array is open, if any.
    open: Option<String>,
}

impl StateWriter {
    /// A writer with room for about `metas` metas.
    pub fn with_capacity(metas: usize) -> Self {
        Self::into(String::with_capacity(64 * metas + 2))
    }

    fn into(mut out: String) -> Self {
        out.push('{');
        Self { out, open: None }
    }

    /// Adds one meta. `meta` is the application's JSON object text, copied
    /// unparsed: [`StateWriter::finish`] finds out if it was not one.
    pub fn push(&mut self, key: &str, phx_ref: &str, phx_ref_prev: Option<&str>, meta: &str) {
        let out = &mut self.out;
        match &mut self.open {
            Some(open) if open == key => out.push(','),
            Some(open) => {
                debug_assert!(open.as_str() < key, "metas must come sorted by key");
                out.push_str("]},");
                open.clear();
                open.push_str(key);
                write_key(out, key);
            }
            None => {
                self.open = Some(key.to_owned());
                write_key(out, key);
            }
        }
        write_meta(out, phx_ref, phx_ref_prev, meta);
    }

    /// The finished object, or an error if a meta pushed was not a JSON
    /// object (metas from peers are checked when decoded, so this means a
    /// bug; the caller decides what to show instead).
    pub fn finish(self) -> Result<JsonObject, FrameError> {
        JsonObject::from_json(self.finish_string())
    }

    fn finish_string(mut self) -> String {
        if self.open.is_some() {
            self.out.push_str("]}");
        }
        self.out.push('}');
        self.out
    }
}

fn write_key(out: &mut String, key: &str) {
    write_str(out, key);
    out.push_str(r#":{"metas":["#);
}

/// Writes `{"phx_ref":..,"phx_ref_prev":..,<meta's own fields>}`.
fn write_meta(out: &mut String, phx_ref: &str, phx_ref_prev: Option<&str>, meta: &str) {
    out.push_str(r#"{"phx_ref":"#);
    write_str(out, phx_ref);
    if let Some(prev) = phx_ref_prev {
        out.push_str(r#","phx_ref_prev":"#);
        write_str(out, prev);
    }
    // JSON whitespace is ASCII only.
    let fields = meta
        .trim_ascii()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or("")
        .trim_ascii();
    if !fields.is_empty() {
        out.push(',');
        out.push_str(fields);
    }
    out.push('}');
}

/// A JSON string; text that needs no escaping (refs, most keys) is copied as is.
fn write_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
    }
}

fn into_object(json: String) -> JsonObject {
    JsonObject::from_json(json).expect("presence payloads are built as JSON objects")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(text: &str) -> JsonObject {
        JsonObject::from_json(text).expect("test meta")
    }

    fn alice() -> PresenceEntry {
        PresenceEntry::new(
            "alice",
            "GOuESILNw0CWmASh",
            meta(r#"{"online_at":"1795674323"}"#),
        )
    }

    fn bob() -> PresenceEntry {
        PresenceEntry::new(
            "bob",
            "GOuESJroINCWmATB",
            meta(r#"{"online_at":"1795674323"}"#),
        )
    }

    /// Capture §3: bob's `presence_state` (keys sorted, one meta each).
    #[test]
    fn state_matches_the_capture_shape() {
        let state = presence_state(&[bob(), alice()]);
        assert_eq!(
            state.as_str(),
            r#"{"alice":{"metas":[{"phx_ref":"GOuESILNw0CWmASh","online_at":"1795674323"}]},"bob":{"metas":[{"phx_ref":"GOuESJroINCWmATB","online_at":"1795674323"}]}}"#
        );
        assert_eq!(presence_state(&[]).as_str(), "{}");
    }

    /// Capture §9/§10: a join diff and a leave diff.
    #[test]
    fn join_and_leave_diffs() {
        assert_eq!(
            presence_diff(&[alice()], &[]).as_str(),
            r#"{"joins":{"alice":{"metas":[{"phx_ref":"GOuESILNw0CWmASh","online_at":"1795674323"}]}},"leaves":{}}"#
        );
        assert_eq!(
            presence_diff(&[], &[alice()]).as_str(),
            r#"{"joins":{},"leaves":{"alice":{"metas":[{"phx_ref":"GOuESILNw0CWmASh","online_at":"1795674323"}]}}}"#
        );
    }

    /// PROTOCOL.md §5.1: an update is the new meta (with `phx_ref_prev`) joined and the
    /// old meta left, in one diff; several metas of one key share its `metas` list.
    #[test]
    fn update_diff_and_multiple_metas() {
        let old = PresenceEntry::new("u1", "A", meta(r#"{"online":true}"#));
        let new = PresenceEntry::new("u1", "B", meta(r#"{ "online" : false }"#)).with_prev("A");
        assert_eq!(
            presence_diff(std::slice::from_ref(&new), std::slice::from_ref(&old)).as_str(),
            r#"{"joins":{"u1":{"metas":[{"phx_ref":"B","phx_ref_prev":"A","online" : false}]}},"leaves":{"u1":{"metas":[{"phx_ref":"A","online":true}]}}}"#
        );
        let tab2 = PresenceEntry::new("u1", "C", JsonObject::empty());
        assert_eq!(
            presence_state(&[old, tab2]).as_str(),
            r#"{"u1":{"metas":[{"phx_ref":"A","online":true},{"phx_ref":"C"}]}}"#
        );
    }

    #[test]
    fn unsorted_keys_come_out_sorted_with_their_metas_in_order() {
        let e = |key: &str, r: &str| PresenceEntry::new(key, r, JsonObject::empty());
        let entries = [e("zed", "1"), e("amy", "2"), e("zed", "0"), e("amy", "3")];
        assert_eq!(
            presence_state(&entries).as_str(),
            r#"{"amy":{"metas":[{"phx_ref":"2"},{"phx_ref":"3"}]},"zed":{"metas":[{"phx_ref":"1"},{"phx_ref":"0"}]}}"#
        );
    }

    #[test]
    fn state_writer_groups_sorted_metas() {
        let mut w = StateWriter::with_capacity(3);
        w.push("amy", "1", None, r#"{"a":1}"#);
        w.push("amy", "2", Some("1"), "{}");
        w.push("b\\q", "3", None, r#" { "x" : [1] } "#);
        assert_eq!(
            w.finish().unwrap().as_str(),
            r#"{"amy":{"metas":[{"phx_ref":"1","a":1},{"phx_ref":"2","phx_ref_prev":"1"}]},"b\\q":{"metas":[{"phx_ref":"3","x" : [1]}]}}"#
        );
        assert_eq!(
            StateWriter::with_capacity(0).finish().unwrap().as_str(),
            "{}"
        );
    }

    #[test]
    fn keys_are_escaped() {
        let odd = PresenceEntry::new("a\"b", "r", JsonObject::empty());
        assert_eq!(
            presence_state(&[odd]).as_str(),
            r#"{"a\"b":{"metas":[{"phx_ref":"r"}]}}"#
        );
        let unicode = PresenceEntry::new("zoë\n", "r", JsonObject::empty());
        assert_eq!(
            presence_state(&[unicode]).as_str(),
            r#"{"zoë\n":{"metas":[{"phx_ref":"r"}]}}"#
        );
    }

    #[test]
    fn apply_diff_joins_first_then_leaves() {
        let a = PresenceEntry::new("u1", "A", meta(r#"{"online":true}"#));
        let b = PresenceEntry::new("u1", "B", meta(r#"{"online":false}"#)).with_prev("A");
        let mut state = vec![a.clone()];
        apply_diff(
            &mut state,
            std::slice::from_ref(&b),
            std::slice::from_ref(&a),
        );
        assert_eq!(state, vec![b.clone()]);
        apply_diff(&mut state, std::slice::from_ref(&b), &[]);
        assert_eq!(state, vec![b.clone()], "re-applying a join is idempotent");
        apply_diff(&mut state, &[], &[a, b]);
        assert!(state.is_empty());
    }

    #[test]
    fn reserved_keys_are_stripped_from_metas() {
        let stripped = strip_reserved(meta(r#"{"phx_ref":"x","phx_ref_prev":"y","n":1}"#));
        assert_eq!(stripped.as_str(), r#"{"n":1}"#);
        let untouched = meta(r#"{"note":"phx_ref is a word","n":1}"#);
        assert_eq!(strip_reserved(untouched.clone()), untouched);
    }
}
