//! Two migration sets, domain then batch metadata, and databases migrated by an earlier release.
//!
//! Until 2026-11 every migration lived in one folder per dialect (`migrations/{dialect}`). The
//! release's set is kept frozen in `tests/fixtures/migrations-2026-11`: a database it migrated
//! is recognised by today's two sets (only later migrations are pending), keeps its rows and its
//! migration history, and its failed executions restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::params::{JobParameters, ParamContext};
use batch_common::repository::{
    BASE_MIGRATIONS, CreateExecution, JobRepository, METADATA_MIGRATIONS,
};
use batch_common::{FixedClock, SystemClock};
use batch_testkit::TestDb;
use batch_testkit::jobs::{COUNTING, COUNTING_JOB, CountingJob, FailPlan, written_items};
use chrono::NaiveDate;
use core_domain::migrate::{self, DOMAIN_MIGRATIONS};
use core_domain::{Backend, Database, DbConnection, DbError, MigrationSet, PoolOptions, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use diesel_migrations::embed_migrations;

/// The migrations exactly as the 2026-11 release shipped them: one set holding both migrations.
static RELEASE_2026_11: MigrationSet = MigrationSet {
    name: "release-2026-11",
    // Not schema-checked: today's sets own its tables.
    schema: "",
    sqlite: embed_migrations!("tests/fixtures/migrations-2026-11/sqlite"),
    postgres: embed_migrations!("tests/fixtures/migrations-2026-11/postgres"),
    mysql: embed_migrations!("tests/fixtures/migrations-2026-11/mysql"),
};

const NAMES: [&str; 2] = [
    "2026-11-21-000001_create_domain_tables",
    "2026-11-21-000002_create_batch_metadata",
];

/// The runtime's migration after the release: partitioned steps (worker step executions).
const PARTITIONS: &str = "2026-12-04-000001_partitioned_steps";

/// Today's migrations in their order of sets: the runtime's metadata, then the shared entities.
const BASE_ORDER: [&str; 3] = [NAMES[1], PARTITIONS, NAMES[0]];

/// core-domain's migrations once more, as a second owner's set: every version clashes.
static CLASHING: MigrationSet = MigrationSet {
    name: "clashing",
    schema: "",
    sqlite: embed_migrations!("../migrations/domain/sqlite"),
    postgres: embed_migrations!("../migrations/domain/postgres"),
    mysql: embed_migrations!("../migrations/domain/mysql"),
};

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// The versions recorded in `__diesel_schema_migrations`, in order.
async fn recorded_versions(conn: &mut DbConnection) -> Vec<String> {
    let sql = "SELECT version FROM __diesel_schema_migrations ORDER BY version";
    let rows: Vec<Version> = dispatch!(conn, c => diesel::sql_query(sql).load(c).await)
        .expect("reading __diesel_schema_migrations");
    rows.into_iter().map(|r| r.version).collect()
}

fn at(h: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 20)
        .and_then(|d| d.and_hms_opt(h, 0, 0))
        .unwrap()
}

