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
    assert_eq!((report.counts.read_count, report.counts.write_count), (5, 2), "{report:?}");

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
    assert_eq!(step(&changed, "generateDailyReportStep").counts.counters["deleted_rows"], 1);
    let after = DailyPointReport::for_date(&mut conn, "2026-11-20".parse()?).await?;
    assert_eq!(after.len(), 1);
    let r1 = &after[0];
    assert_eq!((r1.id, r1.use_amount, r1.use_count, r1.balance_snapshot), (rows[0].id, 35, 2, 80));
    assert_eq!(r1.created_at, rows[0].created_at);
    assert!(r1.updated_at > rows[0].updated_at);
    Ok(())
});

/// What the report row of `user` must hold, computed in Rust from the day's transactions:
/// (earn, use, cancel amounts, closing snapshot, counts, first and last time).
type Expected = (
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    chrono::NaiveDateTime,
    chrono::NaiveDateTime,
);

fn reference(
    points: &[Point],
    from: chrono::NaiveDateTime,
    to: chrono::NaiveDateTime,
) -> std::collections::BTreeMap<i64, Expected> {
    let mut day: Vec<&Point> = points
        .iter()
        .filter(|p| p.created_at >= from && p.created_at < to)
        .collect();
    // The last transaction of a user is the greatest (created_at, id).
    day.sort_by_key(|p| (p.user_id, p.created_at, p.id));
    let mut out = std::collections::BTreeMap::new();
    for p in day {
        let e = out
            .entry(p.user_id)
            .or_insert((0, 0, 0, 0, 0, 0, 0, p.created_at, p.created_at));
        match p.point_type.as_str() {
            "EARN" => {
                e.0 += p.amount;
                e.4 += 1;
            }
            "USE" => {
                e.1 += p.amount;
                e.5 += 1;
            }
            _ => {
                e.2 += p.amount;
                e.6 += 1;
            }
        }
        e.3 = p.balance_snapshot;
        e.8 = p.created_at;
    }
    out
}

