//! The Jenkins pipelines. Nothing here lists jobs, parameters, credentials or schedules: for
//! every job of `Registry::default()` the pipeline `batch-launcher jenkinsfile <JOB>` generates
//! (with the built-in defaults) is checked against what the launcher knows about the job — its
//! descriptor's parameters, its module's deployment settings, its `[schedule]` default and
//! `batch.timezone` — and its `jenkins/run-job.sh` call runs through the real binary with
//! `--validate-only` for representative values of every parameter (derived from the parameter's
//! kind), while broken variants are refused. The parallel variant (`jenkinsfile <JOB> --workers
//! N`) of every job gets the same checks, plus its worker stages', and each worker's call runs
//! through the script and the binary too. The checked-in pipelines (`Jenkinsfile`,
//! `jenkins/*.Jenkinsfile`, `jenkins/*.parallel.Jenkinsfile`) must be the generator's output
//! byte for byte; one of them is named here, because it must exist: the parallel pipeline of
//! pointBalanceSyncJob with 4 workers ([`CHECKED_IN_PARALLEL`]). jenkins/README.md describes
//! what is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use batch_common::config::BatchProperties;
use batch_common::job::{JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use batch_launcher::jenkins;
use batch_launcher::modules::Registry;

use crate::{launcher, text};

/// The result file the launcher call writes and the pipeline archives.
const RESULT_FILE: &str = "result.json";

/// The parallel pipeline that must be checked in: `jenkins/<JOB>.parallel.Jenkinsfile`, the
/// output of `jenkinsfile <JOB> --workers <N>` with the built-in defaults.
const CHECKED_IN_PARALLEL: (&str, u32) = ("pointBalanceSyncJob", 4);

/// The worker stages of the parallel pipelines generated for every job here.
const TEST_WORKERS: u32 = 3;

/// Values tried against a [`ParamKind::Custom`] validator to find one it accepts (and one it
/// refuses). A validator that accepts none of them is only run with an empty value.
const CUSTOM_CANDIDATES: &[&str] = &[
    "x",
    "KRW",
    "USD",
    "default",
    "main",
    "a",
    "A",
    "abc",
    "1",
    "0",
    "42",
    "true",
    "2026-11-20",
    "2026-10",
    "us-east-1",
    "!",
    "not a valid value!",
    "-1",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The built-in defaults as the launcher merges them: the runtime's and every module's.
fn defaults(registry: &Registry) -> BatchProperties {
    BatchProperties::load_from(None, Vec::new(), registry.modules())
        .expect("the built-in defaults load")
}

/// One registered job and the pipeline generated for it.
struct JobPipeline {
    descriptor: &'static JobDescriptor,
    deployment_settings: &'static [&'static str],
    /// Its `[schedule]` entry in the built-in defaults.
    schedule: Option<String>,
    /// `batch.timezone` of the built-in defaults.
    timezone: String,
    /// The generated pipeline.
    text: String,
    /// The parallel variant's shape, or `None` for the single pipeline.
    parallel: Option<jenkins::Parallel>,
}

impl JobPipeline {
    fn job(&self) -> &'static str {
        self.descriptor.name
    }

    /// The pipeline without its full-line comments.
    fn code(&self) -> String {
        strip_comments(&self.text)
    }
}

/// Every registered job's generated pipeline.
fn job_pipelines() -> Vec<JobPipeline> {
    let registry = Registry::default();
    let props = defaults(&registry);
    let jobs = registry.jobs();
    assert!(!jobs.is_empty(), "no registered jobs");
    jobs.into_iter()
        .map(|reg| {
            let job = reg.descriptor.name;
            let module = registry
                .module_of(job)
                .expect("a registered job has a module");
            JobPipeline {
                descriptor: reg.descriptor,
                deployment_settings: module.deployment_settings(),
                schedule: props.schedule_for(job).map(str::to_owned),
                timezone: props.batch.timezone.to_string(),
                text: jenkins::pipeline_for(&registry, &props, job)
                    .unwrap_or_else(|e| panic!("no pipeline for {job}: {e:#}")),
                parallel: None,
            }
        })
        .collect()
}

/// Every registered job's generated parallel pipeline with `workers` stages and `partitions`
/// (default: the generator's).
fn parallel_pipelines(workers: u32, partitions: Option<u32>) -> Vec<JobPipeline> {
    let registry = Registry::default();
    let props = defaults(&registry);
    let parallel = jenkins::Parallel::new(workers, partitions).expect("a valid shape");
    job_pipelines()
        .into_iter()
        .map(|p| {
            let job = p.job();
            JobPipeline {
                text: jenkins::parallel_pipeline_for(&registry, &props, job, parallel)
                    .unwrap_or_else(|e| panic!("no parallel pipeline for {job}: {e:#}")),
                parallel: Some(parallel),
                ..p
            }
        })
        .collect()
}

/// Both variants of every registered job's pipeline.
fn all_pipelines() -> Vec<JobPipeline> {
    let mut all = job_pipelines();
    all.extend(parallel_pipelines(TEST_WORKERS, None));
    all
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("//") || t.starts_with("/*") || t.starts_with('*'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text inside the first `name { ... }` of `text`.
fn block<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = text[from..].find(name) {
        let start = from + i;
        let word_start = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let rest = &text[start + name.len()..];
        let trimmed = rest.trim_start();
        if word_start && trimmed.starts_with('{') {
            let open = start + name.len() + (rest.len() - trimmed.len());
            let mut depth = 0;
            for (j, c) in text[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(&text[open + 1..open + j]);
                        }
                    }
                    _ => {}
                }
            }
            return None;
        }
        from = start + name.len();
    }
    None
}

/// A named argument's value in a Groovy call.
#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Str(String),
    List(Vec<String>),
    Word(String),
}

/// A single-quoted Groovy string starting at `chars` (after its quote), unescaped.
fn groovy_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated string".into()),
            Some('\'') => return Ok(out),
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(c @ ('\\' | '\'')) => out.push(c),
                other => return Err(format!("escape \\{other:?}")),
            },
            Some(c) => out.push(c),
        }
    }
}

/// A Groovy call: the function and its named arguments.
type Call = (String, BTreeMap<String, Arg>);

/// The calls `name(key: value, ...)` in `text`, in order.
fn calls(text: &str) -> Result<Vec<Call>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if c != '(' || word.is_empty() {
            word.clear();
            continue;
        }
        let function = std::mem::take(&mut word);
        let mut args = BTreeMap::new();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut key = String::new();
            while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric()) {
                key.push(c);
            }
            if chars.next() != Some(':') {
                return Err(format!("{function}(...): `{key}` is not `key: value`"));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let value = match chars.next() {
                Some('\'') => Arg::Str(groovy_string(&mut chars)?),
                Some('[') => {
                    let mut items = Vec::new();
                    loop {
                        match chars.next() {
                            Some('\'') => items.push(groovy_string(&mut chars)?),
                            Some(']') => break,
                            Some(c) if c == ',' || c.is_whitespace() => {}
                            other => return Err(format!("{function}: list has {other:?}")),
                        }
                    }
                    Arg::List(items)
                }
                Some(c) => {
                    let mut w = c.to_string();
                    while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                        w.push(c);
                    }
                    Arg::Word(w)
                }
                None => return Err(format!("{function}: ends early")),
            };
            args.insert(key, value);
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            match chars.next() {
                Some(',') => continue,
                Some(')') => break,
                other => return Err(format!("{function}: {other:?} after an argument")),
            }
        }
        out.push((function, args));
    }
    Ok(out)
}

/// A build parameter of a pipeline.
#[derive(Debug, Clone, PartialEq)]
struct BuildParam {
    /// `string`, `booleanParam` or `choice`.
    kind: String,
    name: String,
    /// `defaultValue` (a string's text, a boolean's `true`/`false`).
    default: Option<String>,
    choices: Vec<String>,
    description: String,
}

fn build_params(code: &str) -> Result<Vec<BuildParam>, String> {
    let Some(b) = block(code, "parameters") else {
        return Ok(Vec::new());
    };
    calls(b)?
        .into_iter()
        .map(|(kind, args)| {
            let text = |key: &str| match args.get(key) {
                Some(Arg::Str(s) | Arg::Word(s)) => Some(s.clone()),
                _ => None,
            };
            Ok(BuildParam {
                name: text("name").ok_or(format!("{kind}(...) has no name"))?,
                default: text("defaultValue"),
                choices: match args.get("choices") {
                    Some(Arg::List(l)) => l.clone(),
                    _ => Vec::new(),
                },
                description: text("description").unwrap_or_default(),
                kind,
            })
        })
        .collect()
}

/// A value in the `environment` block.
#[derive(Debug, Clone, PartialEq)]
enum EnvValue {
    Credential(String),
    Literal(String),
}

