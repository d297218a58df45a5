//! [`ChunkStep`] and its transactional loop: a database writer writes chunk *n* in the chunk's
//! transaction, which also commits its checkpoint, while chunk *n+1* is read.

use async_trait::async_trait;
use tokio::sync::Mutex;

use tokio::sync::MutexGuard;

use super::commit::{Attempted, CommitTarget, RetryEnv, read_with_retry, with_retry};
use super::{
    ChunkWriter, External, ExternalWriter, InTransaction, ItemProcessor, ItemReader, Processed,
    Step, StepContext, StepOutcome, TransactionalWriter,
};
use crate::repository::StepProgress;

/// A chunk-oriented step: `R` reads, `P` turns `R::Item`s into `O`s, `W` writes the `O`s. The
/// writer's type says how chunks commit: [`ChunkStep::transactional`] (an
/// [`InTransaction`] writer: rows and checkpoint in one transaction) or
/// [`ChunkStep::external`] (an [`External`] writer: pipelined, see `pipeline.rs`).
pub struct ChunkStep<R, P, W, O> {
    pub(super) name: String,
    chunk_size: Option<usize>,
    reader: Mutex<R>,
    pub(super) processor: P,
    pub(super) writer: W,
    _out: std::marker::PhantomData<fn(O)>,
}

impl<R, P, W, O> ChunkStep<R, P, InTransaction<W>, O>
where
    W: TransactionalWriter<O>,
{
    /// A step whose writer writes to the batch database in the chunk's transaction.
    pub fn transactional(name: impl Into<String>, reader: R, processor: P, writer: W) -> Self {
        ChunkStep::with_writer(name, reader, processor, InTransaction(writer))
    }
}

impl<R, P, W, O> ChunkStep<R, P, External<W>, O>
where
    W: ExternalWriter<O>,
{
    /// A step whose writer writes elsewhere (idempotently); its checkpoints commit after the
    /// writes, pipelined.
    pub fn external(name: impl Into<String>, reader: R, processor: P, writer: W) -> Self {
        ChunkStep::with_writer(name, reader, processor, External(writer))
    }
}

impl<R, P, W, O> ChunkStep<R, P, W, O> {
    fn with_writer(name: impl Into<String>, reader: R, processor: P, writer: W) -> Self {
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

impl<R, P, W, O> ChunkStep<R, P, InTransaction<W>, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: TransactionalWriter<O>,
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
                next.counts.retry_count += retries;
                next.counts.rollback_count += rollbacks;
                next.counts.read_count += read as i64;
                next.counts.filter_count += processed.filtered as i64;
                next.counts.commit_count += 1;
                next.context = checkpoint.clone();
                self.writer
                    .write_and_commit(&processed.items, &target, &processed.failures, &mut next)
                    .await?;
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
                ctx.progress.counts.retry_count += done.retries;
                ctx.progress.counts.rollback_count += done.rollbacks;
                Err(e)
            }
        }
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
            ctx.progress.counts.retry_count += retries;
            items = next_items;
            checkpoint = next_checkpoint;
        }
        Ok(StepOutcome::Completed)
    }
}
impl<R: ItemReader, P, W, O> ChunkStep<R, P, W, O> {
    /// Takes the result of committing a chunk's checkpoint into the progress, then tells the
    /// listeners and checks the skip limit.
    pub(super) async fn committed(
        &self,
        ctx: &mut StepContext,
        done: Attempted<StepProgress>,
        total: Option<u64>,
    ) -> anyhow::Result<()> {
        match done.result {
            Ok(next) => ctx.progress = next,
            Err(e) => {
                ctx.progress.counts.retry_count += done.retries;
                ctx.progress.counts.rollback_count += done.rollbacks;
                return Err(e);
            }
        }
        self.chunk_done(ctx, total).await
    }

    /// After a chunk's checkpoint is committed: listeners, then the skip limit.
    pub(super) async fn chunk_done(
        &self,
        ctx: &StepContext,
        total: Option<u64>,
    ) -> anyhow::Result<()> {
        for listener in ctx.listeners.iter() {
            listener
                .on_chunk(&ctx.run, &ctx.step_name, &ctx.progress, total)
                .await;
        }
        if ctx.progress.counts.skip_count as u64 > ctx.settings.skip_limit {
            anyhow::bail!(
                "skip limit exceeded: {} item failures (batch.skip_limit = {})",
                ctx.progress.counts.skip_count,
                ctx.settings.skip_limit
            );
        }
        Ok(())
    }

    /// Opens the reader at the step's checkpoint and reads the first chunk: the reader (held),
    /// the chunk, its checkpoint and the step's total if a listener wants it.
    pub(super) async fn start(&self, ctx: &mut StepContext) -> anyhow::Result<Started<'_, R>> {
        if let Some(n) = self.chunk_size {
            ctx.settings.chunk_size = n;
        }
        let mut reader = self.reader.lock().await;
        let checkpoint = saved_checkpoint::<R::Checkpoint>(&self.name, &ctx.progress.context)?;
        reader.open(checkpoint, &ctx.scope).await?;
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
        ctx.progress.counts.retry_count += retries;
        Ok(Started {
            reader,
            items,
            checkpoint,
            total,
        })
    }
}

/// The checkpoint saved by an earlier execution of step `step`, typed (`None`: none saved).
/// One that does not deserialize is an error: resuming from the start instead would redo (or,
/// with a non-idempotent writer, duplicate) everything before it.
pub(super) fn saved_checkpoint<C: serde::de::DeserializeOwned>(
    step: &str,
    saved: &serde_json::Value,
) -> anyhow::Result<Option<C>> {
    if saved.is_null() {
        return Ok(None);
    }
    serde_json::from_value(saved.clone()).map(Some).map_err(|e| {
        anyhow::anyhow!(
            "{step}: the saved checkpoint `{saved}` cannot be read as a {} ({e}); it was written by another version of the step or changed by hand. Run the job with --rerun to start the instance over",
            std::any::type_name::<C>()
        )
    })
}

/// A step's reader, opened, with its first chunk.
pub(super) struct Started<'a, R: ItemReader> {
    pub(super) reader: MutexGuard<'a, R>,
    pub(super) items: Vec<R::Item>,
    pub(super) checkpoint: serde_json::Value,
    pub(super) total: Option<u64>,
}

#[async_trait]
impl<R, P, W, O> Step for ChunkStep<R, P, InTransaction<W>, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: TransactionalWriter<O>,
    O: Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        let mut s = self.start(ctx).await?;
        self.run_in_db(ctx, &mut s.reader, s.items, s.checkpoint, s.total)
            .await
    }
}
