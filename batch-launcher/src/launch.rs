//! One launch flow for `run` and for `serve`'s kicks and ticks: find the job, check its
//! parameters, build it (connecting what it needs), claim and prepare the execution. Both
//! report failures in one vocabulary, [`LaunchFailure`]: `run` turns it into an exit code, the
//! HTTP API into a status code.

use std::collections::BTreeMap;
use std::sync::Arc;

use batch_common::config::{BatchProperties, ConfigError};
use batch_common::job::JobEnv;
use batch_common::launcher::{JobLauncher, LaunchError, LaunchOptions, Prepared};
use batch_common::module::JobRegistration;
use batch_common::params::ParameterError;
use batch_common::params::{JobParameters, ParamContext};
use batch_common::repository::JobRepository;
use batch_common::{Clock, ExitCode};
use core_domain::{Database, DbError};

use crate::modules::Registry;
use crate::progress::{Progress, ProgressMode};

/// A usage error found by the launcher itself (clap reports its own): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Why a launch did not start a run.
#[derive(Debug, thiserror::Error)]
pub enum LaunchFailure {
    /// No such job: exit 2, HTTP 404.
    #[error("unknown job `{name}` (known: {known})")]
    UnknownJob {
        /// The name asked for.
        name: String,
        /// The known names.
        known: String,
    },
    /// Bad parameters: exit 2, HTTP 400.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// The job could not be set up: its builder failed (e.g. Redis unreachable: exit 1), or its
    /// steps could not be built from its parameters and settings (exit 2). HTTP 503.
    #[error("setting up {job}: {}", error_line(cause))]
    Setup {
        /// The job.
        job: String,
        /// Why.
        cause: anyhow::Error,
        /// `run`'s exit code.
        exit_code: ExitCode,
    },
    /// The metadata database failed: exit 1 (2 for a database that does not exist), HTTP 503.
    #[error("the batch database failed: {0}")]
    Database(#[source] DbError),
    /// `serve` is shutting down and takes no new runs: HTTP 503.
    #[error("shutting down: no new runs are started")]
    ShuttingDown,
}

impl LaunchFailure {
    /// The runtime's launch error, for `job`.
    pub fn from_launch(job: &str, e: LaunchError) -> Self {
        match e {
            LaunchError::Parameters(p) => LaunchFailure::Parameters(p),
            LaunchError::Setup(cause) => LaunchFailure::Setup {
                job: job.to_owned(),
                cause,
                exit_code: ExitCode::Usage,
            },
            LaunchError::Database(db) => LaunchFailure::Database(db),
            other => LaunchFailure::Setup {
                job: job.to_owned(),
                exit_code: other.exit_code(),
                cause: other.into(),
            },
        }
    }

    /// `run`'s exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            LaunchFailure::UnknownJob { .. } | LaunchFailure::Parameters(_) => ExitCode::Usage,
            LaunchFailure::Setup { exit_code, .. } => *exit_code,
            LaunchFailure::Database(db) if db.is_configuration_error() => ExitCode::Usage,
            LaunchFailure::Database(_) | LaunchFailure::ShuttingDown => ExitCode::Failed,
        }
    }
}

/// Finds `job_name` and resolves `given` against its declared parameters exactly as the run
/// will (names, kinds, ranges, validators, required ones, defaults from `ctx`), before anything
/// connects or runs: `--validate-only` refuses what the run refuses.
pub fn check(
    registry: &Registry,
    job_name: &str,
    given: &BTreeMap<String, String>,
    ctx: &ParamContext,
) -> Result<(JobRegistration, JobParameters), LaunchFailure> {
    let registration = registry
        .find(job_name)
        .ok_or_else(|| LaunchFailure::UnknownJob {
            name: job_name.to_owned(),
            known: registry.names(),
        })?;
    let params = JobParameters::resolve(registration.descriptor, given.clone(), ctx)?;
    Ok((registration, params))
}

/// Builds the job (its builder connects what it needs) and prepares its execution: resolves
/// the parameters, claims the instance's live slot and decides (NOOP, ALREADY_RUNNING, or a
/// run ready to start).
pub async fn prepare(
    registration: JobRegistration,
    env: &JobEnv,
    launcher: &JobLauncher,
    given: BTreeMap<String, String>,
    options: &LaunchOptions,
) -> Result<Prepared, LaunchFailure> {
    let name = registration.descriptor.name;
    let job = (registration.build)(env)
        .await
        .map_err(|cause| LaunchFailure::Setup {
            job: name.to_owned(),
            exit_code: exit_code_for(&cause),
            cause,
        })?;
    // The registration and the job it builds must describe the same job (one descriptor).
    if !std::ptr::eq(job.descriptor(), registration.descriptor)
        && job.descriptor() != registration.descriptor
    {
        return Err(LaunchFailure::Setup {
            job: name.to_owned(),
            cause: anyhow::anyhow!(
                "the module registers {name} but its builder made {}",
                job.descriptor().name
            ),
            exit_code: ExitCode::Failed,
        });
    }
    launcher
        .prepare(job.as_ref(), given, options)
        .await
        .map_err(|e| LaunchFailure::from_launch(name, e))
}

/// The launcher every command that runs jobs uses (`run`, `serve`): the runtime settings of
/// `[batch]` and the listeners the configuration asks for (progress, notifications).
pub fn build_launcher(
    props: &BatchProperties,
    repo: JobRepository,
    clock: Arc<dyn Clock>,
    progress: ProgressMode,
) -> JobLauncher {
    let launcher = JobLauncher::new(repo, clock, props.batch.clone())
        .with_listener(Arc::new(Progress::new(progress)));
    // Slack (`[notify]`). A notifier never fails a run, and neither does one that cannot be built.
    match batch_common::notify::listener_from_settings(
        &props.notify,
        props.server.public_url.as_ref(),
    ) {
        Ok(Some(notify)) => launcher.with_listener(notify),
        Ok(None) => launcher,
        Err(e) => {
            tracing::error!(error = %e, "Slack notifications are off: {e}");
            launcher
        }
    }
}

/// Exit code 2 for configuration, usage and URL errors anywhere in the chain (a database that
/// does not exist included), 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(failure) = cause.downcast_ref::<LaunchFailure>() {
            return failure.exit_code();
        }
        if cause.is::<ConfigError>() || cause.is::<UsageError>() || cause.is::<ParameterError>() {
            return ExitCode::Usage;
        }
        if cause
            .downcast_ref::<DbError>()
            .is_some_and(DbError::is_configuration_error)
        {
            return ExitCode::Usage;
        }
    }
    ExitCode::Failed
}

/// The error and its causes on one line (`what: why: root cause`), leaving out a cause whose
/// text the line already holds: some libraries print their source inside their own message
/// too, and `{:#}` would then show it twice.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.replace('\n', " ")
}

/// The job repository on `[database]`, migrated (or checked) with every registered set.
pub async fn connect_repo(
    registry: &Registry,
    props: &BatchProperties,
) -> anyhow::Result<JobRepository> {
    let db = Database::connect(
        &props.database.url,
        &props.database.pool_options(),
        &registry.migrations(),
    )
    .await?;
    Ok(JobRepository::new(db))
}
