//! The job with a mocked `AssetProvider`: partial failures, retry of only the failed users,
//! same-day re-runs, the snapshot day at the day's edges, inactive users never called.

use std::collections::BTreeMap;
use std::sync::Arc;

use batch_asset::provider::{AssetSnapshot, FetchError, FetchErrorKind};
use batch_asset::{AssetProvider, AssetRefreshJob};
use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::repository::JobRepository;
use batch_common::{BatchResult, ExitCode, FixedClock};
use batch_testkit::{TestDb, db_test};
use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Asia::Seoul;
use core_domain::models::{AssetHistory, NewUser, User};
use mockall::predicate::eq;

mockall::mock! {
    /// The external asset API, mocked.
    pub AssetProvider {}
    #[async_trait::async_trait]
    impl AssetProvider for AssetProvider {
        async fn fetch(&self, user_id: i64) -> Result<AssetSnapshot, FetchError>;
    }
}

fn seoul(local: &str) -> Arc<FixedClock> {
    let t = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
    Arc::new(FixedClock::at_local(Seoul, t))
}

fn snap(user_id: i64, revision: i64) -> AssetSnapshot {
    AssetSnapshot {
        user_id,
        total_amount: user_id * 10 + revision * 2,
        cash_amount: user_id * 4 + revision,
        investment_amount: user_id * 6 + revision,
        currency: "KRW".into(),
        as_of: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
    }
}

/// Users 1..=6; 3 and 6 are inactive.
async fn seed_users(db: &TestDb) {
    let mut conn = db.conn().await;
    let t = NaiveDateTime::parse_from_str("2026-01-01 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
    let users = (1..=6)
        .map(|id| NewUser {
            id,
            name: format!("u{id}"),
            status: if id % 3 == 0 { "INACTIVE" } else { "ACTIVE" }.into(),
            created_at: t,
            updated_at: t,
        })
        .collect();
    User::insert_many(&mut conn, users).await.unwrap();
}

/// A mock answering `ok` users with `revision` figures and failing `fail` users; any other call
/// (an inactive user, or a user not expected in this run) fails the test.
fn provider(ok: &[i64], fail: &[i64], revision: i64) -> Arc<dyn AssetProvider> {
    let mut mock = MockAssetProvider::new();
    for &id in ok {
        mock.expect_fetch()
            .with(eq(id))
            .times(1)
            .returning(move |id| Ok(snap(id, revision)));
    }
    for &id in fail {
        mock.expect_fetch().with(eq(id)).times(1).returning(|_| {
            Err(FetchError {
                kind: FetchErrorKind::Unavailable,
                attempts: 3,
                message: "503 Service Unavailable".into(),
            })
        });
    }
    Arc::new(mock)
}

async fn run(
    db: &TestDb,
    provider: Arc<dyn AssetProvider>,
    clock: Arc<FixedClock>,
    args: &[&str],
    rerun: bool,
) -> BatchResult {
    let mut props = BatchProperties::load_from(None, Vec::new(), &[&batch_asset::MODULE]).unwrap();
    props.batch.chunk_size = std::num::NonZeroUsize::new(2).unwrap();
    props.batch.step_retry_attempts = 0;
    let job = AssetRefreshJob::new(db.db.clone(), provider, clock.clone(), 4);
    let launcher = JobLauncher::new(JobRepository::new(db.db.clone()), clock, props.batch);
    let given: BTreeMap<String, String> = batch_common::params::parse_pairs(args).unwrap();
    launcher
        .launch(
            &job,
            given,
            &LaunchOptions {
                rerun,
                ..Default::default()
            },
        )
        .await
        .expect("launch")
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

db_test!(async fn one_failing_user_does_not_stop_the_others_and_is_retried_alone(db) {
    seed_users(db).await;
    let clock = seoul("2026-11-21 04:00:00");
    let first = run(db, provider(&[1, 4, 5], &[2], 0), clock.clone(), &[], false).await;
    assert_eq!(first.exit_code, ExitCode::CompletedWithFailures, "{first:#?}");
    assert_eq!(first.item_failures, 1);
    assert_eq!(first.parameters["date"], "2026-11-21", "today in Seoul");
    let mut conn = db.conn().await;
    for id in [1, 4, 5] {
        let h = AssetHistory::find(&mut conn, id, day("2026-11-21")).await?.expect("snapshot");
        assert_eq!(h.total_amount, id * 10);
        assert_eq!(User::find(&mut conn, id).await?.unwrap().current_asset_history_id, Some(h.id));
    }
    assert!(AssetHistory::find(&mut conn, 2, day("2026-11-21")).await?.is_none());
    assert_eq!(User::find(&mut conn, 2).await?.unwrap().current_asset_history_id, None);
    for id in [3, 6] {
        assert!(AssetHistory::find(&mut conn, id, day("2026-11-21")).await?.is_none(), "inactive user {id}");
    }
    let repo = JobRepository::new(db.db.clone());
    let failures = repo.failures_of_execution(first.execution_id.unwrap()).await?;
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].item_key.as_str(), failures[0].attempts), ("2", 3));
    assert!(failures[0].error.contains("503"), "{:?}", failures[0]);

    // The same date again: only user 2 is called (the mock fails on any other call).
    let second = run(db, provider(&[2], &[], 0), clock.clone(), &[], false).await;
    assert_eq!(second.exit_code, ExitCode::Completed, "{second:#?}");
    let h2 = AssetHistory::find(&mut conn, 2, day("2026-11-21")).await?.expect("user 2 now has a snapshot");
    assert_eq!(User::find(&mut conn, 2).await?.unwrap().current_asset_history_id, Some(h2.id));
    assert!(repo.unresolved_failures(first.job_instance_id.unwrap(), "refreshAssetStep").await?.is_empty());
    // And now the day is complete.
    let third = run(db, provider(&[], &[], 0), clock.clone(), &[], false).await;
    assert_eq!(third.status, "NOOP");
    Ok(())
});

