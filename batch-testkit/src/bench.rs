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

/// CPU time (user + system, ms) a running process has used so far, from `/proc/{pid}/stat`.
pub fn cpu_time_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state field.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some(ticks * 10)
}

/// What [`wait_tracking`] saw of a launcher process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Peak resident set (`VmHWM`), kB.
    pub peak_rss_kb: u64,
    /// CPU time, user + system, ms (last sample before exit, so up to ~20 ms short).
    pub cpu_ms: u64,
}

/// Waits for `child` (blocking), sampling its peak RSS and CPU time every 20 ms; fails if it did
/// not exit 0.
pub fn wait_tracking(mut child: Child) -> anyhow::Result<ProcStats> {
    let pid = child.id();
    let mut stats = ProcStats::default();
    loop {
        if let Some(kb) = peak_rss_kb(pid) {
            stats.peak_rss_kb = stats.peak_rss_kb.max(kb);
        }
        if let Some(ms) = cpu_time_ms(pid) {
            stats.cpu_ms = stats.cpu_ms.max(ms);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "launcher exited with {status}");
            return Ok(stats);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` (blocking), sampling its peak RSS every 20 ms; fails if it did not exit 0.
/// Returns the peak RSS in kB.
pub fn wait_tracking_peak_rss(child: Child) -> anyhow::Result<u64> {
    Ok(wait_tracking(child)?.peak_rss_kb)
}
