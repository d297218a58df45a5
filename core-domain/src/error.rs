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
    #[error("could not connect to {url}: {source}")]
    Connect {
        /// The redacted URL.
        url: String,
        /// The driver's error.
        #[source]
        source: diesel::ConnectionError,
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
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A query failed.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    /// Anything else (task failures).
    #[error("{0}")]
    Other(String),
}

impl DbError {
    /// True for errors that a retry may cure: lost connections, pool time-outs, deadlocks,
    /// serialization failures and SQLite's busy/locked states.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::PoolTimeout { .. } | DbError::Connect { .. } => true,
            DbError::Query(e) => is_transient_query_error(e),
            _ => false,
        }
    }
}

/// True for query errors that a retry may cure (see [`DbError::is_transient`]).
pub fn is_transient_query_error(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(kind, info) => {
            matches!(
                kind,
                DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ClosedConnection
            ) || {
                let msg = info.message().to_ascii_lowercase();
                msg.contains("deadlock")
                    || msg.contains("database is locked")
                    || msg.contains("database is busy")
                    || msg.contains("lock wait timeout")
                    || msg.contains("connection reset")
                    || msg.contains("broken pipe")
            }
        }
        Error::BrokenTransactionManager => true,
        _ => false,
    }
}
