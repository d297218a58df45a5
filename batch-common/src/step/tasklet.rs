//! The tasklet step: one unit of work (a statement, a call).

use async_trait::async_trait;

use super::{Step, StepContext, StepOutcome};

/// The body of a tasklet step: one unit of work (a statement, a call).
#[async_trait]
pub trait Tasklet: Send + Sync {
    /// Does the work. It may update `ctx.progress` (counters) and call `ctx.save_progress()`.
    async fn run(&self, ctx: &mut StepContext) -> anyhow::Result<()>;
}

/// A step that runs a [`Tasklet`] once.
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
        self.tasklet.run(ctx).await?;
        Ok(StepOutcome::Completed)
    }
}
