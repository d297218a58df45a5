//! pointBalanceSyncJob benchmark on PostgreSQL (issue 4). Run with
//!
//! ```sh
//! cargo build --release -p batch-launcher && cargo bench -p batch-point --bench point_bench
//! ```
//!
//! In one run it seeds 1,000,000 balances and 5,000,000 transactions for one day (plus 500,000 on
//! each neighbouring day) into a fresh database `batch_bench`, starts a private Redis on port 6390,
//! and measures, with the release `batch-launcher` binary:
//! - the mass-insertion limit: `redis-cli --pipe` of the same 1,000,000 `HSET` + `PEXPIRE`;
//! - the sync step with a cold cache (all keys missing) and a warm one (1% stale), as ratios of it,
//!   with the configured chunk size and again with `point.sync_chunk_size = 5000`;
//! - the report step against one hand-written `INSERT … SELECT … GROUP BY` for the same day;
//! - the launcher's peak RSS at 1,000,000 and 2,000,000 balances.
//!
//! It also prints what bounds the sync: Redis's busy time (main-thread CPU from `INFO cpu`, and
//! the commands' own time from `INFO commandstats`) for the mass insertion and for each sync, and
//! the launcher's CPU time.
//!
//! `cargo test --all-targets` builds this target and runs it without `--bench`: it then exits at once.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_testkit::bench::{launcher_bin, postgres_admin_url, wait_tracking};
use core_domain::{DatabaseUrl, DbConnection};

const USERS: i64 = 1_000_000;
const DAY_TX: i64 = 5_000_000;
const NEIGHBOUR_TX: i64 = 500_000;
const DATE: &str = "2026-11-20";
const REDIS_PORT: u16 = 6390;
const PREFIX: &str = "point:balance:";
const TTL_MS: u64 = 48 * 3600 * 1000;
/// The sync step is also measured with this `point.sync_chunk_size` (the main figures use the
/// configured default).
const ALT_SYNC_CHUNK: &str = "5000";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("point_bench: run it with `cargo bench -p batch-point --bench point_bench`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(run()) {
        eprintln!("point_bench failed: {e:#}");
        std::process::exit(1);
    }
}

async fn exec(conn: &mut DbConnection, sql: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    conn.batch_execute(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
    Ok(t.elapsed())
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Redis's main-thread CPU time so far (user + system, ms): its busy time, parsing included.
fn redis_cpu_ms() -> anyhow::Result<u64> {
    let info = redis_cli(&["info", "cpu"])?;
    let mut secs = 0.0;
    for line in info.lines() {
        if let Some((k, v)) = line.trim().split_once(':')
            && (k == "used_cpu_user_main_thread" || k == "used_cpu_sys_main_thread")
        {
            secs += v.parse::<f64>()?;
        }
    }
    Ok((secs * 1000.0).round() as u64)
}

/// Sum of `usec` (ms) of the given commands in `INFO commandstats` since the last `CONFIG RESETSTAT`.
fn redis_command_ms(commands: &[&str]) -> anyhow::Result<u64> {
    let info = redis_cli(&["info", "commandstats"])?;
    let mut usec = 0u64;
    for line in info.lines() {
        let Some((name, stats)) = line.trim().split_once(':') else {
            continue;
        };
        if !commands
            .iter()
            .any(|c| name.strip_prefix("cmdstat_") == Some(*c))
        {
            continue;
        }
        for kv in stats.split(',') {
            if let Some(v) = kv.strip_prefix("usec=") {
                usec += v.parse::<u64>()?;
            }
        }
    }
    Ok(usec / 1000)
}

/// Redis's busy time during some work: main-thread CPU and the commands' own time (ms).
#[derive(Clone, Copy)]
struct RedisBusy {
    cpu_ms: u64,
    command_ms: u64,
}

/// Runs `work` between a `CONFIG RESETSTAT` and a look at what Redis spent on `commands`.
fn measure_redis<T>(
    commands: &[&str],
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, RedisBusy)> {
    redis_cli(&["config", "resetstat"])?;
    let cpu = redis_cpu_ms()?;
    let out = work()?;
    let busy = RedisBusy {
        cpu_ms: redis_cpu_ms()?.saturating_sub(cpu),
        command_ms: redis_command_ms(commands)?,
    };
    Ok((out, busy))
}

fn redis_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &REDIS_PORT.to_string()])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Result of one launcher run: the step durations (ms) from the result file and the peak RSS.
struct Run {
    sync_ms: u64,
    report_ms: Option<u64>,
    total_ms: u64,
    peak_rss_kb: u64,
    cpu_ms: u64,
    counters: serde_json::Value,
}

