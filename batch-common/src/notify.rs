//! Job notifications: listener events become [`Notification`]s, which a [`Notifier`] delivers.
//!
//! - [`Notification`]: what happened to a run (a [`NotificationKind`], the job, the execution, a
//!   title, an optional text and labelled fields), built from the listener events by
//!   [`Notification::started`], [`Notification::finished`] and
//!   [`Notification::retries_exhausted`]. It knows nothing of Slack.
//! - [`Notifier`]: where notifications go (mockall `MockNotifier` under the `mock` feature).
//!   [`SlackNotifier`] posts them to a Slack incoming webhook.
//! - [`NotifyListener`]: the [`JobListener`] that sends them. A notifier error is logged (warn) and
//!   the run goes on: a notification never fails a run or changes its result.
//! - [`listener_from_settings`]: the listener `[notify]` asks for, if any.
//!
//! Messages are sent inline (the listener awaits the send) so the last one is out before a
//! `run` process exits; [`SlackNotifier`] bounds each send by `[notify] timeout`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::config::NotifySettings;
use crate::listener::{JobListener, JobRunInfo};
use crate::result::{BatchResult, ExitCode, StepResult};
use crate::secret::Secret;

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
    fn emoji(self) -> &'static str {
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

fn render_parameters(parameters: &std::collections::BTreeMap<String, String>) -> String {
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
    let ran = s.read_count != 0 || s.write_count != 0 || s.commit_count != 0 || s.duration_ms != 0;
    if !ran && let Some(m) = &s.message {
        return format!("{} · {m}", s.status);
    }
    let mut line = format!(
        "{} · read {} · written {} · skipped {}",
        s.status, s.read_count, s.write_count, s.skip_count
    );
    if s.filter_count > 0 {
        line.push_str(&format!(" · filtered {}", s.filter_count));
    }
    if s.retry_count > 0 {
        line.push_str(&format!(" · retries {}", s.retry_count));
    }
    line.push_str(&format!(" · {}", format_ms(s.duration_ms)));
    if !s.counters.is_empty() {
        let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push('\n');
        line.push_str(&counters.join(" "));
    }
    line
}

/// Why a notification was not delivered. Never carries the webhook URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the HTTP client: {0}")]
    Client(String),
    /// No complete answer within the timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The webhook could not be reached, or the exchange broke off.
    #[error("{0}")]
    Transport(String),
    /// The webhook answered with a status other than 2xx.
    #[error("the webhook answered HTTP {status}: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// At most 200 characters of the answer's body.
        body: String,
    },
}

/// Where notifications go. A `send` should bound its own time (a notifier that hangs delays the
/// run, since listeners are awaited).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one notification.
    async fn send(&self, notification: &Notification) -> Result<(), NotifyError>;
}

