//! The three-backend database layer.
//!
//! A [`DatabaseUrl`] picks the backend at run time (`sqlite://`, `postgres://`, `mysql://`).
//! [`DbConnection`] is an enum over the three diesel-async connections and [`dispatch!`](crate::dispatch)
//! expands one diesel expression in each arm, so every query is written once and type-checked for
//! every backend. [`Database`] is a bb8 pool of such connections.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::connection::{BoxFuture, DbConnection, SqliteConn};
use crate::error::DbError;
use crate::migrate::{self, MigrationSet};
pub use crate::url::{Backend, DatabaseUrl, redact};

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Maximum open connections.
    pub max_connections: u32,
    /// How long `get()` waits for a free connection.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// bb8 manager for [`DbConnection`].
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    url: DatabaseUrl,
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = DbError;

    async fn connect(&self) -> Result<DbConnection, DbError> {
        DbConnection::establish(&self.url).await
    }

    async fn is_valid(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        conn.batch_execute("SELECT 1").await.map_err(DbError::from)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        // A connection returned while a transaction is still open (a panic or a dropped future
        // mid-transaction) must not be reused.
        conn.in_transaction()
    }
}

/// A pooled connection; derefs to [`DbConnection`].
pub type PooledConnection<'a> = bb8::PooledConnection<'a, ConnectionManager>;

/// A connection pool for one database, any backend. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: bb8::Pool<ConnectionManager>,
    url: DatabaseUrl,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url)
            .field("state", &self.pool.state())
            .finish()
    }
}

impl Database {
    /// Connects and checks the schema against `migrations`, the migration sets the caller's
    /// tables come from, in the order they apply (e.g. the batch metadata's, the shared
    /// entities', then each registered domain module's).
    ///
    /// A SQLite database (the embedded default) is created and migrated on first use. A
    /// PostgreSQL or MySQL database must already be migrated (`batch-launcher migrate`); if
    /// migrations of any set are pending the error lists them, and nothing is written.
    pub async fn connect(
        url: &DatabaseUrl,
        options: &PoolOptions,
        migrations: &[&'static MigrationSet],
    ) -> Result<Self, DbError> {
        match url.backend() {
            Backend::Sqlite => {
                migrate::run_pending(url, migrations).await?;
            }
            Backend::Postgres | Backend::Mysql => {
                let pending = migrate::pending(url, migrations)
                    .await
                    .map_err(|e| e.with_unknown_database(url))?;
                if !pending.is_empty() {
                    return Err(DbError::SchemaNotMigrated {
                        url: url.redacted(),
                        pending,
                    });
                }
            }
        }
        Self::connect_unchecked(url, options).await
    }

    /// Connects without looking at the schema (for `migrate` and for tests that manage it).
    pub async fn connect_unchecked(
        url: &DatabaseUrl,
        options: &PoolOptions,
    ) -> Result<Self, DbError> {
        let manager = ConnectionManager { url: url.clone() };
        // Open the first connection ourselves so a bad URL or a server that is down gives its real
        // error at once instead of a pool time-out.
        let first = bb8::ManageConnection::connect(&manager).await?;
        let max = match url.backend() {
            // More than a few writers on one SQLite file only queue on its lock.
            Backend::Sqlite => options.max_connections.clamp(1, 4),
            _ => options.max_connections.max(1),
        };
        let pool = bb8::Pool::builder()
            .max_size(max)
            .connection_timeout(options.acquire_timeout)
            .build_unchecked(manager);
        pool.add(first)
            .map_err(|_| DbError::Other("could not add the first connection to the pool".into()))?;
        Ok(Self {
            pool,
            url: url.clone(),
        })
    }

    /// Takes a connection from the pool.
    pub async fn get(&self) -> Result<PooledConnection<'_>, DbError> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => DbError::PoolTimeout {
                url: self.url.redacted(),
            },
        })
    }

    /// The backend of this database.
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The database URL (redacts itself when printed).
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }
}

/// Where the embedded default SQLite database lives when nothing is configured.
pub fn default_sqlite_path() -> PathBuf {
    PathBuf::from("data/batch.db")
}

/// Inserts owned rows, updating the listed columns of the existing row on a unique-key conflict.
/// Evaluates to `QueryResult<()>`.
///
/// `$target` is the conflict target for PostgreSQL and SQLite (a column tuple); MySQL's
/// `ON DUPLICATE KEY UPDATE` uses every unique key. The bracketed columns are set from the new row:
/// `excluded.col` on PostgreSQL and SQLite, `VALUES(col)` on MySQL (diesel has no MySQL `excluded`).
/// SQLite runs one prepared single-row upsert per row on the blocking pool (a savepoint if a
/// transaction is open): diesel cannot batch an SQLite upsert, and without a network round trip
/// per statement this is as fast as a batch.
#[macro_export]
macro_rules! upsert {
    ($conn:expr, $table:expr, $rows:expr, $target:expr, [$($col:path),+ $(,)?]) => {
        match $conn {
            $crate::DbConnection::Postgres(c) => diesel_async::RunQueryDsl::execute(
                diesel::insert_into($table)
                    .values($rows)
                    .on_conflict($target)
                    .do_update()
                    .set(($(diesel::ExpressionMethods::eq($col, diesel::upsert::excluded($col)),)+)),
                c,
            )
            .await
            .map(|_| ()),
            $crate::DbConnection::Mysql(c) => diesel_async::RunQueryDsl::execute(
                diesel::insert_into($table)
                    .values($rows)
                    .on_conflict(diesel::dsl::DuplicatedKeys)
                    .do_update()
                    .set(($(diesel::ExpressionMethods::eq(
                        $col,
                        diesel::dsl::sql::<diesel::dsl::SqlTypeOf<$col>>(&format!(
                            "VALUES(`{}`)",
                            <$col as diesel::Column>::NAME
                        )),
                    ),)+)),
                c,
            )
            .await
            .map(|_| ()),
            $crate::DbConnection::Sqlite(c) => {
                let rows = $rows;
                c.spawn_blocking(move |c| {
                    diesel::Connection::transaction(c, |c| {
                        for row in rows {
                            diesel::RunQueryDsl::execute(
                                diesel::insert_into($table)
                                    .values(row)
                                    .on_conflict($target)
                                    .do_update()
                                    .set(($(diesel::ExpressionMethods::eq($col, diesel::upsert::excluded($col)),)+)),
                                c,
                            )?;
                        }
                        diesel::QueryResult::Ok(())
                    })
                })
                .await
            }
        }
    };
}
