//! What operators do to an execution from any process or machine (Spring Batch's
//! `JobOperator`): ask a running one to stop, and page through its item failures. The stop is a
//! row in the database, not a signal: the process running the execution, wherever it is, reads
//! it with its next heartbeat ([`JobRepository::heartbeat`]) and stops after its current chunk.

use chrono::NaiveDateTime;
use core_domain::{DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::JobRepository;
use super::rows::{ItemFailure, JobExecution};
use super::schema::{batch_item_failure as f, batch_job_execution as e};
use super::status::BatchStatus;

/// Outcome of [`JobRepository::request_stop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// The execution is now STOPPING; its process stops it within a heartbeat.
    Requested(JobExecution),
    /// A stop was already requested (status STOPPING); nothing changed.
    AlreadyStopping(JobExecution),
    /// The execution is not running (its status says how it ended); nothing changed.
    NotRunning(JobExecution),
    /// No execution has this id.
    NotFound,
}

/// The most item failures one page holds.
pub const MAX_FAILURES_PAGE: i64 = 1000;

impl JobRepository {
    /// Asks a running execution to stop: STARTING or STARTED becomes STOPPING, which the
    /// process running it reads with its next heartbeat. The execution stays live (its
    /// instance cannot be launched again) until that process records STOPPED — or, if the
    /// process is gone, until someone abandons it.
    pub async fn request_stop(&self, execution_id: i64) -> Result<StopRequest, DbError> {
        let mut conn = self.db.get().await?;
        let changed = dispatch!(&mut *conn, c => diesel::update(e::table
                .filter(e::id.eq(execution_id))
                .filter(e::live_instance_id.is_not_null())
                .filter(e::status.eq_any([BatchStatus::Starting.as_str(), BatchStatus::Started.as_str()])))
            .set(e::status.eq(BatchStatus::Stopping.as_str()))
            .execute(c)
            .await)?;
        drop(conn);
        let Some(execution) = self.execution(execution_id).await? else {
            return Ok(StopRequest::NotFound);
        };
        Ok(if changed > 0 {
            StopRequest::Requested(execution)
        } else if execution.live_instance_id.is_some() && execution.status == BatchStatus::Stopping
        {
            StopRequest::AlreadyStopping(execution)
        } else {
            StopRequest::NotRunning(execution)
        })
    }

    /// One page of an execution's item failures in id order: at most `limit` (1 to
    /// [`MAX_FAILURES_PAGE`]) with ids above `after` (0 for the first page).
    pub async fn failures_page(
        &self,
        job_execution_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ItemFailure>, DbError> {
        let limit = limit.clamp(1, MAX_FAILURES_PAGE);
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => f::table
            .filter(f::job_execution_id.eq(job_execution_id))
            .filter(f::id.gt(after))
            .order(f::id.asc())
            .limit(limit)
            .select(ItemFailure::as_select())
            .load(c)
            .await)?)
    }

    /// How many item failures an execution recorded.
    pub async fn count_failures(&self, job_execution_id: i64) -> Result<i64, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => f::table
            .filter(f::job_execution_id.eq(job_execution_id))
            .count()
            .get_result(c)
            .await)?)
    }
}

/// How long ago (seconds) `execution` sent its last heartbeat, at `now`.
pub fn heartbeat_age_secs(execution: &JobExecution, now: NaiveDateTime) -> f64 {
    (now - execution.last_updated).num_milliseconds() as f64 / 1000.0
}
