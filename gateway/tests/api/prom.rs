//! A small parser of the Prometheus / OpenMetrics text format, strict enough to
//! fail on a malformed exposition.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context};

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Metric family -> type, from `# TYPE` lines.
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

/// Parses `text`: every sample belongs to a family declared by `# TYPE` before it
/// (counters as `<family>_total`, histograms as `_bucket`/`_sum`/`_count`), values
/// are numbers, labels are `name="value"` pairs, and the text ends with `# EOF`.
pub fn parse(text: &str) -> anyhow::Result<Exposition> {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    ensure!(text.ends_with("# EOF\n"), "no `# EOF` at the end");
    for (n, line) in text.lines().enumerate() {
        let ctx = || format!("line {}: {line:?}", n + 1);
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').with_context(ctx)?;
            ensure!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "info",
                    "unknown"
                ]
                .contains(&kind),
                "unknown type at {}",
                ctx()
            );
            types.insert(family.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        ensure!(!line.starts_with('#'), "unexpected comment at {}", ctx());
        let (series, value) = line.rsplit_once(' ').with_context(ctx)?;
        let value: f64 = value.parse().with_context(ctx)?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').with_context(ctx)?;
                (name, labels_of(body).with_context(ctx)?)
            }
            None => (series, BTreeMap::new()),
        };
        let family = family_of(name, &types).with_context(ctx)?;
        ensure!(
            seen.insert((name.to_owned(), labels.clone())),
            "duplicate series at {}",
            ctx()
        );
        let _ = family;
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(Exposition { samples, types })
}

fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> anyhow::Result<&'a str> {
    if types.contains_key(name) {
        return Ok(name);
    }
    for suffix in ["_total", "_created", "_bucket", "_sum", "_count"] {
        if let Some(family) = name.strip_suffix(suffix) {
            if types.contains_key(family) {
                return Ok(family);
            }
        }
    }
    bail!("sample {name} has no # TYPE")
}

fn labels_of(body: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").context("label without =\"")?;
        let end = after.find('"').context("unterminated label value")?;
        ensure!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {key:?}"
        );
        labels.insert(key.to_owned(), after[..end].to_owned());
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    Ok(labels)
}

#[test]
fn the_parser_refuses_malformed_text() {
    assert!(parse("# TYPE a counter\na_total 1\n# EOF\n").is_ok());
    assert!(parse("a_total 1\n# EOF\n").is_err(), "no TYPE");
    assert!(
        parse("# TYPE a counter\na_total x\n# EOF\n").is_err(),
        "bad value"
    );
    assert!(parse("# TYPE a counter\na_total 1\n").is_err(), "no EOF");
    assert!(
        parse("# TYPE a gauge\na{b=\"1\" 1\n# EOF\n").is_err(),
        "bad labels"
    );
}
