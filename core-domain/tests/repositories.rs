//! Every repository function of core-domain, on every backend.

use batch_testkit::db_test;
use core_domain::models::*;

use crate::{day, ts};

fn balance(user_id: i64) -> NewPointBalance {
    NewPointBalance {
        user_id,
        balance: user_id * 10,
        version: 1,
        updated_at: ts("2026-11-20 01:02:03.123456"),
    }
}

db_test!(async fn point_balance_insert_page_find_change_count(db) {
    let mut conn = db.conn().await;
    // More rows than one statement may carry (4 columns -> 7,500 rows), so the split is exercised.
    let n = rows_per_statement(4) as i64 + 500;
    let inserted = PointBalance::insert_many(&mut conn, (1..=n).map(balance).collect()).await?;
    assert_eq!(inserted as i64, n);
    assert_eq!(PointBalance::count(&mut conn).await?, n);

    // Keyset paging visits every row once, in id order.
    let (mut after, mut seen, mut pages) = (0, 0i64, 0);
    loop {
        let page = PointBalance::page_after(&mut conn, after, 1000).await?;
        if page.is_empty() {
            break;
        }
        assert!(page.windows(2).all(|w| w[0].id < w[1].id));
        assert!(page[0].id > after);
        seen += page.len() as i64;
        after = page.last().unwrap().id;
        pages += 1;
    }
    assert_eq!(seen, n);
    assert_eq!(pages, (n + 999) / 1000);

    let found = PointBalance::find_by_user(&mut conn, 42).await?.expect("user 42");
    assert_eq!((found.user_id, found.balance, found.version), (42, 420, 1));
    assert_eq!(found.updated_at, ts("2026-11-20 01:02:03.123456"));
    assert!(PointBalance::find_by_user(&mut conn, n + 1).await?.is_none());

    let ids = PointBalance::ids_for_users(&mut conn, &[42, 7, n + 1]).await?;
    let b7 = PointBalance::find_by_user(&mut conn, 7).await?.unwrap();
    assert_eq!(ids, vec![(7, b7.id), (42, found.id)]);

    let changed = PointBalance::apply_change(&mut conn, 42, 999, ts("2026-11-21 00:00:00")).await?;
    assert_eq!(changed, 1);
    let after_change = PointBalance::find_by_user(&mut conn, 42).await?.unwrap();
    assert_eq!((after_change.balance, after_change.version), (999, 2));
    assert_eq!(PointBalance::apply_change(&mut conn, n + 1, 1, ts("2026-11-21 00:00:00")).await?, 0);
    Ok(())
});

db_test!(async fn point_balance_user_id_is_unique(db) {
    let mut conn = db.conn().await;
    PointBalance::insert_many(&mut conn, vec![balance(7)]).await?;
    let dup = PointBalance::insert_many(&mut conn, vec![balance(7)]).await;
    assert!(
        matches!(dup, Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))),
        "expected a unique violation, got {dup:?}"
    );
    assert_eq!(PointBalance::count(&mut conn).await?, 1);
    Ok(())
});

fn tx(user_id: i64, kind: PointType, amount: i64, snapshot: i64, at: &str) -> NewPoint {
    NewPoint {
        user_id,
        amount,
        point_type: kind.as_str().to_owned(),
        description: Some(format!("{kind} {amount}")),
        balance_snapshot: snapshot,
        point_balance_id: user_id,
        created_at: ts(at),
    }
}

db_test!(async fn point_insert_and_window_queries(db) {
    let mut conn = db.conn().await;
    let rows = vec![
        tx(1, PointType::Earn, 100, 100, "2026-11-19 14:59:59.999999"), // before the window
        tx(1, PointType::Earn, 50, 150, "2026-11-19 15:00:00"),        // first instant inside
        tx(1, PointType::Use, 30, 120, "2026-11-20 03:00:00"),
        tx(2, PointType::Cancel, 10, 10, "2026-11-20 10:00:00"),
        tx(1, PointType::Cancel, 5, 125, "2026-11-20 14:59:59.999999"), // last instant inside
        tx(1, PointType::Earn, 1, 126, "2026-11-20 15:00:00"),        // end is exclusive
    ];
    assert_eq!(Point::insert_many(&mut conn, rows).await?, 6);
    let (from, to) = (ts("2026-11-19 15:00:00"), ts("2026-11-20 15:00:00"));
    assert_eq!(Point::count_between(&mut conn, from, to).await?, 4);

    let user1 = Point::for_user_between(&mut conn, 1, from, to).await?;
    let amounts: Vec<i64> = user1.iter().map(|p| p.amount).collect();
    assert_eq!(amounts, vec![50, 30, 5]);
    assert_eq!(user1[1].kind(), Ok(PointType::Use));
    assert_eq!(user1[1].description.as_deref(), Some("USE 30"));
    assert_eq!(user1[2].created_at, ts("2026-11-20 14:59:59.999999"));
    assert!(Point::for_user_between(&mut conn, 3, from, to).await?.is_empty());
    Ok(())
});

