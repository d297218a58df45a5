//! `JobRepository`: the batch metadata tables, on SQLite, PostgreSQL and MySQL.
//!
//! The one-live-execution rule is enforced by the database: `batch_job_execution.live_instance_id`
//! equals the instance id while an execution is live and is NULL otherwise, under a UNIQUE
//! constraint. Two launchers on different machines racing for one instance both INSERT; exactly
//! one succeeds. A dead launcher's execution is taken over only by a conditional UPDATE that
//! checks the heartbeat is still stale, so two recoverers cannot both win either.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::NaiveDateTime;
use core_domain::models::{ItemFailure, JobExecution, JobInstance, StepExecution};
use core_domain::schema::{
    batch_item_failure as f, batch_job_execution as e, batch_job_instance as i,
    batch_step_execution as s,
};
use core_domain::{Database, DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;

/// Status of a job or step execution (Spring Batch's `BatchStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    /// Created, not yet running.
    Starting,
    /// Running.
    Started,
    /// Asked to stop; finishing its current chunk.
    Stopping,
    /// Stopped cleanly; restartable.
    Stopped,
    /// Finished successfully.
    Completed,
    /// Failed; restartable.
    Failed,
}

impl BatchStatus {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Starting => "STARTING",
            BatchStatus::Started => "STARTED",
            BatchStatus::Stopping => "STOPPING",
            BatchStatus::Stopped => "STOPPED",
            BatchStatus::Completed => "COMPLETED",
            BatchStatus::Failed => "FAILED",
        }
    }

    /// True while an execution with this status may still be running somewhere.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            BatchStatus::Starting | BatchStatus::Started | BatchStatus::Stopping
        )
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BatchStatus {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, Self::Err> {
        Ok(match v {
            "STARTING" => BatchStatus::Starting,
            "STARTED" => BatchStatus::Started,
            "STOPPING" => BatchStatus::Stopping,
            "STOPPED" => BatchStatus::Stopped,
            "COMPLETED" => BatchStatus::Completed,
            "FAILED" => BatchStatus::Failed,
            other => return Err(format!("unknown batch status `{other}`")),
        })
    }
}

/// The status of a stored execution row (unknown values read as FAILED).
pub fn status_of(stored: &str) -> BatchStatus {
    stored.parse().unwrap_or(BatchStatus::Failed)
}

/// Exit codes stored with executions (Spring Batch's `ExitStatus` codes plus ours).
pub mod exit_codes {
    /// Finished successfully.
    pub const COMPLETED: &str = "COMPLETED";
    /// Finished, but some items failed and were recorded.
    pub const COMPLETED_WITH_FAILURES: &str = "COMPLETED_WITH_FAILURES";
    /// Failed.
    pub const FAILED: &str = "FAILED";
    /// Stopped on request.
    pub const STOPPED: &str = "STOPPED";
    /// Still running.
    pub const EXECUTING: &str = "EXECUTING";
    /// The step was skipped because it completed in an earlier execution.
    pub const NOOP: &str = "NOOP";
}

/// Another execution of the same instance is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlreadyRunning {
    /// The live execution.
    pub execution_id: i64,
    /// Its `host:pid`, if recorded.
    pub owner: Option<String>,
    /// Its last heartbeat (UTC).
    pub last_updated: NaiveDateTime,
}

/// Outcome of [`JobRepository::create_execution`].
#[derive(Debug)]
pub enum CreateExecution {
    /// A new live execution; `abandoned` is the id of a dead one that was taken over, if any.
    Created {
        /// The new execution.
        execution: JobExecution,
        /// The stale execution that was marked FAILED first.
        abandoned: Option<i64>,
    },
    /// Refused: another execution of the instance is live.
    AlreadyRunning(AlreadyRunning),
}

/// A failed item to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailureRecord {
    /// The item's key, e.g. a user id.
    pub item_key: String,
    /// The error (shortened to 2,000 characters when stored).
    pub error: String,
    /// Attempts made.
    pub attempts: i32,
}

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

