//! `BatchProperties`: every setting, layered and validated.
//!
//! Layers, later wins: the built-in defaults (`config/defaults.toml`, compiled in) → an optional
//! TOML file (`--config PATH` or `BATCH_CONFIG`) → environment variables `BATCH__SECTION__KEY`
//! (e.g. `BATCH__DATABASE__URL`; note the double underscores). Unknown sections and keys, and
//! invalid or out-of-range values, are errors that name the key and where it was set (the file,
//! or the environment variable); nothing is half-applied. Every number and duration has an
//! allowed range, named in the error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use config::{Config, Environment, File, FileFormat};
use core_domain::{DatabaseUrl, PoolOptions};
use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::{RedactedUrl, Secret};

/// The built-in defaults, also the reference of every key.
pub const DEFAULTS_TOML: &str = include_str!("../config/defaults.toml");

/// The environment variable that names a config file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "BATCH_CONFIG";

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
}

impl ConfigError {
    /// The dotted key at fault, if the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::InFile { key, .. } => Some(key),
            ConfigError::File { .. } => None,
        }
    }
}

/// Where the layers above the defaults set their keys, to name the right one in an error: the
/// environment variable if one sets the key, else the config file if it does.
struct Origins<'a> {
    file: Option<(&'a Path, Config)>,
    env_vars: Vec<String>,
}

