//! The notification model: what happened to a run, as a [`Notification`] built from the
//! listener events. It knows nothing of Slack.

use std::fmt;
use std::time::Duration;

use crate::listener::JobRunInfo;
use crate::result::{BatchResult, ExitCode, StepResult};

/// What happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotificationKind {
    /// The execution started.
    Started,
    /// The execution completed without item failures.
    Succeeded,
    /// The execution completed, but some items failed (exit 3).
    CompletedWithFailures,
    /// The execution failed (exit 1).
    Failed,
    /// The execution was stopped (e.g. SIGTERM); a new launch resumes it.
    Stopped,
    /// A step failed and has no step retries left.
    RetriesExhausted,
}

impl NotificationKind {
    /// The kind as `SCREAMING_SNAKE_CASE`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Started => "STARTED",
            NotificationKind::Succeeded => "SUCCEEDED",
            NotificationKind::CompletedWithFailures => "COMPLETED_WITH_FAILURES",
            NotificationKind::Failed => "FAILED",
            NotificationKind::Stopped => "STOPPED",
            NotificationKind::RetriesExhausted => "RETRIES_EXHAUSTED",
        }
    }

    /// The Slack emoji shortcode shown before the title.
    pub(super) fn emoji(self) -> &'static str {
        match self {
            NotificationKind::Started => ":arrow_forward:",
            NotificationKind::Succeeded => ":white_check_mark:",
            NotificationKind::CompletedWithFailures => ":warning:",
            NotificationKind::Failed => ":x:",
            NotificationKind::Stopped => ":double_vertical_bar:",
            NotificationKind::RetriesExhausted => ":rotating_light:",
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One labelled value of a notification (plain text; a notifier escapes it for its medium).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationField {
    /// The label, e.g. `Duration` or a step name.
    pub name: String,
    /// The value; may span lines.
    pub value: String,
}

/// A message about one run, independent of where it is sent. All text is plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// What happened.
    pub kind: NotificationKind,
    /// The job.
    pub job_name: String,
    /// The execution.
    pub execution_id: i64,
    /// One line, e.g. `countingJob completed in 1s 234ms (execution 7)`.
    pub title: String,
    /// Details, e.g. the error of a failed run.
    pub text: Option<String>,
    /// Labelled values: duration, one per step with its counts, parameters, ...
    pub fields: Vec<NotificationField>,
    /// The execution's page (the dashboard's), when `[server] public_url` is set.
    pub link: Option<String>,
}

/// The field labels the builders use.
pub mod labels {
    /// Wall time of the execution.
    pub const DURATION: &str = "Duration";
    /// The run's parameters, `key=value` separated by spaces.
    pub const PARAMETERS: &str = "Parameters";
    /// Item failures recorded by the execution.
    pub const ITEM_FAILURES: &str = "Item failures";
    /// The step whose retries are exhausted.
    pub const STEP: &str = "Step";
    /// Attempts made by that step, the first included.
    pub const ATTEMPTS: &str = "Attempts";
}

impl Notification {
    /// The value of the field labelled `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }

    fn push(&mut self, name: &str, value: impl Into<String>) {
        self.fields.push(NotificationField {
            name: name.to_owned(),
            value: value.into(),
        });
    }

    /// `before_job`: the execution started.
    pub fn started(job: &JobRunInfo) -> Notification {
        let mut n = Notification {
            kind: NotificationKind::Started,
            job_name: job.job_name.clone(),
            execution_id: job.execution_id,
            title: format!("{} started (execution {})", job.job_name, job.execution_id),
            text: None,
            fields: Vec::new(),
            link: None,
        };
        n.push(labels::PARAMETERS, render_parameters(&job.parameters));
        n
    }

