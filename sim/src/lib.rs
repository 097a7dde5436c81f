//! Chorus deterministic cluster simulator.
//!
//! `chorus-sim` runs many real [`chorus_engine::Node`]s (the code the server
//! runs, not a model of it) in one process on a virtual clock. It owns:
//!
//! - **the world** ([`World`], in [`world`]): N node slots
//!   ([`world::NodeSlot`]), a virtual clock (one base [`std::time::Instant`]
//!   captured once, plus virtual [`std::time::Duration`] offsets; all logic
//!   and traces use offsets only), one event queue ordered by
//!   `(time, sequence)` and one seeded RNG ([`rand_chacha::ChaCha8Rng`]).
//!   Nothing else feeds it: no wall clock, no OS randomness, no hash-map
//!   iteration. The same seed replays the same run byte for byte, and the
//!   report prints the hash of the event trace ([`trace`]) as
//!   `trace-hash: HEX`.
//! - **the log** ([`log`]): plain data the world writes as it runs and the
//!   checkers read afterwards: publishes, delivered broadcasts,
//!   subscriptions, faults, refused frames and commands, convergence samples
//!   (taken by the world itself), scenario asserts, and the records
//!   [`records::Ledger`].
//! - **the network** ([`net`]): every message crosses the real codec
//!   (`Message::encode`, then `Message::decode`) on its way. Nodes have fake
//!   gossip addresses `127.0.0.1:(7400 + i)`; nothing touches the OS network.
//! - **faults and workload** ([`Step`], [`workload`]): partitions, one-way
//!   partitions, heal, crash, restart as a new incarnation, pause, flapping
//!   links; clients that track, update, untrack, subscribe, publish, append to
//!   history logs and write registers ([`records`]) at configurable rates, each
//!   node's wall clock skewed as the scenario says ([`world::NodeTiming`]);
//!   a hostile peer ([`hostile`]): one authenticated node that also sends
//!   well-formed but wrong messages through the codec.
//! - **scenarios as data** ([`Scenario`]): lists of steps, built in Rust
//!   ([`builtin`]) or read from JSON files; [`sweep()`] runs one over many
//!   seeds.
//! - **invariants** ([`check`]): one file per invariant under `check/`:
//!   `convergence`, `zombies` (no entry of an ended incarnation survives),
//!   `diffs` (honest presence diffs), `broadcasts` (on healthy links),
//!   `records` (equal to a model of the surviving writes), `codec` (every
//!   frame decoded, every command accepted), `asserts`, `hostile` (with a
//!   hostile peer: its spoofs dropped, its bad values refused at decode,
//!   honest memory within a bound; convergence then compares honest nodes'
//!   honest entries only); determinism is checked
//!   by replaying the seed ([`run_checked`]). A [`Report`] per run
//!   ([`report`], [`plot`]).
//!
//! Dependencies point one way: [`check`] reads [`world`] and [`log`]; the
//! world writes the log and never imports [`check`].
//!
//! # How links model QUIC
//!
//! The runtime speaks QUIC: a reliable ordered stream per peer pair, plus
//! unreliable datagrams. The sim models both lanes honestly:
//!
//! - Messages whose `Body::loss_tolerant()` is `false` (deltas, acks, repairs,
//!   broadcasts, member lists, leave) travel on a **stream** per directed
//!   `(sender, receiver)` pair. Packet loss delays them (each loss costs one
//!   retransmission timeout) but never drops, duplicates or reorders them while
//!   the connection lives: a stream message never arrives before an earlier
//!   one of the same pair (head-of-line blocking).
//! - The connection **breaks** when the pair's direction is cut, or when either
//!   endpoint crashes or restarts: stream messages still in flight on it are
//!   lost, as the bytes QUIC had not delivered yet are.
//! - Loss-tolerant messages (probes, digests, hellos) are **datagrams**:
//!   each may be lost, duplicated or delayed past later ones (reordered).
//!   Datagrams already on the wire when their sender crashes still arrive; any
//!   message arriving after its receiver restarted is dropped (it belonged to
//!   the old process's connection).
//! - A one-way cut `a -> b` drops what `a` sends to `b` (both lanes) and breaks
//!   that direction's stream; `b -> a` keeps flowing.
//! - A paused node receives nothing and fires no timer: what arrives waits in
//!   its socket buffer (the inbox) and is handled when it resumes.
//!
//! # Who drives it
//!
//! The `chorus-sim` binary (`run`, `sweep`), the tests in `sim/tests/`, or any
//! Rust caller through [`run_scenario`].

pub mod builtin;
pub mod check;
pub mod hostile;
pub mod log;
pub mod net;
pub mod plot;
pub mod records;
pub mod report;
pub mod scenario;
pub mod sweep;
pub mod trace;
pub mod workload;
pub mod world;

mod ops;
mod watch;

pub use check::{Invariant, Verdict};
pub use net::NetConfig;
pub use report::Report;
pub use scenario::{run_checked, run_scenario, Expect, Scenario, Step};
pub use sweep::{sweep, SweepResult};
pub use workload::Workload;
pub use world::World;
