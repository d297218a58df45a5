//! assetRefreshJob through the binary against the fake asset API over real HTTP: partial
//! failures, and a launcher killed with SIGKILL mid-run re-fetching only the users in flight.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batch_asset::fake_server::{FakeApiConfig, spawn};
use batch_common::repository::JobRepository;
use batch_launcher::modules::MODULES;
use batch_testkit::db_test;
use core_domain::models::{AssetHistory, User};

use crate::{launcher, text};

db_test!(modules = MODULES; async fn partial_failure_exits_3_and_the_rerun_fetches_only_the_failed_user(db) {
    let (addr, fake, _server) = spawn(FakeApiConfig {
        fail_users: [(2, 500)].into_iter().collect(),
        ..FakeApiConfig::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let base = format!("http://{addr}");
    let env = [
        ("BATCH__DATABASE__URL", db.url().expose_secret()),
        ("BATCH__ASSET__API_BASE_URL", base.as_str()),
        ("BATCH__ASSET__RETRY_BACKOFF", "10ms"),
        ("BATCH__BATCH__CHUNK_SIZE", "7"),
    ];
    let o = launcher(dir.path(), &["seed-demo", "--users", "30", "--transactions-per-user", "0"], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let o = launcher(dir.path(), &["run", "assetRefreshJob", "date=2026-11-21", "--result-file", "r.json"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.contains("item failures: 1"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json"))?)?;
    assert_eq!(json["exit_code"], "COMPLETED_WITH_FAILURES");
    let calls = fake.calls();
    assert_eq!(calls.get(&2), Some(&3), "user 2 tried max_attempts times");
    for inactive in [10, 20, 30] {
        assert!(!calls.contains_key(&inactive), "inactive user {inactive} was called");
    }
    assert_eq!(calls.len(), 27);
    let mut conn = db.conn().await;
    let day = "2026-11-21".parse()?;
    assert_eq!(AssetHistory::count_for_day(&mut conn, day).await?, 26);

    // The provider recovers; the same date again calls user 2 only.
    fake.set_config(FakeApiConfig::default());
    let o = launcher(dir.path(), &["run", "assetRefreshJob", "date=2026-11-21"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let calls = fake.calls();
    assert_eq!(calls.get(&2), Some(&4));
    assert!(calls.iter().filter(|(u, _)| **u != 2).all(|(_, n)| *n == 1), "{calls:?}");
    assert_eq!(AssetHistory::count_for_day(&mut conn, day).await?, 27);
    let h = AssetHistory::find(&mut conn, 2, day).await?.unwrap();
    assert_eq!(User::find(&mut conn, 2).await?.unwrap().current_asset_history_id, Some(h.id));

    let o = launcher(dir.path(), &["history", "assetRefreshJob"], &env);
    let (out, _) = text(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].contains("COMPLETED") && !lines[1].contains("WITH_FAILURES"), "{out}");
    assert!(lines[2].contains("COMPLETED_WITH_FAILURES"), "{out}");
    Ok(())
});

#[test]
fn fake_asset_api_rejects_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(
        dir.path(),
        &["fake-asset-api", "--fail-users", "3=200"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("`200`"), "{:?}", text(&o));
    let o = launcher(dir.path(), &["fake-asset-api", "--error-rate", "2"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("`2`"), "{:?}", text(&o));
}

db_test!(modules = MODULES; async fn sigkill_mid_run_then_relaunch_refetches_at_most_twice_the_concurrency(db) {
    const CONCURRENCY: usize = 16;
    let (addr, fake, _server) = spawn(FakeApiConfig {
        latency: Duration::from_millis(20),
        ..FakeApiConfig::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let base = format!("http://{addr}");
    let concurrency = CONCURRENCY.to_string();
    let env = [
        ("BATCH__DATABASE__URL", db.url().expose_secret()),
        ("BATCH__ASSET__API_BASE_URL", base.as_str()),
        ("BATCH__ASSET__CONCURRENCY", concurrency.as_str()),
        ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms"),
        ("BATCH__BATCH__STALE_AFTER", "1s"),
    ];
    // 3,000 users, every tenth inactive.
    let o = launcher(dir.path(), &["seed-demo", "--users", "3000", "--transactions-per-user", "0"], &env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let mut conn = db.conn().await;
    let active = User::count_active(&mut conn).await?;
    assert_eq!(active, 2700);
    let day = "2026-11-21".parse()?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    cmd.current_dir(dir.path()).args(["run", "assetRefreshJob", "date=2026-11-21"]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BATCH_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd.envs(env).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "the refresh did not get going");
        if AssetHistory::count_for_day(&mut conn, day).await? >= 600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill()?; // SIGKILL, with fetches in flight
    child.wait()?;
    let stored = AssetHistory::count_for_day(&mut conn, day).await?;
    assert!(stored < active, "killed after the end ({stored} snapshots)");
    let repo = JobRepository::new(db.db.clone());
    let (dead, _) = repo.history(Some("assetRefreshJob"), 1).await?.into_iter().next().expect("the killed execution");
    assert_eq!(dead.status, "STARTED");

    // Past the stale threshold, the relaunch takes over and completes.
    loop {
        let e = repo.execution(dead.id).await?.unwrap();
        if chrono::Utc::now().naive_utc() - e.last_updated > chrono::Duration::milliseconds(1300) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "heartbeat never went stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = launcher(dir.path(), &["run", "assetRefreshJob", "date=2026-11-21", "--result-file", "r.json"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert_eq!(repo.execution(dead.id).await?.unwrap().status, "FAILED");

    let calls = fake.calls();
    assert_eq!(calls.len() as i64, active, "every active user fetched, no inactive one");
    let refetched = calls.values().filter(|n| **n > 1).count();
    assert!(calls.values().all(|n| *n <= 2), "a user fetched more than twice");
    assert!(
        refetched <= CONCURRENCY * 2,
        "{refetched} users fetched twice (bound: concurrency {CONCURRENCY} x 2)"
    );
    // Every active user has exactly one snapshot, and points at it.
    assert_eq!(AssetHistory::count_for_day(&mut conn, day).await?, active);
    for id in [1_i64, 1_501, 2_999] {
        let h = AssetHistory::find(&mut conn, id, day).await?.expect("a snapshot");
        assert_eq!(User::find(&mut conn, id).await?.unwrap().current_asset_history_id, Some(h.id));
    }
    // The resumed step read only what the killed one had not committed (and what was in flight).
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json"))?)?;
    let read = json["steps"][0]["read_count"].as_i64().unwrap_or(-1);
    assert!(
        read <= active - stored + (CONCURRENCY * 2) as i64 && read >= active - stored,
        "resumed run read {read} users; {stored} of {active} were stored when killed"
    );
    Ok(())
});
