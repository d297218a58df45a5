#![doc = include_str!("../README.md")]

mod connection;
pub mod db;
pub mod error;
pub mod keyset;
pub mod migrate;
pub mod models;
// `table!` generates a struct per column; the tables themselves carry doc comments.
#[allow(missing_docs)]
pub mod schema;
pub mod tls;
mod url;
mod url_tls;

pub use db::{Backend, Database, DatabaseUrl, DbConnection, PoolOptions, PooledConnection};
pub use error::DbError;
pub use keyset::{ActiveUsers, KeysetQuery};
pub use migrate::MigrationSet;

/// The current time truncated to microseconds, the precision PostgreSQL and MySQL keep, so a
/// value read back compares equal to the value written on every backend.
pub fn truncate_to_micros(t: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
    use chrono::Timelike;
    let nanos = t.nanosecond();
    t.with_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}
