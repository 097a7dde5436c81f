//! The `Sec-WebSocket-Protocol` request header, which phoenix.js ≥ 1.8 uses to carry
//! its `authToken`: `phoenix, base64url.bearer.phx.<token>`. Despite the prefix the
//! token is *standard* base64 (`btoa`) with the `=` padding stripped.
//!
//! A server that was offered `phoenix` must echo `Sec-WebSocket-Protocol: phoenix`,
//! or browsers and Node's `ws` abort the handshake.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};

/// The prefix of the subprotocol element that carries the auth token.
pub const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// The subprotocol phoenix.js offers and a server must select.
pub const PHOENIX: &str = "phoenix";

/// What a client offered in `Sec-WebSocket-Protocol`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subprotocols {
    /// Whether `phoenix` was offered (then it must be echoed).
    pub phoenix: bool,
    /// The decoded auth token, if the client sent one.
    pub auth_token: Option<String>,
    /// Every other offered value, in order, without `phoenix` and the token element.
    pub others: Vec<String>,
}

/// Why the header could not be read; the handshake should be refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubprotocolError {
    /// The token element is not standard base64.
    #[error("auth token subprotocol is not valid base64: {0}")]
    InvalidBase64(#[from] base64::DecodeError),
    /// The decoded token is not UTF-8 (`btoa` of a non-ASCII string).
    #[error("auth token is not UTF-8")]
    TokenNotUtf8,
    /// More than one element carries the token prefix.
    #[error("more than one auth token subprotocol offered")]
    DuplicateAuthToken,
}

impl Subprotocols {
    /// Reads one header value. Several header lines should be joined with `,` first.
    /// Values are split on commas and trimmed (browsers send `", "`, Node `","`).
    pub fn parse(header: &str) -> Result<Self, SubprotocolError> {
        let mut offered = Self::default();
        let mut encoded_token = None;
        for value in header.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            if let Some(encoded) = value.strip_prefix(AUTH_TOKEN_PREFIX) {
                if encoded_token.replace(encoded).is_some() {
                    return Err(SubprotocolError::DuplicateAuthToken);
                }
            } else if value == PHOENIX {
                offered.phoenix = true;
            } else {
                offered.others.push(value.to_owned());
            }
        }
        if let Some(encoded) = encoded_token {
            offered.auth_token = Some(decode_token(encoded)?);
        }
        Ok(offered)
    }
}

/// Standard alphabet; padding optional, since phoenix.js strips it.
const TOKEN_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_token(encoded: &str) -> Result<String, SubprotocolError> {
    let bytes = TOKEN_ENGINE.decode(encoded)?;
    String::from_utf8(bytes).map_err(|_| SubprotocolError::TokenNotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_observed_header() {
        let s = Subprotocols::parse("phoenix,base64url.bearer.phx.bXktc2VjcmV0LXRva2Vu")
            .expect("valid");
        assert!(s.phoenix);
        assert_eq!(s.auth_token.as_deref(), Some("my-secret-token"));
        assert!(s.others.is_empty());
    }

    #[test]
    fn browser_spacing_and_other_protocols() {
        let s =
            Subprotocols::parse(" chat ,phoenix,  base64url.bearer.phx.YWJj , ,v2").expect("valid");
        assert!(s.phoenix);
        assert_eq!(s.auth_token.as_deref(), Some("abc"));
        assert_eq!(s.others, ["chat", "v2"]);
    }

    #[test]
    fn padding_is_optional_and_the_alphabet_is_standard() {
        let padded = Subprotocols::parse("phoenix, base64url.bearer.phx.YQ==").expect("padded");
        assert_eq!(padded.auth_token.as_deref(), Some("a"));
        let unpadded = Subprotocols::parse("phoenix, base64url.bearer.phx.YQ").expect("unpadded");
        assert_eq!(unpadded.auth_token.as_deref(), Some("a"));
        // btoa("a?b?c?") = "YT9iP2M/" uses the standard alphabet's `/`.
        let slash =
            Subprotocols::parse("base64url.bearer.phx.YT9iP2M/").expect("standard alphabet");
        assert_eq!(slash.auth_token.as_deref(), Some("a?b?c?"));
        assert!(!slash.phoenix);
    }

    #[test]
    fn no_token_and_no_phoenix() {
        assert_eq!(
            Subprotocols::parse("").expect("empty"),
            Subprotocols::default()
        );
        let s = Subprotocols::parse("phoenix").expect("phoenix only");
        assert_eq!((s.phoenix, s.auth_token), (true, None));
    }

    #[test]
    fn bad_tokens_are_errors() {
        let url_safe = Subprotocols::parse("phoenix, base64url.bearer.phx.YT9iP2M_");
        assert!(
            matches!(url_safe, Err(SubprotocolError::InvalidBase64(_))),
            "{url_safe:?}"
        );
        let not_utf8 = Subprotocols::parse("phoenix, base64url.bearer.phx.6Q"); // btoa("é")
        assert_eq!(not_utf8, Err(SubprotocolError::TokenNotUtf8));
        let twice = Subprotocols::parse("base64url.bearer.phx.YQ, base64url.bearer.phx.Yg");
        assert_eq!(twice, Err(SubprotocolError::DuplicateAuthToken));
    }
}
