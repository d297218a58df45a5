//! Two migration sets, domain then batch metadata, and databases migrated by an earlier release.
//!
//! Until 2026-11 every migration lived in one folder per dialect (`migrations/{dialect}`). The
//! release's set is kept frozen in `tests/fixtures/migrations-2026-11`: a database it migrated
//! must be up to date for today's two sets and keep its rows and its migration history.

use batch_common::repository::{
    BASE_MIGRATIONS, CreateExecution, JobRepository, METADATA_MIGRATIONS, StepCounts, StepProgress,
};
use batch_testkit::TestDb;
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

/// The same migrations in today's order of sets: the runtime's metadata, then the shared entities.
const BASE_ORDER: [&str; 2] = [NAMES[1], NAMES[0]];

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

async fn a_database_of_the_2026_11_release_is_up_to_date(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    let old: &[&'static MigrationSet] = &[&RELEASE_2026_11];
    assert_eq!(migrate::all_names(backend, old), NAMES);
    assert_eq!(
        migrate::run_pending(db.url(), old).await.unwrap(),
        NAMES,
        "{backend}: the release's set"
    );

    // History written by the release: an instance, a finished execution with a step.
    let repo = JobRepository::new(db.db.clone());
    let instance = repo
        .get_or_create_instance("legacyJob", "k1", "{}", at(1))
        .await
        .unwrap();
    let CreateExecution::Created { execution, .. } = repo
        .create_execution(instance.id, "{}", "old-host:1", at(1), at(0))
        .await
        .unwrap()
    else {
        panic!("{backend}: no execution created");
    };
    let step = repo
        .create_step_execution(execution.id, "legacyStep", &StepProgress::default(), at(1))
        .await
        .unwrap();
    repo.finish_step(
        step.id,
        batch_common::repository::BatchStatus::Completed,
        "COMPLETED",
        None,
        &StepProgress {
            counts: StepCounts {
                read_count: 7,
                write_count: 7,
                ..StepCounts::default()
            },
            ..StepProgress::default()
        },
        at(2),
    )
    .await
    .unwrap();
    repo.finish_execution(
        execution.id,
        batch_common::repository::BatchStatus::Completed,
        "COMPLETED",
        None,
        at(2),
    )
    .await
    .unwrap();
    let versions_before = recorded_versions(&mut *db.conn().await).await;
    assert_eq!(versions_before, ["20261121000001", "20261121000002"]);

    // Today's code: nothing pending, connect accepts it (PostgreSQL and MySQL refuse a database
    // with pending migrations; SQLite would apply them), migrating applies nothing.
    assert_eq!(migrate::all_names(backend, BASE_MIGRATIONS), BASE_ORDER);
    assert!(
        migrate::pending(db.url(), BASE_MIGRATIONS)
            .await
            .unwrap()
            .is_empty(),
        "{backend}: pending after the release's migrations"
    );
    let new = Database::connect(db.url(), &PoolOptions::default(), BASE_MIGRATIONS)
        .await
        .unwrap_or_else(|e| panic!("{backend}: connect refused a migrated database: {e}"));
    assert!(
        migrate::run_pending(db.url(), BASE_MIGRATIONS)
            .await
            .unwrap()
            .is_empty(),
        "{backend}: migrating applied something"
    );

    // The history is still there, read through today's repository, and so is the record of
    // which migrations ran.
    let repo = JobRepository::new(new.clone());
    let history = repo.history(Some("legacyJob"), 10).await.unwrap();
    assert_eq!(history.len(), 1, "{backend}: history");
    let (e, i) = &history[0];
    assert_eq!((e.id, i.id), (execution.id, instance.id));
    assert_eq!((e.status.as_str(), e.end_time), ("COMPLETED", Some(at(2))));
    let steps = repo.step_executions(execution.id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].counts.read_count, steps[0].counts.write_count),
        (7, 7)
    );
    let mut conn = new.get().await.unwrap();
    assert_eq!(recorded_versions(&mut conn).await, versions_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_database_of_the_2026_11_release_is_up_to_date() {
    a_database_of_the_2026_11_release_is_up_to_date(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_database_of_the_2026_11_release_is_up_to_date() {
    a_database_of_the_2026_11_release_is_up_to_date(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_database_of_the_2026_11_release_is_up_to_date() {
    a_database_of_the_2026_11_release_is_up_to_date(Backend::Mysql).await;
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
        ["20261121000001", "20261121000002"]
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
            DbError::SchemaNotMigrated { pending, .. } => assert_eq!(pending, &NAMES[1..]),
            other => panic!("{backend}: expected SchemaNotMigrated, got {other}"),
        }
        assert!(err.to_string().contains("batch-launcher migrate"), "{err}");
        assert_eq!(
            migrate::pending(db.url(), &[&METADATA_MIGRATIONS])
                .await
                .unwrap(),
            &NAMES[1..],
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
