//! pointBalanceSyncJob on SQLite, PostgreSQL and MySQL with a real Redis (single node and a
//! three-node cluster), and throwaway Redis servers restarted or failed over mid-sync.

mod cache_loss;
mod cluster;
mod report;
mod server_restarts;
mod sync;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::redis::RedisConn;
use batch_common::repository::JobRepository;
use batch_common::{BatchResult, FixedClock, StepResult};
use batch_point::PointBalanceSyncJob;
use batch_testkit::{TestDb, TestRedis};
use chrono::NaiveDateTime;
use chrono_tz::Asia::Seoul;

/// Settings for tests: small chunks, the test's own Redis key prefix.
pub fn props(redis: &TestRedis, chunk: usize) -> Arc<BatchProperties> {
    let mut p = BatchProperties::load_from(None, Vec::new(), &[&batch_point::MODULE]).unwrap();
    p.batch.chunk_size = NonZeroUsize::new(chunk).unwrap();
    p.batch.step_retry_attempts = 0;
    p.section_mut::<batch_point::PointSettings>()
        .unwrap()
        .cache_key_prefix = redis.key("point:balance:");
    Arc::new(p)
}

/// A clock at a local time in Seoul.
pub fn seoul(local: &str) -> Arc<FixedClock> {
    let t = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
    Arc::new(FixedClock::at_local(Seoul, t))
}

/// A UTC timestamp.
pub fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

/// Runs the job once.
pub async fn run_job(
    db: &TestDb,
    redis: RedisConn,
    props: Arc<BatchProperties>,
    clock: Arc<FixedClock>,
    args: &[&str],
    rerun: bool,
) -> BatchResult {
    let job = PointBalanceSyncJob::new(db.db.clone(), redis, props.clone());
    let launcher = JobLauncher::new(
        JobRepository::new(db.db.clone()),
        clock,
        props.batch.clone(),
    );
    let given: BTreeMap<String, String> = batch_common::params::parse_pairs(args).unwrap();
    launcher
        .launch(
            &job,
            given,
            &LaunchOptions {
                rerun,
                ..Default::default()
            },
        )
        .await
        .expect("launch")
}

/// The single-node connection for a test.
pub async fn single(redis: &TestRedis, props: &BatchProperties) -> RedisConn {
    let mut settings = props.redis.clone();
    settings.url =
        batch_common::RedactedUrl::parse(&batch_testkit::redis_url(), &["redis"]).unwrap();
    batch_common::redis::connect(&settings)
        .await
        .unwrap_or_else(|e| panic!("{e} ({redis:?})"))
}

/// A step's result.
pub fn step<'a>(r: &'a BatchResult, name: &str) -> &'a StepResult {
    r.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} in {r:#?}"))
}

/// A loopback port that is free now, and whose cluster bus port (+10000) is free too; never the
/// same twice in this process.
pub fn free_port() -> u16 {
    use std::net::TcpListener;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port > 55000 || given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port pair found");
}

/// An async action run by [`OnChunk`].
pub type ChunkAction =
    Box<dyn Fn(i64) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A listener that runs an action after every committed chunk of the sync step, with the
/// step's read count so far (the step waits for it: a fault injected there is deterministic).
pub struct OnChunk(pub ChunkAction);

#[async_trait::async_trait]
impl batch_common::listener::JobListener for OnChunk {
    async fn on_chunk(
        &self,
        _job: &batch_common::listener::JobRunInfo,
        step: &str,
        progress: &batch_common::repository::StepProgress,
        _total: Option<u64>,
    ) {
        if step == batch_point::sync_balance::STEP_NAME {
            (self.0)(progress.counts.read_count).await;
        }
    }
}

/// Runs the job once on the system clock (real backoff sleeps) with `listener` and `options`
/// (whose `cancel` stops it).
pub async fn run_with(
    db: &TestDb,
    redis: RedisConn,
    props: Arc<BatchProperties>,
    args: &[&str],
    listener: Option<Arc<dyn batch_common::listener::JobListener>>,
    options: &LaunchOptions,
) -> BatchResult {
    let clock: Arc<dyn batch_common::Clock> = Arc::new(batch_common::SystemClock);
    let job = PointBalanceSyncJob::new(db.db.clone(), redis, props.clone());
    let mut launcher = JobLauncher::new(
        JobRepository::new(db.db.clone()),
        clock,
        props.batch.clone(),
    );
    if let Some(l) = listener {
        launcher = launcher.with_listener(l);
    }
    let given: BTreeMap<String, String> = batch_common::params::parse_pairs(args).unwrap();
    launcher.launch(&job, given, options).await.expect("launch")
}

/// Asserts that every user's cache entry holds the database's balance and version, except the
/// `newer` users, which must still hold the (balance, version) given for them.
pub async fn assert_cache_matches_db(
    db: &TestDb,
    redis: &RedisConn,
    prefix: &str,
    newer: &[(i64, i64, i64)],
) {
    use core_domain::models::PointBalance;
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let mut conn = db.conn().await;
    let mut all = Vec::new();
    loop {
        let page = PointBalance::page_after(
            &mut conn,
            all.last().map_or(0, |b: &PointBalance| b.id),
            5000,
        )
        .await
        .unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    drop(conn);
    assert!(!all.is_empty());
    let cached: Vec<(i64, Option<String>, Option<String>)> = futures_util::stream::iter(all.iter())
        .map(|b| {
            let mut r = redis.clone();
            let key = format!("{prefix}point:balance:{}", b.user_id);
            async move {
                let (bal, ver): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("balance")
                    .arg("version")
                    .query_async(&mut r)
                    .await?;
                redis::RedisResult::Ok((b.user_id, bal, ver))
            }
        })
        .buffered(256)
        .try_collect()
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for (b, (user, bal, ver)) in all.iter().zip(cached) {
        let want = newer
            .iter()
            .find(|n| n.0 == user)
            .map_or((b.balance, b.version), |n| (n.1, n.2));
        let got = (
            bal.and_then(|v| v.parse::<i64>().ok()),
            ver.and_then(|v| v.parse::<i64>().ok()),
        );
        if got != (Some(want.0), Some(want.1)) {
            wrong.push((user, got));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} users differ from the database, e.g. {:?}",
        wrong.len(),
        all.len(),
        &wrong[..wrong.len().min(5)]
    );
}
