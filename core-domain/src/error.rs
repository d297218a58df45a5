//! Errors of the database layer.

/// What can go wrong opening, migrating or querying a database.
///
/// Every variant that mentions a URL carries the *redacted* form: no password ever appears.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL scheme is none of sqlite, postgres, mysql.
    #[error(
        "unsupported database URL scheme `{scheme}` (expected sqlite://, postgres:// or mysql://)"
    )]
    UnsupportedScheme {
        /// The scheme that was given.
        scheme: String,
    },
    /// The URL could not be parsed.
    #[error("invalid database URL `{url}`: {reason}")]
    InvalidUrl {
        /// The redacted URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or refused the login.
    #[error("could not connect to {url}: {cause}")]
    Connect {
        /// The redacted URL.
        url: String,
        /// The driver's error: in the message, not chained as a source, so that `{}` and `{:#}`
        /// both print it once (thiserror would chain a field named `source`).
        cause: diesel::ConnectionError,
    },
    /// No pooled connection became free in time.
    #[error("timed out waiting for a connection to {url} from the pool")]
    PoolTimeout {
        /// The redacted URL.
        url: String,
    },
    /// PostgreSQL or MySQL has migrations that were not applied.
    #[error(
        "the database {url} is not migrated ({} pending: {}); run `batch-launcher migrate` first",
        pending.len(), pending.join(", ")
    )]
    SchemaNotMigrated {
        /// The redacted URL.
        url: String,
        /// Names of the pending migrations.
        pending: Vec<String>,
    },
    /// Applying migrations failed.
    #[error("migrating {url} failed: {message}")]
    Migration {
        /// The redacted URL.
        url: String,
        /// The harness's message.
        message: String,
    },
    /// A file-system operation failed (SQLite).
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error (in the message, not chained, so it is printed once).
        cause: std::io::Error,
    },
    /// A query failed.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    /// The server is up but the database named in the URL does not exist (PostgreSQL 3D000,
    /// MySQL 1049): a configuration error.
    #[error(
        "database `{database}` does not exist ({url}); create it, then run `batch-launcher migrate`"
    )]
    UnknownDatabase {
        /// The redacted URL.
        url: String,
        /// The database name from the URL.
        database: String,
    },
    /// Anything else (task failures).
    #[error("{0}")]
    Other(String),
}

impl DbError {
    /// True for errors that a retry may cure: lost connections and servers restarting or failing
    /// over, pool time-outs, deadlocks, serialization failures and SQLite's busy/locked states.
    /// A connection refused for good (the database does not exist, the login is wrong) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::PoolTimeout { .. } => true,
            DbError::Connect { cause, .. } => !is_permanent_connect_error(&cause.to_string()),
            DbError::Query(e) => is_transient_query_error(e),
            _ => false,
        }
    }
}

/// Messages (lower case) of errors that servers and drivers really send while a server restarts,
/// shuts down, fails over or drops a connection, and of lock conflicts a retry resolves:
/// - PostgreSQL class 08 (connection exceptions: tokio-postgres reports them without a SQLSTATE
///   as "connection closed" / "error communicating with the server: …") and class 57P:
///   57P01 `terminating connection due to administrator command` (fast shutdown, failover,
///   `pg_terminate_backend`), 57P02 `… because of crash of another server process`, 57P03
///   `the database system is starting up / shutting down / in recovery mode / not yet accepting
///   connections`;
/// - MySQL/MariaDB: 1053 `Server shutdown in progress`, 1927 `Connection was killed`, the client
///   errors of a lost socket (`server has gone away`, `lost connection`, mysql_async's
///   `Connection to the server is closed` and `Input/output error`), 1205 lock wait timeout,
///   1213 deadlock, 1467 an AUTO-INC lock that lost a deadlock or timed out;
/// - SQLite: `database is locked` / `database is busy`.
const TRANSIENT_MESSAGES: &[&str] = &[
    // PostgreSQL
    "terminating connection due to administrator command",
    "terminating connection because of crash of another server process",
    "terminating connection due to conflict with recovery",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "connection closed",
    "error communicating with the server",
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    // MySQL / MariaDB
    "server shutdown in progress",
    "connection was killed",
    "server has gone away",
    "lost connection",
    "connection to the server is closed",
    "input/output error",
    "lock wait timeout",
    "deadlock",
    // InnoDB's answer (1467) when a statement's AUTO-INC lock request loses a deadlock or times
    // out, e.g. two transactions' `INSERT … SELECT` into one table with
    // innodb_autoinc_lock_mode = 1 (MariaDB's default).
    "failed to read auto-increment value from storage engine",
    // any driver
    "connection reset",
    "connection refused",
    "connection aborted",
    "broken pipe",
    "unexpected end of file",
    "unexpected eof",
    "timed out",
    // SQLite
    "database is locked",
    "database is busy",
];

/// Connection errors a retry cannot cure (lower-cased message): the database does not exist
/// (PostgreSQL 3D000, MySQL 1049) or the login is refused (28P01, 1045).
fn is_permanent_connect_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("database") && m.contains("does not exist"))
        || m.contains("unknown database")
        || m.contains("password authentication failed")
        || m.contains("access denied")
        || m.contains("no pg_hba.conf entry")
}

/// True if `message` is one of [`TRANSIENT_MESSAGES`] (case-insensitively).
pub fn is_transient_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    TRANSIENT_MESSAGES.iter().any(|t| m.contains(t))
}

/// True for query errors that a retry may cure (see [`DbError::is_transient`]).
pub fn is_transient_query_error(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(kind, info) => {
            matches!(
                kind,
                DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ClosedConnection
            ) || is_transient_message(info.message())
        }
        Error::BrokenTransactionManager => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn db_error(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn messages_servers_send_during_restarts_are_transient() {
        for m in [
            "terminating connection due to administrator command",
            "FATAL: the database system is starting up",
            "error communicating with the server: Connection reset by peer (os error 104)",
            "connection closed",
            "Server shutdown in progress",
            "Connection was killed",
            "MySQL server has gone away",
            "Lost connection to MySQL server during query",
            "Input/output error: broken pipe",
            "Deadlock found when trying to get lock; try restarting transaction",
        ] {
            assert!(
                is_transient_query_error(&db_error(DatabaseErrorKind::Unknown, m)),
                "{m}"
            );
        }
        for m in [
            "duplicate key value violates unique constraint",
            "relation \"x\" does not exist",
            "syntax error at or near",
        ] {
            assert!(
                !is_transient_query_error(&db_error(DatabaseErrorKind::Unknown, m)),
                "{m}"
            );
        }
        assert!(!is_transient_query_error(&db_error(
            DatabaseErrorKind::UniqueViolation,
            "dup"
        )));
    }

    #[test]
    fn a_missing_database_or_a_wrong_login_is_not_retried() {
        for (m, permanent) in [
            ("database \"nope\" does not exist", true),
            ("Unknown database 'nope'", true),
            ("password authentication failed for user \"x\"", true),
            ("Access denied for user 'x'@'localhost'", true),
            ("Connection refused (os error 111)", false),
            ("the database system is starting up", false),
        ] {
            assert_eq!(is_permanent_connect_error(m), permanent, "{m}");
        }
    }
}
