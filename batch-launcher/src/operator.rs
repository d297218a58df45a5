//! The operator verbs (Spring Batch's `JobOperator`) for the CLI and the HTTP API alike:
//! `stop`, `restart` and `abandon` an execution running in any process on any machine, and
//! its item failures page by page. Everything goes through the job repository (the database
//! every process shares): a stop is recorded there and read by the running process with its
//! next heartbeat. [`OperatorError`] is the one vocabulary of refusals: the CLI maps it to exit
//! codes, the API to status codes.

use std::collections::BTreeMap;
use std::time::Duration;

use batch_common::ExitCode;
use batch_common::repository::{
    BatchStatus, JobExecution, JobRepository, StopRequest, heartbeat_age_secs,
};
use chrono::NaiveDateTime;
use core_domain::DbError;

/// Why an operator verb did nothing.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No execution has this id: exit 2, HTTP 404.
    #[error("execution {0} does not exist")]
    NotFound(i64),
    /// The execution has ended (stop, abandon): exit 1, HTTP 409.
    #[error("execution {id} is not running (status {status}); nothing to {verb}")]
    NotRunning {
        /// The execution.
        id: i64,
        /// How it ended.
        status: BatchStatus,
        /// The verb asked for.
        verb: &'static str,
    },
    /// Its instance is running (restart): exit 4, HTTP 409.
    #[error(
        "job instance {instance} of {job} is running (execution {running} on {owner}); stop it first"
    )]
    Running {
        /// The job.
        job: String,
        /// The instance.
        instance: i64,
        /// The live execution.
        running: i64,
        /// Its `host:pid`.
        owner: String,
    },
    /// Its instance completed (restart): exit 2, HTTP 400.
    #[error(
        "job instance {instance} of {job} completed (execution {last}); a restart resumes only a FAILED or STOPPED run — to run it again from the start use `run {job} {params} --rerun` (API: POST /jobs/{job}/executions with \"rerun\": true)"
    )]
    Completed {
        /// The job.
        job: String,
        /// The instance.
        instance: i64,
        /// Its last execution.
        last: i64,
        /// Its parameters as `key=value` words.
        params: String,
    },
    /// Its heartbeat is recent (abandon without force): exit 1, HTTP 409.
    #[error(
        "execution {id} sent a heartbeat {age:.0}s ago and may still be running on {owner}; stop it, or wait until it is stale ({stale_after:?}), or force it if you know its process is gone"
    )]
    StillAlive {
        /// The execution.
        id: i64,
        /// Seconds since its heartbeat.
        age: f64,
        /// Its `host:pid`.
        owner: String,
        /// `[batch] stale_after`.
        stale_after: Duration,
    },
    /// The database failed: exit 1, HTTP 503.
    #[error("the batch database failed: {0}")]
    Database(#[from] DbError),
}

impl OperatorError {
    /// The CLI's exit code.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            OperatorError::NotFound(_) | OperatorError::Completed { .. } => ExitCode::Usage,
            OperatorError::Running { .. } => ExitCode::AlreadyRunning,
            OperatorError::NotRunning { .. }
            | OperatorError::StillAlive { .. }
            | OperatorError::Database(_) => ExitCode::Failed,
        }
    }

    /// The metric outcome label of a verb's result: `accepted`, or the refusal's label.
    pub fn label_of<T>(result: &Result<T, OperatorError>) -> &'static str {
        result
            .as_ref()
            .map_or_else(OperatorError::outcome, |_| "accepted")
    }

    /// The metric outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            OperatorError::NotFound(_) => "not_found",
            OperatorError::Database(_) => "error",
            _ => "refused",
        }
    }
}

/// What `stop` did.
#[derive(Debug)]
pub struct Stopped {
    /// The execution after the request (STOPPING).
    pub execution: JobExecution,
    /// A stop had been requested before.
    pub already: bool,
    /// Seconds since its last heartbeat: when this is past `stale_after`, its process is
    /// probably gone and will never read the request (abandon it instead).
    pub heartbeat_age_secs: f64,
}

