//! Jobs: what a job declares about itself (constants) and how it builds its steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::params::{JobParameters, ParameterError};
use crate::step::Step;

pub use crate::descriptor::{JobDescriptor, ParamKind, ParameterSpec};

/// A runnable job. Built by the launcher with everything it needs (database, clients, clock).
pub trait Job: Send + Sync {
    /// Name, steps and parameters.
    fn descriptor(&self) -> &'static JobDescriptor;

    /// Validates the given parameters and fills in defaults (e.g. `date` = yesterday from the
    /// injected Clock), so the instance identity uses the actual values. Errors mean exit 2.
    fn resolve_parameters(
        &self,
        given: BTreeMap<String, String>,
    ) -> Result<JobParameters, ParameterError> {
        JobParameters::from_declared(self.descriptor(), given)
    }

    /// The steps of a run with these (resolved) parameters, in order.
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
