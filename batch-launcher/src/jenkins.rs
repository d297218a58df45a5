//! `batch-launcher jenkinsfile <JOB>`: the Jenkins pipeline of a job, generated from what the
//! launcher knows about it, so no pipeline is written (or copied) by hand.
//!
//! [`generate`] is a pure function of a [`PipelineInput`]: the job's descriptor (its name and
//! declared parameters), the deployment settings of its module
//! ([`JobModule::deployment_settings`]), its `[schedule]` entry and `batch.timezone`. The pipeline
//! it writes:
//!
//! - a `cron` trigger with `TZ=<batch.timezone>` at the time of the job's schedule (Jenkins'
//!   five fields: the seconds dropped, days of the week renumbered), or none when the schedule is
//!   off or absent, or when a parameter is required (a scheduled build without it would fail);
//! - `disableConcurrentBuilds()`, a timeout, a build discarder, timestamps;
//! - one build parameter per declared job parameter (see [`build_parameter_name`] for the
//!   names), plus `RERUN`; an empty one means the job's own default;
//! - `BATCH__DATABASE__URL` and one `BATCH__<SECTION>__<KEY>` per deployment setting, each from a
//!   Jenkins credential (see [`credential`]);
//! - `JOB_PARAMS`, the build parameter → job parameter mapping `jenkins/run-job.sh` reads;
//! - a Build stage (the release launcher), a Run stage calling
//!   `jenkins/run-job.sh <JOB> --result-file result.json` with the exit code mapped to a build
//!   result (0 SUCCESS, 3 UNSTABLE, 4 NOT_BUILT, 2 and anything else an error), `result.json`
//!   archived and summarized in a Slack message for every outcome.
//!
//! `batch-launcher/tests/pipelines.rs` generates the pipeline of every registered job, checks it
//! and runs its launcher call with `--validate-only`, and checks that the checked-in pipelines
//! (`Jenkinsfile`, `jenkins/*.Jenkinsfile`) are this generator's output. jenkins/README.md
//! describes the set-up.
//!
//! [`JobModule::deployment_settings`]: batch_common::module::JobModule::deployment_settings

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use batch_common::ExitCode;
use batch_common::config::BatchProperties;
use batch_common::job::{JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use chrono_tz::Tz;

use crate::launch::{LaunchFailure, UsageError};
use crate::modules::Registry;

/// The result file the pipeline's launcher call writes, archives and summarizes.
pub const RESULT_FILE: &str = "result.json";

/// The build's time limit (a cold release build plus the run with its step retries).
pub const TIMEOUT_MINUTES: u32 = 180;

/// The environment variable holding the pipeline's `BUILD_PARAMETER=job.parameter` words,
/// which `jenkins/run-job.sh` reads.
pub const JOB_PARAMS_VAR: &str = "JOB_PARAMS";

/// The build parameter for `--rerun`.
pub const RERUN_PARAM: &str = "RERUN";

/// The setting every job needs from the deployment.
pub const DATABASE_SETTING: &str = "database.url";

/// The prefix of a build parameter whose plain name is taken (see [`build_parameter_name`]).
pub const RESERVED_PREFIX: &str = "PARAM_";

/// Names a build parameter must not have: Jenkins exports build parameters as environment
/// variables, so one of these would change what the shell, Jenkins, the pipeline, run-job.sh or
/// the launcher see.
const RESERVED_NAMES: &[&str] = &[
    "_",
    "CDPATH",
    "CI",
    "ENV",
    "EXECUTOR_NUMBER",
    "HOME",
    "HOSTNAME",
    "IFS",
    "LANG",
    "LANGUAGE",
    "LAUNCHER",
    "LINENO",
    "LOGNAME",
    "MAIL",
    "OLDPWD",
    "OPTARG",
    "OPTIND",
    "PATH",
    "PPID",
    "PS1",
    "PS2",
    "PS4",
    "PWD",
    RERUN_PARAM,
    "SHELL",
    "STAGE_NAME",
    "TERM",
    "TMPDIR",
    "TZ",
    "USER",
    "WORKSPACE",
];

/// Prefixes of the same (`BATCH_` covers the launcher's `BATCH_CONFIG`, `BATCH_LOG_FORMAT` and
/// every `BATCH__SECTION__KEY`; `JOB_` covers `JOB_PARAMS` and Jenkins' `JOB_NAME`, ...).
const RESERVED_PREFIXES: &[&str] = &[
    "BATCH_",
    "BRANCH_",
    "BUILD_",
    "CARGO",
    "CHANGE_",
    "DYLD_",
    "GIT_",
    "HUDSON_",
    "JENKINS_",
    "JOB_",
    "LC_",
    "LD_",
    "NODE_",
    RESERVED_PREFIX,
    "RUST",
    "SLACK_",
    "WORKSPACE_",
];

/// The Jenkins build parameter (and so the environment variable) of the job parameter `name`:
/// `name` uppercased with `.` and `-` as `_` (`date` → `DATE`, `page-size` → `PAGE_SIZE`),
/// or that with the prefix `PARAM_` when it would start with a digit or is a name the shell,
/// Jenkins, the pipeline or the launcher use (`path` → `PARAM_PATH`, `rerun` → `PARAM_RERUN`,
/// `batch.size` → `PARAM_BATCH_SIZE`). Job parameter names are `[A-Za-z0-9_.-]`, so the result is a
/// valid shell variable name; two parameters of one job that differ only in case or in `.`, `-`
/// and `_` map to the same name, which [`generate`] refuses.
pub fn build_parameter_name(name: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    let reserved = base.is_empty()
        || base.starts_with(|c: char| c.is_ascii_digit())
        || RESERVED_NAMES.contains(&base.as_str())
        || RESERVED_PREFIXES.iter().any(|p| base.starts_with(p));
    if reserved {
        format!("{RESERVED_PREFIX}{base}")
    } else {
        base
    }
}

/// A deployment setting bound from a Jenkins *Secret text* credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The setting, e.g. `asset.api_token`.
    pub setting: String,
    /// Its environment variable, e.g. `BATCH__ASSET__API_TOKEN`.
    pub env_var: String,
    /// The Jenkins credential id, e.g. `batch-asset-api-token`.
    pub id: String,
}

