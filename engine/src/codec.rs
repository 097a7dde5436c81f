//! The gossip wire format: one serde [`Message`] encoded with bincode, behind a
//! version byte.
//!
//! Decoding never panics: truncated, oversized or malformed input, an unknown
//! version, or a structurally invalid delta all give a [`DecodeError`], and the
//! driver closes that peer's connection.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{NodeId, Topic};
use crate::membership::Swim;
use crate::presence::PresEntry;
use crate::records::{Record, BUCKETS};
use crate::store::Delta;

/// The version byte in front of every frame.
pub const WIRE_VERSION: u8 = 2;

/// Largest frame the decoder accepts (the transport chunks state transfers well
/// below this).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sending node incarnation.
    pub from: NodeId,
    /// Where the sender listens for gossip.
    pub addr: SocketAddr,
    /// What it says.
    pub body: Body,
}

/// The message kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// "I am here": sent to seeds and to newly learned members. A seed is
    /// asked for its member list (`full`); others just admit the sender.
    Hello {
        /// Answer with every member known.
        full: bool,
    },
    /// The members the sender knows, as `(node, gossip address)`.
    Members(Vec<(NodeId, SocketAddr)>),
    /// A δ-group of the sender's buffer entries `start..seq`.
    Delta {
        /// First buffer sequence number covered.
        start: u64,
        /// One past the last buffer sequence number covered.
        seq: u64,
        /// Presence parts.
        presence: Delta<PresEntry>,
        /// Subscription parts.
        subs: Delta<Topic>,
    },
    /// Acknowledges a [`Body::Delta`] (echoes its range).
    Ack {
        /// The delta's `start`.
        start: u64,
        /// The delta's `seq`.
        seq: u64,
    },
    /// Anti-entropy: the contiguous op prefix the sender knows of each replica.
    Digest {
        /// Presence version vector.
        presence: Vec<(NodeId, u64)>,
        /// Subscription version vector.
        subs: Vec<(NodeId, u64)>,
        /// Set on the answer to a digest, which is not answered again.
        reply: bool,
        /// How many up members the sender knows (itself included); a receiver
        /// that knows more answers with its member list (at most one list per
        /// anti-entropy period: membership spreads by SWIM gossip, this is
        /// the backstop).
        members: u32,
    },
    /// What a digest showed the receiver lacks, per origin.
    Repair {
        /// Presence parts.
        presence: Delta<PresEntry>,
        /// Subscription parts.
        subs: Delta<Topic>,
    },
    /// A publish to local subscribers of `topic` on the receiver.
    Broadcast {
        /// The topic.
        topic: Topic,
        /// Opaque payload (the gateway's encoded event).
        payload: Bytes,
    },
    /// The sender is shutting down: drop its entries now.
    Leave,
    /// Application records: a new local write pushed to every peer, or the
    /// contents of digest buckets that differ.
    Records(Vec<Record>),
    /// Anti-entropy for records: the sender's bucket hashes
    /// ([`Records::digest`](crate::records::Records::digest)).
    RecordsDigest {
        /// One hash per bucket.
        buckets: Vec<u64>,
        /// Set on the answer to a digest, which is not answered again.
        reply: bool,
    },
    /// A SWIM failure-detector message (probes and piggybacked membership
    /// updates; see [`Swim`]).
    Swim(Swim),
}

impl Body {
    /// Whether the message may be lost without harm (datagram lane) or needs
    /// order and reliability (stream lane).
    pub fn loss_tolerant(&self) -> bool {
        matches!(
            self,
            Body::Digest { .. } | Body::Hello { .. } | Body::Swim(_)
        )
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty frame")]
    Empty,
    /// A version this build does not speak.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// Over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a valid encoding.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Decoded, but breaks its invariants (a malformed delta, an oversized
    /// record, a digest of the wrong size).
    #[error("invalid message from {0}")]
    InvalidDelta(NodeId),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

impl Message {
    /// Encodes: the version byte, then the bincode body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        bincode::serde::encode_into_std_write(self, &mut out, config())
            .expect("encoding into a Vec cannot fail");
        out
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        let mut counter = Counter(0);
        bincode::serde::encode_into_std_write(self, &mut counter, config())
            .expect("counting cannot fail");
        1 + counter.0
    }

    /// Decodes and validates one frame.
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        let (&version, rest) = frame.split_first().ok_or(DecodeError::Empty)?;
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version));
        }
        if frame.len() > MAX_FRAME {
            return Err(DecodeError::TooLarge(frame.len()));
        }
        let (msg, used): (Message, usize) = bincode::serde::decode_from_slice(rest, config())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if used != rest.len() {
            return Err(DecodeError::Trailing(rest.len() - used));
        }
        msg.validate()?;
        Ok(msg)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let ok = match &self.body {
            Body::Delta { presence, subs, .. } | Body::Repair { presence, subs } => {
                sorted_unique(presence) && sorted_unique(subs)
            }
            Body::Records(records) => records.iter().all(Record::is_valid),
            Body::RecordsDigest { buckets, .. } => buckets.len() == BUCKETS,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(DecodeError::InvalidDelta(self.from.clone()))
        }
    }
}

