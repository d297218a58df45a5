#![doc = include_str!("../README.md")]

pub mod daily_report;
pub mod report_plan;
pub mod settings;
pub mod sync_balance;

use std::sync::Arc;

use batch_common::config::BatchProperties;
use batch_common::config::SettingsSpec;
use batch_common::job::{BuildFuture, Job, JobEnv, ParamDefault, ParamKind};
use batch_common::job::{JobDescriptor, ParameterSpec};
use batch_common::module::{HealthCheck, JobModule, JobRegistration};
use batch_common::params::JobParameters;
use batch_common::redis::{RedisConn, RedisHealth};
use batch_common::step::{KeyRangePartitioner, PartitionedStep, Step, TaskletStep};
use core_domain::Database;

use crate::daily_report::DailyReport;
use crate::sync_balance::{BalanceReader, CacheSyncStep, CacheWriter};

pub use settings::PointSettings;

/// The points domain as the launcher registers it: pointBalanceSyncJob, `[point]`, its
/// schedule, and the health of the Redis it writes to.
#[derive(Debug, Clone, Copy)]
pub struct PointModule;

/// The module to register in the launcher.
pub const MODULE: PointModule = PointModule;

impl JobModule for PointModule {
    fn name(&self) -> &'static str {
        "point"
    }

    fn jobs(&self) -> &'static [JobRegistration] {
        &[JobRegistration {
            descriptor: &DESCRIPTOR,
            build,
        }]
    }

    fn settings(&self) -> Option<SettingsSpec> {
        Some(SettingsSpec::of::<PointSettings>())
    }

    fn default_schedules(&self) -> &'static [(&'static str, &'static str)] {
        &[(JOB_NAME, "0 0 1 * * *")]
    }

    fn deployment_settings(&self) -> &'static [&'static str] {
        &["redis.url"]
    }

    fn health_checks(&self, props: &BatchProperties) -> Vec<Arc<dyn HealthCheck>> {
        vec![Arc::new(RedisHealth::new(props.redis.clone()))]
    }
}

/// The job's name on the command line and in the metadata tables.
pub const JOB_NAME: &str = "pointBalanceSyncJob";

/// What `batch-launcher list` shows for this job.
pub const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: JOB_NAME,
    description: "Sync point balances from the database to the Redis cache, then write the daily points report",
    steps: &[sync_balance::STEP_NAME, daily_report::STEP_NAME],
    parameters: &[
        ParameterSpec {
            name: "date",
            kind: ParamKind::Date,
            identifying: true,
            description: "report date (default: yesterday in batch.timezone)",
            default: ParamDefault::Yesterday,
        },
        ParameterSpec {
            name: "verify",
            kind: ParamKind::Bool,
            identifying: true,
            description: "true: only report cache drift, write nothing (its own job instance)",
            default: ParamDefault::Value("false"),
        },
    ],
};

/// pointBalanceSyncJob = syncPointBalanceStep + generateDailyReportStep.
pub struct PointBalanceSyncJob {
    db: Database,
    redis: RedisConn,
    props: Arc<BatchProperties>,
}

impl PointBalanceSyncJob {
    /// The job over `db` and `redis`. Its `date` defaults to yesterday, which the runtime
    /// computes from its injected Clock (the descriptor declares it).
    pub fn new(db: Database, redis: RedisConn, props: Arc<BatchProperties>) -> Self {
        PointBalanceSyncJob { db, redis, props }
    }
}

/// The launcher's factory: connects Redis (failing fast with where it looked) and builds the job.
pub fn build(env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async move {
        let redis = batch_common::redis::connect(&env.props.redis).await?;
        let job: Arc<dyn Job> = Arc::new(PointBalanceSyncJob::new(
            env.db.clone(),
            redis,
            env.props.clone(),
        ));
        Ok(job)
    })
}

impl Job for PointBalanceSyncJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &DESCRIPTOR
    }

    fn steps(&self, params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        let date = params.date("date")?;
        let verify = params.bool("verify")?;
        let point = self.props.section::<PointSettings>()?;
        // Partitioned by balance id ([batch.partitions] / run --partitions): each partition is
        // a whole sync of its id range (its own cache-loss check and checkpoint).
        let (db, redis) = (self.db.clone(), self.redis.clone());
        let (prefix, ttl, chunk) = (
            point.cache_key_prefix.clone(),
            point.cache_ttl,
            point.sync_chunk_size,
        );
        let sync: Arc<dyn Step> = Arc::new(PartitionedStep::new(
            sync_balance::STEP_NAME,
            KeyRangePartitioner::new(self.db.clone(), "point_balance", "id"),
            move |range| {
                let step: Arc<dyn Step> = Arc::new(CacheSyncStep::new(
                    BalanceReader::new(db.clone()).in_range(range),
                    CacheWriter::new(redis.clone(), &prefix, ttl, verify),
                    chunk,
                ));
                Ok(step)
            },
        ));
        if verify {
            // Verify mode writes nothing: no report either.
            return Ok(vec![sync]);
        }
        // Partitioned by user id: each partition replaces its users' rows of the date in its
        // own transaction.
        let (db, tz) = (self.db.clone(), self.props.batch.timezone);
        let report: Arc<dyn Step> = Arc::new(PartitionedStep::new(
            daily_report::STEP_NAME,
            KeyRangePartitioner::new(self.db.clone(), "users", "id"),
            move |range| {
                let step: Arc<dyn Step> = Arc::new(TaskletStep::new(
                    daily_report::STEP_NAME,
                    DailyReport::new(db.clone(), date, tz).in_range(range),
                ));
                Ok(step)
            },
        ));
        Ok(vec![sync, report])
    }
}
