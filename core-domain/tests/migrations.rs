//! The migration machinery over core-domain's own set: applied once, a second run is a no-op,
//! concurrent first runs apply each migration once, unmigrated server databases are refused.
//! Several sets in order, and databases migrated by earlier releases, are tested in batch-common
//! (`tests/migrations.rs`), which owns the second set.

use batch_testkit::TestDb;
use core_domain::migrate::{self, DOMAIN_MIGRATIONS};
use core_domain::{Backend, Database, DbError, MigrationSet, PoolOptions};

const DOMAIN: &[&MigrationSet] = &[&DOMAIN_MIGRATIONS];

async fn migrate_twice_is_a_no_op(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    let all = migrate::all_names(backend, DOMAIN);
    // Every folder of migrations/domain/<dialect> is embedded (build.rs re-embeds on change).
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::Mysql => "mysql",
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations/domain")
        .join(dialect);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert!(!on_disk.is_empty());
    assert_eq!(all, on_disk, "embedded domain migrations for {backend}");
    assert_eq!(migrate::pending(db.url(), DOMAIN).await.unwrap(), all);

    let applied = migrate::run_pending(db.url(), DOMAIN).await.unwrap();
    assert_eq!(applied, all);
    assert!(migrate::pending(db.url(), DOMAIN).await.unwrap().is_empty());
    assert!(
        migrate::run_pending(db.url(), DOMAIN)
            .await
            .unwrap()
            .is_empty(),
        "second run applied something"
    );
    // No set at all: nothing to list or apply.
    assert!(migrate::pending(db.url(), &[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrate_twice_is_a_no_op() {
    migrate_twice_is_a_no_op(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_twice_is_a_no_op() {
    migrate_twice_is_a_no_op(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_migrate_twice_is_a_no_op() {
    migrate_twice_is_a_no_op(Backend::Mysql).await;
}

async fn concurrent_first_migrations_apply_once(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    let (a, b, c) = tokio::join!(
        migrate::run_pending(db.url(), DOMAIN),
        migrate::run_pending(db.url(), DOMAIN),
        migrate::run_pending(db.url(), DOMAIN),
    );
    let applied: usize = [a, b, c].into_iter().map(|r| r.unwrap().len()).sum();
    assert_eq!(applied, migrate::all_names(backend, DOMAIN).len());
    assert!(migrate::pending(db.url(), DOMAIN).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_first_migrations_apply_once() {
    concurrent_first_migrations_apply_once(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_first_migrations_apply_once() {
    concurrent_first_migrations_apply_once(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_first_migrations_apply_once() {
    concurrent_first_migrations_apply_once(Backend::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_databases_must_be_migrated_before_use() {
    for backend in [Backend::Postgres, Backend::Mysql] {
        let db = TestDb::unmigrated(backend).await;
        let err = Database::connect(db.url(), &PoolOptions::default(), DOMAIN)
            .await
            .unwrap_err();
        match &err {
            DbError::SchemaNotMigrated { pending, .. } => {
                assert_eq!(pending, &migrate::all_names(backend, DOMAIN))
            }
            other => panic!("{backend}: expected SchemaNotMigrated, got {other}"),
        }
        assert!(err.to_string().contains("batch-launcher migrate"), "{err}");
        // Nothing was created by the refused connect.
        assert_eq!(migrate::pending(db.url(), DOMAIN).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_created_and_migrated_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/batch.db");
    let url = core_domain::DatabaseUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    let db = Database::connect(&url, &PoolOptions::default(), DOMAIN)
        .await
        .unwrap();
    assert!(path.exists());
    assert!(migrate::pending(&url, DOMAIN).await.unwrap().is_empty());
    let mut conn = db.get().await.unwrap();
    assert_eq!(
        core_domain::models::PointBalance::count(&mut conn)
            .await
            .unwrap(),
        0
    );
}
