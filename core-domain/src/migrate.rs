//! Migration sets and the code that applies them.
//!
//! Each owner of tables ships its own [`MigrationSet`] (the same migrations by the same names for
//! each dialect, and the diesel `table!` source of the tables they create): batch-common the
//! batch metadata (`migrations/batch`), core-domain the shared entities ([`DOMAIN_MIGRATIONS`],
//! `migrations/domain`), and each domain crate its own tables (`<crate>/migrations`), handed over
//! through its `JobModule`. All sets record their versions in the one
//! `__diesel_schema_migrations` table, so a version may belong to one set only (checked before
//! anything runs); a database migrated when every migration lived in one folder has the same
//! versions recorded and is up to date. [`run_pending`] and [`pending`] take the sets in the
//! order they apply.
//!
//! Migrations run off the async runtime (`spawn_blocking` with diesel's sync harness) and under a
//! lock, so two processes starting at once on a fresh database apply each migration exactly once:
//! an advisory lock on PostgreSQL, `GET_LOCK` on MySQL, an exclusive `flock` of the file on SQLite.
//! One lock covers every set of the call.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::connection::open_sqlite;
use crate::error::DbError;
use crate::url::{Backend, DatabaseUrl};

/// One owner's migrations, embedded for each dialect (build them with `embed_migrations!`). The
/// three folders hold the same migrations by the same names.
pub struct MigrationSet {
    /// Who owns these tables, for messages (e.g. `domain`, `batch`).
    pub name: &'static str,
    /// The diesel `table!` definitions of the tables these migrations create
    /// (`include_str!("schema.rs")`): the schema check compares them with every migrated
    /// backend, and `seed-demo --reset` empties these tables.
    pub schema: &'static str,
    /// The SQLite migrations.
    pub sqlite: EmbeddedMigrations,
    /// The PostgreSQL migrations.
    pub postgres: EmbeddedMigrations,
    /// The MySQL / MariaDB migrations.
    pub mysql: EmbeddedMigrations,
}

impl std::fmt::Debug for MigrationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationSet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MigrationSet {
    /// The embedded migrations of one backend.
    pub fn for_backend(&self, backend: Backend) -> &EmbeddedMigrations {
        match backend {
            Backend::Sqlite => &self.sqlite,
            Backend::Postgres => &self.postgres,
            Backend::Mysql => &self.mysql,
        }
    }

    /// The tables of [`schema`](Self::schema), in the order they are declared (a table that
    /// another one of the set refers to comes first).
    pub fn tables(&self) -> Vec<&'static str> {
        schema_tables(self.schema)
    }

    /// Names of this set's migrations for a backend, in order.
    pub fn names(&self, backend: Backend) -> Vec<String> {
        match backend {
            Backend::Sqlite => names::<diesel::sqlite::Sqlite>(&self.sqlite),
            Backend::Postgres => names::<diesel::pg::Pg>(&self.postgres),
            Backend::Mysql => names::<diesel::mysql::Mysql>(&self.mysql),
        }
    }
}

/// The business entities' tables (`migrations/domain/{sqlite,postgres,mysql}`).
pub static DOMAIN_MIGRATIONS: MigrationSet = MigrationSet {
    name: "domain",
    schema: include_str!("schema.rs"),
    sqlite: embed_migrations!("../migrations/domain/sqlite"),
    postgres: embed_migrations!("../migrations/domain/postgres"),
    mysql: embed_migrations!("../migrations/domain/mysql"),
};

/// The table names of a diesel schema source: every `name (key, ...) {` line of its `table!`s.
pub fn schema_tables(schema: &str) -> Vec<&str> {
    schema
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(") {"))
        .filter_map(|l| l.split_once(" (").map(|(name, _)| name.trim()))
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
        .map(|name| name.rsplit('.').next().unwrap_or(name))
        .collect()
}

/// A migration version that two sets both use: they share `__diesel_schema_migrations`, so
/// one's migration would count as applied for the other. `None` when all are distinct.
pub fn version_clash(backend: Backend, sets: &[&MigrationSet]) -> Option<String> {
    let mut seen: std::collections::BTreeMap<String, (&str, String)> = Default::default();
    for set in sets {
        for name in set.names(backend) {
            let version = name.split('_').next().unwrap_or(&name).replace('-', "");
            if let Some((other, other_name)) = seen.get(&version) {
                return Some(format!(
                    "migration `{name}` of `{}` has the version of `{other_name}` of `{other}`: \
                     give one of them another timestamp",
                    set.name
                ));
            }
            seen.insert(version, (set.name, name.clone()));
        }
    }
    None
}

