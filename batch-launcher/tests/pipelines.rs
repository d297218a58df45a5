//! The Jenkins pipelines (`Jenkinsfile`, `jenkins/*.Jenkinsfile`, found by listing): every
//! launcher call they make passes `--validate-only` through the real binary for every combination
//! of their build parameters, broken variants of those calls are refused, and each pipeline has
//! the structure SPEC §6 asks for, with its cron time equal to its job's `[schedule]` default.
//! jenkins/README.md describes what is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::text;

/// What a non-empty `DATE` parameter stands for in the checks.
const EXAMPLE_DATE: &str = "2026-11-20";

/// Settings that are secrets: a pipeline must take them from Jenkins credentials.
const SECRETS: &[&str] = &[
    "BATCH__DATABASE__URL",
    "BATCH__REDIS__URL",
    "BATCH__REDIS__CLUSTER_NODES",
    "BATCH__ASSET__API_TOKEN",
    "BATCH__NOTIFY__SLACK_WEBHOOK_URL",
    "BATCH__SERVER__TOKEN",
];

/// The settings each job's pipeline must provide (without them the job would run against the
/// built-in defaults: SQLite in the workspace, a local Redis, the fake asset API).
fn required_settings(job: &str) -> &'static [&'static str] {
    match job {
        "pointBalanceSyncJob" => &["BATCH__DATABASE__URL", "BATCH__REDIS__URL"],
        "assetRefreshJob" => &[
            "BATCH__DATABASE__URL",
            "BATCH__ASSET__API_BASE_URL",
            "BATCH__ASSET__API_TOKEN",
        ],
        // A job without credentials of its own needs the database only.
        _ => &["BATCH__DATABASE__URL"],
    }
}

/// A value of the right shape for a setting bound from a Jenkins credential.
fn stand_in(var: &str) -> &'static str {
    match var {
        "BATCH__DATABASE__URL" => "postgres://batch:secret@db.example.invalid:5432/batch",
        "BATCH__REDIS__URL" => "redis://:secret@redis.example.invalid:6379",
        "BATCH__REDIS__CLUSTER_NODES" => {
            "redis://:secret@redis1.example.invalid:6379,redis://:secret@redis2.example.invalid:6379"
        }
        "BATCH__ASSET__API_BASE_URL" => "https://assets.example.invalid",
        "BATCH__ASSET__API_TOKEN" | "BATCH__SERVER__TOKEN" => "secret-token",
        "BATCH__NOTIFY__SLACK_WEBHOOK_URL" => "https://hooks.slack.com/services/T0/B0/secret",
        other if other.starts_with("BATCH_") => {
            panic!("no stand-in value for the credential `{other}`: add one in pipelines.rs")
        }
        // Not read by the launcher.
        _ => "stand-in",
    }
}

/// The values a build parameter takes in the checks.
fn representative_values(kind: &str, name: &str) -> Vec<String> {
    match (kind, name) {
        ("string", "DATE") => vec![String::new(), EXAMPLE_DATE.to_owned()],
        ("booleanParam", _) => vec!["false".to_owned(), "true".to_owned()],
        _ => panic!(
            "no representative values for the {kind} parameter `{name}`: add them in pipelines.rs"
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One pipeline file, with its full-line comments removed.
struct Pipeline {
    /// Relative to the workspace root.
    file: String,
    code: String,
}

/// The root `Jenkinsfile` and every `jenkins/*.Jenkinsfile`. Anything else named like a
/// pipeline fails, so no pipeline escapes the checks by its name.
fn pipelines() -> Vec<Pipeline> {
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
                    "{prefix}{name}: pipelines are the root `Jenkinsfile` and `jenkins/<jobName>.Jenkinsfile`"
                );
            }
        }
    }
    files.sort();
    assert!(
        files.iter().any(|f| f == "Jenkinsfile"),
        "no root Jenkinsfile (the pointBalanceSyncJob pipeline)"
    );
    files
        .into_iter()
        .map(|file| Pipeline {
            code: strip_comments(&read(&root.join(&file))),
            file,
        })
        .collect()
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

/// A call of `jenkins/run-job.sh` in a pipeline: the words after the script name.
#[derive(Debug, Clone)]
struct Invocation {
    words: Vec<String>,
}

impl Invocation {
    fn job(&self) -> &str {
        &self.words[0]
    }
}

