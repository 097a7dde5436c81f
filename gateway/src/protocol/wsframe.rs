//! WebSocket frames (RFC 6455 §5.2). A server's are written straight into a
//! byte buffer: FIN set, no mask, no extension bits. A broadcast's header is
//! written into each subscriber's buffer followed by the bytes encoded once, so
//! a delivery costs one copy and no per-frame object.
//!
//! A client's are read by [`ClientReader`], given the bytes as they arrive: it
//! keeps no buffer of its own (only a fragmented message being assembled), so
//! an idle connection holds no read buffer between frames.

/// The opcodes of RFC 6455 §5.2.
pub mod opcode {
    /// A continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message (or its first fragment).
    pub const TEXT: u8 = 0x1;
    /// A binary message (or its first fragment).
    pub const BINARY: u8 = 0x2;
    /// A close frame.
    pub const CLOSE: u8 = 0x8;
    /// A ping.
    pub const PING: u8 = 0x9;
    /// A pong.
    pub const PONG: u8 = 0xA;
}

/// The longest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

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
    let op = if text { opcode::TEXT } else { opcode::BINARY };
    write_op_frame(out, op, payload);
}

/// Appends a close frame with `code` and `reason` (at most 123 bytes of
/// it: a control frame carries at most 125) to `out`.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    write_op_frame(out, opcode::CLOSE, &payload[..2 + end]);
}

/// Appends one final frame of opcode `op` carrying `payload` to `out`.
pub fn write_op_frame(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    let len = payload.len();
    out.reserve(frame_len(len));
    out.push(0x80 | op);
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

/// One whole message from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// A text message, checked to be UTF-8.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping with its payload (to be answered with a pong carrying it).
    Ping(Vec<u8>),
    /// A pong: its payload's length.
    Pong(usize),
    /// A close frame: its code and reason, if it had a code.
    Close(Option<(u16, String)>),
}

impl ClientMessage {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) | Self::Ping(bytes) => bytes.len(),
            Self::Pong(len) => *len,
            Self::Close(None) => 0,
            Self::Close(Some((_, reason))) => 2 + reason.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a client's frames cannot be read: the connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A frame, or a fragmented message so far, over the size limit.
    #[error("frame of {0} bytes over the size limit")]
    TooBig(u64),
    /// A violation of RFC 6455.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or a close reason that is not UTF-8.
    #[error("text is not UTF-8")]
    Utf8,
}

/// What [`ClientReader::take`] did with the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first frame is not all there: at least this many bytes are needed
    /// from its start (its header, then the whole frame once its length is known).
    More(usize),
    /// It took the first frame, `used` bytes, and the message it completed
    /// (`None`: a fragment of one not finished yet).
    Frame {
        used: usize,
        message: Option<ClientMessage>,
    },
}

/// Reads a client's frames into whole messages, enforcing RFC 6455 as a
/// server must: client frames masked, no extension bits, known opcodes,
/// control frames whole and at most 125 bytes, continuations only inside a
/// fragmented message, text UTF-8, and one size limit on every frame and
/// message. Keeps only a fragmented message being assembled.
#[derive(Debug, Default)]
pub struct ClientReader {
    /// A fragmented message so far: whether it is text, and its bytes.
    partial: Option<Box<(bool, Vec<u8>)>>,
}