fn environment(code: &str) -> Result<BTreeMap<String, EnvValue>, String> {
    let mut out = BTreeMap::new();
    for line in block(code, "environment").unwrap_or("").lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(" = ") else {
            return Err(format!("environment line `{line}` is not `NAME = value`"));
        };
        let value = if let Some(id) = value
            .strip_prefix("credentials('")
            .and_then(|v| v.strip_suffix("')"))
        {
            EnvValue::Credential(id.to_owned())
        } else if let Some(lit) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            EnvValue::Literal(lit.to_owned())
        } else {
            return Err(format!(
                "environment value `{value}` is neither credentials('id') nor a 'literal'"
            ));
        };
        if out.insert(name.trim().to_owned(), value).is_some() {
            return Err(format!("environment sets {name} twice"));
        }
    }
    Ok(out)
}

/// The words after `jenkins/run-job.sh` of each call in `code`: a single-quoted shell script of
/// plain words (no Groovy or shell expansion), so what is run here is what Jenkins runs.
fn run_calls(code: &str) -> Result<Vec<Vec<String>>, String> {
    let mut found = Vec::new();
    for line in code.lines() {
        if line.contains("release/batch-launcher") || line.contains("cargo run") {
            return Err(format!(
                "calls the launcher directly (`{}`), not through jenkins/run-job.sh",
                line.trim()
            ));
        }
        if !line.contains("run-job.sh") {
            continue;
        }
        let Some(start) = line.find("'jenkins/run-job.sh ") else {
            return Err(format!(
                "`{}`: not a single-quoted 'jenkins/run-job.sh <JOB> ...' on one line",
                line.trim()
            ));
        };
        let rest = &line[start + 1..];
        let script = &rest[..rest.find('\'').unwrap_or(rest.len())];
        if let Some(c) = script
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || " -_=./".contains(*c)))
        {
            return Err(format!("`{script}` has `{c}`: keep the call plain words"));
        }
        found.push(
            script
                .split_whitespace()
                .skip(1)
                .map(String::from)
                .collect(),
        );
    }
    Ok(found)
}

/// The words after `jenkins/run-job.sh` of the pipeline's one call.
fn run_call(code: &str) -> Result<Vec<String>, String> {
    let mut found = run_calls(code)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(format!("{n} jenkins/run-job.sh calls, want one")),
    }
}

/// The variable and credential id of a deployment setting, derived here from the key itself:
/// `asset.api_token` → `BATCH__ASSET__API_TOKEN`, `batch-asset-api-token`.
fn expected_credential(setting: &str) -> (String, String) {
    (
        format!("BATCH__{}", setting.replace('.', "__").to_ascii_uppercase()),
        format!("batch-{}", setting.replace(['.', '_'], "-")),
    )
}

/// A stand-in of the right shape for a setting bound from a credential, from its name:
/// a `...url` setting gets a URL of its kind (PostgreSQL for the database, Redis for a redis
/// one, HTTPS otherwise), anything else a token.
fn stand_in(var: &str) -> String {
    let path = var
        .strip_prefix("BATCH__")
        .unwrap_or_else(|| panic!("{var} is not a BATCH__ setting"))
        .to_ascii_lowercase();
    let section = path.split("__").next().unwrap_or_default().to_owned();
    if !path.ends_with("url") {
        format!("stand-in-{}-secret-token", path.replace('_', "-"))
    } else if path.contains("redis") {
        format!("redis://:secret@{section}.example.invalid:6379")
    } else if section == "database" {
        "postgres://batch:secret@db.example.invalid:5432/batch".to_owned()
    } else {
        format!("https://{}.example.invalid", section.replace('_', "-"))
    }
}

/// Valid non-empty values of a parameter, from its kind.
fn examples(kind: ParamKind) -> Vec<String> {
    match kind {
        ParamKind::Date => vec!["2026-11-20".into()],
        ParamKind::Month => vec!["2026-10".into()],
        ParamKind::Bool => vec!["true".into(), "false".into()],
        ParamKind::Count => vec!["5".into()],
        ParamKind::Integer { min, max } => {
            let mut v = vec![min.to_string(), max.to_string()];
            v.dedup();
            v
        }
        ParamKind::OneOf(names) => names.iter().map(|n| n.to_string()).collect(),
        ParamKind::Text => vec!["x".into()],
        // The first candidate the validator accepts, if any.
        ParamKind::Custom(v) => CUSTOM_CANDIDATES
            .iter()
            .find(|c| (v.check)(c).is_ok())
            .map(|c| vec![c.to_string()])
            .unwrap_or_default(),
    }
}

/// Values a parameter of this kind refuses (none for text).
fn malformed(kind: ParamKind) -> Vec<String> {
    match kind {
        ParamKind::Date => vec!["2026-13-01".into()],
        ParamKind::Month => vec!["2026-13".into()],
        ParamKind::Bool => vec!["maybe".into()],
        ParamKind::Count => vec!["-1".into(), "five".into()],
        ParamKind::Integer { min, max } => {
            let mut v = vec!["x".to_owned()];
            if let Some(above) = max.checked_add(1) {
                v.push(above.to_string());
            }
            if let Some(below) = min.checked_sub(1) {
                v.push(below.to_string());
            }
            v
        }
        ParamKind::OneOf(names) => {
            let mut bad = "no-such-choice".to_owned();
            while names.contains(&bad.as_str()) {
                bad.push('x');
            }
            vec![bad]
        }
        ParamKind::Text => Vec::new(),
        ParamKind::Custom(v) => CUSTOM_CANDIDATES
            .iter()
            .find(|c| (v.check)(c).is_err())
            .map(|c| vec![c.to_string()])
            .unwrap_or_default(),
    }
}

/// The text `--validate-only` shows for a given value.
fn canonical(spec: &ParameterSpec, value: &str) -> String {
    match spec.kind {
        ParamKind::Bool => batch_common::params::parse_bool(spec.name, value)
            .unwrap()
            .to_string(),
        ParamKind::Custom(v) => (v.check)(value).unwrap(),
        _ => value.trim().to_owned(),
    }
}

/// How the build parameter of `spec` must be declared: (kind, defaultValue, choices).
fn expected_build_param(spec: &ParameterSpec) -> (&'static str, Option<String>, Vec<String>) {
    let with_empty = |names: &[&str]| {
        let mut c = vec![String::new()];
        c.extend(names.iter().map(|n| n.to_string()));
        c
    };
    match (spec.kind, spec.default) {
        (ParamKind::Bool, ParamDefault::Value(v)) => {
            let b = batch_common::params::parse_bool(spec.name, v).expect("a boolean default");
            ("booleanParam", Some(b.to_string()), Vec::new())
        }
        (ParamKind::Bool, _) => ("choice", None, with_empty(&["true", "false"])),
        (ParamKind::OneOf(names), _) => ("choice", None, with_empty(names)),
        _ => ("string", Some(String::new()), Vec::new()),
    }
}

/// The value a build parameter has when nobody sets it (a checkbox its default, else empty).
fn untouched_value(spec: &ParameterSpec) -> String {
    expected_build_param(spec)
        .1
        .filter(|_| matches!(spec.kind, ParamKind::Bool))
        .unwrap_or_default()
}

