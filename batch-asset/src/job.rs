//! `AssetRefreshJob` (the ADR's job definition): active users → external API → one
//! `asset_history` row per user and day, with `users.current_asset_history_id` pointing at it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use batch_common::job::{Job, JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use batch_common::params::JobParameters;
use batch_common::step::{
    ConcurrentProcessor, ConcurrentStep, ItemOutcome, KeyRangePartitioner, KeysetReader,
    PartitionedStep,
};
use batch_common::step::{InTransaction, Step, TransactionalWriter, WriteOutcome};
use batch_common::{Clock, ClockExt};
use chrono::NaiveDate;
use core_domain::models::{AssetHistory, NewAssetHistory, User};
use core_domain::{ActiveUsers, Database, DbConnection};

use crate::provider::AssetProvider;
use crate::usecase::AssetRefreshUseCase;

/// The job's name on the command line and in the metadata tables.
pub const JOB_NAME: &str = "assetRefreshJob";

/// The step's name.
pub const STEP_NAME: &str = "refreshAssetStep";

/// What `batch-launcher list` shows for this job.
pub const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: JOB_NAME,
    description: "Refresh every active user's assets from the external asset API, one snapshot per user per day",
    steps: &[STEP_NAME],
    parameters: &[ParameterSpec {
        name: "date",
        kind: ParamKind::Date,
        identifying: true,
        description: "snapshot day (default: today in batch.timezone)",
        default: ParamDefault::Today,
    }],
};

/// assetRefreshJob.
pub struct AssetRefreshJob {
    db: Database,
    provider: Arc<dyn AssetProvider>,
    clock: Arc<dyn Clock>,
    concurrency: usize,
}

impl AssetRefreshJob {
    /// The job over `db`, fetching through `provider` with at most `concurrency` calls in flight.
    pub fn new(
        db: Database,
        provider: Arc<dyn AssetProvider>,
        clock: Arc<dyn Clock>,
        concurrency: usize,
    ) -> Self {
        AssetRefreshJob {
            db,
            provider,
            clock,
            concurrency,
        }
    }
}

impl Job for AssetRefreshJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &DESCRIPTOR
    }

    fn steps(&self, params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        let day = params.date("date")?;
        let (db, provider, clock, concurrency) = (
            self.db.clone(),
            self.provider.clone(),
            self.clock.clone(),
            self.concurrency,
        );
        // Partitioned by user id ([batch.partitions] / run --partitions): each partition calls
        // the API for its users with `concurrency` calls in flight, so a process working
        // `workers` partitions has up to workers × concurrency calls in flight.
        let step = PartitionedStep::new(
            STEP_NAME,
            KeyRangePartitioner::new(self.db.clone(), "users", "id"),
            move |range| {
                let step: Arc<dyn Step> = Arc::new(ConcurrentStep::new(
                    STEP_NAME,
                    // Active users by id; in a failed-items run, only those still active.
                    KeysetReader::new(db.clone(), ActiveUsers).in_range(range),
                    RefreshProcessor {
                        usecase: AssetRefreshUseCase::new(provider.clone()),
                        day,
                        clock: clock.clone(),
                    },
                    InTransaction(AssetHistoryWriter {
                        day,
                        clock: clock.clone(),
                    }),
                    concurrency,
                ));
                Ok(step)
            },
        );
        Ok(vec![Arc::new(step)])
    }
}

/// Calls the provider for one user (the step runs `asset.concurrency` of these at once).
pub struct RefreshProcessor {
    usecase: AssetRefreshUseCase,
    day: NaiveDate,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl ConcurrentProcessor<User, NewAssetHistory> for RefreshProcessor {
    async fn process(&self, user: User) -> anyhow::Result<ItemOutcome<NewAssetHistory>> {
        Ok(
            match self
                .usecase
                .refresh(user.id, self.day, self.clock.now_naive_utc())
                .await
            {
                Ok(row) => ItemOutcome::Write(row),
                Err(e) => ItemOutcome::Fail {
                    error: e.to_string(),
                    attempts: e.attempts as i32,
                },
            },
        )
    }
}

/// Upserts the snapshots and points each user at theirs, in the chunk's transaction.
pub struct AssetHistoryWriter {
    day: NaiveDate,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl TransactionalWriter<NewAssetHistory> for AssetHistoryWriter {
    async fn write(
        &self,
        items: &[NewAssetHistory],
        tx: &mut DbConnection,
    ) -> anyhow::Result<WriteOutcome> {
        if items.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let ids: Vec<i64> = items.iter().map(|r| r.user_id).collect();
        AssetHistory::upsert_many(tx, items.to_vec()).await?;
        User::point_current_asset_history_to_day(tx, &ids, self.day, self.clock.now_naive_utc())
            .await?;
        let mut counters = BTreeMap::new();
        counters.insert("snapshots".to_owned(), items.len() as i64);
        Ok(WriteOutcome {
            written: items.len(),
            counters,
            failures: Vec::new(),
            resolved_keys: ids.iter().map(ToString::to_string).collect(),
        })
    }
}
