//! Throwaway Redis servers: TLS-only, plain with an RDB file, and a TLS cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Pki, Proc, StartFailure, copy_into, log_tail, on_a_free_port, server_dir, url_encode};

/// A TLS-only Redis server of its own: `redis-server --port 0 --tls-port P` on 127.0.0.1 with
/// the PKI's `localhost` certificate, `--tls-auth-clients no` (no client certificates), nothing
/// on disk (`--save '' --appendonly no`), and `--requirepass` when a password is given. Killed
/// on drop.
pub struct RedisTlsServer {
    dir: tempfile::TempDir,
    port: u16,
    password: Option<String>,
    proc: Option<Proc>,
}

impl RedisTlsServer {
    /// Starts a server without a password.
    pub fn start(pki: &Pki) -> RedisTlsServer {
        RedisTlsServer::start_with(pki, None)
    }

    /// Starts a server that requires `password` (when given).
    pub fn start_with(pki: &Pki, password: Option<&str>) -> RedisTlsServer {
        let dir = server_dir("redis-tls-");
        let d = dir.path();
        copy_into(&pki.server_cert(), d, "server.pem", false);
        copy_into(&pki.server_key(), d, "server-key.pem", true);
        copy_into(&pki.ca_cert(), d, "ca.pem", false);
        let mut server = RedisTlsServer {
            dir,
            port: 0,
            password: password.map(str::to_owned),
            proc: None,
        };
        on_a_free_port("Redis (TLS)", |port| {
            server.port = port;
            server.spawn()
        });
        server
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate clients should trust (a copy of the PKI's).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `rediss://[:password@]localhost:<port>` (the name the certificate is for).
    pub fn url(&self) -> String {
        self.url_with_host("localhost")
    }

    /// The URL with another host name (`127.0.0.1`: a host name the certificate is not for).
    pub fn url_with_host(&self, host: &str) -> String {
        let auth = match &self.password {
            Some(pw) => format!(":{}@", url_encode(pw)),
            None => String::new(),
        };
        format!("rediss://{auth}{host}:{}", self.port)
    }

    /// `redis-cli --tls --cacert <ca> -h localhost -p <port> <args>` (with the password);
    /// its stdout, or "" when it cannot run.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(
            &["--tls", "--cacert", &self.ca_file().to_string_lossy()],
            "localhost",
            self.port,
            self.password.as_deref(),
            args,
        )
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop("TERM");
        }
    }

    /// Starts the stopped server again on the same port (empty), waiting until it answers.
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "Redis is running");
        if let Err(e) = self.spawn() {
            e.panic("Redis (TLS)");
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("redis.log"), 40)
    }

    fn spawn(&mut self) -> Result<(), StartFailure> {
        let d = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"]);
        tls_args(&mut cmd, d, "server.pem", "server-key.pem");
        cmd.args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(d);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw.as_str()]);
        }
        let mut proc = Proc::spawn(&mut cmd, &d.join("redis.log"), "Redis (TLS)");
        proc.wait_ready(|| self.cli(&["ping"]).contains("PONG"))?;
        self.proc = Some(proc);
        Ok(())
    }
}

impl Drop for RedisTlsServer {
    fn drop(&mut self) {
        if let Some(p) = &mut self.proc {
            p.kill();
        }
    }
}

/// A plain Redis server (no TLS, no password) whose data lives in `dump.rdb` of a directory
/// the caller owns: it loads the file on start, and [`stop`](Self::stop) saves it
/// (`SHUTDOWN SAVE`) — so a test can fill it, restart it and meet it while it is `LOADING`. No
/// periodic saves, no AOF; `DEBUG` is allowed (`DEBUG POPULATE 1000000` makes a big data
/// set quickly). Killed on drop (without saving).
pub struct RedisServer {
    rdb_dir: PathBuf,
    log_dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts a server on 127.0.0.1 with its RDB file in `dir` (loaded if it exists), waiting
    /// until it has loaded it.
    pub fn start_with_rdb(dir: &Path) -> RedisServer {
        let mut server = RedisServer {
            rdb_dir: dir.to_owned(),
            log_dir: server_dir("redis-"),
            port: 0,
            proc: None,
        };
        on_a_free_port("Redis", |port| {
            server.port = port;
            server.spawn(true)
        });
        server
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The RDB file.
    pub fn rdb_file(&self) -> PathBuf {
        self.rdb_dir.join("dump.rdb")
    }

    /// `redis-cli -h 127.0.0.1 -p <port> <args>`: its stdout, or "" when it cannot run.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&[], "127.0.0.1", self.port, None, args)
    }

