//! Every route's answers to good and bad requests on one node: auth, malformed
//! JSON, missing fields, unknown routes and methods, oversized bodies, and a
//! disabled API. Bad requests disturb nothing: a client keeps receiving.

use chorus_gateway::server::api::routes;
use chorus_gateway::server::{ApiKey, ServerConfig};
use serde_json::{json, Value};

use crate::http::{spec, Req, KEY};
use crate::util::NodeBuilder;

fn with_key() -> ServerConfig {
    ServerConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..ServerConfig::default()
    }
}

/// The document and the route table agree both ways, so an undocumented route
/// (or a documented one the server lacks) fails here.
#[test]
fn the_document_and_the_route_table_agree() {
    let paths = spec().0["paths"].as_object().expect("paths");
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .filter(|(path, _)| path.starts_with("/api"))
        .flat_map(|(path, item)| {
            let path = path.clone();
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let mut served: Vec<(String, String)> = routes()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_documented_errors_and_disturb_nothing() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(with_key()).start().await?;
    let mut client = node.client("vsn=2.0.0").await?;
    client.join("1", "room:bad", "{}").await?;
    let good = json!({"topic": "room:bad", "event": "ok", "payload": {"n": 1}});

    let no_key = Req::new("POST", "/api/broadcast")
        .json(&good)
        .send(node.addr)
        .await?;
    assert_eq!(
        (no_key.status, no_key.error_code().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(
        no_key.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    let wrong = Req::new("POST", "/api/broadcast")
        .header("authorization", "Bearer not-the-key")
        .json(&good)
        .send(node.addr)
        .await?;
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (401, "unauthorized")
    );
    let wrong_scheme = Req::new("GET", "/api/cluster")
        .header("authorization", &format!("Basic {KEY}"))
        .send(node.addr)
        .await?;
    assert_eq!(wrong_scheme.status, 401);

    let malformed = Req::authed("POST", "/api/broadcast")
        .body(r#"{"topic": "room:bad", "event": "#)
        .send(node.addr)
        .await?;
    assert_eq!(
        (malformed.status, malformed.error_code().as_str()),
        (400, "malformed_json")
    );
    let missing = Req::authed("POST", "/api/broadcast")
        .json(&json!({"event": "e", "payload": {}}))
        .send(node.addr)
        .await?;
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (400, "invalid_request")
    );
    assert!(missing.json()?["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("topic"));
    let not_object = Req::authed("POST", "/api/broadcast")
        .json(&json!({"topic": "room:bad", "event": "e", "payload": [1]}))
        .send(node.addr)
        .await?;
    assert_eq!(
        (not_object.status, not_object.error_code().as_str()),
        (400, "invalid_request")
    );
    let long_event = Req::authed("POST", "/api/broadcast")
        .json(&json!({"topic": "room:bad", "event": "e".repeat(256), "payload": {}}))
        .send(node.addr)
        .await?;
    assert_eq!(long_event.status, 400);
    // The server's own topics cannot be broadcast to: no forged disconnects,
    // socket counts, LongPoll forwarding or idempotency keys.
    for topic in [
        "phx_disconnect",
        "phx_socket:user_socket:alice",
        "phx_lp:n1#1",
        "chorus:api:idempotency",
    ] {
        let reserved = Req::authed("POST", "/api/broadcast")
            .json(&json!({"topic": topic, "event": "disconnect", "payload": {}}))
            .send(node.addr)
            .await?;
        assert_eq!(
            (reserved.status, reserved.error_code().as_str()),
            (400, "reserved_topic"),
            "{topic}"
        );
    }
    let no_user = Req::authed("POST", "/api/disconnect")
        .json(&json!({"user": "x"}))
        .send(node.addr)
        .await?;
    assert_eq!(no_user.status, 400);
    let no_topic = Req::authed("GET", "/api/presence").send(node.addr).await?;
    assert_eq!(
        (no_topic.status, no_topic.error_code().as_str()),
        (400, "invalid_request")
    );
    let no_topic = Req::authed("GET", "/api/presence/count?topic=")
        .send(node.addr)
        .await?;
    assert_eq!(no_topic.status, 400);

    let unknown = Req::authed("GET", "/api/nowhere").send(node.addr).await?;
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (404, "not_found")
    );
    let method = Req::authed("GET", "/api/broadcast").send(node.addr).await?;
    assert_eq!(
        (method.status, method.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(
        method.headers.get("allow").map(String::as_str),
        Some("POST")
    );

    // Over the 1 MiB limit: announced by Content-Length, or found while reading a
    // chunked body.
    let declared = Req::authed("POST", "/api/broadcast")
        .body("{}")
        .send_declared(node.addr, 2 << 20)
        .await?;
    assert_eq!(
        (declared.status, declared.error_code().as_str()),
        (413, "payload_too_large")
    );
    let big = format!(
        r#"{{"topic":"room:bad","event":"e","payload":{{"x":"{}"}}}}"#,
        "a".repeat(1 << 20)
    );
    let mut chunked = Req::authed("POST", "/api/broadcast").body(big);
    chunked.chunked = true;
    let chunked = chunked.send(node.addr).await?;
    assert_eq!(
        (chunked.status, chunked.error_code().as_str()),
        (413, "payload_too_large")
    );

    // Nothing was broadcast, the client is fine, and a good request works.
    client.assert_alive("1", "room:bad").await?;
    let sent = Req::authed("POST", "/api/broadcast")
        .json(&good)
        .send(node.addr)
        .await?;
    assert_eq!(sent.status, 202);
    assert_eq!(sent.json()?, json!({"status": "sent"}));
    let got = client.recv_event("ok").await?;
    assert_eq!(got, json!([null, null, "room:bad", "ok", {"n": 1}]));

    let doc = Req::new("GET", "/api/openapi.json").send(node.addr).await?;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()?, spec().0);
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_api_is_disabled() -> anyhow::Result<()> {
    let node = NodeBuilder::new().start().await?;
    for (method, path) in routes().filter(|(_, p)| *p != "/api/openapi.json") {
        let target = format!("{path}?topic=room:x");
        let reply = Req::authed(method, &target)
            .json(&json!({"topic": "t", "event": "e", "payload": {}, "user_id": "u"}))
            .send(node.addr)
            .await?;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (503, "api_disabled"),
            "{method} {path}"
        );
        assert!(reply.json()?["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("disabled"));
    }
    let doc = Req::new("GET", "/api/openapi.json").send(node.addr).await?;
    assert_eq!(doc.status, 200, "the document needs no key");
    node.stop().await
}

/// The request bodies are strict on the server (unknown fields are a 400), so the
/// document says so: schemathesis sent `{"id":..,"<":..}` to `POST /api/rooms`,
/// valid by a schema without `additionalProperties: false`, and got 400.
#[test]
fn every_request_body_is_documented_as_strict() {
    let doc = &spec().0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Some(schema) = op["requestBody"]["content"]["application/json"]
                .get("schema")
                .map(|s| match s["$ref"].as_str() {
                    Some(r) => doc.pointer(r.trim_start_matches('#')).expect("$ref"),
                    None => s,
                })
            else {
                continue;
            };
            assert_eq!(
                schema["additionalProperties"],
                json!(false),
                "{method} {path}: the server refuses unknown fields"
            );
        }
    }
}

/// Found by schemathesis: `/healthz` had no Content-Type, and `/healthz`,
/// `/readyz` and `/metrics` answered an undeclared method with 404 instead of
/// 405 with `Allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_take_get_only_and_say_what_they_send() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(with_key()).start().await?;
    let health = Req::new("GET", "/healthz").send(node.addr).await?;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(
        health.headers.get("content-type").map(String::as_str),
        Some("text/plain; charset=utf-8")
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
            let reply = Req::new(method, path).send(node.addr).await?;
            assert_eq!(
                (reply.status, reply.error_code().as_str()),
                (405, "method_not_allowed"),
                "{method} {path}"
            );
            assert_eq!(reply.headers.get("allow").map(String::as_str), Some("GET"));
        }
    }
    // Under /api too, before the key is checked.
    let reply = Req::new("TRACE", "/api/rooms").send(node.addr).await?;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.headers.get("allow").map(String::as_str),
        Some("GET, POST")
    );
    node.stop().await
}

/// Found by schemathesis: `"idempotency_key": null` was accepted as if absent,
/// though the document declares a string. Optional fields are absent or of
/// their type; and the byte limits the document states hold at their edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_fields_are_absent_or_typed_and_limits_hold_at_the_edge() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(with_key()).start().await?;
    for key in [json!(null), json!(42), json!(""), json!("k".repeat(256))] {
        let reply = Req::authed("POST", "/api/broadcast")
            .json(&json!({"topic": "t", "event": "e", "payload": {}, "idempotency_key": key}))
            .send(node.addr)
            .await?;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "invalid_request"),
            "idempotency_key {key}"
        );
    }
    let edge = Req::authed("POST", "/api/broadcast")
        .json(&json!({
            "topic": "t".repeat(255), "event": "e".repeat(255), "payload": {},
            "idempotency_key": "k".repeat(255)
        }))
        .send(node.addr)
        .await?;
    assert_eq!(edge.status, 202);
    // The limits are bytes (`x-max-bytes`): 255 bytes of two-byte characters and
    // an ASCII one pass, one more byte does not.
    for (topic, status) in [
        ("\u{e9}".repeat(127) + "a", 202),
        ("\u{e9}".repeat(128), 400),
    ] {
        let reply = Req::authed("POST", "/api/broadcast")
            .json(&json!({"topic": topic, "event": "e", "payload": {}}))
            .send(node.addr)
            .await?;
        assert_eq!(reply.status, status, "{} bytes", topic.len());
    }
    let user = |n: usize| json!({"user_id": "u".repeat(n)});
    let longest = Req::authed("POST", "/api/disconnect")
        .json(&user(243))
        .send(node.addr)
        .await?;
    assert_eq!(longest.status, 202);
    let over = Req::authed("POST", "/api/disconnect")
        .json(&user(244))
        .send(node.addr)
        .await?;
    assert_eq!(over.status, 400);
    assert_eq!(
        spec().0["components"]["schemas"]["DisconnectRequest"]["properties"]["user_id"]
            ["maxLength"],
        json!(243)
    );
    node.stop().await
}

