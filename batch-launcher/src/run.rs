//! Runs one parsed command and maps its outcome to an exit code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use batch_common::config::{BatchProperties, ConfigError};
use batch_common::job::JobEnv;
use batch_common::launcher::{LaunchOptions, Prepared};
use batch_common::params::{ParamContext, parse_pairs};
use batch_common::repository::BatchStatus;
use batch_common::repository::JobRepository;
use batch_common::{BatchResult, Clock, ClockExt, ExitCode, SystemClock};
use core_domain::{Database, migrate};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, HistoryArgs, LogFormat, PurgeArgs, RunArgs, SeedDemoArgs};
use crate::demo;
use crate::launch::connect_repo;
use crate::launch::{LaunchFailure, build_launcher, check, prepare};
pub use crate::launch::{UsageError, error_line, exit_code_for};
use crate::modules::Registry;
use crate::operator_cli;
use crate::progress::ProgressMode;
use crate::views::execution_view;

/// Executes the command with the jobs of `registry`; what it prints for the user goes to
/// stdout, logs go to stderr.
pub async fn execute(cli: Cli, registry: &Registry) -> anyhow::Result<ExitCode> {
    let props = registry.load_properties(cli.config.as_deref());
    let command = cli.command;
    if let Command::Run(args) = command {
        // `run` reports every outcome in its result file, a configuration error included.
        return run_reporting(registry, props, args, cli.log_format == LogFormat::Human).await;
    }
    let props = props?;
    match command {
        Command::Run(_) => unreachable!("handled above"),
        Command::Migrate => migrate_cmd(registry, &props).await,
        Command::List => {
            print!("{}", registry.render_list());
            Ok(ExitCode::Completed)
        }
        Command::Config => {
            print!("{}", props.to_redacted_toml());
            Ok(ExitCode::Completed)
        }
        Command::SeedDemo(args) => seed_demo_cmd(registry, &props, args).await,
        Command::Serve => {
            crate::serve::serve_cmd(registry, props, Arc::new(SystemClock), shutdown_token()).await
        }
        Command::History(args) => history_cmd(registry, &props, args).await,
        Command::Recover(args) | Command::Abandon(args) => {
            operator_cli::abandon_cmd(registry, &props, args).await
        }
        Command::Stop(args) => operator_cli::stop_cmd(registry, &props, args.execution_id).await,
        Command::Restart(args) => match operator_cli::restart_run(registry, &props, args).await? {
            Ok(run) => {
                run_reporting(registry, Ok(props), run, cli.log_format == LogFormat::Human).await
            }
            Err(refused) => Ok(refused),
        },
        Command::Failures(args) => operator_cli::failures_cmd(registry, &props, args).await,
        Command::Purge(args) => purge_cmd(registry, &props, args).await,
        Command::FakeAssetApi(args) => fake_asset_api_cmd(args).await,
        Command::Jenkinsfile(args) => crate::jenkins::jenkinsfile_cmd(registry, &props, &args),
    }
}

async fn fake_asset_api_cmd(args: crate::cli::FakeAssetApiArgs) -> anyhow::Result<ExitCode> {
    use batch_asset::fake_server::{FakeApiConfig, FakeState, parse_fail_users, serve};
    let fail_users =
        parse_fail_users(&args.fail_users).map_err(|e| UsageError(format!("--fail-users: {e}")))?;
    let listener = tokio::net::TcpListener::bind((args.bind, args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.bind, args.port))?;
    let state = Arc::new(FakeState::default());
    state.set_config(FakeApiConfig {
        latency: std::time::Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        fail_users,
        revision: 0,
    });
    println!(
        "fake asset API on http://{}/v1/users/{{userId}}/assets (latency {} ms, error rate {}); Ctrl-C stops it",
        listener.local_addr()?,
        args.latency_ms,
        args.error_rate
    );
    tokio::select! {
        r = serve(listener, state) => r.context("serving")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::Completed)
}

/// Cancelled on the first SIGINT/SIGTERM: the running job stops after its current chunk and ends
/// STOPPED (restartable). A second signal exits at once.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::warn!(
                    "stop requested: finishing the current chunk (signal again to exit at once)"
                );
                t.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
    token
}

fn write_result_file(path: &Path, result: &BatchResult) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, result.to_json()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The result of a run that failed before it produced one of its own: bad configuration or
/// parameters, a database or Redis that cannot be used, a job that cannot be set up. Status
/// FAILED, the exit code and the error line (every error redacts its secrets).
fn failed_result(
    job: &str,
    given: BTreeMap<String, String>,
    err: &anyhow::Error,
    started_at: chrono::DateTime<chrono::Utc>,
) -> BatchResult {
    let ended_at = chrono::Utc::now();
    BatchResult {
        job_name: job.to_owned(),
        job_instance_id: None,
        execution_id: None,
        parameters: given,
        status: BatchStatus::Failed.into(),
        exit_code: exit_code_for(err),
        message: Some(error_line(err)),
        started_at: Some(started_at),
        ended_at: Some(ended_at),
        duration_ms: (ended_at - started_at).num_milliseconds().max(0) as u64,
        steps: Vec::new(),
        item_failures: 0,
    }
}

