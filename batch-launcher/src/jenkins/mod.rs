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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use batch_common::ExitCode;
use batch_common::config::BatchProperties;
use batch_common::job::{JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use chrono_tz::Tz;

use crate::launch::{LaunchFailure, UsageError};

use crate::modules::Registry;

mod cron;
mod names;
pub use cron::jenkins_cron;
pub use names::{
    Credential, DATABASE_SETTING, RERUN_PARAM, RESERVED_PREFIX, build_parameter_name, credential,
    credentials,
};

/// The result file the pipeline's launcher call writes, archives and summarizes.
pub const RESULT_FILE: &str = "result.json";

/// The build's time limit (a cold release build plus the run with its step retries).
pub const TIMEOUT_MINUTES: u32 = 180;

/// The environment variable holding the pipeline's `BUILD_PARAMETER=job.parameter` words,
/// which `jenkins/run-job.sh` reads.
pub const JOB_PARAMS_VAR: &str = "JOB_PARAMS";

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
        "// descriptor and module) or the generator (batch-launcher/src/jenkins/mod.rs), then regenerate"
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
mod tests;
