//! The three-backend database layer.
//!
//! A [`DatabaseUrl`] picks the backend at run time (`sqlite://`, `postgres://`, `mysql://`).
//! [`DbConnection`] is an enum over the three diesel-async connections and [`dispatch!`](crate::dispatch)
//! expands one diesel expression in each arm, so every query is written once and type-checked for
//! every backend. [`Database`] is a bb8 pool of such connections.

use std::fmt;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use diesel_async::pg::AsyncPgConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{
    AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection, TransactionManager,
};

use crate::error::DbError;

/// A boxed, sendable future borrowing for `'a`; what [`DbConnection::transaction`] callbacks return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The SQLite connection type: the sync diesel connection run on tokio's blocking pool.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// Which SQL dialect a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite, the embedded default (a file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL 8 or MariaDB 10.6+.
    Mysql,
}

impl Backend {
    /// Every backend, in a fixed order.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mysql];

    /// The backend's short lowercase name (`sqlite`, `postgres`, `mysql`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated database URL. Its `Debug` and `Display` never show the password.
///
/// Accepted forms: `sqlite://relative/path.db`, `sqlite:///absolute/path.db`,
/// `postgres://user:pass@host:port/db` (or `postgresql://`), `mysql://user:pass@host:port/db`
/// (or `mariadb://`, which is rewritten to `mysql://`).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: String,
    backend: Backend,
}

impl DatabaseUrl {
    /// Parses and validates a URL; the error names the problem without echoing secrets.
    pub fn parse(input: &str) -> Result<Self, DbError> {
        let input = input.trim();
        let Some((scheme, rest)) = input.split_once(':') else {
            return Err(DbError::InvalidUrl {
                url: redact(input),
                reason: "expected <scheme>://..., e.g. sqlite://data/batch.db".into(),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(DbError::InvalidUrl {
                        url: input.to_owned(),
                        reason: "the SQLite file path is empty".into(),
                    });
                }
                if path == ":memory:" || path.contains('?') {
                    return Err(DbError::InvalidUrl {
                        url: input.to_owned(),
                        reason: "only a plain file path is supported (no :memory:, no ?options)"
                            .into(),
                    });
                }
                Ok(Self {
                    raw: format!("sqlite://{path}"),
                    backend: Backend::Sqlite,
                })
            }
            s @ ("postgres" | "postgresql" | "mysql" | "mariadb") => {
                let parsed = url::Url::parse(input).map_err(|e| DbError::InvalidUrl {
                    url: redact(input),
                    reason: e.to_string(),
                })?;
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(DbError::InvalidUrl {
                        url: redact(input),
                        reason: "the host is missing".into(),
                    });
                }
                let (backend, raw) = match s {
                    "postgres" | "postgresql" => (Backend::Postgres, input.to_owned()),
                    "mariadb" => (Backend::Mysql, format!("mysql:{rest}")),
                    _ => (Backend::Mysql, input.to_owned()),
                };
                Ok(Self { raw, backend })
            }
            other => Err(DbError::UnsupportedScheme {
                scheme: other.to_owned(),
            }),
        }
    }

    /// The backend this URL selects.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite file path, for a `sqlite://` URL.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self.backend {
            Backend::Sqlite => self.raw.strip_prefix("sqlite://").map(Path::new),
            _ => None,
        }
    }

    /// The full URL including any password. Only for handing to a driver; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.raw
    }

    /// The URL with its password replaced by `***`, safe for logs and errors.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }
}

impl FromStr for DatabaseUrl {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl DatabaseUrl {
    /// The database name: the URL's path as written (PostgreSQL and MySQL; on PostgreSQL the user
    /// name when the path is empty) or the SQLite file path.
    pub fn database_name(&self) -> String {
        if let Some(path) = self.sqlite_path() {
            return path.display().to_string();
        }
        let Ok(u) = url::Url::parse(&self.raw) else {
            return String::new();
        };
        let name = u.path().trim_start_matches('/');
        let name = if name.is_empty() && self.backend == Backend::Postgres {
            u.username()
        } else {
            name
        };
        name.to_owned()
    }
}

impl DbError {
    /// A connection the server refused because the database named in `url` does not exist
    /// (PostgreSQL 3D000 `database "x" does not exist`, MySQL/MariaDB 1049 `Unknown database 'x'`)
    /// becomes [`DbError::UnknownDatabase`]; any other error is returned unchanged.
    pub fn with_unknown_database(self, url: &DatabaseUrl) -> DbError {
        if let DbError::Connect { cause, .. } = &self {
            let m = cause.to_string().to_ascii_lowercase();
            if (m.contains("database \"") && m.contains("does not exist"))
                || m.contains("unknown database")
            {
                return DbError::UnknownDatabase {
                    url: url.redacted(),
                    database: url.database_name(),
                };
            }
        }
        self
    }

