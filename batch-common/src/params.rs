//! Job parameters: `key=value` pairs, the identifying ones hashed into the job instance key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::descriptor::{JobDescriptor, ParamKind};

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

/// One parameter's value, parsed once at the edge against its declared [`ParamKind`]; jobs read
/// the typed value ([`JobParameters::date`], ...) and never re-parse text. Stored, hashed and
/// shown in its canonical text ([`Display`](fmt::Display)): `2026-11-20`, `true`, `42`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    /// A calendar date.
    Date(NaiveDate),
    /// A flag.
    Bool(bool),
    /// A non-negative integer.
    Count(u64),
    /// Any text, as given.
    Text(String),
}

impl ParamValue {
    /// Parses `raw` as a value of `kind` for parameter `name`; the error names both.
    pub fn parse(name: &str, kind: ParamKind, raw: &str) -> Result<Self, ParameterError> {
        Ok(match kind {
            ParamKind::Date => ParamValue::Date(parse_date(name, raw)?),
            ParamKind::Bool => ParamValue::Bool(parse_bool(name, raw)?),
            ParamKind::Count => ParamValue::Count(raw.trim().parse::<u64>().map_err(|_| {
                ParameterError::new(
                    name,
                    format!("invalid number `{raw}` for parameter `{name}`; expected a non-negative integer"),
                )
            })?),
            ParamKind::Text => ParamValue::Text(raw.to_owned()),
        })
    }

    /// The kind of this value.
    pub fn kind(&self) -> ParamKind {
        match self {
            ParamValue::Date(_) => ParamKind::Date,
            ParamValue::Bool(_) => ParamKind::Bool,
            ParamValue::Count(_) => ParamKind::Count,
            ParamValue::Text(_) => ParamKind::Text,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
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
                    "parameter `{name}` is {:?} (`{value}`), not {kind}",
                    value.kind()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::ParameterSpec;

    const JOB: JobDescriptor = JobDescriptor {
        name: "testJob",
        description: "",
        steps: &[],
        parameters: &[
            ParameterSpec {
                name: "date",
                kind: ParamKind::Date,
                identifying: true,
                description: "",
            },
            ParameterSpec {
                name: "verify",
                kind: ParamKind::Bool,
                identifying: false,
                description: "",
            },
        ],
    };

    #[test]
    fn pairs_are_parsed_and_errors_name_the_argument() {
        let p = parse_pairs(&["date=2026-11-20", "verify=true", "note=a=b"]).unwrap();
        assert_eq!(p["date"], "2026-11-20");
        assert_eq!(p["note"], "a=b");
        assert!(
            parse_pairs(&["date"])
                .unwrap_err()
                .message
                .contains("`date`")
        );
        assert!(parse_pairs(&["=x"]).is_err());
        assert!(parse_pairs(&["a b=1"]).is_err());
        assert!(
            parse_pairs(&["date=1", "date=2"])
                .unwrap_err()
                .message
                .contains("twice")
        );
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let e = JobParameters::from_declared(&JOB, parse_pairs(&["dat=2026-11-20"]).unwrap())
            .unwrap_err();
        assert_eq!(e.name.as_deref(), Some("dat"));
        assert!(e.message.contains("accepted: date, verify"), "{e}");
    }

    #[test]
    fn values_are_checked_against_their_kind() {
        let e = JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-13-01"]).unwrap())
            .unwrap_err();
        assert_eq!(e.name.as_deref(), Some("date"));
        assert!(e.message.contains("2026-13-01"), "{e}");
        let e = JobParameters::from_declared(&JOB, parse_pairs(&["verify=perhaps"]).unwrap())
            .unwrap_err();
        assert_eq!(e.name.as_deref(), Some("verify"));
    }

    #[test]
    fn only_identifying_parameters_make_the_key() {
        let a = JobParameters::from_declared(
            &JOB,
            parse_pairs(&["date=2026-11-20", "verify=true"]).unwrap(),
        )
        .unwrap();
        let b =
            JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-11-20"]).unwrap()).unwrap();
        let c =
            JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-11-21"]).unwrap()).unwrap();
        assert_eq!(a.job_key(), b.job_key());
        assert_ne!(a.job_key(), c.job_key());
        assert_eq!(a.job_key().len(), 64);
        assert_eq!(a.identifying_json(), r#"{"date":"2026-11-20"}"#);
        assert_eq!(a.to_json(), r#"{"date":"2026-11-20","verify":"true"}"#);
    }

    #[test]
    fn values_are_parsed_once_into_their_kind_and_canonical() {
        let p = JobParameters::from_declared(
            &JOB,
            parse_pairs(&["date= 2026-11-20", "verify=YES"]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            p.date("date").unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
        );
        assert!(p.bool("verify").unwrap());
        assert_eq!(p.to_json(), r#"{"date":"2026-11-20","verify":"true"}"#);
        // The same date written differently is the same instance.
        let q =
            JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-11-20"]).unwrap()).unwrap();
        assert_eq!(p.job_key(), q.job_key());
        let e = p.count("date").unwrap_err();
        assert!(
            e.message.contains("`date`") && e.message.contains("not a count"),
            "{e}"
        );
        let e = q.bool("verify").unwrap_err();
        assert!(e.message.contains("not set"), "{e}");
    }

    #[test]
    fn typed_values() {
        assert_eq!(
            parse_date("date", "2026-11-20").unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
        );
        let e = parse_date("date", "2026-02-30").unwrap_err();
        assert!(
            e.message.contains("2026-02-30") && e.message.contains("`date`"),
            "{e}"
        );
        assert!(parse_bool("verify", "TRUE").unwrap());
        assert!(!parse_bool("verify", "0").unwrap());
        assert!(
            parse_bool("verify", "maybe")
                .unwrap_err()
                .message
                .contains("maybe")
        );
    }
}
