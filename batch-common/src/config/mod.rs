//! `BatchProperties`: every setting, layered and validated.
//!
//! Layers, later wins: the built-in defaults (the runtime's `config/defaults.toml` and each
//! registered module's section defaults and default schedules, compiled in) → an optional TOML
//! file (`--config PATH` or `BATCH_CONFIG`) → environment variables `BATCH__SECTION__KEY` (e.g.
//! `BATCH__DATABASE__URL`; note the double underscores). Unknown sections (neither the runtime's
//! nor a registered module's) and keys, and invalid or out-of-range values, are errors that name
//! the key and where it was set (the file, or the environment variable); nothing is
//! half-applied. Every number and duration has an allowed range, named in the error.
//!
//! Every secret setting ([`RUNTIME_SECRET_KEYS`], each module's
//! [`SettingsSection::SECRET_KEYS`]) may also be given as `<key>_file`, the path of a file holding
//! it (`BATCH__DATABASE__URL_FILE=/run/secrets/db_url`); `database.password` and
//! `redis.password` are put into their URLs. See `secret_files.rs`.
//!
//! The runtime's sections are fields ([`BatchProperties::batch`], …); a domain's section is read
//! typed with [`BatchProperties::section`].

mod check;
pub mod de;
mod runtime;
mod secret_files;
mod section;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;

pub(crate) use check::Origins;
use check::clean_message;
pub use check::{ConfigError, SectionCheck};
pub use runtime::{
    DatabaseSettings, NotifySettings, RedisSettings, RuntimeSettings, ServerSettings,
    execution_link,
};

pub use secret_files::MAX_SECRET_FILE;
pub(crate) use section::Sections;
pub use section::{MissingSection, SettingsSection, SettingsSpec};

/// The runtime's built-in defaults, also the reference of its keys.
pub const DEFAULTS_TOML: &str = include_str!("../../config/defaults.toml");

/// The environment variable that names a config file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "BATCH_CONFIG";

/// The top-level sections the runtime owns.
const RUNTIME_SECTIONS: [&str; 6] = ["database", "redis", "batch", "notify", "server", "schedule"];

/// The runtime's secret settings. Each may also be given as `<key>_file` (e.g.
/// `BATCH__DATABASE__URL_FILE`), a file holding the value; they never appear in logs, errors,
/// `Debug` output or [`BatchProperties::to_redacted_toml`]. `database.password` and
/// `redis.password` are put into the password of `database.url` and of `redis.url` and every
/// `redis.cluster_nodes` URL.
pub const RUNTIME_SECRET_KEYS: &[&str] = &[
    "database.url",
    "database.password",
    "redis.url",
    "redis.password",
    "notify.slack_webhook_url",
    "server.token",
];

