//! The shared state of `serve`: starts runs for the scheduler and the API through the one
//! launch flow ([`crate::launch`]), and answers health and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use batch_common::config::BatchProperties;
use batch_common::job::JobEnv;
use batch_common::launcher::{JobLauncher, LaunchOptions, Prepared};
use batch_common::metrics::Metrics;
use batch_common::module::{HealthCheck, JobRegistration};
use batch_common::params::{JobParameters, ParamContext};
use batch_common::repository::JobRepository;
use batch_common::schedule::{MissedTicks, Scheduler};
use batch_common::{BatchResult, Clock, ExitCode};
use chrono::{DateTime, Utc};
use core_domain::Database;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::launch::{LaunchFailure, build_launcher, prepare};

/// What a kick did.
#[derive(Debug)]
pub enum KickOutcome {
    /// A new execution was created and is running in the background.
    Started {
        /// Its id.
        execution_id: i64,
        /// Its instance.
        job_instance_id: i64,
    },
    /// Nothing was started: the instance completed already (NOOP) or is running (exit code 4).
    NotStarted(BatchResult),
}

/// The shared state of `serve`: launches runs for the scheduler and the API.
pub struct Service {
    pub(super) props: Arc<BatchProperties>,
    db: Database,
    pub(super) clock: Arc<dyn Clock>,
    launcher: JobLauncher,
    pub(super) jobs: Vec<JobRegistration>,
    health_checks: Vec<Arc<dyn HealthCheck>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: TaskTracker,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("jobs", &self.job_names())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service running `jobs` against `db`, with the listeners of
    /// [`build_launcher`] plus the metrics; `/health` runs `health_checks` besides the
    /// database's.
    pub fn new(
        props: Arc<BatchProperties>,
        db: Database,
        clock: Arc<dyn Clock>,
        jobs: Vec<JobRegistration>,
        health_checks: Vec<Arc<dyn HealthCheck>>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        for j in &jobs {
            metrics.register_job(j.descriptor.name);
        }
        let launcher = build_launcher(
            &props,
            JobRepository::new(db.clone()),
            clock.clone(),
            crate::progress::ProgressMode::Lines(props.batch.progress_log_chunks),
        )
        .with_listener(metrics.clone());
        Service {
            props,
            db,
            clock,
            launcher,
            jobs,
            health_checks,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The configuration.
    pub fn props(&self) -> &BatchProperties {
        &self.props
    }

    /// The job repository.
    pub fn repository(&self) -> &JobRepository {
        self.launcher.repository()
    }

    /// The metrics of this process.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Cancelled when the service shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Counts an operator action (`stop`, `restart`, `abandon`) on execution `id` in
    /// `batch_operator_actions_total`, under its job's name — `unknown` for an execution that
    /// does not exist (a path is not a label value). The API and the dashboard both count here.
    pub async fn count_operator_action(&self, id: i64, action: &str, outcome: &str) {
        let repo = self.repository();
        let job = match repo.execution(id).await {
            Ok(Some(e)) => match repo.instance(e.job_instance_id).await {
                Ok(Some(i)) => i.job_name,
                _ => "unknown".to_owned(),
            },
            _ => "unknown".to_owned(),
        };
        self.metrics.operator_action(&job, action, outcome);
    }

    /// The names of the jobs this service runs, in registration order.
    pub fn job_names_list(&self) -> Vec<&'static str> {
        self.jobs.iter().map(|j| j.descriptor.name).collect()
    }

    pub(super) fn job_names(&self) -> String {
        self.jobs
            .iter()
            .map(|j| j.descriptor.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The registration of `name` (exact, as in the API's paths).
    pub fn job(&self, name: &str) -> Option<&JobRegistration> {
        self.jobs.iter().find(|j| j.descriptor.name == name)
    }

    pub(super) fn job_ignoring_case(&self, name: &str) -> Option<&JobRegistration> {
        self.jobs
            .iter()
            .find(|j| j.descriptor.name.eq_ignore_ascii_case(name))
    }

    /// Starts a run of `job_name` in the background and says which execution it is, or why
    /// nothing was started. The run stops after its current chunk when the service shuts down.
    pub async fn kick(
        &self,
        job_name: &str,
        given: BTreeMap<String, String>,
        rerun: bool,
    ) -> Result<KickOutcome, LaunchFailure> {
        let registration =
            self.job(job_name)
                .copied()
                .ok_or_else(|| LaunchFailure::UnknownJob {
                    name: job_name.to_owned(),
                    known: self.job_names(),
                })?;
        if self.shutdown.is_cancelled() {
            return Err(LaunchFailure::ShuttingDown);
        }
        // The parameters exactly as the run resolves them (names, kinds, ranges, validators,
        // required ones), before anything connects.
        JobParameters::resolve(
            registration.descriptor,
            given.clone(),
            &ParamContext::new(self.clock.as_ref(), self.props.batch.timezone),
        )?;
        let env = JobEnv {
            props: self.props.clone(),
            db: self.db.clone(),
            clock: self.clock.clone(),
        };
        let options = LaunchOptions {
            rerun,
            cancel: self.shutdown.child_token(),
            ..LaunchOptions::default()
        };
        let prepared = prepare(registration, &env, &self.launcher, given, &options).await?;
        match prepared {
            Prepared::Done(result) => Ok(KickOutcome::NotStarted(result)),
            Prepared::Join(_) => unreachable!("serve never asks to join (options.join is false)"),
            Prepared::Ready(run) => {
                let execution_id = run.execution_id();
                let job_instance_id = run.job_instance_id();
                let name = job_name.to_owned();
                self.tasks.spawn(async move {
                    match run.run().await {
                        Ok(result) => tracing::info!(
                            job.name = %name, execution.id = execution_id,
                            status = %result.status, exit_code = result.exit_code.code(),
                            "run finished"
                        ),
                        Err(e) => tracing::error!(
                            job.name = %name, execution.id = execution_id, error = %e,
                            "run failed"
                        ),
                    }
                });
                Ok(KickOutcome::Started {
                    execution_id,
                    job_instance_id,
                })
            }
        }
    }

    /// A scheduled tick of `job` (its name as written under `[schedule]`): starts a run with the
    /// job's default parameters, in the background. A running instance is skipped and logged.
    pub fn on_tick(self: &Arc<Self>, job: &str, tick: DateTime<Utc>) {
        let Some(registration) = self.job_ignoring_case(job) else {
            tracing::error!(
                schedule.job = job,
                "scheduled job is not known; tick ignored"
            );
            return;
        };
        let name = registration.descriptor.name;
        let this = self.clone();
        let local = tick.with_timezone(&self.props.batch.timezone);
        self.tasks.spawn(async move {
            tracing::info!(job.name = name, tick = %local, "scheduled run");
            match this.kick(name, BTreeMap::new(), false).await {
                Ok(KickOutcome::Started { execution_id, .. }) => {
                    tracing::info!(job.name = name, execution.id = execution_id, tick = %local, "scheduled run started");
                }
                Ok(KickOutcome::NotStarted(r)) if r.exit_code == ExitCode::AlreadyRunning => {
                    tracing::warn!(
                        job.name = name, tick = %local,
                        "tick skipped: {}", r.message.unwrap_or_default()
                    );
                }
                Ok(KickOutcome::NotStarted(r)) => {
                    tracing::info!(job.name = name, tick = %local, "tick: {}", r.message.unwrap_or_default());
                }
                Err(e) => tracing::error!(job.name = name, tick = %local, error = %e, "scheduled run could not start"),
            }
        });
    }

    /// Runs, once, each scheduled job whose last tick has no execution started at or after it
    /// (the process was down at that time). Returns the jobs it ran.
    pub async fn run_missed_ticks(
        self: &Arc<Self>,
        scheduler: &Scheduler,
    ) -> anyhow::Result<Vec<String>> {
        let mut ran = Vec::new();
        for (job, last_tick) in scheduler.last_ticks() {
            let Some(tick) = last_tick else { continue };
            let Some(registration) = self.job_ignoring_case(&job) else {
                continue;
            };
            let name = registration.descriptor.name;
            let newest = self.repository().history(Some(name), 1).await?;
            let covered = newest
                .first()
                .is_some_and(|(e, _)| e.created_at >= tick.naive_utc());
            if covered {
                continue;
            }
            let local = tick.with_timezone(&self.props.batch.timezone);
            match self.props.server.missed_ticks {
                MissedTicks::RunOnce => {
                    tracing::warn!(job.name = name, tick = %local, "missed tick while serve was down; running it once now");
                    self.on_tick(&job, tick);
                    ran.push(name.to_owned());
                }
                MissedTicks::Skip => {
                    tracing::warn!(job.name = name, tick = %local, "missed tick while serve was down; skipped (server.missed_ticks = \"skip\")");
                }
            }
        }
        Ok(ran)
    }

    /// `Ok` when the database answers; the error says what failed.
    pub async fn check_database(&self) -> Result<(), String> {
        let timeout = self.props.database.acquire_timeout;
        let check = async {
            let mut conn = self.db.get().await.map_err(|e| e.to_string())?;
            conn.batch_execute("SELECT 1")
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// The modules' health checks (e.g. `redis`), each within `[database] acquire_timeout`
    /// at most, run at once: (name, outcome) in registration order.
    pub async fn check_modules(&self) -> Vec<(&'static str, Result<(), String>)> {
        let limit = self
            .props
            .database
            .acquire_timeout
            .max(std::time::Duration::from_secs(1));
        let checks = self.health_checks.iter().map(|c| async move {
            let outcome = tokio::time::timeout(limit, c.check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
            (c.name(), outcome)
        });
        futures_util::future::join_all(checks).await
    }

    /// The metrics text, with the "last success" gauge refreshed from the job repository (runs
    /// of other processes count).
    pub async fn render_metrics(&self) -> String {
        match self.repository().last_success_per_job().await {
            Ok(rows) => {
                for (job, at) in rows {
                    self.metrics.observe_last_success(&job, at.and_utc());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the last successful runs failed")
            }
        }
        self.metrics.render()
    }
}