    /// Saves the data (`SHUTDOWN SAVE`) and waits for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = self.cli(&["shutdown", "save"]);
            if !p.wait_exit(Duration::from_secs(60)) {
                p.kill();
                panic!(
                    "Redis did not save and exit within 60 s; log:\n{}",
                    p.log_tail()
                );
            }
        }
    }

    /// Starts the stopped server again on the same port, waiting until it has loaded its data
    /// (answers `PING` with `PONG`).
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "Redis is running");
        if let Err(e) = self.spawn(true) {
            e.panic("Redis");
        }
    }

    /// Starts the stopped server again on the same port, returning as soon as it answers at all
    /// — typically `LOADING` while it reads a big RDB file.
    pub fn start_again_loading(&mut self) {
        assert!(self.proc.is_none(), "Redis is running");
        if let Err(e) = self.spawn(false) {
            e.panic("Redis");
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// True while the server is loading its RDB file.
    pub fn is_loading(&self) -> bool {
        self.cli(&["ping"]).contains("LOADING")
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_dir.path().join("redis.log"), 40)
    }

    fn spawn(&mut self, until_loaded: bool) -> Result<(), StartFailure> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.rdb_dir);
        let mut proc = Proc::spawn(&mut cmd, &self.log_dir.path().join("redis.log"), "Redis");
        proc.wait_ready(|| {
            let reply = self.cli(&["ping"]);
            reply.contains("PONG") || (!until_loaded && reply.contains("LOADING"))
        })?;
        self.proc = Some(proc);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(p) = &mut self.proc {
            p.kill();
        }
    }
}

/// A Redis Cluster of TLS-only masters on 127.0.0.1 (no replicas, nothing on disk): each node
/// `redis-server --cluster-enabled yes --tls-cluster yes --tls-replication yes --port 0
/// --tls-port P` with a certificate for `DNS:localhost` and `IP:127.0.0.1` (the nodes announce
/// IP addresses), made by `redis-cli --tls --cluster create`. It has a [`Pki`] of its own.
/// Killed on drop.
pub struct RedisTlsCluster {
    pki: Pki,
    nodes: Vec<Proc>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl RedisTlsCluster {
    /// Starts `masters` nodes and makes them a cluster, waiting until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisTlsCluster {
        assert!(masters >= 3, "a Redis cluster needs at least 3 masters");
        let pki = Pki::new();
        let dir = server_dir("redis-cluster-");
        let d = dir.path();
        copy_into(&pki.ip_server_cert(), d, "server.pem", false);
        copy_into(&pki.ip_server_key(), d, "server-key.pem", true);
        copy_into(&pki.ca_cert(), d, "ca.pem", false);
        let mut cluster = RedisTlsCluster {
            pki,
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..masters {
            let node = on_a_free_port("Redis cluster node", |port| cluster.spawn_node(port));
            cluster.ports.push(node.0);
            cluster.nodes.push(node.1);
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(cluster.ca_file())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}\nfirst node's log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.nodes[0].log_tail()
        );
        for (port, node) in cluster.ports.iter().zip(&cluster.nodes) {
            let start = Instant::now();
            while !cluster
                .cli(*port, &["cluster", "info"])
                .contains("cluster_state:ok")
            {
                assert!(
                    start.elapsed() < super::START_TIMEOUT,
                    "Redis cluster node {port} not ok within {:?}; log:\n{}",
                    super::START_TIMEOUT,
                    node.log_tail()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// `rediss://127.0.0.1:<port>` of each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}"))
            .collect()
    }

    /// The nodes' TLS ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The CA certificate clients should trust.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.ca_cert()
    }

    /// The cluster's PKI (its `other_ca_cert` for "wrong CA" tests).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// `redis-cli --tls --cacert <ca> -h 127.0.0.1 -p <port> <args>`: its stdout, or "".
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(
            &["--tls", "--cacert", &self.ca_file().to_string_lossy()],
            "127.0.0.1",
            port,
            None,
            args,
        )
    }

    fn spawn_node(&self, port: u16) -> Result<(u16, Proc), StartFailure> {
        let d = self.dir.path();
        let node_dir = d.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("create a node directory");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1"]);
        tls_args(&mut cmd, d, "server.pem", "server-key.pem");
        cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&node_dir);
        let mut proc = Proc::spawn(
            &mut cmd,
            &node_dir.join("redis.log"),
            &format!("Redis cluster node {port}"),
        );
        proc.wait_ready(|| self.cli(port, &["ping"]).contains("PONG"))?;
        Ok((port, proc))
    }
}

impl Drop for RedisTlsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// The TLS options of a server whose certificate, key and CA are in `dir`.
fn tls_args(cmd: &mut Command, dir: &Path, cert: &str, key: &str) {
    cmd.arg("--tls-cert-file")
        .arg(dir.join(cert))
        .arg("--tls-key-file")
        .arg(dir.join(key))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args(["--tls-auth-clients", "no"]);
}

/// `redis-cli <tls> -h <host> -p <port> <args>`, the password in `REDISCLI_AUTH`; its stdout,
/// or "" when it cannot run.
fn cli(tls: &[&str], host: &str, port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(tls)
        .args(["-h", host, "-p", &port.to_string()])
        .args(args)
        .env_remove("REDISCLI_AUTH")
        .stdin(std::process::Stdio::null());
    if let Some(pw) = password {
        cmd.env("REDISCLI_AUTH", pw);
    }
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