/// The credential of a setting `section.key`: the variable `BATCH__<SECTION>__<KEY>` (uppercased,
/// each `.` a `__`) and the id `batch-<section>-<key>` (each `.` and `_` a `-`):
/// `redis.url` → `BATCH__REDIS__URL` from `batch-redis-url`.
pub fn credential(setting: &str) -> Result<Credential, String> {
    let parts: Vec<&str> = setting.split('.').collect();
    let valid = parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if !valid {
        return Err(format!(
            "deployment setting `{setting}` is not `section.key` (lowercase letters, digits, `_`)"
        ));
    }
    Ok(Credential {
        setting: setting.to_owned(),
        env_var: format!("BATCH__{}", parts.join("__").to_ascii_uppercase()),
        id: format!("batch-{}", setting.replace(['.', '_'], "-")),
    })
}

/// What a pipeline is generated from.
#[derive(Debug, Clone, Copy)]
pub struct PipelineInput<'a> {
    /// The job.
    pub descriptor: &'a JobDescriptor,
    /// Its module's deployment settings, besides `database.url`.
    pub deployment_settings: &'a [&'a str],
    /// Its `[schedule]` cron (6 fields with seconds, 5 or 7 accepted), `None` when off or absent.
    pub schedule: Option<&'a str>,
    /// `batch.timezone`, in which the schedule is read.
    pub timezone: Tz,
}

/// One cron field: its range and the names it accepts (as the `cron` crate reads them).
struct CronField {
    what: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [(&'static str, u32)],
    any: bool,
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("january", 1),
    ("feb", 2),
    ("february", 2),
    ("mar", 3),
    ("march", 3),
    ("apr", 4),
    ("april", 4),
    ("may", 5),
    ("jun", 6),
    ("june", 6),
    ("jul", 7),
    ("july", 7),
    ("aug", 8),
    ("august", 8),
    ("sep", 9),
    ("september", 9),
    ("oct", 10),
    ("october", 10),
    ("nov", 11),
    ("november", 11),
    ("dec", 12),
    ("december", 12),
];

/// Days of the week as `[schedule]` numbers them: 1 = Sunday ... 7 = Saturday.
const DAY_NAMES: &[(&str, u32)] = &[
    ("sun", 1),
    ("sunday", 1),
    ("mon", 2),
    ("monday", 2),
    ("tue", 3),
    ("tues", 3),
    ("tuesday", 3),
    ("wed", 4),
    ("wednesday", 4),
    ("thu", 5),
    ("thurs", 5),
    ("thursday", 5),
    ("fri", 6),
    ("friday", 6),
    ("sat", 7),
    ("saturday", 7),
];

const SECONDS: CronField = CronField {
    what: "second",
    lo: 0,
    hi: 59,
    names: &[],
    any: false,
};
const MINUTES: CronField = CronField {
    what: "minute",
    lo: 0,
    hi: 59,
    names: &[],
    any: false,
};
const HOURS: CronField = CronField {
    what: "hour",
    lo: 0,
    hi: 23,
    names: &[],
    any: false,
};
const DAYS_OF_MONTH: CronField = CronField {
    what: "day of month",
    lo: 1,
    hi: 31,
    names: &[],
    any: true,
};
const MONTHS: CronField = CronField {
    what: "month",
    lo: 1,
    hi: 12,
    names: MONTH_NAMES,
    any: false,
};
const DAYS_OF_WEEK: CronField = CronField {
    what: "day of week",
    lo: 1,
    hi: 7,
    names: DAY_NAMES,
    any: true,
};

impl CronField {
    fn value(&self, text: &str) -> Result<u32, String> {
        let v = if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
            text.parse::<u32>().map_err(|e| format!("`{text}`: {e}"))?
        } else {
            let lower = text.to_ascii_lowercase();
            self.names
                .iter()
                .find(|(n, _)| *n == lower)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("`{text}` is not a {}", self.what))?
        };
        if !(self.lo..=self.hi).contains(&v) {
            return Err(format!(
                "{} {v} is not in {}..={}",
                self.what, self.lo, self.hi
            ));
        }
        Ok(v)
    }

