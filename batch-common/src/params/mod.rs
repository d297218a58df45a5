//! Job parameters: `key=value` pairs, the identifying ones hashed into the job instance key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use chrono_tz::Tz;

use crate::clock::{Clock, ClockExt as _};
mod month;
pub use month::YearMonth;

use crate::descriptor::{JobDescriptor, ParamDefault, ParamKind, ParameterSpec};

/// A parameter problem: the run is refused with exit code 2 and nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParameterError {
    /// The parameter at fault, if one.
    pub name: Option<String>,
    /// What is wrong, naming the parameter and value.
    pub message: String,
}

impl ParameterError {
    /// An error about parameter `name`.
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        ParameterError {
            name: Some(name.to_owned()),
            message: message.into(),
        }
    }
}

/// Parses `key=value` arguments. Rejects a malformed pair, an empty key and a repeated key.
pub fn parse_pairs<S: AsRef<str>>(args: &[S]) -> Result<BTreeMap<String, String>, ParameterError> {
    let mut out = BTreeMap::new();
    for arg in args {
        let arg = arg.as_ref();
        let Some((k, v)) = arg.split_once('=') else {
            return Err(ParameterError {
                name: None,
                message: format!("malformed job parameter `{arg}`: expected key=value"),
            });
        };
        let k = k.trim();
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            return Err(ParameterError {
                name: None,
                message: format!(
                    "malformed job parameter `{arg}`: the key must be letters, digits, `_`, `-` or `.`"
                ),
            });
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(ParameterError::new(
                k,
                format!("job parameter `{k}` is given twice"),
            ));
        }
    }
    Ok(out)
}

/// Parses a `YYYY-MM-DD` parameter.
pub fn parse_date(name: &str, value: &str) -> Result<NaiveDate, ParameterError> {
    NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").map_err(|e| {
        ParameterError::new(
            name,
            format!("invalid date `{value}` for parameter `{name}` ({e}); expected YYYY-MM-DD"),
        )
    })
}

/// Parses a boolean parameter (`true`/`false`, also `1`/`0`, `yes`/`no`).
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ParameterError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ParameterError::new(
            name,
            format!("invalid boolean `{value}` for parameter `{name}`; expected true or false"),
        )),
    }
}

/// Parses a `YYYY-MM` parameter.
pub fn parse_month(name: &str, value: &str) -> Result<YearMonth, ParameterError> {
    let bad = |why: &str| {
        ParameterError::new(
            name,
            format!("invalid month `{value}` for parameter `{name}` ({why}); expected YYYY-MM"),
        )
    };
    let v = value.trim();
    let (y, m) = v.split_once('-').ok_or_else(|| bad("no `-`"))?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad("not four digits, `-`, two digits"));
    }
    let (year, month) = (
        y.parse::<i32>().map_err(|_| bad("year"))?,
        m.parse::<u32>().map_err(|_| bad("month"))?,
    );
    YearMonth::new(year, month).ok_or_else(|| bad("month out of range"))
}

/// One parameter's value, parsed once at the edge against its declared [`ParamKind`]; jobs read
/// the typed value ([`JobParameters::date`], ...) and never re-parse text. Stored, hashed and
/// shown in its canonical text ([`Display`](fmt::Display)): `2026-11-20`, `2026-11`, `true`, `42`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    /// A calendar date.
    Date(NaiveDate),
    /// A calendar month.
    Month(YearMonth),
    /// A flag.
    Bool(bool),
    /// A non-negative integer.
    Count(u64),
    /// An integer (of a ranged [`ParamKind::Integer`]).
    Int(i64),
    /// Text: as given, one of the declared names, or a validator's canonical text.
    Text(String),
}

