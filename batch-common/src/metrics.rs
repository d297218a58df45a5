//! Run metrics through the Prometheus client library (`prometheus-client`), rendered in the
//! Prometheus text exposition format (version 0.0.4, [`CONTENT_TYPE`]).
//!
//! [`Metrics`] is a [`JobListener`]: attach it to the launcher and it counts what the runs of this
//! process did. `render` writes every family; the "last successful run" gauge can also be seeded
//! from the job repository ([`Metrics::observe_last_success`]) so that runs launched elsewhere
//! (Jenkins, another process) and runs before a restart show up too. `serve`'s API reports what
//! operators asked of it through [`Metrics::operator_action`].
//!
//! Families:
//! - `batch_job_runs_total{job,status}`: finished executions by final status.
//! - `batch_job_running{job}`: executions of this process running now.
//! - `batch_job_duration_seconds{job}`: histogram of execution wall time.
//! - `batch_step_duration_seconds{job,step}`: histogram of step wall time.
//! - `batch_step_items_total{job,step,kind}`: items `read`, `written`, `filtered` and `skipped`
//!   (an item that failed alone and was recorded as an item failure; the run goes on).
//! - `batch_step_domain_events_total{job,step,counter}`: the steps' domain counters (`created`,
//!   ...). Named `batch_step_counter_total` before the client library: `promtool check metrics`
//!   objects to a metric name that includes its type.
//! - `batch_job_item_failures_total{job}`: item failures recorded by finished executions.
//! - `batch_partitions_total{job,step,event}`: partitions this process's workers `claimed`,
//!   `reclaimed` (after a lost lease or a release), `completed`, `failed`, `released` (stopped)
//!   and `lost` (its lease expired while it worked).
//! - `batch_partitions_working{job,step}`: partitions this process's workers hold now (claimed or
//!   re-claimed and not yet completed, failed, released or lost).
//! - `batch_operator_actions_total{job,action,outcome}`: what operators asked (`run`, `stop`,
//!   `restart`, `abandon`, ...) and how it was answered (`accepted`, `refused`, `not_found`, ...).
//! - `batch_job_last_success_timestamp_seconds{job}`: end time of the last COMPLETED execution.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::listener::{JobListener, JobRunInfo, PartitionEvent};
use crate::result::{BatchResult, StepResult};

