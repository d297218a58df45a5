//! The cache cases, verify mode, TTL and the default date.

use std::collections::HashMap;

use batch_common::ExitCode;
use batch_testkit::{TestRedis, db_test};
use core_domain::models::{NewPointBalance, PointBalance};
use redis::AsyncCommands;

use crate::{props, run_job, seoul, single, step, ts};

fn balance(user_id: i64, balance: i64, version: i64) -> NewPointBalance {
    NewPointBalance {
        user_id,
        balance,
        version,
        updated_at: ts("2026-11-20 03:00:00"),
    }
}

async fn hash(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> HashMap<String, String> {
    conn.hgetall(key).await.unwrap()
}

/// Users 1..=5 in the DB at version 3; the cache holds: 1 missing, 2 older, 3 same version with
/// another balance, 4 newer, 5 equal.
async fn setup(db: &batch_testkit::TestDb, redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    let mut conn = db.conn().await;
    PointBalance::insert_many(&mut conn, (1..=5).map(|u| balance(u, u * 100, 3)).collect())
        .await
        .unwrap();
    let mut r = redis.conn().await;
    for (user, bal, ver) in [(2, 1, 1), (3, 999, 3), (4, 777, 9), (5, 500, 3)] {
        let _: () = r
            .hset_multiple(
                redis.key(&format!("point:balance:{user}")),
                &[("balance", bal.to_string()), ("version", ver.to_string())],
            )
            .await
            .unwrap();
    }
    r
}

db_test!(async fn each_cache_case_ends_as_specified(db) {
    let redis = TestRedis::new().await;
    let props = props(&redis, 2);
    let mut r = setup(db, &redis).await;
    let conn = single(&redis, &props).await;
    let result = run_job(db, conn, props.clone(), seoul("2026-11-21 09:00:00"), &[], false).await;
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    let sync = step(&result, "syncPointBalanceStep");
    let counters: Vec<i64> = ["created", "corrected", "unchanged", "skipped_newer"].iter().map(|c| sync.counts.counters[*c]).collect();
    assert_eq!(counters, vec![1, 2, 1, 1], "{sync:?}");
    assert_eq!((sync.counts.read_count, sync.counts.commit_count), (5, 3));

    for user in [1, 2, 3, 5] {
        let h = hash(&mut r, &redis.key(&format!("point:balance:{user}"))).await;
        assert_eq!(h["balance"], (user * 100).to_string(), "user {user}: {h:?}");
        assert_eq!(h["version"], "3", "user {user}");
    }
    assert_eq!(hash(&mut r, &redis.key("point:balance:1")).await["updatedAt"], "2026-11-20T03:00:00.000000Z");
    // The newer cached entry was kept.
    let kept = hash(&mut r, &redis.key("point:balance:4")).await;
    assert_eq!((kept["balance"].as_str(), kept["version"].as_str()), ("777", "9"));
    // Every key has the configured TTL (48h), refreshed on this sync.
    for user in 1..=5 {
        let ttl: i64 = r.pttl(redis.key(&format!("point:balance:{user}"))).await.unwrap();
        assert!(ttl > 47 * 3600 * 1000 && ttl <= 48 * 3600 * 1000, "user {user}: ttl {ttl}");
    }
    // The result carries the counts too, and the date defaulted to yesterday in Seoul.
    assert_eq!(result.parameters["date"], "2026-11-20");
    assert_eq!(result.parameters["verify"], "false");

    // A second run (a new date, same data) finds everything unchanged but the newer entry.
    let conn = single(&redis, &props).await;
    let again = run_job(db, conn, props.clone(), seoul("2026-11-22 09:00:00"), &[], false).await;
    let sync = step(&again, "syncPointBalanceStep");
    assert_eq!((sync.counts.counters["unchanged"], sync.counts.counters["skipped_newer"], sync.counts.counters["created"]), (4, 1, 0));
    Ok(())
});

db_test!(async fn verify_reports_drift_and_writes_nothing(db) {
    let redis = TestRedis::new().await;
    let props = props(&redis, 10);
    let mut r = setup(db, &redis).await;
    let mut before = Vec::new();
    for user in 1..=5 {
        before.push(hash(&mut r, &redis.key(&format!("point:balance:{user}"))).await);
    }
    let conn = single(&redis, &props).await;
    let result = run_job(db, conn, props.clone(), seoul("2026-11-21 09:00:00"), &["verify=true"], false).await;
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    let sync = step(&result, "syncPointBalanceStep");
    assert_eq!(
        (sync.counts.counters["created"], sync.counts.counters["corrected"], sync.counts.counters["unchanged"], sync.counts.counters["skipped_newer"]),
        (1, 2, 1, 1)
    );
    assert_eq!(sync.counts.write_count, 0);
    assert!(result.steps.iter().all(|s| s.name != "generateDailyReportStep"), "verify writes no report");
    for user in 1..=5 {
        assert_eq!(hash(&mut r, &redis.key(&format!("point:balance:{user}"))).await, before[user as usize - 1]);
        let ttl: i64 = r.pttl(redis.key(&format!("point:balance:{user}"))).await.unwrap();
        assert!(ttl < 0, "verify set a TTL on user {user}");
    }
    let mut conn = db.conn().await;
    assert!(core_domain::models::DailyPointReport::for_date(&mut conn, "2026-11-20".parse()?).await?.is_empty());
    Ok(())
});

#[tokio::test]
async fn default_date_comes_from_the_injected_clock() {
    use batch_common::MockClock;
    use batch_common::job::Job;
    use chrono::TimeZone;

    let redis = TestRedis::new().await;
    let props = props(&redis, 10);
    let mut clock = MockClock::new();
    // 2026-11-20 15:00:00 UTC is 2026-11-21 00:00:00 in Seoul: "yesterday" is the 20th there.
    clock.expect_now().return_const(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 20, 15, 0, 0)
            .unwrap(),
    );
    let db = batch_testkit::TestDb::new(core_domain::Backend::Sqlite).await;
    let clock = std::sync::Arc::new(clock);
    let tz = props.batch.timezone;
    let job =
        batch_point::PointBalanceSyncJob::new(db.db.clone(), single(&redis, &props).await, props);
    // The runtime resolves a run's parameters from the job's descriptor and the injected clock.
    let resolve = |given| {
        batch_common::params::JobParameters::resolve(
            job.descriptor(),
            given,
            &batch_common::params::ParamContext::new(clock.as_ref(), tz),
        )
    };
    let p = resolve(Default::default()).unwrap();
    assert_eq!(p.to_strings()["date"], "2026-11-20");
    let given = batch_common::params::parse_pairs(&["date=2026-01-02", "verify=yes"]).unwrap();
    let p = resolve(given).unwrap();
    assert_eq!(
        (
            p.date("date").unwrap().to_string(),
            p.bool("verify").unwrap()
        ),
        ("2026-01-02".to_owned(), true)
    );
    let bad = batch_common::params::parse_pairs(&["date=2026-1-32"]).unwrap();
    assert!(resolve(bad).unwrap_err().message.contains("2026-1-32"));
}
