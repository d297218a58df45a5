//! The step execution aggregate: a step's counters and checkpoint, saved with every chunk.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::counts::StepCounts;
use super::rows::StepExecution;
use super::schema::{batch_job_execution as e, batch_step_execution as s};
use super::status::{BatchStatus, exit_codes};
use super::{JobRepository, truncate};

/// Counts and checkpoint of a running step, saved after every committed chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepProgress {
    /// The counts so far.
    pub counts: StepCounts,
    /// The checkpoint (reader state after the last committed chunk).
    pub context: serde_json::Value,
}

impl StepProgress {
    /// Restores progress from a stored row.
    pub fn from_row(row: &StepExecution) -> Self {
        StepProgress {
            counts: row.counts.clone(),
            context: serde_json::from_str(&row.execution_context)
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// Adds `delta` to a domain counter.
    pub fn add_counter(&mut self, name: &str, delta: i64) {
        self.counts.counters.add(name, delta);
    }
}

impl JobRepository {
    /// The step executions of one job execution, in the order they started (without the
    /// partitions of partitioned steps: [`partitions`](Self::partitions)).
    pub async fn step_executions(
        &self,
        job_execution_id: i64,
    ) -> Result<Vec<StepExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => s::table
            .filter(s::job_execution_id.eq(job_execution_id))
            .filter(s::partition_of.is_null())
            .order(s::id.asc())
            .select(StepExecution::as_select())
            .load(c)
            .await)?)
    }

    /// For a restart: the latest step execution of `step_name` in the instance's executions with
    /// id greater than `after_execution_id` (those since the last COMPLETED one).
    pub async fn last_step_execution(
        &self,
        instance_id: i64,
        step_name: &str,
        after_execution_id: i64,
    ) -> Result<Option<StepExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => s::table
            .inner_join(e::table)
            .filter(e::job_instance_id.eq(instance_id))
            .filter(e::id.gt(after_execution_id))
            .filter(s::step_name.eq(step_name))
            .order(s::id.desc())
            .select(StepExecution::as_select())
            .first(c)
            .await
            .optional())?)
    }

    /// Creates the step execution of `step_name` in a job execution, starting from `progress`
    /// (its checkpoint; counters are this execution's own and start from what `progress` holds).
    pub async fn create_step_execution(
        &self,
        job_execution_id: i64,
        step_name: &str,
        progress: &StepProgress,
        now: NaiveDateTime,
    ) -> Result<StepExecution, DbError> {
        let mut conn = self.db.get().await?;
        let context = progress.context.to_string();
        dispatch!(&mut *conn, c => diesel::insert_into(s::table)
            .values((
                s::job_execution_id.eq(job_execution_id),
                s::step_name.eq(step_name),
                s::status.eq(BatchStatus::Started.as_str()),
                progress.counts.clone(),
                s::execution_context.eq(&context),
                s::exit_code.eq(exit_codes::EXECUTING),
                s::start_time.eq(now),
                s::last_updated.eq(now),
            ))
            .execute(c)
            .await)?;
        Ok(dispatch!(&mut *conn, c => s::table
            .filter(s::job_execution_id.eq(job_execution_id))
            .filter(s::step_name.eq(step_name))
            .select(StepExecution::as_select())
            .first(c)
            .await)?)
    }

    /// Saves counters and checkpoint of a running step on `conn` — inside the chunk's transaction
    /// when the writer is the database, so the checkpoint commits with the data.
    pub async fn save_progress(
        conn: &mut DbConnection,
        step_execution_id: i64,
        progress: &StepProgress,
        now: NaiveDateTime,
    ) -> Result<(), DbError> {
        let context = progress.context.to_string();
        dispatch!(conn, c => diesel::update(s::table.find(step_execution_id))
            .set((
                progress.counts.clone(),
                s::execution_context.eq(&context),
                s::last_updated.eq(now),
            ))
            .execute(c)
            .await)?;
        Ok(())
    }

    /// Records the end of a step.
    pub async fn finish_step(
        &self,
        step_execution_id: i64,
        status: BatchStatus,
        exit_code: &str,
        exit_message: Option<&str>,
        progress: &StepProgress,
        now: NaiveDateTime,
    ) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        Self::save_progress(&mut conn, step_execution_id, progress, now).await?;
        let message = exit_message.map(|m| truncate(m, 4000));
        dispatch!(&mut *conn, c => diesel::update(s::table.find(step_execution_id))
            .set((
                s::status.eq(status.as_str()),
                s::exit_code.eq(exit_code),
                s::exit_message.eq(message.as_deref()),
                s::end_time.eq(now),
                s::last_updated.eq(now),
            ))
            .execute(c)
            .await)?;
        Ok(())
    }
}
