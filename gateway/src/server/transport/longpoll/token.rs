//! LongPoll session tokens: which node owns the session and the session's id there,
//! signed with HMAC-SHA256 under the cluster-wide LongPoll key, so any node can
//! verify a token and route the request to its owner, and nobody without the key can
//! forge or guess one.
//!
//! Layout, base64url without padding:
//!
//! ```text
//! u8 version (1)
//! u64 session id (big-endian), u64 owner incarnation (big-endian)
//! owner node name (UTF-8, the rest up to the MAC)
//! [u8; 32] HMAC-SHA256(key, everything above)
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chorus_engine::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 1 + 8 + 8;
/// Longer tokens are refused before any decoding (a node name is short).
const MAX_TOKEN_LEN: usize = 512;

/// What a verified token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRef {
    /// The node the session lives on.
    pub owner: NodeId,
    /// The session's connection id on that node.
    pub id: u64,
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// Derives the LongPoll key from a cluster secret: `HMAC-SHA256(secret, "chorus longpoll v1")`.
/// Every node of a cluster derives the same key, so any node verifies any token.
pub fn derive_key(cluster_secret: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_secret)
        .expect("HMAC takes a key of any length");
    mac.update(b"chorus longpoll v1");
    mac.finalize().into_bytes().into()
}

/// Signs a token for session `session.id` on `session.owner`.
pub fn sign(key: &[u8; 32], session: &SessionRef) -> String {
    let name = session.owner.name.as_bytes();
    let mut bytes = Vec::with_capacity(HEADER_LEN + name.len() + MAC_LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(&session.id.to_be_bytes());
    bytes.extend_from_slice(&session.owner.incarnation.to_be_bytes());
    bytes.extend_from_slice(name);
    let mut m = mac(key);
    m.update(&bytes);
    bytes.extend_from_slice(&m.finalize().into_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Verifies a token; `None` for anything not signed by `key` in this format.
pub fn verify(key: &[u8; 32], token: &str) -> Option<SessionRef> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let signed_len = bytes.len().checked_sub(MAC_LEN)?;
    if signed_len < HEADER_LEN || bytes[0] != VERSION {
        return None;
    }
    let (signed, tag) = bytes.split_at(signed_len);
    let mut m = mac(key);
    m.update(signed);
    m.verify_slice(tag).ok()?;
    let id = u64::from_be_bytes(signed[1..9].try_into().expect("8 bytes"));
    let incarnation = u64::from_be_bytes(signed[9..17].try_into().expect("8 bytes"));
    let name = std::str::from_utf8(&signed[HEADER_LEN..]).ok()?;
    Some(SessionRef {
        owner: NodeId::new(name, incarnation),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRef {
        SessionRef {
            owner: NodeId::new("node-a", 42),
            id: 7,
        }
    }

    #[test]
    fn round_trips() {
        let key = [3; 32];
        let token = sign(&key, &session());
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(verify(&key, &token), Some(session()));
    }

    #[test]
    fn refuses_other_keys_and_any_altered_byte() {
        let key = [3; 32];
        let token = sign(&key, &session());
        assert_eq!(verify(&[4; 32], &token), None);
        let bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 1;
            assert_eq!(
                verify(&key, &URL_SAFE_NO_PAD.encode(altered)),
                None,
                "byte {i}"
            );
        }
        for cut in 0..bytes.len() {
            let short = URL_SAFE_NO_PAD.encode(&bytes[..cut]);
            assert_eq!(verify(&key, &short), None, "cut at {cut}");
        }
        for junk in ["", "null", "not a token", &"A".repeat(600)] {
            assert_eq!(verify(&key, junk), None);
        }
    }

    #[test]
    fn derived_keys_depend_on_the_secret() {
        assert_eq!(derive_key(b"secret one"), derive_key(b"secret one"));
        assert_ne!(derive_key(b"secret one"), derive_key(b"secret two"));
    }
}
