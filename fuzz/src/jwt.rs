//! JWT verification: the `chorus` binary's connect hook (`token::Tokens::verify`,
//! HS256). The seeds are real tokens signed with [`SECRET`] by `Tokens::sign`, so
//! mutations reach the claims decoding.

use chorus_gateway::token::Tokens;

/// The secret the seed tokens are signed with.
pub const SECRET: &[u8] = b"chorus-fuzz-token-secret";

/// Any UTF-8 (the token arrives in a query string or a subprotocol).
pub fn run(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = Tokens::new(SECRET);
    if let Ok(claims) = tokens.verify(token) {
        // What verify promises the socket id and the assigns.
        assert!(!claims.sub.is_empty() && claims.sub.len() <= 256);
        assert!(!claims.sub.contains(':'));
        let _ = claims.assigns();
        // A valid token stays valid when signed again by us.
        let again = tokens.sign(&claims);
        assert_eq!(tokens.verify(&again).ok().as_ref(), Some(&claims));
    }
}
