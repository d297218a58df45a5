use std::io::Write;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::module::{JobModule, JobRegistration};
use crate::secret::{RedactedUrl, Secret};

/// A domain's section, as a domain crate would declare it (the runtime's own tests know no
/// domain).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ExampleSettings {
    #[serde(with = "de::duration")]
    ttl: Duration,
    prefix: String,
    #[serde(deserialize_with = "de::http_url")]
    api_base_url: RedactedUrl,
    concurrency: NonZeroUsize,
    #[serde(default)]
    rate_limit_per_second: Option<NonZeroU32>,
    #[serde(default)]
    api_token: Option<Secret<String>>,
    #[serde(default)]
    tags: Vec<String>,
}

impl SettingsSection for ExampleSettings {
    const NAME: &'static str = "example";
    const DEFAULTS: &'static str = "[example]\nttl = \"48h\"\nprefix = \"example:\"\n\
        api_base_url = \"http://127.0.0.1:8089\"\nconcurrency = 16\n";
    const LIST_KEYS: &'static [&'static str] = &["example.tags"];
    const SECRET_KEYS: &'static [&'static str] = &["example.api_token"];

    fn validate(&self, c: &SectionCheck<'_>) -> Result<(), ConfigError> {
        c.duration_in_range(
            "ttl",
            self.ttl,
            Duration::from_secs(1)..=Duration::from_secs(30 * 86400),
        )?;
        c.in_range("concurrency", self.concurrency.get(), 1..=1024)?;
        if let Some(n) = self.rate_limit_per_second {
            c.in_range("rate_limit_per_second", n.get(), 1..=100_000)?;
        }
        if self.prefix.is_empty() {
            return Err(c.invalid("prefix", "must not be empty"));
        }
        Ok(())
    }
}

struct ExampleModule;

impl JobModule for ExampleModule {
    fn name(&self) -> &'static str {
        "example"
    }
    fn jobs(&self) -> &'static [JobRegistration] {
        &[]
    }
    fn settings(&self) -> Option<SettingsSpec> {
        Some(SettingsSpec::of::<ExampleSettings>())
    }
    fn default_schedules(&self) -> &'static [(&'static str, &'static str)] {
        &[("exampleJob", "0 0 1 * * *"), ("otherJob", "0 0 4 * * *")]
    }
}

const MODULES: &[&dyn JobModule] = &[&ExampleModule];

fn load_from(
    file: Option<&Path>,
    env: Vec<(String, String)>,
) -> Result<BatchProperties, ConfigError> {
    BatchProperties::load_from(file, env, MODULES)
}

fn example(p: &BatchProperties) -> &ExampleSettings {
    p.section::<ExampleSettings>().unwrap()
}

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
    load_from(f.as_ref().map(|f| f.path()), env(vars)).unwrap_err()
}

