//! Throwaway servers for tests: PostgreSQL, MariaDB and Redis (single, with persistence, and a
//! TLS cluster), each started as a child process with its own temporary directory and a free
//! loopback port, optionally TLS-only with certificates of a test CA ([`Pki`]), and killed and
//! deleted on drop.
//!
//! Everything is synchronous (`std::process`) and panics with the server's log tail when a
//! server does not come up within [`START_TIMEOUT`]. The server binaries are the Debian
//! packages' (`scripts/services.sh` installs them); as root, PostgreSQL runs as the `postgres`
//! OS user (it refuses root) and MariaDB with `--user=root`.

mod mariadb;
mod pki;
mod postgres;
mod redis;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use mariadb::MariaDbServer;
pub use pki::Pki;
pub use postgres::PgServer;
pub use redis::{RedisServer, RedisTlsCluster, RedisTlsServer};

/// How long a server may take to accept connections after it is spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server may take to stop after it is asked to.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port that is free now, and whose Redis cluster bus port (+10000) is free too; never
/// the same twice in this process. (Another process may still take it before the server binds
/// it: the servers here then start again on another port.)
pub fn free_port() -> u16 {
    use std::net::TcpListener;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        if port > 55000 || given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port pair found");
}

/// True when this process runs as root.
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| output(Command::new("id").arg("-u"), "id -u").trim() == "0")
}

/// The uid and gid of an OS user.
pub(crate) fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = output(Command::new("id").args([flag, user]), "id");
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("`id {flag} {user}` printed {out:?}"))
    };
    (id("-u"), id("-g"))
}

/// A fresh directory for one server under `/tmp` (short, so Unix socket paths fit, and
/// reachable by another OS user), deleted on drop.
pub(crate) fn server_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp")
}

/// Runs `cmd` to completion and returns its stdout; panics with its output when it fails.
pub(crate) fn output(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion; true when it succeeds (its output is discarded).
pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last `lines` lines of a log file.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copies a file into `dir` under `name`, with mode 0600 (keys) or 0644.
pub(crate) fn copy_into(from: &Path, dir: &Path, name: &str, private: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    std::fs::copy(from, &to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", to.display()));
    to
}

/// Percent-encodes a URL user-info part (a password).
pub(crate) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Why a start attempt failed.
pub(crate) enum StartFailure {
    /// The port was taken meanwhile: try another one.
    PortTaken,
    /// Anything else: the message, with the log tail.
    Failed(String),
}

impl StartFailure {
    /// Panics with the message.
    pub(crate) fn panic(self, what: &str) -> ! {
        match self {
            StartFailure::PortTaken => panic!("{what}: its port was taken"),
            StartFailure::Failed(msg) => panic!("{msg}"),
        }
    }
}

/// Tries `attempt` on free ports until one is not taken meanwhile (at most 5 ports).
pub(crate) fn on_a_free_port<T>(
    what: &str,
    mut attempt: impl FnMut(u16) -> Result<T, StartFailure>,
) -> T {
    for _ in 0..5 {
        match attempt(free_port()) {
            Ok(t) => return t,
            Err(StartFailure::PortTaken) => continue,
            Err(e) => e.panic(what),
        }
    }
    panic!("{what}: 5 free ports in a row were taken before it could bind them");
}

/// A server process, its output appended to a log file.
pub(crate) struct Proc {
    child: Child,
    log: PathBuf,
    /// The log's length when this process started (its own output comes after).
    log_start: u64,
    what: String,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(cmd: &mut Command, log: &Path, what: &str) -> Proc {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{what}: open {}: {e}", log.display()));
        let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
        let err = file.try_clone().expect("clone a file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{what}: cannot run {:?}: {e} (scripts/services.sh installs the servers)",
                    cmd.get_program()
                )
            });
        Proc {
            child,
            log: log.to_owned(),
            log_start,
            what: what.to_owned(),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What this process wrote to its log since it started.
    fn own_output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(self.log_start));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// The log's last lines.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }

    /// Waits until `ready` is true; fails when the process exits first (with
    /// [`StartFailure::PortTaken`] when its log says the address is in use) or after
    /// [`START_TIMEOUT`]. A failed process is killed.
    pub(crate) fn wait_ready(
        &mut self,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), StartFailure> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                let own = self.own_output();
                if own.contains("already in use") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Failed(format!(
                    "{} exited ({status}) before accepting connections; log {}:\n{}",
                    self.what,
                    self.log.display(),
                    self.log_tail()
                )));
            }
            if start.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(StartFailure::Failed(format!(
                    "{} did not accept connections within {START_TIMEOUT:?}; log {}:\n{}",
                    self.what,
                    self.log.display(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (`"INT"`, `"TERM"`, `"QUIT"`, …) to the process.
    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits up to `timeout` for the process to exit; true when it did.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the process with `sig` and waits for it; panics with the log tail if it does not
    /// exit within the stop timeout (it is killed then).
    pub(crate) fn stop(&mut self, sig: &str) {
        self.signal(sig);
        if !self.wait_exit(STOP_TIMEOUT) {
            self.kill();
            panic!(
                "{} did not stop within {STOP_TIMEOUT:?} of SIG{sig}; log:\n{}",
                self.what,
                self.log_tail()
            );
        }
    }

    /// Ends the process at once (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// For drops: `sig`, a short grace period, then SIGKILL.
    pub(crate) fn shut_down(&mut self, sig: &str) {
        if self.exited().is_some() {
            return;
        }
        self.signal(sig);
        if !self.wait_exit(Duration::from_secs(10)) {
            self.kill();
        }
    }
}
