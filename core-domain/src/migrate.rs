//! Embedded migrations, one folder per dialect, and the code that applies them.
//!
//! Migrations run off the async runtime (`spawn_blocking` with diesel's sync harness) and under a
//! lock, so two processes starting at once on a fresh database apply each migration exactly once:
//! an advisory lock on PostgreSQL, `GET_LOCK` on MySQL, an exclusive `flock` of the file on SQLite.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::db::{Backend, DatabaseUrl, open_sqlite};
use crate::error::DbError;

/// The SQLite migrations (`migrations/sqlite`).
pub const SQLITE: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
/// The PostgreSQL migrations (`migrations/postgres`).
pub const POSTGRES: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
/// The MySQL / MariaDB migrations (`migrations/mysql`).
pub const MYSQL: EmbeddedMigrations = embed_migrations!("../migrations/mysql");

/// The embedded migrations of one backend.
pub fn migrations_for(backend: Backend) -> EmbeddedMigrations {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
        Backend::Mysql => MYSQL,
    }
}

/// Names of every embedded migration of a backend, in order.
pub fn all_names(backend: Backend) -> Vec<String> {
    match backend {
        Backend::Sqlite => names::<diesel::sqlite::Sqlite>(&SQLITE),
        Backend::Postgres => names::<diesel::pg::Pg>(&POSTGRES),
        Backend::Mysql => names::<diesel::mysql::Mysql>(&MYSQL),
    }
}

fn names<DB: diesel::backend::Backend>(m: &EmbeddedMigrations) -> Vec<String> {
    MigrationSource::<DB>::migrations(m)
        .map(|ms| ms.iter().map(|m| m.name().to_string()).collect())
        .unwrap_or_default()
}

/// Applies every pending migration; returns the names of those applied (empty: nothing to do).
pub async fn run_pending(url: &DatabaseUrl) -> Result<Vec<String>, DbError> {
    with_harness(url, Mode::Run).await
}

/// Lists the migrations not yet applied, without changing anything.
pub async fn pending(url: &DatabaseUrl) -> Result<Vec<String>, DbError> {
    with_harness(url, Mode::List).await
}

#[derive(Clone, Copy)]
enum Mode {
    Run,
    List,
}

#[derive(QueryableByName)]
struct LockResult {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    locked: Option<i64>,
}

/// Key of the PostgreSQL advisory lock / name of the MySQL lock held while migrating.
const LOCK_KEY: i64 = 0x6261_7463_685f_6d69; // "batch_mi"
const MYSQL_LOCK_NAME: &str = "batch_launcher_migrations";

async fn with_harness(url: &DatabaseUrl, mode: Mode) -> Result<Vec<String>, DbError> {
    let url = url.clone();
    let redacted = url.redacted();
    let migration_err = {
        let redacted = redacted.clone();
        move |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration {
            url: redacted.clone(),
            message: e.to_string(),
        }
    };
    tokio::task::spawn_blocking(move || -> Result<Vec<String>, DbError> {
        match url.backend() {
            Backend::Sqlite => {
                let path = url.sqlite_path().expect("sqlite URL has a path");
                let mut conn = open_sqlite(path).map_err(|e| e.into_db_error(&redacted))?;
                // flock on the database file itself; SQLite's own locks are fcntl locks, which
                // are independent of flock on Linux, so this does not interfere with them.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|cause| DbError::Io {
                        what: format!("opening {redacted} to lock it"),
                        cause,
                    })?;
                file.lock().map_err(|cause| DbError::Io {
                    what: format!("locking {redacted} for migrations"),
                    cause,
                })?;
                let result = apply(&mut conn, SQLITE, mode).map_err(migration_err);
                let _ = file.unlock();
                result
            }
            Backend::Postgres => {
                let mut conn =
                    AsyncConnectionWrapper::<AsyncPgConnection>::establish(url.expose_secret())
                        .map_err(|cause| DbError::Connect {
                            url: redacted.clone(),
                            cause,
                        })?;
                if let Mode::List = mode {
                    return apply(&mut conn, POSTGRES, mode).map_err(migration_err);
                }
                conn.batch_execute(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))?;
                let result = apply(&mut conn, POSTGRES, mode).map_err(migration_err);
                let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"));
                result
            }
            Backend::Mysql => {
                let mut conn =
                    AsyncConnectionWrapper::<AsyncMysqlConnection>::establish(url.expose_secret())
                        .map_err(|cause| DbError::Connect {
                            url: redacted.clone(),
                            cause,
                        })?;
                if let Mode::List = mode {
                    return apply(&mut conn, MYSQL, mode).map_err(migration_err);
                }
                let lock: LockResult = diesel::sql_query(format!(
                    "SELECT CAST(GET_LOCK('{MYSQL_LOCK_NAME}', 300) AS SIGNED) AS locked"
                ))
                .get_result(&mut conn)?;
                if lock.locked != Some(1) {
                    return Err(DbError::Migration {
                        url: redacted,
                        message: "another process held the migration lock for 300 s".into(),
                    });
                }
                let result = apply(&mut conn, MYSQL, mode).map_err(migration_err);
                let _ = conn.batch_execute(&format!("DO RELEASE_LOCK('{MYSQL_LOCK_NAME}')"));
                result
            }
        }
    })
    .await
    .map_err(|e| DbError::Other(format!("migration task failed: {e}")))?
}

fn apply<C, DB>(
    conn: &mut C,
    migrations: EmbeddedMigrations,
    mode: Mode,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB> + Connection<Backend = DB>,
    EmbeddedMigrations: MigrationSource<DB>,
{
    match mode {
        Mode::List => Ok(conn
            .pending_migrations(migrations)?
            .iter()
            .map(|m| m.name().to_string())
            .collect()),
        Mode::Run => {
            let pending = conn.pending_migrations(migrations)?;
            let mut names = Vec::with_capacity(pending.len());
            for m in &pending {
                conn.run_migration(m.as_ref())?;
                names.push(m.name().to_string());
            }
            Ok(names)
        }
    }
}
