//! The rules of the external-writer pipeline (`ChunkStep` with `writes_to_database() == false`;
//! batch-common README, "External writers"), one test per rule, on SQLite, PostgreSQL and
//! MySQL. The writer is `batch_testkit::external_writer`'s scripted store: a write attempt may
//! fail (transient or for good) or wait at a gate the test opens, so "writes in flight" is a
//! state the test builds and waits for, not a matter of timing. A checkpoint commit fails through
//! the database: a trigger on `batch_step_execution` refuses the UPDATE that saves a given chunk's
//! checkpoint, with a message the runtime classifies transient ("deadlock") or not.
//!
//! Chunks are 5 items of `1..=50`, named by their first item (chunk 3 is `11`); a checkpoint is
//! `{"next": n}`, so the one after chunk 3 is 16. Each test checks the checkpoints (what the
//! listener heard, in order, and what the step execution row holds) and the counts.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batch_common::ManualClock;
use batch_common::config::RuntimeSettings;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::listener::{JobListener, JobRunInfo};
use batch_common::repository::{JobRepository, StepProgress};
use batch_common::{BatchResult, Clock, ExitCode, FixedClock, StepResult};
use batch_testkit::external_writer::{
    Attempt, EXTERNAL_STEP, ExternalJob, ExternalStore, StoreLog, WAIT_LIMIT,
};
use batch_testkit::{TestDb, db_test};
use chrono::{TimeZone, Utc};
use core_domain::Backend;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Items of a run, and items per chunk.
const ITEMS: i64 = 50;
const CHUNK: i64 = 5;

fn settings() -> RuntimeSettings {
    RuntimeSettings {
        timezone: chrono_tz::UTC,
        chunk_size: NonZeroUsize::new(CHUNK as usize).unwrap(),
        chunk_retry_attempts: NonZeroU32::new(10).unwrap(),
        chunk_retry_backoff: Duration::from_millis(200),
        chunk_retry_max_backoff: Duration::from_secs(5),
        chunk_retry_max_elapsed: Duration::from_secs(60),
        step_retry_attempts: 0,
        step_retry_interval: Duration::from_secs(1),
        skip_limit: 0,
        // No heartbeat during a test: a crashed run must look dead once the clock says so.
        heartbeat_interval: Duration::from_secs(3600),
        stale_after: Duration::from_secs(120),
        progress_log_chunks: NonZeroU32::new(1).unwrap(),
        partition_workers: NonZeroU32::new(1).unwrap(),
        partitions: Default::default(),
    }
}

/// The checkpoints the listener heard (`next` after each committed chunk), per execution.
#[derive(Default)]
struct Heard {
    state: Mutex<Vec<(i64, i64)>>,
    executions: Mutex<Vec<i64>>,
    changed: Notify,
}

impl Heard {
    fn checkpoints(&self, execution: i64) -> Vec<i64> {
        self.state
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| *e == execution)
            .map(|(_, next)| *next)
            .collect()
    }

    fn last_execution(&self) -> i64 {
        *self
            .executions
            .lock()
            .unwrap()
            .last()
            .expect("a run started")
    }

    /// Waits until the latest execution has committed `n` chunks.
    async fn until_committed(&self, n: usize) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                let executions = self.executions.lock().unwrap().last().copied();
                if let Some(e) = executions
                    && self.checkpoints(e).len() >= n
                {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(WAIT_LIMIT, wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{n} chunks were not committed: {:?}",
                    self.state.lock().unwrap()
                )
            });
    }
}

#[async_trait]
impl JobListener for Heard {
    async fn before_job(&self, job: &JobRunInfo) {
        self.executions.lock().unwrap().push(job.execution_id);
        self.changed.notify_waiters();
    }

    async fn on_chunk(&self, job: &JobRunInfo, _step: &str, p: &StepProgress, _: Option<u64>) {
        self.state
            .lock()
            .unwrap()
            .push((job.execution_id, next_of(&p.context)));
        self.changed.notify_waiters();
    }
}

fn next_of(context: &serde_json::Value) -> i64 {
    context
        .get("next")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(1)
}

/// The checkpoints of chunks `first..=last` (named by their first items).
fn checkpoints(first: i64, last: i64) -> Vec<i64> {
    (first..=last)
        .step_by(CHUNK as usize)
        .map(|c| c + CHUNK)
        .collect()
}

struct Harness {
    launcher: JobLauncher,
    store: Arc<ExternalStore>,
    heard: Arc<Heard>,
}

