//! The gossip wire format (`chorus_engine::Message::decode`): whatever decodes
//! re-encodes to a frame that decodes to the same message, and the encoder's
//! output is canonical (encoding it again gives the same bytes). Frames that
//! decode are also checked to be byte-identical to their re-encoding, unless
//! they use a non-minimal integer encoding that bincode's varint decoder
//! tolerates (see FUZZING.md).

use chorus_engine::Message;

/// Any bytes: one frame as the transport hands it to the node task.
pub fn run(data: &[u8]) {
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let encoded = msg.encode();
    assert_eq!(encoded.len(), msg.encoded_len(), "encoded_len disagrees");
    let again = Message::decode(&encoded).expect("our own encoding decodes");
    assert_eq!(again, msg, "decode(encode(m)) != m");
    assert_eq!(again.encode(), encoded, "encoding is not canonical");
    assert!(encoded.len() <= data.len(), "re-encoding grew the frame");
}
