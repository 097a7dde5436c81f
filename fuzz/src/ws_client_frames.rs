//! A client's WebSocket frames (`protocol::wsframe::ClientReader`): the bytes
//! of an untrusted socket. The first input byte sets how the rest arrives (in
//! pieces of 1 to 64 bytes), the rest is the stream. Read whole and read as it
//! arrives (kept bytes plus each new piece, as the connection's `Wire` does),
//! it gives the same messages and the same error; a step never takes more
//! bytes than it was given, and "more" always asks for more than it has.

use chorus_gateway::protocol::wsframe::{ClientMessage, ClientReader, ReadError, Step};

/// The size limit the reader is held to: small, so the limit is reached.
const MAX: usize = 300;

fn take_all(
    reader: &mut ClientReader,
    bytes: &[u8],
    out: &mut Vec<ClientMessage>,
) -> Result<usize, ReadError> {
    let mut at = 0;
    loop {
        match reader.take(&bytes[at..], MAX)? {
            Step::More(need) => {
                assert!(need > bytes.len() - at, "asks for bytes it has");
                return Ok(at);
            }
            Step::Frame { used, message } => {
                assert!(used >= 6 && used <= bytes.len() - at, "took {used}");
                at += used;
                out.extend(message);
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    let whole_result = take_all(&mut ClientReader::default(), stream, &mut whole);

    let piece = usize::from(split % 64) + 1;
    let (mut reader, mut kept, mut pieces) = (ClientReader::default(), Vec::new(), Vec::new());
    let mut pieces_result = Ok(0);
    for chunk in stream.chunks(piece) {
        kept.extend_from_slice(chunk);
        match take_all(&mut reader, &kept, &mut pieces) {
            Ok(used) => {
                kept.drain(..used);
            }
            Err(e) => {
                pieces_result = Err(e);
                break;
            }
        }
    }
    assert_eq!(
        whole, pieces,
        "messages differ when read in pieces of {piece}"
    );
    match (whole_result, pieces_result) {
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(_), Ok(_)) => {}
        (a, b) => panic!("whole: {a:?}, in pieces of {piece}: {b:?}"),
    }
}