/// Every `jenkins/run-job.sh ...` call: one line, a single-quoted shell script of plain words (no
/// Groovy or shell expansion), so what is checked here is exactly what Jenkins runs.
fn invocations(p: &Pipeline) -> Result<Vec<Invocation>, String> {
    let mut found = Vec::new();
    for line in p.code.lines() {
        if line.contains("release/batch-launcher") || line.contains("cargo run") {
            return Err(format!(
                "{}: calls the launcher directly (`{}`); call it through jenkins/run-job.sh so it is checked",
                p.file,
                line.trim()
            ));
        }
        if !line.contains("run-job.sh") {
            continue;
        }
        let Some(start) = line.find("'jenkins/run-job.sh ") else {
            return Err(format!(
                "{}: `{}`: write the call as a single-quoted 'jenkins/run-job.sh <JOB> ...' on one line",
                p.file,
                line.trim()
            ));
        };
        let rest = &line[start + 1..];
        let script = &rest[..rest.find('\'').unwrap_or(rest.len())];
        if let Some(c) = script
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || " -_=./".contains(*c)))
        {
            return Err(format!(
                "{}: `{script}` has `{c}`: keep the call plain words, the parameters reach it as environment variables",
                p.file
            ));
        }
        let words: Vec<String> = script
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect();
        if words.first().is_none_or(|w| w.starts_with('-')) {
            return Err(format!("{}: `{script}` names no job first", p.file));
        }
        found.push(Invocation { words });
    }
    if found.is_empty() {
        return Err(format!("{}: no jenkins/run-job.sh call", p.file));
    }
    Ok(found)
}

/// The job a pipeline runs (all its calls run the same one).
fn job_of(p: &Pipeline) -> String {
    let calls = invocations(p).unwrap_or_else(|e| panic!("{e}"));
    let jobs: BTreeSet<&str> = calls.iter().map(Invocation::job).collect();
    assert_eq!(jobs.len(), 1, "{}: runs several jobs: {jobs:?}", p.file);
    calls[0].job().to_owned()
}

/// `(kind, name)` of each build parameter.
fn parameters(p: &Pipeline) -> Vec<(String, String)> {
    let Some(b) = block(&p.code, "parameters") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(i) = rest.find("(name: '") {
        let kind: String = rest[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let after = &rest[i + "(name: '".len()..];
        let end = after.find('\'').expect("parameter name ends");
        out.push((kind, after[..end].to_owned()));
        rest = &after[end..];
    }
    out
}

/// A value in the `environment` block.
#[derive(Debug, Clone, PartialEq)]
enum EnvValue {
    Credential(String),
    Literal(String),
}

fn environment(p: &Pipeline) -> Result<BTreeMap<String, EnvValue>, String> {
    let mut out = BTreeMap::new();
    for line in block(&p.code, "environment").unwrap_or("").lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(" = ") else {
            return Err(format!(
                "{}: environment line `{line}` is not `NAME = value`",
                p.file
            ));
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
                "{}: environment value `{value}` is neither credentials('id') nor a 'literal'",
                p.file
            ));
        };
        out.insert(name.trim().to_owned(), value);
    }
    Ok(out)
}

/// The pipeline's environment as a build sees it, with stand-ins for the credentials.
fn build_environment(p: &Pipeline) -> BTreeMap<String, String> {
    environment(p)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(name, value)| {
            let v = match value {
                EnvValue::Credential(_) => stand_in(&name).to_owned(),
                EnvValue::Literal(l) => l,
            };
            (name, v)
        })
        .collect()
}

/// Every combination of the representative values of the build parameters.
fn parameter_combinations(p: &Pipeline) -> Vec<BTreeMap<String, String>> {
    let mut combos = vec![BTreeMap::new()];
    for (kind, name) in parameters(p) {
        let mut next = Vec::new();
        for combo in &combos {
            for value in representative_values(&kind, &name) {
                let mut c: BTreeMap<String, String> = combo.clone();
                c.insert(name.clone(), value);
                next.push(c);
            }
        }
        combos = next;
    }
    combos
}

/// Runs jenkins/run-job.sh as Jenkins would (the file itself, from `dir`), with only `env`, PATH and
/// `LAUNCHER` in its environment.
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

