//! A minimal domain module, written exactly as a new `batch-<domain>` crate would be: a job over
//! an existing entity (`users`), its own settings section `[hello]` with defaults and validation,
//! and a default schedule. The launcher's tests register it next to the real modules
//! (`Registry::new(&[.., &batch_testkit::example_module::MODULE])`) and run it through the CLI,
//! which proves that a domain plugs in through [`JobModule`] alone.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;
use batch_common::config::{ConfigError, SectionCheck, SettingsSection, SettingsSpec};
use batch_common::job::{BuildFuture, Job, JobDescriptor, JobEnv, ParamKind, ParameterSpec};
use batch_common::module::{JobModule, JobRegistration};
use batch_common::params::{JobParameters, ParameterError};
use batch_common::step::{Step, StepContext, Tasklet, TaskletStep};
use core_domain::Database;
use core_domain::models::User;
use serde::{Deserialize, Serialize};

/// The job's name.
pub const JOB_NAME: &str = "helloUsersJob";

/// Its descriptor.
pub const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: JOB_NAME,
    description: "Counts the active users and greets them (the example domain)",
    steps: &["countActiveUsersStep"],
    parameters: &[ParameterSpec {
        name: "label",
        kind: ParamKind::Text,
        identifying: true,
        description: "instance label (default: `daily`)",
    }],
};

/// `[hello]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HelloSettings {
    /// What the job says.
    pub greeting: String,
    /// Users counted per statement (1..=10000).
    pub page_size: NonZeroUsize,
}

impl SettingsSection for HelloSettings {
    const NAME: &'static str = "hello";
    const DEFAULTS: &'static str = "[hello]\ngreeting = \"hello\"\npage_size = 500\n";

    fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.in_range("page_size", self.page_size.get(), 1..=10_000)?;
        if self.greeting.trim().is_empty() {
            return Err(c.invalid("greeting", "must not be empty"));
        }
        Ok(())
    }
}

/// The example module.
#[derive(Debug, Clone, Copy)]
pub struct HelloModule;

/// The module to register.
pub const MODULE: HelloModule = HelloModule;

impl JobModule for HelloModule {
    fn name(&self) -> &'static str {
        "hello"
    }

    fn jobs(&self) -> &'static [JobRegistration] {
        &[JobRegistration {
            descriptor: &DESCRIPTOR,
            build,
        }]
    }

    fn settings(&self) -> Option<SettingsSpec> {
        Some(SettingsSpec::of::<HelloSettings>())
    }

    fn default_schedules(&self) -> &'static [(&'static str, &'static str)] {
        &[(JOB_NAME, "0 0 5 * * *")]
    }
}

/// The launcher's factory.
pub fn build(env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async move {
        let settings = env.props.section::<HelloSettings>()?.clone();
        let job: Arc<dyn Job> = Arc::new(HelloUsersJob {
            db: env.db.clone(),
            settings,
        });
        Ok(job)
    })
}

/// helloUsersJob = countActiveUsersStep.
pub struct HelloUsersJob {
    db: Database,
    settings: HelloSettings,
}

impl Job for HelloUsersJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &DESCRIPTOR
    }

    fn resolve_parameters(
        &self,
        given: BTreeMap<String, String>,
    ) -> Result<JobParameters, ParameterError> {
        let mut params = JobParameters::from_declared(&DESCRIPTOR, given)?;
        if !params.is_set("label") {
            params.set("label", "daily".to_owned(), true);
        }
        Ok(params)
    }

    fn steps(&self, _params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        Ok(vec![Arc::new(TaskletStep::new(
            "countActiveUsersStep",
            CountActiveUsers {
                db: self.db.clone(),
                settings: self.settings.clone(),
            },
        ))])
    }
}

struct CountActiveUsers {
    db: Database,
    settings: HelloSettings,
}

#[async_trait]
impl Tasklet for CountActiveUsers {
    async fn run(&self, ctx: &mut StepContext) -> anyhow::Result<()> {
        let page = i64::try_from(self.settings.page_size.get())?;
        let mut conn = self.db.get().await?;
        let mut after = 0;
        let mut active = 0;
        loop {
            let users = User::active_page_after(&mut conn, after, page).await?;
            let Some(last) = users.last() else { break };
            after = last.id;
            active += users.len() as i64;
        }
        tracing::info!(active, "{}, {active} active users", self.settings.greeting);
        ctx.progress.counts.read_count = active;
        ctx.progress.add_counter("active_users", active);
        Ok(())
    }
}
