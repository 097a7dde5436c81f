//! Replays every committed fuzz input on stable: each file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` runs through the same
//! function the libFuzzer target calls. `make test` runs this, so a crash the
//! fuzzer once found (saved under `regressions/`) fails CI if it comes back.

use std::fs;
use std::path::{Path, PathBuf};

use chorus_fuzz::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(folder: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut count = 0;
    for (name, run) in TARGETS {
        for file in inputs(&root.join(name)) {
            let data = fs::read(&file).expect("readable input");
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{name}: {} panics", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_corpus_input_runs_clean() {
    let n = replay("corpus");
    assert!(n >= 100, "only {n} corpus inputs: is fuzz/corpus there?");
}

#[test]
fn every_regression_input_runs_clean() {
    replay("regressions");
}