db_test!(async fn same_day_rerun_updates_the_one_row(db) {
    seed_users(db).await;
    let clock = seoul("2026-11-21 04:00:00");
    let first = run(db, provider(&[1, 2, 4, 5], &[], 0), clock.clone(), &["date=2026-11-21"], false).await;
    assert_eq!(first.exit_code, ExitCode::Completed, "{first:#?}");
    let mut conn = db.conn().await;
    let before = AssetHistory::find(&mut conn, 4, day("2026-11-21")).await?.unwrap();

    clock.advance(chrono::Duration::hours(2));
    let again = run(db, provider(&[1, 2, 4, 5], &[], 7), clock.clone(), &["date=2026-11-21"], true).await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    let after = AssetHistory::find(&mut conn, 4, day("2026-11-21")).await?.unwrap();
    assert_eq!(after.id, before.id, "updated in place");
    assert_eq!(after.total_amount, 40 + 14);
    assert_eq!(after.created_at, before.created_at);
    assert!(after.updated_at > before.updated_at);
    assert_eq!(AssetHistory::count_for_day(&mut conn, day("2026-11-21")).await?, 4);
    assert_eq!(User::find(&mut conn, 4).await?.unwrap().current_asset_history_id, Some(after.id));
    Ok(())
});

db_test!(async fn snapshot_day_follows_the_clock_at_the_edges_of_the_day(db) {
    seed_users(db).await;
    let late = run(db, provider(&[1, 2, 4, 5], &[], 0), seoul("2026-11-20 23:59:59"), &[], false).await;
    assert_eq!(late.parameters["date"], "2026-11-20");
    let early = run(db, provider(&[1, 2, 4, 5], &[], 1), seoul("2026-11-21 00:00:01"), &[], false).await;
    assert_eq!(early.parameters["date"], "2026-11-21");
    let mut conn = db.conn().await;
    assert_eq!(AssetHistory::count_for_day(&mut conn, day("2026-11-20")).await?, 4);
    assert_eq!(AssetHistory::count_for_day(&mut conn, day("2026-11-21")).await?, 4);
    // The current reference follows the newest day.
    let h = AssetHistory::find(&mut conn, 1, day("2026-11-21")).await?.unwrap();
    assert_eq!(User::find(&mut conn, 1).await?.unwrap().current_asset_history_id, Some(h.id));
    Ok(())
});
