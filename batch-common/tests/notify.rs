//! Slack notifications end to end: real runs of the counting job through `JobLauncher` with the
//! notification listener, against a local webhook that records the JSON it receives. The
//! notifier does not touch the database, so SQLite is enough.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use batch_common::config::BatchProperties;
use batch_common::config::NotifySettings;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::notify::{
    Notification, NotificationKind, Notifier, NotifyError, SlackNotifier, listener_from_settings,
};
use batch_common::repository::JobRepository;
use batch_common::{BatchResult, ExitCode, FixedClock};
use batch_testkit::jobs::{CountingJob, FailPlan};
use batch_testkit::{TestBackend, TestDb};
use chrono::{TimeZone, Utc};
use serde_json::Value;

/// The secret part of the webhook URL; it must never show up in an error or a log line.
const SECRET: &str = "sekret-hook-token";

/// How the local webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
    Hang,
}

struct Hook {
    mode: Mode,
    bodies: Mutex<Vec<Value>>,
}

async fn hook(State(h): State<Arc<Hook>>, axum::Json(body): axum::Json<Value>) -> Response {
    h.bodies.lock().unwrap().push(body);
    match h.mode {
        Mode::Ok => (StatusCode::OK, "ok").into_response(),
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "no_service").into_response(),
        Mode::Hang => std::future::pending().await,
    }
}

/// A local webhook; returns its state and its URL (with the secret in the path, like Slack's).
async fn webhook(mode: Mode) -> (Arc<Hook>, String) {
    let state = Arc::new(Hook {
        mode,
        bodies: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route(
            &format!("/services/T000/B000/{SECRET}"),
            axum::routing::post(hook),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, format!("http://{addr}/services/T000/B000/{SECRET}"))
}

/// A webhook URL on a port nobody listens on.
async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/services/T000/B000/{SECRET}")
}

fn notify_settings(url: &str, timeout: &str) -> NotifySettings {
    BatchProperties::load_from(
        None,
        vec![
            (
                "BATCH__NOTIFY__SLACK_WEBHOOK_URL".to_owned(),
                url.to_owned(),
            ),
            ("BATCH__NOTIFY__TIMEOUT".to_owned(), timeout.to_owned()),
        ],
        &[],
    )
    .unwrap()
    .notify
}

/// A launcher on `db` (chunks of 10, `retries` step retries, a fixed clock so retry waits are
/// instant), with the notification listener of `notify` if given.
fn launcher(db: &TestDb, retries: u32, notify: Option<&NotifySettings>) -> JobLauncher {
    let mut settings = BatchProperties::load_from(None, Vec::new(), &[])
        .unwrap()
        .batch;
    settings.chunk_size = std::num::NonZeroUsize::new(10).unwrap();
    settings.step_retry_attempts = retries;
    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap(),
    ));
    let launcher = JobLauncher::new(JobRepository::new(db.db.clone()), clock, settings);
    match notify.map(|n| listener_from_settings(n, None).unwrap()) {
        Some(Some(listener)) => launcher.with_listener(listener),
        Some(None) => panic!("a webhook URL was configured but no listener was built"),
        None => launcher,
    }
}

async fn launch(launcher: &JobLauncher, plan: &Arc<FailPlan>, args: &[&str]) -> BatchResult {
    let job = CountingJob { plan: plan.clone() };
    let params = batch_common::params::parse_pairs(args).unwrap();
    launcher
        .launch(&job, params, &LaunchOptions::default())
        .await
        .expect("launch")
}