/// Asks execution `id` to stop after its current chunk (see [`JobRepository::request_stop`]).
pub async fn stop(
    repo: &JobRepository,
    id: i64,
    now: NaiveDateTime,
) -> Result<Stopped, OperatorError> {
    match repo.request_stop(id).await? {
        StopRequest::NotFound => Err(OperatorError::NotFound(id)),
        StopRequest::NotRunning(e) => Err(OperatorError::NotRunning {
            id,
            status: e.status,
            verb: "stop",
        }),
        StopRequest::Requested(execution) => Ok(Stopped {
            heartbeat_age_secs: heartbeat_age_secs(&execution, now),
            execution,
            already: false,
        }),
        StopRequest::AlreadyStopping(execution) => Ok(Stopped {
            heartbeat_age_secs: heartbeat_age_secs(&execution, now),
            execution,
            already: true,
        }),
    }
}

/// What a restart runs: execution `id`'s job with that execution's parameters (so the launch
/// finds its instance and resumes it from its checkpoints). Refused when the instance is
/// running or has completed.
pub async fn restart_target(
    repo: &JobRepository,
    id: i64,
) -> Result<(String, BTreeMap<String, String>), OperatorError> {
    let execution = repo
        .execution(id)
        .await?
        .ok_or(OperatorError::NotFound(id))?;
    let instance = repo
        .instance(execution.job_instance_id)
        .await?
        .ok_or(OperatorError::NotFound(id))?;
    // Never a restart with other parameters (another instance): unreadable ones are an error.
    let params: BTreeMap<String, String> =
        serde_json::from_str(&execution.parameters).map_err(|e| {
            DbError::Other(format!(
                "execution {id}'s stored parameters are not a JSON object of strings: {e}"
            ))
        })?;
    if let Some(live) = repo.live_execution(instance.id).await? {
        return Err(OperatorError::Running {
            job: instance.job_name,
            instance: instance.id,
            running: live.id,
            owner: live.owner.unwrap_or_else(|| "?".into()),
        });
    }
    let last = repo
        .executions_of_instance(instance.id)
        .await?
        .into_iter()
        .last()
        .unwrap_or(execution);
    if last.status == BatchStatus::Completed {
        return Err(OperatorError::Completed {
            params: params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            job: instance.job_name,
            instance: instance.id,
            last: last.id,
        });
    }
    Ok((instance.job_name, params))
}

/// Marks a dead execution FAILED (abandoned) so its instance can be restarted: `recover`
/// under Spring Batch's name. Refused while its heartbeat is newer than `stale_after`, unless
/// `force`.
pub async fn abandon(
    repo: &JobRepository,
    id: i64,
    stale_after: Duration,
    force: bool,
    now: NaiveDateTime,
) -> Result<JobExecution, OperatorError> {
    let execution = repo
        .execution(id)
        .await?
        .ok_or(OperatorError::NotFound(id))?;
    if execution.live_instance_id.is_none() {
        return Err(OperatorError::NotRunning {
            id,
            status: execution.status,
            verb: "abandon",
        });
    }
    let stale_before =
        now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    match repo.recover(id, stale_before, force, now).await? {
        Ok(e) => Ok(e),
        Err(_) => {
            // Refused: re-read to say why (it ended meanwhile, or its heartbeat is fresh).
            let now_state = repo
                .execution(id)
                .await?
                .ok_or(OperatorError::NotFound(id))?;
            if now_state.live_instance_id.is_none() {
                Err(OperatorError::NotRunning {
                    id,
                    status: now_state.status,
                    verb: "abandon",
                })
            } else {
                Err(OperatorError::StillAlive {
                    id,
                    age: heartbeat_age_secs(&now_state, now),
                    owner: now_state.owner.unwrap_or_else(|| "?".into()),
                    stale_after,
                })
            }
        }
    }
}