fn with_validate_only(words: &[String]) -> Vec<String> {
    let mut w = words.to_vec();
    w.push("--validate-only".to_owned());
    w
}

fn describe(file: &str, words: &[String], env: &BTreeMap<String, String>, o: &Output) -> String {
    let (out, err) = text(o);
    format!(
        "{file}: run-job.sh {} with {env:?}\nexit {:?}\nstdout: {out}\nstderr: {err}",
        words.join(" "),
        o.status.code()
    )
}

#[test]
fn every_pipeline_call_passes_validate_only_for_every_parameter_combination() {
    let dir = tempfile::tempdir().unwrap();
    for p in pipelines() {
        let env = build_environment(&p);
        let combinations = parameter_combinations(&p);
        for (name, value) in [("DATE", EXAMPLE_DATE), ("RERUN", "true")] {
            assert!(
                combinations
                    .iter()
                    .any(|c| c.get(name).map(String::as_str) == Some(value)),
                "{}: no build parameter {name}",
                p.file
            );
        }
        for call in invocations(&p).unwrap_or_else(|e| panic!("{e}")) {
            for params in &combinations {
                let mut env = env.clone();
                env.extend(params.clone());
                let words = with_validate_only(&call.words);
                let o = run_job_sh(dir.path(), launcher_bin(), &words, &env);
                let what = describe(&p.file, &words, &env, &o);
                assert_eq!(o.status.code(), Some(0), "{what}");
                let (out, _) = text(&o);
                let shown: Vec<&str> = out.lines().next().unwrap_or("").split(' ').collect();
                assert_eq!(shown.get(..2), Some(&["ok:", call.job()][..]), "{what}");
                match params.get("DATE").map(String::as_str) {
                    Some("") | None => {
                        assert!(!shown.iter().any(|w| w.starts_with("date=")), "{what}")
                    }
                    Some(d) => assert!(shown.contains(&format!("date={d}").as_str()), "{what}"),
                }
            }
        }
    }
}

#[test]
fn run_job_sh_turns_the_parameters_into_launcher_arguments() {
    let dir = tempfile::tempdir().unwrap();
    // A launcher stand-in that writes its arguments, one a line, to `<itself>.args`. A child shell
    // makes the executable: had this multi-threaded process held it open for writing, a concurrent
    // fork (other tests start processes) could inherit that and the exec fail with ETXTBSY.
    let source = dir.path().join("stub-launcher.sh");
    std::fs::write(&source, "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$0.args\"\n").unwrap();
    let stub = dir.path().join("stub-launcher");
    let made = Command::new("sh")
        .args(["-c", "cp \"$1\" \"$2\" && chmod 755 \"$2\"", "sh"])
        .args([&source, &stub])
        .status()
        .unwrap();
    assert!(made.success(), "making {}", stub.display());
    let args_file = dir.path().join("stub-launcher.args");
    for p in pipelines() {
        let env = build_environment(&p);
        for call in invocations(&p).unwrap_or_else(|e| panic!("{e}")) {
            for params in parameter_combinations(&p) {
                let _ = std::fs::remove_file(&args_file);
                let mut env = env.clone();
                env.extend(params.clone());
                let o = run_job_sh(dir.path(), &stub, &call.words, &env);
                let what = describe(&p.file, &call.words, &env, &o);
                assert_eq!(o.status.code(), Some(0), "{what}");
                let got: Vec<String> = read(&args_file).lines().map(String::from).collect();
                let mut want: Vec<String> =
                    ["--log-format", "json", "run"].map(String::from).to_vec();
                want.extend(call.words.iter().cloned());
                if let Some(d) = params.get("DATE").filter(|d| !d.is_empty()) {
                    want.push(format!("date={d}"));
                }
                if params.get("RERUN").map(String::as_str) == Some("true") {
                    want.push("--rerun".to_owned());
                }
                assert_eq!(got, want, "{what}");
            }
        }
    }
}