impl ClientReader {
    /// Takes the first frame of `bytes` if it is all there; `max`: the size
    /// limit of a frame and of a message.
    pub fn take(&mut self, bytes: &[u8], max: usize) -> Result<Step, ReadError> {
        let [b0, b1, ..] = *bytes else {
            return Ok(Step::More(2));
        };
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("unmasked frame from a client"));
        }
        let (fin, op) = (b0 & 0x80 != 0, b0 & 0x0f);
        use opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
        if !matches!(op, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            // Refused from the header, before its payload is waited for.
            return Err(ReadError::Protocol("unknown opcode"));
        }
        let (len, at) = match b1 & 0x7f {
            126 => match bytes.get(2..4) {
                Some(raw) => (u64::from(u16::from_be_bytes([raw[0], raw[1]])), 4),
                None => return Ok(Step::More(4)),
            },
            127 => match bytes.get(2..10) {
                Some(raw) => {
                    let mut be = [0; 8];
                    be.copy_from_slice(raw);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(ReadError::Protocol("64-bit length with its top bit set"));
                    }
                    (len, 10)
                }
                None => return Ok(Step::More(10)),
            },
            short => (u64::from(short), 2),
        };
        if op & 0x8 != 0 {
            // Refused from the header: no need to read it.
            if !fin {
                return Err(ReadError::Protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ReadError::Protocol("control frame over 125 bytes"));
            }
        }
        if len > max as u64 {
            return Err(ReadError::TooBig(len));
        }
        // `len` fits in a usize: it is at most `max`.
        let total = at + 4 + len as usize;
        if bytes.len() < total {
            return Ok(Step::More(total));
        }
        let mask = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let mut payload = bytes[at + 4..total].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        let message = self.frame(fin, op, payload, max)?;
        Ok(Step::Frame {
            used: total,
            message,
        })
    }

    fn frame(
        &mut self,
        fin: bool,
        op: u8,
        payload: Vec<u8>,
        max: usize,
    ) -> Result<Option<ClientMessage>, ReadError> {
        match op {
            opcode::CLOSE => close(payload).map(Some),
            opcode::PING => Ok(Some(ClientMessage::Ping(payload))),
            opcode::PONG => Ok(Some(ClientMessage::Pong(payload.len()))),
            opcode::CONTINUATION => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation frame outside a message"));
                };
                let len = partial.1.len() + payload.len();
                if len > max {
                    return Err(ReadError::TooBig(len as u64));
                }
                partial.1.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let (text, bytes) = *self.partial.take().expect("checked above");
                message(text, bytes).map(Some)
            }
            opcode::TEXT | opcode::BINARY => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                let text = op == opcode::TEXT;
                if fin {
                    return message(text, payload).map(Some);
                }
                self.partial = Some(Box::new((text, payload)));
                Ok(None)
            }
            // Refused from the header already.
            _ => Err(ReadError::Protocol("unknown opcode")),
        }
    }
}

fn message(text: bool, bytes: Vec<u8>) -> Result<ClientMessage, ReadError> {
    if text {
        String::from_utf8(bytes)
            .map(ClientMessage::Text)
            .map_err(|_| ReadError::Utf8)
    } else {
        Ok(ClientMessage::Binary(bytes))
    }
}

