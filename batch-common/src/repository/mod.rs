//! `JobRepository`: the batch metadata tables, on SQLite, PostgreSQL and MySQL.
//!
//! The one-live-execution rule is enforced by the database: `batch_job_execution.live_instance_id`
//! equals the instance id while an execution is live and is NULL otherwise, under a UNIQUE
//! constraint. Two launchers on different machines racing for one instance both INSERT; exactly
//! one succeeds. A dead launcher's execution is taken over only by a conditional UPDATE that
//! checks the heartbeat is still stale, so two recoverers cannot both win either.
//!
//! The tables (`schema`), their row types and their migrations (`migrations/batch`) belong to
//! this module too, as Spring Batch's core ships its own schema; the business entities are
//! core-domain's. The queries are cut by aggregate: job instance, job execution (heartbeat,
//! takeover, `recover`), step execution (the chunk checkpoint), partition (claims, leases and
//! fenced checkpoints of a partitioned step's worker step executions) and item failure.

mod counts;
mod execution;
mod instance;
mod item_failure;
mod migrations;
mod operator;
mod partition;
mod rows;
// `table!` generates a struct per column; the tables themselves carry doc comments.
#[allow(missing_docs)]
pub mod schema;
mod search;
mod status;
mod step_execution;

use chrono::NaiveDateTime;
use core_domain::{Database, DbError, dispatch};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;

pub use counts::{DomainCounters, StepCounts};
pub use execution::{AlreadyRunning, CreateExecution, Heartbeat};
pub use item_failure::ItemFailureRecord;
pub use migrations::{BASE_MIGRATIONS, METADATA_MIGRATIONS};
pub use operator::{MAX_FAILURES_PAGE, StopRequest, heartbeat_age_secs};
pub use partition::{Claim, LeaseLost, NewPartition, PartitionStatuses, partition_name};
pub use rows::{ItemFailure, JobExecution, JobInstance, StepExecution};
use schema::{
    batch_item_failure as f, batch_job_execution as e, batch_job_instance as i,
    batch_step_execution as s,
};
pub use search::{ExecutionFilter, ExecutionPage};
pub use status::{BatchStatus, NotRun, RunStatus, exit_codes};
pub use step_execution::StepProgress;

/// What `purge` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    /// Job executions deleted.
    pub executions: usize,
    /// Step executions deleted.
    pub steps: usize,
    /// Item failures deleted.
    pub failures: usize,
    /// Job instances deleted (those left without executions).
    pub instances: usize,
}

fn is_unique_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Queries over the batch metadata tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobRepository {
    db: Database,
}

impl JobRepository {
    /// A repository over `db`.
    pub fn new(db: Database) -> Self {
        JobRepository { db }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Deletes finished executions that ended before `cutoff`, with their steps and failures, and
    /// the instances left without executions. Live executions are never touched. One transaction.
    pub async fn purge(&self, cutoff: NaiveDateTime) -> Result<PurgeCounts, DbError> {
        let mut conn = self.db.get().await?;
        conn.transaction(|c| {
            Box::pin(async move {
                let ids: Vec<i64> = dispatch!(&mut *c, c => e::table
                    .filter(e::live_instance_id.is_null())
                    .filter(e::end_time.lt(cutoff))
                    .select(e::id)
                    .load(c)
                    .await)?;
                let mut counts = PurgeCounts::default();
                for batch in ids.chunks(1000) {
                    counts.failures += dispatch!(&mut *c, c => diesel::delete(f::table.filter(f::job_execution_id.eq_any(batch))).execute(c).await)?;
                    counts.steps += dispatch!(&mut *c, c => diesel::delete(s::table.filter(s::job_execution_id.eq_any(batch))).execute(c).await)?;
                    counts.executions += dispatch!(&mut *c, c => diesel::delete(e::table.filter(e::id.eq_any(batch))).execute(c).await)?;
                }
                let orphan_ids: Vec<i64> = dispatch!(&mut *c, c => i::table
                    .left_join(e::table)
                    .filter(e::id.is_null())
                    .select(i::id)
                    .load(c)
                    .await)?;
                for batch in orphan_ids.chunks(1000) {
                    counts.instances += dispatch!(&mut *c, c => diesel::delete(i::table.filter(i::id.eq_any(batch))).execute(c).await)?;
                }
                Ok::<_, DbError>(counts)
            })
        })
        .await
    }
}