async fn a_database_of_the_2026_11_release_migrates_and_restarts(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    let old: &[&'static MigrationSet] = &[&RELEASE_2026_11];
    assert_eq!(migrate::all_names(backend, old), NAMES);
    assert_eq!(
        migrate::run_pending(db.url(), old).await.unwrap(),
        NAMES,
        "{backend}: the release's set"
    );

    // History written by the release: a countingJob instance whose execution failed in
    // countStep after 4 chunks (checkpoint: next number 41). The step row is written as the
    // release wrote it (its columns only).
    let repo = JobRepository::new(db.db.clone());
    let ctx = ParamContext::new(&FixedClock::new(at(1).and_utc()), chrono_tz::UTC);
    let given = BTreeMap::from([("run".to_owned(), "legacy".to_owned())]);
    let params = JobParameters::resolve(&COUNTING, given, &ctx).unwrap();
    let instance = repo
        .get_or_create_instance(
            COUNTING_JOB,
            &params.job_key(),
            &params.identifying_json(),
            at(1),
        )
        .await
        .unwrap();
    let CreateExecution::Created { execution, .. } = repo
        .create_execution(instance.id, &params.to_json(), "old-host:1", at(1), at(0))
        .await
        .unwrap()
    else {
        panic!("{backend}: no execution created");
    };
    let legacy_step = format!(
        "INSERT INTO batch_step_execution (job_execution_id, step_name, status, read_count, \
         write_count, filter_count, skip_count, commit_count, rollback_count, retry_count, \
         counters, execution_context, exit_code, exit_message, start_time, end_time, last_updated) \
         VALUES ({}, 'countStep', 'FAILED', 40, 40, 0, 0, 4, 0, 0, '{{}}', '{{\"next\":41}}', \
         'FAILED', 'boom', '2026-11-20 01:00:00', '2026-11-20 02:00:00', '2026-11-20 02:00:00')",
        execution.id
    );
    let mut conn = db.conn().await;
    dispatch!(&mut *conn, c => diesel::sql_query(legacy_step.as_str()).execute(c).await).unwrap();
    drop(conn);
    repo.finish_execution(
        execution.id,
        batch_common::repository::BatchStatus::Failed,
        "FAILED",
        Some("countStep failed: boom"),
        at(2),
    )
    .await
    .unwrap();
    let versions_before = recorded_versions(&mut *db.conn().await).await;
    assert_eq!(versions_before, ["20261121000001", "20261121000002"]);

    // Today's code: the release's migrations are recognised; only this change's is pending
    // (PostgreSQL and MySQL refuse to connect until it is applied; SQLite applies it).
    assert_eq!(migrate::all_names(backend, BASE_MIGRATIONS), BASE_ORDER);
    assert_eq!(
        migrate::pending(db.url(), BASE_MIGRATIONS).await.unwrap(),
        [PARTITIONS],
        "{backend}: pending after the release's migrations"
    );
    assert_eq!(
        migrate::run_pending(db.url(), BASE_MIGRATIONS)
            .await
            .unwrap(),
        [PARTITIONS],
        "{backend}: migrating"
    );
    let new = Database::connect(db.url(), &PoolOptions::default(), BASE_MIGRATIONS)
        .await
        .unwrap_or_else(|e| panic!("{backend}: connect refused a migrated database: {e}"));
    assert!(
        migrate::run_pending(db.url(), BASE_MIGRATIONS)
            .await
            .unwrap()
            .is_empty(),
        "{backend}: migrating twice applied something"
    );

    // The history is still there, read through today's repository.
    let repo = JobRepository::new(new.clone());
    let history = repo.history(Some(COUNTING_JOB), 10).await.unwrap();
    assert_eq!(history.len(), 1, "{backend}: history");
    let (e, i) = &history[0];
    assert_eq!((e.id, i.id), (execution.id, instance.id));
    assert_eq!((e.status.as_str(), e.end_time), ("FAILED", Some(at(2))));
    let steps = repo.step_executions(execution.id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (
            steps[0].counts.read_count,
            steps[0].partition_of,
            steps[0].claim_count
        ),
        (40, None, 0)
    );
    let mut conn = new.get().await.unwrap();
    let mut versions = versions_before.clone();
    versions.push("20261204000001".to_owned());
    assert_eq!(recorded_versions(&mut conn).await, versions);
    drop(conn);

    // Today's launcher restarts the release's failed execution from its checkpoint.
    let mut settings = BatchProperties::load_from(None, Vec::new(), &[])
        .unwrap()
        .batch;
    settings.step_retry_attempts = 0;
    let launcher = JobLauncher::new(repo.clone(), Arc::new(SystemClock), settings);
    let given = BTreeMap::from([
        ("run".to_owned(), "legacy".to_owned()),
        ("items".to_owned(), "100".to_owned()),
    ]);
    let job = CountingJob {
        plan: Arc::new(FailPlan::default()),
    };
    let result = launcher
        .launch(&job, given, &LaunchOptions::default())
        .await
        .unwrap();
    assert_eq!(result.status.as_str(), "COMPLETED", "{backend}: {result}");
    assert_eq!(
        result.steps[0].counts.read_count, 60,
        "{backend}: resumed at 41"
    );
    assert_eq!(
        written_items(&db).await,
        (41..=100).collect::<Vec<_>>(),
        "{backend}: the restart wrote 41..=100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_database_of_the_2026_11_release_migrates_and_restarts() {
    a_database_of_the_2026_11_release_migrates_and_restarts(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_database_of_the_2026_11_release_migrates_and_restarts() {
    a_database_of_the_2026_11_release_migrates_and_restarts(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_database_of_the_2026_11_release_migrates_and_restarts() {
    a_database_of_the_2026_11_release_migrates_and_restarts(Backend::Mysql).await;
}

async fn both_sets_apply_in_order_once(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    assert_eq!(
        migrate::pending(db.url(), BASE_MIGRATIONS).await.unwrap(),
        BASE_ORDER
    );
    assert_eq!(
        migrate::run_pending(db.url(), BASE_MIGRATIONS)
            .await
            .unwrap(),
        BASE_ORDER,
        "the batch metadata first, then the shared entities"
    );
    assert!(
        migrate::run_pending(db.url(), BASE_MIGRATIONS)
            .await
            .unwrap()
            .is_empty(),
        "second run applied something"
    );
    assert_eq!(
        recorded_versions(&mut *db.conn().await).await,
        ["20261121000001", "20261121000002", "20261204000001"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_both_sets_apply_in_order_once() {
    both_sets_apply_in_order_once(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_both_sets_apply_in_order_once() {
    both_sets_apply_in_order_once(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_both_sets_apply_in_order_once() {
    both_sets_apply_in_order_once(Backend::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checks_every_set() {
    for backend in [Backend::Postgres, Backend::Mysql] {
        // Only the domain's tables: the metadata's migration is pending, and connect says so.
        let db = TestDb::unmigrated(backend).await;
        migrate::run_pending(db.url(), &[&DOMAIN_MIGRATIONS])
            .await
            .unwrap();
        let err = Database::connect(db.url(), &PoolOptions::default(), BASE_MIGRATIONS)
            .await
            .unwrap_err();
        match &err {
            DbError::SchemaNotMigrated { pending, .. } => {
                assert_eq!(pending, &BASE_ORDER[..2])
            }
            other => panic!("{backend}: expected SchemaNotMigrated, got {other}"),
        }
        assert!(err.to_string().contains("batch-launcher migrate"), "{err}");
        assert_eq!(
            migrate::pending(db.url(), &[&METADATA_MIGRATIONS])
                .await
                .unwrap(),
            &BASE_ORDER[..2],
            "{backend}: the refused connect migrated something"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_created_with_both_sets_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/batch.db");
    let url = core_domain::DatabaseUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    let db = Database::connect(&url, &PoolOptions::default(), BASE_MIGRATIONS)
        .await
        .unwrap();
    assert!(
        migrate::pending(&url, BASE_MIGRATIONS)
            .await
            .unwrap()
            .is_empty()
    );
    let repo = JobRepository::new(db);
    assert!(repo.history(None, 10).await.unwrap().is_empty());
}

/// Released migrations never change: the files under `migrations/{domain,batch}` are byte for
/// byte those the 2026-11 release shipped under `migrations/{dialect}`.
#[test]
fn released_migrations_are_unchanged() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dialect in ["sqlite", "postgres", "mysql"] {
        for (owner, name) in [("domain", NAMES[0]), ("batch", NAMES[1])] {
            for file in ["up.sql", "down.sql"] {
                let frozen = root.join(format!(
                    "tests/fixtures/migrations-2026-11/{dialect}/{name}/{file}"
                ));
                let today = root.join(format!("../migrations/{owner}/{dialect}/{name}/{file}"));
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p)
                        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
                };
                assert_eq!(
                    read(&frozen),
                    read(&today),
                    "{} differs from the released {}",
                    today.display(),
                    frozen.display()
                );
            }
        }
    }
}

/// Two sets that use one version would share its row in `__diesel_schema_migrations`: refused
/// before anything runs, naming both migrations and sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_two_sets_use_is_refused() {
    let db = TestDb::unmigrated(Backend::Sqlite).await;
    let sets: &[&'static MigrationSet] = &[&DOMAIN_MIGRATIONS, &CLASHING];
    let err = migrate::run_pending(db.url(), sets).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`clashing`") && text.contains("`domain`") && text.contains(NAMES[0]),
        "{text}"
    );
    // Nothing was applied.
    assert_eq!(
        migrate::run_pending(db.url(), &[&DOMAIN_MIGRATIONS])
            .await
            .unwrap(),
        [NAMES[0]],
        "the refused call applied something"
    );
}
