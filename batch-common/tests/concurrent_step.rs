//! The concurrent item step with a job of its own (numbers written as `point` rows): every item
//! exactly once with the right counts and item failures, no draining at page boundaries, a crash
//! re-processing only the items in flight, a stop finishing them, commit retries, the skip limit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batch_common::config::BatchProperties;
use batch_common::job::{Job, JobDescriptor};
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::listener::JobRunInfo;
use batch_common::params::JobParameters;
use batch_common::repository::{CreateExecution, JobRepository, StepProgress};
use batch_common::step::{
    ChunkSettings, InTransaction, ReadScope, Step, StepContext, StepOutcome, TransactionalWriter,
    WriteOutcome,
};
use batch_common::step::{
    ConcurrentProcessor, ConcurrentStep, ItemOutcome, KeyedReader, Page, Partitioning,
};
use batch_common::{BatchResult, Clock, ExitCode, FixedClock, RetryPolicy, Transient};
use batch_testkit::{TestDb, db_test};
use chrono::{TimeZone, Utc};
use core_domain::DbConnection;
use core_domain::models::{NewPoint, Point};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const STEP: &str = "numberStep";

/// What the items do, shared by the test and the step.
#[derive(Default)]
struct Plan {
    /// Items that end as item failures (until `heal`).
    fail: Mutex<HashSet<i64>>,
    /// Items filtered out.
    filter: HashSet<i64>,
    /// Items that never finish (a call hanging when the process dies).
    hang: Mutex<HashSet<i64>>,
    /// Item 1 waits for this item to start (proves the next page is read and started while
    /// item 1 is in flight).
    wait_for: Option<i64>,
    /// Notified when an item starts or `release` is called.
    changed: Notify,
    /// Processing calls per item.
    calls: Mutex<HashMap<i64, u32>>,
    /// Transient write failures left to inject.
    write_failures: AtomicU32,
}

impl Plan {
    fn calls(&self) -> HashMap<i64, u32> {
        self.calls.lock().unwrap().clone()
    }

    /// Lets the hanging items finish.
    fn release(&self) {
        self.hang.lock().unwrap().clear();
        self.changed.notify_waiters();
    }

    /// Waits until `cond` holds (checked whenever the plan changes).
    async fn until(&self, cond: impl Fn(&Plan) -> bool) {
        loop {
            let changed = self.changed.notified();
            if cond(self) {
                return;
            }
            changed.await;
        }
    }
}

/// The numbers 1..=n (or the failed ones), by pages.
struct Numbers {
    n: i64,
    only: Option<Vec<i64>>,
}

#[async_trait]
impl KeyedReader for Numbers {
    type Item = i64;

    fn key(item: &i64) -> i64 {
        *item
    }

    async fn open(&mut self, scope: &ReadScope) -> anyhow::Result<()> {
        self.only = match scope {
            ReadScope::All => None,
            ReadScope::FailedItems(keys) => {
                let mut ids: Vec<i64> = keys.iter().map(|k| k.parse()).collect::<Result<_, _>>()?;
                ids.sort_unstable();
                Some(ids)
            }
        };
        Ok(())
    }

    async fn read_page(&mut self, after: i64, max: usize) -> anyhow::Result<Page<i64>> {
        let all: Vec<i64> = match &self.only {
            None => (after.max(0) + 1..=self.n).collect(),
            Some(ids) => ids.iter().copied().filter(|k| *k > after).collect(),
        };
        let items: Vec<i64> = all.iter().copied().take(max).collect();
        let next = (all.len() > max).then(|| *items.last().expect("a full page"));
        Ok(Page { items, next })
    }

    async fn total(&mut self, _scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.n as u64))
    }
}

/// "Processes" an item in a few milliseconds, as the plan says.
struct Worker(Arc<Plan>);

