//! `AssetProvider`: the external asset API behind a trait (mockable), and its reqwest client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::settings::AssetSettings;
use async_trait::async_trait;
use batch_common::{Clock, RetryPolicy};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::api::{AssetResponse, asset_path};

/// A user's assets as the provider reported them (validated against the contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSnapshot {
    /// The user.
    pub user_id: i64,
    /// Total assets (minor units).
    pub total_amount: i64,
    /// Cash part.
    pub cash_amount: i64,
    /// Investment part.
    pub investment_amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When the provider computed it.
    pub as_of: DateTime<Utc>,
}

/// Why a fetch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// 404: the provider does not know the user. Not retried.
    NotFound,
    /// Another 4xx. Not retried.
    Rejected,
    /// A 2xx that is not JSON (by its `Content-Type`) or whose body breaks the contract. Not
    /// retried.
    Malformed,
    /// 5xx, 429, time-outs and connection errors, after every attempt.
    Unavailable,
}

/// A failed fetch: what went wrong, after how many attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// The class of failure.
    pub kind: FetchErrorKind,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Details (status, a short excerpt of a malformed body, the transport error).
    pub message: String,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} after {} attempt(s): {}",
            self.kind, self.attempts, self.message
        )
    }
}

impl std::error::Error for FetchError {}

/// Where a user's assets come from.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AssetProvider: Send + Sync {
    /// The user's current assets. Retries are the provider's business; an `Err` is final.
    async fn fetch(&self, user_id: i64) -> Result<AssetSnapshot, FetchError>;
}

/// Spaces calls `1/rate` apart (a token bucket of size one), shared by all concurrent fetches.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The real provider: reqwest, with timeouts, retries (the runtime's [`RetryPolicy`]: exponential
/// backoff with jitter, on 5xx, 429 — honouring `Retry-After` — time-outs and connection errors),
/// and an optional rate limit.
pub struct HttpAssetProvider {
    client: reqwest::Client,
    base_url: url::Url,
    token: Option<batch_common::Secret<String>>,
    retry: RetryPolicy,
    limiter: Option<RateLimiter>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for HttpAssetProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAssetProvider")
            .field("base_url", &core_domain::db::redact(self.base_url.as_str()))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The longest `Retry-After` honoured; a provider asking for more gets this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The longest backoff between two attempts (without `Retry-After`).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl HttpAssetProvider {
    /// A provider configured by `[asset]`; waits between attempts go through `clock`.
    pub fn new(settings: &AssetSettings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        core_domain::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.concurrency.get())
            .user_agent(concat!("batch-launcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut base_url = settings.api_base_url.expose().clone();
        if !base_url.path().ends_with('/') {
            base_url.set_path(&format!("{}/", base_url.path()));
        }
        Ok(HttpAssetProvider {
            client,
            base_url,
            token: settings.api_token.clone(),
            retry: RetryPolicy {
                max_attempts: settings.max_attempts.get(),
                initial_backoff: settings.retry_backoff,
                max_backoff: MAX_BACKOFF,
                max_elapsed: None,
                jitter: true,
            },
            limiter: settings
                .rate_limit_per_second
                .map(|r| RateLimiter::new(r.get())),
            clock,
        })
    }

    async fn attempt(
        &self,
        user_id: i64,
    ) -> Result<AssetSnapshot, (FetchErrorKind, String, Option<Duration>, bool)> {
        let url = self.base_url.join(&asset_path(user_id)).map_err(|e| {
            (
                FetchErrorKind::Rejected,
                format!("bad URL: {e}"),
                None,
                false,
            )
        })?;
        let mut request = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let retry = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body();
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "transport error"
                };
                // reqwest errors name the URL, which holds no secret here (the token is a header).
                return Err((
                    FetchErrorKind::Unavailable,
                    format!("{what}: {e}"),
                    None,
                    retry,
                ));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now()));
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = response.bytes().await.map_err(|e| {
            (
                FetchErrorKind::Unavailable,
                format!("reading the body: {e}"),
                None,
                true,
            )
        })?;
        match status {
            s if s.is_success() => {
                if !content_type.as_deref().is_some_and(is_json) {
                    let what = content_type.map_or_else(
                        || "no Content-Type".to_owned(),
                        |t| format!("Content-Type `{t}`"),
                    );
                    return Err((
                        FetchErrorKind::Malformed,
                        format!("{s} with {what}, not application/json: {}", excerpt(&body)),
                        None,
                        false,
                    ));
                }
                let parsed: AssetResponse = serde_json::from_slice(&body).map_err(|e| {
                    (
                        FetchErrorKind::Malformed,
                        format!("malformed body ({e}): {}", excerpt(&body)),
                        None,
                        false,
                    )
                })?;
                parsed.validate(user_id).map_err(|e| {
                    (
                        FetchErrorKind::Malformed,
                        format!("{e}: {}", excerpt(&body)),
                        None,
                        false,
                    )
                })?;
                Ok(AssetSnapshot {
                    user_id,
                    total_amount: parsed.total_amount,
                    cash_amount: parsed.cash_amount,
                    investment_amount: parsed.investment_amount,
                    currency: parsed.currency,
                    as_of: parsed.as_of,
                })
            }
            StatusCode::NOT_FOUND => Err((
                FetchErrorKind::NotFound,
                format!("404: user {user_id} unknown to the provider"),
                None,
                false,
            )),
            StatusCode::TOO_MANY_REQUESTS => Err((
                FetchErrorKind::Unavailable,
                format!("429: {}", excerpt(&body)),
                retry_after,
                true,
            )),
            s if s.is_server_error() => Err((
                FetchErrorKind::Unavailable,
                format!("{s}: {}", excerpt(&body)),
                retry_after,
                true,
            )),
            s => Err((
                FetchErrorKind::Rejected,
                format!("{s}: {}", excerpt(&body)),
                None,
                false,
            )),
        }
    }
}

/// True for `application/json` and `application/<anything>+json`, parameters (charset) aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// At most 120 characters of a body, on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut s: String = one_line.chars().take(120).collect();
    if one_line.chars().count() > 120 {
        s.push('…');
    }
    if s.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        s
    }
}

/// `Retry-After` as seconds or an HTTP date (from `now`), capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let d = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[async_trait]
impl AssetProvider for HttpAssetProvider {
    async fn fetch(&self, user_id: i64) -> Result<AssetSnapshot, FetchError> {
        let mut schedule = self.retry.schedule();
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.acquire().await;
            }
            let (kind, message, retry_after, retry) = match self.attempt(user_id).await {
                Ok(snapshot) => return Ok(snapshot),
                Err(e) => e,
            };
            let attempts = schedule.attempts();
            // The schedule counts the attempt even when `Retry-After` sets the wait.
            let wait = retry
                .then(|| schedule.next_delay(self.clock.now()))
                .flatten()
                .map(|backoff| retry_after.unwrap_or(backoff));
            let Some(wait) = wait else {
                return Err(FetchError {
                    kind,
                    attempts,
                    message,
                });
            };
            tracing::debug!(user_id, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %message, "asset fetch failed; retrying");
            self.clock.sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_excerpts() {
        let now = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("100000", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(excerpt(b""), "(empty body)");
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), 121);
        assert_eq!(excerpt(b"a\nb"), "a b");
    }

    #[test]
    fn json_content_types() {
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.assets.v1+json",
        ] {
            assert!(is_json(t), "{t}");
        }
        for t in [
            "text/html",
            "text/plain; charset=utf-8",
            "application/xml",
            "",
            "json",
        ] {
            assert!(!is_json(t), "{t}");
        }
    }
}
