//! Channels that panic or stop: `phx_error`/`phx_close` for that join only, cleanup
//! actions, and the connection and its other channels carrying on.

use super::channels::Tick;
use super::*;

/// Capture §12 (with the `{"reason":"channel_crash"}` payload of Phoenix ≥ 1.8.10): an
/// event without a handler crashes the channel; `phx_error` carries the join_ref as
/// join_ref and ref; later pushes to the topic get `unmatched topic`.
#[test]
fn crash_in_handle_in_errors_that_channel_only() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    h.join("bench:1", "6");
    assert_eq!(
        h.exchange(r#"["1","3","room:lobby","unknown_event",{}]"#),
        [r#"["1","1","room:lobby","phx_error",{"reason":"channel_crash"}]"#]
    );
    assert_eq!(
        h.actions(),
        [
            untrack_all("room:lobby", "1"),
            unsubscribe("room:lobby", "1")
        ]
    );
    assert_eq!(h.log(), Vec::<String>::new(), "terminate is not called");
    assert_eq!(
        h.exchange(r#"["1","4","room:lobby","new_msg",{"body":"after crash"}]"#),
        [
            r#"[null,"4","room:lobby","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        ]
    );
    assert_eq!(
        h.exchange(r#"["6","7","bench:1","ping",{"alive":true}]"#),
        [r#"["6","7","bench:1","phx_reply",{"status":"ok","response":{"alive":true}}]"#]
    );
    assert_eq!(
        h.exchange(r#"[null,"8","phoenix","heartbeat",{}]"#),
        [r#"[null,"8","phoenix","phx_reply",{"status":"ok","response":{}}]"#]
    );
    // The client rejoins with a new join_ref and gets a working channel.
    h.join("room:lobby", "9");
}

/// What a channel pushed before it panicked was already sent, so it precedes the
/// `phx_error`.
#[test]
fn pushes_before_a_crash_are_sent_first() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    assert_eq!(
        h.exchange(r#"["1","2","room:lobby","push_then_crash",{"n":1}]"#),
        [
            r#"["1",null,"room:lobby","last_words",{"n":1}]"#,
            r#"["1","1","room:lobby","phx_error",{"reason":"channel_crash"}]"#,
        ]
    );
}

/// A panic in `handle_info` (from the driver) or in `handle_out` (an intercepted
/// broadcast) is a crash too.
#[test]
fn crash_in_handle_info_and_handle_out() {
    let mut h = Harness::v2();
    h.join("room:a", "1");
    h.join("room:b", "2");
    assert!(h.session.handle_info("room:a", None, Box::new("panic")));
    assert_eq!(
        h.frames(),
        [r#"["1","1","room:a","phx_error",{"reason":"channel_crash"}]"#]
    );
    h.broadcast("room:b", "explode", Payload::empty());
    assert_eq!(
        h.frames(),
        [r#"["2","2","room:b","phx_error",{"reason":"channel_crash"}]"#]
    );
    assert_eq!(h.session.channel_count(), 0);
    assert!(!h.session.handle_info("room:a", None, Box::new(Tick)));
}

/// A push the connection's serializer cannot carry (binary on v1) crashes the
/// channel, as Phoenix's `encode!` would inside the channel process.
#[test]
fn unencodable_push_is_a_crash() {
    let mut h = Harness::v1();
    h.send(r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#);
    let _ = (h.frames(), h.actions());
    assert_eq!(
        h.exchange(
            r#"{"topic":"room:v1","event":"push_binary","payload":{},"ref":"3","join_ref":"2"}"#
        ),
        [
            r#"{"topic":"room:v1","event":"phx_error","payload":{"reason":"channel_crash"},"ref":"2"}"#
        ]
    );
    assert_eq!(
        h.actions(),
        [untrack_all("room:v1", "2"), unsubscribe("room:v1", "2")]
    );
}

/// `{:stop, :normal, reply, socket}`: the reply, then terminate's pushes, then
/// `phx_close`.
#[test]
fn stop_normal_with_reply() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    assert_eq!(
        h.exchange(r#"["1","5","room:lobby","stop",{}]"#),
        [
            r#"["1","5","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["1",null,"room:lobby","bye",{}]"#,
            r#"["1","1","room:lobby","phx_close",{}]"#,
        ]
    );
    assert_eq!(h.log(), ["terminate room:lobby 1: Normal"]);
    assert_eq!(
        h.actions(),
        [
            untrack_all("room:lobby", "1"),
            unsubscribe("room:lobby", "1")
        ]
    );
}

/// A stop with an abnormal reason is `phx_error`; a `{:shutdown, _}` stop from
/// `handle_info` is `phx_close`.
#[test]
fn stop_reasons_pick_close_or_error() {
    let mut h = Harness::v2();
    h.join("room:a", "1");
    h.join("room:b", "2");
    assert_eq!(
        h.exchange(r#"["1","3","room:a","fail",{}]"#),
        [r#"["1","1","room:a","phx_error",{"reason":"channel_crash"}]"#]
    );
    assert_eq!(h.log(), [r#"terminate room:a 1: Error("bad state")"#]);
    assert!(h
        .session
        .handle_info("room:b", Some(&r("2")), Box::new("stop")));
    assert_eq!(h.frames(), [r#"["2","2","room:b","phx_close",{}]"#]);
    assert_eq!(h.log(), [r#"terminate room:b 2: Shutdown("done")"#]);
}

/// A `terminate` that panics during a leave turns the `phx_close` into `phx_error`;
/// the cleanup still happens.
#[test]
fn terminate_panic_during_leave() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    let _ = h.exchange(r#"["1","2","room:lobby","bad_terminate",{}]"#);
    assert_eq!(
        h.exchange(r#"["1","3","room:lobby","phx_leave",{}]"#),
        [
            r#"["1","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["1","1","room:lobby","phx_error",{"reason":"channel_crash"}]"#,
        ]
    );
    assert_eq!(
        h.actions(),
        [
            untrack_all("room:lobby", "1"),
            unsubscribe("room:lobby", "1")
        ]
    );
}

/// The connection closing: every channel terminates with `Closed`, nothing is sent,
/// and each join is cleaned up.
#[test]
fn closing_the_connection_cleans_up_silently() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    h.join("bench:1", "2");
    h.send(r#"["2","3","bench:1","ping",{}]"#);
    h.session.handle_close();
    assert_eq!(h.frames(), Vec::<String>::new());
    assert_eq!(
        h.actions(),
        [
            unsubscribe("bench:1", "2"),
            untrack_all("room:lobby", "1"),
            unsubscribe("room:lobby", "1"),
        ]
    );
    assert_eq!(h.log(), ["terminate room:lobby 1: Closed"]);
    assert_eq!(h.session.channel_count(), 0);
}

/// §1.5: `disconnect` on the socket id's topic closes with 1001 (never 1000) and
/// sends no `phx_close`/`phx_error`; other events on that topic are ignored.
#[test]
fn disconnect_by_socket_id() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    assert_eq!(h.session.id(), Some("users_socket:alice"));
    assert_eq!(h.session.handle_id_broadcast("other"), None);
    assert_eq!(h.session.channel_count(), 1);
    assert_eq!(h.session.handle_id_broadcast("disconnect"), Some(1001));
    assert_eq!(h.frames(), Vec::<String>::new());
    assert_eq!(
        h.actions(),
        [
            untrack_all("room:lobby", "1"),
            unsubscribe("room:lobby", "1")
        ]
    );
}
