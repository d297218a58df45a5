//! The daily report's plan (see [`crate::daily_report`]): how the closing balance is found and
//! how SQLite reads the day, chosen from the day's own shape — its transactions per user,
//! estimated from a sample of the day ([`transactions_per_user`]), and on SQLite the day's share
//! of the table ([`sqlite_scan`]). Measured by `benches/report_bench.rs`; see the crate's README.

use chrono::NaiveDate;
use core_domain::{Backend, DbConnection, DbError, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Timestamp};
use diesel_async::RunQueryDsl;

/// One count (`n`).
#[derive(QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// SQLite reads the whole table instead of the day's range of `idx_point_created_at` when the
/// day holds at least this share of the table's rows (percent): a range read costs a row lookup
/// per entry, out of order when ids are not in time order.
pub const SQLITE_FULL_SCAN_PERCENT: i64 = 40;

/// How SQLite reads the day's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteScan {
    /// The range of `idx_point_created_at` (a row lookup per entry).
    CreatedAtRange,
    /// The whole table in rowid order, filtering on `created_at`.
    FullTable,
}

/// How the closing balance (the day's last transaction's `balance_snapshot`, by `created_at`,
/// ties by id) is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// In the aggregate's own pass, one comparison per transaction: PostgreSQL
    /// `MAX(ARRAY[µs since the window's start, id, balance_snapshot])`, MariaDB
    /// `GROUP_CONCAT(… ORDER BY created_at DESC, id DESC LIMIT 1)`, SQLite a text key
    /// `MAX(time || id || snapshot)`. Cheapest when users have few transactions.
    InPass,
    /// The aggregate keeps only `MAX(created_at)`; then one probe of `idx_point_user_created_at`
    /// per user, at that instant (ties: the highest id). Cheapest when users have many
    /// transactions: the per-transaction work is a plain `MAX`.
    PerUser,
}

/// The report's plan: how the closing balance is found, and how SQLite reads the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// How the closing balance is found.
    pub closing: Closing,
    /// How SQLite reads the day (ignored by the other backends, whose planners choose).
    pub scan: SqliteScan,
}

/// PostgreSQL probes per user ([`Closing::PerUser`]) from this many transactions per user in the
/// day. Measured (`benches/report_bench.rs`, 2,000,000 transactions, ids in time order /
/// scattered, probe vs the in-pass `MAX(ARRAY[…])`): at 200 per user the probe takes 0.66 / 0.73
/// of the time, at 50 0.77 / 0.82, at 25 0.97 / 1.07, at 12 1.08 / 1.25, at 5 1.19 / 1.36.
pub const POSTGRES_PER_USER_MIN_TRANSACTIONS: f64 = 30.0;

/// SQLite probes per user (its correlated `LIMIT 1`) from this many transactions per user in the
/// day, else it takes the text key `MAX(time || id || snapshot)` in the pass. Measured (500,000
/// transactions, full scans, ids in time order / scattered, probe vs pass): 1.02 / 1.15 at 5 per
/// user, 0.85 / 0.88 at 25, 0.75 / 0.75 at 200.
pub const SQLITE_PER_USER_MIN_TRANSACTIONS: f64 = 10.0;

/// How many instants of the day [`transactions_per_user`] samples.
pub const DENSITY_SAMPLES: i64 = 256;

/// On PostgreSQL a sampled user's transactions are counted up to this many: enough to tell
/// either side of [`POSTGRES_PER_USER_MIN_TRANSACTIONS`], and a bounded read however busy the user.
pub const DENSITY_COUNT_CAP: i64 = 100;

impl Plan {
    /// Every plan the report can run on `backend` (for tests and benchmarks).
    pub fn all(backend: Backend) -> Vec<Plan> {
        let scans: &[SqliteScan] = if backend == Backend::Sqlite {
            &[SqliteScan::CreatedAtRange, SqliteScan::FullTable]
        } else {
            &[SqliteScan::CreatedAtRange]
        };
        [Closing::InPass, Closing::PerUser]
            .into_iter()
            .flat_map(|closing| scans.iter().map(move |&scan| Plan { closing, scan }))
            .collect()
    }

