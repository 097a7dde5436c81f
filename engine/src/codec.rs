//! The gossip wire format: one serde [`Message`] encoded with bincode, behind a
//! version byte.
//!
//! Decoding never panics: truncated, oversized or malformed input, an unknown
//! version, or a structurally invalid delta all give a [`DecodeError`], and the
//! driver closes that peer's connection.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{Meta, NodeId, Topic};
use crate::membership::{Swim, UpdateKind};
use crate::presence::PresEntry;
use crate::records::{Record, BUCKETS};
use crate::store::Delta;

/// The version byte in front of every frame.
pub const WIRE_VERSION: u8 = 5;

/// Largest frame the decoder accepts (the transport chunks state transfers well
/// below this).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Longest topic a peer may send, in bytes (clients' topics are at most 255;
/// internal ones are short). Local commands over it are refused too, so an
/// honest node never sends what its peers drop.
pub const MAX_TOPIC: usize = 4096;

/// Longest presence key a peer may send, in bytes.
pub const MAX_KEY: usize = 4096;

/// Largest presence meta a peer may send, in bytes (the gateway's default
/// frame limit: a client's meta arrives inside one frame).
pub const MAX_META: usize = 1 << 20;

/// Longest node name, in bytes (the authenticated hello carries it with a
/// one-byte length).
pub const MAX_NAME: usize = 255;

/// Highest SWIM membership incarnation a peer may send. A node raises its
/// own by one per refutation, so an honest one never gets near; the bound
/// keeps `inc + 1` clear of overflow.
pub const MAX_SWIM_INC: u64 = 1 << 48;

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
    /// What a digest showed the receiver lacks, per origin. The sender paces
    /// a long repair: it keeps at most `repair_window` bytes of repairs
    /// unacknowledged, and sends the next one when a [`Body::RepairAck`]
    /// frees room.
    Repair {
        /// Presence parts.
        presence: Delta<PresEntry>,
        /// Subscription parts.
        subs: Delta<Topic>,
        /// The sender's number for this repair, echoed by the acknowledgement.
        seq: u64,
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
        /// The sender's budget horizon (`history_budget`): log entries
        /// stamped before it are dropped. The receiver adopts it, capped at
        /// its own wall clock.
        horizon: u64,
    },
    /// A SWIM failure-detector message (probes and piggybacked membership
    /// updates; see [`Swim`]).
    Swim(Swim),
    /// Acknowledges a [`Body::Repair`] once merged (echoes its `seq`).
    RepairAck {
        /// The repair's `seq`.
        seq: u64,
    },
    /// Cross-node flow control: the sender took `n` more of the receiver's
    /// broadcasts to `topic` off its hands, so the receiver may have `n` more
    /// in flight to it (ALGORITHM.md, "Cross-node flow control"). On the
    /// stream lane: a lost credit would shrink the receiver's window.
    Credit {
        /// The topic.
        topic: Topic,
        /// Broadcasts returned.
        n: u32,
    },
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
    /// Decoded, but breaks its invariants (a malformed delta, a meta that is
    /// not a JSON object, an oversized topic, key, meta, name or record, a
    /// digest of the wrong size, an impossible incarnation). The transport
    /// drops such a message whole, counts it and keeps the connection.
    #[error("invalid message from {from}: {why}")]
    Invalid {
        /// The claimed sender.
        from: NodeId,
        /// The first check that failed.
        why: &'static str,
    },
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

    /// Checks every value a peer supplies against the bounds and shapes the
    /// node relies on. Public so a fuzzer or a driver that builds messages
    /// without the codec can apply the same checks.
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.check().map_err(|why| DecodeError::Invalid {
            from: self.from.clone(),
            why,
        })
    }

    fn check(&self) -> Result<(), &'static str> {
        name_ok(&self.from)?;
        match &self.body {
            Body::Hello { .. } | Body::Ack { .. } | Body::RepairAck { .. } | Body::Leave => Ok(()),
            Body::Members(list) => list.iter().try_for_each(|(id, _)| name_ok(id)),
            Body::Delta { presence, subs, .. } | Body::Repair { presence, subs, .. } => {
                delta_ok(presence, |e| entry_ok(&e.topic, &e.key, &e.meta))?;
                delta_ok(subs, topic_ok)
            }
            Body::Digest { presence, subs, .. } => presence
                .iter()
                .chain(subs)
                .try_for_each(|(id, _)| name_ok(id)),
            Body::Broadcast { topic, .. } | Body::Credit { topic, .. } => topic_ok(topic),
            Body::Records(records) => check(records.iter().all(Record::is_valid), "record"),
            Body::RecordsDigest { buckets, .. } => check(buckets.len() == BUCKETS, "buckets"),
            Body::Swim(swim) => swim_ok(swim),
        }
    }
}

