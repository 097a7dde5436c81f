//! The Phoenix Channels wire protocol, without I/O: it owns the connect-time reading
//! of the query string (`vsn`, params) and of the `Sec-WebSocket-Protocol` auth
//! token, the decoding of client frames (v1 JSON, v2 JSON, v2 binary) and the encoding
//! of server frames (replies, pushes, `phx_close`/`phx_error`, heartbeat replies and
//! encode-once broadcasts). See `shared/PROTOCOL.md` §1–3 and §9.
//!
//! Everything here is deterministic and synchronous; the transports (WebSocket,
//! LongPoll) drive it. No input panics: malformed input is a typed error
//! ([`FrameError`], [`QueryError`], [`VsnError`], [`SubprotocolError`]).
//!
//! ```
//! use chorus_gateway::protocol::{decode_text, encode_heartbeat_reply, Query};
//!
//! let vsn = Query::parse("token=abc&vsn=2.0.0")?.vsn()?;
//! let frame = decode_text(vsn, r#"[null,"10","phoenix","heartbeat",{}]"#)?;
//! let reply = encode_heartbeat_reply(vsn, frame.ref_.as_ref());
//! assert_eq!(
//!     reply.as_text(),
//!     Some(r#"[null,"10","phoenix","phx_reply",{"status":"ok","response":{}}]"#)
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod binary;
pub mod json;
pub mod limits;
pub mod query;
pub mod subprotocol;
pub mod wsframe;

mod encode;
mod frame;
mod vsn;

use bytes::Bytes;

pub use encode::{
    encode_broadcast, encode_close, encode_error, encode_heartbeat_reply, encode_push,
    encode_reply, Encoded, PHOENIX_TOPIC,
};
pub use frame::{FrameError, InFrame, JsonObject, OutFrame, Payload, Ref, MAX_FIELD_LEN};
pub use limits::{check_json, JsonLimitError, JsonLimits};
pub use query::{Query, QueryError};
pub use subprotocol::{SubprotocolError, Subprotocols, AUTH_TOKEN_PREFIX};
pub use vsn::{Vsn, VsnError};

/// Decodes a client's text frame with the connection's serializer.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<InFrame, FrameError> {
    match vsn {
        Vsn::V1 => json::decode_v1(text),
        Vsn::V2 => json::decode_v2(text),
    }
}

