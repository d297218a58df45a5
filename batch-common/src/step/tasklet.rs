//! The tasklet step: one unit of work (a statement, a call), retried on transient errors.

use async_trait::async_trait;

use super::{Step, StepContext, StepOutcome};

/// The body of a tasklet step: one unit of work (a statement, a call).
///
/// A transient error (a database or Redis restart, a dropped connection: [`crate::is_transient`])
/// runs it again under the chunk retry policy (`batch.chunk_retry_*`), so the work must be all or
/// nothing — one transaction, or idempotent — as a chunk is. Other errors fail the step at once.
#[async_trait]
pub trait Tasklet: Send + Sync {
    /// Does the work. It may update `ctx.progress` (counters) and call `ctx.save_progress()`;
    /// what a failed attempt changed in `ctx.progress` is undone before the next one.
    async fn run(&self, ctx: &mut StepContext) -> anyhow::Result<()>;
}

/// A step that runs a [`Tasklet`] once, again after a transient error while the chunk retry
/// policy allows; each failed attempt counts as a retry and a rollback.
pub struct TaskletStep<T> {
    name: String,
    tasklet: T,
}

impl<T: Tasklet> TaskletStep<T> {
    /// A step named `name` running `tasklet`.
    pub fn new(name: impl Into<String>, tasklet: T) -> Self {
        TaskletStep {
            name: name.into(),
            tasklet,
        }
    }
}

#[async_trait]
impl<T: Tasklet> Step for TaskletStep<T> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        let before = ctx.progress.clone();
        let mut schedule = ctx.settings.retry.schedule();
        let mut failures = 0;
        loop {
            let result = self.tasklet.run(ctx).await;
            if let Err(e) = &result {
                failures += 1;
                ctx.progress = before.clone();
                let delay = crate::retry::next_delay(
                    &mut schedule,
                    e,
                    ctx.clock.as_ref(),
                    &ctx.step_name,
                    "running the tasklet",
                );
                if let Some(delay) = delay {
                    ctx.clock.sleep(delay).await;
                    continue;
                }
            }
            let retries = failures - i64::from(result.is_err());
            ctx.progress.counts.retry_count += retries;
            ctx.progress.counts.rollback_count += failures;
            return result.map(|()| StepOutcome::Completed);
        }
    }
}
