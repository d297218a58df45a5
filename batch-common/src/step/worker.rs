//! Working partitions: up to `workers` slots, each claiming a partition, running its worker step
//! from the partition's checkpoint under a lease, and ending it — until the [`ClaimSource`] says
//! there is nothing more to wait for, or the run is stopped. Shared by a partitioned step's
//! manager and by processes that joined its execution.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::range::{KeyRange, Partitioning};
use super::{ChunkSettings, ReadScope, Step, StepContext, StepOutcome};
use crate::clock::{Clock, ClockExt};
use crate::listener::{JobListener, JobRunInfo, Listeners, PartitionEvent};
use crate::repository::{
    BatchStatus, Claim, JobRepository, LeaseLost, StepExecution, StepProgress,
};
use crate::result::StepResult;

/// How long a slot with nothing to claim first waits before it looks again; each empty look
/// doubles the wait, up to [`MAX_POLL`], and a claim resets it. So the step's end (and a lost
/// worker's expired lease) is noticed within 100 ms while work moves fast, and an idle slot costs
/// the database a few indexed queries per second at most.
const POLL: Duration = Duration::from_millis(100);

/// The longest wait of an idle joined worker's slot (a manager's: [`MANAGER_MAX_POLL`]).
const MAX_POLL: Duration = Duration::from_millis(1600);

/// The longest wait of an idle slot of the manager, which ends the step once the last
/// partition ends.
pub(crate) const MANAGER_MAX_POLL: Duration = Duration::from_millis(400);

/// What a worker needs of a partitioned step: its name and the worker step of a range.
pub(crate) trait PartitionWorker: Send + Sync {
    /// The step's name (item failures and listeners use it).
    fn step_name(&self) -> &str;
    /// The step that works one partition, its reader limited to `range`.
    fn worker(&self, range: KeyRange) -> anyhow::Result<Arc<dyn Step>>;
}

/// Where a worker slot finds partitions, and when it is done.
#[async_trait]
pub(crate) trait ClaimSource: Send + Sync {
    /// The running manager step executions to claim from, with their steps.
    async fn managers(&self, env: &WorkerEnv) -> anyhow::Result<Vec<(i64, &dyn PartitionWorker)>>;
    /// Whether there is nothing more to wait for (asked when nothing could be claimed).
    async fn finished(&self, env: &WorkerEnv) -> anyhow::Result<bool>;

    /// The longest wait of an idle slot between two looks.
    fn max_poll(&self) -> Duration {
        MAX_POLL
    }
}

/// What the workers of one process share: the run, the leases they hold, what they did.
pub(crate) struct WorkerEnv {
    pub(crate) repo: JobRepository,
    pub(crate) run: JobRunInfo,
    settings: ChunkSettings,
    pub(crate) clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    listeners: Listeners,
    partitioning: Partitioning,
    leases: Arc<Mutex<HashMap<i64, (Claim, CancellationToken)>>>,
    renewal: tokio::task::JoinHandle<()>,
    progress: Arc<Mutex<BTreeMap<i64, StepProgress>>>,
    /// The partitions this process ended, in order.
    pub(crate) done: Mutex<Vec<StepResult>>,
}

impl Drop for WorkerEnv {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl WorkerEnv {
    /// The environment of a manager's own workers.
    pub(crate) fn of(ctx: &StepContext) -> Self {
        WorkerEnv::new(
            ctx.repo.clone(),
            ctx.run.clone(),
            ctx.settings.clone(),
            ctx.clock.clone(),
            ctx.cancel.clone(),
            ctx.listeners.clone(),
            ctx.partitioning.clone(),
        )
    }

    /// Workers of `run` under `partitioning`, stopped by `cancel`.
    pub(crate) fn new(
        repo: JobRepository,
        run: JobRunInfo,
        settings: ChunkSettings,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
        listeners: Listeners,
        partitioning: Partitioning,
    ) -> Self {
        let leases: Arc<Mutex<HashMap<i64, (Claim, CancellationToken)>>> = Arc::default();
        let renewal = tokio::spawn(renew(
            repo.clone(),
            clock.clone(),
            partitioning.renew_every,
            leases.clone(),
        ));
        WorkerEnv {
            repo,
            run,
            settings,
            clock,
            cancel,
            listeners,
            partitioning,
            leases,
            renewal,
            progress: Arc::default(),
            done: Mutex::new(Vec::new()),
        }
    }

