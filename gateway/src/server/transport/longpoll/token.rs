//! LongPoll session tokens: which node owns the session and the session's id there,
//! and what the session is bound to, signed with HMAC-SHA256 under the
//! cluster-wide LongPoll key, so any node can verify a token, check the binding
//! and route the request to its owner, and nobody without the key can forge or
//! guess one.
//!
//! **Binding.** A session token alone is not a credential: it is bound to the
//! connect request that started the session, its query params (the app's token,
//! for phoenix.js `params: {token}`) and its `X-Phoenix-AuthToken` header (the
//! `authToken` option). Every request must carry the same params (phoenix.js
//! sends them with every request), and a GET the same header (phoenix.js sends
//! it on every GET, never on a POST); a POST carrying a header must carry the
//! same. So another user's JWT beside a stolen session token gets 403. The
//! token holds keyed digests ([`Binding`]), not the credentials.
//!
//! Layout, base64url without padding:
//!
//! ```text
//! u8 version (2; version 1 tokens, which had no binding, are refused)
//! u64 session id (big-endian), u64 owner incarnation (big-endian)
//! [u8; 16] params digest, [u8; 16] auth-token digest (see Binding)
//! owner node name (UTF-8, the rest up to the MAC)
//! [u8; 32] HMAC-SHA256(key, everything above)
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chorus_engine::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 2;
const MAC_LEN: usize = 32;
const DIGEST_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 8 + 8 + 2 * DIGEST_LEN;
/// Longer tokens are refused before any decoding: 81 fixed bytes and a node
/// name of at most 255 bytes are 448 characters of base64url.
const MAX_TOKEN_LEN: usize = 512;

/// What a verified token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRef {
    /// The node the session lives on.
    pub owner: NodeId,
    /// The session's connection id on that node.
    pub id: u64,
    /// The connect request the session is bound to.
    pub binding: Binding,
}

/// Keyed digests of what started a session: `HMAC-SHA256(key, label ||
/// fields)`, cut to 16 bytes (inside the token's MAC, so 128 bits is plenty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// The query params, in order, without the session token's own pair.
    pub params: [u8; DIGEST_LEN],
    /// The `X-Phoenix-AuthToken` header, or its absence.
    pub auth: [u8; DIGEST_LEN],
}

impl Binding {
    /// The binding of a request: its query `pairs` (a `token` pair whose value
    /// is `session_token` is left out) and its auth-token header.
    pub fn of<'a>(
        key: &[u8; 32],
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
        session_token: Option<&str>,
        auth_token: Option<&str>,
    ) -> Self {
        let mut params = mac(key);
        params.update(b"chorus longpoll params v1");
        for (k, v) in pairs {
            if k == "token" && Some(v) == session_token {
                continue;
            }
            for part in [k, v] {
                params.update(&(part.len() as u64).to_be_bytes());
                params.update(part.as_bytes());
            }
        }
        Self {
            params: cut(params),
            auth: auth_digest(key, auth_token),
        }
    }
}

/// The digest of an auth-token header (or of its absence).
pub fn auth_digest(key: &[u8; 32], auth_token: Option<&str>) -> [u8; DIGEST_LEN] {
    let mut auth = mac(key);
    auth.update(b"chorus longpoll auth v1");
    match auth_token {
        Some(t) => {
            auth.update(&[1]);
            auth.update(t.as_bytes());
        }
        None => auth.update(&[0]),
    }
    cut(auth)
}

fn cut(m: Hmac<Sha256>) -> [u8; DIGEST_LEN] {
    let full = m.finalize().into_bytes();
    full[..DIGEST_LEN]
        .try_into()
        .expect("a SHA-256 MAC has 32 bytes")
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
    bytes.extend_from_slice(&session.binding.params);
    bytes.extend_from_slice(&session.binding.auth);
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
    let binding = Binding {
        params: signed[17..33].try_into().expect("16 bytes"),
        auth: signed[33..49].try_into().expect("16 bytes"),
    };
    let name = std::str::from_utf8(&signed[HEADER_LEN..]).ok()?;
    Some(SessionRef {
        owner: NodeId::new(name, incarnation),
        id,
        binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRef {
        SessionRef {
            owner: NodeId::new("node-a", 42),
            id: 7,
            binding: Binding {
                params: [5; 16],
                auth: [6; 16],
            },
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
    fn a_name_of_255_bytes_fits() {
        let key = [3; 32];
        let mut s = session();
        s.owner = NodeId::new("n".repeat(255).as_str(), u64::MAX);
        let token = sign(&key, &s);
        assert!(token.len() <= MAX_TOKEN_LEN, "{}", token.len());
        assert_eq!(verify(&key, &token), Some(s));
    }

    #[test]
    fn bindings_cover_params_but_the_session_token_and_the_auth_header() {
        let key = [3; 32];
        let pairs = |q: &'static [(&'static str, &'static str)]| q.iter().copied();
        let first = Binding::of(
            &key,
            pairs(&[("token", "jwt-a"), ("vsn", "2.0.0")]),
            None,
            None,
        );
        let later = Binding::of(
            &key,
            pairs(&[("token", "jwt-a"), ("vsn", "2.0.0"), ("token", "SESSION")]),
            Some("SESSION"),
            None,
        );
        assert_eq!(first, later, "phoenix.js appends the session token");
        let other_user = Binding::of(
            &key,
            pairs(&[("token", "jwt-b"), ("vsn", "2.0.0"), ("token", "SESSION")]),
            Some("SESSION"),
            None,
        );
        assert_ne!(first.params, other_user.params);
        let no_params = Binding::of(&key, pairs(&[("token", "SESSION")]), Some("SESSION"), None);
        assert_ne!(first.params, no_params.params);
        let with_header = Binding::of(&key, pairs(&[]), None, Some("jwt-a"));
        assert_ne!(
            with_header.auth,
            Binding::of(&key, pairs(&[]), None, None).auth
        );
        assert_ne!(with_header.auth, auth_digest(&key, Some("jwt-b")));
        assert_ne!(
            with_header.auth,
            auth_digest(&[4; 32], Some("jwt-a")),
            "keyed"
        );
        // Pairs are length-prefixed: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            Binding::of(&key, pairs(&[("ab", "c")]), None, None).params,
            Binding::of(&key, pairs(&[("a", "bc")]), None, None).params
        );
    }

    #[test]
    fn derived_keys_depend_on_the_secret() {
        assert_eq!(derive_key(b"secret one"), derive_key(b"secret one"));
        assert_ne!(derive_key(b"secret one"), derive_key(b"secret two"));
    }
}
