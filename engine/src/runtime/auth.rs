//! Cluster authentication: a proof of the cluster secret bound to the TLS
//! session, exchanged before any gossip.
//!
//! # Protocol
//!
//! Right after the QUIC handshake, the dialer opens the connection's first
//! bidirectional stream and sends its *hello*; the acceptor reads it, checks it
//! and only then answers with its own. Each hello is
//!
//! ```text
//! mac: [u8; 32] | instance: u64 BE | incarnation: u64 BE
//!     | addr_len: u8 | addr: addr_len bytes (UTF-8)
//!     | name_len: u8 | name: name_len bytes (UTF-8)
//! mac = HMAC-SHA256(secret, "chorus-auth-v2" || exporter || role || instance
//!                   || incarnation || addr_len || addr || name_len || name)
//! ```
//!
//! where `exporter` is 32 bytes of TLS keying material exported from this
//! connection (RFC 5705 / RFC 8446 §7.5, label `EXPORTER-chorus-auth-v2`),
//! `role` is 0 for the dialer and 1 for the acceptor, `instance` is a random
//! number drawn when the engine starts (it tells a restarted process apart from
//! a stale connection to its predecessor), `addr` is the sender's advertised
//! gossip address and `name`/`incarnation` its [`NodeId`]. The transport hands
//! that `NodeId` to the node with every message of the connection, and the node
//! drops a message that claims another sender (version 1 authenticated the
//! address only, and the node believed each message's `from`). MACs are compared in constant time. No gossip frame is read
//! or written, and no datagram is read, before both proofs check out; a missing
//! or wrong proof within the handshake timeout (5 s by default) closes the
//! connection with [`super::transport::codes::AUTH_FAILED`].
//!
//! # Threat model
//!
//! Trusted: every process that holds the cluster secret. Such a process may
//! publish on any topic and track anything, and it chooses its own node id
//! (the secret, not a certificate, admits it), but every message on its
//! connection then carries that id: it cannot speak as a node another
//! connection authenticated; the secret is
//! the cluster's single trust boundary, as Erlang's distribution cookie is for
//! Phoenix.Tracker, but unlike the cookie it never crosses the wire in clear.
//!
//! The attacker can reach the gossip UDP port, send anything, read and rewrite
//! all traffic on the path, and run its own QUIC endpoints. Against it:
//!
//! - **It cannot join, gossip or publish.** A node reads nothing but the hello
//!   from a connection that has not proved the secret, and QUIC datagrams
//!   received before that are never decoded.
//! - **It learns nothing about the cluster by dialing.** The acceptor speaks
//!   only after the dialer's proof verified, so an unauthenticated dialer
//!   receives no proof, no member list, no presence. Everything after the
//!   handshake is inside TLS 1.3.
//! - **Relaying proofs fails.** A man in the middle runs two TLS sessions with
//!   different exporters; a proof is bound to the exporter of the session it was
//!   made for (and to the role, so a reflected proof fails too).
//! - **Eavesdropping learns nothing**: proofs travel inside TLS.
//! - **Garbage** (non-QUIC datagrams, TLS failures, malformed hellos or frames,
//!   oversized frames) closes at most that one connection; the node keeps
//!   running. Each connection costs the attacker a full QUIC handshake, and the
//!   handshake timeout bounds how long it can hold one unauthenticated.
//!
//! Not covered:
//!
//! - **Offline guessing of a weak secret.** A node that dials an attacker (an
//!   address an authenticated peer or an operator gave it) sends its proof first,
//!   which an attacker can test guesses against. The secret must therefore be
//!   random and long: the engine refuses secrets under 16 bytes; use 32 random
//!   bytes (`openssl rand -hex 32`).
//! - **A leaked secret** gives full membership; rotate it by restarting the
//!   cluster with a new one.
//! - **Denial of service** by flooding handshakes, or by a trusted member.
//! - Node names are not bound to certificates: a secret holder can start under
//!   any node name, as a second process with one `--node` does (the older of
//!   the two stops, see `Node`'s `Event::NameClash`). What it relays about
//!   other nodes (their entries in deltas, membership gossip) is believed as
//!   relayed: origins are not signed.

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};

