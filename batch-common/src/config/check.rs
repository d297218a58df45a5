//! Configuration errors, and the checks that name the key at fault and where it was set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::Config;

use crate::secret::Secret;

/// Why the configuration could not be loaded. Every variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file is missing or is not valid TOML.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key set in the config file is unknown, or its value is invalid.
    #[error("config file {}: {message}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `batch.chunk_size`.
        key: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A key is unknown or its value is invalid (set in the environment, or the default).
    #[error("invalid configuration: `{key}` (env {env}): {message}")]
    Invalid {
        /// Dotted key, e.g. `batch.chunk_size`.
        key: String,
        /// The matching environment variable, e.g. `BATCH__BATCH__CHUNK_SIZE`.
        env: String,
        /// What is wrong.
        message: String,
    },
    /// A registered module's settings are inconsistent (a fault of the build, not of the
    /// configuration): a section name taken twice, defaults outside the module's own table.
    #[error("module `{module}`: {message}")]
    Module {
        /// The module's name.
        module: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key at fault, if the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::InFile { key, .. } => Some(key),
            ConfigError::File { .. } | ConfigError::Module { .. } => None,
        }
    }

    /// The error with every occurrence of `hidden` in its message replaced by `***`: a value
    /// read from a secret file that a check quotes (a "URL" that is in fact a bare password).
    pub(crate) fn scrub(self, hidden: &[Secret<String>]) -> Self {
        let scrub = |mut message: String| {
            for secret in hidden {
                if !secret.expose().is_empty() {
                    message = message.replace(secret.expose().as_str(), "***");
                }
            }
            message
        };
        match self {
            ConfigError::File { path, message } => ConfigError::File {
                path,
                message: scrub(message),
            },
            ConfigError::InFile { path, key, message } => ConfigError::InFile {
                path,
                key,
                message: scrub(message),
            },
            ConfigError::Invalid { key, env, message } => ConfigError::Invalid {
                key,
                env,
                message: scrub(message),
            },
            ConfigError::Module { module, message } => ConfigError::Module {
                module,
                message: scrub(message),
            },
        }
    }
}

/// `batch.chunk_size` -> `BATCH__BATCH__CHUNK_SIZE`.
pub(crate) fn env_name(key: &str) -> String {
    format!("BATCH__{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Where the layers above the defaults set their keys, to name the right one in an error: the
/// environment variable if one sets the key, else the config file if it does. A secret read
/// from a file (`database.url_file`) is named by the key that named the file, and the file.
pub(crate) struct Origins<'a> {
    pub(crate) file: Option<(&'a Path, Config)>,
    pub(crate) env_vars: Vec<String>,
    /// Secrets read from files, by their dotted key (`database.url`).
    pub(crate) secret_files: BTreeMap<String, SecretFile>,
}

/// A secret read from a file: the key that named the file, and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretFile {
    /// The dotted `_file` key, e.g. `database.url_file`.
    pub(crate) file_key: String,
    /// The file.
    pub(crate) path: PathBuf,
}

/// Where a key was set above the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin<'a> {
    /// By this environment variable (`BATCH__DATABASE__URL`).
    Env(String),
    /// In this config file.
    File(&'a Path),
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
        }
    }
}

impl Origins<'_> {
    /// Where `key` (dotted; `redis.cluster_nodes[1]` is set by `redis.cluster_nodes`) was set:
    /// its environment variable, else the config file; `None` for a default.
    pub(crate) fn origin(&self, key: &str) -> Option<Origin<'_>> {
        let base = key.split('[').next().unwrap_or(key);
        let env = env_name(base);
        if self.env_vars.iter().any(|v| v.eq_ignore_ascii_case(&env)) {
            return Some(Origin::Env(env));
        }
        match &self.file {
            Some((path, layer)) if layer.get::<config::Value>(base).is_ok() => {
                Some(Origin::File(path))
            }
            _ => None,
        }
    }

    /// An error about `key`; `message` does not repeat the key.
    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let base = key.split('[').next().unwrap_or(key);
        // A secret read from a file was set where its `_file` key was.
        let read_from = self.secret_files.get(base);
        let source = read_from.map_or(base, |f| f.file_key.as_str());
        match self.origin(source) {
            Some(Origin::File(path)) => {
                let message = match (read_from, message.strip_prefix("unknown field `")) {
                    (Some(f), _) => format!(
                        "`{key}` (read from `{}` = {}): {message}",
                        f.file_key,
                        f.path.display()
                    ),
                    // "unknown field `x`, expected one of ..." -> "unknown key `section.x`; ..."
                    (None, Some(rest)) => {
                        let expected = rest.split_once('`').map_or("", |(_, r)| r);
                        let expected = expected.trim_start_matches(',').trim();
                        if expected.is_empty() {
                            format!("unknown key `{key}`")
                        } else {
                            format!("unknown key `{key}`; {expected}")
                        }
                    }
                    (None, None) => format!("`{key}`: {message}"),
                };
                ConfigError::InFile {
                    path: path.to_path_buf(),
                    key: key.to_owned(),
                    message,
                }
            }
            _ => ConfigError::Invalid {
                key: key.to_owned(),
                env: env_name(source),
                message: match read_from {
                    Some(f) => format!("read from {}: {message}", f.path.display()),
                    None => message,
                },
            },
        }
    }

    /// The checks of one section's keys.
    pub(crate) fn section<'s>(&'s self, section: &'s str) -> SectionCheck<'s> {
        SectionCheck {
            section,
            origins: self,
        }
    }
}

/// Checks of the keys of one settings section, for its `validate`: every error names the full
/// key (`section.key`) and where it was set (the `BATCH__SECTION__KEY` variable, or the file).
pub struct SectionCheck<'a> {
    section: &'a str,
    origins: &'a Origins<'a>,
}

impl std::fmt::Debug for SectionCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectionCheck")
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl SectionCheck<'_> {
    /// The dotted key of `key` in this section.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}.{key}", self.section)
    }

    /// An error about the section as a whole (e.g. not a table).
    pub fn invalid_section(&self, message: impl Into<String>) -> ConfigError {
        self.origins.invalid(self.section, message)
    }

    /// An error about `key` of this section; `message` does not repeat the key.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.invalid(&self.full_key(key), message)
    }

    /// Checks that `value` of `key` is within `range`, naming both otherwise.
    pub fn in_range<T>(
        &self,
        key: &str,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<(), ConfigError>
    where
        T: PartialOrd + std::fmt::Display + Copy,
    {
        if range.contains(&value) {
            return Ok(());
        }
        Err(self.invalid(
            key,
            format!(
                "{value} is out of range {}..={}",
                range.start(),
                range.end()
            ),
        ))
    }

    /// [`in_range`](Self::in_range) for durations (written like `30s..=1h`).
    pub fn duration_in_range(
        &self,
        key: &str,
        value: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<(), ConfigError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if range.contains(&value) {
            return Ok(());
        }
        Err(self.invalid(
            key,
            format!(
                "{} is out of range {}..={}",
                show(value),
                show(*range.start()),
                show(*range.end())
            ),
        ))
    }
}

/// The config crate appends `for key ...` / `in ...` to some messages; the key is already named.
pub(crate) fn clean_message(message: &str) -> String {
    let m = message
        .split(" for key `")
        .next()
        .unwrap_or(message)
        .trim_end();
    m.to_owned()
}
