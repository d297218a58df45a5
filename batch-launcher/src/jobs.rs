//! The registry of jobs: adding a domain is one line here.

use batch_common::{JobBuilder, JobDescriptor};

/// A job the launcher knows: its descriptor and, once implemented, how to build it.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// Name, steps, parameters.
    pub descriptor: &'static JobDescriptor,
    /// The factory; `None` while the job is declared but not yet implemented in this build.
    pub build: Option<JobBuilder>,
}

/// Every job, in `list` order.
pub const JOBS: &[Registration] = &[
    Registration {
        descriptor: &batch_point::DESCRIPTOR,
        build: Some(batch_point::build),
    },
    Registration {
        descriptor: &batch_asset::DESCRIPTOR,
        build: Some(batch_asset::build),
    },
];

/// Finds a job by its exact name.
pub fn find(name: &str) -> Option<&'static Registration> {
    JOBS.iter().find(|j| j.descriptor.name == name)
}

/// The names of every job, for error messages.
pub fn names() -> String {
    JOBS.iter()
        .map(|j| j.descriptor.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `list` output.
pub fn render_list() -> String {
    let mut out = String::new();
    for reg in JOBS {
        let job = reg.descriptor;
        let state = if reg.build.is_some() {
            ""
        } else {
            "  (not implemented in this build yet)"
        };
        out.push_str(&format!(
            "{}{state}\n  {}\n  steps: {}\n",
            job.name,
            job.description,
            job.steps.join(" -> ")
        ));
        for p in job.parameters {
            out.push_str(&format!(
                "  {}=<{:?}{}>  {}\n",
                p.name,
                p.kind,
                if p.identifying { ", identifying" } else { "" },
                p.description
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_unique_and_findable() {
        for job in JOBS {
            assert_eq!(
                find(job.descriptor.name).map(|j| j.descriptor.name),
                Some(job.descriptor.name)
            );
        }
        let mut names: Vec<_> = JOBS.iter().map(|j| j.descriptor.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), JOBS.len());
        assert!(find("noSuchJob").is_none());
        assert!(render_list().contains("pointBalanceSyncJob"));
    }
}