    /// The plan for `date`, whose window is `[from, to)`, on `conn`'s backend, by what each does
    /// fastest:
    /// - PostgreSQL and SQLite: [`Closing::PerUser`] when [`transactions_per_user`] reaches
    ///   [`POSTGRES_PER_USER_MIN_TRANSACTIONS`] / [`SQLITE_PER_USER_MIN_TRANSACTIONS`], else
    ///   [`Closing::InPass`]; SQLite reads the day as [`sqlite_scan`] says;
    /// - MariaDB/MySQL: [`Closing::InPass`] (its `GROUP_CONCAT … LIMIT 1` is as fast as the probe
    ///   at 200 transactions per user, and faster below).
    pub async fn choose(
        conn: &mut DbConnection,
        date: NaiveDate,
        from: chrono::NaiveDateTime,
        to: chrono::NaiveDateTime,
    ) -> Result<Plan, DbError> {
        let scan = sqlite_scan(conn, from, to).await?;
        let backend = conn.backend();
        let closing = match backend {
            Backend::Postgres | Backend::Sqlite => {
                let density = transactions_per_user(conn, from, to).await?;
                tracing::debug!(%date, ?density, "report plan: transactions per user");
                let threshold = if backend == Backend::Postgres {
                    POSTGRES_PER_USER_MIN_TRANSACTIONS
                } else {
                    SQLITE_PER_USER_MIN_TRANSACTIONS
                };
                if density.per_user >= threshold {
                    Closing::PerUser
                } else {
                    Closing::InPass
                }
            }
            Backend::Mysql => Closing::InPass,
        };
        Ok(Plan { closing, scan })
    }
}

/// An estimate of the day's transactions per user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Density {
    /// Transactions per user (the mean over the day's users; `0` for a day without any).
    pub per_user: f64,
    /// How many sampled instants found a transaction.
    pub picks: i64,
}

#[derive(QueryableByName)]
struct Sampled {
    #[diesel(sql_type = BigInt)]
    picks: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    inverse_sum: Option<f64>,
}