#[async_trait]
impl ConcurrentProcessor<i64, i64> for Worker {
    async fn process(&self, item: i64) -> anyhow::Result<ItemOutcome<i64>> {
        *self.0.calls.lock().unwrap().entry(item).or_default() += 1;
        self.0.changed.notify_waiters();
        if item == 1
            && let Some(other) = self.0.wait_for
        {
            self.0
                .until(|p| p.calls.lock().unwrap().contains_key(&other))
                .await;
        }
        self.0
            .until(|p| !p.hang.lock().unwrap().contains(&item))
            .await;
        tokio::time::sleep(Duration::from_millis(1 + (item * 7 % 5) as u64)).await;
        Ok(if self.0.fail.lock().unwrap().contains(&item) {
            ItemOutcome::Fail {
                error: format!("item {item} refused"),
                attempts: 2,
            }
        } else if self.0.filter.contains(&item) {
            ItemOutcome::Filter
        } else {
            ItemOutcome::Write(item)
        })
    }
}

/// One `point` row per item, in the commit's transaction.
struct Rows(Arc<Plan>);

#[async_trait]
impl TransactionalWriter<i64> for Rows {
    async fn write(&self, items: &[i64], tx: &mut DbConnection) -> anyhow::Result<WriteOutcome> {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0)
            .unwrap()
            .naive_utc();
        let rows = items
            .iter()
            .map(|&n| NewPoint {
                user_id: n,
                amount: 1,
                point_type: "EARN".into(),
                description: None,
                balance_snapshot: n,
                point_balance_id: 0,
                created_at: at,
            })
            .collect();
        Point::insert_many(tx, rows).await?;
        // After the insert: only the rollback keeps the rows from being written twice.
        if self
            .0
            .write_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Transient::new(anyhow::anyhow!("injected deadlock")).into());
        }
        Ok(WriteOutcome {
            written: items.len(),
            counters: BTreeMap::from([("rows".to_owned(), items.len() as i64)]),
            failures: Vec::new(),
            resolved_keys: items.iter().map(ToString::to_string).collect(),
        })
    }
}

type NumberStep = ConcurrentStep<Numbers, Worker, InTransaction<Rows>, i64>;

fn number_step(plan: &Arc<Plan>, n: i64, concurrency: usize) -> NumberStep {
    ConcurrentStep::new(
        STEP,
        Numbers { n, only: None },
        Worker(plan.clone()),
        InTransaction(Rows(plan.clone())),
        concurrency,
    )
    .with_page_size(std::num::NonZeroUsize::new(10))
    .with_commit_every(4, Duration::from_millis(50))
}

const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: "numberJob",
    description: "numbers as point rows, concurrently",
    steps: &[STEP],
    parameters: &[],
};

/// A job of the one step over 1..=n.
struct NumberJob {
    plan: Arc<Plan>,
    n: i64,
}

impl Job for NumberJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &DESCRIPTOR
    }

    fn steps(&self, _params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        Ok(vec![Arc::new(number_step(&self.plan, self.n, 8))])
    }
}

fn clock() -> Arc<FixedClock> {
    Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap(),
    ))
}

async fn launch(db: &TestDb, job: &NumberJob, skip_limit: u64) -> BatchResult {
    let mut settings = BatchProperties::load_from(None, Vec::new(), &[])
        .unwrap()
        .batch;
    settings.step_retry_attempts = 0;
    settings.skip_limit = skip_limit;
    JobLauncher::new(JobRepository::new(db.db.clone()), clock(), settings)
        .launch(job, BTreeMap::new(), &LaunchOptions::default())
        .await
        .expect("launch")
}

async fn written(db: &TestDb) -> Vec<i64> {
    batch_testkit::jobs::written_items(db).await
}

