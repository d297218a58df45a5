//! Jobs for testing the runtime: deterministic items, injectable failures, adjustable speed.
//!
//! `countingJob` "processes" the numbers `1..=items` and writes each as one `point` row
//! (`user_id` = the number) in the chunk's transaction, so "every item exactly once" is a
//! `GROUP BY user_id` away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use batch_common::job::{Job, JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use batch_common::params::{JobParameters, ParameterError, parse_pairs};
use batch_common::step::{
    ChunkStep, ItemReader, KeyRange, PartitionedStep, Partitioner, PassThrough, ReadScope, Step,
    StepContext, StepOutcome, Tasklet, TaskletStep, TransactionalWriter, WriteOutcome,
};
use batch_common::{Transient, repository::ItemFailureRecord};
use core_domain::DbConnection;
use core_domain::models::{NewPoint, Point};

/// The counting job's name.
pub const COUNTING_JOB: &str = "countingJob";

/// Its descriptor.
pub const COUNTING: JobDescriptor = JobDescriptor {
    name: COUNTING_JOB,
    description: "writes the numbers 1..=items as point rows (runtime tests)",
    steps: &["countStep", "flakyStep"],
    parameters: &[
        ParameterSpec {
            name: "run",
            kind: ParamKind::Text,
            identifying: true,
            description: "instance id",
            default: ParamDefault::Value("default"),
        },
        ParameterSpec {
            name: "items",
            kind: ParamKind::Count,
            identifying: false,
            description: "how many numbers (default 100)",
            default: ParamDefault::None,
        },
        ParameterSpec {
            name: "delay_ms",
            kind: ParamKind::Count,
            identifying: false,
            description: "pause per chunk write",
            default: ParamDefault::None,
        },
        ParameterSpec {
            name: "fail_items",
            kind: ParamKind::Text,
            identifying: false,
            description: "comma-separated numbers that fail as item failures",
            default: ParamDefault::None,
        },
    ],
};

/// Failures to inject; shared between the test and the job.
#[derive(Debug, Default)]
pub struct FailPlan {
    /// Fail the write of the chunk containing this item (0: never) ...
    pub fail_write_at_item: AtomicI64,
    /// ... this many times ...
    pub write_failures_left: AtomicU32,
    /// ... as a transient error (true) or a permanent one.
    pub transient: std::sync::atomic::AtomicBool,
    /// The flaky tasklet step fails this many times before it succeeds (transiently, after
    /// counting a `flaky_partial` that must not survive the failed attempt, when `transient`).
    pub flaky_failures_left: AtomicU32,
    /// How often the flaky step ran.
    pub flaky_runs: AtomicU32,
}

/// The counting job.
pub struct CountingJob {
    /// Failures to inject.
    pub plan: Arc<FailPlan>,
}

impl Job for CountingJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &COUNTING
    }

    fn steps(&self, params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        let items = i64::try_from(params.count_or("items", 100)?)?;
        let delay = Duration::from_millis(params.count_or("delay_ms", 0)?);
        let fail_items: Vec<i64> = if params.is_set("fail_items") {
            params
                .text("fail_items")?
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let plan = self.plan.clone();
        Ok(vec![
            // Partitioned by number ([batch.partitions] countStep / --partitions); one partition
            // by default, which is the plain chunk step.
            Arc::new(PartitionedStep::new(
                "countStep",
                NumberPartitioner { items },
                move |range| {
                    let step: Arc<dyn Step> = Arc::new(ChunkStep::transactional(
                        "countStep",
                        NumberReader::new(items, range),
                        PassThrough,
                        PointWriter {
                            plan: plan.clone(),
                            delay,
                            fail_items: fail_items.clone(),
                        },
                    ));
                    Ok(step)
                },
            )),
            Arc::new(TaskletStep::new(
                "flakyStep",
                Flaky {
                    plan: self.plan.clone(),
                },
            )),
        ])
    }
}

/// Splits the numbers 1..=items into ranges of about the same size.
pub struct NumberPartitioner {
    items: i64,
}

#[async_trait]
impl Partitioner for NumberPartitioner {
    async fn partition(&self, n: u32) -> anyhow::Result<Vec<KeyRange>> {
        Ok(KeyRange::split(1, self.items.max(1), n))
    }
}

/// Reads 1..=items (within a partition's range); checkpoint `{"next": n}`.
pub struct NumberReader {
    items: i64,
    range: KeyRange,
    next: i64,
    only: Option<Vec<i64>>,
}

impl NumberReader {
    /// The numbers 1..=items in `range`.
    pub fn new(items: i64, range: KeyRange) -> Self {
        NumberReader {
            items,
            range,
            next: 1,
            only: None,
        }
    }

    fn first(&self) -> i64 {
        self.range.from.max(1)
    }

    fn last(&self) -> i64 {
        self.range.to.min(self.items)
    }
}

/// The number readers' checkpoint: the next number to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextNumber {
    /// The next number.
    pub next: i64,
}

#[async_trait]
impl ItemReader for NumberReader {
    type Item = i64;
    type Checkpoint = NextNumber;