    /// The run was asked to stop.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tells the run's listeners what happened to a partition of `step`.
    async fn event(&self, step: &dyn PartitionWorker, event: PartitionEvent) {
        for l in self.listeners.iter() {
            l.on_partition(&self.run, step.step_name(), event).await;
        }
    }

    /// Waits after the `idle`-th empty look in a row (see [`POLL`]), at most `max`, or until
    /// the run is stopped.
    pub(crate) async fn pause(&self, idle: u32, max: Duration) {
        let wait = POLL.saturating_mul(1 << idle.min(8)).min(max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.cancel.cancelled() => {}
        }
    }
}

/// Renews the leases held by this process every `every`; a lease that cannot be renewed (the
/// partition was re-claimed or its step ended) cancels that partition's work.
async fn renew(
    repo: JobRepository,
    clock: Arc<dyn Clock>,
    every: Duration,
    leases: Arc<Mutex<HashMap<i64, (Claim, CancellationToken)>>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let held: Vec<(i64, Claim, CancellationToken)> = leases
            .lock()
            .expect("leases")
            .iter()
            .map(|(id, (c, t))| (*id, c.clone(), t.clone()))
            .collect();
        for (id, claim, token) in held {
            match repo.renew_partition(&claim, clock.now_naive_utc()).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        partition.id = id,
                        "lost the lease of a partition (re-claimed or its step ended); stopping work on it"
                    );
                    token.cancel();
                }
                Err(e) => {
                    tracing::warn!(partition.id = id, error = %e, "could not renew a partition lease")
                }
            }
        }
    }
}

/// Runs up to `workers` slots until `source` is finished or the run stops.
pub(crate) async fn work(env: &WorkerEnv, source: &dyn ClaimSource) {
    let slots = (0..env.partitioning.workers.max(1)).map(|_| slot(env, source));
    futures_util::future::join_all(slots).await;
}

async fn slot(env: &WorkerEnv, source: &dyn ClaimSource) {
    let mut idle = 0u32;
    while !env.cancelled() {
        let claimed = async {
            let managers = source.managers(env).await?;
            let ids: Vec<i64> = managers.iter().map(|(id, _)| *id).collect();
            let now = env.clock.now_naive_utc();
            let expired = now
                - chrono::Duration::from_std(env.partitioning.lease)
                    .unwrap_or(chrono::Duration::MAX);
            let row = env
                .repo
                .claim_partition(&ids, &env.partitioning.owner, now, expired)
                .await?;
            anyhow::Ok(row.and_then(|row| {
                let step = managers
                    .iter()
                    .find(|(id, _)| Some(*id) == row.partition_of)
                    .map(|(_, s)| *s)?;
                Some((row, step))
            }))
        }
        .await;
        match claimed {
            Ok(Some((row, step))) => {
                idle = 0;
                run_partition(env, step, row).await;
            }
            Ok(None) => match source.finished(env).await {
                Ok(true) => return,
                Ok(false) => {
                    env.pause(idle, source.max_poll()).await;
                    idle += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not read the partitions; trying again");
                    env.pause(idle, source.max_poll()).await;
                    idle += 1;
                }
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not claim a partition; trying again");
                env.pause(idle, source.max_poll()).await;
                idle += 1;
            }
        }
    }
}

