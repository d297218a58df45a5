use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex as StdMutex;

use std::sync::Arc;
use std::time::Duration;

use super::model::render_parameters;
use super::slack::slack_payload;
use super::*;
use crate::config::BatchProperties;
use crate::listener::{JobListener, JobRunInfo};
use crate::repository::{BatchStatus, StepCounts};
use crate::result::{BatchResult, ExitCode, StepResult};

fn run(execution_id: i64) -> JobRunInfo {
    JobRunInfo {
        job_name: "exampleSyncJob".into(),
        job_instance_id: 3,
        execution_id,
        parameters: [("date".to_string(), "2026-11-20".to_string())].into(),
    }
}

fn step(name: &str, read: i64, written: i64, skipped: i64, counters: &[(&str, i64)]) -> StepResult {
    StepResult {
        counts: StepCounts {
            read_count: read,
            write_count: written,
            skip_count: skipped,
            commit_count: 1,
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..StepCounts::default()
        },
        duration_ms: 1_500,
        ..StepResult::new(name, BatchStatus::Completed)
    }
}

fn result(
    status: &str,
    exit_code: ExitCode,
    message: Option<&str>,
    steps: Vec<StepResult>,
) -> BatchResult {
    BatchResult {
        job_name: "exampleSyncJob".into(),
        job_instance_id: Some(3),
        execution_id: Some(7),
        parameters: [("date".to_string(), "2026-11-20".to_string())].into(),
        status: status.parse().expect("a run status"),
        exit_code,
        message: message.map(str::to_owned),
        started_at: None,
        ended_at: None,
        duration_ms: 61_234,
        item_failures: steps.iter().map(|s| s.counts.skip_count).sum(),
        steps,
    }
}

/// A mock that records every notification and answers `answer`.
fn recording(answer: Result<(), NotifyError>) -> (MockNotifier, Arc<StdMutex<Vec<Notification>>>) {
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
                && n.job_name == "exampleSyncJob"
                && n.execution_id == 7
                && n.title == "exampleSyncJob started (execution 7)"
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
                "syncExampleStep",
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
                message: Some("skipped: completed in execution 5".into()),
                ..StepResult::new("warmCacheStep", BatchStatus::Completed)
            },
        ],
    );
    listener.after_job(&run(7), &r).await;
    let n = only(&sent);
    assert_eq!(n.kind, NotificationKind::Succeeded);
    assert_eq!(
        n.title,
        "exampleSyncJob completed in 1m 1s 234ms (execution 7)"
    );
    assert_eq!(n.text, None);
    assert_eq!(n.field(labels::DURATION), Some("1m 1s 234ms"));
    assert_eq!(
        n.field("syncExampleStep"),
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
        vec![step("refreshExampleStep", 30, 27, 3, &[("created", 27)])],
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
        n.field("refreshExampleStep")
            .unwrap()
            .contains("read 30 · written 27 · skipped 3"),
        "{n:?}"
    );
}

#[tokio::test]
async fn failure_and_stop_messages_carry_the_error() {
    let (mock, sent) = recording(Ok(()));
    let listener = NotifyListener::new(Arc::new(mock));
    let mut failed_step = step("syncExampleStep", 100, 100, 0, &[]);
    failed_step.status = BatchStatus::Failed;
    let failed = result(
        "FAILED",
        ExitCode::Failed,
        Some("syncExampleStep failed: redis: connection refused"),
        vec![failed_step],
    );
    listener.after_job(&run(7), &failed).await;
    let stopped = result(
        "STOPPED",
        ExitCode::Failed,
        Some("stopped during syncExampleStep"),
        vec![],
    );
    listener.after_job(&run(8), &stopped).await;

    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let f = &sent[0];
    assert_eq!(f.kind, NotificationKind::Failed);
    assert_eq!(
        f.title,
        "exampleSyncJob FAILED after 1m 1s 234ms (execution 7)"
    );
    assert_eq!(
        f.text.as_deref(),
        Some("syncExampleStep failed: redis: connection refused")
    );
    assert!(
        f.field("syncExampleStep")
            .unwrap()
            .starts_with("FAILED · read 100")
    );
    let s = &sent[1];
    assert_eq!((s.kind, s.execution_id), (NotificationKind::Stopped, 8));
    assert_eq!(s.text.as_deref(), Some("stopped during syncExampleStep"));
}

#[tokio::test]
async fn retries_exhausted_message_counts_the_attempts_of_that_execution() {
    let (mock, sent) = recording(Ok(()));
    let listener = NotifyListener::new(Arc::new(mock));
    listener
        .on_step_retry(&run(7), "syncExampleStep", 1, "boom 1")
        .await;
    listener
        .on_step_retry(&run(7), "syncExampleStep", 2, "boom 2")
        .await;
    // Another execution's retries do not count.
    listener
        .on_step_retry(&run(8), "syncExampleStep", 1, "other")
        .await;
    listener
        .on_retries_exhausted(&run(7), "syncExampleStep", "boom 3")
        .await;
    let n = only(&sent);
    assert_eq!(n.kind, NotificationKind::RetriesExhausted);
    assert_eq!(
        n.title,
        "exampleSyncJob: step syncExampleStep failed after 3 attempts, no retries left (execution 7)"
    );
    assert_eq!(n.text.as_deref(), Some("boom 3"));
    assert_eq!(n.field(labels::STEP), Some("syncExampleStep"));
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
        .on_retries_exhausted(&run(7), "syncExampleStep", "boom")
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
                "notification {kind} for exampleSyncJob execution 7 not sent; the run is not affected"
            )) && line.contains("error=the webhook answered HTTP 500: no_service"),
            "{line}"
        );
    }
}

