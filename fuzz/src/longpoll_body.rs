//! LongPoll `POST` bodies: split into lines (`application/x-ndjson`, at most
//! `MAX_LINES`) and each line decoded as a JSON frame or the base64 of a binary
//! frame (`longpoll::body_lines`, `longpoll::decode_line`).

use chorus_gateway::protocol::Vsn;
use chorus_gateway::server::transport::longpoll::{body_lines, decode_line, MAX_LINES};

/// The first byte picks the session's serializer (bit 0) and whether the body
/// is ndjson (bit 1); the rest is the body, UTF-8 as the server requires.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(rest) else {
        return;
    };
    let vsn = if mode & 1 == 0 { Vsn::V2 } else { Vsn::V1 };
    let ndjson = mode & 2 != 0;
    let lines = body_lines(body, ndjson);
    assert!(lines.len() <= MAX_LINES, "more lines than the cap");
    if !ndjson {
        assert_eq!(lines, [body]);
    }
    for line in lines {
        assert!(!ndjson || !line.contains('\n'), "a line holds a newline");
        if let Ok(frame) = decode_line(vsn, line) {
            crate::phoenix::check(&frame);
        }
    }
}
