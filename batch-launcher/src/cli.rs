//! The command line.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Runs the batch jobs of the points and asset services.
#[derive(Debug, Parser)]
#[command(name = "batch-launcher", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML config file (overrides the built-in defaults; BATCH__SECTION__KEY variables override it).
    #[arg(long, global = true, env = "BATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, env = "BATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// More log output (-v debug, -vv trace). RUST_LOG, if set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations to the configured database (a no-op when up to date).
    Migrate,
    /// List the jobs this launcher can run, with their steps and parameters.
    List,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Seed deterministic demo data (users, balances, one day of transactions) into the configured database.
    SeedDemo(SeedDemoArgs),
    /// Run a job: `run <JOB> [key=value ...]` or `run --job.name=<JOB> [key=value ...]`.
    Run(RunArgs),
    /// Show recent executions, newest first.
    History(HistoryArgs),
    /// Mark a dead execution FAILED (abandoned) so its instance can be restarted (alias of `abandon`).
    Recover(RecoverArgs),
    /// Ask a running execution to stop after its current chunk, wherever it runs (the process
    /// running it reads the request with its next heartbeat; a partitioned run stops all its
    /// workers). It ends STOPPED and can be restarted.
    Stop(ExecutionArg),
    /// Run a FAILED or STOPPED execution's job instance again from its checkpoints, in this
    /// process (exit 4 if it is running; exit 2 if it completed: use `run … --rerun`).
    Restart(RestartArgs),
    /// Mark a dead execution FAILED (abandoned) so its instance can be restarted (Spring Batch's
    /// name for `recover`).
    Abandon(RecoverArgs),
    /// List an execution's item failures, page by page.
    Failures(FailuresArgs),
    /// Delete the metadata of executions that ended before a cutoff.
    Purge(PurgeArgs),
    /// Run the scheduler of `[schedule]` and the HTTP API (kick, status, history, health, metrics) until SIGTERM.
    Serve,
    /// Serve a fake of the external asset API over HTTP, for local runs and benchmarks.
    FakeAssetApi(FakeAssetApiArgs),
    /// Print the Jenkins pipeline of a job, generated from its descriptor and the effective configuration.
    Jenkinsfile(JenkinsfileArgs),
}

/// Arguments of `jenkinsfile`.
#[derive(Debug, Args)]
pub struct JenkinsfileArgs {
    /// The job whose pipeline to generate.
    pub job: String,

    /// Write the pipeline to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// The parallel pipeline: N worker stages (2 to 64), each on an agent of its own, all running
    /// `run <JOB> --join --partitions P --workers 2` to share the partitions of the job's
    /// partitioned steps. PostgreSQL or MySQL/MariaDB only (SQLite refuses --join).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=64))]
    pub workers: Option<u32>,

    /// Partitions of each partitioned step in the parallel pipeline (at least N; default 4 × N).
    #[arg(
        long,
        value_name = "P",
        requires = "workers",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub partitions: Option<u32>,
}

/// Arguments of `fake-asset-api`.
#[derive(Debug, Args)]
pub struct FakeAssetApiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,

    /// Port to listen on (the default matches `asset.api_base_url`).
    #[arg(long, default_value_t = 8089)]
    pub port: u16,

    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Share of requests answered 503 at random, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Users that always fail, as user=status pairs: `3=500,5=404`.
    #[arg(long, default_value = "")]
    pub fail_users: String,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid error rate `{s}`; expected a number from 0.0 to 1.0"
        )),
    }
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job (Spring style); without it, the first argument is the job name.
    #[arg(long = "job.name", value_name = "JOB")]
    pub job_name: Option<String>,

    /// `JOB key=value ...` (or only `key=value ...` with --job.name).
    #[arg(value_name = "JOB_AND_PARAMETERS")]
    pub args: Vec<String>,

    /// Run a COMPLETED job instance again from the start.
    #[arg(long)]
    pub rerun: bool,

    /// Write the run's result as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub result_file: Option<PathBuf>,

    /// Check the job name and parameters, print what would run, and exit without connecting.
    #[arg(long)]
    pub validate_only: bool,

    /// If the job instance is already running (another process or machine), join that execution
    /// as a worker and claim its partitions instead of exiting 4; otherwise start it. Every
    /// worker can run the same command (Kubernetes Indexed Job pods, Jenkins parallel stages); a
    /// worker with nothing left to claim exits 0 (status JOINED). PostgreSQL or MySQL/MariaDB.
    #[arg(long)]
    pub join: bool,

    /// Split every partitioned step of this run into N partitions (over [batch.partitions]; a
    /// restart keeps the partitions of the run it resumes).
    #[arg(long, value_name = "N")]
    pub partitions: Option<std::num::NonZeroU32>,

    /// Work up to N partitions at once in this process (over [batch] partition_workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<std::num::NonZeroU32>,
}