    async fn open(
        &mut self,
        checkpoint: Option<NextNumber>,
        scope: &ReadScope,
    ) -> anyhow::Result<()> {
        self.next = checkpoint.map_or(self.first(), |c| c.next.max(self.first()));
        self.only = match scope {
            ReadScope::All => None,
            ReadScope::FailedItems(keys) => {
                Some(keys.iter().map(|k| k.parse()).collect::<Result<_, _>>()?)
            }
        };
        Ok(())
    }

    async fn read_chunk(&mut self, max: usize) -> anyhow::Result<(Vec<i64>, NextNumber)> {
        let chunk: Vec<i64> = match &self.only {
            None => (self.next..=self.last()).take(max).collect(),
            Some(only) => only
                .iter()
                .copied()
                .filter(|n| *n >= self.next && *n <= self.last())
                .take(max)
                .collect(),
        };
        if let Some(last) = chunk.last() {
            self.next = last + 1;
        }
        Ok((chunk, NextNumber { next: self.next }))
    }

    async fn total(&mut self, scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        Ok(Some(match scope {
            ReadScope::All => (self.last() - self.first() + 1).max(0) as u64,
            ReadScope::FailedItems(keys) => keys.len() as u64,
        }))
    }
}

/// Inserts one `point` row per number in the chunk's transaction.
pub struct PointWriter {
    plan: Arc<FailPlan>,
    delay: Duration,
    fail_items: Vec<i64>,
}

#[async_trait]
impl TransactionalWriter<i64> for PointWriter {
    async fn write(&self, items: &[i64], tx: &mut DbConnection) -> anyhow::Result<WriteOutcome> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (good, bad): (Vec<i64>, Vec<i64>) =
            items.iter().partition(|n| !self.fail_items.contains(n));
        let rows: Vec<NewPoint> = good
            .iter()
            .map(|&n| NewPoint {
                user_id: n,
                amount: 1,
                point_type: "EARN".into(),
                description: None,
                balance_snapshot: n,
                point_balance_id: 0,
                created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0)
                    .unwrap()
                    .naive_utc(),
            })
            .collect();
        Point::insert_many(tx, rows).await?;
        // Fail *after* inserting, so a rollback is what keeps the rows from being written twice.
        let at = self.plan.fail_write_at_item.load(Ordering::SeqCst);
        if at > 0 && items.contains(&at) && self.plan.write_failures_left.load(Ordering::SeqCst) > 0
        {
            self.plan.write_failures_left.fetch_sub(1, Ordering::SeqCst);
            let err = anyhow::anyhow!("injected failure writing the chunk with item {at}");
            return Err(if self.plan.transient.load(Ordering::SeqCst) {
                Transient::new(err).into()
            } else {
                err
            });
        }
        let mut counters = BTreeMap::new();
        counters.insert("inserted".to_owned(), good.len() as i64);
        Ok(WriteOutcome {
            written: good.len(),
            counters,
            failures: bad
                .iter()
                .map(|n| ItemFailureRecord {
                    item_key: n.to_string(),
                    error: format!("item {n} is cursed"),
                    attempts: 1,
                })
                .collect(),
            resolved_keys: good.iter().map(ToString::to_string).collect(),
        })
    }
}

/// A tasklet that fails `flaky_failures_left` times (transiently when the plan says so), then
/// succeeds.
pub struct Flaky {
    plan: Arc<FailPlan>,
}

#[async_trait]
impl Tasklet for Flaky {
    async fn run(&self, ctx: &mut StepContext) -> anyhow::Result<()> {
        self.plan.flaky_runs.fetch_add(1, Ordering::SeqCst);
        if self.plan.flaky_failures_left.load(Ordering::SeqCst) > 0 {
            self.plan.flaky_failures_left.fetch_sub(1, Ordering::SeqCst);
            if self.plan.transient.load(Ordering::SeqCst) {
                ctx.progress.add_counter("flaky_partial", 1);
                return Err(Transient::new(anyhow::anyhow!(
                    "flaky step lost its connection on purpose"
                ))
                .into());
            }
            anyhow::bail!("flaky step failed on purpose");
        }
        ctx.progress.add_counter("flaky_ok", 1);
        Ok(())
    }
}

/// Parses `key=value` arguments for the counting job (the binary's helper).
pub fn parse_args(args: &[String]) -> Result<BTreeMap<String, String>, ParameterError> {
    parse_pairs(args)
}

/// A step that only returns `Stopped` (for cancellation tests).
pub struct StopImmediately;

#[async_trait]
impl Step for StopImmediately {
    fn name(&self) -> &str {
        "stopStep"
    }
    async fn execute(&self, _ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        Ok(StepOutcome::Stopped)
    }
}

/// The numbers the counting job wrote (one `point` row each), sorted: "every item exactly once"
/// is `written_items(db) == (1..=n).collect()`.
pub async fn written_items(db: &crate::TestDb) -> Vec<i64> {
    use core_domain::dispatch;
    use core_domain::schema::point;
    use diesel::QueryDsl as _;
    use diesel_async::RunQueryDsl as _;
    let mut conn = db.conn().await;
    let mut ids: Vec<i64> =
        dispatch!(&mut *conn, c => point::table.select(point::user_id).load(c).await)
            .expect("reading the written items");
    ids.sort_unstable();
    ids
}
