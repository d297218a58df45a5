//! Domain modules: the unit of extension.
//!
//! A domain crate (`batch-<domain>`) hands the launcher everything it contributes through one
//! [`JobModule`]: its jobs (descriptor + builder), its tables' migrations (a
//! [`MigrationSet`] of its own), its settings section (a typed
//! [`SettingsSection`](crate::config::SettingsSection) with its defaults and its own
//! validation), the default schedules of its jobs, and its health checks. The launcher keeps
//! one list of modules, one line per domain; the runtime itself knows no domain.
//!
//! ```text
//! pub struct BillingModule;
//! impl JobModule for BillingModule {
//!     fn name(&self) -> &'static str { "billing" }
//!     fn jobs(&self) -> &'static [JobRegistration] { &[JobRegistration { descriptor: &DESCRIPTOR, build }] }
//!     fn settings(&self) -> Option<SettingsSpec> { Some(SettingsSpec::of::<BillingSettings>()) }
//!     fn default_schedules(&self) -> &'static [(&'static str, &'static str)] { &[(JOB_NAME, "0 0 1 * * *")] }
//!     fn health_checks(&self, props: &BatchProperties) -> Vec<Arc<dyn HealthCheck>> { … }
//! }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{BatchProperties, CONFIG_FILE_ENV, ConfigError, SettingsSpec};
use core_domain::MigrationSet;

use crate::job::{JobBuilder, JobDescriptor};
use crate::repository::BASE_MIGRATIONS;

/// What a domain crate contributes to the launcher. Registered once, in the launcher's list of
/// modules.
pub trait JobModule: Send + Sync {
    /// The module's name (e.g. `billing`), for logs and error messages.
    fn name(&self) -> &'static str;

    /// The jobs of this module, in `list` order.
    fn jobs(&self) -> &'static [JobRegistration];

    /// The migrations of the tables this module owns (its `migrations/{sqlite,postgres,mysql}`
    /// folders and its `schema.rs`), if it has tables of its own. They apply after the runtime's
    /// and the shared entities' sets, so they may refer to shared tables (`users`).
    fn migrations(&self) -> Option<&'static MigrationSet> {
        None
    }

    /// The module's settings section, if it has one (`SettingsSpec::of::<MySettings>()`).
    fn settings(&self) -> Option<SettingsSpec> {
        None
    }

    /// The default schedule of each of its jobs: (job name, cron), overridable under
    /// `[schedule]` like any other key.
    fn default_schedules(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The settings its jobs need from the deployment, beyond `database.url` (which every job
    /// needs): the keys a deployment passes as secrets or per environment, e.g. `redis.url`,
    /// `asset.api_token`. Generated Jenkins pipelines bind each from a credential
    /// (`BATCH__<SECTION>__<KEY>`).
    fn deployment_settings(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks `serve`'s `/health` runs besides the database's (e.g. the Redis the module's jobs
    /// write to). Each check's name is its key in the health answer.
    fn health_checks(&self, props: &BatchProperties) -> Vec<Arc<dyn HealthCheck>> {
        let _ = props;
        Vec::new()
    }
}

/// A job the launcher knows: its descriptor and how to build it.
#[derive(Debug, Clone, Copy)]
pub struct JobRegistration {
    /// Name, steps, parameters.
    pub descriptor: &'static JobDescriptor,
    /// The factory.
    pub build: JobBuilder,
}

/// A dependency `serve`'s `/health` checks.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// The key of its answer in `/health` (e.g. `redis`).
    fn name(&self) -> &'static str;

    /// `Ok` when the dependency answers; the error says what failed (secrets redacted). The
    /// caller bounds the time it may take.
    async fn check(&self) -> Result<(), String>;
}

/// Every migration set a database needs for `modules`, in the order they apply: the runtime's
/// metadata, the shared entities, then each module's own set in registration order. `migrate`,
/// `run`, `serve` and the pending-migrations check all use this list.
pub fn migration_sets(modules: &[&dyn JobModule]) -> Vec<&'static MigrationSet> {
    let mut sets: Vec<&'static MigrationSet> = BASE_MIGRATIONS.to_vec();
    sets.extend(modules.iter().filter_map(|m| m.migrations()));
    sets
}

/// Every job of `modules`, in order.
pub fn all_jobs<'m>(
    modules: &'m [&'m dyn JobModule],
) -> impl Iterator<Item = &'static JobRegistration> + 'm {
    modules.iter().flat_map(|m| m.jobs().iter())
}

/// Loading the configuration with the sections and default schedules of a set of modules.
impl BatchProperties {
    /// Loads defaults (the runtime's and `modules`'), then `file` (or the file named by
    /// `BATCH_CONFIG`), then the process environment's `BATCH__*` variables.
    pub fn load(file: Option<&Path>, modules: &[&dyn JobModule]) -> Result<Self, ConfigError> {
        let from_env_var = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(from_env_var);
        let env = std::env::vars().filter(|(k, _)| k.starts_with("BATCH__"));
        Self::load_from(file.as_deref(), env, modules)
    }

    /// Like [`load`](Self::load) but with explicit environment variables (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        modules: &[&dyn JobModule],
    ) -> Result<Self, ConfigError> {
        let mut specs = Vec::new();
        for module in modules {
            if let Some(spec) = module.settings() {
                specs.push((module.name(), spec));
            }
        }
        let schedules: Vec<(&str, &str)> = modules
            .iter()
            .flat_map(|m| m.default_schedules().iter().copied())
            .collect();
        let props = Self::load_layers(file, env, &specs, &schedules)?;
        check_partitioned_steps(&props, modules)?;
        Ok(props)
    }
}

/// Every `[batch.partitions]` entry names a step of a registered job (names match regardless of
/// case, as environment variables arrive lower-cased). Without modules (the runtime alone, its
/// tests) there is nothing to check against.
fn check_partitioned_steps(
    props: &BatchProperties,
    modules: &[&dyn JobModule],
) -> Result<(), ConfigError> {
    if modules.is_empty() {
        return Ok(());
    }
    let steps: Vec<&str> = all_jobs(modules)
        .flat_map(|j| j.descriptor.steps.iter().copied())
        .collect();
    for name in props.batch.partitions.keys() {
        if !steps.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return Err(ConfigError::Invalid {
                key: format!("batch.partitions.{name}"),
                env: format!("BATCH__BATCH__PARTITIONS__{}", name.to_ascii_uppercase()),
                message: format!(
                    "no registered job has a step `{name}` (steps: {})",
                    steps.join(", ")
                ),
            });
        }
    }
    Ok(())
}