impl ParamValue {
    /// Parses `raw` as a value of `kind` for parameter `name`; the error names both.
    pub fn parse(name: &str, kind: ParamKind, raw: &str) -> Result<Self, ParameterError> {
        Ok(match kind {
            ParamKind::Date => ParamValue::Date(parse_date(name, raw)?),
            ParamKind::Month => ParamValue::Month(parse_month(name, raw)?),
            ParamKind::Bool => ParamValue::Bool(parse_bool(name, raw)?),
            ParamKind::Count => ParamValue::Count(raw.trim().parse::<u64>().map_err(|_| {
                ParameterError::new(
                    name,
                    format!("invalid number `{raw}` for parameter `{name}`; expected a non-negative integer"),
                )
            })?),
            ParamKind::Integer { min, max } => {
                let n = raw.trim().parse::<i64>().map_err(|_| {
                    ParameterError::new(
                        name,
                        format!("invalid integer `{raw}` for parameter `{name}`; expected {kind}"),
                    )
                })?;
                if !(min..=max).contains(&n) {
                    return Err(ParameterError::new(
                        name,
                        format!("`{raw}` for parameter `{name}` is out of range {min}..={max}"),
                    ));
                }
                ParamValue::Int(n)
            }
            ParamKind::OneOf(names) => {
                let v = raw.trim();
                let Some(found) = names.iter().find(|n| **n == v) else {
                    return Err(ParameterError::new(
                        name,
                        format!(
                            "invalid value `{raw}` for parameter `{name}`; expected one of {}",
                            names.join(", ")
                        ),
                    ));
                };
                ParamValue::Text((*found).to_owned())
            }
            ParamKind::Text => ParamValue::Text(raw.to_owned()),
            ParamKind::Custom(validator) => {
                ParamValue::Text((validator.check)(raw).map_err(|why| {
                    ParameterError::new(
                        name,
                        format!(
                            "invalid value `{raw}` for parameter `{name}` ({why}); expected {}",
                            validator.expected
                        ),
                    )
                })?)
            }
        })
    }

    /// What kind of value this is, for messages (`a date`, `a month`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            ParamValue::Date(_) => "a date",
            ParamValue::Month(_) => "a month",
            ParamValue::Bool(_) => "a flag",
            ParamValue::Count(_) => "a count",
            ParamValue::Int(_) => "an integer",
            ParamValue::Text(_) => "text",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            ParamValue::Month(m) => write!(f, "{m}"),
            ParamValue::Int(n) => write!(f, "{n}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Count(n) => write!(f, "{n}"),
            ParamValue::Text(t) => f.write_str(t),
        }
    }
}

impl From<NaiveDate> for ParamValue {
    fn from(d: NaiveDate) -> Self {
        ParamValue::Date(d)
    }
}

impl From<YearMonth> for ParamValue {
    fn from(m: YearMonth) -> Self {
        ParamValue::Month(m)
    }
}

impl From<bool> for ParamValue {
    fn from(b: bool) -> Self {
        ParamValue::Bool(b)
    }
}

impl From<u64> for ParamValue {
    fn from(n: u64) -> Self {
        ParamValue::Count(n)
    }
}

impl From<&str> for ParamValue {
    fn from(t: &str) -> Self {
        ParamValue::Text(t.to_owned())
    }
}

impl From<String> for ParamValue {
    fn from(t: String) -> Self {
        ParamValue::Text(t)
    }
}

/// What defaults are computed from: the business day of "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamContext {
    /// Today in the business time zone.
    pub today: NaiveDate,
}

impl ParamContext {
    /// Today from `clock` in `timezone` (`batch.timezone`).
    pub fn new(clock: &dyn Clock, timezone: Tz) -> Self {
        ParamContext {
            today: clock.today_in(timezone),
        }
    }
}

/// The resolved parameters of one run: every value (defaults filled in), typed, and which are
/// identifying.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobParameters {
    values: BTreeMap<String, ParamValue>,
    identifying: BTreeSet<String>,
}