impl Harness {
    fn new(db: &TestDb, clock: Arc<dyn Clock>) -> Harness {
        let heard = Arc::new(Heard::default());
        let launcher = JobLauncher::new(JobRepository::new(db.db.clone()), clock, settings())
            .with_listener(heard.clone());
        Harness {
            launcher,
            store: ExternalStore::new(),
            heard,
        }
    }

    fn fixed(db: &TestDb) -> Harness {
        Self::new(
            db,
            Arc::new(FixedClock::new(
                Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap(),
            )),
        )
    }

    fn repo(&self) -> &JobRepository {
        self.launcher.repository()
    }

    /// Starts a run of instance `run` in the background.
    fn spawn(&self, run: &str, cancel: CancellationToken) -> tokio::task::JoinHandle<BatchResult> {
        let launcher = self.launcher.clone();
        let job = ExternalJob {
            store: self.store.clone(),
        };
        let params =
            batch_common::params::parse_pairs(&[format!("run={run}"), format!("items={ITEMS}")])
                .unwrap();
        tokio::spawn(async move {
            let options = LaunchOptions {
                cancel,
                ..LaunchOptions::default()
            };
            launcher
                .launch(&job, params, &options)
                .await
                .expect("launch")
        })
    }

    /// Runs instance `run` to its end.
    async fn launch(&self, run: &str) -> BatchResult {
        finish(self.spawn(run, CancellationToken::new())).await
    }

    /// The checkpoint and counts the step execution row of `execution` holds.
    async fn saved(&self, execution: i64) -> Saved {
        let rows = self.repo().step_executions(execution).await.unwrap();
        let row = rows
            .iter()
            .find(|s| s.step_name == EXTERNAL_STEP)
            .expect("the step execution row");
        let context: serde_json::Value = serde_json::from_str(&row.execution_context).unwrap();
        Saved {
            next: next_of(&context),
            commits: row.counts.commit_count,
            read: row.counts.read_count,
            written: row.counts.write_count,
            retries: row.counts.retry_count,
            rollbacks: row.counts.rollback_count,
        }
    }
}

/// What a step execution row says.
#[derive(Debug, PartialEq, Eq)]
struct Saved {
    next: i64,
    commits: i64,
    read: i64,
    written: i64,
    retries: i64,
    rollbacks: i64,
}

async fn finish(handle: tokio::task::JoinHandle<BatchResult>) -> BatchResult {
    tokio::time::timeout(WAIT_LIMIT, handle)
        .await
        .expect("the run ends")
        .expect("the run does not panic")
}

fn step(r: &BatchResult) -> &StepResult {
    r.steps
        .iter()
        .find(|s| s.name == EXTERNAL_STEP)
        .unwrap_or_else(|| panic!("no step {EXTERNAL_STEP} in {r:#?}"))
}

/// (read, written, commits, retries, rollbacks) of a step result.
fn counts(s: &StepResult) -> (i64, i64, i64, i64, i64) {
    (
        s.counts.read_count,
        s.counts.write_count,
        s.counts.commit_count,
        s.counts.retry_count,
        s.counts.rollback_count,
    )
}

/// Every item of `1..=ITEMS` is in the store exactly `times(item)` times.
fn assert_stored(log: &StoreLog, times: impl Fn(i64) -> usize) {
    for item in 1..=ITEMS {
        assert_eq!(log.times_stored(item), times(item), "item {item}: {log:?}");
    }
}

/// Makes the database refuse the UPDATE that saves the checkpoint of commit number `commit` of
/// a step execution, while its rollback count is below `while_rollbacks_below` (each failed
/// attempt is one more rollback, so this fails that many attempts): with `message`, which the
/// runtime classifies by its text (`deadlock` is transient).
async fn refuse_commit(db: &TestDb, commit: i64, while_rollbacks_below: i64, message: &str) {
    let when =
        format!("NEW.commit_count = {commit} AND NEW.rollback_count < {while_rollbacks_below}");
    let sql = match db.backend() {
        Backend::Sqlite => format!(
            "CREATE TRIGGER inject_commit_fault BEFORE UPDATE ON batch_step_execution \
             FOR EACH ROW WHEN {when} BEGIN SELECT RAISE(ABORT, '{message}'); END;"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION inject_commit_fault() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION '{message}'; END $$; \
             CREATE TRIGGER inject_commit_fault BEFORE UPDATE ON batch_step_execution \
             FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION inject_commit_fault();"
        ),
        Backend::Mysql => format!(
            "CREATE TRIGGER inject_commit_fault BEFORE UPDATE ON batch_step_execution \
             FOR EACH ROW BEGIN IF {when} THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{message}'; END IF; END"
        ),
    };
    db.conn()
        .await
        .batch_execute(&sql)
        .await
        .expect("creating the fault trigger");
}

