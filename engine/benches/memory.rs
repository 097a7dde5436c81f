//! Memory per presence entry, for 1M entries with metas of 29 bytes.
//!
//! Each case runs in a fresh child process (this binary with `--case NAME`),
//! which builds its state and reports how much its resident set grew
//! (`VmRSS` in `/proc/self/status`). That is what the operating system
//! charges: allocator headers and rounding, slab and B-tree slack included.
//! A counting global allocator would need `unsafe` (the workspace forbids it)
//! or a new dependency; measuring a fresh process per case gives the same
//! split without either.
//!
//! Replicated entries are built as a receiver gets them off the wire: every
//! entry of a decoded part owns its topic and meta text (serde allocates an
//! `Arc<str>` per field). The cases differ only in what is shared, so their
//! differences isolate each allocation:
//!
//! - `replicated`: 1M entries merged from another node, topic and meta
//!   allocated per entry, as decoded.
//! - `replicated_shared_meta`: the same, all entries pointing to one meta:
//!   the per-entry cost excluding the meta allocation.
//! - `replicated_shared_meta_topic`: topics shared as well (what interning
//!   merged topics would give).
//! - `store_only_shared_meta_topic`: the bare `Store` under presence, without
//!   the topic index.
//! - `local`: 1M entries tracked on this node (`track`), metas per entry:
//!   the owner also indexes them by `(topic, key, conn)` and by connection.
//!
//! Run: `cargo bench -p chorus-engine --bench memory`. Target from the issue:
//! under 200 bytes per entry plus its meta.

use std::process::Command;

use chorus_engine::Presence;
use chorus_engine::Ranges;
use chorus_engine::{ConnId, Meta, NodeId, PhxRef, PresEntry, Topic};
use chorus_engine::{Part, Store};

const N: usize = 1_000_000;
const TOPICS: usize = 10_000;
const CHUNK: usize = 10_000;

const CASES: [&str; 5] = [
    "replicated",
    "replicated_shared_meta",
    "replicated_shared_meta_topic",
    "store_only_shared_meta_topic",
    "local",
];

fn meta_text(n: usize) -> String {
    format!("{{\"online_at\":\"{:013}\"}}", 1_700_000_000_000 + n)
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs is mounted");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kb * 1024
}

/// The parts another node would send, `CHUNK` adds each, built lazily so at
/// most one chunk is alive besides the state being measured.
fn chunks(share_meta: bool, share_topic: bool) -> impl Iterator<Item = Part<PresEntry>> {
    let origin = NodeId::new("origin", 1);
    let topics: Vec<Topic> = (0..TOPICS)
        .map(|t| Topic::new(format!("room:{t}")))
        .collect();
    let shared_meta = Meta::new(meta_text(0));
    (0..N / CHUNK).map(move |c| {
        let lo = c * CHUNK + 1;
        let adds = (lo..lo + CHUNK)
            .map(|dot| {
                let i = dot - 1;
                let t = &topics[i % TOPICS];
                let entry = PresEntry {
                    topic: if share_topic {
                        t.clone()
                    } else {
                        Topic::new(t.as_str())
                    },
                    key: format!("u{}", i / TOPICS).into(),
                    conn: ConnId(i as u64),
                    meta: if share_meta {
                        shared_meta.clone()
                    } else {
                        Meta::new(meta_text(i))
                    },
                    phx_ref: PhxRef::from_parts([7; 6], dot as u64),
                    prev_ref: None,
                };
                (dot as u64, entry)
            })
            .collect();
        Part {
            origin: origin.clone(),
            ops: Ranges::span(lo as u64, (lo + CHUNK - 1) as u64),
            adds,
            removes: Vec::new(),
            full: false,
        }
    })
}

/// Builds the case's 1M entries; returns how many and how much RSS grew.
fn run_case(case: &str) -> (usize, usize) {
    let me = NodeId::new("me", 1);
    let mut diff = Vec::new();
    let before = rss_bytes();
    match case {
        "replicated" | "replicated_shared_meta" | "replicated_shared_meta_topic" => {
            let mut p = Presence::new(me, [1; 6], 100_000);
            let share_meta = case != "replicated";
            let share_topic = case == "replicated_shared_meta_topic";
            for part in chunks(share_meta, share_topic) {
                p.merge(part, &mut diff);
                diff.clear();
            }
            (p.visible_len(), rss_bytes() - before)
        }
        "store_only_shared_meta_topic" => {
            let mut s: Store<PresEntry> = Store::new(me, 100_000);
            let mut changes = Vec::new();
            for part in chunks(true, true) {
                s.merge(part, &mut changes);
                changes.clear();
            }
            (s.len(), rss_bytes() - before)
        }
        "local" => {
            let topics: Vec<Topic> = (0..TOPICS)
                .map(|t| Topic::new(format!("room:{t}")))
                .collect();
            let mut p = Presence::new(me, [1; 6], 100_000);
            for i in 0..N {
                let key = format!("u{}", i / TOPICS).into();
                let meta = Meta::new(meta_text(i));
                p.track(
                    topics[i % TOPICS].clone(),
                    key,
                    ConnId(i as u64),
                    meta,
                    &mut diff,
                )
                .expect("new conn");
                diff.clear();
            }
            (p.visible_len(), rss_bytes() - before)
        }
        other => panic!("unknown case {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let case = &args[i + 1];
        let (len, grown) = run_case(case);
        assert_eq!(len, N, "{case} built every entry");
        println!("{grown}");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let mut per_entry = Vec::new();
    println!(
        "memory per entry, {N} entries, metas of {} bytes, {TOPICS} topics:",
        meta_text(0).len()
    );
    for case in CASES {
        let out = Command::new(&exe)
            .args(["--case", case])
            .output()
            .expect("run a child");
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let grown: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("bytes");
        let b = grown as f64 / N as f64;
        println!("  {case:<30} {b:>7.1} bytes/entry");
        per_entry.push(b);
    }
    println!(
        "  => meta allocation (replicated - replicated_shared_meta): {:.1} bytes/entry",
        per_entry[0] - per_entry[1]
    );
    println!(
        "  => topic allocation per decoded entry: {:.1} bytes/entry",
        per_entry[1] - per_entry[2]
    );
    println!(
        "  => topic index (presence - bare store): {:.1} bytes/entry",
        per_entry[2] - per_entry[3]
    );
    println!(
        "  => per entry excluding meta text, as received: {:.1} bytes (target < 200)",
        per_entry[1]
    );
    println!(
        "  sizes: PresEntry {} B, Part add (u64, PresEntry) {} B",
        std::mem::size_of::<PresEntry>(),
        std::mem::size_of::<(u64, PresEntry)>()
    );
}