fn run_launcher(db_url: &str, args: &[&str]) -> anyhow::Result<Run> {
    run_launcher_with(db_url, args, &[])
}

/// [`run_launcher`] with extra environment variables (settings).
fn run_launcher_with(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let result = dir.path().join("result.json");
    let mut cmd = Command::new(launcher_bin());
    cmd.args(["-q", "run", "pointBalanceSyncJob"])
        .args(args)
        .arg("--result-file")
        .arg(&result);
    cmd.env("BATCH__DATABASE__URL", db_url)
        .env(
            "BATCH__REDIS__URL",
            format!("redis://127.0.0.1:{REDIS_PORT}"),
        )
        .env("BATCH__POINT__CACHE_KEY_PREFIX", PREFIX)
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    let t = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("{}: {e} (build it first)", launcher_bin().display()))?;
    let stats = wait_tracking(child)?;
    let total_ms = t.elapsed().as_millis() as u64;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result)?)?;
    let step = |name: &str| {
        json["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .cloned()
    };
    let sync =
        step("syncPointBalanceStep").ok_or_else(|| anyhow::anyhow!("no sync step in {json}"))?;
    Ok(Run {
        sync_ms: sync["duration_ms"].as_u64().unwrap_or(0),
        report_ms: step("generateDailyReportStep").and_then(|s| s["duration_ms"].as_u64()),
        total_ms,
        peak_rss_kb: stats.peak_rss_kb,
        cpu_ms: stats.cpu_ms,
        counters: sync["counters"].clone(),
    })
}