/// `run`, writing `--result-file` whatever the outcome: the run's own result, or a FAILED one
/// for an error before or instead of it (Jenkins archives the file in every case).
async fn run_reporting(
    registry: &Registry,
    props: Result<BatchProperties, ConfigError>,
    args: RunArgs,
    human_logs: bool,
) -> anyhow::Result<ExitCode> {
    let started_at = chrono::Utc::now();
    let result_file = args.result_file.clone();
    // Best effort, for the failure result: what the command line named.
    let (job, given) = match args.job_and_params() {
        Ok((job, raw)) => (job, parse_pairs(&raw).unwrap_or_default()),
        Err(_) => (String::new(), BTreeMap::new()),
    };
    let outcome = match props {
        Ok(props) => run_cmd(registry, props, args, human_logs).await,
        Err(e) => Err(e.into()),
    };
    match (outcome, result_file) {
        (Err(err), Some(path)) if !err.is::<ResultFileError>() => {
            let result = failed_result(&job, given, &err, started_at);
            if let Err(write) = write_result_file(&path, &result) {
                tracing::error!(error = %error_line(&write), "the result file was not written");
            }
            Err(err)
        }
        (outcome, _) => outcome,
    }
}

/// Writing `--result-file` itself failed (not retried as a failure result).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ResultFileError(String);

async fn run_cmd(
    registry: &Registry,
    props: BatchProperties,
    args: RunArgs,
    human_logs: bool,
) -> anyhow::Result<ExitCode> {
    let (job_name, raw) = args.job_and_params().map_err(UsageError)?;
    let given = parse_pairs(&raw)?;
    // Resolves the parameters as the run will, before anything connects or runs.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ctx = ParamContext::new(clock.as_ref(), props.batch.timezone);
    let (registration, resolved) = check(registry, &job_name, &given, &ctx)?;
    if args.validate_only {
        let shown: Vec<String> = resolved
            .to_strings()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("ok: {job_name} {}", shown.join(" "));
        return Ok(ExitCode::Completed);
    }
    let props = Arc::new(props);
    let db = Database::connect(
        &props.database.url,
        &props.database.pool_options(),
        &registry.migrations(),
    )
    .await?;
    let env = JobEnv {
        props: props.clone(),
        db: db.clone(),
        clock: clock.clone(),
    };
    let progress = ProgressMode::detect(human_logs, props.batch.progress_log_chunks);
    let launcher = build_launcher(&props, JobRepository::new(db), clock, progress);
    let options = LaunchOptions {
        rerun: args.rerun,
        cancel: shutdown_token(),
        join: args.join,
        partitions: args.partitions,
        workers: args.workers,
    };
    // A failure here becomes the result file (FAILED, its exit code) in `run_reporting`.
    let result = match prepare(registration, &env, &launcher, given, &options).await? {
        Prepared::Done(result) => result,
        Prepared::Ready(run) => run
            .run()
            .await
            .map_err(|e| LaunchFailure::from_launch(&job_name, e))?,
        Prepared::Join(worker) => worker
            .run()
            .await
            .map_err(|e| LaunchFailure::from_launch(&job_name, e))?,
    };
    println!("{result}");
    if let Some(path) = &args.result_file {
        write_result_file(path, &result).map_err(|e| ResultFileError(error_line(&e)))?;
    }
    Ok(result.exit_code)
}

fn fmt_time(t: Option<chrono::NaiveDateTime>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

async fn history_cmd(
    registry: &Registry,
    props: &BatchProperties,
    args: HistoryArgs,
) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(registry, props).await?;
    let rows = repo.history(args.job.as_deref(), args.limit).await?;
    if args.json {
        let mut out = Vec::new();
        for (e, i) in &rows {
            out.push(execution_view(&repo, e, i).await?);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::Completed);
    }
    if rows.is_empty() {
        println!(
            "no executions{}",
            args.job.map(|j| format!(" of {j}")).unwrap_or_default()
        );
        return Ok(ExitCode::Completed);
    }
    println!(
        "{:>6}  {:<22} {:<10} {:<24} {:<19}  {:>9}  PARAMETERS",
        "ID", "JOB", "STATUS", "EXIT", "STARTED (UTC)", "SECONDS"
    );
    for (e, i) in rows {
        let secs = match (e.start_time, e.end_time) {
            (Some(s), Some(t)) => format!("{:.1}", (t - s).num_milliseconds() as f64 / 1000.0),
            _ => "-".to_owned(),
        };
        println!(
            "{:>6}  {:<22} {:<10} {:<24} {:<19}  {:>9}  {}",
            e.id,
            i.job_name,
            e.status,
            e.exit_code,
            fmt_time(e.start_time),
            secs,
            e.parameters
        );
        for step in repo.step_executions(e.id).await? {
            let partitions = repo.partitions(step.id).await?;
            if !partitions.is_empty() {
                println!(
                    "{:>8}{}",
                    "",
                    partition_summary(&step.step_name, &partitions)
                );
            }
        }
    }
    Ok(ExitCode::Completed)
}

