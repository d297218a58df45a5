//! What a job declares about itself, as constants: its name, steps and parameters — each
//! parameter's type, whether it is identifying, and its default. `list`, `--validate-only`, the
//! kick API, the Jenkins pipeline generator and the run itself all read the same declaration, so
//! what one accepts the others accept.

use std::fmt;

/// A domain's own check of a parameter's text: the canonical value, or what is wrong.
#[derive(Clone, Copy)]
pub struct Validator {
    /// What a valid value looks like, for `list` and error messages (e.g. `a currency code like KRW`).
    pub expected: &'static str,
    /// Returns the value's canonical text (stored, hashed, shown) or why it is refused.
    pub check: fn(&str) -> Result<String, String>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Validator {
    fn eq(&self, other: &Self) -> bool {
        self.expected == other.expected && std::ptr::fn_addr_eq(self.check, other.check)
    }
}

impl Eq for Validator {}

/// The type of a parameter's value, checked before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `YYYY-MM-DD`.
    Date,
    /// `YYYY-MM` (a calendar month).
    Month,
    /// `true` / `false`.
    Bool,
    /// A non-negative integer.
    Count,
    /// An integer in `min..=max`.
    Integer {
        /// The smallest value accepted.
        min: i64,
        /// The largest value accepted.
        max: i64,
    },
    /// One of these names (exactly as written).
    OneOf(&'static [&'static str]),
    /// Any text.
    Text,
    /// Text the domain checks (and may canonicalise) itself.
    Custom(Validator),
}

impl fmt::Display for ParamKind {
    /// How `list`, error messages and generated pipelines describe the kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::Date => f.write_str("date YYYY-MM-DD"),
            ParamKind::Month => f.write_str("month YYYY-MM"),
            ParamKind::Bool => f.write_str("true|false"),
            ParamKind::Count => f.write_str("count 0.."),
            ParamKind::Integer { min, max } => write!(f, "integer {min}..={max}"),
            ParamKind::OneOf(names) => write!(f, "one of {}", names.join("|")),
            ParamKind::Text => f.write_str("text"),
            ParamKind::Custom(v) => f.write_str(v.expected),
        }
    }
}

/// The value a parameter takes when a run does not give it. The runtime fills it in from the
/// descriptor (a date or month from the injected Clock in `batch.timezone`), so a scheduled run
/// with no parameters works for every job, and the instance identity uses the actual value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamDefault {
    /// Left unset (the job treats "not given" itself).
    None,
    /// Must be given: a run without it is refused (exit 2) — and so cannot be scheduled.
    Required,
    /// This value, parsed like a given one.
    Value(&'static str),
    /// Today in `batch.timezone` (a [`ParamKind::Date`]).
    Today,
    /// Yesterday in `batch.timezone` (a [`ParamKind::Date`]).
    Yesterday,
    /// The current month in `batch.timezone` (a [`ParamKind::Month`]).
    ThisMonth,
    /// The month before the current one in `batch.timezone` (a [`ParamKind::Month`]).
    LastMonth,
}

impl fmt::Display for ParamDefault {
    /// How `list` shows the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamDefault::None => f.write_str("unset"),
            ParamDefault::Required => f.write_str("required"),
            ParamDefault::Value(v) => write!(f, "{v}"),
            ParamDefault::Today => f.write_str("today in batch.timezone"),
            ParamDefault::Yesterday => f.write_str("yesterday in batch.timezone"),
            ParamDefault::ThisMonth => f.write_str("this month in batch.timezone"),
            ParamDefault::LastMonth => f.write_str("last month in batch.timezone"),
        }
    }
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
    /// What it means.
    pub description: &'static str,
    /// Its value when not given.
    pub default: ParamDefault,
}

impl ParameterSpec {
    /// A non-identifying parameter `name` of `kind`, unset by default, without description;
    /// the `const fn`s below set the rest:
    /// `ParameterSpec::new("month", ParamKind::Month).identifying().default(ParamDefault::LastMonth)`.
    pub const fn new(name: &'static str, kind: ParamKind) -> Self {
        ParameterSpec {
            name,
            kind,
            identifying: false,
            description: "",
            default: ParamDefault::None,
        }
    }

    /// Makes it part of the job instance's identity.
    pub const fn identifying(mut self) -> Self {
        self.identifying = true;
        self
    }

    /// Sets its default.
    pub const fn default(mut self, default: ParamDefault) -> Self {
        self.default = default;
        self
    }

    /// Sets its description.
    pub const fn describe(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }
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

impl JobDescriptor {
    /// The declared parameter `name`.
    pub fn parameter(&self, name: &str) -> Option<&ParameterSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }
}
