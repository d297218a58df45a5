//! Partitioned assetRefreshJob (issue 23) against the unpartitioned one, as ratios measured in
//! one run. Run with
//!
//! ```sh
//! cargo build --release -p batch-launcher && cargo bench -p batch-asset --bench asset_partition_bench
//! ```
//!
//! 10,000 active users in a fresh PostgreSQL database `asset_partition_bench`, the fake asset API
//! (in this process, over loopback HTTP) answering after 50 ms, and the release `batch-launcher`
//! (`BATCH_LAUNCHER_BIN` for another build). Each round (`ASSET_PARTITION_BENCH_RUNS`, default 3),
//! in an order rotated per round, each a new job instance (a new `date`):
//! - 1 process, unpartitioned, `asset.concurrency = 64`;
//! - 2 processes started together, each `--partitions 8 --workers 1 --join` at concurrency 32
//!   (64 calls in flight in all);
//! - 1 process `--partitions 8 --workers 2` at concurrency 32 (64 in flight).
//!
//! For each it prints the step's time (the manager's step execution), the wall time (first
//! process started to last exited), both against the ideal `users × latency / 64` and as the
//! median over rounds of the ratio to the unpartitioned run of the same round (target: within
//! 5%), each process's peak RSS (target < 150 MB), the API's call rate over the run (sampled
//! every 100 ms: how full the 64 slots were at the partitions' ends), and the partitions' course
//! from the launchers' JSON logs.
//!
//! `cargo test --all-targets` runs this target without `--bench`: it then exits at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use batch_asset::fake_server::{FakeApiConfig, FakeState, spawn};
use batch_testkit::bench::{ProcStats, launcher_bin, postgres_admin_url, wait_tracking};
use core_domain::{DatabaseUrl, DbConnection};

const USERS: i64 = 10_000;
const LATENCY: Duration = Duration::from_millis(50);
const IN_FLIGHT: usize = 64;
const DB_NAME: &str = "asset_partition_bench";
const JOB: &str = "assetRefreshJob";
const STEP: &str = "refreshAssetStep";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "asset_partition_bench: run it with `cargo bench -p batch-asset --bench asset_partition_bench`"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(run()) {
        eprintln!("asset_partition_bench failed: {e:#}");
        std::process::exit(1);
    }
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

/// A way to launch the job.
#[derive(Clone, Copy)]
struct Launch {
    label: &'static str,
    processes: usize,
    concurrency: usize,
    flags: &'static [&'static str],
}

const LAUNCHES: [Launch; 3] = [
    Launch {
        label: "1 process, unpartitioned, concurrency 64",
        processes: 1,
        concurrency: 64,
        flags: &[],
    },
    Launch {
        label: "2 processes x --partitions 8 --workers 1 --join, c=32",
        processes: 2,
        concurrency: 32,
        flags: &["--partitions", "8", "--workers", "1", "--join"],
    },
    Launch {
        label: "1 process --partitions 8 --workers 2, c=32",
        processes: 1,
        concurrency: 32,
        flags: &["--partitions", "8", "--workers", "2"],
    },
];

/// The events of a launcher's JSON log that the timeline uses (ms since the group started).
#[derive(Debug, Clone)]
struct LogEvent {
    at_ms: f64,
    message: String,
    partition: Option<String>,
    step: Option<String>,
    duration_ms: Option<f64>,
}

fn parse_log(path: &Path, origin: SystemTime) -> Vec<LogEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let origin: chrono::DateTime<chrono::Utc> = origin.into();
    text.lines()
        .filter_map(|line| {
            let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
            let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
            let at_ms = (ts.with_timezone(&chrono::Utc) - origin)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0;
            let partition = v["span"]["partition"].as_str().map(str::to_owned);
            Some(LogEvent {
                at_ms,
                message: v["message"].as_str().unwrap_or("").to_owned(),
                partition,
                step: v["step"].as_str().map(str::to_owned),
                duration_ms: v["duration_ms"].as_f64(),
            })
        })
        .collect()
}

struct Proc {
    stats: ProcStats,
    exited_ms: f64,
    result: serde_json::Value,
    log: Vec<LogEvent>,
}

