//! A Redis that loses its data in the middle of a sync (a restart without persistence, here of a
//! throwaway `redis-server` on its own port; the shared one on 6379 is never touched): the sync
//! notices, starts over, and ends with the cache equal to the database.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_common::ExitCode;
use batch_common::config::BatchProperties;
use batch_common::launcher::LaunchOptions;
use batch_common::listener::JobListener;
use batch_testkit::{TestDb, TestRedis, db_test};
use core_domain::models::{NewPointBalance, PointBalance};

use crate::{OnChunk, assert_cache_matches_db, free_port, run_with, step, ts};

/// Users in the database.
const USERS: i64 = 12_000;
/// Balances per chunk: 40 chunks.
const CHUNK: usize = 300;
const DATE: &str = "date=2026-11-20";

/// A `redis-server` without persistence on a free port, in its own directory; killed on drop.
pub struct Throwaway {
    port: u16,
    child: Mutex<Child>,
    dir: tempfile::TempDir,
}

impl Throwaway {
    /// Starts it and waits until it answers.
    pub fn start() -> Throwaway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Mutex::new(spawn(port, dir.path()));
        let r = Throwaway { port, child, dir };
        r.wait_up();
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_up(&self) {
        wait_for(
            || cli(self.port, &["ping"]).contains("PONG"),
            "throwaway redis up",
        );
    }

    /// `SHUTDOWN NOSAVE`, then a new server on the same port: every key is gone.
    pub fn restart(&self) {
        let mut child = self.child.lock().unwrap();
        cli(self.port, &["shutdown", "nosave"]);
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis did not shut down"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        *child = spawn(self.port, self.dir.path());
        drop(child);
        self.wait_up();
    }

