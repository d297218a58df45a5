//! `JobLauncher`: the launch rules of SPEC §5.
//!
//! - A COMPLETED instance is not run again (exit 0, "nothing to do") unless `rerun`.
//! - A FAILED or STOPPED instance is restarted: steps that completed since the instance's last
//!   clean completion are skipped; the failed step resumes after its last committed chunk.
//! - An instance whose last run completed with item failures runs again, and the steps that
//!   recorded failures read only the failed items ([`ReadScope::FailedItems`]).
//! - One live execution per instance, enforced by the database; a live execution whose heartbeat
//!   is older than `stale_after` is marked FAILED (abandoned) and the instance restarted.
//! - A failed step is retried `step_retry_attempts` times, `step_retry_interval` apart.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use core_domain::DbError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::clock::Clock;
use crate::config::RuntimeSettings;
use crate::job::Job;
use crate::listener::{JobListener, JobRunInfo, Listeners};
use crate::params::ParameterError;
use crate::repository::JobRepository;
use crate::result::{BatchResult, ExitCode};
use crate::step::Step;

mod execution;
mod heartbeat;
mod join;
mod prepare;

/// Why a launch did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// Bad parameters: exit 2, nothing written.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// The job could not build its steps (a configuration problem): exit 2.
    #[error("{0:#}")]
    Setup(anyhow::Error),
    /// The metadata database failed before the run could be recorded: exit 1.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl LaunchError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            LaunchError::Parameters(_) | LaunchError::Setup(_) => ExitCode::Usage,
            LaunchError::Database(_) => ExitCode::Failed,
        }
    }
}

/// Options of one launch.
#[derive(Debug, Clone, Default)]
pub struct LaunchOptions {
    /// Run a COMPLETED instance again from the start.
    pub rerun: bool,
    /// Cancelled to stop the run after its current chunk (e.g. on SIGTERM); the execution ends
    /// STOPPED and restarts cleanly.
    pub cancel: CancellationToken,
    /// When the instance is running elsewhere, join that execution as a worker (claim its
    /// partitions) instead of answering ALREADY_RUNNING. PostgreSQL and MySQL/MariaDB only.
    pub join: bool,
    /// Partitions of every partitioned step of this run (over `[batch.partitions]`).
    pub partitions: Option<NonZeroU32>,
    /// Partitions this process works at once (over `[batch] partition_workers`).
    pub workers: Option<NonZeroU32>,
}

/// What [`JobLauncher::prepare`] decided.
#[derive(Debug)]
pub enum Prepared {
    /// Nothing runs: the instance already completed (NOOP) or is running elsewhere
    /// (ALREADY_RUNNING, exit 4). The result says which.
    Done(BatchResult),
    /// An execution was created and claimed the instance; run it with [`PendingRun::run`].
    Ready(Box<PendingRun>),
    /// The instance is running elsewhere and the launch asked to join it
    /// ([`LaunchOptions::join`]): work its partitions with [`JoinRun::run`].
    Join(Box<JoinRun>),
}

/// A worker joining a live execution, ready to claim its partitions.
pub struct JoinRun {
    launcher: JobLauncher,
    descriptor: &'static crate::job::JobDescriptor,
    params: crate::params::JobParameters,
    steps: Vec<Arc<dyn Step>>,
    result: BatchResult,
    options: LaunchOptions,
    span: tracing::Span,
}

impl std::fmt::Debug for JoinRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRun")
            .field("execution_id", &self.result.execution_id)
            .finish_non_exhaustive()
    }
}

