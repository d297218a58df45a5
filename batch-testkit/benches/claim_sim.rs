//! Partition claiming toward internet scale, sized for a 2-core machine: many concurrent workers,
//! each with a connection of its own, claim the partitions of one manager step execution through
//! `JobRepository::claim_partition`, checkpoint them with fenced `save_partition_progress` calls
//! and end them with `end_partition(COMPLETED)`; some die mid-partition (they drop everything:
//! no end, no renewal, their connection closed) and are replaced, their partitions re-claimed
//! after the lease; some of the dead come back as zombies and try to write; a few are killed
//! inside `claim_partition` itself (the future dropped mid-transaction). Run with
//!
//! ```sh
//! cargo bench -p batch-testkit --bench claim_sim
//! ```
//!
//! Settings (environment variables, defaults in brackets):
//! - `CLAIM_SIM_BACKEND` [`postgres`]: or `mysql` (MariaDB).
//! - `CLAIM_SIM_SERVER` [`own`]: `own` starts a throwaway server of the backend
//!   (`batch_testkit::servers`) with `max_connections` sized for the run (PostgreSQL: raised by
//!   `ALTER SYSTEM` and a restart) and, with `CLAIM_SIM_DURABLE=1` [1], the durability of a
//!   production server (PostgreSQL `fsync`, `synchronous_commit`, `full_page_writes` on; MariaDB
//!   `innodb_flush_log_at_trx_commit=1`). `shared` uses the server of `BATCH_BENCH_POSTGRES_URL`
//!   / `BATCH_TEST_MYSQL_URL` (the one `scripts/services.sh` starts) and refuses to start when its
//!   free connections cannot hold the workers: that server's `max_connections` is 100 and other
//!   tests use it too.
//! - `CLAIM_SIM_WORKERS` [100], `CLAIM_SIM_PARTITIONS` [10000].
//! - `CLAIM_SIM_DEATH_RATE` [0.02]: per claimed partition, the chance its worker dies on it
//!   (before one of its checkpoints or before its end, uniformly).
//! - `CLAIM_SIM_ZOMBIE_RATE` [0.5]: the chance a dead worker wakes up after its partition was
//!   re-claimed (a stalled process, not a dead one) and tries to renew, checkpoint and end it.
//! - `CLAIM_SIM_CLAIM_KILL_RATE` [0.003]: the chance a worker is killed during `claim_partition`
//!   (its future dropped after 0 to twice the recent average claim latency, wherever it is);
//!   whether the claim had committed is read back from the database (the row's owner).
//! - `CLAIM_SIM_LEASE_MS` [1000]: the lease (real clock, `Utc::now()`).
//! - `CLAIM_SIM_CHECKPOINTS` [3] per partition, each after 0–`CLAIM_SIM_WORK_MS` [5] ms of work.
//! - `CLAIM_SIM_POLL_MS` [100], `CLAIM_SIM_POLL_MAX_MS` [1600]: an idle worker's pause after a
//!   claim that found nothing, doubling up to the maximum (as the runtime's workers), ±25%.
//! - `CLAIM_SIM_REPLACE_MS` [50]: a dead worker's replacement starts after up to this long.
//! - `CLAIM_SIM_SEED` [42], `CLAIM_SIM_TIMEOUT_S` [600].
//!
//! It checks, and exits 1 if any check fails: every partition COMPLETED; exactly one successful
//! `end_partition` per partition, by the owner the row names, with that owner's final checkpoint;
//! each row's `claim_count` equal to 1 + the times its holder was lost (deaths holding it, kills
//! whose claim had committed, leases lost by live workers), so the rows with `claim_count > 1` are
//! exactly the partitions whose holder was lost; every zombie renewal, checkpoint and end refused.
//!
//! It prints the total time, claims/s, claim latency (p50/p99/max of the `claim_partition` call),
//! re-claims and how long after the lease they came, the bench process's peak RSS (`VmHWM`) and
//! CPU time, the server's CPU time and memory (own server) and transactions per partition
//! (PostgreSQL), the plan of the candidate query at the start, half way and at the end, and what
//! those figures say about 1,000 workers.
//!
//! `CLAIM_SIM_BACKEND=mysql` at the defaults took 8 minutes here (PostgreSQL: under one): at
//! MariaDB's REPEATABLE READ every claim locks the rows its scan passes (see the report).
//!
//! `cargo test --all-targets` builds this target and runs it without `--bench`: it then exits at once.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_common::repository::schema::batch_step_execution as s;
use batch_common::repository::{
    BASE_MIGRATIONS, BatchStatus, Claim, CreateExecution, JobRepository, LeaseLost, NewPartition,
    StepCounts, StepProgress,
};
use batch_testkit::TestDb;
use batch_testkit::servers::{MariaDbServer, PgServer};
use chrono::{NaiveDateTime, Utc};
use core_domain::{Backend, Database, DatabaseUrl, PoolOptions};
use diesel::prelude::*;