    /// The values a field of `[schedule]` matches.
    fn values(&self, text: &str) -> Result<BTreeSet<u32>, String> {
        let mut set = BTreeSet::new();
        for item in text.split(',') {
            let (base, step) = match item.split_once('/') {
                Some((b, s)) => {
                    let step = s
                        .parse::<u32>()
                        .ok()
                        .filter(|s| (1..=self.hi).contains(s))
                        .ok_or_else(|| format!("step `{s}` of the {} field", self.what))?;
                    (b, Some(step))
                }
                None => (item, None),
            };
            let (start, end) = match base {
                "*" => (self.lo, self.hi),
                "?" if self.any => (self.lo, self.hi),
                b => match b.split_once('-') {
                    Some((a, z)) => (self.value(a)?, self.value(z)?),
                    // `5/15`: from 5 to the end, every 15.
                    None if step.is_some() => (self.value(b)?, self.hi),
                    None => {
                        let v = self.value(b)?;
                        (v, v)
                    }
                },
            };
            if start > end {
                return Err(format!("{} range `{base}` is empty", self.what));
            }
            set.extend((start..=end).step_by(step.unwrap_or(1) as usize));
        }
        Ok(set)
    }
}

/// A set of values in Jenkins' syntax over `lo..=hi`: `*`, `*/n`, or runs (`1-5,7`).
fn jenkins_field(set: &BTreeSet<u32>, lo: u32, hi: u32, step_syntax: bool) -> String {
    let all: BTreeSet<u32> = (lo..=hi).collect();
    if *set == all {
        return "*".to_owned();
    }
    let values: Vec<u32> = set.iter().copied().collect();
    if step_syntax && values.len() >= 2 && values[0] == lo {
        let step = values[1] - values[0];
        let progression: BTreeSet<u32> = (lo..=hi).step_by(step as usize).collect();
        if step >= 2 && *set == progression {
            return format!("*/{step}");
        }
    }
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => runs.push(values[i].to_string()),
            1 => runs.push(format!("{},{}", values[i], values[j])),
            _ => runs.push(format!("{}-{}", values[i], values[j])),
        }
        i = j + 1;
    }
    runs.join(",")
}

/// A `[schedule]` cron expression (`sec min hour day-of-month month day-of-week [year]`, or the
/// five Unix fields) as Jenkins' five fields, firing at the same minutes: the seconds dropped (a
/// schedule firing more than once a minute is refused), days of the week renumbered (Jenkins:
/// 0 = Sunday; `[schedule]`: 1 = Sunday), names as numbers, a year other than `*` refused. Both
/// match a time when every field matches.
pub fn jenkins_cron(expression: &str) -> Result<String, String> {
    batch_common::schedule::CronSchedule::parse(expression)
        .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))?;
    let mut fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() == 5 {
        fields.insert(0, "0");
    }
    if let Some(year) = fields.get(6)
        && *year != "*"
    {
        return Err(format!(
            "`{expression}`: Jenkins' cron has no year field (only `*` can be translated)"
        ));
    }
    let seconds = SECONDS.values(fields[0])?;
    if seconds.len() != 1 {
        return Err(format!(
            "`{expression}` fires more than once a minute, which Jenkins' cron cannot"
        ));
    }
    let days_of_week: BTreeSet<u32> = DAYS_OF_WEEK
        .values(fields[5])?
        .into_iter()
        .map(|d| d - 1)
        .collect();
    Ok([
        jenkins_field(&MINUTES.values(fields[1])?, 0, 59, true),
        jenkins_field(&HOURS.values(fields[2])?, 0, 23, true),
        jenkins_field(&DAYS_OF_MONTH.values(fields[3])?, 1, 31, true),
        jenkins_field(&MONTHS.values(fields[4])?, 1, 12, true),
        // Jenkins reads `*/n` here over 0..=7 (7 is Sunday again): runs only.
        jenkins_field(&days_of_week, 0, 6, false),
    ]
    .join(" "))
}

/// `text` as a Groovy single-quoted string literal (no interpolation).
pub fn groovy_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `text` on one comment line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the build parameter of `spec` says about it: the job parameter, its kind, whether it
/// identifies the job instance, its description, and what an empty value means.
fn parameter_description(spec: &ParameterSpec) -> String {
    let mut text = format!(
        "{} ({}{})",
        spec.name,
        spec.kind,
        if spec.identifying {
            ", identifying"
        } else {
            ""
        }
    );
    let description = one_line(spec.description);
    if !description.is_empty() {
        text.push_str(": ");
        text.push_str(&description);
    }
    if !text.ends_with('.') {
        text.push('.');
    }
    match (boolean_default(spec), spec.default) {
        (Some(_), default) => {
            let _ = write!(text, " Default: {default} (the job's default).");
        }
        (None, ParamDefault::Required) => {
            text.push_str(" Required: a build without it is refused (exit 2).")
        }
        (None, ParamDefault::None) => {
            text.push_str(" Empty: not passed (default: unset, the job's own handling).")
        }
        (None, default) => {
            let _ = write!(text, " Empty: the job's default, {default}.");
        }
    }
    one_line(&text)
}

/// The default of a Bool parameter with a `true`/`false` default: a checkbox. Other Bool
/// parameters (unset or required by default) are a choice with an empty first entry.
fn boolean_default(spec: &ParameterSpec) -> Option<bool> {
    match (spec.kind, spec.default) {
        (ParamKind::Bool, ParamDefault::Value(v)) => {
            batch_common::params::parse_bool(spec.name, v).ok()
        }
        _ => None,
    }
}

