//! Partitions of a partitioned step (Spring Batch's worker step executions): rows of
//! `batch_step_execution` whose `partition_of` is their manager step execution, claimed by worker
//! processes with `SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL, MySQL 8, MariaDB 10.6+) and held
//! under a lease (`last_updated`, renewed by the owner's heartbeat and by every checkpoint).
//!
//! Every write a worker makes to a partition it holds is *fenced*: it names the owner and
//! requires the partition still STARTED, so a worker whose lease expired (and whose partition was
//! re-claimed) or whose step was closed cannot commit a checkpoint any more — its chunk
//! transaction rolls back.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::rows::StepExecution;
use super::schema::batch_step_execution as s;
use super::status::{BatchStatus, exit_codes};
use super::step_execution::StepProgress;
use super::{JobRepository, truncate};

/// A partition to create: its index, key range and starting checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartition {
    /// Its index in the plan (the row is named `<step>:partition<index>`).
    pub index: u32,
    /// First key (inclusive).
    pub from: i64,
    /// Last key (inclusive).
    pub to: i64,
    /// The checkpoint to start from (`null`: the start of the range).
    pub context: serde_json::Value,
}

/// The worker lost a partition it held: its lease expired and another worker claimed it, or its
/// step ended (stopped, failed, abandoned). Whatever it was writing is rolled back.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition} is no longer held by {owner} (its lease expired or its step ended)")]
pub struct LeaseLost {
    /// The partition's step execution id.
    pub partition: i64,
    /// The worker that lost it.
    pub owner: String,
}

/// How many partitions of a step are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStatuses {
    /// Not claimed (STARTING): new, or released by a stopped worker.
    pub waiting: i64,
    /// Claimed and running (STARTED), whether or not their owner still renews the lease.
    pub running: i64,
    /// COMPLETED.
    pub completed: i64,
    /// FAILED.
    pub failed: i64,
    /// Any other status (STOPPED: closed with their step).
    pub other: i64,
}

impl PartitionStatuses {
    /// All partitions.
    pub fn total(&self) -> i64 {
        self.waiting + self.running + self.completed + self.failed + self.other
    }
}

/// The row name of partition `index` of `step`.
pub fn partition_name(step: &str, index: u32) -> String {
    format!("{step}:partition{index}")
}

