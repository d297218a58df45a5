//! `promtool check metrics` (Debian's `prometheus` package; `scripts/services.sh` installs it) on
//! what `Metrics::render` writes after realistic runs: every family present, no lint problem.
//! Without promtool the test fails (it does not skip): run `scripts/services.sh`.

use std::io::{ErrorKind, Write as _};
use std::process::{Command, Stdio};

use batch_common::listener::{JobListener, JobRunInfo, PartitionEvent};
use batch_common::metrics::Metrics;
use batch_common::repository::{BatchStatus, StepCounts};
use batch_common::{BatchResult, ExitCode, StepResult};
use chrono::{DateTime, Utc};

fn run(job: &str, execution_id: i64) -> JobRunInfo {
    JobRunInfo {
        job_name: job.to_owned(),
        job_instance_id: execution_id,
        execution_id,
        parameters: [("date".to_owned(), "2026-11-20".to_owned())].into(),
    }
}

fn step(name: &str, read: i64, skipped: i64, counters: &[(&str, i64)], ms: u64) -> StepResult {
    StepResult {
        counts: StepCounts {
            read_count: read,
            write_count: read - skipped,
            filter_count: 0,
            skip_count: skipped,
            counters: counters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            ..StepCounts::default()
        },
        duration_ms: ms,
        ..StepResult::new(name, BatchStatus::Completed)
    }
}

fn result(
    info: &JobRunInfo,
    status: BatchStatus,
    steps: Vec<StepResult>,
    ended: Option<DateTime<Utc>>,
) -> BatchResult {
    let item_failures = steps.iter().map(|s| s.counts.skip_count).sum();
    BatchResult {
        job_name: info.job_name.clone(),
        job_instance_id: Some(info.job_instance_id),
        execution_id: Some(info.execution_id),
        parameters: info.parameters.clone(),
        status: status.into(),
        exit_code: match status {
            BatchStatus::Completed if item_failures > 0 => ExitCode::CompletedWithFailures,
            BatchStatus::Completed => ExitCode::Completed,
            _ => ExitCode::Failed,
        },
        message: None,
        started_at: None,
        ended_at: ended,
        duration_ms: steps.iter().map(|s| s.duration_ms).sum(),
        steps,
        item_failures,
    }
}

/// A process that ran a partitioned sync (with a re-claim and a lost lease), a report, a failed
/// asset refresh, answered operators, and read an older success from the repository.
async fn busy_metrics() -> Metrics {
    let m = Metrics::new();
    for job in ["pointBalanceSyncJob", "assetRefreshJob", "idleJob"] {
        m.register_job(job);
    }
    let ended = DateTime::from_timestamp(1_795_000_000, 250_000_000).unwrap();

    let sync = run("pointBalanceSyncJob", 41);
    m.before_job(&sync).await;
    let partitioned = "syncPointBalanceStep";
    for event in [
        PartitionEvent::Claimed,
        PartitionEvent::Claimed,
        PartitionEvent::Completed,
        PartitionEvent::Reclaimed,
        PartitionEvent::Lost,
        PartitionEvent::Claimed,
        PartitionEvent::Released,
        PartitionEvent::Claimed,
        PartitionEvent::Failed,
        PartitionEvent::Claimed,
    ] {
        m.on_partition(&sync, partitioned, event).await;
    }
    let steps = vec![
        step(
            partitioned,
            1_000_000,
            3,
            &[
                ("created", 10),
                ("corrected", 2),
                ("unchanged", 999_985),
                ("skipped_newer", 0),
            ],
            754_321,
        ),
        step("dailyReportStep", 1_000_000, 0, &[], 12_345),
    ];
    for s in &steps {
        m.after_step(&sync, s).await;
    }
    m.after_job(
        &sync,
        &result(&sync, BatchStatus::Completed, steps, Some(ended)),
    )
    .await;

    let refresh = run("assetRefreshJob", 42);
    m.before_job(&refresh).await;
    let failed = StepResult {
        message: Some("provider: 503 Service Unavailable".to_owned()),
        ..step("refreshAssetStep", 40, 0, &[("refreshed", 39)], 95)
    };
    m.after_step(&refresh, &failed).await;
    m.after_job(
        &refresh,
        &result(&refresh, BatchStatus::Failed, vec![failed], Some(ended)),
    )
    .await;
    // Still running: a second execution of the sync.
    m.before_job(&run("pointBalanceSyncJob", 43)).await;

    for (job, action, outcome) in [
        ("pointBalanceSyncJob", "run", "accepted"),
        ("pointBalanceSyncJob", "stop", "accepted"),
        ("pointBalanceSyncJob", "restart", "refused"),
        ("assetRefreshJob", "abandon", "accepted"),
        ("noSuchJob", "run", "not_found"),
    ] {
        m.operator_action(job, action, outcome);
    }
    m.observe_last_success("assetRefreshJob", ended - chrono::Duration::days(1));
    m
}

#[tokio::test]
async fn promtool_check_metrics_is_clean() {
    let text = busy_metrics().await.render();
    for family in [
        "batch_job_runs_total counter",
        "batch_job_running gauge",
        "batch_job_duration_seconds histogram",
        "batch_step_duration_seconds histogram",
        "batch_step_items_total counter",
        "batch_step_domain_events_total counter",
        "batch_job_item_failures_total counter",
        "batch_partitions_total counter",
        "batch_partitions_working gauge",
        "batch_operator_actions_total counter",
        "batch_job_last_success_timestamp_seconds gauge",
    ] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family}")),
            "no `# TYPE {family}` in:\n{text}"
        );
    }
    for sample in [
        "batch_partitions_working{job=\"pointBalanceSyncJob\",step=\"syncPointBalanceStep\"} 2",
        "batch_job_running{job=\"pointBalanceSyncJob\"} 1",
        "batch_job_item_failures_total{job=\"pointBalanceSyncJob\"} 3",
        "batch_job_runs_total{job=\"assetRefreshJob\",status=\"FAILED\"} 1",
        "batch_job_last_success_timestamp_seconds{job=\"pointBalanceSyncJob\"} 1795000000.25",
        "batch_job_last_success_timestamp_seconds{job=\"assetRefreshJob\"} 1794913600.25",
    ] {
        assert!(
            text.lines().any(|l| l == sample),
            "no `{sample}` in:\n{text}"
        );
    }

    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not installed: run scripts/services.sh (it installs Debian's \
             `prometheus` package, which has promtool)"
        ),
        Err(e) => panic!("could not start promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing the metrics to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "`promtool check metrics` ({}) objects:\n{stdout}{stderr}\non:\n{text}",
        out.status
    );
}
