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
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use core_domain::DbError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::clock::{Clock, ClockExt};
use crate::config::RuntimeSettings;
use crate::job::Job;
use crate::listener::{JobListener, JobRunInfo, Listeners};
use crate::params::ParameterError;
use crate::repository::{
    BatchStatus, CreateExecution, JobRepository, StepProgress, exit_codes, status_of,
};
use crate::result::{BatchResult, ExitCode, StepResult};
use crate::step::{ChunkSettings, ReadScope, StepContext, StepOutcome};

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
}

/// What [`JobLauncher::prepare`] decided.
#[derive(Debug)]
pub enum Prepared {
    /// Nothing runs: the instance already completed (NOOP) or is running elsewhere
    /// (ALREADY_RUNNING, exit 4). The result says which.
    Done(BatchResult),
    /// An execution was created and claimed the instance; run it with [`PendingRun::run`].
    Ready(Box<PendingRun>),
}

/// A claimed execution, ready to run. Run it promptly: until it runs, its heartbeat does not
/// beat, and after `[batch] stale_after` another launcher may take the instance over.
pub struct PendingRun {
    launcher: JobLauncher,
    run: JobRunInfo,
    steps: Vec<Arc<dyn crate::step::Step>>,
    restart_after: i64,
    options: LaunchOptions,
    result: BatchResult,
    started: Instant,
    now: chrono::NaiveDateTime,
    span: tracing::Span,
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
            result,
            started,
            now,
            span,
        } = *self;
        launcher
            .run_execution(run, steps, restart_after, &options, result, started, now)
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
        }
    }

    /// The first half of [`launch`](Self::launch): resolves the parameters, claims the instance's
    /// live slot and decides what to do, without running anything. An API that answers "started,
    /// execution N" before the run ends calls this, answers, then runs the [`PendingRun`].
    pub async fn prepare(
        &self,
        job: &dyn Job,
        given: BTreeMap<String, String>,
        options: &LaunchOptions,
    ) -> Result<Prepared, LaunchError> {
        let descriptor = job.descriptor();
        let params = job.resolve_parameters(given)?;
        let steps = job.steps(&params).map_err(LaunchError::Setup)?;
        let started = Instant::now();
        let now = self.clock.now_naive_utc();
        let instance = self
            .repo
            .get_or_create_instance(
                descriptor.name,
                &params.job_key(),
                &params.identifying_json(),
                now,
            )
            .await?;
        let mut result = BatchResult {
            job_name: descriptor.name.to_owned(),
            job_instance_id: Some(instance.id),
            execution_id: None,
            parameters: params.values().clone(),
            status: "NOOP".to_owned(),
            exit_code: ExitCode::Completed,
            message: None,
            started_at: None,
            ended_at: None,
            duration_ms: 0,
            steps: Vec::new(),
            item_failures: 0,
        };

        // Claim the instance's live slot first, then decide what to do: deciding from a read
        // taken before the claim could miss a run that completed in between.
        let stale_before = now - chrono_duration(self.settings.stale_after);
        let created = self
            .repo
            .create_execution(
                instance.id,
                &params.to_json(),
                &self.owner,
                now,
                stale_before,
            )
            .await?;
        let execution = match created {
            CreateExecution::AlreadyRunning(live) => {
                result.execution_id = Some(live.execution_id);
                result.status = "ALREADY_RUNNING".to_owned();
                result.exit_code = ExitCode::AlreadyRunning;
                result.message = Some(format!(
                    "refused: {} {} is already running as execution {} on {} (heartbeat {} UTC)",
                    descriptor.name,
                    params.identifying_json(),
                    live.execution_id,
                    live.owner.as_deref().unwrap_or("?"),
                    live.last_updated.format("%Y-%m-%d %H:%M:%S")
                ));
                tracing::warn!(
                    job.name = descriptor.name,
                    live.execution = live.execution_id,
                    "refused: the instance is already running"
                );
                return Ok(Prepared::Done(result));
            }
            CreateExecution::Created {
                execution,
                abandoned,
            } => {
                if let Some(dead) = abandoned {
                    tracing::warn!(
                        job.name = descriptor.name,
                        abandoned.execution = dead,
                        "restarting after a dead execution"
                    );
                }
                execution
            }
        };

        let history: Vec<_> = self
            .repo
            .executions_of_instance(instance.id)
            .await?
            .into_iter()
            .filter(|e| e.id != execution.id)
            .collect();
        let last = history.last();
        // The restart base: executions after the last *clean* completion count for restarts.
        let clean_completed = history
            .iter()
            .rev()
            .find(|e| {
                e.status == BatchStatus::Completed.as_str() && e.exit_code == exit_codes::COMPLETED
            })
            .map_or(0, |e| e.id);
        if let Some(last) = last
            && last.status == BatchStatus::Completed.as_str()
            && last.exit_code == exit_codes::COMPLETED
            && !options.rerun
        {
            self.repo.delete_unstarted_execution(execution.id).await?;
            result.execution_id = Some(last.id);
            result.message = Some(format!(
                "nothing to do: {} {} already completed (execution {}); pass --rerun to run it again",
                descriptor.name,
                params.identifying_json(),
                last.id
            ));
            tracing::info!(
                job.name = descriptor.name,
                execution.id = last.id,
                "instance already completed; nothing to do"
            );
            return Ok(Prepared::Done(result));
        }
        let restart_after = if options.rerun {
            last.map_or(0, |l| l.id)
        } else {
            clean_completed
        };

        let run = JobRunInfo {
            job_name: descriptor.name.to_owned(),
            job_instance_id: instance.id,
            execution_id: execution.id,
            parameters: params.values().clone(),
        };
        let span = tracing::info_span!(
            "job",
            job.name = descriptor.name,
            execution.id = execution.id,
            job.instance = instance.id
        );
        Ok(Prepared::Ready(Box::new(PendingRun {
            launcher: self.clone(),
            run,
            steps,
            restart_after,
            options: options.clone(),
            result,
            started,
            now,
            span,
        })))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_execution(
        &self,
        run: JobRunInfo,
        steps: Vec<Arc<dyn crate::step::Step>>,
        restart_after: i64,
        options: &LaunchOptions,
        mut result: BatchResult,
        started: Instant,
        now: chrono::NaiveDateTime,
    ) -> Result<BatchResult, LaunchError> {
        let execution_id = run.execution_id;
        self.repo
            .mark_started(execution_id, self.clock.now_naive_utc())
            .await?;
        result.execution_id = Some(execution_id);
        result.started_at = Some(to_utc(now));
        tracing::info!(parameters = ?run.parameters, "job started");
        // The heartbeat, from the start (a slow listener must not make a live run look dead);
        // losing it (someone marked us abandoned) stops the run after the chunk.
        let run_cancel = options.cancel.child_token();
        let heartbeat = self.spawn_heartbeat(execution_id, run_cancel.clone());
        for l in self.listeners.iter() {
            l.before_job(&run).await;
        }

        let (status, message) = self
            .run_steps(&run, &steps, restart_after, &run_cancel, &mut result)
            .await;
        heartbeat.abort();

        let ended = self.clock.now_naive_utc();
        let failures: i64 = result.steps.iter().map(|s| s.skip_count).sum();
        let (exit_code, code) = match status {
            BatchStatus::Completed if failures > 0 => (
                ExitCode::CompletedWithFailures,
                exit_codes::COMPLETED_WITH_FAILURES,
            ),
            BatchStatus::Completed => (ExitCode::Completed, exit_codes::COMPLETED),
            BatchStatus::Stopped => (ExitCode::Failed, exit_codes::STOPPED),
            _ => (ExitCode::Failed, exit_codes::FAILED),
        };
        result.status = status.as_str().to_owned();
        result.exit_code = exit_code;
        result.message = message;
        result.item_failures = failures;
        result.ended_at = Some(to_utc(ended));
        result.duration_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = self
            .repo
            .finish_execution(execution_id, status, code, result.message.as_deref(), ended)
            .await
        {
            tracing::error!(error = %e, "could not record the end of the execution");
            result.status = BatchStatus::Failed.as_str().to_owned();
            result.exit_code = ExitCode::Failed;
            result.message = Some(format!("could not record the end of the execution: {e}"));
        }
        tracing::info!(status = %result.status, duration_ms = result.duration_ms, item_failures = failures, "job ended");
        for l in self.listeners.iter() {
            l.after_job(&run, &result).await;
        }
        Ok(result)
    }

    fn spawn_heartbeat(
        &self,
        execution_id: i64,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let repo = self.repo.clone();
        let clock = self.clock.clone();
        let every = self.settings.heartbeat_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match repo.heartbeat(execution_id, clock.now_naive_utc()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            execution.id = execution_id,
                            "this execution was marked abandoned by another process; stopping after the current chunk"
                        );
                        cancel.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(execution.id = execution_id, error = %e, "heartbeat failed")
                    }
                }
            }
        })
    }

    fn chunk_settings(&self) -> ChunkSettings {
        ChunkSettings {
            chunk_size: self.settings.chunk_size.get(),
            retry: self.settings.chunk_retry_policy(),
            skip_limit: self.settings.skip_limit,
        }
    }

    /// Runs the steps in order; returns the job's status and message.
    async fn run_steps(
        &self,
        run: &JobRunInfo,
        steps: &[Arc<dyn crate::step::Step>],
        restart_after: i64,
        cancel: &CancellationToken,
        result: &mut BatchResult,
    ) -> (BatchStatus, Option<String>) {
        for step in steps {
            let name = step.name().to_owned();
            let previous = match self
                .repo
                .last_step_execution(run.job_instance_id, &name, restart_after)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    return (
                        BatchStatus::Failed,
                        Some(format!("{name}: reading the previous step execution: {e}")),
                    );
                }
            };
            // Decide how this step runs.
            let (progress, scope) = match &previous {
                Some(prev)
                    if status_of(&prev.status) == BatchStatus::Completed
                        && prev.skip_count == 0 =>
                {
                    tracing::info!(step = %name, previous.execution = prev.job_execution_id, "step completed earlier; skipped");
                    result.steps.push(StepResult {
                        name: name.clone(),
                        status: BatchStatus::Completed.as_str().to_owned(),
                        message: Some(format!(
                            "skipped: completed in execution {}",
                            prev.job_execution_id
                        )),
                        ..StepResult::default()
                    });
                    continue;
                }
                Some(prev) if status_of(&prev.status) == BatchStatus::Completed => {
                    // Completed with item failures: retry just those items.
                    let keys = match self
                        .repo
                        .unresolved_failures(run.job_instance_id, &name)
                        .await
                    {
                        Ok(f) => f.into_iter().map(|f| f.item_key).collect::<Vec<_>>(),
                        Err(e) => {
                            return (
                                BatchStatus::Failed,
                                Some(format!("{name}: reading item failures: {e}")),
                            );
                        }
                    };
                    if keys.is_empty() {
                        result.steps.push(StepResult {
                            name: name.clone(),
                            status: BatchStatus::Completed.as_str().to_owned(),
                            message: Some(format!(
                                "skipped: its failed items were resolved since execution {}",
                                prev.job_execution_id
                            )),
                            ..StepResult::default()
                        });
                        continue;
                    }
                    tracing::info!(step = %name, items = keys.len(), "retrying the items that failed in execution {}", prev.job_execution_id);
                    (StepProgress::default(), ReadScope::FailedItems(keys))
                }
                Some(prev) => {
                    // FAILED or STOPPED: resume after its last committed chunk.
                    let p = StepProgress::from_row(prev);
                    tracing::info!(step = %name, previous.execution = prev.job_execution_id, commits = prev.commit_count, "resuming after the last committed chunk");
                    let resumed = StepProgress {
                        context: p.context,
                        ..StepProgress::default()
                    };
                    (resumed, ReadScope::All)
                }
                None => (StepProgress::default(), ReadScope::All),
            };
            let step_result = self
                .run_step(run, step.as_ref(), progress, scope, cancel)
                .await;
            let status = step_result.status.clone();
            let message = step_result.message.clone();
            result.steps.push(step_result);
            match status.as_str() {
                "COMPLETED" => {}
                "STOPPED" => return (BatchStatus::Stopped, Some(format!("stopped during {name}"))),
                _ => {
                    return (
                        BatchStatus::Failed,
                        Some(format!("{name} failed: {}", message.unwrap_or_default())),
                    );
                }
            }
        }
        (BatchStatus::Completed, None)
    }

    /// One step with its step-level retries.
    async fn run_step(
        &self,
        run: &JobRunInfo,
        step: &dyn crate::step::Step,
        progress: StepProgress,
        scope: ReadScope,
        cancel: &CancellationToken,
    ) -> StepResult {
        let name = step.name().to_owned();
        let started = Instant::now();
        let mut out = StepResult {
            name: name.clone(),
            status: BatchStatus::Failed.as_str().to_owned(),
            ..StepResult::default()
        };
        let row = match self
            .repo
            .create_step_execution(
                run.execution_id,
                &name,
                &progress,
                self.clock.now_naive_utc(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                out.message = Some(format!("could not record the step: {e}"));
                return out;
            }
        };
        for l in self.listeners.iter() {
            l.before_step(run, &name).await;
        }
        tracing::info!(step = %name, "step started");
        let mut ctx = StepContext {
            repo: self.repo.clone(),
            run: run.clone(),
            step_execution_id: row.id,
            step_name: name.clone(),
            progress,
            scope,
            settings: self.chunk_settings(),
            clock: self.clock.clone(),
            cancel: cancel.clone(),
            listeners: self.listeners.clone(),
        };
        let retries = self.settings.step_retry_attempts;
        let mut attempt = 0u32;
        let (status, code, message) = loop {
            match step.execute(&mut ctx).await {
                Ok(StepOutcome::Completed) => {
                    break (BatchStatus::Completed, exit_codes::COMPLETED, None);
                }
                Ok(StepOutcome::Stopped) => {
                    break (
                        BatchStatus::Stopped,
                        exit_codes::STOPPED,
                        Some("stopped on request".to_owned()),
                    );
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if cancel.is_cancelled() {
                        break (BatchStatus::Stopped, exit_codes::STOPPED, Some(error));
                    }
                    if attempt >= retries {
                        tracing::error!(step = %name, attempts = attempt + 1, error = %error, "step failed; no retries left");
                        for l in self.listeners.iter() {
                            l.on_retries_exhausted(run, &name, &error).await;
                        }
                        break (BatchStatus::Failed, exit_codes::FAILED, Some(error));
                    }
                    attempt += 1;
                    ctx.progress.retry_count += 1;
                    let wait = self.settings.step_retry_interval;
                    tracing::warn!(step = %name, attempt, of = retries, wait_ms = wait.as_millis() as u64, error = %error, "step failed; retrying");
                    for l in self.listeners.iter() {
                        l.on_step_retry(run, &name, attempt, &error).await;
                    }
                    if let Err(e) = ctx.save_progress().await {
                        tracing::warn!(step = %name, error = %e, "could not save the retry count");
                    }
                    tokio::select! {
                        _ = self.clock.sleep(wait) => {}
                        _ = cancel.cancelled() => break (BatchStatus::Stopped, exit_codes::STOPPED, Some(format!("stopped while waiting to retry after: {error}"))),
                    }
                }
            }
        };
        let now = self.clock.now_naive_utc();
        if let Err(e) = self
            .repo
            .finish_step(row.id, status, code, message.as_deref(), &ctx.progress, now)
            .await
        {
            tracing::error!(step = %name, error = %e, "could not record the end of the step");
        }
        let p = &ctx.progress;
        out.status = status.as_str().to_owned();
        out.read_count = p.read_count;
        out.write_count = p.write_count;
        out.filter_count = p.filter_count;
        out.skip_count = p.skip_count;
        out.commit_count = p.commit_count;
        out.rollback_count = p.rollback_count;
        out.retry_count = p.retry_count;
        out.counters = p.counters.clone();
        out.duration_ms = started.elapsed().as_millis() as u64;
        out.message = message;
        tracing::info!(
            step = %name, status = %out.status, read = p.read_count, written = p.write_count,
            skipped = p.skip_count, commits = p.commit_count, retries = p.retry_count,
            counters = ?p.counters, duration_ms = out.duration_ms, "step ended"
        );
        for l in self.listeners.iter() {
            l.after_step(run, &out).await;
        }
        out
    }
}