/// Every setting of the launcher and the jobs.
#[derive(Debug, Clone)]
pub struct BatchProperties {
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[redis]`
    pub redis: RedisSettings,
    /// `[batch]`: the runtime.
    pub batch: RuntimeSettings,
    /// `[notify]`: notifications.
    pub notify: NotifySettings,
    /// `[server]`: `serve` mode's HTTP API.
    pub server: ServerSettings,
    /// `[schedule]`: job name → cron expression (seconds field first, evaluated in `batch.timezone`).
    /// Job names match case-insensitively, because environment variables are lowercased.
    pub schedule: BTreeMap<String, String>,
    /// The registered modules' sections.
    sections: Sections,
    /// Secrets read from files (`<key>_file`): dotted key → the file.
    secret_files: BTreeMap<String, PathBuf>,
}

impl BatchProperties {
    /// Merges the layers: the runtime's defaults, each `(module, section)`'s defaults and the
    /// default `schedules` (job, cron), `file`, then `env`; see
    /// [`load_from`](Self::load_from), which takes them from the modules.
    pub(crate) fn load_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sections: &[(&str, SettingsSpec)],
        schedules: &[(&str, &str)],
    ) -> Result<Self, ConfigError> {
        let specs = check_specs(sections)?;
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        for spec in &specs {
            builder = builder.add_source(File::from_str(spec.defaults, FileFormat::Toml));
        }
        let schedules = default_schedules_toml(schedules);
        builder = builder.add_source(File::from_str(&schedules, FileFormat::Toml));
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
        let mut origins = Origins {
            file: file_layer,
            env_vars: env.keys().cloned().collect(),
            secret_files: BTreeMap::new(),
        };
        let mut environment = Environment::with_prefix("BATCH")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("redis.cluster_nodes");
        for key in specs.iter().flat_map(|s| s.list_keys) {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment.source(Some(env.clone())));
        let merged = builder.build().map_err(|e| ConfigError::File {
            path: file.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })?;
        let mut top: BTreeMap<String, config::Value> =
            merged.try_deserialize().map_err(|e| ConfigError::File {
                path: file.map(Path::to_path_buf).unwrap_or_default(),
                message: e.to_string(),
            })?;
        let known: Vec<&str> = RUNTIME_SECTIONS
            .iter()
            .copied()
            .chain(specs.iter().map(|s| s.name))
            .collect();
        if let Some(unknown) = top.keys().find(|k| !known.contains(&k.as_str())) {
            let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(origins.invalid(
                unknown,
                format!(
                    "unknown field `{unknown}`, expected one of {}",
                    expected.join(", ")
                ),
            ));
        }
        let secret_keys: Vec<&str> = RUNTIME_SECRET_KEYS
            .iter()
            .chain(specs.iter().flat_map(|s| s.secret_keys))
            .copied()
            .collect();
        let resolved = secret_files::resolve(&mut top, &secret_keys, &origins, &env)?;
        origins.secret_files = resolved.read_from;
        let mut hidden = resolved.hidden;
        secret_files::apply_passwords(&mut top, &origins, &mut hidden)?;
        let mut props = load_sections(top, &origins, &specs).map_err(|e| e.scrub(&hidden))?;
        props.secret_files = origins
            .secret_files
            .iter()
            .map(|(key, f)| (key.clone(), f.path.clone()))
            .collect();
        props.schedule = normalize_schedule(&props.schedule);
        // `off` (or an empty value) unschedules a job, e.g. BATCH__SCHEDULE__MYJOB=off.
        props
            .schedule
            .retain(|_, cron| !(cron.trim().is_empty() || cron.trim().eq_ignore_ascii_case("off")));
        for (job, cron) in &props.schedule {
            if let Err(reason) = crate::schedule::CronSchedule::parse(cron) {
                return Err(origins.invalid(
                    &format!("schedule.{job}"),
                    format!(
                        "`{cron}` is not a cron expression: {reason} (expected `sec min hour day-of-month month day-of-week`, or `off`)"
                    ),
                ));
            }
        }
        Ok(props)
    }

    /// A registered module's settings section, typed.
    pub fn section<S: SettingsSection>(&self) -> Result<&S, MissingSection> {
        self.sections
            .0
            .get(S::NAME)
            .and_then(|s| s.as_any().downcast_ref::<S>())
            .ok_or(MissingSection(S::NAME))
    }

    /// [`section`](Self::section), to change (tests adjust settings this way).
    pub fn section_mut<S: SettingsSection>(&mut self) -> Result<&mut S, MissingSection> {
        self.sections
            .0
            .get_mut(S::NAME)
            .and_then(|s| s.as_any_mut().downcast_mut::<S>())
            .ok_or(MissingSection(S::NAME))
    }

    /// The cron expression configured for a job (case-insensitive job name).
    pub fn schedule_for(&self, job_name: &str) -> Option<&str> {
        self.schedule
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(job_name))
            .map(|(_, v)| v.as_str())
    }

    /// The file a secret setting (dotted, e.g. `database.url`) was read from, if it was given
    /// as `<key>_file`.
    pub fn secret_file(&self, key: &str) -> Option<&Path> {
        self.secret_files.get(key).map(PathBuf::as_path)
    }

    /// The effective configuration as TOML, secrets redacted (for `batch-launcher config`); a
    /// secret read from a file is followed by a comment naming the file
    /// (`url = "postgres://app:***@db/x"  # read from url_file = "/run/secrets/db"`).
    pub fn to_redacted_toml(&self) -> String {
        let json = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
        let mut sections = serde_json::Map::new();
        sections.insert(
            "database".into(),
            json(serde_json::to_value(&self.database)),
        );
        sections.insert("redis".into(), json(serde_json::to_value(&self.redis)));
        sections.insert("batch".into(), json(serde_json::to_value(&self.batch)));
        sections.insert("notify".into(), json(serde_json::to_value(&self.notify)));
        sections.insert("server".into(), json(serde_json::to_value(&self.server)));
        sections.insert(
            "schedule".into(),
            json(serde_json::to_value(&self.schedule)),
        );
        for (name, section) in &self.sections.0 {
            sections.insert((*name).to_owned(), section.to_json());
        }
        let mut out = String::new();
        for (section, body) in sections {
            out.push_str(&format!("[{section}]\n"));
            if let serde_json::Value::Object(keys) = body {
                for (k, v) in keys {
                    if !v.is_null() {
                        out.push_str(&format!("{} = {}", toml_key(&k), toml_value(&v)));
                        if let Some(path) = self.secret_files.get(&format!("{section}.{k}")) {
                            // Where the secret came from, not what it is.
                            let path = serde_json::Value::from(path.display().to_string());
                            out.push_str(&format!("  # read from {k}_file = {path}"));
                        }
                        if let Some(tls) = self.tls_comment(&section, &k) {
                            out.push_str(&format!("  # TLS: {tls}"));
                        }
                        out.push('\n');
                    }
                }
            }
            out.push('\n');
        }
        out
    }
}

