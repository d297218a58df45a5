//! `point`: point transactions.

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::DbConnection;
use crate::dispatch;
use crate::schema::point;

/// The kind of a point transaction (column `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointType {
    /// Points credited.
    Earn,
    /// Points spent.
    Use,
    /// A cancelled use or earn.
    Cancel,
}

impl PointType {
    /// Every type, in column order of the report.
    pub const ALL: [PointType; 3] = [PointType::Earn, PointType::Use, PointType::Cancel];

    /// The stored value: `EARN`, `USE` or `CANCEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            PointType::Earn => "EARN",
            PointType::Use => "USE",
            PointType::Cancel => "CANCEL",
        }
    }
}

impl fmt::Display for PointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PointType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EARN" => Ok(PointType::Earn),
            "USE" => Ok(PointType::Use),
            "CANCEL" => Ok(PointType::Cancel),
            other => Err(format!(
                "unknown point type `{other}` (expected EARN, USE or CANCEL)"
            )),
        }
    }
}

/// One point transaction.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = point)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct Point {
    /// Primary key.
    pub id: i64,
    /// The user.
    pub user_id: i64,
    /// Amount (positive).
    pub amount: i64,
    /// `EARN`, `USE` or `CANCEL`; see [`PointType`].
    pub point_type: String,
    /// Free text.
    pub description: Option<String>,
    /// The user's balance right after this transaction.
    pub balance_snapshot: i64,
    /// The balance row this transaction changed.
    pub point_balance_id: i64,
    /// When it happened (UTC).
    pub created_at: NaiveDateTime,
}

/// A transaction to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = point)]
pub struct NewPoint {
    /// The user.
    pub user_id: i64,
    /// Amount (positive).
    pub amount: i64,
    /// `EARN`, `USE` or `CANCEL`.
    pub point_type: String,
    /// Free text.
    pub description: Option<String>,
    /// The balance right after this transaction.
    pub balance_snapshot: i64,
    /// The balance row.
    pub point_balance_id: i64,
    /// When (UTC).
    pub created_at: NaiveDateTime,
}

impl Point {
    /// The parsed type, if the stored value is valid.
    pub fn kind(&self) -> Result<PointType, String> {
        self.point_type.parse()
    }

    /// Inserts transactions in as few statements as the bind limit allows; returns rows inserted.
    pub async fn insert_many(conn: &mut DbConnection, rows: Vec<NewPoint>) -> QueryResult<usize> {
        let mut total = 0;
        for batch in crate::models::chunks_owned(rows, 7) {
            total +=
                crate::execute_owned!(&mut *conn, diesel::insert_into(point::table).values(batch))?;
        }
        Ok(total)
    }

    /// One user's transactions in `[from, to)`, oldest first (ties by id).
    pub async fn for_user_between(
        conn: &mut DbConnection,
        user_id: i64,
        from: NaiveDateTime,
        to: NaiveDateTime,
    ) -> QueryResult<Vec<Point>> {
        dispatch!(conn, c => point::table
            .filter(point::user_id.eq(user_id))
            .filter(point::created_at.ge(from))
            .filter(point::created_at.lt(to))
            .order((point::created_at.asc(), point::id.asc()))
            .select(Point::as_select())
            .load(c)
            .await)
    }

    /// Number of transactions in `[from, to)`.
    pub async fn count_between(
        conn: &mut DbConnection,
        from: NaiveDateTime,
        to: NaiveDateTime,
    ) -> QueryResult<i64> {
        dispatch!(conn, c => point::table
            .filter(point::created_at.ge(from))
            .filter(point::created_at.lt(to))
            .count()
            .get_result(c)
            .await)
    }
}
