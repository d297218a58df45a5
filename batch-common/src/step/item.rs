//! The item traits of a chunk step: read, process, write.

use std::collections::BTreeMap;

use async_trait::async_trait;
use core_domain::DbConnection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ReadScope;
use super::commit::{CommitTarget, finish_chunk};
use crate::repository::{ItemFailureRecord, StepProgress};

/// Reads items chunk by chunk and knows its position.
#[async_trait]
pub trait ItemReader: Send {
    /// The item type.
    type Item: Send + Sync + 'static;

    /// The reader's position, saved with every committed chunk (as JSON in the step
    /// execution's context) and handed back to [`open`](Self::open) on a restart. A saved
    /// checkpoint that does not deserialize fails the step with an error saying so (it is never
    /// silently read as "from the start").
    type Checkpoint: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Positions the reader at `checkpoint` (`None`: the start) for the given scope.
    async fn open(
        &mut self,
        checkpoint: Option<Self::Checkpoint>,
        scope: &ReadScope,
    ) -> anyhow::Result<()>;

    /// Up to `max` items after the current position, and the checkpoint just after them.
    /// An empty chunk means the end.
    async fn read_chunk(
        &mut self,
        max: usize,
    ) -> anyhow::Result<(Vec<Self::Item>, Self::Checkpoint)>;

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

/// A processor from a plain function of one item: `Map(|user: User| Row::for_user(&user, month))`.
#[derive(Debug, Clone, Copy)]
pub struct Map<F>(pub F);

#[async_trait]
impl<I, O, F> ItemProcessor<I, O> for Map<F>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(I) -> O + Send + Sync,
{
    async fn process(&self, items: Vec<I>) -> anyhow::Result<Processed<O>> {
        Ok(Processed {
            items: items.into_iter().map(&self.0).collect(),
            filtered: 0,
            failures: Vec::new(),
        })
    }
}

/// A processor from a function that may drop an item (`None`: counted as filtered).
#[derive(Debug, Clone, Copy)]
pub struct FilterMap<F>(pub F);

#[async_trait]
impl<I, O, F> ItemProcessor<I, O> for FilterMap<F>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(I) -> Option<O> + Send + Sync,
{
    async fn process(&self, items: Vec<I>) -> anyhow::Result<Processed<O>> {
        let read = items.len();
        let items: Vec<O> = items.into_iter().filter_map(&self.0).collect();
        Ok(Processed {
            filtered: read - items.len(),
            items,
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

/// Writes a chunk to the batch database, in the chunk's transaction: its rows, the chunk's item
/// failures and the checkpoint commit together (or not at all). Use it as
/// `ChunkStep::transactional(…)` or wrapped in [`InTransaction`].
#[async_trait]
pub trait TransactionalWriter<O>: Send + Sync {
    /// Writes the chunk with `tx`, the chunk's open transaction (never commit or roll it back).
    async fn write(&self, items: &[O], tx: &mut DbConnection) -> anyhow::Result<WriteOutcome>;
}

/// Writes a chunk to a store other than the batch database (a cache, an API). The checkpoint
/// commits after the write, so a crash between the two replays the chunk: the write must be
/// idempotent. Use it as `ChunkStep::external(…)` or wrapped in [`External`].
#[async_trait]
pub trait ExternalWriter<O>: Send + Sync {
    /// Writes the chunk.
    async fn write(&self, items: &[O]) -> anyhow::Result<WriteOutcome>;
}

/// A [`TransactionalWriter`] as a step's writer.
#[derive(Debug, Clone)]
pub struct InTransaction<W>(pub W);

/// An [`ExternalWriter`] as a step's writer.
#[derive(Debug, Clone)]
pub struct External<W>(pub W);

mod sealed {
    pub trait Sealed {}
    impl<W> Sealed for super::InTransaction<W> {}
    impl<W> Sealed for super::External<W> {}
}

/// A step's writer of either kind ([`InTransaction`] or [`External`]), for steps that commit
/// the same way for both (`ConcurrentStep`). Sealed: implement [`TransactionalWriter`] or
/// [`ExternalWriter`] instead.
#[async_trait]
pub trait ChunkWriter<O>: sealed::Sealed + Send + Sync {
    /// Writes `items` and commits `next` (counters and checkpoint) with the chunk's item
    /// `failures` (the processor's and the writer's) to `target`: in one transaction with the
    /// rows of a transactional writer, or after an external write. Rolls back on error.
    async fn write_and_commit(
        &self,
        items: &[O],
        target: &CommitTarget,
        failures: &[ItemFailureRecord],
        next: &mut StepProgress,
    ) -> anyhow::Result<()>;
}

#[async_trait]
impl<O: Sync, W: TransactionalWriter<O>> ChunkWriter<O> for InTransaction<W> {
    async fn write_and_commit(
        &self,
        items: &[O],
        target: &CommitTarget,
        failures: &[ItemFailureRecord],
        next: &mut StepProgress,
    ) -> anyhow::Result<()> {
        let mut conn = target.repo.database().get().await?;
        let conn: &mut DbConnection = &mut conn;
        conn.begin().await?;
        let outcome = if items.is_empty() {
            WriteOutcome::default()
        } else {
            match self.0.write(items, &mut *conn).await {
                Ok(o) => o,
                Err(e) => {
                    let _ = conn.rollback().await;
                    return Err(e);
                }
            }
        };
        let mut failures = failures.to_vec();
        failures.extend(outcome.failures.iter().cloned());
        finish_chunk(target, conn, &failures, &outcome, next).await
    }
}

#[async_trait]
impl<O: Sync, W: ExternalWriter<O>> ChunkWriter<O> for External<W> {
    async fn write_and_commit(
        &self,
        items: &[O],
        target: &CommitTarget,
        failures: &[ItemFailureRecord],
        next: &mut StepProgress,
    ) -> anyhow::Result<()> {
        let outcome = if items.is_empty() {
            WriteOutcome::default()
        } else {
            self.0.write(items).await?
        };
        let mut failures = failures.to_vec();
        failures.extend(outcome.failures.iter().cloned());
        let mut conn = target.repo.database().get().await?;
        let conn: &mut DbConnection = &mut conn;
        conn.begin().await?;
        finish_chunk(target, conn, &failures, &outcome, next).await
    }
}