fn user(id: i64, active: bool) -> NewUser {
    NewUser {
        id,
        name: format!("user-{id}"),
        status: if active {
            UserStatus::Active
        } else {
            UserStatus::Inactive
        }
        .as_str()
        .to_owned(),
        created_at: ts("2026-01-01 00:00:00"),
        updated_at: ts("2026-01-01 00:00:00"),
    }
}

db_test!(async fn users_insert_active_paging_find_count(db) {
    let mut conn = db.conn().await;
    // Every third user is inactive.
    let rows: Vec<NewUser> = (1..=30).map(|id| user(id, id % 3 != 0)).collect();
    assert_eq!(User::insert_many(&mut conn, rows).await?, 30);
    assert_eq!(User::count(&mut conn).await?, 30);

    let mut after = 0;
    let mut active = Vec::new();
    loop {
        let page = User::active_page_after(&mut conn, after, 7).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        active.extend(page.iter().map(|u| u.id));
        assert!(page.iter().all(User::is_active));
    }
    let expected: Vec<i64> = (1..=30).filter(|id| id % 3 != 0).collect();
    assert_eq!(active, expected);

    let u = User::find(&mut conn, 3).await?.expect("user 3");
    assert_eq!((u.name.as_str(), u.is_active(), u.current_asset_history_id), ("user-3", false, None));
    assert!(User::find(&mut conn, 31).await?.is_none());
    let many = User::find_many(&mut conn, &[9, 2, 31, 3]).await?;
    assert_eq!(many.iter().map(|u| u.id).collect::<Vec<_>>(), vec![2, 3, 9]);
    assert!(User::find_many(&mut conn, &[]).await?.is_empty());
    Ok(())
});

fn snapshot(user_id: i64, d: &str, total: i64, at: &str) -> NewAssetHistory {
    NewAssetHistory {
        user_id,
        snapshot_day: day(d),
        total_amount: total,
        cash_amount: total / 4,
        investment_amount: total - total / 4,
        currency: "KRW".into(),
        created_at: ts(at),
        updated_at: ts(at),
    }
}

db_test!(async fn asset_history_upsert_is_one_row_per_user_and_day(db) {
    let mut conn = db.conn().await;
    AssetHistory::upsert_many(
        &mut conn,
        vec![
            snapshot(1, "2026-11-20", 1000, "2026-11-20 01:00:00"),
            snapshot(2, "2026-11-20", 2000, "2026-11-20 01:00:00"),
            snapshot(1, "2026-11-21", 1100, "2026-11-21 01:00:00"),
        ],
    )
    .await?;
    let first = AssetHistory::find(&mut conn, 1, day("2026-11-21")).await?.expect("row");
    assert_eq!(first.total_amount, 1100);

    // Same (user, day) again: updated in place, same id and created_at, net_flow untouched.
    AssetHistory::upsert_many(&mut conn, vec![snapshot(1, "2026-11-21", 1234, "2026-11-21 09:00:00")]).await?;
    let again = AssetHistory::find(&mut conn, 1, day("2026-11-21")).await?.expect("row");
    assert_eq!(again.id, first.id);
    assert_eq!((again.total_amount, again.cash_amount, again.investment_amount), (1234, 308, 926));
    assert_eq!(again.created_at, ts("2026-11-21 01:00:00"));
    assert_eq!(again.updated_at, ts("2026-11-21 09:00:00"));
    assert_eq!(again.net_flow, None);
    assert_eq!(AssetHistory::count_for_day(&mut conn, day("2026-11-21")).await?, 1);
    assert_eq!(AssetHistory::count_for_day(&mut conn, day("2026-11-20")).await?, 2);
    assert!(AssetHistory::find(&mut conn, 3, day("2026-11-21")).await?.is_none());
    Ok(())
});

