//! Preparing a launch: resolve the parameters, claim the instance's live slot, decide what to do
//! (nothing, refuse, or a run from the start, a restart or a retry of failed items).

use std::collections::BTreeMap;
use std::time::Instant;

use super::{
    Claimed, JobLauncher, JoinRun, LaunchError, LaunchOptions, PendingRun, Prepared,
    chrono_duration,
};
use crate::clock::ClockExt;
use std::sync::Arc;

use crate::job::{Job, JobDescriptor};
use crate::listener::JobRunInfo;
use crate::params::{JobParameters, ParamContext};
use crate::repository::{BatchStatus, CreateExecution, NotRun, RunStatus, exit_codes};
use crate::result::{BatchResult, ExitCode};
use crate::step::Step;

impl JobLauncher {
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
        let ctx = ParamContext::new(self.clock.as_ref(), self.settings.timezone);
        let params = JobParameters::resolve(descriptor, given, &ctx)?;
        let steps = job.steps(&params).map_err(LaunchError::Setup)?;
        if options.join {
            if self.repo.database().backend() == core_domain::Backend::Sqlite {
                return Err(LaunchError::Setup(anyhow::anyhow!(
                    "--join: workers in other processes need PostgreSQL or MySQL/MariaDB (they \
                     claim partitions with SELECT … FOR UPDATE SKIP LOCKED); on SQLite a \
                     partitioned step runs its partitions in one process: use --workers N"
                )));
            }
            if !steps.iter().any(|s| s.partitioned().is_some()) {
                return Err(LaunchError::Setup(anyhow::anyhow!(
                    "--join: {} has no partitioned step to join",
                    descriptor.name
                )));
            }
        }
        self.claim(descriptor, params, steps, options).await
    }

    /// Claims the instance's live slot for `params` and decides what to do.
    pub(super) async fn claim(
        &self,
        descriptor: &'static JobDescriptor,
        params: JobParameters,
        steps: Vec<Arc<dyn Step>>,
        options: &LaunchOptions,
    ) -> Result<Prepared, LaunchError> {
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
            parameters: params.to_strings(),
            status: RunStatus::NotRun(NotRun::Noop),
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
                result.status = RunStatus::NotRun(NotRun::AlreadyRunning);
                result.exit_code = ExitCode::AlreadyRunning;
                result.message = Some(format!(
                    "refused: {} {} is already running as execution {} on {} (heartbeat {} UTC)",
                    descriptor.name,
                    params.identifying_json(),
                    live.execution_id,
                    live.owner.as_deref().unwrap_or("?"),
                    live.last_updated.format("%Y-%m-%d %H:%M:%S")
                ));
                if options.join {
                    let span = tracing::info_span!(
                        "worker",
                        job.name = descriptor.name,
                        execution.id = live.execution_id,
                        job.instance = instance.id
                    );
                    return Ok(Prepared::Join(Box::new(JoinRun {
                        launcher: self.clone(),
                        descriptor,
                        params,
                        steps,
                        result,
                        options: options.clone(),
                        span,
                    })));
                }
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
            .find(|e| e.status == BatchStatus::Completed && e.exit_code == exit_codes::COMPLETED)
            .map_or(0, |e| e.id);
        if let Some(last) = last
            && last.status == BatchStatus::Completed
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
            parameters: params.to_strings(),
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
            claimed: Claimed {
                result,
                started,
                now,
            },
            span,
        })))
    }
}