/// Everything wrong with one generated pipeline (`code`, comments stripped) of `p`'s job.
fn structure_problems(p: &JobPipeline, code: &str) -> Vec<String> {
    let job = p.job();
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{job}: {what}"));
        }
    };

    // Trigger: the `[schedule]` default in TZ=batch.timezone; none when off or absent, or when
    // a parameter is required (a scheduled build would fail).
    let required: Vec<&str> = p
        .descriptor
        .parameters
        .iter()
        .filter(|s| s.default == ParamDefault::Required)
        .map(|s| s.name)
        .collect();
    let trigger = block(code, "triggers");
    match (&p.schedule, required.is_empty()) {
        (Some(cron), true) => match trigger.and_then(|t| t.split_once("cron('")) {
            None => need(false, "no `triggers { cron('...') }`".into()),
            Some((_, rest)) => {
                let spec = rest.split("')").next().unwrap_or("");
                let tz = format!("TZ={}", p.timezone);
                let (first, second) = spec.split_once("\\n").unwrap_or((spec, ""));
                need(
                    first == tz,
                    format!("cron `{spec}` must start with `{tz}\\n`"),
                );
                let jenkins: Vec<&str> = second.split(' ').collect();
                let fields: Vec<&str> = cron.split_whitespace().collect();
                // A plain schedule (numbers and `*`, any weekday) is the same fields in Jenkins
                // without the seconds; anything else is the generator's translation.
                let plain = fields.len() == 6
                    && fields[0] == "0"
                    && fields[5] == "*"
                    && fields[1..5]
                        .iter()
                        .all(|f| f.chars().all(|c| c.is_ascii_digit() || c == '*'));
                let want = if plain {
                    fields[1..].join(" ")
                } else {
                    jenkins::jenkins_cron(cron).unwrap_or_else(|e| e)
                };
                need(
                    jenkins.join(" ") == want,
                    format!("cron `{second}` is not [schedule] {job} = `{cron}` (want `{want}`)"),
                );
                need(
                    !trigger.unwrap_or("").contains("H "),
                    "cron uses H: the minute must be the schedule's".into(),
                );
            }
        },
        _ => need(
            trigger.is_none(),
            format!(
                "has a trigger, but [schedule] {job} is {:?} and the required parameters are {required:?}",
                p.schedule
            ),
        ),
    }

    let options = block(code, "options").unwrap_or("");
    for option in [
        "disableConcurrentBuilds()",
        "buildDiscarder(",
        "timestamps()",
    ] {
        need(options.contains(option), format!("no {option} in options"));
    }
    let timeout = options
        .split_once("timeout(time: ")
        .and_then(|(_, r)| r.split_once(", unit: '"))
        .and_then(|(n, r)| Some((n.trim().parse::<u32>().ok()?, r.split('\'').next()?)));
    need(
        matches!(timeout, Some((n, "MINUTES" | "HOURS")) if n > 0),
        "no `timeout(time: N, unit: 'MINUTES')` in options".into(),
    );

    // Parameters: one per declared job parameter, then RERUN.
    let env = environment(code);
    match build_params(code) {
        Err(e) => need(false, format!("parameters: {e}")),
        Ok(params) => {
            let names: Vec<&str> = params.iter().map(|b| b.name.as_str()).collect();
            let mut want_names: Vec<String> = p
                .descriptor
                .parameters
                .iter()
                .map(|s| jenkins::build_parameter_name(s.name))
                .collect();
            want_names.push("RERUN".to_owned());
            need(
                names == want_names,
                format!("build parameters {names:?}, want {want_names:?}"),
            );
            let unique: BTreeSet<&str> = names.iter().copied().collect();
            need(
                unique.len() == names.len(),
                format!("build parameters {names:?} repeat"),
            );
            for spec in p.descriptor.parameters {
                let name = jenkins::build_parameter_name(spec.name);
                let Some(b) = params.iter().find(|b| b.name == name) else {
                    continue;
                };
                need(
                    !name.is_empty()
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                    format!("build parameter {name} is not a shell variable name"),
                );
                let (kind, default, choices) = expected_build_param(spec);
                need(
                    b.kind == kind && b.default == default && b.choices == choices,
                    format!(
                        "build parameter {name} of `{}` is {}({:?}, {:?}), want {kind}({default:?}, {choices:?})",
                        spec.name, b.kind, b.default, b.choices
                    ),
                );
                let d = b.description.to_lowercase();
                let description: String = spec
                    .description
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                for part in [
                    spec.name.to_owned(),
                    spec.kind.to_string(),
                    spec.default.to_string(),
                    description,
                ] {
                    need(
                        d.contains(&part.to_lowercase()),
                        format!(
                            "the description of {name} does not say `{part}`: {:?}",
                            b.description
                        ),
                    );
                }
            }
            match params.last() {
                Some(r) if r.name == "RERUN" => need(
                    r.kind == "booleanParam" && r.default.as_deref() == Some("false"),
                    "RERUN is not booleanParam(defaultValue: false)".into(),
                ),
                _ => need(false, "no RERUN build parameter".into()),
            }
        }
    }

    // Environment: database.url and the module's deployment settings from credentials, the
    // parameter mapping, the Slack channel and token id; nothing else.
    match env {
        Err(e) => need(false, e),
        Ok(env) => {
            let mut want: BTreeMap<String, EnvValue> = BTreeMap::new();
            for setting in std::iter::once(&"database.url").chain(p.deployment_settings) {
                let (var, id) = expected_credential(setting);
                want.insert(var, EnvValue::Credential(id));
            }
            let mapping: Vec<String> = p
                .descriptor
                .parameters
                .iter()
                .map(|s| format!("{}={}", jenkins::build_parameter_name(s.name), s.name))
                .collect();
            want.insert("JOB_PARAMS".into(), EnvValue::Literal(mapping.join(" ")));
            want.insert("SLACK_CHANNEL".into(), EnvValue::Literal("#batch".into()));
            want.insert(
                "SLACK_CREDENTIALS_ID".into(),
                EnvValue::Literal("batch-slack-token".into()),
            );
            for (name, value) in &want {
                match env.get(name) {
                    None => need(false, format!("{name} is not in environment")),
                    Some(v) => need(
                        v == value,
                        format!("environment {name} is {v:?}, want {value:?}"),
                    ),
                }
            }
            for name in env.keys().filter(|k| !want.contains_key(*k)) {
                need(
                    false,
                    format!("environment has {name}, which the job does not need"),
                );
            }
        }
    }

    let post = pipeline_post(code).unwrap_or("");
    for (section, color) in [
        ("success", "good"),
        ("unstable", "warning"),
        ("notBuilt", "warning"),
        ("failure", "danger"),
        ("aborted", "danger"),
    ] {
        need(
            block(post, section).is_some_and(|b| {
                b.contains("slackSend(")
                    && b.contains(&format!("color: '{color}'"))
                    && b.contains("${summary}")
            }),
            format!("no slackSend with color '{color}' and the summary in post {{ {section} }}"),
        );
    }
    let variant = match p.parallel {
        None => single_problems(job, code),
        Some(parallel) => parallel_problems(job, parallel, code),
    };
    problems.extend(variant.into_iter().map(|e| format!("{job}: {e}")));
    problems
}

/// What is wrong with the single pipeline's own part: its one call, its Build stage, its
/// result file and exit-code mapping.
fn single_problems(job: &str, code: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    // The call: `jenkins/run-job.sh <JOB> --result-file result.json`.
    match run_call(code) {
        Err(e) => need(false, e),
        Ok(words) => need(
            words == [job, "--result-file", RESULT_FILE],
            format!(
                "the call is `jenkins/run-job.sh {}`, want `{job} --result-file {RESULT_FILE}`",
                words.join(" ")
            ),
        ),
    }
    need(
        code.lines()
            .any(|l| l.trim() == "sh 'cargo build --release --locked -p batch-launcher'"),
        "no `sh 'cargo build --release --locked -p batch-launcher'`".into(),
    );

    // The result file: not left from an earlier build, archived, summarized.
    let post = pipeline_post(code).unwrap_or("");
    let always = block(post, "always").unwrap_or("");
    need(
        code.contains(&format!("sh 'rm -f {RESULT_FILE}'")),
        format!("no `sh 'rm -f {RESULT_FILE}'` before the run"),
    );
    need(
        always.contains(&format!(
            "archiveArtifacts artifacts: '{RESULT_FILE}', allowEmptyArchive: true"
        )),
        format!("post {{ always }} does not archiveArtifacts '{RESULT_FILE}'"),
    );
    need(
        always.contains("summary = resultSummary()")
            && code.contains(&format!("formatResult(readJSON(file: '{RESULT_FILE}'))")),
        "post { always } does not summarize result.json (resultSummary/formatResult)".into(),
    );
    problems.extend(exit_code_problems(code));
    problems
}

/// The pipeline's own `post` block (not a stage's).
fn pipeline_post(code: &str) -> Option<&str> {
    let at = code.find("\n    post {")?;
    block(&code[at..], "post")
}

/// What is wrong with the parallel pipeline's own part: a Run stage of `parallel` worker stages
/// `worker 1` .. `worker N` (see [`worker_problems`]), and `post { always }` unstashing their
/// result files and summarizing them, JOINED workers apart.
fn parallel_problems(job: &str, parallel: jenkins::Parallel, code: &str) -> Vec<String> {
    let n = parallel.workers();
    let mut problems = Vec::new();
    let stages = block(code, "stage('Run')").and_then(|r| block(r, "parallel"));
    if stages.is_none() {
        problems.push("no `stage('Run') { parallel { ... } }`".to_owned());
    }
    let stages = stages.unwrap_or("");
    let names: Vec<String> = stages
        .lines()
        .filter_map(|l| l.trim().strip_prefix("stage('")?.split_once("')"))
        .map(|(name, _)| name.to_owned())
        .collect();
    let want: Vec<String> = (1..=n).map(|i| format!("worker {i}")).collect();
    if names != want {
        problems.push(format!(
            "the parallel worker stages are {names:?}, want {n}: {want:?}"
        ));
    }
    match run_calls(code) {
        Err(e) => problems.push(e),
        Ok(calls) if calls.len() != n as usize => problems.push(format!(
            "{} jenkins/run-job.sh calls, want one per worker stage ({n})",
            calls.len()
        )),
        Ok(_) => {}
    }
    for i in 1..=n {
        if let Some(stage) = block(stages, &format!("stage('worker {i}')")) {
            problems.extend(
                worker_problems(job, parallel, i, stage)
                    .into_iter()
                    .map(|e| format!("worker {i}: {e}")),
            );
        }
    }

    let always = pipeline_post(code)
        .and_then(|post| block(post, "always"))
        .unwrap_or("");
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    need(
        always.contains("sh 'rm -f result-*.json'"),
        "post { always } does not `sh 'rm -f result-*.json'` (an earlier build's files) before unstashing".into(),
    );
    need(
        always.contains(&format!("for (int i = 1; i <= {n}; i++) {{"))
            && always.contains("unstash \"result-${i}\""),
        format!("post {{ always }} does not unstash result-1 .. result-{n}"),
    );
    need(
        always.contains(&format!("summary = resultSummary({n})")),
        format!(
            "post {{ always }} does not summarize the {n} result files: summary = resultSummary({n})"
        ),
    );
    need(
        [
            "String file = \"result-${i}.json\"",
            "readJSON(file: file)",
            "r.status == 'JOINED'",
            "formatJoined(r)",
            "formatResult(r)",
        ]
        .iter()
        .all(|c| code.contains(c)),
        "resultSummary does not summarize each result file (readJSON), JOINED workers apart".into(),
    );
    problems
}

