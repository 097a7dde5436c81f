//! Identifiers shared by every layer: nodes, topics, keys, connections, refs.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// One incarnation of a cluster node: its configured name plus a number that is
/// new every time the process starts, so a restarted node is a different replica.
///
/// Ordered by name, then incarnation, so iteration over nodes is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// The configured node name (`--node`), stable across restarts.
    pub name: CompactString,
    /// Chosen at start; a higher incarnation of the same name replaces a lower one.
    pub incarnation: u64,
}

impl NodeId {
    /// Builds a node id from a name and an incarnation.
    pub fn new(name: impl Into<CompactString>, incarnation: u64) -> Self {
        NodeId {
            name: name.into(),
            incarnation,
        }
    }

    /// Whether `other` is the same node name in another incarnation.
    pub fn same_name(&self, other: &NodeId) -> bool {
        self.name == other.name
    }

    /// Every incarnation of this name, as a range of the id order: a map
    /// keyed by `NodeId` finds them with `range` instead of a scan.
    pub fn incarnations(&self) -> std::ops::RangeInclusive<NodeId> {
        NodeId::new(self.name.clone(), 0)..=NodeId::new(self.name.clone(), u64::MAX)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.incarnation)
    }
}

/// A PubSub topic such as `room:42`. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Builds a topic from its text.
    pub fn new(topic: impl Into<Arc<str>>) -> Self {
        Topic(topic.into())
    }

    /// The topic text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both share one text (not just equal texts).
    pub fn same(&self, other: &Topic) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Topic {
    fn from(s: &str) -> Self {
        Topic::new(s)
    }
}

/// A presence key: usually a user id. One key may hold many metas (devices, tabs).
pub type Key = CompactString;

/// A client connection on the node that owns it (a WebSocket or LongPoll session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// A local subscriber of topics (one joined channel, usually). Only meaningful on
/// the node that created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubscriberId(pub u64);

/// A presence meta as pre-encoded JSON object text (`{"online_at":"..."}`), kept
/// encoded so `presence_state` and `presence_diff` can be spliced without
/// re-encoding. The engine never parses it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Meta(Arc<str>);

impl Meta {
    /// Wraps JSON object text. The caller guarantees it is a JSON object.
    pub fn new(json: impl Into<Arc<str>>) -> Self {
        Meta(json.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `phx_ref` of one presence meta: 12 bytes shown as 16 url-safe base64
/// characters, as Phoenix does. Unique in the cluster: 6 bytes drawn at random
/// for each node incarnation, then a 6-byte counter of that incarnation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PhxRef(pub [u8; 12]);

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl PhxRef {
    /// The ref made from a node's random prefix and an operation counter.
    pub fn from_parts(prefix: [u8; 6], counter: u64) -> Self {
        let mut b = [0u8; 12];
        b[..6].copy_from_slice(&prefix);
        b[6..].copy_from_slice(&counter.to_be_bytes()[2..]);
        PhxRef(b)
    }

    /// The 16 url-safe base64 characters (no padding: 12 bytes need none).
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, chunk) in self.0.chunks(3).enumerate() {
            let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
            for j in 0..4 {
                out[i * 4 + j] = B64URL[((n >> (18 - 6 * j)) & 63) as usize];
            }
        }
        out
    }

    /// Parses the 16-character form back; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 16 {
            return None;
        }
        let mut b = [0u8; 12];
        for (i, chunk) in s.chunks(4).enumerate() {
            let mut n = 0u32;
            for &c in chunk {
                let v = B64URL.iter().position(|&x| x == c)? as u32;
                n = (n << 6) | v;
            }
            b[i * 3] = (n >> 16) as u8;
            b[i * 3 + 1] = (n >> 8) as u8;
            b[i * 3 + 2] = n as u8;
        }
        Some(PhxRef(b))
    }
}

impl fmt::Display for PhxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enc = self.encode();
        f.write_str(std::str::from_utf8(&enc).expect("base64 alphabet is ASCII"))
    }
}

impl fmt::Debug for PhxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phx_ref_is_16_url_safe_chars_and_round_trips() {
        let r = PhxRef::from_parts([0xff, 0xfe, 0x01, 0x02, 0x03, 0x04], 0x0000_1234_5678_9abc);
        let s = r.to_string();
        assert_eq!(s.len(), 16);
        assert!(s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(PhxRef::decode(&s), Some(r));
        assert_eq!(PhxRef::decode("short"), None);
        assert_eq!(PhxRef::decode("!!!!!!!!!!!!!!!!"), None);
    }

    #[test]
    fn phx_refs_differ_by_counter_and_prefix() {
        let a = PhxRef::from_parts([1; 6], 1);
        let b = PhxRef::from_parts([1; 6], 2);
        let c = PhxRef::from_parts([2; 6], 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn node_ids_order_by_name_then_incarnation() {
        let a1 = NodeId::new("a", 1);
        let a2 = NodeId::new("a", 2);
        let b0 = NodeId::new("b", 0);
        assert!(a1 < a2 && a2 < b0);
        assert!(a1.same_name(&a2) && !a1.same_name(&b0));
        let ids = [a1.clone(), a2.clone(), b0.clone(), NodeId::new("ab", 0)];
        let named: Vec<&NodeId> = ids
            .iter()
            .filter(|id| a2.incarnations().contains(id))
            .collect();
        assert_eq!(named, [&a1, &a2]);
        assert_eq!(a2.to_string(), "a#2");
    }
}
