//! `BatchResult`: the JSON summary of one run, written by `--result-file` and returned by the API.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repository::{BatchStatus, RunStatus, StepCounts};

/// The process exit codes of the launcher (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExitCode {
    /// 0: completed, or nothing to do.
    Completed,
    /// 1: failed.
    Failed,
    /// 2: usage, configuration or parameter error; nothing was run.
    Usage,
    /// 3: completed, but some items failed.
    CompletedWithFailures,
    /// 4: refused because the same job instance is already running.
    AlreadyRunning,
}

impl ExitCode {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Completed => 0,
            ExitCode::Failed => 1,
            ExitCode::Usage => 2,
            ExitCode::CompletedWithFailures => 3,
            ExitCode::AlreadyRunning => 4,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

/// Counts and outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Step name.
    pub name: String,
    /// Final status.
    pub status: BatchStatus,
    /// Items read, written, ..., and the domain counters (fields of this object in JSON).
    #[serde(flatten)]
    pub counts: StepCounts,
    /// Wall time.
    pub duration_ms: u64,
    /// Error or summary, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl StepResult {
    /// A step that has not ended yet: no counts, no time.
    pub fn new(name: impl Into<String>, status: BatchStatus) -> Self {
        StepResult {
            name: name.into(),
            status,
            counts: StepCounts::default(),
            duration_ms: 0,
            message: None,
        }
    }
}

/// The summary of one launch of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The job.
    pub job_name: String,
    /// The job instance, if one was created or found.
    pub job_instance_id: Option<i64>,
    /// The execution, if one was started.
    pub execution_id: Option<i64>,
    /// The parameters of the run.
    pub parameters: BTreeMap<String, String>,
    /// Final status of the execution (COMPLETED, FAILED, ...), or why nothing ran (NOOP,
    /// ALREADY_RUNNING).
    pub status: RunStatus,
    /// The launcher's exit code.
    pub exit_code: ExitCode,
    /// Error or summary text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Start (UTC).
    pub started_at: Option<DateTime<Utc>>,
    /// End (UTC).
    pub ended_at: Option<DateTime<Utc>>,
    /// Wall time.
    pub duration_ms: u64,
    /// One entry per step that ran in this launch.
    pub steps: Vec<StepResult>,
    /// Item failures recorded by this execution.
    pub item_failures: i64,
}

impl BatchResult {
    /// The result JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("BatchResult serializes")
    }
}

impl fmt::Display for BatchResult {
    /// A short human summary: one line for the job, one per step.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (exit {}) in {} ms",
            self.job_name,
            self.status,
            self.exit_code.code(),
            self.duration_ms
        )?;
        if let Some(id) = self.execution_id {
            write!(f, ", execution {id}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        for s in &self.steps {
            write!(
                f,
                "\n  {}: {} read={} written={} skipped={} commits={} retries={} {} ms",
                s.name,
                s.status,
                s.counts.read_count,
                s.counts.write_count,
                s.counts.skip_count,
                s.counts.commit_count,
                s.counts.retry_count,
                s.duration_ms
            )?;
            for (k, v) in s.counts.counters.iter() {
                write!(f, " {k}={v}")?;
            }
        }
        if self.item_failures > 0 {
            write!(f, "\n  item failures: {}", self.item_failures)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_the_spec() {
        let codes: Vec<u8> = [
            ExitCode::Completed,
            ExitCode::Failed,
            ExitCode::Usage,
            ExitCode::CompletedWithFailures,
            ExitCode::AlreadyRunning,
        ]
        .iter()
        .map(|c| c.code())
        .collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn result_round_trips_through_json() {
        let r = BatchResult {
            job_name: "exampleSyncJob".into(),
            job_instance_id: Some(1),
            execution_id: Some(7),
            parameters: [("date".to_string(), "2026-11-20".to_string())].into(),
            status: BatchStatus::Completed.into(),
            exit_code: ExitCode::CompletedWithFailures,
            message: None,
            started_at: None,
            ended_at: None,
            duration_ms: 12,
            steps: vec![StepResult {
                counts: StepCounts {
                    read_count: 10,
                    counters: [("created".to_string(), 10)].into(),
                    ..StepCounts::default()
                },
                ..StepResult::new("syncExampleStep", BatchStatus::Completed)
            }],
            item_failures: 2,
        };
        let json = r.to_json();
        assert!(
            json.contains("\"exit_code\": \"COMPLETED_WITH_FAILURES\""),
            "{json}"
        );
        // The counts are fields of the step object, as before StepCounts existed.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["status"], "COMPLETED");
        assert_eq!(value["steps"][0]["read_count"], 10);
        assert_eq!(value["steps"][0]["counters"]["created"], 10);
        assert_eq!(value["steps"][0]["status"], "COMPLETED");
        assert_eq!(serde_json::from_str::<BatchResult>(&json).unwrap(), r);
        let text = r.to_string();
        assert!(
            text.contains("syncExampleStep: COMPLETED read=10"),
            "{text}"
        );
        assert!(text.contains("created=10"), "{text}");
    }
}