/// What is wrong with worker `i`'s stage: an agent of its own, the release build, its result
/// file removed, then its one call `jenkins/run-job.sh <JOB> --join --partitions P --workers 2
/// --result-file result-<i>.json` (with RERUN=false but for worker 1) and its exit code mapped;
/// `post { always }` archiving and stashing the result file.
fn worker_problems(job: &str, parallel: jenkins::Parallel, i: u32, stage: &str) -> Vec<String> {
    let file = jenkins::Parallel::result_file(i);
    let partitions = parallel.partitions().to_string();
    let workers = jenkins::PROCESS_WORKERS.to_string();
    let want = [
        job,
        "--join",
        "--partitions",
        &partitions,
        "--workers",
        &workers,
        "--result-file",
        &file,
    ];
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    need(
        stage.lines().any(|l| l.trim() == "agent any"),
        "no `agent any`: each worker needs an agent (executor) of its own".into(),
    );
    let steps = block(stage, "steps").unwrap_or("");
    need(
        steps
            .lines()
            .any(|l| l.trim() == "sh 'cargo build --release --locked -p batch-launcher'"),
        "no `sh 'cargo build --release --locked -p batch-launcher'` in its steps".into(),
    );
    need(
        steps.contains(&format!("sh 'rm -f {file}'")),
        format!("no `sh 'rm -f {file}'` before the run"),
    );
    match run_call(steps) {
        Err(e) => need(false, e),
        Ok(words) => need(
            words == want,
            format!(
                "the call is `jenkins/run-job.sh {}`, want `{}`",
                words.join(" "),
                want.join(" ")
            ),
        ),
    }
    // RERUN is worker 1's: the others' call runs inside withEnv(['RERUN=false']).
    let rerun_off = block(stage, "withEnv(['RERUN=false'])");
    if i == 1 {
        need(
            !stage.contains("withEnv("),
            "worker 1 must run with the build's RERUN (no withEnv)".into(),
        );
    } else {
        need(
            rerun_off.is_some_and(|b| b.contains("'jenkins/run-job.sh ")),
            "its call must run inside withEnv(['RERUN=false']): RERUN is worker 1's".into(),
        );
    }
    let always = block(stage, "post")
        .and_then(|post| block(post, "always"))
        .unwrap_or("");
    need(
        always.contains(&format!(
            "archiveArtifacts artifacts: '{file}', allowEmptyArchive: true"
        )),
        format!("post {{ always }} does not archiveArtifacts '{file}'"),
    );
    need(
        always.contains(&format!(
            "stash name: 'result-{i}', includes: '{file}', allowEmpty: true"
        )),
        format!("post {{ always }} does not stash '{file}' as result-{i}"),
    );
    problems.extend(exit_code_problems(steps));
    problems
}

/// `sh(returnStatus: true)` into a variable, then `switch` on it: 0 passes, 3 is UNSTABLE, 4 is
/// NOT_BUILT, 2 and anything else an error.
fn exit_code_problems(code: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(line) = code.lines().find(|l| l.contains("'jenkins/run-job.sh ")) else {
        return vec!["no jenkins/run-job.sh call".into()];
    };
    let Some((lhs, _)) = line.split_once(" = sh(returnStatus: true") else {
        return vec!["capture the status: `int code = sh(returnStatus: true, ...)`".into()];
    };
    let var = lhs.split_whitespace().last().unwrap_or("");
    let Some(switch) = block(code, &format!("switch ({var})")) else {
        return vec![format!("no `switch ({var})` on the exit code")];
    };
    let mut cases: BTreeMap<String, &str> = BTreeMap::new();
    for l in switch.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("case ") {
            if let Some((n, action)) = rest.split_once(':') {
                cases.insert(n.trim().to_owned(), action);
            }
        } else if let Some(action) = l.strip_prefix("default:") {
            cases.insert("default".to_owned(), action);
        }
    }
    let mut need = |case: &str, ok: fn(&str) -> bool, what: &str| {
        if !cases.get(case).is_some_and(|a| ok(a)) {
            problems.push(format!("exit code {case} must {what}"));
        }
    };
    need(
        "0",
        |a| !a.contains("error(") && !a.contains("unstable(") && !a.contains("currentBuild.result"),
        "leave the build SUCCESS",
    );
    need(
        "3",
        |a| a.contains("unstable("),
        "be UNSTABLE (`unstable(...)`)",
    );
    need(
        "4",
        |a| a.contains("currentBuild.result = 'NOT_BUILT'"),
        "be NOT_BUILT",
    );
    need("2", |a| a.contains("error("), "be an `error(...)`");
    need("default", |a| a.contains("error("), "be an `error(...)`");
    for (case, action) in &cases {
        if !["0", "3", "4", "default"].contains(&case.as_str()) && !action.contains("error(") {
            problems.push(format!("exit code {case} must be an `error(...)`"));
        }
    }
    problems
}

/// The `jenkinsfile` command line that generates `p`'s pipeline, after `batch-launcher`.
fn command_of(p: &JobPipeline) -> String {
    match p.parallel {
        None => format!("jenkinsfile {}", p.job()),
        Some(par) => format!(
            "jenkinsfile {} --workers {} --partitions {}",
            p.job(),
            par.workers(),
            par.partitions()
        ),
    }
}

