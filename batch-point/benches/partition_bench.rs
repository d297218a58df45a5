//! Partitioned pointBalanceSyncJob on PostgreSQL (issue 23): the partitioned runs of the release
//! launcher against the physical limits, as ratios measured in one run. Run with
//!
//! ```sh
//! cargo build --release -p batch-launcher && cargo bench -p batch-point --bench partition_bench
//! ```
//!
//! **Sync** (`PARTITION_BENCH_PARTS` contains `sync`): 1,000,000 balances (point_bench's
//! `point_balance` rows) in a fresh database `partition_bench`, a private Redis on port 6394. Each
//! round measures `redis-cli --pipe` of the same 1,000,000 `HSET` + `PEXPIRE` (the mass-insertion
//! limit, as point_bench does), then each of these launches, cold (cache flushed) and warm (1% of
//! the balances changed since the previous run):
//! - 1 process, unpartitioned (no flags);
//! - 2 processes started together, each `--partitions 8 --workers 1 --join`;
//! - 2 processes started together, each `--partitions 8 --workers 2 --join`;
//! - 1 process `--partitions 8 --workers 2`.
//!
//! Each launch is a new job instance (a new `date`) on a day without transactions, so its report
//! step writes nothing: the wall time (first process started to last process exited) is the
//! sync plus the runtime's own costs (process start, partitioning, claims, the report step's
//! empty partitions, the idle polls at the ends of the steps). It also prints the sync step's own
//! duration (the manager's step, which ends when its last partition has), what Redis spent
//! (main-thread CPU from `INFO cpu`), the launchers' CPU, PostgreSQL's CPU (all `postgres`
//! processes of the machine, from `/proc`), the whole machine's busy time (both cores, from
//! `/proc/stat`: what the other figures leave out is other work on the machine), each
//! process's peak RSS, and a timeline of the partitions from the launchers' JSON logs.
//!
//! **Report** (`report`): per data shape (report_bench's: `PARTITION_BENCH_REPORT_TX`
//! transactions on the day, default 5,000,000, plus 10% on each neighbouring day; ~N per user,
//! ids in time order or scattered; `users` rows for the partitioner), each round, on an empty
//! report table after a `CHECKPOINT`, in an order rotated per round:
//! - report_bench's strongest PostgreSQL formulations, each one plain `INSERT … SELECT` in a
//!   session of its own (the window and ordered-aggregate forms, 2.2–4.8× the fastest in
//!   report_bench, are left out); the baseline is the fastest median;
//! - the step's own statement under the plan it picks, for the 4 user ranges of
//!   `--partitions 4`, by hand: one after another in one session, and 2 at a time in two;
//! - the release launcher (the job: its sync step has no balances to sync): unpartitioned;
//!   `--partitions 4 --workers 2` in one process; 2 processes `--partitions 4 --workers 1 --join`.
//!   Its figure is the report step's duration (the manager's step), the wall time beside it.
//!
//! Every run's rows are checked against the first formulation's (a checksum of every column).
//!
//! Settings (environment): `PARTITION_BENCH_PARTS` (default `sync,report`),
//! `PARTITION_BENCH_BALANCES` (default 1,000,000), `PARTITION_BENCH_SYNC_RUNS` (rounds, default
//! 3), `PARTITION_BENCH_REPORT_TX` (default 5,000,000), `PARTITION_BENCH_REPORT_SHAPES` (default
//! `5t,200t`: transactions per user, `t` ids in time order, `s` scattered),
//! `PARTITION_BENCH_REPORT_RUNS` (default 3), `BATCH_BENCH_POSTGRES_URL`, `BATCH_LAUNCHER_BIN`.
//!
//! `cargo test --all-targets` builds this target and runs it without `--bench`: it then exits at once.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use batch_common::step::KeyRange;
use batch_point::daily_report::{INSERT_INTO, POSTGRES_WORK_MEM, aggregate_select_in};
use batch_point::report_plan::{Closing, Plan, SqliteScan};
use batch_testkit::bench::{ProcStats, launcher_bin, postgres_admin_url, wait_tracking};
use core_domain::{Backend, DatabaseUrl, DbConnection, dispatch};
use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

const DB_NAME: &str = "partition_bench";
const REDIS_PORT: u16 = 6394;
const PREFIX: &str = "point:balance:";
const TTL_MS: u64 = 48 * 3600 * 1000;
const JOB: &str = "pointBalanceSyncJob";
const SYNC_STEP: &str = "syncPointBalanceStep";
const REPORT_STEP: &str = "generateDailyReportStep";
/// The report day: the KST day 2026-11-20 is [2026-11-19 15:00, 2026-11-20 15:00) UTC.
const DATE: &str = "2026-11-20";
const FROM: &str = "2026-11-19 15:00:00";
const TO: &str = "2026-11-20 15:00:00";
const NOW: &str = "2026-11-21 01:00:00";
const DAY_MS: i64 = 86_400_000;
/// Partitions of the report's partitioned runs.
const REPORT_PARTITIONS: u32 = 4;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "partition_bench: run it with `cargo bench -p batch-point --bench partition_bench`"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(run()) {
        eprintln!("partition_bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn env_i64(name: &str, default: i64) -> anyhow::Result<i64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is not a number: {e}")),
        Err(_) => Ok(default),
    }
}

async fn exec(conn: &mut DbConnection, sql: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    conn.batch_execute(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", &sql[..sql.len().min(300)]))?;
    Ok(t.elapsed())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: Redis (INFO cpu), PostgreSQL and the machine (/proc).

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

fn redis_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &REDIS_PORT.to_string()])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// CPU time (ms) of every `postgres` process of the machine, plus what the postmaster collected
/// from its ended children (`cutime` + `cstime`): sessions that end in between still count.
fn postgres_cpu_ms() -> u64 {
    let mut ticks = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != "postgres" {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime, stime, cutime, cstime: fields 14–17 of the line, 11–14 after the state.
        for i in 11..=14 {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<i64>().ok())
                .unwrap_or(0)
                .max(0) as u64;
        }
    }
    ticks * 10
}

/// The machine's busy and total CPU time so far over all cores (ms), from `/proc/stat`.
fn machine_cpu_ms() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0, 0);
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    ((total - idle) * 10, total * 10)
}

/// What the machine spent during one measurement (ms).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    redis_ms: u64,
    postgres_ms: u64,
    machine_busy_ms: u64,
    machine_total_ms: u64,
}