    /// Keys in the server.
    pub fn dbsize(&self) -> i64 {
        cli(self.port, &["dbsize"]).trim().parse().unwrap_or(-1)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (install redis-server: scripts/services.sh)")
}

/// `redis-cli -p port args...`'s output.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Polls `ok` every 20 ms for at most 20 s.
pub fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Settings: small chunks, the test's own key prefix, the throwaway server, no step retries.
fn props(keys: &TestRedis, url: &str) -> Arc<BatchProperties> {
    let mut p = (*crate::props(keys, CHUNK)).clone();
    p.redis.url = batch_common::RedactedUrl::parse(url, &["redis"]).unwrap();
    Arc::new(p)
}

async fn seed(db: &TestDb) {
    let mut conn = db.conn().await;
    PointBalance::insert_many(
        &mut conn,
        (1..=USERS)
            .map(|u| NewPointBalance {
                user_id: u,
                balance: u * 7,
                version: 1 + u % 4,
                updated_at: ts("2026-11-20 03:00:00"),
            })
            .collect(),
    )
    .await
    .unwrap();
}

/// Writes a cached entry as the online service would (on a connection of its own: the step's
/// reconnects on its next command).
async fn write_newer(url: &str, key: &str, balance: i64, version: i64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("balance")
        .arg(balance)
        .arg("version")
        .arg(version)
        .query_async(&mut conn)
        .await
        .unwrap();
}

fn counter(s: &batch_common::StepResult, name: &str) -> i64 {
    s.counts.counters.get(name).copied().unwrap_or(0)
}

db_test!(async fn a_restart_mid_sync_is_resynced_and_newer_versions_are_kept(db) {
    seed(db).await;
    let server = Arc::new(Throwaway::start());
    let keys = TestRedis::new().await; // only for a unique key prefix
    let props = props(&keys, &server.url());
    let redis = batch_common::redis::connect(&props.redis).await?;
    let prefix = keys.prefix().to_owned();
    let key = move |u: i64| format!("{prefix}point:balance:{u}");
    // After about a third, Redis restarts empty; the online service then writes newer versions
    // of a user already synced (2) and of one not yet synced (the last).
    let restarted = Arc::new(AtomicBool::new(false));
    let keys_before = Arc::new(Mutex::new(0));
    let listener: Arc<dyn JobListener> = {
        let (server, restarted, key, keys_before) = (server.clone(), restarted.clone(), key.clone(), keys_before.clone());
        Arc::new(OnChunk(Box::new(move |read| {
            let (server, restarted, key, keys_before) = (server.clone(), restarted.clone(), key.clone(), keys_before.clone());
            Box::pin(async move {
                if read >= USERS / 3 && !restarted.swap(true, Ordering::SeqCst) {
                    let s = server.clone();
                    let before = tokio::task::spawn_blocking(move || {
                        let before = s.dbsize();
                        s.restart();
                        before
                    })
                    .await
                    .unwrap();
                    *keys_before.lock().unwrap() = before;
                    write_newer(&server.url(), &key(2), 1, 100).await;
                    write_newer(&server.url(), &key(USERS), 2, 100).await;
                }
            })
        })))
    };
    let result = run_with(db, redis.clone(), props.clone(), &[DATE], Some(listener), &LaunchOptions::default()).await;
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    assert!(restarted.load(Ordering::SeqCst));
    let lost = *keys_before.lock().unwrap();
    assert!(lost >= USERS / 3, "the restart lost only {lost} keys");
    let sync = step(&result, "syncPointBalanceStep");
    assert_eq!(counter(sync, "cache_resets"), 1, "{sync:#?}");
    assert_eq!(counter(sync, "skipped_newer"), 2, "{sync:#?}");
    // The counts say what happened: the keys synced before the restart were created twice.
    let outcomes: i64 = ["created", "corrected", "unchanged", "skipped_newer"].iter().map(|c| counter(sync, c)).sum();
    assert!(outcomes >= USERS + USERS / 3, "{sync:#?}");
    assert!(counter(sync, "created") >= USERS - 2 + USERS / 3 - 2 * CHUNK as i64, "{sync:#?}");
    assert_cache_matches_db(db, &redis, keys.prefix(), &[(2, 1, 100), (USERS, 2, 100)]).await;
    assert_eq!(server.dbsize(), USERS);
    Ok(())
});

db_test!(async fn verify_counts_again_after_a_restart(db) {
    seed(db).await;
    let server = Arc::new(Throwaway::start());
    let keys = TestRedis::new().await;
    let props = props(&keys, &server.url());
    let redis = batch_common::redis::connect(&props.redis).await?;
    // A full sync first: the cache is then complete.
    let first = run_with(db, redis.clone(), props.clone(), &[DATE], None, &LaunchOptions::default()).await;
    assert_eq!(first.exit_code, ExitCode::Completed, "{first:#?}");
    assert_eq!(counter(step(&first, "syncPointBalanceStep"), "cache_resets"), 0);
    assert_eq!(server.dbsize(), USERS);
    let restarted = Arc::new(AtomicBool::new(false));
    let listener: Arc<dyn JobListener> = {
        let (server, restarted) = (server.clone(), restarted.clone());
        Arc::new(OnChunk(Box::new(move |read| {
            let (server, restarted) = (server.clone(), restarted.clone());
            Box::pin(async move {
                if read >= USERS / 3 && !restarted.swap(true, Ordering::SeqCst) {
                    tokio::task::spawn_blocking(move || server.restart()).await.unwrap();
                }
            })
        })))
    };
    let result = run_with(db, redis.clone(), props.clone(), &[DATE, "verify=true"], Some(listener), &LaunchOptions::default()).await;
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    let sync = step(&result, "syncPointBalanceStep");
    // The counts before the restart described a cache that is gone: counted again, every key
    // of the empty cache is missing. Nothing was written.
    assert_eq!(
        (counter(sync, "cache_resets"), counter(sync, "created"), counter(sync, "unchanged"), counter(sync, "corrected")),
        (1, USERS, 0, 0),
        "{sync:#?}"
    );
    assert_eq!(sync.counts.write_count, 0);
    assert_eq!(server.dbsize(), 0);
    Ok(())
});

db_test!(async fn a_checkpoint_of_a_lost_cache_is_not_resumed(db) {
    seed(db).await;
    let server = Arc::new(Throwaway::start());
    let keys = TestRedis::new().await;
    let props = props(&keys, &server.url());
    let redis = batch_common::redis::connect(&props.redis).await?;
    // The first launch stops after about a third (as a killed launcher would leave it).
    let options = LaunchOptions::default();
    let listener: Arc<dyn JobListener> = {
        let cancel = options.cancel.clone();
        Arc::new(OnChunk(Box::new(move |read| {
            if read >= USERS / 3 {
                cancel.cancel();
            }
            Box::pin(async {})
        })))
    };
    let first = run_with(db, redis.clone(), props.clone(), &[DATE], Some(listener), &options).await;
    assert_eq!(first.status, "STOPPED", "{first:#?}");
    let synced = server.dbsize();
    assert!((USERS / 3..USERS).contains(&synced), "{synced}");
    // Between the launches Redis restarts without persistence.
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.restart()).await?;
    let second = run_with(db, redis.clone(), props.clone(), &[DATE], None, &LaunchOptions::default()).await;
    assert_eq!(second.exit_code, ExitCode::Completed, "{second:#?}");
    let sync = step(&second, "syncPointBalanceStep");
    assert_eq!((counter(sync, "cache_resets"), counter(sync, "created"), sync.counts.read_count), (1, USERS, USERS), "{sync:#?}");
    assert_cache_matches_db(db, &redis, keys.prefix(), &[]).await;

    // Without a restart, a stopped run resumes after its checkpoint as before.
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.restart()).await?;
    let options = LaunchOptions::default();
    let listener: Arc<dyn JobListener> = {
        let cancel = options.cancel.clone();
        Arc::new(OnChunk(Box::new(move |read| {
            if read >= USERS / 2 {
                cancel.cancel();
            }
            Box::pin(async {})
        })))
    };
    let args = ["date=2026-11-21"];
    let first = run_with(db, redis.clone(), props.clone(), &args, Some(listener), &options).await;
    assert_eq!(first.status, "STOPPED", "{first:#?}");
    let done = step(&first, "syncPointBalanceStep").counts.read_count;
    let second = run_with(db, redis.clone(), props.clone(), &args, None, &LaunchOptions::default()).await;
    assert_eq!(second.exit_code, ExitCode::Completed, "{second:#?}");
    let sync = step(&second, "syncPointBalanceStep");
    assert_eq!((counter(sync, "cache_resets"), sync.counts.read_count), (0, USERS - done), "{sync:#?}");
    assert_cache_matches_db(db, &redis, keys.prefix(), &[]).await;
    Ok(())
});