/// One line about a partitioned step's partitions: how many in each status, the running ones'
/// owners and leases, and how many were re-claimed.
fn partition_summary(step: &str, partitions: &[batch_common::repository::StepExecution]) -> String {
    use batch_common::repository::BatchStatus;
    let mut by_status: BTreeMap<&str, usize> = Default::default();
    for p in partitions {
        *by_status.entry(p.status.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let now = SystemClock.now_naive_utc();
    let running: Vec<String> = partitions
        .iter()
        .filter(|p| p.status == BatchStatus::Started)
        .map(|p| {
            let index = p.step_name.rsplit_once(':').map_or("?", |(_, i)| i);
            format!(
                "{index} on {} (lease renewed {:.1}s ago)",
                p.owner.as_deref().unwrap_or("?"),
                (now - p.last_updated).num_milliseconds() as f64 / 1000.0
            )
        })
        .collect();
    let reclaimed = partitions.iter().filter(|p| p.claim_count > 1).count();
    let read: i64 = partitions.iter().map(|p| p.counts.read_count).sum();
    let mut line = format!(
        "{step}: {} partitions: {}; read {read}",
        partitions.len(),
        counts.join(", ")
    );
    if reclaimed > 0 {
        line.push_str(&format!("; {reclaimed} re-claimed"));
    }
    if !running.is_empty() {
        line.push_str(&format!("; running: {}", running.join(", ")));
    }
    line
}

async fn purge_cmd(
    registry: &Registry,
    props: &BatchProperties,
    args: PurgeArgs,
) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(registry, props).await?;
    let age = chrono::Duration::from_std(args.older_than)
        .map_err(|_| UsageError(format!("--older-than {:?} is too large", args.older_than)))?;
    let cutoff = SystemClock.now_naive_utc() - age;
    let c = repo.purge(cutoff).await?;
    println!(
        "purged executions that ended before {} UTC: {} executions, {} steps, {} item failures, {} instances",
        cutoff.format("%Y-%m-%d %H:%M:%S"),
        c.executions,
        c.steps,
        c.failures,
        c.instances
    );
    Ok(ExitCode::Completed)
}

async fn migrate_cmd(registry: &Registry, props: &BatchProperties) -> anyhow::Result<ExitCode> {
    let url = &props.database.url;
    let started = Instant::now();
    let sets = registry.migrations();
    let applied = migrate::run_pending(url, &sets)
        .await
        .map_err(|e| e.with_unknown_database(url))?;
    let total = migrate::all_names(url.backend(), &sets).len();
    if applied.is_empty() {
        println!("{url} is up to date ({total} migrations applied earlier)");
    } else {
        tracing::info!(
            applied = applied.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "migrated {url}"
        );
        println!(
            "applied {} migration(s) to {url}: {}",
            applied.len(),
            applied.join(", ")
        );
    }
    Ok(ExitCode::Completed)
}

async fn seed_demo_cmd(
    registry: &Registry,
    props: &BatchProperties,
    args: SeedDemoArgs,
) -> anyhow::Result<ExitCode> {
    let tz = props.batch.timezone;
    let date = args.date.unwrap_or_else(|| SystemClock.yesterday_in(tz));
    let db = Database::connect(
        &props.database.url,
        &props.database.pool_options(),
        &registry.migrations(),
    )
    .await?;
    let url = db.url().clone();
    let (users, balances) = demo::existing_rows(&db).await?;
    if users > 0 || balances > 0 {
        if args.if_empty {
            println!("{url} already has {users} users and {balances} balances; nothing seeded");
            return Ok(ExitCode::Completed);
        }
        if !args.reset {
            return Err(UsageError(format!(
                "{url} already has {users} users and {balances} balances; pass --reset to replace them or --if-empty to skip"
            ))
            .into());
        }
        demo::reset(&db, &registry.migrations())
            .await
            .context("deleting the existing demo data")?;
        tracing::info!(users, balances, "deleted existing domain rows");
    }
    let spec = demo::DemoSpec {
        users: args.users,
        transactions_per_user: args.transactions_per_user,
        date,
        timezone: tz,
        seed: args.seed,
    };
    let started = Instant::now();
    let step = (args.users / 10).max(1000);
    let mut next_log = step;
    let counts = demo::seed(&db, &spec, |done| {
        if done >= next_log && done < args.users {
            tracing::info!(users_done = done, users_total = args.users, "seeding");
            next_log += step;
        }
    })
    .await
    .context("seeding demo data")?;
    println!(
        "seeded {} users, {} balances and {} transactions on {date} ({tz}) into {url} in {:.1} s",
        counts.users,
        counts.balances,
        counts.transactions,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::Completed)
}