/// The day's transactions per user, estimated from the day itself in a few ms, whatever the
/// table's statistics (none yet after a bulk load) or history (PostgreSQL and SQLite; MariaDB's
/// plan does not depend on it, and there it answers an error).
///
/// At [`DENSITY_SAMPLES`] instants spread evenly over `[from, to)`, the first transaction at or
/// after it (one probe of `idx_point_created_at`) picks a user, whose transactions in the
/// window are then counted (a range of `idx_point_user_created_at`; at most
/// [`DENSITY_COUNT_CAP`] on PostgreSQL). A transaction picks its user in proportion to the
/// user's `k` transactions, so the mean of `1/k` over the picks is users / transactions: its
/// inverse (the harmonic mean of the picks' `k`) is the mean transactions per user.
pub async fn transactions_per_user(
    conn: &mut DbConnection,
    from: chrono::NaiveDateTime,
    to: chrono::NaiveDateTime,
) -> Result<Density, DbError> {
    let sql = match conn.backend() {
        Backend::Postgres => format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS picks, CAST(SUM(1.0 / k) AS DOUBLE PRECISION) AS inverse_sum FROM \
             (SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM point q WHERE q.user_id = s.user_id \
             AND q.created_at >= $1 AND q.created_at < $2 LIMIT {DENSITY_COUNT_CAP}) c) AS k \
             FROM (SELECT (SELECT p.user_id FROM point p \
             WHERE p.created_at >= $1 + ($2 - $1) * CAST((i + 0.5) / {DENSITY_SAMPLES} AS DOUBLE PRECISION) \
             AND p.created_at < $2 ORDER BY p.created_at LIMIT 1) AS user_id \
             FROM generate_series(0, {last}) AS i) s WHERE s.user_id IS NOT NULL) x",
            last = DENSITY_SAMPLES - 1
        ),
        // SQLite has neither generate_series nor timestamp arithmetic: the instants are written
        // in as literals (formatted here from the window, not input). Its subqueries in FROM
        // cannot see the outer row, so the count has no cap (a range of the index, in process).
        Backend::Sqlite => {
            let span = to - from;
            let instants: Vec<String> = (0..DENSITY_SAMPLES)
                .map(|i| {
                    let at = from + span * (2 * i as i32 + 1) / (2 * DENSITY_SAMPLES as i32);
                    format!("('{}')", at.format("%Y-%m-%d %H:%M:%S%.f"))
                })
                .collect();
            format!(
                "WITH t(at) AS (VALUES {}), \
                 s(user_id) AS (SELECT (SELECT p.user_id FROM point p INDEXED BY idx_point_created_at \
                 WHERE p.created_at >= t.at AND p.created_at < ?2 ORDER BY p.created_at LIMIT 1) FROM t) \
                 SELECT COUNT(*) AS picks, SUM(1.0 / (SELECT COUNT(*) FROM point q \
                 WHERE q.user_id = s.user_id AND q.created_at >= ?1 AND q.created_at < ?2)) AS inverse_sum \
                 FROM s WHERE s.user_id IS NOT NULL",
                instants.join(", ")
            )
        }
        Backend::Mysql => {
            return Err(DbError::Other(
                "transactions_per_user: MariaDB/MySQL's report plan does not use it".to_owned(),
            ));
        }
    };
    let sampled: Sampled = dispatch!(conn, c => diesel::sql_query(sql.as_str())
        .bind::<Timestamp, _>(from)
        .bind::<Timestamp, _>(to)
        .get_result(c)
        .await)?;
    let per_user = match sampled.inverse_sum {
        Some(inverse) if inverse > 0.0 => sampled.picks as f64 / inverse,
        _ => 0.0,
    };
    Ok(Density {
        per_user,
        picks: sampled.picks,
    })
}

/// SQLite: reads the whole table when the day's rows are at least [`SQLITE_FULL_SCAN_PERCENT`]
/// of it (the table's size estimated from its id range, in O(log n); the day's entries of
/// `idx_point_created_at` counted up to that share), else the day's range.
pub async fn sqlite_scan(
    conn: &mut DbConnection,
    from: chrono::NaiveDateTime,
    to: chrono::NaiveDateTime,
) -> Result<SqliteScan, DbError> {
    if conn.backend() != Backend::Sqlite {
        return Ok(SqliteScan::CreatedAtRange);
    }
    // Two subqueries: SQLite answers a lone MIN or MAX from the end of the rowid B-tree, but
    // `MAX(id) - MIN(id)` in one SELECT scans the whole table (50–80 ms at 600,000 rows).
    let table: Count = dispatch!(conn, c => diesel::sql_query(
        "SELECT COALESCE((SELECT MAX(id) FROM point) - (SELECT MIN(id) FROM point) + 1, 0) AS n")
        .get_result(c)
        .await)?;
    // Counting stops at the threshold: on a long history the day's entries are few, and when the
    // day is most of the table it is not counted to its end.
    let threshold = (table.n.saturating_mul(SQLITE_FULL_SCAN_PERCENT) / 100).max(1);
    let day: Count = dispatch!(conn, c => diesel::sql_query(
        "SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM point INDEXED BY idx_point_created_at \
         WHERE created_at >= ? AND created_at < ? LIMIT ?) x")
        .bind::<Timestamp, _>(from)
        .bind::<Timestamp, _>(to)
        .bind::<BigInt, _>(threshold)
        .get_result(c)
        .await)?;
    Ok(if day.n >= threshold {
        SqliteScan::FullTable
    } else {
        SqliteScan::CreatedAtRange
    })
}