db_test!(async fn every_item_once_with_counts_failures_and_a_rerun_of_the_failed(db) {
    let plan = Arc::new(Plan {
        fail: Mutex::new([7, 50, 51].into()),
        filter: [20, 99].into(),
        ..Plan::default()
    });
    plan.write_failures.store(1, Ordering::SeqCst);
    let job = NumberJob { plan: plan.clone(), n: 120 };
    let first = launch(db, &job, 10).await;
    assert_eq!(first.exit_code, ExitCode::CompletedWithFailures, "{first:#?}");
    let s = &first.steps[0];
    assert_eq!(
        (s.counts.read_count, s.counts.write_count, s.counts.filter_count, s.counts.skip_count),
        (120, 115, 2, 3),
        "{s:#?}"
    );
    assert_eq!((s.counts.retry_count, s.counts.rollback_count), (1, 1), "one transient commit failure, retried");
    assert!(s.counts.commit_count >= 120 / 4 / 2, "small commits: {}", s.counts.commit_count);
    assert_eq!(s.counts.counters["rows"], 115);
    let expected: Vec<i64> = (1..=120).filter(|n| ![7, 20, 50, 51, 99].contains(n)).collect();
    assert_eq!(written(db).await, expected, "each written once, in spite of the rolled-back commit");
    assert!(plan.calls().values().all(|n| *n == 1));
    let repo = JobRepository::new(db.db.clone());
    let failures = repo.failures_of_execution(first.execution_id.unwrap()).await?;
    let keys: Vec<&str> = failures.iter().map(|f| f.item_key.as_str()).collect();
    assert_eq!(keys, ["7", "50", "51"]);
    assert!(failures.iter().all(|f| f.attempts == 2 && f.error.contains("refused")));

    // They succeed now: the same instance again processes only those three and resolves them.
    plan.fail.lock().unwrap().clear();
    let second = launch(db, &job, 10).await;
    assert_eq!(second.exit_code, ExitCode::Completed, "{second:#?}");
    assert_eq!((second.steps[0].counts.read_count, second.steps[0].counts.write_count), (3, 3));
    let calls = plan.calls();
    assert_eq!((calls[&7], calls[&50], calls[&51], calls[&8]), (2, 2, 2, 1));
    assert_eq!(written(db).await.len(), 118);
    assert!(repo.unresolved_failures(first.job_instance_id.unwrap(), STEP).await?.is_empty());
    Ok(())
});

db_test!(async fn the_skip_limit_fails_the_step_after_committing(db) {
    let plan = Arc::new(Plan {
        fail: Mutex::new((10..=20).collect()),
        ..Plan::default()
    });
    let r = launch(db, &NumberJob { plan, n: 60 }, 3).await;
    assert_eq!(r.exit_code, ExitCode::Failed, "{r:#?}");
    assert!(r.steps[0].message.as_deref().unwrap_or_default().contains("skip limit exceeded"), "{r:#?}");
    Ok(())
});

/// A step execution run by hand, so a test can drop it mid-run like a killed process.
async fn step_context(
    db: &TestDb,
    context: serde_json::Value,
    cancel: CancellationToken,
) -> StepContext {
    let repo = JobRepository::new(db.db.clone());
    let clock = clock();
    let now = clock.now().naive_utc();
    let instance = repo
        .get_or_create_instance("numberJob", "k", "{}", now)
        .await
        .unwrap();
    // Any live execution (the "killed" one) counts as stale: taken over as a relaunch would.
    let execution = match repo
        .create_execution(
            instance.id,
            "{}",
            "test",
            now,
            now + chrono::Duration::seconds(1),
        )
        .await
        .unwrap()
    {
        CreateExecution::Created { execution, .. } => execution,
        CreateExecution::AlreadyRunning(a) => panic!("not taken over: {a:?}"),
    };
    let progress = StepProgress {
        context,
        ..StepProgress::default()
    };
    let row = repo
        .create_step_execution(execution.id, STEP, &progress, now)
        .await
        .unwrap();
    StepContext {
        repo,
        run: JobRunInfo {
            job_name: "numberJob".into(),
            job_instance_id: instance.id,
            execution_id: execution.id,
            parameters: BTreeMap::new(),
        },
        step_execution_id: row.id,
        step_name: STEP.into(),
        progress,
        scope: ReadScope::All,
        settings: ChunkSettings {
            chunk_size: 10,
            retry: RetryPolicy::NONE,
            skip_limit: 100,
        },
        clock,
        cancel,
        listeners: Arc::new(Vec::new()),
        resumed_from: None,
        fence: None,
        partitioning: Partitioning::default(),
    }
}

