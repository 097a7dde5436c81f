//! Writes the generated seed corpora: gossip messages from a real three-node
//! cluster plus the codec's golden vectors, JWTs and LongPoll tokens signed with
//! the project's own code, API bodies as the tests send them, hand-built binary
//! frames, and deterministic byte strings for the structure-aware node target.
//! Files are named by the SHA-1 of their content, as cargo fuzz names its own.
//!
//!     cd fuzz && cargo run --example seeds
//!
//! The frames from the wire capture and the tests come from `seeds/from_traffic.py`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_engine::{Body, Command, ConnId, Meta, Node, NodeConfig, NodeId, SubscriberId, Topic};
use chorus_fuzz::{jwt, longpoll_token};
use chorus_gateway::server::transport::longpoll::{sign_token, Binding, SessionRef};
use chorus_gateway::token::{Claims, Tokens};

fn write(target: &str, blobs: &[Vec<u8>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus folder");
    for blob in blobs {
        std::fs::write(dir.join(sha1_hex(blob)), blob).expect("write a seed");
    }
    println!("{target}: {} seeds", blobs.len());
}

/// SHA-1, so the names match cargo fuzz's (no extra dependency for 30 lines).
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(chunk[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

fn addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7400", i + 1)
        .parse()
        .expect("an address")
}

/// Three real nodes, a few seconds of presence, subscriptions, publishes and
/// records; every message they exchange, encoded, grouped by body kind.
fn gossip() -> Vec<Vec<u8>> {
    let mut now = Instant::now();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut cfg = NodeConfig::lan(NodeId::new(format!("n{i}"), 1), addr(i));
            cfg.seeds = vec![addr(0)];
            cfg.rng_seed = i as u64;
            Node::new(cfg, now)
        })
        .collect();
    let mut by_kind: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for step in 0..400u64 {
        now += Duration::from_millis(10);
        let i = (step % 3) as usize;
        let topic = Topic::new(format!("room:{}", step % 4));
        let cmd = match step % 40 {
            1 => Some(Command::Track {
                topic: topic.clone(),
                key: format!("user{}", step % 7).into(),
                conn: ConnId(step % 5),
                meta: Meta::new(format!(r#"{{"online_at":"{step}"}}"#)),
            }),
            5 => Some(Command::Subscribe {
                topic: topic.clone(),
                sub: SubscriberId(step % 3),
            }),
            9 => Some(Command::Publish {
                topic: topic.clone(),
                payload: Bytes::from(format!(r#"[null,null,"room:1","new_msg",{{"n":{step}}}]"#)),
                exclude: None,
            }),
            13 => Some(Command::Append {
                topic: topic.clone(),
                time_ms: 1_700_000_000_000 + step,
                body: Arc::from(r#"{"body":"hi"}"#),
            }),
            17 => Some(Command::Put {
                space: Arc::from("room"),
                key: Arc::from("news"),
                time_ms: 1_700_000_000_000 + step,
                value: Some(Arc::from("News")),
            }),
            21 => Some(Command::UntrackConn {
                conn: ConnId(step % 5),
            }),
            _ => None,
        };
        if let Some(cmd) = cmd {
            let _ = nodes[i].handle_command(now, cmd);
        }
        for node in &mut nodes {
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
        }
        if step == 390 {
            let _ = nodes[2].handle_command(now, Command::Leave);
        }
        let mut sent = Vec::new();
        for node in &mut nodes {
            while let Some(t) = node.poll_transmit() {
                sent.push(t);
            }
            while node.poll_event().is_some() {}
        }
        for t in sent {
            let bytes = t.msg.encode();
            let kind = match &t.msg.body {
                Body::Swim(s) => format!(
                    "Swim::{}",
                    format!("{s:?}").split([' ', '{', '(']).next().unwrap_or("")
                ),
                b => format!("{b:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            };
            let list = by_kind.entry(kind).or_default();
            if list.len() < 5 && bytes.len() < 4096 {
                list.push(bytes.clone());
            }
            if let Some(j) = (0..3).find(|&j| addr(j) == t.addr) {
                let msg = chorus_engine::Message::decode(&bytes).expect("decodes");
                let from = msg.from.clone();
                nodes[j].handle_message(now, &from, msg);
            }
        }
    }
    for (kind, list) in &by_kind {
        println!("  gossip {kind}: {}", list.len());
    }
    let mut seeds: Vec<Vec<u8>> = by_kind.into_values().flatten().collect();
    // The codec's golden vectors (engine/src/codec.rs).
    seeds.push(hex("02016101007f000001fbe81c0a0305"));
    seeds
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn jwts() -> Vec<Vec<u8>> {
    let tokens = Tokens::new(jwt::SECRET);
    let year = Duration::from_secs(365 * 24 * 3600);
    let mut claims = vec![
        Claims::new("alice", 50 * year),
        Claims::new("bob", 50 * year),
        Claims::new("x".repeat(256), 50 * year),
        Claims::new("has:colon", 50 * year),
        Claims::new("", 50 * year),
        Claims::new("expired", Duration::ZERO),
    ];
    let mut full = Claims::new("carol", 50 * year);
    full.name = Some("Carol".into());
    full.org = Some("acme".into());
    full.role = Some("admin".into());
    full.teams = vec!["red".into(), "blue".into()];
    full.friends = vec!["alice".into()];
    claims.push(full);
    let mut seeds: Vec<Vec<u8>> = claims.iter().map(|c| tokens.sign(c).into_bytes()).collect();
    // Signed with another secret, and with an unsigned header.
    seeds.push(Tokens::new(b"other").sign(&claims[0]).into_bytes());
    seeds.push(
        b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
            .to_vec(),
    );
    seeds
}

fn longpoll_tokens() -> Vec<Vec<u8>> {
    let sessions = [
        ("n1", 1, 1),
        ("n2", 7, 42),
        ("", 0, 0),
        ("a-long-node-name.example", u64::MAX, u64::MAX),
    ];
    let mut seeds: Vec<Vec<u8>> = sessions
        .iter()
        .map(|&(name, inc, id)| {
            let session = SessionRef {
                owner: NodeId::new(name, inc),
                id,
                binding: Binding::default(),
            };
            sign_token(&longpoll_token::KEY, &session).into_bytes()
        })
        .collect();
    let session = SessionRef {
        owner: NodeId::new("n1", 1),
        id: 1,
        binding: Binding::default(),
    };
    seeds.push(sign_token(&[0; 32], &session).into_bytes());
    seeds
}

fn api_bodies() -> Vec<Vec<u8>> {
    let bodies: &[(u8, &str)] = &[
        (
            0,
            r#"{"topic":"room:m","event":"api","payload":{},"idempotency_key":"m1"}"#,
        ),
        (
            0,
            r#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hello","n":1}}"#,
        ),
        (0, r#"{"topic": "room:bad", "event": "#),
        (0, r#"{"event":"e","payload":{}}"#),
        (0, r#"{"topic":"room:bad","event":"e","payload":[1]}"#),
        (
            0,
            r#"{"topic":"chorus:records","event":"e","payload":{},"idempotency_key":7}"#,
        ),
        (
            0,
            r#"{"topic":"room:x","event":"e","payload":{"nested":{"a":[1,2,{"b":null}]}},"extra":1}"#,
        ),
        (1, r#"{"user_id":"alice"}"#),
        (1, r#"{"user":"x"}"#),
        (1, r#"{}"#),
        (2, r#"{"id":"news","name":"News"}"#),
        (2, r#"{"id":"news"}"#),
        (2, r#"{"id":"a:b"}"#),
        (2, r#"{"id":"x","name":null}"#),
    ];
    bodies
        .iter()
        .map(|(endpoint, body)| {
            let mut v = vec![*endpoint];
            v.extend_from_slice(body.as_bytes());
            v
        })
        .collect()
}

/// Kind-0 pushes: `[0, join_ref_len, ref_len, topic_len, event_len, …, payload]`.
fn binary_frames() -> Vec<Vec<u8>> {
    let push = |join_ref: &str, r: &str, topic: &str, event: &str, payload: &[u8]| {
        let mut v = vec![
            0,
            join_ref.len() as u8,
            r.len() as u8,
            topic.len() as u8,
            event.len() as u8,
        ];
        for part in [join_ref, r, topic, event] {
            v.extend_from_slice(part.as_bytes());
        }
        v.extend_from_slice(payload);
        v
    };
    vec![
        push("1", "2", "room:lobby", "upload", &[0, 1, 2, 255]),
        push("", "", "", "", &[]),
        push("12", "345", "bench:1", "ping", b"{}"),
        push("1", "2", "room:lobby", "phx_leave", &[]),
    ]
}

/// Deterministic bytes (xorshift) for the structure-aware node target.
fn node_ops() -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    [16, 32, 64, 128, 256, 512, 1024, 2048, 64, 256, 1024, 4096]
        .iter()
        .map(|&len| (0..len).map(|_| next()).collect())
        .collect()
}

fn main() {
    write("gossip_codec", &gossip());
    write("jwt", &jwts());
    write("longpoll_token", &longpoll_tokens());
    write("api_body", &api_bodies());
    write("frame_v2_binary", &binary_frames());
    write("node_messages", &node_ops());
}
