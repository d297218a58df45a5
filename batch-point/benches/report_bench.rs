//! generateDailyReportStep against the fastest single statement found, per backend and data
//! shape (issue 11). Run with
//!
//! ```sh
//! cargo bench -p batch-point --bench report_bench
//! ```
//!
//! For each backend (PostgreSQL and MariaDB on loopback, SQLite in a temporary file) and each
//! data shape — ~5, ~25 and ~200 transactions per user, with ids in time order (as an online
//! service inserts them) or not — it seeds the report day (plus 10% on each neighbouring day),
//! then, `REPORT_BENCH_RUNS` rounds, each run on an empty report table after a checkpoint (so no
//! checkpoint's writes land inside one measurement and not another), the step first in even
//! rounds and last in odd ones:
//! - every formulation as one plain `INSERT … SELECT … GROUP BY` filling every column of
//!   `daily_point_report` (the window form the step used before, `DISTINCT ON` + join, ordered
//!   aggregates, the aggregate followed by one index probe per user, and each backend's own
//!   tricks; the step's own statement under each of its plans among them), each in a new session
//!   of its own (connecting is not timed), as the step runs in one;
//! - the step itself, through its own code path (`DailyReport::generate`, the very call the
//!   launcher's tasklet makes, choosing its plan as it does there) in a child process of this
//!   bench, whose peak RSS is tracked.
//!
//! It prints each round's times (stderr), the medians, the ratio of each to the fastest
//! formulation, the step's ratio to the fastest both as a ratio of medians and as the median of
//! the per-round ratios (the step and the formulation ran seconds apart in each round, so the
//! VM's slower drift cancels out of those), the plan the step chose, its peak RSS, and checks
//! that the step and every formulation wrote the same rows.
//!
//! Settings (environment): `REPORT_BENCH_BACKENDS` (default `postgres,mysql,sqlite`),
//! `REPORT_BENCH_TX_POSTGRES` (default 2,000,000 transactions on the day),
//! `REPORT_BENCH_TX_MYSQL` and `REPORT_BENCH_TX_SQLITE` (default 500,000 each: they are
//! single-threaded and slower to seed), `REPORT_BENCH_RUNS` (default 3), `REPORT_BENCH_SHAPES`
//! (default all: a comma-separated list of shape numbers 1–6 in the order above),
//! `REPORT_BENCH_PER_USER` (default `5,25,200`: the transactions per user of the shapes, each
//! in both id orders),
//! `REPORT_BENCH_ONLY` (default all: only the formulations whose name contains one of these
//! comma-separated parts, e.g. `MAX(ARRAY` — more rounds in the same time for the close ones),
//! `BATCH_BENCH_POSTGRES_URL`, `REPORT_BENCH_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`).
//!
//! `cargo test --all-targets` builds this target and runs it without `--bench`: it then exits at once.

use std::process::{Command, Stdio};
use std::time::Instant;

