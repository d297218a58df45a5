//! `[example]`: the settings of monthlyStatementJob (defaults in `config/defaults.toml`).

use batch_common::config::{ConfigError, SectionCheck, SettingsSection};
use serde::{Deserialize, Serialize};

/// `[example]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleSettings {
    /// The fee written on every statement, in the smallest currency unit (0..=1000000).
    pub monthly_fee: i64,
    /// Members younger than this many days at the month's end are `NEW` (1..=3650).
    pub new_member_days: u32,
}

impl SettingsSection for ExampleSettings {
    const NAME: &'static str = "example";
    const DEFAULTS: &'static str = include_str!("../config/defaults.toml");

    fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.in_range("monthly_fee", self.monthly_fee, 0..=1_000_000)?;
        c.in_range("new_member_days", self.new_member_days, 1..=3650)
    }
}
