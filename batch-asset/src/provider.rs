//! `AssetProvider`: the external asset API behind a trait (mockable), and its reqwest client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batch_common::Clock;
use batch_common::config::AssetSettings;
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
    /// A 2xx whose body breaks the contract. Not retried.
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

/// The real provider: reqwest, with timeouts, retries (exponential backoff with jitter on 5xx,
/// 429 — honouring `Retry-After` — time-outs and connection errors), and an optional rate limit.
pub struct HttpAssetProvider {
    client: reqwest::Client,
    base_url: url::Url,
    token: Option<batch_common::Secret<String>>,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    limiter: Option<RateLimiter>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for HttpAssetProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAssetProvider")
            .field("base_url", &core_domain::db::redact(self.base_url.as_str()))
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// The longest `Retry-After` honoured; a provider asking for more gets this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl HttpAssetProvider {
    /// A provider configured by `[asset]`; waits between attempts go through `clock`.
    pub fn new(settings: &AssetSettings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
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
            max_attempts: settings.max_attempts.get(),
            backoff: settings.retry_backoff,
            max_backoff: Duration::from_secs(30),
            limiter: settings
                .rate_limit_per_second
                .map(|r| RateLimiter::new(r.get())),
            clock,
        })
    }

    /// The delay before retry `attempt` (1-based): backoff × 2^(attempt−1) × jitter in [0.5, 1.5).
    fn delay(&self, user_id: i64, attempt: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
        // Cheap deterministic-enough jitter: hash of the user, attempt and the current nanos.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut z = (user_id as u64) ^ (u64::from(attempt) << 32) ^ u64::from(nanos);
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^= z >> 33;
        let jitter = 0.5 + (z % 1000) as f64 / 1000.0;
        base.mul_f64(jitter).min(self.max_backoff)
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
            .and_then(parse_retry_after);
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

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let d = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&Utc) - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[async_trait]
impl AssetProvider for HttpAssetProvider {
    async fn fetch(&self, user_id: i64) -> Result<AssetSnapshot, FetchError> {
        let mut attempt = 1;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.acquire().await;
            }
            match self.attempt(user_id).await {
                Ok(snapshot) => return Ok(snapshot),
                Err((kind, message, retry_after, retry)) => {
                    if !retry || attempt >= self.max_attempts {
                        return Err(FetchError {
                            kind,
                            attempts: attempt,
                            message,
                        });
                    }
                    let wait = retry_after.unwrap_or_else(|| self.delay(user_id, attempt));
                    tracing::debug!(user_id, attempt, wait_ms = wait.as_millis() as u64, error = %message, "asset fetch failed; retrying");
                    self.clock.sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_excerpts() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon"), None);
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert_eq!(excerpt(b""), "(empty body)");
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), 121);
        assert_eq!(excerpt(b"a\nb"), "a b");
    }
}