impl JobParameters {
    /// Checks `given` against the job's declared parameters (an unknown name is an error naming it
    /// and listing the accepted ones; a value that is not of the declared kind is an error naming
    /// the parameter and the value) and starts a parameter set from the parsed values.
    pub fn from_declared(
        descriptor: &JobDescriptor,
        given: BTreeMap<String, String>,
    ) -> Result<Self, ParameterError> {
        let mut params = JobParameters::default();
        for (k, v) in given {
            let Some(spec) = descriptor.parameters.iter().find(|p| p.name == k) else {
                let accepted: Vec<&str> = descriptor.parameters.iter().map(|p| p.name).collect();
                return Err(ParameterError::new(
                    &k,
                    format!(
                        "unknown parameter `{k}` for {} (accepted: {})",
                        descriptor.name,
                        if accepted.is_empty() {
                            "none".to_owned()
                        } else {
                            accepted.join(", ")
                        }
                    ),
                ));
            };
            let value = ParamValue::parse(&k, spec.kind, &v)?;
            params.set(&k, value, spec.identifying);
        }
        Ok(params)
    }

    /// [`from_declared`](Self::from_declared), then every declared default for what was not
    /// given (dates and months from `ctx`): the parameters of a run. A missing required
    /// parameter is an error naming it. `run`, `--validate-only`, the kick API and the scheduler
    /// all resolve through here.
    pub fn resolve(
        descriptor: &JobDescriptor,
        given: BTreeMap<String, String>,
        ctx: &ParamContext,
    ) -> Result<Self, ParameterError> {
        let mut params = Self::from_declared(descriptor, given)?;
        for spec in descriptor.parameters {
            if params.is_set(spec.name) {
                continue;
            }
            let value = match spec.default {
                ParamDefault::None => continue,
                ParamDefault::Required => {
                    return Err(ParameterError::new(
                        spec.name,
                        format!(
                            "parameter `{}` ({}) is required by {}",
                            spec.name, spec.kind, descriptor.name
                        ),
                    ));
                }
                ParamDefault::Value(v) => ParamValue::parse(spec.name, spec.kind, v)?,
                ParamDefault::Today => ParamValue::Date(ctx.today),
                ParamDefault::Yesterday => {
                    ParamValue::Date(ctx.today.pred_opt().expect("a day before today"))
                }
                ParamDefault::ThisMonth => ParamValue::Month(YearMonth::of(ctx.today)),
                ParamDefault::LastMonth => ParamValue::Month(YearMonth::of(ctx.today).pred()),
            };
            params.set(spec.name, value, spec.identifying);
        }
        Ok(params)
    }

    /// Sets a value (a default the job fills in, say).
    pub fn set(&mut self, name: &str, value: impl Into<ParamValue>, identifying: bool) {
        self.values.insert(name.to_owned(), value.into());
        if identifying {
            self.identifying.insert(name.to_owned());
        } else {
            self.identifying.remove(name);
        }
    }

    /// True when `name` has a value.
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The value of `name`, if set.
    pub fn value(&self, name: &str) -> Option<&ParamValue> {
        self.values.get(name)
    }

    fn typed<'a, T>(
        &'a self,
        name: &str,
        kind: &str,
        pick: impl FnOnce(&'a ParamValue) -> Option<T>,
    ) -> Result<T, ParameterError> {
        let value = self
            .values
            .get(name)
            .ok_or_else(|| ParameterError::new(name, format!("parameter `{name}` is not set")))?;
        pick(value).ok_or_else(|| {
            ParameterError::new(
                name,
                format!(
                    "parameter `{name}` is {} (`{value}`), not {kind}",
                    value.kind_name()
                ),
            )
        })
    }

    /// The date `name` (an error if it is not set or not a date).
    pub fn date(&self, name: &str) -> Result<NaiveDate, ParameterError> {
        self.typed(name, "a date", |v| match v {
            ParamValue::Date(d) => Some(*d),
            _ => None,
        })
    }

    /// The month `name` (an error if it is not set or not a month).
    pub fn month(&self, name: &str) -> Result<YearMonth, ParameterError> {
        self.typed(name, "a month", |v| match v {
            ParamValue::Month(m) => Some(*m),
            _ => None,
        })
    }

