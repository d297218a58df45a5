//! [`DbConnection`]: one connection to any of the three backends, and the macros that run one
//! diesel expression on whichever backend it is.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use diesel_async::pg::AsyncPgConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{
    AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection, TransactionManager,
};

use crate::error::DbError;
use crate::url::{Backend, DatabaseUrl};

/// A boxed, sendable future borrowing for `'a`; what [`DbConnection::transaction`] callbacks return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The SQLite connection type: the sync diesel connection run on tokio's blocking pool.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// One connection to any of the three backends.
///
/// Use [`dispatch!`](crate::dispatch) to run the same diesel expression on whichever variant it is.
// Connections live in pool slots and are never moved per query; boxing the PostgreSQL variant
// would only add an indirection to every statement.
#[allow(clippy::large_enum_variant)]
pub enum DbConnection {
    /// A PostgreSQL connection.
    Postgres(AsyncPgConnection),
    /// A MySQL / MariaDB connection.
    Mysql(AsyncMysqlConnection),
    /// A SQLite connection (sync diesel on the blocking pool).
    Sqlite(SqliteConn),
}

/// Expands one expression for each backend variant of a [`DbConnection`].
///
/// ```text
/// let n: i64 = dispatch!(conn, c => point_balance::table.count().get_result(c).await)?;
/// ```
/// The expression is type-checked separately for PostgreSQL, MySQL and SQLite.
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::DbConnection::Postgres($c) => $body,
            $crate::DbConnection::Mysql($c) => $body,
            $crate::DbConnection::Sqlite($c) => $body,
        }
    };
}

/// Runs one statement that carries owned data (e.g. a multi-row INSERT) on any backend.
///
/// Multi-row INSERT does not compile through SQLite's async wrapper, so on SQLite the statement
/// is built and executed inside `spawn_blocking` with the sync connection; the captured data must
/// therefore be owned (`'static`). Evaluates to `QueryResult<usize>`.
#[macro_export]
macro_rules! execute_owned {
    ($conn:expr, $query:expr) => {
        match $conn {
            $crate::DbConnection::Postgres(c) => {
                diesel_async::RunQueryDsl::execute($query, c).await
            }
            $crate::DbConnection::Mysql(c) => diesel_async::RunQueryDsl::execute($query, c).await,
            $crate::DbConnection::Sqlite(c) => {
                c.spawn_blocking(move |c| diesel::RunQueryDsl::execute($query, c))
                    .await
            }
        }
    };
}