/// One build parameter's declaration, indented for the `parameters` block.
fn build_parameter(spec: &ParameterSpec, name: &str) -> String {
    let description = groovy_string(&parameter_description(spec));
    let choices = |names: &[&str]| {
        let mut all = vec![groovy_string("")];
        all.extend(names.iter().map(|n| groovy_string(n)));
        all.join(", ")
    };
    if let Some(default) = boolean_default(spec) {
        return format!(
            "        booleanParam(name: '{name}', defaultValue: {default},\n                     description: {description})\n"
        );
    }
    match spec.kind {
        ParamKind::OneOf(names) => format!(
            "        choice(name: '{name}', choices: [{}],\n               description: {description})\n",
            choices(names)
        ),
        ParamKind::Bool => format!(
            "        choice(name: '{name}', choices: [{}],\n               description: {description})\n",
            choices(&["true", "false"])
        ),
        // Text is passed as typed; the other kinds are trimmed like the launcher trims them.
        kind => format!(
            "        string(name: '{name}', defaultValue: '', trim: {},\n               description: {description})\n",
            !matches!(kind, ParamKind::Text | ParamKind::Custom(_))
        ),
    }
}

/// The build parameters of a job: (job parameter, build parameter), in declaration order. Two
/// job parameters with one build parameter are an error.
pub fn build_parameters(descriptor: &JobDescriptor) -> Result<Vec<(&'static str, String)>, String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for spec in descriptor.parameters {
        let valid = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(format!(
                "{}: parameter name `{}` is not [A-Za-z0-9_.-]",
                descriptor.name, spec.name
            ));
        }
        let name = build_parameter_name(spec.name);
        if let Some(other) = seen.insert(name.clone(), spec.name) {
            return Err(format!(
                "{}: parameters `{other}` and `{}` would both be the build parameter {name}: rename one",
                descriptor.name, spec.name
            ));
        }
        out.push((spec.name, name));
    }
    Ok(out)
}