/// Counters and checkpoint of a running step, saved after every committed chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepProgress {
    /// Items read.
    pub read_count: i64,
    /// Items written.
    pub write_count: i64,
    /// Items filtered.
    pub filter_count: i64,
    /// Items skipped.
    pub skip_count: i64,
    /// Chunks committed.
    pub commit_count: i64,
    /// Chunks rolled back.
    pub rollback_count: i64,
    /// Retries.
    pub retry_count: i64,
    /// Domain counters.
    pub counters: BTreeMap<String, i64>,
    /// The checkpoint (reader state after the last committed chunk).
    pub context: serde_json::Value,
}

impl StepProgress {
    /// Restores progress from a stored row.
    pub fn from_row(row: &StepExecution) -> Self {
        StepProgress {
            read_count: row.read_count,
            write_count: row.write_count,
            filter_count: row.filter_count,
            skip_count: row.skip_count,
            commit_count: row.commit_count,
            rollback_count: row.rollback_count,
            retry_count: row.retry_count,
            counters: serde_json::from_str(&row.counters).unwrap_or_default(),
            context: serde_json::from_str(&row.execution_context)
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// Adds `delta` to a domain counter.
    pub fn add_counter(&mut self, name: &str, delta: i64) {
        *self.counters.entry(name.to_owned()).or_default() += delta;
    }
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

    /// The instance of `job_name` with `job_key`, created if it does not exist (race-safe).
    pub async fn get_or_create_instance(
        &self,
        job_name: &str,
        job_key: &str,
        parameters_json: &str,
        now: NaiveDateTime,
    ) -> Result<JobInstance, DbError> {
        let mut conn = self.db.get().await?;
        if let Some(found) = find_instance(&mut conn, job_name, job_key).await? {
            return Ok(found);
        }
        let inserted = dispatch!(&mut *conn, c => diesel::insert_into(i::table)
            .values((
                i::job_name.eq(job_name),
                i::job_key.eq(job_key),
                i::parameters.eq(parameters_json),
                i::created_at.eq(now),
            ))
            .execute(c)
            .await);
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {} // another launcher created it just now
            Err(e) => return Err(e.into()),
        }
        find_instance(&mut conn, job_name, job_key)
            .await?
            .ok_or_else(|| DbError::Other(format!("job instance {job_name}/{job_key} vanished")))
    }

    /// One instance by id.
    pub async fn instance(&self, id: i64) -> Result<Option<JobInstance>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(
            dispatch!(&mut *conn, c => i::table.find(id).select(JobInstance::as_select()).first(c).await.optional())?,
        )
    }

