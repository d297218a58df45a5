//! A test certificate authority made with the `openssl` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::output;

/// The OpenSSL configuration: the extensions of the CA and of the server certificates.
const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

/// A test PKI in a temporary directory (deleted on drop), made with the `openssl` command line
/// (ECDSA P-256 keys, valid for ten years):
///
/// - `ca.pem` / `ca-key.pem`: the test CA;
/// - `server.pem` / `server-key.pem`: signed by it, for `DNS:localhost` only — so a client that
///   connects to `localhost` verifies it, and one that connects to `127.0.0.1` sees a wrong
///   host name;
/// - `server-ip.pem` / `server-ip-key.pem`: signed by it, for `DNS:localhost` and
///   `IP:127.0.0.1` (a Redis cluster's nodes announce IP addresses);
/// - `other-ca.pem`: an unrelated CA, for "wrong CA" tests.
///
/// The files are the current user's (keys 0600); the servers here copy what they need into
/// their own directories, so a `Pki` may be dropped while they run.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// Makes the CA, the other CA and both server certificates.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("pki-")
            .tempdir()
            .expect("create a temp dir");
        std::fs::write(dir.path().join("openssl.cnf"), CONFIG).expect("write openssl.cnf");
        let pki = Pki { dir };
        pki.make_ca("ca", "batch-testkit CA");
        pki.make_ca("other-ca", "batch-testkit other CA");
        pki.issue("server", "localhost", "DNS:localhost");
        pki.issue("server-ip", "localhost", "DNS:localhost, IP:127.0.0.1");
        pki
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The test CA's certificate (PEM): what clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// The test CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.file("ca-key.pem")
    }

    /// An unrelated CA's certificate: a client trusting only it must refuse the servers.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.file("other-ca.pem")
    }

    /// The server certificate for `DNS:localhost` only.
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }

    /// The key of [`server_cert`](Self::server_cert).
    pub fn server_key(&self) -> PathBuf {
        self.file("server-key.pem")
    }

    /// The server certificate for `DNS:localhost` and `IP:127.0.0.1`.
    pub fn ip_server_cert(&self) -> PathBuf {
        self.file("server-ip.pem")
    }

    /// The key of [`ip_server_cert`](Self::ip_server_cert).
    pub fn ip_server_key(&self) -> PathBuf {
        self.file("server-ip-key.pem")
    }

    /// Issues another certificate signed by the test CA (`<name>.pem`, `<name>-key.pem`), with
    /// common name `cn` and subject alternative names `san` (e.g. `"DNS:db.test, IP:::1"`);
    /// usable for both server and client authentication. Returns (certificate, key).
    pub fn issue(&self, name: &str, cn: &str, san: &str) -> (PathBuf, PathBuf) {
        let (cert, key, csr) = (
            self.file(&format!("{name}.pem")),
            self.file(&format!("{name}-key.pem")),
            self.file(&format!("{name}.csr")),
        );
        let ext = self.file(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth, clientAuth\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid\n\
                 subjectAltName = {san}\n"
            ),
        )
        .expect("write an extensions file");
        self.openssl(&[
            "req",
            "-new",
            "-config",
            &self.path_str("openssl.cnf"),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &csr.to_string_lossy(),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        let serial = format!(
            "0x{:x}{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(1),
            std::process::id()
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr.to_string_lossy(),
            "-CA",
            &self.path_str("ca.pem"),
            "-CAkey",
            &self.path_str("ca-key.pem"),
            "-set_serial",
            &serial,
            "-days",
            "3650",
            "-extfile",
            &ext.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ]);
        (cert, key)
    }

    fn make_ca(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-config",
            &self.path_str("openssl.cnf"),
            "-extensions",
            "ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &self.path_str(&format!("{name}-key.pem")),
            "-out",
            &self.path_str(&format!("{name}.pem")),
            "-days",
            "3650",
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        output(
            Command::new("openssl")
                .args(args)
                .env("OPENSSL_CONF", self.file("openssl.cnf")),
            &format!("openssl {} (install openssl: scripts/services.sh)", args[0]),
        );
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.file(name).to_string_lossy().into_owned()
    }
}