    /// The integer `name` (an error if it is not set or not an integer).
    pub fn int(&self, name: &str) -> Result<i64, ParameterError> {
        self.typed(name, "an integer", |v| match v {
            ParamValue::Int(n) => Some(*n),
            _ => None,
        })
    }

    /// The flag `name` (an error if it is not set or not a flag).
    pub fn bool(&self, name: &str) -> Result<bool, ParameterError> {
        self.typed(name, "a flag", |v| match v {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// The count `name` (an error if it is not set or not a count).
    pub fn count(&self, name: &str) -> Result<u64, ParameterError> {
        self.typed(name, "a count", |v| match v {
            ParamValue::Count(n) => Some(*n),
            _ => None,
        })
    }

    /// The count `name`, or `default` when it is not set (an error if it is not a count).
    pub fn count_or(&self, name: &str, default: u64) -> Result<u64, ParameterError> {
        if self.is_set(name) {
            self.count(name)
        } else {
            Ok(default)
        }
    }

    /// The text `name` (an error if it is not set or not text).
    pub fn text(&self, name: &str) -> Result<&str, ParameterError> {
        self.typed(name, "text", |v| match v {
            ParamValue::Text(t) => Some(t.as_str()),
            _ => None,
        })
    }

    /// Every value in its canonical text (what is stored and shown).
    pub fn to_strings(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    }

    /// The identifying values only, as text.
    pub fn identifying(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .filter(|(k, _)| self.identifying.contains(*k))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    }

    /// The job instance key: SHA-256 (hex) of the identifying parameters in key order.
    pub fn job_key(&self) -> String {
        let canonical =
            serde_json::to_string(&self.identifying()).expect("a string map serializes");
        let digest = Sha256::digest(canonical.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every value as JSON (stored with the execution).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_strings()).expect("a string map serializes")
    }

    /// The identifying values as JSON (stored with the instance).
    pub fn identifying_json(&self) -> String {
        serde_json::to_string(&self.identifying()).expect("a string map serializes")
    }
}

/// Checks of the declarations themselves (the launcher runs them over every registered job).
impl ParameterSpec {
    /// Whether the default suits the kind (a date default for a date, a value the kind
    /// accepts, ...). The launcher checks every registered job's parameters with this.
    pub fn check(&self) -> Result<(), String> {
        let fits = match self.default {
            ParamDefault::None | ParamDefault::Required => true,
            ParamDefault::Today | ParamDefault::Yesterday => self.kind == ParamKind::Date,
            ParamDefault::ThisMonth | ParamDefault::LastMonth => self.kind == ParamKind::Month,
            ParamDefault::Value(v) => {
                return ParamValue::parse(self.name, self.kind, v)
                    .map(|_| ())
                    .map_err(|e| format!("the default of parameter `{}`: {e}", self.name));
            }
        };
        let range_ok = match self.kind {
            ParamKind::Integer { min, max } => min <= max,
            ParamKind::OneOf(names) => !names.is_empty(),
            _ => true,
        };
        if !fits {
            return Err(format!(
                "parameter `{}`: default `{}` does not suit a {} parameter",
                self.name, self.default, self.kind
            ));
        }
        if !range_ok {
            return Err(format!(
                "parameter `{}`: {} accepts no value",
                self.name, self.kind
            ));
        }
        Ok(())
    }
}

impl JobDescriptor {
    /// Checks the declaration itself: a job name, unique parameter names that `key=value`
    /// accepts, and defaults that suit their kinds.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "job name `{}` must be letters and digits only",
                self.name
            ));
        }
        for (i, p) in self.parameters.iter().enumerate() {
            let valid_name = !p.name.is_empty()
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
            if !valid_name {
                return Err(format!(
                    "{}: parameter name `{}` is invalid",
                    self.name, p.name
                ));
            }
            if self.parameters[..i].iter().any(|q| q.name == p.name) {
                return Err(format!(
                    "{}: parameter `{}` is declared twice",
                    self.name, p.name
                ));
            }
            p.check().map_err(|e| format!("{}: {e}", self.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
