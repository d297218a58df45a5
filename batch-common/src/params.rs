//! Job parameters: `key=value` pairs, the identifying ones hashed into the job instance key.

use std::collections::{BTreeMap, BTreeSet};

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

/// The resolved parameters of one run: every value (defaults filled in) and which are identifying.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobParameters {
    values: BTreeMap<String, String>,
    identifying: BTreeSet<String>,
}

impl JobParameters {
    /// Checks `given` against the job's declared parameters (an unknown name is an error naming it
    /// and listing the accepted ones) and starts a parameter set from them.
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
            match spec.kind {
                ParamKind::Date => {
                    parse_date(&k, &v)?;
                }
                ParamKind::Bool => {
                    parse_bool(&k, &v)?;
                }
                ParamKind::Count => {
                    v.trim().parse::<u64>().map_err(|_| {
                        ParameterError::new(&k, format!("invalid number `{v}` for parameter `{k}`"))
                    })?;
                }
                ParamKind::Text => {}
            }
            params.set(&k, v, spec.identifying);
        }
        Ok(params)
    }

    /// Sets a value.
    pub fn set(&mut self, name: &str, value: impl Into<String>, identifying: bool) {
        self.values.insert(name.to_owned(), value.into());
        if identifying {
            self.identifying.insert(name.to_owned());
        } else {
            self.identifying.remove(name);
        }
    }

    /// A value, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every value.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// The identifying values only.
    pub fn identifying(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .filter(|(k, _)| self.identifying.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
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
        serde_json::to_string(&self.values).expect("a string map serializes")
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