use crate::id::NodeId;
use sha2::Sha256;

/// Domain separation for the proof MAC.
const CONTEXT: &[u8] = b"chorus-auth-v2";
/// The TLS exporter label.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-chorus-auth-v2";
/// Length of the MAC.
const MAC_LEN: usize = 32;
/// Longest textual socket address accepted (an IPv6 address with scope and port
/// fits well under this).
const MAX_ADDR: usize = 64;

/// The side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The endpoint that dialed; it proves first.
    Dialer,
    /// The endpoint that accepted; it proves only after the dialer did.
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Dialer => 0,
            Role::Acceptor => 1,
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }
}

/// What an authenticated peer told about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHello {
    /// The peer's engine instance (random per start).
    pub instance: u64,
    /// The peer's advertised gossip address.
    pub addr: SocketAddr,
    /// The peer's node id: every message on the connection must come from it.
    pub id: NodeId,
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The stream or the connection failed.
    #[error("connection failed during authentication: {0}")]
    Io(String),
    /// The peer's hello is not well formed.
    #[error("malformed hello")]
    Malformed,
    /// The peer's proof does not verify.
    #[error("wrong cluster proof")]
    BadProof,
    /// No proof within the time allowed.
    #[error("no proof within {0:?}")]
    Timeout(Duration),
}

/// Runs the handshake of [`self`](self) on `conn` as `role`, and returns what
/// the peer proved about itself.
pub async fn authenticate(
    conn: &quinn::Connection,
    role: Role,
    secret: &[u8],
    me: &PeerHello,
    timeout: Duration,
) -> Result<PeerHello, AuthError> {
    tokio::time::timeout(timeout, exchange(conn, role, secret, me))
        .await
        .map_err(|_| AuthError::Timeout(timeout))?
}

async fn exchange(
    conn: &quinn::Connection,
    role: Role,
    secret: &[u8],
    me: &PeerHello,
) -> Result<PeerHello, AuthError> {
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| AuthError::Io("keying material export failed".into()))?;
    let io = |e: &dyn std::fmt::Display| AuthError::Io(e.to_string());
    let mine = encode_hello(secret, &exporter, role, me);
    match role {
        Role::Dialer => {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
            send.write_all(&mine).await.map_err(|e| io(&e))?;
            let peer = read_hello(&mut recv, secret, &exporter, role.other()).await?;
            let _ = send.finish();
            Ok(peer)
        }
        Role::Acceptor => {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| io(&e))?;
            let peer = read_hello(&mut recv, secret, &exporter, role.other()).await?;
            send.write_all(&mine).await.map_err(|e| io(&e))?;
            let _ = send.finish();
            Ok(peer)
        }
    }
}

/// The proof MAC of a hello.
pub fn proof(secret: &[u8], exporter: &[u8; 32], role: Role, hello: &PeerHello) -> [u8; MAC_LEN] {
    mac(secret, exporter, role, hello)
        .finalize()
        .into_bytes()
        .into()
}

fn mac(secret: &[u8], exporter: &[u8; 32], role: Role, hello: &PeerHello) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(CONTEXT);
    mac.update(exporter);
    mac.update(&[role.byte()]);
    mac.update(&hello.instance.to_be_bytes());
    mac.update(&hello.id.incarnation.to_be_bytes());
    // Length-prefixed, so no two (addr, name) pairs hash alike.
    let addr = hello.addr.to_string();
    mac.update(&[addr.len() as u8]);
    mac.update(addr.as_bytes());
    mac.update(&[hello.id.name.len() as u8]);
    mac.update(hello.id.name.as_bytes());
    mac
}

