//! assetRefreshJob benchmark (issue 5). Run with
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo bench --workspace --bench asset_bench
//! ```
//!
//! 10,000 active users in a fresh PostgreSQL database `batch_asset_bench`, the fake asset API
//! (in this process, over loopback HTTP) answering after 50 ms, and the release `batch-launcher`
//! (`BATCH_LAUNCHER_BIN` to measure another build) running the job at concurrency 16, 64 and
//! 256. Prints the step's time against the ideal `users × latency / concurrency` (the physical
//! limit: every call takes the latency, `concurrency` at a time), as a percentage, and the
//! launcher's peak RSS.
//!
//! `cargo test --all-targets` runs this target without `--bench`: it then exits at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batch_asset::fake_server::{FakeApiConfig, spawn};
use batch_testkit::bench::{launcher_bin, postgres_admin_url, wait_tracking_peak_rss};
use core_domain::{DatabaseUrl, DbConnection};

const USERS: i64 = 10_000;
const LATENCY: Duration = Duration::from_millis(50);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("asset_bench: run it with `cargo bench -p batch-asset --bench asset_bench`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(run()) {
        eprintln!("asset_bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// Runs the job; returns (step ms, peak RSS kB, snapshots written).
async fn run_job(
    db_url: &str,
    api: &str,
    concurrency: usize,
    date: &str,
) -> anyhow::Result<(u64, u64, i64)> {
    let dir = tempfile::tempdir()?;
    let result = dir.path().join("result.json");
    let child = Command::new(launcher_bin())
        .args([
            "-q",
            "run",
            "assetRefreshJob",
            &format!("date={date}"),
            "--result-file",
        ])
        .arg(&result)
        .env("BATCH__DATABASE__URL", db_url)
        .env("BATCH__ASSET__API_BASE_URL", api)
        .env("BATCH__ASSET__CONCURRENCY", concurrency.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("{}: {e} (build it first)", launcher_bin().display()))?;
    let peak = tokio::task::spawn_blocking(move || wait_tracking_peak_rss(child)).await??;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result)?)?;
    let step = &json["steps"][0];
    Ok((
        step["duration_ms"].as_u64().unwrap_or(0),
        peak,
        step["write_count"].as_i64().unwrap_or(0),
    ))
}

async fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        launcher_bin().exists(),
        "{} not found: run `cargo build --release -p batch-launcher` first",
        launcher_bin().display()
    );
    let admin = DatabaseUrl::parse(&postgres_admin_url())?;
    let mut admin_conn = DbConnection::establish(&admin).await?;
    admin_conn
        .batch_execute("DROP DATABASE IF EXISTS batch_asset_bench WITH (FORCE)")
        .await?;
    admin_conn
        .batch_execute("CREATE DATABASE batch_asset_bench")
        .await?;
    let db_url = postgres_admin_url()
        .rsplit_once('/')
        .map(|(b, _)| format!("{b}/batch_asset_bench"))
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
    println!(
        "\n=== assetRefreshJob, {USERS} active users, fake API latency {} ms ===",
        LATENCY.as_millis()
    );
    for (concurrency, date) in [
        (16usize, "2026-11-20"),
        (64, "2026-11-21"),
        (256, "2026-11-22"),
    ] {
        let calls_before = fake.total_calls();
        let t = Instant::now();
        let (step_ms, peak_kb, written) = run_job(&db_url, &api, concurrency, date).await?;
        let wall = t.elapsed();
        anyhow::ensure!(written == USERS, "wrote {written} snapshots");
        anyhow::ensure!(
            fake.total_calls() - calls_before == USERS as u64,
            "made {} calls",
            fake.total_calls() - calls_before
        );
        let rate = USERS as f64 / (step_ms.max(1) as f64 / 1000.0);
        let ideal_ms = USERS as f64 * LATENCY.as_secs_f64() * 1000.0 / concurrency as f64;
        println!(
            "concurrency {concurrency:>3}: step {step_ms:>6} ms, ideal {ideal_ms:>6.0} ms -> {:>5.1}% of ideal (target >= 90%), \
             {rate:>5.0} users/s, launcher wall {:.1} s, peak RSS {:.1} MB (target < 150 MB)",
            100.0 * ideal_ms / step_ms.max(1) as f64,
            wall.as_secs_f64(),
            peak_kb as f64 / 1024.0
        );
    }
    drop(conn);
    admin_conn
        .batch_execute("DROP DATABASE IF EXISTS batch_asset_bench WITH (FORCE)")
        .await?;
    Ok(())
}