/// The credentials a job's pipeline binds: `database.url`, then each deployment setting.
pub fn credentials(deployment_settings: &[&str]) -> Result<Vec<Credential>, String> {
    let mut out: Vec<Credential> = Vec::new();
    for setting in std::iter::once(&DATABASE_SETTING).chain(deployment_settings) {
        let c = credential(setting)?;
        if out.iter().any(|o| o.setting == c.setting) {
            continue;
        }
        if let Some(o) = out.iter().find(|o| o.id == c.id || o.env_var == c.env_var) {
            return Err(format!(
                "deployment settings `{}` and `{}` would share the credential {} / {}",
                o.setting, c.setting, c.id, c.env_var
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// The job's pipeline (a declarative Jenkinsfile), or why it cannot be generated (a schedule
/// Jenkins' cron cannot express, parameter names that clash, a malformed deployment setting).
pub fn generate(input: &PipelineInput<'_>) -> Result<String, String> {
    let d = input.descriptor;
    let job = d.name;
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("job name `{job}` must be letters and digits only"));
    }
    let params = build_parameters(d)?;
    let creds = credentials(input.deployment_settings)?;
    let tz = input.timezone.name();
    let required: Vec<&str> = d
        .parameters
        .iter()
        .filter(|p| p.default == ParamDefault::Required)
        .map(|p| p.name)
        .collect();
    let identifying: Vec<&str> = d
        .parameters
        .iter()
        .zip(&params)
        .filter(|(p, _)| p.identifying)
        .map(|(_, (_, b))| b.as_str())
        .collect();
    let restart = match identifying.as_slice() {
        [] => "the next build restarts it".to_owned(),
        [one] => format!("a build with its {one} from result.json restarts it"),
        [init @ .., last] => format!(
            "a build with its {} and {last} from result.json restarts it",
            init.join(", ")
        ),
    };
    let regenerate = format!("batch-launcher jenkinsfile {job}");

    let mut o = String::new();
    let w = &mut o;
    // Header.
    let _ = writeln!(
        w,
        "// GENERATED by `{regenerate}`; do not edit. Change the job (its"
    );
    let _ = writeln!(
        w,
        "// descriptor and module) or the generator (batch-launcher/src/jenkins.rs), then regenerate"
    );
    let _ = writeln!(
        w,
        "// from the workspace root with no BATCH_* variables and no config file (the built-in defaults):"
    );
    let _ = writeln!(
        w,
        "//   cargo run -q -p batch-launcher -- jenkinsfile {job} > <this file>"
    );
    let _ = writeln!(
        w,
        "// batch-launcher/tests/pipelines.rs fails while a checked-in pipeline differs from that output."
    );
    let _ = writeln!(w, "//");
    let _ = writeln!(w, "// {job}: {}", one_line(d.description));
    let _ = writeln!(
        w,
        "// Set-up, plugins, credentials, parameters and the exit-code mapping: jenkins/README.md."
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "// Set in `post {{ always }}`, which runs before the other post conditions; read by the Slack messages."
    );
    let _ = writeln!(w, "def summary = 'no summary'");
    let _ = writeln!(w);
    let _ = writeln!(w, "pipeline {{");
    let _ = writeln!(w, "    agent any");
    let _ = writeln!(w);

    // Trigger.
    match (input.schedule, required.as_slice()) {
        (Some(cron), []) => {
            let jenkins = jenkins_cron(cron).map_err(|e| format!("[schedule] {job}: {e}"))?;
            let _ = writeln!(w, "    triggers {{");
            let _ = writeln!(
                w,
                "        // [schedule] {job} = \"{cron}\" in batch.timezone, as Jenkins cron: minute hour"
            );
            let _ = writeln!(
                w,
                "        // day-of-month month day-of-week (0 = Sunday), in the TZ of the first line."
            );
            let _ = writeln!(w, "        cron('TZ={tz}\\n{jenkins}')");
            let _ = writeln!(w, "    }}");
        }
        (Some(cron), required) => {
            let _ = writeln!(
                w,
                "    // No cron trigger although [schedule] {job} = \"{cron}\": {} required (no default),",
                required
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if required.len() == 1 { " is" } else { " are" }
            );
            let _ = writeln!(
                w,
                "    // so a scheduled build would always fail. Start builds with parameters."
            );
        }
        (None, _) => {
            let _ = writeln!(
                w,
                "    // No cron trigger: [schedule] {job} is off or absent. Start builds by hand."
            );
        }
    }
    let _ = writeln!(w);

    // Options.
    let _ = writeln!(w, "    options {{");
    let _ = writeln!(w, "        disableConcurrentBuilds()");
    let _ = writeln!(
        w,
        "        // Build (a cold release build takes a while) and run, with the job's step retries."
    );
    let _ = writeln!(
        w,
        "        timeout(time: {TIMEOUT_MINUTES}, unit: 'MINUTES')"
    );
    let _ = writeln!(
        w,
        "        buildDiscarder(logRotator(numToKeepStr: '90', artifactNumToKeepStr: '30'))"
    );
    let _ = writeln!(w, "        timestamps()");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w);

    // Parameters.
    let _ = writeln!(w, "    parameters {{");
    let _ = writeln!(
        w,
        "        // One per job parameter, passed as name=value when not empty (jenkins/run-job.sh)."
    );
    for (spec, (_, name)) in d.parameters.iter().zip(&params) {
        w.push_str(&build_parameter(spec, name));
    }
    let _ = writeln!(
        w,
        "        booleanParam(name: '{RERUN_PARAM}', defaultValue: false,"
    );
    let _ = writeln!(
        w,
        "                     description: 'Run a COMPLETED job instance again from the start (--rerun).')"
    );
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w);

    // Environment.
    let mapping: Vec<String> = params.iter().map(|(p, b)| format!("{b}={p}")).collect();
    let _ = writeln!(w, "    environment {{");
    let _ = writeln!(
        w,
        "        // database.url and the deployment settings of the job's module, from credentials."
    );
    for c in &creds {
        let _ = writeln!(w, "        {} = credentials('{}')", c.env_var, c.id);
    }
    let _ = writeln!(
        w,
        "        // Build parameter=job parameter, for jenkins/run-job.sh."
    );
    let _ = writeln!(w, "        {JOB_PARAMS_VAR} = '{}'", mapping.join(" "));
    let _ = writeln!(w, "        SLACK_CHANNEL = '#batch'");
    let _ = writeln!(w, "        SLACK_CREDENTIALS_ID = 'batch-slack-token'");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w);

    // Stages.
    let _ = write!(
        w,
        r#"    stages {{
        stage('Build') {{
            steps {{
                sh 'cargo build --release --locked -p batch-launcher'
            }}
        }}
        stage('Run') {{
            steps {{
                // A {RESULT_FILE} from an earlier build must not be archived or reported as this one's.
                sh 'rm -f {RESULT_FILE}'
                script {{
                    int code = sh(returnStatus: true, label: 'batch-launcher run', script: 'jenkins/run-job.sh {job} --result-file {RESULT_FILE}')
                    switch (code) {{
                        case 0: echo '{job} completed, or had nothing to do (exit 0)'; break
                        case 3: unstable('{job} completed with item failures (exit 3): see {RESULT_FILE}'); break
                        case 4: currentBuild.result = 'NOT_BUILT'; echo '{job} refused (exit 4): this job instance is already running elsewhere (serve, another machine or a manual run), which reports its own outcome'; break
                        case 2: error('{job} not run: usage, configuration or parameter error (exit 2), see the log'); break
                        default: error("{job} failed (exit ${{code}}): see the log and {RESULT_FILE}; {restart}")
                    }}
                }}
            }}
        }}
    }}

    post {{
        always {{
            archiveArtifacts artifacts: '{RESULT_FILE}', allowEmptyArchive: true
            script {{ summary = resultSummary() }}
        }}
        success {{
            slackSend(channel: env.SLACK_CHANNEL, tokenCredentialId: env.SLACK_CREDENTIALS_ID, color: 'good',
                      message: "{job} succeeded: ${{env.JOB_NAME}} #${{env.BUILD_NUMBER}} (${{env.BUILD_URL}})\n${{summary}}")
        }}
        unstable {{
            slackSend(channel: env.SLACK_CHANNEL, tokenCredentialId: env.SLACK_CREDENTIALS_ID, color: 'warning',
                      message: "{job} completed with item failures: ${{env.JOB_NAME}} #${{env.BUILD_NUMBER}} (${{env.BUILD_URL}})\n${{summary}}")
        }}
        notBuilt {{
            slackSend(channel: env.SLACK_CHANNEL, tokenCredentialId: env.SLACK_CREDENTIALS_ID, color: 'warning',
                      message: "{job} not run, already running elsewhere: ${{env.JOB_NAME}} #${{env.BUILD_NUMBER}} (${{env.BUILD_URL}})\n${{summary}}")
        }}
        failure {{
            slackSend(channel: env.SLACK_CHANNEL, tokenCredentialId: env.SLACK_CREDENTIALS_ID, color: 'danger',
                      message: "{job} FAILED: ${{env.JOB_NAME}} #${{env.BUILD_NUMBER}} (${{env.BUILD_URL}})\n${{summary}}")
        }}
        aborted {{
            slackSend(channel: env.SLACK_CHANNEL, tokenCredentialId: env.SLACK_CREDENTIALS_ID, color: 'danger',
                      message: "{job} aborted (timeout or by hand; {restart}): ${{env.JOB_NAME}} #${{env.BUILD_NUMBER}} (${{env.BUILD_URL}})\n${{summary}}")
        }}
    }}
}}

