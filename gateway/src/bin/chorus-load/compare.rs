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

/// A figure with its unit, or `n/a`.
fn value(v: Option<f64>, unit: &str) -> String {
    v.map_or("n/a".to_string(), |v| {
        if v >= 1000.0 {
            format!("{v:.0} {unit}")
        } else {
            format!("{v:.3} {unit}")
        }
    })
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |x| format!("{x:.2}x"))
}

impl Comparison {
    /// The compared figures as a table, and a warning for an incomplete run.
    fn write_table(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
                value(r.ceiling, r.unit),
                value(r.chorus, r.unit),
                ratio(r.ratio)
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
        self.write_table(f)
    }
}

/// `--rounds N`: the comparison made N times, the ceiling and chorus
/// alternating, and per figure the median of each side and of the rounds'
/// ratios with their range. One round's ratio moves with what else the box
/// did during that round; the median of several is the figure to quote.
#[derive(Debug, Serialize)]
pub struct Rounds {
    pub rounds: Vec<Comparison>,
    pub summary: Vec<Summary>,
}

/// One figure over the rounds.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub figure: &'static str,
    pub unit: &'static str,
    /// Medians over the rounds.
    pub ceiling: Option<f64>,
    pub chorus: Option<f64>,
    /// The median of the rounds' ratios (not the ratio of the medians), and
    /// the lowest and highest.
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
}

/// The median of the values present (the mean of the middle two for an even
/// count); `None` when there are none.
fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

impl Rounds {
    pub fn new(rounds: Vec<Comparison>) -> Self {
        let count = rounds.first().map_or(0, |r| r.figures.len());
        let summary = (0..count)
            .map(|i| {
                let rows = || rounds.iter().map(move |r| &r.figures[i]);
                let ratios = || rows().filter_map(|r| r.ratio);
                let first = &rounds[0].figures[i];
                Summary {
                    figure: first.figure,
                    unit: first.unit,
                    ceiling: median(rows().map(|r| r.ceiling)),
                    chorus: median(rows().map(|r| r.chorus)),
                    ratio: median(rows().map(|r| r.ratio)),
                    ratio_min: ratios().reduce(f64::min),
                    ratio_max: ratios().reduce(f64::max),
                }
            })
            .collect();
        Self { rounds, summary }
    }
}

impl std::fmt::Display for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, round) in self.rounds.iter().enumerate() {
            writeln!(
                f,
                "--- round {} of {} (chorus ÷ ceiling; same load generator, one after the other)",
                i + 1,
                self.rounds.len()
            )?;
            round.write_table(f)?;
        }
        writeln!(
            f,
            "--- over {} rounds: medians, and the median ratio with the lowest and highest",
            self.rounds.len()
        )?;
        writeln!(
            f,
            "{:<42} {:>16} {:>16} {:>8} {:>15}",
            "figure", "ceiling", "chorus", "ratio", "range"
        )?;
        for s in &self.summary {
            writeln!(
                f,
                "{:<42} {:>16} {:>16} {:>8} {:>15}",
                s.figure,
                value(s.ceiling, s.unit),
                value(s.chorus, s.unit),
                ratio(s.ratio),
                format!("{}-{}", ratio(s.ratio_min), ratio(s.ratio_max)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_take_the_middle_and_skip_what_is_missing() {
        assert_eq!(
            median([Some(3.0), Some(1.0), Some(2.0)].into_iter()),
            Some(2.0)
        );
        assert_eq!(
            median([Some(4.0), None, Some(1.0), Some(2.0), Some(3.0)].into_iter()),
            Some(2.5)
        );
        assert_eq!(median([None, None].into_iter()), None);
    }

    fn ping(cpu_s: f64, replies: u64) -> Outcome {
        Outcome::Ping(PingResult {
            scenario: "ping",
            conns: 1,
            inflight: 1,
            interval_ms: 0,
            replies,
            errors: 0,
            disconnected: 0,
            replies_per_sec: 1.0,
            rtt: crate::stats::Latency {
                count: 1,
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
            },
            cpu: crate::server::Cpu {
                wall_s: 1.0,
                server_s: Some(cpu_s),
                load_s: Some(1.0),
            },
        })
    }

    /// The summary's ratio is the median of the rounds' ratios, with their
    /// range; the sides are their own medians.
    #[test]
    fn rounds_summarise_each_figure() {
        let rounds = Rounds::new(vec![
            Comparison::new(ping(2.0, 1_000_000), ping(3.0, 1_000_000)),
            Comparison::new(ping(3.0, 1_000_000), ping(3.0, 1_000_000)),
            Comparison::new(ping(2.0, 1_000_000), ping(4.0, 1_000_000)),
        ]);
        let cpu = &rounds.summary[0];
        assert_eq!(cpu.figure, "server CPU per round trip");
        assert_eq!((cpu.ceiling, cpu.chorus), (Some(2.0), Some(3.0)));
        assert_eq!(cpu.ratio, Some(1.5));
        assert_eq!((cpu.ratio_min, cpu.ratio_max), (Some(1.0), Some(2.0)));
    }

    #[test]
    fn cpu_per_message_is_in_microseconds_and_needs_messages() {
        assert_eq!(micros_per(Some(2.0), 1_000_000), Some(2.0));
        assert_eq!(micros_per(Some(2.0), 0), None);
        assert_eq!(micros_per(None, 10), None);
    }
}
