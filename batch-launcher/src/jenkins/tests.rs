//! The generator's unit tests: names, credentials, the cron translation (minute by minute
//! against the scheduler's own reading), descriptions and the whole pipeline text, of both
//! variants.

use std::collections::BTreeSet;

use batch_common::job::{ParamDefault, ParamKind, ParameterSpec, Validator};
use batch_common::schedule::CronSchedule;
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

use super::names::RESERVED_NAMES;
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
        parameters: &[ParameterSpec::new("region", ParamKind::Text).default(ParamDefault::Required)],
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

#[test]
fn parallel_shapes_are_checked() {
    let e = Parallel::new(1, None).unwrap_err();
    assert!(
        e.starts_with("--workers 1:") && e.contains("2 to 64"),
        "{e}"
    );
    let e = Parallel::new(65, Some(100)).unwrap_err();
    assert!(e.starts_with("--workers 65:"), "{e}");
    let e = Parallel::new(4, Some(3)).unwrap_err();
    assert!(
        e.starts_with("--partitions 3 is less than --workers 4") && e.contains("at least 4"),
        "{e}"
    );
    let p = Parallel::new(4, None).unwrap();
    assert_eq!((p.workers(), p.partitions()), (4, 16));
    assert_eq!(p.flags(), " --workers 4 --partitions 16");
    let p = Parallel::new(64, Some(64)).unwrap();
    assert_eq!((p.workers(), p.partitions()), (64, 64));
    assert_eq!(Parallel::result_file(3), "result-3.json");
}

/// The text between `from` and `to` in `text`.
fn between<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let start = text.find(from).unwrap_or_else(|| panic!("no `{from}`"));
    let end = text[start..]
        .find(to)
        .unwrap_or_else(|| panic!("no `{to}`"));
    &text[start..start + end]
}

#[test]
fn parallel_pipelines_share_the_single_ones_prelude() {
    let parallel = Parallel::new(3, Some(7)).unwrap();
    for schedule in [Some("0 0 2 * * MON"), None] {
        let single = generate(&input(&EVERY_KIND, schedule)).unwrap();
        let p = generate_parallel(&input(&EVERY_KIND, schedule), parallel).unwrap();
        // Trigger, options, parameters, environment: the same text.
        assert_eq!(
            between(&p, "\n    agent any\n", "    stages {"),
            between(&single, "\n    agent any\n", "    stages {")
        );
        // The Slack messages too.
        assert_eq!(
            between(&p, "        success {", "\n    }\n}\n"),
            between(&single, "        success {", "\n    }\n}\n").replace(
                "from result.json restarts",
                "from the result files restarts"
            )
        );
    }
    let p = generate_parallel(&input(&EVERY_KIND, Some("0 0 2 * * MON")), parallel).unwrap();
    assert!(p.starts_with(
        "// GENERATED by `batch-launcher jenkinsfile everyKindJob --workers 3 --partitions 7`; do not edit."
    ));
    assert!(p.contains("//   cargo run -q -p batch-launcher -- jenkinsfile everyKindJob --workers 3 --partitions 7 > <this file>\n"));
    assert!(p.contains("// PARALLEL VARIANT"), "{p}");
    assert!(p.contains("PostgreSQL or MySQL/MariaDB: on SQLite `run --join` exits 2"));
    for i in 1..=3 {
        for want in [
            format!("                stage('worker {i}') {{\n                    agent any\n"),
            format!(
                "script: 'jenkins/run-job.sh everyKindJob --join --partitions 7 --workers 2 --result-file result-{i}.json')"
            ),
            format!("sh 'rm -f result-{i}.json'"),
            format!("case 3: unstable('worker {i}: everyKindJob"),
            format!("archiveArtifacts artifacts: 'result-{i}.json', allowEmptyArchive: true"),
            format!("stash name: 'result-{i}', includes: 'result-{i}.json', allowEmpty: true"),
        ] {
            assert!(p.contains(&want), "`{want}` not in:\n{p}");
        }
    }
    assert!(!p.contains("worker 4"));
    assert_eq!(p.matches("jenkins/run-job.sh ").count(), 3);
    assert_eq!(
        p.matches("sh 'cargo build --release --locked -p batch-launcher'")
            .count(),
        3
    );
    // RERUN reaches worker 1 only.
    assert_eq!(p.matches("withEnv(['RERUN=false'])").count(), 2);
    assert!(!between(&p, "stage('worker 1')", "stage('worker 2')").contains("withEnv"));
    for want in [
        "for (int i = 1; i <= 3; i++) {",
        "unstash \"result-${i}\"",
        "summary = resultSummary(3)",
        "a build with its DAY and MODE from the result files restarts it",
        "String formatJoined(Map r)",
        "String formatResult(Map r)",
        "options {\n        disableConcurrentBuilds()",
    ] {
        assert!(p.contains(want), "`{want}` not in:\n{p}");
    }
    // Braces balance (a cheap check that the stages nest).
    let code: String = p
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    assert_eq!(code.matches('{').count(), code.matches('}').count());
}
