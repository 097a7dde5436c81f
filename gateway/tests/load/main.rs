//! `chorus-load` runs each scenario in a tiny configuration against a real
//! `chorus` process and measures something: every connection opened, every
//! broadcast delivered, replies counted, every client's presence view full.
//! No timing is asserted.

use std::process::Command;

use serde_json::Value;

/// Runs `chorus-load --spawn <chorus> --json <args>` and parses its result.
fn load(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus-load"))
        .args(["--spawn", env!("CARGO_BIN_EXE_chorus"), "--json"])
        .args(args)
        .output()
        .expect("running chorus-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chorus-load {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn idle_connections_are_opened_and_the_server_memory_is_read() {
    let r = load(&["idle", "--conns", "40", "--settle", "0"]);
    assert_eq!(
        (r["open"].as_u64(), r["failed"].as_u64()),
        (Some(40), Some(0)),
        "{r}"
    );
    assert!(r["rss_before"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["rss_after"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["bytes_per_conn"].is_f64(), "{r}");
}

#[test]
fn fanout_delivers_every_broadcast_to_every_subscriber() {
    let r = load(&["fanout", "--subs", "20", "--rate", "20", "--secs", "1"]);
    assert!(r["delivered_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert_eq!(r["published"].as_u64(), Some(20), "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(400), "{r}");
    assert_eq!(
        (r["missing"].as_u64(), r["out_of_order"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["latency"]["count"].as_u64(), Some(400), "{r}");
}

#[test]
fn paced_ping_counts_echoed_replies() {
    let r = load(&["ping", "--conns", "2", "--interval-ms", "50", "--secs", "1"]);
    // Two connections, one push per 50 ms each for a second: never more
    // than 2 x 21 (slowness can only make it fewer).
    let replies = r["replies"].as_u64().unwrap_or(0);
    assert!((1..=42).contains(&replies), "{r}");
}

#[test]
fn ping_counts_echoed_replies() {
    let r = load(&["ping", "--conns", "2", "--inflight", "2", "--secs", "1"]);
    assert!(r["replies"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["replies_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert_eq!(r["rtt"]["count"], r["replies"], "{r}");
}

#[test]
fn every_storm_client_sees_every_user() {
    let r = load(&["storm", "--users", "30", "--timeout", "30"]);
    assert_eq!(
        (r["joined"].as_u64(), r["incomplete"].as_u64()),
        (Some(30), Some(0)),
        "{r}"
    );
    assert_eq!(r["smallest_view"].as_u64(), Some(30), "{r}");
    assert!(r["all_seen_s"].is_f64(), "{r}");
    assert!(r["diffs_in"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn fanout_with_a_stalled_subscriber_counts_its_cut() {
    // 60 KB messages at 50/s for 6 s (18 MB): the subscriber that never
    // reads fills its socket buffers (about 10 MB on loopback) and then its
    // 1 MiB queue. The publisher receives every message too (`broadcast`
    // includes the sender): at 3 MB/s it keeps up even in a debug build on a
    // busy machine, where 12 MB/s got the publisher itself cut as a slow
    // consumer.
    let r = load(&[
        "fanout",
        "--subs",
        "3",
        "--stalled",
        "1",
        "--rate",
        "50",
        "--pad",
        "60000",
        "--secs",
        "6",
    ]);
    assert_eq!(r["stalled"].as_u64(), Some(1), "{r}");
    assert!(r["delivered"].as_u64().unwrap_or(0) > 0, "{r}");
    let cut = r["slow_consumer_disconnects"].as_u64();
    assert!(cut.is_some_and(|n| n >= 1), "the stalled one was cut: {r}");
}

#[test]
fn hooks_joins_call_the_backend_once_each() {
    let r = load(&["hooks", "--joins", "20", "--conns", "4", "--delay-ms", "1"]);
    assert_eq!(
        (
            r["ok"].as_u64(),
            r["errors"].as_u64(),
            r["backend_calls"].as_u64()
        ),
        (Some(20), Some(0), Some(20)),
        "{r}"
    );
    let r = load(&[
        "hooks",
        "--joins",
        "20",
        "--conns",
        "4",
        "--topic-prefix",
        "room",
    ]);
    assert_eq!(
        (r["ok"].as_u64(), r["backend_calls"].as_u64()),
        (Some(20), Some(0)),
        "{r}"
    );
}

#[test]
fn recover_rejoins_get_every_missed_message() {
    let r = load(&["recover", "--clients", "20", "--missed", "10"]);
    assert_eq!(
        (r["recovered"].as_u64(), r["complete"].as_u64()),
        (Some(20), Some(20)),
        "{r}"
    );
    assert!(r["all_recovered_s"].is_f64(), "{r}");
}

#[test]
fn recover_after_a_restart_of_the_clients_node_gets_every_missed_message() {
    let r = load(&["recover", "--clients", "20", "--missed", "10", "--restart"]);
    assert_eq!(
        (r["recovered"].as_u64(), r["complete"].as_u64()),
        (Some(20), Some(20)),
        "{r}"
    );
    assert!(r["restart_synced_s"].is_f64(), "{r}");
    assert!(r["all_recovered_s"].is_f64(), "{r}");
}

#[test]
fn fanout_on_a_recoverable_topic_delivers_every_broadcast_in_order() {
    let r = load(&[
        "fanout",
        "--subs",
        "20",
        "--rate",
        "20",
        "--secs",
        "1",
        "--topic",
        "recover:fanout",
    ]);
    assert_eq!(r["delivered"].as_u64(), Some(400), "{r}");
    assert_eq!(
        (r["missing"].as_u64(), r["out_of_order"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
}
