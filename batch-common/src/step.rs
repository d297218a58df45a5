//! Steps: the chunk-oriented step (reader → processor → writer, one commit per chunk) and the
//! tasklet-style step for work that is one statement or one call.
//!
//! The checkpoint (the reader's position after a chunk) is saved only after that chunk's write
//! succeeded: in the same transaction when the writer is the database (while chunk *n* is being
//! written, chunk *n+1* is read), after the write otherwise. Writers to other stores must be
//! idempotent, so a chunk replayed after a crash between the two does no harm; their step keeps
//! up to `WRITE_WINDOW` (2) chunks' writes in flight and commits the checkpoints strictly in
//! order, each after its own write (see the crate README for crash, retry and stop semantics).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use core_domain::DbConnection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, ClockExt};
use crate::listener::{JobRunInfo, Listeners};
use crate::repository::{ItemFailureRecord, JobRepository, StepProgress};
use crate::retry::RetryPolicy;

/// Chunking and retry settings of a step execution (from `[batch]`).
#[derive(Debug, Clone)]
pub struct ChunkSettings {
    /// Items per chunk.
    pub chunk_size: usize,
    /// How a chunk (its read, its write, its checkpoint commit) is retried on transient errors:
    /// `chunk_retry_attempts`, `chunk_retry_backoff` doubling up to `chunk_retry_max_backoff`
    /// with jitter, all within `chunk_retry_max_elapsed` of the first failure.
    pub retry: RetryPolicy,
    /// Item failures tolerated before the step fails.
    pub skip_limit: u64,
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

    /// How many items the whole step reads in `scope` (counting those before the checkpoint), if
    /// that is cheap to know; progress bars show it. Called once, after [`open`](Self::open).
    async fn total(&mut self, _scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }
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
    chunk_size: Option<usize>,
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
            chunk_size: None,
            reader: Mutex::new(reader),
            processor,
            writer,
            _out: std::marker::PhantomData,
        }
    }

    /// This step's own chunk size instead of `[batch] chunk_size` (`None`: the global one), as
    /// Spring Batch steps declare theirs.
    pub fn with_chunk_size(mut self, chunk_size: Option<std::num::NonZeroUsize>) -> Self {
        self.chunk_size = chunk_size.map(std::num::NonZeroUsize::get);
        self
    }
}

