//! `member_statement`: the entity this module owns.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, dispatch, upsert};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::schema::member_statement as m;

/// A stored statement.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = m)]
pub struct MemberStatement {
    /// The member.
    pub user_id: i64,
    /// `YYYY-MM`.
    pub period: String,
    /// `NEW` or `REGULAR`.
    pub tier: String,
    /// The fee.
    pub fee: i64,
    /// First written.
    pub created_at: NaiveDateTime,
    /// Last written.
    pub updated_at: NaiveDateTime,
}

/// A statement to write.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = m)]
pub struct NewMemberStatement {
    /// The member.
    pub user_id: i64,
    /// `YYYY-MM`.
    pub period: String,
    /// `NEW` or `REGULAR`.
    pub tier: String,
    /// The fee.
    pub fee: i64,
    /// Now.
    pub created_at: NaiveDateTime,
    /// Now.
    pub updated_at: NaiveDateTime,
}

/// Columns per row, for the bind-parameter limit.
const COLUMNS: usize = 6;

impl MemberStatement {
    /// Inserts the statements, or updates tier, fee and `updated_at` of those that exist
    /// (a re-run of a month never adds rows), in as few statements as the bind limit allows.
    pub async fn upsert_many(
        conn: &mut DbConnection,
        mut rows: Vec<NewMemberStatement>,
    ) -> QueryResult<()> {
        let per_statement = core_domain::models::rows_per_statement(COLUMNS);
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(per_statement));
            let batch = std::mem::replace(&mut rows, rest);
            upsert!(
                &mut *conn,
                m::table,
                batch,
                (m::user_id, m::period),
                [m::tier, m::fee, m::updated_at]
            )?;
        }
        Ok(())
    }

    /// The statements of one month, by user.
    pub async fn of_period(conn: &mut DbConnection, period: &str) -> QueryResult<Vec<Self>> {
        dispatch!(conn, c => m::table
            .filter(m::period.eq(period))
            .order(m::user_id.asc())
            .select(Self::as_select())
            .load(c)
            .await)
    }

    /// Number of statements of every month.
    pub async fn count(conn: &mut DbConnection) -> QueryResult<i64> {
        dispatch!(conn, c => m::table.count().get_result(c).await)
    }
}