async fn allow_commits(db: &TestDb) {
    let sql = match db.backend() {
        Backend::Postgres => "DROP TRIGGER inject_commit_fault ON batch_step_execution",
        _ => "DROP TRIGGER inject_commit_fault",
    };
    db.conn()
        .await
        .batch_execute(sql)
        .await
        .expect("dropping the fault trigger");
}

const TRANSIENT_COMMIT_FAULT: &str = "injected commit fault: deadlock";
const PERMANENT_COMMIT_FAULT: &str = "injected commit fault: refused";

db_test!(async fn a_transient_write_error_is_retried_alone_and_its_checkpoint_waits(db) {
    let h = Harness::fixed(db);
    // Chunk 3's write fails once (transient); its retry waits at the gate.
    h.store.script(11, [Attempt::Transient, Attempt::Held]);
    let run = h.spawn("transient-write", CancellationToken::new());
    h.heard.until_committed(2).await;
    h.store
        .wait_until("chunk 3 retrying and chunk 4 written", |l| {
            l.attempt_started(11, 2) && l.written(16)
        })
        .await;
    let execution = h.heard.last_execution();
    // Chunk 4 is written, but its checkpoint waits for chunk 3's; and with two chunks in flight
    // no third write starts.
    let saved = h.saved(execution).await;
    assert_eq!((saved.next, saved.commits), (11, 2), "{saved:?}");
    assert_eq!(h.heard.checkpoints(execution), vec![6, 11]);
    assert!(!h.store.log().started(21), "{:?}", h.store.log());

    h.store.release(11);
    let r = finish(run).await;
    assert_eq!((r.status.as_str(), r.exit_code), ("COMPLETED", ExitCode::Completed), "{r:#?}");
    assert_eq!(counts(step(&r)), (50, 50, 10, 1, 1), "{r:#?}");
    // Checkpoints committed once each, strictly in chunk order.
    assert_eq!(h.heard.checkpoints(execution), checkpoints(1, 46));
    assert_eq!(
        h.saved(execution).await,
        Saved { next: 51, commits: 10, read: 50, written: 50, retries: 1, rollbacks: 1 }
    );
    // Only chunk 3 was written again; every item is in the store once.
    let log = h.store.log();
    for chunk in (1..=46).step_by(5) {
        assert_eq!(log.attempts(chunk), if chunk == 11 { 2 } else { 1 }, "chunk {chunk}: {log:?}");
    }
    assert_stored(&log, |_| 1);
    Ok(())
});

db_test!(async fn a_write_failing_for_good_keeps_the_earlier_checkpoints_and_restarts_there(db) {
    let h = Harness::fixed(db);
    // Chunk 3's write waits, then fails for good; chunk 4's is in the store by then.
    h.store.script(11, [Attempt::HeldThenPermanent]);
    let run = h.spawn("fatal-write", CancellationToken::new());
    h.heard.until_committed(2).await;
    h.store
        .wait_until("chunk 3 writing and chunk 4 written", |l| l.started(11) && l.written(16))
        .await;
    let execution = h.heard.last_execution();
    h.store.release(11);
    let r = finish(run).await;
    assert_eq!((r.status.as_str(), r.exit_code), ("FAILED", ExitCode::Failed), "{r:#?}");
    let s = step(&r);
    assert_eq!(s.status, "FAILED");
    assert!(
        s.message.as_deref().unwrap_or_default().contains("injected permanent failure writing chunk 11"),
        "{s:?}"
    );
    // The checkpoints before it stand; nothing after it commits, although chunk 4 is stored.
    assert_eq!(counts(s), (10, 10, 2, 0, 1), "{s:?}");
    assert_eq!(h.heard.checkpoints(execution), vec![6, 11]);
    let saved = h.saved(execution).await;
    assert_eq!((saved.next, saved.commits, saved.read, saved.written), (11, 2, 10, 10), "{saved:?}");
    let log = h.store.log();
    assert!(!log.started(21), "no write starts after the failed one: {log:?}");
    assert_stored(&log, |i| usize::from(i <= 10 || (16..=20).contains(&i)));

    // The restart resumes at chunk 3 and replays chunk 4.
    h.store.clear_faults();
    let again = h.launch("fatal-write").await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    assert_eq!(again.job_instance_id, r.job_instance_id);
    assert_eq!(counts(step(&again)), (40, 40, 8, 0, 0));
    let second = again.execution_id.unwrap();
    assert_eq!(h.heard.checkpoints(second), checkpoints(11, 46));
    assert_eq!(h.saved(second).await.next, 51);
    assert_stored(&h.store.log(), |i| if (16..=20).contains(&i) { 2 } else { 1 });
    Ok(())
});