    /// `after_job`: the summary of a finished execution — status, duration, and per step the
    /// status, read / written / skipped counts, domain counters and wall time. `None` for a
    /// result that ran nothing (NOOP, ALREADY_RUNNING: the launcher does not report those to
    /// listeners, and they are not news).
    pub fn finished(job: &JobRunInfo, result: &BatchResult) -> Option<Notification> {
        let duration = format_ms(result.duration_ms);
        let id = job.execution_id;
        let name = &job.job_name;
        let (kind, title) = match (result.status.as_str(), result.exit_code) {
            ("NOOP" | "ALREADY_RUNNING", _) | (_, ExitCode::AlreadyRunning) => return None,
            ("COMPLETED", ExitCode::Completed) => (
                NotificationKind::Succeeded,
                format!("{name} completed in {duration} (execution {id})"),
            ),
            ("COMPLETED", ExitCode::CompletedWithFailures) => (
                NotificationKind::CompletedWithFailures,
                format!(
                    "{name} completed with {} item failure{} in {duration} (execution {id})",
                    result.item_failures,
                    if result.item_failures == 1 { "" } else { "s" }
                ),
            ),
            ("STOPPED", _) => (
                NotificationKind::Stopped,
                format!("{name} stopped after {duration} (execution {id})"),
            ),
            (status, _) => (
                NotificationKind::Failed,
                format!("{name} {status} after {duration} (execution {id})"),
            ),
        };
        let text = match kind {
            NotificationKind::CompletedWithFailures => Some(format!(
                "{} item(s) failed and were recorded; a new launch with the same parameters \
                 retries only those items.",
                result.item_failures
            )),
            _ => result.message.clone(),
        };
        let mut n = Notification {
            kind,
            job_name: name.clone(),
            execution_id: id,
            title,
            text,
            fields: Vec::new(),
            link: None,
        };
        n.push(labels::DURATION, duration);
        if result.item_failures > 0 {
            n.push(labels::ITEM_FAILURES, result.item_failures.to_string());
        }
        for step in &result.steps {
            n.push(&step.name, render_step(step));
        }
        n.push(labels::PARAMETERS, render_parameters(&job.parameters));
        Some(n)
    }

    /// `on_retries_exhausted`: `step` failed `attempts` times (the first included) with `error`
    /// last, and has no retries left.
    pub fn retries_exhausted(
        job: &JobRunInfo,
        step: &str,
        attempts: u32,
        error: &str,
    ) -> Notification {
        let mut n = Notification {
            kind: NotificationKind::RetriesExhausted,
            job_name: job.job_name.clone(),
            execution_id: job.execution_id,
            title: format!(
                "{}: step {step} failed after {attempts} attempt{}, no retries left (execution {})",
                job.job_name,
                if attempts == 1 { "" } else { "s" },
                job.execution_id
            ),
            text: Some(error.to_owned()),
            fields: Vec::new(),
            link: None,
        };
        n.push(labels::STEP, step);
        n.push(labels::ATTEMPTS, attempts.to_string());
        n.push(labels::PARAMETERS, render_parameters(&job.parameters));
        n
    }
}

fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

pub(super) fn render_parameters(parameters: &std::collections::BTreeMap<String, String>) -> String {
    if parameters.is_empty() {
        return "(none)".to_owned();
    }
    parameters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `COMPLETED · read 30 · written 28 · skipped 2 · 1s 20ms`, then the domain counters
/// (`created=28 unchanged=0`) on a second line. A step skipped as completed earlier shows why.
fn render_step(s: &StepResult) -> String {
    let ran = s.counts.read_count != 0
        || s.counts.write_count != 0
        || s.counts.commit_count != 0
        || s.duration_ms != 0;
    if !ran && let Some(m) = &s.message {
        return format!("{} · {m}", s.status);
    }
    let mut line = format!(
        "{} · read {} · written {} · skipped {}",
        s.status, s.counts.read_count, s.counts.write_count, s.counts.skip_count
    );
    if s.counts.filter_count > 0 {
        line.push_str(&format!(" · filtered {}", s.counts.filter_count));
    }
    if s.counts.retry_count > 0 {
        line.push_str(&format!(" · retries {}", s.counts.retry_count));
    }
    line.push_str(&format!(" · {}", format_ms(s.duration_ms)));
    if !s.counts.counters.is_empty() {
        let counters: Vec<String> = s
            .counts
            .counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line.push('\n');
        line.push_str(&counters.join(" "));
    }
    line
}
