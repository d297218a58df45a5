//! Why Redis could not be reached, in words: the host (refused, unreachable, no answer, unknown
//! name), the TLS certificate (unknown CA, expired), the certificate's host name, the login, or
//! a plain `redis://` URL against a server that only speaks TLS (and the reverse).

use std::sync::Arc;

use redis::{ErrorKind, RedisError};
use rustls::CertificateError;

/// Redis could not be reached; the message says where the launcher looked, what failed and how
/// to change it.
#[derive(Debug, thiserror::Error)]
#[error("{}", unreachable_message(target, cause, *tls))]
pub struct RedisUnreachable {
    /// Where the launcher looked (passwords redacted).
    pub target: String,
    /// The client's error (in the message, not chained, so it is printed once; a field named
    /// `source` would be chained by thiserror).
    pub cause: RedisError,
    /// True when the URL asked for TLS (`rediss://`).
    pub tls: bool,
}

/// What failed when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server refused the user or password.
    Login,
    /// The settings cannot be used as they are (e.g. nodes mixing `#insecure` and verification).
    Settings,
    /// The TLS handshake failed over the certificate: `explanation` in words, `kind` for the hint.
    Certificate {
        explanation: String,
        kind: CertificateFailure,
    },
    /// The TLS handshake failed for another reason (e.g. the server does not speak TLS).
    Handshake,
    /// Nothing listens at the address.
    Refused,
    /// No answer in time (host down, or a firewall dropping packets).
    Timeout,
    /// No route to the host.
    Unreachable,
    /// The host name does not resolve.
    UnknownHost,
    /// The server closed or reset the connection.
    Dropped,
    /// Anything else.
    Other,
}

/// Which part of the certificate check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateFailure {
    /// Not signed by a trusted CA.
    UnknownCa,
    /// Valid, but not for the host name connected to.
    Name,
    /// Expired or not valid yet.
    Validity,
    /// Anything else about the certificate.
    Other,
}

/// Classifies a connection error. A TLS error is found in the error's source chain when the
/// client kept it (the single node: `RedisError` → `Arc<io::Error>` → `rustls::Error`, which
/// [`core_domain::tls::explain`] alone does not see because of the `Arc`), else in its text (the
/// cluster client flattens its nodes' errors into a string).
pub(crate) fn failure_of(cause: &RedisError) -> Failure {
    if cause.kind() == ErrorKind::AuthenticationFailed {
        return Failure::Login;
    }
    if cause.kind() == ErrorKind::InvalidClientConfig {
        return Failure::Settings;
    }
    let text = cause.to_string();
    if let Some(tls) = rustls_error_in(cause).or_else(|| rustls_error_in_text(&text)) {
        return match &tls {
            rustls::Error::InvalidCertificate(c) => Failure::Certificate {
                explanation: core_domain::tls::explain_rustls(&tls),
                kind: certificate_failure(c),
            },
            _ => Failure::Handshake,
        };
    }
    if cause.is_connection_refusal() {
        return Failure::Refused;
    }
    if cause.is_timeout() {
        return Failure::Timeout;
    }
    let lower = text.to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&["connection refused"]) {
        Failure::Refused
    } else if has(&["timed out", "timedout", "deadline has elapsed"]) {
        Failure::Timeout
    } else if has(&["no route to host", "unreachable"]) {
        Failure::Unreachable
    } else if has(&[
        "failed to lookup address",
        "name or service not known",
        "no address associated",
        "nodename nor servname",
        "temporary failure in name resolution",
        "no such host",
    ]) {
        Failure::UnknownHost
    } else if has(&[
        "connection reset",
        "broken pipe",
        "unexpected eof",
        "unexpectedeof",
        "connection closed",
        "connection dropped",
        "connection aborted",
        "end of file",
    ]) {
        Failure::Dropped
    } else {
        Failure::Other
    }
}

fn certificate_failure(c: &CertificateError) -> CertificateFailure {
    match c {
        CertificateError::UnknownIssuer => CertificateFailure::UnknownCa,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            CertificateFailure::Name
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => CertificateFailure::Validity,
        _ => CertificateFailure::Other,
    }
}