struct CpuMark {
    redis: u64,
    postgres: u64,
    machine: (u64, u64),
}

impl CpuMark {
    fn now(with_redis: bool) -> anyhow::Result<Self> {
        Ok(CpuMark {
            redis: if with_redis { redis_cpu_ms()? } else { 0 },
            postgres: postgres_cpu_ms(),
            machine: machine_cpu_ms(),
        })
    }

    fn since(&self, with_redis: bool) -> anyhow::Result<Cpu> {
        let now = CpuMark::now(with_redis)?;
        Ok(Cpu {
            redis_ms: now.redis.saturating_sub(self.redis),
            postgres_ms: now.postgres.saturating_sub(self.postgres),
            machine_busy_ms: now.machine.0.saturating_sub(self.machine.0),
            machine_total_ms: now.machine.1.saturating_sub(self.machine.1),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Launcher processes and their JSON logs.

/// One event of a launcher's JSON log that the timeline uses.
#[derive(Debug, Clone)]
struct LogEvent {
    /// ms since the group's first process was started.
    at_ms: f64,
    message: String,
    /// The partition's row name (`step:partitionN`), in a partition's span.
    partition: Option<String>,
    /// The `step` field of "step started" / "step ended".
    step: Option<String>,
    duration_ms: Option<f64>,
}

fn parse_log(path: &Path, origin: SystemTime) -> Vec<LogEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let origin: chrono::DateTime<chrono::Utc> = origin.into();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let at_ms = (ts.with_timezone(&chrono::Utc) - origin)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0;
        let partition = v["span"]["partition"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                v["spans"].as_array().and_then(|spans| {
                    spans
                        .iter()
                        .find_map(|s| s["partition"].as_str().map(str::to_owned))
                })
            });
        out.push(LogEvent {
            at_ms,
            message: v["message"].as_str().unwrap_or("").to_owned(),
            partition,
            step: v["step"].as_str().map(str::to_owned),
            duration_ms: v["duration_ms"].as_f64(),
        });
    }
    out
}

/// One launcher process of a group, after it exited.
struct Proc {
    stats: ProcStats,
    /// ms from the group's start to when it was seen exited (sampled every 20 ms).
    exited_ms: f64,
    result: serde_json::Value,
    log: Vec<LogEvent>,
}

impl Proc {
    fn is_manager(&self) -> bool {
        self.result["status"] != "JOINED"
    }

    fn step(&self, name: &str) -> Option<&serde_json::Value> {
        self.result["steps"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
    }
}

/// Processes started together (the first is started first, the others right after).
struct Group {
    wall_ms: f64,
    procs: Vec<Proc>,
    cpu: Cpu,
}

impl Group {
    fn manager(&self) -> anyhow::Result<&Proc> {
        let managers: Vec<&Proc> = self.procs.iter().filter(|p| p.is_manager()).collect();
        anyhow::ensure!(
            managers.len() == 1,
            "expected one manager and the others JOINED, got statuses {:?}",
            self.procs
                .iter()
                .map(|p| p.result["status"].clone())
                .collect::<Vec<_>>()
        );
        anyhow::ensure!(
            managers[0].result["status"] == "COMPLETED",
            "the run did not complete: {}",
            managers[0].result
        );
        Ok(managers[0])
    }

    /// The manager's duration of `step` (ms).
    fn step_ms(&self, step: &str) -> anyhow::Result<f64> {
        self.manager()?
            .step(step)
            .and_then(|s| s["duration_ms"].as_f64())
            .ok_or_else(|| anyhow::anyhow!("no {step} in the manager's result"))
    }

    fn counter(&self, step: &str, name: &str) -> anyhow::Result<i64> {
        Ok(self
            .manager()?
            .step(step)
            .and_then(|s| s["counters"][name].as_i64())
            .unwrap_or(0))
    }

    /// From the manager's exit to the last process's exit: how long joined workers stayed after
    /// the run ended.
    fn linger_ms(&self) -> Option<f64> {
        let manager = self.manager().ok()?.exited_ms;
        (self.procs.len() > 1).then_some(self.wall_ms - manager)
    }

    fn launcher_cpu_ms(&self) -> u64 {
        self.procs.iter().map(|p| p.stats.cpu_ms).sum()
    }

    fn max_rss_mb(&self) -> f64 {
        self.procs
            .iter()
            .map(|p| p.stats.peak_rss_kb as f64 / 1024.0)
            .fold(0.0, f64::max)
    }

