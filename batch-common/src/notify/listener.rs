//! [`NotifyListener`]: the job listener that turns run events into notifications and sends them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::model::{Notification, NotificationKind};
use super::slack::SlackNotifier;
use super::{Notifier, NotifyError};
use crate::config::{NotifySettings, execution_link};
use crate::listener::{JobListener, JobRunInfo};
use crate::result::BatchResult;

/// The [`JobListener`] that turns job events into notifications: start (optional), success
/// (optional), completion with item failures, failure, stop, and exhausted step retries. A
/// notifier error is logged as a warning; it never fails the run or changes its result.
pub struct NotifyListener {
    notifier: Arc<dyn Notifier>,
    on_start: bool,
    on_success: bool,
    /// Last step-retry attempt per (execution, step), to count attempts when retries run out.
    retries: Mutex<HashMap<(i64, String), u32>>,
    /// `[server] public_url`: each notification links to its execution's page under it.
    links: Option<url::Url>,
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
            links: None,
        }
    }

    /// Links every notification to its execution's page under `public_url` (the dashboard's
    /// `ui/executions/<id>`); `None`: no links.
    pub fn link_executions_under(mut self, public_url: Option<url::Url>) -> Self {
        self.links = public_url;
        self
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

    pub(super) fn retries(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String), u32>> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends, and logs a failure instead of returning it. The launcher calls listeners inside the
    /// run's span, which carries `job.name` and `execution.id` as fields.
    async fn deliver(&self, mut n: Notification) {
        if let Some(base) = &self.links {
            n.link = execution_link(base, n.execution_id);
        }
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

/// The notification listener `[notify]` asks for, linking to executions under `public_url`
/// (`[server] public_url`) if given: `Ok(None)` when no `slack_webhook_url` is set.
/// An error means the HTTP client could not be built; the caller decides whether to run without
/// notifications.
pub fn listener_from_settings(
    settings: &NotifySettings,
    public_url: Option<&url::Url>,
) -> Result<Option<Arc<dyn JobListener>>, NotifyError> {
    let Some(url) = &settings.slack_webhook_url else {
        return Ok(None);
    };
    let slack = SlackNotifier::new(url.clone(), settings.timeout)?;
    let listener = NotifyListener::new(Arc::new(slack))
        .send_on_start(settings.on_start)
        .send_on_success(settings.on_success)
        .link_executions_under(public_url.cloned());
    Ok(Some(Arc::new(listener)))
}