impl BatchProperties {
    /// The TLS settings behind a connection key, in words, for [`to_redacted_toml`](Self::to_redacted_toml).
    fn tls_comment(&self, section: &str, key: &str) -> Option<String> {
        match (section, key) {
            ("database", "url") => self.database.url.tls_description(),
            ("redis", "url") if self.redis.cluster_nodes.is_empty() => {
                Some(self.redis.tls_description())
            }
            ("redis", "cluster_nodes") if !self.redis.cluster_nodes.is_empty() => {
                Some(self.redis.tls_description())
            }
            _ => None,
        }
    }
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        serde_json::Value::from(k).to_string()
    }
}

/// A value as TOML writes it: strings, numbers, booleans and arrays as in JSON, objects as
/// inline tables (`{ a = 1, b = 2 }`).
fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            if inner.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", inner.join(", "))
            }
        }
        serde_json::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// Deserializes and validates every section of the merged tree (secrets resolved).
fn load_sections(
    mut top: BTreeMap<String, config::Value>,
    origins: &Origins<'_>,
    specs: &[SettingsSpec],
) -> Result<BatchProperties, ConfigError> {
    let mut take = |name: &str| top.remove(name).unwrap_or_else(empty_table);
    let mut props = BatchProperties {
        database: runtime_section(take("database"), origins, "database")?,
        redis: runtime_section(take("redis"), origins, "redis")?,
        batch: runtime_section(take("batch"), origins, "batch")?,
        notify: runtime_section(take("notify"), origins, "notify")?,
        server: runtime_section(take("server"), origins, "server")?,
        schedule: runtime_section(take("schedule"), origins, "schedule")?,
        sections: Sections::default(),
        secret_files: BTreeMap::new(),
    };
    props.database.validate(&origins.section("database"))?;
    props.redis.validate(&origins.section("redis"))?;
    props.batch.validate(&origins.section("batch"))?;
    props.notify.validate(&origins.section("notify"))?;
    props.server.validate(&origins.section("server"))?;
    for spec in specs {
        let loaded = (spec.load)(take(spec.name), &origins.section(spec.name))?;
        props.sections.0.insert(spec.name, loaded);
    }
    Ok(props)
}

/// The sections' specs; a section name claimed twice, or one of the runtime's, and defaults
/// that set anything but the module's own table, are faults of the build.
fn check_specs(sections: &[(&str, SettingsSpec)]) -> Result<Vec<SettingsSpec>, ConfigError> {
    let mut specs: Vec<SettingsSpec> = Vec::new();
    for (module, spec) in sections {
        let fault = |message: String| ConfigError::Module {
            module: (*module).to_owned(),
            message,
        };
        if RUNTIME_SECTIONS.contains(&spec.name) || specs.iter().any(|s| s.name == spec.name) {
            return Err(fault(format!(
                "its settings section [{}] is already taken",
                spec.name
            )));
        }
        let defaults: BTreeMap<String, config::Value> = parse_toml(spec.defaults)
            .and_then(|c| c.try_deserialize().map_err(|e| e.to_string()))
            .map_err(|e| fault(format!("its defaults are not valid TOML: {e}")))?;
        if defaults.keys().any(|k| k != spec.name) {
            return Err(fault(format!(
                "its defaults may only set the [{}] table, not {:?}",
                spec.name,
                defaults.keys().collect::<Vec<_>>()
            )));
        }
        let own = format!("{}.", spec.name);
        if let Some(key) = spec.secret_keys.iter().find(|k| {
            k.strip_prefix(own.as_str())
                .is_none_or(|key| key.is_empty() || key.contains('.'))
        }) {
            return Err(fault(format!(
                "its secret key `{key}` is not a key of its section (write `{}.<key>`)",
                spec.name
            )));
        }
        specs.push(*spec);
    }
    Ok(specs)
}

/// The default schedules as a `[schedule]` TOML layer.
fn default_schedules_toml(schedules: &[(&str, &str)]) -> String {
    let mut out = String::from("[schedule]\n");
    for (job, cron) in schedules {
        out.push_str(&format!("\"{job}\" = \"{cron}\"\n"));
    }
    out
}

fn empty_table() -> config::Value {
    config::Value::new(None, config::ValueKind::Table(config::Map::new()))
}

fn runtime_section<T: DeserializeOwned>(
    value: config::Value,
    origins: &Origins<'_>,
    name: &str,
) -> Result<T, ConfigError> {
    deserialize_section(value, &origins.section(name))
}

/// Deserializes one section, an error naming the key (`section.key`) and where it was set.
pub(crate) fn deserialize_section<T: DeserializeOwned>(
    value: config::Value,
    check: &SectionCheck<'_>,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = clean_message(&e.into_inner().to_string());
        if path == "." || path.is_empty() {
            check.invalid_section(message)
        } else {
            check.invalid(&path, message)
        }
    })
}

/// Environment variables arrive lowercased (`BATCH__SCHEDULE__DAILYREPORTJOB`), files keep
/// case (`dailyReportJob`). Keys equal but for case are one job: the all-lowercase (env) one
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
