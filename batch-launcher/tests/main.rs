//! End-to-end tests of the built `batch-launcher` binary: exit codes, output, rows.

mod asset_job;
mod cli;
mod dashboard;
mod modules;
mod notify_cli;
mod operator;
mod partitioned;
mod pipelines;
mod point_job;
mod runtime_cli;
mod secret_files;
mod serve;
mod tls;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use batch_common::job::ParamKind;

/// The launcher in `dir` with only the given BATCH variables set (none inherited).
fn command<K: AsRef<OsStr>, V: AsRef<OsStr>>(dir: &Path, args: &[&str], env: &[(K, V)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BATCH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs the launcher in `dir` with only the given BATCH variables set.
pub fn launcher(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(dir, args, env)
        .output()
        .expect("run batch-launcher")
}

/// Starts the launcher in `dir` without waiting, its output piped.
pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(dir: &Path, args: &[&str], env: &[(K, V)]) -> Child {
    command(dir, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start batch-launcher")
}

/// Polls `check` every 20 ms until it gives a value; panics after `limit` naming `what`.
pub async fn wait_for<T, Fut: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A value of `kind` the run refuses, if the kind has one.
pub fn refused_value(kind: ParamKind) -> Option<String> {
    match kind {
        ParamKind::Date => Some("2026-02-30".to_owned()),
        ParamKind::Month => Some("2026-13".to_owned()),
        ParamKind::Bool => Some("perhaps".to_owned()),
        ParamKind::Count => Some("-1".to_owned()),
        ParamKind::Integer { max, .. } => max.checked_add(1).map(|n| n.to_string()),
        ParamKind::OneOf(_) => Some("no-such-choice".to_owned()),
        ParamKind::Text | ParamKind::Custom(_) => None,
    }
}
