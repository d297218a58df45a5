//! A throwaway PostgreSQL server.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    Pki, Proc, StartFailure, copy_into, is_root, on_a_free_port, output, server_dir, succeeds,
    url_encode, user_ids,
};

/// A PostgreSQL server of its own: `initdb` in a temporary directory, then `postgres` on a free
/// loopback port (127.0.0.1 only; its Unix socket in that directory), without durability
/// (`fsync=off`). Stopped (SIGQUIT) and deleted on drop.
///
/// With a [`Pki`] it is TLS-only: `ssl=on` with the PKI's `localhost` certificate, and
/// `pg_hba.conf` has `hostnossl … reject` and `hostssl` lines only, so a client with
/// `sslmode=disable` is refused. Local (socket) connections are trusted; TCP ones are trusted,
/// or need the password when one is given.
///
/// As root, the server runs as the `postgres` OS user (PostgreSQL refuses root) and the
/// directory is owned by it.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    password: Option<String>,
    tls: bool,
    bin: PathBuf,
    /// The (uid, gid) the server runs as, when not this process's.
    run_as: Option<(u32, u32)>,
    proc: Option<Proc>,
}

impl PgServer {
    /// Starts a server, TLS-only with `tls`, trusting every loopback connection.
    pub fn start(tls: Option<&Pki>) -> PgServer {
        PgServer::start_with(tls, None)
    }

    /// Starts a server, TLS-only with `tls`; with `password`, TCP connections must give it
    /// (user `postgres`, SCRAM).
    pub fn start_with(tls: Option<&Pki>, password: Option<&str>) -> PgServer {
        let dir = server_dir("pg-");
        let run_as = is_root().then(|| user_ids("postgres"));
        let bin = bin_dir();
        let d = dir.path();
        let pwfile = d.join("pwfile");
        if let Some(pw) = password {
            std::fs::write(&pwfile, pw).expect("write the password file");
        }
        if let Some(pki) = tls {
            copy_into(&pki.server_cert(), d, "server.crt", false);
            copy_into(&pki.server_key(), d, "server.key", true);
            copy_into(&pki.ca_cert(), d, "ca.pem", false);
        }
        if let Some((uid, gid)) = run_as {
            output(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{uid}:{gid}"))
                    .arg(d),
                "chown the PostgreSQL directory",
            );
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(d.join("data")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "-N",
        ]);
        if password.is_some() {
            initdb.arg(format!("--pwfile={}", pwfile.display()));
        }
        let mut init = Proc::spawn(
            as_user(&mut initdb, run_as),
            &d.join("initdb.log"),
            "initdb",
        );
        if !init.wait_exit(super::START_TIMEOUT) || !init.exited().is_some_and(|s| s.success()) {
            init.kill();
            panic!("initdb failed; log:\n{}", init.log_tail());
        }
        let _ = std::fs::remove_file(&pwfile);

        let host_method = if password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = if tls.is_some() {
            format!(
                "local all all trust\n\
                 hostnossl all all 0.0.0.0/0 reject\n\
                 hostnossl all all ::/0 reject\n\
                 hostssl all all 127.0.0.1/32 {host_method}\n\
                 hostssl all all ::1/128 {host_method}\n"
            )
        } else {
            format!(
                "local all all trust\n\
                 host all all 127.0.0.1/32 {host_method}\n\
                 host all all ::1/128 {host_method}\n"
            )
        };
        std::fs::write(d.join("data/pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut conf = format!(
            "\n# batch-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            d.display()
        );
        if tls.is_some() {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                d.display()
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("data/postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut file, conf.as_bytes()).expect("write postgresql.conf");

        let mut server = PgServer {
            dir,
            port: 0,
            password: password.map(str::to_owned),
            tls: tls.is_some(),
            bin,
            run_as,
            proc: None,
        };
        on_a_free_port("PostgreSQL", |port| {
            server.port = port;
            server.spawn()
        });
        server
    }

    /// The loopback port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of user `postgres` over TCP, if one was given.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The directory of its Unix socket (for `psql -h DIR -p PORT`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate clients should trust (a copy of the PKI's), when TLS-only.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// `sslmode=verify-full&sslrootcert=<ca>` when TLS-only, else empty: the query of a URL that
    /// verifies the server (connect to `localhost`).
    pub fn tls_params(&self) -> String {
        match self.ca_file() {
            Some(ca) => format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            None => String::new(),
        }
    }

    /// `postgres://postgres[:password]@<host>:<port>/postgres[?<params>]`.
    pub fn url(&self, host: &str, params: &str) -> String {
        self.url_for("postgres", host, params)
    }

    /// [`url`](Self::url) for another database.
    pub fn url_for(&self, database: &str, host: &str, params: &str) -> String {
        let auth = match &self.password {
            Some(pw) => format!("postgres:{}", url_encode(pw)),
            None => "postgres".to_owned(),
        };
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgres://{auth}@{host}:{}/{database}{query}", self.port)
    }

    /// Creates a database (through the Unix socket).
    pub fn create_database(&self, name: &str) {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs SQL in `database` with `psql` through the Unix socket as `postgres`; returns the
    /// unaligned, tuples-only output. Panics when it fails.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        clear_pg_env(&mut cmd);
        output(
            cmd.arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]),
            &format!("psql: {sql}"),
        )
    }

    /// Stops the server (fast shutdown: SIGINT) and waits for it to exit. The data stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop("INT");
        }
    }

    /// Starts the stopped server again on the same port and data, and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "PostgreSQL is running");
        if let Err(e) = self.spawn() {
            e.panic("PostgreSQL");
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        super::log_tail(&self.dir.path().join("postgres.log"), 40)
    }

    fn spawn(&mut self) -> Result<(), StartFailure> {
        let d = self.dir.path();
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(d.join("data"))
            .args(["-p", &self.port.to_string()]);
        let mut proc = Proc::spawn(
            as_user(&mut cmd, self.run_as),
            &d.join("postgres.log"),
            "PostgreSQL",
        );
        let mut isready = Command::new(self.bin.join("pg_isready"));
        clear_pg_env(&mut isready);
        isready
            .arg("-h")
            .arg(d)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-t", "1"]);
        proc.wait_ready(|| succeeds(&mut isready))?;
        self.proc = Some(proc);
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(p) = &mut self.proc {
            p.shut_down("QUIT");
        }
    }
}

/// Runs `cmd` as (uid, gid) when given.
fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Removes the `PG*` variables that would steer a client elsewhere.
fn clear_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian's), or `BATCH_TEST_PG_BIN`, or the
/// `PATH`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BATCH_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, bin)| bin).unwrap_or_default()
}
