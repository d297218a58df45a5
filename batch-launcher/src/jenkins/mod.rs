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
//! [`generate_parallel`] is the same pipeline with another Run stage: `parallel` worker stages,
//! each on an agent of its own, running `run <JOB> --join --partitions P --workers 2`, so that
//! the workers share the partitions of one execution (see [`Parallel`]).
//!
//! `batch-launcher/tests/pipelines.rs` generates both variants of every registered job, checks
//! them and runs their launcher calls with `--validate-only`, and checks that the checked-in
//! pipelines (`Jenkinsfile`, `jenkins/*.Jenkinsfile`, `jenkins/*.parallel.Jenkinsfile`) are this
//! generator's output. jenkins/README.md describes the set-up.
//!
//! The files: `prelude.rs` (header, trigger, options, parameters, environment: what both
//! variants share), `params.rs` (the build parameters), `names.rs` (their names and the
//! credentials), `cron.rs` (the trigger), `single.rs` and `parallel.rs` (the variants' stages).
//!
//! [`JobModule::deployment_settings`]: batch_common::module::JobModule::deployment_settings

use anyhow::Context as _;
use batch_common::ExitCode;
use batch_common::config::BatchProperties;
use batch_common::job::JobDescriptor;
use chrono_tz::Tz;

use crate::cli::JenkinsfileArgs;
use crate::launch::{LaunchFailure, UsageError};
use crate::modules::Registry;

mod cron;
mod names;
mod parallel;
mod params;
mod prelude;
mod single;
pub use cron::jenkins_cron;
pub use names::{
    Credential, DATABASE_SETTING, RERUN_PARAM, RESERVED_PREFIX, build_parameter_name, credential,
    credentials,
};
pub use parallel::{PARTITIONS_PER_STAGE, PROCESS_WORKERS, Parallel, WORKER_STAGES};
pub use params::build_parameters;
use std::fmt::Write as _;

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

/// The job's pipeline (a declarative Jenkinsfile), or why it cannot be generated (a schedule
/// Jenkins' cron cannot express, parameter names that clash, a malformed deployment setting).
pub fn generate(input: &PipelineInput<'_>) -> Result<String, String> {
    let mut w = String::new();
    let intro = prelude::Intro {
        flags: "",
        about: &[],
        agent: None,
    };
    let prelude = prelude::write(&mut w, input, &intro)?;
    single::write(&mut w, &prelude);
    Ok(w)
}

/// The job's parallel pipeline: [`generate`]'s, with a Run stage of `parallel` worker stages
/// that share the execution's partitions (see [`Parallel`]).
pub fn generate_parallel(input: &PipelineInput<'_>, parallel: Parallel) -> Result<String, String> {
    let mut w = String::new();
    let flags = parallel.flags();
    let about = parallel.about(input.descriptor.name);
    let intro = prelude::Intro {
        flags: &flags,
        about: &about,
        agent: Some(Parallel::AGENT),
    };
    let prelude = prelude::write(&mut w, input, &intro)?;
    parallel.write(&mut w, &prelude);
    Ok(w)
}

/// What the pipeline of `job` is generated from, as `registry` and the effective configuration
/// `props` define it (its module's deployment settings, `[schedule]`, `batch.timezone`). An
/// unknown job is a [`LaunchFailure::UnknownJob`]: exit 2.
fn input_for<'a>(
    registry: &'a Registry,
    props: &'a BatchProperties,
    job: &str,
) -> anyhow::Result<PipelineInput<'a>> {
    let (Some(registration), Some(module)) = (registry.find(job), registry.module_of(job)) else {
        return Err(LaunchFailure::UnknownJob {
            name: job.to_owned(),
            known: registry.names(),
        }
        .into());
    };
    Ok(PipelineInput {
        descriptor: registration.descriptor,
        deployment_settings: module.deployment_settings(),
        schedule: props.schedule_for(job),
        timezone: props.batch.timezone,
    })
}

/// The pipeline of `job` as `registry` and the effective configuration `props` define it
/// (its module's deployment settings, `[schedule]`, `batch.timezone`). An unknown job is a
/// [`LaunchFailure::UnknownJob`], a pipeline that cannot be generated a [`UsageError`]: exit 2.
pub fn pipeline_for(
    registry: &Registry,
    props: &BatchProperties,
    job: &str,
) -> anyhow::Result<String> {
    let input = input_for(registry, props, job)?;
    generate(&input).map_err(|e| UsageError(format!("no pipeline for {job}: {e}")).into())
}

/// The parallel pipeline of `job`, like [`pipeline_for`].
pub fn parallel_pipeline_for(
    registry: &Registry,
    props: &BatchProperties,
    job: &str,
    parallel: Parallel,
) -> anyhow::Result<String> {
    let input = input_for(registry, props, job)?;
    generate_parallel(&input, parallel)
        .map_err(|e| UsageError(format!("no parallel pipeline for {job}: {e}")).into())
}

/// `jenkinsfile <JOB> [--output PATH] [--workers N [--partitions P]]`: prints the pipeline (the
/// parallel one with `--workers`), or writes it to PATH. A bad `--workers`/`--partitions` is a
/// [`UsageError`] naming the flag: exit 2.
pub fn jenkinsfile_cmd(
    registry: &Registry,
    props: &BatchProperties,
    args: &JenkinsfileArgs,
) -> anyhow::Result<ExitCode> {
    let job = args.job.as_str();
    let (pipeline, what) = match args.workers {
        None if args.partitions.is_some() => {
            return Err(
                UsageError("--partitions needs --workers (the parallel pipeline)".into()).into(),
            );
        }
        None => (pipeline_for(registry, props, job)?, "pipeline".to_owned()),
        Some(workers) => {
            let parallel = Parallel::new(workers, args.partitions).map_err(UsageError)?;
            (
                parallel_pipeline_for(registry, props, job, parallel)?,
                format!(
                    "parallel pipeline ({} workers, {} partitions)",
                    parallel.workers(),
                    parallel.partitions()
                ),
            )
        }
    };
    match &args.output {
        None => print!("{pipeline}"),
        Some(path) => {
            std::fs::write(path, &pipeline)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote the {what} of {job} to {}", path.display());
        }
    }
    Ok(ExitCode::Completed)
}

#[cfg(test)]
mod tests;
