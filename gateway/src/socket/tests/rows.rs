//! PROTOCOL.md §3, one test per row, fed with the capture's frames.

use super::*;

/// Row a (capture §1): a heartbeat is answered with nothing joined, with the ref's
/// JSON type echoed and a null join_ref, and again while channels are joined.
#[test]
fn a_heartbeat_always_answered() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"[null,"1","phoenix","heartbeat",{}]"#),
        [r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#]
    );
    assert_eq!(
        h.exchange(r#"[null,10,"phoenix","heartbeat",{}]"#),
        [r#"[null,10,"phoenix","phx_reply",{"status":"ok","response":{}}]"#]
    );
    h.join("room:lobby", "2");
    let _ = h.frames();
    // Several outstanding heartbeats (socket.ping) are each answered, in order.
    h.send(r#"[null,"11","phoenix","heartbeat",{}]"#);
    h.send(r#"["2","12","phoenix","heartbeat",{}]"#);
    assert_eq!(
        h.frames(),
        [
            r#"[null,"11","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
            r#"[null,"12","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
        ]
    );
    assert_eq!(h.actions(), []);
}

/// Row b (capture §5): no route, so an error reply with a NULL join_ref.
#[test]
fn b_unmatched_topic_join() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"["3","3","nope:1","phx_join",{}]"#),
        [
            r#"[null,"3","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        ]
    );
    assert_eq!(h.actions(), []);
    assert_eq!(h.session.joined("nope:1"), None);
}

/// Row c / pitfall 17: the cap (configurable) answers with the join's join_ref;
/// leaving frees a slot, and a duplicate join at the cap is not refused.
#[test]
fn c_too_many_channels() {
    let mut h = Harness::new(Vsn::V2, SessionConfig::default().with_max_channels(2));
    h.join("bench:1", "1");
    h.join("bench:2", "2");
    assert_eq!(
        h.exchange(r#"["3","3","bench:3","phx_join",{}]"#),
        [
            r#"["3","3","bench:3","phx_reply",{"status":"error","response":{"reason":"too many channels joined"}}]"#
        ]
    );
    assert_eq!(h.actions(), []);
    h.join("bench:2", "4");
    let _ = h.exchange(r#"["4","5","bench:2","phx_leave",{}]"#);
    h.join("bench:3", "6");
    assert_eq!(h.session.channel_count(), 2);
}

/// Pitfall 17: Phoenix's default cap is 100.
#[test]
fn c_default_cap_is_100() {
    let mut h = Harness::v2();
    for i in 0..100 {
        h.join(&format!("bench:{i}"), &i.to_string());
    }
    assert_eq!(
        h.exchange(r#"["x","x","bench:100","phx_join",{}]"#),
        [
            r#"["x","x","bench:100","phx_reply",{"status":"error","response":{"reason":"too many channels joined"}}]"#
        ]
    );
}

/// Row d (capture §2): ok reply with the join's join_ref, then the subscription, then
/// what the channel did after joining (its presence track).
#[test]
fn d_join_ok() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"["2","2","room:lobby","phx_join",{}]"#),
        [r#"["2","2","room:lobby","phx_reply",{"status":"ok","response":{}}]"#]
    );
    assert_eq!(
        h.actions(),
        [subscribe("room:lobby", "2"), track_alice("room:lobby", "2")]
    );
    assert_eq!(h.session.joined("room:lobby"), Some(&r("2")));
}

/// Row d with a reply payload, and pitfall 15: a push made inside `join` is sent
/// after the join reply.
#[test]
fn d_join_reply_payload_precedes_pushes_from_join() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"["1","1","room:early","phx_join",{"early":true}]"#),
        [
            r#"["1","1","room:early","phx_reply",{"status":"ok","response":{"hello":"x"}}]"#,
            r#"["1",null,"room:early","welcome",{"to":"early"}]"#,
        ]
    );
}

/// Row e: `{:error, reply}`: the error reply, no channel, no phx_close, no actions;
/// the topic stays unjoined.
#[test]
fn e_join_error() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"["4","4","room:vip","phx_join",{"deny":true}]"#),
        [
            r#"["4","4","room:vip","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#
        ]
    );
    assert_eq!(h.actions(), []);
    assert_eq!(
        h.exchange(r#"["4","5","room:vip","new_msg",{}]"#),
        [
            r#"[null,"5","room:vip","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        ]
    );
}

/// Row f: a join that panics is `{"reason":"join crashed"}`; the session carries on.
#[test]
fn f_join_crashed() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"["5","5","room:x","phx_join",{"crash":true}]"#),
        [
            r#"["5","5","room:x","phx_reply",{"status":"error","response":{"reason":"join crashed"}}]"#
        ]
    );
    assert_eq!(h.actions(), []);
    assert_eq!(
        h.log(),
        Vec::<String>::new(),
        "no terminate for a failed join"
    );
    h.join("room:x", "6");
    // A route whose factory panics is a crashed join too.
    assert_eq!(
        h.exchange(r#"["7","7","faulty:1","phx_join",{}]"#),
        [
            r#"["7","7","faulty:1","phx_reply",{"status":"error","response":{"reason":"join crashed"}}]"#
        ]
    );
    assert_eq!(h.session.channel_count(), 1);
}

/// Row g (capture §9): the new join's reply first, then `phx_close` with the OLD
/// join_ref as both join_ref and ref; the old join is cleaned up before the new one
/// subscribes and tracks.
#[test]
fn g_duplicate_join() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    assert_eq!(
        h.exchange(r#"["9","9","room:lobby","phx_join",{}]"#),
        [
            r#"["9","9","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["2","2","room:lobby","phx_close",{}]"#,
        ]
    );
    assert_eq!(
        h.actions(),
        [
            untrack_all("room:lobby", "2"),
            unsubscribe("room:lobby", "2"),
            subscribe("room:lobby", "9"),
            track_alice("room:lobby", "9"),
        ]
    );
    assert_eq!(h.log(), ["terminate room:lobby 2: DuplicateJoin"]);
    assert_eq!(h.session.joined("room:lobby"), Some(&r("9")));
}

/// Row g then e: the duplicate's replacement fails; the old join still closes, after
/// the error reply.
#[test]
fn g_duplicate_join_that_fails() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    assert_eq!(
        h.exchange(r#"["3","3","room:lobby","phx_join",{"deny":true}]"#),
        [
            r#"["3","3","room:lobby","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#,
            r#"["2","2","room:lobby","phx_close",{}]"#,
        ]
    );
    assert_eq!(h.session.joined("room:lobby"), None);
}

/// Row h (capture §10): ok reply with the message's ref, then
/// `[join_ref, join_ref, topic, "phx_close", {}]`; presences untracked, unsubscribed.
#[test]
fn h_leave() {
    let mut h = Harness::v2();
    h.join("room:lobby", "9");
    assert_eq!(
        h.exchange(r#"["9","10","room:lobby","phx_leave",{}]"#),
        [
            r#"["9","10","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["9","9","room:lobby","phx_close",{}]"#,
        ]
    );
    assert_eq!(
        h.actions(),
        [
            untrack_all("room:lobby", "9"),
            unsubscribe("room:lobby", "9")
        ]
    );
    assert_eq!(h.log(), ["terminate room:lobby 9: Left"]);
    assert_eq!(h.session.joined("room:lobby"), None);
}

/// Row h with a nil join_ref: the reply and the close carry the channel's join_ref.
#[test]
fn h_leave_with_null_join_ref() {
    let mut h = Harness::v2();
    h.join("bench:1", "6");
    assert_eq!(
        h.exchange(r#"[null,"7","bench:1","phx_leave",{}]"#),
        [
            r#"["6","7","bench:1","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["6","6","bench:1","phx_close",{}]"#,
        ]
    );
    assert_eq!(h.actions(), [unsubscribe("bench:1", "6")]);
}

/// Row i: a leave for an older join of the topic is ignored.
#[test]
fn i_stale_leave_ignored() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    assert_eq!(
        h.exchange(r#"["1","3","room:lobby","phx_leave",{}]"#),
        Vec::<String>::new()
    );
    assert_eq!(h.actions(), []);
    assert_eq!(h.session.joined("room:lobby"), Some(&r("2")));
}

/// Row j (capture §11): leaving a topic never joined still gets an ok reply.
#[test]
fn j_leave_unjoined() {
    let mut h = Harness::v2();
    assert_eq!(
        h.exchange(r#"["11","11","room:never","phx_leave",{}]"#),
        [r#"["11","11","room:never","phx_reply",{"status":"ok","response":{}}]"#]
    );
    assert_eq!(h.actions(), []);
}

/// Row k (capture §7 and §18c): events go to `handle_in` with the current or a null
/// join_ref, replies keep the order of the pushes, and a stale join_ref is dropped
/// silently.
#[test]
fn k_events_on_joined_topic() {
    let mut h = Harness::v2();
    h.join("bench:1", "6");
    assert_eq!(
        h.exchange(r#"["6","7","bench:1","ping",{"n":42,"s":"x"}]"#),
        [r#"["6","7","bench:1","phx_reply",{"status":"ok","response":{"n":42,"s":"x"}}]"#]
    );
    h.send(r#"["6","2","bench:1","ping",{"i":2}]"#);
    h.send(r#"[null,"3","bench:1","ping",{"i":3}]"#);
    h.send(r#"["5","4","bench:1","ping",{"i":4}]"#);
    h.send(r#"["6","5","bench:1","ping",{"i":5}]"#);
    assert_eq!(
        h.frames(),
        [
            r#"["6","2","bench:1","phx_reply",{"status":"ok","response":{"i":2}}]"#,
            r#"["6","3","bench:1","phx_reply",{"status":"ok","response":{"i":3}}]"#,
            r#"["6","5","bench:1","phx_reply",{"status":"ok","response":{"i":5}}]"#,
        ]
    );
}

/// Row l (capture §6): events on a topic not joined get `unmatched topic` with a null
/// join_ref, whatever join_ref they carried.
#[test]
fn l_events_on_unjoined_topic() {
    let mut h = Harness::v2();
    h.send(r#"["4","4","room:other","new_msg",{"body":"too early"}]"#);
    h.send(r#"[null,"5","bench:1","ping",{"n":0}]"#);
    assert_eq!(
        h.frames(),
        [
            r#"[null,"4","room:other","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#,
            r#"[null,"5","bench:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#,
        ]
    );
    assert_eq!(h.actions(), []);
}

/// Join outcomes are counted for metrics, by reason, and taking them resets them.
#[test]
fn join_outcomes_are_counted() {
    let mut h = Harness::new(Vsn::V2, SessionConfig::default().with_max_channels(1));
    h.join("bench:1", "1");
    let _ = h.exchange(r#"["2","2","nope:1","phx_join",{}]"#);
    let _ = h.exchange(r#"["3","3","bench:3","phx_join",{}]"#);
    assert_eq!(
        h.session.take_join_counts(),
        JoinCounts {
            ok: 1,
            unmatched_topic: 1,
            too_many_channels: 1,
            ..JoinCounts::default()
        }
    );
    assert_eq!(h.session.take_join_counts(), JoinCounts::default());
}