/// Writes the RESP protocol of HSET + PEXPIRE for every balance, as `redis-cli --pipe` reads it.
async fn write_pipe_file(conn: &mut DbConnection, path: &std::path::Path) -> anyhow::Result<()> {
    use core_domain::models::PointBalance;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    fn resp(out: &mut impl std::io::Write, parts: &[&str]) -> std::io::Result<()> {
        write!(out, "*{}\r\n", parts.len())?;
        for p in parts {
            write!(out, "${}\r\n{p}\r\n", p.len())?;
        }
        Ok(())
    }
    let mut after = 0;
    loop {
        let page = PointBalance::page_after(conn, after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for b in &page {
            let key = format!("{PREFIX}{}", b.user_id);
            let updated = b
                .updated_at
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            resp(
                &mut out,
                &[
                    "HSET",
                    &key,
                    "balance",
                    &b.balance.to_string(),
                    "version",
                    &b.version.to_string(),
                    "updatedAt",
                    &updated,
                ],
            )?;
            resp(&mut out, &["PEXPIRE", &key, &TTL_MS.to_string()])?;
        }
    }
    out.flush()?;
    Ok(())
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

async fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        launcher_bin().exists(),
        "{} not found: run `cargo build --release -p batch-launcher` first",
        launcher_bin().display()
    );
    // A fresh database.
    let admin = DatabaseUrl::parse(&postgres_admin_url())?;
    let mut admin_conn = DbConnection::establish(&admin).await?;
    exec(
        &mut admin_conn,
        "DROP DATABASE IF EXISTS batch_bench WITH (FORCE)",
    )
    .await?;
    exec(&mut admin_conn, "CREATE DATABASE batch_bench").await?;
    let db_url_str = postgres_admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/batch_bench"))
        .unwrap();
    let db_url = DatabaseUrl::parse(&db_url_str)?;
    core_domain::migrate::run_pending(&db_url, batch_common::repository::BASE_MIGRATIONS).await?;
    let mut conn = DbConnection::establish(&db_url).await?;

    println!(
        "seeding {USERS} balances, {DAY_TX} transactions on {DATE} (KST) and {NEIGHBOUR_TX} on each neighbouring day ..."
    );
    let t = Instant::now();
    exec(&mut conn, &format!(
        "INSERT INTO point_balance (user_id, balance, version, updated_at) \
         SELECT g, (g * 7919) % 100000, 1 + g % 20, TIMESTAMP '2026-11-20 10:00:00' + (g % 3600) * INTERVAL '1 second' \
         FROM generate_series(1::bigint, {USERS}) g")).await?;
    // The KST day 2026-11-20 is [2026-11-19 15:00, 2026-11-20 15:00) UTC.
    let seed_points = |count: i64, start: &str| {
        format!(
            "INSERT INTO point (user_id, amount, type, description, balance_snapshot, point_balance_id, created_at) \
         SELECT 1 + (g * 48271) % {USERS}, 100 + g % 900, (ARRAY['EARN','EARN','USE','CANCEL'])[1 + g % 4], NULL, \
         g % 100000, 1 + (g * 48271) % {USERS}, TIMESTAMP '{start}' + ((g * 7) % 86400000) * INTERVAL '1 millisecond' \
         FROM generate_series(1::bigint, {count}) g"
        )
    };
    exec(&mut conn, &seed_points(DAY_TX, "2026-11-19 15:00:00")).await?;
    exec(&mut conn, &seed_points(NEIGHBOUR_TX, "2026-11-18 15:00:00")).await?;
    exec(&mut conn, &seed_points(NEIGHBOUR_TX, "2026-11-20 15:00:00")).await?;
    exec(&mut conn, "VACUUM ANALYZE point_balance").await?;
    exec(&mut conn, "VACUUM ANALYZE point").await?;
    println!("  seeded in {:.1} s", t.elapsed().as_secs_f64());

    // A private Redis, so FLUSHALL touches nothing else.
    let redis_dir = tempfile::tempdir()?;
    let _redis = Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &REDIS_PORT.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(redis_dir.path())
            .stdout(Stdio::null())
            .spawn()?,
    );
    let start = Instant::now();
    while redis_cli(&["ping"])? != "PONG" {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server on {REDIS_PORT} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The mass-insertion limit.
    let pipe_file = redis_dir.path().join("mass.resp");
    write_pipe_file(&mut conn, &pipe_file).await?;
    redis_cli(&["flushall"])?;
    let (pipe_ms, pipe_busy) = measure_redis(&["hset", "pexpire"], || {
        let t = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli -p {REDIS_PORT} --pipe < {}",
                pipe_file.display()
            ))
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "redis-cli --pipe failed");
        Ok(t.elapsed().as_millis() as u64)
    })?;
    anyhow::ensure!(
        redis_cli(&["dbsize"])? == USERS.to_string(),
        "mass insertion wrote {} keys",
        redis_cli(&["dbsize"])?
    );
    redis_cli(&["flushall"])?;

    // Cold cache: every key missing. Also the report step on an empty report table.
    let (cold, cold_busy) = measure_redis(&["evalsha", "eval"], || {
        run_launcher(&db_url_str, &[&format!("date={DATE}")])
    })?;
    anyhow::ensure!(
        cold.counters["created"] == USERS,
        "cold counters {}",
        cold.counters
    );
    // Warm cache: 1% of balances changed since.
    exec(
        &mut conn,
        "UPDATE point_balance SET balance = balance + 1, version = version + 1 WHERE id % 100 = 0",
    )
    .await?;
    exec(&mut conn, "VACUUM ANALYZE point_balance").await?;
    let (warm, warm_busy) = measure_redis(&["evalsha", "eval"], || {
        run_launcher(&db_url_str, &[&format!("date={DATE}"), "--rerun"])
    })?;
    anyhow::ensure!(
        warm.counters["corrected"] == USERS / 100,
        "warm counters {}",
        warm.counters
    );

    // The other chunk size of the sync step, cold then warm (on the day before: a new instance
    // whose report step is small).
    let alt_env = [("BATCH__POINT__SYNC_CHUNK_SIZE", ALT_SYNC_CHUNK)];
    redis_cli(&["flushall"])?;
    let (alt_cold, alt_cold_busy) = measure_redis(&["evalsha", "eval"], || {
        run_launcher_with(&db_url_str, &["date=2026-11-19"], &alt_env)
    })?;
    anyhow::ensure!(
        alt_cold.counters["created"] == USERS,
        "{}",
        alt_cold.counters
    );
    exec(
        &mut conn,
        "UPDATE point_balance SET balance = balance + 1, version = version + 1 WHERE id % 100 = 1",
    )
    .await?;
    exec(&mut conn, "VACUUM ANALYZE point_balance").await?;
    let (alt_warm, alt_warm_busy) = measure_redis(&["evalsha", "eval"], || {
        run_launcher_with(&db_url_str, &["date=2026-11-19", "--rerun"], &alt_env)
    })?;
    anyhow::ensure!(
        alt_warm.counters["corrected"] == USERS / 100,
        "{}",
        alt_warm.counters
    );

    // The hand-written baseline for the report: one INSERT … SELECT … GROUP BY for the same day.
    exec(
        &mut conn,
        &format!("DELETE FROM daily_point_report WHERE report_date = DATE '{DATE}'"),
    )
    .await?;
    exec(&mut conn, "VACUUM ANALYZE daily_point_report").await?;
    let baseline = exec(&mut conn, &format!(
        "INSERT INTO daily_point_report (user_id, report_date, earn_amount, use_amount, cancel_amount, balance_snapshot, \
         earn_count, use_count, cancel_count, first_transaction_at, last_transaction_at, created_at, updated_at) \
         SELECT user_id, DATE '{DATE}', \
           COALESCE(SUM(amount) FILTER (WHERE type = 'EARN'), 0), COALESCE(SUM(amount) FILTER (WHERE type = 'USE'), 0), COALESCE(SUM(amount) FILTER (WHERE type = 'CANCEL'), 0), \
           (ARRAY_AGG(balance_snapshot ORDER BY created_at DESC, id DESC))[1], \
           COUNT(*) FILTER (WHERE type = 'EARN'), COUNT(*) FILTER (WHERE type = 'USE'), COUNT(*) FILTER (WHERE type = 'CANCEL'), \
           MIN(created_at), MAX(created_at), now(), now() \
         FROM point WHERE created_at >= TIMESTAMP '2026-11-19 15:00:00' AND created_at < TIMESTAMP '2026-11-20 15:00:00' \
         GROUP BY user_id")).await?;
    let baseline_ms = baseline.as_millis() as u64;

    // Peak memory at 2,000,000 balances (cold cache, another date so it is a new instance).
    exec(&mut conn, &format!(
        "INSERT INTO point_balance (user_id, balance, version, updated_at) \
         SELECT g, g % 100000, 1, TIMESTAMP '2026-11-20 10:00:00' FROM generate_series({}::bigint, {}) g", USERS + 1, 2 * USERS)).await?;
    exec(&mut conn, "VACUUM ANALYZE point_balance").await?;
    redis_cli(&["flushall"])?;
    let big = run_launcher(&db_url_str, &["date=2026-11-21"])?;
    anyhow::ensure!(
        big.counters["created"] == 2 * USERS,
        "2M counters {}",
        big.counters
    );

    let keys_per_s = |ms: u64, n: i64| n as f64 / (ms.max(1) as f64 / 1000.0);
    println!(
        "\n=== pointBalanceSyncJob on PostgreSQL, {USERS} balances, {DAY_TX} transactions ==="
    );
    println!(
        "redis-cli --pipe, {USERS} HSET + PEXPIRE : {pipe_ms:>7} ms  {:>10.0} keys/s  (the limit)",
        keys_per_s(pipe_ms, USERS)
    );
    println!(
        "sync, cold cache (all missing)          : {:>7} ms  {:>10.0} keys/s  ratio {:.2}x (target <= 1.5x)",
        cold.sync_ms,
        keys_per_s(cold.sync_ms, USERS),
        ratio(cold.sync_ms, pipe_ms)
    );
    println!(
        "sync, warm cache (1% stale)             : {:>7} ms  {:>10.0} keys/s  ratio {:.2}x (target <= 1.0x)",
        warm.sync_ms,
        keys_per_s(warm.sync_ms, USERS),
        ratio(warm.sync_ms, pipe_ms)
    );
    for (what, run) in [("cold", &alt_cold), ("warm", &alt_warm)] {
        println!(
            "sync, {what}, point.sync_chunk_size={ALT_SYNC_CHUNK:<5}: {:>7} ms  {:>10.0} keys/s  ratio {:.2}x",
            run.sync_ms,
            keys_per_s(run.sync_ms, USERS),
            ratio(run.sync_ms, pipe_ms)
        );
    }
    let report_ms = cold.report_ms.unwrap_or(0);
    println!(
        "hand-written INSERT ... SELECT GROUP BY : {baseline_ms:>7} ms  {:>10.0} rows/s",
        keys_per_s(baseline_ms, DAY_TX)
    );
    println!(
        "report step (cold table)                : {report_ms:>7} ms  {:>10.0} rows/s  ratio {:.2}x (target <= 1.3x)",
        keys_per_s(report_ms, DAY_TX),
        ratio(report_ms, baseline_ms)
    );
    println!(
        "report step (re-run, rows unchanged)    : {:>7} ms",
        warm.report_ms.unwrap_or(0)
    );
    println!(
        "launcher wall time: cold {} ms, warm {} ms, 2M cold {} ms (sync {} ms)",
        cold.total_ms, warm.total_ms, big.total_ms, big.sync_ms
    );
    println!(
        "launcher CPU (user+sys, whole run incl. report): cold {} ms, warm {} ms, 2M cold {} ms",
        cold.cpu_ms, warm.cpu_ms, big.cpu_ms
    );
    // What bounds the sync: Redis is single-threaded, so its busy time is a floor for the sync.
    println!("Redis busy time (main-thread CPU; own time of the commands from INFO commandstats):");
    println!(
        "  --pipe        : CPU {:>6} ms, HSET+PEXPIRE {:>6} ms",
        pipe_busy.cpu_ms, pipe_busy.command_ms
    );
    for (name, busy, sync_ms) in [
        ("sync, cold", cold_busy, cold.sync_ms),
        ("sync, warm", warm_busy, warm.sync_ms),
        ("cold, alt  ", alt_cold_busy, alt_cold.sync_ms),
        ("warm, alt  ", alt_warm_busy, alt_warm.sync_ms),
    ] {
        println!(
            "  {name}    : CPU {:>6} ms ({:.2}x the pipe's), EVALSHA {:>6} ms; Redis busy {:.0}% of the sync step",
            busy.cpu_ms,
            ratio(busy.cpu_ms, pipe_busy.cpu_ms),
            busy.command_ms,
            100.0 * ratio(busy.cpu_ms, sync_ms)
        );
    }
    println!(
        "launcher peak RSS: {:.1} MB at 1M (cold), {:.1} MB at 1M (warm), {:.1} MB at 2M balances (target < 150 MB)",
        cold.peak_rss_kb as f64 / 1024.0,
        warm.peak_rss_kb as f64 / 1024.0,
        big.peak_rss_kb as f64 / 1024.0
    );

    drop(conn);
    exec(
        &mut admin_conn,
        "DROP DATABASE IF EXISTS batch_bench WITH (FORCE)",
    )
    .await?;
    Ok(())
}
