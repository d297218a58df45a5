//! The runtime's own settings sections: `[database]`, `[redis]`, `[batch]`, `[notify]`,
//! `[server]` (the domains' sections live in their crates, see [`crate::module`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use chrono_tz::Tz;
use core_domain::{DatabaseUrl, PoolOptions};
use serde::{Deserialize, Serialize};

use super::check::{ConfigError, SectionCheck};
use super::de::{duration, positive_duration, redis_url, redis_urls, ser_display, time_zone};
use crate::secret::{RedactedUrl, Secret};

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path`, `postgres://…` or `mysql://…`; picks the backend. The password is redacted
    /// whenever the URL is printed.
    pub url: DatabaseUrl,
    /// A password (a secret) put into `url`'s password, percent-encoded, when loading, so the URL
    /// can live in a ConfigMap and the password in a secret (`password_file`). Already applied:
    /// connect with `url`. Not for `sqlite://`.
    #[serde(default)]
    pub password: Option<Secret<String>>,
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
    /// A password (a secret: the AUTH token of ElastiCache and the like) put into the password
    /// of `url` and of every `cluster_nodes` URL when loading. Already applied.
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Cluster seed nodes; when non-empty the cluster client is used and `url` is ignored.
    #[serde(deserialize_with = "redis_urls")]
    pub cluster_nodes: Vec<RedactedUrl>,
    /// TCP connect timeout.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Per-command response timeout.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// PEM file of the CA(s) that sign the Redis servers' certificates, for `rediss://` (single
    /// node and cluster nodes); unset: the system's trust store. Certificates and host names are
    /// always verified; only a URL ending in `#insecure` skips that, and the launcher warns.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisSettings {
    /// The TLS settings in words (for `batch-launcher config`).
    pub fn tls_description(&self) -> String {
        if !self.uses_tls() {
            return "off (redis://)".to_owned();
        }
        let urls: Vec<&url::Url> = if self.cluster_nodes.is_empty() {
            vec![self.url.expose()]
        } else {
            self.cluster_nodes.iter().map(|u| u.expose()).collect()
        };
        if urls.iter().any(|u| u.fragment() == Some("insecure")) {
            return "required (rediss://), certificate NOT verified (#insecure)".to_owned();
        }
        match &self.ca_file {
            Some(ca) => format!(
                "required (rediss://), certificate and host name verified, CAs from {}",
                ca.display()
            ),
            None => "required (rediss://), certificate and host name verified, CAs from the system trust store".to_owned(),
        }
    }

    /// True when the connection uses TLS (`rediss://` for the single node or every cluster node).
    pub fn uses_tls(&self) -> bool {
        if self.cluster_nodes.is_empty() {
            self.url.expose().scheme() == "rediss"
        } else {
            self.cluster_nodes
                .iter()
                .all(|u| u.expose().scheme() == "rediss")
        }
    }
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
    /// Partitions a process works at once in a partitioned step (`run --workers N`).
    pub partition_workers: NonZeroU32,
    /// `[batch.partitions]`: partitions per step name (a step not named: 1, unpartitioned);
    /// `run --partitions N` overrides it for every partitioned step of a run.
    #[serde(default)]
    pub partitions: BTreeMap<String, NonZeroU32>,
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
    /// Where operators reach `serve` (its dashboard), e.g. `https://batch.example.com/`: when
    /// set, notifications link to the execution's page (`<public_url>ui/executions/<id>`).
    #[serde(default)]
    pub public_url: Option<url::Url>,
}

impl ServerSettings {
    pub(crate) fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        if let Some(u) = &self.public_url {
            let shown = format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            );
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(c.invalid(
                    "public_url",
                    format!("`{shown}` is not an http(s) URL with a host"),
                ));
            }
            if !u.username().is_empty() || u.password().is_some() {
                return Err(c.invalid(
                    "public_url",
                    "must not carry a user or password (it is shown in notifications)",
                ));
            }
            if u.query().is_some() || u.fragment().is_some() {
                return Err(c.invalid(
                    "public_url",
                    format!("`{shown}…` must not have a query or a fragment"),
                ));
            }
        }
        Ok(())
    }

    /// The dashboard page of execution `id`, when `public_url` is set.
    pub fn execution_link(&self, id: i64) -> Option<String> {
        execution_link(self.public_url.as_ref()?, id)
    }
}