db_test!(async fn a_transient_commit_error_retries_the_commit_alone(db) {
    let h = Harness::fixed(db);
    // Chunk 3's checkpoint commit fails twice (transient), then succeeds.
    refuse_commit(db, 3, 2, TRANSIENT_COMMIT_FAULT).await;
    let r = h.launch("transient-commit").await;
    assert_eq!((r.status.as_str(), r.exit_code), ("COMPLETED", ExitCode::Completed), "{r:#?}");
    assert_eq!(counts(step(&r)), (50, 50, 10, 2, 2), "{r:#?}");
    let execution = r.execution_id.unwrap();
    assert_eq!(h.heard.checkpoints(execution), checkpoints(1, 46));
    assert_eq!(
        h.saved(execution).await,
        Saved { next: 51, commits: 10, read: 50, written: 50, retries: 2, rollbacks: 2 }
    );
    // The chunk was not written again: only its commit was retried.
    let log = h.store.log();
    for chunk in (1..=46).step_by(5) {
        assert_eq!(log.attempts(chunk), 1, "chunk {chunk}: {log:?}");
    }
    assert_stored(&log, |_| 1);
    Ok(())
});

db_test!(async fn a_commit_failing_for_good_fails_the_step_with_the_previous_checkpoint(db) {
    let h = Harness::fixed(db);
    refuse_commit(db, 3, i64::MAX, PERMANENT_COMMIT_FAULT).await;
    let r = h.launch("fatal-commit").await;
    assert_eq!((r.status.as_str(), r.exit_code), ("FAILED", ExitCode::Failed), "{r:#?}");
    let s = step(&r);
    assert_eq!(s.status, "FAILED");
    assert!(s.message.as_deref().unwrap_or_default().contains(PERMANENT_COMMIT_FAULT), "{s:?}");
    assert_eq!(counts(s), (10, 10, 2, 0, 1), "{s:?}");
    let execution = r.execution_id.unwrap();
    assert_eq!(h.heard.checkpoints(execution), vec![6, 11]);
    let saved = h.saved(execution).await;
    assert_eq!((saved.next, saved.commits, saved.read, saved.written), (11, 2, 10, 10), "{saved:?}");
    let log = h.store.log();
    assert!(log.written(11), "chunk 3 was written before its commit failed: {log:?}");

    // The restart resumes at chunk 3, writing it again (idempotent writers make that harmless).
    allow_commits(db).await;
    let again = h.launch("fatal-commit").await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    assert_eq!(counts(step(&again)), (40, 40, 8, 0, 0));
    assert_eq!(h.heard.checkpoints(again.execution_id.unwrap()), checkpoints(11, 46));
    let log = h.store.log();
    assert_eq!(log.times_stored(11), 2, "{log:?}");
    assert!((1..=ITEMS).all(|i| log.times_stored(i) >= 1), "{log:?}");
    Ok(())
});

db_test!(async fn a_read_error_with_writes_in_flight_commits_them_in_order_then_fails(db) {
    let h = Harness::fixed(db);
    // Chunks 3 and 4 are being written (held) when reading chunk 5 fails for good.
    h.store.script(11, [Attempt::Held]);
    h.store.script(16, [Attempt::Held]);
    h.store.fail_read_at(21);
    let run = h.spawn("read-error", CancellationToken::new());
    h.heard.until_committed(2).await;
    h.store
        .wait_until("chunks 3 and 4 writing, chunk 5's read failed", |l| {
            l.started(11) && l.started(16) && l.read(21)
        })
        .await;
    let execution = h.heard.last_execution();
    assert!(!run.is_finished(), "the step waits for the writes in flight");
    // The later write ends first: its checkpoint still waits for the earlier one.
    h.store.release(16);
    h.store.wait_until("chunk 4 written", |l| l.written(16)).await;
    let saved = h.saved(execution).await;
    assert_eq!((saved.next, saved.commits), (11, 2), "{saved:?}");
    h.store.release(11);
    let r = finish(run).await;
    assert_eq!((r.status.as_str(), r.exit_code), ("FAILED", ExitCode::Failed), "{r:#?}");
    let s = step(&r);
    assert!(
        s.message.as_deref().unwrap_or_default().contains("injected read failure at item 21"),
        "{s:?}"
    );
    // Both writes in flight committed, in order, before the step failed.
    assert_eq!(counts(s), (20, 20, 4, 0, 0), "{s:?}");
    assert_eq!(h.heard.checkpoints(execution), checkpoints(1, 16));
    assert_eq!(
        h.saved(execution).await,
        Saved { next: 21, commits: 4, read: 20, written: 20, retries: 0, rollbacks: 0 }
    );

    // The restart resumes at chunk 5: nothing is written twice.
    h.store.clear_faults();
    let again = h.launch("read-error").await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    assert_eq!(counts(step(&again)), (30, 30, 6, 0, 0));
    assert_eq!(h.heard.checkpoints(again.execution_id.unwrap()), checkpoints(21, 46));
    assert_stored(&h.store.log(), |_| 1);
    Ok(())
});