/// Posts notifications to a Slack incoming webhook: a `text` fallback (what push notifications
/// show) and `blocks` — the title, the text (as a code block), the fields two columns wide and a
/// context line with the job, execution and kind.
///
/// The webhook URL is a secret: it is never logged and never part of an error or `Debug`.
pub struct SlackNotifier {
    client: reqwest::Client,
    url: Secret<url::Url>,
    timeout: Duration,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SlackNotifier {
    /// A notifier posting to `webhook_url`, each message bounded by `timeout` (connect
    /// included). Redirects are not followed.
    pub fn new(webhook_url: Secret<url::Url>, timeout: Duration) -> Result<Self, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("batch-launcher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(error_chain(&e.without_url())))?;
        Ok(SlackNotifier {
            client,
            url: webhook_url,
            timeout,
        })
    }

    /// Removes the URL (and its path, the secret part of a Slack webhook) from a message.
    fn scrub(&self, message: &str) -> String {
        let url = self.url.expose();
        let mut out = message.replace(url.as_str(), "[REDACTED]");
        if url.path().len() > 1 {
            out = out.replace(url.path(), "/[REDACTED]");
        }
        out
    }

    fn transport_error(&self, e: reqwest::Error) -> NotifyError {
        if e.is_timeout() {
            return NotifyError::Timeout(self.timeout);
        }
        NotifyError::Transport(self.scrub(&error_chain(&e.without_url())))
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[async_trait]
impl Notifier for SlackNotifier {
    async fn send(&self, notification: &Notification) -> Result<(), NotifyError> {
        let response = self
            .client
            .post(self.url.expose().clone())
            .json(&slack_payload(notification))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = match response.text().await {
            Ok(text) => truncate(text.trim(), 200),
            Err(e) if e.is_timeout() => return Err(NotifyError::Timeout(self.timeout)),
            Err(_) => "(unreadable body)".to_owned(),
        };
        Err(NotifyError::Status {
            status: status.as_u16(),
            body: self.scrub(&body),
        })
    }
}

/// Slack's limits: 3000 characters of section text, 2000 per field, 10 fields per section.
const SECTION_TEXT_MAX: usize = 2900;
const FIELD_TEXT_MAX: usize = 1900;
const FIELDS_PER_SECTION: usize = 10;
/// Fields beyond this are dropped (Slack allows 50 blocks per message).
const FIELDS_MAX: usize = 40;

/// At most `max` characters, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Escapes the three characters Slack's `mrkdwn` gives meaning to.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The incoming-webhook JSON of a notification.
fn slack_payload(n: &Notification) -> Value {
    let emoji = n.kind.emoji();
    let mut fallback = format!("{emoji} {}", escape(&n.title));
    if let Some(text) = &n.text {
        fallback.push('\n');
        fallback.push_str(&escape(&truncate(text, 300)));
    }
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("{emoji} *{}*", escape(&truncate(&n.title, 250)))},
    })];
    if let Some(text) = n.text.as_deref().filter(|t| !t.trim().is_empty()) {
        let body = escape(&truncate(text.trim(), SECTION_TEXT_MAX - 10)).replace("```", "'''");
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("```{body}```")},
        }));
    }
    let fields: Vec<Value> = n
        .fields
        .iter()
        .take(FIELDS_MAX)
        .map(|f| {
            let text = format!("*{}*\n{}", escape(&f.name), escape(&f.value));
            json!({"type": "mrkdwn", "text": truncate(&text, FIELD_TEXT_MAX)})
        })
        .collect();
    for chunk in fields.chunks(FIELDS_PER_SECTION) {
        blocks.push(json!({"type": "section", "fields": chunk}));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!(
                "job `{}` · execution {} · {}",
                escape(&n.job_name),
                n.execution_id,
                n.kind
            ),
        }],
    }));
    json!({ "text": fallback, "blocks": blocks })
}

/// The [`JobListener`] that turns job events into notifications: start (optional), success
/// (optional), completion with item failures, failure, stop, and exhausted step retries. A
/// notifier error is logged as a warning; it never fails the run or changes its result.
pub struct NotifyListener {
    notifier: Arc<dyn Notifier>,
    on_start: bool,
    on_success: bool,
    /// Last step-retry attempt per (execution, step), to count attempts when retries run out.
    retries: Mutex<HashMap<(i64, String), u32>>,
}

impl fmt::Debug for NotifyListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyListener")
            .field("on_start", &self.on_start)
            .field("on_success", &self.on_success)
            .finish_non_exhaustive()
    }
}

