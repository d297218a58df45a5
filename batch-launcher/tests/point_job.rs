//! pointBalanceSyncJob through the binary: the result file, --rerun, an unreachable Redis, and a
//! launcher killed with SIGKILL in the middle of the sync.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batch_common::repository::JobRepository;
use batch_launcher::modules::MODULES;
use batch_testkit::{TestRedis, db_test};
use core_domain::models::PointBalance;
use redis::AsyncCommands;

use crate::{launcher, text};

db_test!(modules = MODULES; async fn run_writes_the_result_file_and_honours_rerun(db) {
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir()?;
    let prefix = redis.key("point:balance:");
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret()), ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str())];
    let o = launcher(dir.path(), &["seed-demo", "--users", "300", "--date", "2026-11-20"], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let o = launcher(dir.path(), &["--job.name=pointBalanceSyncJob", "date=2026-11-20", "--result-file", "result.json"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("syncPointBalanceStep: COMPLETED read=300") && out.contains("created=300"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("result.json"))?)?;
    assert_eq!(json["status"], "COMPLETED");
    assert_eq!(json["exit_code"], "COMPLETED");
    assert_eq!(json["steps"][0]["counters"]["created"], 300);
    assert!(json["steps"][1]["write_count"].as_i64().unwrap() > 200);
    assert_eq!(redis.keys().await.len(), 300);

    let o = launcher(dir.path(), &["run", "pointBalanceSyncJob", "date=2026-11-20"], &env);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("nothing to do"), "{:?}", text(&o));
    let o = launcher(dir.path(), &["run", "pointBalanceSyncJob", "date=2026-11-20", "--rerun"], &env);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(out.contains("unchanged=300"), "{out}");
    Ok(())
});

#[test]
fn unreachable_redis_exits_1_saying_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(
        dir.path(),
        &["run", "pointBalanceSyncJob", "--result-file", "r.json"],
        &[
            ("BATCH__REDIS__URL", "redis://:hunter2@127.0.0.1:1"),
            ("BATCH__REDIS__CONNECT_TIMEOUT", "300ms"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("redis://:***@127.0.0.1:1") && err.contains("BATCH__REDIS__URL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // The result file is written all the same: FAILED, the exit code, the error, redacted.
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(result["status"], "FAILED", "{result}");
    assert_eq!(result["exit_code"], "FAILED", "{result}");
    let message = result["message"].as_str().unwrap();
    assert!(message.contains("redis://:***@127.0.0.1:1"), "{message}");
    assert!(!result.to_string().contains("hunter2"), "{result}");
}

/// A `redis-server` with a password on a free port (the shared one is never touched); killed
/// on drop.
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PasswordRedis {
    fn start(password: &str) -> PasswordRedis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                password,
            ])
            .args(["--save", "", "--appendonly", "no"])
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

/// A port nothing listens on (just released by the OS).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Exit 1, one error line with the cause once and no secret, and a FAILED result file whose
/// message is that line.
fn assert_failed_setup(
    dir: &std::path::Path,
    o: &std::process::Output,
    needle: &str,
    cause: &str,
    secret: &str,
) {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(needle), "{err}");
    assert_eq!(
        err.matches(cause).count(),
        1,
        "the cause is printed more than once: {err}"
    );
    assert!(!err.contains(secret), "{err}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(result["status"], "FAILED", "{result}");
    assert_eq!(result["exit_code"], "FAILED", "{result}");
    assert_eq!(result["parameters"]["date"], "2026-11-20", "{result}");
    assert_eq!(
        Some(result["message"].as_str().unwrap()),
        errors[0].strip_prefix("error: ")
    );
    assert!(!result.to_string().contains(secret), "{result}");
}

db_test!(modules = MODULES; async fn redis_set_up_failures_write_a_failed_result_file(db) {
    let redis = PasswordRedis::start("right-secret");
    let dir = tempfile::tempdir()?;
    let args = ["run", "pointBalanceSyncJob", "date=2026-11-20", "--result-file", "r.json"];

    // A wrong password.
    let url = format!("redis://:wrong-secret@127.0.0.1:{}", redis.port);
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret()), ("BATCH__REDIS__URL", url.as_str())];
    let o = launcher(dir.path(), &args, &env);
    assert_failed_setup(dir.path(), &o, &format!("redis://:***@127.0.0.1:{}", redis.port), "authentication failed", "wrong-secret");
    assert!(text(&o).1.contains("refused the login"), "{:?}", text(&o));

    // Nothing listening.
    std::fs::remove_file(dir.path().join("r.json"))?;
    let url = format!("redis://:some-secret@127.0.0.1:{}", free_port());
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret()), ("BATCH__REDIS__URL", url.as_str())];
    let o = launcher(dir.path(), &args, &env);
    assert_failed_setup(dir.path(), &o, "cannot reach Redis", "Connection refused", "some-secret");

    // The right password works: the failures above were the password and the port.
    let url = format!("redis://:right-secret@127.0.0.1:{}", redis.port);
    let env = [("BATCH__DATABASE__URL", db.url().expose_secret()), ("BATCH__REDIS__URL", url.as_str())];
    let o = launcher(dir.path(), &args, &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json"))?)?;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    Ok(())
});