/// How many zombies may hold a connection at once.
const ZOMBIE_CONNECTIONS: usize = 10;
/// Connections beyond the workers and zombies: the bench's own pool (4), psql, a margin.
const EXTRA_CONNECTIONS: usize = 30;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("claim_sim: run it with `cargo bench -p batch-testkit --bench claim_sim`");
        return;
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claim_sim: {e:#}");
            std::process::exit(2);
        }
    };
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("claim_sim: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = rt.block_on(run(&cfg, &server));
    drop(rt);
    drop(server);
    match outcome {
        Ok(true) => println!("\nclaim_sim: all checks passed"),
        Ok(false) => {
            println!("\nclaim_sim: CHECKS FAILED");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("claim_sim failed: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone)]
struct Config {
    backend: Backend,
    own_server: bool,
    durable: bool,
    workers: usize,
    partitions: u32,
    death_rate: f64,
    zombie_rate: f64,
    claim_kill_rate: f64,
    lease: Duration,
    checkpoints: u32,
    work_ms: u64,
    poll_ms: u64,
    poll_max_ms: u64,
    replace_ms: u64,
    seed: u64,
    timeout: Duration,
}

fn env<T: FromStr>(key: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{key}={v}: {e}")),
        _ => Ok(default),
    }
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let backend = match env("CLAIM_SIM_BACKEND", "postgres".to_owned())?.as_str() {
            "postgres" | "postgresql" | "pg" => Backend::Postgres,
            "mysql" | "mariadb" => Backend::Mysql,
            other => anyhow::bail!("CLAIM_SIM_BACKEND={other}: use postgres or mysql"),
        };
        let own_server = match env("CLAIM_SIM_SERVER", "own".to_owned())?.as_str() {
            "own" => true,
            "shared" => false,
            other => anyhow::bail!("CLAIM_SIM_SERVER={other}: use own or shared"),
        };
        let rate = |key: &str, default: f64| -> anyhow::Result<f64> {
            let r: f64 = env(key, default)?;
            anyhow::ensure!((0.0..=1.0).contains(&r), "{key}={r}: a rate is 0..=1");
            Ok(r)
        };
        let cfg = Config {
            backend,
            own_server,
            durable: env::<u8>("CLAIM_SIM_DURABLE", 1)? != 0,
            workers: env("CLAIM_SIM_WORKERS", 100)?,
            partitions: env("CLAIM_SIM_PARTITIONS", 10_000)?,
            death_rate: rate("CLAIM_SIM_DEATH_RATE", 0.02)?,
            zombie_rate: rate("CLAIM_SIM_ZOMBIE_RATE", 0.5)?,
            claim_kill_rate: rate("CLAIM_SIM_CLAIM_KILL_RATE", 0.003)?,
            lease: Duration::from_millis(env("CLAIM_SIM_LEASE_MS", 1000)?),
            checkpoints: env("CLAIM_SIM_CHECKPOINTS", 3)?,
            work_ms: env("CLAIM_SIM_WORK_MS", 5)?,
            poll_ms: env("CLAIM_SIM_POLL_MS", 100)?,
            poll_max_ms: env("CLAIM_SIM_POLL_MAX_MS", 1600)?,
            replace_ms: env("CLAIM_SIM_REPLACE_MS", 50)?,
            seed: env("CLAIM_SIM_SEED", 42)?,
            timeout: Duration::from_secs(env("CLAIM_SIM_TIMEOUT_S", 600)?),
        };
        anyhow::ensure!(cfg.workers >= 1, "CLAIM_SIM_WORKERS must be at least 1");
        anyhow::ensure!(
            cfg.partitions >= 1,
            "CLAIM_SIM_PARTITIONS must be at least 1"
        );
        anyhow::ensure!(
            cfg.lease >= Duration::from_millis(100),
            "CLAIM_SIM_LEASE_MS must be at least 100"
        );
        Ok(cfg)
    }

    /// Connections the run needs at most.
    fn connections(&self) -> usize {
        self.workers + ZOMBIE_CONNECTIONS + EXTRA_CONNECTIONS
    }
}

// ---------------------------------------------------------------------------------------------
// The server

enum ServerKind {
    Pg(PgServer),
    Maria(MariaDbServer),
    Shared,
}

struct Server {
    kind: ServerKind,
    admin_url: String,
}

impl Server {
    fn start(cfg: &Config) -> anyhow::Result<Server> {
        let need = cfg.connections();
        match (cfg.backend, cfg.own_server) {
            (Backend::Sqlite, _) => anyhow::bail!("SQLite has no remote workers"),
            (Backend::Postgres, true) => {
                let t = Instant::now();
                let mut pg = PgServer::start(None);
                // ALTER SYSTEM cannot run in a transaction block: one statement per call.
                pg.sql(
                    "postgres",
                    &format!("ALTER SYSTEM SET max_connections = {need}"),
                );
                // Statement statistics for the report (the Debian package ships the extension).
                pg.sql(
                    "postgres",
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                );
                if cfg.durable {
                    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
                        pg.sql("postgres", &format!("ALTER SYSTEM SET {setting} = on"));
                    }
                }
                pg.restart();
                let got = pg.sql("postgres", "SHOW max_connections");
                println!(
                    "server: own PostgreSQL on 127.0.0.1:{} (max_connections {}, durable {}), started in {:.1} s",
                    pg.port(),
                    got.trim(),
                    cfg.durable,
                    t.elapsed().as_secs_f64()
                );
                let admin_url = pg.url("127.0.0.1", "");
                Ok(Server {
                    kind: ServerKind::Pg(pg),
                    admin_url,
                })
            }
            (Backend::Mysql, true) => {
                let t = Instant::now();
                let maria = MariaDbServer::start(None);
                maria.sql(
                    "mysql",
                    &format!("SET GLOBAL max_connections = GREATEST(@@max_connections, {need})"),
                );
                if cfg.durable {
                    maria.sql("mysql", "SET GLOBAL innodb_flush_log_at_trx_commit = 1");
                }
                let got = maria.sql("mysql", "SELECT @@max_connections");
                println!(
                    "server: own MariaDB on 127.0.0.1:{} (max_connections {}, durable {}), started in {:.1} s",
                    maria.port(),
                    got.trim(),
                    cfg.durable,
                    t.elapsed().as_secs_f64()
                );
                let admin_url = maria.url("127.0.0.1", "");
                Ok(Server {
                    kind: ServerKind::Maria(maria),
                    admin_url,
                })
            }
            (backend, false) => {
                let admin_url = match backend {
                    Backend::Postgres => batch_testkit::bench::postgres_admin_url(),
                    _ => batch_testkit::mysql_admin_url(),
                };
                let (max, used) = match backend {
                    Backend::Postgres => {
                        let max = psql(&admin_url, &["SHOW max_connections"])?;
                        let used = psql(&admin_url, &["SELECT count(*) FROM pg_stat_activity"])?;
                        (max, used)
                    }
                    _ => {
                        let max = mariadb_cli(&admin_url, "SELECT @@max_connections")?;
                        let used = mariadb_cli(
                            &admin_url,
                            "SELECT COUNT(*) FROM information_schema.PROCESSLIST",
                        )?;
                        (max, used)
                    }
                };
                let max: usize = max.trim().parse().unwrap_or(0);
                let used: usize = used.trim().parse().unwrap_or(0);
                // PostgreSQL keeps superuser_reserved_connections (3) back; count them as used.
                let free = max.saturating_sub(used + 3);
                anyhow::ensure!(
                    free >= need,
                    "the shared server at {} allows {max} connections, {used} are in use: {free} free, \
                     and this run needs {need} ({} workers + {ZOMBIE_CONNECTIONS} zombies + \
                     {EXTRA_CONNECTIONS}). Run with CLAIM_SIM_SERVER=own (the default: a throwaway \
                     server whose max_connections is raised for the run), or with fewer workers, \
                     e.g. CLAIM_SIM_WORKERS={}",
                    redacted(&admin_url),
                    cfg.workers,
                    free.saturating_sub(ZOMBIE_CONNECTIONS + EXTRA_CONNECTIONS)
                );
                println!(
                    "server: shared {} (max_connections {max}, {used} in use)",
                    redacted(&admin_url)
                );
                Ok(Server {
                    kind: ServerKind::Shared,
                    admin_url,
                })
            }
        }
    }

    /// An own PostgreSQL server (it loads pg_stat_statements).
    fn own_postgres(&self) -> bool {
        matches!(self.kind, ServerKind::Pg(_))
    }

    /// The server's process (own servers only).
    fn pid(&self) -> Option<u32> {
        let file = match &self.kind {
            ServerKind::Pg(pg) => pg.socket_dir().join("data/postmaster.pid"),
            ServerKind::Maria(m) => m.socket().with_file_name("mysqld.pid"),
            ServerKind::Shared => return None,
        };
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// A server URL with its password hidden.
fn redacted(url: &str) -> String {
    DatabaseUrl::parse(url).map_or_else(|_| "(unparsable URL)".to_owned(), |u| u.redacted())
}

/// `psql <url> -c …` (each argument one command, in one session); the output, tuples only.
fn psql(url: &str, commands: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("psql");
    cmd.arg(url)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Host, port, user and database of a `scheme://user@host:port/db` URL (no password).
fn url_parts(url: &str) -> (String, String, String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split('?').next().unwrap_or(rest);
    let (user, rest) = rest.split_once('@').unwrap_or(("root", rest));
    let user = user.split(':').next().unwrap_or(user);
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    (host.into(), port.into(), user.into(), db.into())
}

/// `mariadb -e <sql>` over TCP; the output, tab-separated with column names (one result: without).
fn mariadb_cli(url: &str, sql: &str) -> anyhow::Result<String> {
    let (host, port, user, db) = url_parts(url);
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            &host,
            "-P",
            &port,
            "-u",
            &user,
        ])
        .args(["-N", "-B", "-e", sql, &db])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "mariadb: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// A tiny deterministic PRNG (SplitMix64): no rand crate in the workspace.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Uniform in 0..=max.
    fn upto(&mut self, max: u64) -> u64 {
        self.next_u64() % (max + 1)
    }
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

// ---------------------------------------------------------------------------------------------
// Shared state of a run

/// A worker that stopped holding a partition without ending it.
#[derive(Debug, Clone)]
struct Lost {
    partition: i64,
    owner: String,
    /// The row's claim count when this holder claimed it.
    claim_count: i32,
    /// Its last successful write (claim or checkpoint): the lease runs from there.
    last_write: Instant,
    why: LostWhy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostWhy {
    /// Died mid-partition.
    Died,
    /// Killed inside claim_partition after its claim had committed.
    KilledInClaim,
    /// A live worker whose checkpoint or end was refused (its lease had expired).
    LeaseLost,
    /// A live worker whose checkpoint or end failed with a database error.
    Error,
}

#[derive(Default)]
struct Log {
    /// Per partition: (owner, claim_count) of every claim the workers saw succeed, in order.
    claims: HashMap<i64, Vec<(String, i32)>>,
    /// Per partition: the owners whose end_partition(COMPLETED) returned true.
    ends: HashMap<i64, Vec<String>>,
    /// Holders lost, per partition.
    lost: HashMap<i64, Vec<Lost>>,
    /// Latency (µs) of claim_partition calls that claimed one / found none.
    claim_us: Vec<u32>,
    empty_us: Vec<u32>,
    /// How long after its holder's last write each lost partition was re-claimed (ms).
    reclaim_after_ms: Vec<u64>,
    /// Database errors (not LeaseLost) seen by workers, by operation.
    errors: BTreeMap<String, u64>,
    /// Zombie attempts: (what, partition state at wake-up, accepted?).
    zombie_results: Vec<(&'static str, &'static str, bool)>,
    /// Workers killed inside claim_partition: whether their claim had committed.
    claim_kills: Vec<bool>,
    failures: Vec<String>,
}

struct Sim {
    cfg: Config,
    url: DatabaseUrl,
    manager: i64,
    admin: Database,
    completed: AtomicU64,
    deaths: AtomicU64,
    /// A moving average of successful claim latency (µs): kills in claim_partition land within
    /// twice of it, so some hit the commit and the re-read, not only the first statement.
    claim_ewma_us: AtomicU64,
    log: Mutex<Log>,
    zombies: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    zombie_slots: tokio::sync::Semaphore,
    deadline: Instant,
}

impl Sim {
    fn done(&self) -> bool {
        self.completed.load(Ordering::SeqCst) >= u64::from(self.cfg.partitions)
            || Instant::now() > self.deadline
    }
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut log = self.log();
        let n = log.errors.entry(what.to_owned()).or_default();
        *n += 1;
        if *n <= 3 {
            eprintln!("claim_sim: {what}: {e}");
        }
    }
    fn lose(&self, lost: Lost) {
        self.log()
            .lost
            .entry(lost.partition)
            .or_default()
            .push(lost);
    }
}

async fn connect(url: &DatabaseUrl) -> anyhow::Result<Database> {
    Ok(Database::connect_unchecked(
        url,
        &PoolOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(30),
        },
    )
    .await?)
}

fn progress(checkpoint: u32, owner: &str) -> StepProgress {
    let items = i64::from(checkpoint) * 100;
    StepProgress {
        counts: StepCounts {
            read_count: items,
            write_count: items,
            commit_count: i64::from(checkpoint),
            ..StepCounts::default()
        },
        context: serde_json::json!({ "checkpoint": checkpoint, "owner": owner }),
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

enum WorkerEnd {
    /// Nothing left to claim and every partition completed.
    Finished,
    /// Died mid-partition (dropped everything).
    Died(Lost),
    /// Killed inside claim_partition.
    KilledInClaim { owner: String, at: Instant },
}

/// One worker slot: a worker, and its replacement when it dies, until the run is over.
async fn slot(sim: Arc<Sim>, index: usize, first: Database) {
    let mut db = Some(first);
    for generation in 0u64.. {
        if sim.done() {
            return;
        }
        let owner = format!("w{index}.{generation}");
        let mut rng = Rng::new(sim.cfg.seed ^ ((index as u64) << 32) ^ generation);
        let conn = match db.take() {
            Some(d) => d,
            None => match connect(&sim.url).await {
                Ok(d) => d,
                Err(e) => {
                    sim.error("connect", &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let end = worker(&sim, &conn, &owner, &mut rng).await;
        // Dead or finished: its connection goes with it.
        drop(conn);
        match end {
            WorkerEnd::Finished => return,
            WorkerEnd::Died(lost) => {
                sim.deaths.fetch_add(1, Ordering::SeqCst);
                sim.lose(lost.clone());
                if rng.chance(sim.cfg.zombie_rate) {
                    let zombie_seed = rng.next_u64();
                    let handle = tokio::spawn(zombie(sim.clone(), lost, zombie_seed));
                    sim.zombies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(handle);
                }
            }
            WorkerEnd::KilledInClaim { owner, at } => {
                let handle = tokio::spawn(after_claim_kill(sim.clone(), owner, at));
                sim.zombies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.upto(sim.cfg.replace_ms))).await;
    }
}

async fn worker(sim: &Sim, db: &Database, owner: &str, rng: &mut Rng) -> WorkerEnd {
    let repo = JobRepository::new(db.clone());
    let lease = chrono::Duration::from_std(sim.cfg.lease).expect("lease");
    let managers = [sim.manager];
    let mut pause = sim.cfg.poll_ms;
    while !sim.done() {
        let at = now();
        let started = Instant::now();
        let claim = repo.claim_partition(&managers, owner, at, at - lease);
        let claimed = if rng.chance(sim.cfg.claim_kill_rate) {
            let typical = sim.claim_ewma_us.load(Ordering::Relaxed);
            let limit = Duration::from_micros(rng.upto(typical * 2));
            match tokio::time::timeout(limit, claim).await {
                Ok(r) => r,
                Err(_) => {
                    // Had it committed, the lease runs from the timestamp taken before the call.
                    return WorkerEnd::KilledInClaim {
                        owner: owner.to_owned(),
                        at: started,
                    };
                }
            }
        } else {
            claim.await
        };
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let row = match claimed {
            Ok(Some(row)) => row,
            Ok(None) => {
                sim.log().empty_us.push(us);
                // As the runtime's idle workers: a doubling pause, with jitter here.
                let jittered = pause * 3 / 4 + rng.upto(pause / 2);
                tokio::time::sleep(Duration::from_millis(jittered)).await;
                pause = (pause * 2).min(sim.cfg.poll_max_ms);
                continue;
            }
            Err(e) => {
                sim.error("claim_partition", &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // The lease runs from the timestamp the claim wrote, taken just before the call.
        pause = sim.cfg.poll_ms;
        let mut last_write = started;
        {
            let mut log = sim.log();
            log.claim_us.push(us);
            let ewma = sim.claim_ewma_us.load(Ordering::Relaxed);
            sim.claim_ewma_us
                .store((ewma * 15 + u64::from(us)) / 16, Ordering::Relaxed);
            log.claims
                .entry(row.id)
                .or_default()
                .push((owner.to_owned(), row.claim_count));
            if row.claim_count > 1 {
                let previous = log
                    .lost
                    .get(&row.id)
                    .and_then(|l| l.iter().map(|l| l.last_write).max());
                if let Some(p) = previous {
                    log.reclaim_after_ms
                        .push(u64::try_from(p.elapsed().as_millis()).unwrap_or(u64::MAX));
                }
            }
        }
        let lost = |why, last_write| Lost {
            partition: row.id,
            owner: owner.to_owned(),
            claim_count: row.claim_count,
            last_write,
            why,
        };
        // Dies before checkpoint k (k == checkpoints: before its end)?
        let dies_at = rng
            .chance(sim.cfg.death_rate)
            .then(|| rng.upto(u64::from(sim.cfg.checkpoints)) as u32);
        let mut done = true;
        for k in 0..sim.cfg.checkpoints {
            if dies_at == Some(k) {
                return WorkerEnd::Died(lost(LostWhy::Died, last_write));
            }
            tokio::time::sleep(Duration::from_millis(rng.upto(sim.cfg.work_ms))).await;
            let write_started = Instant::now();
            let saved = match db.get().await {
                Ok(mut conn) => {
                    JobRepository::save_partition_progress(
                        &mut conn,
                        &Claim::of(&row),
                        &progress(k + 1, owner),
                        now(),
                    )
                    .await
                }
                Err(e) => Err(e.into()),
            };
            match saved {
                Ok(()) => last_write = write_started,
                Err(e) if e.is::<LeaseLost>() => {
                    // As the runtime does: another worker resumes it.
                    sim.lose(lost(LostWhy::LeaseLost, last_write));
                    done = false;
                    break;
                }
                Err(e) => {
                    sim.error("save_partition_progress", &format!("{e:#}"));
                    sim.lose(lost(LostWhy::Error, last_write));
                    done = false;
                    break;
                }
            }
        }
        if !done {
            continue;
        }
        if dies_at == Some(sim.cfg.checkpoints) {
            return WorkerEnd::Died(lost(LostWhy::Died, last_write));
        }
        let final_progress = progress(sim.cfg.checkpoints, owner);
        match repo
            .end_partition(
                &Claim::of(&row),
                BatchStatus::Completed,
                None,
                &final_progress,
                now(),
            )
            .await
        {
            Ok(true) => {
                sim.log()
                    .ends
                    .entry(row.id)
                    .or_default()
                    .push(owner.to_owned());
                sim.completed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(false) => sim.lose(lost(LostWhy::LeaseLost, last_write)),
            Err(e) => {
                sim.error("end_partition", &e);
                sim.lose(lost(LostWhy::Error, last_write));
            }
        }
    }
    WorkerEnd::Finished
}

/// A dead worker that wakes up after its partition was re-claimed and tries to renew, checkpoint
/// and end it as if it still held it: all three must be refused.
async fn zombie(sim: Arc<Sim>, dead: Lost, seed: u64) {
    let mut rng = Rng::new(seed);
    let give_up = Instant::now() + sim.cfg.lease * 10 + Duration::from_secs(30);
    loop {
        let reclaimed = sim
            .log()
            .claims
            .get(&dead.partition)
            .is_some_and(|c| c.iter().any(|(_, n)| *n > dead.claim_count));
        if reclaimed {
            break;
        }
        if Instant::now() > give_up {
            sim.log().failures.push(format!(
                "partition {} of dead worker {} was not re-claimed within {:?}",
                dead.partition,
                dead.owner,
                give_up.duration_since(dead.last_write)
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Wake up a little later: sometimes while the new owner works, sometimes after it ended.
    let typical = u64::from(sim.cfg.checkpoints) * (sim.cfg.work_ms / 2 + 2) + 5;
    tokio::time::sleep(Duration::from_millis(rng.upto(typical * 2))).await;
    let Ok(_permit) = sim.zombie_slots.acquire().await else {
        return;
    };
    let state = if sim.log().ends.contains_key(&dead.partition) {
        "completed by its new owner"
    } else {
        "held by its new owner"
    };
    let db = match connect(&sim.url).await {
        Ok(db) => db,
        Err(e) => {
            sim.error("zombie connect", &e);
            return;
        }
    };
    let repo = JobRepository::new(db.clone());
    let owner = dead.owner.as_str();
    let claim = Claim {
        partition: dead.partition,
        owner: dead.owner.clone(),
        claim: dead.claim_count,
    };
    let mut results = Vec::new();
    match repo.renew_partition(&claim, now()).await {
        Ok(renewed) => results.push(("renew", state, renewed)),
        Err(e) => sim.error("zombie renew_partition", &e),
    }
    let saved = match db.get().await {
        Ok(mut conn) => {
            JobRepository::save_partition_progress(
                &mut conn,
                &claim,
                &StepProgress {
                    counts: StepCounts::default(),
                    context: serde_json::json!({ "zombie": owner }),
                },
                now(),
            )
            .await
        }
        Err(e) => Err(e.into()),
    };
    match saved {
        Ok(()) => results.push(("checkpoint", state, true)),
        Err(e) if e.is::<LeaseLost>() => results.push(("checkpoint", state, false)),
        Err(e) => sim.error("zombie save_partition_progress", &format!("{e:#}")),
    }
    match repo
        .end_partition(
            &claim,
            BatchStatus::Completed,
            Some("zombie"),
            &StepProgress::default(),
            now(),
        )
        .await
    {
        Ok(ended) => results.push(("end", state, ended)),
        Err(e) => sim.error("zombie end_partition", &e),
    }
    sim.log().zombie_results.extend(results);
}

/// A worker killed inside claim_partition: did its claim commit? Its row names it as owner until
/// the lease expires and another worker re-claims it (reads within a few hundred ms).
async fn after_claim_kill(sim: Arc<Sim>, owner: String, at: Instant) {
    // Let the server finish (or roll back) what the dropped connection had sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let found: Result<Vec<(i64, i32)>, _> = async {
        let mut conn = sim.admin.get().await?;
        let rows = core_domain::dispatch!(&mut *conn, c => diesel_async::RunQueryDsl::load(
            s::table
                .filter(s::partition_of.eq(sim.manager))
                .filter(s::owner.eq(&owner))
                .filter(s::status.eq(BatchStatus::Started.as_str()))
                .select((s::id, s::claim_count)),
            c,
        )
        .await)?;
        anyhow::Ok(rows)
    }
    .await;
    match found {
        Ok(rows) => {
            let held = !rows.is_empty();
            for (partition, claim_count) in rows {
                sim.lose(Lost {
                    partition,
                    owner: owner.clone(),
                    claim_count,
                    last_write: at,
                    why: LostWhy::KilledInClaim,
                });
            }
            sim.log().claim_kills.push(held);
        }
        Err(e) => sim.error("reading a killed claimer's rows", &format!("{e:#}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn latency_line(us: &mut [u32]) -> String {
    us.sort_unstable();
    format!(
        "n {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        us.len(),
        percentile(us, 0.5),
        percentile(us, 0.99),
        percentile(us, 1.0)
    )
}

/// `field` (kB) of /proc/<pid>/<file>.
fn proc_kb(pid: u32, file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The live children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// CPU ms of a process: (own utime + stime, its waited-for children's cutime + cstime).
fn cpu_ms(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some(((f[0] + f[1]) * 10, (f[2] + f[3]) * 10))
}

/// CPU ms used so far by a server: the process, its exited children and its live children.
fn server_cpu_ms(pid: u32) -> u64 {
    let (own, dead) = cpu_ms(pid).unwrap_or((0, 0));
    own + dead
        + children(pid)
            .into_iter()
            .filter_map(|c| cpu_ms(c).map(|(o, _)| o))
            .sum::<u64>()
}

/// The server's memory now: (processes, total Pss kB), Pss so shared memory is counted once.
fn server_pss_kb(pid: u32) -> (usize, u64) {
    let mut pids = children(pid);
    pids.push(pid);
    let total = pids
        .iter()
        .filter_map(|p| proc_kb(*p, "smaps_rollup", "Pss:"))
        .sum();
    (pids.len(), total)
}

/// Server transactions committed and rolled back in the current database (PostgreSQL).
async fn pg_xacts(db: &Database) -> anyhow::Result<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Xacts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        xact_commit: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        xact_rollback: i64,
    }
    let mut conn = db.get().await?;
    let core_domain::DbConnection::Postgres(c) = &mut *conn else {
        anyhow::bail!("not PostgreSQL");
    };
    let x: Xacts = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()",
        ),
        c,
    )
    .await?;
    Ok((x.xact_commit, x.xact_rollback))
}

/// What the bench database's busy backends are doing now (PostgreSQL): (state / wait event, count).
async fn pg_activity(db: &Database) -> anyhow::Result<Vec<(String, i64)>> {
    #[derive(QueryableByName)]
    struct Activity {
        #[diesel(sql_type = diesel::sql_types::Text)]
        what: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.get().await?;
    let core_domain::DbConnection::Postgres(c) = &mut *conn else {
        anyhow::bail!("not PostgreSQL");
    };
    let rows: Vec<Activity> = diesel_async::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT state || ', ' || coalesce(wait_event_type || ':' || wait_event, 'no wait event (on CPU or runnable)') AS what, \
             count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
             AND state <> 'idle' GROUP BY 1",
        ),
        c,
    )
    .await?;
    Ok(rows.into_iter().map(|a| (a.what, a.n)).collect())
}

/// The hot candidate query of claim_partition (an unclaimed partition of one manager; the other
/// try looks for expired leases the same way), as this backend's SQL.
fn candidate_sql(cfg: &Config, manager: i64) -> String {
    match cfg.backend {
        Backend::Postgres => format!(
            "UPDATE batch_step_execution SET status = 'STARTED', owner = $1, claim_count = claim_count + 1, \
             last_updated = $2 WHERE id = (SELECT id FROM batch_step_execution WHERE partition_of = {manager} \
             AND status = 'STARTING' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) AND partition_of = {manager} \
             AND status = 'STARTING' RETURNING id"
        ),
        _ => format!(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN; SELECT id FROM batch_step_execution \
             WHERE partition_of = {manager} AND status = 'STARTING' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED; \
             UPDATE …; COMMIT"
        ),
    }
}

/// The plan of the candidate query now, run for real (in a rolled-back transaction).
fn explain(cfg: &Config, url: &str, manager: i64, generic: bool) -> String {
    let starting = BatchStatus::Starting.as_str();
    let result = match cfg.backend {
        Backend::Postgres => {
            // The same statement as diesel's (see candidate_sql), prepared, as the worker's
            // connection runs it; custom plan (the first five executions) or generic (what a
            // cached prepared statement may switch to).
            let prepare = "PREPARE candidate(bigint) AS \
                 SELECT id FROM batch_step_execution \
                 WHERE partition_of = $1 AND status = 'STARTING' \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED";
            let mode = if generic {
                "SET plan_cache_mode = force_generic_plan"
            } else {
                "SET plan_cache_mode = force_custom_plan"
            };
            let run = format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) EXECUTE candidate({manager})"
            );
            psql(url, &[mode, "BEGIN", prepare, &run, "ROLLBACK"])
        }
        _ => {
            let sql = format!(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN; ANALYZE SELECT id FROM batch_step_execution \
                 WHERE partition_of = {manager} AND status = '{starting}' \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED; ROLLBACK;"
            );
            let (host, port, user, db) = url_parts(url);
            Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "--protocol=TCP",
                    "-h",
                    &host,
                    "-P",
                    &port,
                    "-u",
                    &user,
                ])
                .args(["-t", "-e", &sql, &db])
                .output()
                .map_err(anyhow::Error::from)
                .and_then(|o| {
                    anyhow::ensure!(
                        o.status.success(),
                        "{}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                })
        }
    };
    result.unwrap_or_else(|e| format!("(explain failed: {e:#})"))
}

fn print_plan(title: &str, plan: &str) -> bool {
    println!("  {title}:");
    for line in plan.lines().filter(|l| !l.trim().is_empty()) {
        println!("    {line}");
    }
    plan.contains("idx_batch_step_execution_partition")
}

// ---------------------------------------------------------------------------------------------
// The run

/// The worker slots of one process share its owner name (`host:pid:tag`); the fence is the claim
/// (owner and claim count), so a slot that stalls past its lease while a sibling slot of the same
/// process re-claims its partition must be refused its stale checkpoint. Deterministic
/// (timestamps given, no sleeping). True: the stale write was accepted (a fencing bug).
async fn same_owner_fence_demo(repo: &JobRepository, lease: Duration) -> anyhow::Result<bool> {
    let manager = create_manager(repo, 1, "same-owner-demo").await?;
    let lease = chrono::Duration::from_std(lease)?;
    let owner = "host-a:4242";
    let t0 = now();
    let first = repo
        .claim_partition(&[manager], owner, t0, t0 - lease)
        .await?
        .ok_or_else(|| anyhow::anyhow!("slot 1 claimed nothing"))?;
    // Slot 1 stalls; after its lease slot 2 of the same process re-claims the partition.
    let t1 = t0 + lease * 2;
    let second = repo
        .claim_partition(&[manager], owner, t1, t1 - lease)
        .await?
        .ok_or_else(|| anyhow::anyhow!("slot 2 re-claimed nothing"))?;
    anyhow::ensure!(
        second.id == first.id && second.claim_count == 2,
        "not re-claimed"
    );
    let mut conn = repo.database().get().await?;
    let stale = JobRepository::save_partition_progress(
        &mut conn,
        &Claim::of(&first),
        &progress(1, "stale slot 1"),
        t1,
    )
    .await;
    Ok(stale.is_ok())
}

async fn create_manager(repo: &JobRepository, partitions: u32, key: &str) -> anyhow::Result<i64> {
    let t = now();
    let instance = repo
        .get_or_create_instance("claimSimJob", key, "{}", t)
        .await?;
    let CreateExecution::Created { execution, .. } = repo
        .create_execution(instance.id, "{}", "claim_sim", t, t)
        .await?
    else {
        anyhow::bail!("no execution created");
    };
    let manager = repo
        .create_step_execution(execution.id, "simStep", &StepProgress::default(), t)
        .await?;
    let plan: Vec<NewPartition> = (0..partitions)
        .map(|i| NewPartition {
            index: i,
            from: i64::from(i) * 1000,
            to: i64::from(i) * 1000 + 999,
            context: serde_json::Value::Null,
        })
        .collect();
    repo.create_partitions(execution.id, "simStep", manager.id, &plan, t)
        .await?;
    Ok(manager.id)
}

async fn run(cfg: &Config, server: &Server) -> anyhow::Result<bool> {
    println!(
        "claim_sim: {} workers (one connection each), {} partitions, death rate {}, zombie rate {}, \
         claim-kill rate {}, lease {} ms, {} checkpoints of 0-{} ms work, poll {}-{} ms, seed {}",
        cfg.workers,
        cfg.partitions,
        cfg.death_rate,
        cfg.zombie_rate,
        cfg.claim_kill_rate,
        cfg.lease.as_millis(),
        cfg.checkpoints,
        cfg.work_ms,
        cfg.poll_ms,
        cfg.poll_max_ms,
        cfg.seed
    );
    let t = Instant::now();
    let tdb = TestDb::on_server(&server.admin_url, BASE_MIGRATIONS).await;
    let url = tdb.url().clone();
    let raw_url = url.expose_secret().to_owned();
    let repo = JobRepository::new(tdb.db.clone());
    let manager = create_manager(&repo, cfg.partitions, "sim").await?;
    println!(
        "setup: database {} migrated, manager {manager} with {} partitions created in {:.1} s",
        url.database_name(),
        cfg.partitions,
        t.elapsed().as_secs_f64()
    );
    println!("candidate query (diesel): {}", candidate_sql(cfg, manager));
    let mut plans_use_index = Vec::new();
    println!("plan of the candidate query:");
    let plan = {
        let (c, u) = (cfg.clone(), raw_url.clone());
        tokio::task::spawn_blocking(move || explain(&c, &u, manager, false)).await?
    };
    plans_use_index.push((
        "start, custom",
        print_plan(
            "at the start (all STARTING, table as created), custom plan",
            &plan,
        ),
    ));

    // Every worker's own connection, opened before the clock starts.
    let t = Instant::now();
    let mut connects = tokio::task::JoinSet::new();
    for i in 0..cfg.workers {
        let url = url.clone();
        connects.spawn(async move { (i, connect(&url).await) });
    }
    let mut first: Vec<Option<Database>> = (0..cfg.workers).map(|_| None).collect();
    while let Some(r) = connects.join_next().await {
        let (i, db) = r?;
        first[i] = Some(db.map_err(|e| anyhow::anyhow!("worker {i} could not connect: {e:#}"))?);
    }
    println!(
        "connections: {} opened in {:.2} s",
        cfg.workers,
        t.elapsed().as_secs_f64()
    );

    // Statement statistics of this run (own PostgreSQL server only).
    let statements = server.own_postgres()
        && psql(
            &raw_url,
            &[
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
                "SELECT pg_stat_statements_reset()",
            ],
        )
        .map_err(|e| println!("pg_stat_statements unavailable: {e:#}"))
        .is_ok();
    let server_pid = server.pid();
    let server_cpu_before = server_pid.map(server_cpu_ms);
    let own_cpu_before = batch_testkit::bench::cpu_time_ms(std::process::id());
    let xacts_before = if cfg.backend == Backend::Postgres {
        pg_xacts(&tdb.db).await.ok()
    } else {
        None
    };

    let sim = Arc::new(Sim {
        cfg: cfg.clone(),
        url: url.clone(),
        manager,
        admin: tdb.db.clone(),
        completed: AtomicU64::new(0),
        deaths: AtomicU64::new(0),
        claim_ewma_us: AtomicU64::new(2000),
        log: Mutex::new(Log::default()),
        zombies: Mutex::new(Vec::new()),
        zombie_slots: tokio::sync::Semaphore::new(ZOMBIE_CONNECTIONS),
        deadline: Instant::now() + cfg.timeout,
    });

    // Half way: the plan under load, and the server's memory with every worker connected.
    let monitor = {
        let sim = sim.clone();
        let raw_url = raw_url.clone();
        tokio::spawn(async move {
            while sim.completed.load(Ordering::SeqCst) < u64::from(sim.cfg.partitions) / 2
                && !sim.done()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let memory = server_pid.map(server_pss_kb);
            let cfg = sim.cfg.clone();
            let plans = tokio::task::spawn_blocking(move || {
                let custom = explain(&cfg, &raw_url, manager, false);
                let generic = (cfg.backend == Backend::Postgres)
                    .then(|| explain(&cfg, &raw_url, manager, true));
                (custom, generic)
            })
            .await
            .unwrap_or_default();
            (memory, plans)
        })
    };

    // Every 50 ms: what the server's backends wait on (PostgreSQL).
    let sampler = {
        let sim = sim.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, i64> = BTreeMap::new();
            let mut samples = 0u32;
            while sim.cfg.backend == Backend::Postgres && !sim.done() {
                if let Ok(rows) = pg_activity(&sim.admin).await {
                    samples += 1;
                    for (what, n) in rows {
                        *seen.entry(what).or_default() += n;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (samples, seen)
        })
    };

    let started = Instant::now();
    let mut slots = tokio::task::JoinSet::new();
    for (i, db) in first.into_iter().enumerate() {
        slots.spawn(slot(sim.clone(), i, db.expect("connected")));
    }
    while let Some(r) = slots.join_next().await {
        r?;
    }
    let elapsed = started.elapsed();
    let own_cpu_after = batch_testkit::bench::cpu_time_ms(std::process::id());
    // Zombies and killed-claimer checks still pending finish now (their partitions are done).
    loop {
        let pending: Vec<_> =
            std::mem::take(&mut *sim.zombies.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            break;
        }
        for h in pending {
            h.await?;
        }
    }
    let (memory, (mid_plan, mid_generic)) = monitor.await?;
    let (samples, activity) = sampler.await?;
    // Backends of closed connections report their statistics as they exit.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let server_cpu = match (server_pid, server_cpu_before) {
        (Some(pid), Some(before)) => Some(server_cpu_ms(pid).saturating_sub(before)),
        _ => None,
    };
    let xacts = match (xacts_before, pg_xacts(&tdb.db).await.ok()) {
        (Some((c0, r0)), Some((c1, r1))) => Some((c1 - c0, r1 - r0)),
        _ => None,
    };

    // ---- Verification ------------------------------------------------------------------
    let rows = repo.partitions(manager).await?;
    let mut log = std::mem::take(&mut *sim.log());
    let mut failures = std::mem::take(&mut log.failures);
    let timed_out = sim.completed.load(Ordering::SeqCst) < u64::from(cfg.partitions);
    if timed_out {
        failures.push(format!(
            "timed out after {:?}: {} of {} partitions completed",
            cfg.timeout,
            sim.completed.load(Ordering::SeqCst),
            cfg.partitions
        ));
    }
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        rows.len() == cfg.partitions as usize,
        format!("{} partition rows, expected {}", rows.len(), cfg.partitions),
    );
    let not_completed: Vec<_> = rows
        .iter()
        .filter(|r| r.status != BatchStatus::Completed)
        .map(|r| format!("{}={}", r.id, r.status))
        .collect();
    check(
        not_completed.is_empty(),
        format!(
            "{} partitions not COMPLETED: {:?}",
            not_completed.len(),
            &not_completed[..not_completed.len().min(5)]
        ),
    );
    let mut bad_ends = Vec::new();
    let mut bad_claims = Vec::new();
    let mut bad_rows = Vec::new();
    for r in &rows {
        let ends = log.ends.get(&r.id).map_or(&[][..], Vec::as_slice);
        if ends.len() != 1 {
            bad_ends.push(format!("{}: {:?}", r.id, ends));
        }
        let lost = log.lost.get(&r.id).map_or(0, Vec::len);
        let seen = log.claims.get(&r.id).map_or(0, Vec::len)
            + log.lost.get(&r.id).map_or(0, |l| {
                l.iter().filter(|l| l.why == LostWhy::KilledInClaim).count()
            });
        if r.claim_count as usize != 1 + lost || r.claim_count as usize != seen {
            bad_claims.push(format!(
                "{}: claim_count {}, holders lost {lost}, claims seen {seen}",
                r.id, r.claim_count
            ));
        }
        if let Some(ender) = ends.first() {
            let expected = serde_json::json!({ "checkpoint": cfg.checkpoints, "owner": ender });
            let context: serde_json::Value =
                serde_json::from_str(&r.execution_context).unwrap_or_default();
            if r.owner.as_deref() != Some(ender.as_str()) || context != expected {
                bad_rows.push(format!(
                    "{}: owner {:?}, context {}, ended by {ender}",
                    r.id, r.owner, r.execution_context
                ));
            }
        }
    }
    check(
        bad_ends.is_empty(),
        format!(
            "{} partitions without exactly one successful end_partition: {:?}",
            bad_ends.len(),
            &bad_ends[..bad_ends.len().min(5)]
        ),
    );
    check(
        bad_claims.is_empty(),
        format!(
            "{} partitions whose claim_count is not 1 + holders lost: {:?}",
            bad_claims.len(),
            &bad_claims[..bad_claims.len().min(5)]
        ),
    );
    check(
        bad_rows.is_empty(),
        format!(
            "{} partitions whose owner or checkpoint is not their completing worker's: {:?}",
            bad_rows.len(),
            &bad_rows[..bad_rows.len().min(5)]
        ),
    );
    let lost_all: Vec<&Lost> = log.lost.values().flatten().collect();
    let count = |why| lost_all.iter().filter(|l| l.why == why).count();
    let (died, killed_held, lease_lost, errored) = (
        count(LostWhy::Died),
        count(LostWhy::KilledInClaim),
        count(LostWhy::LeaseLost),
        count(LostWhy::Error),
    );
    let reclaimed_rows = rows.iter().filter(|r| r.claim_count > 1).count();
    let reclaims: i64 = rows.iter().map(|r| i64::from(r.claim_count) - 1).sum();
    let partitions_lost = log.lost.len();
    check(
        reclaimed_rows == partitions_lost,
        format!(
            "{reclaimed_rows} rows with claim_count > 1, but {partitions_lost} partitions lost a holder"
        ),
    );
    check(
        reclaims as usize == lost_all.len(),
        format!(
            "{reclaims} re-claims in the rows, but {} holders lost",
            lost_all.len()
        ),
    );
    check(
        died as u64 == sim.deaths.load(Ordering::SeqCst),
        format!(
            "{died} deaths logged, {} counted",
            sim.deaths.load(Ordering::SeqCst)
        ),
    );
    let zombie_accepted: Vec<_> = log.zombie_results.iter().filter(|z| z.2).collect();
    check(
        zombie_accepted.is_empty(),
        format!("zombie writes ACCEPTED: {zombie_accepted:?}"),
    );

    // ---- Report --------------------------------------------------------------------------
    let claims = log.claim_us.len();
    let secs = elapsed.as_secs_f64();
    println!(
        "\n== results ({}) ==",
        match cfg.backend {
            Backend::Postgres => "PostgreSQL",
            _ => "MariaDB",
        }
    );
    println!(
        "total time: {secs:.2} s for {} partitions ({:.0} completed/s)",
        cfg.partitions,
        f64::from(cfg.partitions) / secs
    );
    println!(
        "claims: {claims} ({:.0} claims/s), of which {reclaims} re-claims",
        claims as f64 / secs
    );
    println!(
        "claim latency (successful claim_partition calls): {}",
        latency_line(&mut log.claim_us)
    );
    println!(
        "claim latency (calls that found nothing): {}",
        latency_line(&mut log.empty_us)
    );
    println!(
        "holders lost: {} = {died} deaths mid-partition + {killed_held} killed in claim_partition after it committed \
         + {lease_lost} live workers whose lease had expired + {errored} database errors",
        lost_all.len()
    );
    let kills_held = log.claim_kills.iter().filter(|h| **h).count();
    println!(
        "killed inside claim_partition: {} ({kills_held} had claimed a partition, {} had not)",
        log.claim_kills.len(),
        log.claim_kills.len() - kills_held
    );
    println!(
        "re-claimed rows (claim_count > 1): {reclaimed_rows}; re-claims: {reclaims}; partitions that lost a holder: {partitions_lost}"
    );
    if !log.reclaim_after_ms.is_empty() {
        log.reclaim_after_ms.sort_unstable();
        let r = &log.reclaim_after_ms;
        println!(
            "re-claimed after the holder's last write: min {} ms, p50 {} ms, max {} ms (lease {} ms)",
            r[0],
            r[r.len() / 2],
            r[r.len() - 1],
            cfg.lease.as_millis()
        );
    }
    let mut zombie_summary: BTreeMap<(&str, &str), (u32, u32)> = BTreeMap::new();
    for (what, state, accepted) in &log.zombie_results {
        let e = zombie_summary.entry((what, state)).or_default();
        if *accepted {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    println!(
        "zombie writes: {} attempted, {} accepted",
        log.zombie_results.len(),
        zombie_accepted.len()
    );
    for ((what, state), (refused, accepted)) in &zombie_summary {
        println!("  {what} of a partition {state}: {refused} refused, {accepted} accepted");
    }
    if !log.errors.is_empty() {
        println!("database errors seen by workers: {:?}", log.errors);
    }
    let rss = batch_testkit::bench::peak_rss_kb(std::process::id());
    println!(
        "bench process: peak RSS (VmHWM) {:.1} MB, CPU {:.1} s during the run",
        rss.unwrap_or(0) as f64 / 1024.0,
        own_cpu_after.zip(own_cpu_before).map_or(0, |(a, b)| a - b) as f64 / 1000.0
    );
    let per_partition_cpu = server_cpu.map(|ms| ms as f64 / f64::from(cfg.partitions));
    if let Some(ms) = server_cpu {
        println!(
            "server: CPU {:.1} s during the run ({:.2} cores busy on average), {:.3} ms per partition \
             (claim + {} checkpoints + end, re-claims and polls included) => at most ~{:.0} partitions/s per server core",
            ms as f64 / 1000.0,
            ms as f64 / 1000.0 / secs,
            per_partition_cpu.unwrap_or(0.0),
            cfg.checkpoints,
            1000.0 / per_partition_cpu.unwrap_or(1.0).max(0.001)
        );
    }
    let mut per_connection_kb = None;
    match memory {
        Some((procs, pss)) if cfg.backend == Backend::Postgres => {
            let per = pss as f64 / procs.max(1) as f64;
            per_connection_kb = Some(per);
            println!(
                "server memory half way: {procs} processes, Pss {:.1} MB in all ({:.0} kB per process)",
                pss as f64 / 1024.0,
                per
            );
        }
        Some((_, pss)) => println!(
            "server memory half way: Pss {:.1} MB (one process, a thread per connection)",
            pss as f64 / 1024.0
        ),
        None => {}
    }
    if let Some((commits, rollbacks)) = xacts {
        println!(
            "server transactions (pg_stat_database): {commits} committed, {rollbacks} rolled back: {:.1} per partition",
            (commits + rollbacks) as f64 / f64::from(cfg.partitions)
        );
    }

    if samples > 0 {
        let mut by_count: Vec<(String, i64)> = activity.into_iter().collect();
        by_count.sort_by_key(|b| std::cmp::Reverse(b.1));
        let busy: i64 = by_count.iter().map(|(_, n)| n).sum();
        println!(
            "server backends not idle ({samples} samples every 50 ms): {:.1} on average, by state and wait event:",
            busy as f64 / f64::from(samples)
        );
        for (what, n) in by_count.iter().take(8) {
            println!(
                "  {:5.1} ({:4.1}%) {what}",
                *n as f64 / f64::from(samples),
                100.0 * *n as f64 / busy.max(1) as f64
            );
        }
    }
    let mut candidate_share = None;
    if statements {
        candidate_share = psql(
            &raw_url,
            &["SELECT round((100 * sum(total_exec_time) FILTER (WHERE query LIKE '%SKIP LOCKED%') / sum(total_exec_time))::numeric, 1) \
               || ' ' || round((sum(total_exec_time) FILTER (WHERE query LIKE '%SKIP LOCKED%') / sum(calls) FILTER (WHERE query LIKE '%SKIP LOCKED%'))::numeric, 3) \
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query NOT LIKE 'EXPLAIN%'"],
        )
        .ok()
        .and_then(|out| {
            let mut it = out.split_whitespace().map(|v| v.parse::<f64>().ok());
            Some((it.next()??, it.next()??))
        });
        let top = psql(
            &raw_url,
            &["SELECT to_char(calls, 'FM9999999') || ' calls | ' || to_char(total_exec_time, 'FM999999990.0') \
               || ' ms | mean ' || to_char(mean_exec_time, 'FM990.000') || ' ms | ' \
               || to_char(100 * total_exec_time / sum(total_exec_time) OVER (), 'FM990.0') || '% | ' \
               || left(regexp_replace(regexp_replace(query, '\\s+', ' ', 'g'), '\"batch_step_execution\"\\.', '', 'g'), 150) \
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               ORDER BY total_exec_time DESC LIMIT 12"],
        )
        .unwrap_or_else(|e| format!("(pg_stat_statements: {e:#})"));
        println!(
            "server statements (pg_stat_statements, by execution time; the run, zombies and checks):"
        );
        for line in top.lines() {
            println!("  {line}");
        }
    }

    println!("\nplan of the candidate query (continued):");
    plans_use_index.push((
        "half way, custom",
        print_plan("half way, under load, custom plan", &mid_plan),
    ));
    if let Some(g) = &mid_generic {
        plans_use_index.push((
            "half way, generic",
            print_plan(
                "half way, under load, generic plan (a cached prepared statement)",
                g,
            ),
        ));
    }
    let end_plan = {
        let (c, u) = (cfg.clone(), raw_url.clone());
        tokio::task::spawn_blocking(move || explain(&c, &u, manager, false)).await?
    };
    plans_use_index.push((
        "end, custom",
        print_plan(
            "at the end (all COMPLETED: an idle worker's poll), custom plan",
            &end_plan,
        ),
    ));
    println!(
        "  idx_batch_step_execution_partition used: {}",
        plans_use_index
            .iter()
            .map(|(when, used)| format!("{when}: {}", if *used { "yes" } else { "no" }))
            .collect::<Vec<_>>()
            .join(", ")
    );

    match same_owner_fence_demo(&repo, cfg.lease).await {
        Ok(false) => println!(
            "\nfencing by claim: a stale slot whose partition a sibling slot of the same process \
             re-claimed is refused its checkpoint"
        ),
        Ok(true) => failures.push(
            "a stale slot's checkpoint was accepted after a sibling slot of the same process \
             re-claimed its partition (the fence must be the claim: owner and claim count)"
                .to_owned(),
        ),
        Err(e) => failures.push(format!("same-owner fence check failed: {e:#}")),
    }

    let postgres = cfg.backend == Backend::Postgres;
    println!("\nwhat would bound 1,000 workers (from this run):");
    println!(
        "- connections: one per worker here; 1,000 workers are 1,000 server connections{}. {}",
        per_connection_kb
            .map(|kb| format!(
                " (about {:.0} kB Pss each as measured, {:.1} GB for 1,000)",
                kb,
                kb * 1000.0 / 1024.0 / 1024.0
            ))
            .unwrap_or_default(),
        if postgres {
            "A PostgreSQL server's default max_connections is 100 (the shared one here too): 1,000 needs \
             a pooler in transaction mode (PgBouncer; claim_partition's BEGIN..COMMIT stays on one server \
             connection, but diesel-async's named prepared statements need PgBouncer >= 1.21 with \
             max_prepared_statements set) or fewer connections per worker process (one pool per process, \
             not per worker slot)."
        } else {
            "MariaDB's default max_connections is 151, a thread each: 1,000 needs a raised limit (the \
             thread pool) or a proxy (MaxScale, ProxySQL), or one pool per worker process."
        }
    );
    if let Some(ms) = per_partition_cpu {
        println!(
            "- server CPU: {ms:.3} ms per partition lifecycle here => ~{:.0} lifecycles/s per core. \
             {} workers completed {:.0}/s; the same work per partition at 1,000 workers asks ~{:.0}/s, \
             {:.1} cores of server CPU: unless partitions take longer, the database's CPU is the bound.",
            1000.0 / ms.max(0.001),
            cfg.workers,
            f64::from(cfg.partitions) / secs,
            f64::from(cfg.partitions) / secs * 1000.0 / cfg.workers as f64,
            f64::from(cfg.partitions) / secs * 1000.0 / cfg.workers as f64 * ms / 1000.0
        );
    }
    println!(
        "- round trips: a claim is, per manager, the FAILED check, then {}; the claimed row is read \
         back once. bb8 adds its SELECT 1 on every checkout. Idle workers poll with a doubling pause \
         (100 ms to 1.6 s), a few indexed statements each.",
        if postgres {
            "one statement per try (expired leases, then unclaimed): UPDATE … WHERE id = (SELECT … \
             FOR UPDATE SKIP LOCKED) RETURNING id, so no lock outlives it"
        } else {
            "per try a READ COMMITTED transaction (SELECT … FOR UPDATE SKIP LOCKED, the UPDATE, COMMIT)"
        }
    );
    println!(
        "- the candidate scan: {}each try walks idx_batch_step_execution_partition (partition_of, \
         status, id) from its first row, skipping the rows concurrent claimers hold locked: O(concurrent \
         claimers) per claim, not O(partitions); check the plans above.",
        candidate_share
            .map(|(share, mean)| format!(
                "the claim statements were {share}% of the server's statement time here, {mean} ms per \
                 call on average; "
            ))
            .unwrap_or_default(),
    );

    drop(sim);
    drop(repo);
    drop(tdb);
    if failures.is_empty() {
        Ok(true)
    } else {
        println!("\nFAILED checks:");
        for f in &failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}
