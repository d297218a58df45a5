//! Helpers shared by the benchmarks: where the release launcher is, which PostgreSQL to use, and
//! the peak RSS of a launcher process.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

/// The release launcher (`BATCH_LAUNCHER_BIN`, else `target/release/batch-launcher`).
pub fn launcher_bin() -> PathBuf {
    std::env::var_os("BATCH_LAUNCHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/batch-launcher")
        })
}

/// The PostgreSQL server for benchmarks (`BATCH_BENCH_POSTGRES_URL`, else the local one).
pub fn postgres_admin_url() -> String {
    std::env::var("BATCH_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `VmHWM` (peak resident set, kB) of a running process.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits for `child` (blocking), sampling its peak RSS every 20 ms; fails if it did not exit 0.
/// Returns the peak RSS in kB.
pub fn wait_tracking_peak_rss(mut child: Child) -> anyhow::Result<u64> {
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(kb) = peak_rss_kb(pid) {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "launcher exited with {status}");
            return Ok(peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
