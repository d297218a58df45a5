//! `daily_point_report`: one row per user and business day.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::DbConnection;
use crate::schema::daily_point_report as r;
use crate::{dispatch, upsert};

/// A user's point activity on one business day.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = r)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct DailyPointReport {
    /// Primary key.
    pub id: i64,
    /// The user.
    pub user_id: i64,
    /// The business day (in the configured time zone).
    pub report_date: NaiveDate,
    /// Sum of EARN amounts.
    pub earn_amount: i64,
    /// Sum of USE amounts.
    pub use_amount: i64,
    /// Sum of CANCEL amounts.
    pub cancel_amount: i64,
    /// Balance after the user's last transaction of the day (ties by id).
    pub balance_snapshot: i64,
    /// Number of EARN transactions.
    pub earn_count: i64,
    /// Number of USE transactions.
    pub use_count: i64,
    /// Number of CANCEL transactions.
    pub cancel_count: i64,
    /// First transaction of the day (UTC).
    pub first_transaction_at: NaiveDateTime,
    /// Last transaction of the day (UTC).
    pub last_transaction_at: NaiveDateTime,
    /// Row created (UTC).
    pub created_at: NaiveDateTime,
    /// Row last written (UTC).
    pub updated_at: NaiveDateTime,
}

/// A report row to write.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = r)]
pub struct NewDailyPointReport {
    /// The user.
    pub user_id: i64,
    /// The business day.
    pub report_date: NaiveDate,
    /// Sum of EARN amounts.
    pub earn_amount: i64,
    /// Sum of USE amounts.
    pub use_amount: i64,
    /// Sum of CANCEL amounts.
    pub cancel_amount: i64,
    /// Balance after the last transaction of the day.
    pub balance_snapshot: i64,
    /// Number of EARN transactions.
    pub earn_count: i64,
    /// Number of USE transactions.
    pub use_count: i64,
    /// Number of CANCEL transactions.
    pub cancel_count: i64,
    /// First transaction (UTC).
    pub first_transaction_at: NaiveDateTime,
    /// Last transaction (UTC).
    pub last_transaction_at: NaiveDateTime,
    /// Row created (UTC).
    pub created_at: NaiveDateTime,
    /// Row last written (UTC).
    pub updated_at: NaiveDateTime,
}

impl DailyPointReport {
    /// Writes rows, replacing the values of an existing `(user_id, report_date)` row (its id and
    /// `created_at` are kept). Idempotent: writing the same rows twice leaves the same table.
    pub async fn upsert_many(
        conn: &mut DbConnection,
        rows: Vec<NewDailyPointReport>,
    ) -> QueryResult<()> {
        for batch in crate::models::chunks_owned(rows, 13) {
            upsert!(
                &mut *conn,
                r::table,
                batch,
                (r::user_id, r::report_date),
                [
                    r::earn_amount,
                    r::use_amount,
                    r::cancel_amount,
                    r::balance_snapshot,
                    r::earn_count,
                    r::use_count,
                    r::cancel_count,
                    r::first_transaction_at,
                    r::last_transaction_at,
                    r::updated_at,
                ]
            )?;
        }
        Ok(())
    }

    /// Every row of one day, ordered by user.
    pub async fn for_date(
        conn: &mut DbConnection,
        date: NaiveDate,
    ) -> QueryResult<Vec<DailyPointReport>> {
        dispatch!(conn, c => r::table
            .filter(r::report_date.eq(date))
            .order(r::user_id.asc())
            .select(DailyPointReport::as_select())
            .load(c)
            .await)
    }

    /// Deletes every row of one day; returns rows deleted.
    pub async fn delete_for_date(conn: &mut DbConnection, date: NaiveDate) -> QueryResult<usize> {
        dispatch!(conn, c => diesel::delete(r::table.filter(r::report_date.eq(date)))
            .execute(c)
            .await)
    }
}