/// The checkpoint saved by the last commit of the step execution.
async fn saved(db: &TestDb, ctx: &StepContext) -> StepProgress {
    let repo = JobRepository::new(db.db.clone());
    let steps = repo.step_executions(ctx.run.execution_id).await.unwrap();
    StepProgress::from_row(
        steps
            .iter()
            .find(|s| s.id == ctx.step_execution_id)
            .unwrap(),
    )
}

db_test!(async fn a_crash_reprocesses_only_the_items_in_flight(db) {
    let plan = Arc::new(Plan::default());
    // Item 20 hangs, and so does everything from 61 on: the process "dies" with them in flight.
    plan.hang.lock().unwrap().extend([20].into_iter().chain(61..=200));
    let step = number_step(&plan, 200, 8);
    let mut ctx = step_context(db, serde_json::Value::Null, CancellationToken::new()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    {
        let run = step.execute(&mut ctx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => panic!("the step ended with items hanging: {:?}", r.map(|_| ())),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if written(db).await.len() == 59 {
                break; // 1..=60 but 20 committed
            }
            assert!(tokio::time::Instant::now() < deadline, "never committed 1..=60 but 20");
        }
    } // dropped: the crash
    let checkpoint = saved(db, &ctx).await.context;
    let redo: Vec<i64> = serde_json::from_value(checkpoint["redo"].clone())?;
    assert!(redo.contains(&20), "{checkpoint}");
    assert!(redo.len() <= step.max_uncommitted(), "{checkpoint}");

    plan.release();
    let before = plan.calls();
    let mut ctx = step_context(db, checkpoint.clone(), CancellationToken::new()).await;
    assert_eq!(step.execute(&mut ctx).await?, StepOutcome::Completed);
    assert_eq!(written(db).await, (1..=200).collect::<Vec<_>>(), "every item exactly once");
    let calls = plan.calls();
    let again: Vec<i64> = before.keys().copied().filter(|k| calls[k] > 1).collect();
    assert!(again.len() <= step.max_uncommitted(), "re-processed {again:?}");
    assert!(again.iter().all(|k| *k == 20 || *k > 60), "re-processed a committed item: {again:?}");
    assert_eq!(ctx.progress.counts.read_count, 200 - 59, "{:?}", ctx.progress);
    Ok(())
});

db_test!(async fn the_next_page_is_processed_while_items_are_in_flight_and_a_stop_finishes_them(db) {
    // Item 1 finishes only once item 15 (on the second page of 10) has started: a step that
    // drained at page boundaries would never get there.
    let plan = Arc::new(Plan { wait_for: Some(15), ..Plan::default() });
    plan.hang.lock().unwrap().extend(41..=100);
    let step = number_step(&plan, 100, 8);
    let cancel = CancellationToken::new();
    let mut ctx = step_context(db, serde_json::Value::Null, cancel.clone()).await;
    let outcome = {
        let run = step.execute(&mut ctx);
        tokio::pin!(run);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                r = &mut run => panic!("ended early: {:?}", r.map(|_| ())),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if written(db).await.len() == 40 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "stuck at a page boundary: {:?}", written(db).await);
        }
        // Stop with 41.. in flight; they finish once released, and are committed.
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        plan.release();
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("the stop finished")?
    };
    assert_eq!(outcome, StepOutcome::Stopped);
    let done = written(db).await;
    let last = *done.last().unwrap();
    assert!(last > 40 && last < 100, "in-flight items committed, nothing new started: {last}");
    assert_eq!(done, (1..=last).collect::<Vec<_>>());
    assert_eq!(saved(db, &ctx).await.counts.read_count, last);

    // The restart finishes the rest, without processing anything twice.
    let checkpoint = saved(db, &ctx).await.context;
    let mut ctx = step_context(db, checkpoint, CancellationToken::new()).await;
    assert_eq!(step.execute(&mut ctx).await?, StepOutcome::Completed);
    assert_eq!(written(db).await, (1..=100).collect::<Vec<_>>());
    assert!(plan.calls().values().all(|n| *n == 1));
    Ok(())
});
