//! Deterministic cluster simulator (filled by the simulator issue).
