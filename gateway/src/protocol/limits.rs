//! The shape limits of JSON: nesting depth and string length. One check for
//! every JSON a client sends (frame payloads, HTTP API bodies), in one pass
//! over the raw bytes with no recursion and no allocation, before (or instead
//! of) a full parse: a payload nested 100,000 deep is refused here rather than
//! relayed to every subscriber. It tracks only strings and brackets, so it runs
//! on any bytes; text that is not JSON passes or fails it harmlessly and is
//! refused by the parser after.

/// Nesting depth and string length allowed in a JSON value. A limit of 0 is
/// off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonLimits {
    /// Deepest nesting of arrays and objects (`{}` is depth 1).
    pub max_depth: usize,
    /// Longest string or object key, in bytes between its quotes as sent
    /// (escapes count as written).
    pub max_string_bytes: usize,
}

/// Default `json_max_depth`: real payloads nest a handful of levels.
pub const DEFAULT_JSON_MAX_DEPTH: usize = 32;
/// Default `json_max_string_bytes`: 64 KiB, Centrifugo's whole message size.
pub const DEFAULT_JSON_MAX_STRING_BYTES: usize = 64 * 1024;

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_JSON_MAX_DEPTH,
            max_string_bytes: DEFAULT_JSON_MAX_STRING_BYTES,
        }
    }
}

/// A JSON value over [`JsonLimits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonLimitError {
    /// Nested deeper than `max`.
    #[error("JSON nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A string of `len` bytes, over `max`.
    #[error("JSON string of {len} bytes, over {max}")]
    StringTooLong {
        /// The string's length as sent.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl JsonLimitError {
    /// The `reason` clients get: `payload_too_deep` or `string_too_long`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooDeep { .. } => "payload_too_deep",
            Self::StringTooLong { .. } => "string_too_long",
        }
    }

    /// The `[limits]` key it breaches (the `limit` label of
    /// `chorus_limit_exceeded_total`).
    pub fn limit(&self) -> &'static str {
        match self {
            Self::TooDeep { .. } => "json_max_depth",
            Self::StringTooLong { .. } => "json_max_string_bytes",
        }
    }
}

/// Checks `json` against `limits`.
pub fn check_json(json: impl AsRef<[u8]>, limits: JsonLimits) -> Result<(), JsonLimitError> {
    let bytes = json.as_ref();
    let (mut i, mut depth) = (0, 0usize);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                i = start;
                while let Some(&c) = bytes.get(i) {
                    match c {
                        b'"' => break,
                        b'\\' => i += 2,
                        _ => i += 1,
                    }
                }
                let len = i.min(bytes.len()) - start;
                if limits.max_string_bytes > 0 && len > limits.max_string_bytes {
                    return Err(JsonLimitError::StringTooLong {
                        len,
                        max: limits.max_string_bytes,
                    });
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if limits.max_depth > 0 && depth > limits.max_depth {
                    return Err(JsonLimitError::TooDeep {
                        max: limits.max_depth,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: JsonLimits = JsonLimits {
        max_depth: 3,
        max_string_bytes: 5,
    };

    #[test]
    fn depth_counts_arrays_and_objects_not_brackets_in_strings() {
        assert_eq!(check_json(r#"{"a":[{"b":1}]}"#, LIMITS), Ok(()));
        assert_eq!(check_json(r#"{"a":"[[[[[""}"#, LIMITS), Ok(()));
        assert_eq!(
            check_json(r#"{"a":[{"b":[]}]}"#, LIMITS),
            Err(JsonLimitError::TooDeep { max: 3 })
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            check_json(&deep, JsonLimits::default()).map_err(|e| e.reason()),
            Err("payload_too_deep")
        );
    }

    #[test]
    fn strings_and_keys_are_measured_as_sent() {
        assert_eq!(check_json(r#"{"abcde":"\"\"x"}"#, LIMITS), Ok(()));
        assert_eq!(
            check_json(r#"{"abcdef":1}"#, LIMITS),
            Err(JsonLimitError::StringTooLong { len: 6, max: 5 })
        );
        assert_eq!(
            check_json(r#"["a\\\"bc"]"#, LIMITS).map_err(|e| e.limit()),
            Err("json_max_string_bytes")
        );
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let off = JsonLimits {
            max_depth: 0,
            max_string_bytes: 0,
        };
        let deep = format!(
            "{}\"{}\"{}",
            "[".repeat(500),
            "x".repeat(1 << 20),
            "]".repeat(500)
        );
        assert_eq!(check_json(&deep, off), Ok(()));
    }
}
