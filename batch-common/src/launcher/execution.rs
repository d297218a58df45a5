//! Running a claimed execution: its steps in order (skipping, resuming or retrying each as the
//! instance's history says), step retries, and the end of the execution recorded.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Claimed, JobLauncher, LaunchError, LaunchOptions, heartbeat, to_utc};
use crate::clock::ClockExt;
use crate::listener::JobRunInfo;
use crate::repository::{BatchStatus, StepProgress, exit_codes};
use crate::result::{BatchResult, ExitCode, StepResult};
use crate::step::{ChunkSettings, Partitioning, ReadScope, Step, StepContext, StepOutcome};

impl JobLauncher {
    /// Runs a claimed execution to its end: heartbeat, listeners, the steps, the end recorded.
    pub(super) async fn run_execution(
        &self,
        run: JobRunInfo,
        steps: Vec<Arc<dyn Step>>,
        restart_after: i64,
        options: &LaunchOptions,
        claimed: Claimed,
    ) -> Result<BatchResult, LaunchError> {
        let Claimed {
            mut result,
            started,
            now,
        } = claimed;
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
        let heartbeat = heartbeat::spawn(
            self.repo.clone(),
            self.clock.clone(),
            self.settings.heartbeat_interval,
            execution_id,
            run_cancel.clone(),
        );
        for l in self.listeners.iter() {
            l.before_job(&run).await;
        }

        let partitioning = self.partitioning(options);
        let (status, message) = self
            .run_steps(
                &run,
                &steps,
                restart_after,
                (&run_cancel, &partitioning),
                &mut result,
            )
            .await;
        heartbeat.abort();

        let ended = self.clock.now_naive_utc();
        let failures: i64 = result.steps.iter().map(|s| s.counts.skip_count).sum();
        let (exit_code, code) = match status {
            BatchStatus::Completed if failures > 0 => (
                ExitCode::CompletedWithFailures,
                exit_codes::COMPLETED_WITH_FAILURES,
            ),
            BatchStatus::Completed => (ExitCode::Completed, exit_codes::COMPLETED),
            BatchStatus::Stopped => (ExitCode::Failed, exit_codes::STOPPED),
            _ => (ExitCode::Failed, exit_codes::FAILED),
        };
        result.status = status.into();
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
            result.status = BatchStatus::Failed.into();
            result.exit_code = ExitCode::Failed;
            result.message = Some(format!("could not record the end of the execution: {e}"));
        }
        tracing::info!(status = %result.status, duration_ms = result.duration_ms, item_failures = failures, "job ended");
        for l in self.listeners.iter() {
            l.after_job(&run, &result).await;
        }
        Ok(result)
    }

    /// How this launch partitions its steps: `[batch.partitions]`, `[batch] partition_workers`
    /// and the launch's overrides.
    pub(super) fn partitioning(&self, options: &LaunchOptions) -> Partitioning {
        Partitioning {
            per_step: self
                .settings
                .partitions
                .iter()
                .map(|(k, v)| (k.clone(), v.get()))
                .collect(),
            all_steps: options.partitions.map(NonZeroU32::get),
            workers: options
                .workers
                .unwrap_or(self.settings.partition_workers)
                .get(),
            owner: self.partition_owner.clone(),
            lease: self.settings.stale_after,
            renew_every: self.settings.heartbeat_interval,
        }
    }

    pub(super) fn chunk_settings(&self) -> ChunkSettings {
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
        steps: &[Arc<dyn Step>],
        restart_after: i64,
        (cancel, partitioning): (&CancellationToken, &Partitioning),
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
            let (progress, scope, resumed_from) = match &previous {
                Some(prev)
                    if prev.status == BatchStatus::Completed && prev.counts.skip_count == 0 =>
                {
                    tracing::info!(step = %name, previous.execution = prev.job_execution_id, "step completed earlier; skipped");
                    result.steps.push(StepResult {
                        message: Some(format!(
                            "skipped: completed in execution {}",
                            prev.job_execution_id
                        )),
                        ..StepResult::new(name.clone(), BatchStatus::Completed)
                    });
                    continue;
                }
                Some(prev) if prev.status == BatchStatus::Completed => {
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
                            message: Some(format!(
                                "skipped: its failed items were resolved since execution {}",
                                prev.job_execution_id
                            )),
                            ..StepResult::new(name.clone(), BatchStatus::Completed)
                        });
                        continue;
                    }
                    tracing::info!(step = %name, items = keys.len(), "retrying the items that failed in execution {}", prev.job_execution_id);
                    (StepProgress::default(), ReadScope::FailedItems(keys), None)
                }
                Some(prev) => {
                    // FAILED or STOPPED: resume after its last committed chunk.
                    let p = StepProgress::from_row(prev);
                    tracing::info!(step = %name, previous.execution = prev.job_execution_id, commits = prev.counts.commit_count, "resuming after the last committed chunk");
                    let resumed = StepProgress {
                        context: p.context,
                        ..StepProgress::default()
                    };
                    (resumed, ReadScope::All, Some(prev.id))
                }
                None => (StepProgress::default(), ReadScope::All, None),
            };
            let step_result = self
                .run_step(
                    run,
                    step.as_ref(),
                    (progress, scope, resumed_from),
                    (cancel, partitioning),
                )
                .await;
            let status = step_result.status;
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
        step: &dyn Step,
        (progress, scope, resumed_from): (StepProgress, ReadScope, Option<i64>),
        (cancel, partitioning): (&CancellationToken, &Partitioning),
    ) -> StepResult {
        let name = step.name().to_owned();
        let started = Instant::now();
        let mut out = StepResult::new(name.clone(), BatchStatus::Failed);
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
            resumed_from,
            fence: None,
            partitioning: partitioning.clone(),
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
                    ctx.progress.counts.retry_count += 1;
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
        out.status = status;
        out.counts = p.counts.clone();
        out.duration_ms = started.elapsed().as_millis() as u64;
        out.message = message;
        tracing::info!(
            step = %name, status = %out.status, read = p.counts.read_count, written = p.counts.write_count,
            skipped = p.counts.skip_count, commits = p.counts.commit_count, retries = p.counts.retry_count,
            counters = ?p.counts.counters, duration_ms = out.duration_ms, "step ended"
        );
        for l in self.listeners.iter() {
            l.after_step(run, &out).await;
        }
        out
    }
}
