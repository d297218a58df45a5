//! [`DatabaseUrl`]: which backend a URL selects, and how it is shown without its password.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::DbError;

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
                let url = Self { raw, backend };
                // The TLS and other driver options are checked now: a mistake is a
                // configuration error, before anything connects.
                url.tls().map_err(|reason| DbError::InvalidUrl {
                    url: url.redacted(),
                    reason,
                })?;
                Ok(url)
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

    /// The connection's TLS settings (`Ok(None)` for SQLite and for a MySQL URL without TLS
    /// options), or why the URL's options are wrong.
    pub(crate) fn tls(&self) -> Result<Option<crate::url_tls::TlsOptions>, String> {
        match self.backend {
            Backend::Sqlite => Ok(None),
            Backend::Postgres => crate::url_tls::split_pg(&self.raw).map(|(_, t)| Some(t)),
            Backend::Mysql => crate::url_tls::split_mysql(&self.raw).map(|(_, t)| t),
        }
    }

    /// The connection's TLS settings in words (e.g. "required, certificate and host name
    /// verified, CAs from /etc/ssl/db-ca.pem"), for `batch-launcher config`; `None` for SQLite.
    pub fn tls_description(&self) -> Option<String> {
        match self.tls() {
            Ok(Some(t)) => Some(t.describe()),
            Ok(None) if self.backend == Backend::Mysql => {
                let lower = self.raw.to_ascii_lowercase();
                Some(if lower.contains("require_ssl=true") {
                    "required (mysql_async options require_ssl/verify_ca/verify_identity)"
                        .to_owned()
                } else {
                    "off".to_owned()
                })
            }
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
