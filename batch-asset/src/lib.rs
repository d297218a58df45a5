#![doc = include_str!("../README.md")]

pub mod api;
pub mod fake_server;
pub mod job;
pub mod provider;
pub mod schedule;
pub mod usecase;

use std::sync::Arc;

use batch_common::job::{BuildFuture, Job, JobEnv};

pub use job::{AssetRefreshJob, DESCRIPTOR, JOB_NAME};
pub use provider::{AssetProvider, AssetSnapshot, FetchError, FetchErrorKind, HttpAssetProvider};

/// The launcher's factory: the reqwest provider from `[asset]`, and the job.
pub fn build(env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async move {
        let settings = &env.props.asset;
        let provider = Arc::new(HttpAssetProvider::new(settings, env.clock.clone())?);
        let job: Arc<dyn Job> = Arc::new(AssetRefreshJob::new(
            env.db.clone(),
            provider,
            env.clock.clone(),
            env.props.batch.timezone,
            settings.concurrency.get(),
        ));
        Ok(job)
    })
}
