//! The item traits of a chunk step: read, process, write.

use std::collections::BTreeMap;

use async_trait::async_trait;
use core_domain::DbConnection;

use super::ReadScope;
use crate::repository::ItemFailureRecord;

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