/** A few lines about {RESULT_FILE} for Slack, or why there are none. Never fails the build. */
String resultSummary() {{
    try {{
        if (!fileExists('{RESULT_FILE}')) {{
            return 'no {RESULT_FILE}: the launcher stopped before writing it (see the console log)'
        }}
        return formatResult(readJSON(file: '{RESULT_FILE}'))
    }} catch (Exception e) {{
        return "{RESULT_FILE} could not be read: ${{e.message}}"
    }}
}}

@NonCPS
String formatResult(Map r) {{
    def lines = ["${{r.job_name}} ${{r.parameters}} ${{r.status}} (${{r.exit_code}}) in ${{r.duration_ms}} ms"]
    if (r.message) {{
        String m = r.message.toString()
        lines << (m.length() > 500 ? m.substring(0, 500) + '...' : m)
    }}
    r.steps.each {{ s ->
        def counters = s.counters.collect {{ k, v -> "${{k}}=${{v}}" }}.join(' ')
        lines << "- ${{s.name}}: ${{s.status}} read=${{s.read_count}} written=${{s.write_count}} skipped=${{s.skip_count}} ${{counters}}".trim()
    }}
    if (r.item_failures) {{
        lines << "item failures: ${{r.item_failures}}"
    }}
    return lines.join('\n')
}}
"#
    );
    Ok(o)
}

/// The pipeline of `job` as `registry` and the effective configuration `props` define it
/// (its module's deployment settings, `[schedule]`, `batch.timezone`). An unknown job is a
/// [`LaunchFailure::UnknownJob`], a pipeline that cannot be generated a [`UsageError`]: exit 2.
pub fn pipeline_for(
    registry: &Registry,
    props: &BatchProperties,
    job: &str,
) -> anyhow::Result<String> {
    let (Some(registration), Some(module)) = (registry.find(job), registry.module_of(job)) else {
        return Err(LaunchFailure::UnknownJob {
            name: job.to_owned(),
            known: registry.names(),
        }
        .into());
    };
    let input = PipelineInput {
        descriptor: registration.descriptor,
        deployment_settings: module.deployment_settings(),
        schedule: props.schedule_for(job),
        timezone: props.batch.timezone,
    };
    generate(&input).map_err(|e| UsageError(format!("no pipeline for {job}: {e}")).into())
}

/// `jenkinsfile <JOB> [--output PATH]`: prints the pipeline, or writes it to PATH.
pub fn jenkinsfile_cmd(
    registry: &Registry,
    props: &BatchProperties,
    job: &str,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let pipeline = pipeline_for(registry, props, job)?;
    match output {
        None => print!("{pipeline}"),
        Some(path) => {
            std::fs::write(path, &pipeline)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote the pipeline of {job} to {}", path.display());
        }
    }
    Ok(ExitCode::Completed)
}

#[cfg(test)]
mod pipelines_tests {
    use std::collections::BTreeSet;

    use batch_common::job::Validator;
    use batch_common::schedule::CronSchedule;
    use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

    use super::*;

    #[test]
    fn build_parameter_names() {
        for (job_param, build_param) in [
            ("date", "DATE"),
            ("verify", "VERIFY"),
            ("page-size", "PAGE_SIZE"),
            ("batch-size", "PARAM_BATCH_SIZE"),
            ("a.b", "A_B"),
            ("Mode_2", "MODE_2"),
            ("path", "PARAM_PATH"),
            ("rerun", "PARAM_RERUN"),
            ("launcher", "PARAM_LAUNCHER"),
            ("job.params", "PARAM_JOB_PARAMS"),
            ("job_name", "PARAM_JOB_NAME"),
            ("batch.config", "PARAM_BATCH_CONFIG"),
            ("batch_", "PARAM_BATCH_"),
            ("ld.preload", "PARAM_LD_PRELOAD"),
            ("param.x", "PARAM_PARAM_X"),
            ("2fa", "PARAM_2FA"),
            ("_", "PARAM__"),
            ("tz", "PARAM_TZ"),
        ] {
            assert_eq!(build_parameter_name(job_param), build_param, "{job_param}");
        }
        // Every result is a shell variable name that is not reserved.
        for name in ["x", "path", "2fa", "job-x", "a.b-c_d", "slack.channel"] {
            let b = build_parameter_name(name);
            assert!(
                b.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                    && b.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{b}"
            );
            assert!(!RESERVED_NAMES.contains(&b.as_str()), "{b}");
        }
    }

