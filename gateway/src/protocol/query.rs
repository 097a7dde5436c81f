//! Connect-request query strings, decoded the way Plug does for Phoenix: pairs split
//! on `&` (empty segments skipped: LongPoll's first request ends in `&`), `+` is a
//! space, `%XX` is percent-decoded, and bracketed keys (`a[b]=1`, `a[]=1`) nest.
//!
//! phoenix.js puts the user's `params` first and `vsn` last, e.g.
//! `token=abc&nested%5Ba%5D=1&vsn=2.0.0`.

use serde_json::{Map, Value};

use super::vsn::{Vsn, VsnError};

/// Deepest bracket nesting that is expanded; a deeper key stays a flat string.
const MAX_DEPTH: usize = 32;

/// A decoded query string: its pairs in order, with flat keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

/// Why a query string could not be decoded (Plug answers 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in query segment {0:?}")]
    BadPercentEncoding(String),
    /// A key or value that is not UTF-8 once decoded.
    #[error("query segment {0:?} is not UTF-8 once decoded")]
    InvalidUtf8(String),
}

impl Query {
    /// Decodes the part of the URL after `?`. A pair without `=` has the value `""`.
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        let mut pairs = Vec::new();
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            pairs.push((
                decode_component(key, segment)?,
                decode_component(value, segment)?,
            ));
        }
        Ok(Self { pairs })
    }

    /// The decoded pairs in order, duplicates kept, keys flat (`nested[a]`).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The last value of a flat key, e.g. `get("token")` or `get("nested[a]")`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The params as Phoenix's `connect/3` sees them: bracketed keys nest into objects,
    /// `[]` appends to a list, every leaf is a string, a later pair overrides an
    /// earlier one.
    pub fn params(&self) -> Map<String, Value> {
        let mut params = Map::new();
        for (key, value) in &self.pairs {
            let (root, path) = split_key(key);
            let slot = params.entry(root).or_insert(Value::Null);
            assign(slot, &path, value.clone());
        }
        params
    }

    /// The serializer this connection asked for. `vsn` missing is v1; `vsn` given as
    /// a nested or list parameter (`vsn[]=x`) is [`VsnError::NotAString`].
    pub fn vsn(&self) -> Result<Vsn, VsnError> {
        match self.params().get("vsn") {
            None => Vsn::negotiate(None),
            Some(Value::String(vsn)) => Vsn::negotiate(Some(vsn)),
            Some(_) => Err(VsnError::NotAString),
        }
    }
}

/// Splits `a[b][]` into `("a", ["b", ""])`. A key that is not of that shape (an
/// unclosed bracket, text after a `]`, an empty root, too deep) stays flat.
fn split_key(key: &str) -> (&str, Vec<&str>) {
    let Some(open) = key.find('[').filter(|&open| open > 0) else {
        return (key, Vec::new());
    };
    let mut path = Vec::new();
    let mut rest = &key[open..];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return (key, Vec::new());
        };
        path.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    if !rest.is_empty() || path.len() > MAX_DEPTH {
        return (key, Vec::new());
    }
    (&key[..open], path)
}

/// Stores `value` at `path` below `slot`, turning whatever is in the way into the
/// object or list the path needs (Plug's "last one wins").
fn assign(slot: &mut Value, path: &[&str], value: String) {
    let Some((&segment, rest)) = path.split_first() else {
        *slot = Value::String(value);
        return;
    };
    if segment.is_empty() {
        if !slot.is_array() {
            *slot = Value::Array(Vec::new());
        }
        let Value::Array(list) = slot else { return };
        // `a[][b]=1&a[][c]=2` builds one object, as in Plug, until a key repeats.
        let reuse_last = match (rest.first(), list.last()) {
            (Some(next), Some(Value::Object(last))) => !last.contains_key(*next),
            _ => false,
        };
        if !reuse_last {
            list.push(Value::Null);
        }
        if let Some(last) = list.last_mut() {
            assign(last, rest, value);
        }
    } else {
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(map) = slot else { return };
        assign(map.entry(segment).or_insert(Value::Null), rest, value);
    }
}