use batch_point::daily_report::{INSERT_INTO, POSTGRES_WORK_MEM, aggregate_select};
use batch_point::report_plan::{Closing, Plan, SqliteScan};
use batch_testkit::bench::{postgres_admin_url, wait_tracking};
use chrono::NaiveDateTime;
use core_domain::{Backend, Database, DatabaseUrl, DbConnection, PoolOptions, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

const DATE: &str = "2026-11-20";
/// The KST day 2026-11-20 is [2026-11-19 15:00, 2026-11-20 15:00) UTC.
const FROM: &str = "2026-11-19 15:00:00";
const TO: &str = "2026-11-20 15:00:00";
const NOW: &str = "2026-11-21 01:00:00";
const DAY_MS: i64 = 86_400_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // The child that runs the step: `report_bench --step <database url>`.
    if let Some(i) = args.iter().position(|a| a == "--step") {
        let url = args.get(i + 1).cloned().unwrap_or_default();
        if let Err(e) = rt().block_on(step_child(&url)) {
            eprintln!("report_bench --step failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("report_bench: run it with `cargo bench -p batch-point --bench report_bench`");
        return;
    }
    if let Err(e) = rt().block_on(run()) {
        eprintln!("report_bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("a timestamp")
}

/// Runs the step as the launcher's tasklet does and prints `<ms> <report rows> <transactions>
/// <plan>`, the plan being the one `Plan::choose` gives (asked before the timed run, in the same
/// state; the step asks again inside it).
async fn step_child(url: &str) -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(url)?;
    let db = Database::connect_unchecked(&url, &PoolOptions::default()).await?;
    let date = DATE.parse()?;
    let plan = {
        let mut conn = db.get().await?;
        Plan::choose(&mut conn, date, ts(FROM), ts(TO)).await?
    };
    let report = batch_point::daily_report::DailyReport::new(db, date, chrono_tz::Asia::Seoul);
    let t = Instant::now();
    let (rows, transactions, _) = report.generate(ts(NOW)).await?;
    println!(
        "{} {rows} {transactions} {}",
        t.elapsed().as_millis(),
        plan_key(plan)
    );
    Ok(())
}

/// A plan as one word (the step child's output).
fn plan_key(plan: Plan) -> String {
    format!("{:?}/{:?}", plan.closing, plan.scan)
}

/// One data shape.
#[derive(Clone, Copy)]
struct Shape {
    per_user: i64,
    time_ordered: bool,
}

impl Shape {
    fn label(self) -> String {
        format!(
            "{:>3}/user, ids {}",
            self.per_user,
            if self.time_ordered {
                "in time order"
            } else {
                "scattered    "
            }
        )
    }
}

/// The shapes: each of `per_user` (default 5, 25, 200 transactions per user, or
/// `REPORT_BENCH_PER_USER`) with ids in time order, then scattered.
fn shapes() -> anyhow::Result<Vec<Shape>> {
    let per_user: Vec<i64> = match std::env::var("REPORT_BENCH_PER_USER") {
        Ok(v) => v
            .split(',')
            .map(|s| match s.trim().parse::<i64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(anyhow::anyhow!(
                    "REPORT_BENCH_PER_USER: {s:?} is not a count of transactions per user (>= 1)"
                )),
            })
            .collect::<Result<_, _>>()?,
        Err(_) => vec![5, 25, 200],
    };
    Ok(per_user
        .into_iter()
        .flat_map(|per_user| {
            [true, false].map(|time_ordered| Shape {
                per_user,
                time_ordered,
            })
        })
        .collect())
}

fn env_i64(name: &str, default: i64) -> anyhow::Result<i64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is not a number: {e}")),
        Err(_) => Ok(default),
    }
}

