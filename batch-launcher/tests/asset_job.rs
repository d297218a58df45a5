//! assetRefreshJob through the binary against the fake asset API over real HTTP.

use batch_asset::fake_server::{FakeApiConfig, spawn};
use batch_testkit::db_test;
use core_domain::models::{AssetHistory, User};

use crate::{launcher, text};

db_test!(async fn partial_failure_exits_3_and_the_rerun_fetches_only_the_failed_user(db) {
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