impl NotifyListener {
    /// A listener sending every kind of notification to `notifier`.
    pub fn new(notifier: Arc<dyn Notifier>) -> Self {
        NotifyListener {
            notifier,
            on_start: true,
            on_success: true,
            retries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to send [`NotificationKind::Started`] (`[notify] on_start`).
    pub fn send_on_start(mut self, yes: bool) -> Self {
        self.on_start = yes;
        self
    }

    /// Whether to send [`NotificationKind::Succeeded`] (`[notify] on_success`).
    pub fn send_on_success(mut self, yes: bool) -> Self {
        self.on_success = yes;
        self
    }

    fn retries(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String), u32>> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends, and logs a failure instead of returning it. The launcher calls listeners inside the
    /// run's span, which carries `job.name` and `execution.id` as fields.
    async fn deliver(&self, n: Notification) {
        match self.notifier.send(&n).await {
            Ok(()) => tracing::debug!(
                notification = %n.kind,
                "notification {} sent for {} execution {}",
                n.kind,
                n.job_name,
                n.execution_id
            ),
            Err(e) => tracing::warn!(
                notification = %n.kind,
                error = %e,
                "notification {} for {} execution {} not sent; the run is not affected",
                n.kind,
                n.job_name,
                n.execution_id
            ),
        }
    }
}

#[async_trait]
impl JobListener for NotifyListener {
    async fn before_job(&self, job: &JobRunInfo) {
        if self.on_start {
            self.deliver(Notification::started(job)).await;
        }
    }

    async fn after_job(&self, job: &JobRunInfo, result: &BatchResult) {
        self.retries()
            .retain(|(execution, _), _| *execution != job.execution_id);
        let Some(n) = Notification::finished(job, result) else {
            return;
        };
        if n.kind == NotificationKind::Succeeded && !self.on_success {
            return;
        }
        self.deliver(n).await;
    }

    async fn on_step_retry(&self, job: &JobRunInfo, step: &str, attempt: u32, _error: &str) {
        self.retries()
            .insert((job.execution_id, step.to_owned()), attempt);
    }

    async fn on_retries_exhausted(&self, job: &JobRunInfo, step: &str, error: &str) {
        let retried = self
            .retries()
            .remove(&(job.execution_id, step.to_owned()))
            .unwrap_or(0);
        self.deliver(Notification::retries_exhausted(
            job,
            step,
            retried + 1,
            error,
        ))
        .await;
    }
}

/// The notification listener `[notify]` asks for: `Ok(None)` when no `slack_webhook_url` is set.
/// An error means the HTTP client could not be built; the caller decides whether to run without
/// notifications.
pub fn listener_from_settings(
    settings: &NotifySettings,
) -> Result<Option<Arc<dyn JobListener>>, NotifyError> {
    let Some(url) = &settings.slack_webhook_url else {
        return Ok(None);
    };
    let slack = SlackNotifier::new(url.clone(), settings.timeout)?;
    let listener = NotifyListener::new(Arc::new(slack))
        .send_on_start(settings.on_start)
        .send_on_success(settings.on_success);
    Ok(Some(Arc::new(listener)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::config::BatchProperties;

    fn run(execution_id: i64) -> JobRunInfo {
        JobRunInfo {
            job_name: "pointBalanceSyncJob".into(),
            job_instance_id: 3,
            execution_id,
            parameters: [("date".to_string(), "2026-11-20".to_string())].into(),
        }
    }

    fn step(
        name: &str,
        read: i64,
        written: i64,
        skipped: i64,
        counters: &[(&str, i64)],
    ) -> StepResult {
        StepResult {
            name: name.into(),
            status: "COMPLETED".into(),
            read_count: read,
            write_count: written,
            skip_count: skipped,
            commit_count: 1,
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            duration_ms: 1_500,
            ..StepResult::default()
        }
    }

    fn result(
        status: &str,
        exit_code: ExitCode,
        message: Option<&str>,
        steps: Vec<StepResult>,
    ) -> BatchResult {
        BatchResult {
            job_name: "pointBalanceSyncJob".into(),
            job_instance_id: Some(3),
            execution_id: Some(7),
            parameters: [("date".to_string(), "2026-11-20".to_string())].into(),
            status: status.into(),
            exit_code,
            message: message.map(str::to_owned),
            started_at: None,
            ended_at: None,
            duration_ms: 61_234,
            item_failures: steps.iter().map(|s| s.skip_count).sum(),
            steps,
        }
    }

    /// A mock that records every notification and answers `answer`.
    fn recording(
        answer: Result<(), NotifyError>,
    ) -> (MockNotifier, Arc<StdMutex<Vec<Notification>>>) {
        let sent = Arc::new(StdMutex::new(Vec::new()));
        let seen = sent.clone();
        let mut mock = MockNotifier::new();
        mock.expect_send().returning(move |n| {
            seen.lock().unwrap().push(n.clone());
            answer.clone()
        });
        (mock, sent)
    }

    fn only(sent: &StdMutex<Vec<Notification>>) -> Notification {
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 1, "{sent:#?}");
        sent[0].clone()
    }

    #[tokio::test]
    async fn start_message_names_the_job_execution_and_parameters() {
        let mut mock = MockNotifier::new();
        mock.expect_send()
            .withf(|n| {
                n.kind == NotificationKind::Started
                    && n.job_name == "pointBalanceSyncJob"
                    && n.execution_id == 7
                    && n.title == "pointBalanceSyncJob started (execution 7)"
                    && n.field(labels::PARAMETERS) == Some("date=2026-11-20")
            })
            .times(1)
            .returning(|_| Ok(()));
        NotifyListener::new(Arc::new(mock))
            .before_job(&run(7))
            .await;
    }

    #[tokio::test]
    async fn success_message_has_the_counts_of_every_step_and_the_duration() {
        let (mock, sent) = recording(Ok(()));
        let listener = NotifyListener::new(Arc::new(mock));
        let r = result(
            "COMPLETED",
            ExitCode::Completed,
            None,
            vec![
                step(
                    "syncPointBalanceStep",
                    300,
                    300,
                    0,
                    &[
                        ("created", 290),
                        ("corrected", 4),
                        ("unchanged", 5),
                        ("skipped_newer", 1),
                    ],
                ),
                StepResult {
                    name: "warmCacheStep".into(),
                    status: "COMPLETED".into(),
                    message: Some("skipped: completed in execution 5".into()),
                    ..StepResult::default()
                },
            ],
        );
        listener.after_job(&run(7), &r).await;
        let n = only(&sent);
        assert_eq!(n.kind, NotificationKind::Succeeded);
        assert_eq!(
            n.title,
            "pointBalanceSyncJob completed in 1m 1s 234ms (execution 7)"
        );
        assert_eq!(n.text, None);
        assert_eq!(n.field(labels::DURATION), Some("1m 1s 234ms"));
        assert_eq!(
            n.field("syncPointBalanceStep"),
            Some(
                "COMPLETED · read 300 · written 300 · skipped 0 · 1s 500ms\n\
                 corrected=4 created=290 skipped_newer=1 unchanged=5"
            )
        );
        assert_eq!(
            n.field("warmCacheStep"),
            Some("COMPLETED · skipped: completed in execution 5")
        );
        assert_eq!(n.field(labels::ITEM_FAILURES), None);
        assert_eq!(n.field(labels::PARAMETERS), Some("date=2026-11-20"));
    }

    #[tokio::test]
    async fn completed_with_failures_message_counts_the_item_failures() {
        let (mock, sent) = recording(Ok(()));
        let listener = NotifyListener::new(Arc::new(mock));
        let r = result(
            "COMPLETED",
            ExitCode::CompletedWithFailures,
            None,
            vec![step("refreshAssetStep", 30, 27, 3, &[("created", 27)])],
        );
        listener.after_job(&run(7), &r).await;
        let n = only(&sent);
        assert_eq!(n.kind, NotificationKind::CompletedWithFailures);
        assert!(
            n.title.contains("completed with 3 item failures"),
            "{}",
            n.title
        );
        assert_eq!(n.field(labels::ITEM_FAILURES), Some("3"));
        assert!(
            n.text
                .as_deref()
                .unwrap()
                .contains("retries only those items"),
            "{n:?}"
        );
        assert!(
            n.field("refreshAssetStep")
                .unwrap()
                .contains("read 30 · written 27 · skipped 3"),
            "{n:?}"
        );
    }

    #[tokio::test]
    async fn failure_and_stop_messages_carry_the_error() {
        let (mock, sent) = recording(Ok(()));
        let listener = NotifyListener::new(Arc::new(mock));
        let mut failed_step = step("syncPointBalanceStep", 100, 100, 0, &[]);
        failed_step.status = "FAILED".into();
        let failed = result(
            "FAILED",
            ExitCode::Failed,
            Some("syncPointBalanceStep failed: redis: connection refused"),
            vec![failed_step],
        );
        listener.after_job(&run(7), &failed).await;
        let stopped = result(
            "STOPPED",
            ExitCode::Failed,
            Some("stopped during syncPointBalanceStep"),
            vec![],
        );
        listener.after_job(&run(8), &stopped).await;

        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2, "{sent:#?}");
        let f = &sent[0];
        assert_eq!(f.kind, NotificationKind::Failed);
        assert_eq!(
            f.title,
            "pointBalanceSyncJob FAILED after 1m 1s 234ms (execution 7)"
        );
        assert_eq!(
            f.text.as_deref(),
            Some("syncPointBalanceStep failed: redis: connection refused")
        );
        assert!(
            f.field("syncPointBalanceStep")
                .unwrap()
                .starts_with("FAILED · read 100")
        );
        let s = &sent[1];
        assert_eq!((s.kind, s.execution_id), (NotificationKind::Stopped, 8));
        assert_eq!(
            s.text.as_deref(),
            Some("stopped during syncPointBalanceStep")
        );
    }

    #[tokio::test]
    async fn retries_exhausted_message_counts_the_attempts_of_that_execution() {
        let (mock, sent) = recording(Ok(()));
        let listener = NotifyListener::new(Arc::new(mock));
        listener
            .on_step_retry(&run(7), "syncPointBalanceStep", 1, "boom 1")
            .await;
        listener
            .on_step_retry(&run(7), "syncPointBalanceStep", 2, "boom 2")
            .await;
        // Another execution's retries do not count.
        listener
            .on_step_retry(&run(8), "syncPointBalanceStep", 1, "other")
            .await;
        listener
            .on_retries_exhausted(&run(7), "syncPointBalanceStep", "boom 3")
            .await;
        let n = only(&sent);
        assert_eq!(n.kind, NotificationKind::RetriesExhausted);
        assert_eq!(
            n.title,
            "pointBalanceSyncJob: step syncPointBalanceStep failed after 3 attempts, no retries left (execution 7)"
        );
        assert_eq!(n.text.as_deref(), Some("boom 3"));
        assert_eq!(n.field(labels::STEP), Some("syncPointBalanceStep"));
        assert_eq!(n.field(labels::ATTEMPTS), Some("3"));

        // Without retries configured, the first failure is the last.
        listener
            .after_job(
                &run(8),
                &result("FAILED", ExitCode::Failed, Some("x"), vec![]),
            )
            .await;
        listener
            .on_retries_exhausted(&run(9), "otherStep", "boom")
            .await;
        let sent = sent.lock().unwrap();
        assert_eq!(sent.last().unwrap().field(labels::ATTEMPTS), Some("1"));
        let left = listener.retries().len();
        assert_eq!(
            left, 0,
            "the retry counts of finished executions are dropped"
        );
    }

    #[tokio::test]
    async fn start_and_success_messages_can_be_switched_off() {
        let mut mock = MockNotifier::new();
        mock.expect_send()
            .withf(|n| n.kind == NotificationKind::Failed)
            .times(1)
            .returning(|_| Ok(()));
        let listener = NotifyListener::new(Arc::new(mock))
            .send_on_start(false)
            .send_on_success(false);
        listener.before_job(&run(7)).await;
        listener
            .after_job(
                &run(7),
                &result("COMPLETED", ExitCode::Completed, None, vec![]),
            )
            .await;
        listener
            .after_job(
                &run(8),
                &result("FAILED", ExitCode::Failed, Some("boom"), vec![]),
            )
            .await;
    }

    #[tokio::test]
    async fn runs_that_ran_nothing_send_nothing() {
        let mut mock = MockNotifier::new();
        mock.expect_send().never();
        let listener = NotifyListener::new(Arc::new(mock));
        listener
            .after_job(
                &run(7),
                &result("NOOP", ExitCode::Completed, Some("nothing to do"), vec![]),
            )
            .await;
        listener
            .after_job(
                &run(7),
                &result(
                    "ALREADY_RUNNING",
                    ExitCode::AlreadyRunning,
                    Some("refused"),
                    vec![],
                ),
            )
            .await;
    }

    /// A `MakeWriter` collecting log output.
    #[derive(Clone, Default)]
    struct Logs(Arc<StdMutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_notifier_is_logged_and_every_event_still_tries() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let (mock, sent) = recording(Err(NotifyError::Status {
            status: 500,
            body: "no_service".into(),
        }));
        let listener = NotifyListener::new(Arc::new(mock));
        listener.before_job(&run(7)).await;
        listener
            .on_retries_exhausted(&run(7), "syncPointBalanceStep", "boom")
            .await;
        listener
            .after_job(
                &run(7),
                &result("FAILED", ExitCode::Failed, Some("boom"), vec![]),
            )
            .await;
        assert_eq!(sent.lock().unwrap().len(), 3);

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
        assert_eq!(warnings.len(), 3, "{text}");
        for (line, kind) in warnings
            .iter()
            .zip(["STARTED", "RETRIES_EXHAUSTED", "FAILED"])
        {
            assert!(
                line.contains(&format!(
                    "notification {kind} for pointBalanceSyncJob execution 7 not sent; the run is not affected"
                )) && line.contains("error=the webhook answered HTTP 500: no_service"),
                "{line}"
            );
        }
    }

    #[test]
    fn slack_payload_is_readable_and_escaped() {
        let n = Notification {
            kind: NotificationKind::Failed,
            job_name: "assetRefreshJob".into(),
            execution_id: 12,
            title: "assetRefreshJob FAILED after 2s (execution 12)".into(),
            text: Some("refreshAssetStep failed: <html> & ```oops```".into()),
            fields: (0..12)
                .map(|i| NotificationField {
                    name: format!("field{i}"),
                    value: format!("value {i}"),
                })
                .collect(),
        };
        let p = slack_payload(&n);
        assert_eq!(
            p["text"],
            ":x: assetRefreshJob FAILED after 2s (execution 12)\n\
             refreshAssetStep failed: &lt;html&gt; &amp; ```oops```"
        );
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(
            blocks[0]["text"]["text"],
            ":x: *assetRefreshJob FAILED after 2s (execution 12)*"
        );
        assert_eq!(
            blocks[1]["text"]["text"],
            "```refreshAssetStep failed: &lt;html&gt; &amp; '''oops'''```"
        );
        // 12 fields: a section of 10 and one of 2.
        assert_eq!(blocks[2]["fields"].as_array().unwrap().len(), 10);
        assert_eq!(blocks[2]["fields"][0]["text"], "*field0*\nvalue 0");
        assert_eq!(blocks[3]["fields"].as_array().unwrap().len(), 2);
        assert_eq!(blocks[4]["type"], "context");
        assert_eq!(
            blocks[4]["elements"][0]["text"],
            "job `assetRefreshJob` · execution 12 · FAILED"
        );
        assert_eq!(blocks.len(), 5);

        // A long error is cut to what Slack accepts.
        let long = Notification {
            text: Some("x".repeat(10_000)),
            fields: vec![],
            ..n
        };
        let p = slack_payload(&long);
        let body = p["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(
            body.chars().count() <= 3000 && body.ends_with("…```"),
            "{}",
            body.len()
        );
    }

    #[test]
    fn settings_build_the_listener_only_with_a_webhook() {
        let url = "https://hooks.slack.test/services/T0/B0/very-secret";
        let p = BatchProperties::load_from(None, Vec::new()).unwrap();
        assert_eq!(p.notify.timeout, Duration::from_secs(5));
        assert!(p.notify.on_start && p.notify.on_success);
        assert!(listener_from_settings(&p.notify).unwrap().is_none());

        let p = BatchProperties::load_from(
            None,
            vec![
                (
                    "BATCH__NOTIFY__SLACK_WEBHOOK_URL".to_string(),
                    url.to_string(),
                ),
                ("BATCH__NOTIFY__TIMEOUT".to_string(), "1500ms".to_string()),
                ("BATCH__NOTIFY__ON_START".to_string(), "false".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(p.notify.timeout, Duration::from_millis(1500));
        assert!(!p.notify.on_start && p.notify.on_success);
        let listener = listener_from_settings(&p.notify).unwrap();
        assert!(listener.is_some());
        let shown = format!("{p:?} {}", p.to_redacted_toml());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("timeout = \"1s 500ms\""), "{shown}");

        let notifier = SlackNotifier::new(
            p.notify.slack_webhook_url.clone().unwrap(),
            p.notify.timeout,
        )
        .unwrap();
        let debug = format!("{notifier:?}");
        assert!(
            !debug.contains("very-secret") && debug.contains("[REDACTED]"),
            "{debug}"
        );
        assert_eq!(
            notifier.scrub(&format!(
                "error for url ({url}) at /services/T0/B0/very-secret"
            )),
            "error for url ([REDACTED]) at /[REDACTED]"
        );
    }

    #[test]
    fn bad_notify_settings_are_named() {
        for (key, value, named) in [
            ("BATCH__NOTIFY__TIMEOUT", "0s", "notify.timeout"),
            ("BATCH__NOTIFY__TIMEOUT", "soon", "notify.timeout"),
            ("BATCH__NOTIFY__ON_START", "perhaps", "notify.on_start"),
            ("BATCH__NOTIFY__CHANEL", "#ops", "notify.chanel"),
        ] {
            let e = BatchProperties::load_from(None, vec![(key.to_string(), value.to_string())])
                .unwrap_err();
            assert_eq!(e.key(), Some(named), "{key}={value}: {e}");
        }
    }

    #[test]
    fn parameters_render_in_order_or_as_none() {
        assert_eq!(render_parameters(&BTreeMap::new()), "(none)");
        let p: BTreeMap<String, String> =
            [("run".into(), "a".into()), ("items".into(), "5".into())].into();
        assert_eq!(render_parameters(&p), "items=5 run=a");
    }
}