    #[test]
    fn credentials_of_settings() {
        assert_eq!(
            credential("asset.api_base_url").unwrap(),
            Credential {
                setting: "asset.api_base_url".into(),
                env_var: "BATCH__ASSET__API_BASE_URL".into(),
                id: "batch-asset-api-base-url".into(),
            }
        );
        assert_eq!(credential("redis.url").unwrap().id, "batch-redis-url");
        assert!(credential("url").is_err());
        assert!(credential("Redis.url").is_err());
        assert!(credential("redis..url").is_err());
        let all = credentials(&["redis.url", "database.url"]).unwrap();
        assert_eq!(
            all.iter().map(|c| c.env_var.as_str()).collect::<Vec<_>>(),
            ["BATCH__DATABASE__URL", "BATCH__REDIS__URL"]
        );
        assert!(credentials(&["a.b_c", "a_b.c"]).is_err());
    }

    #[test]
    fn groovy_strings_are_escaped() {
        assert_eq!(groovy_string("it's $x \\ \n"), r"'it\'s $x \\ \n'");
    }

    /// Whether Jenkins' cron `fields` (minute hour dom month dow, dow 0..=7) match `t`.
    fn jenkins_matches(fields: &str, t: DateTime<Utc>) -> bool {
        let f: Vec<&str> = fields.split(' ').collect();
        let matches = |field: &str, v: u32, lo: u32, hi: u32| {
            field.split(',').any(|item| {
                let (base, step) = match item.split_once('/') {
                    Some((b, s)) => (b, s.parse::<u32>().unwrap()),
                    None => (item, 1),
                };
                let (a, z) = match base {
                    "*" => (lo, hi),
                    b => match b.split_once('-') {
                        Some((a, z)) => (a.parse().unwrap(), z.parse().unwrap()),
                        None => {
                            let n = b.parse().unwrap();
                            (n, n)
                        }
                    },
                };
                (a..=z).step_by(step as usize).any(|x| x == v)
            })
        };
        let dow = t.weekday().num_days_from_sunday();
        matches(f[0], t.minute(), 0, 59)
            && matches(f[1], t.hour(), 0, 23)
            && matches(f[2], t.day(), 1, 31)
            && matches(f[3], t.month(), 1, 12)
            && (matches(f[4], dow, 0, 7) || (dow == 0 && matches(f[4], 7, 0, 7)))
    }

    /// Jenkins' translation fires at the same minutes as `[schedule]` over 400 days.
    #[test]
    fn jenkins_cron_fires_when_the_schedule_does() {
        for (schedule, want) in [
            ("0 0 1 * * *", "0 1 * * *"),
            ("0 0 4 * * *", "0 4 * * *"),
            ("0 30 2 * * ?", "30 2 * * *"),
            ("15 0 1 * * *", "0 1 * * *"),
            ("0 */15 * * * *", "*/15 * * * *"),
            ("0 5/20 9-17 * * *", "5,25,45 9-17 * * *"),
            ("0 0 6 * * MON-FRI", "0 6 * * 1-5"),
            ("0 0 6 * * 2-6", "0 6 * * 1-5"),
            ("0 0 6 * * Sun,Sat", "0 6 * * 0,6"),
            ("0 0 6 * * */2", "0 6 * * 0,2,4,6"),
            ("0 0 0 1 * *", "0 0 1 * *"),
            ("0 0 0 1,15 JAN-MAR *", "0 0 1,15 1-3 *"),
            ("0 0 3 ? * 1", "0 3 * * 0"),
            ("0 0 3 1-7 * 2", "0 3 1-7 * 1"),
            ("0 0 */6 * * *", "0 */6 * * *"),
            ("45 3 * * *", "45 3 * * *"),
            ("0 0 12 * * * *", "0 12 * * *"),
        ] {
            let got = jenkins_cron(schedule).unwrap_or_else(|e| panic!("{schedule}: {e}"));
            assert_eq!(got, want, "{schedule}");
            let cron = CronSchedule::parse(schedule).unwrap();
            let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
            let end = start + Duration::days(400);
            let mut ticks = BTreeSet::new();
            let mut t = start - Duration::seconds(1);
            while let Some(next) = cron.next_after(t, Tz::UTC) {
                if next >= end {
                    break;
                }
                ticks.insert(next.with_second(0).unwrap());
                t = next;
            }
            let mut minute = start;
            let mut fired = BTreeSet::new();
            while minute < end {
                if jenkins_matches(&got, minute) {
                    fired.insert(minute);
                }
                minute += Duration::minutes(1);
            }
            assert!(!ticks.is_empty(), "{schedule}");
            assert_eq!(fired, ticks, "{schedule} as `{got}`");
        }
        for bad in [
            "*/10 0 1 * * *",
            "0 0 1 * * * 2027",
            "not cron",
            "0 0 25 * * *",
        ] {
            assert!(jenkins_cron(bad).is_err(), "{bad}");
        }
    }

