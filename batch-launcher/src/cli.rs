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