async fn cache(redis: &TestRedis, users: i64) -> HashMap<i64, (String, String)> {
    let mut conn = redis.conn().await;
    let mut pipe = redis::pipe();
    for u in 1..=users {
        pipe.cmd("HMGET")
            .arg(redis.key(&format!("point:balance:{u}")))
            .arg("balance")
            .arg("version");
    }
    let values: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await.unwrap();
    values
        .into_iter()
        .enumerate()
        .filter_map(|(i, (b, v))| Some((i as i64 + 1, (b?, v?))))
        .collect()
}

db_test!(modules = MODULES; async fn sigkill_mid_sync_then_relaunch_leaves_redis_equal_to_the_db(db) {
    let users = 20_000;
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir()?;
    let prefix = redis.key("point:balance:");
    let env = [
        ("BATCH__DATABASE__URL", db.url().expose_secret()),
        ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str()),
        ("BATCH__BATCH__CHUNK_SIZE", "20"),
        ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms"),
        ("BATCH__BATCH__STALE_AFTER", "1s"),
    ];
    let o = launcher(dir.path(), &["seed-demo", "--users", "20000", "--transactions-per-user", "0"], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    cmd.current_dir(dir.path()).args(["run", "pointBalanceSyncJob", "date=2026-11-20"]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BATCH_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd.envs(env).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let repo = JobRepository::new(db.db.clone());
    let start = Instant::now();
    let exec_id = loop {
        assert!(start.elapsed() < Duration::from_secs(60), "the sync did not start");
        if let Some((e, _)) = repo.history(Some("pointBalanceSyncJob"), 1).await?.into_iter().next() {
            let steps = repo.step_executions(e.id).await?;
            if steps.iter().any(|s| s.step_name == "syncPointBalanceStep" && s.counts.commit_count >= 5) {
                break e.id;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    child.kill()?; // SIGKILL
    child.wait()?;
    let partial = cache(&redis, users).await.len();
    assert!(partial > 0 && partial < users as usize, "{partial} keys cached when killed");
    assert_eq!(repo.execution(exec_id).await?.unwrap().status, "STARTED");

    // Meanwhile the online service writes newer versions: one already synced, one not yet.
    let mut r = redis.conn().await;
    for u in [1_i64, 19_999] {
        let _: () = r.hset_multiple(redis.key(&format!("point:balance:{u}")), &[("balance", "-1"), ("version", "999")]).await?;
    }
    // Past the stale threshold, the relaunch takes over and completes.
    loop {
        let e = repo.execution(exec_id).await?.unwrap();
        if chrono::Utc::now().naive_utc() - e.last_updated > chrono::Duration::milliseconds(1300) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "heartbeat never went stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = launcher(dir.path(), &["run", "pointBalanceSyncJob", "date=2026-11-20"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("skipped_newer=") , "{out}");
    let dead = repo.execution(exec_id).await?.unwrap();
    assert_eq!(dead.status, "FAILED");

    // Redis equals the DB for every user, except the newer entries, which were kept.
    let cached = cache(&redis, users).await;
    assert_eq!(cached.len(), users as usize);
    let mut conn = db.conn().await;
    let mut after = 0;
    loop {
        let page = PointBalance::page_after(&mut conn, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for b in page {
            let (bal, ver) = &cached[&b.user_id];
            if b.user_id == 1 || b.user_id == 19_999 {
                assert_eq!((bal.as_str(), ver.as_str()), ("-1", "999"), "user {}", b.user_id);
            } else {
                assert_eq!((bal.clone(), ver.clone()), (b.balance.to_string(), b.version.to_string()), "user {}", b.user_id);
            }
        }
    }
    Ok(())
});
