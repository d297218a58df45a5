//! The reqwest provider against local HTTP servers: 200, 404, 500 then 200, 429 with
//! Retry-After, a time-out, malformed JSON, other 4xx, the bearer token and the rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use batch_asset::provider::{AssetProvider, FetchErrorKind, HttpAssetProvider};
use batch_common::config::BatchProperties;
use batch_common::{Clock, FixedClock};

/// One scripted answer.
#[derive(Clone)]
enum Answer {
    Ok,
    Status(u16, &'static str),
    RetryAfter(&'static str),
    Slow(Duration),
    Body(&'static str),
    /// A 200 with this `Content-Type` (`None`: no header) and body.
    Typed(Option<&'static str>, String),
}

#[derive(Default)]
struct Script {
    answers: Mutex<HashMap<i64, Vec<Answer>>>,
    calls: Mutex<HashMap<i64, u32>>,
    tokens: Mutex<Vec<Option<String>>>,
}

async fn handler(
    State(s): State<Arc<Script>>,
    Path(user): Path<i64>,
    headers: HeaderMap,
) -> Response {
    *s.calls.lock().unwrap().entry(user).or_default() += 1;
    s.tokens.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    let answer = {
        let mut answers = s.answers.lock().unwrap();
        let list = answers.entry(user).or_default();
        if list.len() > 1 {
            list.remove(0)
        } else {
            list.first().cloned().unwrap_or(Answer::Ok)
        }
    };
    match answer {
        Answer::Ok => axum::Json(batch_asset::fake_server::figures(user, 0)).into_response(),
        Answer::Status(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Answer::RetryAfter(secs) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            r.headers_mut().insert("retry-after", secs.parse().unwrap());
            r
        }
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            axum::Json(batch_asset::fake_server::figures(user, 0)).into_response()
        }
        Answer::Body(body) => {
            (StatusCode::OK, [("content-type", "application/json")], body).into_response()
        }
        Answer::Typed(content_type, body) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().remove("content-type");
            if let Some(t) = content_type {
                r.headers_mut().insert("content-type", t.parse().unwrap());
            }
            r
        }
    }
}

async fn server(script: Arc<Script>) -> String {
    let app = axum::Router::new()
        .route("/api/v1/users/{user}/assets", axum::routing::get(handler))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // A base URL with a path and no trailing slash: the provider must keep the path.
    format!("http://{addr}/api")
}

fn provider(
    base: &str,
    clock: Arc<FixedClock>,
    edit: impl FnOnce(&mut batch_asset::AssetSettings),
) -> HttpAssetProvider {
    let mut settings = BatchProperties::load_from(
        None,
        vec![("BATCH__ASSET__API_BASE_URL".into(), base.into())],
        &[&batch_asset::MODULE],
    )
    .unwrap()
    .section::<batch_asset::AssetSettings>()
    .unwrap()
    .clone();
    settings.timeout = Duration::from_millis(300);
    settings.max_attempts = std::num::NonZeroU32::new(3).unwrap();
    settings.retry_backoff = Duration::from_millis(100);
    edit(&mut settings);
    HttpAssetProvider::new(&settings, clock).unwrap()
}

fn clock() -> Arc<FixedClock> {
    Arc::new(FixedClock::new(
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    ))
}

#[tokio::test]
async fn answers_are_classified_and_retried_as_specified() {
    let script = Arc::new(Script::default());
    {
        let mut a = script.answers.lock().unwrap();
        a.insert(2, vec![Answer::Status(404, "{\"error\":\"no such user\"}")]);
        a.insert(3, vec![Answer::Status(500, "boom"), Answer::Ok]);
        a.insert(
            6,
            vec![Answer::Body("{\"userId\": 6, \"totalAmount\": oops")],
        );
        a.insert(7, vec![Answer::Status(400, "bad request")]);
        a.insert(8, vec![Answer::Status(503, "down")]);
        a.insert(9, vec![Answer::Body("{\"userId\": 9, \"totalAmount\": 5, \"cashAmount\": 1, \"investmentAmount\": 1, \"currency\": \"KRW\", \"asOf\": \"2026-11-21T00:00:00Z\"}")]);
    }
    let base = server(script.clone()).await;
    let clock = clock();
    let p = provider(&base, clock.clone(), |_| {});

    // 200
    let ok = p.fetch(1).await.unwrap();
    assert_eq!(ok.user_id, 1);
    assert_eq!(ok.total_amount, ok.cash_amount + ok.investment_amount);
    // 404: no retry
    let e = p.fetch(2).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::NotFound, 1));
    // 500 then 200: retried once, with a backoff on the injected clock (100 ms, up to +100% jitter)
    let before = clock.now();
    assert_eq!(p.fetch(3).await.unwrap().user_id, 3);
    let waited = (clock.now() - before).num_milliseconds();
    assert!((100..=200).contains(&waited), "waited {waited} ms");
    // malformed JSON: an item failure with an excerpt, not retried
    let e = p.fetch(6).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Malformed, 1));
    assert!(e.message.contains("totalAmount\": oops"), "{}", e.message);
    // a body that breaks the contract names the field
    let e = p.fetch(9).await.unwrap_err();
    assert_eq!(e.kind, FetchErrorKind::Malformed);
    assert!(e.message.contains("totalAmount 5"), "{}", e.message);
    // other 4xx: no retry
    let e = p.fetch(7).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Rejected, 1));
    assert!(e.message.contains("400"), "{}", e.message);
    // persistent 503: every attempt used
    let e = p.fetch(8).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Unavailable, 3));

    let calls = script.calls.lock().unwrap().clone();
    assert_eq!(
        (
            calls[&1], calls[&2], calls[&3], calls[&6], calls[&7], calls[&8]
        ),
        (1, 1, 2, 1, 1, 3)
    );
    assert!(
        script.tokens.lock().unwrap().iter().all(Option::is_none),
        "no token configured, none sent"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let script = Arc::new(Script::default());
    script
        .answers
        .lock()
        .unwrap()
        .insert(4, vec![Answer::RetryAfter("2"), Answer::Ok]);
    let base = server(script.clone()).await;
    let clock = clock();
    let p = provider(&base, clock.clone(), |_| {});
    let before = clock.now();
    assert_eq!(p.fetch(4).await.unwrap().user_id, 4);
    assert_eq!(
        clock.now() - before,
        chrono::Duration::seconds(2),
        "waited exactly Retry-After"
    );
    assert_eq!(script.calls.lock().unwrap()[&4], 2);
}

