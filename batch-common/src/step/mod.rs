//! Steps: the chunk-oriented step (reader → processor → writer, one commit per chunk) and the
//! tasklet-style step for work that is one statement or one call.
//!
//! The checkpoint (the reader's position after a chunk) is saved only after that chunk's write
//! succeeded: in the same transaction when the writer is the database (while chunk *n* is being
//! written, chunk *n+1* is read), after the write otherwise. Writers to other stores must be
//! idempotent, so a chunk replayed after a crash between the two does no harm; their step keeps
//! up to `WRITE_WINDOW` (2) chunks' writes in flight and commits the checkpoints strictly in
//! order, each after its own write (see the crate README for crash, retry and stop semantics).
//!
//! - `item.rs`: the item traits (reader, processor, writer) and what they return;
//! - `chunk.rs`: [`ChunkStep`] and the transactional chunk loop (database writers);
//! - `pipeline.rs`: the pipelined loop for external writers;
//! - `commit.rs`: a chunk's checkpoint commit and the chunk retry, shared by both loops;
//! - `tasklet.rs`: [`TaskletStep`];
//! - `concurrent.rs`: [`ConcurrentStep`], per-item work in flight at once (slow remote calls);
//! - `keyset.rs`: [`KeysetReader`], any keyset query as either step's reader;
//! - `partition.rs`: [`PartitionedStep`], a step split into key ranges that worker processes
//!   claim from the database; `range.rs`: [`KeyRange`] and [`Partitioning`]; `worker.rs`: the
//!   claim-run-end loop of a process's workers.

mod chunk;
mod commit;
mod concurrent;
mod item;
mod keyset;
mod partition;
mod pipeline;
mod range;
mod tasklet;
pub(crate) mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use tokio_util::sync::CancellationToken;

pub use chunk::ChunkStep;
pub use commit::CommitTarget;
pub use concurrent::{ConcurrentProcessor, ConcurrentStep, ItemOutcome, KeyedReader, Page};
pub use item::{
    ChunkWriter, External, ExternalWriter, FilterMap, InTransaction, ItemProcessor, ItemReader,
    Map, PassThrough, Processed, TransactionalWriter, WriteOutcome,
};
pub use keyset::{KeysetCheckpoint, KeysetReader};
pub use partition::{KeyRangePartitioner, PartitionedStep, Partitioner, WorkerFactory};
pub use range::{KeyRange, Partitioning};
pub use tasklet::{Tasklet, TaskletStep};

use crate::clock::{Clock, ClockExt};
use crate::listener::{JobRunInfo, Listeners};
use crate::repository::{Claim, JobRepository, StepProgress};
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
    /// On a restart: the step execution this one resumes (a partitioned step copies the
    /// partitions it did not complete).
    pub resumed_from: Option<i64>,
    /// Of a partition: the claim that holds it. Its checkpoints are then fenced: saved only
    /// while that claim still holds the partition ([`LeaseLost`](crate::repository::LeaseLost)
    /// otherwise, which rolls the chunk back).
    pub fence: Option<Claim>,
    /// How partitioned steps are split and worked.
    pub partitioning: Partitioning,
}

impl StepContext {
    /// Now (UTC, microseconds) from the injected clock.
    pub fn now(&self) -> NaiveDateTime {
        self.clock.now_naive_utc()
    }

    /// Saves the current progress (for tasklets that checkpoint by hand).
    pub async fn save_progress(&self) -> anyhow::Result<()> {
        let mut conn = self.repo.database().get().await?;
        save_progress(
            &mut conn,
            self.step_execution_id,
            self.fence.as_ref(),
            &self.progress,
            self.now(),
        )
        .await
    }
}

/// Saves a step execution's progress on `conn`, fenced by its claim for a partition.
pub(crate) async fn save_progress(
    conn: &mut core_domain::DbConnection,
    step_execution_id: i64,
    fence: Option<&Claim>,
    progress: &StepProgress,
    now: NaiveDateTime,
) -> anyhow::Result<()> {
    match fence {
        Some(claim) => JobRepository::save_partition_progress(conn, claim, progress, now).await,
        None => Ok(JobRepository::save_progress(conn, step_execution_id, progress, now).await?),
    }
}

/// A step of a job.
#[async_trait]
pub trait Step: Send + Sync {
    /// The step's name, unique within its job.
    fn name(&self) -> &str;

    /// Runs the step (or resumes it from `ctx.progress.context`).
    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome>;

    /// A partitioned step gives itself, so that a process joining the execution can build and
    /// run the worker step of a partition it claims.
    fn partitioned(&self) -> Option<&PartitionedStep> {
        None
    }
}
