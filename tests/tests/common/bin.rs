//! The `chorus` binary the end-to-end tests run, shared by `partition/` and
//! `soak/` (included with `#[path]`).

use std::path::PathBuf;

use anyhow::{bail, Context};

/// The `chorus` binary to run: `$CHORUS_BIN` if set, else `chorus` in the
/// profile directory above this test's executable
/// (`target/<profile>/deps/partition-HASH` -> `target/<profile>/chorus`).
pub fn chorus_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CHORUS_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("CHORUS_BIN is {}, which is not a file", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("locate the test executable")?;
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test executable has no target/<profile>/deps parent")?;
    let bin = profile.join(format!("chorus{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "no chorus binary at {}: build it first with \
             `cargo build -p chorus-gateway --bin chorus` (same profile as the tests), \
             or point CHORUS_BIN at one",
            bin.display()
        );
    }
    Ok(bin)
}
