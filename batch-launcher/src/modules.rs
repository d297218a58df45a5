//! The domain modules this launcher runs. Adding a domain is one line in [`MODULES`] (and the
//! crate's line in `Cargo.toml`); everything else comes through its [`JobModule`].

use std::sync::Arc;

use batch_common::config::{BatchProperties, ConfigError};
use batch_common::module::{HealthCheck, JobModule, JobRegistration, all_jobs, migration_sets};
use core_domain::MigrationSet;

/// Every domain module, in `list` order.
pub const MODULES: &[&dyn JobModule] = &[
    &batch_point::MODULE,
    &batch_asset::MODULE,
    #[cfg(feature = "batch-example")]
    &batch_example::MODULE,
];

/// The jobs, settings sections, schedules and health checks of a set of modules.
#[derive(Clone)]
pub struct Registry {
    modules: Vec<&'static dyn JobModule>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "modules",
                &self.modules.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Registry {
    /// The launcher's own modules ([`MODULES`]).
    fn default() -> Self {
        Registry::new(MODULES)
    }
}

impl Registry {
    /// A registry of `modules`.
    pub fn new(modules: &[&'static dyn JobModule]) -> Self {
        Registry {
            modules: modules.to_vec(),
        }
    }

    /// The modules, in order.
    pub fn modules(&self) -> &[&'static dyn JobModule] {
        &self.modules
    }

    /// Every migration set a database needs for these modules, in the order they apply (the
    /// runtime's metadata, the shared entities, then each module's own).
    pub fn migrations(&self) -> Vec<&'static MigrationSet> {
        migration_sets(&self.modules)
    }

    /// Every job, in `list` order.
    pub fn jobs(&self) -> Vec<JobRegistration> {
        all_jobs(&self.modules).copied().collect()
    }

    /// Loads the configuration with these modules' sections (see [`BatchProperties::load`]).
    pub fn load_properties(
        &self,
        file: Option<&std::path::Path>,
    ) -> Result<BatchProperties, ConfigError> {
        BatchProperties::load(file, &self.modules)
    }

    /// Finds a job by its exact name.
    pub fn find(&self, name: &str) -> Option<JobRegistration> {
        all_jobs(&self.modules)
            .find(|j| j.descriptor.name == name)
            .copied()
    }

    /// The names of every job, for error messages.
    pub fn names(&self) -> String {
        all_jobs(&self.modules)
            .map(|j| j.descriptor.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The module that registers `job`.
    pub fn module_of(&self, job: &str) -> Option<&'static dyn JobModule> {
        self.modules
            .iter()
            .copied()
            .find(|m| m.jobs().iter().any(|j| j.descriptor.name == job))
    }

    /// The health checks of every module, for `serve`.
    pub fn health_checks(&self, props: &BatchProperties) -> Vec<Arc<dyn HealthCheck>> {
        self.modules
            .iter()
            .flat_map(|m| m.health_checks(props))
            .collect()
    }

    /// The `list` output.
    pub fn render_list(&self) -> String {
        let mut out = String::new();
        for reg in all_jobs(&self.modules) {
            let job = reg.descriptor;
            out.push_str(&format!(
                "{}\n  {}\n  steps: {}\n",
                job.name,
                job.description,
                job.steps.join(" -> ")
            ));
            for p in job.parameters {
                out.push_str(&format!(
                    "  {}=<{}{}>  default: {}  {}\n",
                    p.name,
                    p.kind,
                    if p.identifying { ", identifying" } else { "" },
                    p.default,
                    p.description
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_unique_and_findable() {
        let registry = Registry::default();
        let jobs = registry.jobs();
        for job in &jobs {
            assert_eq!(
                registry
                    .find(job.descriptor.name)
                    .map(|j| j.descriptor.name),
                Some(job.descriptor.name)
            );
        }
        let mut names: Vec<_> = jobs.iter().map(|j| j.descriptor.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), jobs.len());
        assert!(registry.find("noSuchJob").is_none());
        for job in &jobs {
            job.descriptor
                .check()
                .unwrap_or_else(|e| panic!("the descriptor of {}: {e}", job.descriptor.name));
        }
        assert!(registry.render_list().contains("pointBalanceSyncJob"));
    }

    #[test]
    fn every_module_loads_with_its_defaults() {
        let props = BatchProperties::load_from(None, Vec::new(), MODULES).unwrap();
        let shown = props.to_redacted_toml();
        for module in MODULES {
            if let Some(spec) = module.settings() {
                assert!(shown.contains(&format!("[{}]", spec.name)), "{shown}");
            }
            for (job, cron) in module.default_schedules() {
                assert_eq!(props.schedule_for(job), Some(*cron));
            }
        }
    }
}
