//! **generateDailyReportStep**: one row per user with point activity on the report date.
//!
//! The day is `[date 00:00, date+1 00:00)` in `[batch] timezone`, converted to UTC. The whole
//! day is aggregated by the database in one `INSERT … SELECT … GROUP BY` (an upsert on
//! `(user_id, report_date)` when the date already has rows, else a plain insert) preceded by a `DELETE` of rows of users who no longer have activity
//! that day, in one transaction: a crash leaves all or nothing, and re-running the date leaves
//! exactly the same rows (a row whose values did not change keeps its `updated_at`). The step's
//! totals (rows, transactions) are then counted from the date's rows; on PostgreSQL a first run's
//! insert returns them itself (a data-modifying CTE), sparing that second read.
//! The last transaction of the day (by `created_at`, ties by id) gives `balance_snapshot`.
//!
//! The closing balance is found with what each backend does fastest for the day's shape
//! ([`Plan::choose`]; measured by `benches/report_bench.rs`, see the crate's README):
//! - PostgreSQL, few transactions per user: in the aggregate's own pass,
//!   `MAX(ARRAY[µs since the window's start, id, balance_snapshot])[3]`, a hash aggregate (no
//!   sort of the transactions); many per user (≥ [`POSTGRES_PER_USER_MIN_TRANSACTIONS`],
//!   estimated from a sample of the day, [`transactions_per_user`]): the aggregate keeps only
//!   `MAX(created_at)` and one probe of `idx_point_user_created_at` per user fetches that transaction. Either way `work_mem`
//!   is raised for the transaction so the hash stays in memory, and the one row per user is
//!   sorted by `user_id` so the unique index is written in key order;
//! - MariaDB/MySQL: `GROUP_CONCAT(balance_snapshot ORDER BY created_at DESC, id DESC LIMIT 1)`,
//!   with `idx_point_user_created_at` ignored (a full walk of it in user order, with a row
//!   lookup per entry, is what the optimizer otherwise picks, and is 3–4× slower);
//! - SQLite: with few transactions per user (< [`SQLITE_PER_USER_MIN_TRANSACTIONS`]) a text key
//!   `MAX(time || id || snapshot)` in the pass, else per user one probe of
//!   `idx_point_user_created_at` for the last transaction (a correlated `ORDER BY created_at DESC,
//!   id DESC LIMIT 1`); either way reading the window through `idx_point_created_at`, or the
//!   whole table when the day is most of it.

use async_trait::async_trait;
use batch_common::step::{StepContext, Tasklet};
use chrono::NaiveDate;
use chrono_tz::Tz;
use core_domain::{Backend, Database, DbConnection, DbError, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Date, Timestamp};
use diesel_async::RunQueryDsl;

/// The step's name.
pub const STEP_NAME: &str = "generateDailyReportStep";

/// `work_mem` of the report's transaction on PostgreSQL: the hash aggregate of a day keeps one
/// entry per user (~200 bytes), so 1,000,000 users stay in memory (the hash may use
/// `hash_mem_multiplier` times this). Only this transaction's server process uses it.
pub const POSTGRES_WORK_MEM: &str = "256MB";

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
                tracing::debug!(step = STEP_NAME, %date, ?density, "transactions per user");
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