impl Origins<'_> {
    /// An error about `key`; `message` does not repeat the key.
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        // `redis.cluster_nodes[1]` is set by `redis.cluster_nodes`.
        let base = key.split('[').next().unwrap_or(key);
        let env = env_name(base);
        let from_env = self.env_vars.iter().any(|v| v.eq_ignore_ascii_case(&env));
        match &self.file {
            Some((path, layer)) if !from_env && layer.get::<config::Value>(base).is_ok() => {
                let message = match message.strip_prefix("unknown field `") {
                    // "unknown field `x`, expected one of ..." -> "unknown key `section.x`; ..."
                    Some(rest) => {
                        let expected = rest.split_once('`').map_or("", |(_, r)| r);
                        let expected = expected.trim_start_matches(',').trim();
                        if expected.is_empty() {
                            format!("unknown key `{key}`")
                        } else {
                            format!("unknown key `{key}`; {expected}")
                        }
                    }
                    None => format!("`{key}`: {message}"),
                };
                ConfigError::InFile {
                    path: path.to_path_buf(),
                    key: key.to_owned(),
                    message,
                }
            }
            _ => ConfigError::Invalid {
                key: key.to_owned(),
                env,
                message,
            },
        }
    }

    /// Checks that `value` of `key` is within `range`, naming both otherwise.
    fn in_range<T>(
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
    fn duration_in_range(
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

/// `batch.chunk_size` -> `BATCH__BATCH__CHUNK_SIZE`.
fn env_name(key: &str) -> String {
    format!("BATCH__{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Every setting of the launcher and the jobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchProperties {
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[redis]`
    pub redis: RedisSettings,
    /// `[batch]`: the runtime.
    pub batch: RuntimeSettings,
    /// `[point]`: pointBalanceSyncJob.
    pub point: PointSettings,
    /// `[asset]`: assetRefreshJob.
    pub asset: AssetSettings,
    /// `[notify]`: notifications.
    pub notify: NotifySettings,
    /// `[server]`: `serve` mode's HTTP API.
    pub server: ServerSettings,
    /// `[schedule]`: job name → cron expression (seconds field first, evaluated in `batch.timezone`).
    /// Job names match case-insensitively, because environment variables are lowercased.
    pub schedule: BTreeMap<String, String>,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path`, `postgres://…` or `mysql://…`; picks the backend. The password is redacted
    /// whenever the URL is printed.
    pub url: DatabaseUrl,
    /// Pool size.
    pub max_connections: NonZeroU32,
    /// How long to wait for a pooled connection.
    #[serde(with = "duration")]
    pub acquire_timeout: Duration,
}

impl DatabaseSettings {
    /// Pool options for [`core_domain::Database::connect`].
    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            max_connections: self.max_connections.get(),
            acquire_timeout: self.acquire_timeout,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Single-node URL (`redis://` or `rediss://`).
    #[serde(deserialize_with = "redis_url")]
    pub url: RedactedUrl,
    /// Cluster seed nodes; when non-empty the cluster client is used and `url` is ignored.
    #[serde(deserialize_with = "redis_urls")]
    pub cluster_nodes: Vec<RedactedUrl>,
    /// TCP connect timeout.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Per-command response timeout.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
}

/// `[batch]`: the runtime.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// The business time zone (IANA name).
    #[serde(deserialize_with = "time_zone", serialize_with = "ser_display")]
    pub timezone: Tz,
    /// Items per chunk (one commit per chunk).
    pub chunk_size: NonZeroUsize,
    /// Attempts of a chunk that failed with a transient error (1 = no retry); an upper bound; the
    /// `chunk_retry_max_elapsed` budget usually ends the retries first.
    pub chunk_retry_attempts: NonZeroU32,
    /// First chunk-retry delay; doubles per attempt.
    #[serde(with = "duration")]
    pub chunk_retry_backoff: Duration,
    /// Upper bound of the chunk-retry delay.
    #[serde(with = "duration")]
    pub chunk_retry_max_backoff: Duration,
    /// Total time a chunk may spend retrying transient errors (outage budget) before the step
    /// fails.
    #[serde(with = "duration")]
    pub chunk_retry_max_elapsed: Duration,
    /// Retries of a failed step within one launch (0 = none).
    pub step_retry_attempts: u32,
    /// Wait between step retries.
    #[serde(with = "duration")]
    pub step_retry_interval: Duration,
    /// Item failures a step tolerates before it fails.
    pub skip_limit: u64,
    /// How often a running execution refreshes its heartbeat.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A STARTED execution whose heartbeat is older than this is considered dead.
    #[serde(with = "duration")]
    pub stale_after: Duration,
    /// Without a terminal, one progress log line per this many chunks of a step.
    pub progress_log_chunks: NonZeroU32,
}

/// `[point]`: pointBalanceSyncJob.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PointSettings {
    /// Expiry of a cached balance, refreshed on every sync.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Key prefix; the key is `{prefix}{userId}`.
    pub cache_key_prefix: String,
    /// Chunk size of the sync step (balances per Redis write and checkpoint); unset:
    /// `batch.chunk_size`.
    #[serde(default)]
    pub sync_chunk_size: Option<NonZeroUsize>,
}

/// `[asset]`: assetRefreshJob.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssetSettings {
    /// Base URL of the external asset API (`http` or `https`).
    #[serde(deserialize_with = "http_url")]
    pub api_base_url: RedactedUrl,
    /// Whole-request timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Calls in flight at once.
    pub concurrency: NonZeroUsize,
    /// Optional cap on calls started per second.
    #[serde(default)]
    pub rate_limit_per_second: Option<NonZeroU32>,
    /// Attempts per user, including the first.
    pub max_attempts: NonZeroU32,
    /// First retry delay (exponential, with jitter).
    #[serde(with = "duration")]
    pub retry_backoff: Duration,
    /// Bearer token sent to the API (a secret). Unset: no `Authorization` header.
    #[serde(default)]
    pub api_token: Option<Secret<String>>,
}

/// `[notify]`: job notifications (see `crate::notify`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// Slack incoming-webhook URL (a secret). Unset: no Slack messages.
    #[serde(default)]
    pub slack_webhook_url: Option<Secret<url::Url>>,
    /// Whole-request timeout of one message (connect included). A slow or dead webhook delays
    /// the run by at most this much per message; it never fails the run.
    #[serde(
        deserialize_with = "positive_duration",
        serialize_with = "duration::serialize"
    )]
    pub timeout: Duration,
    /// Send a message when a job starts.
    pub on_start: bool,
    /// Send a message when a job completes without item failures. Failures, completions with
    /// item failures, stops and exhausted step retries are always sent.
    pub on_success: bool,
}

