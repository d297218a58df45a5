//! The example domain on the runtime, on SQLite, PostgreSQL and MySQL: its schema passes the
//! schema check, a month's run writes one statement per active user, a re-run replaces them,
//! `mode=new-only` filters, and the month defaults to last month from the injected clock.

use std::sync::Arc;

use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::module::JobModule;
use batch_common::repository::{BASE_MIGRATIONS, JobRepository};
use batch_common::{ExitCode, FixedClock};
use batch_example::models::MemberStatement;
use batch_example::{ExampleSettings, MIGRATIONS, MODULE, MonthlyStatementJob};
use batch_testkit::db_test;
use chrono::{NaiveDate, TimeZone, Utc};
use core_domain::models::{NewUser, User};

fn at(y: i32, m: u32, d: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(y, m, d)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

async fn launch(
    db: &batch_testkit::TestDb,
    pairs: &[&str],
    rerun: bool,
) -> anyhow::Result<batch_common::BatchResult> {
    let props = BatchProperties::load_from(None, Vec::new(), &[&MODULE])?;
    // 2026-12-03 in Seoul: last month is 2026-11.
    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2026, 12, 3, 1, 0, 0).unwrap(),
    ));
    let mut settings = props.batch.clone();
    settings.chunk_size = std::num::NonZeroUsize::new(3).unwrap();
    let launcher = JobLauncher::new(JobRepository::new(db.db.clone()), clock.clone(), settings);
    let job = MonthlyStatementJob::new(
        db.db.clone(),
        clock,
        props.section::<ExampleSettings>()?.clone(),
    );
    let given = batch_common::params::parse_pairs(pairs)?;
    let options = LaunchOptions {
        rerun,
        ..LaunchOptions::default()
    };
    Ok(launcher.launch(&job, given, &options).await?)
}

db_test!(modules = &[&MODULE]; async fn a_month_gives_one_statement_per_active_user(db) {
    let users: Vec<NewUser> = (1..=8)
        .map(|id| NewUser {
            id,
            name: format!("member {id}"),
            status: if id == 4 { "INACTIVE" } else { "ACTIVE" }.to_owned(),
            // Users 7 and 8 joined in the last days of November: NEW at its end.
            created_at: if id >= 7 { at(2026, 11, 20) } else { at(2025, 1, 1) },
            updated_at: at(2026, 11, 20),
        })
        .collect();
    User::insert_many(&mut *db.conn().await, users).await?;

    // No month given: last month, from the clock.
    let first = launch(db, &[], false).await?;
    assert_eq!(first.exit_code, ExitCode::Completed, "{first}");
    assert_eq!(first.parameters["month"], "2026-11");
    let rows = MemberStatement::of_period(&mut *db.conn().await, "2026-11").await?;
    let got: Vec<(i64, &str, i64)> = rows.iter().map(|r| (r.user_id, r.tier.as_str(), r.fee)).collect();
    assert_eq!(
        got,
        [
            (1, "REGULAR", 1000),
            (2, "REGULAR", 1000),
            (3, "REGULAR", 1000),
            (5, "REGULAR", 1000),
            (6, "REGULAR", 1000),
            (7, "NEW", 1000),
            (8, "NEW", 1000)
        ]
    );
    assert_eq!(first.steps[0].counts.write_count, 7);
    assert_eq!(first.steps[0].counts.commit_count, 3, "chunks of 3");

    // The same instance again: nothing to do. With --rerun: the same rows, not more.
    let noop = launch(db, &["month=2026-11"], false).await?;
    assert_eq!(noop.status.to_string(), "NOOP");
    let again = launch(db, &["month=2026-11"], true).await?;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again}");
    assert_eq!(MemberStatement::count(&mut *db.conn().await).await?, 7);

    // Another month, NEW members only: in October users 7 and 8 did not exist yet as NEW
    // (their age is negative, so NEW), the others are REGULAR and filtered.
    let october = launch(db, &["month=2026-10", "mode=new-only"], false).await?;
    assert_eq!(october.steps[0].counts.filter_count, 5, "{october}");
    assert_eq!(MemberStatement::of_period(&mut *db.conn().await, "2026-10").await?.len(), 2);

    // A bad month is refused before anything runs.
    let err = launch(db, &["month=2026-13"], false).await.unwrap_err();
    assert!(err.to_string().contains("2026-13"), "{err}");
    Ok(())
});

/// The module's set passes the schema check every owner gets, after the base sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_schema_matches_its_migrations_on_every_backend() {
    let mut sets = BASE_MIGRATIONS.to_vec();
    sets.push(&MIGRATIONS);
    assert_eq!(MODULE.migrations().map(|m| m.name), Some("example"));
    let (columns, _) = batch_testkit::schema::check_migration_sets(&sets).await;
    assert!(columns.contains_key("member_statement"), "{columns:?}");
}
