//! The Slack transport: [`SlackNotifier`] posts notifications to an incoming webhook.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::model::Notification;
use super::{Notifier, NotifyError};
use crate::secret::Secret;

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
        core_domain::tls::install_crypto_provider();
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
    pub(super) fn scrub(&self, message: &str) -> String {
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
pub(super) fn slack_payload(n: &Notification) -> Value {
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
    // The execution's page, if there is one: a link in the context line (`<url|text>`; the URL
    // comes from the configuration, checked to be http(s); `|`, `<` and `>` are percent-encoded
    // so the link cannot break out).
    let link = n.link.as_deref().map(|url| {
        let safe = url
            .replace('|', "%7C")
            .replace('<', "%3C")
            .replace('>', "%3E");
        format!(" · <{safe}|open execution {}>", n.execution_id)
    });
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!(
                "job `{}` · execution {} · {}{}",
                escape(&n.job_name),
                n.execution_id,
                n.kind,
                link.unwrap_or_default()
            ),
        }],
    }));
    json!({ "text": fallback, "blocks": blocks })
}