/// Upper bounds (seconds) of the duration histograms' buckets: batch runs take seconds to hours.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// The `Content-Type` of [`Metrics::render`]'s text: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RunLabels {
    job: String,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabels {
    job: String,
    step: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ItemLabels {
    job: String,
    step: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DomainLabels {
    job: String,
    step: String,
    counter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabels {
    job: String,
    step: String,
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    job: String,
    action: String,
    outcome: String,
}

type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

/// The metrics of one process; cheap to share (`Arc<Metrics>`), updated by its listener methods.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    running: Family<JobLabels, Gauge>,
    job_duration: Durations<JobLabels>,
    step_duration: Durations<StepLabels>,
    items: Family<ItemLabels, Counter>,
    domain_events: Family<DomainLabels, Counter>,
    item_failures: Family<JobLabels, Counter>,
    partitions: Family<PartitionLabels, Counter>,
    partitions_working: Family<StepLabels, Gauge>,
    operator_actions: Family<ActionLabels, Counter>,
    last_success: Family<JobLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            runs: Family::default(),
            running: Family::default(),
            job_duration: Family::new_with_constructor(duration_histogram),
            step_duration: Family::new_with_constructor(duration_histogram),
            items: Family::default(),
            domain_events: Family::default(),
            item_failures: Family::default(),
            partitions: Family::default(),
            partitions_working: Family::default(),
            operator_actions: Family::default(),
            last_success: Family::default(),
        };
        // Counters are registered without `_total`: the library appends it. It also ends each
        // help text with a full stop.
        let r = &mut m.registry;
        r.register(
            "batch_job_runs",
            "Finished job executions by final status",
            m.runs.clone(),
        );
        r.register(
            "batch_job_running",
            "Job executions of this process running now",
            m.running.clone(),
        );
        r.register_with_unit(
            "batch_job_duration",
            "Wall time of job executions",
            Unit::Seconds,
            m.job_duration.clone(),
        );
        r.register_with_unit(
            "batch_step_duration",
            "Wall time of step executions",
            Unit::Seconds,
            m.step_duration.clone(),
        );
        r.register(
            "batch_step_items",
            "Items by kind: read, written, filtered, skipped (item failures)",
            m.items.clone(),
        );
        r.register(
            "batch_step_domain_events",
            "Domain counters of steps (created, corrected, unchanged, skipped_newer, ...)",
            m.domain_events.clone(),
        );
        r.register(
            "batch_job_item_failures",
            "Item failures recorded by finished job executions",
            m.item_failures.clone(),
        );
        r.register(
            "batch_partitions",
            "Partitions of partitioned steps that this process's workers claimed, re-claimed, \
             completed, failed, released or lost",
            m.partitions.clone(),
        );
        r.register(
            "batch_partitions_working",
            "Partitions of partitioned steps that this process's workers hold now",
            m.partitions_working.clone(),
        );
        r.register(
            "batch_operator_actions",
            "Operator requests (run, stop, restart, abandon, ...) by outcome",
            m.operator_actions.clone(),
        );
        r.register_with_unit(
            "batch_job_last_success_timestamp",
            "End time (Unix seconds) of the job's last COMPLETED execution",
            Unit::Seconds,
            m.last_success.clone(),
        );
        m
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    fn job(job: &str) -> JobLabels {
        JobLabels {
            job: job.to_owned(),
        }
    }

    /// Records that `job` last completed at `at`, if that is later than what is known (e.g. read
    /// from the job repository at start-up or before a scrape).
    pub fn observe_last_success(&self, job: &str, at: DateTime<Utc>) {
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        let gauge = self.last_success.get_or_create(&Self::job(job));
        // Only forward: an older success (another process, the repository) never moves it back.
        let _ = gauge
            .inner()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (f64::from_bits(bits) < seconds).then_some(seconds.to_bits())
            });
    }

    /// Makes `job` appear in every per-job family with zero values (so a scraper sees the series
    /// before the first run).
    pub fn register_job(&self, job: &str) {
        let labels = Self::job(job);
        self.running.get_or_create_owned(&labels);
        self.job_duration.get_or_create_owned(&labels);
        self.item_failures.get_or_create_owned(&labels);
    }

    /// Counts an operator's request about `job`: `action` (`run`, `stop`, `restart`, `abandon`,
    /// ...) answered with `outcome` (`accepted`, `refused`, `not_found`, ...).
    pub fn operator_action(&self, job: &str, action: &str, outcome: &str) {
        self.operator_actions
            .get_or_create(&ActionLabels {
                job: job.to_owned(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]) of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            // Writing to a String does not fail; an encoder error leaves a partial text behind.
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// Subtracts one from `gauge` without going below zero (an end whose start this process did not
/// see, e.g. counted before a reset, must not make it negative).
fn dec_to_zero(gauge: &AtomicI64) {
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n > 0).then_some(n - 1)
    });
}

#[async_trait]
impl JobListener for Metrics {
    async fn on_partition(&self, job: &JobRunInfo, step: &str, event: PartitionEvent) {
        self.partitions
            .get_or_create(&PartitionLabels {
                job: job.job_name.clone(),
                step: step.to_owned(),
                event: event.as_str(),
            })
            .inc();
        let working = self.partitions_working.get_or_create(&StepLabels {
            job: job.job_name.clone(),
            step: step.to_owned(),
        });
        match event {
            PartitionEvent::Claimed | PartitionEvent::Reclaimed => {
                working.inc();
            }
            PartitionEvent::Completed
            | PartitionEvent::Failed
            | PartitionEvent::Released
            | PartitionEvent::Lost => dec_to_zero(working.inner()),
        }
    }

    async fn before_job(&self, job: &JobRunInfo) {
        self.running.get_or_create(&Self::job(&job.job_name)).inc();
    }

