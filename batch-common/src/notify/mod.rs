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

mod listener;
mod model;
mod slack;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;

pub use listener::{NotifyListener, listener_from_settings};
pub use model::{Notification, NotificationField, NotificationKind, labels};
pub use slack::SlackNotifier;

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
