//! The operator verbs on the command line (`stop`, `restart`, `abandon`/`recover`, `failures`):
//! [`crate::operator`]'s verbs, their answers printed and their refusals as exit codes.

use batch_common::config::BatchProperties;
use batch_common::{ClockExt, ExitCode, SystemClock};

use crate::cli::{FailuresArgs, RecoverArgs, RestartArgs, RunArgs};
use crate::launch::connect_repo;
use crate::modules::Registry;
use crate::operator::{self, OperatorError};

/// An operator verb's refusal: the message on stderr, its exit code.
fn refused(e: OperatorError) -> anyhow::Result<ExitCode> {
    match e {
        OperatorError::Database(db) => Err(db.into()),
        e => {
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
    }
}

pub(crate) async fn abandon_cmd(
    registry: &Registry,
    props: &BatchProperties,
    args: RecoverArgs,
) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(registry, props).await?;
    let now = SystemClock.now_naive_utc();
    match operator::abandon(
        &repo,
        args.execution_id,
        props.batch.stale_after,
        args.force,
        now,
    )
    .await
    {
        Ok(e) => {
            println!(
                "execution {} marked FAILED (abandoned); the next launch of its job instance restarts it (`restart {}`)",
                e.id, e.id
            );
            Ok(ExitCode::Completed)
        }
        Err(e) => refused(e),
    }
}

pub(crate) async fn stop_cmd(
    registry: &Registry,
    props: &BatchProperties,
    id: i64,
) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(registry, props).await?;
    let now = SystemClock.now_naive_utc();
    match operator::stop(&repo, id, now).await {
        Ok(s) => {
            let owner = s.execution.owner.as_deref().unwrap_or("?");
            println!(
                "execution {id}: stop {} (status STOPPING); {owner} stops it after its current chunk, within {} (its heartbeat)",
                if s.already {
                    "was already requested"
                } else {
                    "requested"
                },
                humantime::format_duration(props.batch.heartbeat_interval)
            );
            if s.heartbeat_age_secs > props.batch.stale_after.as_secs_f64() {
                println!(
                    "warning: its last heartbeat is {:.0}s old: if {owner} is gone nothing will read the request; `abandon {id}` marks it FAILED",
                    s.heartbeat_age_secs
                );
            }
            Ok(ExitCode::Completed)
        }
        Err(e) => refused(e),
    }
}

/// `restart <id>`: the run to launch (the instance of execution `id`, with its parameters), or
/// the exit code of a refusal (its message printed).
pub(crate) async fn restart_run(
    registry: &Registry,
    props: &BatchProperties,
    args: RestartArgs,
) -> anyhow::Result<Result<RunArgs, ExitCode>> {
    let repo = connect_repo(registry, props).await?;
    let (job, params) = match operator::restart_target(&repo, args.execution_id).await {
        Ok(target) => target,
        Err(e) => return refused(e).map(Err),
    };
    println!(
        "restarting execution {}'s job instance: {job} {}",
        args.execution_id,
        params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(Ok(RunArgs {
        job_name: Some(job),
        args: params
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        rerun: false,
        result_file: args.result_file,
        validate_only: false,
        join: false,
        partitions: None,
        workers: args.workers,
    }))
}

pub(crate) async fn failures_cmd(
    registry: &Registry,
    props: &BatchProperties,
    args: FailuresArgs,
) -> anyhow::Result<ExitCode> {
    let repo = connect_repo(registry, props).await?;
    if repo.execution(args.execution_id).await?.is_none() {
        return refused(OperatorError::NotFound(args.execution_id));
    }
    let total = repo.count_failures(args.execution_id).await?;
    let page = repo
        .failures_page(args.execution_id, args.after, args.limit)
        .await?;
    if args.json {
        let view = crate::views::failures_page_view(args.execution_id, total, &page, args.limit);
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::Completed);
    }
    if page.is_empty() {
        println!(
            "execution {}: no item failures{}",
            args.execution_id,
            if args.after > 0 {
                format!(" after id {}", args.after)
            } else {
                String::new()
            }
        );
        return Ok(ExitCode::Completed);
    }
    println!(
        "{:>8}  {:<28} {:<16} {:>8}  {:<10} ERROR",
        "ID", "STEP", "ITEM", "ATTEMPTS", "RESOLVED"
    );
    for f in &page {
        println!(
            "{:>8}  {:<28} {:<16} {:>8}  {:<10} {}",
            f.id,
            f.step_name,
            f.item_key,
            f.attempts,
            if f.resolved_at.is_some() { "yes" } else { "no" },
            f.error.replace('\n', " ")
        );
    }
    if page.len() as i64 >= args.limit {
        let last = page.last().map_or(0, |f| f.id);
        println!(
            "{} of {total} shown; next page: failures {} --after {last}",
            page.len(),
            args.execution_id
        );
    }
    Ok(ExitCode::Completed)
}