impl JobRepository {
    /// The partitions of a manager step execution, in index order.
    pub async fn partitions(&self, manager_id: i64) -> Result<Vec<StepExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => s::table
            .filter(s::partition_of.eq(manager_id))
            .order(s::id.asc())
            .select(StepExecution::as_select())
            .load(c)
            .await)?)
    }

    /// How many partitions of a manager step execution are in each status (one indexed
    /// aggregate: what idle workers poll, however many partitions there are).
    pub async fn partition_statuses(&self, manager_id: i64) -> Result<PartitionStatuses, DbError> {
        let mut conn = self.db.get().await?;
        let rows: Vec<(String, i64)> = dispatch!(&mut *conn, c => s::table
            .filter(s::partition_of.eq(manager_id))
            .group_by(s::status)
            .select((s::status, diesel::dsl::count_star()))
            .load(c)
            .await)?;
        let mut out = PartitionStatuses::default();
        for (status, n) in rows {
            match status.parse().unwrap_or(BatchStatus::Unknown) {
                BatchStatus::Starting => out.waiting += n,
                BatchStatus::Started => out.running += n,
                BatchStatus::Completed => out.completed += n,
                BatchStatus::Failed => out.failed += n,
                _ => out.other += n,
            }
        }
        Ok(out)
    }

    /// Creates the partitions of a manager step execution, STARTING (unclaimed), in one
    /// transaction.
    pub async fn create_partitions(
        &self,
        job_execution_id: i64,
        step_name: &str,
        manager_id: i64,
        partitions: &[NewPartition],
        now: NaiveDateTime,
    ) -> Result<(), DbError> {
        let mut conn = self.db.get().await?;
        let rows: Vec<_> = partitions
            .iter()
            .map(|p| {
                (
                    partition_name(step_name, p.index),
                    p.from,
                    p.to,
                    p.context.to_string(),
                )
            })
            .collect();
        conn.transaction(|c| {
            Box::pin(async move {
                for (name, from, to, context) in &rows {
                    dispatch!(&mut *c, c => diesel::insert_into(s::table)
                        .values((
                            s::job_execution_id.eq(job_execution_id),
                            s::step_name.eq(name),
                            s::status.eq(BatchStatus::Starting.as_str()),
                            super::StepCounts::default(),
                            s::execution_context.eq(context),
                            s::exit_code.eq(exit_codes::EXECUTING),
                            s::start_time.eq(now),
                            s::last_updated.eq(now),
                            s::partition_of.eq(manager_id),
                            s::range_from.eq(from),
                            s::range_to.eq(to),
                            s::claim_count.eq(0),
                        ))
                        .execute(c)
                        .await)?;
                }
                Ok::<_, DbError>(())
            })
        })
        .await
    }

    /// A step retry: the partitions of `manager_id` that failed or stopped are claimable again,
    /// from their checkpoints. Returns how many.
    pub async fn reopen_partitions(
        &self,
        manager_id: i64,
        now: NaiveDateTime,
    ) -> Result<usize, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => diesel::update(s::table
                .filter(s::partition_of.eq(manager_id))
                .filter(s::status.eq_any([BatchStatus::Failed.as_str(), BatchStatus::Stopped.as_str()])))
            .set((
                s::status.eq(BatchStatus::Starting.as_str()),
                s::exit_code.eq(exit_codes::EXECUTING),
                s::exit_message.eq(None::<String>),
                s::owner.eq(None::<String>),
                s::end_time.eq(None::<NaiveDateTime>),
                s::last_updated.eq(now),
            ))
            .execute(c)
            .await)?)
    }

    /// Claims one partition of the managers `manager_ids` for `owner`: an unclaimed one, or one
    /// whose lease is older than `expired_before` (its owner died). Managers with a FAILED
    /// partition hand out no more. `None`: nothing to claim now.
    ///
    /// PostgreSQL and MySQL/MariaDB pick the candidate with `FOR UPDATE SKIP LOCKED`, so
    /// concurrent claimers never wait on each other's candidate; SQLite (one process) picks
    /// without a lock. Either way the claim is a conditional UPDATE (same status, same claim
    /// count, lease still expired), so two claimers can never both win one partition.
    pub async fn claim_partition(
        &self,
        manager_ids: &[i64],
        owner: &str,
        now: NaiveDateTime,
        expired_before: NaiveDateTime,
    ) -> Result<Option<StepExecution>, DbError> {
        if manager_ids.is_empty() {
            return Ok(None);
        }
        let mut conn = self.db.get().await?;
        let conn: &mut DbConnection = &mut conn;
        let failed: Vec<i64> = dispatch!(&mut *conn, c => s::table
            .filter(s::partition_of.eq_any(manager_ids))
            .filter(s::status.eq(BatchStatus::Failed.as_str()))
            .select(s::partition_of.assume_not_null())
            .distinct()
            .load(c)
            .await)?;
        let open: Vec<i64> = manager_ids
            .iter()
            .copied()
            .filter(|m| !failed.contains(m))
            .collect();
        if open.is_empty() {
            return Ok(None);
        }
        // A few rounds: on SQLite another local worker may win the candidate in between.
        for _ in 0..8 {
            let locking = conn.backend() != core_domain::Backend::Sqlite;
            if locking {
                conn.begin().await?;
            }
            let picked = pick_candidate(conn, &open, expired_before).await;
            let candidate = match picked {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if locking {
                        conn.commit().await?;
                    }
                    return Ok(None);
                }
                Err(e) => {
                    if locking {
                        let _ = conn.rollback().await;
                    }
                    return Err(e.into());
                }
            };
            let (id, status, claims) = candidate;
            let updated = dispatch!(&mut *conn, c => diesel::update(s::table
                    .filter(s::id.eq(id))
                    .filter(s::status.eq(&status))
                    .filter(s::claim_count.eq(claims))
                    .filter(s::status.eq(BatchStatus::Starting.as_str())
                        .or(s::last_updated.lt(expired_before))))
                .set((
                    s::status.eq(BatchStatus::Started.as_str()),
                    s::owner.eq(owner),
                    s::claim_count.eq(claims + 1),
                    s::last_updated.eq(now),
                ))
                .execute(c)
                .await);
            let updated = match updated {
                Ok(n) => n,
                Err(e) => {
                    if locking {
                        let _ = conn.rollback().await;
                    }
                    return Err(e.into());
                }
            };
            if locking {
                conn.commit().await?;
            }
            if updated == 1 {
                let row = dispatch!(&mut *conn, c => s::table
                    .find(id)
                    .select(StepExecution::as_select())
                    .first(c)
                    .await)?;
                return Ok(Some(row));
            }
        }
        Ok(None)
    }

    /// Renews the lease of a partition `owner` holds. False: it is no longer held (re-claimed
    /// after the lease expired, or its step ended): the worker must stop working on it.
    pub async fn renew_partition(
        &self,
        partition_id: i64,
        owner: &str,
        now: NaiveDateTime,
    ) -> Result<bool, DbError> {
        let mut conn = self.db.get().await?;
        let n = dispatch!(&mut *conn, c => diesel::update(held(partition_id, owner))
            .set(s::last_updated.eq(now))
            .execute(c)
            .await)?;
        Ok(n == 1)
    }

    /// Saves a held partition's counters and checkpoint on `conn` (inside the chunk's transaction
    /// when the writer is the database), renewing its lease. Fails with [`LeaseLost`] when
    /// `owner` no longer holds it, so the chunk rolls back.
    pub async fn save_partition_progress(
        conn: &mut DbConnection,
        partition_id: i64,
        owner: &str,
        progress: &StepProgress,
        now: NaiveDateTime,
    ) -> anyhow::Result<()> {
        let context = progress.context.to_string();
        let n = dispatch!(conn, c => diesel::update(held(partition_id, owner))
            .set((
                progress.counts.clone(),
                s::execution_context.eq(&context),
                s::last_updated.eq(now),
            ))
            .execute(c)
            .await)
        .map_err(DbError::from)?;
        if n != 1 {
            return Err(LeaseLost {
                partition: partition_id,
                owner: owner.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Ends a partition `owner` holds: COMPLETED or FAILED with its final progress, or — for
    /// STOPPED (its worker was asked to stop) — released: STARTING again, without owner, so any
    /// worker resumes it from its checkpoint. False: it was no longer held (nothing written).
    #[allow(clippy::too_many_arguments)]
    pub async fn end_partition(
        &self,
        partition_id: i64,
        owner: &str,
        status: BatchStatus,
        exit_message: Option<&str>,
        progress: &StepProgress,
        now: NaiveDateTime,
    ) -> Result<bool, DbError> {
        let mut conn = self.db.get().await?;
        let context = progress.context.to_string();
        let message = exit_message.map(|m| truncate(m, 4000));
        let (status, code, end) = match status {
            BatchStatus::Completed => (status, exit_codes::COMPLETED, Some(now)),
            BatchStatus::Stopped => (BatchStatus::Starting, exit_codes::EXECUTING, None),
            _ => (BatchStatus::Failed, exit_codes::FAILED, Some(now)),
        };
        let released = status == BatchStatus::Starting;
        let n = dispatch!(&mut *conn, c => diesel::update(held(partition_id, owner))
            .set((
                progress.counts.clone(),
                s::execution_context.eq(&context),
                s::status.eq(status.as_str()),
                s::exit_code.eq(code),
                s::exit_message.eq(message.as_deref()),
                s::end_time.eq(end),
                s::last_updated.eq(now),
                s::owner.eq((!released).then_some(owner)),
            ))
            .execute(c)
            .await)?;
        Ok(n == 1)
    }

    /// Ends the partitions of `manager_id` that have not ended (its step stopped or failed):
    /// `status` (STOPPED or FAILED), without owner. A worker still holding one loses it: its next
    /// checkpoint fails with [`LeaseLost`]. Returns how many.
    pub async fn close_partitions(
        &self,
        manager_id: i64,
        status: BatchStatus,
        message: &str,
        now: NaiveDateTime,
    ) -> Result<usize, DbError> {
        let mut conn = self.db.get().await?;
        let code = if status == BatchStatus::Stopped {
            exit_codes::STOPPED
        } else {
            exit_codes::FAILED
        };
        Ok(dispatch!(&mut *conn, c => diesel::update(s::table
                .filter(s::partition_of.eq(manager_id))
                .filter(s::status.eq_any([BatchStatus::Starting.as_str(), BatchStatus::Started.as_str()])))
            .set((
                s::status.eq(status.as_str()),
                s::exit_code.eq(code),
                s::exit_message.eq(message),
                s::owner.eq(None::<String>),
                s::end_time.eq(now),
                s::last_updated.eq(now),
            ))
            .execute(c)
            .await)?)
    }

    /// The running step executions of a job execution that are partition managers among
    /// `step_names` (what a joining worker may claim from), oldest first.
    pub async fn running_managers(
        &self,
        job_execution_id: i64,
        step_names: &[&str],
    ) -> Result<Vec<StepExecution>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => s::table
            .filter(s::job_execution_id.eq(job_execution_id))
            .filter(s::partition_of.is_null())
            .filter(s::step_name.eq_any(step_names))
            .order(s::id.asc())
            .select(StepExecution::as_select())
            .load(c)
            .await)?)
    }
}