/// The checks above can fail: a misspelled job, flag, date or setting in a pipeline call is
/// refused with exit 2 through the same script and binary, while the call itself passes.
#[test]
fn broken_pipeline_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for p in pipelines() {
        let env = build_environment(&p);
        for call in invocations(&p).unwrap_or_else(|e| panic!("{e}")) {
            let run = |words: &[String], env: &BTreeMap<String, String>| {
                let words = with_validate_only(words);
                let o = run_job_sh(dir.path(), launcher_bin(), &words, env);
                let what = describe(&p.file, &words, env, &o);
                (o.status.code(), text(&o).1, what)
            };
            let (code, _, what) = run(&call.words, &env);
            assert_eq!(code, Some(0), "unmodified: {what}");

            let mut misspelled_job = call.words.clone();
            misspelled_job[0].push('s');
            let (code, err, what) = run(&misspelled_job, &env);
            assert_eq!(code, Some(2), "{what}");
            assert!(err.contains("unknown job"), "{what}");

            let flags: Vec<usize> = (0..call.words.len())
                .filter(|&i| call.words[i].starts_with("--"))
                .collect();
            assert!(
                !flags.is_empty(),
                "{}: no flag to misspell in {:?}",
                p.file,
                call.words
            );
            for i in flags {
                let mut misspelled_flag = call.words.clone();
                misspelled_flag[i].pop();
                let (code, err, what) = run(&misspelled_flag, &env);
                assert_eq!(code, Some(2), "{what}");
                assert!(err.contains("unexpected argument"), "{what}");
            }

            let mut bad_date = env.clone();
            bad_date.insert("DATE".to_owned(), "2026-13-01".to_owned());
            let (code, err, what) = run(&call.words, &bad_date);
            assert_eq!(code, Some(2), "{what}");
            assert!(err.contains("2026-13-01"), "{what}");

            let mut bad_rerun = env.clone();
            bad_rerun.insert("RERUN".to_owned(), "yes".to_owned());
            let (code, err, what) = run(&call.words, &bad_rerun);
            assert_eq!(code, Some(2), "{what}");
            assert!(err.contains("RERUN"), "{what}");

            let settings: Vec<&String> = env.keys().filter(|k| k.starts_with("BATCH__")).collect();
            assert!(!settings.is_empty(), "{}: no BATCH__ settings", p.file);
            for name in settings {
                let mut misspelled = env.clone();
                let value = misspelled.remove(name).unwrap();
                misspelled.insert(format!("{name}X"), value);
                let (code, err, what) = run(&call.words, &misspelled);
                assert_eq!(code, Some(2), "{what}");
                assert!(err.contains("invalid configuration"), "{what}");
            }
        }
    }
}

/// What the structure checks compare a pipeline with.
struct Expectations {
    /// `[schedule]` of the built-in defaults (every module's default schedules): job → 6-field cron.
    schedule: BTreeMap<String, String>,
    /// `batch.timezone` of the built-in defaults.
    timezone: String,
    /// jenkins/run-job.sh.
    run_job_sh: String,
}

fn expectations() -> Expectations {
    let root = workspace_root();
    // The built-in defaults as the launcher merges them: the runtime's and every module's.
    let defaults = batch_common::config::BatchProperties::load_from(
        None,
        Vec::new(),
        batch_launcher::modules::MODULES,
    )
    .expect("the built-in defaults load");
    Expectations {
        schedule: defaults.schedule.clone(),
        timezone: defaults.batch.timezone.to_string(),
        run_job_sh: read(&root.join("jenkins/run-job.sh")),
    }
}