impl DbConnection {
    /// The backend of this connection.
    pub fn backend(&self) -> Backend {
        match self {
            DbConnection::Postgres(_) => Backend::Postgres,
            DbConnection::Mysql(_) => Backend::Mysql,
            DbConnection::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Opens a new connection (not pooled) and prepares its session: UTC on PostgreSQL and MySQL;
    /// WAL, a busy timeout and foreign keys on SQLite. PostgreSQL and MySQL connect with the
    /// URL's TLS options (`sslmode`/`sslrootcert`, `ssl-mode`/`ssl-ca`; see the crate README).
    pub async fn establish(url: &DatabaseUrl) -> Result<Self, DbError> {
        let connect_err = |cause: diesel::ConnectionError| {
            DbError::Connect {
                url: url.redacted(),
                cause,
            }
            .with_unknown_database(url)
        };
        match url.backend() {
            Backend::Postgres => {
                // Boxed: the TLS handshake makes the future large, and every caller would carry it.
                let mut c = Box::pin(crate::url_tls::connect_pg(url.expose_secret()))
                    .await
                    .map_err(connect_err)?;
                c.batch_execute("SET TIME ZONE 'UTC'").await?;
                Ok(DbConnection::Postgres(c))
            }
            Backend::Mysql => {
                let mut c = Box::pin(crate::url_tls::connect_mysql(url.expose_secret()))
                    .await
                    .map_err(connect_err)?;
                c.batch_execute("SET time_zone = '+00:00'").await?;
                Ok(DbConnection::Mysql(c))
            }
            Backend::Sqlite => {
                let path = url.sqlite_path().expect("sqlite URL has a path").to_owned();
                let redacted = url.redacted();
                let conn = tokio::task::spawn_blocking(move || open_sqlite(&path))
                    .await
                    .map_err(|e| DbError::Other(format!("sqlite open task failed: {e}")))?
                    .map_err(|e| e.into_db_error(&redacted))?;
                Ok(DbConnection::Sqlite(SyncConnectionWrapper::new(conn)))
            }
        }
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back if it returns `Err`.
    ///
    /// On SQLite the transaction starts with `BEGIN IMMEDIATE`, so concurrent writers wait on the
    /// busy timeout instead of failing when they upgrade a read lock.
    ///
    /// ```text
    /// conn.transaction(|c| Box::pin(async move { insert(c).await?; save_checkpoint(c).await })).await?;
    /// ```
    pub async fn transaction<'a, R, E, F>(&'a mut self, f: F) -> Result<R, E>
    where
        F: for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Result<R, E>> + Send + 'a,
        E: From<diesel::result::Error> + Send + 'a,
        R: Send + 'a,
    {
        self.begin().await?;
        match f(self).await {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(err) => {
                if let Err(rollback) = self.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed after an error");
                }
                Err(err)
            }
        }
    }

    /// Opens a transaction (`BEGIN IMMEDIATE` on SQLite). Prefer [`transaction`](Self::transaction);
    /// use this trio when the work borrows state the closure form cannot hold. A connection handed
    /// back to the pool with a transaction still open is discarded, never reused.
    pub async fn begin(&mut self) -> diesel::QueryResult<()> {
        match self {
            DbConnection::Postgres(c) => {
                <AsyncPgConnection as AsyncConnection>::TransactionManager::begin_transaction(c)
                    .await
            }
            DbConnection::Mysql(c) => {
                <AsyncMysqlConnection as AsyncConnection>::TransactionManager::begin_transaction(c)
                    .await
            }
            DbConnection::Sqlite(c) => {
                c.spawn_blocking(|c| {
                    diesel::connection::AnsiTransactionManager::begin_transaction_sql(
                        c,
                        "BEGIN IMMEDIATE",
                    )
                })
                .await
            }
        }
    }

    /// Commits the open transaction.
    pub async fn commit(&mut self) -> diesel::QueryResult<()> {
        dispatch!(self, c => commit_transaction(c).await)
    }

    /// Rolls back the open transaction.
    pub async fn rollback(&mut self) -> diesel::QueryResult<()> {
        dispatch!(self, c => rollback_transaction(c).await)
    }

    /// True while a transaction is open (used to discard connections a panic left mid-transaction).
    pub fn in_transaction(&mut self) -> bool {
        dispatch!(self, c => transaction_depth(c) > 0)
    }

    /// Runs raw SQL statements (no results), e.g. session settings.
    pub async fn batch_execute(&mut self, sql: &str) -> diesel::QueryResult<()> {
        dispatch!(self, c => c.batch_execute(sql).await)
    }
}

async fn commit_transaction<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
    C::TransactionManager::commit_transaction(c).await
}

async fn rollback_transaction<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
    C::TransactionManager::rollback_transaction(c).await
}

fn transaction_depth<C: AsyncConnection>(c: &mut C) -> u32 {
    match C::TransactionManager::transaction_manager_status_mut(c).transaction_depth() {
        Ok(depth) => depth.map_or(0, |d| d.get()),
        Err(_) => u32::MAX,
    }
}

/// Why a SQLite file could not be opened.
#[derive(Debug)]
pub(crate) enum SqliteOpenError {
    Io(std::io::Error),
    Connect(diesel::ConnectionError),
    Query(diesel::result::Error),
}

impl SqliteOpenError {
    pub(crate) fn into_db_error(self, redacted_url: &str) -> DbError {
        match self {
            SqliteOpenError::Io(cause) => DbError::Io {
                what: format!("creating the directory of {redacted_url}"),
                cause,
            },
            SqliteOpenError::Connect(cause) => DbError::Connect {
                url: redacted_url.to_owned(),
                cause,
            },
            SqliteOpenError::Query(e) => DbError::Query(e),
        }
    }
}

/// Opens a SQLite file (creating its directory), in WAL mode with a busy timeout and foreign keys.
pub(crate) fn open_sqlite(path: &Path) -> Result<SqliteConnection, SqliteOpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(SqliteOpenError::Io)?;
    }
    let path_str = path.to_string_lossy();
    let mut conn = SqliteConnection::establish(&path_str).map_err(SqliteOpenError::Connect)?;
    conn.batch_execute(
        "PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .map_err(SqliteOpenError::Query)?;
    Ok(conn)
}