/// Everything Slack would show of a message: the fallback, every block's text and fields.
fn rendered(body: &Value) -> String {
    let mut out = vec![body["text"].as_str().unwrap_or_default().to_owned()];
    for block in body["blocks"].as_array().into_iter().flatten() {
        if let Some(t) = block["text"]["text"].as_str() {
            out.push(t.to_owned());
        }
        for f in block["fields"].as_array().into_iter().flatten() {
            out.push(f["text"].as_str().unwrap_or_default().to_owned());
        }
        for e in block["elements"].as_array().into_iter().flatten() {
            out.push(e["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    out.join("\n\n")
}

fn bodies(hook: &Hook) -> Vec<String> {
    hook.bodies.lock().unwrap().iter().map(rendered).collect()
}

fn assert_has(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_success_and_failure_messages_reach_the_webhook() {
    let db = TestDb::new(TestBackend::Sqlite).await;
    let (hook, url) = webhook(Mode::Ok).await;
    let launcher = launcher(&db, 0, Some(&notify_settings(&url, "5s")));
    let plan = Arc::new(FailPlan::default());

    // Success: start, then the summary with per-step counts and the duration.
    let ok = launch(&launcher, &plan, &["run=ok", "items=25"]).await;
    assert_eq!(ok.exit_code, ExitCode::Completed, "{ok:#?}");
    let id = ok.execution_id.unwrap();
    let sent = bodies(&hook);
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_has(
        &sent[0],
        &[
            &format!(":arrow_forward: countingJob started (execution {id})"),
            "*Parameters*\nitems=25 run=ok",
            &format!("job `countingJob` · execution {id} · STARTED"),
        ],
    );
    assert_has(
        &sent[1],
        &[
            ":white_check_mark: countingJob completed in ",
            "*Duration*\n",
            "*countStep*\nCOMPLETED · read 25 · written 25 · skipped 0 · ",
            "\ninserted=25",
            "*flakyStep*\nCOMPLETED · ",
            "flaky_ok=1",
            &format!("execution {id} · SUCCEEDED"),
        ],
    );

    // Completed with item failures (exit 3): the failure count.
    hook.bodies.lock().unwrap().clear();
    let partial = launch(
        &launcher,
        &plan,
        &["run=partial", "items=25", "fail_items=3,4"],
    )
    .await;
    assert_eq!(
        partial.exit_code,
        ExitCode::CompletedWithFailures,
        "{partial:#?}"
    );
    let sent = bodies(&hook);
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_has(
        &sent[1],
        &[
            ":warning: countingJob completed with 2 item failures in ",
            "*Item failures*\n2",
            "*countStep*\nCOMPLETED · read 25 · written 23 · skipped 2 · ",
            "COMPLETED_WITH_FAILURES",
        ],
    );

    // Failure: the exhausted step, then the job with the error.
    hook.bodies.lock().unwrap().clear();
    plan.fail_write_at_item.store(13, Ordering::SeqCst);
    plan.write_failures_left.store(1, Ordering::SeqCst);
    let failed = launch(&launcher, &plan, &["run=broken", "items=25"]).await;
    assert_eq!(failed.exit_code, ExitCode::Failed, "{failed:#?}");
    let sent = bodies(&hook);
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert_has(
        &sent[1],
        &[
            ":rotating_light: countingJob: step countStep failed after 1 attempt, no retries left",
            "injected failure writing the chunk with item 13",
            "*Step*\ncountStep",
            "*Attempts*\n1",
        ],
    );
    assert_has(
        &sent[2],
        &[
            ":x: countingJob FAILED after ",
            "```countStep failed: injected failure writing the chunk with item 13",
            "*countStep*\nFAILED · read ",
            "· FAILED",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_step_retries_are_reported_with_the_attempts() {
    let db = TestDb::new(TestBackend::Sqlite).await;
    let (hook, url) = webhook(Mode::Ok).await;
    let launcher = launcher(&db, 2, Some(&notify_settings(&url, "5s")));
    let plan = Arc::new(FailPlan::default());
    plan.flaky_failures_left.store(5, Ordering::SeqCst);

    let r = launch(&launcher, &plan, &["run=flaky", "items=5"]).await;
    assert_eq!(r.exit_code, ExitCode::Failed, "{r:#?}");
    assert_eq!(plan.flaky_runs.load(Ordering::SeqCst), 3);
    let sent = bodies(&hook);
    let kinds: Vec<&str> = sent
        .iter()
        .map(|s| s.rsplit(" · ").next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["STARTED", "RETRIES_EXHAUSTED", "FAILED"],
        "{sent:#?}"
    );
    assert_has(
        &sent[1],
        &[
            "step flakyStep failed after 3 attempts, no retries left",
            "flaky step failed on purpose",
            "*Attempts*\n3",
        ],
    );
}

/// A `MakeWriter` collecting log output.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a run's result says, without the wall times.
fn outcome(r: &BatchResult) -> (String, ExitCode, Option<String>, i64, Vec<String>) {
    let steps = r
        .steps
        .iter()
        .map(|s| {
            format!(
                "{} {} read={} written={} skipped={} retries={} {:?}",
                s.name,
                s.status,
                s.counts.read_count,
                s.counts.write_count,
                s.counts.skip_count,
                s.counts.retry_count,
                s.counts.counters
            )
        })
        .collect();
    (
        r.status.to_string(),
        r.exit_code,
        r.message.clone(),
        r.item_failures,
        steps,
    )
}

/// Runs a success, a completion with item failures and a failure; returns their outcomes.
async fn three_runs(
    launcher: &JobLauncher,
) -> Vec<(String, ExitCode, Option<String>, i64, Vec<String>)> {
    let plan = Arc::new(FailPlan::default());
    let mut out = Vec::new();
    let started = Instant::now();
    out.push(outcome(
        &launch(launcher, &plan, &["run=ok", "items=25"]).await,
    ));
    out.push(outcome(
        &launch(
            launcher,
            &plan,
            &["run=partial", "items=25", "fail_items=7"],
        )
        .await,
    ));
    plan.fail_write_at_item.store(13, Ordering::SeqCst);
    plan.write_failures_left.store(1, Ordering::SeqCst);
    out.push(outcome(
        &launch(launcher, &plan, &["run=broken", "items=25"]).await,
    ));
    // 7 messages at most 300 ms each: a dead webhook delays, it does not block.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    out
}

// current_thread: the listener runs on the test's thread, where the log capture is installed.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_webhook_never_changes_the_result() {
    let reference = {
        let db = TestDb::new(TestBackend::Sqlite).await;
        three_runs(&launcher(&db, 0, None)).await
    };
    let exit_codes: Vec<ExitCode> = reference.iter().map(|o| o.1).collect();
    assert_eq!(
        exit_codes,
        [
            ExitCode::Completed,
            ExitCode::CompletedWithFailures,
            ExitCode::Failed
        ]
    );

    for mode in [Some(Mode::Fail), Some(Mode::Hang), None] {
        let (hook, url) = match mode {
            Some(mode) => {
                let (hook, url) = webhook(mode).await;
                (Some(hook), url)
            }
            None => (None, refused_url().await),
        };
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let db = TestDb::new(TestBackend::Sqlite).await;
        let got = three_runs(&launcher(&db, 0, Some(&notify_settings(&url, "300ms")))).await;
        drop(guard);

        assert_eq!(got, reference, "{mode:?}");
        if let Some(hook) = hook {
            // start + end of each run, and the exhausted step of the failed one
            assert_eq!(hook.bodies.lock().unwrap().len(), 7, "{mode:?}");
        }
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" not sent; ")).collect();
        assert_eq!(warnings.len(), 7, "{mode:?}:\n{logs}");
        let expected = match mode {
            Some(Mode::Fail) => "the webhook answered HTTP 500: no_service",
            Some(Mode::Hang) => "no answer within 300ms",
            _ => "error sending request",
        };
        assert!(
            warnings
                .iter()
                .all(|w| w.contains(" WARN ") && w.contains(expected)),
            "{mode:?}:\n{logs}"
        );
        assert!(
            !logs.contains(SECRET) && !logs.contains("/services/"),
            "{mode:?} leaked the URL:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_notifier_posts_json_and_its_errors_never_name_the_webhook() {
    let n = Notification {
        kind: NotificationKind::Succeeded,
        job_name: "countingJob".into(),
        execution_id: 1,
        title: "countingJob completed in 1s (execution 1)".into(),
        text: None,
        fields: Vec::new(),
        link: None,
    };
    let send = |url: String| {
        let n = n.clone();
        async move {
            let url = BatchProperties::load_from(
                None,
                vec![("BATCH__NOTIFY__SLACK_WEBHOOK_URL".to_owned(), url)],
                &[],
            )
            .unwrap()
            .notify
            .slack_webhook_url
            .unwrap();
            let notifier = SlackNotifier::new(url, Duration::from_millis(300)).unwrap();
            notifier.send(&n).await
        }
    };

    let (hook, url) = webhook(Mode::Ok).await;
    send(url).await.unwrap();
    let body = hook.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        body["text"],
        ":white_check_mark: countingJob completed in 1s (execution 1)"
    );
    assert!(
        body["blocks"].as_array().is_some_and(|b| b.len() == 2),
        "{body}"
    );

    let (_hook, url) = webhook(Mode::Fail).await;
    let e = send(url).await.unwrap_err();
    assert_eq!(
        e,
        NotifyError::Status {
            status: 500,
            body: "no_service".into()
        }
    );

    let (_hook, url) = webhook(Mode::Hang).await;
    let e = send(url).await.unwrap_err();
    assert_eq!(e, NotifyError::Timeout(Duration::from_millis(300)));

    let e = send(refused_url().await).await.unwrap_err();
    assert!(matches!(e, NotifyError::Transport(_)), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("error sending request"), "{shown}");
    assert!(
        !shown.contains(SECRET) && !shown.contains("127.0.0.1"),
        "{shown}"
    );
}
