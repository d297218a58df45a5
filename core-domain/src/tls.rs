//! TLS for every client of the platform: one stack (rustls) and one crypto provider (ring), the
//! verification levels libpq and the MySQL client name (none, the CA chain only, the chain and
//! the host name), CA files, and errors that say whether the host, the certificate or the name
//! failed.
//!
//! PostgreSQL and MySQL/MariaDB connections get their [`rustls::ClientConfig`] from
//! [`client_config`]; the Redis and HTTP clients build theirs inside their crates, from the same
//! process-wide provider that [`install_crypto_provider`] installs.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Installs ring as the process's rustls crypto provider (idempotent). Every TLS client of the
/// process (HTTP, PostgreSQL, MySQL, Redis) then uses it.
pub fn install_crypto_provider() {
    // Err means a provider is installed already (this one, by an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// How much of the server's certificate a TLS connection checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only; accept any certificate (libpq `require`, MySQL `REQUIRED`).
    Nothing,
    /// The certificate must chain to a trusted CA; its host name is not checked (libpq
    /// `verify-ca`, MySQL `VERIFY_CA`).
    Chain,
    /// The chain and the host name (libpq `verify-full`, MySQL `VERIFY_IDENTITY`).
    Full,
}

/// Reads a PEM file of CA certificates. The error names the path and what is wrong with it
/// (missing, unreadable, no certificate in it); the content is never shown.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file `{}`: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA file `{}` is not valid PEM ({e:?})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file `{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The trust anchors: the certificates of `ca_file`, or the system's trust store (plus
/// nothing else) when it is `None`.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "the CA file `{}` holds a certificate rustls cannot use: {e}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no CA file given and the system trust store is empty (install ca-certificates, or name a CA file)"
                        .to_owned(),
                );
            }
        }
    }
    Ok(roots)
}

/// A client configuration that verifies as `verify` says, against `ca_file` (or the system's
/// trust store).
pub fn client_config(verify: Verify, ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let config = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth(),
        Verify::Full => builder
            .with_root_certificates(root_store(ca_file)?)
            .with_no_client_auth(),
        Verify::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(ca_file)?),
                provider(),
            )
            .build()
            .map_err(|e| format!("TLS set-up: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// Accepts any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the chain to a trusted CA and accepts any host name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Which part of a TLS connection failed, in words an operator acts on; `None` when `error`
/// (or anything in its source chain) is not a TLS certificate error.
///
/// - the certificate: not signed by a trusted CA, expired or not yet valid, revoked, malformed;
/// - the name: the certificate is valid but not for the host name connected to.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(explain_rustls(tls));
        }
        current = e.source();
    }
    None
}

/// `DnsName("db.local")` (how rustls lists a certificate's names) as `db.local`.
fn presented_name(p: &str) -> String {
    p.split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(p, |inner| inner.trim_matches('"'))
        .to_owned()
}

/// [`explain`] for a rustls error.
pub fn explain_rustls(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForNameContext { expected, presented } => {
                let names: Vec<String> = presented.iter().map(|p| presented_name(p)).collect();
                format!(
                    "TLS: the server's certificate is not valid for the host name `{}` (it is for {}); connect by a name the certificate lists, or use a mode that checks the CA only",
                    expected.to_str(),
                    names.join(", ")
                )
            }
            CertificateError::NotValidForName => "TLS: the server's certificate is not valid for the host name connected to; connect by a name the certificate lists, or use a mode that checks the CA only".to_owned(),
            CertificateError::UnknownIssuer => "TLS: the server's certificate is not signed by a trusted CA (unknown issuer); give the CA that signed it as the CA file".to_owned(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet (check the clocks)".to_owned()
            }
            other => format!("TLS: the server's certificate was refused ({other:?})"),
        },
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = read_ca_file(&missing).unwrap_err();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate, secret-ish text\n").unwrap();
        let e = read_ca_file(&empty).unwrap_err();
        assert!(e.contains("empty.pem") && !e.contains("secret-ish"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificate_errors_say_what_failed() {
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, name);
        assert!(explain(&io).unwrap().contains("host name"));
        let context = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"localhost\")".to_owned()],
        });
        let text = explain(&context).unwrap();
        assert!(
            text.contains("host name `127.0.0.1` (it is for localhost)"),
            "{text}"
        );
        let issuer = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(explain(&issuer).unwrap().contains("trusted CA"));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(explain(&plain), None);
    }

    #[test]
    fn every_mode_builds_a_config() {
        for verify in [Verify::Nothing, Verify::Chain, Verify::Full] {
            // The system store may be empty on a minimal machine; only `Nothing` needs no roots.
            let result = client_config(verify, None);
            assert!(result.is_ok() || verify != Verify::Nothing, "{result:?}");
        }
    }
}
