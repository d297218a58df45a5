//! Runs one parsed command and maps its outcome to an exit code.

use std::time::Instant;

use anyhow::Context as _;
use batch_common::{BatchProperties, ClockExt, ConfigError, ExitCode, SystemClock};
use core_domain::{Database, DbError, migrate};

use crate::cli::{Cli, Command, SeedDemoArgs};
use crate::demo;

/// A usage error found by the launcher itself (clap reports its own): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code 2 for configuration, usage and URL errors anywhere in the chain, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.is::<ConfigError>() || cause.is::<UsageError>() {
            return ExitCode::Usage;
        }
        if let Some(DbError::UnsupportedScheme { .. } | DbError::InvalidUrl { .. }) =
            cause.downcast_ref::<DbError>()
        {
            return ExitCode::Usage;
        }
    }
    ExitCode::Failed
}

/// Executes the command; what it prints for the user goes to stdout, logs go to stderr.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let props = BatchProperties::load(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate => migrate_cmd(&props).await,
        Command::List => {
            print!("{}", crate::jobs::render_list());
            Ok(ExitCode::Completed)
        }
        Command::Config => {
            print!("{}", props.to_redacted_toml());
            Ok(ExitCode::Completed)
        }
        Command::SeedDemo(args) => seed_demo_cmd(&props, args).await,
    }
}

async fn migrate_cmd(props: &BatchProperties) -> anyhow::Result<ExitCode> {
    let url = &props.database.url;
    let started = Instant::now();
    let applied = migrate::run_pending(url).await?;
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
