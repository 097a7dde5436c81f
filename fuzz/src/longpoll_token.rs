//! LongPoll session tokens (`longpoll::verify_token`): version, session id,
//! owner incarnation and name, HMAC-SHA256. The seeds are real tokens signed with
//! [`KEY`]; nothing without the key forges one, so the fuzzer checks that
//! everything else is refused without a panic, and that what verifies was
//! signed exactly so.

use chorus_gateway::server::transport::longpoll::{sign_token, verify_token};

/// The key the seed tokens are signed with.
pub const KEY: [u8; 32] = *b"chorus-fuzz-longpoll-key-32bytes";

/// Any UTF-8 (the token arrives in a query string or a header).
pub fn run(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(session) = verify_token(&KEY, token) {
        assert_eq!(
            sign_token(&KEY, &session),
            token,
            "verified a token we would not sign"
        );
    }
    let other = [0u8; 32];
    if verify_token(&other, token).is_some() {
        // Only a token signed with the all-zero key verifies under it.
        let session = verify_token(&other, token).expect("verified above");
        assert_eq!(sign_token(&other, &session), token);
    }
}