/// Everything wrong with one pipeline's structure (empty: nothing).
fn structure_problems(p: &Pipeline, want: &Expectations) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{}: {what}", p.file));
        }
    };
    let calls = match invocations(p) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let job = calls[0].job().to_owned();
    need(
        calls.iter().all(|c| c.job() == job),
        "runs more than one job".into(),
    );
    match p.file.strip_prefix("jenkins/") {
        Some(name) => need(
            name == format!("{job}.Jenkinsfile"),
            format!("runs {job}: name it jenkins/{job}.Jenkinsfile"),
        ),
        None => need(
            job == "pointBalanceSyncJob",
            format!("the root Jenkinsfile is pointBalanceSyncJob's, not {job}'s"),
        ),
    }

    // Schedule: `TZ=<batch.timezone>` then the `[schedule]` default without its seconds.
    match block(&p.code, "triggers").and_then(|t| t.split_once("cron('")) {
        None => need(false, "no `triggers { cron('...') }`".into()),
        Some((_, rest)) => {
            let spec = rest.split("')").next().unwrap_or("");
            let lines: Vec<&str> = spec
                .split("\\n")
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let tz = format!("TZ={}", want.timezone);
            need(
                lines.first() == Some(&tz.as_str()),
                format!("cron `{spec}` must start with `{tz}\\n`"),
            );
            need(
                lines.len() == 2,
                format!("cron `{spec}`: want the TZ line and one schedule line"),
            );
            let jenkins: Vec<&str> = lines.get(1).unwrap_or(&"").split_whitespace().collect();
            match want.schedule.get(&job) {
                None => need(false, format!("{job} has no [schedule] default")),
                Some(cron) => {
                    let fields: Vec<&str> = cron.split_whitespace().collect();
                    need(
                        fields.len() == 6 && fields[0] == "0",
                        format!("[schedule] {job} = `{cron}`: want 6 fields, seconds 0"),
                    );
                    need(
                        fields.get(1..) == Some(&jenkins[..]),
                        format!(
                            "cron `{}` is not [schedule] {job} = `{cron}` (Jenkins has no seconds field)",
                            jenkins.join(" ")
                        ),
                    );
                }
            }
        }
    }

    let options = block(&p.code, "options").unwrap_or("");
    need(
        options.contains("disableConcurrentBuilds()"),
        "no disableConcurrentBuilds() in options".into(),
    );
    let timeout = options
        .split_once("timeout(time: ")
        .and_then(|(_, r)| r.split_once(", unit: '"))
        .and_then(|(n, r)| Some((n.trim().parse::<u32>().ok()?, r.split('\'').next()?)));
    need(
        matches!(timeout, Some((n, "MINUTES" | "HOURS")) if n > 0),
        "no `timeout(time: N, unit: 'MINUTES')` in options".into(),
    );

    // The binary run-job.sh runs is the one the pipeline builds.
    need(
        p.code.lines().any(|l| {
            l.contains("cargo build --release --locked")
                && (l.contains("-p batch-launcher") || l.contains("--bin batch-launcher"))
        }),
        "no `cargo build --release --locked -p batch-launcher`".into(),
    );
    need(
        want.run_job_sh
            .contains("${LAUNCHER:-target/release/batch-launcher}"),
        "jenkins/run-job.sh does not default to target/release/batch-launcher".into(),
    );

    // The result file: written, archived, summarized, and not left over from an earlier build.
    let post = block(&p.code, "post").unwrap_or("");
    let always = block(post, "always").unwrap_or("");
    for call in &calls {
        let result_file = call
            .words
            .iter()
            .position(|w| w == "--result-file")
            .and_then(|i| call.words.get(i + 1));
        match result_file {
            None => need(false, format!("{:?} has no --result-file", call.words)),
            Some(f) => {
                need(
                    always.contains(&format!("archiveArtifacts artifacts: '{f}'")),
                    format!("post {{ always }} does not archiveArtifacts '{f}'"),
                );
                need(
                    p.code.contains(&format!("readJSON(file: '{f}')")),
                    format!("no readJSON(file: '{f}') for the summary"),
                );
                need(
                    p.code.contains(&format!("sh 'rm -f {f}'")),
                    format!("no `sh 'rm -f {f}'` before the run"),
                );
            }
        }
    }

    for section in ["success", "unstable", "notBuilt", "failure", "aborted"] {
        need(
            block(post, section).is_some_and(|b| b.contains("slackSend(")),
            format!("no slackSend in post {{ {section} }}"),
        );
    }

    problems.extend(exit_code_problems(p));

    // Settings: the job's required ones, secrets only from credentials.
    match environment(p) {
        Err(e) => problems.push(e),
        Ok(env) => {
            for name in required_settings(&job) {
                if !env.contains_key(*name) {
                    problems.push(format!("{}: {job} needs {name} in environment", p.file));
                }
            }
            for (name, value) in &env {
                if SECRETS.contains(&name.as_str()) && !matches!(value, EnvValue::Credential(_)) {
                    problems.push(format!(
                        "{}: {name} is a secret: bind it with credentials('...')",
                        p.file
                    ));
                }
            }
        }
    }

    // Every build parameter reaches the launcher through run-job.sh.
    for (_, name) in parameters(p) {
        if !want.run_job_sh.contains(&format!("${{{name}")) {
            problems.push(format!(
                "{}: parameter {name} is not read by jenkins/run-job.sh",
                p.file
            ));
        }
    }
    problems
}

