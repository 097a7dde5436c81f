//! Phoenix's `check_origin`: a browser names the page that opened a socket in
//! `Origin`; when the server lists allowed origins, a WebSocket handshake or
//! LongPoll request from any other page is refused with 403, so a hostile site
//! cannot use a visitor's cookies or tokens against the server. Requests
//! without `Origin` (servers, native apps) are not browsers and pass.
//!
//! An allowed origin is `https://app.example.com` (scheme, host and port must
//! match), `//app.example.com` (any scheme), or with a `*.` host prefix,
//! `https://*.example.com` (any subdomain).

use hyper::header::{HeaderMap, ORIGIN};

/// Whether a request with `headers` may use the socket, given `allowed`
/// (empty: every origin).
pub fn allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed.iter().any(|a| matches(a, origin))
}

/// Whether `origin` (`scheme://host[:port]`) matches the allowed pattern.
fn matches(pattern: &str, origin: &str) -> bool {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    let (want_scheme, want_host) = match pattern.strip_prefix("//") {
        Some(host) => (None, host),
        None => match pattern.split_once("://") {
            Some((s, h)) => (Some(s), h),
            None => (None, pattern.as_str()),
        },
    };
    if want_scheme.is_some_and(|s| s != scheme) {
        return false;
    }
    match want_host.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => host == want_host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, origin.parse().unwrap());
        h
    }

    #[test]
    fn origins_match_as_phoenix_check_origin() {
        let list = vec![
            "https://app.example.com".to_owned(),
            "//chat.example.org".to_owned(),
            "https://*.example.net".to_owned(),
        ];
        let ok = |o: &str| allowed(&list, &with_origin(o));
        assert!(ok("https://app.example.com"));
        assert!(ok("HTTPS://APP.example.com/"));
        assert!(!ok("http://app.example.com"), "scheme must match");
        assert!(!ok("https://app.example.com:8443"), "port must match");
        assert!(!ok("https://evil.com"));
        assert!(!ok("https://app.example.com.evil.com"));
        assert!(ok("http://chat.example.org") && ok("https://chat.example.org"));
        assert!(ok("https://a.example.net") && ok("https://a.b.example.net"));
        assert!(!ok("https://example.net"), "the wildcard needs a subdomain");
        assert!(!ok("https://badexample.net"));
        assert!(!ok("null"));
        assert!(
            allowed(&list, &HeaderMap::new()),
            "no Origin: not a browser"
        );
        assert!(
            allowed(&[], &with_origin("https://evil.com")),
            "no list: any"
        );
    }
}
