//! `asset_history`: one asset snapshot per user per day.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::DbConnection;
use crate::schema::asset_history as a;
use crate::{dispatch, upsert};

/// A user's assets on one day.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = a)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct AssetHistory {
    /// Primary key.
    pub id: i64,
    /// The user.
    pub user_id: i64,
    /// The business day of the snapshot (unique with `user_id`).
    pub snapshot_day: NaiveDate,
    /// Total assets (minor units).
    pub total_amount: i64,
    /// Cash part.
    pub cash_amount: i64,
    /// Investment part.
    pub investment_amount: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// External inflow/outflow (rewards, penalties); not set by the refresh.
    pub net_flow: Option<i64>,
    /// First written (UTC).
    pub created_at: NaiveDateTime,
    /// Last written (UTC).
    pub updated_at: NaiveDateTime,
}

/// A snapshot to write.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = a)]
pub struct NewAssetHistory {
    /// The user.
    pub user_id: i64,
    /// The business day.
    pub snapshot_day: NaiveDate,
    /// Total assets.
    pub total_amount: i64,
    /// Cash part.
    pub cash_amount: i64,
    /// Investment part.
    pub investment_amount: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// First written (UTC).
    pub created_at: NaiveDateTime,
    /// Last written (UTC).
    pub updated_at: NaiveDateTime,
}

impl AssetHistory {
    /// Writes snapshots; a `(user_id, snapshot_day)` that exists is updated in place (same id,
    /// same `created_at`, `net_flow` untouched), never duplicated.
    pub async fn upsert_many(
        conn: &mut DbConnection,
        rows: Vec<NewAssetHistory>,
    ) -> QueryResult<()> {
        for batch in crate::models::chunks_owned(rows, 8) {
            upsert!(
                &mut *conn,
                a::table,
                batch,
                (a::user_id, a::snapshot_day),
                [
                    a::total_amount,
                    a::cash_amount,
                    a::investment_amount,
                    a::currency,
                    a::updated_at,
                ]
            )?;
        }
        Ok(())
    }

    /// A user's snapshot of one day.
    pub async fn find(
        conn: &mut DbConnection,
        user_id: i64,
        day: NaiveDate,
    ) -> QueryResult<Option<AssetHistory>> {
        dispatch!(conn, c => a::table
            .filter(a::user_id.eq(user_id))
            .filter(a::snapshot_day.eq(day))
            .select(AssetHistory::as_select())
            .first(c)
            .await
            .optional())
    }

    /// Number of snapshots of one day.
    pub async fn count_for_day(conn: &mut DbConnection, day: NaiveDate) -> QueryResult<i64> {
        dispatch!(conn, c => a::table.filter(a::snapshot_day.eq(day)).count().get_result(c).await)
    }
}
