//! The job execution aggregate: creating a live execution (the one-live-execution guard and the
//! takeover of a dead one), its heartbeat, its end, `recover`, and the history queries.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::rows::{JobExecution, JobInstance};
use super::schema::{batch_job_execution as e, batch_job_instance as i, batch_step_execution as s};
use super::status::{BatchStatus, exit_codes};
use super::{JobRepository, is_unique_violation, truncate};

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

/// What [`JobRepository::heartbeat`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The execution is live; go on.
    Live,
    /// An operator asked it to stop (status STOPPING): stop after the current chunk.
    StopRequested,
    /// It is no longer live (marked abandoned, maybe taken over): stop writing.
    Lost,
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

impl JobRepository {
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

    /// Deletes an execution that never started (status STARTING, or STOPPING if an operator
    /// asked it to stop before it started) and frees its live slot; used when the launch turns
    /// out to have nothing to do.
    pub async fn delete_unstarted_execution(&self, execution_id: i64) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        dispatch!(&mut *conn, c => diesel::delete(e::table
                .filter(e::id.eq(execution_id))
                .filter(e::start_time.is_null())
                .filter(e::status.eq_any([BatchStatus::Starting.as_str(), BatchStatus::Stopping.as_str()])))
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

    /// Marks the execution STARTED, unless a stop was requested meanwhile (it stays STOPPING,
    /// and the run's first heartbeat stops it).
    pub async fn mark_started(&self, execution_id: i64, now: NaiveDateTime) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        let n = dispatch!(&mut *conn, c => diesel::update(e::table
                .filter(e::id.eq(execution_id))
                .filter(e::status.eq(BatchStatus::Starting.as_str())))
            .set((
                e::status.eq(BatchStatus::Started.as_str()),
                e::start_time.eq(now),
                e::last_updated.eq(now),
            ))
            .execute(c)
            .await)?;
        if n == 0 {
            dispatch!(&mut *conn, c => diesel::update(e::table.find(execution_id))
                .set((e::start_time.eq(now), e::last_updated.eq(now)))
                .execute(c)
                .await)?;
        }
        Ok(())
    }

    /// Refreshes the heartbeat and says what the run must do: go on, stop after its current
    /// chunk (an operator asked for it: status STOPPING), or stop writing at once (the execution
    /// is no longer live: it was marked abandoned and maybe taken over).
    pub async fn heartbeat(
        &self,
        execution_id: i64,
        now: NaiveDateTime,
    ) -> Result<Heartbeat, DbError> {
        let mut conn = self.db.get().await?;
        let n = dispatch!(&mut *conn, c => diesel::update(
                e::table.filter(e::id.eq(execution_id)).filter(e::live_instance_id.is_not_null()),
            )
            .set(e::last_updated.eq(now))
            .execute(c)
            .await)?;
        if n == 0 {
            return Ok(Heartbeat::Lost);
        }
        let status: String = dispatch!(&mut *conn, c => e::table
            .find(execution_id)
            .select(e::status)
            .first(c)
            .await)?;
        Ok(if status == BatchStatus::Stopping.as_str() {
            Heartbeat::StopRequested
        } else {
            Heartbeat::Live
        })
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
            "abandoned: marked FAILED by an operator (abandon) (owner {})",
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
