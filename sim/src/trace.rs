//! The event trace: a running 128-bit hash of everything the world did, in
//! order (deliveries with their bytes, node events, commands, faults).
//!
//! Two runs with the same seed must give the same hash; the report prints it
//! as `trace-hash: HEX`. The hash is hand-written (two independent 64-bit
//! multiply-xorshift lanes) so it is stable across platforms and releases.

use std::time::Duration;

/// A running hash of the event trace.
#[derive(Clone, Debug)]
pub struct Trace {
    a: u64,
    b: u64,
    events: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            a: 0x243f_6a88_85a3_08d3,
            b: 0x1319_8a2e_0370_7344,
            events: 0,
        }
    }
}

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

impl Trace {
    /// Starts one trace record at virtual time `at` with a kind tag.
    pub fn record(&mut self, at: Duration, kind: u8) {
        self.events += 1;
        self.word(at.as_nanos() as u64);
        self.word(u64::from(kind));
    }

    /// Mixes one word in.
    pub fn word(&mut self, w: u64) {
        self.a = (self.a ^ w).wrapping_mul(K1).rotate_left(29);
        self.b = (self.b ^ w.rotate_left(17))
            .wrapping_mul(K2)
            .rotate_left(31)
            ^ self.a;
    }

    /// Mixes bytes in, eight at a time.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("chunk of 8")));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(last));
    }

    /// Mixes a string in.
    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Number of records so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The hash as 32 hex digits.
    pub fn hex(&self) -> String {
        let fin = |x: u64| {
            let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            let x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^ (x >> 33)
        };
        format!("{:016x}{:016x}", fin(self.a ^ self.events), fin(self.b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_content_change_the_hash() {
        let mut x = Trace::default();
        x.bytes(b"hello world");
        x.word(1);
        let mut y = Trace::default();
        y.word(1);
        y.bytes(b"hello world");
        let mut z = Trace::default();
        z.bytes(b"hello worle");
        z.word(1);
        assert_ne!(x.hex(), y.hex());
        assert_ne!(x.hex(), z.hex());
        let mut x2 = Trace::default();
        x2.bytes(b"hello world");
        x2.word(1);
        assert_eq!(x.hex(), x2.hex());
        assert_eq!(x.hex().len(), 32);
    }
}