    /// True for errors in the configuration rather than the environment: an unsupported or
    /// invalid URL, or a database that does not exist. Nothing was run or written.
    pub fn is_configuration_error(&self) -> bool {
        matches!(
            self,
            DbError::UnsupportedScheme { .. }
                | DbError::InvalidUrl { .. }
                | DbError::UnknownDatabase { .. }
        )
    }
}

/// Replaces the password of a URL-shaped string with `***`; leaves other strings alone.
pub fn redact(input: &str) -> String {
    match url::Url::parse(input) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => input.to_owned(),
        // Not a parseable URL: hide everything between "://" and the last '@', if any.
        Err(_) => match (input.find("://"), input.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}***{}", &input[..start + 3], &input[at..])
            }
            _ => input.to_owned(),
        },
    }
}

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
            $crate::db::DbConnection::Postgres($c) => $body,
            $crate::db::DbConnection::Mysql($c) => $body,
            $crate::db::DbConnection::Sqlite($c) => $body,
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
            $crate::db::DbConnection::Postgres(c) => {
                diesel_async::RunQueryDsl::execute($query, c).await
            }
            $crate::db::DbConnection::Mysql(c) => {
                diesel_async::RunQueryDsl::execute($query, c).await
            }
            $crate::db::DbConnection::Sqlite(c) => {
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
    /// WAL, a busy timeout and foreign keys on SQLite.
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
                let mut c = AsyncPgConnection::establish(url.expose_secret())
                    .await
                    .map_err(connect_err)?;
                c.batch_execute("SET TIME ZONE 'UTC'").await?;
                Ok(DbConnection::Postgres(c))
            }
            Backend::Mysql => {
                let mut c = AsyncMysqlConnection::establish(url.expose_secret())
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
    /// Connects and checks the schema.
    ///
    /// A SQLite database (the embedded default) is created and migrated on first use. A
    /// PostgreSQL or MySQL database must already be migrated (`batch-launcher migrate`); if
    /// migrations are pending the error lists them, and nothing is written.
    pub async fn connect(url: &DatabaseUrl, options: &PoolOptions) -> Result<Self, DbError> {
        match url.backend() {
            Backend::Sqlite => {
                crate::migrate::run_pending(url).await?;
            }
            Backend::Postgres | Backend::Mysql => {
                let pending = crate::migrate::pending(url)
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
            $crate::db::DbConnection::Postgres(c) => diesel_async::RunQueryDsl::execute(
                diesel::insert_into($table)
                    .values($rows)
                    .on_conflict($target)
                    .do_update()
                    .set(($(diesel::ExpressionMethods::eq($col, diesel::upsert::excluded($col)),)+)),
                c,
            )
            .await
            .map(|_| ()),
            $crate::db::DbConnection::Mysql(c) => diesel_async::RunQueryDsl::execute(
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
            $crate::db::DbConnection::Sqlite(c) => {
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

impl<'de> serde::Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        DatabaseUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for DatabaseUrl {
    /// Serializes the *redacted* form: a serialized configuration never carries the password.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_come_from_the_url() {
        let name = |u: &str| DatabaseUrl::parse(u).unwrap().database_name();
        assert_eq!(name("postgres://app:pw@db:5432/points"), "points");
        assert_eq!(name("postgres://app@db"), "app");
        assert_eq!(name("mysql://root@127.0.0.1:3306/batch"), "batch");
        assert_eq!(name("sqlite://data/batch.db"), "data/batch.db");
    }

    #[test]
    fn a_missing_database_becomes_a_configuration_error() {
        let url = DatabaseUrl::parse("postgres://app:pw-secret@db:5432/points").unwrap();
        for message in [
            "database \"points\" does not exist",
            "Unknown database 'points'",
        ] {
            let e = DbError::Connect {
                url: url.redacted(),
                cause: diesel::ConnectionError::BadConnection(message.to_owned()),
            }
            .with_unknown_database(&url);
            assert!(e.is_configuration_error(), "{message}: {e:?}");
            let shown = e.to_string();
            assert!(
                shown.contains("`points`") && !shown.contains("pw-secret"),
                "{shown}"
            );
        }
        let refused = DbError::Connect {
            url: url.redacted(),
            cause: diesel::ConnectionError::BadConnection("Connection refused".to_owned()),
        }
        .with_unknown_database(&url);
        assert!(!refused.is_configuration_error());
        assert_eq!(
            refused.to_string(),
            "could not connect to postgres://app:***@db:5432/points: Connection refused"
        );
        assert!(
            std::error::Error::source(&refused).is_none(),
            "the cause is chained too"
        );
    }
}
