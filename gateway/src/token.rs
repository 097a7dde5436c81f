//! Client tokens: JWT HS256, signed by the application's backend with the
//! shared token secret and checked at connect ([`TokenAuth`]).
//!
//! Claims: `sub` (the user id, required), `exp` (required, enforced), and the
//! optional `name`, `org`, `role`, `teams`, `friends`. The token is taken from
//! the `token` connect param, else the `authToken` subprotocol (or, on the
//! HTTP side, an `Authorization: Bearer` header). The socket id is
//! `user_socket:{sub}`; the claims become the socket's assigns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;

use crate::channel::Assigns;
use crate::socket::{Authenticator, Denied, SocketInfo};

/// The socket id of user `sub`'s connections: `user_socket:{sub}`.
pub fn socket_id(sub: &str) -> String {
    format!("user_socket:{sub}")
}

/// The claims of a client token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Display name (`username` in presence and messages); defaults to `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's organisation, for `org:{org}` topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// A role, passed to channels as an assign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Teams of the org the user belongs to, for `org:{org}:team:{team}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// User ids the user may send notifications to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub friends: Vec<String>,
}

impl Claims {
    /// Claims for `sub` expiring `ttl` from now.
    pub fn new(sub: impl Into<String>, ttl: Duration) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            sub: sub.into(),
            exp: (now + ttl).as_secs(),
            ..Self::default()
        }
    }

    /// The claims as socket assigns: `user_id`, `name`, `org`, `role`,
    /// `teams`, `friends`.
    pub fn assigns(&self) -> Assigns {
        let mut a = Assigns::new();
        a.insert("user_id".into(), Value::from(self.sub.clone()));
        let name = self.name.clone().unwrap_or_else(|| self.sub.clone());
        a.insert("name".into(), Value::from(name));
        if let Some(org) = &self.org {
            a.insert("org".into(), Value::from(org.clone()));
        }
        if let Some(role) = &self.role {
            a.insert("role".into(), Value::from(role.clone()));
        }
        a.insert("teams".into(), Value::from(self.teams.clone()));
        a.insert("friends".into(), Value::from(self.friends.clone()));
        a
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Expired, forged, malformed, or missing a required claim.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// `sub` is empty or too long.
    #[error("invalid token: bad sub")]
    BadSub,
    /// Used more than [`NBF_LEEWAY`] before its `nbf`.
    #[error("invalid token: not valid yet (nbf)")]
    NotYetValid,
}

/// How long before its `nbf` a token is already accepted: the issuer's clock
/// may run ahead of ours, and libraries such as Elixir's Joken set `nbf` to
/// the time of signing, so a token used at once would otherwise fail for as
/// long as the clocks differ. (`exp` has no leeway.)
pub const NBF_LEEWAY: Duration = Duration::from_secs(60);

/// What a token's payload is checked for: the claims, and `nbf` (checked
/// here, with [`NBF_LEEWAY`], as jsonwebtoken's one leeway would loosen
/// `exp` too).
#[derive(Deserialize)]
struct Payload {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    nbf: Option<u64>,
}

/// Signs and checks tokens with one HS256 secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

impl Tokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a valid, unexpired token, used no earlier than
    /// [`NBF_LEEWAY`] before its `nbf` (RFC 7519 4.1.5).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let Payload { claims, nbf } =
            decode::<Payload>(token, &self.decoding, &self.validation)?.claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if nbf.is_some_and(|nbf| nbf > (now + NBF_LEEWAY).as_secs()) {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 || claims.sub.contains(':') {
            return Err(TokenError::BadSub);
        }
        Ok(claims)
    }
}

/// The connect hook of the `chorus` server: a valid token or HTTP 403.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    tokens: Tokens,
}

impl TokenAuth {
    /// Checks tokens against `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self { tokens }
    }
}

impl Authenticator for TokenAuth {
    /// A `token` param or an `authToken`/bearer token.
    fn has_credentials(&self, params: &Assigns, auth_token: Option<&str>) -> bool {
        auth_token.is_some() || params.contains_key("token")
    }

