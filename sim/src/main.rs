//! `chorus-sim`: run a scenario and print its report, sweep seeds, list or
//! dump the built-in scenarios. Exits non-zero when any invariant fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chorus_sim::{builtin, plot, run_checked, run_scenario, sweep, Scenario};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chorus-sim", about = "Deterministic Chorus cluster simulator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario and print its report (or sweep it with --seeds).
    Run {
        /// A built-in scenario (see `list`).
        #[arg(long, conflicts_with = "file")]
        scenario: Option<String>,
        /// A scenario JSON file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Node count for a built-in scenario (default: its design size).
        #[arg(long)]
        nodes: Option<usize>,
        /// The seed to run (or the first seed of a sweep).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Sweep this many seeds from --seed and print the failing ones.
        #[arg(long)]
        seeds: Option<u64>,
        /// Write a convergence plot (SVG) of the run.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Skip the replay that checks determinism.
        #[arg(long)]
        no_replay: bool,
        /// Threads for a sweep.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Sweep every built-in scenario (at its sweep size) over many seeds.
    Sweep {
        /// Seeds per scenario, from --seed.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Threads.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// List the built-in scenarios.
    List,
    /// Print a built-in scenario as JSON (a starting point for --file).
    Dump {
        /// Scenario.
        #[arg(long)]
        scenario: String,
        /// Node count.
        #[arg(long)]
        nodes: Option<usize>,
    },
}

fn load(
    scenario: Option<String>,
    file: Option<PathBuf>,
    nodes: Option<usize>,
) -> anyhow::Result<Scenario> {
    match (scenario, file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Scenario::from_json(&text).with_context(|| format!("parsing {}", path.display()))
        }
        (Some(name), None) => {
            let n = nodes.unwrap_or_else(|| builtin::default_nodes(&name));
            match builtin::scenario(&name, n) {
                Some(sc) => Ok(sc),
                None => bail!("unknown scenario {name}; try `chorus-sim list`"),
            }
        }
        (None, None) => bail!("give --scenario NAME or --file PATH"),
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let ok = match cli.cmd {
        Cmd::List => {
            for name in builtin::NAMES {
                println!(
                    "{name:<26} {} nodes (sweeps use {})",
                    builtin::default_nodes(name),
                    builtin::sweep_nodes(name)
                );
            }
            true
        }
        Cmd::Dump { scenario, nodes } => {
            println!("{}", load(Some(scenario), None, nodes)?.to_json());
            true
        }
        Cmd::Run {
            scenario,
            file,
            nodes,
            seed,
            seeds,
            plot,
            no_replay,
            threads,
        } => {
            let sc = load(scenario, file, nodes)?;
            match seeds {
                Some(k) => {
                    let threads = threads.unwrap_or_else(sweep::default_threads);
                    sweep_one(&sc, seed, k, threads)
                }
                None => {
                    let r = if no_replay {
                        run_scenario(&sc, seed)
                    } else {
                        run_checked(&sc, seed)
                    };
                    print!("{r}");
                    if let Some(path) = plot {
                        std::fs::write(&path, plot::svg(&r))
                            .with_context(|| format!("writing {}", path.display()))?;
                        println!("plot: {}", path.display());
                    }
                    r.passed()
                }
            }
        }
        Cmd::Sweep {
            seeds,
            seed,
            threads,
        } => {
            let threads = threads.unwrap_or_else(sweep::default_threads);
            let mut ok = true;
            for name in builtin::NAMES {
                let sc = builtin::scenario(name, builtin::sweep_nodes(name)).expect("built-in");
                ok &= sweep_one(&sc, seed, seeds, threads);
            }
            ok
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn sweep_one(sc: &Scenario, from: u64, k: u64, threads: usize) -> bool {
    let t = Instant::now();
    let r = sweep::sweep(sc, from..from + k, threads);
    println!(
        "{:<26} seeds {from}..{}: {} runs, {} failed, {:.0} virtual s in {:.1?}",
        sc.name,
        from + k,
        r.runs,
        r.failures.len(),
        r.virtual_secs,
        t.elapsed()
    );
    let show = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    if let Some((p50, p99, max)) = sweep::SweepResult::spread(&r.converged) {
        println!(
            "  converged after the last fault or command: median {}, p99 {}, max {} ({} runs)",
            show(p50),
            show(p99),
            show(max),
            r.converged.len()
        );
    }
    if let Some((p50, p99, max)) = sweep::SweepResult::spread(&r.since_fault) {
        println!(
            "  converged after the last fault: median {}, p99 {}, max {} ({} runs)",
            show(p50),
            show(p99),
            show(max),
            r.since_fault.len()
        );
    }
    for f in r.failures.iter().take(20) {
        println!("  FAIL seed {}: {}", f.seed, f.detail);
    }
    if r.failures.len() > 20 {
        println!("  ... {} more failing seeds", r.failures.len() - 20);
    }
    if !r.failures.is_empty() {
        let seeds: Vec<String> = r.failures.iter().map(|f| f.seed.to_string()).collect();
        println!("  failing seeds: {}", seeds.join(" "));
    }
    r.failures.is_empty()
}