impl RunArgs {
    /// The job name and its `key=value` arguments.
    pub fn job_and_params(&self) -> Result<(String, Vec<String>), String> {
        match (&self.job_name, self.args.split_first()) {
            (Some(job), _) => Ok((job.clone(), self.args.clone())),
            (None, Some((job, rest))) if !job.contains('=') => Ok((job.clone(), rest.to_vec())),
            _ => Err(
                "no job given: use `run <JOB> [key=value ...]` or `run --job.name=<JOB>`"
                    .to_owned(),
            ),
        }
    }
}

/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this job.
    pub job: Option<String>,

    /// How many executions.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,

    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The execution to mark FAILED.
    pub execution_id: i64,

    /// Even if its heartbeat is recent (only when you know the process is gone).
    #[arg(long)]
    pub force: bool,
}

/// One execution id (`stop`).
#[derive(Debug, Args)]
pub struct ExecutionArg {
    /// The execution.
    pub execution_id: i64,
}

/// Arguments of `restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// A FAILED or STOPPED execution; its instance's latest execution decides.
    pub execution_id: i64,

    /// Write the run's result as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub result_file: Option<PathBuf>,

    /// Work up to N partitions at once in this process (over [batch] partition_workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<std::num::NonZeroU32>,
}

/// Arguments of `failures`.
#[derive(Debug, Args)]
pub struct FailuresArgs {
    /// The execution.
    pub execution_id: i64,

    /// At most this many failures.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: i64,

    /// Only failures with an id above this one (the previous page's last id).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub after: i64,

    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Delete executions that ended more than this long ago, e.g. `90d`, `12w`.
    #[arg(long, value_parser = parse_duration)]
    pub older_than: std::time::Duration,
}

/// Parses a duration like `30d` or `48h`, naming the value on error.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration `{s}` ({e}); write it like 30d, 12w, 48h"))
}

/// Turns the Spring-style `batch-launcher --job.name=JOB k=v` into `batch-launcher run --job.name=JOB k=v`.
pub fn normalize_args(mut args: Vec<String>) -> Vec<String> {
    let has_subcommand = args.iter().skip(1).any(|a| {
        matches!(
            a.as_str(),
            "run"
                | "list"
                | "config"
                | "migrate"
                | "seed-demo"
                | "history"
                | "recover"
                | "stop"
                | "restart"
                | "abandon"
                | "failures"
                | "purge"
                | "jenkinsfile"
                | "help"
        )
    });
    if !has_subcommand && let Some(pos) = args.iter().position(|a| a.starts_with("--job.name")) {
        args.insert(pos, "run".to_owned());
    }
    args
}

/// Arguments of `seed-demo`.
#[derive(Debug, Args)]
pub struct SeedDemoArgs {
    /// Number of users (each gets a balance; every 10th is inactive).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub users: u64,

    /// Average transactions per user on the seeded day (0 to 2x this many each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub transactions_per_user: u32,

    /// Business day of the transactions, YYYY-MM-DD (default: yesterday in batch.timezone).
    #[arg(long, value_parser = parse_date)]
    pub date: Option<NaiveDate>,

    /// Seed of the generator: the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Do nothing (exit 0) if the database already has users or balances.
    #[arg(long, conflicts_with = "reset")]
    pub if_empty: bool,

    /// Delete all domain rows (users, balances, transactions, reports, snapshots) first.
    #[arg(long)]
    pub reset: bool,
}

/// Parses `YYYY-MM-DD`, naming the value on error.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("invalid date `{s}` ({e}); expected YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn spring_style_job_name_means_run() {
        let args = normalize_args(
            [
                "batch-launcher",
                "--log-format",
                "json",
                "--job.name=pointBalanceSyncJob",
                "date=2026-11-20",
            ]
            .map(String::from)
            .to_vec(),
        );
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            run.job_and_params().unwrap(),
            (
                "pointBalanceSyncJob".to_owned(),
                vec!["date=2026-11-20".to_owned()]
            )
        );
        let cli = Cli::try_parse_from([
            "batch-launcher",
            "run",
            "assetRefreshJob",
            "date=2026-11-20",
            "--rerun",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.rerun);
        assert_eq!(run.job_and_params().unwrap().0, "assetRefreshJob");
        let cli = Cli::try_parse_from(["batch-launcher", "run", "date=2026-11-20"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.job_and_params().is_err());
    }

    #[test]
    fn parses_seed_demo() {
        let cli = Cli::try_parse_from([
            "batch-launcher",
            "seed-demo",
            "--users",
            "10",
            "--date",
            "2026-11-20",
            "--if-empty",
        ])
        .unwrap();
        match cli.command {
            Command::SeedDemo(a) => {
                assert_eq!(a.users, 10);
                assert_eq!(a.date, NaiveDate::from_ymd_opt(2026, 11, 20));
                assert!(a.if_empty && !a.reset);
            }
            other => panic!("{other:?}"),
        }
        let err = Cli::try_parse_from(["batch-launcher", "seed-demo", "--date", "2026-13-01"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2026-13-01"), "{err}");
        assert!(Cli::try_parse_from(["batch-launcher", "seed-demo", "--users", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["batch-launcher", "seed-demo", "--if-empty", "--reset"]).is_err()
        );
    }
}
