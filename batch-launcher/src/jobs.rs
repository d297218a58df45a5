//! The registry of jobs: adding a domain is one line here.

use batch_common::JobDescriptor;

/// Every job this launcher knows, in `list` order.
pub const JOBS: &[JobDescriptor] = &[batch_point::DESCRIPTOR, batch_asset::DESCRIPTOR];

/// Finds a job by its exact name.
pub fn find(name: &str) -> Option<&'static JobDescriptor> {
    JOBS.iter().find(|j| j.name == name)
}

/// The `list` output.
pub fn render_list() -> String {
    let mut out = String::new();
    for job in JOBS {
        out.push_str(&format!(
            "{}\n  {}\n  steps: {}\n",
            job.name,
            job.description,
            job.steps.join(" -> ")
        ));
        for p in job.parameters {
            out.push_str(&format!(
                "  {}={}  {}\n",
                p.name,
                if p.identifying {
                    "<identifying>"
                } else {
                    "<option>"
                },
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
            assert_eq!(find(job.name).map(|j| j.name), Some(job.name));
        }
        let mut names: Vec<_> = JOBS.iter().map(|j| j.name).collect();
        names.dedup();
        assert_eq!(names.len(), JOBS.len());
        assert!(find("noSuchJob").is_none());
        assert!(render_list().contains("pointBalanceSyncJob"));
    }
}