fn sorted_unique<E>(d: &Delta<E>) -> bool {
    d.parts.iter().all(|p| p.is_well_formed())
        && d.parts.windows(2).all(|w| w[0].origin < w[1].origin)
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Ranges;
    use crate::id::{ConnId, Meta, PhxRef};
    use crate::store::Part;

    fn addr() -> SocketAddr {
        "127.0.0.1:7400".parse().unwrap()
    }

    fn sample_delta() -> Message {
        let origin = NodeId::new("n1", 7);
        let entry = PresEntry {
            topic: Topic::new("room:1"),
            key: "alice".into(),
            conn: ConnId(3),
            meta: Meta::new("{\"a\":1}"),
            phx_ref: PhxRef::from_parts([1, 2, 3, 4, 5, 6], 1),
            prev_ref: None,
        };
        Message {
            from: origin.clone(),
            addr: addr(),
            body: Body::Delta {
                start: 4,
                seq: 5,
                presence: Delta {
                    parts: vec![Part {
                        origin,
                        ops: Ranges::span(1, 2),
                        adds: vec![(1, entry)],
                        removes: vec![],
                        full: false,
                    }],
                },
                subs: Delta::default(),
            },
        }
    }

    #[test]
    fn round_trip_and_len() {
        let m = sample_delta();
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    /// Golden vectors: these bytes are the wire format. A change here breaks
    /// mixed-version clusters and must come with a new WIRE_VERSION (2: SWIM
    /// messages moved into `Body::Swim`, the unused `Heartbeat` went, so every
    /// tag after `Members` moved down by one).
    #[test]
    fn golden_vectors() {
        let nack = Message {
            from: NodeId::new("a", 1),
            addr: addr(),
            body: Body::Swim(Swim::PingNack { seq: 5 }),
        };
        assert_eq!(
            hex::encode(nack.encode()),
            concat!(
                "02",       // wire version
                "0161",     // from.name "a"
                "01",       // from.incarnation 1
                "00",       // addr: V4
                "7f000001", // 127.0.0.1
                "fbe81c",   // port 7400 (varint u16)
                "0a",       // Body::Swim
                "03",       // Swim::PingNack
                "05",       // seq 5
            )
        );
        assert_eq!(
            hex::encode(sample_delta().encode()),
            concat!(
                "02", // wire version
                "026e31",
                "07", // from n1#7
                "00",
                "7f000001",
                "fbe81c", // addr 127.0.0.1:7400
                "02",     // Body::Delta
                "04",     // start 4
                "05",     // seq 5
                "01",     // presence: 1 part
                "026e31",
                "07", // origin n1#7
                "01",
                "01",
                "02", // ops [(1, 2)]
                "01",
                "01",                       // 1 add, dot 1
                "06726f6f6d3a31",           // topic "room:1"
                "05616c696365",             // key "alice"
                "03",                       // conn 3
                "077b2261223a317d",         // meta {"a":1}
                "010203040506000000000001", // phx_ref
                "00",                       // prev_ref None
                "00",
                "00", // no removes, not full
                "00", // subs: no parts
            )
        );
    }

    #[test]
    fn rejects_bad_frames_without_panicking() {
        assert!(matches!(Message::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            Message::decode(&[9, 0]),
            Err(DecodeError::Version(9))
        ));
        let mut good = sample_delta().encode();
        good.push(0);
        assert!(matches!(
            Message::decode(&good),
            Err(DecodeError::Trailing(1))
        ));
        let good = sample_delta().encode();
        for cut in 0..good.len() {
            assert!(Message::decode(&good[..cut]).is_err());
        }
    }

    #[test]
    fn rejects_structurally_invalid_deltas() {
        let mut m = sample_delta();
        if let Body::Delta { presence, .. } = &mut m.body {
            presence.parts[0].removes.push((1, 9));
        }
        assert!(matches!(
            Message::decode(&m.encode()),
            Err(DecodeError::InvalidDelta(_))
        ));
    }
}
