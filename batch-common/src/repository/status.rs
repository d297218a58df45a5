//! Statuses and exit codes of job and step executions, as stored.

use std::fmt;
use std::str::FromStr;

/// Status of a job or step execution (Spring Batch's `BatchStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    /// Created, not yet running.
    Starting,
    /// Running.
    Started,
    /// Asked to stop; finishing its current chunk.
    Stopping,
    /// Stopped cleanly; restartable.
    Stopped,
    /// Finished successfully.
    Completed,
    /// Failed; restartable.
    Failed,
}

impl BatchStatus {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Starting => "STARTING",
            BatchStatus::Started => "STARTED",
            BatchStatus::Stopping => "STOPPING",
            BatchStatus::Stopped => "STOPPED",
            BatchStatus::Completed => "COMPLETED",
            BatchStatus::Failed => "FAILED",
        }
    }

    /// True while an execution with this status may still be running somewhere.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            BatchStatus::Starting | BatchStatus::Started | BatchStatus::Stopping
        )
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BatchStatus {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, Self::Err> {
        Ok(match v {
            "STARTING" => BatchStatus::Starting,
            "STARTED" => BatchStatus::Started,
            "STOPPING" => BatchStatus::Stopping,
            "STOPPED" => BatchStatus::Stopped,
            "COMPLETED" => BatchStatus::Completed,
            "FAILED" => BatchStatus::Failed,
            other => return Err(format!("unknown batch status `{other}`")),
        })
    }
}

/// The status of a stored execution row (unknown values read as FAILED).
pub fn status_of(stored: &str) -> BatchStatus {
    stored.parse().unwrap_or(BatchStatus::Failed)
}

/// Exit codes stored with executions (Spring Batch's `ExitStatus` codes plus ours).
pub mod exit_codes {
    /// Finished successfully.
    pub const COMPLETED: &str = "COMPLETED";
    /// Finished, but some items failed and were recorded.
    pub const COMPLETED_WITH_FAILURES: &str = "COMPLETED_WITH_FAILURES";
    /// Failed.
    pub const FAILED: &str = "FAILED";
    /// Stopped on request.
    pub const STOPPED: &str = "STOPPED";
    /// Still running.
    pub const EXECUTING: &str = "EXECUTING";
    /// The step was skipped because it completed in an earlier execution.
    pub const NOOP: &str = "NOOP";
}