/// `sh(returnStatus: true)` into a variable, then `switch` on it: 0 passes, 3 is UNSTABLE, 4 is
/// NOT_BUILT, anything else is an error.
fn exit_code_problems(p: &Pipeline) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(line) = p.code.lines().find(|l| l.contains("'jenkins/run-job.sh ")) else {
        return vec![format!("{}: no jenkins/run-job.sh call", p.file)];
    };
    let Some((lhs, _)) = line.split_once(" = sh(returnStatus: true") else {
        return vec![format!(
            "{}: capture the status: `int code = sh(returnStatus: true, ...)`",
            p.file
        )];
    };
    let var = lhs.split_whitespace().last().unwrap_or("");
    let Some(switch) = block(&p.code, &format!("switch ({var})")) else {
        return vec![format!("{}: no `switch ({var})` on the exit code", p.file)];
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
            problems.push(format!("{}: exit code {case} must {what}", p.file));
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
    need("default", |a| a.contains("error("), "be an `error(...)`");
    for (case, action) in &cases {
        if !["0", "3", "4", "default"].contains(&case.as_str()) && !action.contains("error(") {
            problems.push(format!(
                "{}: exit code {case} must be an `error(...)`",
                p.file
            ));
        }
    }
    problems
}

#[test]
fn pipelines_have_the_required_structure() {
    let want = expectations();
    let mut problems = Vec::new();
    for p in pipelines() {
        problems.extend(structure_problems(&p, &want));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The structure checks can fail: each break of the root Jenkinsfile is reported.
#[test]
fn broken_pipelines_fail_the_structure_checks() {
    let want = expectations();
    let root = pipelines()
        .into_iter()
        .find(|p| p.file == "Jenkinsfile")
        .unwrap();
    assert!(structure_problems(&root, &want).is_empty());
    for (from, to, expected) in [
        ("TZ=Asia/Seoul", "TZ=UTC", "must start with"),
        ("\\n0 1 * * *", "\\n0 2 * * *", "is not [schedule]"),
        ("disableConcurrentBuilds()", "", "disableConcurrentBuilds"),
        ("timeout(time: ", "timeout(after: ", "timeout"),
        ("case 3: unstable(", "case 3: echo(", "exit code 3"),
        (
            "case 4: currentBuild.result = 'NOT_BUILT'",
            "case 4: echo 'x'",
            "exit code 4",
        ),
        ("case 2: error(", "case 2: echo(", "exit code 2"),
        (
            "returnStatus: true",
            "returnStdout: true",
            "capture the status",
        ),
        ("archiveArtifacts", "echo", "archiveArtifacts"),
        (" --result-file result.json'", "'", "--result-file"),
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
            "BATCH__REDIS__URL = credentials('batch-redis-url')",
            "",
            "BATCH__REDIS__URL",
        ),
        (
            "credentials('batch-database-url')",
            "'postgres://x'",
            "is a secret",
        ),
        (
            "jenkins/run-job.sh pointBalanceSyncJob",
            "jenkins/run-job.sh assetRefreshJob",
            "root Jenkinsfile",
        ),
        (
            "booleanParam(name: 'RERUN'",
            "booleanParam(name: 'RERUNS'",
            "not read by jenkins/run-job.sh",
        ),
    ] {
        assert!(
            root.code.contains(from),
            "`{from}` not in the root Jenkinsfile"
        );
        let broken = Pipeline {
            file: root.file.clone(),
            code: root.code.replacen(from, to, 1),
        };
        let problems = structure_problems(&broken, &want);
        assert!(
            problems.iter().any(|pr| pr.contains(expected)),
            "replacing `{from}` with `{to}`: no problem mentions `{expected}`: {problems:?}"
        );
    }
}

#[test]
fn every_scheduled_job_has_exactly_one_pipeline() {
    let want = expectations();
    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in pipelines() {
        by_job.entry(job_of(&p)).or_default().push(p.file);
    }
    let scheduled: BTreeSet<&String> = want.schedule.keys().collect();
    assert!(!scheduled.is_empty(), "no [schedule] in defaults.toml");
    let piped: BTreeSet<&String> = by_job.keys().collect();
    assert_eq!(
        piped, scheduled,
        "jobs with pipelines vs jobs in [schedule]"
    );
    for (job, files) in &by_job {
        assert_eq!(files.len(), 1, "{job} has several pipelines: {files:?}");
    }
}
