//! generateDailyReportStep: day edges in Asia/Seoul, sums, the last snapshot (ties by id),
//! idempotent re-runs and stale rows.

use batch_common::ExitCode;
use batch_testkit::{TestRedis, db_test};
use core_domain::models::{DailyPointReport, NewPoint, Point, PointType};

use crate::{props, run_job, seoul, single, step, ts};

fn tx(user_id: i64, kind: PointType, amount: i64, snapshot: i64, utc: &str) -> NewPoint {
    NewPoint {
        user_id,
        amount,
        point_type: kind.as_str().to_owned(),
        description: None,
        balance_snapshot: snapshot,
        point_balance_id: user_id,
        created_at: ts(utc),
    }
}

db_test!(async fn report_respects_day_edges_and_is_idempotent(db) {
    let redis = TestRedis::new().await;
    let props = props(&redis, 100);
    let mut conn = db.conn().await;
    Point::insert_many(&mut conn, vec![
        // user 1 on 2026-11-20 KST; the last one at 23:59:59 KST belongs to that day
        tx(1, PointType::Earn, 100, 100, "2026-11-20 01:00:00"),
        tx(1, PointType::Use, 30, 70, "2026-11-20 03:00:00"),
        tx(1, PointType::Cancel, 10, 80, "2026-11-20 14:59:59"),
        // user 2: two transactions at the same instant; the higher id is the last one
        tx(2, PointType::Earn, 5, 5, "2026-11-20 05:00:00.5"),
        tx(2, PointType::Earn, 7, 12, "2026-11-20 05:00:00.5"),
        // user 3: 00:00:00 KST on the 21st belongs to the next day
        tx(3, PointType::Earn, 1, 1, "2026-11-20 15:00:00"),
        // user 4: the day before
        tx(4, PointType::Earn, 1, 1, "2026-11-19 14:59:59.999999"),
    ]).await?;
    drop(conn);

    let clock = seoul("2026-11-21 01:00:00");
    let first = run_job(db, single(&redis, &props).await, props.clone(), clock.clone(), &["date=2026-11-20"], false).await;
    assert_eq!(first.exit_code, ExitCode::Completed, "{first:#?}");
    let report = step(&first, "generateDailyReportStep");
    assert_eq!((report.read_count, report.write_count), (5, 2), "{report:?}");

    let mut conn = db.conn().await;
    let rows = DailyPointReport::for_date(&mut conn, "2026-11-20".parse()?).await?;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.user_id, r.earn_amount, r.use_amount, r.cancel_amount, r.balance_snapshot, r.earn_count, r.use_count, r.cancel_count))
        .collect();
    assert_eq!(summary, vec![(1, 100, 30, 10, 80, 1, 1, 1), (2, 12, 0, 0, 12, 2, 0, 0)]);
    assert_eq!(rows[0].first_transaction_at, ts("2026-11-20 01:00:00"));
    assert_eq!(rows[0].last_transaction_at, ts("2026-11-20 14:59:59"));

    // The next day holds only user 3.
    let next = run_job(db, single(&redis, &props).await, props.clone(), clock.clone(), &["date=2026-11-21"], false).await;
    assert_eq!(next.exit_code, ExitCode::Completed);
    let next_rows = DailyPointReport::for_date(&mut conn, "2026-11-21".parse()?).await?;
    assert_eq!(next_rows.iter().map(|r| r.user_id).collect::<Vec<_>>(), vec![3]);

    // The same date again, an hour later: exactly the same rows (ids, created_at and updated_at too).
    clock.advance(chrono::Duration::hours(1));
    let again = run_job(db, single(&redis, &props).await, props.clone(), clock.clone(), &["date=2026-11-20"], true).await;
    assert_eq!(again.exit_code, ExitCode::Completed);
    assert_eq!(DailyPointReport::for_date(&mut conn, "2026-11-20".parse()?).await?, rows);

    // A transaction that changes a user's day updates that row only; a user whose transactions
    // are gone loses the row.
    Point::insert_many(&mut conn, vec![tx(1, PointType::Use, 5, 75, "2026-11-20 14:00:00")]).await?;
    {
        use core_domain::schema::point;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let c: &mut core_domain::DbConnection = &mut conn;
        core_domain::dispatch!(c, c => diesel::delete(point::table.filter(point::user_id.eq(2))).execute(c).await)?;
    }
    clock.advance(chrono::Duration::hours(1));
    let changed = run_job(db, single(&redis, &props).await, props.clone(), clock.clone(), &["date=2026-11-20"], true).await;
    assert_eq!(step(&changed, "generateDailyReportStep").counters["deleted_rows"], 1);
    let after = DailyPointReport::for_date(&mut conn, "2026-11-20".parse()?).await?;
    assert_eq!(after.len(), 1);
    let r1 = &after[0];
    assert_eq!((r1.id, r1.use_amount, r1.use_count, r1.balance_snapshot), (rows[0].id, 35, 2, 80));
    assert_eq!(r1.created_at, rows[0].created_at);
    assert!(r1.updated_at > rows[0].updated_at);
    Ok(())
});
