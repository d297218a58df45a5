//! A fake of the external asset API that speaks the contract over real HTTP, for local runs
//! (`batch-launcher fake-asset-api`), the tests and the benchmark. Latency, a random error rate
//! and per-user failures are settable; it counts the calls it gets per user.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::AssetResponse;

/// How the fake behaves.
#[derive(Debug, Clone, Default)]
pub struct FakeApiConfig {
    /// Delay before every answer.
    pub latency: Duration,
    /// Share of requests (0.0–1.0) answered `503` at random (deterministic sequence).
    pub error_rate: f64,
    /// Users that always get this status (e.g. 404, 500, 429).
    pub fail_users: HashMap<i64, u16>,
    /// Added to every amount, so a later "day" can report newer values.
    pub revision: i64,
}

/// Parses `--fail-users 3=500,5=404`, naming a bad entry.
pub fn parse_fail_users(s: &str) -> Result<HashMap<i64, u16>, String> {
    s.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (user, status) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not user=status (e.g. 3=500)"))?;
            let user = user
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("`{user}` in `{entry}` is not a user id"))?;
            let status = status
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|s| (400..600).contains(s))
                .ok_or_else(|| {
                    format!("`{status}` in `{entry}` is not an HTTP error status (400-599)")
                })?;
            Ok((user, status))
        })
        .collect()
}

/// The running fake's shared state.
#[derive(Debug, Default)]
pub struct FakeState {
    config: Mutex<FakeApiConfig>,
    calls: Mutex<HashMap<i64, u32>>,
    total: AtomicU64,
}

impl FakeState {
    /// Calls received per user.
    pub fn calls(&self) -> HashMap<i64, u32> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls received in all.
    pub fn total_calls(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Changes the behaviour while running.
    pub fn set_config(&self, config: FakeApiConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// The deterministic figures of a user.
pub fn figures(user_id: i64, revision: i64) -> AssetResponse {
    let cash = (user_id * 7_919) % 1_000_000 + revision;
    let investment = (user_id * 104_729) % 5_000_000 + revision;
    AssetResponse {
        user_id,
        total_amount: cash + investment,
        cash_amount: cash,
        investment_amount: investment,
        currency: "KRW".into(),
        as_of: chrono::Utc::now(),
    }
}

async fn assets(State(state): State<Arc<FakeState>>, Path(user): Path<String>) -> Response {
    let n = state.total.fetch_add(1, Ordering::Relaxed);
    let config = state
        .config
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let Ok(user_id) = user.parse::<i64>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{{\"error\":\"`{user}` is not a user id\"}}"),
        )
            .into_response();
    };
    *state
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(user_id)
        .or_default() += 1;
    if let Some(status) = config.fail_users.get(&user_id) {
        let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, "{\"error\":\"configured failure\"}").into_response();
        if code == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return resp;
    }
    if config.error_rate > 0.0 {
        // A fixed pseudo-random sequence over the request count.
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
        if (z % 10_000) as f64 / 10_000.0 < config.error_rate {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"error\":\"random failure\"}",
            )
                .into_response();
        }
    }
    axum::Json(figures(user_id, config.revision)).into_response()
}

/// The router of the fake.
pub fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1/users/{user}/assets", get(assets))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves the fake on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<FakeState>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// Starts the fake on an ephemeral loopback port in the background (tests, benchmarks).
pub async fn spawn(
    config: FakeApiConfig,
) -> std::io::Result<(SocketAddr, Arc<FakeState>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(FakeState::default());
    state.set_config(config);
    let s = state.clone();
    let handle = tokio::spawn(async move {
        if let Err(e) = serve(listener, s).await {
            tracing::error!(error = %e, "fake asset API stopped");
        }
    });
    Ok((addr, state, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_users_parse_and_name_bad_entries() {
        let m = parse_fail_users("3=500, 5=404").unwrap();
        assert_eq!((m[&3], m[&5]), (500, 404));
        assert!(parse_fail_users("3").unwrap_err().contains("`3`"));
        assert!(parse_fail_users("x=500").unwrap_err().contains("`x`"));
        assert!(parse_fail_users("3=200").unwrap_err().contains("`200`"));
        assert!(parse_fail_users("").unwrap().is_empty());
    }

    #[test]
    fn figures_keep_the_contract() {
        for id in [1, 77, 123_456] {
            figures(id, 3).validate(id).unwrap();
        }
    }
}