/// Percent-decodes one key or value; `segment` is the whole pair, for errors.
fn decode_component(text: &str, segment: &str) -> Result<String, QueryError> {
    if !text.contains(['%', '+']) {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let digit = |at: usize| bytes.get(at).and_then(|&c| char::from(c).to_digit(16));
                let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                    return Err(QueryError::BadPercentEncoding(segment.to_owned()));
                };
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QueryError::InvalidUtf8(segment.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(raw: &str) -> Value {
        Value::Object(Query::parse(raw).expect("valid query").params())
    }

    #[test]
    fn decodes_the_observed_phoenix_js_query() {
        let q = Query::parse("token=abc&nested%5Ba%5D=1&vsn=2.0.0").expect("valid");
        assert_eq!(q.get("token"), Some("abc"));
        assert_eq!(q.get("nested[a]"), Some("1"));
        assert_eq!(q.vsn(), Ok(Vsn::V2));
        assert_eq!(
            params("token=abc&nested%5Ba%5D=1&vsn=2.0.0"),
            json!({"token": "abc", "nested": {"a": "1"}, "vsn": "2.0.0"})
        );
    }

    #[test]
    fn tolerates_empty_segments() {
        let q = Query::parse("user=u1&vsn=2.0.0&").expect("trailing &");
        assert_eq!(
            q.pairs().collect::<Vec<_>>(),
            [("user", "u1"), ("vsn", "2.0.0")]
        );
        assert_eq!(Query::parse("&&a=1&&").expect("ok").get("a"), Some("1"));
        assert_eq!(Query::parse("").expect("empty").pairs().count(), 0);
        assert_eq!(
            Query::parse("flag&b=")
                .expect("ok")
                .pairs()
                .collect::<Vec<_>>(),
            [("flag", ""), ("b", "")]
        );
    }

    #[test]
    fn percent_and_plus_decoding() {
        let q = Query::parse("name=a+b%20c&emoji=%F0%9F%98%80&eq=x%3Dy&raw=a=b").expect("ok");
        assert_eq!(q.get("name"), Some("a b c"));
        assert_eq!(q.get("emoji"), Some("😀"));
        assert_eq!(q.get("eq"), Some("x=y"));
        assert_eq!(q.get("raw"), Some("a=b"), "split at the first =");
        assert_eq!(
            Query::parse("a=%2").unwrap_err(),
            QueryError::BadPercentEncoding("a=%2".into())
        );
        assert_eq!(
            Query::parse("a=%zz").unwrap_err(),
            QueryError::BadPercentEncoding("a=%zz".into())
        );
        assert_eq!(
            Query::parse("a=%ff").unwrap_err(),
            QueryError::InvalidUtf8("a=%ff".into())
        );
    }

    #[test]
    fn bracketed_keys_nest() {
        assert_eq!(
            params("a[b][c]=1&a[b][d]=2&a[e]=3"),
            json!({"a": {"b": {"c": "1", "d": "2"}, "e": "3"}})
        );
        assert_eq!(params("ids[]=1&ids[]=2"), json!({"ids": ["1", "2"]}));
        assert_eq!(
            params("u[][n]=a&u[][m]=b&u[][n]=c"),
            json!({"u": [{"n": "a", "m": "b"}, {"n": "c"}]})
        );
        assert_eq!(
            params("arr[0]=x"),
            json!({"arr": {"0": "x"}}),
            "numeric keys are object keys"
        );
    }

    #[test]
    fn later_pairs_override_and_malformed_keys_stay_flat() {
        assert_eq!(params("a=1&a=2"), json!({"a": "2"}));
        assert_eq!(params("a=1&a[b]=2"), json!({"a": {"b": "2"}}));
        assert_eq!(params("a[b]=2&a=1"), json!({"a": "1"}));
        assert_eq!(
            params("a[b=1&c]d=2&[x]=3&e[f]g=4"),
            json!({"a[b": "1", "c]d": "2", "[x]": "3", "e[f]g": "4"})
        );
        let deep = format!("k{}=v", "[x]".repeat(MAX_DEPTH + 1));
        assert_eq!(Query::parse(&deep).expect("ok").params().len(), 1);
        assert!(params(&deep).get("k").is_none(), "too deep stays flat");
    }

    #[test]
    fn vsn_rules() {
        assert_eq!(Query::parse("token=t").expect("ok").vsn(), Ok(Vsn::V1));
        assert_eq!(Query::parse("vsn=1.0.0").expect("ok").vsn(), Ok(Vsn::V1));
        assert_eq!(
            Query::parse("vsn=3.0.0").expect("ok").vsn(),
            Err(VsnError::Unsupported("3.0.0".into()))
        );
        assert_eq!(
            Query::parse("vsn[]=x").expect("ok").vsn(),
            Err(VsnError::NotAString)
        );
        assert_eq!(
            Query::parse("vsn[a]=2.0.0").expect("ok").vsn(),
            Err(VsnError::NotAString)
        );
        assert_eq!(
            Query::parse("vsn=2.0.0&vsn[]=x").expect("ok").vsn(),
            Err(VsnError::NotAString)
        );
        assert_eq!(
            Query::parse("vsn%5B%5D=x").expect("ok").vsn(),
            Err(VsnError::NotAString)
        );
        assert_eq!(
            Query::parse("vsn=").expect("ok").vsn(),
            Err(VsnError::Unparsable(String::new()))
        );
    }
}