    fn connect(&self, params: &Assigns, auth_token: Option<&str>) -> Result<SocketInfo, Denied> {
        let from_param = params.get("token").and_then(Value::as_str);
        let Some(token) = from_param.or(auth_token) else {
            debug!("refusing connect: no token");
            return Err(Denied);
        };
        match self.tokens.verify(token) {
            Ok(claims) => Ok(SocketInfo {
                id: Some(socket_id(&claims.sub)),
                assigns: claims.assigns(),
            }),
            Err(e) => {
                debug!(error = %e, "refusing connect");
                Err(Denied)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(token: &str) -> Assigns {
        let mut p = Assigns::new();
        p.insert("token".into(), Value::from(token));
        p
    }

    #[test]
    fn a_signed_token_connects_with_its_claims() {
        let tokens = Tokens::new(b"secret-secret-secret");
        let mut claims = Claims::new("alice", Duration::from_secs(60));
        claims.org = Some("7".into());
        claims.teams = vec!["3".into()];
        let auth = TokenAuth::new(tokens.clone());
        let info = auth.connect(&params(&tokens.sign(&claims)), None).unwrap();
        assert_eq!(info.id.as_deref(), Some("user_socket:alice"));
        assert_eq!(info.assigns["user_id"], "alice");
        assert_eq!(info.assigns["name"], "alice");
        assert_eq!(info.assigns["org"], "7");
        assert_eq!(info.assigns["teams"], serde_json::json!(["3"]));
        // The subprotocol token is used when there is no param.
        let info = auth
            .connect(&Assigns::new(), Some(&tokens.sign(&claims)))
            .unwrap();
        assert_eq!(info.id.as_deref(), Some("user_socket:alice"));
    }

    #[test]
    fn missing_forged_expired_and_malformed_tokens_are_denied() {
        let tokens = Tokens::new(b"secret-secret-secret");
        let auth = TokenAuth::new(tokens.clone());
        assert_eq!(auth.connect(&Assigns::new(), None), Err(Denied));
        let other = Tokens::new(b"another-secret-secret");
        let claims = Claims::new("alice", Duration::from_secs(60));
        assert_eq!(
            auth.connect(&params(&other.sign(&claims)), None),
            Err(Denied)
        );
        let mut expired = claims.clone();
        expired.exp -= 120;
        assert_eq!(
            auth.connect(&params(&tokens.sign(&expired)), None),
            Err(Denied)
        );
        assert_eq!(auth.connect(&params("not.a.jwt"), None), Err(Denied));
        let mut colon = claims;
        colon.sub = "a:b".into();
        assert!(matches!(
            tokens.verify(&tokens.sign(&colon)),
            Err(TokenError::BadSub)
        ));
    }

    /// RFC 7519 4.1.5: a token is not accepted before its `nbf`, but for
    /// the clocks' skew ([`NBF_LEEWAY`]): an issuer a few seconds ahead, or
    /// one that sets `nbf` to the signing time, is not refused.
    #[test]
    fn a_token_is_refused_before_its_nbf_but_for_the_clocks_skew() {
        #[derive(Serialize)]
        struct WithNbf {
            sub: &'static str,
            exp: u64,
            nbf: u64,
        }
        let tokens = Tokens::new(b"secret-secret-secret");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let with_nbf = |nbf| {
            let claims = WithNbf {
                sub: "alice",
                exp: now + 2 * 86_400,
                nbf,
            };
            let key = EncodingKey::from_secret(b"secret-secret-secret");
            tokens.verify(&encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap())
        };
        let tomorrow = with_nbf(now + 86_400);
        assert!(
            matches!(tomorrow, Err(TokenError::NotYetValid)),
            "a token with nbf = tomorrow, used now: {tomorrow:?}"
        );
        for nbf in [now - 60, now, now + 5] {
            assert_eq!(with_nbf(nbf).expect("within the skew").sub, "alice");
        }
    }
}
