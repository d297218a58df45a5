//! Slack notifications through the binary: a webhook answering 500 is logged and changes nothing,
//! and its URL (a secret) never shows up in the output.

use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use batch_testkit::TestRedis;
use serde_json::Value;

use crate::{launcher, text};

/// The secret part of the webhook URL.
const SECRET: &str = "cli-sekret-token";

type Bodies = Arc<Mutex<Vec<Value>>>;

/// A webhook that records each JSON body and answers 500; returns the bodies and its URL.
async fn broken_webhook() -> (Bodies, String) {
    let bodies = Bodies::default();
    let app = axum::Router::new()
        .route(
            "/services/{*rest}",
            axum::routing::post(
                |State(b): State<Bodies>, axum::Json(v): axum::Json<Value>| async move {
                    b.lock().unwrap().push(v);
                    (StatusCode::INTERNAL_SERVER_ERROR, "no_service")
                },
            ),
        )
        .with_state(bodies.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (bodies, format!("http://{addr}/services/T0/B0/{SECRET}"))
}

/// [`launcher`] off the async runtime, so the in-process webhook keeps answering.
async fn run(dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        launcher(&dir, &args, &env)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_webhook_keeps_exit_0_and_its_url_stays_secret() {
    let (bodies, url) = broken_webhook().await;
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis.key("point:balance:");
    let env = [
        ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str()),
        ("BATCH__NOTIFY__SLACK_WEBHOOK_URL", url.as_str()),
        ("BATCH__NOTIFY__TIMEOUT", "2s"),
    ];
    let path = dir.path().to_path_buf();
    let o = run(
        path.clone(),
        &["seed-demo", "--users", "20", "--date", "2026-11-20"],
        &env,
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let o = run(
        path.clone(),
        &[
            "run",
            "pointBalanceSyncJob",
            "date=2026-11-20",
            "--result-file",
            "r.json",
        ],
        &env,
    )
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("syncPointBalanceStep: COMPLETED read=20"),
        "{out}"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("r.json")).unwrap()).unwrap();
    assert_eq!(
        (&json["status"], &json["exit_code"]),
        (&"COMPLETED".into(), &"COMPLETED".into())
    );

    // The start and the summary reached the webhook, which refused them; each is one warning.
    let sent: Vec<String> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent[0].contains("pointBalanceSyncJob started (execution"),
        "{sent:?}"
    );
    assert!(
        sent[1].contains("pointBalanceSyncJob completed in"),
        "{sent:?}"
    );
    let warnings = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the webhook answered HTTP 500: no_service"))
        .count();
    assert_eq!(warnings, 2, "{err}");
    for shown in [&out, &err] {
        assert!(
            !shown.contains(SECRET) && !shown.contains("/services/"),
            "the webhook URL leaked:\n{shown}"
        );
    }

    // A bad [notify] value is a configuration error (exit 2) that names the key, not the URL.
    let bad = [
        ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str()),
        ("BATCH__NOTIFY__SLACK_WEBHOOK_URL", url.as_str()),
        ("BATCH__NOTIFY__TIMEOUT", "0s"),
    ];
    let o = run(
        path,
        &["run", "pointBalanceSyncJob", "date=2026-11-21"],
        &bad,
    )
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("notify.timeout") && err.contains("BATCH__NOTIFY__TIMEOUT"),
        "{err}"
    );
    assert!(
        !err.contains(SECRET) && !out.contains(SECRET),
        "{out}\n{err}"
    );
    assert_eq!(
        bodies.lock().unwrap().len(),
        2,
        "nothing sent for a run that did not start"
    );
}