fn encode_hello(secret: &[u8], exporter: &[u8; 32], role: Role, hello: &PeerHello) -> Vec<u8> {
    let addr = hello.addr.to_string();
    let name = hello.id.name.as_bytes();
    let mut out = Vec::with_capacity(MAC_LEN + 18 + addr.len() + name.len());
    out.extend_from_slice(&proof(secret, exporter, role, hello));
    out.extend_from_slice(&hello.instance.to_be_bytes());
    out.extend_from_slice(&hello.id.incarnation.to_be_bytes());
    out.push(u8::try_from(addr.len()).expect("socket addresses are short"));
    out.extend_from_slice(addr.as_bytes());
    // `Engine::start` refuses longer names.
    out.push(u8::try_from(name.len()).expect("node names are at most codec::MAX_NAME bytes"));
    out.extend_from_slice(name);
    out
}

async fn read_hello(
    recv: &mut quinn::RecvStream,
    secret: &[u8],
    exporter: &[u8; 32],
    role: Role,
) -> Result<PeerHello, AuthError> {
    let mut head = [0u8; MAC_LEN + 17];
    recv.read_exact(&mut head)
        .await
        .map_err(|_| AuthError::Malformed)?;
    let addr_len = usize::from(head[MAC_LEN + 16]);
    if addr_len == 0 || addr_len > MAX_ADDR {
        return Err(AuthError::Malformed);
    }
    // The address and the name's length byte.
    let mut addr = vec![0u8; addr_len + 1];
    recv.read_exact(&mut addr)
        .await
        .map_err(|_| AuthError::Malformed)?;
    let name_len = usize::from(addr.pop().ok_or(AuthError::Malformed)?);
    let addr: SocketAddr = std::str::from_utf8(&addr)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(AuthError::Malformed)?;
    let mut name = vec![0u8; name_len];
    recv.read_exact(&mut name)
        .await
        .map_err(|_| AuthError::Malformed)?;
    let name = String::from_utf8(name).map_err(|_| AuthError::Malformed)?;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let hello = PeerHello {
        instance: word(MAC_LEN),
        addr,
        id: NodeId::new(name, word(MAC_LEN + 8)),
    };
    mac(secret, exporter, role, &hello)
        .verify_slice(&head[..MAC_LEN])
        .map_err(|_| AuthError::BadProof)?;
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> PeerHello {
        PeerHello {
            instance: 7,
            addr: "127.0.0.1:7400".parse().unwrap(),
            id: NodeId::new("n1", 9),
        }
    }

    #[test]
    fn proof_binds_secret_session_role_and_identity() {
        let k = b"0123456789abcdef";
        let base = proof(k, &[1; 32], Role::Dialer, &hello());
        assert_ne!(
            base,
            proof(b"0123456789abcdeF", &[1; 32], Role::Dialer, &hello())
        );
        assert_ne!(base, proof(k, &[2; 32], Role::Dialer, &hello()));
        assert_ne!(base, proof(k, &[1; 32], Role::Acceptor, &hello()));
        let others = [
            PeerHello {
                instance: 8,
                ..hello()
            },
            PeerHello {
                id: NodeId::new("n2", 9),
                ..hello()
            },
            PeerHello {
                id: NodeId::new("n1", 10),
                ..hello()
            },
            PeerHello {
                addr: "127.0.0.1:7401".parse().unwrap(),
                ..hello()
            },
        ];
        for other in &others {
            assert_ne!(base, proof(k, &[1; 32], Role::Dialer, other), "{other:?}");
        }
        assert_eq!(base, proof(k, &[1; 32], Role::Dialer, &hello()));
    }

    #[test]
    fn hello_layout() {
        let h = encode_hello(b"k", &[0; 32], Role::Dialer, &hello());
        assert_eq!(h.len(), 32 + 8 + 8 + 1 + "127.0.0.1:7400".len() + 1 + 2);
        assert_eq!(&h[32..40], &7u64.to_be_bytes());
        assert_eq!(&h[40..48], &9u64.to_be_bytes());
        assert_eq!(usize::from(h[48]), 14);
        assert_eq!(&h[49..63], b"127.0.0.1:7400");
        assert_eq!(h[63], 2);
        assert_eq!(&h[64..], b"n1");
    }
}