    async fn after_step(&self, job: &JobRunInfo, step: &StepResult) {
        let labels = StepLabels {
            job: job.job_name.clone(),
            step: step.name.clone(),
        };
        self.step_duration
            .get_or_create(&labels)
            .observe(step.duration_ms as f64 / 1000.0);
        for (kind, n) in [
            ("read", step.counts.read_count),
            ("written", step.counts.write_count),
            ("filtered", step.counts.filter_count),
            ("skipped", step.counts.skip_count),
        ] {
            self.items
                .get_or_create(&ItemLabels {
                    job: labels.job.clone(),
                    step: labels.step.clone(),
                    kind,
                })
                .inc_by(n.max(0) as u64);
        }
        for (counter, n) in &step.counts.counters {
            self.domain_events
                .get_or_create(&DomainLabels {
                    job: labels.job.clone(),
                    step: labels.step.clone(),
                    counter: counter.clone(),
                })
                .inc_by((*n).max(0) as u64);
        }
    }

    async fn after_job(&self, job: &JobRunInfo, result: &BatchResult) {
        let labels = Self::job(&job.job_name);
        dec_to_zero(self.running.get_or_create(&labels).inner());
        self.runs
            .get_or_create(&RunLabels {
                job: job.job_name.clone(),
                status: result.status.to_string(),
            })
            .inc();
        self.job_duration
            .get_or_create(&labels)
            .observe(result.duration_ms as f64 / 1000.0);
        self.item_failures
            .get_or_create(&labels)
            .inc_by(result.item_failures.max(0) as u64);
        if result.status == "COMPLETED"
            && let Some(ended) = result.ended_at
        {
            self.observe_last_success(&job.job_name, ended);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::repository::{BatchStatus, StepCounts};
    use crate::result::ExitCode;

    fn run() -> JobRunInfo {
        JobRunInfo {
            job_name: "someJob".into(),
            job_instance_id: 1,
            execution_id: 7,
            parameters: BTreeMap::new(),
        }
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing `{line}` in:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn counts_a_run() {
        let m = Metrics::new();
        m.register_job("otherJob");
        m.before_job(&run()).await;
        assert_lines(&m.render(), &["batch_job_running{job=\"someJob\"} 1"]);
        let step = StepResult {
            counts: StepCounts {
                read_count: 10,
                write_count: 9,
                filter_count: 1,
                counters: [("created".to_owned(), 4)].into(),
                ..StepCounts::default()
            },
            duration_ms: 2_500,
            ..StepResult::new("aStep", BatchStatus::Completed)
        };
        m.after_step(&run(), &step).await;
        let ended = DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap();
        let result = BatchResult {
            job_name: "someJob".into(),
            job_instance_id: Some(1),
            execution_id: Some(7),
            parameters: BTreeMap::new(),
            status: BatchStatus::Completed.into(),
            exit_code: ExitCode::Completed,
            message: None,
            started_at: None,
            ended_at: Some(ended),
            duration_ms: 3_000,
            steps: vec![step],
            item_failures: 0,
        };
        m.after_job(&run(), &result).await;
        let text = m.render();
        assert_lines(
            &text,
            &[
                "# HELP batch_job_runs_total Finished job executions by final status.",
                "# TYPE batch_job_runs_total counter",
                "# TYPE batch_job_duration_seconds histogram",
                "# TYPE batch_job_last_success_timestamp_seconds gauge",
                "batch_job_running{job=\"someJob\"} 0",
                "batch_job_running{job=\"otherJob\"} 0",
                "batch_job_runs_total{job=\"someJob\",status=\"COMPLETED\"} 1",
                "batch_job_duration_seconds_bucket{job=\"someJob\",le=\"1\"} 0",
                "batch_job_duration_seconds_bucket{job=\"someJob\",le=\"5\"} 1",
                "batch_job_duration_seconds_bucket{job=\"someJob\",le=\"+Inf\"} 1",
                "batch_job_duration_seconds_sum{job=\"someJob\"} 3.0",
                "batch_job_duration_seconds_count{job=\"otherJob\"} 0",
                "batch_job_item_failures_total{job=\"otherJob\"} 0",
                "batch_step_duration_seconds_sum{job=\"someJob\",step=\"aStep\"} 2.5",
                "batch_step_items_total{job=\"someJob\",step=\"aStep\",kind=\"read\"} 10",
                "batch_step_items_total{job=\"someJob\",step=\"aStep\",kind=\"filtered\"} 1",
                "batch_step_domain_events_total{job=\"someJob\",step=\"aStep\",counter=\"created\"} 4",
                "batch_job_last_success_timestamp_seconds{job=\"someJob\"} 1700000000.5",
            ],
        );
        // Every bucket of DURATION_BUCKETS, then +Inf.
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("batch_job_duration_seconds_bucket{job=\"someJob\""))
            .count();
        assert_eq!(buckets, DURATION_BUCKETS.len() + 1, "{text}");
        // An older success seen in the repository does not move the gauge back; a newer one does.
        m.observe_last_success("someJob", ended - chrono::Duration::hours(1));
        assert_lines(
            &m.render(),
            &["batch_job_last_success_timestamp_seconds{job=\"someJob\"} 1700000000.5"],
        );
        m.observe_last_success("someJob", ended + chrono::Duration::seconds(10));
        m.observe_last_success("otherJob", ended);
        assert_lines(
            &m.render(),
            &[
                "batch_job_last_success_timestamp_seconds{job=\"someJob\"} 1700000010.5",
                "batch_job_last_success_timestamp_seconds{job=\"otherJob\"} 1700000000.5",
            ],
        );
    }

    #[tokio::test]
    async fn a_run_that_ends_unseen_does_not_go_below_zero() {
        let m = Metrics::new();
        let result = BatchResult {
            job_name: "someJob".into(),
            job_instance_id: Some(1),
            execution_id: Some(7),
            parameters: BTreeMap::new(),
            status: BatchStatus::Failed.into(),
            exit_code: ExitCode::Failed,
            message: None,
            started_at: None,
            ended_at: None,
            duration_ms: 10,
            steps: vec![],
            item_failures: 2,
        };
        m.after_job(&run(), &result).await;
        let text = m.render();
        assert_lines(
            &text,
            &[
                "batch_job_running{job=\"someJob\"} 0",
                "batch_job_runs_total{job=\"someJob\",status=\"FAILED\"} 1",
                "batch_job_item_failures_total{job=\"someJob\"} 2",
            ],
        );
        assert!(
            !text.contains("batch_job_last_success_timestamp_seconds{"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn counts_partition_events_and_working_partitions() {
        let m = Metrics::new();
        for event in [
            PartitionEvent::Claimed,
            PartitionEvent::Claimed,
            PartitionEvent::Claimed,
            PartitionEvent::Completed,
            PartitionEvent::Reclaimed,
            PartitionEvent::Lost,
        ] {
            m.on_partition(&run(), "aStep", event).await;
        }
        let text = m.render();
        assert_lines(
            &text,
            &[
                "# TYPE batch_partitions_total counter",
                "# TYPE batch_partitions_working gauge",
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"claimed\"} 3",
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"completed\"} 1",
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"reclaimed\"} 1",
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"lost\"} 1",
                "batch_partitions_working{job=\"someJob\",step=\"aStep\"} 2",
            ],
        );
        for event in [
            PartitionEvent::Failed,
            PartitionEvent::Released,
            PartitionEvent::Lost,
        ] {
            m.on_partition(&run(), "aStep", event).await;
        }
        assert_lines(
            &m.render(),
            &[
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"failed\"} 1",
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"released\"} 1",
                "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"lost\"} 2",
                "batch_partitions_working{job=\"someJob\",step=\"aStep\"} 0",
            ],
        );
    }

    #[test]
    fn counts_operator_actions() {
        let m = Metrics::new();
        m.operator_action("someJob", "stop", "accepted");
        m.operator_action("someJob", "stop", "accepted");
        m.operator_action("someJob", "restart", "refused");
        m.operator_action("noSuchJob", "run", "not_found");
        assert_lines(
            &m.render(),
            &[
                "# TYPE batch_operator_actions_total counter",
                "batch_operator_actions_total{job=\"someJob\",action=\"stop\",outcome=\"accepted\"} 2",
                "batch_operator_actions_total{job=\"someJob\",action=\"restart\",outcome=\"refused\"} 1",
                "batch_operator_actions_total{job=\"noSuchJob\",action=\"run\",outcome=\"not_found\"} 1",
            ],
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.register_job("a\"b\\c\nd");
        assert_lines(
            &m.render(),
            &["batch_job_running{job=\"a\\\"b\\\\c\\nd\"} 0"],
        );
    }
}
