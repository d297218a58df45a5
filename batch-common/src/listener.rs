//! Listeners at job and step level: notifications, metrics and progress hook in here.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::repository::StepProgress;
use crate::result::{BatchResult, StepResult};

/// Identity of the run a listener hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRunInfo {
    /// Job name.
    pub job_name: String,
    /// Job instance id.
    pub job_instance_id: i64,
    /// Job execution id.
    pub execution_id: i64,
    /// All parameters of the run.
    pub parameters: BTreeMap<String, String>,
}

/// Callbacks of a job run. Every method has an empty default; a listener must not fail the job,
/// so none returns an error (a listener logs its own failures).
#[async_trait]
pub trait JobListener: Send + Sync {
    /// The execution was created and is about to run its steps.
    async fn before_job(&self, _job: &JobRunInfo) {}
    /// The execution ended (any status).
    async fn after_job(&self, _job: &JobRunInfo, _result: &BatchResult) {}
    /// A step is about to start (not called for steps skipped as already completed).
    async fn before_step(&self, _job: &JobRunInfo, _step: &str) {}
    /// A step ended.
    async fn after_step(&self, _job: &JobRunInfo, _step: &StepResult) {}
    /// A chunk was committed; `total` is the step's item count when the reader knows it.
    async fn on_chunk(
        &self,
        _job: &JobRunInfo,
        _step: &str,
        _progress: &StepProgress,
        _total: Option<u64>,
    ) {
    }
    /// A failed step will be retried after the configured interval (`attempt` starts at 1).
    async fn on_step_retry(&self, _job: &JobRunInfo, _step: &str, _attempt: u32, _error: &str) {}
    /// A step failed and has no retries left.
    async fn on_retries_exhausted(&self, _job: &JobRunInfo, _step: &str, _error: &str) {}
    /// A worker of this process claimed, ended, released or lost a partition of `step`.
    async fn on_partition(&self, _job: &JobRunInfo, _step: &str, _event: PartitionEvent) {}
}

/// What happened to a partition in a worker of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionEvent {
    /// Claimed for the first time.
    Claimed,
    /// Claimed again: its previous owner's lease expired, or it was released.
    Reclaimed,
    /// Ran to its end.
    Completed,
    /// Failed (the step fails after the running partitions end).
    Failed,
    /// Released after its current chunk (the worker was stopped); another worker resumes it.
    Released,
    /// Lost: its lease expired and another worker claimed it, its step ended, or its end could
    /// not be recorded (its lease then expires and another worker resumes it).
    Lost,
}

impl PartitionEvent {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionEvent::Claimed => "claimed",
            PartitionEvent::Reclaimed => "reclaimed",
            PartitionEvent::Completed => "completed",
            PartitionEvent::Failed => "failed",
            PartitionEvent::Released => "released",
            PartitionEvent::Lost => "lost",
        }
    }
}

/// The listeners of one launcher.
pub type Listeners = Arc<Vec<Arc<dyn JobListener>>>;
