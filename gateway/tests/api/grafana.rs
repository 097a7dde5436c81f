//! `deploy/grafana/chorus.json` against a running node's `/metrics`: every
//! metric its PromQL names is exported, with every label it filters or groups
//! by (and every label value it matches exactly), and every metric the node
//! exports is on the dashboard, so the two never drift apart.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use chorus_gateway::server::{ApiKey, ServerConfig};

use crate::http::{Req, KEY};
use crate::prom::{parse, Exposition};
use crate::util::NodeBuilder;

const DASHBOARD: &str = include_str!("../../../deploy/grafana/chorus.json");

/// Labels Prometheus adds to every scraped series (the target's), or that a
/// histogram's `_bucket` series carry: not the node's to export.
const SCRAPE_LABELS: &[&str] = &["instance", "job", "le"];

/// One metric selector of an expression: `name{label op "value", ...}`.
#[derive(Debug)]
struct Selector {
    name: String,
    /// `(label, op, value)`.
    matchers: Vec<(String, String, String)>,
}

/// What one PromQL expression uses: selectors, and the labels of its
/// `by (...)` / `without (...)` clauses.
#[derive(Debug, Default)]
struct Uses {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads the metric selectors and grouping labels of `expr`. Only `chorus_*`
/// names are metrics here (functions such as `rate` are not selectors).
fn uses(expr: &str) -> anyhow::Result<Uses> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Uses::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // A string literal (outside a selector): skip it.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '[' {
            // A range: `[5m]`, `[$__rate_interval]`.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if !is_ident(c) || (i > 0 && is_ident(chars[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        if word == "by" || word == "without" {
            anyhow::ensure!(chars.get(j) == Some(&'('), "{word} without ( in {expr}");
            let end = chars[j..]
                .iter()
                .position(|&c| c == ')')
                .context("unclosed by (")?;
            let list: String = chars[j + 1..j + end].iter().collect();
            out.grouping
                .extend(list.split(',').map(|l| l.trim().to_owned()));
            i = j + end + 1;
            continue;
        }
        if !word.starts_with("chorus_") {
            continue;
        }
        let mut matchers = Vec::new();
        if chars.get(j) == Some(&'{') {
            let end = chars[j..]
                .iter()
                .position(|&c| c == '}')
                .context("unclosed {")?;
            let body: String = chars[j + 1..j + end].iter().collect();
            for m in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let op_at = m.find(['=', '!']).context("matcher without an operator")?;
                let (label, rest) = m.split_at(op_at);
                let op: String = rest.chars().take_while(|c| "=!~".contains(*c)).collect();
                let value = rest[op.len()..].trim().trim_matches('"');
                matchers.push((label.trim().to_owned(), op, value.to_owned()));
            }
            i = j + end + 1;
        }
        out.selectors.push(Selector {
            name: word,
            matchers,
        });
    }
    Ok(out)
}

/// Every PromQL string of the dashboard: panel targets (rows' nested panels
/// too) and template variable queries.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// `label_values(metric, label)`: a template query, as a selector and a label.
fn label_values(expr: &str) -> Option<(String, String)> {
    let inner = expr.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (metric, label) = inner.split_once(',')?;
    Some((metric.trim().to_owned(), label.trim().to_owned()))
}

/// The labels (and their values) the exposition has for series `name`.
fn labels_of(exp: &Exposition, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in exp.samples.iter().filter(|s| s.name == name) {
        for (k, v) in &s.labels {
            labels.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    labels
}

/// Checks `expr` against `exp`; returns the sample names it uses.
fn check(expr: &str, exp: &Exposition) -> anyhow::Result<BTreeSet<String>> {
    let mut used = BTreeSet::new();
    let (selectors, grouping) = match label_values(expr) {
        Some((metric, label)) => (
            vec![Selector {
                name: metric,
                matchers: vec![],
            }],
            vec![label],
        ),
        None => {
            let u = uses(expr)?;
            (u.selectors, u.grouping)
        }
    };
    anyhow::ensure!(!selectors.is_empty(), "no chorus_ metric in {expr:?}");
    let mut all_labels = BTreeSet::new();
    for sel in &selectors {
        if !exp.samples.iter().any(|s| s.name == sel.name) {
            bail!("{expr:?}: {} is not exported by a running node", sel.name);
        }
        used.insert(sel.name.clone());
        let labels = labels_of(exp, &sel.name);
        all_labels.extend(labels.keys().cloned());
        for (label, op, value) in &sel.matchers {
            if SCRAPE_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(values) = labels.get(label) else {
                bail!("{expr:?}: {} has no label {label}", sel.name);
            };
            if op == "=" && !values.contains(value) {
                bail!(
                    "{expr:?}: {}{{{label}}} is never {value:?} (it is {values:?})",
                    sel.name
                );
            }
        }
    }
    for label in &grouping {
        if !SCRAPE_LABELS.contains(&label.as_str()) && !all_labels.contains(label) {
            bail!("{expr:?}: groups by {label}, which none of its metrics has");
        }
    }
    Ok(used)
}

/// The family a sample name belongs to (`_total`, histogram suffixes off).
fn family(exp: &Exposition, name: &str) -> String {
    if exp.types.contains_key(name) {
        return name.to_owned();
    }
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
        if let Some(f) = name.strip_suffix(suffix) {
            if exp.types.contains_key(f) {
                return f.to_owned();
            }
        }
    }
    name.to_owned()
}

#[test]
fn the_expression_reader_finds_names_matchers_and_grouping() -> anyhow::Result<()> {
    let u = uses(
        r#"sum by (instance, queue) (rate(chorus_queue_overflows_total{instance=~"$i",queue="peer"}[$__rate_interval])) / chorus_engine_up"#,
    )?;
    let names: Vec<_> = u.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["chorus_queue_overflows_total", "chorus_engine_up"]);
    assert_eq!(
        u.selectors[0].matchers,
        [
            ("instance".into(), "=~".into(), "$i".into()),
            ("queue".into(), "=".into(), "peer".into())
        ]
    );
    assert_eq!(u.grouping, ["instance", "queue"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_grafana_dashboard_is_exported() -> anyhow::Result<()> {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).context("deploy/grafana/chorus.json is not JSON")?;
    let config = ServerConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..ServerConfig::default()
    };
    let node = NodeBuilder::new().config(config).start().await?;
    let reply = Req::new("GET", "/metrics").send(node.addr).await?;
    assert_eq!(reply.status, 200);
    let exp = parse(&reply.text())?;
    assert_eq!(exp.value("chorus_engine_up", &[]), Some(1.0));

    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        used.extend(check(expr, &exp)?);
    }
    // The other way: every family the node exports has a panel.
    let on_dashboard: BTreeSet<String> = used.iter().map(|n| family(&exp, n)).collect();
    let exported: BTreeSet<String> = exp.types.keys().cloned().collect();
    let missing: Vec<_> = exported.difference(&on_dashboard).collect();
    assert!(
        missing.is_empty(),
        "exported but on no panel of deploy/grafana/chorus.json: {missing:?}"
    );
    // A wrong name is caught, not waved through.
    assert!(check("sum(rate(chorus_bytes_in_total[1m]))", &exp).is_err());
    assert!(check(r#"chorus_queue_overflows_total{queue="nope"}"#, &exp).is_err());
    assert!(check("sum by (transport) (chorus_engine_up)", &exp).is_err());
    node.stop().await
}