#[test]
fn defaults_are_complete_and_valid() {
    let p = load_from(None, env(&[])).unwrap();
    assert_eq!(p.database.url.backend(), core_domain::Backend::Sqlite);
    assert_eq!(p.batch.timezone, chrono_tz::Asia::Seoul);
    assert_eq!(p.batch.chunk_size.get(), 1000);
    assert_eq!(p.batch.step_retry_attempts, 3);
    assert_eq!(p.batch.step_retry_interval, Duration::from_secs(300));
    assert_eq!(example(&p).ttl, Duration::from_secs(48 * 3600));
    assert_eq!(example(&p).prefix, "example:");
    assert_eq!(example(&p).concurrency.get(), 16);
    assert!(example(&p).rate_limit_per_second.is_none());
    assert!(p.notify.slack_webhook_url.is_none());
    assert_eq!(p.server.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(p.schedule_for("exampleJob"), Some("0 0 1 * * *"));
    assert_eq!(p.schedule_for("OTHERJOB"), Some("0 0 4 * * *"));
}

#[test]
fn file_then_env_override_defaults() {
    let f = file(
        "[batch]\nchunk_size = 500\ntimezone = \"UTC\"\n[database]\nurl = \"postgres://u:pw@db:5432/x\"\n\
         [schedule]\nexampleJob = \"0 30 2 * * *\"\n",
    );
    let p = load_from(
        Some(f.path()),
        env(&[
            ("BATCH__BATCH__CHUNK_SIZE", "250"),
            (
                "BATCH__REDIS__CLUSTER_NODES",
                "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
            ),
            ("BATCH__SCHEDULE__EXAMPLEJOB", "0 0 3 * * *"),
            ("BATCH__SCHEDULE__OTHERJOB", "off"),
            ("BATCH__SERVER__MISSED_TICKS", "skip"),
            ("BATCH__EXAMPLE__RATE_LIMIT_PER_SECOND", "50"),
            ("BATCH__EXAMPLE__TAGS", "a,b,c"),
            ("BATCH__SERVER__TOKEN", "12345"),
            ("UNRELATED", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(p.batch.chunk_size.get(), 250, "env wins over file");
    assert_eq!(p.batch.timezone, chrono_tz::UTC, "file wins over defaults");
    assert_eq!(p.database.url.backend(), core_domain::Backend::Postgres);
    assert_eq!(p.redis.cluster_nodes.len(), 2);
    assert_eq!(p.schedule_for("exampleJob"), Some("0 0 3 * * *"));
    assert_eq!(p.schedule_for("otherJob"), None, "`off` unschedules");
    assert_eq!(p.schedule.len(), 1, "{:?}", p.schedule);
    assert_eq!(p.server.missed_ticks, crate::schedule::MissedTicks::Skip);
    assert_eq!(example(&p).rate_limit_per_second.map(|n| n.get()), Some(50));
    assert_eq!(example(&p).tags, ["a", "b", "c"], "a module's list key");
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
            vec![("BATCH__EXAMPLE__API_BASE_URL", "not a url")],
            "example.api_base_url",
            "not a url",
        ),
        (
            vec![("BATCH__EXAMPLE__PREFIX", "")],
            "example.prefix",
            "must not be empty",
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
            vec![("BATCH__SCHEDULE__OTHERJOB", "daily")],
            "schedule.otherJob",
            "daily",
        ),
        (
            vec![("BATCH__SCHEDULE__OTHERJOB", "0 0 25 * * *")],
            "schedule.otherJob",
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
        ("BATCH__EXAMPLE__TTL", "500ms", "example.ttl", "1s..=30days"),
        (
            "BATCH__EXAMPLE__CONCURRENCY",
            "5000",
            "example.concurrency",
            "1..=1024",
        ),
        (
            "BATCH__EXAMPLE__RATE_LIMIT_PER_SECOND",
            "1000000",
            "example.rate_limit_per_second",
            "1..=100000",
        ),
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
    let p = load_from(
        None,
        env(&[
            ("BATCH__BATCH__CHUNK_SIZE", "100000"),
            ("BATCH__EXAMPLE__CONCURRENCY", "1024"),
            ("BATCH__DATABASE__MAX_CONNECTIONS", "1000"),
        ]),
    )
    .unwrap();
    assert_eq!(p.batch.chunk_size.get(), 100_000);
}

#[test]
fn chunk_retry_defaults_are_an_outage_budget() {
    let p = load_from(None, env(&[])).unwrap();
    assert_eq!(p.batch.chunk_retry_attempts.get(), 20);
    assert_eq!(p.batch.chunk_retry_max_backoff, Duration::from_secs(5));
    assert_eq!(p.batch.chunk_retry_max_elapsed, Duration::from_secs(60));
    let p = load_from(
        None,
        env(&[("BATCH__BATCH__CHUNK_RETRY_MAX_ELAPSED", "90s")]),
    )
    .unwrap();
    assert_eq!(p.batch.chunk_retry_max_elapsed, Duration::from_secs(90));
}

#[test]
fn errors_about_file_keys_name_the_file_not_an_env_var() {
    let f = file("[batch]\nchunk_sise = 5\n");
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
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
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
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
    let e = load_from(
        Some(f.path()),
        env(&[("BATCH__BATCH__CHUNK_SIZE", "200000")]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("(env BATCH__BATCH__CHUNK_SIZE)"),
        "{e}"
    );
    load_from(Some(f.path()), env(&[("BATCH__BATCH__CHUNK_SIZE", "20")])).unwrap();

    // Unknown keys from the environment keep naming the variable, even with a file.
    let f = file("[batch]\nchunk_size = 10\n");
    let e = load_from(Some(f.path()), env(&[("BATCH__BATCH__CHUNK_SISE", "1")])).unwrap_err();
    assert!(e.to_string().contains("BATCH__BATCH__CHUNK_SISE"), "{e}");
    assert!(!e.to_string().contains("config file"), "{e}");
}

#[test]
fn malformed_file_names_the_file() {
    let f = file("[batch\nchunk_size = ");
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
    assert!(matches!(e, ConfigError::File { .. }), "{e}");
    assert!(
        e.to_string().contains(&f.path().display().to_string()),
        "{e}"
    );

    let e = load_from(Some(Path::new("/nonexistent/batch.toml")), env(&[])).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/batch.toml"), "{e}");
}

#[test]
fn secrets_are_redacted_everywhere() {
    let p = load_from(
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

#[test]
fn sections_are_the_runtime_s_and_the_registered_modules() {
    // Without the module, its section is unknown, like a misspelt one.
    let e =
        BatchProperties::load_from(None, env(&[("BATCH__EXAMPLE__TTL", "1h")]), &[]).unwrap_err();
    assert_eq!(e.key(), Some("example"), "{e}");
    assert!(e.to_string().contains("unknown field `example`"), "{e}");
    // With it, the section loads typed; a key it does not have is named with its variable.
    let p = load_from(None, env(&[("BATCH__EXAMPLE__TTL", "1h")])).unwrap();
    assert_eq!(example(&p).ttl, Duration::from_secs(3600));
    let e = err(None, &[("BATCH__EXAMPLE__TTLL", "1h")]);
    assert_eq!(e.key(), Some("example.ttll"), "{e}");
    assert!(e.to_string().contains("BATCH__EXAMPLE__TTLL"), "{e}");
    let f = file("[example]\nprefx = \"x\"\n");
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
    assert!(e.to_string().contains("unknown key `example.prefx`"), "{e}");
    // A section asked for but not loaded says so.
    let p = BatchProperties::load_from(None, env(&[]), &[]).unwrap();
    let missing = p.section::<ExampleSettings>().unwrap_err();
    assert!(missing.to_string().contains("[example]"), "{missing}");
    // Two modules claiming one section, or a module claiming the runtime's, is a build fault.
    let e =
        BatchProperties::load_from(None, env(&[]), &[&ExampleModule, &ExampleModule]).unwrap_err();
    assert!(matches!(e, ConfigError::Module { .. }), "{e}");
    assert!(e.to_string().contains("[example] is already taken"), "{e}");
}

#[test]
fn module_secrets_are_redacted_and_printed_with_the_rest() {
    let p = load_from(None, env(&[("BATCH__EXAMPLE__API_TOKEN", "token-6")])).unwrap();
    let shown = format!("{p:?}\n{}", p.to_redacted_toml());
    assert!(!shown.contains("token-6"), "{shown}");
    assert!(shown.contains("[example]"), "{shown}");
    assert!(shown.contains("exampleJob = \"0 0 1 * * *\""), "{shown}");
    assert_eq!(example(&p).api_token.as_ref().unwrap().expose(), "token-6");
}

/// A secret file holding `content`.
fn secret(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".secret")
        .tempfile()
        .unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

fn path_of(f: &tempfile::NamedTempFile) -> String {
    f.path().display().to_string()
}

#[test]
fn secret_files_lose_one_trailing_newline_and_nothing_else() {
    for (content, token) in [
        ("token-a\n", "token-a"),
        ("token-b\r\n", "token-b"),
        ("token-c", "token-c"),
        ("token-d\n\n", "token-d\n"),
        (" token e \n", " token e "),
        ("0123\n", "0123"),
    ] {
        let f = secret(content);
        let p = load_from(None, env(&[("BATCH__SERVER__TOKEN_FILE", &path_of(&f))])).unwrap();
        assert_eq!(
            p.server.token.as_ref().unwrap().expose(),
            token,
            "{content:?}"
        );
        assert_eq!(p.secret_file("server.token"), Some(f.path()));
    }
    // A secret written in a variable is kept as written too (not read as the number 123).
    let p = load_from(None, env(&[("BATCH__SERVER__TOKEN", "0123")])).unwrap();
    assert_eq!(p.server.token.as_ref().unwrap().expose(), "0123");
    assert_eq!(p.secret_file("server.token"), None);
}

#[test]
fn every_secret_setting_takes_a_file() {
    let db = secret("postgres://app:db-file-1@db:5432/points\n");
    let redis = secret("redis://:redis-file-2@cache:6379\n");
    let hook = secret("https://hooks.slack.test/services/T0/B0/webhook-file-3\n");
    let token = secret("token-file-4\n");
    let api = secret("api-file-5\n");
    let p = load_from(
        None,
        env(&[
            ("BATCH__DATABASE__URL_FILE", &path_of(&db)),
            ("BATCH__REDIS__URL_FILE", &path_of(&redis)),
            ("BATCH__NOTIFY__SLACK_WEBHOOK_URL_FILE", &path_of(&hook)),
            ("BATCH__SERVER__TOKEN_FILE", &path_of(&token)),
            ("BATCH__EXAMPLE__API_TOKEN_FILE", &path_of(&api)),
        ]),
    )
    .unwrap();
    assert_eq!(
        p.database.url.expose_secret(),
        "postgres://app:db-file-1@db:5432/points"
    );
    assert_eq!(p.redis.url.expose().password(), Some("redis-file-2"));
    assert_eq!(
        p.notify.slack_webhook_url.as_ref().unwrap().expose().path(),
        "/services/T0/B0/webhook-file-3"
    );
    assert_eq!(p.server.token.as_ref().unwrap().expose(), "token-file-4");
    assert_eq!(
        example(&p).api_token.as_ref().unwrap().expose(),
        "api-file-5",
        "a module's secret, declared in SECRET_KEYS"
    );
    // `config` says where each came from, never what it is.
    let shown = format!("{p:?}\n{}", p.to_redacted_toml());
    for leaked in [
        "db-file-1",
        "redis-file-2",
        "webhook-file-3",
        "token-file-4",
        "api-file-5",
    ] {
        assert!(!shown.contains(leaked), "{leaked} leaked:\n{shown}");
    }
    let toml = p.to_redacted_toml();
    assert!(
        toml.contains(&format!(
            "url = \"postgres://app:***@db:5432/points\"  # read from url_file = \"{}\"",
            path_of(&db)
        )),
        "{toml}"
    );
    assert!(
        toml.contains(&format!(
            "api_token = \"[REDACTED]\"  # read from api_token_file = \"{}\"",
            path_of(&api)
        )),
        "{toml}"
    );

    // The same from the config file.
    let f = file(&format!(
        "[server]\ntoken_file = \"{}\"\n[example]\napi_token_file = \"{}\"\n",
        path_of(&token),
        path_of(&api)
    ));
    let p = load_from(Some(f.path()), env(&[])).unwrap();
    assert_eq!(p.server.token.as_ref().unwrap().expose(), "token-file-4");
    assert_eq!(
        example(&p).api_token.as_ref().unwrap().expose(),
        "api-file-5"
    );
}

#[test]
fn unreadable_or_empty_secret_files_are_named_never_shown() {
    // Missing, from the environment: the setting, the variable and the path.
    let e = err(
        None,
        &[("BATCH__DATABASE__URL_FILE", "/nonexistent/run/secrets/db")],
    );
    assert_eq!(e.key(), Some("database.url_file"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(
            "invalid configuration: `database.url_file` (env BATCH__DATABASE__URL_FILE): \
             cannot read `/nonexistent/run/secrets/db`: "
        ),
        "{shown}"
    );
    // Missing, from the config file: the file and the key.
    let f = file("[server]\ntoken_file = \"/nonexistent/token\"\n");
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
    assert_eq!(e.key(), Some("server.token_file"), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "config file {}: `server.token_file`: cannot read `/nonexistent/token`",
            f.path().display()
        )),
        "{e}"
    );
    // Empty (or only a newline): an error, not an empty secret.
    for content in ["", "\n", "\r\n"] {
        let s = secret(content);
        let e = err(None, &[("BATCH__EXAMPLE__API_TOKEN_FILE", &path_of(&s))]);
        assert_eq!(e.key(), Some("example.api_token_file"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("`{}` is empty", path_of(&s))),
            "{e}"
        );
    }
    // A directory, and a file that is not text.
    let dir = tempfile::tempdir().unwrap();
    let e = err(
        None,
        &[(
            "BATCH__SERVER__TOKEN_FILE",
            &dir.path().display().to_string(),
        )],
    );
    assert_eq!(e.key(), Some("server.token_file"), "{e}");
    let s = secret("");
    std::fs::write(s.path(), b"bin-secret-\xff\xfe\n").unwrap();
    let e = err(None, &[("BATCH__SERVER__TOKEN_FILE", &path_of(&s))]);
    assert!(e.to_string().contains("is not UTF-8 text"), "{e}");
    assert!(!e.to_string().contains("bin-secret"), "{e}");
    // Larger than a secret.
    std::fs::write(s.path(), "x".repeat(MAX_SECRET_FILE as usize + 1)).unwrap();
    let e = err(None, &[("BATCH__SERVER__TOKEN_FILE", &path_of(&s))]);
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
}

#[test]
fn a_secret_and_its_file_are_one_or_the_other() {
    let s = secret("sqlite://from-file.db\n");
    // Both in the environment.
    let e = err(
        None,
        &[
            ("BATCH__DATABASE__URL", "sqlite://x.db"),
            ("BATCH__DATABASE__URL_FILE", &path_of(&s)),
        ],
    );
    assert_eq!(e.key(), Some("database.url_file"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.contains("BATCH__DATABASE__URL_FILE")
            && shown.contains("`database.url` is set too (env BATCH__DATABASE__URL)"),
        "{shown}"
    );
    // The value in the config file, its file in the environment.
    let f = file("[database]\nurl = \"sqlite://x.db\"\n");
    let e = load_from(
        Some(f.path()),
        env(&[("BATCH__DATABASE__URL_FILE", &path_of(&s))]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "`database.url` is set too (config file {})",
            f.path().display()
        )),
        "{e}"
    );
    // Both in the file.
    let f = file(&format!(
        "[example]\napi_token = \"t\"\napi_token_file = \"{}\"\n",
        path_of(&s)
    ));
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
    assert_eq!(e.key(), Some("example.api_token_file"), "{e}");
    assert!(
        e.to_string().contains("`example.api_token` is set too"),
        "{e}"
    );
    // The built-in default (database.url has one) does not count.
    let p = load_from(None, env(&[("BATCH__DATABASE__URL_FILE", &path_of(&s))])).unwrap();
    assert_eq!(p.database.url.expose_secret(), "sqlite://from-file.db");
}

#[test]
fn a_file_for_a_setting_that_is_not_secret_is_an_unknown_key() {
    let s = secret("500\n");
    for (var, key) in [
        ("BATCH__BATCH__CHUNK_SIZE_FILE", "batch.chunk_size_file"),
        ("BATCH__EXAMPLE__PREFIX_FILE", "example.prefix_file"),
        (
            "BATCH__DATABASE__MAX_CONNECTIONS_FILE",
            "database.max_connections_file",
        ),
    ] {
        let e = err(None, &[(var, &path_of(&s))]);
        assert_eq!(e.key(), Some(key), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
    // A module's secret key must be one of its own section's.
    let spec = SettingsSpec {
        secret_keys: &["database.url"],
        ..SettingsSpec::of::<ExampleSettings>()
    };
    let e = BatchProperties::load_layers(None, env(&[]), &[("example", spec)], &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Module { .. }), "{e}");
    assert!(e.to_string().contains("`database.url`"), "{e}");
}

#[test]
fn a_bad_value_in_a_secret_file_is_the_same_error_without_the_secret() {
    // The same check as a value given directly; the error also names the file.
    for (content, needle) in [
        ("postgres://app:file-secret-9@db:notaport/x", "invalid port"),
        ("oracle://app:file-secret-9@db/x", "oracle"),
        // A password written where the URL goes.
        ("file-secret-9", "expected <scheme>://"),
    ] {
        let direct = err(None, &[("BATCH__DATABASE__URL", content)]);
        let s = secret(&format!("{content}\n"));
        let e = err(None, &[("BATCH__DATABASE__URL_FILE", &path_of(&s))]);
        assert_eq!(e.key(), Some("database.url"), "{e}");
        let shown = e.to_string();
        assert!(!shown.contains("file-secret-9"), "{content}: {shown}");
        assert!(shown.contains(needle), "{content}: {shown}");
        assert!(
            shown.starts_with(&format!(
                "invalid configuration: `database.url` (env BATCH__DATABASE__URL_FILE): read from {}: ",
                path_of(&s)
            )),
            "{shown}"
        );
        if !direct.to_string().contains("file-secret-9") {
            let (ConfigError::Invalid { message: a, .. }, ConfigError::Invalid { message: b, .. }) =
                (&direct, &e)
            else {
                panic!("{direct} / {e}");
            };
            assert!(b.ends_with(a.as_str()), "{a} / {b}");
        }
    }
    // Named with the config file's key when the file named it.
    let s = secret("ftp://hook-secret-10@x\n");
    let f = file(&format!(
        "[notify]\nslack_webhook_url_file = \"{}\"\n",
        path_of(&s)
    ));
    let e = load_from(Some(f.path()), env(&[])).unwrap_err();
    assert_eq!(e.key(), Some("notify.slack_webhook_url"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.contains(&format!(
            "`notify.slack_webhook_url` (read from `notify.slack_webhook_url_file` = {})",
            path_of(&s)
        )),
        "{shown}"
    );
    assert!(!shown.contains("hook-secret-10"), "{shown}");
}

/// `%XX` → byte, for checking what a driver reads back.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn a_database_password_goes_into_the_url_encoded() {
    let pw = secret("p@ss:/w%rd\n");
    let f = file("[database]\nurl = \"postgres://app@db:5432/points\"\n");
    let p = load_from(
        Some(f.path()),
        env(&[("BATCH__DATABASE__PASSWORD_FILE", &path_of(&pw))]),
    )
    .unwrap();
    assert_eq!(
        p.database.url.expose_secret(),
        "postgres://app:p%40ss%3A%2Fw%25rd@db:5432/points"
    );
    let parsed = url::Url::parse(p.database.url.expose_secret()).unwrap();
    assert_eq!(parsed.username(), "app");
    assert_eq!(parsed.host_str(), Some("db"));
    assert_eq!(percent_decode(parsed.password().unwrap()), "p@ss:/w%rd");
    assert_eq!(p.database.password.as_ref().unwrap().expose(), "p@ss:/w%rd");
    let toml = p.to_redacted_toml();
    assert!(
        toml.contains(
            "url = \"postgres://app:***@db:5432/points\"  # TLS: preferred (used if the server offers it; certificate not verified)\n"
        ),
        "{toml}"
    );
    assert!(
        toml.contains(&format!(
            "password = \"[REDACTED]\"  # read from password_file = \"{}\"",
            path_of(&pw)
        )),
        "{toml}"
    );
    let shown = format!("{p:?}\n{toml}");
    assert!(
        !shown.contains("p@ss") && !shown.contains("p%40ss"),
        "{shown}"
    );

    // Directly, on MySQL/MariaDB, without a user name.
    let p = load_from(
        None,
        env(&[
            ("BATCH__DATABASE__URL", "mariadb://db:3306/batch"),
            ("BATCH__DATABASE__PASSWORD", "é 1"),
        ]),
    )
    .unwrap();
    assert_eq!(
        p.database.url.expose_secret(),
        "mysql://:%C3%A9%201@db:3306/batch"
    );

    // Not for SQLite; not twice.
    let e = err(None, &[("BATCH__DATABASE__PASSWORD", "pw-secret-11")]);
    assert_eq!(e.key(), Some("database.password"), "{e}");
    assert!(e.to_string().contains("sqlite://"), "{e}");
    let e = err(
        None,
        &[
            ("BATCH__DATABASE__URL", "postgres://app:other@db/x"),
            ("BATCH__DATABASE__PASSWORD_FILE", &path_of(&pw)),
        ],
    );
    assert_eq!(e.key(), Some("database.password"), "{e}");
    assert!(
        e.to_string()
            .contains("(env BATCH__DATABASE__PASSWORD_FILE)")
            && e.to_string().contains("already holds a password"),
        "{e}"
    );
    for e in [
        e.to_string(),
        err(None, &[("BATCH__DATABASE__PASSWORD", "pw-secret-11")]).to_string(),
    ] {
        assert!(!e.contains("pw-secret-11") && !e.contains("p@ss"), "{e}");
    }
    // A URL that is bad with its password in: the URL's own error, the password hidden.
    let e = err(
        None,
        &[
            ("BATCH__DATABASE__URL", "postgres://app@db:notaport/x"),
            ("BATCH__DATABASE__PASSWORD", "pw-secret-12"),
        ],
    );
    assert_eq!(e.key(), Some("database.url"), "{e}");
    assert!(!e.to_string().contains("pw-secret-12"), "{e}");
}

#[test]
fn a_redis_password_goes_into_every_node_url() {
    let pw = secret("auth/token+1\n");
    let p = load_from(
        None,
        env(&[
            (
                "BATCH__REDIS__CLUSTER_NODES",
                "redis://127.0.0.1:7000,redis://app@127.0.0.1:7001",
            ),
            ("BATCH__REDIS__PASSWORD_FILE", &path_of(&pw)),
        ]),
    )
    .unwrap();
    let nodes: Vec<&url::Url> = p.redis.cluster_nodes.iter().map(|u| u.expose()).collect();
    assert_eq!(nodes.len(), 2);
    for node in &nodes {
        assert_eq!(percent_decode(node.password().unwrap()), "auth/token+1");
    }
    assert_eq!(nodes[1].username(), "app");
    assert_eq!(
        percent_decode(p.redis.url.expose().password().unwrap()),
        "auth/token+1"
    );
    let shown = format!("{p:?}\n{}", p.to_redacted_toml());
    assert!(
        !shown.contains("auth/token") && !shown.contains("auth%2Ftoken"),
        "{shown}"
    );

    // A node that has a password already is named.
    let e = err(
        None,
        &[
            (
                "BATCH__REDIS__CLUSTER_NODES",
                "redis://127.0.0.1:7000,redis://:x@127.0.0.1:7001",
            ),
            ("BATCH__REDIS__PASSWORD", "pw"),
        ],
    );
    assert_eq!(e.key(), Some("redis.password"), "{e}");
    assert!(e.to_string().contains("`redis.cluster_nodes[1]`"), "{e}");
}

#[test]
fn with_password_changes_the_password_only() {
    use super::secret_files::{AlreadyHasPassword, with_password};
    assert_eq!(
        with_password(" rediss://app@h:1/0?x=1#insecure ", "p w"),
        Ok(Some("rediss://app:p%20w@h:1/0?x=1#insecure".to_owned()))
    );
    assert_eq!(
        with_password("postgres://db?host=/run/pg", "a~b-c.d_e"),
        Ok(Some("postgres://:a~b-c.d_e@db?host=/run/pg".to_owned()))
    );
    assert_eq!(with_password("redis://:x@h", "p"), Err(AlreadyHasPassword));
    assert_eq!(with_password("not a url", "p"), Ok(None));
}