/// Issue 19: names with control characters are refused, a reused idempotency key
/// with another request is a conflict, and bodies nested too deep or with too
/// long strings are refused before they are relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_conflicting_keys_and_deep_bodies_are_refused() -> anyhow::Result<()> {
    let node = NodeBuilder::new().config(with_key()).start().await?;
    let mut client = node.client("vsn=2.0.0").await?;
    client.join("1", "room:edge", "{}").await?;
    for (topic, event) in [
        ("room:edge\n", "e"),
        ("room:\u{0}edge", "e"),
        ("room:\u{7f}", "e"),
        ("room:\u{85}", "e"),
        ("room:edge", "e\r\nx"),
    ] {
        let reply = Req::authed("POST", "/api/broadcast")
            .json(&json!({"topic": topic, "event": event, "payload": {}}))
            .send(node.addr)
            .await?;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "invalid_request"),
            "{topic:?} {event:?}"
        );
    }
    for path in ["/api/presence", "/api/presence/count", "/api/history"] {
        let reply = Req::authed("GET", &format!("{path}?topic=room%3A%01edge"))
            .send(node.addr)
            .await?;
        assert_eq!(reply.status, 400, "{path}");
    }
    let reply = Req::authed("GET", "/api/presence?topic=room:caf%C3%A9")
        .send(node.addr)
        .await?;
    assert_eq!(reply.status, 200, "printable non-ASCII is fine");

    let body = |payload: Value| json!({"topic": "room:edge", "event": "e", "payload": payload, "idempotency_key": "k-1"});
    let first = Req::authed("POST", "/api/broadcast")
        .json(&body(json!({"n": 1})))
        .send(node.addr)
        .await?;
    assert_eq!(first.status, 202);
    let again = Req::authed("POST", "/api/broadcast")
        .json(&body(json!({"n": 1})))
        .send(node.addr)
        .await?;
    assert_eq!(
        (again.status, again.json()?),
        (200, json!({"status": "duplicate"}))
    );
    let other = Req::authed("POST", "/api/broadcast")
        .json(&body(json!({"n": 2})))
        .send(node.addr)
        .await?;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (409, "idempotency_conflict")
    );

    let mut deep = json!({});
    for _ in 0..40 {
        deep = json!({ "a": deep });
    }
    let deep_body = json!({"topic": "room:edge", "event": "e", "payload": deep});
    let long = json!({"topic": "room:edge", "event": "e", "payload": {"s": "x".repeat(70_000)}});
    for bad in [deep_body, long] {
        let reply = Req::authed("POST", "/api/broadcast")
            .json(&bad)
            .send(node.addr)
            .await?;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "json_limit_exceeded")
        );
    }
    let scrape = Req::new("GET", "/metrics").send(node.addr).await?.text();
    for line in [
        "chorus_limit_exceeded_total{limit=\"json_max_depth\"} 1",
        "chorus_limit_exceeded_total{limit=\"json_max_string_bytes\"} 1",
    ] {
        assert!(scrape.contains(line), "{line} in {scrape}");
    }
    // Only the one good broadcast went out.
    assert_eq!(client.recv_event("e").await?[4], json!({"n": 1}));
    client.assert_alive("1", "room:edge").await?;
    node.stop().await
}