    fn currency(v: &str) -> Result<String, String> {
        if v.len() == 3 && v.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(v.to_ascii_uppercase())
        } else {
            Err("three letters".into())
        }
    }

    const EVERY_KIND: JobDescriptor = JobDescriptor {
        name: "everyKindJob",
        description: "A job with\na parameter of each kind, it's a test",
        steps: &["oneStep"],
        parameters: &[
            ParameterSpec::new("day", ParamKind::Date)
                .identifying()
                .default(ParamDefault::Yesterday)
                .describe("the day"),
            ParameterSpec::new("month", ParamKind::Month).default(ParamDefault::LastMonth),
            ParameterSpec::new("dry-run", ParamKind::Bool).default(ParamDefault::Value("false")),
            ParameterSpec::new("strict", ParamKind::Bool),
            ParameterSpec::new("limit", ParamKind::Integer { min: -5, max: 100 })
                .default(ParamDefault::Value("10")),
            ParameterSpec::new("batch.size", ParamKind::Count),
            ParameterSpec::new("mode", ParamKind::OneOf(&["full", "delta"]))
                .identifying()
                .default(ParamDefault::Value("delta")),
            ParameterSpec::new("note", ParamKind::Text).describe("free text, 'quoted' \\ $x"),
            ParameterSpec::new(
                "currency",
                ParamKind::Custom(Validator {
                    expected: "a currency code like KRW",
                    check: currency,
                }),
            ),
        ],
    };

    fn input<'a>(d: &'a JobDescriptor, schedule: Option<&'a str>) -> PipelineInput<'a> {
        PipelineInput {
            descriptor: d,
            deployment_settings: &["billing.api_url", "billing.api_token"],
            schedule,
            timezone: Tz::Europe__Berlin,
        }
    }

    #[test]
    fn pipelines_of_every_parameter_kind() {
        let p = generate(&input(&EVERY_KIND, Some("0 0 2 * * MON"))).unwrap();
        for want in [
            "// GENERATED by `batch-launcher jenkinsfile everyKindJob`",
            "// everyKindJob: A job with a parameter of each kind, it's a test\n",
            "cron('TZ=Europe/Berlin\\n0 2 * * 1')",
            "string(name: 'DAY', defaultValue: '', trim: true,",
            "description: 'day (date YYYY-MM-DD, identifying): the day. Empty: the job\\'s default, yesterday in batch.timezone.')",
            "string(name: 'MONTH', defaultValue: '', trim: true,",
            "booleanParam(name: 'DRY_RUN', defaultValue: false,",
            "choice(name: 'STRICT', choices: ['', 'true', 'false'],",
            "string(name: 'LIMIT', defaultValue: '', trim: true,",
            "integer -5..=100",
            "string(name: 'PARAM_BATCH_SIZE', defaultValue: '', trim: true,",
            "choice(name: 'MODE', choices: ['', 'full', 'delta'],",
            "string(name: 'NOTE', defaultValue: '', trim: false,",
            "free text, \\'quoted\\' \\\\ $x",
            "string(name: 'CURRENCY', defaultValue: '', trim: false,",
            "a currency code like KRW",
            "BATCH__DATABASE__URL = credentials('batch-database-url')\n        BATCH__BILLING__API_URL = credentials('batch-billing-api-url')\n        BATCH__BILLING__API_TOKEN = credentials('batch-billing-api-token')\n",
            "JOB_PARAMS = 'DAY=day MONTH=month DRY_RUN=dry-run STRICT=strict LIMIT=limit PARAM_BATCH_SIZE=batch.size MODE=mode NOTE=note CURRENCY=currency'",
            "'jenkins/run-job.sh everyKindJob --result-file result.json'",
            "a build with its DAY and MODE from result.json restarts it",
        ] {
            assert!(p.contains(want), "`{want}` not in:\n{p}");
        }
        // Off, or a required parameter: no trigger.
        let off = generate(&input(&EVERY_KIND, None)).unwrap();
        assert!(!off.contains("triggers {") && off.contains("is off or absent"));
        const REQUIRED: JobDescriptor = JobDescriptor {
            name: "requiredJob",
            description: "",
            steps: &[],
            parameters: &[
                ParameterSpec::new("region", ParamKind::Text).default(ParamDefault::Required)
            ],
        };
        let required = generate(&input(&REQUIRED, Some("0 0 1 * * *"))).unwrap();
        assert!(!required.contains("triggers {"), "{required}");
        assert!(required.contains("`region` is required"), "{required}");
        assert!(required.contains("Required: a build without it is refused"));
        assert!(required.contains("the next build restarts it"));
    }

    #[test]
    fn pipelines_that_cannot_be_generated_say_why() {
        const CLASH: JobDescriptor = JobDescriptor {
            name: "clashJob",
            description: "",
            steps: &[],
            parameters: &[
                ParameterSpec::new("a.b", ParamKind::Text),
                ParameterSpec::new("a-b", ParamKind::Text),
            ],
        };
        let e = generate(&input(&CLASH, None)).unwrap_err();
        assert!(e.contains("`a.b` and `a-b`") && e.contains("A_B"), "{e}");
        let e = generate(&input(&EVERY_KIND, Some("*/5 * * * * *"))).unwrap_err();
        assert!(e.contains("more than once a minute"), "{e}");
        let e = generate(&PipelineInput {
            deployment_settings: &["token"],
            ..input(&EVERY_KIND, None)
        })
        .unwrap_err();
        assert!(e.contains("`token`"), "{e}");
    }

    #[test]
    fn pipelines_of_registered_jobs_generate() {
        let registry = Registry::default();
        let props = BatchProperties::load_from(None, Vec::new(), registry.modules()).unwrap();
        for job in registry.jobs() {
            pipeline_for(&registry, &props, job.descriptor.name).unwrap();
        }
        let e = pipeline_for(&registry, &props, "noSuchJob").unwrap_err();
        assert_eq!(crate::launch::exit_code_for(&e), ExitCode::Usage);
        assert!(e.to_string().contains("unknown job `noSuchJob`"), "{e}");
    }
}
