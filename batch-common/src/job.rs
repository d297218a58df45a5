//! What a job declares about itself, so the launcher can list and validate it without running it.

/// One parameter a job accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterSpec {
    /// Name, as in `key=value`.
    pub name: &'static str,
    /// Whether it is part of the job instance's identity.
    pub identifying: bool,
    /// What it means and its default.
    pub description: &'static str,
}

/// A job's name, description and parameters (metadata as constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDescriptor {
    /// The job name used on the command line, e.g. `pointBalanceSyncJob`.
    pub name: &'static str,
    /// One line for `list`.
    pub description: &'static str,
    /// Step names, in order.
    pub steps: &'static [&'static str],
    /// Accepted parameters.
    pub parameters: &'static [ParameterSpec],
}
