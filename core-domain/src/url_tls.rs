//! The TLS options of a database URL, written as the backend's own clients write them, and the
//! connections that honour them.
//!
//! - PostgreSQL (libpq): `sslmode` = `disable` | `allow` | `prefer` (the default) | `require` |
//!   `verify-ca` | `verify-full`, and `sslrootcert` = a PEM file of CAs or `system`. As in libpq,
//!   `require` with a root certificate file verifies the chain like `verify-ca`; without
//!   `sslrootcert` the verifying modes use `~/.postgresql/root.crt` if it exists, else the
//!   system's trust store. `allow` is treated like `prefer`.
//! - MySQL / MariaDB (the `mysql` client): `ssl-mode` = `DISABLED` | `PREFERRED` | `REQUIRED` |
//!   `VERIFY_CA` | `VERIFY_IDENTITY` (any case, `_` or `-`) and `ssl-ca` = a PEM file of CAs
//!   (else the built-in Mozilla roots). mysql_async's own `require_ssl`, `verify_ca`,
//!   `verify_identity` and `built_in_roots` work as well, but not mixed with `ssl-mode`.
//!   Without either, the connection is plain (as mysql_async's default).

use std::path::PathBuf;

use diesel_async::AsyncMysqlConnection;
use diesel_async::pg::AsyncPgConnection;

use crate::tls::{self, Verify};

/// `sslmode` of a PostgreSQL URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgSslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The default: for PostgreSQL `~/.postgresql/root.crt` if present, else the system store;
    /// for MySQL the built-in Mozilla roots.
    Default,
    /// The system trust store (`sslrootcert=system`).
    System,
    /// A PEM file.
    File(PathBuf),
}

/// The TLS settings of a database URL (no secret in them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    /// `None`: no TLS at all. `Some(verify)`: TLS verifying this much.
    pub mode: Option<Verify>,
    /// Try TLS and fall back to a plain connection if the server has no TLS (`prefer`).
    pub optional: bool,
    pub roots: Roots,
}

impl TlsOptions {
    /// The TLS settings in words, for `batch-launcher config` and logs.
    pub fn describe(&self) -> String {
        let roots = match &self.roots {
            Roots::Default => String::new(),
            Roots::System => ", CAs from the system trust store".to_owned(),
            Roots::File(p) => format!(", CAs from {}", p.display()),
        };
        match (self.mode, self.optional) {
            (None, _) => "off".to_owned(),
            (Some(_), true) => {
                "preferred (used if the server offers it; certificate not verified)".to_owned()
            }
            (Some(Verify::Nothing), false) => "required (certificate not verified)".to_owned(),
            (Some(Verify::Chain), false) => {
                format!(
                    "required, certificate verified against the CA (host name not checked){roots}"
                )
            }
            (Some(Verify::Full), false) => {
                format!("required, certificate and host name verified{roots}")
            }
        }
    }
}

