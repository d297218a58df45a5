//! Entities, one file each, with the queries that read and write them.
//!
//! Every query is written once and runs on SQLite, PostgreSQL and MySQL; the only per-backend code
//! is the upsert syntax (see [`upsert_set!`](crate::upsert)) and SQLite's multi-row insert path
//! ([`execute_owned!`](crate::execute_owned)).

pub mod asset_history;
pub mod daily_point_report;
pub mod point;
pub mod point_balance;
pub mod user;

pub use asset_history::{AssetHistory, NewAssetHistory};
pub use daily_point_report::{DailyPointReport, NewDailyPointReport};
pub use point::{NewPoint, Point, PointType};
pub use point_balance::{NewPointBalance, PointBalance};
pub use user::{NewUser, User, UserStatus};

/// The most bind parameters one statement may carry. PostgreSQL and MySQL allow 65,535 and SQLite
/// 32,766; staying under the smallest lets any chunk size be inserted in a few statements.
pub const MAX_BIND_PARAMS: usize = 30_000;

/// How many rows of `columns` columns fit in one multi-row statement.
pub fn rows_per_statement(columns: usize) -> usize {
    (MAX_BIND_PARAMS / columns.max(1)).max(1)
}

/// Splits owned rows into statement-sized batches for rows of `columns` columns.
pub(crate) fn chunks_owned<T>(rows: Vec<T>, columns: usize) -> Vec<Vec<T>> {
    let per = rows_per_statement(columns);
    let mut out = Vec::with_capacity(rows.len().div_ceil(per));
    let mut iter = rows.into_iter().peekable();
    while iter.peek().is_some() {
        out.push(iter.by_ref().take(per).collect());
    }
    out
}
