//! Run metrics in the Prometheus text exposition format (version 0.0.4).
//!
//! [`Metrics`] is a [`JobListener`]: attach it to the launcher and it counts what the runs of this
//! process did. `render` writes every family; the "last successful run" gauge can also be seeded
//! from the job repository ([`Metrics::observe_last_success`]) so that runs launched elsewhere
//! (Jenkins, another process) and runs before a restart show up too.
//!
//! Families:
//! - `batch_job_runs_total{job,status}`: finished executions by final status.
//! - `batch_job_running{job}`: executions of this process running now.
//! - `batch_job_duration_seconds{job}`: histogram of execution wall time.
//! - `batch_step_duration_seconds{job,step}`: histogram of step wall time.
//! - `batch_step_items_total{job,step,kind}`: items `read`, `written`, `filtered` and `skipped`
//!   (an item that failed alone and was recorded as an item failure; the run goes on).
//! - `batch_step_counter_total{job,step,counter}`: the steps' domain counters (`created`, ...).
//! - `batch_job_item_failures_total{job}`: item failures recorded by finished executions.
//! - `batch_partitions_total{job,step,event}`: partitions this process's workers `claimed`,
//!   `reclaimed` (after a lost lease or a release), `completed`, `failed`, `released` (stopped)
//!   and `lost` (its lease expired while it worked).
//! - `batch_job_last_success_timestamp_seconds{job}`: end time of the last COMPLETED execution.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::listener::{JobListener, JobRunInfo, PartitionEvent};
use crate::result::{BatchResult, StepResult};