/// The aggregation's `SELECT` for `backend` under `plan`.
///
/// Binds, in order: report_date, now, now, window start, window end; `@FROM@` and `@TO@` mark
/// where the window's bounds are used again ([`placeholders`] numbers them).
pub fn aggregate_select(backend: Backend, plan: Plan) -> String {
    let from = match backend {
        Backend::Postgres => "point",
        // Otherwise the optimizer walks that whole index in user order with a row lookup per
        // entry, 3–4× slower than reading the day's range.
        Backend::Mysql => "point IGNORE INDEX (idx_point_user_created_at)",
        Backend::Sqlite => match plan.scan {
            SqliteScan::CreatedAtRange => "point INDEXED BY idx_point_created_at",
            SqliteScan::FullTable => "point NOT INDEXED",
        },
    };
    // PostgreSQL's hash aggregate emits users in hash order; sorted (a quicksort of one row per
    // user, in memory) the rows reach `uq_daily_point_report_user_date` in key order, which makes
    // the insert ~20% cheaper at 400,000 users (measured; the other backends group by sorting),
    // and a per-user probe walks `idx_point_user_created_at` in its order.
    let order = if backend == Backend::Postgres {
        " ORDER BY user_id"
    } else {
        ""
    };
    const SUMS: &str = "SUM(CASE WHEN type = 'EARN' THEN amount ELSE 0 END) AS e, \
        SUM(CASE WHEN type = 'USE' THEN amount ELSE 0 END) AS u, \
        SUM(CASE WHEN type = 'CANCEL' THEN amount ELSE 0 END) AS c";
    const COUNTS: &str = "SUM(CASE WHEN type = 'EARN' THEN 1 ELSE 0 END) AS ec, \
        SUM(CASE WHEN type = 'USE' THEN 1 ELSE 0 END) AS uc, \
        SUM(CASE WHEN type = 'CANCEL' THEN 1 ELSE 0 END) AS cc, \
        MIN(created_at) AS f, MAX(created_at) AS l";
    let last = match (backend, plan.closing) {
        // Array comparison is element by element: the greatest (µs since the window's start, id)
        // wins. The interval's seconds are below 86,400 × 2 (a day, a DST day at most), so the
        // float product is exact to the microsecond.
        (Backend::Postgres, Closing::InPass) => Some(
            "(MAX(ARRAY[ROUND(date_part('epoch', created_at - @FROM@) * 1000000)::BIGINT, id, balance_snapshot]))[3]",
        ),
        (Backend::Mysql, Closing::InPass) => Some(
            "CAST(GROUP_CONCAT(balance_snapshot ORDER BY created_at DESC, id DESC LIMIT 1) AS SIGNED)",
        ),
        // A text key that sorts as (created_at, id): the time padded to 9 fractional digits
        // (SQLite stores it as text with 0 to 9 of them), the id to 20 digits, then the snapshot.
        (Backend::Sqlite, Closing::InPass) => Some(
            "CAST(substr(MAX(CASE WHEN length(created_at) = 19 THEN created_at || '.000000000' \
             ELSE substr(created_at || '000000000', 1, 29) END || printf('%020d', id) || balance_snapshot), 50) AS INTEGER)",
        ),
        // SQLite: one probe at the end of the user's range in `idx_point_user_created_at`, whose
        // entries end with the rowid (= id): the last entry is the last transaction, ties by id.
        (Backend::Sqlite, Closing::PerUser) => Some(
            "(SELECT p.balance_snapshot FROM point p WHERE p.user_id = point.user_id \
             AND p.created_at >= @FROM@ AND p.created_at < @TO@ ORDER BY p.created_at DESC, p.id DESC LIMIT 1)",
        ),
        (Backend::Postgres | Backend::Mysql, Closing::PerUser) => None,
    };
    match last {
        Some(last) => format!(
            "SELECT user_id, ?, {SUMS}, {last}, {COUNTS}, ?, ? \
             FROM {from} WHERE created_at >= ? AND created_at < ? GROUP BY user_id{order} "
        ),
        // The aggregate in a derived table (sorted by user on PostgreSQL), then one probe per
        // user at its last instant; the transactions at that very instant are few, sorted by id.
        None => format!(
            "SELECT a.user_id, ?, a.e, a.u, a.c, \
             (SELECT p.balance_snapshot FROM point p WHERE p.user_id = a.user_id AND p.created_at = a.l \
             ORDER BY p.id DESC LIMIT 1), a.ec, a.uc, a.cc, a.f, a.l, ?, ? \
             FROM (SELECT user_id, {SUMS}, {COUNTS} FROM {from} \
             WHERE created_at >= ? AND created_at < ? GROUP BY user_id{order}) a "
        ),
    }
}

/// The report table's columns, in the order [`aggregate_select`] fills them.
pub const INSERT_INTO: &str = "INSERT INTO daily_point_report (user_id, report_date, earn_amount, \
use_amount, cancel_amount, balance_snapshot, earn_count, use_count, cancel_count, \
first_transaction_at, last_transaction_at, created_at, updated_at) ";

const REPORT_COLUMNS: [&str; 9] = [
    "earn_amount",
    "use_amount",
    "cancel_amount",
    "balance_snapshot",
    "earn_count",
    "use_count",
    "cancel_count",
    "first_transaction_at",
    "last_transaction_at",
];

