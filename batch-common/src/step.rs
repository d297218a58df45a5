//! Steps: the chunk-oriented step (reader → processor → writer, one commit per chunk) and the
//! tasklet-style step for work that is one statement or one call.
//!
//! The checkpoint (the reader's position after a chunk) is saved only after that chunk's write
//! succeeded: in the same transaction when the writer is the database, right after the write
//! otherwise (writers to other stores must be idempotent, so a chunk replayed after a crash
//! between the two does no harm). While chunk *n* is being written, chunk *n+1* is read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use core_domain::DbConnection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, ClockExt};
use crate::error::is_transient;
use crate::listener::{JobRunInfo, Listeners};
use crate::repository::{ItemFailureRecord, JobRepository, StepProgress};

/// Chunking and retry settings of a step execution (from `[batch]`).
#[derive(Debug, Clone)]
pub struct ChunkSettings {
    /// Items per chunk.
    pub chunk_size: usize,
    /// Attempts per chunk on transient errors.
    pub retry_attempts: u32,
    /// First retry delay (doubles per attempt).
    pub retry_backoff: Duration,
    /// Upper bound of the retry delay.
    pub retry_max_backoff: Duration,
    /// Item failures tolerated before the step fails.
    pub skip_limit: u64,
}

impl ChunkSettings {
    /// The delay before retry number `attempt` (1-based): backoff × 2^(attempt−1), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_max_backoff)
    }
}

/// Which items a step execution should read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Everything (from the checkpoint on).
    All,
    /// Only the items that failed in earlier runs of this instance (their keys); the previous run
    /// completed with item failures and this one retries them.
    FailedItems(Vec<String>),
}

/// Whether a step ran to its end or stopped on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// All work done.
    Completed,
    /// Stopped between chunks (shutdown or lost heartbeat); restartable from the checkpoint.
    Stopped,
}

/// Everything a running step may use, and its progress.
pub struct StepContext {
    /// The metadata repository.
    pub repo: JobRepository,
    /// The run.
    pub run: JobRunInfo,
    /// This step execution's row id.
    pub step_execution_id: i64,
    /// The step's name.
    pub step_name: String,
    /// Counters and checkpoint (restored on restart).
    pub progress: StepProgress,
    /// Which items to read.
    pub scope: ReadScope,
    /// Chunking and retry settings.
    pub settings: ChunkSettings,
    /// The injected clock.
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the run must stop after the current chunk.
    pub cancel: CancellationToken,
    /// Listeners.
    pub listeners: Listeners,
}

impl StepContext {
    /// Now (UTC, microseconds) from the injected clock.
    pub fn now(&self) -> NaiveDateTime {
        self.clock.now_naive_utc()
    }

    /// Saves the current progress (for tasklets that checkpoint by hand).
    pub async fn save_progress(&self) -> anyhow::Result<()> {
        let mut conn = self.repo.database().get().await?;
        JobRepository::save_progress(
            &mut conn,
            self.step_execution_id,
            &self.progress,
            self.now(),
        )
        .await?;
        Ok(())
    }
}

/// A step of a job.
#[async_trait]
pub trait Step: Send + Sync {
    /// The step's name, unique within its job.
    fn name(&self) -> &str;

    /// Runs the step (or resumes it from `ctx.progress.context`).
    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome>;
}

/// Reads items chunk by chunk and knows its position.
#[async_trait]
pub trait ItemReader: Send {
    /// The item type.
    type Item: Send + Sync + 'static;

    /// Positions the reader at `checkpoint` (JSON `null`: the start) for the given scope.
    async fn open(
        &mut self,
        checkpoint: &serde_json::Value,
        scope: &ReadScope,
    ) -> anyhow::Result<()>;

    /// Up to `max` items after the current position, and the checkpoint just after them.
    /// An empty chunk means the end.
    async fn read_chunk(
        &mut self,
        max: usize,
    ) -> anyhow::Result<(Vec<Self::Item>, serde_json::Value)>;
}

/// The result of processing a chunk.
#[derive(Debug)]
pub struct Processed<O> {
    /// Items to write.
    pub items: Vec<O>,
    /// Items dropped on purpose.
    pub filtered: usize,
    /// Items that failed (recorded as item failures; the others go on).
    pub failures: Vec<ItemFailureRecord>,
}

