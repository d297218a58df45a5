//! Error classification: which failures a retry may cure.

use std::io::ErrorKind;

/// Marks an error as transient (a retry may succeed): domain code wraps errors of its own clients
/// in it, e.g. a Redis connection reset, so the chunk is retried instead of failing the step.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Transient(#[from] pub anyhow::Error);

impl Transient {
    /// Wraps any error as transient.
    pub fn new(err: impl Into<anyhow::Error>) -> Self {
        Transient(err.into())
    }
}

/// True if any error in the chain is transient: a [`Transient`] marker, a database error that
/// [`core_domain::DbError::is_transient`] accepts, or a connection-level I/O error.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if cause.is::<Transient>() {
            return true;
        }
        if let Some(db) = cause.downcast_ref::<core_domain::DbError>() {
            return db.is_transient();
        }
        if let Some(q) = cause.downcast_ref::<diesel::result::Error>() {
            return core_domain::error::is_transient_query_error(q);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::ConnectionRefused
                    | ErrorKind::BrokenPipe
                    | ErrorKind::TimedOut
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::Interrupted
            );
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn classification() {
        let reset = anyhow::Error::new(std::io::Error::from(ErrorKind::ConnectionReset));
        assert!(is_transient(&reset));
        assert!(is_transient(&anyhow::Error::new(Transient::new(
            anyhow::anyhow!("LOADING")
        ))));
        let wrapped: anyhow::Result<()> = Err(Transient::new(anyhow::anyhow!("timeout")).into());
        assert!(is_transient(&wrapped.context("writing chunk").unwrap_err()));
        assert!(!is_transient(&anyhow::anyhow!("bad data")));
        let unique = diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate".to_owned()),
        );
        assert!(!is_transient(&anyhow::Error::new(unique)));
        let pool = core_domain::DbError::PoolTimeout { url: "x".into() };
        assert!(is_transient(&anyhow::Error::new(pool)));
    }
}
