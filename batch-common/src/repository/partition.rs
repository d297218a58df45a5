//! Partitions of a partitioned step (Spring Batch's worker step executions): rows of
//! `batch_step_execution` whose `partition_of` is their manager step execution, claimed by worker
//! processes with `SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL, MySQL 8, MariaDB 10.6+) and held
//! under a lease (`last_updated`, renewed by the owner's heartbeat and by every checkpoint).
//!
//! Every write a worker makes to a partition it holds is *fenced* by its [`Claim`]: it names the
//! owner and the claim count and requires the partition still STARTED, so a worker whose lease
//! expired (and whose partition was re-claimed, even by another slot of its own process) or whose
//! step was closed cannot commit a checkpoint any more — its chunk transaction rolls back.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
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

/// One claim of a partition: the partition, the worker holding it and which claim it is (the
/// partition's `claim_count` after it). Every write a worker makes to the partition names its
/// claim, so a later claim — by another process, or another slot of the same one — fences out
/// the earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The partition's step execution id.
    pub partition: i64,
    /// The worker (`host:pid:tag`).
    pub owner: String,
    /// The partition's claim count when this claim took it.
    pub claim: i32,
}

impl Claim {
    /// The claim a claimed row describes (what [`JobRepository::claim_partition`] returned).
    pub fn of(row: &StepExecution) -> Self {
        Claim {
            partition: row.id,
            owner: row.owner.clone().unwrap_or_default(),
            claim: row.claim_count,
        }
    }
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

