//! Jobs: what a job declares about itself (constants) and how it builds its steps.

use std::sync::Arc;

use crate::params::JobParameters;
use crate::step::Step;

pub use crate::descriptor::{JobDescriptor, ParamDefault, ParamKind, ParameterSpec, Validator};

/// A runnable job. Built by the launcher with everything it needs (database, clients, clock).
pub trait Job: Send + Sync {
    /// Name, steps and parameters.
    fn descriptor(&self) -> &'static JobDescriptor;

    /// The steps of a run with these parameters, in order. The runtime has checked them against
    /// the descriptor and filled in its defaults ([`JobParameters::resolve`]), so the instance
    /// identity uses the actual values.
    fn steps(&self, params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>>;
}

/// What the launcher hands a job factory: configuration, the database and the clock.
#[derive(Clone)]
pub struct JobEnv {
    /// All settings.
    pub props: Arc<crate::config::BatchProperties>,
    /// The database (domain data and batch metadata).
    pub db: core_domain::Database,
    /// The injected clock.
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl std::fmt::Debug for JobEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEnv")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// What a [`JobBuilder`] returns.
pub type BuildFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Job>>> + Send + 'a>>;

/// Builds a job from the environment, connecting what it needs (e.g. Redis) so that an unreachable
/// dependency is reported before anything runs. One per domain job; registered in the launcher.
pub type JobBuilder = for<'a> fn(&'a JobEnv) -> BuildFuture<'a>;
