//! A throwaway MariaDB server.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    Pki, Proc, StartFailure, copy_into, is_root, on_a_free_port, output, server_dir, succeeds,
    url_encode,
};

/// A MariaDB server of its own: `mariadb-install-db` in a temporary directory, then `mariadbd
/// --no-defaults` on a free loopback port (127.0.0.1 only; its socket in that directory),
/// `utf8mb4` like Debian's configuration, with `innodb_flush_log_at_trx_commit=0`. Killed and
/// deleted on drop. As root it runs with `--user=root`.
///
/// Users: `root` with an empty password (or the given one) on `127.0.0.1` and `::1`, and
/// `root@localhost` without one (the socket, used by [`sql`](Self::sql)).
///
/// With a [`Pki`] it is TLS-only: `--ssl-cert`/`--ssl-key` (the PKI's `localhost` certificate),
/// `--ssl-ca`, and `--require-secure-transport=ON`, so a TCP client without TLS is refused
/// (the socket stays open to `root@localhost`).
pub struct MariaDbServer {
    dir: tempfile::TempDir,
    port: u16,
    password: Option<String>,
    tls: bool,
    proc: Option<Proc>,
}

impl MariaDbServer {
    /// Starts a server, TLS-only with `tls`; `root` has an empty password.
    pub fn start(tls: Option<&Pki>) -> MariaDbServer {
        MariaDbServer::start_with(tls, None)
    }

    /// Starts a server, TLS-only with `tls`; `root` over TCP has `password`, when given.
    pub fn start_with(tls: Option<&Pki>, password: Option<&str>) -> MariaDbServer {
        let dir = server_dir("mariadb-");
        let d = dir.path();
        if let Some(pki) = tls {
            copy_into(&pki.server_cert(), d, "server.pem", false);
            copy_into(&pki.server_key(), d, "server-key.pem", true);
            copy_into(&pki.ca_cert(), d, "ca.pem", false);
        }
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            // Its own temporary tables in the server's directory, not the shared /tmp (another
            // install there made one fail: "Could not remove temporary table").
            .arg(format!("--tmpdir={}", d.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if is_root() {
            install.arg("--user=root");
        }
        let mut init = Proc::spawn(
            &mut install,
            &d.join("install-db.log"),
            "mariadb-install-db",
        );
        if !init.wait_exit(super::START_TIMEOUT) || !init.exited().is_some_and(|s| s.success()) {
            init.kill();
            panic!("mariadb-install-db failed; log:\n{}", init.log_tail());
        }
        let mut server = MariaDbServer {
            dir,
            port: 0,
            password: password.map(str::to_owned),
            tls: tls.is_some(),
            proc: None,
        };
        on_a_free_port("MariaDB", |port| {
            server.port = port;
            server.spawn()
        });
        if let Some(pw) = password {
            let pw = pw.replace('\\', "\\\\").replace('\'', "\\'");
            server.sql(
                "mysql",
                &format!(
                    "ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '{pw}'; \
                     ALTER USER 'root'@'::1' IDENTIFIED BY '{pw}'; FLUSH PRIVILEGES;"
                ),
            );
        }
        server
    }

    /// The loopback port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of `root` over TCP, if one was given.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Its Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// The CA certificate clients should trust (a copy of the PKI's), when TLS-only.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// `ssl-mode=VERIFY_IDENTITY&ssl-ca=<ca>` when TLS-only, else empty: the query of a URL
    /// that verifies the server (connect to `localhost`).
    pub fn tls_params(&self) -> String {
        match self.ca_file() {
            Some(ca) => format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca.display()),
            None => String::new(),
        }
    }

    /// `mysql://root[:password]@<host>:<port>/mysql[?<params>]`.
    pub fn url(&self, host: &str, params: &str) -> String {
        self.url_for("mysql", host, params)
    }

    /// [`url`](Self::url) for another database.
    pub fn url_for(&self, database: &str, host: &str, params: &str) -> String {
        let auth = match &self.password {
            Some(pw) => format!("root:{}", url_encode(pw)),
            None => "root".to_owned(),
        };
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("mysql://{auth}@{host}:{}/{database}{query}", self.port)
    }

    /// Creates a database (through the socket).
    pub fn create_database(&self, name: &str) {
        self.sql("mysql", &format!("CREATE DATABASE `{name}`"));
    }

    /// Runs SQL in `database` with the `mariadb` client through the socket as `root@localhost`;
    /// returns the tab-separated output without column names. Panics when it fails.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        output(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "-N", "-B", "-e", sql, database]),
            &format!("mariadb: {sql}"),
        )
    }

    /// Stops the server (SIGTERM: a clean shutdown) and waits for it to exit. The data stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop("TERM");
        }
    }

    /// Starts the stopped server again on the same port and data, and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "MariaDB is running");
        if let Err(e) = self.spawn() {
            e.panic("MariaDB");
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        super::log_tail(&self.dir.path().join("mariadb.log"), 40)
    }

    fn spawn(&mut self) -> Result<(), StartFailure> {
        let d = self.dir.path();
        let mut cmd = Command::new(mariadbd());
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--tmpdir={}", d.display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-connections=500",
            ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        if self.tls {
            cmd.arg(format!("--ssl-cert={}", d.join("server.pem").display()))
                .arg(format!("--ssl-key={}", d.join("server-key.pem").display()))
                .arg(format!("--ssl-ca={}", d.join("ca.pem").display()))
                .arg("--require-secure-transport=ON");
        }
        let mut proc = Proc::spawn(&mut cmd, &d.join("mariadb.log"), "MariaDB");
        let mut ping = Command::new("mariadb-admin");
        ping.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--connect-timeout=1", "ping"]);
        proc.wait_ready(|| succeeds(&mut ping))?;
        self.proc = Some(proc);
        Ok(())
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        if let Some(p) = &mut self.proc {
            p.kill();
        }
    }
}

/// `/usr/sbin/mariadbd` (Debian's), else `mariadbd` on the `PATH`.
fn mariadbd() -> &'static Path {
    let debian = Path::new("/usr/sbin/mariadbd");
    if debian.exists() {
        debian
    } else {
        Path::new("mariadbd")
    }
}
