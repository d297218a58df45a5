//! What both chunk loops share: reading with retry, a chunk's checkpoint commit (item failures,
//! resolved keys, counters and the reader position in one transaction), the chunk retry.

use std::sync::Arc;

use core_domain::DbConnection;

use super::{ChunkSettings, ItemReader, StepContext, WriteOutcome};
use crate::clock::{Clock, ClockExt};
use crate::repository::{ItemFailureRecord, JobRepository, StepProgress};

/// Reads one chunk, retrying transient errors; returns the chunk and the retries it took.
pub(super) async fn read_with_retry<R: ItemReader>(
    reader: &mut R,
    settings: &ChunkSettings,
    clock: &dyn Clock,
    step: &str,
) -> anyhow::Result<((Vec<R::Item>, serde_json::Value), i64)> {
    let mut schedule = settings.retry.schedule();
    let mut retries = 0;
    loop {
        match reader.read_chunk(settings.chunk_size).await {
            Ok((items, checkpoint)) => {
                let checkpoint = serde_json::to_value(&checkpoint).map_err(|e| {
                    anyhow::anyhow!("{step}: the reader's checkpoint cannot be saved as JSON: {e}")
                })?;
                return Ok(((items, checkpoint), retries));
            }
            Err(e) => {
                match crate::retry::next_delay(&mut schedule, &e, clock, step, "reading a chunk") {
                    Some(delay) => {
                        clock.sleep(delay).await;
                        retries += 1;
                    }
                    None => return Err(e),
                }
            }
        }
    }
}

/// A chunk an external (non-database) writer has written whose checkpoint is not committed yet.
pub(super) struct Written {
    /// Items read.
    pub(super) read: usize,
    /// Items the processor filtered out.
    pub(super) filtered: usize,
    /// Item failures of the processor and the writer.
    pub(super) failures: Vec<ItemFailureRecord>,
    /// What the writer reported.
    pub(super) outcome: WriteOutcome,
    /// The reader's position after the chunk.
    pub(super) checkpoint: serde_json::Value,
}

/// A result with the retries and rollbacks it took (added to the step's progress by the caller).
pub(super) struct Attempted<T> {
    pub(super) result: anyhow::Result<T>,
    pub(super) retries: i64,
    pub(super) rollbacks: i64,
}

/// What retrying needs, owned, so work in flight does not borrow the step's context.
#[derive(Clone)]
pub(crate) struct RetryEnv {
    pub(super) settings: ChunkSettings,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) step_name: String,
}

impl RetryEnv {
    pub(super) fn of(ctx: &StepContext) -> Self {
        RetryEnv {
            settings: ctx.settings.clone(),
            clock: ctx.clock.clone(),
            step_name: ctx.step_name.clone(),
        }
    }
}

/// Runs `op` (given the retries and rollbacks so far) with the chunk retry policy.
pub(super) async fn with_retry<T, F, Fut>(ctx: &RetryEnv, what: &str, mut op: F) -> Attempted<T>
where
    F: FnMut(i64, i64) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let done = ctx
        .settings
        .retry
        .run(ctx.clock.as_ref(), &ctx.step_name, what, |failures| {
            op(i64::from(failures), i64::from(failures))
        })
        .await;
    let rollbacks = i64::from(done.failures);
    Attempted {
        retries: rollbacks - i64::from(done.result.is_err()),
        rollbacks,
        result: done.result,
    }
}

/// Where a chunk's checkpoint goes (the step execution, its run), owned, so a commit can run
/// while the step goes on. Opaque outside the runtime.
#[derive(Clone)]
pub struct CommitTarget {
    pub(super) repo: JobRepository,
    pub(super) execution_id: i64,
    pub(super) job_instance_id: i64,
    pub(super) step_execution_id: i64,
    pub(super) step_name: String,
    pub(super) fence: Option<crate::repository::Claim>,
    pub(super) retry: RetryEnv,
}

impl CommitTarget {
    pub(crate) fn of(ctx: &StepContext) -> Self {
        CommitTarget {
            repo: ctx.repo.clone(),
            execution_id: ctx.run.execution_id,
            job_instance_id: ctx.run.job_instance_id,
            step_execution_id: ctx.step_execution_id,
            step_name: ctx.step_name.clone(),
            fence: ctx.fence.clone(),
            retry: RetryEnv::of(ctx),
        }
    }
}

/// In an open transaction on `conn`: records the chunk's item failures and resolved keys, saves
/// `next` (counters and checkpoint) and commits; rolls back on error.
pub(crate) async fn finish_chunk(
    ctx: &CommitTarget,
    conn: &mut DbConnection,
    failures: &[ItemFailureRecord],
    outcome: &WriteOutcome,
    next: &mut StepProgress,
) -> anyhow::Result<()> {
    let result = async {
        next.counts.write_count += outcome.written as i64;
        next.counts.skip_count += failures.len() as i64;
        for (k, v) in &outcome.counters {
            next.add_counter(k, *v);
        }
        let now = ctx.retry.clock.now_naive_utc();
        if !failures.is_empty() {
            JobRepository::record_item_failures(
                conn,
                ctx.execution_id,
                ctx.job_instance_id,
                &ctx.step_name,
                failures,
                now,
            )
            .await?;
        }
        if !outcome.resolved_keys.is_empty() {
            JobRepository::resolve_failures(
                conn,
                ctx.job_instance_id,
                &ctx.step_name,
                &outcome.resolved_keys,
                now,
            )
            .await?;
        }
        super::save_progress(conn, ctx.step_execution_id, ctx.fence.as_ref(), next, now).await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            conn.commit().await?;
            Ok(())
        }
        Err(e) => {
            let _ = conn.rollback().await;
            Err(e)
        }
    }
}

/// Commits the checkpoint of a chunk already in the external store on top of `base` (the
/// progress after the previous chunk), retrying transient errors. Returns the new progress (which
/// counts the retries and rollbacks this took). Owns its inputs, so it runs beside the step.
pub(super) async fn commit_written(
    ctx: CommitTarget,
    base: StepProgress,
    chunk: Written,
) -> Attempted<StepProgress> {
    let (ctx, base, chunk) = (&ctx, &base, &chunk);
    with_retry(
        &ctx.retry,
        "committing a chunk",
        async |retries, rollbacks| {
            let mut next = base.clone();
            next.counts.retry_count += retries;
            next.counts.rollback_count += rollbacks;
            next.counts.read_count += chunk.read as i64;
            next.counts.filter_count += chunk.filtered as i64;
            next.counts.commit_count += 1;
            next.context = chunk.checkpoint.clone();
            let mut conn = ctx.repo.database().get().await?;
            let conn: &mut DbConnection = &mut conn;
            conn.begin().await?;
            if conn.backend() == core_domain::Backend::Postgres {
                // The chunk is already in the external store, and writers there are idempotent:
                // losing this checkpoint in a crash only replays the chunk. So it need not wait
                // for the WAL flush, which would otherwise bound the step at one fsync per chunk.
                if let Err(e) = conn
                    .batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                {
                    let _ = conn.rollback().await;
                    return Err(e.into());
                }
            }
            finish_chunk(ctx, conn, &chunk.failures, &chunk.outcome, &mut next).await?;
            Ok(next)
        },
    )
    .await
}
