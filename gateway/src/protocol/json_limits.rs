//! Bounds on JSON a peer sends: nesting depth and string length, checked on the
//! raw bytes in one pass with no recursion and no allocation, before (or
//! instead of) a full parse. A payload nested 100,000 deep is refused here
//! rather than relayed to every subscriber (or parsed by one of them).
//!
//! The scan only tracks strings and brackets, so it runs on any bytes: text that
//! is not JSON passes or fails it harmlessly and is refused by the parser after.
//! Deterministic.

/// Deepest nesting of arrays and objects by default: real payloads stay far
/// below (a Phoenix message, a presence meta, an API body are 2–5 deep).
pub const DEFAULT_DEPTH: usize = 32;

/// Longest string by default, in bytes as sent (escapes counted as written).
pub const DEFAULT_STRING_BYTES: usize = 64 * 1024;

/// How deep and how long JSON may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonLimits {
    /// Deepest nesting of arrays and objects; `{"a":1}` is 1 deep.
    pub depth: usize,
    /// Longest string or object key, in bytes between its quotes.
    pub string_bytes: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            depth: DEFAULT_DEPTH,
            string_bytes: DEFAULT_STRING_BYTES,
        }
    }
}

/// Which bound a JSON text broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonLimitError {
    /// Arrays and objects nested deeper than the limit.
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    /// A string or key longer than the limit.
    #[error("a JSON string is longer than {0} bytes")]
    StringTooLong(usize),
}

impl JsonLimits {
    /// Checks `json` against both bounds.
    pub fn check(&self, json: &[u8]) -> Result<(), JsonLimitError> {
        let (mut depth, mut in_string, mut escaped, mut len) = (0usize, false, false, 0usize);
        for &b in json {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                    continue;
                }
                len += 1;
                if len > self.string_bytes {
                    return Err(JsonLimitError::StringTooLong(self.string_bytes));
                }
                continue;
            }
            match b {
                b'"' => (in_string, len) = (true, 0),
                b'[' | b'{' => {
                    depth += 1;
                    if depth > self.depth {
                        return Err(JsonLimitError::TooDeep(self.depth));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: JsonLimits = JsonLimits {
        depth: 3,
        string_bytes: 4,
    };

    #[test]
    fn depth_counts_arrays_and_objects_outside_strings() {
        assert_eq!(LIMITS.check(br#"{"a":[{"b":1}]}"#), Ok(()));
        assert_eq!(
            LIMITS.check(br#"{"a":[{"b":[]}]}"#),
            Err(JsonLimitError::TooDeep(3))
        );
        assert_eq!(
            LIMITS.check(br#"[[["[[[["]]]"#),
            Ok(()),
            "brackets in a string"
        );
        assert_eq!(
            LIMITS.check(&[b'['; 100_000]),
            Err(JsonLimitError::TooDeep(3))
        );
        assert_eq!(
            LIMITS.check(b"[][][][][][]"),
            Ok(()),
            "siblings do not add up"
        );
    }

    #[test]
    fn strings_and_keys_are_counted_as_sent_escapes_included() {
        assert_eq!(LIMITS.check(br#"{"abcd":"wxyz"}"#), Ok(()));
        assert_eq!(
            LIMITS.check(br#"{"abcde":1}"#),
            Err(JsonLimitError::StringTooLong(4))
        );
        assert_eq!(
            LIMITS.check(br#"["a\"b"]"#),
            Ok(()),
            "an escaped quote stays inside"
        );
        assert_eq!(
            LIMITS.check(br#"["a\"bc"]"#),
            Err(JsonLimitError::StringTooLong(4))
        );
        assert_eq!(
            LIMITS.check(br#"["\\","\\"]"#),
            Ok(()),
            "an escaped backslash ends"
        );
    }
}
