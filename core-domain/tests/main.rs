//! core-domain integration tests: one binary, every module runs on SQLite, PostgreSQL and MySQL.

mod migrations;
mod repositories;
mod transactions;

/// A fixed UTC instant at microsecond precision (what every backend stores exactly).
pub fn ts(s: &str) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("bad timestamp {s}: {e}"))
}

/// A date.
pub fn day(s: &str) -> chrono::NaiveDate {
    s.parse().unwrap_or_else(|e| panic!("bad date {s}: {e}"))
}
