//! Presence through the session (pitfall 8): `presence_state` after every (re)join,
//! diffs as fastlane broadcasts, updates as one diff, `list` from the driver's data.

use super::*;
use crate::channel::{presence_diff, PresenceEntry};

fn alice(phx_ref: &str) -> PresenceEntry {
    PresenceEntry::new("alice", phx_ref, obj(r#"{"online_at":"1795674323"}"#))
}

fn bob() -> PresenceEntry {
    PresenceEntry::new(
        "bob",
        "GOuESJroINCWmATB",
        obj(r#"{"online_at":"1795674323"}"#),
    )
}

/// Capture §2 and §9, as the driver runs them: join → Track → state handed in →
/// `presence_state` with the join's join_ref; the diff arrives as a broadcast with
/// null refs; a rejoin gets a fresh `presence_state` and the stale one is ignored.
#[test]
fn presence_state_after_every_join() {
    let mut h = Harness::v2();
    h.send(r#"["2","2","room:lobby","phx_join",{}]"#);
    assert_eq!(
        h.actions(),
        [subscribe("room:lobby", "2"), track_alice("room:lobby", "2")]
    );
    let diff = presence_diff(&[alice("GOuESILNw0CWmASh")], &[]);
    h.broadcast("room:lobby", "presence_diff", Payload::Json(diff));
    assert!(h.session.handle_presence_state(
        "room:lobby",
        &r("2"),
        vec![alice("GOuESILNw0CWmASh")]
    ));
    assert_eq!(
        h.frames(),
        [
            r#"["2","2","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"[null,null,"room:lobby","presence_diff",{"joins":{"alice":{"metas":[{"phx_ref":"GOuESILNw0CWmASh","online_at":"1795674323"}]}},"leaves":{}}]"#,
            r#"["2",null,"room:lobby","presence_state",{"alice":{"metas":[{"phx_ref":"GOuESILNw0CWmASh","online_at":"1795674323"}]}}]"#,
        ]
    );
    // Duplicate join (capture §9): the new join gets its own presence_state.
    h.send(r#"["9","9","room:lobby","phx_join",{}]"#);
    let state = vec![alice("GOuESPq4eFuWmAHS"), bob()];
    assert!(!h
        .session
        .handle_presence_state("room:lobby", &r("2"), state.clone()));
    assert!(h
        .session
        .handle_presence_state("room:lobby", &r("9"), state));
    assert_eq!(
        h.frames(),
        [
            r#"["9","9","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["2","2","room:lobby","phx_close",{}]"#,
            r#"["9",null,"room:lobby","presence_state",{"alice":{"metas":[{"phx_ref":"GOuESPq4eFuWmAHS","online_at":"1795674323"}]},"bob":{"metas":[{"phx_ref":"GOuESJroINCWmATB","online_at":"1795674323"}]}}]"#,
        ]
    );
    assert!(!h
        .session
        .handle_presence_state("room:none", &r("9"), Vec::new()));
}

/// v1 connections get the v1 object shape (capture §15).
#[test]
fn presence_state_v1() {
    let mut h = Harness::v1();
    h.send(r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#);
    assert!(h
        .session
        .handle_presence_state("room:v1", &r("2"), vec![alice("GOuEShnjKImWmAUh")]));
    assert_eq!(
        h.frames(),
        [
            r#"{"topic":"room:v1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#,
            r#"{"topic":"room:v1","event":"presence_state","payload":{"alice":{"metas":[{"phx_ref":"GOuEShnjKImWmAUh","online_at":"1795674323"}]}},"ref":null}"#,
        ]
    );
}

/// `update` and `untrack` become actions owned by the join; an untracked-everything
/// join needs no `UntrackAll` when it leaves.
#[test]
fn update_and_untrack_actions() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    h.send(r#"["2","3","room:lobby","update",{"online_at":"later","phx_ref":"forged"}]"#);
    h.send(r#"["2","4","room:lobby","untrack",{}]"#);
    h.send(r#"["2","5","room:lobby","phx_leave",{}]"#);
    assert_eq!(
        h.actions(),
        [
            Action::Update {
                topic: "room:lobby".into(),
                join_ref: r("2"),
                key: "alice".into(),
                meta: obj(r#"{"online_at":"later"}"#),
            },
            Action::Untrack {
                topic: "room:lobby".into(),
                join_ref: r("2"),
                key: "alice".into(),
            },
            unsubscribe("room:lobby", "2"),
        ]
    );
}

/// `list` answers from the state and diffs the driver handed in; the diffs apply
/// joins first, then leaves, so an update keeps the key.
#[test]
fn list_follows_state_and_diffs() {
    let mut h = Harness::v2();
    h.join("room:lobby", "2");
    let who = r#"["2","3","room:lobby","who",{}]"#;
    assert_eq!(
        h.exchange(who),
        [r#"["2","3","room:lobby","phx_reply",{"status":"ok","response":{"keys":[]}}]"#]
    );
    h.session
        .handle_presence_state("room:lobby", &r("2"), vec![alice("A")]);
    let _ = h.frames();
    h.session.handle_presence_diff("room:lobby", &[bob()], &[]);
    let updated = alice("B").with_prev("A");
    h.session
        .handle_presence_diff("room:lobby", &[updated], &[alice("A")]);
    assert_eq!(
        h.exchange(who),
        [
            r#"["2","3","room:lobby","phx_reply",{"status":"ok","response":{"keys":["bob","alice"]}}]"#
        ]
    );
    h.session
        .handle_presence_diff("room:lobby", &[], &[bob(), alice("B")]);
    assert_eq!(
        h.exchange(who),
        [r#"["2","3","room:lobby","phx_reply",{"status":"ok","response":{"keys":[]}}]"#]
    );
}
