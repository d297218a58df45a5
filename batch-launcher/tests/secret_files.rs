//! Secrets given as files (`BATCH__…_FILE`, `<key>_file`), as Kubernetes and Docker hand them
//! over, through the binary: a real run, the errors (exit 2, named, never the content), `serve`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_launcher::modules::MODULES;

use crate::{launcher, text};

/// Writes `content` to `dir/name` and returns the path as text.
fn secret_file(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// The error line of a launcher that must exit 2, checked to hold `needles`; `secret` appears
/// nowhere in the output.
fn config_error(o: &std::process::Output, needles: &[&str], secret: Option<&str>) -> String {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"))
        .to_owned();
    for needle in needles {
        assert!(line.contains(needle), "`{needle}` not named in: {line}");
    }
    if let Some(secret) = secret {
        assert!(
            !format!("{out}{err}").contains(secret),
            "{secret} leaked: {out}\n{err}"
        );
    }
    line
}

/// A `redis-server` requiring `password`, on a free port (the shared one is never touched);
/// killed on drop.
struct PasswordRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PasswordRedis {
    fn start(password: &str) -> PasswordRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it: scripts/services.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PasswordRedis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The database URL from a file (a trailing newline, as `echo` writes it) and the Redis AUTH
/// password from another: seed, run pointBalanceSyncJob, and `config` says where they came from.
#[test]
fn a_job_runs_with_its_database_url_and_redis_password_from_files() {
    const REDIS_SECRET: &str = "redis-file-secret/4711@x";
    let redis = PasswordRedis::start(REDIS_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let db_path = dir.path().join("from-secret.db");
    let url_file = secret_file(
        &secrets,
        "db_url",
        &format!("sqlite://{}\n", db_path.display()),
    );
    let password_file = secret_file(&secrets, "redis_password", &format!("{REDIS_SECRET}\r\n"));
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let env = [
        ("BATCH__DATABASE__URL_FILE", url_file.as_str()),
        ("BATCH__REDIS__URL", redis_url.as_str()),
        ("BATCH__REDIS__PASSWORD_FILE", password_file.as_str()),
    ];
    let mut all = String::new();

    let o = launcher(
        dir.path(),
        &["seed-demo", "--users", "40", "--date", "2026-11-20"],
        &env,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        db_path.exists(),
        "the URL in the file was not used: {out}\n{err}"
    );
    all += &(out + &err);

    let o = launcher(
        dir.path(),
        &["run", "pointBalanceSyncJob", "date=2026-11-20"],
        &env,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("syncPointBalanceStep: COMPLETED read=40") && out.contains("created=40"),
        "{out}"
    );
    all += &(out + &err);

    let o = launcher(dir.path(), &["config"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let db_url = serde_json::Value::from(format!("sqlite://{}", db_path.display()));
    assert!(
        out.contains(&format!(
            "url = {db_url}  # read from url_file = \"{url_file}\""
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("url = \"redis://:***@127.0.0.1:{}\"", redis.port)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "password = \"[REDACTED]\"  # read from password_file = \"{password_file}\""
        )),
        "{out}"
    );
    all += &(out + &err);
    assert!(
        !all.contains("redis-file-secret"),
        "the secret leaked: {all}"
    );
}

#[test]
fn a_secret_file_that_cannot_be_used_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/secret").display().to_string();
    // From the environment: the setting, the variable and the path; nothing created. `run`
    // writes its failure result all the same.
    for args in [
        &["migrate"][..],
        &["run", "pointBalanceSyncJob", "--result-file", "r.json"][..],
    ] {
        let o = launcher(
            dir.path(),
            args,
            &[("BATCH__DATABASE__URL_FILE", missing.as_str())],
        );
        config_error(
            &o,
            &["`database.url_file`", "BATCH__DATABASE__URL_FILE", &missing],
            None,
        );
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} created the database"
        );
    }
    let result = std::fs::read_to_string(dir.path().join("r.json")).unwrap();
    assert!(result.contains("database.url_file"), "{result}");

    // From the config file: the file and the key.
    std::fs::write(
        dir.path().join("batch.toml"),
        format!("[server]\ntoken_file = \"{missing}\"\n"),
    )
    .unwrap();
    let o = launcher(dir.path(), &["--config", "batch.toml", "config"], &[]);
    config_error(&o, &["batch.toml", "`server.token_file`", &missing], None);

    // Content that is not a valid value: the check's error, the secret not in it.
    const SECRET: &str = "leak-me-if-you-can-0815";
    let bad = secret_file(
        dir.path(),
        "bad_url",
        &format!("postgres://app:{SECRET}@db:notaport/x\n"),
    );
    let o = launcher(
        dir.path(),
        &["migrate"],
        &[("BATCH__DATABASE__URL_FILE", bad.as_str())],
    );
    config_error(&o, &["database.url", &bad, "invalid port"], Some(SECRET));
    // A password where the URL goes.
    let bare = secret_file(dir.path(), "bare", &format!("{SECRET}\n"));
    let o = launcher(
        dir.path(),
        &["migrate"],
        &[("BATCH__DATABASE__URL_FILE", bare.as_str())],
    );
    config_error(&o, &["database.url", &bare], Some(SECRET));
    // An empty file.
    let empty = secret_file(dir.path(), "empty", "\n");
    let o = launcher(
        dir.path(),
        &["config"],
        &[("BATCH__ASSET__API_TOKEN_FILE", empty.as_str())],
    );
    config_error(&o, &["`asset.api_token_file`", "is empty"], None);
    // The value and its file both.
    let token = secret_file(dir.path(), "token", &format!("{SECRET}\n"));
    let o = launcher(
        dir.path(),
        &["config"],
        &[
            ("BATCH__SERVER__TOKEN", "direct"),
            ("BATCH__SERVER__TOKEN_FILE", token.as_str()),
        ],
    );
    config_error(
        &o,
        &["BATCH__SERVER__TOKEN_FILE", "`server.token` is set too"],
        Some(SECRET),
    );
    // A file for a setting that is not secret.
    let o = launcher(
        dir.path(),
        &["config"],
        &[("BATCH__BATCH__CHUNK_SIZE_FILE", token.as_str())],
    );
    config_error(&o, &["batch.chunk_size_file"], Some(SECRET));
}

/// One request; the status code.
fn status_of(addr: &str, path: &str, token: Option<&str>) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// `serve` takes its bearer token from a file (a Kubernetes secret volume).
#[test]
fn serve_takes_its_token_from_a_file() {
    const TOKEN: &str = "serve-token-from-file-31337";
    let dir = tempfile::tempdir().unwrap();
    let token_file = secret_file(dir.path(), "token", &format!("{TOKEN}\n"));
    let db_url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let mut env: Vec<(String, String)> = vec![
        ("BATCH__DATABASE__URL".into(), db_url),
        ("BATCH__SERVER__TOKEN_FILE".into(), token_file.clone()),
        ("BATCH__SERVER__BIND".into(), "127.0.0.1:0".into()),
    ];
    env.extend(
        MODULES
            .iter()
            .flat_map(|m| m.default_schedules())
            .map(|(job, _)| {
                (
                    format!("BATCH__SCHEDULE__{}", job.to_uppercase()),
                    "off".to_owned(),
                )
            }),
    );

    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = launcher(dir.path(), &["config"], &env_refs);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "token = \"[REDACTED]\"  # read from token_file = \"{token_file}\""
        )),
        "{out}"
    );
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "{out}\n{err}");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    cmd.current_dir(dir.path()).arg("serve");
    for (k, _) in std::env::vars() {
        if k.starts_with("BATCH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env_refs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let Some(addr) = line
        .strip_prefix("serving on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
    else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("unexpected first line: {line}");
    };
    let route = "/jobs/pointBalanceSyncJob/executions";
    let with_token = status_of(&addr, route, Some(TOKEN));
    let wrong = status_of(&addr, route, Some("not-the-token"));
    let without = status_of(&addr, route, None);

    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!((with_token, wrong, without), (200, 401, 401), "{err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.contains(TOKEN) && !line.contains(TOKEN),
        "the token leaked: {err}"
    );
}