/// The rustls error in `error`'s source chain, also behind the `Arc` a `RedisError` keeps its
/// inner error in and inside an `io::Error` (whose `source()` skips its own payload).
fn rustls_error_in(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = rustls_error_in(inner)
        {
            return Some(tls);
        }
        if let Some(arc) = e.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
            && let Some(tls) = rustls_error_in(&**arc)
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// The rustls error a flattened message shows (rustls's own `Display`: `invalid peer
/// certificate: UnknownIssuer`, `... certificate not valid for name "127.0.0.1"; ...`).
fn rustls_error_in_text(text: &str) -> Option<rustls::Error> {
    if let Some((_, rest)) = text.split_once("invalid peer certificate: ") {
        let c = if rest.starts_with("UnknownIssuer") {
            CertificateError::UnknownIssuer
        } else if rest.starts_with("NotValidForName")
            || rest.starts_with("certificate not valid for name")
        {
            CertificateError::NotValidForName
        } else if rest.starts_with("Expired") || rest.starts_with("certificate expired") {
            CertificateError::Expired
        } else if rest.starts_with("NotValidYet") || rest.starts_with("certificate not valid yet") {
            CertificateError::NotValidYet
        } else {
            let what = rest
                .split([';', '\n'])
                .next()
                .unwrap_or(rest)
                .trim()
                .to_owned();
            CertificateError::Other(rustls::OtherError(Arc::new(std::io::Error::other(what))))
        };
        return Some(rustls::Error::InvalidCertificate(c));
    }
    const HANDSHAKE: &[&str] = &[
        "received corrupt message",
        "received unexpected message",
        "received fatal alert",
        "peer is incompatible",
        "peer misbehaved",
        "InvalidContentType",
    ];
    HANDSHAKE
        .iter()
        .any(|n| text.contains(n))
        .then(|| rustls::Error::General(text.to_owned()))
}

const WHERE_URL: &str = "[redis] url / BATCH__REDIS__URL (or [redis] cluster_nodes / BATCH__REDIS__CLUSTER_NODES for a cluster)";

pub(crate) fn unreachable_message(target: &str, cause: &RedisError, tls: bool) -> String {
    let elsewhere = format!("Start it, or point the launcher elsewhere with {WHERE_URL}");
    match failure_of(cause) {
        Failure::Login => format!(
            "Redis at {target} refused the login ({cause}). Set the right user and password in [redis] url / BATCH__REDIS__URL (redis://USER:PASSWORD@host:port)"
        ),
        Failure::Settings => {
            format!("cannot use the Redis settings for {target} ({cause}). Check {WHERE_URL}")
        }
        Failure::Certificate { explanation, kind } => {
            let hint = match kind {
                CertificateFailure::UnknownCa => {
                    "Set [redis] ca_file / BATCH__REDIS__CA_FILE to the PEM file of the CA that signed the servers' certificates (unset, the system's trust store is used)"
                }
                CertificateFailure::Name => {
                    "Connect by a host name the certificate lists (in [redis] url / cluster_nodes; a cluster's nodes are reached by the addresses they announce), or issue the certificate for the name used"
                }
                CertificateFailure::Validity => {
                    "Renew the server's certificate, or check the clocks"
                }
                CertificateFailure::Other => {
                    "Check the server's certificate and [redis] ca_file / BATCH__REDIS__CA_FILE"
                }
            };
            format!(
                "cannot connect to Redis at {target}: {explanation} ({cause}). {hint}. (A URL ending in #insecure skips the verification: only for tests.)"
            )
        }
        Failure::Handshake => format!(
            "cannot connect to Redis at {target}: the TLS handshake failed ({cause}). Does the server speak TLS on that port? Write redis:// for a server without TLS"
        ),
        Failure::Refused => format!(
            "cannot reach Redis at {target}: nothing listens at that address ({cause}). {elsewhere}"
        ),
        Failure::Timeout if tls => format!(
            "cannot reach Redis at {target}: no answer in time — the host is down, a firewall drops the packets, or the server does not speak TLS (then write redis://) ({cause}). {elsewhere}"
        ),
        Failure::Timeout => format!(
            "cannot reach Redis at {target}: no answer in time — the host is down, or a firewall drops the packets ({cause}). {elsewhere}"
        ),
        Failure::Unreachable => {
            format!("cannot reach Redis at {target}: no route to the host ({cause}). {elsewhere}")
        }
        Failure::UnknownHost => format!(
            "cannot reach Redis at {target}: the host name does not resolve ({cause}). Fix it in {WHERE_URL}"
        ),
        Failure::Dropped if !tls => format!(
            "cannot reach Redis at {target}: the server closed the connection ({cause}). If the server only accepts TLS, write rediss:// in {WHERE_URL}"
        ),
        Failure::Dropped | Failure::Other => {
            format!("cannot reach Redis at {target} ({cause}). {elsewhere}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_io(e: rustls::Error) -> RedisError {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e).into()
    }

    #[test]
    fn a_certificate_error_kept_by_the_client_is_named() {
        let unknown = tls_io(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        // explain alone does not look behind the Arc the RedisError keeps its error in.
        assert_eq!(core_domain::tls::explain(&unknown), None);
        let m = unreachable_message("rediss://h:1", &unknown, true);
        assert!(m.contains("not signed by a trusted CA"), "{m}");
        assert!(m.contains("BATCH__REDIS__CA_FILE"), "{m}");
        let name = tls_io(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        let m = unreachable_message("rediss://h:1", &name, true);
        assert!(m.contains("not valid for the host name"), "{m}");
        let expired = tls_io(rustls::Error::InvalidCertificate(CertificateError::Expired));
        let m = unreachable_message("rediss://h:1", &expired, true);
        assert!(m.contains("has expired"), "{m}");
    }

    #[test]
    fn a_flattened_certificate_error_is_named_from_its_text() {
        let flat = |detail: String| -> RedisError {
            (
                ErrorKind::Io,
                "Failed to create initial connections",
                detail,
            )
                .into()
        };
        let unknown =
            flat(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer).to_string());
        assert_eq!(
            failure_of(&unknown),
            Failure::Certificate {
                explanation: core_domain::tls::explain_rustls(&rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                )),
                kind: CertificateFailure::UnknownCa
            }
        );
        let named = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"localhost\")".to_owned()],
        });
        let m = unreachable_message(
            "cluster rediss://127.0.0.1:1",
            &flat(named.to_string()),
            true,
        );
        assert!(m.contains("not valid for the host name"), "{m}");
        assert!(m.contains("127.0.0.1"), "{m}");
        let m = unreachable_message(
            "cluster rediss://h:1",
            &flat("received corrupt message of type InvalidContentType".to_owned()),
            true,
        );
        assert!(m.contains("TLS handshake failed"), "{m}");
    }

    #[test]
    fn host_failures_are_told_apart() {
        let io = |k: std::io::ErrorKind| -> RedisError { std::io::Error::from(k).into() };
        let refused = unreachable_message(
            "redis://h:1",
            &io(std::io::ErrorKind::ConnectionRefused),
            false,
        );
        assert!(refused.contains("nothing listens"), "{refused}");
        let timeout = unreachable_message("redis://h:1", &io(std::io::ErrorKind::TimedOut), false);
        assert!(timeout.contains("no answer in time"), "{timeout}");
        let reset = unreachable_message(
            "redis://h:1",
            &io(std::io::ErrorKind::ConnectionReset),
            false,
        );
        assert!(reset.contains("write rediss://"), "{reset}");
        let flat: RedisError = (
            ErrorKind::Io,
            "Failed to create initial connections",
            "Connection refused (os error 111)".to_owned(),
        )
            .into();
        assert_eq!(failure_of(&flat), Failure::Refused);
        let auth: RedisError = (ErrorKind::AuthenticationFailed, "WRONGPASS").into();
        assert!(unreachable_message("redis://h:1", &auth, false).contains("refused the login"));
    }
}
