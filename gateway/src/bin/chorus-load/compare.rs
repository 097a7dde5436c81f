//! `--compare CEILING`: one scenario run against the ceiling and against
//! `chorus`, each a fresh process, one after the other with the same load
//! generator; prints both results and, per figure, the ratio chorus ÷ ceiling.
//!
//! The figures are the ones a shared 2-core box measures honestly: server CPU
//! time per delivery or per round trip (`/proc/PID/stat` utime + stime of the
//! spawned server over the run, divided by what it handled), resident bytes per
//! idle connection, and latency percentiles. Throughput is printed too, but
//! with client and server on the same cores the client bounds it.

use serde::Serialize;

use crate::fanout::FanoutResult;
use crate::hooks::HooksResult;
use crate::idle::IdleResult;
use crate::ping::PingResult;
use crate::recover::RecoverResult;
use crate::storm::StormResult;

/// What one scenario measured.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Idle(IdleResult),
    Fanout(FanoutResult),
    Ping(PingResult),
    Storm(StormResult),
    Hooks(HooksResult),
    Recover(RecoverResult),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Idle(r) => r.fmt(f),
            Outcome::Fanout(r) => r.fmt(f),
            Outcome::Ping(r) => r.fmt(f),
            Outcome::Storm(r) => r.fmt(f),
            Outcome::Hooks(r) => r.fmt(f),
            Outcome::Recover(r) => r.fmt(f),
        }
    }
}

/// One compared figure; lower is better for every one of them but throughput.
#[derive(Debug, Serialize)]
pub struct Row {
    pub figure: &'static str,
    pub unit: &'static str,
    pub ceiling: Option<f64>,
    pub chorus: Option<f64>,
    /// chorus ÷ ceiling.
    pub ratio: Option<f64>,
}

/// Both results and the rows.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub ceiling: Outcome,
    pub chorus: Outcome,
    pub figures: Vec<Row>,
}

/// Per unit of work: `secs` of CPU over `count`, in microseconds.
fn micros_per(secs: Option<f64>, count: u64) -> Option<f64> {
    (count > 0).then_some(secs? * 1e6 / count as f64)
}

impl Outcome {
    /// The figures this scenario compares, as (name, unit, value).
    fn figures(&self) -> Vec<(&'static str, &'static str, Option<f64>)> {
        match self {
            Outcome::Idle(r) => vec![
                ("bytes per idle connection", "B", r.bytes_per_conn),
                (
                    "bytes per idle connection (second half)",
                    "B",
                    r.marginal_bytes_per_conn,
                ),
            ],
            Outcome::Fanout(r) => vec![
                (
                    "server CPU per delivery",
                    "µs",
                    micros_per(r.cpu.server_s, r.delivered),
                ),
                ("server CPU", "s", r.cpu.server_s),
                ("load generator CPU", "s", r.cpu.load_s),
                ("deliveries per second", "/s", Some(r.delivered_per_sec)),
                ("latency p50", "ms", Some(r.latency.p50_ms)),
                ("latency p99", "ms", Some(r.latency.p99_ms)),
                ("latency max", "ms", Some(r.latency.max_ms)),
            ],
            Outcome::Ping(r) => vec![
                (
                    "server CPU per round trip",
                    "µs",
                    micros_per(r.cpu.server_s, r.replies),
                ),
                ("server CPU", "s", r.cpu.server_s),
                ("load generator CPU", "s", r.cpu.load_s),
                ("replies per second", "/s", Some(r.replies_per_sec)),
                ("round trip p50", "ms", Some(r.rtt.p50_ms)),
                ("round trip p99", "ms", Some(r.rtt.p99_ms)),
                ("round trip max", "ms", Some(r.rtt.max_ms)),
            ],
            // The ceiling has no presence, hooks or recovery: not compared.
            Outcome::Storm(_) | Outcome::Hooks(_) | Outcome::Recover(_) => Vec::new(),
        }
    }

    /// Whether every expected message arrived and nothing failed: a figure
    /// per message means nothing otherwise.
    pub fn complete(&self) -> Result<(), String> {
        match self {
            Outcome::Idle(r) if r.failed > 0 || r.dropped > 0 => Err(format!(
                "{} connections failed, {} dropped",
                r.failed, r.dropped
            )),
            Outcome::Fanout(r) if r.missing > 0 || r.failed_joins > 0 || r.out_of_order > 0 => {
                Err(format!(
                    "{} deliveries missing, {} out of order, {} failed joins",
                    r.missing, r.out_of_order, r.failed_joins
                ))
            }
            Outcome::Ping(r) if r.errors > 0 || r.disconnected > 0 => Err(format!(
                "{} error replies, {} connections ended early",
                r.errors, r.disconnected
            )),
            _ => Ok(()),
        }
    }
}

impl Comparison {
    pub fn new(ceiling: Outcome, chorus: Outcome) -> Self {
        let figures = ceiling
            .figures()
            .into_iter()
            .zip(chorus.figures())
            .map(|((figure, unit, c), (_, _, o))| Row {
                figure,
                unit,
                ceiling: c,
                chorus: o,
                ratio: match (c, o) {
                    (Some(c), Some(o)) if c > 0.0 => Some(o / c),
                    _ => None,
                },
            })
            .collect();
        Self {
            ceiling,
            chorus,
            figures,
        }
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "--- ceiling")?;
        writeln!(f, "{}", self.ceiling)?;
        writeln!(f, "--- chorus")?;
        writeln!(f, "{}", self.chorus)?;
        writeln!(
            f,
            "--- compared (chorus ÷ ceiling; same load generator, one after the other)"
        )?;
        let v = |v: Option<f64>, unit: &str| {
            v.map_or("n/a".to_string(), |v| {
                if v >= 1000.0 {
                    format!("{v:.0} {unit}")
                } else {
                    format!("{v:.3} {unit}")
                }
            })
        };
        writeln!(
            f,
            "{:<42} {:>16} {:>16} {:>8}",
            "figure", "ceiling", "chorus", "ratio"
        )?;
        for r in &self.figures {
            writeln!(
                f,
                "{:<42} {:>16} {:>16} {:>8}",
                r.figure,
                v(r.ceiling, r.unit),
                v(r.chorus, r.unit),
                r.ratio.map_or("n/a".into(), |x| format!("{x:.2}x"))
            )?;
        }
        for (name, outcome) in [("ceiling", &self.ceiling), ("chorus", &self.chorus)] {
            if let Err(e) = outcome.complete() {
                writeln!(
                    f,
                    "WARNING: {name} run incomplete ({e}): its per-message figures do not hold"
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_message_is_in_microseconds_and_needs_messages() {
        assert_eq!(micros_per(Some(2.0), 1_000_000), Some(2.0));
        assert_eq!(micros_per(Some(2.0), 0), None);
        assert_eq!(micros_per(None, 10), None);
    }
}
