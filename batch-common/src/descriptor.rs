//! What a job declares about itself, as constants: its name, steps and parameters (read by
//! `list`, by parameter checks before anything connects, and by the launcher).

/// The type of a parameter's value, checked before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `YYYY-MM-DD`.
    Date,
    /// `true` / `false`.
    Bool,
    /// A non-negative integer.
    Count,
    /// Any text.
    Text,
}

/// One parameter a job accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterSpec {
    /// Name, as in `key=value`.
    pub name: &'static str,
    /// The value's type.
    pub kind: ParamKind,
    /// Whether it is part of the job instance's identity.
    pub identifying: bool,
    /// What it means and its default.
    pub description: &'static str,
}

/// A job's name, description and parameters (metadata as constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDescriptor {
    /// The job name used on the command line, e.g. `dailyReportJob`.
    pub name: &'static str,
    /// One line for `list`.
    pub description: &'static str,
    /// Step names, in order.
    pub steps: &'static [&'static str],
    /// Accepted parameters.
    pub parameters: &'static [ParameterSpec],
}