db_test!(async fn a_stop_with_writes_in_flight_commits_them_then_stops(db) {
    let h = Harness::fixed(db);
    h.store.script(11, [Attempt::Held]);
    h.store.script(16, [Attempt::Held]);
    let cancel = CancellationToken::new();
    let run = h.spawn("stop", cancel.clone());
    h.heard.until_committed(2).await;
    // Two writes in flight, and chunk 5 read, waiting for room in the window.
    h.store
        .wait_until("chunks 3 and 4 writing, chunk 5 read", |l| {
            l.started(11) && l.started(16) && l.read(21)
        })
        .await;
    let execution = h.heard.last_execution();
    cancel.cancel();
    h.store.release(11);
    h.store.release(16);
    let r = finish(run).await;
    assert_eq!((r.status.as_str(), r.exit_code), ("STOPPED", ExitCode::Failed), "{r:#?}");
    assert_eq!(step(&r).status, "STOPPED");
    // The writes in flight finished and their checkpoints committed; no new write started.
    assert_eq!(counts(step(&r)), (20, 20, 4, 0, 0), "{r:#?}");
    let heard = h.heard.checkpoints(execution);
    assert_eq!(heard, checkpoints(1, 16));
    let after_stop = heard.len() - 2;
    assert!(after_stop <= 3, "{after_stop} chunks committed after the stop; the README says at most 3");
    assert_eq!(
        h.saved(execution).await,
        Saved { next: 21, commits: 4, read: 20, written: 20, retries: 0, rollbacks: 0 }
    );
    let log = h.store.log();
    assert!(!log.started(21), "{log:?}");

    let again = h.launch("stop").await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    assert_eq!(counts(step(&again)), (30, 30, 6, 0, 0));
    assert_eq!(h.heard.checkpoints(again.execution_id.unwrap()), checkpoints(21, 46));
    assert_stored(&h.store.log(), |_| 1);
    Ok(())
});

db_test!(async fn a_crash_replays_at_most_three_chunks(db) {
    // The worst case the README names: one checkpoint committing (chunk 2's, in the backoff of a
    // transient commit error, which waits on the manual clock) and two chunks written behind it.
    // Then the process dies: here the run's task is dropped, with no database work in flight.
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap()));
    let h = Harness::new(db, clock.clone());
    refuse_commit(db, 2, 1, TRANSIENT_COMMIT_FAULT).await;
    let run = h.spawn("crash", CancellationToken::new());
    h.store
        .wait_until("chunks 3 and 4 written, chunk 5 read", |l| {
            l.written(11) && l.written(16) && l.read(21)
        })
        .await;
    tokio::time::timeout(WAIT_LIMIT, clock.until_sleeping(1))
        .await
        .expect("chunk 2's commit waits to be retried");
    let execution = h.heard.last_execution();
    assert_eq!(h.heard.checkpoints(execution), vec![6]);
    let saved = h.saved(execution).await;
    assert_eq!((saved.next, saved.commits), (6, 1), "{saved:?}");
    let log = h.store.log();
    assert!(!log.started(21), "{log:?}");
    assert_stored(&log, |i| usize::from(i <= 20));

    // Crash.
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());

    // Later, the dead execution's heartbeat is stale: the next launch takes it over and resumes
    // after chunk 1, replaying chunks 2 to 4.
    allow_commits(db).await;
    clock.advance(chrono::Duration::minutes(3));
    let again = h.launch("crash").await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    assert_eq!(counts(step(&again)), (45, 45, 9, 0, 0));
    assert_eq!(h.heard.checkpoints(again.execution_id.unwrap()), checkpoints(6, 46));
    let dead = h.repo().execution(execution).await?.unwrap();
    assert_eq!(dead.status, "FAILED");
    let log = h.store.log();
    assert_stored(&log, |i| if (6..=20).contains(&i) { 2 } else { 1 });
    let replayed = (1..=ITEMS).filter(|&i| log.times_stored(i) > 1).count() as i64 / CHUNK;
    assert!(replayed <= 3, "{replayed} chunks replayed; the README says at most 3");
    Ok(())
});
