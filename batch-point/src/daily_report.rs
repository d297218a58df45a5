//! **generateDailyReportStep**: one row per user with point activity on the report date.
//!
//! The day is `[date 00:00, date+1 00:00)` in `[batch] timezone`, converted to UTC. The whole
//! day is aggregated by the database in one `INSERT … SELECT … GROUP BY` (an upsert on
//! `(user_id, report_date)`) preceded by a `DELETE` of rows of users who no longer have activity
//! that day, in one transaction: a crash leaves all or nothing, and re-running the date leaves
//! exactly the same rows (a row whose values did not change keeps its `updated_at`).
//! The last transaction of the day (by `created_at`, ties by id) gives `balance_snapshot`.

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

/// The aggregation (shared by every backend); `{upsert}` is the backend's conflict clause.
/// Binds: report_date, now, now, window start, window end.
const AGGREGATE: &str = "INSERT INTO daily_point_report (user_id, report_date, earn_amount, use_amount, \
cancel_amount, balance_snapshot, earn_count, use_count, cancel_count, first_transaction_at, \
last_transaction_at, created_at, updated_at) \
SELECT user_id, ?, \
 SUM(CASE WHEN type = 'EARN' THEN amount ELSE 0 END), \
 SUM(CASE WHEN type = 'USE' THEN amount ELSE 0 END), \
 SUM(CASE WHEN type = 'CANCEL' THEN amount ELSE 0 END), \
 MAX(CASE WHEN rn = 1 THEN balance_snapshot END), \
 SUM(CASE WHEN type = 'EARN' THEN 1 ELSE 0 END), \
 SUM(CASE WHEN type = 'USE' THEN 1 ELSE 0 END), \
 SUM(CASE WHEN type = 'CANCEL' THEN 1 ELSE 0 END), \
 MIN(created_at), MAX(created_at), ?, ? \
FROM (SELECT user_id, type, amount, balance_snapshot, created_at, \
      ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY created_at DESC, id DESC) AS rn \
      FROM point WHERE created_at >= ? AND created_at < ?) day_points \
WHERE 1 = 1 \
GROUP BY user_id ";

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

#[derive(QueryableByName)]
struct Summary {
    #[diesel(sql_type = BigInt)]
    report_rows: i64,
    #[diesel(sql_type = BigInt)]
    transactions: i64,
}

/// PostgreSQL and MySQL use `$n` / `?` placeholders differently: rewrite `?` for PostgreSQL.
fn placeholders(sql: &str, backend: Backend) -> String {
    if backend != Backend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// The report for one date, as a tasklet.
pub struct DailyReport {
    db: Database,
    date: NaiveDate,
    tz: Tz,
}

impl DailyReport {
    /// The report of `date` (a business day in `tz`).
    pub fn new(db: Database, date: NaiveDate, tz: Tz) -> Self {
        DailyReport { db, date, tz }
    }

    /// Writes the report in one transaction; returns (report rows, transactions aggregated, rows deleted).
    pub async fn generate(&self, now: chrono::NaiveDateTime) -> Result<(i64, i64, usize), DbError> {
        let (from, to) = batch_common::day_window_utc(self.date, self.tz);
        let backend = self.db.backend();
        let insert = placeholders(&format!("{AGGREGATE}{}", upsert_clause(backend)), backend);
        let delete = placeholders(DELETE_STALE, backend);
        let summary = placeholders(&summary_sql(backend), backend);
        let date = self.date;
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
                dispatch!(&mut *c, c => diesel::sql_query(insert.as_str())
                    .bind::<Date, _>(date)
                    .bind::<Timestamp, _>(now)
                    .bind::<Timestamp, _>(now)
                    .bind::<Timestamp, _>(from)
                    .bind::<Timestamp, _>(to)
                    .execute(c)
                    .await)?;
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
        ctx.progress.read_count = transactions;
        ctx.progress.write_count = rows;
        ctx.progress.commit_count = 1;
        ctx.progress.add_counter("report_rows", rows);
        ctx.progress.add_counter("deleted_rows", deleted as i64);
        Ok(())
    }
}
