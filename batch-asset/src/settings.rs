//! `[asset]`: the settings of assetRefreshJob (defaults in `config/defaults.toml`).

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use batch_common::config::{ConfigError, SectionCheck, SettingsSection, de};
use batch_common::{RedactedUrl, Secret};
use serde::{Deserialize, Serialize};

/// `[asset]`: assetRefreshJob.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssetSettings {
    /// Base URL of the external asset API (`http` or `https`).
    #[serde(deserialize_with = "de::http_url")]
    pub api_base_url: RedactedUrl,
    /// Whole-request timeout.
    #[serde(with = "de::duration")]
    pub timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "de::duration")]
    pub connect_timeout: Duration,
    /// Calls in flight at once.
    pub concurrency: NonZeroUsize,
    /// Optional cap on calls started per second.
    #[serde(default)]
    pub rate_limit_per_second: Option<NonZeroU32>,
    /// Attempts per user, including the first.
    pub max_attempts: NonZeroU32,
    /// First retry delay (exponential, with jitter).
    #[serde(with = "de::duration")]
    pub retry_backoff: Duration,
    /// Bearer token sent to the API (a secret). Unset: no `Authorization` header.
    #[serde(default)]
    pub api_token: Option<Secret<String>>,
}

impl SettingsSection for AssetSettings {
    const NAME: &'static str = "asset";
    const DEFAULTS: &'static str = include_str!("../config/defaults.toml");
    const SECRET_KEYS: &'static [&'static str] = &["asset.api_token"];

    fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        const MS: Duration = Duration::from_millis(1);
        const HOUR: Duration = Duration::from_secs(3600);
        c.duration_in_range("timeout", self.timeout, MS..=HOUR)?;
        c.duration_in_range("connect_timeout", self.connect_timeout, MS..=HOUR)?;
        c.in_range("concurrency", self.concurrency.get(), 1..=1024)?;
        if let Some(n) = self.rate_limit_per_second {
            c.in_range("rate_limit_per_second", n.get(), 1..=100_000)?;
        }
        c.in_range("max_attempts", self.max_attempts.get(), 1..=100)?;
        c.duration_in_range(
            "retry_backoff",
            self.retry_backoff,
            Duration::ZERO..=Duration::from_secs(600),
        )
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
        let asset = p.section::<AssetSettings>().unwrap();
        assert_eq!(asset.concurrency.get(), 16);
        assert!(asset.rate_limit_per_second.is_none());
        assert!(asset.api_token.is_none());
        assert_eq!(p.schedule_for("ASSETREFRESHJOB"), Some("0 0 4 * * *"));
        let p = load(&[
            ("BATCH__SCHEDULE__ASSETREFRESHJOB", "off"),
            ("BATCH__ASSET__RATE_LIMIT_PER_SECOND", "50"),
            ("BATCH__ASSET__CONCURRENCY", "1024"),
        ])
        .unwrap();
        let asset = p.section::<AssetSettings>().unwrap();
        assert_eq!(p.schedule_for("assetRefreshJob"), None, "`off` unschedules");
        assert_eq!(asset.rate_limit_per_second.map(|n| n.get()), Some(50));
        assert_eq!(
            asset.concurrency.get(),
            1024,
            "the bound itself is accepted"
        );
    }

    #[test]
    fn invalid_values_are_named() {
        for (var, value, key, needle) in [
            (
                "BATCH__ASSET__API_BASE_URL",
                "not a url",
                "asset.api_base_url",
                "not a url",
            ),
            (
                "BATCH__ASSET__CONCURRENCY",
                "5000",
                "asset.concurrency",
                "out of range 1..=1024",
            ),
            (
                "BATCH__ASSET__RATE_LIMIT_PER_SECOND",
                "1000000",
                "asset.rate_limit_per_second",
                "out of range 1..=100000",
            ),
            (
                "BATCH__ASSET__MAX_ATTEMPTS",
                "1000",
                "asset.max_attempts",
                "out of range 1..=100",
            ),
            (
                "BATCH__ASSET__TIMEOUT",
                "0s",
                "asset.timeout",
                "out of range 1ms..=1h",
            ),
            (
                "BATCH__SCHEDULE__ASSETREFRESHJOB",
                "daily",
                "schedule.assetRefreshJob",
                "daily",
            ),
        ] {
            let e = load(&[(var, value)]).unwrap_err();
            assert_eq!(e.key(), Some(key), "{var}={value}: {e}");
            let shown = e.to_string();
            assert!(shown.contains(var), "{shown}");
            assert!(shown.contains(needle), "{shown}");
        }
    }

    #[test]
    fn the_api_token_is_a_secret() {
        let p = load(&[("BATCH__ASSET__API_TOKEN", "token-7")]).unwrap();
        let shown = format!("{p:?}\n{}", p.to_redacted_toml());
        assert!(!shown.contains("token-7"), "{shown}");
        let asset = p.section::<AssetSettings>().unwrap();
        assert_eq!(asset.api_token.as_ref().unwrap().expose(), "token-7");
    }
}
