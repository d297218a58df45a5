//! Migrations: applied once, a second run is a no-op, unmigrated databases are refused.

use batch_testkit::TestDb;
use core_domain::{Backend, Database, DbError, PoolOptions, migrate};

async fn migrate_twice_is_a_no_op(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    let all = migrate::all_names(backend);
    assert_eq!(all.len(), 2, "embedded migrations for {backend}: {all:?}");
    assert_eq!(migrate::pending(db.url()).await.unwrap(), all);

    let applied = migrate::run_pending(db.url()).await.unwrap();
    assert_eq!(applied.len(), all.len());
    assert!(migrate::pending(db.url()).await.unwrap().is_empty());
    assert!(
        migrate::run_pending(db.url()).await.unwrap().is_empty(),
        "second run applied something"
    );
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
        migrate::run_pending(db.url()),
        migrate::run_pending(db.url()),
        migrate::run_pending(db.url()),
    );
    let applied: usize = [a, b, c].into_iter().map(|r| r.unwrap().len()).sum();
    assert_eq!(applied, migrate::all_names(backend).len());
    assert!(migrate::pending(db.url()).await.unwrap().is_empty());
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
        let err = Database::connect(db.url(), &PoolOptions::default())
            .await
            .unwrap_err();
        match &err {
            DbError::SchemaNotMigrated { pending, .. } => assert_eq!(pending.len(), 2),
            other => panic!("{backend}: expected SchemaNotMigrated, got {other}"),
        }
        assert!(err.to_string().contains("batch-launcher migrate"), "{err}");
        // Nothing was created by the refused connect.
        assert_eq!(migrate::pending(db.url()).await.unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_created_and_migrated_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/batch.db");
    let url = core_domain::DatabaseUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    let db = Database::connect(&url, &PoolOptions::default())
        .await
        .unwrap();
    assert!(path.exists());
    assert!(migrate::pending(&url).await.unwrap().is_empty());
    let mut conn = db.get().await.unwrap();
    assert_eq!(
        core_domain::models::PointBalance::count(&mut conn)
            .await
            .unwrap(),
        0
    );
}