#[test]
fn generated_pipelines_have_the_structure_of_their_job() {
    let mut problems = Vec::new();
    for p in all_pipelines() {
        problems.extend(structure_problems(&p, &p.code()));
        let header = p.text.lines().next().unwrap_or("");
        let command = command_of(&p);
        if !header.contains(&format!("GENERATED by `batch-launcher {command}`;")) {
            problems.push(format!(
                "{}: the header does not say it is generated by `{command}`: {header}",
                p.job()
            ));
        }
        // The parallel variant says what it needs in its header: a database for --join.
        if p.parallel.is_some()
            && !(p.text.contains("PostgreSQL or MySQL/MariaDB") && p.text.contains("SQLite"))
        {
            problems.push(format!(
                "{}: the parallel pipeline's header does not say that --join needs PostgreSQL or MySQL/MariaDB, not SQLite",
                p.job()
            ));
        }
    }
    // What run-job.sh runs is what the Build stage builds.
    let run_job_sh = read(&workspace_root().join("jenkins/run-job.sh"));
    if !run_job_sh.contains("${LAUNCHER:-target/release/batch-launcher}") {
        problems
            .push("jenkins/run-job.sh does not default to target/release/batch-launcher".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Breaks of a parallel pipeline with `par`'s shape: (from, to, a word of the problem).
fn parallel_breaks(par: jenkins::Parallel) -> Vec<(String, String, String)> {
    let (n, partitions) = (par.workers(), par.partitions());
    [
        (
            format!("stage('worker {n}')"),
            format!("stage('worker {}')", n + 1),
            "worker stages",
        ),
        ("parallel {".into(), "sequential {".into(), "parallel"),
        (
            format!(" --partitions {partitions} "),
            format!(" --partitions {} ", partitions + 1),
            "the call is",
        ),
        (" --join ".into(), " ".into(), "the call is"),
        (
            " --workers 2 ".into(),
            " --workers 3 ".into(),
            "the call is",
        ),
        (
            "stage('worker 2') {\n                    agent any".into(),
            "stage('worker 2') {\n                    agent none".into(),
            "agent any",
        ),
        (
            "withEnv(['RERUN=false'])".into(),
            "withEnv(['RERUN=true'])".into(),
            "RERUN",
        ),
        (
            "sh 'rm -f result-1.json'".into(),
            "sh 'rm -f result-1.json'; withEnv(['RERUN=false']) { echo 'x' }".into(),
            "worker 1 must run with the build's RERUN",
        ),
        (
            "stash name: 'result-1'".into(),
            "stash name: 'result-x'".into(),
            "stash",
        ),
        (
            "unstash \"result-${i}\"".into(),
            "echo \"result-${i}\"".into(),
            "unstash",
        ),
        (format!("i <= {n}; i++"), "i <= 1; i++".into(), "unstash"),
        (
            format!("summary = resultSummary({n})"),
            format!("summary = resultSummary({})", n - 1),
            "resultSummary",
        ),
        (
            "sh 'rm -f result-*.json'".into(),
            "sh 'true'".into(),
            "rm -f",
        ),
        (
            "r.status == 'JOINED'".into(),
            "r.status == 'NOOP'".into(),
            "JOINED",
        ),
        (
            "archiveArtifacts artifacts: 'result-2.json'".into(),
            "archiveArtifacts artifacts: 'result-1.json'".into(),
            "archiveArtifacts 'result-2.json'",
        ),
        (
            "case 3: unstable('worker 2".into(),
            "case 3: echo('worker 2".into(),
            "worker 2: exit code 3",
        ),
    ]
    .into_iter()
    .map(|(a, b, c)| (a, b, c.to_owned()))
    .collect()
}

/// The structure checks can fail: each break of each job's pipeline is reported.
#[test]
fn broken_pipelines_fail_the_structure_checks() {
    for p in all_pipelines() {
        let job = p.job();
        let code = p.code();
        assert!(structure_problems(&p, &code).is_empty(), "{job}");
        // The (first) result file.
        let file = match p.parallel {
            None => RESULT_FILE.to_owned(),
            Some(_) => jenkins::Parallel::result_file(1),
        };
        let mut breaks: Vec<(String, String, String)> = [
            ("disableConcurrentBuilds()", "", "disableConcurrentBuilds"),
            ("timeout(time: ", "timeout(after: ", "timeout"),
            ("timestamps()", "", "timestamps"),
            ("case 3: unstable(", "case 3: echo(", "exit code 3"),
            (
                "case 4: currentBuild.result = 'NOT_BUILT'",
                "case 4: echo 'x'",
                "exit code 4",
            ),
            ("case 2: error(", "case 2: echo(", "exit code 2"),
            ("default: error(", "default: echo(", "exit code default"),
            (
                "returnStatus: true",
                "returnStdout: true",
                "capture the status",
            ),
            ("archiveArtifacts", "echo", "archiveArtifacts"),
            ("readJSON(", "readYaml(", "summarize"),
            (
                "cargo build --release --locked",
                "cargo build",
                "cargo build --release",
            ),
            (
                "failure {\n            slackSend(",
                "failure {\n            echo(",
                "post { failure }",
            ),
            (
                "success {\n            slackSend(",
                "success {\n            echo(",
                "post { success }",
            ),
            (
                "aborted {\n            slackSend(",
                "aborted {\n            echo(",
                "post { aborted }",
            ),
            ("color: 'warning'", "color: 'good'", "post { unstable }"),
            (
                "credentials('batch-database-url')",
                "'postgres://x'",
                "BATCH__DATABASE__URL",
            ),
            (
                "booleanParam(name: 'RERUN'",
                "booleanParam(name: 'RERUNS'",
                "RERUN",
            ),
            (
                "SLACK_CHANNEL = '#batch'",
                "SLACK_CHANNEL = '#other'",
                "SLACK_CHANNEL",
            ),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
        .to_vec();
        breaks.push((
            format!("sh 'rm -f {file}'"),
            "sh 'true'".into(),
            "rm -f".into(),
        ));
        breaks.push((
            format!(" --result-file {file}'"),
            "'".into(),
            "the call is".into(),
        ));
        if let Some(par) = p.parallel {
            breaks.extend(parallel_breaks(par));
        }
        breaks.push((
            format!("jenkins/run-job.sh {job} "),
            format!("jenkins/run-job.sh {job}s "),
            "the call is".into(),
        ));
        breaks.push((
            "    environment {\n".into(),
            "    environment {\n        BATCH__SERVER__TOKEN = credentials('batch-server-token')\n"
                .into(),
            "does not need".into(),
        ));
        if p.schedule.is_some() && block(&code, "triggers").is_some() {
            breaks.push((
                format!("TZ={}", p.timezone),
                "TZ=UTC".into(),
                "must start with".into(),
            ));
            let cron = block(&code, "triggers").unwrap();
            let line = cron
                .split("\\n")
                .nth(1)
                .unwrap()
                .split("')")
                .next()
                .unwrap()
                .to_owned();
            let shifted = if line.starts_with("0 ") {
                line.replacen("0 ", "1 ", 1)
            } else {
                format!("0 {}", line.split_once(' ').unwrap().1)
            };
            breaks.push((
                format!("\\n{line}')"),
                format!("\\n{shifted}')"),
                "is not [schedule]".into(),
            ));
            breaks.push((
                "triggers {".into(),
                "triggerz {".into(),
                "no `triggers".into(),
            ));
        }
        for setting in std::iter::once(&"database.url").chain(p.deployment_settings) {
            let (var, id) = expected_credential(setting);
            breaks.push((
                format!("        {var} = credentials('{id}')\n"),
                String::new(),
                var.clone(),
            ));
            breaks.push((
                format!("credentials('{id}')"),
                format!("credentials('{id}s')"),
                var,
            ));
        }
        for spec in p.descriptor.parameters {
            let name = jenkins::build_parameter_name(spec.name);
            breaks.push((
                format!("(name: '{name}'"),
                format!("(name: '{name}X'"),
                "build parameters".into(),
            ));
            breaks.push((
                format!("{name}={}", spec.name),
                format!("{name}={}x", spec.name),
                "JOB_PARAMS".into(),
            ));
            let (kind, _, _) = expected_build_param(spec);
            let other = if kind == "string" { "choice" } else { "string" };
            breaks.push((
                format!("{kind}(name: '{name}'"),
                format!("{other}(name: '{name}'"),
                name.clone(),
            ));
        }
        for (from, to, expected) in breaks {
            assert!(code.contains(&from), "{job}: `{from}` not in its pipeline");
            let broken = code.replacen(&from, &to, 1);
            let problems = structure_problems(&p, &broken);
            assert!(
                problems.iter().any(|pr| pr.contains(&expected)),
                "{job}: replacing `{from}` with `{to}`: no problem mentions `{expected}`: {problems:?}"
            );
        }
    }
}

/// The pipeline files: the root `Jenkinsfile` and every `jenkins/*.Jenkinsfile` (anything else
/// named like a pipeline fails, so none escapes the check), as (file, text).
fn checked_in_pipelines() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut files = Vec::new();
    for (dir, prefix) in [(root.clone(), ""), (root.join("jenkins"), "jenkins/")] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let is_pipeline = if prefix.is_empty() {
                name == "Jenkinsfile"
            } else {
                name.ends_with(".Jenkinsfile")
            };
            if is_pipeline {
                files.push(format!("{prefix}{name}"));
            } else {
                assert!(
                    !name.to_lowercase().contains("jenkinsfile"),
                    "{prefix}{name}: pipelines are the root `Jenkinsfile` and `jenkins/<JOB>.Jenkinsfile`"
                );
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = read(&root.join(&f));
            (f, text)
        })
        .collect()
}

/// The `--workers N --partitions P` a parallel pipeline's first line names.
fn header_shape(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().next()?;
    let number = |flag: &str| -> Option<u32> {
        let (_, rest) = line.split_once(flag)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((number("--workers ")?, number("--partitions ")?))
}

/// Every checked-in pipeline is the generator's output for its job (with the built-in
/// defaults): they cannot drift from the jobs, the config defaults or the generator. A
/// `jenkins/<JOB>.parallel.Jenkinsfile` is the parallel pipeline its first line names; the one
/// of [`CHECKED_IN_PARALLEL`] must be there, generated with the default partitions.
#[test]
fn checked_in_pipelines_are_the_generated_ones() {
    let registry = Registry::default();
    let props = defaults(&registry);
    let files = checked_in_pipelines();
    assert!(
        files.iter().any(|(f, _)| f == "Jenkinsfile"),
        "no root Jenkinsfile"
    );
    let (must_job, must_workers) = CHECKED_IN_PARALLEL;
    let must_file = format!("jenkins/{must_job}.parallel.Jenkinsfile");
    let must_command = format!("jenkinsfile {must_job} --workers {must_workers}");
    assert!(
        files.iter().any(|(f, _)| *f == must_file),
        "no {must_file}: generate it with\n  \
         env -u BATCH_CONFIG cargo run -q -p batch-launcher -- {must_command} > {must_file}"
    );
    let mut problems = Vec::new();
    // (job, parallel?) → file
    let mut seen: BTreeMap<(String, bool), String> = BTreeMap::new();
    for (file, text) in &files {
        // The job and the variant: from the file name, or the root file's call.
        let (job, shape) = match file
            .strip_prefix("jenkins/")
            .map(|n| n.trim_end_matches(".Jenkinsfile"))
        {
            Some(name) => match name.strip_suffix(".parallel") {
                None => (name.to_owned(), None),
                Some(job) => match header_shape(text) {
                    Some(shape) => (job.to_owned(), Some(shape)),
                    None => {
                        problems.push(format!(
                            "{file}: its first line does not name `jenkinsfile {job} --workers N --partitions P`"
                        ));
                        continue;
                    }
                },
            },
            None => match run_call(&strip_comments(text)) {
                Ok(words) if !words.is_empty() => (words[0].clone(), None),
                _ => {
                    problems.push(format!(
                        "{file}: no `jenkins/run-job.sh <JOB>` call names its job"
                    ));
                    continue;
                }
            },
        };
        if let Some(other) = seen.insert((job.clone(), shape.is_some()), file.clone()) {
            let what = if shape.is_some() { "parallel " } else { "" };
            problems.push(format!("{job} has two {what}pipelines: {other} and {file}"));
        }
        if registry.find(&job).is_none() {
            problems.push(format!(
                "{file}: `{job}` is not a registered job (known: {})",
                registry.names()
            ));
            continue;
        }
        let (want, command) = match shape {
            None => (
                jenkins::pipeline_for(&registry, &props, &job),
                format!("jenkinsfile {job}"),
            ),
            Some((workers, partitions)) => {
                let parallel = match jenkins::Parallel::new(workers, Some(partitions)) {
                    Ok(parallel) => parallel,
                    Err(e) => {
                        problems.push(format!("{file}: {e}"));
                        continue;
                    }
                };
                let command = if *file == must_file {
                    must_command.clone()
                } else {
                    format!("jenkinsfile {job} --workers {workers} --partitions {partitions}")
                };
                (
                    jenkins::parallel_pipeline_for(&registry, &props, &job, parallel),
                    command,
                )
            }
        };
        let want = want.unwrap_or_else(|e| panic!("{file}: {e:#}"));
        if *file == must_file
            && shape != Some((must_workers, must_workers * jenkins::PARTITIONS_PER_STAGE))
        {
            problems.push(format!(
                "{file} must be the output of `{must_command}` (the default partitions), not of {shape:?}: regenerate it with\n  \
                 env -u BATCH_CONFIG cargo run -q -p batch-launcher -- {must_command} > {file}"
            ));
            continue;
        }
        if *text != want {
            let (n, (have, want)) = text
                .lines()
                .chain(std::iter::repeat("<end of file>"))
                .zip(want.lines().chain(std::iter::repeat("<end of file>")))
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .unwrap_or((0, ("", "")));
            problems.push(format!(
                "{file} is not the generated pipeline of {job}: regenerate it with\n  \
                 env -u BATCH_CONFIG cargo run -q -p batch-launcher -- {command} > {file}\n\
                 (no BATCH_* variables, no config file). First difference, line {}:\n  have: {have}\n  want: {want}",
                n + 1
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The CLI prints what the generator makes, writes it with --output, follows the effective
/// configuration, and refuses an unknown job with exit 2 naming the known ones.
#[test]
fn jenkinsfile_command_prints_the_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = job_pipelines();
    for p in &pipelines {
        let job = p.job();
        let o = launcher(dir.path(), &["jenkinsfile", job], &[]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{job}: {err}");
        assert!(
            out == p.text,
            "{job}: `jenkinsfile {job}` differs from the generator's output"
        );

        let file = dir.path().join(format!("{job}.Jenkinsfile"));
        let o = launcher(
            dir.path(),
            &["jenkinsfile", job, "--output", file.to_str().unwrap()],
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{job}: {}", text(&o).1);
        assert!(
            read(&file) == p.text,
            "{job}: --output wrote something else"
        );

        // The effective configuration: another time zone, the schedule off.
        let o = launcher(
            dir.path(),
            &["jenkinsfile", job],
            &[("BATCH__BATCH__TIMEZONE", "Europe/Berlin")],
        );
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{job}: {err}");
        if block(&out, "triggers").is_some() {
            assert!(out.contains("cron('TZ=Europe/Berlin\\n"), "{job}: {out}");
        }
        let off = format!("BATCH__SCHEDULE__{}", job.to_uppercase());
        let o = launcher(dir.path(), &["jenkinsfile", job], &[(off.as_str(), "off")]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{job}: {err}");
        assert!(
            block(&strip_comments(&out), "triggers").is_none(),
            "{job}: {out}"
        );
    }
    let o = launcher(dir.path(), &["jenkinsfile", "noSuchJob"], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("unknown job `noSuchJob`"), "{err}");
    for p in &pipelines {
        assert!(err.contains(p.job()), "{err}");
    }
}

/// `jenkinsfile <JOB> --workers N [--partitions P]` prints (or writes) the generator's parallel
/// pipeline, whose header names the shape that makes it again, and refuses a bad shape with
/// exit 2, naming the flag and printing no pipeline.
#[test]
fn jenkinsfile_command_prints_the_parallel_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let n = TEST_WORKERS.to_string();
    for p in parallel_pipelines(TEST_WORKERS, None) {
        let job = p.job();
        let o = launcher(dir.path(), &["jenkinsfile", job, "--workers", &n], &[]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{job}: {err}");
        assert!(
            out == p.text,
            "{job}: `jenkinsfile {job} --workers {n}` differs from the generator's output"
        );
        assert_eq!(
            header_shape(&out),
            Some((TEST_WORKERS, TEST_WORKERS * jenkins::PARTITIONS_PER_STAGE)),
            "{job}"
        );
    }
    for p in parallel_pipelines(2, Some(5)) {
        let job = p.job();
        let file = dir.path().join(format!("{job}.parallel.Jenkinsfile"));
        let args = [
            "jenkinsfile",
            job,
            "--workers",
            "2",
            "--partitions",
            "5",
            "--output",
            file.to_str().unwrap(),
        ];
        let o = launcher(dir.path(), &args, &[]);
        assert_eq!(o.status.code(), Some(0), "{job}: {}", text(&o).1);
        assert!(
            read(&file) == p.text,
            "{job}: {args:?} wrote something else"
        );
        assert_eq!(header_shape(&p.text), Some((2, 5)), "{job}");
    }
    let job = job_pipelines()[0].job();
    for (args, flag) in [
        (&["--workers", "1"][..], "--workers"),
        (&["--workers", "65"], "--workers"),
        (&["--workers", "four"], "--workers"),
        (&["--workers", "4", "--partitions", "3"], "--partitions"),
        (&["--workers", "4", "--partitions", "0"], "--partitions"),
        (&["--partitions", "8"], "--workers"),
    ] {
        let mut all = vec!["jenkinsfile", job];
        all.extend(args);
        let o = launcher(dir.path(), &all, &[]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {out}{err}");
        assert!(err.contains(flag), "{all:?} does not name {flag}: {err}");
        assert!(out.is_empty(), "{all:?} printed: {out}");
    }
    let o = launcher(
        dir.path(),
        &["jenkinsfile", "noSuchJob", "--workers", "2"],
        &[],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("unknown job `noSuchJob`"), "{err}");
}

/// Runs jenkins/run-job.sh as Jenkins would (the file itself, from `dir`), with only `env`,
/// PATH and `LAUNCHER` in its environment.
fn run_job_sh(
    dir: &Path,
    launcher: &Path,
    words: &[String],
    env: &BTreeMap<String, String>,
) -> Output {
    Command::new(workspace_root().join("jenkins/run-job.sh"))
        .args(words)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .env("LAUNCHER", launcher)
        .output()
        .expect("run jenkins/run-job.sh")
}

fn launcher_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_batch-launcher"))
}

fn describe(job: &str, words: &[String], env: &BTreeMap<String, String>, o: &Output) -> String {
    let (out, err) = text(o);
    format!(
        "{job}: run-job.sh {} with {env:?}\nexit {:?}\nstdout: {out}\nstderr: {err}",
        words.join(" "),
        o.status.code()
    )
}

/// A build of `p`'s pipeline as the script sees it: the pipeline's environment with stand-ins
/// for its credentials, every build parameter untouched (a required one set to `required`, if
/// given), RERUN false.
fn build_environment(p: &JobPipeline) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = environment(&p.code())
        .unwrap_or_else(|e| panic!("{}: {e}", p.job()))
        .into_iter()
        .map(|(name, value)| {
            let v = match value {
                EnvValue::Credential(_) => stand_in(&name),
                EnvValue::Literal(l) => l,
            };
            (name, v)
        })
        .collect();
    for spec in p.descriptor.parameters {
        env.insert(
            jenkins::build_parameter_name(spec.name),
            untouched_value(spec),
        );
    }
    env.insert("RERUN".into(), "false".into());
    env
}

/// The `k=v` pairs of an `ok: <JOB> k=v ...` line.
fn shown_pairs(out: &str, job: &str) -> Option<BTreeMap<String, String>> {
    let line = out.lines().next()?;
    let rest = line.strip_prefix(&format!("ok: {job}"))?;
    Some(
        rest.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// Every job's launcher call, through jenkins/run-job.sh and the real binary with
/// `--validate-only`: untouched, with RERUN, and with each parameter at each representative
/// value of its kind (empty, then valid examples) while the others are untouched.
#[test]
fn every_pipeline_call_passes_validate_only_for_representative_values() {
    let dir = tempfile::tempdir().unwrap();
    for p in job_pipelines() {
        let job = p.job();
        let words: Vec<String> = run_call(&p.code())
            .unwrap()
            .into_iter()
            .chain(["--validate-only".to_owned()])
            .collect();
        let mut base = build_environment(&p);
        // A required parameter needs a value in every run but its own empty one.
        let mut runnable = true;
        for spec in p
            .descriptor
            .parameters
            .iter()
            .filter(|s| s.default == ParamDefault::Required)
        {
            match examples(spec.kind).first() {
                Some(v) => {
                    base.insert(jenkins::build_parameter_name(spec.name), v.clone());
                }
                None => runnable = false,
            }
        }
        if !runnable {
            eprintln!(
                "{job}: a required parameter has no example value: only refusals are checked"
            );
        }
        let run = |env: &BTreeMap<String, String>| {
            let o = run_job_sh(dir.path(), launcher_bin(), &words, env);
            let what = describe(job, &words, env, &o);
            (o, what)
        };
        if runnable {
            for rerun in ["false", "true"] {
                let mut env = base.clone();
                env.insert("RERUN".into(), rerun.into());
                let (o, what) = run(&env);
                assert_eq!(o.status.code(), Some(0), "{what}");
                assert!(shown_pairs(&text(&o).0, job).is_some(), "{what}");
            }
        }
        for spec in p.descriptor.parameters {
            let var = jenkins::build_parameter_name(spec.name);
            let mut values = vec![String::new()];
            values.extend(examples(spec.kind));
            if matches!(spec.kind, ParamKind::Custom(_)) && values.len() == 1 {
                eprintln!(
                    "{job}: no example accepted by the validator of `{}` ({}): only empty is run",
                    spec.name, spec.kind
                );
            }
            for value in values {
                // A checkbox is never empty in Jenkins.
                if value.is_empty() && expected_build_param(spec).0 == "booleanParam" {
                    continue;
                }
                let mut env = base.clone();
                env.insert(var.clone(), value.clone());
                let (o, what) = run(&env);
                if value.is_empty() && spec.default == ParamDefault::Required {
                    assert_eq!(o.status.code(), Some(2), "{what}");
                    assert!(text(&o).1.contains(spec.name), "{what}");
                    continue;
                }
                if !runnable {
                    continue;
                }
                assert_eq!(o.status.code(), Some(0), "{what}");
                let shown = shown_pairs(&text(&o).0, job).unwrap_or_else(|| panic!("{what}"));
                let got = shown.get(spec.name).map(String::as_str);
                match (value.as_str(), spec.default) {
                    ("", ParamDefault::None) => assert_eq!(got, None, "{what}"),
                    ("", ParamDefault::Value(d)) => {
                        assert_eq!(got, Some(canonical(spec, d).as_str()), "{what}")
                    }
                    ("", _) => assert!(got.is_some_and(|v| !v.is_empty()), "{what}"),
                    (v, _) => assert_eq!(got, Some(canonical(spec, v).as_str()), "{what}"),
                }
            }
        }
    }
}

/// Sets each required parameter of `p`'s job in `env` to its first example; false when one has
/// none (then only refusals can be checked).
fn set_required(p: &JobPipeline, env: &mut BTreeMap<String, String>) -> bool {
    let mut runnable = true;
    for spec in p
        .descriptor
        .parameters
        .iter()
        .filter(|s| s.default == ParamDefault::Required)
    {
        match examples(spec.kind).first() {
            Some(v) => {
                env.insert(jenkins::build_parameter_name(spec.name), v.clone());
            }
            None => runnable = false,
        }
    }
    runnable
}

/// Each worker stage's call of the parallel pipeline `p`: (worker, words after run-job.sh).
fn worker_calls(p: &JobPipeline) -> Vec<(u32, Vec<String>)> {
    let code = p.code();
    let workers = p.parallel.expect("a parallel pipeline").workers();
    (1..=workers)
        .map(|i| {
            let stage = block(&code, &format!("stage('worker {i}')"))
                .unwrap_or_else(|| panic!("{}: no stage('worker {i}')", p.job()));
            let call = run_call(stage).unwrap_or_else(|e| panic!("{}: worker {i}: {e}", p.job()));
            (i, call)
        })
        .collect()
}

/// The environment worker `i` of `p` runs its call with: the build's `env` with the
/// `withEnv(['NAME=value', ...])` of its stage applied.
fn worker_env(p: &JobPipeline, i: u32, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let code = p.code();
    let stage = block(&code, &format!("stage('worker {i}')")).expect("the worker's stage");
    let mut env = env.clone();
    if let Some((_, rest)) = stage.split_once("withEnv([") {
        let list = rest.split("])").next().unwrap_or("");
        for item in list.split(',') {
            let item = item.trim().trim_matches('\'');
            let (name, value) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: withEnv item `{item}`", p.job()));
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    env
}

/// Every worker's launcher call of every job's parallel pipeline, through jenkins/run-job.sh
/// and the real binary with `--validate-only` (which takes `--join`, `--partitions` and
/// `--workers` as `run` does): untouched, with RERUN, and with every parameter set.
#[test]
fn every_parallel_worker_call_passes_validate_only() {
    let dir = tempfile::tempdir().unwrap();
    for p in parallel_pipelines(TEST_WORKERS, None) {
        let job = p.job();
        let mut base = build_environment(&p);
        if !set_required(&p, &mut base) {
            eprintln!("{job}: a required parameter has no example value: not run");
            continue;
        }
        let mut rerun = base.clone();
        rerun.insert("RERUN".into(), "true".into());
        let mut all_set = rerun.clone();
        let mut set = Vec::new();
        for spec in p.descriptor.parameters {
            if let Some(v) = examples(spec.kind).first() {
                all_set.insert(jenkins::build_parameter_name(spec.name), v.clone());
                set.push((spec, v.clone()));
            }
        }
        for (i, call) in worker_calls(&p) {
            let mut words = call;
            words.push("--validate-only".into());
            for (case, build) in [
                ("untouched", &base),
                ("RERUN", &rerun),
                ("every parameter set", &all_set),
            ] {
                let env = worker_env(&p, i, build);
                let o = run_job_sh(dir.path(), launcher_bin(), &words, &env);
                let what = format!("worker {i}, {case}: {}", describe(job, &words, &env, &o));
                assert_eq!(o.status.code(), Some(0), "{what}");
                let shown = shown_pairs(&text(&o).0, job).unwrap_or_else(|| panic!("{what}"));
                if case == "every parameter set" {
                    for (spec, v) in &set {
                        assert_eq!(
                            shown.get(spec.name).map(String::as_str),
                            Some(canonical(spec, v).as_str()),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}

/// The worker calls' flags are checked by the launcher: each misspelled, and `--partitions 0`
/// or `--workers 0`, is refused with exit 2.
#[test]
fn broken_parallel_worker_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for p in parallel_pipelines(TEST_WORKERS, None) {
        let job = p.job();
        let mut env = build_environment(&p);
        set_required(&p, &mut env);
        for (i, words) in worker_calls(&p) {
            let env = worker_env(&p, i, &env);
            let run = |words: &[String]| {
                let mut w = words.to_vec();
                w.push("--validate-only".into());
                let o = run_job_sh(dir.path(), launcher_bin(), &w, &env);
                let what = format!("worker {i}: {}", describe(job, &w, &env, &o));
                (o.status.code(), text(&o).1, what)
            };
            for f in (0..words.len()).filter(|&f| words[f].starts_with("--")) {
                let mut misspelled = words.clone();
                misspelled[f].pop();
                let (code, err, what) = run(&misspelled);
                assert_eq!(code, Some(2), "{what}");
                assert!(err.contains("unexpected argument"), "{what}");
            }
            for flag in ["--partitions", "--workers"] {
                let f = words.iter().position(|w| w == flag).expect(flag);
                let mut zero = words.clone();
                zero[f + 1] = "0".into();
                let (code, err, what) = run(&zero);
                assert_eq!(code, Some(2), "{what}");
                assert!(err.contains(flag), "{what}");
            }
        }
    }
}

/// The checks above can fail: a misspelled job, flag, credential variable or parameter
/// mapping, a malformed value of each parameter and a bad RERUN are refused with exit 2 through
/// the same script and binary.
#[test]
fn broken_pipeline_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for p in job_pipelines() {
        let job = p.job();
        let words: Vec<String> = run_call(&p.code()).unwrap();
        let mut env = build_environment(&p);
        for spec in p
            .descriptor
            .parameters
            .iter()
            .filter(|s| s.default == ParamDefault::Required)
        {
            if let Some(v) = examples(spec.kind).first() {
                env.insert(jenkins::build_parameter_name(spec.name), v.clone());
            }
        }
        let run = |words: &[String], env: &BTreeMap<String, String>| {
            let mut w = words.to_vec();
            w.push("--validate-only".into());
            let o = run_job_sh(dir.path(), launcher_bin(), &w, env);
            let what = describe(job, &w, env, &o);
            (o.status.code(), text(&o).1, what)
        };

        let mut misspelled_job = words.clone();
        misspelled_job[0].push('s');
        let (code, err, what) = run(&misspelled_job, &env);
        assert_eq!(code, Some(2), "{what}");
        assert!(err.contains("unknown job"), "{what}");

        for i in (0..words.len()).filter(|&i| words[i].starts_with("--")) {
            let mut misspelled_flag = words.clone();
            misspelled_flag[i].pop();
            let (code, err, what) = run(&misspelled_flag, &env);
            assert_eq!(code, Some(2), "{what}");
            assert!(err.contains("unexpected argument"), "{what}");
        }

        for spec in p.descriptor.parameters {
            let var = jenkins::build_parameter_name(spec.name);
            for bad in malformed(spec.kind) {
                let mut broken = env.clone();
                broken.insert(var.clone(), bad.clone());
                let (code, err, what) = run(&words, &broken);
                assert_eq!(code, Some(2), "{bad}: {what}");
                assert!(
                    err.contains(spec.name) && err.contains(&bad),
                    "{bad}: {what}"
                );
            }
            // A mapping to a name the job does not have is refused by the launcher.
            let mut unmapped = env.clone();
            let mapping = unmapped["JOB_PARAMS"].replacen(
                &format!("{var}={}", spec.name),
                &format!("{var}={}x", spec.name),
                1,
            );
            unmapped.insert("JOB_PARAMS".into(), mapping);
            unmapped.insert(
                var.clone(),
                examples(spec.kind).first().cloned().unwrap_or("x".into()),
            );
            let (code, err, what) = run(&words, &unmapped);
            assert_eq!(code, Some(2), "{what}");
            assert!(err.contains(&format!("{}x", spec.name)), "{what}");
        }

        let mut bad_rerun = env.clone();
        bad_rerun.insert("RERUN".into(), "maybe".into());
        let (code, err, what) = run(&words, &bad_rerun);
        assert_eq!(code, Some(2), "{what}");
        assert!(err.contains("RERUN"), "{what}");

        let settings: Vec<&String> = env.keys().filter(|k| k.starts_with("BATCH__")).collect();
        assert!(!settings.is_empty(), "{job}: no BATCH__ settings");
        for name in settings {
            let mut misspelled = env.clone();
            let value = misspelled.remove(name).unwrap();
            misspelled.insert(format!("{name}X"), value);
            let (code, err, what) = run(&words, &misspelled);
            assert_eq!(code, Some(2), "{what}");
            assert!(err.contains("invalid configuration"), "{what}");
        }
    }
}

/// A launcher stand-in in `dir` that writes its arguments, one a line, to `<itself>.args`.
/// A child shell makes the executable: had this multi-threaded process held it open for
/// writing, a concurrent fork (other tests start processes) could inherit that and the exec
/// fail with ETXTBSY. Arguments are written NUL-separated so newlines in values survive.
fn stub_launcher(dir: &Path) -> (PathBuf, PathBuf) {
    let source = dir.join("stub-launcher.sh");
    std::fs::write(&source, "#!/bin/sh\nprintf '%s\\0' \"$@\" > \"$0.args\"\n").unwrap();
    let stub = dir.join("stub-launcher");
    let made = Command::new("sh")
        .args(["-c", "cp \"$1\" \"$2\" && chmod 755 \"$2\"", "sh"])
        .args([&source, &stub])
        .status()
        .unwrap();
    assert!(made.success(), "making {}", stub.display());
    (stub, dir.join("stub-launcher.args"))
}

fn stub_args(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    String::from_utf8(bytes)
        .unwrap()
        .split_terminator('\0')
        .map(String::from)
        .collect()
}

/// run-job.sh passes every non-empty build parameter of every job's pipeline as one
/// `name=value` argument, in declaration order, then `--rerun`.
#[test]
fn run_job_sh_passes_each_pipelines_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, args_file) = stub_launcher(dir.path());
    for p in job_pipelines() {
        let job = p.job();
        let words = run_call(&p.code()).unwrap();
        let untouched = build_environment(&p);
        let mut all_set = untouched.clone();
        for spec in p.descriptor.parameters {
            let value = examples(spec.kind)
                .first()
                .cloned()
                .unwrap_or_else(|| "x".into());
            all_set.insert(jenkins::build_parameter_name(spec.name), value);
        }
        all_set.insert("RERUN".into(), "true".into());
        for env in [&untouched, &all_set] {
            let _ = std::fs::remove_file(&args_file);
            let o = run_job_sh(dir.path(), &stub, &words, env);
            let what = describe(job, &words, env, &o);
            assert_eq!(o.status.code(), Some(0), "{what}");
            let mut want: Vec<String> = ["--log-format", "json", "run"].map(String::from).to_vec();
            want.extend(words.iter().cloned());
            for spec in p.descriptor.parameters {
                let value = &env[&jenkins::build_parameter_name(spec.name)];
                if !value.is_empty() {
                    want.push(format!("{}={value}", spec.name));
                }
            }
            if env["RERUN"] == "true" {
                want.push("--rerun".into());
            }
            assert_eq!(stub_args(&args_file), want, "{what}");
        }
    }
}

/// run-job.sh passes each worker's call of every job's parallel pipeline through unchanged:
/// `--join --partitions P --workers 2 --result-file result-<i>.json`, the non-empty build
/// parameters, and `--rerun` from worker 1 only.
#[test]
fn run_job_sh_passes_each_parallel_workers_call() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, args_file) = stub_launcher(dir.path());
    for p in parallel_pipelines(TEST_WORKERS, None) {
        let job = p.job();
        let partitions = p.parallel.unwrap().partitions().to_string();
        let untouched = build_environment(&p);
        let mut all_set = untouched.clone();
        for spec in p.descriptor.parameters {
            let value = examples(spec.kind)
                .first()
                .cloned()
                .unwrap_or_else(|| "x".into());
            all_set.insert(jenkins::build_parameter_name(spec.name), value);
        }
        all_set.insert("RERUN".into(), "true".into());
        for (i, words) in worker_calls(&p) {
            for build in [&untouched, &all_set] {
                let env = worker_env(&p, i, build);
                let _ = std::fs::remove_file(&args_file);
                let o = run_job_sh(dir.path(), &stub, &words, &env);
                let what = format!("worker {i}: {}", describe(job, &words, &env, &o));
                assert_eq!(o.status.code(), Some(0), "{what}");
                let mut want: Vec<String> = [
                    "--log-format",
                    "json",
                    "run",
                    job,
                    "--join",
                    "--partitions",
                    &partitions,
                    "--workers",
                    "2",
                    "--result-file",
                    &jenkins::Parallel::result_file(i),
                ]
                .map(String::from)
                .to_vec();
                for spec in p.descriptor.parameters {
                    let value = &build[&jenkins::build_parameter_name(spec.name)];
                    if !value.is_empty() {
                        want.push(format!("{}={value}", spec.name));
                    }
                }
                if i == 1 && build["RERUN"] == "true" {
                    want.push("--rerun".into());
                }
                assert_eq!(stub_args(&args_file), want, "{what}");
            }
        }
    }
}

/// run-job.sh on its own: names with `.` and `-`, values that a shell would expand or split
/// arrive as single words and run nothing; a bad JOB_PARAMS entry or RERUN is exit 2, a
/// missing launcher 127; nothing prints the credentials; the script is executable.
#[test]
fn run_job_sh_passes_values_as_single_words() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, args_file) = stub_launcher(dir.path());
    let pwned = dir.path().join("pwned");
    let hostile = format!(
        "a  b $(touch {0}) `touch {0}` ; touch {0} * \"'\n-x",
        pwned.display()
    );
    let secret = "postgres://batch:very-secret@db.example.invalid/batch";
    let env: BTreeMap<String, String> = [
        ("JOB_PARAMS", "DAY=day A_B=a.b X_Y=x-y EMPTY=empty.one"),
        ("DAY", "2026-11-20"),
        ("A_B", hostile.as_str()),
        ("X_Y", "--rerun"),
        ("EMPTY", ""),
        ("RERUN", "false"),
        ("BATCH__DATABASE__URL", secret),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into_iter()
    .collect();
    let words = vec![
        "someJob".to_owned(),
        "--result-file".to_owned(),
        "r.json".to_owned(),
    ];
    let o = run_job_sh(dir.path(), &stub, &words, &env);
    let what = describe("someJob", &words, &env, &o);
    assert_eq!(o.status.code(), Some(0), "{what}");
    assert_eq!(
        stub_args(&args_file),
        [
            "--log-format",
            "json",
            "run",
            "someJob",
            "--result-file",
            "r.json",
            "day=2026-11-20",
            &format!("a.b={hostile}"),
            "x-y=--rerun",
        ],
        "{what}"
    );
    assert!(!pwned.exists(), "a value was executed");

    let mut outputs = vec![o];
    let mut refusals: Vec<(BTreeMap<String, String>, &str)> = Vec::new();
    for bad in [
        "DAY", "1X=day", "X=a b", "X=a;b", "X-Y=day", "=day", "X=", "*",
    ] {
        let mut e = env.clone();
        e.insert("JOB_PARAMS".into(), format!("DAY=day {bad}"));
        refusals.push((e, "JOB_PARAMS"));
    }
    let mut bad_rerun = env.clone();
    bad_rerun.insert("RERUN".into(), "yes".into());
    refusals.push((bad_rerun, "RERUN"));
    for (e, mentions) in refusals {
        let o = run_job_sh(dir.path(), &stub, &words, &e);
        let what = describe("someJob", &words, &e, &o);
        assert_eq!(o.status.code(), Some(2), "{what}");
        assert!(text(&o).1.contains(mentions), "{what}");
        outputs.push(o);
    }
    let o = run_job_sh(dir.path(), &dir.path().join("no-launcher"), &words, &env);
    let what = describe("someJob", &words, &env, &o);
    assert_eq!(o.status.code(), Some(127), "{what}");
    assert!(text(&o).1.contains("no launcher"), "{what}");
    outputs.push(o);
    let o = run_job_sh(dir.path(), &stub, &[], &env);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    outputs.push(o);
    // Nothing here printed the environment.
    for o in &outputs {
        let (out, err) = text(o);
        assert!(
            !out.contains("very-secret") && !err.contains("very-secret"),
            "{out}{err}"
        );
    }
    let script = std::fs::metadata(workspace_root().join("jenkins/run-job.sh")).unwrap();
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&script.permissions()) & 0o111 == 0o111,
        "jenkins/run-job.sh must be executable (git mode 100755): Jenkins runs the file itself"
    );
}