    /// Every execution of an instance, oldest first.
    pub async fn executions_of_instance(
        &self,
        instance_id: i64,
    ) -> Result<Vec<JobExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => e::table
            .filter(e::job_instance_id.eq(instance_id))
            .order(e::id.asc())
            .select(JobExecution::as_select())
            .load(c)
            .await)?)
    }

    /// Creates a live execution of the instance, unless another one is live.
    ///
    /// A live execution whose heartbeat is older than `stale_before` belongs to a dead process: it
    /// is marked FAILED (abandoned) together with its running steps, and the new execution is
    /// created in its place.
    pub async fn create_execution(
        &self,
        instance_id: i64,
        parameters_json: &str,
        owner: &str,
        now: NaiveDateTime,
        stale_before: NaiveDateTime,
    ) -> Result<CreateExecution, DbError> {
        let mut conn = self.db.get().await?;
        let mut abandoned = None;
        // A plain read first: refuses a fresh live execution without taking a write lock (on
        // SQLite a writer could otherwise wait behind the running job's chunk transactions).
        let live: Option<JobExecution> = dispatch!(&mut *conn, c => e::table
            .filter(e::live_instance_id.eq(instance_id))
            .select(JobExecution::as_select())
            .first(c)
            .await
            .optional())?;
        if let Some(live) = live
            && live.last_updated >= stale_before
        {
            return Ok(CreateExecution::AlreadyRunning(AlreadyRunning {
                execution_id: live.id,
                owner: live.owner,
                last_updated: live.last_updated,
            }));
        }
        // Two rounds at most: insert; on conflict take over a stale execution and insert again.
        for _ in 0..2 {
            let inserted = dispatch!(&mut *conn, c => diesel::insert_into(e::table)
                .values((
                    e::job_instance_id.eq(instance_id),
                    e::status.eq(BatchStatus::Starting.as_str()),
                    e::exit_code.eq(exit_codes::EXECUTING),
                    e::parameters.eq(parameters_json),
                    e::owner.eq(owner),
                    e::live_instance_id.eq(instance_id),
                    e::created_at.eq(now),
                    e::last_updated.eq(now),
                ))
                .execute(c)
                .await);
            match inserted {
                Ok(_) => {
                    let execution = dispatch!(&mut *conn, c => e::table
                        .filter(e::live_instance_id.eq(instance_id))
                        .select(JobExecution::as_select())
                        .first(c)
                        .await)?;
                    return Ok(CreateExecution::Created {
                        execution,
                        abandoned,
                    });
                }
                Err(err) if is_unique_violation(&err) => {
                    let live: Option<JobExecution> = dispatch!(&mut *conn, c => e::table
                        .filter(e::live_instance_id.eq(instance_id))
                        .select(JobExecution::as_select())
                        .first(c)
                        .await
                        .optional())?;
                    let Some(live) = live else { continue }; // it just finished: try again
                    if live.last_updated >= stale_before {
                        return Ok(CreateExecution::AlreadyRunning(AlreadyRunning {
                            execution_id: live.id,
                            owner: live.owner,
                            last_updated: live.last_updated,
                        }));
                    }
                    let message = format!(
                        "abandoned: the process {} stopped sending heartbeats (last at {} UTC)",
                        live.owner.as_deref().unwrap_or("?"),
                        live.last_updated.format("%Y-%m-%d %H:%M:%S")
                    );
                    if mark_abandoned(&mut conn, live.id, Some(stale_before), &message, now).await?
                    {
                        tracing::warn!(execution.id = live.id, owner = ?live.owner, "marked stale execution {} FAILED (abandoned)", live.id);
                        abandoned = Some(live.id);
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        // Lost both rounds to other launchers.
        let live = self.live_execution(instance_id).await?;
        match live {
            Some(l) => Ok(CreateExecution::AlreadyRunning(AlreadyRunning {
                execution_id: l.id,
                owner: l.owner,
                last_updated: l.last_updated,
            })),
            None => Err(DbError::Other(
                "could not create an execution: the live-execution slot kept changing".into(),
            )),
        }
    }

    /// Deletes an execution that never started (status STARTING) and frees its live slot; used
    /// when the launch turns out to have nothing to do.
    pub async fn delete_unstarted_execution(&self, execution_id: i64) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        dispatch!(&mut *conn, c => diesel::delete(e::table
                .filter(e::id.eq(execution_id))
                .filter(e::status.eq(BatchStatus::Starting.as_str())))
            .execute(c)
            .await)?;
        Ok(())
    }

    /// The live execution of an instance, if any.
    pub async fn live_execution(&self, instance_id: i64) -> Result<Option<JobExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => e::table
            .filter(e::live_instance_id.eq(instance_id))
            .select(JobExecution::as_select())
            .first(c)
            .await
            .optional())?)
    }

    /// Marks the execution STARTED.
    pub async fn mark_started(&self, execution_id: i64, now: NaiveDateTime) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        dispatch!(&mut *conn, c => diesel::update(e::table.find(execution_id))
            .set((
                e::status.eq(BatchStatus::Started.as_str()),
                e::start_time.eq(now),
                e::last_updated.eq(now),
            ))
            .execute(c)
            .await)?;
        Ok(())
    }

    /// Refreshes the heartbeat. Returns false if the execution is no longer live (it was taken
    /// over as abandoned): the caller must stop writing.
    pub async fn heartbeat(&self, execution_id: i64, now: NaiveDateTime) -> Result<bool, DbError> {
        let mut conn = self.db.get().await?;
        let n = dispatch!(&mut *conn, c => diesel::update(
                e::table.filter(e::id.eq(execution_id)).filter(e::live_instance_id.is_not_null()),
            )
            .set(e::last_updated.eq(now))
            .execute(c)
            .await)?;
        Ok(n > 0)
    }

    /// Records the end of an execution and frees its instance's live slot.
    pub async fn finish_execution(
        &self,
        execution_id: i64,
        status: BatchStatus,
        exit_code: &str,
        exit_message: Option<&str>,
        now: NaiveDateTime,
    ) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        let message = exit_message.map(|m| truncate(m, 4000));
        dispatch!(&mut *conn, c => diesel::update(e::table.find(execution_id))
            .set((
                e::status.eq(status.as_str()),
                e::exit_code.eq(exit_code),
                e::exit_message.eq(message.as_deref()),
                e::end_time.eq(now),
                e::last_updated.eq(now),
                e::live_instance_id.eq(None::<i64>),
            ))
            .execute(c)
            .await)?;
        Ok(())
    }

    /// Marks a live execution FAILED (abandoned) by an operator (`recover`). Refuses one whose
    /// heartbeat is newer than `stale_before` unless `force`. Returns the execution after the change.
    pub async fn recover(
        &self,
        execution_id: i64,
        stale_before: NaiveDateTime,
        force: bool,
        now: NaiveDateTime,
    ) -> Result<Result<JobExecution, String>, DbError> {
        let Some(exec) = self.execution(execution_id).await? else {
            return Ok(Err(format!("execution {execution_id} does not exist")));
        };
        if exec.live_instance_id.is_none() {
            return Ok(Err(format!(
                "execution {execution_id} is not running (status {}); nothing to recover",
                exec.status
            )));
        }
        if !force && exec.last_updated >= stale_before {
            return Ok(Err(format!(
                "execution {execution_id} sent a heartbeat at {} UTC and may still be running on {}; \
                 wait until it is stale or pass --force",
                exec.last_updated.format("%Y-%m-%d %H:%M:%S"),
                exec.owner.as_deref().unwrap_or("?")
            )));
        }
        let mut conn = self.db.get().await?;
        let message = format!(
            "abandoned: marked FAILED by `recover` (owner {})",
            exec.owner.as_deref().unwrap_or("?")
        );
        mark_abandoned(
            &mut conn,
            execution_id,
            (!force).then_some(stale_before),
            &message,
            now,
        )
        .await?;
        drop(conn);
        Ok(Ok(self.execution(execution_id).await?.expect("exists")))
    }

    /// One execution by id.
    pub async fn execution(&self, id: i64) -> Result<Option<JobExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(
            dispatch!(&mut *conn, c => e::table.find(id).select(JobExecution::as_select()).first(c).await.optional())?,
        )
    }

    /// The newest executions with their instances, newest first; optionally of one job only.
    pub async fn history(
        &self,
        job_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(JobExecution, JobInstance)>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(match job_name {
            Some(name) => dispatch!(&mut *conn, c => e::table
                .inner_join(i::table)
                .filter(i::job_name.eq(name))
                .select((JobExecution::as_select(), JobInstance::as_select()))
                .order(e::id.desc())
                .limit(limit)
                .load(c)
                .await),
            None => dispatch!(&mut *conn, c => e::table
                .inner_join(i::table)
                .select((JobExecution::as_select(), JobInstance::as_select()))
                .order(e::id.desc())
                .limit(limit)
                .load(c)
                .await),
        }?)
    }

    /// Per job, the end time of its last COMPLETED execution (for the metrics).
    pub async fn last_success_per_job(&self) -> Result<Vec<(String, NaiveDateTime)>, DbError> {
        let mut conn = self.db.get().await?;
        let rows: Vec<(String, Option<NaiveDateTime>)> = dispatch!(&mut *conn, c => e::table
            .inner_join(i::table)
            .filter(e::status.eq(BatchStatus::Completed.as_str()))
            .group_by(i::job_name)
            .select((i::job_name, diesel::dsl::max(e::end_time)))
            .load(c)
            .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(job, end)| end.map(|t| (job, t)))
            .collect())
    }

    /// The step executions of one job execution, in the order they started.
    pub async fn step_executions(
        &self,
        job_execution_id: i64,
    ) -> Result<Vec<StepExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => s::table
            .filter(s::job_execution_id.eq(job_execution_id))
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
        let counters = serde_json::to_string(&progress.counters).unwrap_or_else(|_| "{}".into());
        let context = progress.context.to_string();
        dispatch!(&mut *conn, c => diesel::insert_into(s::table)
            .values((
                s::job_execution_id.eq(job_execution_id),
                s::step_name.eq(step_name),
                s::status.eq(BatchStatus::Started.as_str()),
                s::read_count.eq(progress.read_count),
                s::write_count.eq(progress.write_count),
                s::filter_count.eq(progress.filter_count),
                s::skip_count.eq(progress.skip_count),
                s::commit_count.eq(progress.commit_count),
                s::rollback_count.eq(progress.rollback_count),
                s::retry_count.eq(progress.retry_count),
                s::counters.eq(&counters),
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
        let counters = serde_json::to_string(&progress.counters).unwrap_or_else(|_| "{}".into());
        let context = progress.context.to_string();
        dispatch!(conn, c => diesel::update(s::table.find(step_execution_id))
            .set((
                s::read_count.eq(progress.read_count),
                s::write_count.eq(progress.write_count),
                s::filter_count.eq(progress.filter_count),
                s::skip_count.eq(progress.skip_count),
                s::commit_count.eq(progress.commit_count),
                s::rollback_count.eq(progress.rollback_count),
                s::retry_count.eq(progress.retry_count),
                s::counters.eq(&counters),
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

    /// Records failed items of a step (one row per item and execution; a repeat updates it).
    pub async fn record_item_failures(
        conn: &mut DbConnection,
        job_execution_id: i64,
        job_instance_id: i64,
        step_name: &str,
        failures: &[ItemFailureRecord],
        now: NaiveDateTime,
    ) -> Result<(), DbError> {
        for failure in failures {
            let error = truncate(&failure.error, 2000);
            let key = truncate(&failure.item_key, 250);
            let updated = dispatch!(&mut *conn, c => diesel::update(
                    f::table
                        .filter(f::job_execution_id.eq(job_execution_id))
                        .filter(f::step_name.eq(step_name))
                        .filter(f::item_key.eq(&key)),
                )
                .set((f::error.eq(&error), f::attempts.eq(failure.attempts)))
                .execute(c)
                .await)?;
            if updated == 0 {
                dispatch!(&mut *conn, c => diesel::insert_into(f::table)
                    .values((
                        f::job_execution_id.eq(job_execution_id),
                        f::job_instance_id.eq(job_instance_id),
                        f::step_name.eq(step_name),
                        f::item_key.eq(&key),
                        f::error.eq(&error),
                        f::attempts.eq(failure.attempts),
                        f::created_at.eq(now),
                    ))
                    .execute(c)
                    .await)?;
            }
        }
        Ok(())
    }

    /// Item failures of an instance's step not yet resolved by a later success, oldest first.
    pub async fn unresolved_failures(
        &self,
        job_instance_id: i64,
        step_name: &str,
    ) -> Result<Vec<ItemFailure>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => f::table
            .filter(f::job_instance_id.eq(job_instance_id))
            .filter(f::step_name.eq(step_name))
            .filter(f::resolved_at.is_null())
            .order(f::id.asc())
            .select(ItemFailure::as_select())
            .load(c)
            .await)?)
    }

    /// Marks an instance's failures of these items resolved (they succeeded in a later run).
    pub async fn resolve_failures(
        conn: &mut DbConnection,
        job_instance_id: i64,
        step_name: &str,
        item_keys: &[String],
        now: NaiveDateTime,
    ) -> Result<usize, DbError> {
        let mut total = 0;
        for keys in item_keys.chunks(1000) {
            total += dispatch!(&mut *conn, c => diesel::update(
                    f::table
                        .filter(f::job_instance_id.eq(job_instance_id))
                        .filter(f::step_name.eq(step_name))
                        .filter(f::resolved_at.is_null())
                        .filter(f::item_key.eq_any(keys)),
                )
                .set(f::resolved_at.eq(now))
                .execute(c)
                .await)?;
        }
        Ok(total)
    }

    /// Item failures recorded by one execution.
    pub async fn failures_of_execution(
        &self,
        job_execution_id: i64,
    ) -> Result<Vec<ItemFailure>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => f::table
            .filter(f::job_execution_id.eq(job_execution_id))
            .order(f::id.asc())
            .select(ItemFailure::as_select())
            .load(c)
            .await)?)
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

async fn find_instance(
    conn: &mut DbConnection,
    job_name: &str,
    job_key: &str,
) -> Result<Option<JobInstance>, DbError> {
    Ok(dispatch!(conn, c => i::table
        .filter(i::job_name.eq(job_name))
        .filter(i::job_key.eq(job_key))
        .select(JobInstance::as_select())
        .first(c)
        .await
        .optional())?)
}

/// Marks a live execution and its running steps FAILED with `message`, freeing the live slot.
/// With `stale_before`, only if its heartbeat is still older than that (so a launcher that just
/// sent a heartbeat, or another recoverer, wins the race). Returns whether this call changed it.
async fn mark_abandoned(
    conn: &mut DbConnection,
    execution_id: i64,
    stale_before: Option<NaiveDateTime>,
    message: &str,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let message = message.to_owned();
    conn.transaction(|c| {
        Box::pin(async move {
            // Without a staleness condition every heartbeat qualifies (a far-future bound that
            // every backend's DATETIME can hold).
            let far_future = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
                .and_then(|d| d.and_hms_opt(23, 59, 59))
                .expect("a valid date");
            let cutoff = stale_before.unwrap_or(far_future);
            let changed = dispatch!(&mut *c, c => diesel::update(e::table
                    .filter(e::id.eq(execution_id))
                    .filter(e::live_instance_id.is_not_null())
                    .filter(e::last_updated.lt(cutoff)))
                .set((
                    e::status.eq(BatchStatus::Failed.as_str()),
                    e::exit_code.eq(exit_codes::FAILED),
                    e::exit_message.eq(&message),
                    e::end_time.eq(now),
                    e::live_instance_id.eq(None::<i64>),
                ))
                .execute(c)
                .await)?;
            if changed > 0 {
                dispatch!(&mut *c, c => diesel::update(s::table
                        .filter(s::job_execution_id.eq(execution_id))
                        .filter(s::status.eq_any([BatchStatus::Started.as_str(), BatchStatus::Stopping.as_str()])))
                    .set((
                        s::status.eq(BatchStatus::Failed.as_str()),
                        s::exit_code.eq(exit_codes::FAILED),
                        s::exit_message.eq("abandoned with its job execution"),
                        s::end_time.eq(now),
                    ))
                    .execute(c)
                    .await)?;
            }
            Ok::<_, DbError>(changed > 0)
        })
    })
    .await
}
