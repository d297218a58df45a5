//! [`PartitionedStep`]: a step whose work a [`Partitioner`] splits into key ranges, each run as a
//! worker step execution (a *partition*) by any process that claims it from the database — this
//! one (up to `workers` at once), or others that joined the execution (`run … --join`).
//!
//! The manager (the step execution of the step itself) creates the partitions, works some of
//! them, waits for the rest (re-claiming those whose owner stopped renewing its lease), then sums
//! their counts into its own and ends COMPLETED, FAILED (a partition failed: after the running
//! ones finish) or STOPPED. A restart copies the partitions that did not complete, with their
//! ranges and checkpoints, into the new execution; the completed ones are not run again. With one
//! partition (the default) the step runs its one worker over every key in its own step
//! execution, exactly as an unpartitioned step.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use core_domain::{Database, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable};
use serde_json::json;

use super::range::KeyRange;
use super::worker::{ClaimSource, MANAGER_MAX_POLL, PartitionWorker, WorkerEnv, work};
use super::{ReadScope, Step, StepContext, StepOutcome};
use crate::repository::{BatchStatus, NewPartition, StepCounts};

/// The key of the manager's checkpoint that says its partitions exist.
const PARTITIONS_KEY: &str = "partitions";

/// Splits a step's work into key ranges (Spring Batch's `Partitioner`).
#[async_trait]
pub trait Partitioner: Send + Sync {
    /// At most `n` ranges that together cover every key the step reads, in key order.
    async fn partition(&self, n: u32) -> anyhow::Result<Vec<KeyRange>>;
}

/// The runtime's partitioner: ranges of a table's integer key column of about the same width,
/// from the column's `MIN` and `MAX` (one index lookup each), so that partitions hold about the
/// same number of rows when keys are dense (sequence ids). An empty table gives one partition.
#[derive(Debug, Clone)]
pub struct KeyRangePartitioner {
    db: Database,
    table: &'static str,
    key: &'static str,
}

impl KeyRangePartitioner {
    /// Ranges of `key` in `table` (names written in code, never input).
    pub fn new(db: Database, table: &'static str, key: &'static str) -> Self {
        KeyRangePartitioner { db, table, key }
    }
}

#[derive(QueryableByName)]
struct Bounds {
    #[diesel(sql_type = Nullable<BigInt>)]
    lo: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    hi: Option<i64>,
}

#[async_trait]
impl Partitioner for KeyRangePartitioner {
    async fn partition(&self, n: u32) -> anyhow::Result<Vec<KeyRange>> {
        let sql = format!(
            "SELECT MIN({k}) AS lo, MAX({k}) AS hi FROM {t}",
            k = self.key,
            t = self.table
        );
        let mut conn = self.db.get().await?;
        let bounds: Bounds = {
            use diesel_async::RunQueryDsl as _;
            dispatch!(&mut *conn, c => diesel::sql_query(sql.as_str())
                .get_result(c)
                .await)?
        };
        Ok(match (bounds.lo, bounds.hi) {
            (Some(lo), Some(hi)) => KeyRange::split(lo, hi, n),
            _ => vec![KeyRange::ALL],
        })
    }
}

/// Builds the worker step of one partition (its reader limited to the range).
pub type WorkerFactory = dyn Fn(KeyRange) -> anyhow::Result<Arc<dyn Step>> + Send + Sync;

/// A step split into partitions (see the module docs).
pub struct PartitionedStep {
    name: String,
    partitioner: Arc<dyn Partitioner>,
    factory: Box<WorkerFactory>,
}

impl std::fmt::Debug for PartitionedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedStep")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartitionedStep {
    /// The step `name`, split by `partitioner`; `worker(range)` builds the step that does one
    /// partition's work (named like this step; its reader limited to `range`, all keys for
    /// [`KeyRange::ALL`]).
    pub fn new(
        name: impl Into<String>,
        partitioner: impl Partitioner + 'static,
        worker: impl Fn(KeyRange) -> anyhow::Result<Arc<dyn Step>> + Send + Sync + 'static,
    ) -> Self {
        PartitionedStep {
            name: name.into(),
            partitioner: Arc::new(partitioner),
            factory: Box::new(worker),
        }
    }

    /// The worker step of one partition.
    pub fn worker(&self, range: KeyRange) -> anyhow::Result<Arc<dyn Step>> {
        (self.factory)(range)
    }

    /// The partitions to create for the manager `ctx`: the ones of the execution resumed that
    /// did not complete (with their checkpoints), or the partitioner's plan.
    async fn plan(&self, ctx: &StepContext, n: u32) -> anyhow::Result<Vec<NewPartition>> {
        let resumed = ctx.progress.context.get(PARTITIONS_KEY).is_some();
        if let (true, Some(previous)) = (resumed, ctx.resumed_from) {
            let rows = ctx.repo.partitions(previous).await?;
            let mut plan = Vec::new();
            for row in rows {
                if row.status == BatchStatus::Completed {
                    continue;
                }
                let index = row
                    .step_name
                    .rsplit_once(":partition")
                    .and_then(|(_, i)| i.parse().ok())
                    .unwrap_or(plan.len() as u32);
                plan.push(NewPartition {
                    index,
                    from: row.range_from.unwrap_or(i64::MIN),
                    to: row.range_to.unwrap_or(i64::MAX),
                    context: serde_json::from_str(&row.execution_context)
                        .unwrap_or(serde_json::Value::Null),
                });
            }
            tracing::info!(step = %self.name, previous.step_execution = previous, partitions = plan.len(), "resuming the partitions that did not complete");
            return Ok(plan);
        }
        let ranges = self.partitioner.partition(n).await?;
        tracing::info!(step = %self.name, partitions = ranges.len(), "partitioned");
        Ok(ranges
            .into_iter()
            .enumerate()
            .map(|(i, r)| NewPartition {
                index: i as u32,
                from: r.from,
                to: r.to,
                context: serde_json::Value::Null,
            })
            .collect())
    }
}