/// Runs one claimed partition's worker step and ends the partition.
async fn run_partition(env: &WorkerEnv, step: &dyn PartitionWorker, row: StepExecution) {
    let range = KeyRange {
        from: row.range_from.unwrap_or(i64::MIN),
        to: row.range_to.unwrap_or(i64::MAX),
    };
    let span = tracing::info_span!("partition", partition = %row.step_name, range = %range);
    async {
        let lease = env.cancel.child_token();
        let claim = Claim::of(&row);
        env.leases
            .lock()
            .expect("leases")
            .insert(row.id, (claim.clone(), lease.clone()));
        if row.claim_count > 1 {
            tracing::warn!(claims = row.claim_count, "re-claimed: resuming from its checkpoint");
            env.event(step, PartitionEvent::Reclaimed).await;
        } else {
            tracing::info!("claimed");
            env.event(step, PartitionEvent::Claimed).await;
        }
        let started = std::time::Instant::now();
        let mut ctx = StepContext {
            repo: env.repo.clone(),
            run: env.run.clone(),
            step_execution_id: row.id,
            step_name: step.step_name().to_owned(),
            progress: StepProgress::from_row(&row),
            scope: ReadScope::All,
            settings: env.settings.clone(),
            clock: env.clock.clone(),
            cancel: lease.clone(),
            listeners: Arc::new(vec![Arc::new(PartitionProgress {
                partition: row.id,
                shared: env.progress.clone(),
                inner: env.listeners.clone(),
            }) as Arc<dyn JobListener>]),
            resumed_from: None,
            fence: Some(claim.clone()),
            partitioning: Partitioning {
                per_step: BTreeMap::new(),
                all_steps: Some(1),
                ..env.partitioning.clone()
            },
        };
        let outcome = match step.worker(range) {
            Ok(worker) => worker.execute(&mut ctx).await,
            Err(e) => Err(e),
        };
        env.leases.lock().expect("leases").remove(&row.id);
        let lost = lease.is_cancelled() && !env.cancelled();
        let (status, message) = match outcome {
            Ok(StepOutcome::Completed) => (BatchStatus::Completed, None),
            Ok(StepOutcome::Stopped) => (BatchStatus::Stopped, Some("released".to_owned())),
            Err(e) if lost || e.chain().any(|c| c.is::<LeaseLost>()) => {
                tracing::warn!(error = %format!("{e:#}"), "lost the partition; another worker resumes it");
                env.event(step, PartitionEvent::Lost).await;
                return;
            }
            Err(_) if env.cancelled() => (BatchStatus::Stopped, Some("released".to_owned())),
            Err(e) => (BatchStatus::Failed, Some(format!("{e:#}"))),
        };
        match env
            .repo
            .end_partition(
                &claim,
                status,
                message.as_deref(),
                &ctx.progress,
                env.clock.now_naive_utc(),
            )
            .await
        {
            Ok(true) => {
                let event = match status {
                    BatchStatus::Completed => PartitionEvent::Completed,
                    BatchStatus::Stopped => PartitionEvent::Released,
                    _ => PartitionEvent::Failed,
                };
                env.event(step, event).await;
                let c = &ctx.progress.counts;
                match status {
                    BatchStatus::Completed => tracing::info!(read = c.read_count, written = c.write_count, skipped = c.skip_count, counters = ?c.counters, duration_ms = started.elapsed().as_millis() as u64, "partition completed"),
                    BatchStatus::Stopped => tracing::info!(read = c.read_count, "partition released after its current chunk"),
                    _ => tracing::error!(error = message.as_deref().unwrap_or(""), "partition failed"),
                }
                let mut result = StepResult::new(row.step_name.clone(), status);
                result.counts = ctx.progress.counts.clone();
                result.duration_ms = started.elapsed().as_millis() as u64;
                result.message = message;
                env.done.lock().expect("done").push(result);
            }
            Ok(false) => {
                tracing::warn!("the partition was no longer held when it ended; another worker resumes it");
                env.event(step, PartitionEvent::Lost).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record the end of the partition; its lease expires and another worker resumes it");
                // This process no longer works it (the metrics' working gauge goes down).
                env.event(step, PartitionEvent::Lost).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Forwards a partition's chunk progress to the run's listeners as the sum over this process's
/// partitions (so a progress bar shows the step, not one partition at a time).
struct PartitionProgress {
    partition: i64,
    shared: Arc<Mutex<BTreeMap<i64, StepProgress>>>,
    inner: Listeners,
}

#[async_trait]
impl JobListener for PartitionProgress {
    async fn on_chunk(
        &self,
        job: &JobRunInfo,
        step: &str,
        progress: &StepProgress,
        _total: Option<u64>,
    ) {
        let sum = {
            let mut parts = self.shared.lock().expect("progress");
            parts.insert(self.partition, progress.clone());
            let mut sum = StepProgress::default();
            for p in parts.values() {
                sum.counts.add_all(&p.counts);
            }
            sum
        };
        for l in self.inner.iter() {
            l.on_chunk(job, step, &sum, None).await;
        }
    }
}
