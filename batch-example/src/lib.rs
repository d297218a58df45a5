#![doc = include_str!("../README.md")]

pub mod job;
pub mod models;
// `table!` generates a struct per column; the table itself carries its doc comment.
#[allow(missing_docs)]
pub mod schema;
pub mod settings;

use std::sync::Arc;

use batch_common::config::SettingsSpec;
use batch_common::job::{BuildFuture, Job, JobEnv};
use batch_common::module::{JobModule, JobRegistration};
use core_domain::MigrationSet;
use diesel_migrations::embed_migrations;

pub use job::{DESCRIPTOR, JOB_NAME, MonthlyStatementJob};
pub use settings::ExampleSettings;

/// The tables this module owns: `member_statement` (`migrations/{sqlite,postgres,mysql}`).
pub static MIGRATIONS: MigrationSet = MigrationSet {
    name: "example",
    schema: include_str!("schema.rs"),
    sqlite: embed_migrations!("migrations/sqlite"),
    postgres: embed_migrations!("migrations/postgres"),
    mysql: embed_migrations!("migrations/mysql"),
};

/// The example domain as the launcher registers it: monthlyStatementJob, its table, `[example]`
/// and its schedule.
#[derive(Debug, Clone, Copy)]
pub struct ExampleModule;

/// The module to register in the launcher.
pub const MODULE: ExampleModule = ExampleModule;

impl JobModule for ExampleModule {
    fn name(&self) -> &'static str {
        "example"
    }

    fn jobs(&self) -> &'static [JobRegistration] {
        &[JobRegistration {
            descriptor: &DESCRIPTOR,
            build,
        }]
    }

    fn migrations(&self) -> Option<&'static MigrationSet> {
        Some(&MIGRATIONS)
    }

    fn settings(&self) -> Option<SettingsSpec> {
        Some(SettingsSpec::of::<ExampleSettings>())
    }

    fn default_schedules(&self) -> &'static [(&'static str, &'static str)] {
        // 03:00 on the 1st of every month, in batch.timezone: last month's statements.
        &[(JOB_NAME, "0 0 3 1 * *")]
    }
}

/// The launcher's factory: the job over the database, with `[example]`.
pub fn build(env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async move {
        let settings = env.props.section::<ExampleSettings>()?.clone();
        let job: Arc<dyn Job> = Arc::new(MonthlyStatementJob::new(
            env.db.clone(),
            env.clock.clone(),
            settings,
        ));
        Ok(job)
    })
}
