//! The HTTP API, `/readyz` and `/metrics` end to end: servers on 127.0.0.1:0, a raw
//! HTTP/1.1 client, and every answer checked against `gateway/openapi.json`.

mod cluster;
mod dashboard;
mod grafana;
mod http;
mod ops;
mod prom;
mod rooms;
mod routes;
#[path = "../websocket/util.rs"]
#[allow(dead_code)]
mod util;