#[test]
fn slack_payload_is_readable_and_escaped() {
    let n = Notification {
        kind: NotificationKind::Failed,
        job_name: "exampleRefreshJob".into(),
        execution_id: 12,
        title: "exampleRefreshJob FAILED after 2s (execution 12)".into(),
        text: Some("refreshExampleStep failed: <html> & ```oops```".into()),
        fields: (0..12)
            .map(|i| NotificationField {
                name: format!("field{i}"),
                value: format!("value {i}"),
            })
            .collect(),
        link: None,
    };
    let p = slack_payload(&n);
    assert_eq!(
        p["text"],
        ":x: exampleRefreshJob FAILED after 2s (execution 12)\n\
         refreshExampleStep failed: &lt;html&gt; &amp; ```oops```"
    );
    let blocks = p["blocks"].as_array().unwrap();
    assert_eq!(
        blocks[0]["text"]["text"],
        ":x: *exampleRefreshJob FAILED after 2s (execution 12)*"
    );
    assert_eq!(
        blocks[1]["text"]["text"],
        "```refreshExampleStep failed: &lt;html&gt; &amp; '''oops'''```"
    );
    // 12 fields: a section of 10 and one of 2.
    assert_eq!(blocks[2]["fields"].as_array().unwrap().len(), 10);
    assert_eq!(blocks[2]["fields"][0]["text"], "*field0*\nvalue 0");
    assert_eq!(blocks[3]["fields"].as_array().unwrap().len(), 2);
    assert_eq!(blocks[4]["type"], "context");
    assert_eq!(
        blocks[4]["elements"][0]["text"],
        "job `exampleRefreshJob` · execution 12 · FAILED"
    );
    assert_eq!(blocks.len(), 5);

    // With `[server] public_url`, the context line links to the execution's page.
    let linked = Notification {
        link: crate::config::execution_link(&"https://batch.example.com/ops".parse().unwrap(), 12),
        ..n.clone()
    };
    assert_eq!(
        slack_payload(&linked)["blocks"][4]["elements"][0]["text"],
        "job `exampleRefreshJob` · execution 12 · FAILED · <https://batch.example.com/ops/ui/executions/12|open execution 12>"
    );

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
    let p = BatchProperties::load_from(None, Vec::new(), &[]).unwrap();
    assert_eq!(p.notify.timeout, Duration::from_secs(5));
    assert!(p.notify.on_start && p.notify.on_success);
    assert!(listener_from_settings(&p.notify, None).unwrap().is_none());

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
        &[],
    )
    .unwrap();
    assert_eq!(p.notify.timeout, Duration::from_millis(1500));
    assert!(!p.notify.on_start && p.notify.on_success);
    let listener = listener_from_settings(&p.notify, None).unwrap();
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
        let e = BatchProperties::load_from(None, vec![(key.to_string(), value.to_string())], &[])
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

#[tokio::test]
async fn notifications_link_to_the_execution_page_under_public_url() {
    let (mock, sent) = recording(Ok(()));
    let p = BatchProperties::load_from(
        None,
        vec![(
            "BATCH__SERVER__PUBLIC_URL".to_string(),
            "https://batch.example.com".to_string(),
        )],
        &[],
    )
    .unwrap();
    NotifyListener::new(Arc::new(mock))
        .link_executions_under(p.server.public_url.clone())
        .before_job(&run(7))
        .await;
    assert_eq!(
        only(&sent).link.as_deref(),
        Some("https://batch.example.com/ui/executions/7")
    );
    assert_eq!(
        p.server.execution_link(8).as_deref(),
        Some("https://batch.example.com/ui/executions/8")
    );
    // Without it, no link.
    let (mock, sent) = recording(Ok(()));
    NotifyListener::new(Arc::new(mock))
        .before_job(&run(7))
        .await;
    assert_eq!(only(&sent).link, None);
}

#[test]
fn a_public_url_must_be_a_plain_http_url() {
    for (value, why) in [
        ("ftp://batch.example.com/", "is not an http(s) URL"),
        (
            "https://ops:s3cret@batch.example.com/",
            "must not carry a user",
        ),
        ("https://batch.example.com/?a=1", "must not have a query"),
        ("not a url", "server.public_url"),
    ] {
        let err = BatchProperties::load_from(
            None,
            vec![("BATCH__SERVER__PUBLIC_URL".to_string(), value.to_string())],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.public_url") && err.contains(why),
            "{value}: {err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}
