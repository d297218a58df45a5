//! Every registered module, whatever it is, through the launcher a user runs: its migrations in
//! `migrate` and the schema check, its jobs in `list`, its section and schedules in `config`,
//! `--validate-only` refusing exactly what the run refuses, and — for the jobs that need nothing
//! but the database — a run, a NOOP, a restart after SIGKILL and `seed-demo --reset`. Nothing here
//! names a module: the test command (scripts/test.sh) builds the launcher with the example
//! domain registered, so a domain with its own table is covered.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batch_common::job::{JobDescriptor, ParamDefault};
use batch_common::repository::{BASE_MIGRATIONS, JobRepository};
use batch_launcher::modules::{MODULES, Registry};
use batch_testkit::{TestDb, db_test};
use core_domain::{Backend, DbConnection, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use crate::{launcher, refused_value, text};

/// The schema check over every set the launcher applies: the runtime's, the shared entities',
/// and each registered module's, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_module_s_tables_pass_the_schema_check() {
    let sets = Registry::default().migrations();
    let names =
        |sets: &[&core_domain::MigrationSet]| sets.iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(
        names(&sets[..BASE_MIGRATIONS.len()]),
        names(BASE_MIGRATIONS),
        "base sets first"
    );
    for module in MODULES {
        if let Some(set) = module.migrations() {
            assert!(
                sets.iter().any(|s| std::ptr::eq(*s, set)),
                "{}'s set is missing",
                module.name()
            );
        }
    }
    batch_testkit::schema::check_migration_sets(&sets).await;
}

/// `list` shows every job with its parameters; `config` every section and default schedule.
#[test]
fn list_and_config_show_every_module() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(dir.path(), &["list"], &[]);
    let (list, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let o = launcher(dir.path(), &["config"], &[]);
    let (config, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    for module in MODULES {
        for job in module.jobs() {
            let d = job.descriptor;
            assert!(list.contains(d.name), "{} not in list:\n{list}", d.name);
            for p in d.parameters {
                let shown = format!("{}=<{}", p.name, p.kind);
                assert!(list.contains(&shown), "`{shown}` not in list:\n{list}");
                let default = format!("default: {}", p.default);
                assert!(list.contains(&default), "`{default}` not in list:\n{list}");
            }
        }
        if let Some(spec) = module.settings() {
            assert!(config.contains(&format!("[{}]", spec.name)), "{config}");
        }
        for (job, cron) in module.default_schedules() {
            assert!(
                config.contains(&format!("{job} = \"{cron}\"")),
                "schedule of {job} not in config:\n{config}"
            );
        }
    }
}

fn every_job() -> Vec<&'static JobDescriptor> {
    MODULES
        .iter()
        .flat_map(|m| m.jobs())
        .map(|j| j.descriptor)
        .collect()
}