db_test!(async fn a_redis_restarting_in_a_loop_fails_the_step(db) {
    seed(db).await;
    let server = Arc::new(Throwaway::start());
    let keys = TestRedis::new().await;
    let props = props(&keys, &server.url());
    let redis = batch_common::redis::connect(&props.redis).await?;
    let restarts = Arc::new(AtomicU32::new(0));
    let listener: Arc<dyn JobListener> = {
        let (server, restarts) = (server.clone(), restarts.clone());
        Arc::new(OnChunk(Box::new(move |_| {
            let (server, restarts) = (server.clone(), restarts.clone());
            Box::pin(async move {
                restarts.fetch_add(1, Ordering::SeqCst);
                tokio::task::spawn_blocking(move || server.restart()).await.unwrap();
            })
        })))
    };
    let result = run_with(db, redis.clone(), props.clone(), &[DATE], Some(listener), &LaunchOptions::default()).await;
    assert_eq!(result.exit_code, ExitCode::Failed, "{result:#?}");
    let sync = step(&result, "syncPointBalanceStep");
    let message = sync.message.clone().unwrap_or_default();
    assert!(message.contains("more than the 3 re-syncs allowed"), "{message}");
    assert!(message.contains("run_id"), "{message}");
    assert_eq!(counter(sync, "cache_resets"), 3, "{sync:#?}");
    assert!(restarts.load(Ordering::SeqCst) >= 4);
    Ok(())
});
