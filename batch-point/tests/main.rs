//! pointBalanceSyncJob on SQLite, PostgreSQL and MySQL with a real Redis (single node and a
//! three-node cluster).

mod cluster;
mod report;
mod sync;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::redis::RedisConn;
use batch_common::{BatchProperties, BatchResult, FixedClock, JobRepository, StepResult};
use batch_point::PointBalanceSyncJob;
use batch_testkit::{TestDb, TestRedis};
use chrono::NaiveDateTime;
use chrono_tz::Asia::Seoul;

/// Settings for tests: small chunks, the test's own Redis key prefix.
pub fn props(redis: &TestRedis, chunk: usize) -> Arc<BatchProperties> {
    let mut p = BatchProperties::load_from(None, Vec::new()).unwrap();
    p.batch.chunk_size = NonZeroUsize::new(chunk).unwrap();
    p.batch.step_retry_attempts = 0;
    p.point.cache_key_prefix = redis.key("point:balance:");
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
    let job = PointBalanceSyncJob::new(db.db.clone(), redis, clock.clone(), props.clone());
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
