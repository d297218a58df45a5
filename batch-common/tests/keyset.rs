//! `KeysetReader` over a real table on every backend: pages by key with its checkpoint, a restart
//! from a checkpoint, the total, and a failed-items run that reads only those keys the query
//! still returns (as a chunk step's reader and as a concurrent step's).

use batch_common::step::{ItemReader, KeyedReader, KeysetCheckpoint, KeysetReader, ReadScope};
use batch_testkit::db_test;
use core_domain::ActiveUsers;
use core_domain::models::{NewUser, User};

async fn users(db: &batch_testkit::TestDb) -> anyhow::Result<()> {
    let now = chrono::Utc::now().naive_utc();
    let rows = (1..=10)
        .map(|id| NewUser {
            id,
            name: format!("user {id}"),
            status: if id == 5 || id == 8 {
                "INACTIVE"
            } else {
                "ACTIVE"
            }
            .to_owned(),
            created_at: now,
            updated_at: now,
        })
        .collect();
    User::insert_many(&mut *db.conn().await, rows).await?;
    Ok(())
}

fn ids(rows: &[User]) -> Vec<i64> {
    rows.iter().map(|u| u.id).collect()
}

db_test!(async fn pages_checkpoints_restarts_and_failed_items(db) {
    users(db).await?;
    // Everything, 3 at a time: active users only, the checkpoint after each chunk.
    let mut reader = KeysetReader::new(db.db.clone(), ActiveUsers);
    ItemReader::open(&mut reader, None, &ReadScope::All).await?;
    assert_eq!(ItemReader::total(&mut reader, &ReadScope::All).await?, Some(8));
    let mut chunks = Vec::new();
    loop {
        let (rows, at) = reader.read_chunk(3).await?;
        if rows.is_empty() {
            break;
        }
        chunks.push((ids(&rows), at.last_id));
    }
    assert_eq!(
        chunks,
        [(vec![1, 2, 3], 3), (vec![4, 6, 7], 7), (vec![9, 10], 10)]
    );

    // A restart from checkpoint 4 reads after it.
    let mut reader = KeysetReader::new(db.db.clone(), ActiveUsers);
    ItemReader::open(&mut reader, Some(KeysetCheckpoint { last_id: 4 }), &ReadScope::All).await?;
    let (rows, at) = reader.read_chunk(100).await?;
    assert_eq!((ids(&rows), at.last_id), (vec![6, 7, 9, 10], 10));

    // Failed items 2, 5 (inactive now), 8 (inactive), 9, 11 (gone), 2 at a time: a slice
    // that gives no row is passed over, never taken for the end.
    let failed = ReadScope::FailedItems(["9", "2", "5", "8", "11"].map(String::from).to_vec());
    let mut reader = KeysetReader::new(db.db.clone(), ActiveUsers);
    ItemReader::open(&mut reader, None, &failed).await?;
    assert_eq!(ItemReader::total(&mut reader, &failed).await?, Some(5));
    let mut chunks = Vec::new();
    loop {
        let (rows, at) = reader.read_chunk(2).await?;
        if rows.is_empty() {
            break;
        }
        chunks.push((ids(&rows), at.last_id));
    }
    // Slices [2, 5] → [2]; [8, 9] → [9]; [11] → nothing: the end (not an empty chunk midway).
    assert_eq!(chunks, [(vec![2], 5), (vec![9], 9)]);

    // The same scope through the concurrent step's seam.
    let mut reader = KeysetReader::new(db.db.clone(), ActiveUsers);
    KeyedReader::open(&mut reader, &failed).await?;
    let page = reader.read_page(0, 2).await?;
    assert_eq!((ids(&page.items), page.next), (vec![2], Some(5)));
    let page = reader.read_page(5, 10).await?;
    assert_eq!((ids(&page.items), page.next), (vec![9], None));

    // A failed-item key that is not a key is an error naming it.
    let bad = ReadScope::FailedItems(vec!["user-3".to_owned()]);
    let e = ItemReader::open(&mut reader, None, &bad).await.unwrap_err();
    assert!(e.to_string().contains("user-3"), "{e}");
    Ok(())
});
