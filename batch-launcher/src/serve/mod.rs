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
mod dashboard;
mod http;
mod operator_api;
mod schema;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use batch_common::config::BatchProperties;
use batch_common::job::ParamDefault;
use batch_common::schedule::Scheduler;
use batch_common::{Clock, ExitCode};
use core_domain::Database;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::launch::LaunchFailure;
use crate::launch::UsageError;
use crate::modules::Registry;
pub use service::{KickOutcome, Service};

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
                "server.token is not set: serve requires a bearer token for its API (BATCH__SERVER__TOKEN, or a file holding it: BATCH__SERVER__TOKEN_FILE)"
                    .to_owned(),
            )
            .into());
        }
        let scheduler =
            Scheduler::from_config(&props.schedule, props.batch.timezone, service.clock.clone())
                .map_err(|e| UsageError(e.to_string()))?;
        for entry in scheduler.jobs() {
            let Some(job) = service.job_ignoring_case(&entry.job) else {
                return Err(UsageError(format!(
                    "schedule.{}: unknown job (known: {})",
                    entry.job,
                    service.job_names()
                ))
                .into());
            };
            // A tick runs with no parameters: a job that requires one can never be scheduled.
            if let Some(p) = job
                .descriptor
                .parameters
                .iter()
                .find(|p| p.default == ParamDefault::Required)
            {
                return Err(UsageError(format!(
                    "schedule.{}: the job requires parameter `{}` ({}), which a scheduled run cannot give; set the schedule \"off\" and kick it with the parameter",
                    entry.job, p.name, p.kind
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
    registry: &Registry,
    props: BatchProperties,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let props = Arc::new(props);
    let db = Database::connect(
        &props.database.url,
        &props.database.pool_options(),
        &registry.migrations(),
    )
    .await?;
    let service = Service::new(
        props.clone(),
        db,
        clock,
        registry.jobs(),
        registry.health_checks(&props),
    );
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
