//! `run` argument handling, `history`, `recover` and `purge` through the binary.

use std::sync::Arc;

use batch_common::SystemClock;
use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::repository::CreateExecution;
use batch_common::repository::JobRepository;
use batch_launcher::modules::MODULES;
use batch_testkit::db_test;
use batch_testkit::jobs::{CountingJob, FailPlan};

use crate::{launcher, text};

fn expect_usage(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(dir.path(), args, &[]);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{args:?}\nstdout: {out}\nstderr: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or(&err);
    assert!(line.contains(needle), "{args:?}: `{needle}` not in {line}");
    assert!(
        !dir.path().join("data").exists(),
        "{args:?} created the database"
    );
}

#[test]
fn run_rejects_bad_jobs_and_parameters_with_exit_2() {
    expect_usage(&["run", "noSuchJob"], "noSuchJob");
    expect_usage(&["run"], "no job given");
    expect_usage(&["run", "pointBalanceSyncJob", "date"], "`date`");
    expect_usage(
        &["run", "pointBalanceSyncJob", "date=2026-02-30"],
        "2026-02-30",
    );
    expect_usage(
        &["run", "pointBalanceSyncJob", "dat=2026-11-20"],
        "unknown parameter `dat`",
    );
    expect_usage(&["run", "pointBalanceSyncJob", "verify=perhaps"], "perhaps");
    expect_usage(&["--job.name=assetRefreshJob", "date=20261120"], "20261120");
    expect_usage(&["purge", "--older-than", "forever"], "forever");
}

#[test]
fn spring_style_job_name_and_validate_only() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(
        dir.path(),
        &[
            "--job.name=pointBalanceSyncJob",
            "date=2026-11-20",
            "--validate-only",
        ],
        &[],
    );
    let (out, err) = text(&o);
    if o.status.code() == Some(0) {
        assert!(
            out.contains("ok: pointBalanceSyncJob date=2026-11-20"),
            "{out}"
        );
    } else {
        // Until the job is implemented the launcher says so (exit 2), after validating the parameters.
        assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
        assert!(err.contains("not implemented"), "{err}");
    }
}

/// Two executions of the counting job in `db`: one completed, one completed with item failures.
async fn make_history(db: &batch_testkit::TestDb) -> (i64, i64) {
    let props = BatchProperties::load_from(None, Vec::new(), MODULES).unwrap();
    let launcher = JobLauncher::new(
        JobRepository::new(db.db.clone()),
        Arc::new(SystemClock),
        props.batch,
    );
    let job = CountingJob {
        plan: Arc::new(FailPlan::default()),
    };
    let p = |args: &[&str]| batch_common::params::parse_pairs(args).unwrap();
    let a = launcher
        .launch(&job, p(&["run=a", "items=3"]), &LaunchOptions::default())
        .await
        .unwrap();
    let b = launcher
        .launch(
            &job,
            p(&["run=b", "items=3", "fail_items=2"]),
            &LaunchOptions::default(),
        )
        .await
        .unwrap();
    (a.execution_id.unwrap(), b.execution_id.unwrap())
}

db_test!(modules = MODULES; async fn history_lists_executions_as_table_and_json(db) {
    let (a, b) = make_history(db).await;
    let dir = tempfile::tempdir()?;
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret())];
    let o = launcher(dir.path(), &["history"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("STATUS") && lines[0].contains("PARAMETERS"), "{out}");
    assert!(lines[1].trim_start().starts_with(&b.to_string()) && lines[1].contains("COMPLETED_WITH_FAILURES"), "{out}");
    assert!(lines[2].trim_start().starts_with(&a.to_string()) && lines[2].contains("countingJob"), "{out}");

    let o = launcher(dir.path(), &["history", "countingJob", "--limit", "1", "--json"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["execution_id"], b);
    assert_eq!(rows[0]["parameters"]["fail_items"], "2");
    assert_eq!(rows[0]["steps"][0]["name"], "countStep");
    assert_eq!(rows[0]["steps"][0]["skipped"], 1);
    assert_eq!(rows[0]["steps"][0]["counters"]["inserted"], 2);

    let o = launcher(dir.path(), &["history", "otherJob"], &env);
    assert!(text(&o).0.contains("no executions of otherJob"));
    Ok(())
});

db_test!(modules = MODULES; async fn recover_and_purge(db) {
    let (a, _) = make_history(db).await;
    let repo = JobRepository::new(db.db.clone());
    let dir = tempfile::tempdir()?;
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret())];

    // A live execution whose process died 10 minutes ago (stale_after defaults to 2m).
    let long_ago = chrono::Utc::now().naive_utc() - chrono::Duration::minutes(10);
    let inst = repo.get_or_create_instance("countingJob", "dead", "{}", long_ago).await?;
    let CreateExecution::Created { execution: dead, .. } =
        repo.create_execution(inst.id, "{}", "gone:1", long_ago, long_ago - chrono::Duration::minutes(2)).await?
    else {
        panic!("not created")
    };
    // Finished executions are not "running".
    let o = launcher(dir.path(), &["recover", &a.to_string()], &env);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("not running"));
    let o = launcher(dir.path(), &["recover", "999999"], &env);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let o = launcher(dir.path(), &["recover", &dead.id.to_string()], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let after = repo.execution(dead.id).await?.unwrap();
    assert_eq!(after.status, "FAILED");
    assert!(after.live_instance_id.is_none());

    // purge --older-than 0s removes every finished execution and the emptied instances.
    let o = launcher(dir.path(), &["purge", "--older-than", "0s"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("3 executions") && out.contains("3 instances"), "{out}");
    assert!(repo.history(None, 10).await?.is_empty());
    Ok(())
});

/// Errors before anything connects (configuration, job, parameters) still write the result
/// file: FAILED, exit code USAGE, the error line; and create no database.
#[test]
fn usage_errors_write_the_result_file_too() {
    for (args, env, needle) in [
        (
            &[
                "run",
                "pointBalanceSyncJob",
                "date=2026-02-30",
                "--result-file",
                "r.json",
            ][..],
            &[][..],
            "2026-02-30",
        ),
        (
            &["run", "noSuchJob", "--result-file", "r.json"][..],
            &[][..],
            "noSuchJob",
        ),
        (
            &[
                "run",
                "pointBalanceSyncJob",
                "date=2026-11-20",
                "--result-file",
                "r.json",
            ][..],
            &[("BATCH__BATCH__CHUNK_SIZE", "1000000000000")][..],
            "`batch.chunk_size` (env BATCH__BATCH__CHUNK_SIZE): 1000000000000 is out of range 1..=100000",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let o = launcher(dir.path(), args, env);
        let (out, err) = text(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}\nstdout: {out}\nstderr: {err}"
        );
        let line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or(&err);
        assert!(line.contains(needle), "{args:?}: `{needle}` not in {line}");
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap())
                .unwrap();
        assert_eq!(result["status"], "FAILED", "{result}");
        assert_eq!(result["exit_code"], "USAGE", "{result}");
        assert_eq!(
            Some(result["message"].as_str().unwrap()),
            line.strip_prefix("error: "),
            "{result}"
        );
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} created the database"
        );
    }
}