#[tokio::test]
async fn a_slow_server_times_out_and_is_retried() {
    let script = Arc::new(Script::default());
    script
        .answers
        .lock()
        .unwrap()
        .insert(5, vec![Answer::Slow(Duration::from_secs(5))]);
    let base = server(script.clone()).await;
    let p = provider(&base, clock(), |s| {
        s.max_attempts = std::num::NonZeroU32::new(2).unwrap()
    });
    let e = p.fetch(5).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Unavailable, 2));
    assert!(e.message.contains("timed out"), "{}", e.message);
    assert_eq!(script.calls.lock().unwrap()[&5], 2);
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let p = provider("http://127.0.0.1:1", clock(), |_| {});
    let e = p.fetch(1).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Unavailable, 3));
}

#[tokio::test]
async fn bearer_token_and_rate_limit() {
    let script = Arc::new(Script::default());
    let base = server(script.clone()).await;
    let p = provider(&base, clock(), |s| {
        s.api_token = Some(batch_common::Secret::new("t0ken".to_owned()));
        s.rate_limit_per_second = std::num::NonZeroU32::new(20);
    });
    assert!(!format!("{p:?}").contains("t0ken"));
    let start = Instant::now();
    for id in 1..=10 {
        p.fetch(id).await.unwrap();
    }
    // 20 calls per second: ten calls span at least nine intervals of 50 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    assert!(
        script
            .tokens
            .lock()
            .unwrap()
            .iter()
            .all(|t| t.as_deref() == Some("Bearer t0ken"))
    );
}

/// A valid asset body for `user`, as text.
fn valid_body(user: i64) -> String {
    serde_json::to_string(&batch_asset::fake_server::figures(user, 0)).unwrap()
}

#[tokio::test]
async fn a_200_that_is_not_json_is_malformed_and_not_retried() {
    let script = Arc::new(Script::default());
    {
        let mut a = script.answers.lock().unwrap();
        // A well-formed asset body, but served as HTML (e.g. a proxy's page): never parsed.
        a.insert(
            1,
            vec![Answer::Typed(
                Some("text/html; charset=utf-8"),
                valid_body(1),
            )],
        );
        a.insert(2, vec![Answer::Typed(None, valid_body(2))]);
        a.insert(
            3,
            vec![Answer::Typed(
                Some("application/vnd.assets.v1+json; charset=utf-8"),
                valid_body(3),
            )],
        );
    }
    let base = server(script.clone()).await;
    let p = provider(&base, clock(), |_| {});
    let e = p.fetch(1).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Malformed, 1));
    assert!(
        e.message
            .contains("Content-Type `text/html; charset=utf-8`"),
        "{}",
        e.message
    );
    let e = p.fetch(2).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (FetchErrorKind::Malformed, 1));
    assert!(e.message.contains("no Content-Type"), "{}", e.message);
    // `+json` types are JSON.
    assert_eq!(p.fetch(3).await.unwrap().user_id, 3);
    let calls = script.calls.lock().unwrap().clone();
    assert_eq!((calls[&1], calls[&2], calls[&3]), (1, 1, 1));
}