/// Turns read items into items to write; may filter, and may fail single items.
#[async_trait]
pub trait ItemProcessor<I, O>: Send + Sync {
    /// Processes one chunk. An `Err` fails the whole chunk (and, unless transient, the step);
    /// a single item's failure belongs in [`Processed::failures`].
    async fn process(&self, items: Vec<I>) -> anyhow::Result<Processed<O>>;
}

/// A processor that passes items through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

#[async_trait]
impl<I: Send + 'static> ItemProcessor<I, I> for PassThrough {
    async fn process(&self, items: Vec<I>) -> anyhow::Result<Processed<I>> {
        Ok(Processed {
            items,
            filtered: 0,
            failures: Vec::new(),
        })
    }
}

/// What a writer reports for one chunk.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Items written (counted into `write_count`).
    pub written: usize,
    /// Domain counters to add (e.g. `created`, `corrected`).
    pub counters: BTreeMap<String, i64>,
    /// Items the writer could not write (recorded; the others are committed).
    pub failures: Vec<ItemFailureRecord>,
    /// Keys of items that succeeded and whose earlier failures are now resolved.
    pub resolved_keys: Vec<String>,
}

/// Writes a chunk.
#[async_trait]
pub trait ItemWriter<O>: Send + Sync {
    /// True if the writer writes to the batch database: it then gets the chunk's transaction and
    /// the checkpoint commits together with its rows.
    fn writes_to_database(&self) -> bool;

    /// Writes the chunk. `tx` is the open transaction for database writers, `None` otherwise.
    async fn write(
        &self,
        items: &[O],
        tx: Option<&mut DbConnection>,
    ) -> anyhow::Result<WriteOutcome>;
}

/// A chunk-oriented step: `R` reads, `P` turns `R::Item`s into `O`s, `W` writes the `O`s.
pub struct ChunkStep<R, P, W, O> {
    name: String,
    reader: Mutex<R>,
    processor: P,
    writer: W,
    _out: std::marker::PhantomData<fn(O)>,
}

impl<R, P, W, O> ChunkStep<R, P, W, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: ItemWriter<O>,
    O: Send + Sync + 'static,
{
    /// A step named `name` reading with `reader`, processing with `processor`, writing with `writer`.
    pub fn new(name: impl Into<String>, reader: R, processor: P, writer: W) -> Self {
        ChunkStep {
            name: name.into(),
            reader: Mutex::new(reader),
            processor,
            writer,
            _out: std::marker::PhantomData,
        }
    }
}