impl JoinRun {
    /// Works the execution's partitions until nothing is left to claim; the result has status
    /// JOINED and the partitions this process ended as its steps. When the execution's manager
    /// died (its heartbeat went stale, or another process abandoned it), this worker launches
    /// again: it takes the instance over as a new launch would — the new execution resumes the
    /// partitions that did not complete — or joins the execution that took it over, so a group
    /// of workers that all run the same command never strands a run.
    pub async fn run(self: Box<Self>) -> Result<BatchResult, LaunchError> {
        let JoinRun {
            launcher,
            descriptor,
            params,
            steps,
            result,
            options,
            span,
        } = *self;
        let (result, manager_gone) = launcher
            .join(&steps, result, &options)
            .instrument(span)
            .await?;
        if !manager_gone || options.cancel.is_cancelled() {
            return Ok(result);
        }
        tracing::warn!(
            job.name = descriptor.name,
            "the execution's manager is gone: taking the instance over"
        );
        match Box::pin(launcher.claim(descriptor, params, steps, &options)).await? {
            Prepared::Done(done) => Ok(done),
            Prepared::Ready(run) => run.run().await,
            Prepared::Join(worker) => Box::pin(worker.run()).await,
        }
    }
}

/// A claimed execution, ready to run. Run it promptly: until it runs, its heartbeat does not
/// beat, and after `[batch] stale_after` another launcher may take the instance over.
pub struct PendingRun {
    launcher: JobLauncher,
    run: JobRunInfo,
    steps: Vec<Arc<dyn Step>>,
    restart_after: i64,
    options: LaunchOptions,
    claimed: Claimed,
    span: tracing::Span,
}

/// What `prepare` knew when it claimed the execution: the result so far and when it started.
struct Claimed {
    result: BatchResult,
    started: Instant,
    now: chrono::NaiveDateTime,
}

impl std::fmt::Debug for PendingRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRun")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl PendingRun {
    /// The execution's id.
    pub fn execution_id(&self) -> i64 {
        self.run.execution_id
    }

    /// The job instance's id.
    pub fn job_instance_id(&self) -> i64 {
        self.run.job_instance_id
    }

    /// Runs the execution to its end.
    pub async fn run(self: Box<Self>) -> Result<BatchResult, LaunchError> {
        let PendingRun {
            launcher,
            run,
            steps,
            restart_after,
            options,
            claimed,
            span,
        } = *self;
        launcher
            .run_execution(run, steps, restart_after, &options, claimed)
            .instrument(span)
            .await
    }
}

/// Launches jobs against one job repository.
#[derive(Clone)]
pub struct JobLauncher {
    repo: JobRepository,
    clock: Arc<dyn Clock>,
    settings: RuntimeSettings,
    listeners: Listeners,
    owner: String,
    /// This process as a partition owner: `host:pid:tag`, the tag telling apart processes that
    /// share a pid (PID 1 in every container).
    partition_owner: String,
}

impl std::fmt::Debug for JobLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLauncher")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// `host:pid` of this process.
pub fn process_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}

/// `owner:tag`, the tag from the clock's nanoseconds and a per-process counter: unique among
/// the workers of one execution even when they share a host name and pid.
fn partition_owner(owner: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{owner}:{:x}", (u64::from(nanos) << 8) ^ u64::from(n))
}

fn to_utc(t: chrono::NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl JobLauncher {
    /// A launcher with the runtime settings of `[batch]`.
    pub fn new(repo: JobRepository, clock: Arc<dyn Clock>, settings: RuntimeSettings) -> Self {
        JobLauncher {
            repo,
            clock,
            settings,
            listeners: Arc::new(Vec::new()),
            owner: process_owner(),
            partition_owner: partition_owner(&process_owner()),
        }
    }

    /// Adds a listener.
    pub fn with_listener(mut self, listener: Arc<dyn JobListener>) -> Self {
        Arc::make_mut(&mut self.listeners).push(listener);
        self
    }

    /// Overrides the `host:pid` recorded as the owner (tests).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self.partition_owner = partition_owner(&self.owner);
        self
    }

    /// The repository.
    pub fn repository(&self) -> &JobRepository {
        &self.repo
    }

    /// Launches `job` with the given `key=value` parameters and runs it to its end.
    pub async fn launch(
        &self,
        job: &dyn Job,
        given: BTreeMap<String, String>,
        options: &LaunchOptions,
    ) -> Result<BatchResult, LaunchError> {
        match self.prepare(job, given, options).await? {
            Prepared::Done(result) => Ok(result),
            Prepared::Ready(run) => run.run().await,
            Prepared::Join(worker) => worker.run().await,
        }
    }
}
