//! Runs one parsed command and maps its outcome to an exit code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use batch_common::launcher::{JobLauncher, LaunchError, LaunchOptions};
use batch_common::params::{JobParameters, parse_pairs};
use batch_common::{
    BatchProperties, BatchResult, Clock, ClockExt, ConfigError, ExitCode, JobEnv, JobRepository,
    ParameterError, SystemClock,
};
use core_domain::{Database, DbError, migrate};
use tokio_util::sync::CancellationToken;

use crate::cli::{
    Cli, Command, HistoryArgs, LogFormat, PurgeArgs, RecoverArgs, RunArgs, SeedDemoArgs,
};
use crate::progress::{Progress, ProgressMode};
use crate::{demo, jobs};

/// A usage error found by the launcher itself (clap reports its own): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code 2 for configuration, usage and URL errors anywhere in the chain (a database that
/// does not exist included), 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.is::<ConfigError>() || cause.is::<UsageError>() || cause.is::<ParameterError>() {
            return ExitCode::Usage;
        }
        if cause
            .downcast_ref::<DbError>()
            .is_some_and(DbError::is_configuration_error)
        {
            return ExitCode::Usage;
        }
    }
    ExitCode::Failed
}

/// The error and its causes on one line (`what: why: root cause`), leaving out a cause whose
/// text the line already holds: some libraries print their source inside their own message
/// too, and `{:#}` would then show it twice.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.replace('\n', " ")
}

/// Executes the command; what it prints for the user goes to stdout, logs go to stderr.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let props = BatchProperties::load(cli.config.as_deref());
    let command = cli.command;
    if let Command::Run(args) = command {
        // `run` reports every outcome in its result file, a configuration error included.
        return run_reporting(props, args, cli.log_format == LogFormat::Human).await;
    }
    let props = props?;
    match command {
        Command::Run(_) => unreachable!("handled above"),
        Command::Migrate => migrate_cmd(&props).await,
        Command::List => {
            print!("{}", jobs::render_list());
            Ok(ExitCode::Completed)
        }
        Command::Config => {
            print!("{}", props.to_redacted_toml());
            Ok(ExitCode::Completed)
        }
        Command::SeedDemo(args) => seed_demo_cmd(&props, args).await,
        Command::Serve => {
            crate::serve::serve_cmd(props, Arc::new(SystemClock), shutdown_token()).await
        }
        Command::History(args) => history_cmd(&props, args).await,
        Command::Recover(args) => recover_cmd(&props, args).await,
        Command::Purge(args) => purge_cmd(&props, args).await,
        Command::FakeAssetApi(args) => fake_asset_api_cmd(args).await,
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
        status: "FAILED".to_owned(),
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
        Ok(props) => run_cmd(props, args, human_logs).await,
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
    props: BatchProperties,
    args: RunArgs,
    human_logs: bool,
) -> anyhow::Result<ExitCode> {
    let (job_name, raw) = args.job_and_params().map_err(UsageError)?;
    let Some(registration) = jobs::find(&job_name) else {
        return Err(UsageError(format!(
            "unknown job `{job_name}` (known: {})",
            jobs::names()
        ))
        .into());
    };
    let given = parse_pairs(&raw)?;
    // Checks names and value types before anything connects or runs.
    JobParameters::from_declared(registration.descriptor, given.clone())?;
    let Some(build) = registration.build else {
        return Err(UsageError(format!(
            "job `{job_name}` is declared but not implemented in this build yet"
        ))
        .into());
    };
    if args.validate_only {
        println!("ok: {job_name} {}", raw.join(" "));
        return Ok(ExitCode::Completed);
    }
    let props = Arc::new(props);
    let db = Database::connect(&props.database.url, &props.database.pool_options()).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let env = JobEnv {
        props: props.clone(),
        db: db.clone(),
        clock: clock.clone(),
    };
    let job = build(&env)
        .await
        .with_context(|| format!("setting up {job_name}"))?;
    let progress = ProgressMode::detect(human_logs, props.batch.progress_log_chunks);
    let launcher = build_launcher(&props, JobRepository::new(db), clock, progress);
    let options = LaunchOptions {
        rerun: args.rerun,
        cancel: shutdown_token(),
    };
    let result = match launcher.launch(job.as_ref(), given.clone(), &options).await {
        Ok(r) => r,
        Err(e) => {
            // The result file (FAILED, this exit code) is written by `run_reporting`.
            return match e {
                LaunchError::Parameters(p) => Err(p.into()),
                LaunchError::Setup(s) => Err(UsageError(error_line(&s)).into()),
                LaunchError::Database(db) => Err(db.into()),
                other => Err(other.into()),
            };
        }
    };
    println!("{result}");
    if let Some(path) = &args.result_file {
        write_result_file(path, &result).map_err(|e| ResultFileError(error_line(&e)))?;
    }
    Ok(result.exit_code)
}