/// The conflict clause per backend: update the values, and `updated_at` only if a value changed.
fn upsert_clause(backend: Backend) -> String {
    match backend {
        Backend::Postgres | Backend::Sqlite => {
            let set: Vec<String> = REPORT_COLUMNS
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            let old: Vec<String> = REPORT_COLUMNS
                .iter()
                .map(|c| format!("daily_point_report.{c}"))
                .collect();
            let new: Vec<String> = REPORT_COLUMNS
                .iter()
                .map(|c| format!("excluded.{c}"))
                .collect();
            let changed = if backend == Backend::Postgres {
                format!("({}) IS DISTINCT FROM ({})", old.join(", "), new.join(", "))
            } else {
                // SQLite: row values compare with IS NOT.
                format!("({}) IS NOT ({})", old.join(", "), new.join(", "))
            };
            format!(
                "ON CONFLICT (user_id, report_date) DO UPDATE SET {}, updated_at = excluded.updated_at WHERE {changed}",
                set.join(", ")
            )
        }
        Backend::Mysql => {
            // MySQL applies assignments left to right, so `updated_at` is decided first, while the
            // old values are still in place.
            let same: Vec<String> = REPORT_COLUMNS
                .iter()
                .map(|c| format!("{c} <=> VALUES({c})"))
                .collect();
            let set: Vec<String> = REPORT_COLUMNS
                .iter()
                .map(|c| format!("{c} = VALUES({c})"))
                .collect();
            format!(
                "ON DUPLICATE KEY UPDATE updated_at = IF({}, updated_at, VALUES(updated_at)), {}",
                same.join(" AND "),
                set.join(", ")
            )
        }
    }
}

/// Rows of the date whose user has no transaction in the window any more.
/// Binds: report_date, window start, window end.
const DELETE_STALE: &str = "DELETE FROM daily_point_report WHERE report_date = ? AND NOT EXISTS \
(SELECT 1 FROM point p WHERE p.user_id = daily_point_report.user_id AND p.created_at >= ? AND p.created_at < ?)";

/// Binds: report_date. `{int}` is the backend's 64-bit integer cast target.
fn summary_sql(backend: Backend) -> String {
    let int = if backend == Backend::Mysql {
        "SIGNED"
    } else {
        "BIGINT"
    };
    format!(
        "SELECT CAST(COUNT(*) AS {int}) AS report_rows, \
         CAST(COALESCE(SUM(earn_count + use_count + cancel_count), 0) AS {int}) AS transactions \
         FROM daily_point_report WHERE report_date = ?"
    )
}

/// PostgreSQL: `insert` (a plain `INSERT … SELECT`) as a data-modifying CTE whose statement
/// returns the totals of the rows it wrote, as [`summary_sql`] would count them.
fn returning_totals(insert: &str) -> String {
    format!(
        "WITH written AS ({insert} RETURNING earn_count + use_count + cancel_count AS n) \
         SELECT CAST(COUNT(*) AS BIGINT) AS report_rows, CAST(COALESCE(SUM(n), 0) AS BIGINT) AS transactions \
         FROM written"
    )
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
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

#[derive(QueryableByName)]
struct Summary {
    #[diesel(sql_type = BigInt)]
    report_rows: i64,
    #[diesel(sql_type = BigInt)]
    transactions: i64,
}

/// Numbers the placeholders for the backend: `?` becomes `$n` on PostgreSQL and `?n` on SQLite
/// (in order), and `@FROM@` / `@TO@` (the 4th and 5th binds used again) `$4` / `$5` or `?4` /
/// `?5`. MySQL has no numbered placeholders: its SQL must not use the markers.
pub fn placeholders(sql: &str, backend: Backend) -> String {
    let mark = match backend {
        Backend::Postgres => '$',
        Backend::Sqlite => '?',
        Backend::Mysql => return sql.to_owned(),
    };
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("{mark}{n}"));
        } else {
            out.push(ch);
        }
    }
    out.replace("@FROM@", &format!("{mark}4"))
        .replace("@TO@", &format!("{mark}5"))
}

/// The report for one date, as a tasklet.
pub struct DailyReport {
    db: Database,
    date: NaiveDate,
    tz: Tz,
    plan: Option<Plan>,
}

impl DailyReport {
    /// The report of `date` (a business day in `tz`).
    pub fn new(db: Database, date: NaiveDate, tz: Tz) -> Self {
        DailyReport {
            db,
            date,
            tz,
            plan: None,
        }
    }

