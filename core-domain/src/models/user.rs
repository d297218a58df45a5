//! `users`: the asset service's users.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::DbConnection;
use crate::dispatch;
use crate::schema::{asset_history, users};

/// Whether a user takes part in the daily refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// Refreshed every day.
    Active,
    /// Never called.
    Inactive,
}

impl UserStatus {
    /// The stored value: `ACTIVE` or `INACTIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "ACTIVE",
            UserStatus::Inactive => "INACTIVE",
        }
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// `ACTIVE` or `INACTIVE`; see [`UserStatus`].
    pub status: String,
    /// The latest asset snapshot.
    pub current_asset_history_id: Option<i64>,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

/// A user to insert. `id` is explicit so demo data and tests can line users up with balances.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// `ACTIVE` or `INACTIVE`.
    pub status: String,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

impl User {
    /// True if the user is refreshed daily.
    pub fn is_active(&self) -> bool {
        self.status == UserStatus::Active.as_str()
    }

    /// Inserts users in as few statements as the bind limit allows; returns rows inserted.
    pub async fn insert_many(conn: &mut DbConnection, rows: Vec<NewUser>) -> QueryResult<usize> {
        let mut total = 0;
        for batch in crate::models::chunks_owned(rows, 5) {
            total +=
                crate::execute_owned!(&mut *conn, diesel::insert_into(users::table).values(batch))?;
        }
        Ok(total)
    }

    /// Keyset page of active users in one partition: up to `limit` with
    /// `after_id < id <= upto`, ordered by id.
    pub async fn active_page_between(
        conn: &mut DbConnection,
        after_id: i64,
        upto: i64,
        limit: i64,
    ) -> QueryResult<Vec<User>> {
        dispatch!(conn, c => users::table
            .filter(users::status.eq(UserStatus::Active.as_str()))
            .filter(users::id.gt(after_id))
            .filter(users::id.le(upto))
            .order(users::id.asc())
            .limit(limit)
            .select(User::as_select())
            .load(c)
            .await)
    }

    /// Keyset page of active users: up to `limit` with `id > after_id`, ordered by id.
    pub async fn active_page_after(
        conn: &mut DbConnection,
        after_id: i64,
        limit: i64,
    ) -> QueryResult<Vec<User>> {
        dispatch!(conn, c => users::table
            .filter(users::status.eq(UserStatus::Active.as_str()))
            .filter(users::id.gt(after_id))
            .order(users::id.asc())
            .limit(limit)
            .select(User::as_select())
            .load(c)
            .await)
    }

    /// The users with these ids (any status), ordered by id.
    pub async fn find_many(conn: &mut DbConnection, ids: &[i64]) -> QueryResult<Vec<User>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(crate::models::MAX_BIND_PARAMS) {
            let mut part: Vec<User> = dispatch!(&mut *conn, c => users::table
                .filter(users::id.eq_any(chunk))
                .order(users::id.asc())
                .select(User::as_select())
                .load(c)
                .await)?;
            out.append(&mut part);
        }
        out.sort_unstable_by_key(|u| u.id);
        Ok(out)
    }

    /// One user by id.
    pub async fn find(conn: &mut DbConnection, id: i64) -> QueryResult<Option<User>> {
        dispatch!(conn, c => users::table
            .find(id)
            .select(User::as_select())
            .first(c)
            .await
            .optional())
    }

    /// Points each listed user's `current_asset_history_id` at their snapshot of `day` (one
    /// statement; a user without a snapshot that day gets NULL). Returns rows changed.
    pub async fn point_current_asset_history_to_day(
        conn: &mut DbConnection,
        user_ids: &[i64],
        day: NaiveDate,
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        if user_ids.is_empty() {
            return Ok(0);
        }
        let mut total = 0;
        for ids in user_ids.chunks(crate::models::MAX_BIND_PARAMS - 3) {
            let snapshot = asset_history::table
                .filter(asset_history::user_id.eq(users::id))
                .filter(asset_history::snapshot_day.eq(day))
                .select(asset_history::id.nullable())
                .single_value();
            total += dispatch!(&mut *conn, c => diesel::update(users::table.filter(users::id.eq_any(ids)))
                .set((users::current_asset_history_id.eq(snapshot), users::updated_at.eq(now)))
                .execute(c)
                .await)?;
        }
        Ok(total)
    }

    /// Number of users.
    pub async fn count(conn: &mut DbConnection) -> QueryResult<i64> {
        dispatch!(conn, c => users::table.count().get_result(c).await)
    }

    /// Number of active users.
    pub async fn count_active(conn: &mut DbConnection) -> QueryResult<i64> {
        dispatch!(conn, c => users::table
            .filter(users::status.eq(UserStatus::Active.as_str()))
            .count()
            .get_result(c)
            .await)
    }
}
