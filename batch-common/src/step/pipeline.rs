//! The pipelined loop of a chunk step whose writer is external (not the batch database): up to
//! [`WRITE_WINDOW`] chunks' writes in flight (a `futures` ordered stream) while the next chunk is
//! read; each checkpoint commits after its own write and every earlier checkpoint, strictly in
//! order, one commit at a time, beside the step. The rules (crash, write/commit/read errors,
//! stop) are in the crate README.

use std::collections::VecDeque;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;

use super::chunk::ChunkStep;
use super::commit::{
    Attempted, CommitTarget, RetryEnv, Written, commit_written, read_with_retry, with_retry,
};
use async_trait::async_trait;

use super::{
    External, ExternalWriter, ItemProcessor, ItemReader, Processed, Step, StepContext, StepOutcome,
};
use crate::repository::StepProgress;

#[async_trait]
impl<R, P, W, O> Step for ChunkStep<R, P, External<W>, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: ExternalWriter<O>,
    O: Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        let mut s = self.start(ctx).await?;
        self.run_external(ctx, &mut s.reader, s.items, s.checkpoint, s.total)
            .await
    }
}

impl<R, P, W, O> ChunkStep<R, P, External<W>, O>
where
    R: ItemReader,
    P: ItemProcessor<R::Item, O>,
    W: ExternalWriter<O>,
    O: Send + Sync + 'static,
{
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
            self.writer.0.write(&processed.items).await
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
        let mut writes = Writes::default();
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
            // The oldest written chunk's checkpoint commits once no other commit runs.
            if commit.running.is_none()
                && let Some(written) = writes.done.pop_front()
            {
                ctx.progress.counts.retry_count += written.retries;
                ctx.progress.counts.rollback_count += written.rollbacks;
                // A write that failed for good fails the step: the checkpoints before it stand,
                // nothing after it commits.
                let chunk = written.result?;
                commit.running = Some(Box::pin(commit_written(
                    target.clone(),
                    ctx.progress.clone(),
                    chunk,
                )));
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
                writes
                    .in_flight
                    .push_back(self.write_external(&env, processed, read, checkpoint));
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
            tokio::select! {
                done = async { commit.running.as_mut().expect("a commit is running").await }, if commit.running.is_some() => {
                    commit.running = None;
                    self.committed(ctx, done, total).await?;
                    ctx.progress.counts.retry_count += std::mem::take(&mut commit.deferred_retries);
                }
                // Drives every write in flight; the oldest comes out first once it is done.
                Some(written) = writes.in_flight.next(), if !writes.in_flight.is_empty() => {
                    writes.done.push_back(written);
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
                                ctx.progress.counts.retry_count += retries;
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
        writes: &mut Writes<F>,
        total: Option<u64>,
    ) -> anyhow::Result<()>
    where
        F: Future<Output = Attempted<Written>>,
    {
        if let Some(running) = commit.running.take() {
            let done = running.await;
            self.committed(ctx, done, total).await?;
            ctx.progress.counts.retry_count += std::mem::take(&mut commit.deferred_retries);
        }
        let target = CommitTarget::of(ctx);
        loop {
            let written = match writes.done.pop_front() {
                Some(w) => w,
                None => match writes.in_flight.next().await {
                    Some(w) => w,
                    None => return Ok(()),
                },
            };
            ctx.progress.counts.retry_count += written.retries;
            ctx.progress.counts.rollback_count += written.rollbacks;
            let chunk = written.result?;
            let done = commit_written(target.clone(), ctx.progress.clone(), chunk).await;
            self.committed(ctx, done, total).await?;
        }
    }
}

/// The chunks an external writer's step has handed to writes and not yet committed: writes in
/// flight (in order), and writes done whose checkpoint waits for the running commit.
struct Writes<F: Future<Output = Attempted<Written>>> {
    in_flight: FuturesOrdered<F>,
    done: VecDeque<Attempted<Written>>,
}

impl<F: Future<Output = Attempted<Written>>> Default for Writes<F> {
    fn default() -> Self {
        Writes {
            in_flight: FuturesOrdered::new(),
            done: VecDeque::new(),
        }
    }
}

impl<F: Future<Output = Attempted<Written>>> Writes<F> {
    /// Chunks written or being written, not yet committed.
    fn len(&self) -> usize {
        self.in_flight.len() + self.done.len()
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