    /// Runs `plan` instead of the one [`Plan::choose`] picks (tests and benchmarks compare them).
    pub fn with_plan(mut self, plan: Plan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Writes the report in one transaction; returns (report rows, transactions aggregated, rows deleted).
    pub async fn generate(&self, now: chrono::NaiveDateTime) -> Result<(i64, i64, usize), DbError> {
        let (from, to) = batch_common::day_window_utc(self.date, self.tz);
        let backend = self.db.backend();
        let upsert = upsert_clause(backend);
        let delete = placeholders(DELETE_STALE, backend);
        let summary = placeholders(&summary_sql(backend), backend);
        let existing = placeholders(
            &format!(
                "SELECT CAST(COUNT(*) AS {}) AS n FROM (SELECT 1 AS one FROM daily_point_report WHERE report_date = ? LIMIT 1) x",
                if backend == Backend::Mysql {
                    "SIGNED"
                } else {
                    "BIGINT"
                }
            ),
            backend,
        );
        let date = self.date;
        let forced = self.plan;
        let mut conn = self.db.get().await?;
        let conn: &mut DbConnection = &mut conn;
        conn.transaction(|c| {
            Box::pin(async move {
                // Stale rows first: on a first run there are none for the date, so this costs
                // nothing, and the rows inserted next are never probed.
                let deleted = dispatch!(&mut *c, c => diesel::sql_query(delete.as_str())
                    .bind::<Date, _>(date)
                    .bind::<Timestamp, _>(from)
                    .bind::<Timestamp, _>(to)
                    .execute(c)
                    .await)?;
                if backend == Backend::Postgres {
                    // The hash aggregate keeps one entry per user: in memory, not in batches on disk.
                    c.batch_execute(&format!("SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'"))
                        .await?;
                }
                let plan = match forced {
                    Some(plan) => plan,
                    None => Plan::choose(c, date, from, to).await?,
                };
                tracing::debug!(step = STEP_NAME, %date, ?plan, "report plan");
                // A first run (no row of the date, the usual case) inserts plainly: the conflict
                // check of an upsert costs ~25% more per row. Rows that exist (a re-run) are
                // upserted. A concurrent run of the same date makes the plain insert fail on the
                // unique key (and roll back) rather than write twice.
                let existing: Count = dispatch!(&mut *c, c => diesel::sql_query(existing.as_str())
                    .bind::<Date, _>(date)
                    .get_result(c)
                    .await)?;
                // A statement built on `aggregate_select`, with its five binds.
                macro_rules! aggregation {
                    ($sql:expr) => {
                        diesel::sql_query($sql)
                            .bind::<Date, _>(date)
                            .bind::<Timestamp, _>(now)
                            .bind::<Timestamp, _>(now)
                            .bind::<Timestamp, _>(from)
                            .bind::<Timestamp, _>(to)
                    };
                }
                let first_run = existing.n == 0;
                let conflict = if first_run { "" } else { upsert.as_str() };
                let insert = format!("{INSERT_INTO}{}{conflict}", aggregate_select(backend, plan));
                if first_run && backend == Backend::Postgres {
                    // The insert's own rows are the date's rows: their totals come back with it
                    // (a data-modifying CTE), instead of a second read of the report table.
                    let with_totals = placeholders(&returning_totals(&insert), backend);
                    let totals: Summary = dispatch!(&mut *c, c =>
                        aggregation!(with_totals.as_str()).get_result(c).await)?;
                    return Ok((totals.report_rows, totals.transactions, deleted));
                }
                let insert = placeholders(&insert, backend);
                dispatch!(&mut *c, c => aggregation!(insert.as_str()).execute(c).await)?;
                let totals: Summary = dispatch!(&mut *c, c => diesel::sql_query(summary.as_str())
                    .bind::<Date, _>(date)
                    .get_result(c)
                    .await)?;
                Ok::<_, DbError>((totals.report_rows, totals.transactions, deleted))
            })
        })
        .await
    }
}

#[async_trait]
impl Tasklet for DailyReport {
    async fn run(&self, ctx: &mut StepContext) -> anyhow::Result<()> {
        let (rows, transactions, deleted) = self.generate(ctx.now()).await?;
        ctx.progress.counts.read_count = transactions;
        ctx.progress.counts.write_count = rows;
        ctx.progress.counts.commit_count = 1;
        ctx.progress.add_counter("report_rows", rows);
        ctx.progress.add_counter("deleted_rows", deleted as i64);
        Ok(())
    }
}