/// A duration greater than zero (`[notify] timeout`).
fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = duration::deserialize(d)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom("must be greater than 0"));
    }
    Ok(value)
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address of `serve`.
    pub bind: SocketAddr,
    /// Bearer token required by every route but health (a secret). `serve` refuses to start
    /// without one.
    #[serde(default)]
    pub token: Option<Secret<String>>,
    /// At start-up, a scheduled tick that fell while `serve` was down: `run_once` or `skip`.
    #[serde(default)]
    pub missed_ticks: crate::schedule::MissedTicks,
}

impl BatchProperties {
    /// Loads defaults, then `file` (or the file named by `BATCH_CONFIG`), then the process
    /// environment's `BATCH__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env_var = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(from_env_var);
        let env = std::env::vars().filter(|(k, _)| k.starts_with("BATCH__"));
        Self::load_from(file.as_deref(), env)
    }

    /// Like [`load`](Self::load) but with explicit environment variables (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        let mut file_layer = None;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            // Parse the file alone first: a syntax error names the file and line, and an error
            // about a key the file sets can name the file.
            let layer = parse_toml(&text).map_err(|message| ConfigError::File {
                path: path.to_owned(),
                message,
            })?;
            file_layer = Some((path, layer));
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("BATCH__"))
            .collect();
        let origins = Origins {
            file: file_layer,
            env_vars: env.keys().cloned().collect(),
        };
        builder = builder.add_source(
            Environment::with_prefix("BATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("redis.cluster_nodes")
                .source(Some(env)),
        );
        let merged = builder.build().map_err(|e| ConfigError::File {
            path: file.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })?;
        let props: BatchProperties = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            origins.invalid(&key, clean_message(&message))
        })?;
        props.validate(&origins)
    }

    /// The allowed range of every number and duration (sane bounds: a chunk of 10^12 rows would
    /// be one enormous read into memory), then cross-field checks that types cannot express.
    fn validate(mut self, o: &Origins<'_>) -> Result<Self, ConfigError> {
        const MS: Duration = Duration::from_millis(1);
        const SEC: Duration = Duration::from_secs(1);
        const MIN: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let d = &self.database;
        o.in_range(
            "database.max_connections",
            d.max_connections.get(),
            1..=1000,
        )?;
        o.duration_in_range("database.acquire_timeout", d.acquire_timeout, MS..=HOUR)?;
        let r = &self.redis;
        o.duration_in_range("redis.connect_timeout", r.connect_timeout, MS..=HOUR)?;
        o.duration_in_range("redis.response_timeout", r.response_timeout, MS..=HOUR)?;
        let b = &self.batch;
        o.in_range("batch.chunk_size", b.chunk_size.get(), 1..=100_000)?;
        o.in_range(
            "batch.chunk_retry_attempts",
            b.chunk_retry_attempts.get(),
            1..=1000,
        )?;
        o.duration_in_range(
            "batch.chunk_retry_backoff",
            b.chunk_retry_backoff,
            Duration::ZERO..=MIN,
        )?;
        o.duration_in_range(
            "batch.chunk_retry_max_backoff",
            b.chunk_retry_max_backoff,
            Duration::ZERO..=10 * MIN,
        )?;
        o.duration_in_range(
            "batch.chunk_retry_max_elapsed",
            b.chunk_retry_max_elapsed,
            Duration::ZERO..=DAY,
        )?;
        o.in_range("batch.step_retry_attempts", b.step_retry_attempts, 0..=100)?;
        o.duration_in_range(
            "batch.step_retry_interval",
            b.step_retry_interval,
            Duration::ZERO..=DAY,
        )?;
        o.in_range("batch.skip_limit", b.skip_limit, 0..=1_000_000_000)?;
        o.duration_in_range("batch.heartbeat_interval", b.heartbeat_interval, MS..=HOUR)?;
        o.duration_in_range("batch.stale_after", b.stale_after, MS..=DAY)?;
        o.in_range(
            "batch.progress_log_chunks",
            b.progress_log_chunks.get(),
            1..=1_000_000,
        )?;
        let p = &self.point;
        o.duration_in_range("point.cache_ttl", p.cache_ttl, SEC..=30 * DAY)?;
        if let Some(n) = p.sync_chunk_size {
            o.in_range("point.sync_chunk_size", n.get(), 1..=100_000)?;
        }
        let a = &self.asset;
        o.duration_in_range("asset.timeout", a.timeout, MS..=HOUR)?;
        o.duration_in_range("asset.connect_timeout", a.connect_timeout, MS..=HOUR)?;
        o.in_range("asset.concurrency", a.concurrency.get(), 1..=1024)?;
        if let Some(n) = a.rate_limit_per_second {
            o.in_range("asset.rate_limit_per_second", n.get(), 1..=100_000)?;
        }
        o.in_range("asset.max_attempts", a.max_attempts.get(), 1..=100)?;
        o.duration_in_range(
            "asset.retry_backoff",
            a.retry_backoff,
            Duration::ZERO..=10 * MIN,
        )?;
        o.duration_in_range("notify.timeout", self.notify.timeout, MS..=10 * MIN)?;

        let b = &self.batch;
        if b.stale_after <= b.heartbeat_interval * 2 {
            return Err(o.invalid(
                "batch.stale_after",
                format!(
                    "{} must be more than twice batch.heartbeat_interval ({}), or live runs would look dead",
                    humantime::format_duration(b.stale_after),
                    humantime::format_duration(b.heartbeat_interval)
                ),
            ));
        }
        if b.chunk_retry_max_backoff < b.chunk_retry_backoff {
            return Err(o.invalid(
                "batch.chunk_retry_max_backoff",
                "must not be less than batch.chunk_retry_backoff",
            ));
        }
        if self.point.cache_key_prefix.is_empty() {
            return Err(o.invalid("point.cache_key_prefix", "must not be empty"));
        }
        self.schedule = normalize_schedule(&self.schedule);
        // `off` (or an empty value) unschedules a job, e.g. BATCH__SCHEDULE__ASSETREFRESHJOB=off.
        self.schedule
            .retain(|_, cron| !(cron.trim().is_empty() || cron.trim().eq_ignore_ascii_case("off")));
        for (job, cron) in &self.schedule {
            if let Err(reason) = crate::schedule::CronSchedule::parse(cron) {
                return Err(o.invalid(
                    &format!("schedule.{job}"),
                    format!(
                        "`{cron}` is not a cron expression: {reason} (expected `sec min hour day-of-month month day-of-week`, or `off`)"
                    ),
                ));
            }
        }
        Ok(self)
    }

    /// The cron expression configured for a job (case-insensitive job name).
    pub fn schedule_for(&self, job_name: &str) -> Option<&str> {
        self.schedule
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(job_name))
            .map(|(_, v)| v.as_str())
    }

    /// The effective configuration as TOML, secrets redacted (for `batch-launcher config`).
    pub fn to_redacted_toml(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = String::new();
        if let serde_json::Value::Object(sections) = value {
            for (section, body) in sections {
                out.push_str(&format!("[{section}]\n"));
                if let serde_json::Value::Object(keys) = body {
                    for (k, v) in keys {
                        if !v.is_null() {
                            let key = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                                k
                            } else {
                                format!("\"{k}\"")
                            };
                            out.push_str(&format!("{key} = {v}\n"));
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}

/// Environment variables arrive lowercased (`BATCH__SCHEDULE__POINTBALANCESYNCJOB`), files keep
/// case (`pointBalanceSyncJob`). Keys equal but for case are one job: the all-lowercase (env) one
/// wins, and the file's spelling is kept.
fn normalize_schedule(raw: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut keys: Vec<&String> = raw.keys().collect();
    // Mixed-case (file/default) spellings first, so the lowercase (env) value overrides them.
    keys.sort_by_key(|k| (k.chars().all(|c| !c.is_ascii_uppercase()), k.to_string()));
    for k in keys {
        let existing = out.keys().find(|e| e.eq_ignore_ascii_case(k)).cloned();
        match existing {
            Some(name) => {
                out.insert(name, raw[k].clone());
            }
            None => {
                out.insert(k.clone(), raw[k].clone());
            }
        }
    }
    out
}

/// One TOML layer alone. The config crate reports TOML errors without the file name, so this
/// runs it alone (the caller names the file) and keeps the layer to tell which keys it sets.
fn parse_toml(text: &str) -> Result<Config, String> {
    Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .build()
        .map_err(|e| e.to_string())
}

/// The config crate appends `for key ...` / `in ...` to some messages; the key is already named.
fn clean_message(message: &str) -> String {
    let m = message
        .split(" for key `")
        .next()
        .unwrap_or(message)
        .trim_end();
    m.to_owned()
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "invalid duration `{s}` ({e}); write it like 500ms, 30s, 5m, 48h"
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn time_zone<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse::<Tz>().map_err(|_| {
        serde::de::Error::custom(format_args!(
            "unknown time zone `{s}` (expected an IANA name such as Asia/Seoul or UTC)"
        ))
    })
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<RedactedUrl, D::Error> {
    let s = String::deserialize(d)?;
    RedactedUrl::parse(&s, &["redis", "rediss"]).map_err(serde::de::Error::custom)
}

fn redis_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RedactedUrl>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| RedactedUrl::parse(s, &["redis", "rediss"]).map_err(serde::de::Error::custom))
        .collect()
}

fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<RedactedUrl, D::Error> {
    let s = String::deserialize(d)?;
    RedactedUrl::parse(&s, &["http", "https"]).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn err(file_text: Option<&str>, vars: &[(&str, &str)]) -> ConfigError {
        let f = file_text.map(file);
        BatchProperties::load_from(f.as_ref().map(|f| f.path()), env(vars)).unwrap_err()
    }

    #[test]
    fn defaults_are_complete_and_valid() {
        let p = BatchProperties::load_from(None, env(&[])).unwrap();
        assert_eq!(p.database.url.backend(), core_domain::Backend::Sqlite);
        assert_eq!(p.batch.timezone, chrono_tz::Asia::Seoul);
        assert_eq!(p.batch.chunk_size.get(), 1000);
        assert_eq!(p.batch.step_retry_attempts, 3);
        assert_eq!(p.batch.step_retry_interval, Duration::from_secs(300));
        assert_eq!(p.point.cache_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(p.point.cache_key_prefix, "point:balance:");
        assert_eq!(p.asset.concurrency.get(), 16);
        assert!(p.asset.rate_limit_per_second.is_none());
        assert!(p.notify.slack_webhook_url.is_none());
        assert_eq!(p.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(p.schedule_for("pointBalanceSyncJob"), Some("0 0 1 * * *"));
        assert_eq!(p.schedule_for("ASSETREFRESHJOB"), Some("0 0 4 * * *"));
    }

    #[test]
    fn file_then_env_override_defaults() {
        let f = file(
            "[batch]\nchunk_size = 500\ntimezone = \"UTC\"\n[database]\nurl = \"postgres://u:pw@db:5432/x\"\n\
             [schedule]\npointBalanceSyncJob = \"0 30 2 * * *\"\n",
        );
        let p = BatchProperties::load_from(
            Some(f.path()),
            env(&[
                ("BATCH__BATCH__CHUNK_SIZE", "250"),
                (
                    "BATCH__REDIS__CLUSTER_NODES",
                    "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
                ),
                ("BATCH__SCHEDULE__POINTBALANCESYNCJOB", "0 0 3 * * *"),
                ("BATCH__SCHEDULE__ASSETREFRESHJOB", "off"),
                ("BATCH__SERVER__MISSED_TICKS", "skip"),
                ("BATCH__ASSET__RATE_LIMIT_PER_SECOND", "50"),
                ("BATCH__SERVER__TOKEN", "12345"),
                ("UNRELATED", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(p.batch.chunk_size.get(), 250, "env wins over file");
        assert_eq!(p.batch.timezone, chrono_tz::UTC, "file wins over defaults");
        assert_eq!(p.database.url.backend(), core_domain::Backend::Postgres);
        assert_eq!(p.redis.cluster_nodes.len(), 2);
        assert_eq!(p.schedule_for("pointBalanceSyncJob"), Some("0 0 3 * * *"));
        assert_eq!(p.schedule_for("assetRefreshJob"), None, "`off` unschedules");
        assert_eq!(p.schedule.len(), 1, "{:?}", p.schedule);
        assert_eq!(p.server.missed_ticks, crate::schedule::MissedTicks::Skip);
        assert_eq!(p.asset.rate_limit_per_second.map(|n| n.get()), Some(50));
        assert_eq!(p.server.token.as_ref().unwrap().expose(), "12345");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(Some("[batch]\nchunk_sise = 5\n"), &[]);
        assert_eq!(e.key(), Some("batch.chunk_sise"), "{e}");
        assert!(e.to_string().contains("chunk_sise"), "{e}");

        let e = err(Some("[databse]\nurl = \"sqlite://x.db\"\n"), &[]);
        assert!(e.to_string().contains("databse"), "{e}");

        let e = err(None, &[("BATCH__REDIS__HOST", "x")]);
        assert_eq!(e.key(), Some("redis.host"), "{e}");
        assert!(e.to_string().contains("BATCH__REDIS__HOST"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        for (vars, key, needle) in [
            (
                vec![("BATCH__BATCH__CHUNK_SIZE", "-5")],
                "batch.chunk_size",
                "-5",
            ),
            (
                vec![("BATCH__BATCH__CHUNK_SIZE", "0")],
                "batch.chunk_size",
                "0",
            ),
            (
                vec![("BATCH__BATCH__TIMEZONE", "Mars/Olympus")],
                "batch.timezone",
                "Mars/Olympus",
            ),
            (
                vec![("BATCH__BATCH__STEP_RETRY_INTERVAL", "5 parsecs")],
                "batch.step_retry_interval",
                "5 parsecs",
            ),
            (
                vec![("BATCH__DATABASE__URL", "oracle://x")],
                "database.url",
                "oracle",
            ),
            (
                vec![("BATCH__ASSET__API_BASE_URL", "not a url")],
                "asset.api_base_url",
                "not a url",
            ),
            (
                vec![("BATCH__REDIS__URL", "http://127.0.0.1")],
                "redis.url",
                "http",
            ),
            (
                vec![("BATCH__SERVER__BIND", "localhost:notaport")],
                "server.bind",
                "",
            ),
            (
                vec![("BATCH__BATCH__STALE_AFTER", "5s")],
                "batch.stale_after",
                "heartbeat",
            ),
            (
                vec![("BATCH__SCHEDULE__ASSETREFRESHJOB", "daily")],
                "schedule.assetRefreshJob",
                "daily",
            ),
            (
                vec![("BATCH__SCHEDULE__ASSETREFRESHJOB", "0 0 25 * * *")],
                "schedule.assetRefreshJob",
                "0 0 25 * * *",
            ),
            (
                vec![("BATCH__SERVER__MISSED_TICKS", "sometimes")],
                "server.missed_ticks",
                "sometimes",
            ),
            (
                vec![("BATCH__BATCH__PROGRESS_LOG_CHUNKS", "0")],
                "batch.progress_log_chunks",
                "0",
            ),
        ] {
            let e = err(None, &vars);
            assert_eq!(e.key(), Some(key), "{vars:?}: {e}");
            assert!(e.to_string().contains(needle), "{vars:?}: {e}");
        }
    }

    #[test]
    fn numbers_and_durations_have_sane_bounds() {
        let e = err(None, &[("BATCH__BATCH__CHUNK_SIZE", "1000000000000")]);
        assert_eq!(
            e.to_string(),
            "invalid configuration: `batch.chunk_size` (env BATCH__BATCH__CHUNK_SIZE): \
             1000000000000 is out of range 1..=100000"
        );
        for (var, value, key, range) in [
            (
                "BATCH__DATABASE__MAX_CONNECTIONS",
                "5000",
                "database.max_connections",
                "1..=1000",
            ),
            (
                "BATCH__DATABASE__ACQUIRE_TIMEOUT",
                "2h",
                "database.acquire_timeout",
                "1ms..=1h",
            ),
            (
                "BATCH__DATABASE__ACQUIRE_TIMEOUT",
                "0s",
                "database.acquire_timeout",
                "1ms..=1h",
            ),
            (
                "BATCH__REDIS__RESPONSE_TIMEOUT",
                "1day",
                "redis.response_timeout",
                "1ms..=1h",
            ),
            (
                "BATCH__BATCH__CHUNK_RETRY_ATTEMPTS",
                "5000",
                "batch.chunk_retry_attempts",
                "1..=1000",
            ),
            (
                "BATCH__BATCH__CHUNK_RETRY_MAX_ELAPSED",
                "2days",
                "batch.chunk_retry_max_elapsed",
                "0s..=1day",
            ),
            (
                "BATCH__BATCH__STEP_RETRY_ATTEMPTS",
                "101",
                "batch.step_retry_attempts",
                "0..=100",
            ),
            (
                "BATCH__BATCH__SKIP_LIMIT",
                "99999999999",
                "batch.skip_limit",
                "0..=1000000000",
            ),
            (
                "BATCH__BATCH__PROGRESS_LOG_CHUNKS",
                "2000000",
                "batch.progress_log_chunks",
                "1..=1000000",
            ),
            (
                "BATCH__POINT__SYNC_CHUNK_SIZE",
                "100001",
                "point.sync_chunk_size",
                "1..=100000",
            ),
            (
                "BATCH__POINT__CACHE_TTL",
                "500ms",
                "point.cache_ttl",
                "1s..=30days",
            ),
            (
                "BATCH__ASSET__CONCURRENCY",
                "5000",
                "asset.concurrency",
                "1..=1024",
            ),
            (
                "BATCH__ASSET__RATE_LIMIT_PER_SECOND",
                "1000000",
                "asset.rate_limit_per_second",
                "1..=100000",
            ),
            (
                "BATCH__ASSET__MAX_ATTEMPTS",
                "1000",
                "asset.max_attempts",
                "1..=100",
            ),
            ("BATCH__ASSET__TIMEOUT", "0s", "asset.timeout", "1ms..=1h"),
            (
                "BATCH__NOTIFY__TIMEOUT",
                "1h",
                "notify.timeout",
                "1ms..=10m",
            ),
        ] {
            let e = err(None, &[(var, value)]);
            assert_eq!(e.key(), Some(key), "{var}={value}: {e}");
            let shown = e.to_string();
            assert!(shown.contains(var), "{shown}");
            assert!(shown.contains(&format!("out of range {range}")), "{shown}");
        }
        // The bounds themselves are accepted.
        let p = BatchProperties::load_from(
            None,
            env(&[
                ("BATCH__BATCH__CHUNK_SIZE", "100000"),
                ("BATCH__ASSET__CONCURRENCY", "1024"),
                ("BATCH__DATABASE__MAX_CONNECTIONS", "1000"),
            ]),
        )
        .unwrap();
        assert_eq!(p.batch.chunk_size.get(), 100_000);
    }

    #[test]
    fn chunk_retry_defaults_are_an_outage_budget() {
        let p = BatchProperties::load_from(None, env(&[])).unwrap();
        assert_eq!(p.batch.chunk_retry_attempts.get(), 20);
        assert_eq!(p.batch.chunk_retry_max_backoff, Duration::from_secs(5));
        assert_eq!(p.batch.chunk_retry_max_elapsed, Duration::from_secs(60));
        let p = BatchProperties::load_from(
            None,
            env(&[("BATCH__BATCH__CHUNK_RETRY_MAX_ELAPSED", "90s")]),
        )
        .unwrap();
        assert_eq!(p.batch.chunk_retry_max_elapsed, Duration::from_secs(90));
    }

    #[test]
    fn errors_about_file_keys_name_the_file_not_an_env_var() {
        let f = file("[batch]\nchunk_sise = 5\n");
        let e = BatchProperties::load_from(Some(f.path()), env(&[])).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "config file {}: unknown key `batch.chunk_sise`",
                f.path().display()
            )),
            "{shown}"
        );
        assert!(!shown.contains("BATCH__"), "{shown}");
        assert_eq!(e.key(), Some("batch.chunk_sise"));

        let f = file("[batch]\nchunk_size = 1000000000000\n");
        let e = BatchProperties::load_from(Some(f.path()), env(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "config file {}: `batch.chunk_size`: 1000000000000 is out of range 1..=100000",
                f.path().display()
            )
        );

        // A value the environment overrides is the environment's: a bad one names the variable,
        // a good one makes the file's bad value irrelevant.
        let f = file("[batch]\nchunk_size = 0\n");
        let e = BatchProperties::load_from(
            Some(f.path()),
            env(&[("BATCH__BATCH__CHUNK_SIZE", "200000")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("(env BATCH__BATCH__CHUNK_SIZE)"),
            "{e}"
        );
        BatchProperties::load_from(Some(f.path()), env(&[("BATCH__BATCH__CHUNK_SIZE", "20")]))
            .unwrap();

        // Unknown keys from the environment keep naming the variable, even with a file.
        let f = file("[batch]\nchunk_size = 10\n");
        let e =
            BatchProperties::load_from(Some(f.path()), env(&[("BATCH__BATCH__CHUNK_SISE", "1")]))
                .unwrap_err();
        assert!(e.to_string().contains("BATCH__BATCH__CHUNK_SISE"), "{e}");
        assert!(!e.to_string().contains("config file"), "{e}");
    }

    #[test]
    fn malformed_file_names_the_file() {
        let f = file("[batch\nchunk_size = ");
        let e = BatchProperties::load_from(Some(f.path()), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }), "{e}");
        assert!(
            e.to_string().contains(&f.path().display().to_string()),
            "{e}"
        );

        let e = BatchProperties::load_from(Some(Path::new("/nonexistent/batch.toml")), env(&[]))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/batch.toml"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let p = BatchProperties::load_from(
            None,
            env(&[
                (
                    "BATCH__DATABASE__URL",
                    "postgres://app:db-pass-1@db:5432/points",
                ),
                ("BATCH__REDIS__URL", "redis://:redis-pass-2@cache:6379"),
                (
                    "BATCH__NOTIFY__SLACK_WEBHOOK_URL",
                    "https://hooks.slack.test/services/T0/B0/webhook-3",
                ),
                ("BATCH__SERVER__TOKEN", "token-4"),
            ]),
        )
        .unwrap();
        let shown = format!("{p:?}\n{}", p.to_redacted_toml());
        for secret in ["db-pass-1", "redis-pass-2", "webhook-3", "token-4"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert!(shown.contains("db:5432"), "{shown}");
        assert_eq!(
            p.notify.slack_webhook_url.as_ref().unwrap().expose().path(),
            "/services/T0/B0/webhook-3"
        );

        // A malformed secret is rejected without echoing it.
        let e = err(
            None,
            &[("BATCH__NOTIFY__SLACK_WEBHOOK_URL", "ftp://secret-5@x")],
        );
        assert!(!e.to_string().contains("secret-5"), "{e}");
        assert_eq!(e.key(), Some("notify.slack_webhook_url"));
    }
}