/// `<base>ui/executions/<id>`, `base` taken as a folder (a missing final `/` added).
pub fn execution_link(base: &url::Url, id: i64) -> Option<String> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(&format!("ui/executions/{id}"))
        .ok()
        .map(String::from)
}

const MS: Duration = Duration::from_millis(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

// The allowed range of every number and duration (sane bounds: a chunk of 10^12 rows would be
// one enormous read into memory), then cross-field checks that types cannot express.

impl DatabaseSettings {
    pub(crate) fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.in_range("max_connections", self.max_connections.get(), 1..=1000)?;
        c.duration_in_range("acquire_timeout", self.acquire_timeout, MS..=HOUR)
    }
}

impl RedisSettings {
    pub(crate) fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.duration_in_range("connect_timeout", self.connect_timeout, MS..=HOUR)?;
        c.duration_in_range("response_timeout", self.response_timeout, MS..=HOUR)?;
        let schemes: Vec<&str> = if self.cluster_nodes.is_empty() {
            vec![self.url.expose().scheme()]
        } else {
            self.cluster_nodes
                .iter()
                .map(|u| u.expose().scheme())
                .collect()
        };
        if schemes.contains(&"rediss") && schemes.contains(&"redis") {
            return Err(c.invalid(
                "cluster_nodes",
                "mixes redis:// and rediss:// nodes; a cluster is either all TLS or none",
            ));
        }
        if let Some(path) = &self.ca_file {
            let key = "ca_file";
            if !self.uses_tls() {
                return Err(c.invalid(
                    key,
                    format!(
                        "`{}` is set, but Redis is reached without TLS; write rediss:// in redis.url (or redis.cluster_nodes) to use it",
                        path.display()
                    ),
                ));
            }
            core_domain::tls::read_ca_file(path).map_err(|e| c.invalid(key, e))?;
        }
        Ok(())
    }
}

impl RuntimeSettings {
    pub(crate) fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.in_range("chunk_size", self.chunk_size.get(), 1..=100_000)?;
        c.in_range(
            "chunk_retry_attempts",
            self.chunk_retry_attempts.get(),
            1..=1000,
        )?;
        c.duration_in_range(
            "chunk_retry_backoff",
            self.chunk_retry_backoff,
            Duration::ZERO..=MIN,
        )?;
        c.duration_in_range(
            "chunk_retry_max_backoff",
            self.chunk_retry_max_backoff,
            Duration::ZERO..=10 * MIN,
        )?;
        c.duration_in_range(
            "chunk_retry_max_elapsed",
            self.chunk_retry_max_elapsed,
            Duration::ZERO..=DAY,
        )?;
        c.in_range("step_retry_attempts", self.step_retry_attempts, 0..=100)?;
        c.duration_in_range(
            "step_retry_interval",
            self.step_retry_interval,
            Duration::ZERO..=DAY,
        )?;
        c.in_range("skip_limit", self.skip_limit, 0..=1_000_000_000)?;
        c.duration_in_range("heartbeat_interval", self.heartbeat_interval, MS..=HOUR)?;
        c.duration_in_range("stale_after", self.stale_after, MS..=DAY)?;
        c.in_range(
            "progress_log_chunks",
            self.progress_log_chunks.get(),
            1..=1_000_000,
        )?;
        c.in_range("partition_workers", self.partition_workers.get(), 1..=1024)?;
        for (step, n) in &self.partitions {
            c.in_range(&format!("partitions.{step}"), n.get(), 1..=100_000)?;
        }
        if self.stale_after <= self.heartbeat_interval * 2 {
            return Err(c.invalid(
                "stale_after",
                format!(
                    "{} must be more than twice batch.heartbeat_interval ({}), or live runs would look dead",
                    humantime::format_duration(self.stale_after),
                    humantime::format_duration(self.heartbeat_interval)
                ),
            ));
        }
        if self.chunk_retry_max_backoff < self.chunk_retry_backoff {
            return Err(c.invalid(
                "chunk_retry_max_backoff",
                "must not be less than batch.chunk_retry_backoff",
            ));
        }
        Ok(())
    }
}

impl NotifySettings {
    pub(crate) fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.duration_in_range("timeout", self.timeout, MS..=10 * MIN)
    }
}
