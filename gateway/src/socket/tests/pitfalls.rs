//! PROTOCOL.md §9 pitfalls at the session layer, v1 and binary frames, broadcasts and
//! late replies.

use super::channels::{AnswerLater, Tick};
use super::*;

/// Capture §15 and §2.3: v1 object frames; a v1 join without `join_ref` uses its ref
/// as the join_ref, which then guards events and goes into `phx_close`.
#[test]
fn v1_session() {
    let mut h = Harness::v1();
    h.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#);
    h.send(r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"2"}"#);
    assert_eq!(
        h.frames(),
        [
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#,
            r#"{"topic":"room:v1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#,
        ]
    );
    assert_eq!(h.session.joined("room:v1"), Some(&r("2")));
    assert_eq!(
        h.actions(),
        [subscribe("room:v1", "2"), track_alice("room:v1", "2")]
    );
    h.send(
        r#"{"topic":"room:v1","event":"new_msg","payload":{"body":"v1"},"ref":"3","join_ref":"2"}"#,
    );
    h.send(r#"{"topic":"room:v1","event":"new_msg","payload":{"body":"stale"},"ref":"4","join_ref":"1"}"#);
    h.send(r#"{"topic":"nope:1","event":"phx_join","payload":{},"ref":"4","join_ref":"4"}"#);
    h.broadcast("room:v1", "new_msg", json(r#"{"body":"v1"}"#));
    h.send(r#"{"topic":"room:v1","event":"phx_leave","payload":{},"ref":"5"}"#);
    assert_eq!(
        h.frames(),
        [
            r#"{"topic":"nope:1","event":"phx_reply","payload":{"status":"error","response":{"reason":"unmatched topic"}},"ref":"4"}"#,
            r#"{"topic":"room:v1","event":"new_msg","payload":{"body":"v1"},"ref":null}"#,
            r#"{"topic":"room:v1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"5"}"#,
            r#"{"topic":"room:v1","event":"phx_close","payload":{},"ref":"2"}"#,
        ]
    );
    let broadcast = |body: &str| Action::Broadcast {
        topic: "room:v1".into(),
        event: "new_msg".into(),
        payload: json(body),
        exclude_self: false,
    };
    assert_eq!(
        h.actions(),
        [
            broadcast(r#"{"body":"v1"}"#),
            untrack_all("room:v1", "2"),
            unsubscribe("room:v1", "2"),
        ]
    );
}

/// Pitfall 14 (capture §8): a binary ping gets a kind-1 binary reply whose status
/// sits where the event would; a binary push has no ref field (4-byte header).
#[test]
fn binary_reply_and_push() {
    let mut h = Harness::v2();
    h.join("bench:1", "6");
    h.send_binary(&unhex("0001010704363862656e63683a3170696e67010203ff"));
    assert_eq!(
        h.frames(),
        ["BINARY(20) hex=0101010702363862656e63683a316f6b010203ff"]
    );
    h.join("room:1", "3");
    let _ = h.frames();
    h.send(r#"["3","4","room:1","push_binary",{}]"#);
    // PROTOCOL.md §2.2's verified bytes: 00 01 06 03 "3" "room:1" "bin" 01 02 03.
    let mut expected = vec![0, 1, 6, 3];
    expected.extend_from_slice(b"3room:1bin\x01\x02\x03");
    assert_eq!(h.frames(), [format!("BINARY(17) hex={}", hex(&expected))]);
}

/// Pitfall 14 (capture §19): a binary broadcast is a kind-2 frame on a WebSocket,
/// skipped on LongPoll (which cannot carry binary) and on v1.
#[test]
fn binary_broadcast_per_transport() {
    let payload = Payload::Binary(Bytes::from_static(&[9, 8, 7]));
    let mut ws = Harness::v2();
    ws.join("room:lobby", "1");
    ws.broadcast("room:lobby", "new_msg", payload.clone());
    assert_eq!(
        ws.frames(),
        ["BINARY(23) hex=020a07726f6f6d3a6c6f6262796e65775f6d7367090807"]
    );
    let mut lp = Harness::new(Vsn::V2, SessionConfig::longpoll());
    lp.join("room:lobby", "1");
    lp.broadcast("room:lobby", "new_msg", payload);
    lp.broadcast("room:lobby", "new_msg", json(r#"{"body":"text"}"#));
    assert_eq!(
        lp.frames(),
        [r#"[null,null,"room:lobby","new_msg",{"body":"text"}]"#]
    );
}

/// §7: `broadcast` includes the sender, `broadcast_from` excludes it, `broadcast_to`
/// reaches another topic; the delivered broadcast has null refs (capture §4); a
/// broadcast for a topic not joined is ignored.
#[test]
fn broadcasts() {
    let mut h = Harness::v2();
    h.join("room:lobby", "1");
    h.send(r#"["1","2","room:lobby","new_msg",{"body":"hello","n":1}]"#);
    h.send(r#"["1","3","room:lobby","shout",{"x":1}]"#);
    h.send(r#"["1","4","room:lobby","notify",{"y":2}]"#);
    let broadcast = |topic: &str, event: &str, body: &str, exclude_self| Action::Broadcast {
        topic: topic.into(),
        event: event.into(),
        payload: json(body),
        exclude_self,
    };
    assert_eq!(
        h.actions(),
        [
            broadcast("room:lobby", "new_msg", r#"{"body":"hello","n":1}"#, false),
            broadcast("room:lobby", "shout", r#"{"x":1}"#, true),
            broadcast("user:bob", "ding", r#"{"y":2}"#, false),
        ]
    );
    assert_eq!(h.frames(), Vec::<String>::new(), "noreply sends nothing");
    h.broadcast("room:lobby", "new_msg", json(r#"{"body":"hello","n":1}"#));
    h.broadcast("room:other", "new_msg", json(r#"{"body":"not mine"}"#));
    assert_eq!(
        h.frames(),
        [r#"[null,null,"room:lobby","new_msg",{"body":"hello","n":1}]"#]
    );
}

/// §7.3: intercepted events go through `handle_out`, which may drop or rewrite them
/// (a rewrite is a push with the channel's join_ref).
#[test]
fn intercepted_broadcasts() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    h.broadcast("room:lobby", "secret", json(r#"{"s":1}"#));
    h.broadcast("room:lobby", "loud", json(r#"{"l":1}"#));
    assert_eq!(
        h.frames(),
        [r#"["2",null,"room:lobby","loud",{"loud":true}]"#]
    );
}

/// §3 "reply later": a ref kept in `handle_in` is answered from `handle_info` with
/// the channel's join_ref; messages for a stale join_ref are not delivered.
#[test]
fn late_reply_and_info_guard() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    assert_eq!(
        h.exchange(r#"["2","5","room:lobby","later",{}]"#),
        Vec::<String>::new()
    );
    assert!(!h
        .session
        .handle_info("room:lobby", Some(&r("1")), Box::new(AnswerLater)));
    assert!(h
        .session
        .handle_info("room:lobby", Some(&r("2")), Box::new(AnswerLater)));
    assert_eq!(
        h.frames(),
        [r#"["2","5","room:lobby","phx_reply",{"status":"ok","response":{"late":true}}]"#]
    );
}

/// Pitfall 5: failed joins are answered every time the client retries, and nothing
/// else happens: no `phx_close`, no actions, the socket stays usable.
#[test]
fn failed_join_retries_are_just_answered() {
    let mut h = Harness::v2();
    for (n, delay_ms) in [(7, 0), (9, 1000), (11, 2000), (13, 5000)] {
        let _ = delay_ms; // The client's backoff; the server answers each retry alike.
        assert_eq!(
            h.exchange(&format!(r#"["{n}","{n}","nope:1","phx_join",{{}}]"#)),
            [format!(
                r#"[null,"{n}","nope:1","phx_reply",{{"status":"error","response":{{"reason":"unmatched topic"}}}}]"#
            )]
        );
    }
    assert_eq!(h.actions(), []);
    h.join("bench:1", "15");
}

/// Pitfall 15: after_join work (`send_self` from `join`), pushes driven by the driver
/// and broadcasts all follow the join reply.
#[test]
fn join_reply_precedes_after_join_and_broadcasts() {
    let mut h = Harness::v2();
    h.send(r#"["2","2","room:lobby","phx_join",{}]"#);
    h.broadcast("room:lobby", "new_msg", json(r#"{"early":1}"#));
    assert!(h.session.handle_info("room:lobby", None, Box::new(Tick)));
    assert_eq!(
        h.frames(),
        [
            r#"["2","2","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"[null,null,"room:lobby","new_msg",{"early":1}]"#,
            r#"["2",null,"room:lobby","tick",{}]"#,
        ]
    );
    // The after_join track ran before the join's input returned.
    assert_eq!(
        h.actions(),
        [subscribe("room:lobby", "2"), track_alice("room:lobby", "2")]
    );
}

/// Pitfalls 3 and 16: over a whole scripted session, every frame is a 5-element
/// array whose payload is an object, and every reply payload has `status` and
/// `response` (an object).
#[test]
fn every_frame_is_well_formed() {
    let mut h = Harness::v2();
    let script = [
        r#"[null,"1","phoenix","heartbeat",{}]"#,
        r#"["2","2","room:lobby","phx_join",{}]"#,
        r#"["2","3","room:lobby","push_me",{"a":[1,2]}]"#,
        r#"["3","3","nope:1","phx_join",{}]"#,
        r#"["4","4","room:vip","phx_join",{"deny":true}]"#,
        r#"["5","5","room:lobby","phx_join",{}]"#,
        r#"["5","6","room:lobby","unknown_event",{}]"#,
        r#"["7","7","room:never","phx_leave",{}]"#,
        r#"["8","8","bench:1","phx_join",{}]"#,
        r#"["8","9","bench:1","phx_leave",{}]"#,
    ];
    let mut frames = Vec::new();
    for text in script {
        frames.extend(h.exchange(text));
    }
    assert_eq!(frames.len(), 13, "{frames:#?}");
    for frame in &frames {
        let value: serde_json::Value = serde_json::from_str(frame).expect("JSON");
        let array = value.as_array().expect("an array");
        assert_eq!(array.len(), 5, "{frame}");
        assert!(array[4].is_object(), "{frame}");
        if array[3] == "phx_reply" {
            assert!(array[4]["status"].is_string(), "{frame}");
            assert!(array[4]["response"].is_object(), "{frame}");
        }
    }
}

/// A topic over 255 bytes (which the decoders refuse) is an error for the transport
/// to close on, not a frame to answer.
#[test]
fn overlong_topic_is_an_error() {
    let mut h = Harness::v2();
    let frame = crate::protocol::InFrame {
        join_ref: None,
        ref_: Some(r("1")),
        topic: "t".repeat(256).into(),
        event: "phx_join".into(),
        payload: Payload::empty(),
    };
    let err = h.session.handle_frame(frame).expect_err("too long");
    assert_eq!(err.to_string(), "`topic` is 256 bytes, the limit is 255");
    assert_eq!(h.frames(), Vec::<String>::new());
}

/// Topics, refs and events are kept inline up to 24 bytes and on the heap
/// past that: both kinds route, stay ordered in the channel table and are
/// echoed byte for byte, string refs and number refs alike.
#[test]
fn long_and_short_topics_and_refs_are_echoed_exactly() {
    let mut h = Harness::v2();
    let long_topic = format!("bench:{}", "t".repeat(60));
    let long_ref = "r".repeat(40);
    let long_number = "1".repeat(30);
    h.join(&long_topic, &long_ref);
    h.join("bench:a", "2");
    h.join("bench:zz", &long_number);
    assert_eq!(h.session.joined(&long_topic), Some(&r(&long_ref)));
    assert_eq!(h.session.joined("bench:a"), Some(&r("2")));
    for (topic, join_ref) in [(long_topic.as_str(), long_ref.as_str()), ("bench:a", "2")] {
        let frame = format!(r#"["{join_ref}",{long_number},"{topic}","ping",{{"n":1}}]"#);
        assert_eq!(
            h.exchange(&frame),
            [format!(
                r#"["{join_ref}",{long_number},"{topic}","phx_reply",{{"status":"ok","response":{{"n":1}}}}]"#
            )]
        );
    }
    let long_event = format!(
        r#"["{long_ref}","9","{long_topic}","{}",{{}}]"#,
        "e".repeat(30)
    );
    h.send(&long_event);
    assert_eq!(
        h.frames(),
        [format!(
            r#"["{long_ref}","{long_ref}","{long_topic}","phx_error",{{"reason":"channel_crash"}}]"#
        )],
        "an event the channel has no clause for crashes it, whatever its length"
    );
    h.send(r#"["2","3","bench:a","phx_leave",{}]"#);
    assert_eq!(
        h.frames(),
        [
            r#"["2","3","bench:a","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["2","2","bench:a","phx_close",{}]"#,
        ]
    );
    assert_eq!(h.session.joined("bench:a"), None);
    assert_eq!(h.session.joined("bench:zz"), Some(&r(&long_number)));
}