db_test!(async fn users_point_at_their_snapshot_of_the_day(db) {
    let mut conn = db.conn().await;
    User::insert_many(&mut conn, (1..=3).map(|id| user(id, true)).collect()).await?;
    AssetHistory::upsert_many(
        &mut conn,
        vec![
            snapshot(1, "2026-11-20", 10, "2026-11-20 01:00:00"),
            snapshot(1, "2026-11-21", 11, "2026-11-21 01:00:00"),
            snapshot(2, "2026-11-21", 21, "2026-11-21 01:00:00"),
        ],
    )
    .await?;
    let changed =
        User::point_current_asset_history_to_day(&mut conn, &[1, 2], day("2026-11-21"), ts("2026-11-21 02:00:00"))
            .await?;
    assert_eq!(changed, 2);
    for (user_id, expected_total) in [(1, 11), (2, 21)] {
        let u = User::find(&mut conn, user_id).await?.unwrap();
        let h = AssetHistory::find(&mut conn, user_id, day("2026-11-21")).await?.unwrap();
        assert_eq!(u.current_asset_history_id, Some(h.id));
        assert_eq!(h.total_amount, expected_total);
        assert_eq!(u.updated_at, ts("2026-11-21 02:00:00"));
    }
    // User 3 was not listed: untouched.
    assert_eq!(User::find(&mut conn, 3).await?.unwrap().current_asset_history_id, None);
    assert_eq!(User::point_current_asset_history_to_day(&mut conn, &[], day("2026-11-21"), ts("2026-11-21 02:00:00")).await?, 0);
    Ok(())
});

fn report(user_id: i64, d: &str, earn: i64, at: &str) -> NewDailyPointReport {
    NewDailyPointReport {
        user_id,
        report_date: day(d),
        earn_amount: earn,
        use_amount: 2,
        cancel_amount: 3,
        balance_snapshot: 100 + earn,
        earn_count: 1,
        use_count: 1,
        cancel_count: 1,
        first_transaction_at: ts("2026-11-19 15:00:00"),
        last_transaction_at: ts("2026-11-20 14:00:00.5"),
        created_at: ts(at),
        updated_at: ts(at),
    }
}

db_test!(async fn daily_point_report_upsert_is_idempotent(db) {
    let mut conn = db.conn().await;
    let rows: Vec<NewDailyPointReport> =
        (1..=5).map(|u| report(u, "2026-11-20", u * 10, "2026-11-21 01:00:00")).collect();
    DailyPointReport::upsert_many(&mut conn, rows.clone()).await?;
    let first = DailyPointReport::for_date(&mut conn, day("2026-11-20")).await?;
    assert_eq!(first.len(), 5);
    assert_eq!(first.iter().map(|r| r.user_id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    // The same rows again: exactly the same table.
    DailyPointReport::upsert_many(&mut conn, rows).await?;
    assert_eq!(DailyPointReport::for_date(&mut conn, day("2026-11-20")).await?, first);

    // Changed values for one user: updated in place.
    DailyPointReport::upsert_many(&mut conn, vec![report(3, "2026-11-20", 999, "2026-11-22 01:00:00")]).await?;
    let after = DailyPointReport::for_date(&mut conn, day("2026-11-20")).await?;
    let r3 = after.iter().find(|r| r.user_id == 3).unwrap();
    let r3_before = first.iter().find(|r| r.user_id == 3).unwrap();
    assert_eq!((r3.id, r3.earn_amount, r3.balance_snapshot), (r3_before.id, 999, 1099));
    assert_eq!(r3.created_at, ts("2026-11-21 01:00:00"));
    assert_eq!(r3.updated_at, ts("2026-11-22 01:00:00"));
    assert_eq!(r3.last_transaction_at, ts("2026-11-20 14:00:00.5"));

    // Another day is separate; delete_for_date removes only its day.
    DailyPointReport::upsert_many(&mut conn, vec![report(1, "2026-11-21", 1, "2026-11-22 01:00:00")]).await?;
    assert_eq!(DailyPointReport::delete_for_date(&mut conn, day("2026-11-20")).await?, 5);
    assert!(DailyPointReport::for_date(&mut conn, day("2026-11-20")).await?.is_empty());
    assert_eq!(DailyPointReport::for_date(&mut conn, day("2026-11-21")).await?.len(), 1);
    Ok(())
});
