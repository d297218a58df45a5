//! Domain settings sections: a domain's typed `[section]`, its defaults and validation, loaded
//! by [`BatchProperties`](super::BatchProperties) and read back typed.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::check::{ConfigError, SectionCheck};

/// A typed settings section of a domain: `[NAME]` in the config file, `BATCH__NAME__KEY` in the
/// environment. Derive `Deserialize` with `#[serde(deny_unknown_fields)]` so a misspelt key is an
/// error naming it.
pub trait SettingsSection:
    Serialize + DeserializeOwned + Debug + Clone + Send + Sync + 'static
{
    /// The section's name (a TOML table at the top level).
    const NAME: &'static str;

    /// The section's defaults, as TOML: a `[NAME]` table holding every key the section needs
    /// (typically `include_str!("../config/defaults.toml")`).
    const DEFAULTS: &'static str;

    /// Keys (`NAME.key`) whose environment value is a comma-separated list.
    const LIST_KEYS: &'static [&'static str] = &[];

    /// Keys (`NAME.key`) holding secrets (tokens, passwords, URLs with credentials). Each may
    /// also be given as `key_file` (`BATCH__NAME__KEY_FILE`): the path of a file holding the
    /// value, as container platforms hand secrets over (one trailing newline trimmed). Declare
    /// the field itself as a [`Secret`](crate::Secret) (or another type that never prints it).
    const SECRET_KEYS: &'static [&'static str] = &[];

    /// Ranges and cross-field rules; errors come from `check`, which names the key and where it
    /// was set.
    fn validate(&self, check: &SectionCheck<'_>) -> Result<(), ConfigError> {
        let _ = check;
        Ok(())
    }
}

/// Loads one section from the merged configuration: (value, its section checks) → the section.
type LoadFn =
    for<'a> fn(config::Value, &SectionCheck<'a>) -> Result<Box<dyn LoadedSection>, ConfigError>;

/// A [`SettingsSection`] as the configuration loader sees it (no type parameter).
#[derive(Clone, Copy)]
pub struct SettingsSpec {
    /// The section's name.
    pub name: &'static str,
    /// Its defaults (TOML with a `[name]` table).
    pub defaults: &'static str,
    /// Keys whose environment value is a comma-separated list.
    pub list_keys: &'static [&'static str],
    /// Keys holding secrets, which may also be given as `<key>_file`.
    pub secret_keys: &'static [&'static str],
    pub(crate) load: LoadFn,
}

impl Debug for SettingsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettingsSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SettingsSpec {
    /// The spec of section `S`.
    pub fn of<S: SettingsSection>() -> Self {
        SettingsSpec {
            name: S::NAME,
            defaults: S::DEFAULTS,
            list_keys: S::LIST_KEYS,
            secret_keys: S::SECRET_KEYS,
            load: load_section::<S>,
        }
    }
}

fn load_section<S: SettingsSection>(
    value: config::Value,
    check: &SectionCheck<'_>,
) -> Result<Box<dyn LoadedSection>, ConfigError> {
    let section: S = super::deserialize_section(value, check)?;
    section.validate(check)?;
    Ok(Box::new(section))
}

/// A loaded section, type-erased: [`BatchProperties::section`] gives it back typed.
pub(crate) trait LoadedSection: Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn to_json(&self) -> serde_json::Value;
    fn clone_box(&self) -> Box<dyn LoadedSection>;
}

impl<S: SettingsSection> LoadedSection for S {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn clone_box(&self) -> Box<dyn LoadedSection> {
        Box::new(self.clone())
    }
}

/// The domains' sections, by name.
#[derive(Debug, Default)]
pub(crate) struct Sections(pub(crate) BTreeMap<&'static str, Box<dyn LoadedSection>>);

impl Clone for Sections {
    fn clone(&self) -> Self {
        Sections(self.0.iter().map(|(k, v)| (*k, v.clone_box())).collect())
    }
}

/// A section asked for was not loaded: its module is not among those the configuration was
/// loaded with.
#[derive(Debug, thiserror::Error)]
#[error("settings section [{0}] is not loaded: its module is not registered")]
pub struct MissingSection(pub &'static str);