/// Names of every migration of `sets` for a backend, set by set.
pub fn all_names(backend: Backend, sets: &[&MigrationSet]) -> Vec<String> {
    sets.iter().flat_map(|set| set.names(backend)).collect()
}

fn names<DB: diesel::backend::Backend>(m: &EmbeddedMigrations) -> Vec<String> {
    MigrationSource::<DB>::migrations(m)
        .map(|ms| ms.iter().map(|m| m.name().to_string()).collect())
        .unwrap_or_default()
}

/// Applies the pending migrations of every set, set by set in the order given, under one lock;
/// returns the names of those applied (empty: nothing to do).
pub async fn run_pending(
    url: &DatabaseUrl,
    sets: &[&'static MigrationSet],
) -> Result<Vec<String>, DbError> {
    with_harness(url, sets, Mode::Run).await
}

/// Lists the migrations of `sets` not yet applied, set by set, without changing anything.
pub async fn pending(
    url: &DatabaseUrl,
    sets: &[&'static MigrationSet],
) -> Result<Vec<String>, DbError> {
    with_harness(url, sets, Mode::List).await
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

async fn with_harness(
    url: &DatabaseUrl,
    sets: &[&'static MigrationSet],
    mode: Mode,
) -> Result<Vec<String>, DbError> {
    let url = url.clone();
    let sets = sets.to_vec();
    let redacted = url.redacted();
    if let Some(clash) = version_clash(url.backend(), &sets) {
        return Err(DbError::Migration {
            url: redacted,
            message: clash,
        });
    }
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
                let result =
                    apply_all(&mut conn, &sets, Backend::Sqlite, mode).map_err(migration_err);
                let _ = file.unlock();
                result
            }
            Backend::Postgres => {
                // Connected on the caller's runtime (this is its blocking pool), where the
                // wrapper's `block_on` runs the connection too.
                let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
                    tokio::runtime::Handle::current()
                        .block_on(crate::url_tls::connect_pg(url.expose_secret()))
                        .map_err(|cause| DbError::Connect {
                            url: redacted.clone(),
                            cause,
                        })?
                        .into();
                if let Mode::List = mode {
                    return apply_all(&mut conn, &sets, Backend::Postgres, mode)
                        .map_err(migration_err);
                }
                conn.batch_execute(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))?;
                let result =
                    apply_all(&mut conn, &sets, Backend::Postgres, mode).map_err(migration_err);
                let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"));
                result
            }
            Backend::Mysql => {
                let mut conn: AsyncConnectionWrapper<AsyncMysqlConnection> =
                    tokio::runtime::Handle::current()
                        .block_on(crate::url_tls::connect_mysql(url.expose_secret()))
                        .map_err(|cause| DbError::Connect {
                            url: redacted.clone(),
                            cause,
                        })?
                        .into();
                if let Mode::List = mode {
                    return apply_all(&mut conn, &sets, Backend::Mysql, mode)
                        .map_err(migration_err);
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
                let result =
                    apply_all(&mut conn, &sets, Backend::Mysql, mode).map_err(migration_err);
                let _ = conn.batch_execute(&format!("DO RELEASE_LOCK('{MYSQL_LOCK_NAME}')"));
                result
            }
        }
    })
    .await
    .map_err(|e| DbError::Other(format!("migration task failed: {e}")))?
}

/// Applies (or lists) the pending migrations of each set in turn: a set's migrations run in
/// version order, and a later set starts only once the earlier ones are complete.
fn apply_all<C, DB>(
    conn: &mut C,
    sets: &[&'static MigrationSet],
    backend: Backend,
    mode: Mode,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB> + Connection<Backend = DB>,
    EmbeddedMigrations: MigrationSource<DB>,
{
    let mut names = Vec::new();
    for set in sets {
        names.extend(apply(conn, set.for_backend(backend), mode)?);
    }
    Ok(names)
}

fn apply<C, DB>(
    conn: &mut C,
    migrations: &'static EmbeddedMigrations,
    mode: Mode,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB> + Connection<Backend = DB>,
    EmbeddedMigrations: MigrationSource<DB>,
{
    let migrations = Source(migrations);
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

/// A borrowed embedded set as a [`MigrationSource`] (diesel takes sources by value).
struct Source(&'static EmbeddedMigrations);

impl<DB: diesel::backend::Backend> MigrationSource<DB> for Source
where
    EmbeddedMigrations: MigrationSource<DB>,
{
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<DB>>>> {
        MigrationSource::<DB>::migrations(self.0)
    }
}