fn check(ok: bool, why: &'static str) -> Result<(), &'static str> {
    if ok {
        Ok(())
    } else {
        Err(why)
    }
}

fn name_ok(id: &NodeId) -> Result<(), &'static str> {
    check(
        !id.name.is_empty() && id.name.len() <= MAX_NAME,
        "node name",
    )
}

fn topic_ok(topic: &Topic) -> Result<(), &'static str> {
    check(topic.as_str().len() <= MAX_TOPIC, "topic too long")
}

/// What a presence entry must be, from a peer or from a local command.
pub(crate) fn entry_ok(topic: &Topic, key: &str, meta: &Meta) -> Result<(), &'static str> {
    topic_ok(topic)?;
    check(key.len() <= MAX_KEY, "key too long")?;
    check(meta.as_str().len() <= MAX_META, "meta too large")?;
    check(
        is_json_object(meta.as_str()) || cfg!(feature = "trusting-peer"),
        "meta is not a JSON object",
    )
}

/// Whether `text` is exactly one JSON object (whitespace around allowed).
/// The gateway splices metas into `presence_state` between their braces, so
/// anything else could break or forge the payload.
pub(crate) fn is_json_object(text: &str) -> bool {
    text.trim_ascii_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn delta_ok<E>(
    d: &Delta<E>,
    entry: impl Fn(&E) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    check(
        d.parts.iter().all(|p| p.is_well_formed())
            && d.parts.windows(2).all(|w| w[0].origin < w[1].origin),
        "malformed delta",
    )?;
    for p in &d.parts {
        name_ok(&p.origin)?;
        p.adds.iter().try_for_each(|(_, e)| entry(e))?;
    }
    Ok(())
}

fn swim_ok(swim: &Swim) -> Result<(), &'static str> {
    let gossip = match swim {
        Swim::Ping { target, gossip, .. } | Swim::PingReq { target, gossip, .. } => {
            name_ok(target)?;
            gossip
        }
        Swim::PingAck { gossip, .. } => gossip,
        Swim::PingNack { .. } => return Ok(()),
    };
    for u in gossip {
        name_ok(&u.node)?;
        check(u.inc <= MAX_SWIM_INC, "membership incarnation")?;
        if let UpdateKind::Suspect { by } = &u.kind {
            name_ok(by)?;
        }
    }
    Ok(())
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
    /// tag after `Members` moved down by one; 3: `RecordsDigest` carries the
    /// budget horizon; 4: `Repair` carries a `seq`, acknowledged by the new
    /// `RepairAck`; 5: the new `Credit`).
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
                "05",       // wire version
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
                "05", // wire version
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

    /// `Repair` (v4) ends with its `seq`; `RepairAck` is the last tag.
    #[test]
    fn golden_repair_and_ack() {
        let head = concat!(
            "05",       // wire version
            "0161",     // from.name "a"
            "01",       // from.incarnation 1
            "00",       // addr: V4
            "7f000001", // 127.0.0.1
            "fbe81c",   // port 7400 (varint u16)
        );
        let repair = Message {
            from: NodeId::new("a", 1),
            addr: addr(),
            body: Body::Repair {
                presence: Delta::default(),
                subs: Delta::default(),
                seq: 7,
            },
        };
        assert_eq!(
            hex::encode(repair.encode()),
            format!("{head}05000007") // Body::Repair, no parts, no parts, seq 7
        );
        let ack = Message {
            from: NodeId::new("a", 1),
            addr: addr(),
            body: Body::RepairAck { seq: 7 },
        };
        assert_eq!(hex::encode(ack.encode()), format!("{head}0b07")); // Body::RepairAck, seq 7
    }

    /// `Credit` (v5) is the last tag: the topic, then `n`.
    #[test]
    fn golden_credit() {
        let m = Message {
            from: NodeId::new("a", 1),
            addr: addr(),
            body: Body::Credit {
                topic: Topic::new("t"),
                n: 300,
            },
        };
        assert_eq!(
            hex::encode(m.encode()),
            concat!(
                "05",       // wire version
                "0161",     // from.name "a"
                "01",       // from.incarnation 1
                "00",       // addr: V4
                "7f000001", // 127.0.0.1
                "fbe81c",   // port 7400 (varint u16)
                "0c",       // Body::Credit
                "0174",     // topic "t"
                "fb2c01",   // n 300 (varint u16)
            )
        );
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    /// `RecordsDigest` (v3): the buckets, `reply`, then the budget horizon.
    #[test]
    fn golden_records_digest() {
        let m = Message {
            from: NodeId::new("a", 1),
            addr: addr(),
            body: Body::RecordsDigest {
                buckets: vec![0; BUCKETS],
                reply: true,
                horizon: 1_000,
            },
        };
        let bytes = hex::encode(m.encode());
        let head = concat!(
            "05",       // wire version
            "0161",     // from.name "a"
            "01",       // from.incarnation 1
            "00",       // addr: V4
            "7f000001", // 127.0.0.1
            "fbe81c",   // port 7400 (varint u16)
            "09",       // Body::RecordsDigest
            "fb0001",   // 256 buckets (varint)
        );
        assert!(bytes.starts_with(head), "{bytes}");
        assert_eq!(bytes.len(), head.len() + 2 * BUCKETS + 2 + 6, "{bytes}");
        assert!(
            bytes.ends_with(concat!("01", "fbe803")),
            "reply true, horizon 1000 (varint): {bytes}"
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
            Err(DecodeError::Invalid { .. })
        ));
    }

    /// Values a peer supplies are checked whole: each of these decodes as
    /// bincode but is refused as `Invalid`, naming the check.
    #[test]
    fn rejects_values_out_of_bounds() {
        let with_entry = |f: &dyn Fn(&mut PresEntry)| {
            let mut m = sample_delta();
            if let Body::Delta { presence, .. } = &mut m.body {
                f(&mut presence.parts[0].adds[0].1);
            }
            m
        };
        let injected = "{\"a\":1}]},\"forged\":{\"metas\":[{\"b\":2}";
        let cases = [
            (
                with_entry(&|e| e.meta = Meta::new(injected)),
                "meta is not a JSON object",
            ),
            (
                with_entry(&|e| e.meta = Meta::new("[1]")),
                "meta is not a JSON object",
            ),
            (
                with_entry(&|e| e.meta = Meta::new("{\"a\":}")),
                "meta is not a JSON object",
            ),
            (
                with_entry(&|e| {
                    e.meta = Meta::new(format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_META)))
                }),
                "meta too large",
            ),
            (
                with_entry(&|e| e.key = "k".repeat(MAX_KEY + 1).into()),
                "key too long",
            ),
            (
                with_entry(&|e| e.topic = Topic::new("t".repeat(MAX_TOPIC + 1))),
                "topic too long",
            ),
            (
                Message {
                    from: NodeId::new("", 1),
                    addr: addr(),
                    body: Body::Leave,
                },
                "node name",
            ),
            (
                Message {
                    from: NodeId::new("a", 1),
                    addr: addr(),
                    body: Body::Swim(Swim::PingAck {
                        seq: 1,
                        gossip: vec![crate::membership::Update {
                            node: NodeId::new("a", 1),
                            addr: addr(),
                            inc: u64::MAX,
                            kind: UpdateKind::Alive,
                        }],
                    }),
                },
                "membership incarnation",
            ),
        ];
        for (m, expected) in cases {
            match Message::decode(&m.encode()) {
                Err(DecodeError::Invalid { why, .. }) => assert_eq!(why, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        // Whitespace around an object is fine.
        let ok = with_entry(&|e| e.meta = Meta::new(" {\"a\": [1, {}]} "));
        assert!(Message::decode(&ok.encode()).is_ok());
    }
}