/// Reads one chunk, retrying transient errors; returns the chunk and the retries it took.
async fn read_with_retry<R: ItemReader>(
    reader: &mut R,
    settings: &ChunkSettings,
    clock: &dyn Clock,
    step: &str,
) -> anyhow::Result<((Vec<R::Item>, serde_json::Value), i64)> {
    let mut retries = 0;
    let mut attempt = 1;
    loop {
        match reader.read_chunk(settings.chunk_size).await {
            Ok(chunk) => return Ok((chunk, retries)),
            Err(e) if is_transient(&e) && attempt < settings.retry_attempts => {
                let delay = settings.backoff(attempt);
                tracing::warn!(step, attempt, delay_ms = delay.as_millis() as u64, error = %format!("{e:#}"), "transient read error; retrying");
                clock.sleep(delay).await;
                retries += 1;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl<R, P, W, O> ChunkStep<R, P, W, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: ItemWriter<O>,
    O: Send + Sync + 'static,
{
    /// Writes a processed chunk and commits its progress, retrying transient errors.
    async fn write_chunk(
        &self,
        ctx: &mut StepContext,
        processed: &Processed<O>,
        read: usize,
        checkpoint: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let attempts = ctx.settings.retry_attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut next = ctx.progress.clone();
            next.read_count += read as i64;
            next.filter_count += processed.filtered as i64;
            next.commit_count += 1;
            next.context = checkpoint.clone();
            match self.try_write(ctx, processed, &mut next).await {
                Ok(()) => {
                    ctx.progress = next;
                    return Ok(());
                }
                Err(e) => {
                    ctx.progress.rollback_count += 1;
                    if is_transient(&e) && attempt < attempts {
                        let delay = ctx.settings.backoff(attempt);
                        tracing::warn!(
                            step = %ctx.step_name, attempt, delay_ms = delay.as_millis() as u64,
                            error = %format!("{e:#}"), "transient error writing a chunk; retrying"
                        );
                        ctx.progress.retry_count += 1;
                        ctx.clock.sleep(delay).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn try_write(
        &self,
        ctx: &StepContext,
        processed: &Processed<O>,
        next: &mut StepProgress,
    ) -> anyhow::Result<()> {
        let writer = &self.writer;
        let mut conn = ctx.repo.database().get().await?;
        let conn: &mut DbConnection = &mut conn;
        let outcome = if writer.writes_to_database() {
            conn.begin().await?;
            match writer.write(&processed.items, Some(&mut *conn)).await {
                Ok(o) => o,
                Err(e) => {
                    let _ = conn.rollback().await;
                    return Err(e);
                }
            }
        } else {
            let o = writer.write(&processed.items, None).await?;
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
            o
        };
        let result = async {
            let mut failures = processed.failures.clone();
            failures.extend(outcome.failures.iter().cloned());
            next.write_count += outcome.written as i64;
            next.skip_count += failures.len() as i64;
            for (k, v) in &outcome.counters {
                next.add_counter(k, *v);
            }
            let now = ctx.now();
            if !failures.is_empty() {
                JobRepository::record_item_failures(
                    conn,
                    ctx.run.execution_id,
                    ctx.run.job_instance_id,
                    &ctx.step_name,
                    &failures,
                    now,
                )
                .await?;
            }
            if !outcome.resolved_keys.is_empty() {
                JobRepository::resolve_failures(
                    conn,
                    ctx.run.job_instance_id,
                    &ctx.step_name,
                    &outcome.resolved_keys,
                    now,
                )
                .await?;
            }
            JobRepository::save_progress(conn, ctx.step_execution_id, next, now).await?;
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
}

#[async_trait]
impl<R, P, W, O> Step for ChunkStep<R, P, W, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: ItemWriter<O>,
    O: Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        let mut reader = self.reader.lock().await;
        reader.open(&ctx.progress.context, &ctx.scope).await?;
        let settings = ctx.settings.clone();
        let clock = ctx.clock.clone();
        let ((mut items, mut checkpoint), retries) =
            read_with_retry(&mut *reader, &settings, clock.as_ref(), &self.name).await?;
        ctx.progress.retry_count += retries;
        while !items.is_empty() {
            if ctx.cancel.is_cancelled() {
                return Ok(StepOutcome::Stopped);
            }
            let read = items.len();
            let processed = self.processor.process(items).await?;
            // Write chunk n while reading chunk n+1.
            let (written, next) = tokio::join!(
                self.write_chunk(ctx, &processed, read, &checkpoint),
                read_with_retry(&mut *reader, &settings, clock.as_ref(), &self.name)
            );
            written?;
            for listener in ctx.listeners.iter() {
                listener
                    .on_chunk(&ctx.run, &ctx.step_name, &ctx.progress)
                    .await;
            }
            if ctx.progress.skip_count as u64 > settings.skip_limit {
                anyhow::bail!(
                    "skip limit exceeded: {} item failures (batch.skip_limit = {})",
                    ctx.progress.skip_count,
                    settings.skip_limit
                );
            }
            let ((next_items, next_checkpoint), retries) = next?;
            ctx.progress.retry_count += retries;
            items = next_items;
            checkpoint = next_checkpoint;
        }
        Ok(StepOutcome::Completed)
    }
}

/// The body of a tasklet step: one unit of work (a statement, a call).
#[async_trait]
pub trait Tasklet: Send + Sync {
    /// Does the work. It may update `ctx.progress` (counters) and call `ctx.save_progress()`.
    async fn run(&self, ctx: &mut StepContext) -> anyhow::Result<()>;
}

/// A step that runs a [`Tasklet`] once.
pub struct TaskletStep<T> {
    name: String,
    tasklet: T,
}

impl<T: Tasklet> TaskletStep<T> {
    /// A step named `name` running `tasklet`.
    pub fn new(name: impl Into<String>, tasklet: T) -> Self {
        TaskletStep {
            name: name.into(),
            tasklet,
        }
    }
}

#[async_trait]
impl<T: Tasklet> Step for TaskletStep<T> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        self.tasklet.run(ctx).await?;
        Ok(StepOutcome::Completed)
    }
}
