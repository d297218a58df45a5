//! Executions found by job, status and creation time, a page at a time (the dashboard's list of
//! executions). Newest first, by id.

use chrono::NaiveDateTime;
use core_domain::{DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::JobRepository;
use super::rows::{JobExecution, JobInstance};
use super::schema::{batch_job_execution as e, batch_job_instance as i};
use super::status::BatchStatus;

/// Which executions [`JobRepository::search_executions`] returns; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Of this job only.
    pub job_name: Option<String>,
    /// With this status only.
    pub status: Option<BatchStatus>,
    /// Created at or after this instant (UTC).
    pub created_from: Option<NaiveDateTime>,
    /// Created before this instant (UTC).
    pub created_before: Option<NaiveDateTime>,
}

/// One page of [`JobRepository::search_executions`].
#[derive(Debug, Clone)]
pub struct ExecutionPage {
    /// The executions with their instances, newest first.
    pub rows: Vec<(JobExecution, JobInstance)>,
    /// How many executions match in all.
    pub total: i64,
}

/// The filtered join of executions and instances, boxed for the backend of `$c`.
macro_rules! filtered {
    ($filter:expr) => {{
        let f: &ExecutionFilter = $filter;
        let mut q = e::table.inner_join(i::table).into_boxed();
        if let Some(job) = &f.job_name {
            q = q.filter(i::job_name.eq(job.clone()));
        }
        if let Some(status) = f.status {
            q = q.filter(e::status.eq(status.as_str()));
        }
        if let Some(from) = f.created_from {
            q = q.filter(e::created_at.ge(from));
        }
        if let Some(before) = f.created_before {
            q = q.filter(e::created_at.lt(before));
        }
        q
    }};
}

impl JobRepository {
    /// The executions matching `filter`, newest first: `limit` of them after skipping `offset`,
    /// and how many match in all.
    pub async fn search_executions(
        &self,
        filter: &ExecutionFilter,
        offset: i64,
        limit: i64,
    ) -> Result<ExecutionPage, DbError> {
        let mut conn = self.db.get().await?;
        let total: i64 = dispatch!(&mut *conn, c => filtered!(filter).count().get_result(c).await)?;
        let rows = dispatch!(&mut *conn, c => filtered!(filter)
            .select((JobExecution::as_select(), JobInstance::as_select()))
            .order(e::id.desc())
            .offset(offset)
            .limit(limit)
            .load(c)
            .await)?;
        Ok(ExecutionPage { rows, total })
    }
}
