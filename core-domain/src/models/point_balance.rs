//! `point_balance`: the authoritative balance per user.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::DbConnection;
use crate::dispatch;
use crate::schema::point_balance;

/// A user's balance; `version` is the optimistic-lock counter the online service increments.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = point_balance)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct PointBalance {
    /// Primary key; the sync step pages by it.
    pub id: i64,
    /// The owner (unique).
    pub user_id: i64,
    /// Current balance.
    pub balance: i64,
    /// Optimistic-lock version.
    pub version: i64,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

/// A balance to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = point_balance)]
pub struct NewPointBalance {
    /// The owner (unique).
    pub user_id: i64,
    /// Balance.
    pub balance: i64,
    /// Version.
    pub version: i64,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

impl PointBalance {
    /// Inserts balances in as few statements as the bind limit allows; returns rows inserted.
    pub async fn insert_many(
        conn: &mut DbConnection,
        rows: Vec<NewPointBalance>,
    ) -> QueryResult<usize> {
        let mut total = 0;
        for batch in crate::models::chunks_owned(rows, 4) {
            total += crate::execute_owned!(
                &mut *conn,
                diesel::insert_into(point_balance::table).values(batch)
            )?;
        }
        Ok(total)
    }

    /// Keyset page of one partition: up to `limit` balances with `after_id < id <= upto`,
    /// ordered by id.
    pub async fn page_between(
        conn: &mut DbConnection,
        after_id: i64,
        upto: i64,
        limit: i64,
    ) -> QueryResult<Vec<PointBalance>> {
        dispatch!(conn, c => point_balance::table
            .filter(point_balance::id.gt(after_id))
            .filter(point_balance::id.le(upto))
            .order(point_balance::id.asc())
            .limit(limit)
            .select(PointBalance::as_select())
            .load(c)
            .await)
    }

    /// Keyset page: up to `limit` balances with `id > after_id`, ordered by id (never OFFSET).
    pub async fn page_after(
        conn: &mut DbConnection,
        after_id: i64,
        limit: i64,
    ) -> QueryResult<Vec<PointBalance>> {
        dispatch!(conn, c => point_balance::table
            .filter(point_balance::id.gt(after_id))
            .order(point_balance::id.asc())
            .limit(limit)
            .select(PointBalance::as_select())
            .load(c)
            .await)
    }

    /// The balance of one user, if any.
    pub async fn find_by_user(
        conn: &mut DbConnection,
        user_id: i64,
    ) -> QueryResult<Option<PointBalance>> {
        dispatch!(conn, c => point_balance::table
            .filter(point_balance::user_id.eq(user_id))
            .select(PointBalance::as_select())
            .first(c)
            .await
            .optional())
    }

    /// `(user_id, id)` of the balances of the given users, ordered by user.
    pub async fn ids_for_users(
        conn: &mut DbConnection,
        user_ids: &[i64],
    ) -> QueryResult<Vec<(i64, i64)>> {
        let mut out = Vec::with_capacity(user_ids.len());
        for ids in user_ids.chunks(crate::models::MAX_BIND_PARAMS) {
            let mut part: Vec<(i64, i64)> = dispatch!(&mut *conn, c => point_balance::table
                .filter(point_balance::user_id.eq_any(ids))
                .select((point_balance::user_id, point_balance::id))
                .load(c)
                .await)?;
            out.append(&mut part);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Sets a user's balance and bumps its version, as the online service does; returns rows changed.
    pub async fn apply_change(
        conn: &mut DbConnection,
        user_id: i64,
        new_balance: i64,
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        dispatch!(conn, c => diesel::update(point_balance::table.filter(point_balance::user_id.eq(user_id)))
            .set((
                point_balance::balance.eq(new_balance),
                point_balance::version.eq(point_balance::version + 1),
                point_balance::updated_at.eq(now),
            ))
            .execute(c)
            .await)
    }

    /// Number of balances.
    pub async fn count(conn: &mut DbConnection) -> QueryResult<i64> {
        dispatch!(conn, c => point_balance::table.count().get_result(c).await)
    }
}
