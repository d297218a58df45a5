#![doc = include_str!("../README.md")]

pub mod api;
pub mod fake_server;
pub mod job;
pub mod provider;
pub mod schedule;
pub mod settings;
pub mod usecase;

use std::sync::Arc;

use batch_common::config::SettingsSpec;
use batch_common::job::{BuildFuture, Job, JobEnv};
use batch_common::module::{JobModule, JobRegistration};

pub use job::{AssetRefreshJob, DESCRIPTOR, JOB_NAME};
pub use provider::{AssetProvider, AssetSnapshot, FetchError, FetchErrorKind, HttpAssetProvider};
pub use settings::AssetSettings;

/// The asset domain as the launcher registers it: assetRefreshJob, `[asset]`, its schedule.
#[derive(Debug, Clone, Copy)]
pub struct AssetModule;

/// The module to register in the launcher.
pub const MODULE: AssetModule = AssetModule;

impl JobModule for AssetModule {
    fn name(&self) -> &'static str {
        "asset"
    }

    fn jobs(&self) -> &'static [JobRegistration] {
        &[JobRegistration {
            descriptor: &DESCRIPTOR,
            build,
        }]
    }

    fn settings(&self) -> Option<SettingsSpec> {
        Some(SettingsSpec::of::<AssetSettings>())
    }

    fn default_schedules(&self) -> &'static [(&'static str, &'static str)] {
        &[(JOB_NAME, "0 0 4 * * *")]
    }

    fn deployment_settings(&self) -> &'static [&'static str] {
        &["asset.api_base_url", "asset.api_token"]
    }
}

/// The launcher's factory: the reqwest provider from `[asset]`, and the job.
pub fn build(env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async move {
        let settings = env.props.section::<AssetSettings>()?;
        let provider = Arc::new(HttpAssetProvider::new(settings, env.clock.clone())?);
        let job: Arc<dyn Job> = Arc::new(AssetRefreshJob::new(
            env.db.clone(),
            provider,
            env.clock.clone(),
            settings.concurrency.get(),
        ));
        Ok(job)
    })
}
