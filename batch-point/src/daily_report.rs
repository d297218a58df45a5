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
//! ([`Plan::choose`](crate::report_plan::Plan::choose); measured by `benches/report_bench.rs`, see the crate's README):
//! - PostgreSQL, few transactions per user: in the aggregate's own pass,
//!   `MAX(ARRAY[µs since the window's start, id, balance_snapshot])[3]`, a hash aggregate (no
//!   sort of the transactions); many per user (≥ [`POSTGRES_PER_USER_MIN_TRANSACTIONS`](crate::report_plan::POSTGRES_PER_USER_MIN_TRANSACTIONS),
//!   estimated from a sample of the day, [`transactions_per_user`](crate::report_plan::transactions_per_user)): the aggregate keeps only
//!   `MAX(created_at)` and one probe of `idx_point_user_created_at` per user fetches that transaction. Either way `work_mem`
//!   is raised for the transaction so the hash stays in memory, and the one row per user is
//!   sorted by `user_id` so the unique index is written in key order;
//! - MariaDB/MySQL: `GROUP_CONCAT(balance_snapshot ORDER BY created_at DESC, id DESC LIMIT 1)`,
//!   with `idx_point_user_created_at` ignored (a full walk of it in user order, with a row
//!   lookup per entry, is what the optimizer otherwise picks, and is 3–4× slower);
//! - SQLite: with few transactions per user (< [`SQLITE_PER_USER_MIN_TRANSACTIONS`](crate::report_plan::SQLITE_PER_USER_MIN_TRANSACTIONS)) a text key
//!   `MAX(time || id || snapshot)` in the pass, else per user one probe of
//!   `idx_point_user_created_at` for the last transaction (a correlated `ORDER BY created_at DESC,
//!   id DESC LIMIT 1`); either way reading the window through `idx_point_created_at`, or the
//!   whole table when the day is most of it.

use async_trait::async_trait;
use batch_common::step::{KeyRange, StepContext, Tasklet};
use chrono::NaiveDate;
use chrono_tz::Tz;
use core_domain::{Backend, Database, DbConnection, DbError, dispatch};

use crate::report_plan::{Closing, Count, Plan, SqliteScan};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Date, Timestamp};
use diesel_async::RunQueryDsl;

/// The step's name.
pub const STEP_NAME: &str = "generateDailyReportStep";

/// `work_mem` of the report's transaction on PostgreSQL: the hash aggregate of a day keeps one
/// entry per user (~200 bytes), so 1,000,000 users stay in memory (the hash may use
/// `hash_mem_multiplier` times this). Only this transaction's server process uses it.
pub const POSTGRES_WORK_MEM: &str = "256MB";

/// The aggregation's `SELECT` for `backend` under `plan`.
///
/// Binds, in order: report_date, now, now, window start, window end; `@FROM@` and `@TO@` mark
/// where the window's bounds are used again ([`placeholders`] numbers them).
pub fn aggregate_select(backend: Backend, plan: Plan) -> String {
    aggregate_select_in(backend, plan, KeyRange::ALL)
}

/// The condition on `column` that limits a statement to the users of `range` (a partition of
/// the report), as SQL text: empty for every user. The bounds are the partition's own integers
/// (never input), written as literals so the statement's binds stay the same.
fn users_in(range: KeyRange, column: &str) -> String {
    if range.is_all() {
        String::new()
    } else {
        format!(" AND {column} BETWEEN {} AND {}", range.from, range.to)
    }
}

/// [`aggregate_select`] for the users of `range` only (a partition of the report).
pub fn aggregate_select_in(backend: Backend, plan: Plan, range: KeyRange) -> String {
    let users = users_in(range, "user_id");
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
             FROM {from} WHERE created_at >= ? AND created_at < ?{users} GROUP BY user_id{order} "
        ),
        // The aggregate in a derived table (sorted by user on PostgreSQL), then one probe per
        // user at its last instant; the transactions at that very instant are few, sorted by id.
        None => format!(
            "SELECT a.user_id, ?, a.e, a.u, a.c, \
             (SELECT p.balance_snapshot FROM point p WHERE p.user_id = a.user_id AND p.created_at = a.l \
             ORDER BY p.id DESC LIMIT 1), a.ec, a.uc, a.cc, a.f, a.l, ?, ? \
             FROM (SELECT user_id, {SUMS}, {COUNTS} FROM {from} \
             WHERE created_at >= ? AND created_at < ?{users} GROUP BY user_id{order}) a "
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

/// Rows of the date (of the users `users` names) whose user has no transaction in the window any
/// more. Binds: report_date, window start, window end.
fn delete_stale(users: &str) -> String {
    format!(
        "DELETE FROM daily_point_report WHERE report_date = ?{users} AND NOT EXISTS \
         (SELECT 1 FROM point p WHERE p.user_id = daily_point_report.user_id AND p.created_at >= ? AND p.created_at < ?)"
    )
}

/// Binds: report_date. `{int}` is the backend's 64-bit integer cast target.
fn summary_sql(backend: Backend, users: &str) -> String {
    let int = if backend == Backend::Mysql {
        "SIGNED"
    } else {
        "BIGINT"
    };
    format!(
        "SELECT CAST(COUNT(*) AS {int}) AS report_rows, \
         CAST(COALESCE(SUM(earn_count + use_count + cancel_count), 0) AS {int}) AS transactions \
         FROM daily_point_report WHERE report_date = ?{users}"
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

/// The report for one date (of the users of one key range, in a partition), as a tasklet.
pub struct DailyReport {
    db: Database,
    date: NaiveDate,
    tz: Tz,
    plan: Option<Plan>,
    users: KeyRange,
}

impl DailyReport {
    /// The report of `date` (a business day in `tz`).
    pub fn new(db: Database, date: NaiveDate, tz: Tz) -> Self {
        DailyReport {
            db,
            date,
            tz,
            plan: None,
            users: KeyRange::ALL,
        }
    }

    /// Only the users whose id is in `range` (a partition of the report): their rows of the
    /// date are replaced in the partition's own transaction; the other users' are not touched.
    pub fn in_range(mut self, range: KeyRange) -> Self {
        self.users = range;
        self
    }

    /// Runs `plan` instead of the one [`Plan::choose`](crate::report_plan::Plan::choose) picks (tests and benchmarks compare them).
    pub fn with_plan(mut self, plan: Plan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Writes the report in one transaction; returns (report rows, transactions aggregated, rows deleted).
    pub async fn generate(&self, now: chrono::NaiveDateTime) -> Result<(i64, i64, usize), DbError> {
        let (from, to) = batch_common::day_window_utc(self.date, self.tz);
        let backend = self.db.backend();
        let upsert = upsert_clause(backend);
        let users = users_in(self.users, "user_id");
        let delete = placeholders(&delete_stale(&users), backend);
        let summary = placeholders(&summary_sql(backend, &users), backend);
        let existing = placeholders(
            &format!(
                "SELECT CAST(COUNT(*) AS {}) AS n FROM (SELECT 1 AS one FROM daily_point_report WHERE report_date = ?{users} LIMIT 1) x",
                if backend == Backend::Mysql {
                    "SIGNED"
                } else {
                    "BIGINT"
                }
            ),
            backend,
        );
        let range = self.users;
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
                let insert = format!(
                    "{INSERT_INTO}{}{conflict}",
                    aggregate_select_in(backend, plan, range)
                );
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