    fn rss_list(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("{:.1}", p.stats.peak_rss_kb as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The partitions of `step` as the processes' logs tell it.
    fn timeline(&self, step: &str) -> Timeline {
        let prefix = format!("{step}:partition");
        let mut t = Timeline::default();
        for (i, p) in self.procs.iter().enumerate() {
            let mut claims = Vec::new();
            let mut ends = Vec::new();
            for e in &p.log {
                let in_step = e
                    .partition
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&prefix));
                match e.message.as_str() {
                    "claimed" if in_step => claims.push(e.at_ms),
                    m if m.starts_with("re-claimed") && in_step => claims.push(e.at_ms),
                    "partition completed" if in_step => {
                        ends.push(e.at_ms);
                        t.busy_ms += e.duration_ms.unwrap_or(0.0);
                    }
                    "step started" if e.step.as_deref() == Some(step) => t.started = Some(e.at_ms),
                    "step ended" if e.step.as_deref() == Some(step) => t.ended = Some(e.at_ms),
                    _ => {}
                }
            }
            // Claim gaps of a one-slot process: from a partition's end to its next claim.
            claims.sort_by(f64::total_cmp);
            ends.sort_by(f64::total_cmp);
            for end in &ends {
                if let Some(next) = claims.iter().find(|c| **c >= *end) {
                    t.claim_gaps.push(next - end);
                }
            }
            t.per_proc.push(ProcSpan {
                index: i,
                manager: p.is_manager(),
                partitions: ends.len(),
                first_claim: <[f64]>::first(&claims).copied(),
                last_end: ends.last().copied(),
                exited: p.exited_ms,
            });
        }
        t
    }
}

#[derive(Debug, Clone, Copy)]
struct ProcSpan {
    index: usize,
    manager: bool,
    partitions: usize,
    first_claim: Option<f64>,
    last_end: Option<f64>,
    exited: f64,
}

/// A partitioned step's course, in ms since the group started.
#[derive(Debug, Default, Clone)]
struct Timeline {
    started: Option<f64>,
    ended: Option<f64>,
    busy_ms: f64,
    claim_gaps: Vec<f64>,
    per_proc: Vec<ProcSpan>,
}

impl Timeline {
    /// When a joined worker first claimed a partition of the step (ms since the group started).
    fn joiner_first_claim(&self) -> Option<f64> {
        self.per_proc
            .iter()
            .filter(|p| !p.manager)
            .filter_map(|p| p.first_claim)
            .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.min(x))))
    }

    fn last_end(&self) -> Option<f64> {
        self.per_proc
            .iter()
            .filter_map(|p| p.last_end)
            .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
    }

    /// From the last partition's end to the manager's step end: the manager noticing it.
    fn tail_ms(&self) -> Option<f64> {
        Some(self.ended? - self.last_end()?)
    }

    /// How long the process that ran out of partitions first waited for the last one to end.
    fn imbalance_ms(&self) -> Option<f64> {
        let ends: Vec<f64> = self.per_proc.iter().filter_map(|p| p.last_end).collect();
        if ends.len() < 2 {
            return None;
        }
        let lo = ends.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ends.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(hi - lo)
    }

    fn describe(&self) -> String {
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}"));
        let procs: Vec<String> = self
            .per_proc
            .iter()
            .map(|p| {
                format!(
                    "p{}{}: {} partitions, first claim {} ms, last end {} ms, exit {:.0} ms",
                    p.index,
                    if p.manager { "(manager)" } else { "" },
                    p.partitions,
                    f(p.first_claim),
                    f(p.last_end),
                    p.exited
                )
            })
            .collect();
        let gaps = if self.claim_gaps.is_empty() {
            String::new()
        } else {
            format!(
                ", claim after an end {} ms (median {:.1})",
                min_max(&self.claim_gaps),
                median(&self.claim_gaps)
            )
        };
        format!(
            "step {}–{} ms, partitions' work {:.0} ms, last partition end → step end {} ms{gaps} | {}",
            f(self.started),
            f(self.ended),
            self.busy_ms,
            f(self.tail_ms()),
            procs.join(" | ")
        )
    }
}

/// The environment every launcher of this bench gets.
struct LaunchEnv {
    db_url: String,
    redis_url: String,
}

/// Starts `args.len()` launcher processes, one per argument list, together; waits for all.
fn run_group(env: &LaunchEnv, args: &[Vec<String>], with_redis: bool) -> anyhow::Result<Group> {
    let dir = tempfile::tempdir()?;
    let mark = CpuMark::now(with_redis)?;
    let origin = SystemTime::now();
    let t0 = Instant::now();
    let mut children: Vec<(Child, PathBuf, PathBuf)> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let result = dir.path().join(format!("result{i}.json"));
        let log = dir.path().join(format!("log{i}.json"));
        let child = Command::new(launcher_bin())
            .args(["--log-format", "json", "run", JOB])
            .args(a)
            .arg("--result-file")
            .arg(&result)
            .env("BATCH__DATABASE__URL", &env.db_url)
            .env("BATCH__REDIS__URL", &env.redis_url)
            .env("BATCH__POINT__CACHE_KEY_PREFIX", PREFIX)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e} (build it first)", launcher_bin().display()))?;
        children.push((child, result, log));
    }
    let waiters: Vec<_> = children
        .into_iter()
        .map(|(child, result, log)| {
            std::thread::spawn(move || {
                let stats = wait_tracking(child);
                (stats, t0.elapsed(), result, log)
            })
        })
        .collect();
    let mut procs = Vec::new();
    let mut wall = Duration::ZERO;
    for w in waiters {
        let (stats, exited, result, log) = w.join().expect("waiter");
        let stats = stats.map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            anyhow::anyhow!("{e}; its last log lines: {tail:?}")
        })?;
        wall = wall.max(exited);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result)?)?;
        procs.push(Proc {
            stats,
            exited_ms: exited.as_secs_f64() * 1000.0,
            result: json,
            log: parse_log(&log, origin),
        });
    }
    let cpu = mark.since(with_redis)?;
    Ok(Group {
        wall_ms: wall.as_secs_f64() * 1000.0,
        procs,
        cpu,
    })
}

/// A way to launch the job: how many processes, with which flags.
#[derive(Clone, Copy)]
struct Launch {
    label: &'static str,
    processes: usize,
    flags: &'static [&'static str],
}