impl Proc {
    fn is_manager(&self) -> bool {
        self.result["status"] != "JOINED"
    }
}

/// One measured launch.
struct Run {
    wall_ms: f64,
    step_ms: f64,
    rss_mb: Vec<f64>,
    /// ms from the start to 1%, 50%, 99% and 100% of the calls made.
    call_marks: [f64; 4],
    /// Calls/s over the middle (10%–90% of the calls), against the ideal 64 / 50 ms.
    middle_rate: f64,
    tail_ms: Option<f64>,
    imbalance_ms: Option<f64>,
    launcher_cpu_ms: u64,
}

async fn run_launch(
    launch: Launch,
    db_url: &str,
    api: &str,
    date: &str,
    fake: &Arc<FakeState>,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let calls_before = fake.total_calls();
    // The API's call count every 100 ms, from the start.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, fake) = (stop.clone(), fake.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                samples.push((
                    t.elapsed().as_secs_f64() * 1000.0,
                    fake.total_calls() - calls_before,
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples.push((
                t.elapsed().as_secs_f64() * 1000.0,
                fake.total_calls() - calls_before,
            ));
            samples
        })
    };
    let origin = SystemTime::now();
    let t0 = Instant::now();
    let mut children: Vec<(Child, PathBuf, PathBuf)> = Vec::new();
    for i in 0..launch.processes {
        let result = dir.path().join(format!("result{i}.json"));
        let log = dir.path().join(format!("log{i}.json"));
        let child = Command::new(launcher_bin())
            .args(["--log-format", "json", "run", JOB, &format!("date={date}")])
            .args(launch.flags)
            .arg("--result-file")
            .arg(&result)
            .env("BATCH__DATABASE__URL", db_url)
            .env("BATCH__ASSET__API_BASE_URL", api)
            .env("BATCH__ASSET__CONCURRENCY", launch.concurrency.to_string())
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
            tokio::task::spawn_blocking(move || {
                let stats = wait_tracking(child);
                (stats, t0.elapsed(), result, log)
            })
        })
        .collect();
    let mut procs = Vec::new();
    for w in waiters {
        let (stats, exited, result, log) = w.await?;
        let stats = stats.map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            anyhow::anyhow!("{e}; its last log lines: {tail:?}")
        })?;
        procs.push(Proc {
            stats,
            exited_ms: exited.as_secs_f64() * 1000.0,
            result: serde_json::from_str(&std::fs::read_to_string(&result)?)?,
            log: parse_log(&log, origin),
        });
    }
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await?;
    let wall_ms = procs.iter().map(|p| p.exited_ms).fold(0.0, f64::max);

    let managers: Vec<&Proc> = procs.iter().filter(|p| p.is_manager()).collect();
    anyhow::ensure!(
        managers.len() == 1 && managers[0].result["status"] == "COMPLETED",
        "{}: expected one COMPLETED manager and the others JOINED: {:?}",
        launch.label,
        procs
            .iter()
            .map(|p| p.result["status"].clone())
            .collect::<Vec<_>>()
    );
    let manager = managers[0];
    let step = manager.result["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == STEP))
        .ok_or_else(|| anyhow::anyhow!("no {STEP} in {}", manager.result))?;
    let written = step["write_count"].as_i64().unwrap_or(0);
    anyhow::ensure!(
        written == USERS,
        "{}: wrote {written} snapshots",
        launch.label
    );
    let calls = fake.total_calls() - calls_before;
    anyhow::ensure!(
        calls == USERS as u64,
        "{}: made {calls} calls",
        launch.label
    );
    let step_ms = step["duration_ms"].as_f64().unwrap_or(0.0);

    // The call rate.
    let at = |share: f64| {
        let n = (USERS as f64 * share).ceil() as u64;
        samples
            .iter()
            .find(|(_, c)| *c >= n)
            .map_or(f64::NAN, |(t, _)| *t)
    };
    let call_marks = [at(0.01), at(0.5), at(0.99), at(1.0)];
    let middle_rate = 0.8 * USERS as f64 / ((at(0.9) - at(0.1)) / 1000.0);

    // The partitions' course.
    let prefix = format!("{STEP}:partition");
    let mut last_ends = Vec::new();
    let mut step_end = None;
    let mut timeline = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let mut n = 0;
        let mut first_claim = None;
        let mut last_end = None;
        let mut work = 0.0;
        for e in &p.log {
            let ours = e
                .partition
                .as_deref()
                .is_some_and(|n| n.starts_with(&prefix));
            match e.message.as_str() {
                "claimed" if ours => first_claim = first_claim.or(Some(e.at_ms)),
                "partition completed" if ours => {
                    n += 1;
                    last_end = Some(e.at_ms);
                    work += e.duration_ms.unwrap_or(0.0);
                }
                "step ended" if e.step.as_deref() == Some(STEP) => step_end = Some(e.at_ms),
                _ => {}
            }
        }
        if let Some(end) = last_end {
            last_ends.push(end);
        }
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}"));
        timeline.push(format!(
            "p{i}{}: {n} partitions ({work:.0} ms of work), first claim {} ms, last end {} ms, exit {:.0} ms, RSS {:.1} MB, CPU {} ms",
            if p.is_manager() { "(manager)" } else { "" },
            f(first_claim),
            f(last_end),
            p.exited_ms,
            p.stats.peak_rss_kb as f64 / 1024.0,
            p.stats.cpu_ms
        ));
    }
    let last_end = last_ends.iter().copied().fold(f64::NAN, f64::max);
    let tail_ms = step_end.map(|e| e - last_end).filter(|x| x.is_finite());
    let imbalance_ms = (last_ends.len() > 1).then(|| {
        last_ends.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - last_ends.iter().copied().fold(f64::INFINITY, f64::min)
    });
    eprintln!(
        "  {:<54}: step {step_ms:.0} ms, wall {wall_ms:.0} ms; calls 1/50/99/100% at {:.0}/{:.0}/{:.0}/{:.0} ms, middle {middle_rate:.0} calls/s; last partition end -> step end {}\n      {}",
        launch.label,
        call_marks[0],
        call_marks[1],
        call_marks[2],
        call_marks[3],
        tail_ms.map_or("-".into(), |t| format!("{t:.0} ms")),
        timeline.join("\n      ")
    );
    Ok(Run {
        wall_ms,
        step_ms,
        rss_mb: procs
            .iter()
            .map(|p| p.stats.peak_rss_kb as f64 / 1024.0)
            .collect(),
        call_marks,
        middle_rate,
        tail_ms,
        imbalance_ms,
        launcher_cpu_ms: procs.iter().map(|p| p.stats.cpu_ms).sum(),
    })
}

async fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        launcher_bin().exists(),
        "{} not found: run `cargo build --release -p batch-launcher` first",
        launcher_bin().display()
    );
    let rounds: usize = std::env::var("ASSET_PARTITION_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let admin = DatabaseUrl::parse(&postgres_admin_url())?;
    let mut admin_conn = DbConnection::establish(&admin).await?;
    admin_conn
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
        .await?;
    admin_conn
        .batch_execute(&format!("CREATE DATABASE {DB_NAME}"))
        .await?;
    let db_url = postgres_admin_url()
        .rsplit_once('/')
        .map(|(b, _)| format!("{b}/{DB_NAME}"))
        .unwrap();
    core_domain::migrate::run_pending(
        &DatabaseUrl::parse(&db_url)?,
        batch_common::repository::BASE_MIGRATIONS,
    )
    .await?;
    let mut conn = DbConnection::establish(&DatabaseUrl::parse(&db_url)?).await?;
    conn.batch_execute(&format!(
        "INSERT INTO users (id, name, status, created_at, updated_at) \
         SELECT g, 'bench-' || g, 'ACTIVE', TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01' FROM generate_series(1::bigint, {USERS}) g; \
         ANALYZE users"
    ))
    .await?;
    let (addr, fake, _server) = spawn(FakeApiConfig {
        latency: LATENCY,
        ..FakeApiConfig::default()
    })
    .await?;
    let api = format!("http://{addr}");
    let ideal_ms = USERS as f64 * LATENCY.as_secs_f64() * 1000.0 / IN_FLIGHT as f64;
    println!(
        "asset_partition_bench: launcher {}, {USERS} users, fake API latency {} ms, {rounds} rounds",
        launcher_bin().display(),
        LATENCY.as_millis()
    );
    let mut runs: Vec<Vec<Run>> = (0..LAUNCHES.len()).map(|_| Vec::new()).collect();
    let mut day = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("a date");
    for round in 0..rounds {
        eprintln!("round {round}");
        for k in 0..LAUNCHES.len() {
            let li = (k + round) % LAUNCHES.len();
            day = day.succ_opt().expect("a next day");
            let run = run_launch(LAUNCHES[li], &db_url, &api, &day.to_string(), &fake).await?;
            runs[li].push(run);
        }
    }
    println!(
        "\n=== assetRefreshJob on PostgreSQL, {USERS} users, fake API {} ms, 64 calls in flight in all; ideal = users x latency / 64 = {ideal_ms:.0} ms ===",
        LATENCY.as_millis()
    );
    println!(
        "{:<54} | {:>7} {:>11} {:>6} {:>7} | {:>7} {:>7} {:>7} | {:>9} | {:>5} {:>5} | {:>8} | peak RSS MB per process",
        "launch",
        "step ms",
        "(min–max)",
        "ideal",
        "vs 1p",
        "wall ms",
        "ideal",
        "vs 1p",
        "calls/s",
        "tail",
        "imbal",
        "lnch CPU"
    );
    for (li, launch) in LAUNCHES.iter().enumerate() {
        let rs = &runs[li];
        let step: Vec<f64> = rs.iter().map(|r| r.step_ms).collect();
        let wall: Vec<f64> = rs.iter().map(|r| r.wall_ms).collect();
        let step_vs: Vec<f64> = rs
            .iter()
            .zip(&runs[0])
            .map(|(r, b)| r.step_ms / b.step_ms)
            .collect();
        let wall_vs: Vec<f64> = rs
            .iter()
            .zip(&runs[0])
            .map(|(r, b)| r.wall_ms / b.wall_ms)
            .collect();
        let rate: Vec<f64> = rs.iter().map(|r| r.middle_rate).collect();
        let tail: Vec<f64> = rs.iter().filter_map(|r| r.tail_ms).collect();
        let imbal: Vec<f64> = rs.iter().filter_map(|r| r.imbalance_ms).collect();
        let cpu: Vec<f64> = rs.iter().map(|r| r.launcher_cpu_ms as f64).collect();
        let rss = rs
            .iter()
            .map(|r| {
                r.rss_mb
                    .iter()
                    .map(|m| format!("{m:.1}"))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let f = |v: &[f64]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(v))
            }
        };
        println!(
            "{:<54} | {:>7.0} {:>11} {:>5.1}% {:>6.3}x | {:>7.0} {:>6.1}% {:>6.3}x | {:>9.0} | {:>5} {:>5} | {:>8.0} | {rss}",
            launch.label,
            median(&step),
            format!("({})", min_max(&step)),
            100.0 * ideal_ms / median(&step),
            median(&step_vs),
            median(&wall),
            100.0 * ideal_ms / median(&wall),
            median(&wall_vs),
            median(&rate),
            f(&tail),
            f(&imbal),
            median(&cpu),
        );
        let marks: Vec<String> = rs
            .iter()
            .map(|r| {
                format!(
                    "{:.0}/{:.0}/{:.0}/{:.0}",
                    r.call_marks[0], r.call_marks[1], r.call_marks[2], r.call_marks[3]
                )
            })
            .collect();
        println!(
            "{:<54}   calls 1%/50%/99%/100% at (ms since start, per round): {}",
            "",
            marks.join(", ")
        );
    }
    println!(
        "\nstep = the manager's step execution; wall = first process started to last exited; ideal = {ideal_ms:.0} ms / the time; \
         vs 1p = median over rounds of (run / the unpartitioned run of the same round), target within 5% (<= 1.05x); \
         calls/s = the API's call rate between 10% and 90% of the calls (ideal {:.0}); tail = last partition end -> step end (ms); \
         imbal = first process out of partitions -> last partition end (ms); peak RSS target < 150 MB per process.",
        IN_FLIGHT as f64 / LATENCY.as_secs_f64()
    );
    drop(conn);
    admin_conn
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
        .await?;
    Ok(())
}