fn close(payload: Vec<u8>) -> Result<ClientMessage, ReadError> {
    match payload.as_slice() {
        [] => Ok(ClientMessage::Close(None)),
        [_] => Err(ReadError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let reason = std::str::from_utf8(reason).map_err(|_| ReadError::Utf8)?;
            let code = u16::from_be_bytes([*hi, *lo]);
            Ok(ClientMessage::Close(Some((code, reason.to_owned()))))
        }
    }
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

#[cfg(test)]
mod reader_tests {
    use super::*;

    /// A client frame: masked with `mask`, `fin` and `op` as given, the
    /// shortest length encoding.
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![u8::from(fin) << 7 | op];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            out.push(0x80 | 126);
            out.extend_from_slice(&short.to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Every message `bytes` holds, taken frame by frame.
    fn read_all(bytes: &[u8], max: usize) -> Result<Vec<ClientMessage>, ReadError> {
        let mut reader = ClientReader::default();
        let (mut at, mut out) = (0, Vec::new());
        while at < bytes.len() {
            match reader.take(&bytes[at..], max)? {
                Step::More(need) => panic!("incomplete at {at}: needs {need}"),
                Step::Frame { used, message } => {
                    at += used;
                    out.extend(message);
                }
            }
        }
        Ok(out)
    }

    /// Each length class, text and binary, read back; any prefix of a frame
    /// asks for more, never for fewer bytes than it has, and is not taken.
    #[test]
    fn frames_of_each_length_are_read_back_from_any_split() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = client_frame(true, opcode::TEXT, text.as_bytes());
            assert_eq!(
                read_all(&frame, 1 << 20),
                Ok(vec![ClientMessage::Text(text.clone())])
            );
            let frame = client_frame(true, opcode::BINARY, text.as_bytes());
            assert_eq!(
                read_all(&frame, 1 << 20),
                Ok(vec![ClientMessage::Binary(text.clone().into_bytes())])
            );
            for cut in [0, 1, 2, 3, 5, 9, 13, frame.len() - 1] {
                let cut = cut.min(frame.len() - 1);
                match ClientReader::default().take(&frame[..cut], 1 << 20) {
                    Ok(Step::More(need)) => assert!(need > cut && need <= frame.len()),
                    other => panic!("len {len} cut {cut}: {other:?}"),
                }
            }
        }
    }

    /// A fragmented message is assembled across continuations, with a
    /// control frame between them; the reader then holds nothing.
    #[test]
    fn fragments_are_assembled() {
        let mut bytes = client_frame(false, opcode::TEXT, b"hel");
        bytes.extend(client_frame(true, opcode::PING, b"p"));
        bytes.extend(client_frame(false, opcode::CONTINUATION, b"lo "));
        bytes.extend(client_frame(true, opcode::CONTINUATION, b"you"));
        bytes.extend(client_frame(true, opcode::PONG, b"xy"));
        bytes.extend(client_frame(true, opcode::CLOSE, b"\x03\xe8bye"));
        bytes.extend(client_frame(true, opcode::CLOSE, b""));
        assert_eq!(
            read_all(&bytes, 100),
            Ok(vec![
                ClientMessage::Ping(b"p".to_vec()),
                ClientMessage::Text("hello you".into()),
                ClientMessage::Pong(2),
                ClientMessage::Close(Some((1000, "bye".into()))),
                ClientMessage::Close(None),
            ])
        );
    }

    /// What RFC 6455 forbids, and what is over the size limit, is refused.
    #[test]
    fn bad_frames_are_refused() {
        let text = |fin| client_frame(fin, opcode::TEXT, b"abc");
        let mut unmasked = text(true);
        unmasked[1] &= 0x7f;
        let mut rsv = text(true);
        rsv[0] |= 0x40;
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (
                unmasked,
                ReadError::Protocol("unmasked frame from a client"),
            ),
            (rsv, ReadError::Protocol("reserved bits set")),
            (
                client_frame(true, 0x3, b"abc"),
                ReadError::Protocol("unknown opcode"),
            ),
            (
                client_frame(true, 0xB, b"abc"),
                ReadError::Protocol("unknown opcode"),
            ),
            (
                client_frame(false, opcode::PING, b"abc"),
                ReadError::Protocol("fragmented control frame"),
            ),
            (
                client_frame(true, opcode::PING, &[0; 126]),
                ReadError::Protocol("control frame over 125 bytes"),
            ),
            (
                client_frame(true, opcode::CONTINUATION, b"abc"),
                ReadError::Protocol("continuation frame outside a message"),
            ),
            (
                [text(false), text(true)].concat(),
                ReadError::Protocol("new message inside a fragmented one"),
            ),
            (
                client_frame(true, opcode::CLOSE, b"\x03"),
                ReadError::Protocol("close frame of one byte"),
            ),
            (
                client_frame(true, opcode::CLOSE, b"\x03\xe8\xff"),
                ReadError::Utf8,
            ),
            (
                client_frame(true, opcode::TEXT, b"\xc3\x28"),
                ReadError::Utf8,
            ),
            (
                client_frame(true, opcode::BINARY, &[0; 11]),
                ReadError::TooBig(11),
            ),
            (
                [
                    client_frame(false, opcode::BINARY, &[0; 6]),
                    client_frame(true, opcode::CONTINUATION, &[0; 5]),
                ]
                .concat(),
                ReadError::TooBig(11),
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(read_all(&bytes, 10), Err(error.clone()), "{bytes:?}");
        }
        // An unknown opcode is refused from the frame's first two bytes, a
        // 64-bit length with its top bit set (RFC 6455 §5.2) from the header.
        assert_eq!(
            ClientReader::default().take(&[0x83, 0x85], 10),
            Err(ReadError::Protocol("unknown opcode"))
        );
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            ClientReader::default().take(&huge, 10),
            Err(ReadError::Protocol("64-bit length with its top bit set"))
        );
        // An oversized frame is refused from its header alone.
        let mut header = client_frame(true, opcode::BINARY, &[0; 200]);
        header.truncate(4);
        assert_eq!(
            ClientReader::default().take(&header, 10),
            Err(ReadError::TooBig(200))
        );
    }

    /// Server control frames as tungstenite writes them.
    #[test]
    fn close_frames_match_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
        for reason in ["", "slow consumer", &"é".repeat(70)] {
            let mut ours = Vec::new();
            write_close(&mut ours, 1008, reason);
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let theirs = Frame::close(Some(CloseFrame {
                code: CloseCode::from(1008),
                reason: reason[..end].into(),
            }));
            let mut expected = Vec::new();
            theirs.format(&mut expected).expect("format");
            assert_eq!(ours, expected);
        }
        let mut ours = Vec::new();
        write_op_frame(&mut ours, opcode::PONG, b"abc");
        let mut expected = Vec::new();
        Frame::pong(b"abc".to_vec())
            .format(&mut expected)
            .expect("format");
        assert_eq!(ours, expected);
    }
}
