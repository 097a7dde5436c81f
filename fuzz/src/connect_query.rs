//! The connect request's query string (`/socket/websocket?token=…&vsn=2.0.0`):
//! `Query::parse`, the params as `connect/3` sees them, and `vsn` negotiation.

use chorus_gateway::protocol::{Query, Vsn};

/// Any UTF-8 (hyper hands the server the URI's query as `&str`).
pub fn run(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    // The `vsn` value alone, as the WebSocket upgrade and LongPoll read it.
    let _ = Vsn::negotiate(Some(raw));
    let Ok(query) = Query::parse(raw) else {
        return;
    };
    let pairs = query.pairs().count();
    assert!(pairs <= raw.len(), "more pairs than bytes");
    // `get` finds the last value of a key. Checked for the first 32 keys only:
    // `get` scans the pairs, so checking every key is quadratic in the input
    // (the server looks up a handful of keys, never one per pair).
    let mut last = std::collections::HashMap::new();
    for (key, value) in query.pairs() {
        last.insert(key, value);
    }
    for (key, value) in last.into_iter().take(32) {
        assert_eq!(
            query.get(key),
            Some(value),
            "get({key:?}) is not its last value"
        );
    }
    let params = query.params();
    let json = serde_json::Value::Object(params);
    serde_json::to_string(&json).expect("params serialize");
    let _ = query.vsn();
}