/// The rows of partition `id` while `owner` holds it.
type Held = diesel::dsl::Filter<
    diesel::dsl::Filter<
        diesel::dsl::Filter<s::table, diesel::dsl::Eq<s::id, i64>>,
        diesel::dsl::Eq<s::owner, String>,
    >,
    diesel::dsl::Eq<s::status, &'static str>,
>;

/// The partition `id`, if `owner` still holds it.
fn held(id: i64, owner: &str) -> Held {
    s::table
        .filter(s::id.eq(id))
        .filter(s::owner.eq(owner.to_owned()))
        .filter(s::status.eq(BatchStatus::Started.as_str()))
}

/// The first claimable partition of `managers`: (id, status, claim count).
async fn pick_candidate(
    conn: &mut DbConnection,
    managers: &[i64],
    expired_before: NaiveDateTime,
) -> QueryResult<Option<(i64, String, i32)>> {
    macro_rules! candidates {
        () => {
            s::table
                .filter(s::partition_of.eq_any(managers))
                .filter(
                    s::status.eq(BatchStatus::Starting.as_str()).or(s::status
                        .eq(BatchStatus::Started.as_str())
                        .and(s::last_updated.lt(expired_before))),
                )
                .order(s::id.asc())
                .select((s::id, s::status, s::claim_count))
        };
    }
    match conn {
        DbConnection::Postgres(c) => candidates!()
            .for_update()
            .skip_locked()
            .first(c)
            .await
            .optional(),
        DbConnection::Mysql(c) => candidates!()
            .for_update()
            .skip_locked()
            .first(c)
            .await
            .optional(),
        DbConnection::Sqlite(c) => candidates!().first(c).await.optional(),
    }
}
