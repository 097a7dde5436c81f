//! A server's WebSocket frames (RFC 6455 §5.2), written straight into a byte
//! buffer: FIN set, no mask, no extension bits. A broadcast's header is written
//! into each subscriber's buffer followed by the bytes encoded once, so a
//! delivery costs one copy and no per-frame object.

/// The longest header a server frame has: 2 bytes, then 8 for a 64-bit length.
pub const MAX_HEADER_LEN: usize = 10;

/// The header's length for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// The whole frame's length (header and payload) for a payload of `len` bytes.
pub fn frame_len(len: usize) -> usize {
    header_len(len) + len
}

/// Appends one final text (`text`) or binary frame carrying `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, text: bool, payload: &[u8]) {
    let opcode: u8 = if text { 0x1 } else { 0x2 };
    let len = payload.len();
    out.reserve(frame_len(len));
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The length of the frame that starts `bytes` (a server frame: no mask), or
/// `None` when its header is not all there.
pub fn next_frame_len(bytes: &[u8]) -> Option<usize> {
    let (len, header) = match *bytes.get(1)? & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
        }
        short => (usize::from(short), 2),
    };
    Some(header + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// Each length class encodes as tungstenite encodes the same frame, and
    /// parses back to its own length.
    #[test]
    fn frames_match_tungstenite_and_parse_back() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            for text in [true, false] {
                let payload = vec![b'x'; len];
                let mut ours = Vec::new();
                write_frame(&mut ours, text, &payload);
                let data = if text { Data::Text } else { Data::Binary };
                let theirs = Frame::message(Bytes::from(payload), OpCode::Data(data), true);
                let mut expected = Vec::new();
                theirs.format(&mut expected).expect("format");
                assert_eq!(ours, expected, "len {len} text {text}");
                assert_eq!(ours.len(), frame_len(len));
                assert_eq!(next_frame_len(&ours), Some(ours.len()));
                assert_eq!(next_frame_len(&ours[..header_len(len) - 1]), None);
            }
        }
    }
}