impl Launch {
    fn args(&self, params: &[String]) -> Vec<Vec<String>> {
        (0..self.processes)
            .map(|_| {
                params
                    .iter()
                    .cloned()
                    .chain(self.flags.iter().map(|s| (*s).to_owned()))
                    .collect()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Databases.

async fn fresh_database() -> anyhow::Result<String> {
    let admin = DatabaseUrl::parse(&postgres_admin_url())?;
    let mut c = DbConnection::establish(&admin).await?;
    exec(
        &mut c,
        &format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"),
    )
    .await?;
    exec(&mut c, &format!("CREATE DATABASE {DB_NAME}")).await?;
    let url = postgres_admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{DB_NAME}"))
        .expect("a database URL with a path");
    core_domain::migrate::run_pending(
        &DatabaseUrl::parse(&url)?,
        batch_common::repository::BASE_MIGRATIONS,
    )
    .await?;
    Ok(url)
}

async fn drop_database() -> anyhow::Result<()> {
    let mut c = DbConnection::establish(&DatabaseUrl::parse(&postgres_admin_url())?).await?;
    exec(
        &mut c,
        &format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"),
    )
    .await?;
    Ok(())
}

/// Forgets every job run, so the next launch is a new instance (no `--rerun`: a joiner that came
/// late would start a second run; without it, it finds the instance completed and does nothing).
async fn clear_metadata(conn: &mut DbConnection) -> anyhow::Result<()> {
    exec(
        conn,
        "TRUNCATE batch_item_failure, batch_step_execution, batch_job_execution, batch_job_instance",
    )
    .await?;
    Ok(())
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> anyhow::Result<Redis> {
    let redis = Redis(
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
            .arg(dir)
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
    Ok(redis)
}

// ---------------------------------------------------------------------------------------------

async fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        launcher_bin().exists(),
        "{} not found: run `cargo build --release -p batch-launcher` first",
        launcher_bin().display()
    );
    let parts = std::env::var("PARTITION_BENCH_PARTS").unwrap_or_else(|_| "sync,report".into());
    println!(
        "partition_bench: launcher {}, {} cores",
        launcher_bin().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let redis_dir = tempfile::tempdir()?;
    let _redis = start_redis(redis_dir.path())?;
    let mut out = Vec::new();
    if parts.contains("sync") {
        out.push(sync_bench().await?);
    }
    if parts.contains("report") {
        out.push(report_bench().await?);
    }
    drop_database().await?;
    println!("\n\n=============== partition_bench summary ===============");
    for o in out {
        println!("{o}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sync.

const SYNC_LAUNCHES: [Launch; 4] = [
    Launch {
        label: "1 process, unpartitioned",
        processes: 1,
        flags: &[],
    },
    Launch {
        label: "2 processes x --partitions 8 --workers 1 --join",
        processes: 2,
        flags: &["--partitions", "8", "--workers", "1", "--join"],
    },
    Launch {
        label: "2 processes x --partitions 8 --workers 2 --join",
        processes: 2,
        flags: &["--partitions", "8", "--workers", "2", "--join"],
    },
    Launch {
        label: "1 process --partitions 8 --workers 2",
        processes: 1,
        flags: &["--partitions", "8", "--workers", "2"],
    },
];

/// Writes the RESP protocol of HSET + PEXPIRE for every balance, as `redis-cli --pipe` reads it
/// (point_bench's mass insertion).
async fn write_pipe_file(conn: &mut DbConnection, path: &Path) -> anyhow::Result<()> {
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

/// One measured sync launch.
struct SyncRun {
    wall_ms: f64,
    step_ms: f64,
    cpu: Cpu,
    launcher_cpu_ms: u64,
    rss: String,
    max_rss_mb: f64,
    tail_ms: Option<f64>,
    imbalance_ms: Option<f64>,
    joiner_claim_ms: Option<f64>,
    linger_ms: Option<f64>,
}

async fn sync_bench() -> anyhow::Result<String> {
    let balances = env_i64("PARTITION_BENCH_BALANCES", 1_000_000)?;
    let rounds = env_i64("PARTITION_BENCH_SYNC_RUNS", 3)?.max(1) as usize;
    let url = fresh_database().await?;
    let mut conn = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
    println!("\n=== sync: seeding {balances} balances (point_bench's rows) ...");
    let t = Instant::now();
    exec(&mut conn, &format!(
        "INSERT INTO point_balance (user_id, balance, version, updated_at) \
         SELECT g, (g * 7919) % 100000, 1 + g % 20, TIMESTAMP '2026-11-20 10:00:00' + (g % 3600) * INTERVAL '1 second' \
         FROM generate_series(1::bigint, {balances}) g")).await?;
    exec(&mut conn, "VACUUM ANALYZE point_balance").await?;
    println!("  seeded in {:.1} s", t.elapsed().as_secs_f64());
    let pipe_dir = tempfile::tempdir()?;
    let pipe_file = pipe_dir.path().join("mass.resp");
    write_pipe_file(&mut conn, &pipe_file).await?;
    let env = LaunchEnv {
        db_url: url.clone(),
        redis_url: format!("redis://127.0.0.1:{REDIS_PORT}"),
    };

    let mut pipe: Vec<(f64, Cpu)> = Vec::new();
    // [launch][round] → (cold, warm)
    let mut runs: Vec<Vec<(SyncRun, SyncRun)>> =
        (0..SYNC_LAUNCHES.len()).map(|_| Vec::new()).collect();
    let mut day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date");
    let mut stale_class = 0;
    for round in 0..rounds {
        // The mass-insertion limit, this round.
        redis_cli(&["flushall"])?;
        let mark = CpuMark::now(true)?;
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
        let pipe_ms = t.elapsed().as_secs_f64() * 1000.0;
        let cpu = mark.since(true)?;
        anyhow::ensure!(
            redis_cli(&["dbsize"])? == balances.to_string(),
            "mass insertion wrote {} keys",
            redis_cli(&["dbsize"])?
        );
        eprintln!(
            "round {round}: redis-cli --pipe {pipe_ms:.0} ms, Redis CPU {} ms, machine busy {:.0}%",
            cpu.redis_ms,
            100.0 * cpu.machine_busy_ms as f64 / cpu.machine_total_ms.max(1) as f64
        );
        pipe.push((pipe_ms, cpu));
        // Every launch, in an order rotated per round.
        for k in 0..SYNC_LAUNCHES.len() {
            let li = (k + round) % SYNC_LAUNCHES.len();
            let launch = SYNC_LAUNCHES[li];
            redis_cli(&["flushall"])?;
            let cold = sync_launch(&env, launch, &mut day, balances, "created")?;
            stale_class = (stale_class + 1) % 100;
            exec(
                &mut conn,
                &format!(
                    "UPDATE point_balance SET balance = balance + 1, version = version + 1 WHERE id % 100 = {stale_class}"
                ),
            )
            .await?;
            exec(&mut conn, "VACUUM ANALYZE point_balance").await?;
            let warm = sync_launch(&env, launch, &mut day, balances / 100, "corrected")?;
            runs[li].push((cold, warm));
        }
    }
    redis_cli(&["flushall"])?;
    drop(conn);

    // The summary.
    let pipe_ms: Vec<f64> = pipe.iter().map(|p| p.0).collect();
    let pipe_redis: Vec<f64> = pipe.iter().map(|p| p.1.redis_ms as f64).collect();
    let mut s = String::new();
    use std::fmt::Write as _;
    writeln!(
        s,
        "\n=== Sync, PostgreSQL, {balances} balances, {rounds} rounds; ratio = median over rounds of (run / that round's pipe) ==="
    )?;
    writeln!(
        s,
        "redis-cli --pipe of {balances} HSET + PEXPIRE: median {:.0} ms ({} ms); Redis main-thread CPU {:.0} ms = {:.0}% of the pipe's time",
        median(&pipe_ms),
        min_max(&pipe_ms),
        median(&pipe_redis),
        100.0 * median(&pipe_redis) / median(&pipe_ms)
    )?;
    for (cache, warm) in [
        ("cold (all keys missing)", false),
        ("warm (1% stale)", true),
    ] {
        writeln!(s, "\n-- {cache} --")?;
        writeln!(
            s,
            "{:<49} | {:>8} {:>6} | {:>8} {:>6} | {:>15} | {:>11} | {:>8} | {:>8} | {:>7} | {:>6} {:>6} {:>6} {:>6} | RSS MB",
            "launch",
            "wall ms",
            "x pipe",
            "sync ms",
            "x pipe",
            "Redis CPU ms",
            "Redis floor",
            "lnch CPU",
            "PG CPU",
            "machine",
            "tail",
            "imbal",
            "j-1st",
            "linger"
        )?;
        for (li, launch) in SYNC_LAUNCHES.iter().enumerate() {
            let rs: Vec<&SyncRun> = runs[li]
                .iter()
                .map(|(c, w)| if warm { w } else { c })
                .collect();
            let wall: Vec<f64> = rs.iter().map(|r| r.wall_ms).collect();
            let step: Vec<f64> = rs.iter().map(|r| r.step_ms).collect();
            let wall_x: Vec<f64> = rs
                .iter()
                .zip(&pipe_ms)
                .map(|(r, p)| r.wall_ms / p)
                .collect();
            let step_x: Vec<f64> = rs
                .iter()
                .zip(&pipe_ms)
                .map(|(r, p)| r.step_ms / p)
                .collect();
            let redis: Vec<f64> = rs.iter().map(|r| r.cpu.redis_ms as f64).collect();
            // Redis's own CPU for this work, as a share of the pipe's time: no launch can beat it.
            let floor: Vec<f64> = rs
                .iter()
                .zip(&pipe_ms)
                .map(|(r, p)| r.cpu.redis_ms as f64 / p)
                .collect();
            let lcpu: Vec<f64> = rs.iter().map(|r| r.launcher_cpu_ms as f64).collect();
            let pg: Vec<f64> = rs.iter().map(|r| r.cpu.postgres_ms as f64).collect();
            let busy: Vec<f64> = rs
                .iter()
                .map(|r| {
                    100.0 * r.cpu.machine_busy_ms as f64 / r.cpu.machine_total_ms.max(1) as f64
                })
                .collect();
            let tail: Vec<f64> = rs.iter().filter_map(|r| r.tail_ms).collect();
            let imbal: Vec<f64> = rs.iter().filter_map(|r| r.imbalance_ms).collect();
            let jclaim: Vec<f64> = rs.iter().filter_map(|r| r.joiner_claim_ms).collect();
            let linger: Vec<f64> = rs.iter().filter_map(|r| r.linger_ms).collect();
            let rss = rs
                .iter()
                .map(|r| r.rss.clone())
                .collect::<Vec<_>>()
                .join(", ");
            let f = |v: &[f64]| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.0}", median(v))
                }
            };
            writeln!(
                s,
                "{:<49} | {:>8.0} {:>5.2}x | {:>8.0} {:>5.2}x | {:>6.0} ({:>6}) | {:>10.2}x | {:>8.0} | {:>8.0} | {:>6.0}% | {:>6} {:>6} {:>6} {:>6} | {rss}",
                launch.label,
                median(&wall),
                median(&wall_x),
                median(&step),
                median(&step_x),
                median(&redis),
                format!("{:.0}%", 100.0 * median(&redis) / median(&step)),
                median(&floor),
                median(&lcpu),
                median(&pg),
                median(&busy),
                f(&tail),
                f(&imbal),
                f(&jclaim),
                f(&linger),
            )?;
            let max_rss = rs.iter().map(|r| r.max_rss_mb).fold(0.0, f64::max);
            anyhow::ensure!(max_rss > 0.0, "no RSS sampled");
        }
    }
    writeln!(
        s,
        "\nwall = first process started to last exited; sync ms = the sync step of the manager (its partitions' work, claims and the wait for the last); \
         x pipe = median of per-round ratios; Redis CPU (share of the sync step); Redis floor = Redis CPU / the pipe's time (no launch can go below it); \
         lnch CPU = all launcher processes; PG CPU = every postgres process of the machine; machine = both cores busy during the launch; \
         tail = last partition end -> sync step end (ms); imbal = first process out of partitions -> last partition end (ms); \
         j-1st = the joined process's first claim, ms after the start; linger = the last exit after the manager's (ms). \
         Targets: 2 workers cold <= 0.8x the pipe; peak RSS < 150 MB per process."
    )?;
    Ok(s)
}

/// One sync launch of a new instance; checks the sync's counter `counter` is `expected`.
fn sync_launch(
    env: &LaunchEnv,
    launch: Launch,
    day: &mut chrono::NaiveDate,
    expected: i64,
    counter: &str,
) -> anyhow::Result<SyncRun> {
    *day = day.succ_opt().expect("a next day");
    let params = vec![format!("date={day}")];
    let g = run_group(env, &launch.args(&params), true)?;
    let got = g.counter(SYNC_STEP, counter)?;
    anyhow::ensure!(
        got == expected,
        "{}: sync {counter} = {got}, expected {expected}; result {}",
        launch.label,
        g.manager()?.result
    );
    let step_ms = g.step_ms(SYNC_STEP)?;
    let tl = g.timeline(SYNC_STEP);
    eprintln!(
        "  {:<49} {counter:<9}: wall {:>6.0} ms, sync step {:>6.0} ms, Redis CPU {:>5} ms, launchers CPU {:>5} ms, PG CPU {:>5} ms, machine busy {:>3.0}%, RSS {} MB\n      sync: {}\n      report: {}",
        launch.label,
        g.wall_ms,
        step_ms,
        g.cpu.redis_ms,
        g.launcher_cpu_ms(),
        g.cpu.postgres_ms,
        100.0 * g.cpu.machine_busy_ms as f64 / g.cpu.machine_total_ms.max(1) as f64,
        g.rss_list(),
        tl.describe(),
        g.timeline(REPORT_STEP).describe()
    );
    Ok(SyncRun {
        wall_ms: g.wall_ms,
        step_ms,
        cpu: g.cpu,
        launcher_cpu_ms: g.launcher_cpu_ms(),
        rss: g.rss_list(),
        max_rss_mb: g.max_rss_mb(),
        tail_ms: tl.tail_ms(),
        imbalance_ms: tl.imbalance_ms(),
        joiner_claim_ms: tl.joiner_first_claim(),
        linger_ms: g.linger_ms(),
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

/// One data shape (report_bench's).
#[derive(Clone, Copy)]
struct Shape {
    per_user: i64,
    time_ordered: bool,
}

impl Shape {
    fn label(self) -> String {
        format!(
            "{}/user, ids {}",
            self.per_user,
            if self.time_ordered {
                "in time order"
            } else {
                "scattered"
            }
        )
    }
}

fn shapes() -> anyhow::Result<Vec<Shape>> {
    let spec = std::env::var("PARTITION_BENCH_REPORT_SHAPES").unwrap_or_else(|_| "5t,200t".into());
    spec.split(',')
        .map(|s| {
            let s = s.trim();
            let (n, order) = s.split_at(s.len().saturating_sub(1));
            let per_user: i64 = n.parse().map_err(|_| {
                anyhow::anyhow!("PARTITION_BENCH_REPORT_SHAPES: {s:?} is not like 5t or 200s")
            })?;
            anyhow::ensure!(
                per_user >= 1 && (order == "t" || order == "s"),
                "PARTITION_BENCH_REPORT_SHAPES: {s:?} is not like 5t or 200s"
            );
            Ok(Shape {
                per_user,
                time_ordered: order == "t",
            })
        })
        .collect()
}

/// report_bench's seeding for PostgreSQL (`n` transactions on the day for `shape`, plus 10% on
/// each neighbouring day), and the `users` rows the report's partitioner splits.
async fn seed(conn: &mut DbConnection, n: i64, shape: Shape) -> anyhow::Result<i64> {
    let users = (n / shape.per_user).max(1);
    exec(conn, &format!(
        "INSERT INTO users (id, name, status, created_at, updated_at) \
         SELECT g, 'bench-' || g, 'ACTIVE', TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01' FROM generate_series(1::bigint, {users}) g"
    )).await?;
    let neighbours = n / 10;
    let days = [
        ("2026-11-18 15:00:00", neighbours),
        (FROM, n),
        ("2026-11-20 15:00:00", neighbours),
    ];
    for (start, count) in days {
        let offset_ms = if shape.time_ordered {
            format!("(g * {DAY_MS} / {count})")
        } else {
            format!("((g * 2654435761) % {DAY_MS})")
        };
        let user = format!("(1 + (g * 48271) % {users})");
        exec(conn, &format!(
            "INSERT INTO point (user_id, amount, type, description, balance_snapshot, point_balance_id, created_at) \
             SELECT {user}, 100 + g % 900, (ARRAY['EARN','EARN','USE','CANCEL'])[1 + g % 4], NULL, g % 100000, {user}, \
             TIMESTAMP '{start}' + {offset_ms} * INTERVAL '1 millisecond' \
             FROM generate_series(1::bigint, {count}) g"
        )).await?;
    }
    exec(conn, "VACUUM ANALYZE point").await?;
    exec(conn, "VACUUM ANALYZE users").await?;
    Ok(users)
}

fn lit(t: &str) -> String {
    format!("TIMESTAMP '{t}'")
}

/// The step's own `SELECT` under `plan` for the users of `range`, its binds written as literals.
fn step_select(plan: Plan, range: KeyRange) -> String {
    let sql = aggregate_select_in(Backend::Postgres, plan, range)
        .replace("@FROM@", &lit(FROM))
        .replace("@TO@", &lit(TO));
    let values = [
        format!("DATE '{DATE}'"),
        lit(NOW),
        lit(NOW),
        lit(FROM),
        lit(TO),
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

/// report_bench's PostgreSQL contenders (without the window and ordered-aggregate forms, never
/// within 2× of the fastest there): (name, SELECT).
fn formulations() -> Vec<(&'static str, String)> {
    let d = format!("DATE '{DATE}'");
    let now = lit(NOW);
    let w = format!("created_at >= {} AND created_at < {}", lit(FROM), lit(TO));
    let sums = "SUM(CASE WHEN type = 'EARN' THEN amount ELSE 0 END) e, \
        SUM(CASE WHEN type = 'USE' THEN amount ELSE 0 END) u, \
        SUM(CASE WHEN type = 'CANCEL' THEN amount ELSE 0 END) c";
    let counts = "SUM(CASE WHEN type = 'EARN' THEN 1 ELSE 0 END) ec, \
        SUM(CASE WHEN type = 'USE' THEN 1 ELSE 0 END) uc, \
        SUM(CASE WHEN type = 'CANCEL' THEN 1 ELSE 0 END) cc, MIN(created_at) f, MAX(created_at) l";
    let distinct_on = format!(
        "SELECT a.user_id, {d}, a.e, a.u, a.c, l.balance_snapshot, a.ec, a.uc, a.cc, a.f, a.l, {now}, {now} \
         FROM (SELECT user_id, {sums}, {counts} FROM point WHERE {w} GROUP BY user_id) a \
         JOIN (SELECT DISTINCT ON (user_id) user_id, balance_snapshot FROM point WHERE {w} \
         ORDER BY user_id, created_at DESC, id DESC) l ON l.user_id = a.user_id"
    );
    let max_array = format!(
        "SELECT user_id, {d}, {sums}, (MAX(ARRAY[ROUND(date_part('epoch', created_at - {})  * 1000000)::BIGINT, id, balance_snapshot]))[3], \
         {counts}, {now}, {now} FROM point WHERE {w} GROUP BY user_id",
        lit(FROM)
    );
    let probe = format!(
        "SELECT a.user_id, {d}, a.e, a.u, a.c, (SELECT p.balance_snapshot FROM point p \
         WHERE p.user_id = a.user_id AND p.created_at = a.l ORDER BY p.id DESC LIMIT 1), \
         a.ec, a.uc, a.cc, a.f, a.l, {now}, {now} \
         FROM (SELECT user_id, {sums}, {counts} FROM point WHERE {w} GROUP BY user_id) a"
    );
    let plan = |closing| Plan {
        closing,
        scan: SqliteScan::CreatedAtRange,
    };
    vec![
        ("DISTINCT ON + join", distinct_on),
        ("MAX(ARRAY[µs, id, snapshot]), hash order", max_array),
        (
            "MAX(ARRAY[µs, id, snapshot]), ORDER BY user_id (step)",
            step_select(plan(Closing::InPass), KeyRange::ALL),
        ),
        ("probe per user, hash order", probe),
        (
            "probe per user, ORDER BY user_id (step)",
            step_select(plan(Closing::PerUser), KeyRange::ALL),
        ),
    ]
}

/// Runs `select` as the step runs its statement: one transaction with its `work_mem`.
async fn insert_select(conn: &mut DbConnection, select: &str) -> anyhow::Result<()> {
    exec(conn, "BEGIN").await?;
    exec(conn, &format!("SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'")).await?;
    exec(conn, &format!("{INSERT_INTO}{select}")).await?;
    exec(conn, "COMMIT").await?;
    Ok(())
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

/// report_bench's fingerprint of the day's report rows.
async fn checksum(conn: &mut DbConnection) -> anyhow::Result<Checksum> {
    let sql = format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS report_rows, CAST(COALESCE(SUM(balance_snapshot), 0) AS BIGINT) AS snapshots, \
         CAST(COALESCE(SUM(earn_amount + 3 * use_amount + 7 * cancel_amount), 0) AS BIGINT) AS amounts, \
         CAST(COALESCE(SUM(earn_count + 3 * use_count + 7 * cancel_count), 0) AS BIGINT) AS counts, \
         CAST(COALESCE(SUM(ROUND(EXTRACT(EPOCH FROM last_transaction_at) * 1000 - EXTRACT(EPOCH FROM first_transaction_at))), 0) AS BIGINT) AS edges \
         FROM daily_point_report WHERE report_date = DATE '{DATE}'"
    );
    Ok(dispatch!(conn, c => diesel::sql_query(sql.as_str()).get_result::<Checksum>(c).await)?)
}

/// An empty report table, no job runs, the server's dirty pages written out (so no checkpoint
/// lands inside one measurement and not another).
async fn settle(conn: &mut DbConnection) -> anyhow::Result<()> {
    exec(conn, "TRUNCATE TABLE daily_point_report").await?;
    clear_metadata(conn).await?;
    exec(conn, "CHECKPOINT").await?;
    Ok(())
}

/// `EXPLAIN` of a statement, by psql (its plan's lines).
fn explain(url: &str, select: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-X", "-At", "-c"])
        .arg(format!(
            "SET work_mem = '{POSTGRES_WORK_MEM}'; EXPLAIN {INSERT_INTO}{select}"
        ))
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| *l != "SET")
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("      (psql: {e})"),
    }
}

/// What one round measures, by kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Item {
    Form(usize),
    /// The step's statement for the 4 ranges, one after another in one session.
    RangesSerial,
    /// The same, 2 at a time in two sessions.
    RangesTwo,
    Launch(usize),
}

const REPORT_LAUNCHES: [Launch; 3] = [
    Launch {
        label: "launcher, unpartitioned",
        processes: 1,
        flags: &[],
    },
    Launch {
        label: "launcher, 1 process --partitions 4 --workers 2",
        processes: 1,
        flags: &["--partitions", "4", "--workers", "2"],
    },
    Launch {
        label: "launcher, 2 processes x --partitions 4 --workers 1 --join",
        processes: 2,
        flags: &["--partitions", "4", "--workers", "1", "--join"],
    },
];

/// A launcher run of the report: the report step's time, wall time, RSS, the partitions' course.
struct ReportLaunch {
    wall_ms: f64,
    max_rss_mb: f64,
    rss: String,
    tail_ms: Option<f64>,
    imbalance_ms: Option<f64>,
    joiner_claim_ms: Option<f64>,
    linger_ms: Option<f64>,
    pg_cpu_ms: u64,
    busy_pct: f64,
}

async fn report_bench() -> anyhow::Result<String> {
    let tx = env_i64("PARTITION_BENCH_REPORT_TX", 5_000_000)?;
    let rounds = env_i64("PARTITION_BENCH_REPORT_RUNS", 3)?.max(1) as usize;
    let shapes = shapes()?;
    let forms = formulations();
    let ranges_plan = |plan: Plan, users: i64| -> Vec<String> {
        KeyRange::split(1, users, REPORT_PARTITIONS)
            .into_iter()
            .map(|r| step_select(plan, r))
            .collect()
    };
    use std::fmt::Write as _;
    let mut s = String::new();
    writeln!(
        s,
        "\n=== Report, PostgreSQL, {tx} transactions on the day, {rounds} rounds; --partitions {REPORT_PARTITIONS}; \
         x = median over rounds of (run / that round's fastest formulation) ==="
    )?;
    for shape in shapes {
        let url = fresh_database().await?;
        let mut conn = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
        let t = Instant::now();
        let users = seed(&mut conn, tx, shape).await?;
        eprintln!(
            "\nreport {}: seeded {tx} transactions, {users} users in {:.1} s",
            shape.label(),
            t.elapsed().as_secs_f64()
        );
        let env = LaunchEnv {
            db_url: url.clone(),
            redis_url: format!("redis://127.0.0.1:{REDIS_PORT}"),
        };
        // The plan the step picks for this day, asked as the step asks.
        let plan = {
            let date: chrono::NaiveDate = DATE.parse()?;
            let ts = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S");
            Plan::choose(&mut conn, date, ts(FROM)?, ts(TO)?).await?
        };
        let ranges = ranges_plan(plan, users);
        // The expected rows.
        settle(&mut conn).await?;
        insert_select(&mut conn, &forms[0].1).await?;
        let expected = checksum(&mut conn).await?;
        anyhow::ensure!(
            expected.report_rows == users,
            "{} wrote {} rows, expected {users}",
            forms[0].0,
            expected.report_rows
        );
        let explain_full = explain(&url, &step_select(plan, KeyRange::ALL));
        let explain_part = explain(&url, &ranges[1]);

        let mut items: Vec<Item> = (0..forms.len()).map(Item::Form).collect();
        items.push(Item::RangesSerial);
        items.push(Item::RangesTwo);
        items.extend((0..REPORT_LAUNCHES.len()).map(Item::Launch));
        let mut times: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        let mut launches: BTreeMap<usize, Vec<ReportLaunch>> = BTreeMap::new();
        for round in 0..rounds {
            let mut this_round: BTreeMap<usize, f64> = BTreeMap::new();
            for k in 0..items.len() {
                let idx = (k + round * 3) % items.len();
                let item = items[idx];
                settle(&mut conn).await?;
                let ms = match item {
                    Item::Form(i) => {
                        let mut own = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
                        let t = Instant::now();
                        insert_select(&mut own, &forms[i].1).await?;
                        t.elapsed().as_secs_f64() * 1000.0
                    }
                    Item::RangesSerial => {
                        let mut own = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
                        let t = Instant::now();
                        for r in &ranges {
                            insert_select(&mut own, r).await?;
                        }
                        t.elapsed().as_secs_f64() * 1000.0
                    }
                    Item::RangesTwo => {
                        let mut a = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
                        let mut b = DbConnection::establish(&DatabaseUrl::parse(&url)?).await?;
                        let (even, odd): (Vec<_>, Vec<_>) =
                            ranges.iter().enumerate().partition(|(i, _)| i % 2 == 0);
                        let t = Instant::now();
                        let fa = async {
                            for (_, r) in &even {
                                insert_select(&mut a, r).await?;
                            }
                            anyhow::Ok(())
                        };
                        let fb = async {
                            for (_, r) in &odd {
                                insert_select(&mut b, r).await?;
                            }
                            anyhow::Ok(())
                        };
                        let (ra, rb) = tokio::join!(fa, fb);
                        ra?;
                        rb?;
                        t.elapsed().as_secs_f64() * 1000.0
                    }
                    Item::Launch(li) => {
                        let launch = REPORT_LAUNCHES[li];
                        let g = run_group(&env, &launch.args(&[format!("date={DATE}")]), false)?;
                        let step_ms = g.step_ms(REPORT_STEP)?;
                        let tl = g.timeline(REPORT_STEP);
                        eprintln!(
                            "    {:<58}: report step {step_ms:.0} ms, wall {:.0} ms, RSS {} MB, launchers CPU {} ms, PG CPU {} ms, machine busy {:.0}%\n      {}",
                            launch.label,
                            g.wall_ms,
                            g.rss_list(),
                            g.launcher_cpu_ms(),
                            g.cpu.postgres_ms,
                            100.0 * g.cpu.machine_busy_ms as f64
                                / g.cpu.machine_total_ms.max(1) as f64,
                            tl.describe()
                        );
                        launches.entry(li).or_default().push(ReportLaunch {
                            wall_ms: g.wall_ms,
                            max_rss_mb: g.max_rss_mb(),
                            rss: g.rss_list(),
                            tail_ms: tl.tail_ms(),
                            imbalance_ms: tl.imbalance_ms(),
                            joiner_claim_ms: tl.joiner_first_claim(),
                            linger_ms: g.linger_ms(),
                            pg_cpu_ms: g.cpu.postgres_ms,
                            busy_pct: 100.0 * g.cpu.machine_busy_ms as f64
                                / g.cpu.machine_total_ms.max(1) as f64,
                        });
                        step_ms
                    }
                };
                let got = checksum(&mut conn).await?;
                anyhow::ensure!(
                    got == expected,
                    "{} {item:?} wrote other rows: {got:?} vs {expected:?}",
                    shape.label()
                );
                times.entry(idx).or_default().push(ms);
                this_round.insert(idx, ms);
            }
            eprintln!(
                "  round {round}: {}",
                items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| format!("{it:?} {:.0}", this_round[&i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        // The baseline: the formulation with the lowest median.
        let (best_i, best_ms) = (0..forms.len())
            .map(|i| (i, median(&times[&i])))
            .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
        let paired = |idx: usize| -> f64 {
            let r: Vec<f64> = times[&idx]
                .iter()
                .zip(&times[&best_i])
                .map(|(a, b)| a / b)
                .collect();
            median(&r)
        };
        writeln!(
            s,
            "\n-- {} ({users} users; the step's plan {:?}) --",
            shape.label(),
            plan.closing
        )?;
        writeln!(
            s,
            "{:<62} | {:>8} {:>11} | {:>6} {:>7} | notes",
            "run", "median", "(min–max)", "x best", "paired"
        )?;
        for (idx, item) in items.iter().enumerate() {
            let (name, notes) = match *item {
                Item::Form(i) => (
                    format!("INSERT…SELECT: {}", forms[i].0),
                    if i == best_i {
                        "the baseline (fastest median)".to_owned()
                    } else {
                        String::new()
                    },
                ),
                Item::RangesSerial => (
                    "step's statement x 4 ranges, 1 session, in turn".to_owned(),
                    "the SQL work of 4 partitions".to_owned(),
                ),
                Item::RangesTwo => (
                    "step's statement x 4 ranges, 2 sessions".to_owned(),
                    "the partitioned SQL, no runtime".to_owned(),
                ),
                Item::Launch(li) => {
                    let ls = &launches[&li];
                    let wall: Vec<f64> = ls.iter().map(|l| l.wall_ms).collect();
                    let tail: Vec<f64> = ls.iter().filter_map(|l| l.tail_ms).collect();
                    let imbal: Vec<f64> = ls.iter().filter_map(|l| l.imbalance_ms).collect();
                    let jclaim: Vec<f64> = ls.iter().filter_map(|l| l.joiner_claim_ms).collect();
                    let linger: Vec<f64> = ls.iter().filter_map(|l| l.linger_ms).collect();
                    let opt = |v: &[f64]| {
                        if v.is_empty() {
                            "-".to_owned()
                        } else {
                            format!("{:.0} ms", median(v))
                        }
                    };
                    let pg: Vec<f64> = ls.iter().map(|l| l.pg_cpu_ms as f64).collect();
                    let busy: Vec<f64> = ls.iter().map(|l| l.busy_pct).collect();
                    let max_rss = ls.iter().map(|l| l.max_rss_mb).fold(0.0, f64::max);
                    (
                        format!("{} (report step)", REPORT_LAUNCHES[li].label),
                        format!(
                            "wall {:.0} ms; tail {}; imbalance {}; joiner's 1st claim {}; linger {}; PG CPU {:.0} ms; machine {:.0}%; peak RSS {} MB (max {max_rss:.1})",
                            median(&wall),
                            opt(&tail),
                            opt(&imbal),
                            opt(&jclaim),
                            opt(&linger),
                            median(&pg),
                            median(&busy),
                            ls.iter()
                                .map(|l| l.rss.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                }
            };
            writeln!(
                s,
                "{name:<62} | {:>8.0} {:>11} | {:>5.2}x {:>6.2}x | {notes}",
                median(&times[&idx]),
                format!("({})", min_max(&times[&idx])),
                median(&times[&idx]) / best_ms,
                paired(idx),
            )?;
        }
        writeln!(s, "  EXPLAIN, the whole day:\n{explain_full}")?;
        writeln!(
            s,
            "  EXPLAIN, partition 2 of {REPORT_PARTITIONS}:\n{explain_part}"
        )?;
        drop(conn);
        drop_database().await?;
    }
    writeln!(
        s,
        "\nx best = ratio of medians to the fastest formulation; paired = median over rounds of (run / the fastest formulation in that round). \
         Target: partitioned <= 0.8x the fastest single statement. The launcher's figure is its report step (the manager's step execution: \
         partition creation, claims, the partitions' transactions, the wait for the last one); tail = last partition end -> step end."
    )?;
    Ok(s)
}
