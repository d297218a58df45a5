//! A launcher process for the runtime's process-level tests (SIGKILL, concurrent launches).
//! It runs `countingJob` with the real `JobLauncher`, configured like `batch-launcher` from
//! `BATCH__*` variables, and exits with the same exit codes.
//!
//! Usage: `testkit-launcher run=<id> items=<n> delay_ms=<ms> [--join] [--partitions=N]
//! [--workers=N]` (the flags as `batch-launcher run` has them).

use std::sync::Arc;

use batch_common::SystemClock;
use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::repository::BASE_MIGRATIONS;
use batch_common::repository::JobRepository;
use batch_testkit::jobs::{CountingJob, FailPlan, parse_args};
use core_domain::Database;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            batch_common::ExitCode::Failed
        }
    };
    code.into()
}

async fn run(args: &[String]) -> anyhow::Result<batch_common::ExitCode> {
    let props = BatchProperties::load(None, &[])?;
    let (flags, pairs): (Vec<String>, Vec<String>) =
        args.iter().cloned().partition(|a| a.starts_with("--"));
    let given = parse_args(&pairs)?;
    let mut options = LaunchOptions {
        cancel: shutdown_on_sigterm(),
        ..LaunchOptions::default()
    };
    for flag in &flags {
        match flag.split_once('=') {
            None if flag == "--join" => options.join = true,
            Some(("--partitions", n)) => options.partitions = Some(n.parse()?),
            Some(("--workers", n)) => options.workers = Some(n.parse()?),
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }
    let db = Database::connect(
        &props.database.url,
        &props.database.pool_options(),
        BASE_MIGRATIONS,
    )
    .await?;
    let launcher = JobLauncher::new(
        JobRepository::new(db),
        Arc::new(SystemClock),
        props.batch.clone(),
    );
    let job = CountingJob {
        plan: Arc::new(FailPlan::default()),
    };
    match launcher.launch(&job, given, &options).await {
        Ok(result) => {
            println!("{}", result.to_json());
            Ok(result.exit_code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
    }
}

/// Cancelled on SIGTERM or SIGINT: the run stops after its current chunk.
fn shutdown_on_sigterm() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        cancel.cancel();
    });
    token
}