/// The pairs of a URL's query.
fn query_pairs(u: &url::Url) -> Vec<(String, String)> {
    u.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn with_query(mut u: url::Url, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Splits a PostgreSQL URL into the URL tokio-postgres reads (without `sslmode` and
/// `sslrootcert`) and its TLS options. The error names the option and its value.
pub(crate) fn split_pg(raw: &str) -> Result<(String, TlsOptions), String> {
    let u = url::Url::parse(raw).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let mut mode = PgSslMode::Prefer;
    let mut root = None;
    for (k, v) in query_pairs(&u) {
        match k.as_str() {
            "sslmode" => {
                mode = match v.as_str() {
                    "disable" => PgSslMode::Disable,
                    "allow" | "prefer" => PgSslMode::Prefer,
                    "require" => PgSslMode::Require,
                    "verify-ca" => PgSslMode::VerifyCa,
                    "verify-full" => PgSslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" => {
                if v.is_empty() {
                    return Err("sslrootcert is empty (give a PEM file of CAs, or `system`)".into());
                }
                root = Some(v);
            }
            "sslcert"
            | "sslkey"
            | "sslpassword"
            | "sslcrl"
            | "sslcrldir"
            | "sslsni"
            | "sslcompression"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version"
            | "sslcertmode"
            | "sslnegotiation" => {
                return Err(format!(
                    "`{k}` is not supported (supported TLS options: sslmode, sslrootcert)"
                ));
            }
            _ => rest.push((k, v)),
        }
    }
    let roots = match root.as_deref() {
        None => Roots::Default,
        Some("system") => Roots::System,
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    let verify = match mode {
        PgSslMode::Disable => None,
        PgSslMode::Prefer => Some(Verify::Nothing),
        // libpq: `require` with a root certificate verifies the chain like `verify-ca`.
        PgSslMode::Require if root.is_some() => Some(Verify::Chain),
        PgSslMode::Require => Some(Verify::Nothing),
        PgSslMode::VerifyCa => Some(Verify::Chain),
        PgSslMode::VerifyFull => Some(Verify::Full),
    };
    if root.is_some() && mode == PgSslMode::Disable {
        return Err("sslrootcert is given but sslmode is disable".into());
    }
    let cleaned = with_query(u, &rest);
    // Let tokio-postgres check the other options now, so a mistake is a configuration error.
    cleaned
        .parse::<tokio_postgres::Config>()
        .map_err(|e| e.to_string())?;
    Ok((
        cleaned,
        TlsOptions {
            mode: verify,
            optional: mode == PgSslMode::Prefer,
            roots,
        },
    ))
}

/// Splits a MySQL URL into the URL mysql_async reads and the TLS options given as `ssl-mode` /
/// `ssl-ca` (`None` when the URL has none: mysql_async's own options, if any, then apply).
pub(crate) fn split_mysql(raw: &str) -> Result<(String, Option<TlsOptions>), String> {
    let u = url::Url::parse(raw).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let mut mode = None;
    let mut ca = None;
    let mut native = None;
    for (k, v) in query_pairs(&u) {
        match k.to_ascii_lowercase().replace('_', "-").as_str() {
            "ssl-mode" | "sslmode" => {
                mode = Some(match v.to_ascii_uppercase().replace('-', "_").as_str() {
                    "DISABLED" => None,
                    "PREFERRED" => Some((Verify::Nothing, true)),
                    "REQUIRED" => Some((Verify::Nothing, false)),
                    "VERIFY_CA" => Some((Verify::Chain, false)),
                    "VERIFY_IDENTITY" => Some((Verify::Full, false)),
                    _ => {
                        return Err(format!(
                            "ssl-mode `{v}` is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
                        ));
                    }
                });
            }
            "ssl-ca" => {
                if v.is_empty() {
                    return Err("ssl-ca is empty (give a PEM file of CAs)".into());
                }
                ca = Some(PathBuf::from(v));
            }
            "ssl-cert" | "ssl-key" | "ssl-capath" | "ssl-cipher" | "ssl-crl" => {
                return Err(format!(
                    "`{k}` is not supported (supported TLS options: ssl-mode, ssl-ca)"
                ));
            }
            "require-ssl" | "verify-ca" | "verify-identity" | "built-in-roots" => {
                native = Some(k.clone());
                rest.push((k, v));
            }
            _ => rest.push((k, v)),
        }
    }
    if let (Some(native), true) = (&native, mode.is_some() || ca.is_some()) {
        return Err(format!(
            "`{native}` and ssl-mode/ssl-ca both set TLS; use one form (ssl-mode=VERIFY_IDENTITY&ssl-ca=…)"
        ));
    }
    let cleaned = with_query(u, &rest);
    mysql_async::Opts::from_url(&cleaned).map_err(|e| e.to_string())?;
    let tls = match (mode, ca) {
        (None, None) => None,
        (Some(None), Some(_)) => return Err("ssl-ca is given but ssl-mode is DISABLED".into()),
        (Some(None), None) => Some(TlsOptions {
            mode: None,
            optional: false,
            roots: Roots::Default,
        }),
        // `ssl-ca` alone: as the mysql client, verify against it.
        (None, Some(ca)) => Some(TlsOptions {
            mode: Some(Verify::Chain),
            optional: false,
            roots: Roots::File(ca),
        }),
        (Some(Some((verify, optional))), ca) => Some(TlsOptions {
            mode: Some(verify),
            optional,
            roots: ca.map_or(Roots::Default, Roots::File),
        }),
    };
    Ok((cleaned, tls))
}

/// Why a connection failed, for [`crate::DbError::Connect`]: a TLS certificate failure in words
/// (certificate or host name), else the driver's message.
fn connect_error(e: &(dyn std::error::Error + 'static)) -> diesel::ConnectionError {
    let text = match tls::explain(e) {
        Some(tls) => tls,
        None => {
            // tokio-postgres puts the cause in `source()`, not in its own text.
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text = format!("{text}: {s_text}");
                }
                source = s.source();
            }
            text
        }
    };
    diesel::ConnectionError::BadConnection(text)
}

/// Opens a PostgreSQL connection with the URL's TLS options (`url` holds the password: never
/// log it).
pub(crate) async fn connect_pg(url: &str) -> Result<AsyncPgConnection, diesel::ConnectionError> {
    let (cleaned, options) =
        split_pg(url).map_err(diesel::ConnectionError::InvalidConnectionUrl)?;
    let mut config: tokio_postgres::Config =
        cleaned.parse().map_err(|e: tokio_postgres::Error| {
            diesel::ConnectionError::InvalidConnectionUrl(e.to_string())
        })?;
    let Some(verify) = options.mode else {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| connect_error(&e))?;
        return AsyncPgConnection::try_from_client_and_connection(client, conn).await;
    };
    config.ssl_mode(if options.optional {
        tokio_postgres::config::SslMode::Prefer
    } else {
        tokio_postgres::config::SslMode::Require
    });
    let ca = match &options.roots {
        Roots::File(p) => Some(p.clone()),
        Roots::System => None,
        Roots::Default => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
            .filter(|p| p.is_file()),
    };
    let client_config = tls::client_config(verify, ca.as_deref())
        .map_err(diesel::ConnectionError::BadConnection)?;
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(client_config);
    let (client, conn) = config
        .connect(connector)
        .await
        .map_err(|e| connect_error(&e))?;
    AsyncPgConnection::try_from_client_and_connection(client, conn).await
}

/// Opens a MySQL/MariaDB connection with the URL's TLS options, set up as diesel-async's own
/// `establish` does (UTC, utf8mb4, found rows, no driver statement cache).
pub(crate) async fn connect_mysql(
    url: &str,
) -> Result<AsyncMysqlConnection, diesel::ConnectionError> {
    let (cleaned, options) =
        split_mysql(url).map_err(diesel::ConnectionError::InvalidConnectionUrl)?;
    let opts = mysql_async::Opts::from_url(&cleaned)
        .map_err(|e| diesel::ConnectionError::InvalidConnectionUrl(e.to_string()))?;
    let base = mysql_async::OptsBuilder::from_opts(opts)
        .stmt_cache_size(0)
        .client_found_rows(true);
    let connect = |builder: mysql_async::OptsBuilder| async move {
        match mysql_async::Conn::new(builder).await {
            Ok(conn) => AsyncMysqlConnection::try_from(conn).await,
            Err(e) => Err(connect_error(&e)),
        }
    };
    let Some(TlsOptions {
        mode: Some(verify),
        optional,
        roots,
    }) = options
    else {
        // No ssl-mode (mysql_async's own options apply), or DISABLED.
        let builder = match options {
            Some(_) => base.ssl_opts(None::<mysql_async::SslOpts>),
            None => base,
        };
        return connect(builder).await;
    };
    let mut ssl = mysql_async::SslOpts::default();
    if let Roots::File(path) = &roots {
        // Checked here so the error names the file (mysql_async's would not).
        tls::read_ca_file(path).map_err(diesel::ConnectionError::BadConnection)?;
        ssl = ssl
            .with_root_certs(vec![path.clone().into()])
            .with_disable_built_in_roots(true);
    }
    ssl = match verify {
        Verify::Nothing => ssl
            .with_danger_accept_invalid_certs(true)
            .with_danger_skip_domain_validation(true),
        Verify::Chain => ssl.with_danger_skip_domain_validation(true),
        Verify::Full => ssl,
    };
    match connect(base.clone().ssl_opts(ssl)).await {
        Err(diesel::ConnectionError::BadConnection(m)) if optional && m.contains("CLIENT_SSL") => {
            // PREFERRED, and the server offers no TLS: a plain connection, as the mysql client.
            connect(base).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_modes_follow_libpq() {
        let mode = |q: &str| {
            split_pg(&format!("postgres://u:pw@h/db{q}"))
                .map(|(u, t)| (u, t.mode, t.optional, t.roots))
        };
        let (url, verify, optional, roots) = mode("").unwrap();
        assert_eq!(
            (url.as_str(), verify, optional, roots),
            (
                "postgres://u:pw@h/db",
                Some(Verify::Nothing),
                true,
                Roots::Default
            )
        );
        assert_eq!(mode("?sslmode=disable").unwrap().1, None);
        assert_eq!(mode("?sslmode=require").unwrap().1, Some(Verify::Nothing));
        assert_eq!(
            mode("?sslmode=require&sslrootcert=/ca.pem").unwrap().1,
            Some(Verify::Chain)
        );
        assert_eq!(mode("?sslmode=verify-ca").unwrap().1, Some(Verify::Chain));
        let (url, verify, optional, roots) =
            mode("?sslmode=verify-full&sslrootcert=/c%20a.pem&application_name=x").unwrap();
        assert_eq!(url, "postgres://u:pw@h/db?application_name=x");
        assert_eq!(
            (verify, optional, roots),
            (Some(Verify::Full), false, Roots::File("/c a.pem".into()))
        );
        assert_eq!(
            mode("?sslmode=verify-full&sslrootcert=system").unwrap().3,
            Roots::System
        );
        let e = mode("?sslmode=verify_full").unwrap_err();
        assert!(
            e.contains("`verify_full`") && e.contains("verify-full"),
            "{e}"
        );
        assert!(mode("?sslcert=/x").unwrap_err().contains("`sslcert`"));
        assert!(mode("?bogus=1").is_err());
        assert!(mode("?sslmode=disable&sslrootcert=/ca.pem").is_err());
    }

    #[test]
    fn mysql_modes_follow_the_mysql_client() {
        let split = |q: &str| split_mysql(&format!("mysql://u:pw@h:3306/db{q}"));
        assert_eq!(split("").unwrap().1, None);
        let (url, tls) =
            split("?ssl-mode=verify_identity&ssl-ca=/ca.pem&prefer_socket=false").unwrap();
        assert_eq!(url, "mysql://u:pw@h:3306/db?prefer_socket=false");
        let tls = tls.unwrap();
        assert_eq!(
            (tls.mode, tls.optional, tls.roots),
            (Some(Verify::Full), false, Roots::File("/ca.pem".into()))
        );
        assert_eq!(
            split("?ssl-mode=REQUIRED").unwrap().1.unwrap().mode,
            Some(Verify::Nothing)
        );
        assert_eq!(
            split("?ssl_mode=VERIFY-CA").unwrap().1.unwrap().mode,
            Some(Verify::Chain)
        );
        assert!(split("?ssl-mode=PREFERRED").unwrap().1.unwrap().optional);
        assert_eq!(split("?ssl-mode=DISABLED").unwrap().1.unwrap().mode, None);
        assert_eq!(
            split("?ssl-ca=/ca.pem").unwrap().1.unwrap().mode,
            Some(Verify::Chain)
        );
        assert!(split("?require_ssl=true").unwrap().1.is_none());
        assert!(
            split("?require_ssl=true&ssl-mode=REQUIRED")
                .unwrap_err()
                .contains("require_ssl")
        );
        assert!(
            split("?ssl-mode=sometimes")
                .unwrap_err()
                .contains("`sometimes`")
        );
        assert!(split("?ssl-cert=/x").unwrap_err().contains("`ssl-cert`"));
    }
}