/// Decodes a client's binary frame (v2 only: a kind-0 push). LongPoll's base64 lines
/// come here once base64-decoded.
pub fn decode_binary(vsn: Vsn, frame: Bytes) -> Result<InFrame, FrameError> {
    match vsn {
        Vsn::V1 => Err(FrameError::BinaryUnsupported),
        Vsn::V2 => binary::decode(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic PRNG (xorshift64*), so the fuzz loop needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEEDS: &[&[u8]] = &[
        br#"["3","3","room:1","phx_join",{"name":"x"}]"#,
        br#"[null,"10","phoenix","heartbeat",{}]"#,
        br#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#,
        b"\x00\x01\x01\x06\x0639room:1bin_up\x09\x08\x07",
        b"token=abc&nested%5Ba%5D=1&vsn=2.0.0&u[][n]=a",
        b"phoenix, base64url.bearer.phx.bXktc2VjcmV0LXRva2Vu",
    ];
    const ALPHABET: &[u8] = b"[]{}\",:0123456789-.e+%&=null\\u\x00\x01\x02\x05\xff phx";

    /// One random input: pure noise, a truncated seed, or a seed with mutated bytes.
    fn input(rng: &mut XorShift) -> Vec<u8> {
        let seed = SEEDS[rng.below(SEEDS.len())];
        match rng.below(3) {
            0 => (0..rng.below(64))
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect(),
            1 => seed[..rng.below(seed.len() + 1)].to_vec(),
            _ => {
                let mut bytes = seed.to_vec();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] = if rng.below(2) == 0 {
                        ALPHABET[rng.below(ALPHABET.len())]
                    } else {
                        rng.next() as u8
                    };
                }
                bytes
            }
        }
    }

    /// Feeds every decoder many random and damaged inputs; the test fails on a panic.
    /// What decodes must also re-encode without panicking.
    #[test]
    fn decoders_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut decoded, mut rejected) = (0, 0);
        for _ in 0..20_000 {
            let bytes = input(&mut rng);
            let text = String::from_utf8_lossy(&bytes);
            let results = [
                decode_text(Vsn::V2, &text),
                decode_text(Vsn::V1, &text),
                decode_binary(Vsn::V2, Bytes::from(bytes.clone())),
            ];
            for frame in results {
                match frame {
                    Ok(f) => {
                        decoded += 1;
                        let _ = encode_push(
                            Vsn::V2,
                            f.join_ref.as_ref(),
                            &f.topic,
                            &f.event,
                            &f.payload,
                        );
                        let _ = encode_reply(
                            Vsn::V1,
                            f.join_ref.as_ref(),
                            f.ref_.as_ref(),
                            &f.topic,
                            "ok",
                            &f.payload,
                        );
                    }
                    Err(e) => {
                        rejected += 1;
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
            let _ = Query::parse(&text).map(|q| (q.params(), q.vsn()));
            let _ = Subprotocols::parse(&text);
            let _ = Vsn::negotiate(Some(&text));
        }
        assert!(
            decoded > 100,
            "the mutations should still produce valid frames ({decoded})"
        );
        assert!(
            rejected > 10_000,
            "most damaged inputs are rejected ({rejected})"
        );
    }

    #[test]
    fn dispatch_by_vsn() {
        let v2 = decode_text(Vsn::V2, r#"["3","8","room:1","ping",{"x":1}]"#).expect("v2");
        assert_eq!(v2.event, "ping");
        assert!(matches!(
            decode_text(Vsn::V1, r#"["3","8","room:1","ping",{}]"#),
            Err(FrameError::NotAnObject)
        ));
        let bin = Bytes::from_static(b"\x00\x01\x01\x06\x0639room:1bin_up\x09\x08\x07");
        assert!(decode_binary(Vsn::V2, bin.clone()).is_ok());
        assert!(matches!(
            decode_binary(Vsn::V1, bin),
            Err(FrameError::BinaryUnsupported)
        ));
    }

    /// The capture's §7 exchange: the ping's payload comes back as the reply's response,
    /// spliced as raw text.
    #[test]
    fn capture_ping_reply_splices_the_payload() {
        let ping =
            decode_text(Vsn::V2, r#"["6","7","bench:1","ping",{"n":42,"s":"x"}]"#).expect("ping");
        let reply = encode_reply(
            Vsn::V2,
            ping.join_ref.as_ref(),
            ping.ref_.as_ref(),
            &ping.topic,
            "ok",
            &ping.payload,
        )
        .expect("reply");
        assert_eq!(
            reply.as_text(),
            Some(r#"["6","7","bench:1","phx_reply",{"status":"ok","response":{"n":42,"s":"x"}}]"#)
        );
    }

    /// The capture's §8 exchange, bytes in and bytes out.
    #[test]
    fn capture_binary_ping_reply() {
        let wire: &[u8] = b"\x00\x01\x01\x07\x0468bench:1ping\x01\x02\x03\xff";
        let ping = decode_binary(Vsn::V2, Bytes::from_static(wire)).expect("binary ping");
        let reply = encode_reply(
            Vsn::V2,
            ping.join_ref.as_ref(),
            ping.ref_.as_ref(),
            &ping.topic,
            "ok",
            &ping.payload,
        )
        .expect("reply");
        let expected: &[u8] = b"\x01\x01\x01\x07\x0268bench:1ok\x01\x02\x03\xff";
        assert_eq!(reply, OutFrame::Binary(Bytes::from_static(expected)));
    }
}