/// Reads one chunk, retrying transient errors; returns the chunk and the retries it took.
async fn read_with_retry<R: ItemReader>(
    reader: &mut R,
    settings: &ChunkSettings,
    clock: &dyn Clock,
    step: &str,
) -> anyhow::Result<((Vec<R::Item>, serde_json::Value), i64)> {
    let mut schedule = settings.retry.schedule();
    let mut retries = 0;
    loop {
        match reader.read_chunk(settings.chunk_size).await {
            Ok(chunk) => return Ok((chunk, retries)),
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
struct Written {
    /// Items read.
    read: usize,
    /// Items the processor filtered out.
    filtered: usize,
    /// Item failures of the processor and the writer.
    failures: Vec<ItemFailureRecord>,
    /// What the writer reported.
    outcome: WriteOutcome,
    /// The reader's position after the chunk.
    checkpoint: serde_json::Value,
}

/// A result with the retries and rollbacks it took (added to the step's progress by the caller).
struct Attempted<T> {
    result: anyhow::Result<T>,
    retries: i64,
    rollbacks: i64,
}

/// What retrying needs, owned, so work in flight does not borrow the step's context.
#[derive(Clone)]
struct RetryEnv {
    settings: ChunkSettings,
    clock: Arc<dyn Clock>,
    step_name: String,
}

impl RetryEnv {
    fn of(ctx: &StepContext) -> Self {
        RetryEnv {
            settings: ctx.settings.clone(),
            clock: ctx.clock.clone(),
            step_name: ctx.step_name.clone(),
        }
    }
}

/// Runs `op` (given the retries and rollbacks so far) with the chunk retry policy.
async fn with_retry<T, F, Fut>(ctx: &RetryEnv, what: &str, mut op: F) -> Attempted<T>
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

/// Where a chunk's checkpoint goes, owned, so a commit can run while the step goes on.
#[derive(Clone)]
struct CommitTarget {
    repo: JobRepository,
    execution_id: i64,
    job_instance_id: i64,
    step_execution_id: i64,
    step_name: String,
    retry: RetryEnv,
}

impl CommitTarget {
    fn of(ctx: &StepContext) -> Self {
        CommitTarget {
            repo: ctx.repo.clone(),
            execution_id: ctx.run.execution_id,
            job_instance_id: ctx.run.job_instance_id,
            step_execution_id: ctx.step_execution_id,
            step_name: ctx.step_name.clone(),
            retry: RetryEnv::of(ctx),
        }
    }
}

/// In an open transaction on `conn`: records the chunk's item failures and resolved keys, saves
/// `next` (counters and checkpoint) and commits; rolls back on error.
async fn finish_chunk(
    ctx: &CommitTarget,
    conn: &mut DbConnection,
    failures: &[ItemFailureRecord],
    outcome: &WriteOutcome,
    next: &mut StepProgress,
) -> anyhow::Result<()> {
    let result = async {
        next.write_count += outcome.written as i64;
        next.skip_count += failures.len() as i64;
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

/// Commits the checkpoint of a chunk already in the external store on top of `base` (the
/// progress after the previous chunk), retrying transient errors. Returns the new progress (which
/// counts the retries and rollbacks this took). Owns its inputs, so it runs beside the step.
async fn commit_written(
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
            next.retry_count += retries;
            next.rollback_count += rollbacks;
            next.read_count += chunk.read as i64;
            next.filter_count += chunk.filtered as i64;
            next.commit_count += 1;
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

impl<R, P, W, O> ChunkStep<R, P, W, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: ItemWriter<O>,
    O: Send + Sync + 'static,
{
    /// Database writer: writes a processed chunk and commits its progress in one transaction,
    /// retrying transient errors.
    async fn write_chunk_in_db(
        &self,
        ctx: &mut StepContext,
        processed: &Processed<O>,
        read: usize,
        checkpoint: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let shared: &StepContext = ctx;
        let target = CommitTarget::of(shared);
        let done = with_retry(
            &RetryEnv::of(shared),
            "writing a chunk",
            async |retries, rollbacks| {
                let mut next = shared.progress.clone();
                next.retry_count += retries;
                next.rollback_count += rollbacks;
                next.read_count += read as i64;
                next.filter_count += processed.filtered as i64;
                next.commit_count += 1;
                next.context = checkpoint.clone();
                let mut conn = shared.repo.database().get().await?;
                let conn: &mut DbConnection = &mut conn;
                conn.begin().await?;
                let outcome = match self.writer.write(&processed.items, Some(&mut *conn)).await {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = conn.rollback().await;
                        return Err(e);
                    }
                };
                let mut failures = processed.failures.clone();
                failures.extend(outcome.failures.iter().cloned());
                finish_chunk(&target, conn, &failures, &outcome, &mut next).await?;
                Ok(next)
            },
        )
        .await;
        match done.result {
            Ok(next) => {
                ctx.progress = next;
                Ok(())
            }
            Err(e) => {
                ctx.progress.retry_count += done.retries;
                ctx.progress.rollback_count += done.rollbacks;
                Err(e)
            }
        }
    }

    /// External writer: writes a processed chunk, retrying transient errors. The checkpoint is
    /// committed later (see [`commit_written`]); this owns what it needs so that several writes
    /// can be in flight while the step's context commits earlier ones.
    async fn write_external(
        &self,
        env: &RetryEnv,
        processed: Processed<O>,
        read: usize,
        checkpoint: serde_json::Value,
    ) -> Attempted<Written> {
        let done = with_retry(env, "writing a chunk", async |_, _| {
            self.writer.write(&processed.items, None).await
        })
        .await;
        Attempted {
            result: done.result.map(|outcome| {
                let mut failures = processed.failures;
                failures.extend(outcome.failures.iter().cloned());
                Written {
                    read,
                    filtered: processed.filtered,
                    failures,
                    outcome,
                    checkpoint,
                }
            }),
            retries: done.retries,
            rollbacks: done.rollbacks,
        }
    }

    /// Takes the result of committing a chunk's checkpoint into the progress, then tells the
    /// listeners and checks the skip limit.
    async fn committed(
        &self,
        ctx: &mut StepContext,
        done: Attempted<StepProgress>,
        total: Option<u64>,
    ) -> anyhow::Result<()> {
        match done.result {
            Ok(next) => ctx.progress = next,
            Err(e) => {
                ctx.progress.retry_count += done.retries;
                ctx.progress.rollback_count += done.rollbacks;
                return Err(e);
            }
        }
        self.chunk_done(ctx, total).await
    }

    /// After a chunk's checkpoint is committed: listeners, then the skip limit.
    async fn chunk_done(&self, ctx: &StepContext, total: Option<u64>) -> anyhow::Result<()> {
        for listener in ctx.listeners.iter() {
            listener
                .on_chunk(&ctx.run, &ctx.step_name, &ctx.progress, total)
                .await;
        }
        if ctx.progress.skip_count as u64 > ctx.settings.skip_limit {
            anyhow::bail!(
                "skip limit exceeded: {} item failures (batch.skip_limit = {})",
                ctx.progress.skip_count,
                ctx.settings.skip_limit
            );
        }
        Ok(())
    }

    /// The loop for a database writer: write chunk *n* (with its checkpoint, one transaction)
    /// while reading chunk *n+1*.
    async fn run_in_db(
        &self,
        ctx: &mut StepContext,
        reader: &mut R,
        mut items: Vec<R::Item>,
        mut checkpoint: serde_json::Value,
        total: Option<u64>,
    ) -> anyhow::Result<StepOutcome> {
        let settings = ctx.settings.clone();
        let clock = ctx.clock.clone();
        while !items.is_empty() {
            if ctx.cancel.is_cancelled() {
                return Ok(StepOutcome::Stopped);
            }
            let read = items.len();
            let processed = self.processor.process(items).await?;
            let (written, next) = tokio::join!(
                self.write_chunk_in_db(ctx, &processed, read, &checkpoint),
                read_with_retry(reader, &settings, clock.as_ref(), &self.name)
            );
            written?;
            self.chunk_done(ctx, total).await?;
            let ((next_items, next_checkpoint), retries) = next?;
            ctx.progress.retry_count += retries;
            items = next_items;
            checkpoint = next_checkpoint;
        }
        Ok(StepOutcome::Completed)
    }

    /// The loop for an external writer: up to [`WRITE_WINDOW`] chunks are written at once
    /// (so the store never waits for the step between two chunks) while the next chunk is read;
    /// each chunk's checkpoint commits as soon as its own write succeeded and every earlier
    /// checkpoint is committed, strictly in order, one commit at a time. Writes and reads go on
    /// while a checkpoint commits.
    async fn run_external(
        &self,
        ctx: &mut StepContext,
        reader: &mut R,
        items: Vec<R::Item>,
        checkpoint: serde_json::Value,
        total: Option<u64>,
    ) -> anyhow::Result<StepOutcome> {
        let env = RetryEnv::of(ctx);
        let target = CommitTarget::of(ctx);
        let mut writes = Window::new();
        let mut commit = Commit::default();
        let mut reader = Some(reader);
        let mut reading = None;
        // A chunk read and not yet handed to a write; `None` with `end` once the reader is done.
        let mut ready = (!items.is_empty()).then_some((items, checkpoint));
        let mut end = ready.is_none();
        loop {
            if ctx.cancel.is_cancelled() {
                // Stop after the chunks in flight: commit them, start nothing new.
                drop(reading.take());
                self.drain(ctx, &mut commit, &mut writes, total).await?;
                return Ok(if end && ready.is_none() {
                    StepOutcome::Completed
                } else {
                    StepOutcome::Stopped
                });
            }
            if writes.len() < WRITE_WINDOW
                && let Some((items, checkpoint)) = ready.take()
            {
                let read = items.len();
                let processed = match self.processor.process(items).await {
                    Ok(p) => p,
                    Err(e) => {
                        // Keep what is written before failing.
                        self.drain(ctx, &mut commit, &mut writes, total).await?;
                        return Err(e);
                    }
                };
                writes.push(self.write_external(&env, processed, read, checkpoint));
            }
            if !end && ready.is_none() && reading.is_none() {
                let r = reader
                    .take()
                    .expect("the reader is back when no read is in flight");
                let (settings, clock, name) = (&env.settings, env.clock.as_ref(), &self.name);
                reading = Some(Box::pin(async move {
                    let chunk = read_with_retry(&mut *r, settings, clock, name).await;
                    (r, chunk)
                }));
            }
            if writes.len() == 0 && reading.is_none() && commit.running.is_none() {
                // Nothing in flight and nothing left to read.
                return Ok(StepOutcome::Completed);
            }
            let may_commit = commit.running.is_none();
            tokio::select! {
                done = async { commit.running.as_mut().expect("a commit is running").await }, if commit.running.is_some() => {
                    commit.running = None;
                    self.committed(ctx, done, total).await?;
                    ctx.progress.retry_count += std::mem::take(&mut commit.deferred_retries);
                }
                // Polls every write in flight; takes the oldest out only when no commit runs.
                written = writes.next_in_order(may_commit), if writes.len() > 0 => {
                    let written = written.expect("a write is in flight");
                    ctx.progress.retry_count += written.retries;
                    ctx.progress.rollback_count += written.rollbacks;
                    let chunk = written.result?;
                    commit.running = Some(Box::pin(commit_written(
                        target.clone(),
                        ctx.progress.clone(),
                        chunk,
                    )));
                }
                (r, chunk) = async { reading.as_mut().expect("a read is in flight").await }, if reading.is_some() => {
                    reading = None;
                    reader = Some(r);
                    match chunk {
                        Ok(((items, checkpoint), retries)) => {
                            // A running commit replaces the progress: add these after it.
                            if commit.running.is_some() {
                                commit.deferred_retries += retries;
                            } else {
                                ctx.progress.retry_count += retries;
                            }
                            if items.is_empty() {
                                end = true;
                            } else {
                                ready = Some((items, checkpoint));
                            }
                        }
                        Err(e) => {
                            self.drain(ctx, &mut commit, &mut writes, total).await?;
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Finishes the running commit, then waits for the writes in flight and commits their
    /// checkpoints in order, up to the first that failed (whose error is returned).
    async fn drain<F>(
        &self,
        ctx: &mut StepContext,
        commit: &mut Commit,
        writes: &mut Window<F>,
        total: Option<u64>,
    ) -> anyhow::Result<()>
    where
        F: Future<Output = Attempted<Written>>,
    {
        if let Some(running) = commit.running.take() {
            let done = running.await;
            self.committed(ctx, done, total).await?;
            ctx.progress.retry_count += std::mem::take(&mut commit.deferred_retries);
        }
        let target = CommitTarget::of(ctx);
        while let Some(written) = writes.next_in_order(true).await {
            ctx.progress.retry_count += written.retries;
            ctx.progress.rollback_count += written.rollbacks;
            let chunk = written.result?;
            let done = commit_written(target.clone(), ctx.progress.clone(), chunk).await;
            self.committed(ctx, done, total).await?;
        }
        Ok(())
    }
}

/// The checkpoint commit in flight of an external writer's step, and the read retries counted
/// while it ran (its result replaces the progress; they are added after).
#[derive(Default)]
struct Commit {
    running: Option<std::pin::Pin<Box<dyn Future<Output = Attempted<StepProgress>> + Send>>>,
    deferred_retries: i64,
}

/// How many chunks an external writer may have in flight at once.
const WRITE_WINDOW: usize = 2;

/// Futures run concurrently and taken out in the order they were pushed (a tiny
/// `FuturesOrdered`).
struct Window<F: Future> {
    queue: std::collections::VecDeque<InFlight<F>>,
}

/// A future in a [`Window`] and its output once it is done.
type InFlight<F> = (std::pin::Pin<Box<F>>, Option<<F as Future>::Output>);

impl<F: Future> Window<F> {
    fn new() -> Self {
        Window {
            queue: std::collections::VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn push(&mut self, f: F) {
        self.queue.push_back((Box::pin(f), None));
    }

    /// Polls every future in flight; returns the oldest one's output once it is done and `take`
    /// is true (`None` if there is none). With `take` false it only drives them, forever.
    async fn next_in_order(&mut self, take: bool) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            for (f, out) in self.queue.iter_mut() {
                if out.is_none()
                    && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
                {
                    *out = Some(v);
                }
            }
            if !take {
                return std::task::Poll::Pending;
            }
            match self.queue.front() {
                None => std::task::Poll::Ready(None),
                Some((_, Some(_))) => {
                    std::task::Poll::Ready(self.queue.pop_front().and_then(|(_, out)| out))
                }
                Some((_, None)) => std::task::Poll::Pending,
            }
        })
        .await
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
        if let Some(n) = self.chunk_size {
            ctx.settings.chunk_size = n;
        }
        let mut reader = self.reader.lock().await;
        reader.open(&ctx.progress.context, &ctx.scope).await?;
        let total = if ctx.listeners.is_empty() {
            None
        } else {
            match reader.total(&ctx.scope).await {
                Ok(total) => total,
                Err(e) => {
                    // Only progress display needs it; the step goes on without.
                    tracing::debug!(step = %self.name, error = %format!("{e:#}"), "counting the step's items failed");
                    None
                }
            }
        };
        let settings = ctx.settings.clone();
        let clock = ctx.clock.clone();
        let ((items, checkpoint), retries) =
            read_with_retry(&mut *reader, &settings, clock.as_ref(), &self.name).await?;
        ctx.progress.retry_count += retries;
        if self.writer.writes_to_database() {
            self.run_in_db(ctx, &mut reader, items, checkpoint, total)
                .await
        } else {
            self.run_external(ctx, &mut reader, items, checkpoint, total)
                .await
        }
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
