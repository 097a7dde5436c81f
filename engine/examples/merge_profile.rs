//! A small harness for instruction counts of the presence merge, for
//! `valgrind --tool=callgrind`, whose counts do not depend on the load of a
//! shared machine (criterion's wall times do).
//!
//! It builds the receiver of `benches/presence.rs` at a chosen scale (topics of
//! 100 keys from four origins, merged in through anti-entropy slices), then
//! merges `ROUNDS` δ-groups of origin `o0` with `ADDS` tracks and `ADDS / 10`
//! untracks, each round-tripped through the wire codec as a node receives it,
//! after one warm-up round. Only `merge_timed` does the work under study:
//!
//! ```text
//! cargo build --release -p chorus-engine --example merge_profile
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*merge_timed*' \
//!     $CARGO_TARGET_DIR/release/examples/merge_profile 2000 1000 5
//! ```
//!
//! Arguments: topics (default 2,000, i.e. 200k entries; the criterion bench
//! uses 20,000), adds per δ-group (1,000), rounds (5).

// The bench's origin replica; `feed` is the bench's (this harness slices
// its own parts, to send them through the codec).
#[path = "../benches/support/origin.rs"]
#[allow(dead_code)]
mod origin;

use std::hint::black_box;
use std::time::Instant;

use chorus_engine::Presence;
use chorus_engine::{Body, Message};
use chorus_engine::{Cut, Delta, Part};
use chorus_engine::{NodeId, PresEntry, Topic};
use origin::{Diff, Origin};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const KEYS_PER_TOPIC: usize = 100;
const ORIGINS: usize = 4;

/// Encodes and decodes a δ-group, so its entries own their text as a
/// receiver's do.
fn over_the_wire(parts: &[Part<PresEntry>]) -> Delta<PresEntry> {
    let msg = Message {
        from: NodeId::new("o0", 1),
        addr: "127.0.0.1:7400".parse().expect("an address"),
        body: Body::Delta {
            start: 0,
            seq: 1,
            presence: Delta::join(parts),
            subs: Delta::default(),
        },
    };
    match Message::decode(&msg.encode()).expect("round trip").body {
        Body::Delta { presence, .. } => presence,
        _ => unreachable!("a delta was encoded"),
    }
}

/// The first round, not counted: it fills the free slots and capacities that
/// later rounds reuse, as criterion's warm-up does.
#[inline(never)]
fn merge_warm_up(
    rx: &mut Presence,
    delta: Delta<PresEntry>,
    diff: &mut Diff,
) -> Vec<Option<Part<PresEntry>>> {
    merge_all(rx, delta, diff)
}

#[inline(never)]
fn merge_timed(
    rx: &mut Presence,
    delta: Delta<PresEntry>,
    diff: &mut Diff,
) -> Vec<Option<Part<PresEntry>>> {
    merge_all(rx, delta, diff)
}

/// Merges every part; the novel parts are kept (a node buffers them), so
/// dropping them is not counted.
fn merge_all(
    rx: &mut Presence,
    delta: Delta<PresEntry>,
    diff: &mut Diff,
) -> Vec<Option<Part<PresEntry>>> {
    delta.parts.into_iter().map(|p| rx.merge(p, diff)).collect()
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n_topics = args.next().transpose().expect("topics").unwrap_or(2_000);
    let adds = args.next().transpose().expect("adds").unwrap_or(1_000);
    let rounds = args.next().transpose().expect("rounds").unwrap_or(5);
    let removes = adds / 10;

    let t0 = Instant::now();
    let topics: Vec<Topic> = (0..n_topics)
        .map(|t| Topic::new(format!("room:{t}")))
        .collect();
    let mut rx = Presence::new(NodeId::new("rx", 1), [0xAA; 6], 100_000);
    let mut diff = Vec::new();
    let mut origins: Vec<Origin> = (0..ORIGINS)
        .map(|i| Origin::new(&format!("o{i}"), i as u8 + 1, 100_000))
        .collect();
    for t in &topics {
        for k in 0..KEYS_PER_TOPIC {
            origins[k % ORIGINS].track(t.clone(), format!("u{k}").into());
        }
    }
    for o in &origins {
        let cut = Cut {
            adds: 10_000,
            bytes: usize::MAX,
        };
        for part in o.p.store().slice(&o.id, 0, cut, |_| 0) {
            let d = over_the_wire(std::slice::from_ref(&part));
            for p in d.parts {
                rx.merge(p, &mut diff);
            }
            diff.clear();
        }
    }
    let mut x = origins.swap_remove(0);
    drop(origins);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    x.fifo.make_contiguous().shuffle(&mut rng);
    let size = rx.visible_len();
    eprintln!("built {size} entries in {:.1?}", t0.elapsed());

    let mut next = 0usize;
    for round in 0..=rounds {
        let mut parts = Vec::with_capacity(adds + removes);
        for _ in 0..removes {
            parts.push(x.untrack_oldest());
        }
        for _ in 0..adds {
            next += 1;
            let t = topics[(next * 7_919) % n_topics].clone();
            parts.push(x.track(t, format!("n{next}").into()));
        }
        let delta = over_the_wire(&parts);
        drop(parts);
        let t = Instant::now();
        let novel = if round == 0 {
            merge_warm_up(&mut rx, delta, &mut diff)
        } else {
            merge_timed(&mut rx, delta, &mut diff)
        };
        let took = t.elapsed();
        assert!(novel.len() == 1 && novel[0].is_some(), "the delta was new");
        assert_eq!(diff.len(), adds + removes);
        eprintln!("merged {} ops in {took:.2?}", adds + removes);
        drop(black_box(novel));
        diff.clear();
        let back: Vec<_> = (removes..adds).map(|_| x.untrack_oldest()).collect();
        for p in Delta::join(&back).parts {
            rx.merge(p, &mut diff);
        }
        diff.clear();
        assert_eq!(rx.visible_len(), size, "no drift");
    }
}