/// Upper bounds (seconds) of the duration histograms' buckets: batch runs take seconds to hours.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; DURATION_BUCKETS.len()];
        }
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if value <= *le {
                self.buckets[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct State {
    runs: BTreeMap<(String, String), u64>,
    running: BTreeMap<String, i64>,
    job_duration: BTreeMap<String, Histogram>,
    step_duration: BTreeMap<(String, String), Histogram>,
    items: BTreeMap<(String, String, &'static str), u64>,
    counters: BTreeMap<(String, String, String), i64>,
    item_failures: BTreeMap<String, u64>,
    last_success: BTreeMap<String, DateTime<Utc>>,
    partitions: BTreeMap<(String, String, &'static str), u64>,
}

/// The metrics of one process; cheap to share (`Arc<Metrics>`), updated by its listener methods.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `job` last completed at `at`, if that is later than what is known (e.g. read
    /// from the job repository at start-up or before a scrape).
    pub fn observe_last_success(&self, job: &str, at: DateTime<Utc>) {
        let mut s = self.lock();
        let slot = s.last_success.entry(job.to_owned()).or_insert(at);
        if *slot < at {
            *slot = at;
        }
    }

    /// Makes `job` appear in every per-job family with zero values (so a scraper sees the series
    /// before the first run).
    pub fn register_job(&self, job: &str) {
        let mut s = self.lock();
        s.running.entry(job.to_owned()).or_insert(0);
        s.job_duration.entry(job.to_owned()).or_default();
        s.item_failures.entry(job.to_owned()).or_insert(0);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "batch_job_runs_total",
            "counter",
            "Finished job executions by final status.",
        );
        for ((job, status), n) in &s.runs {
            sample(
                &mut out,
                "batch_job_runs_total",
                &[("job", job), ("status", status)],
                *n as f64,
            );
        }
        family(
            &mut out,
            "batch_job_running",
            "gauge",
            "Job executions of this process running now.",
        );
        for (job, n) in &s.running {
            sample(&mut out, "batch_job_running", &[("job", job)], *n as f64);
        }
        family(
            &mut out,
            "batch_job_duration_seconds",
            "histogram",
            "Wall time of job executions.",
        );
        for (job, h) in &s.job_duration {
            histogram(&mut out, "batch_job_duration_seconds", &[("job", job)], h);
        }
        family(
            &mut out,
            "batch_step_duration_seconds",
            "histogram",
            "Wall time of step executions.",
        );
        for ((job, step), h) in &s.step_duration {
            histogram(
                &mut out,
                "batch_step_duration_seconds",
                &[("job", job), ("step", step)],
                h,
            );
        }
        family(
            &mut out,
            "batch_step_items_total",
            "counter",
            "Items by kind: read, written, filtered, skipped (item failures).",
        );
        for ((job, step, kind), n) in &s.items {
            sample(
                &mut out,
                "batch_step_items_total",
                &[("job", job), ("step", step), ("kind", kind)],
                *n as f64,
            );
        }
        family(
            &mut out,
            "batch_step_counter_total",
            "counter",
            "Domain counters of steps (created, corrected, unchanged, skipped_newer, ...).",
        );
        for ((job, step, counter), n) in &s.counters {
            sample(
                &mut out,
                "batch_step_counter_total",
                &[("job", job), ("step", step), ("counter", counter)],
                *n as f64,
            );
        }
        family(
            &mut out,
            "batch_job_item_failures_total",
            "counter",
            "Item failures recorded by finished job executions.",
        );
        for (job, n) in &s.item_failures {
            sample(
                &mut out,
                "batch_job_item_failures_total",
                &[("job", job)],
                *n as f64,
            );
        }
        family(
            &mut out,
            "batch_partitions_total",
            "counter",
            "Partitions of partitioned steps that this process's workers claimed, re-claimed, completed, failed, released or lost.",
        );
        for ((job, step, event), n) in &s.partitions {
            sample(
                &mut out,
                "batch_partitions_total",
                &[("job", job), ("step", step), ("event", event)],
                *n as f64,
            );
        }
        family(
            &mut out,
            "batch_job_last_success_timestamp_seconds",
            "gauge",
            "End time (Unix seconds) of the job's last COMPLETED execution.",
        );
        for (job, at) in &s.last_success {
            sample(
                &mut out,
                "batch_job_last_success_timestamp_seconds",
                &[("job", job)],
                at.timestamp_millis() as f64 / 1000.0,
            );
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

fn sample(out: &mut String, name: &str, pairs: &[(&str, &str)], value: f64) {
    let _ = writeln!(out, "{name}{} {}", labels(pairs), number(value));
}

fn histogram(out: &mut String, name: &str, pairs: &[(&str, &str)], h: &Histogram) {
    for (i, le) in DURATION_BUCKETS.iter().enumerate() {
        let mut with_le = pairs.to_vec();
        let le = number(*le);
        with_le.push(("le", &le));
        let n = h.buckets.get(i).copied().unwrap_or(0);
        sample(out, &format!("{name}_bucket"), &with_le, n as f64);
    }
    let mut with_le = pairs.to_vec();
    with_le.push(("le", "+Inf"));
    sample(out, &format!("{name}_bucket"), &with_le, h.count as f64);
    sample(out, &format!("{name}_sum"), pairs, h.sum);
    sample(out, &format!("{name}_count"), pairs, h.count as f64);
}

#[async_trait]
impl JobListener for Metrics {
    async fn on_partition(&self, job: &JobRunInfo, step: &str, event: PartitionEvent) {
        let mut s = self.lock();
        *s.partitions
            .entry((job.job_name.clone(), step.to_owned(), event.as_str()))
            .or_insert(0) += 1;
    }

    async fn before_job(&self, job: &JobRunInfo) {
        let mut s = self.lock();
        *s.running.entry(job.job_name.clone()).or_insert(0) += 1;
    }

    async fn after_step(&self, job: &JobRunInfo, step: &StepResult) {
        let mut s = self.lock();
        let key = (job.job_name.clone(), step.name.clone());
        s.step_duration
            .entry(key.clone())
            .or_default()
            .observe(step.duration_ms as f64 / 1000.0);
        for (kind, n) in [
            ("read", step.counts.read_count),
            ("written", step.counts.write_count),
            ("filtered", step.counts.filter_count),
            ("skipped", step.counts.skip_count),
        ] {
            *s.items
                .entry((key.0.clone(), key.1.clone(), kind))
                .or_insert(0) += n.max(0) as u64;
        }
        for (counter, n) in &step.counts.counters {
            *s.counters
                .entry((key.0.clone(), key.1.clone(), counter.clone()))
                .or_insert(0) += *n;
        }
    }

    async fn after_job(&self, job: &JobRunInfo, result: &BatchResult) {
        let mut s = self.lock();
        if let Some(n) = s.running.get_mut(&job.job_name) {
            *n = (*n - 1).max(0);
        }
        *s.runs
            .entry((job.job_name.clone(), result.status.to_string()))
            .or_insert(0) += 1;
        s.job_duration
            .entry(job.job_name.clone())
            .or_default()
            .observe(result.duration_ms as f64 / 1000.0);
        *s.item_failures.entry(job.job_name.clone()).or_insert(0) +=
            result.item_failures.max(0) as u64;
        if result.status == "COMPLETED"
            && let Some(ended) = result.ended_at
        {
            let slot = s.last_success.entry(job.job_name.clone()).or_insert(ended);
            if *slot < ended {
                *slot = ended;
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn counts_a_run() {
        let m = Metrics::new();
        m.register_job("otherJob");
        m.before_job(&run()).await;
        assert!(
            m.render()
                .contains("batch_job_running{job=\"someJob\"} 1\n")
        );
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
        for line in [
            "batch_job_running{job=\"someJob\"} 0",
            "batch_job_running{job=\"otherJob\"} 0",
            "batch_job_runs_total{job=\"someJob\",status=\"COMPLETED\"} 1",
            "batch_job_duration_seconds_bucket{job=\"someJob\",le=\"1\"} 0",
            "batch_job_duration_seconds_bucket{job=\"someJob\",le=\"5\"} 1",
            "batch_job_duration_seconds_bucket{job=\"someJob\",le=\"+Inf\"} 1",
            "batch_job_duration_seconds_sum{job=\"someJob\"} 3",
            "batch_job_duration_seconds_count{job=\"otherJob\"} 0",
            "batch_step_duration_seconds_sum{job=\"someJob\",step=\"aStep\"} 2.5",
            "batch_step_items_total{job=\"someJob\",step=\"aStep\",kind=\"read\"} 10",
            "batch_step_items_total{job=\"someJob\",step=\"aStep\",kind=\"filtered\"} 1",
            "batch_step_counter_total{job=\"someJob\",step=\"aStep\",counter=\"created\"} 4",
            "batch_job_last_success_timestamp_seconds{job=\"someJob\"} 1700000000.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        // An older success seen in the repository does not move the gauge back.
        m.observe_last_success("someJob", ended - chrono::Duration::hours(1));
        assert!(
            m.render()
                .contains("batch_job_last_success_timestamp_seconds{job=\"someJob\"} 1700000000.5")
        );
    }

    #[tokio::test]
    async fn counts_partition_events() {
        let m = Metrics::new();
        for event in [
            PartitionEvent::Claimed,
            PartitionEvent::Claimed,
            PartitionEvent::Completed,
            PartitionEvent::Reclaimed,
            PartitionEvent::Lost,
        ] {
            m.on_partition(&run(), "aStep", event).await;
        }
        let text = m.render();
        for line in [
            "# TYPE batch_partitions_total counter",
            "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"claimed\"} 2",
            "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"completed\"} 1",
            "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"reclaimed\"} 1",
            "batch_partitions_total{job=\"someJob\",step=\"aStep\",event=\"lost\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("job", "a\"b\\c\nd")]),
            "{job=\"a\\\"b\\\\c\\nd\"}"
        );
    }
}
