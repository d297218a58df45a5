//! End-to-end tests of the built `batch-launcher` binary: exit codes, output, rows.

mod asset_job;
mod cli;
mod modules;
mod notify_cli;
mod pipelines;
mod point_job;
mod runtime_cli;
mod serve;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the launcher in `dir` with only the given BATCH variables set.
pub fn launcher(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BATCH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run batch-launcher")
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
