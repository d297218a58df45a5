//! `DbConnection::transaction` commits on Ok, rolls back on Err, on every backend.

use batch_testkit::db_test;
use core_domain::models::*;

use crate::ts;

fn balance(user_id: i64) -> NewPointBalance {
    NewPointBalance {
        user_id,
        balance: 1,
        version: 1,
        updated_at: ts("2026-11-20 00:00:00"),
    }
}

db_test!(async fn transaction_commits_or_rolls_back(db) {
    let mut conn = db.conn().await;
    conn.transaction(|c| {
        Box::pin(async move {
            PointBalance::insert_many(c, vec![balance(1), balance(2)]).await?;
            Ok::<_, anyhow::Error>(())
        })
    })
    .await?;
    assert_eq!(PointBalance::count(&mut conn).await?, 2);

    let failed = conn
        .transaction(|c| {
            Box::pin(async move {
                PointBalance::insert_many(c, vec![balance(3)]).await?;
                anyhow::bail!("the writer failed after inserting");
                #[allow(unreachable_code)]
                Ok(())
            })
        })
        .await;
    assert_eq!(failed.unwrap_err().to_string(), "the writer failed after inserting");
    assert_eq!(PointBalance::count(&mut conn).await?, 2, "the failed transaction left a row");
    assert!(!conn.in_transaction());

    // A unique violation inside the transaction rolls back the rows written before it.
    let dup = conn
        .transaction(|c| {
            Box::pin(async move {
                PointBalance::insert_many(c, vec![balance(4)]).await?;
                PointBalance::insert_many(c, vec![balance(1)]).await?;
                Ok::<_, diesel::result::Error>(())
            })
        })
        .await;
    assert!(dup.is_err());
    assert!(PointBalance::find_by_user(&mut conn, 4).await?.is_none());
    Ok(())
});

db_test!(async fn concurrent_write_transactions_all_commit(db) {
    // Eight writers on four pooled connections: on SQLite, BEGIN IMMEDIATE + busy timeout makes them
    // queue instead of failing with "database is locked".
    let mut tasks = Vec::new();
    for w in 0..8i64 {
        let pool = db.db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5i64 {
                let mut conn = pool.get().await?;
                conn.transaction(|c| {
                    Box::pin(async move {
                        PointBalance::insert_many(c, vec![balance(w * 100 + i)]).await?;
                        // The transaction sees its own uncommitted row.
                        assert!(PointBalance::find_by_user(c, w * 100 + i).await?.is_some());
                        Ok::<_, anyhow::Error>(())
                    })
                })
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut conn = db.conn().await;
    assert_eq!(PointBalance::count(&mut conn).await?, 40);
    Ok(())
});
