//! Step progress: a bar per step on a terminal, a log line every N chunks otherwise (Jenkins,
//! `serve`, pipes).
//!
//! The bars draw on stderr, where the logs go too; [`LogWriter`] prints each log line with the
//! bars suspended, so the two never garble each other.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::num::NonZeroU32;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_common::StepResult;
use batch_common::listener::{JobListener, JobRunInfo};
use batch_common::repository::StepProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The process's bars; logs are written through it (see [`LogWriter`]).
static BARS: LazyLock<MultiProgress> =
    LazyLock::new(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on the terminal.
    Bars,
    /// An `info` log line every `n` chunks of a step.
    Lines(NonZeroU32),
}

impl ProgressMode {
    /// Bars when stderr is a terminal and logs are human-readable, log lines otherwise.
    pub fn detect(human_logs: bool, every_chunks: NonZeroU32) -> Self {
        if human_logs && std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines(every_chunks)
        }
    }
}

struct StepState {
    started: Instant,
    chunks: u64,
    bar: Option<ProgressBar>,
}

/// The progress listener.
pub struct Progress {
    mode: ProgressMode,
    steps: Mutex<HashMap<(i64, String), StepState>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// A listener showing progress in `mode`.
    pub fn new(mode: ProgressMode) -> Self {
        Progress {
            mode,
            steps: Mutex::new(HashMap::new()),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String), StepState>> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Items per second, for humans.
fn rate(items: i64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { items as f64 / secs } else { 0.0 }
}

/// `created=3 corrected=1` from the domain counters.
fn counters_text(progress: &StepProgress) -> String {
    progress
        .counts
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[async_trait]
impl JobListener for Progress {
    async fn before_step(&self, job: &JobRunInfo, step: &str) {
        let bar = match self.mode {
            ProgressMode::Bars => {
                let bar = BARS.add(ProgressBar::no_length());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {human_pos}/{human_len} ({per_sec}, eta {eta}) {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(step.to_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                Some(bar)
            }
            ProgressMode::Lines(_) => None,
        };
        self.states().insert(
            (job.execution_id, step.to_owned()),
            StepState {
                started: Instant::now(),
                chunks: 0,
                bar,
            },
        );
    }

    async fn on_chunk(
        &self,
        job: &JobRunInfo,
        step: &str,
        progress: &StepProgress,
        total: Option<u64>,
    ) {
        let mut states = self.states();
        let Some(state) = states.get_mut(&(job.execution_id, step.to_owned())) else {
            return;
        };
        state.chunks += 1;
        let done = progress.counts.read_count;
        match (&state.bar, self.mode) {
            (Some(bar), _) => {
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar.set_position(done.max(0) as u64);
                bar.set_message(counters_text(progress));
            }
            (None, ProgressMode::Lines(every)) if state.chunks % u64::from(every.get()) == 0 => {
                let per_sec = rate(done, state.started.elapsed());
                let percent = total
                    .filter(|t| *t > 0)
                    .map(|t| format!("{:.1}%", done as f64 * 100.0 / t as f64));
                // The job's span names the job and execution.
                tracing::info!(
                    step,
                    done,
                    total,
                    percent = percent.as_deref().unwrap_or("?"),
                    items_per_sec = per_sec.round() as u64,
                    counters = %counters_text(progress),
                    "progress"
                );
            }
            _ => {}
        }
    }

    async fn after_step(&self, job: &JobRunInfo, step: &StepResult) {
        if let Some(state) = self.states().remove(&(job.execution_id, step.name.clone()))
            && let Some(bar) = state.bar
        {
            bar.finish_and_clear();
            BARS.remove(&bar);
        }
    }
}

/// The log writer of the launcher: stderr, with the progress bars suspended while a line is
/// written.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BARS.suspend(|| std::io::stderr().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        BARS.suspend(|| std::io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run() -> JobRunInfo {
        JobRunInfo {
            job_name: "someJob".into(),
            job_instance_id: 1,
            execution_id: 3,
            parameters: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn bars_follow_the_chunks() {
        let p = Progress::new(ProgressMode::Bars);
        p.before_step(&run(), "aStep").await;
        let mut progress = StepProgress::default();
        progress.counts.read_count = 250;
        progress.add_counter("created", 7);
        p.on_chunk(&run(), "aStep", &progress, Some(1000)).await;
        {
            let states = p.states();
            let bar = states[&(3, "aStep".to_owned())].bar.clone().unwrap();
            assert_eq!(bar.length(), Some(1000));
            assert_eq!(bar.position(), 250);
            assert_eq!(bar.message(), "created=7");
        }
        p.after_step(
            &run(),
            &StepResult::new("aStep", batch_common::repository::BatchStatus::Completed),
        )
        .await;
        assert!(p.states().is_empty());
    }

    #[test]
    fn rate_is_items_per_second() {
        assert_eq!(rate(500, Duration::from_secs(2)), 250.0);
        assert_eq!(rate(500, Duration::ZERO), 0.0);
    }
}