/// The launcher every command that runs jobs uses (`run`, `serve`): the runtime settings of
/// `[batch]` and the listeners the configuration asks for (progress, notifications).
pub fn build_launcher(
    props: &BatchProperties,
    repo: JobRepository,
    clock: Arc<dyn Clock>,
    progress: ProgressMode,
) -> JobLauncher {
    let launcher = JobLauncher::new(repo, clock, props.batch.clone())
        .with_listener(Arc::new(Progress::new(progress)));
    // Slack (`[notify]`). A notifier never fails a run, and neither does one that cannot be built.
    match batch_common::notify::listener_from_settings(&props.notify) {
        Ok(Some(notify)) => launcher.with_listener(notify),
        Ok(None) => launcher,
        Err(e) => {
            tracing::error!(error = %e, "Slack notifications are off: {e}");
            launcher
        }
    }
}

async fn connect_repo(props: &BatchProperties) -> anyhow::Result<JobRepository> {
    let db = Database::connect(&props.database.url, &props.database.pool_options()).await?;
    Ok(JobRepository::new(db))
}

/// One execution with its steps as JSON: `history --json` and the HTTP API show the same view.
pub async fn execution_view(
    repo: &JobRepository,
    e: &core_domain::models::JobExecution,
    i: &core_domain::models::JobInstance,
) -> Result<serde_json::Value, DbError> {
    let steps = repo.step_executions(e.id).await?;
    Ok(serde_json::json!({
        "execution_id": e.id,
        "job_name": i.job_name,
        "job_instance_id": i.id,
        "status": e.status,
        "exit_code": e.exit_code,
        "exit_message": e.exit_message,
        "parameters": serde_json::from_str::<serde_json::Value>(&e.parameters).unwrap_or_default(),
        "owner": e.owner,
        "created_at": e.created_at,
        "start_time": e.start_time,
        "end_time": e.end_time,
        "last_updated": e.last_updated,
        "steps": steps.iter().map(|s| serde_json::json!({
            "name": s.step_name, "status": s.status, "read": s.read_count, "written": s.write_count,
            "filtered": s.filter_count, "skipped": s.skip_count, "commits": s.commit_count,
            "rollbacks": s.rollback_count, "retries": s.retry_count,
            "counters": serde_json::from_str::<serde_json::Value>(&s.counters).unwrap_or_default(),
        })).collect::<Vec<_>>(),
    }))
}

fn fmt_time(t: Option<chrono::NaiveDateTime>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

async fn history_cmd(props: &BatchProperties, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(props).await?;
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
    }
    Ok(ExitCode::Completed)
}

async fn recover_cmd(props: &BatchProperties, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(props).await?;
    let now = SystemClock.now_naive_utc();
    let stale_before =
        now - chrono::Duration::from_std(props.batch.stale_after).unwrap_or(chrono::Duration::MAX);
    if repo.execution(args.execution_id).await?.is_none() {
        return Err(UsageError(format!("execution {} does not exist", args.execution_id)).into());
    }
    match repo
        .recover(args.execution_id, stale_before, args.force, now)
        .await?
    {
        Ok(e) => {
            println!(
                "execution {} marked FAILED (abandoned); the next launch of its job instance restarts it",
                e.id
            );
            Ok(ExitCode::Completed)
        }
        Err(refusal) => {
            eprintln!("error: {refusal}");
            Ok(ExitCode::Failed)
        }
    }
}

async fn purge_cmd(props: &BatchProperties, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(props).await?;
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

async fn migrate_cmd(props: &BatchProperties) -> anyhow::Result<ExitCode> {
    let url = &props.database.url;
    let started = Instant::now();
    let applied = migrate::run_pending(url)
        .await
        .map_err(|e| e.with_unknown_database(url))?;
    let total = migrate::all_names(url.backend()).len();
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

async fn seed_demo_cmd(props: &BatchProperties, args: SeedDemoArgs) -> anyhow::Result<ExitCode> {
    let tz = props.batch.timezone;
    let date = args.date.unwrap_or_else(|| SystemClock.yesterday_in(tz));
    let db = Database::connect(&props.database.url, &props.database.pool_options()).await?;
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
        demo::reset(&db)
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