/// `--validate-only` resolves the parameters as the run does: defaults filled in (or a missing
/// required one named), and every malformed value refused with exit 2 — by `--validate-only`
/// and by the run itself, which writes nothing (not even the SQLite file).
#[test]
fn validate_only_refuses_what_the_run_refuses() {
    for job in every_job() {
        let dir = tempfile::tempdir().unwrap();
        let o = launcher(dir.path(), &["run", job.name, "--validate-only"], &[]);
        let (out, err) = text(&o);
        let required: Vec<_> = job
            .parameters
            .iter()
            .filter(|p| p.default == ParamDefault::Required)
            .collect();
        if let Some(p) = required.into_iter().next() {
            assert_eq!(o.status.code(), Some(2), "{}: {out}{err}", job.name);
            assert!(err.contains(p.name), "{}: {err}", job.name);
        } else {
            assert_eq!(o.status.code(), Some(0), "{}: {out}{err}", job.name);
            for p in job
                .parameters
                .iter()
                .filter(|p| p.default != ParamDefault::None)
            {
                assert!(
                    out.contains(&format!("{}=", p.name)),
                    "{}: default of {} not shown: {out}",
                    job.name,
                    p.name
                );
            }
        }
        for p in job.parameters {
            let Some(bad) = refused_value(p.kind) else {
                continue;
            };
            let arg = format!("{}={bad}", p.name);
            for extra in [&["--validate-only"][..], &[][..]] {
                let mut args = vec!["run", job.name, arg.as_str()];
                args.extend_from_slice(extra);
                let o = launcher(dir.path(), &args, &[]);
                let (out, err) = text(&o);
                assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
                assert!(
                    err.contains(p.name) && err.contains(&bad),
                    "{args:?}: the error names neither the parameter nor the value: {err}"
                );
            }
            assert!(
                !dir.path().join("data").exists(),
                "{}: a refused run created the database",
                job.name
            );
        }
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn rows(conn: &mut DbConnection, table: &str) -> i64 {
    let sql = match conn {
        DbConnection::Mysql(_) => format!("SELECT COUNT(*) AS n FROM `{table}`"),
        _ => format!("SELECT COUNT(*) AS n FROM \"{table}\""),
    };
    let count: Count = dispatch!(conn, c => diesel::sql_query(&sql).get_result(c).await)
        .unwrap_or_else(|e| panic!("counting {table}: {e}"));
    count.n
}

/// The jobs that need nothing but the database (their module asks for no other setting).
fn database_only_jobs() -> Vec<&'static JobDescriptor> {
    MODULES
        .iter()
        .filter(|m| m.deployment_settings().is_empty())
        .flat_map(|m| m.jobs())
        .map(|j| j.descriptor)
        .collect()
}

db_test!(modules = MODULES; async fn database_only_jobs_run_noop_restart_after_sigkill_and_reset(db) {
    let dir = tempfile::tempdir()?;
    let env = [
        ("BATCH__DATABASE__URL", db.url().expose_secret()),
        ("BATCH__BATCH__CHUNK_SIZE", "5"),
        ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms"),
        ("BATCH__BATCH__STALE_AFTER", "1s"),
    ];
    let o = launcher(dir.path(), &["seed-demo", "--users", "3000", "--transactions-per-user", "0"], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let repo = JobRepository::new(db.db.clone());
    let jobs = database_only_jobs();
    if jobs.is_empty() {
        eprintln!("no registered job needs only the database: only seed-demo --reset is checked");
    }
    for job in &jobs {
        // Killed after its first committed chunks, then relaunched once its heartbeat is stale:
        // the restart resumes from the checkpoint and completes.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
        cmd.current_dir(dir.path()).args(["run", job.name]);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BATCH_")) {
            cmd.env_remove(k);
        }
        let mut child = cmd.envs(env).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let start = Instant::now();
        let killed = loop {
            assert!(start.elapsed() < Duration::from_secs(60), "{}: no chunk committed", job.name);
            if let Some((e, _)) = repo.history(Some(job.name), 1).await?.into_iter().next() {
                let steps = repo.step_executions(e.id).await?;
                if steps.iter().any(|s| s.counts.commit_count >= 2) {
                    break e.id;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        child.kill()?;
        child.wait()?;
        let dead = repo.execution(killed).await?.unwrap();
        if dead.status != "STARTED" {
            // It finished before the kill landed: the restart below is a NOOP, still checked.
            eprintln!("{}: execution {killed} ended {} before SIGKILL", job.name, dead.status);
        }
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let o = launcher(dir.path(), &["run", job.name], &env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{}: {out}\n{err}", job.name);
        let history = repo.history(Some(job.name), 10).await?;
        let (last, _) = &history[0];
        assert_eq!(last.status, "COMPLETED", "{}", job.name);
        // The same instance again: nothing to do.
        let o = launcher(dir.path(), &["run", job.name], &env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
        assert!(out.contains("nothing to do") || err.contains("nothing to do"), "{}: {out}{err}", job.name);
        // A full run (--rerun) reads everything: the restart read less, and together with the
        // killed run's committed chunks at least all of it.
        let o = launcher(dir.path(), &["run", job.name, "--rerun"], &env);
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        let read = |steps: Vec<batch_common::repository::StepExecution>| -> i64 {
            steps.iter().map(|s| s.counts.read_count).sum()
        };
        let full_id = repo.history(Some(job.name), 1).await?[0].0.id;
        let full = read(repo.step_executions(full_id).await?);
        if dead.status == "STARTED" {
            assert_eq!(repo.execution(killed).await?.unwrap().status, "FAILED", "abandoned");
            let before = read(repo.step_executions(killed).await?);
            let after = read(repo.step_executions(last.id).await?);
            assert!(before > 0, "{}: nothing committed before the kill", job.name);
            assert!(
                after < full && before + after >= full,
                "{}: killed run read {before}, its restart {after}, a full run {full}: the restart did not resume from the checkpoint",
                job.name
            );
        }
    }

    // `seed-demo --reset` empties every module's tables and the shared ones, then seeds anew.
    let o = launcher(dir.path(), &["seed-demo", "--reset", "--users", "5", "--transactions-per-user", "0"], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let mut conn = db.conn().await;
    for set in Registry::default().migrations().iter().skip(BASE_MIGRATIONS.len()) {
        for table in set.tables() {
            assert_eq!(rows(&mut conn, table).await, 0, "{table} of `{}` kept rows", set.name);
        }
    }
    assert_eq!(rows(&mut conn, "users").await, 5, "the shared entities were seeded anew");
    if !jobs.is_empty() {
        assert!(!repo.history(None, 1).await?.is_empty(), "the reset deleted the run history");
    }
    Ok(())
});

/// A database migrated before the modules' own sets existed (the base sets only, as every
/// release so far left it) is brought up to date by `migrate` alone: exactly the modules' sets
/// are applied, in order; until then a run refuses it naming them (SQLite applies them itself).
async fn an_existing_database_gets_the_modules_sets_from_migrate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sets = Registry::default().migrations();
    let modules_only: Vec<String> =
        core_domain::migrate::all_names(backend, &sets[BASE_MIGRATIONS.len()..]);
    assert_eq!(
        core_domain::migrate::pending(db.url(), &sets)
            .await
            .unwrap(),
        modules_only
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret())];
    if !modules_only.is_empty() && backend != Backend::Sqlite {
        let o = launcher(dir.path(), &["history"], &env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}{err}");
        assert!(
            err.contains("batch-launcher migrate") && err.contains(&modules_only[0]),
            "{err}"
        );
    }
    let o = launcher(dir.path(), &["migrate"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    if modules_only.is_empty() {
        assert!(out.contains("up to date"), "{out}");
    } else {
        assert!(
            out.contains(&format!("applied {} migration(s)", modules_only.len())),
            "{out}"
        );
        assert!(out.contains(&modules_only.join(", ")), "{out}");
    }
    assert!(
        core_domain::migrate::pending(db.url(), &sets)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_existing_database_gets_the_modules_sets_from_migrate() {
    an_existing_database_gets_the_modules_sets_from_migrate(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_existing_database_gets_the_modules_sets_from_migrate() {
    an_existing_database_gets_the_modules_sets_from_migrate(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_an_existing_database_gets_the_modules_sets_from_migrate() {
    an_existing_database_gets_the_modules_sets_from_migrate(Backend::Mysql).await;
}