// Closing balances with ids out of time order, identical instants, every fractional-second
// format and negative snapshots; on SQLite both ways of reading the day (the whole table when the
// day is most of it, the created_at range when it is not) give the same rows, and so does every
// plan (the closing balance in the aggregate's pass or probed per user), first run and re-run.
db_test!(async fn report_matches_a_reference_on_every_plan(db) {
    use batch_point::daily_report::DailyReport;
    use batch_point::report_plan::{Plan, SqliteScan, sqlite_scan};
    use core_domain::schema::point;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;

    let date: chrono::NaiveDate = "2026-11-20".parse()?;
    let (from, to) = batch_common::day_window_utc(date, chrono_tz::Asia::Seoul);
    let kinds = [PointType::Earn, PointType::Earn, PointType::Use, PointType::Cancel];
    let mut rows = Vec::new();
    // Inserted in a scrambled order, so ids are not in time order.
    for g in 0..240i64 {
        let k = (g * 97) % 240;
        let user = 1 + k % 12;
        // Instants collide (k / 3), with 0, 3 or 6 fractional digits.
        let micros = match k % 3 {
            0 => 0,
            1 => 500_000,
            _ => 123_457,
        };
        let at = from + chrono::Duration::seconds((k / 3) * 1_000) + chrono::Duration::microseconds(micros);
        let snapshot = if k % 5 == 0 { -k } else { k * 10 + g };
        rows.push(tx(user, kinds[(k % 4) as usize], 1 + k, snapshot, &at.format("%Y-%m-%d %H:%M:%S%.f").to_string()));
        // The same instant again for some, with another snapshot: the higher id wins.
        if k % 7 == 0 {
            rows.push(tx(user, PointType::Use, 2, snapshot + 1, &at.format("%Y-%m-%d %H:%M:%S%.f").to_string()));
        }
    }
    // The edges: the last microsecond of the day counts, the next day's first does not.
    rows.push(tx(3, PointType::Earn, 9, 999, &(to - chrono::Duration::microseconds(1)).format("%Y-%m-%d %H:%M:%S%.f").to_string()));
    rows.push(tx(3, PointType::Earn, 9, 111, &to.format("%Y-%m-%d %H:%M:%S%.f").to_string()));
    let mut conn = db.conn().await;
    Point::insert_many(&mut conn, rows).await?;

    let report = DailyReport::new(db.db.clone(), date, chrono_tz::Asia::Seoul);
    let check = |points: Vec<Point>, got: Vec<DailyPointReport>| {
        let want = reference(&points, from, to);
        let got: std::collections::BTreeMap<i64, Expected> = got
            .iter()
            .map(|r| (r.user_id, (r.earn_amount, r.use_amount, r.cancel_amount, r.balance_snapshot, r.earn_count, r.use_count, r.cancel_count, r.first_transaction_at, r.last_transaction_at)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[&3].3, 999, "the last microsecond of the day closes user 3's day");
    };
    let c: &mut core_domain::DbConnection = &mut conn;
    let scan = sqlite_scan(c, from, to).await?;
    if db.db.backend() == core_domain::Backend::Sqlite {
        assert_eq!(scan, SqliteScan::FullTable, "the day is all of the table");
    }
    let (report_rows, transactions, _) = report.generate(ts("2026-11-21 01:00:00")).await?;
    let points: Vec<Point> = core_domain::dispatch!(c, c => point::table.select(Point::as_select()).load(c).await)?;
    assert_eq!(report_rows, 12);
    assert_eq!(transactions as usize, points.iter().filter(|p| p.created_at >= from && p.created_at < to).count());
    let first = DailyPointReport::for_date(c, date).await?;
    check(points, first.clone());

    // Much more history on other days: SQLite now reads the day's range, with the same result.
    let mut history = Vec::new();
    for g in 0..1_000i64 {
        let at = from - chrono::Duration::days(1 + g % 30) + chrono::Duration::seconds(g);
        history.push(tx(1 + g % 12, PointType::Earn, 1, g, &at.format("%Y-%m-%d %H:%M:%S%.f").to_string()));
    }
    Point::insert_many(c, history).await?;
    let scan = sqlite_scan(c, from, to).await?;
    if db.db.backend() == core_domain::Backend::Sqlite {
        assert_eq!(scan, SqliteScan::CreatedAtRange, "the day is a small part of the table");
    }
    // A re-run (an upsert, its totals counted from the date's rows) reports the same totals.
    assert_eq!(report.generate(ts("2026-11-21 02:00:00")).await?, (report_rows, transactions, 0));
    // Nothing changed: the very same rows, updated_at included.
    assert_eq!(DailyPointReport::for_date(c, date).await?, first);

    // Every plan, forced: a first run on an empty date, then a re-run that changes nothing.
    let points: Vec<Point> = core_domain::dispatch!(c, c => point::table.select(Point::as_select()).load(c).await)?;
    let plans = Plan::all(db.db.backend());
    assert!(plans.len() >= 2, "{plans:?}");
    for plan in plans {
        core_domain::dispatch!(c, c => diesel::sql_query("DELETE FROM daily_point_report").execute(c).await)?;
        let forced = DailyReport::new(db.db.clone(), date, chrono_tz::Asia::Seoul).with_plan(plan);
        assert_eq!(forced.generate(ts("2026-11-21 03:00:00")).await?, (report_rows, transactions, 0), "{plan:?}");
        let rows = DailyPointReport::for_date(c, date).await?;
        check(points.clone(), rows.clone());
        assert_eq!(forced.generate(ts("2026-11-21 04:00:00")).await?, (report_rows, transactions, 0), "{plan:?}");
        assert_eq!(DailyPointReport::for_date(c, date).await?, rows, "a re-run with {plan:?} changed rows");

        // Partitioned by user (4 ranges, each its own transaction): the same rows, first run
        // and re-run; a re-run of one partition touches its users only.
        core_domain::dispatch!(c, c => diesel::sql_query("DELETE FROM daily_point_report").execute(c).await)?;
        let ranges = batch_common::step::KeyRange::split(1, 12, 4);
        assert_eq!(ranges.len(), 4);
        for at in ["2026-11-21 05:00:00", "2026-11-21 06:00:00"] {
            let mut sums = (0, 0);
            for range in &ranges {
                let part = DailyReport::new(db.db.clone(), date, chrono_tz::Asia::Seoul)
                    .with_plan(plan)
                    .in_range(*range);
                let (r, t, deleted) = part.generate(ts(at)).await?;
                assert_eq!(deleted, 0);
                sums = (sums.0 + r, sums.1 + t);
            }
            assert_eq!(sums, (report_rows, transactions), "partitioned {plan:?} at {at}");
            let parted = DailyPointReport::for_date(c, date).await?;
            check(points.clone(), parted.clone());
            assert!(parted.iter().all(|r| r.updated_at == ts("2026-11-21 05:00:00")), "a re-run changed nothing");
        }
    }
    Ok(())
});

// The plan follows the day's transactions per user on PostgreSQL and SQLite, estimated from a
// sample of the day itself: without statistics (no ANALYZE after the load), whatever other days
// hold, and the same on a first run and a re-run. MariaDB always aggregates the closing balance in
// its pass.
db_test!(async fn report_plan_follows_transactions_per_user(db) {
    use batch_point::daily_report::DailyReport;
    use batch_point::report_plan::{Closing, Plan, transactions_per_user};

    let backend = db.db.backend();
    let mut conn = db.conn().await;
    let c: &mut core_domain::DbConnection = &mut conn;
    let sampled = backend != core_domain::Backend::Mysql;
    let expect = |by_density: Closing| if sampled { by_density } else { Closing::InPass };
    // Three days: (date, transactions, the user of transaction g). A: 10 users with 40 each; B:
    // 2,000 users with one each (users 1-10 among them: A's transactions are not B's); C: 20
    // users with 100 each interleaved with 2,000 users with one each (4,000 / 2,020 = 1.98).
    type Day = (&'static str, i64, fn(i64) -> i64);
    let days: [Day; 3] = [
        ("2026-11-20", 400, |g| 1 + g % 10),
        ("2026-11-21", 2_000, |g| 1 + g),
        ("2026-11-22", 4_000, |g| if g % 2 == 0 { 10_001 + (g / 2) % 20 } else { 20_001 + g / 2 }),
    ];
    for (date, n, user) in days {
        let (from, _) = batch_common::day_window_utc(date.parse()?, chrono_tz::Asia::Seoul);
        let step = 86_400 / n;
        let rows = (0..n)
            .map(|g| {
                let at = from + chrono::Duration::seconds(g * step);
                tx(user(g), PointType::Earn, 1, g, &at.format("%Y-%m-%d %H:%M:%S").to_string())
            })
            .collect();
        Point::insert_many(c, rows).await?;
    }
    let expected = [(40.0, Closing::PerUser), (1.0, Closing::InPass), (1.98, Closing::InPass)];
    for ((date, n, _), (per_user, closing)) in days.into_iter().zip(expected) {
        let day: chrono::NaiveDate = date.parse()?;
        let (from, to) = batch_common::day_window_utc(day, chrono_tz::Asia::Seoul);
        assert_eq!(Plan::choose(c, day, from, to).await?.closing, expect(closing), "{date}");
        let report = DailyReport::new(db.db.clone(), day, chrono_tz::Asia::Seoul);
        assert_eq!(report.generate(ts("2026-11-23 01:00:00")).await?.1, n, "{date}");
        // A re-run reads the same day: the same plan.
        assert_eq!(Plan::choose(c, day, from, to).await?.closing, expect(closing), "{date} re-run");
        if sampled {
            let density = transactions_per_user(c, from, to).await?;
            // Every instant but those after the day's last transaction (at most 3% of the day
            // here) found one.
            assert!(density.picks >= batch_point::report_plan::DENSITY_SAMPLES * 96 / 100, "{date}: {density:?}");
            // Exact when every user has the same count, a sample's estimate when they differ.
            let tolerance = if date == "2026-11-22" { 0.25 } else { 1e-9 };
            assert!((density.per_user - per_user).abs() <= tolerance * per_user, "{date}: {density:?}");
        }
    }
    // A day without transactions.
    let empty: chrono::NaiveDate = "2026-11-25".parse()?;
    let (from, to) = batch_common::day_window_utc(empty, chrono_tz::Asia::Seoul);
    if sampled {
        let density = transactions_per_user(c, from, to).await?;
        assert_eq!((density.per_user, density.picks), (0.0, 0));
    }
    assert_eq!(Plan::choose(c, empty, from, to).await?.closing, expect(Closing::InPass));
    Ok(())
});
