//! `[point]`: the settings of pointBalanceSyncJob (defaults in `config/defaults.toml`).

use std::num::NonZeroUsize;
use std::time::Duration;

use batch_common::config::{ConfigError, SectionCheck, SettingsSection, de};
use serde::{Deserialize, Serialize};

/// `[point]`: pointBalanceSyncJob.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PointSettings {
    /// Expiry of a cached balance, refreshed on every sync.
    #[serde(with = "de::duration")]
    pub cache_ttl: Duration,
    /// Key prefix; the key is `{prefix}{userId}`.
    pub cache_key_prefix: String,
    /// Chunk size of the sync step (balances per Redis write and checkpoint); unset:
    /// `batch.chunk_size`.
    #[serde(default)]
    pub sync_chunk_size: Option<NonZeroUsize>,
}

impl SettingsSection for PointSettings {
    const NAME: &'static str = "point";
    const DEFAULTS: &'static str = include_str!("../config/defaults.toml");

    fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        c.duration_in_range(
            "cache_ttl",
            self.cache_ttl,
            Duration::from_secs(1)..=30 * DAY,
        )?;
        if let Some(n) = self.sync_chunk_size {
            c.in_range("sync_chunk_size", n.get(), 1..=100_000)?;
        }
        if self.cache_key_prefix.is_empty() {
            return Err(c.invalid("cache_key_prefix", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use batch_common::config::BatchProperties;

    use super::*;
    use crate::MODULE;

    fn load(vars: &[(&str, &str)]) -> Result<BatchProperties, ConfigError> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        BatchProperties::load_from(None, env, &[&MODULE])
    }

    #[test]
    fn defaults_are_complete_and_valid() {
        let p = load(&[]).unwrap();
        let point = p.section::<PointSettings>().unwrap();
        assert_eq!(point.cache_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(point.cache_key_prefix, "point:balance:");
        assert!(point.sync_chunk_size.is_none());
        assert_eq!(p.schedule_for("pointBalanceSyncJob"), Some("0 0 1 * * *"));
        assert!(p.to_redacted_toml().contains("[point]"));
    }

    #[test]
    fn values_out_of_range_are_named() {
        for (var, value, key, needle) in [
            (
                "BATCH__POINT__SYNC_CHUNK_SIZE",
                "100001",
                "point.sync_chunk_size",
                "out of range 1..=100000",
            ),
            (
                "BATCH__POINT__CACHE_TTL",
                "500ms",
                "point.cache_ttl",
                "out of range 1s..=30days",
            ),
            (
                "BATCH__POINT__CACHE_KEY_PREFIX",
                "",
                "point.cache_key_prefix",
                "must not be empty",
            ),
            (
                "BATCH__POINT__CACHE_TTLL",
                "1h",
                "point.cache_ttll",
                "unknown",
            ),
        ] {
            let e = load(&[(var, value)]).unwrap_err();
            assert_eq!(e.key(), Some(key), "{var}={value}: {e}");
            let shown = e.to_string();
            assert!(shown.contains(var), "{shown}");
            assert!(shown.contains(needle), "{shown}");
        }
        let p = load(&[
            ("BATCH__POINT__SYNC_CHUNK_SIZE", "5000"),
            ("BATCH__SCHEDULE__POINTBALANCESYNCJOB", "0 0 3 * * *"),
        ])
        .unwrap();
        let point = p.section::<PointSettings>().unwrap();
        assert_eq!(point.sync_chunk_size.map(NonZeroUsize::get), Some(5000));
        assert_eq!(p.schedule_for("pointBalanceSyncJob"), Some("0 0 3 * * *"));
    }
}
