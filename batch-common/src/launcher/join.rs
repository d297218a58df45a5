//! Joining a live execution as a worker (`run <JOB> --join`): a launch that finds its instance
//! running elsewhere claims partitions of that execution's partitioned steps instead of
//! answering ALREADY_RUNNING, so every pod of an Indexed Job can run the same command — the
//! first one starts the execution, the others work its partitions.
//!
//! The worker stays while the execution is live and one of the job's partitioned steps may still
//! hand out partitions: it leaves when every partition of the job's last partitioned step has
//! ended (while others run, it waits: a holder that dies has its partition re-claimed after the
//! lease), when that step has ended, or when the execution has. When the manager dies (its
//! heartbeat goes stale, or another process abandons it), the worker launches again and takes
//! the instance over or joins the execution that did ([`JoinRun::run`](super::JoinRun::run)).

use async_trait::async_trait;

use std::sync::Arc;

use super::{JobLauncher, LaunchError, LaunchOptions, chrono_duration};
use crate::clock::ClockExt;
use crate::listener::JobRunInfo;
use crate::repository::{BatchStatus, NotRun, RunStatus};
use crate::result::{BatchResult, ExitCode};
use crate::step::worker::{ClaimSource, PartitionWorker, WorkerEnv, work};
use crate::step::{PartitionedStep, Step};

impl JobLauncher {
    /// Works the partitions of the live execution `result` names (an ALREADY_RUNNING answer) as
    /// a worker; returns the worker's result (status JOINED, the partitions it ended as steps)
    /// and whether it left because the execution's manager stopped sending heartbeats.
    pub(super) async fn join(
        &self,
        steps: &[Arc<dyn Step>],
        mut result: BatchResult,
        options: &LaunchOptions,
    ) -> Result<(BatchResult, bool), LaunchError> {
        let Some(execution_id) = result.execution_id else {
            return Ok((result, false));
        };
        let partitioned: Vec<&PartitionedStep> =
            steps.iter().filter_map(|s| s.partitioned()).collect();
        let run = JobRunInfo {
            job_name: result.job_name.clone(),
            job_instance_id: result.job_instance_id.unwrap_or_default(),
            execution_id,
            parameters: result.parameters.clone(),
        };
        let started = std::time::Instant::now();
        let partitioning = self.partitioning(options);
        tracing::info!(execution.id = execution_id, owner = %partitioning.owner, workers = partitioning.workers, "joined the running execution as a worker");
        let env = WorkerEnv::new(
            self.repo.clone(),
            run,
            self.chunk_settings(),
            self.clock.clone(),
            options.cancel.clone(),
            self.listeners.clone(),
            partitioning,
        );
        let source = JoinSource {
            execution_id,
            steps: partitioned,
            stale_after: self.settings.stale_after,
            why: std::sync::Mutex::new(String::new()),
            manager_gone: std::sync::atomic::AtomicBool::new(false),
        };
        work(&env, &source).await;
        let done = std::mem::take(&mut *env.done.lock().expect("done"));
        drop(env);
        let failed = done
            .iter()
            .filter(|s| s.status == BatchStatus::Failed)
            .count();
        let manager_gone = source
            .manager_gone
            .load(std::sync::atomic::Ordering::SeqCst);
        let why = if options.cancel.is_cancelled() {
            "stopped on request (its partitions released after their current chunk)".to_owned()
        } else {
            source.why.into_inner().expect("why")
        };
        result.status = RunStatus::NotRun(NotRun::Joined);
        result.exit_code = if failed > 0 {
            ExitCode::Failed
        } else {
            ExitCode::Completed
        };
        result.message = Some(format!(
            "worked {} partition(s) of execution {execution_id} ({failed} failed); {why}",
            done.len()
        ));
        result.duration_ms = started.elapsed().as_millis() as u64;
        result.steps = done;
        tracing::info!(
            execution.id = execution_id,
            message = result.message.as_deref().unwrap_or(""),
            "worker done"
        );
        Ok((result, manager_gone))
    }
}

/// A joined worker's partitions: those of the execution's running partitioned steps.
struct JoinSource<'a> {
    execution_id: i64,
    steps: Vec<&'a PartitionedStep>,
    stale_after: std::time::Duration,
    /// Why the worker left.
    why: std::sync::Mutex<String>,
    /// It left because the execution's manager died (its heartbeat is stale, or another process
    /// abandoned it and took the instance over).
    manager_gone: std::sync::atomic::AtomicBool,
}

impl JoinSource<'_> {
    fn leave(&self, why: String) -> bool {
        *self.why.lock().expect("why") = why;
        true
    }
}

#[async_trait]
impl ClaimSource for JoinSource<'_> {
    async fn managers(&self, env: &WorkerEnv) -> anyhow::Result<Vec<(i64, &dyn PartitionWorker)>> {
        let names: Vec<&str> = self.steps.iter().map(|s| s.name()).collect();
        let rows = env.repo.running_managers(self.execution_id, &names).await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.status == BatchStatus::Started)
            .filter_map(|r| {
                let step = self.steps.iter().find(|s| s.name() == r.step_name)?;
                Some((r.id, *step as &dyn PartitionWorker))
            })
            .collect())
    }

    async fn finished(&self, env: &WorkerEnv) -> anyhow::Result<bool> {
        let Some(execution) = env.repo.execution(self.execution_id).await? else {
            return Ok(self.leave("the execution is gone".to_owned()));
        };
        if execution.live_instance_id.is_none() {
            // Abandoned (its manager died and another process took the instance over): the
            // instance's new execution is where the work went.
            let abandoned = execution
                .exit_message
                .as_deref()
                .is_some_and(|m| m.starts_with("abandoned"));
            self.manager_gone
                .store(abandoned, std::sync::atomic::Ordering::SeqCst);
            return Ok(self.leave(format!(
                "the execution ended ({}); nothing left to claim",
                execution.status
            )));
        }
        let now = env.clock.now_naive_utc();
        if execution.last_updated < now - chrono_duration(self.stale_after) {
            self.manager_gone
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Ok(self.leave(format!(
                "the execution's manager ({}) stopped sending heartbeats",
                execution.owner.as_deref().unwrap_or("?")
            )));
        }
        let Some(last) = self.steps.last() else {
            return Ok(true);
        };
        let rows = env
            .repo
            .running_managers(self.execution_id, &[last.name()])
            .await?;
        let Some(manager) = rows.last() else {
            return Ok(false); // not reached yet
        };
        if manager.status != BatchStatus::Started {
            return Ok(self.leave(format!(
                "{} ended ({}); nothing left to claim",
                manager.step_name, manager.status
            )));
        }
        let partitions = env.repo.partition_statuses(manager.id).await?;
        if partitions.total() == 0 {
            // Partitions not created yet, or the step runs unpartitioned (its checkpoint says).
            let context: serde_json::Value =
                serde_json::from_str(&manager.execution_context).unwrap_or_default();
            return Ok(!context.is_null()
                && context.get("partitions").is_none()
                && self.leave(format!(
                    "{} runs unpartitioned; nothing to claim",
                    manager.step_name
                )));
        }
        // Running partitions held by others keep this worker: if their owner dies, their lease
        // expires and this worker resumes them (and takes the instance over if the manager died).
        if partitions.waiting == 0 && partitions.running == 0 {
            return Ok(self.leave(format!(
                "every partition of {} has ended; nothing left to claim",
                manager.step_name
            )));
        }
        Ok(false)
    }
}
