//! The `Sec-WebSocket-Protocol` header: `phoenix` and phoenix.js's
//! `base64url.bearer.phx.<token>` auth token (`Subprotocols::parse`).

use chorus_gateway::protocol::{Subprotocols, AUTH_TOKEN_PREFIX};

/// Any UTF-8 (hyper's `HeaderValue::to_str` refuses the rest).
pub fn run(data: &[u8]) {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offered) = Subprotocols::parse(header) else {
        return;
    };
    for other in &offered.others {
        assert!(!other.is_empty(), "an empty subprotocol is listed");
        assert!(
            !other.starts_with(AUTH_TOKEN_PREFIX),
            "the auth token is listed as a plain subprotocol"
        );
    }
    if offered.auth_token.is_some() {
        assert!(header.contains(AUTH_TOKEN_PREFIX), "a token from nowhere");
    }
}
