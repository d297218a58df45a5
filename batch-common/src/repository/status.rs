//! Statuses and exit codes of job and step executions, as stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Status of a job or step execution (Spring Batch's `BatchStatus`). Stored, printed and
/// serialised as the upper-case names (`COMPLETED`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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
    /// A stored value this version does not know (written by another version or by hand); not
    /// live, and restartable like a failure.
    Unknown,
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
            BatchStatus::Unknown => "UNKNOWN",
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
            "UNKNOWN" => BatchStatus::Unknown,
            other => return Err(format!("unknown batch status `{other}`")),
        })
    }
}

/// How a stored status column is read: a value this version does not know reads as
/// [`BatchStatus::Unknown`] instead of failing the whole query.
impl From<String> for BatchStatus {
    fn from(stored: String) -> Self {
        stored.parse().unwrap_or(BatchStatus::Unknown)
    }
}

impl PartialEq<&str> for BatchStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a launch ran nothing (the status of its [`BatchResult`](crate::BatchResult)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotRun {
    /// The instance already completed; nothing to do (exit 0).
    Noop,
    /// The instance is running elsewhere (exit 4).
    AlreadyRunning,
    /// This process joined the live execution of the instance as a worker and worked its
    /// partitions (exit 0, or 1 if a partition it ran failed); the execution is the other's.
    Joined,
}

/// The status of one launch: its execution's [`BatchStatus`], or why none ran. Serialises as the
/// bare upper-case name either way (`COMPLETED`, `NOOP`, `ALREADY_RUNNING`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunStatus {
    /// An execution ran (or was refused after it was created) and ended with this status.
    Ran(BatchStatus),
    /// No execution ran.
    NotRun(NotRun),
}

impl RunStatus {
    /// The printed and serialised value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ran(s) => s.as_str(),
            RunStatus::NotRun(NotRun::Noop) => "NOOP",
            RunStatus::NotRun(NotRun::AlreadyRunning) => "ALREADY_RUNNING",
            RunStatus::NotRun(NotRun::Joined) => "JOINED",
        }
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, Self::Err> {
        Ok(match v {
            "NOOP" => RunStatus::NotRun(NotRun::Noop),
            "ALREADY_RUNNING" => RunStatus::NotRun(NotRun::AlreadyRunning),
            "JOINED" => RunStatus::NotRun(NotRun::Joined),
            other => RunStatus::Ran(other.parse()?),
        })
    }
}

impl From<BatchStatus> for RunStatus {
    fn from(s: BatchStatus) -> Self {
        RunStatus::Ran(s)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RunStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<BatchStatus> for RunStatus {
    fn eq(&self, other: &BatchStatus) -> bool {
        *self == RunStatus::Ran(*other)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialise_to_the_stored_strings() {
        for s in [
            BatchStatus::Starting,
            BatchStatus::Started,
            BatchStatus::Stopping,
            BatchStatus::Stopped,
            BatchStatus::Completed,
            BatchStatus::Failed,
            BatchStatus::Unknown,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.as_str().parse::<BatchStatus>(), Ok(s));
            let run = RunStatus::from(s);
            assert_eq!(serde_json::to_string(&run).unwrap(), json);
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), run);
        }
        for (run, text) in [
            (RunStatus::NotRun(NotRun::Noop), "NOOP"),
            (RunStatus::NotRun(NotRun::AlreadyRunning), "ALREADY_RUNNING"),
        ] {
            assert_eq!(serde_json::to_string(&run).unwrap(), format!("\"{text}\""));
            assert_eq!(run.to_string(), text);
            assert_eq!(text.parse::<RunStatus>(), Ok(run));
            assert_eq!(
                serde_json::from_str::<RunStatus>(&format!("\"{text}\"")).unwrap(),
                run
            );
        }
        assert_eq!(
            BatchStatus::from("ABANDONED".to_owned()),
            BatchStatus::Unknown
        );
    }
}