async fn exec(conn: &mut DbConnection, sql: &str) -> anyhow::Result<()> {
    conn.batch_execute(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {sql}"))
}

/// A timestamp literal of the backend.
fn lit(backend: Backend, t: &str) -> String {
    match backend {
        Backend::Postgres => format!("TIMESTAMP '{t}'"),
        _ => format!("'{t}'"),
    }
}

fn date_lit(backend: Backend) -> String {
    match backend {
        Backend::Postgres => format!("DATE '{DATE}'"),
        _ => format!("'{DATE}'"),
    }
}

/// The step's own `SELECT` under `plan`, with its binds written in as literals.
fn step_select(backend: Backend, plan: Plan) -> String {
    let sql = aggregate_select(backend, plan)
        .replace("@FROM@", &lit(backend, FROM))
        .replace("@TO@", &lit(backend, TO));
    let values = [
        date_lit(backend),
        lit(backend, NOW),
        lit(backend, NOW),
        lit(backend, FROM),
        lit(backend, TO),
    ];
    let mut out = String::new();
    let mut it = values.iter();
    for ch in sql.chars() {
        if ch == '?' {
            out.push_str(it.next().expect("five binds"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// One formulation: a `SELECT` feeding [`INSERT_INTO`].
struct Formulation {
    name: &'static str,
    select: String,
    /// The step's plan whose statement this is, if it is one.
    plan: Option<Plan>,
}

fn form(name: &'static str, select: String) -> Formulation {
    Formulation {
        name,
        select,
        plan: None,
    }
}

/// The step's own statement under `plan`.
fn step_form(
    backend: Backend,
    name: &'static str,
    closing: Closing,
    scan: SqliteScan,
) -> Formulation {
    let plan = Plan { closing, scan };
    Formulation {
        name,
        select: step_select(backend, plan),
        plan: Some(plan),
    }
}

/// The formulations measured on `backend`.
fn formulations(backend: Backend) -> Vec<Formulation> {
    let d = date_lit(backend);
    let now = lit(backend, NOW);
    let w = format!(
        "created_at >= {} AND created_at < {}",
        lit(backend, FROM),
        lit(backend, TO)
    );
    let sums = "SUM(CASE WHEN type = 'EARN' THEN amount ELSE 0 END) e, \
        SUM(CASE WHEN type = 'USE' THEN amount ELSE 0 END) u, \
        SUM(CASE WHEN type = 'CANCEL' THEN amount ELSE 0 END) c";
    let counts = "SUM(CASE WHEN type = 'EARN' THEN 1 ELSE 0 END) ec, \
        SUM(CASE WHEN type = 'USE' THEN 1 ELSE 0 END) uc, \
        SUM(CASE WHEN type = 'CANCEL' THEN 1 ELSE 0 END) cc, MIN(created_at) f, MAX(created_at) l";
    let window = |from: &str| {
        format!(
            "SELECT user_id, {d}, {sums}, MAX(CASE WHEN rn = 1 THEN balance_snapshot END), {counts}, {now}, {now} \
             FROM (SELECT user_id, type, amount, balance_snapshot, created_at, \
             ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY created_at DESC, id DESC) AS rn \
             FROM {from} WHERE {w}) day_points GROUP BY user_id"
        )
    };
    let agg_join = |from: &str, last: &str| {
        format!(
            "SELECT a.user_id, {d}, a.e, a.u, a.c, l.balance_snapshot, a.ec, a.uc, a.cc, a.f, a.l, {now}, {now} \
             FROM (SELECT user_id, {sums}, {counts} FROM {from} WHERE {w} GROUP BY user_id) a \
             JOIN ({last}) l ON l.user_id = a.user_id"
        )
    };
    let plain = |from: &str, closing: &str| {
        format!(
            "SELECT user_id, {d}, {sums}, {closing}, {counts}, {now}, {now} FROM {from} WHERE {w} GROUP BY user_id"
        )
    };
    // The aggregate, then one probe per user at its last instant (the step's per-user plan
    // without its ORDER BY user_id).
    let probe = |from: &str| {
        format!(
            "SELECT a.user_id, {d}, a.e, a.u, a.c, (SELECT p.balance_snapshot FROM point p \
             WHERE p.user_id = a.user_id AND p.created_at = a.l ORDER BY p.id DESC LIMIT 1), \
             a.ec, a.uc, a.cc, a.f, a.l, {now}, {now} \
             FROM (SELECT user_id, {sums}, {counts} FROM {from} WHERE {w} GROUP BY user_id) a"
        )
    };
    let range = SqliteScan::CreatedAtRange;
    match backend {
        Backend::Postgres => {
            let distinct_on = agg_join(
                "point",
                &format!(
                    "SELECT DISTINCT ON (user_id) user_id, balance_snapshot FROM point WHERE {w} \
                     ORDER BY user_id, created_at DESC, id DESC"
                ),
            );
            vec![
                form("window (ROW_NUMBER)", window("point")),
                form(
                    "ordered aggregate array_agg",
                    plain(
                        "point",
                        "(array_agg(balance_snapshot ORDER BY created_at DESC, id DESC))[1]",
                    ),
                ),
                form("DISTINCT ON + join", distinct_on.clone()),
                form(
                    "DISTINCT ON + join, ORDER BY user_id",
                    format!("{distinct_on} ORDER BY a.user_id"),
                ),
                form(
                    "MAX(ARRAY[µs, id, snapshot]), hash order",
                    plain(
                        "point",
                        &format!(
                            "(MAX(ARRAY[ROUND(date_part('epoch', created_at - {}) * 1000000)::BIGINT, id, balance_snapshot]))[3]",
                            lit(backend, FROM)
                        ),
                    ),
                ),
                step_form(
                    backend,
                    "MAX(ARRAY[µs, id, snapshot]), ORDER BY user_id",
                    Closing::InPass,
                    range,
                ),
                form("probe per user, hash order", probe("point")),
                step_form(
                    backend,
                    "probe per user, ORDER BY user_id",
                    Closing::PerUser,
                    range,
                ),
            ]
        }
        Backend::Mysql => {
            let hint = "point IGNORE INDEX (idx_point_user_created_at)";
            vec![
                form("window (ROW_NUMBER)", window("point")),
                form("window, ignore (user_id, created_at)", window(hint)),
                form(
                    "window rn = 1 + join",
                    agg_join(
                        hint,
                        &format!(
                            "SELECT user_id, balance_snapshot FROM (SELECT user_id, balance_snapshot, \
                             ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY created_at DESC, id DESC) AS rn \
                             FROM {hint} WHERE {w}) x WHERE rn = 1"
                        ),
                    ),
                ),
                form(
                    "GROUP_CONCAT(… LIMIT 1)",
                    plain(
                        "point",
                        "CAST(GROUP_CONCAT(balance_snapshot ORDER BY created_at DESC, id DESC LIMIT 1) AS SIGNED)",
                    ),
                ),
                form(
                    "MAX(CONCAT(time, id, snapshot)), ignore idx",
                    plain(
                        hint,
                        "CAST(SUBSTRING(MAX(CONCAT(DATE_FORMAT(created_at, '%Y%m%d%H%i%s%f'), LPAD(id, 20, '0'), balance_snapshot)), 41) AS SIGNED)",
                    ),
                ),
                step_form(
                    backend,
                    "GROUP_CONCAT(… LIMIT 1), ignore idx",
                    Closing::InPass,
                    range,
                ),
                step_form(
                    backend,
                    "probe per user, ignore idx",
                    Closing::PerUser,
                    range,
                ),
            ]
        }
        Backend::Sqlite => {
            let correlated = |from: &str| {
                plain(
                    from,
                    &format!(
                        "(SELECT p.balance_snapshot FROM point p WHERE p.user_id = point.user_id \
                         AND p.created_at >= '{FROM}' AND p.created_at < '{TO}' \
                         ORDER BY p.created_at DESC, p.id DESC LIMIT 1)"
                    ),
                )
            };
            vec![
                form("window (ROW_NUMBER)", window("point")),
                form("window, full scan", window("point NOT INDEXED")),
                step_form(
                    backend,
                    "MAX(time || id || snapshot), full scan",
                    Closing::InPass,
                    SqliteScan::FullTable,
                ),
                step_form(
                    backend,
                    "MAX(time || id || snapshot), created_at range",
                    Closing::InPass,
                    range,
                ),
                form("correlated LIMIT 1, no hint", correlated("point")),
                step_form(
                    backend,
                    "correlated LIMIT 1, created_at range",
                    Closing::PerUser,
                    range,
                ),
                step_form(
                    backend,
                    "correlated LIMIT 1, full scan",
                    Closing::PerUser,
                    SqliteScan::FullTable,
                ),
            ]
        }
    }
}

/// [`formulations`] of `backend`, those whose name contains one of `only`'s comma-separated parts
/// (all when `None`).
fn selected(backend: Backend, only: Option<&str>) -> anyhow::Result<Vec<Formulation>> {
    let all = formulations(backend);
    let Some(only) = only else {
        return Ok(all);
    };
    let parts: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|f| parts.iter().any(|p| f.name.contains(p)))
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "REPORT_BENCH_ONLY: {only:?} names no formulation of {}",
        backend.as_str()
    );
    Ok(chosen)
}

/// Seeds `n` transactions on the report day for `shape` (plus 10% on each neighbouring day).
async fn seed(
    conn: &mut DbConnection,
    backend: Backend,
    n: i64,
    shape: Shape,
) -> anyhow::Result<()> {
    let users = (n / shape.per_user).max(1);
    let neighbours = n / 10;
    // In time order, ids follow time: the day before first, then the day, then the day after.
    let days = [
        ("2026-11-18 15:00:00", neighbours),
        (FROM, n),
        ("2026-11-20 15:00:00", neighbours),
    ];
    for (start, count) in days {
        // 48271 is prime and divides no user count used here, so every user gets the same share.
        let offset_ms = if shape.time_ordered {
            format!("(g * {DAY_MS} / {count})")
        } else {
            format!("((g * 2654435761) % {DAY_MS})")
        };
        let user = format!("(1 + (g * 48271) % {users})");
        let sql = match backend {
            Backend::Postgres => format!(
                "INSERT INTO point (user_id, amount, type, description, balance_snapshot, point_balance_id, created_at) \
                 SELECT {user}, 100 + g % 900, (ARRAY['EARN','EARN','USE','CANCEL'])[1 + g % 4], NULL, g % 100000, {user}, \
                 TIMESTAMP '{start}' + {offset_ms} * INTERVAL '1 millisecond' \
                 FROM generate_series(1::bigint, {count}) g"
            ),
            Backend::Mysql => format!(
                "INSERT INTO point (user_id, amount, type, description, balance_snapshot, point_balance_id, created_at) \
                 SELECT {user}, 100 + g % 900, ELT(1 + g % 4, 'EARN','EARN','USE','CANCEL'), NULL, g % 100000, {user}, \
                 TIMESTAMP '{start}' + INTERVAL {offset_ms} * 1000 MICROSECOND \
                 FROM (SELECT seq AS g FROM seq_1_to_{count}) s"
            ),
            Backend::Sqlite => {
                let epoch = ts(start).and_utc().timestamp();
                format!(
                    "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {count}) \
                     INSERT INTO point (user_id, amount, type, description, balance_snapshot, point_balance_id, created_at) \
                     SELECT {user}, 100 + g % 900, CASE g % 4 WHEN 2 THEN 'USE' WHEN 3 THEN 'CANCEL' ELSE 'EARN' END, NULL, \
                     g % 100000, {user}, strftime('%Y-%m-%d %H:%M:%f', {epoch} + {offset_ms} / 1000.0, 'unixepoch') FROM s"
                )
            }
        };
        exec(conn, &sql).await?;
    }
    match backend {
        Backend::Postgres => exec(conn, "VACUUM ANALYZE point").await,
        Backend::Mysql => exec(conn, "ANALYZE TABLE point").await,
        Backend::Sqlite => exec(conn, "ANALYZE").await,
    }
}

async fn clear_report(conn: &mut DbConnection, backend: Backend) -> anyhow::Result<()> {
    match backend {
        Backend::Sqlite => exec(conn, "DELETE FROM daily_point_report").await,
        _ => exec(conn, "TRUNCATE TABLE daily_point_report").await,
    }
}

#[derive(QueryableByName, PartialEq, Eq, Debug, Clone, Copy)]
struct Checksum {
    #[diesel(sql_type = BigInt)]
    report_rows: i64,
    #[diesel(sql_type = BigInt)]
    snapshots: i64,
    #[diesel(sql_type = BigInt)]
    amounts: i64,
    #[diesel(sql_type = BigInt)]
    counts: i64,
    #[diesel(sql_type = BigInt)]
    edges: i64,
}

/// A fingerprint of the report rows of the day (balances, amounts, counts, first/last times).
async fn checksum(conn: &mut DbConnection, backend: Backend) -> anyhow::Result<Checksum> {
    let (int, secs) = match backend {
        Backend::Postgres => (
            "BIGINT",
            "EXTRACT(EPOCH FROM last_transaction_at) * 1000 - EXTRACT(EPOCH FROM first_transaction_at)",
        ),
        Backend::Mysql => (
            "SIGNED",
            "UNIX_TIMESTAMP(last_transaction_at) * 1000 - UNIX_TIMESTAMP(first_transaction_at)",
        ),
        Backend::Sqlite => (
            "BIGINT",
            "julianday(last_transaction_at) * 86400000 - julianday(first_transaction_at) * 86400",
        ),
    };
    let sql = format!(
        "SELECT CAST(COUNT(*) AS {int}) AS report_rows, CAST(COALESCE(SUM(balance_snapshot), 0) AS {int}) AS snapshots, \
         CAST(COALESCE(SUM(earn_amount + 3 * use_amount + 7 * cancel_amount), 0) AS {int}) AS amounts, \
         CAST(COALESCE(SUM(earn_count + 3 * use_count + 7 * cancel_count), 0) AS {int}) AS counts, \
         CAST(COALESCE(SUM(ROUND({secs})), 0) AS {int}) AS edges \
         FROM daily_point_report WHERE report_date = {}",
        date_lit(backend)
    );
    Ok(dispatch!(conn, c => diesel::sql_query(sql.as_str()).get_result::<Checksum>(c).await)?)
}

/// Before each timed run: the server's dirty pages and log are written out now, so that no
/// checkpoint (each run writes ~150 MB of WAL on PostgreSQL at 400,000 users, and
/// `max_wal_size` is 1 GB) lands inside one measurement and not another.
async fn settle(conn: &mut DbConnection, backend: Backend) -> anyhow::Result<()> {
    match backend {
        Backend::Postgres => exec(conn, "CHECKPOINT").await,
        Backend::Sqlite => exec(conn, "PRAGMA wal_checkpoint(TRUNCATE)").await,
        // InnoDB has no statement that forces a checkpoint; its log is written at each commit.
        Backend::Mysql => Ok(()),
    }
}

/// Runs one formulation as an `INSERT … SELECT` on an empty report table; returns its time (ms).
async fn run_formulation(
    conn: &mut DbConnection,
    backend: Backend,
    select: &str,
) -> anyhow::Result<f64> {
    let insert = format!("{INSERT_INTO}{select}");
    let t = Instant::now();
    if backend == Backend::Postgres {
        // The same session setting as the step's transaction, so the plans compete on equal terms.
        exec(conn, "BEGIN").await?;
        exec(conn, &format!("SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'")).await?;
        exec(conn, &insert).await?;
        exec(conn, "COMMIT").await?;
    } else {
        exec(conn, &insert).await?;
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// One run of the step.
struct StepRun {
    /// Time inside `generate` (ms).
    ms: f64,
    /// Peak RSS of the child process (kB).
    rss_kb: u64,
    /// The plan it chose ([`plan_key`]).
    plan: String,
}

/// Runs the step on an empty, settled report table and checks its rows.
async fn timed_step(
    conn: &mut DbConnection,
    backend: Backend,
    url: &str,
    expected: Checksum,
) -> anyhow::Result<StepRun> {
    clear_report(conn, backend).await?;
    settle(conn, backend).await?;
    let (run, rows) = run_step(url)?;
    let got = checksum(conn, backend).await?;
    anyhow::ensure!(
        rows == got.report_rows && got == expected,
        "the step wrote {rows} rows ({got:?}), expected {expected:?}"
    );
    Ok(run)
}

/// Runs the step in a child process; returns its run and the report rows it counted.
fn run_step(url: &str) -> anyhow::Result<(StepRun, i64)> {
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("out");
    let child = Command::new(std::env::current_exe()?)
        .args(["--step", url])
        .stdout(Stdio::from(std::fs::File::create(&out_path)?))
        .spawn()?;
    let stats = wait_tracking(child)?;
    let out = std::fs::read_to_string(&out_path)?;
    let mut it = out.split_whitespace();
    let ms: f64 = it.next().unwrap_or("").parse()?;
    let rows: i64 = it.next().unwrap_or("").parse()?;
    let _transactions = it.next();
    let plan = it.next().unwrap_or("?").to_owned();
    Ok((
        StepRun {
            ms,
            rss_kb: stats.peak_rss_kb,
            plan,
        },
        rows,
    ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A fresh database of `backend` for one shape; returns its URL.
async fn fresh_database(
    backend: Backend,
    dir: &std::path::Path,
    shape_no: usize,
) -> anyhow::Result<String> {
    let url = match backend {
        Backend::Sqlite => format!(
            "sqlite://{}",
            dir.join(format!("report_bench_{shape_no}.db")).display()
        ),
        Backend::Postgres => {
            let admin = DatabaseUrl::parse(&postgres_admin_url())?;
            let mut c = DbConnection::establish(&admin).await?;
            exec(&mut c, "DROP DATABASE IF EXISTS report_bench WITH (FORCE)").await?;
            exec(&mut c, "CREATE DATABASE report_bench").await?;
            postgres_admin_url()
                .rsplit_once('/')
                .map(|(base, _)| format!("{base}/report_bench"))
                .expect("a database URL with a path")
        }
        Backend::Mysql => {
            let base = std::env::var("REPORT_BENCH_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
            let base = base.trim_end_matches('/').to_owned();
            let mut c =
                DbConnection::establish(&DatabaseUrl::parse(&format!("{base}/mysql"))?).await?;
            exec(&mut c, "DROP DATABASE IF EXISTS report_bench").await?;
            exec(&mut c, "CREATE DATABASE report_bench").await?;
            format!("{base}/report_bench")
        }
    };
    core_domain::migrate::run_pending(
        &DatabaseUrl::parse(&url)?,
        batch_common::repository::BASE_MIGRATIONS,
    )
    .await?;
    Ok(url)
}

async fn drop_database(backend: Backend) -> anyhow::Result<()> {
    match backend {
        Backend::Sqlite => Ok(()),
        Backend::Postgres => {
            let mut c =
                DbConnection::establish(&DatabaseUrl::parse(&postgres_admin_url())?).await?;
            exec(&mut c, "DROP DATABASE IF EXISTS report_bench WITH (FORCE)").await
        }
        Backend::Mysql => {
            let base = std::env::var("REPORT_BENCH_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
            let base = base.trim_end_matches('/').to_owned();
            let mut c =
                DbConnection::establish(&DatabaseUrl::parse(&format!("{base}/mysql"))?).await?;
            exec(&mut c, "DROP DATABASE IF EXISTS report_bench").await
        }
    }
}

/// One result line: a backend and shape, every round's times.
struct Line {
    backend: Backend,
    shape: Shape,
    tx: i64,
    /// The step's time per round (ms).
    step: Vec<f64>,
    /// The plans the step chose (one, unless the choice changed between rounds).
    plans: Vec<String>,
    rerun_ms: f64,
    rss_kb: u64,
    /// (name, the step's plan it is, its time per round).
    forms: Vec<(&'static str, Option<Plan>, Vec<f64>)>,
}

impl Line {
    /// The formulation with the lowest median, and that median.
    fn fastest(&self) -> (usize, f64) {
        self.forms
            .iter()
            .enumerate()
            .map(|(i, (_, _, v))| (i, median(&mut v.clone())))
            .fold(
                (0, f64::INFINITY),
                |best, x| if x.1 < best.1 { x } else { best },
            )
    }

    /// The median over rounds of the step's time over formulation `i`'s in the same round: the
    /// two ran seconds apart, so the VM's slower drift cancels out of each round's ratio.
    fn paired(&self, i: usize) -> f64 {
        let mut ratios: Vec<f64> = self
            .step
            .iter()
            .zip(&self.forms[i].2)
            .map(|(s, f)| s / f)
            .collect();
        median(&mut ratios)
    }
}

async fn run() -> anyhow::Result<()> {
    let backends: Vec<Backend> = std::env::var("REPORT_BENCH_BACKENDS")
        .unwrap_or_else(|_| "postgres,mysql,sqlite".into())
        .split(',')
        .map(|b| match b.trim() {
            "postgres" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            "sqlite" => Ok(Backend::Sqlite),
            other => Err(anyhow::anyhow!(
                "REPORT_BENCH_BACKENDS: unknown backend {other:?} (postgres, mysql, sqlite)"
            )),
        })
        .collect::<Result<_, _>>()?;
    let runs = env_i64("REPORT_BENCH_RUNS", 3)?.max(1);
    let all_shapes = shapes()?;
    let shapes: Vec<usize> = match std::env::var("REPORT_BENCH_SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| match s.trim().parse::<usize>() {
                Ok(n) if (1..=all_shapes.len()).contains(&n) => Ok(n),
                _ => Err(anyhow::anyhow!(
                    "REPORT_BENCH_SHAPES: {s:?} is not a shape number 1..={}",
                    all_shapes.len()
                )),
            })
            .collect::<Result<_, _>>()?,
        Err(_) => (1..=all_shapes.len()).collect(),
    };
    // `REPORT_BENCH_ONLY=MAX(ARRAY` measures only the formulations whose name contains one of
    // the comma-separated parts: more rounds in the same time for the close contenders.
    let only = std::env::var("REPORT_BENCH_ONLY").ok();
    let dir = tempfile::tempdir()?;
    let mut lines = Vec::new();
    for &backend in &backends {
        let tx = match backend {
            Backend::Postgres => env_i64("REPORT_BENCH_TX_POSTGRES", 2_000_000)?,
            Backend::Mysql => env_i64("REPORT_BENCH_TX_MYSQL", 500_000)?,
            Backend::Sqlite => env_i64("REPORT_BENCH_TX_SQLITE", 500_000)?,
        };
        for (shape_no, shape) in all_shapes.iter().copied().enumerate() {
            if !shapes.contains(&(shape_no + 1)) {
                continue;
            }
            let url = fresh_database(backend, dir.path(), shape_no).await?;
            let mut conn = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
            let t = Instant::now();
            seed(&mut conn, backend, tx, shape).await?;
            eprintln!(
                "{} {}: seeded {tx} transactions in {:.1} s",
                backend.as_str(),
                shape.label(),
                t.elapsed().as_secs_f64()
            );
            let forms = selected(backend, only.as_deref())?;
            let mut form_ms: Vec<Vec<f64>> = vec![Vec::new(); forms.len()];
            let mut step_ms = Vec::new();
            let mut plans: Vec<String> = Vec::new();
            let mut rss_kb = 0;
            // The expected rows: the first formulation's (every other one, and the step, must match).
            run_formulation(&mut conn, backend, &forms[0].select).await?;
            let expected = checksum(&mut conn, backend).await?;
            anyhow::ensure!(
                expected.report_rows == tx / shape.per_user,
                "{} wrote {} rows, expected {}",
                forms[0].name,
                expected.report_rows,
                tx / shape.per_user
            );
            for round in 0..runs {
                // The step first in even rounds and last in odd ones, so that neither it nor any
                // formulation always runs in the same place (after the seeding, say).
                let step_first = round % 2 == 0;
                let mut step = None;
                if step_first {
                    step = Some(timed_step(&mut conn, backend, &url, expected).await?);
                }
                for (i, f) in forms.iter().enumerate() {
                    clear_report(&mut conn, backend).await?;
                    settle(&mut conn, backend).await?;
                    // A session of its own, as the step has (and as a statement typed into psql
                    // would): a long-lived backend is warmer (its memory already faulted in, JIT
                    // already loaded) than the fresh one the step starts with.
                    let mut own = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
                    let ms = run_formulation(&mut own, backend, &f.select).await?;
                    drop(own);
                    let got = checksum(&mut conn, backend).await?;
                    anyhow::ensure!(
                        got == expected,
                        "{} {}: {} wrote other rows than the first formulation: {got:?} vs {expected:?}",
                        backend.as_str(),
                        shape.label(),
                        f.name
                    );
                    form_ms[i].push(ms);
                }
                if !step_first {
                    step = Some(timed_step(&mut conn, backend, &url, expected).await?);
                }
                let step = step.expect("the step ran in this round");
                rss_kb = rss_kb.max(step.rss_kb);
                if !plans.contains(&step.plan) {
                    plans.push(step.plan.clone());
                }
                step_ms.push(step.ms);
                // Each round's times, to see the spread behind the medians.
                eprintln!(
                    "  round: step {:.0} ms ({}) | {}",
                    step.ms,
                    step.plan,
                    form_ms
                        .iter()
                        .map(|v| format!("{:.0}", v.last().copied().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            // A re-run over the step's own rows (all unchanged), once.
            clear_report(&mut conn, backend).await?;
            run_step(&url)?;
            let (rerun, _) = run_step(&url)?;
            rss_kb = rss_kb.max(rerun.rss_kb);
            let line = Line {
                backend,
                shape,
                tx,
                step: step_ms,
                plans,
                rerun_ms: rerun.ms,
                rss_kb,
                forms: forms
                    .iter()
                    .zip(form_ms)
                    .map(|(f, v)| (f.name, f.plan, v))
                    .collect(),
            };
            print_line(&line);
            lines.push(line);
            drop(conn);
            drop_database(backend).await?;
        }
    }
    println!(
        "\n=== generateDailyReportStep vs the fastest single statement (medians of {runs} rounds) ==="
    );
    for line in &lines {
        print_line(line);
    }
    Ok(())
}

fn print_line(l: &Line) {
    let (fastest_i, fastest) = l.fastest();
    let step = median(&mut l.step.clone());
    let target = if l.backend == Backend::Postgres {
        1.1
    } else {
        1.3
    };
    println!(
        "{:<8} {} | {} tx, {} users | step {:>7.0} ms = {:.2}x the fastest (paired by round {:.2}x; target <= {target}x), plan {}, re-run {:.0} ms, peak RSS {:.1} MB",
        l.backend.as_str(),
        l.shape.label(),
        l.tx,
        l.tx / l.shape.per_user,
        step,
        step / fastest,
        l.paired(fastest_i),
        l.plans.join(" then "),
        l.rerun_ms,
        l.rss_kb as f64 / 1024.0
    );
    for (i, (name, plan, v)) in l.forms.iter().enumerate() {
        let ms = median(&mut v.clone());
        let chosen = plan.is_some_and(|p| l.plans.contains(&plan_key(p)));
        println!(
            "           {name:<50} {ms:>7.0} ms  {:.2}x{}{}",
            ms / fastest,
            if i == fastest_i { "  (fastest)" } else { "" },
            if chosen {
                format!("  (the step's plan; step / it paired {:.2}x)", l.paired(i))
            } else {
                String::new()
            }
        );
    }
}
