//! `batch-launcher serve`: the scheduler of `[schedule]` plus the HTTP API (kick, status, history,
//! health, metrics) in one process.
//!
//! Every run, scheduled or kicked, goes through the same [`JobLauncher`] as `run`, so the
//! database's one-live-execution-per-instance guard holds against Jenkins and other processes
//! too: a tick that falls while its instance runs anywhere is skipped and logged, and a kick of a
//! running instance is answered 409.
//!
//! Shutdown (SIGTERM/SIGINT, or [`Server::shutdown`]): the HTTP server stops accepting, the
//! scheduler stops, and running executions stop after their current chunk and end STOPPED, so the
//! next launch restarts them from their checkpoint. A second signal exits at once.

pub mod api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use batch_common::launcher::{JobLauncher, LaunchError, LaunchOptions, Prepared};
use batch_common::metrics::Metrics;
use batch_common::params::JobParameters;
use batch_common::redis::RedisConn;
use batch_common::schedule::{MissedTicks, Scheduler};
use batch_common::{
    BatchProperties, BatchResult, Clock, ExitCode, JobEnv, JobRepository, ParameterError,
};
use chrono::{DateTime, Utc};
use core_domain::Database;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::Registration;
use crate::run::UsageError;

/// Why a kick did not start a run.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// No such job.
    #[error("unknown job `{name}` (known: {known})")]
    UnknownJob {
        /// The name asked for.
        name: String,
        /// The known names.
        known: String,
    },
    /// Bad parameters.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// The job could not be set up (e.g. Redis unreachable).
    #[error("setting up {job}: {message}")]
    Setup {
        /// The job.
        job: String,
        /// Why.
        message: String,
    },
    /// The metadata database failed.
    #[error("the batch database failed: {0}")]
    Database(String),
    /// The server is shutting down and takes no new runs.
    #[error("shutting down: no new runs are started")]
    ShuttingDown,
}

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
    props: Arc<BatchProperties>,
    db: Database,
    clock: Arc<dyn Clock>,
    launcher: JobLauncher,
    jobs: Vec<Registration>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    redis: tokio::sync::Mutex<Option<RedisConn>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("jobs", &self.job_names())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service running `jobs` against `db`, with the listeners of [`crate::run::build_launcher`]
    /// plus the metrics.
    pub fn new(
        props: Arc<BatchProperties>,
        db: Database,
        clock: Arc<dyn Clock>,
        jobs: Vec<Registration>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        for j in &jobs {
            metrics.register_job(j.descriptor.name);
        }
        let launcher = crate::run::build_launcher(
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
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            redis: tokio::sync::Mutex::new(None),
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

    fn job_names(&self) -> String {
        self.jobs
            .iter()
            .map(|j| j.descriptor.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The registration of `name` (exact, as in the API's paths).
    pub fn job(&self, name: &str) -> Option<&Registration> {
        self.jobs.iter().find(|j| j.descriptor.name == name)
    }

    fn job_ignoring_case(&self, name: &str) -> Option<&Registration> {
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
    ) -> Result<KickOutcome, KickError> {
        let registration = self.job(job_name).ok_or_else(|| KickError::UnknownJob {
            name: job_name.to_owned(),
            known: self.job_names(),
        })?;
        if self.shutdown.is_cancelled() {
            return Err(KickError::ShuttingDown);
        }
        // Names and value types first, before anything connects.
        JobParameters::from_declared(registration.descriptor, given.clone())?;
        let Some(build) = registration.build else {
            return Err(KickError::Setup {
                job: job_name.to_owned(),
                message: "declared but not implemented in this build".to_owned(),
            });
        };
        let env = JobEnv {
            props: self.props.clone(),
            db: self.db.clone(),
            clock: self.clock.clone(),
        };
        let job = build(&env).await.map_err(|e| KickError::Setup {
            job: job_name.to_owned(),
            message: crate::run::error_line(&e),
        })?;
        let options = LaunchOptions {
            rerun,
            cancel: self.shutdown.child_token(),
        };
        let prepared = self
            .launcher
            .prepare(job.as_ref(), given, &options)
            .await
            .map_err(|e| match e {
                LaunchError::Parameters(p) => KickError::Parameters(p),
                LaunchError::Setup(s) => KickError::Setup {
                    job: job_name.to_owned(),
                    message: crate::run::error_line(&s),
                },
                other => KickError::Database(other.to_string()),
            })?;
        match prepared {
            Prepared::Done(result) => Ok(KickOutcome::NotStarted(result)),
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

    /// `Ok` when Redis answers PING; the error says what failed.
    pub async fn check_redis(&self) -> Result<(), String> {
        let settings = &self.props.redis;
        let deadline = settings.connect_timeout + settings.response_timeout;
        let check = async {
            let mut slot = self.redis.lock().await;
            if slot.is_none() {
                *slot = Some(
                    batch_common::redis::connect(settings)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let conn = slot.as_mut().expect("just set");
            let pong: Result<String, _> = redis::cmd("PING").query_async(conn).await;
            match pong {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Reconnect next time.
                    *slot = None;
                    Err(e.to_string())
                }
            }
        };
        tokio::time::timeout(deadline, check)
            .await
            .map_err(|_| format!("no answer within {deadline:?}"))?
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

/// A running `serve`: its address, and how to stop it.
#[derive(Debug)]
pub struct Server {
    /// The address the API listens on.
    pub addr: SocketAddr,
    /// The service.
    pub service: Arc<Service>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Checks the configuration, binds `[server] bind`, runs missed ticks per
    /// `[server] missed_ticks`, and starts the scheduler and the HTTP API.
    pub async fn start(service: Service) -> anyhow::Result<Server> {
        let props = service.props.clone();
        if props
            .server
            .token
            .as_ref()
            .is_none_or(|t| t.expose().trim().is_empty())
        {
            return Err(UsageError(
                "server.token is not set: serve requires a bearer token for its API (BATCH__SERVER__TOKEN)"
                    .to_owned(),
            )
            .into());
        }
        let scheduler =
            Scheduler::from_config(&props.schedule, props.batch.timezone, service.clock.clone())
                .map_err(|e| UsageError(e.to_string()))?;
        for entry in scheduler.jobs() {
            if service.job_ignoring_case(&entry.job).is_none() {
                return Err(UsageError(format!(
                    "schedule.{}: unknown job (known: {})",
                    entry.job,
                    service.job_names()
                ))
                .into());
            }
        }
        let listener = TcpListener::bind(props.server.bind)
            .await
            .with_context(|| format!("listening on {} (server.bind)", props.server.bind))?;
        let addr = listener.local_addr()?;
        let service = Arc::new(service);
        match service.repository().last_success_per_job().await {
            Ok(rows) => {
                for (job, at) in rows {
                    service.metrics.observe_last_success(&job, at.and_utc());
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the last successful runs failed"),
        }
        for (job, next) in scheduler.next_ticks() {
            let next = next.map_or_else(
                || "never".to_owned(),
                |t| t.with_timezone(&props.batch.timezone).to_string(),
            );
            tracing::info!(schedule.job = %job, next_tick = %next, "scheduled");
        }
        service.run_missed_ticks(&scheduler).await?;

        let shutdown = service.shutdown.clone();
        let s = service.clone();
        let scheduler = tokio::spawn(async move {
            let svc = s.clone();
            scheduler
                .run(&s.shutdown, move |job, tick| svc.on_tick(job, tick))
                .await;
        });
        let router = api::router(service.clone());
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Ok(Server {
            addr,
            service,
            http,
            scheduler,
        })
    }

    /// Stops taking requests and ticks, lets running executions stop after their current chunk
    /// (they end STOPPED), and waits for all of it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.service.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the service was shut down (by [`Service::shutdown_token`]) and everything
    /// stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.service.shutdown.cancelled().await;
        let _ = self.scheduler.await;
        let http = self.http.await;
        self.service.tasks.close();
        self.service.tasks.wait().await;
        http.context("the HTTP server panicked")?
            .context("the HTTP server failed")?;
        Ok(())
    }
}

/// `batch-launcher serve`.
pub async fn serve_cmd(
    props: BatchProperties,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let props = Arc::new(props);
    let db = Database::connect(&props.database.url, &props.database.pool_options()).await?;
    let service = Service::new(props.clone(), db, clock, crate::jobs::JOBS.to_vec());
    let server = Server::start(service).await?;
    println!(
        "serving on http://{} (database {}, schedule: {})",
        server.addr,
        props.database.url,
        if props.schedule.is_empty() {
            "none".to_owned()
        } else {
            props
                .schedule
                .iter()
                .map(|(j, c)| format!("{j} \"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let token = server.service.shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tracing::warn!("shutting down: no new runs; running executions stop after their chunk");
        token.cancel();
    });
    server.wait().await?;
    tracing::info!("stopped");
    Ok(ExitCode::Completed)
}