#[async_trait]
impl Step for PartitionedStep {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitioned(&self) -> Option<&PartitionedStep> {
        Some(self)
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        let n = ctx.partitioning.partitions(&self.name);
        let partitioned_before = ctx.progress.context.get(PARTITIONS_KEY).is_some();
        // A failed-items run reads a few keys: no partitions. A step resumed from an
        // unpartitioned checkpoint finishes unpartitioned (one reader's position cannot be split).
        let unpartitioned = matches!(ctx.scope, ReadScope::FailedItems(_))
            || (!partitioned_before && (n == 1 || !ctx.progress.context.is_null()));
        if unpartitioned {
            return self.worker(KeyRange::ALL)?.execute(ctx).await;
        }
        let manager = ctx.step_execution_id;
        let existing = ctx.repo.partitions(manager).await?;
        let total = if existing.is_empty() {
            let plan = self.plan(ctx, n).await?;
            ctx.repo
                .create_partitions(ctx.run.execution_id, &self.name, manager, &plan, ctx.now())
                .await?;
            plan.len()
        } else {
            // A step retry in the same execution: the failed partitions run again.
            let reopened = ctx.repo.reopen_partitions(manager, ctx.now()).await?;
            tracing::info!(step = %self.name, partitions = reopened, "retrying the partitions that failed");
            existing.len()
        };
        ctx.progress.context = json!({ PARTITIONS_KEY: total });
        ctx.save_progress().await?;

        let source = ManagerSource {
            step: self,
            manager,
        };
        let env = WorkerEnv::of(ctx);
        work(&env, &source).await;
        drop(env);

        let rows = ctx.repo.partitions(manager).await?;
        let mut counts = StepCounts {
            retry_count: ctx.progress.counts.retry_count,
            ..StepCounts::default()
        };
        for row in &rows {
            counts.add_all(&row.counts);
        }
        ctx.progress.counts = counts;
        let failed: Vec<_> = rows
            .iter()
            .filter(|r| r.status == BatchStatus::Failed)
            .collect();
        if let Some(first) = failed.first() {
            let message = format!(
                "{} of {} partitions failed; {}: {}",
                failed.len(),
                rows.len(),
                first.step_name,
                first.exit_message.as_deref().unwrap_or("?")
            );
            ctx.repo
                .close_partitions(
                    manager,
                    BatchStatus::Stopped,
                    "not run: another partition failed",
                    ctx.now(),
                )
                .await?;
            anyhow::bail!(message);
        }
        let unfinished = rows
            .iter()
            .filter(|r| r.status != BatchStatus::Completed)
            .count();
        if unfinished > 0 {
            // Stopped (or the run lost its heartbeat): no worker may go on with this execution's
            // partitions; a restart resumes them from their checkpoints.
            ctx.repo
                .close_partitions(
                    manager,
                    BatchStatus::Stopped,
                    "stopped with its step",
                    ctx.now(),
                )
                .await?;
            tracing::info!(step = %self.name, unfinished, "stopped with partitions left");
            return Ok(StepOutcome::Stopped);
        }
        Ok(StepOutcome::Completed)
    }
}

/// The manager's own workers: its partitions, until none is left running or to claim.
struct ManagerSource<'a> {
    step: &'a PartitionedStep,
    manager: i64,
}

#[async_trait]
impl ClaimSource for ManagerSource<'_> {
    async fn managers(&self, _env: &WorkerEnv) -> anyhow::Result<Vec<(i64, &dyn PartitionWorker)>> {
        Ok(vec![(self.manager, self.step as &dyn PartitionWorker)])
    }

    async fn finished(&self, env: &WorkerEnv) -> anyhow::Result<bool> {
        let s = env.repo.partition_statuses(self.manager).await?;
        Ok(s.running == 0 && (s.waiting == 0 || s.failed > 0))
    }

    fn max_poll(&self) -> Duration {
        MANAGER_MAX_POLL
    }
}

impl PartitionWorker for PartitionedStep {
    fn step_name(&self) -> &str {
        &self.name
    }

    fn worker(&self, range: KeyRange) -> anyhow::Result<Arc<dyn Step>> {
        PartitionedStep::worker(self, range)
    }
}
