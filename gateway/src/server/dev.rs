//! The demo page and, in dev mode only, `/dev/token`.
//!
//! - `GET /` and `GET /assets/phoenix.min.js`: a chat page using the real
//!   phoenix.js client (served unmodified from `gateway/assets/`);
//! - `GET /dev/token?name=Alice`: `{"token", "user_id"}`, a token for user
//!   `alice` named `Alice`, valid for a day. Anyone can be anyone: dev mode
//!   only, never in production.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::http::{text, HttpBody};
use crate::protocol::Query;
use crate::token::{Claims, Tokens};

/// The demo page.
pub const INDEX_HTML: &str = include_str!("../../assets/index.html");
/// phoenix.js 1.8.16 as published on npm (`priv/static/phoenix.min.js`).
pub const PHOENIX_JS: &str = include_str!("../../assets/phoenix.min.js");

/// How long a dev token lives.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

fn body(content_type: &'static str, body: &'static str) -> Response<HttpBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("valid header"));
    r
}

/// `GET /`.
pub(crate) fn index() -> Response<HttpBody> {
    body("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/phoenix.min.js`.
pub(crate) fn phoenix_js() -> Response<HttpBody> {
    let mut r = body("text/javascript; charset=utf-8", PHOENIX_JS);
    r.headers_mut().insert(
        "cache-control",
        "public, max-age=3600".parse().expect("valid header"),
    );
    r
}

/// A user id from a display name: lowercase letters, digits and `-`.
pub fn user_id_for(name: &str) -> String {
    let id: String = name
        .trim()
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    id.trim_matches('-').to_owned()
}

/// `GET /dev/token?name=...`.
pub(crate) fn token(tokens: &Tokens, query: Option<&str>) -> Response<HttpBody> {
    let params = Query::parse(query.unwrap_or("")).map(|q| q.params());
    let name = params
        .ok()
        .and_then(|p| p.get("name").and_then(|v| v.as_str()).map(str::to_owned))
        .map(|n| n.trim().chars().take(40).collect::<String>())
        .unwrap_or_default();
    let id = user_id_for(&name);
    if id.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "name: give a name with a letter or digit\n",
        );
    }
    let mut claims = Claims::new(id.clone(), DEV_TOKEN_TTL);
    claims.name = Some(name);
    let json = serde_json::json!({ "token": tokens.sign(&claims), "user_id": id });
    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("valid header"),
    );
    r.headers_mut()
        .insert("cache-control", "no-store".parse().expect("valid header"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_from_names() {
        assert_eq!(user_id_for(" Alice "), "alice");
        assert_eq!(user_id_for("Ann Lee!"), "ann-lee");
        assert_eq!(user_id_for("a:b"), "a-b");
        assert_eq!(user_id_for("!!"), "");
    }
}