    /// Claims one partition of the managers `manager_ids` for `owner`: first one whose lease is
    /// older than `expired_before` (its owner died), else an unclaimed one, in id order.
    /// Managers with a FAILED partition hand out no more. `None`: nothing to claim now.
    ///
    /// Each try walks `idx_batch_step_execution_partition` (`partition_of, status, id`) from the
    /// first candidate, so it costs the same with 10 partitions or 100,000. PostgreSQL claims in
    /// one statement (`UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING id`), so no
    /// lock outlives it; MySQL/MariaDB in a short READ COMMITTED transaction (`SELECT … FOR
    /// UPDATE SKIP LOCKED`, then the UPDATE; REPEATABLE READ would lock every row the scan
    /// passes); SQLite (one process) with a conditional UPDATE (same status, same claim count).
    /// Two claimers never both win one partition.
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
        for &manager in manager_ids.iter().filter(|m| !failed.contains(m)) {
            for expired in [true, false] {
                let slot = Candidate {
                    manager,
                    expired: expired.then_some(expired_before),
                };
                if let Some(id) = claim_one(conn, &slot, owner, now).await? {
                    let row = dispatch!(&mut *conn, c => s::table
                        .find(id)
                        .select(StepExecution::as_select())
                        .first(c)
                        .await)?;
                    return Ok(Some(row));
                }
            }
        }
        Ok(None)
    }

    /// Renews the lease of a partition `claim` holds. False: it is no longer held (re-claimed
    /// after the lease expired, or its step ended): the worker must stop working on it.
    pub async fn renew_partition(
        &self,
        claim: &Claim,
        now: NaiveDateTime,
    ) -> Result<bool, DbError> {
        let mut conn = self.db.get().await?;
        let n = dispatch!(&mut *conn, c => diesel::update(held(claim))
            .set(s::last_updated.eq(now))
            .execute(c)
            .await)?;
        Ok(n == 1)
    }

    /// Saves a held partition's counters and checkpoint on `conn` (inside the chunk's transaction
    /// when the writer is the database), renewing its lease. Fails with [`LeaseLost`] when
    /// `claim` no longer holds it, so the chunk rolls back.
    pub async fn save_partition_progress(
        conn: &mut DbConnection,
        claim: &Claim,
        progress: &StepProgress,
        now: NaiveDateTime,
    ) -> anyhow::Result<()> {
        let context = progress.context.to_string();
        let n = dispatch!(conn, c => diesel::update(held(claim))
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
                partition: claim.partition,
                owner: claim.owner.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Ends a partition `claim` holds: COMPLETED or FAILED with its final progress, or — for
    /// STOPPED (its worker was asked to stop) — released: STARTING again, without owner, so any
    /// worker resumes it from its checkpoint. False: it was no longer held (nothing written).
    pub async fn end_partition(
        &self,
        claim: &Claim,
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
        let owner = claim.owner.as_str();
        let n = dispatch!(&mut *conn, c => diesel::update(held(claim))
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

/// The row of a partition while a claim holds it.
type Held = diesel::dsl::Filter<
    diesel::dsl::Filter<
        diesel::dsl::Filter<
            diesel::dsl::Filter<s::table, diesel::dsl::Eq<s::id, i64>>,
            diesel::dsl::Eq<s::owner, String>,
        >,
        diesel::dsl::Eq<s::claim_count, i32>,
    >,
    diesel::dsl::Eq<s::status, &'static str>,
>;

/// The claimed partition, if `claim` still holds it: same owner, same claim, still running.
fn held(claim: &Claim) -> Held {
    s::table
        .filter(s::id.eq(claim.partition))
        .filter(s::owner.eq(claim.owner.clone()))
        .filter(s::claim_count.eq(claim.claim))
        .filter(s::status.eq(BatchStatus::Started.as_str()))
}

/// Which partitions one claim looks at: a manager's unclaimed ones, or (with a bound) its
/// claimed ones whose lease is older than the bound.
struct Candidate {
    manager: i64,
    expired: Option<NaiveDateTime>,
}

impl Candidate {
    /// The candidates' condition as SQL (binds: manager, then the bound when expired); status
    /// values as literals.
    fn condition(&self) -> &'static str {
        if self.expired.is_some() {
            "partition_of = ? AND status = 'STARTED' AND last_updated < ?"
        } else {
            "partition_of = ? AND status = 'STARTING'"
        }
    }
}

#[derive(QueryableByName)]
struct ClaimedId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// One claim attempt among `slot`'s candidates; the id claimed, if any.
async fn claim_one(
    conn: &mut DbConnection,
    slot: &Candidate,
    owner: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<i64>> {
    let set = "SET status = 'STARTED', owner = ?, claim_count = claim_count + 1, last_updated = ?";
    match conn {
        DbConnection::Postgres(c) => {
            let sql = placeholders_pg(&format!(
                "UPDATE batch_step_execution {set} WHERE id = (SELECT id FROM batch_step_execution \
                 WHERE {cond} ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) AND {cond2} RETURNING id",
                cond = slot.condition(),
                cond2 = slot.condition(),
            ));
            let q = diesel::sql_query(sql)
                .bind::<Text, _>(owner)
                .bind::<Timestamp, _>(now)
                .bind::<BigInt, _>(slot.manager);
            let claimed: Option<ClaimedId> = match slot.expired {
                Some(bound) => q
                    .bind::<Timestamp, _>(bound)
                    .bind::<BigInt, _>(slot.manager)
                    .bind::<Timestamp, _>(bound)
                    .get_result(c)
                    .await
                    .optional()?,
                None => q
                    .bind::<BigInt, _>(slot.manager)
                    .get_result(c)
                    .await
                    .optional()?,
            };
            Ok(claimed.map(|c| c.id))
        }
        DbConnection::Mysql(c) => {
            use diesel_async::{AnsiTransactionManager, TransactionManager};
            // For the next transaction only: lock the row read, not every row the scan passes.
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(c)
                .await?;
            AnsiTransactionManager::begin_transaction(c).await?;
            let attempt = async {
                let pick = s::table
                    .filter(s::partition_of.eq(slot.manager))
                    .order(s::id.asc())
                    .select(s::id)
                    .for_update()
                    .skip_locked();
                let id: Option<i64> = match slot.expired {
                    Some(bound) => pick
                        .filter(s::status.eq(BatchStatus::Started.as_str()))
                        .filter(s::last_updated.lt(bound))
                        .first(c)
                        .await
                        .optional()?,
                    None => pick
                        .filter(s::status.eq(BatchStatus::Starting.as_str()))
                        .first(c)
                        .await
                        .optional()?,
                };
                let Some(id) = id else { return Ok(None) };
                diesel::update(s::table.find(id))
                    .set((
                        s::status.eq(BatchStatus::Started.as_str()),
                        s::owner.eq(owner),
                        s::claim_count.eq(s::claim_count + 1),
                        s::last_updated.eq(now),
                    ))
                    .execute(c)
                    .await?;
                QueryResult::Ok(Some(id))
            }
            .await;
            match attempt {
                Ok(id) => {
                    AnsiTransactionManager::commit_transaction(c).await?;
                    Ok(id)
                }
                Err(e) => {
                    let _ = AnsiTransactionManager::rollback_transaction(c).await;
                    Err(e)
                }
            }
        }
        DbConnection::Sqlite(c) => {
            // One process: another local worker may take the candidate between the read and
            // the conditional UPDATE; then look again.
            for _ in 0..8 {
                let pick = s::table
                    .filter(s::partition_of.eq(slot.manager))
                    .order(s::id.asc())
                    .select((s::id, s::claim_count));
                let found: Option<(i64, i32)> = match slot.expired {
                    Some(bound) => pick
                        .filter(s::status.eq(BatchStatus::Started.as_str()))
                        .filter(s::last_updated.lt(bound))
                        .first(c)
                        .await
                        .optional()?,
                    None => pick
                        .filter(s::status.eq(BatchStatus::Starting.as_str()))
                        .first(c)
                        .await
                        .optional()?,
                };
                let Some((id, claims)) = found else {
                    return Ok(None);
                };
                let status = if slot.expired.is_some() {
                    BatchStatus::Started
                } else {
                    BatchStatus::Starting
                };
                let n = diesel::update(
                    s::table
                        .find(id)
                        .filter(s::status.eq(status.as_str()))
                        .filter(s::claim_count.eq(claims)),
                )
                .set((
                    s::status.eq(BatchStatus::Started.as_str()),
                    s::owner.eq(owner),
                    s::claim_count.eq(claims + 1),
                    s::last_updated.eq(now),
                ))
                .execute(c)
                .await?;
                if n == 1 {
                    return Ok(Some(id));
                }
            }
            Ok(None)
        }
    }
}

/// `?` placeholders numbered `$1, $2, …` for PostgreSQL.
fn placeholders_pg(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}
