use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_common::config::BatchProperties;
use batch_common::config::RuntimeSettings;
use batch_common::launcher::{JobLauncher, LaunchError, LaunchOptions};
use batch_common::listener::{JobListener, JobRunInfo};
use batch_common::repository::{CreateExecution, JobRepository, StepProgress};
use batch_common::{BatchResult, Clock, ExitCode, FixedClock, StepResult};
use batch_testkit::jobs::{CountingJob, FailPlan};
use batch_testkit::{TestDb, db_test};
use chrono::{TimeZone, Utc};

fn settings(chunk: usize) -> RuntimeSettings {
    let mut s = BatchProperties::load_from(None, Vec::new(), &[])
        .unwrap()
        .batch;
    s.chunk_size = NonZeroUsize::new(chunk).unwrap();
    s.step_retry_attempts = 0;
    s
}

/// Records every listener call in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait]
impl JobListener for Recorder {
    async fn before_job(&self, job: &JobRunInfo) {
        self.0
            .lock()
            .unwrap()
            .push(format!("before_job {}", job.job_name));
    }
    async fn after_job(&self, _job: &JobRunInfo, r: &BatchResult) {
        self.0
            .lock()
            .unwrap()
            .push(format!("after_job {}", r.status));
    }
    async fn before_step(&self, _job: &JobRunInfo, step: &str) {
        self.0.lock().unwrap().push(format!("before_step {step}"));
    }
    async fn after_step(&self, _job: &JobRunInfo, step: &StepResult) {
        self.0
            .lock()
            .unwrap()
            .push(format!("after_step {} {}", step.name, step.status));
    }
    async fn on_chunk(&self, _job: &JobRunInfo, step: &str, p: &StepProgress, total: Option<u64>) {
        let total = total.map_or_else(|| "?".to_owned(), |t| t.to_string());
        self.0
            .lock()
            .unwrap()
            .push(format!("chunk {step} {}/{total}", p.counts.write_count));
    }
    async fn on_step_retry(&self, _job: &JobRunInfo, step: &str, attempt: u32, _e: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("retry {step} {attempt}"));
    }
    async fn on_retries_exhausted(&self, _job: &JobRunInfo, step: &str, _e: &str) {
        self.0.lock().unwrap().push(format!("exhausted {step}"));
    }
}

struct Harness {
    launcher: JobLauncher,
    clock: Arc<FixedClock>,
    plan: Arc<FailPlan>,
    recorder: Arc<Recorder>,
}

impl Harness {
    fn new(db: &TestDb, settings: RuntimeSettings) -> Harness {
        let clock = Arc::new(FixedClock::new(
            Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap(),
        ));
        let recorder = Arc::new(Recorder::default());
        let launcher = JobLauncher::new(JobRepository::new(db.db.clone()), clock.clone(), settings)
            .with_listener(recorder.clone());
        Harness {
            launcher,
            clock,
            plan: Arc::new(FailPlan::default()),
            recorder,
        }
    }

    fn repo(&self) -> &JobRepository {
        self.launcher.repository()
    }

    async fn launch(&self, args: &[&str]) -> BatchResult {
        self.launch_with(args, &LaunchOptions::default()).await
    }

    async fn launch_with(&self, args: &[&str], options: &LaunchOptions) -> BatchResult {
        let job = CountingJob {
            plan: self.plan.clone(),
        };
        self.launcher
            .launch(&job, params(args), options)
            .await
            .expect("launch")
    }
}

fn params(args: &[&str]) -> BTreeMap<String, String> {
    batch_common::params::parse_pairs(args).unwrap()
}

async fn written(db: &TestDb) -> Vec<i64> {
    batch_testkit::jobs::written_items(db).await
}

fn step<'a>(r: &'a BatchResult, name: &str) -> &'a StepResult {
    r.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {r:#?}"))
}

db_test!(async fn failed_run_restarts_at_the_failed_chunk(db) {
    let h = Harness::new(db, settings(5));
    // The chunk with items 21..=25 (chunk 5) fails after inserting its rows, once, permanently.
    h.plan.fail_write_at_item.store(23, Ordering::SeqCst);
    h.plan.write_failures_left.store(1, Ordering::SeqCst);
    let first = h.launch(&["run=restart", "items=50"]).await;
    assert_eq!(first.exit_code, ExitCode::Failed, "{first:#?}");
    assert_eq!(first.status, "FAILED");
    let count = step(&first, "countStep");
    assert_eq!((count.status.as_str(), count.counts.commit_count, count.counts.rollback_count), ("FAILED", 4, 1));
    assert!(first.message.as_deref().unwrap().contains("injected failure"), "{first:?}");
    assert_eq!(written(db).await, (1..=20).collect::<Vec<_>>(), "the failed chunk was rolled back");
    assert!(first.steps.iter().all(|s| s.name != "flakyStep"), "later steps do not run");

    let second = h.launch(&["run=restart", "items=50"]).await;
    assert_eq!(second.exit_code, ExitCode::Completed, "{second:#?}");
    assert_ne!(second.execution_id, first.execution_id);
    assert_eq!(second.job_instance_id, first.job_instance_id);
    let count = step(&second, "countStep");
    assert_eq!((count.counts.read_count, count.counts.write_count, count.counts.commit_count), (30, 30, 6), "resumed at chunk 5");
    assert_eq!(written(db).await, (1..=50).collect::<Vec<_>>(), "every item exactly once");
    Ok(())
});

db_test!(async fn a_checkpoint_that_cannot_be_read_fails_the_restart_clearly(db) {
    let h = Harness::new(db, settings(5));
    h.plan.fail_write_at_item.store(23, Ordering::SeqCst);
    h.plan.write_failures_left.store(1, Ordering::SeqCst);
    let first = h.launch(&["run=corrupt", "items=50"]).await;
    assert_eq!(first.exit_code, ExitCode::Failed, "{first:#?}");
    // The saved checkpoint is changed by hand into something the reader's type cannot hold.
    db.conn()
        .await
        .batch_execute(
            "UPDATE batch_step_execution SET execution_context = '{\"next\":\"x\"}' \
             WHERE step_name = 'countStep'",
        )
        .await
        .expect("corrupting the checkpoint");

    let second = h.launch(&["run=corrupt", "items=50"]).await;
    assert_eq!(second.exit_code, ExitCode::Failed, "{second:#?}");
    let message = second.message.as_deref().unwrap_or_default();
    assert!(message.contains("cannot be read") && message.contains("--rerun"), "{second:#?}");
    assert_eq!(
        written(db).await,
        (1..=20).collect::<Vec<_>>(),
        "nothing was redone from the start"
    );
    Ok(())
});

db_test!(async fn transient_chunk_errors_are_retried_with_backoff(db) {
    let h = Harness::new(db, settings(5));
    h.plan.fail_write_at_item.store(13, Ordering::SeqCst);
    h.plan.write_failures_left.store(2, Ordering::SeqCst);
    h.plan.transient.store(true, Ordering::SeqCst);
    let before = h.clock.now();
    let r = h.launch(&["run=transient", "items=20"]).await;
    assert_eq!(r.exit_code, ExitCode::Completed, "{r:#?}");
    let count = step(&r, "countStep");
    assert_eq!((count.counts.retry_count, count.counts.rollback_count, count.counts.commit_count), (2, 2, 4));
    assert_eq!(written(db).await, (1..=20).collect::<Vec<_>>());
    // Backoff 200 ms then 400 ms, each with up to +100% jitter, waited on the injected clock.
    let waited = h.clock.now() - before;
    assert!(
        waited >= chrono::Duration::milliseconds(600) && waited < chrono::Duration::milliseconds(1200),
        "{waited:?}"
    );
    Ok(())
});

db_test!(async fn a_long_outage_uses_the_chunk_retry_budget_then_fails_the_step(db) {
    // Transient failures that never end: retried within batch.chunk_retry_max_elapsed (1 min by
    // default), measured on the injected clock, then the step fails.
    let h = Harness::new(db, settings(5));
    h.plan.fail_write_at_item.store(3, Ordering::SeqCst);
    h.plan.write_failures_left.store(1000, Ordering::SeqCst);
    h.plan.transient.store(true, Ordering::SeqCst);
    let before = h.clock.now();
    let r = h.launch(&["run=outage", "items=10"]).await;
    assert_eq!(r.exit_code, ExitCode::Failed, "{r:#?}");
    let waited = (h.clock.now() - before).to_std().unwrap();
    assert!(waited > Duration::from_secs(45) && waited <= Duration::from_secs(60), "{waited:?}");
    let count = step(&r, "countStep");
    assert!((10..=20).contains(&count.counts.retry_count), "{count:?}");
    assert_eq!(written(db).await, Vec::<i64>::new(), "nothing of the failed chunk is written");
    Ok(())
});

db_test!(async fn a_short_outage_is_ridden_out_by_chunk_retries(db) {
    // Eight failures in a row (about 10–20 s of backoff): the chunk succeeds without a step retry.
    let mut s = settings(5);
    s.step_retry_attempts = 3;
    let h = Harness::new(db, s);
    h.plan.fail_write_at_item.store(7, Ordering::SeqCst);
    h.plan.write_failures_left.store(8, Ordering::SeqCst);
    h.plan.transient.store(true, Ordering::SeqCst);
    let before = h.clock.now();
    let r = h.launch(&["run=blip", "items=10"]).await;
    assert_eq!(r.exit_code, ExitCode::Completed, "{r:#?}");
    assert_eq!(step(&r, "countStep").counts.retry_count, 8);
    assert!(h.clock.now() - before < chrono::Duration::seconds(60), "no 5-minute step retry");
    assert!(!h.recorder.0.lock().unwrap().iter().any(|e| e.starts_with("retry countStep")));
    assert_eq!(written(db).await, (1..=10).collect::<Vec<_>>());
    Ok(())
});

db_test!(async fn failing_step_is_retried_without_real_waiting(db) {
    let mut s = settings(10);
    s.step_retry_attempts = 3;
    s.step_retry_interval = Duration::from_secs(300);
    let h = Harness::new(db, s);
    h.plan.flaky_failures_left.store(2, Ordering::SeqCst);
    let (before, real) = (h.clock.now(), Instant::now());
    let r = h.launch(&["run=stepretry", "items=10"]).await;
    assert_eq!(r.exit_code, ExitCode::Completed, "{r:#?}");
    let flaky = step(&r, "flakyStep");
    assert_eq!(flaky.counts.retry_count, 2);
    assert_eq!(flaky.counts.counters.get("flaky_ok"), Some(&1));
    assert_eq!(h.plan.flaky_runs.load(Ordering::SeqCst), 3);
    assert_eq!(h.clock.now() - before, chrono::Duration::minutes(10), "two 5-minute waits");
    assert!(real.elapsed() < Duration::from_secs(60));
    // The retry count is in the step execution row too.
    let steps = h.repo().step_executions(r.execution_id.unwrap()).await?;
    assert_eq!(steps.iter().find(|s| s.step_name == "flakyStep").unwrap().counts.retry_count, 2);
    let events = h.recorder.0.lock().unwrap().clone();
    assert!(events.contains(&"retry flakyStep 1".to_owned()) && events.contains(&"retry flakyStep 2".to_owned()), "{events:?}");
    Ok(())
});

db_test!(async fn a_tasklet_rides_out_transient_errors_without_a_step_retry(db) {
    let mut s = settings(10);
    s.step_retry_attempts = 0;
    let h = Harness::new(db, s);
    h.plan.flaky_failures_left.store(3, Ordering::SeqCst);
    h.plan.transient.store(true, Ordering::SeqCst);
    let before = h.clock.now();
    let r = h.launch(&["run=tasklet", "items=4"]).await;
    assert_eq!(r.exit_code, ExitCode::Completed, "{r:#?}");
    let flaky = step(&r, "flakyStep");
    assert_eq!((flaky.counts.retry_count, flaky.counts.rollback_count), (3, 3), "{flaky:#?}");
    assert_eq!(flaky.counts.counters.get("flaky_ok"), Some(&1));
    assert_eq!(flaky.counts.counters.get("flaky_partial"), None, "a failed attempt's counters are undone");
    assert_eq!(h.plan.flaky_runs.load(Ordering::SeqCst), 4);
    assert!(h.clock.now() - before < chrono::Duration::seconds(60), "chunk backoff, no step retry");
    let events = h.recorder.0.lock().unwrap().clone();
    assert!(!events.iter().any(|e| e.starts_with("retry flakyStep")), "{events:?}");
    // A transient error that outlasts the chunk retry policy fails the step (no step retry here),
    // counting its retries and rollbacks.
    h.plan.flaky_failures_left.store(1_000, Ordering::SeqCst);
    h.plan.flaky_runs.store(0, Ordering::SeqCst);
    let failed = h.launch(&["run=tasklet2", "items=4"]).await;
    assert_eq!(failed.exit_code, ExitCode::Failed, "{failed:#?}");
    let flaky = step(&failed, "flakyStep");
    let runs = i64::from(h.plan.flaky_runs.load(Ordering::SeqCst));
    assert!(runs > 1, "retried before giving up: {runs}");
    assert_eq!((flaky.counts.retry_count, flaky.counts.rollback_count), (runs - 1, runs), "{flaky:#?}");
    Ok(())
});

db_test!(async fn exhausted_step_retries_fail_the_job_and_notify(db) {
    let mut s = settings(10);
    s.step_retry_attempts = 2;
    let h = Harness::new(db, s);
    h.plan.flaky_failures_left.store(10, Ordering::SeqCst);
    let r = h.launch(&["run=exhausted", "items=3"]).await;
    assert_eq!(r.exit_code, ExitCode::Failed);
    assert_eq!(step(&r, "flakyStep").counts.retry_count, 2);
    assert_eq!(h.plan.flaky_runs.load(Ordering::SeqCst), 3);
    let events = h.recorder.0.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            "before_job countingJob", "before_step countStep", "chunk countStep 3/3", "after_step countStep COMPLETED",
            "before_step flakyStep", "retry flakyStep 1", "retry flakyStep 2", "exhausted flakyStep",
            "after_step flakyStep FAILED", "after_job FAILED",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    );
    // A restart skips the completed countStep and runs flakyStep again.
    h.plan.flaky_failures_left.store(0, Ordering::SeqCst);
    let again = h.launch(&["run=exhausted", "items=3"]).await;
    assert_eq!(again.exit_code, ExitCode::Completed, "{again:#?}");
    assert!(step(&again, "countStep").message.as_deref().unwrap().starts_with("skipped"));
    assert_eq!(written(db).await, vec![1, 2, 3]);
    Ok(())
});

db_test!(async fn completed_instance_is_not_run_again_unless_rerun(db) {
    let h = Harness::new(db, settings(10));
    let first = h.launch(&["run=once", "items=5"]).await;
    assert_eq!(first.exit_code, ExitCode::Completed);
    let again = h.launch(&["run=once", "items=5"]).await;
    assert_eq!(again.exit_code, ExitCode::Completed);
    assert_eq!(again.status, "NOOP");
    assert!(again.message.as_deref().unwrap().contains("--rerun"), "{again:?}");
    assert_eq!(again.execution_id, first.execution_id);
    assert_eq!(written(db).await.len(), 5, "nothing ran");
    assert_eq!(h.repo().executions_of_instance(first.job_instance_id.unwrap()).await?.len(), 1);

    let rerun = h.launch_with(&["run=once", "items=5"], &LaunchOptions { rerun: true, ..Default::default() }).await;
    assert_eq!((rerun.exit_code, rerun.status.as_str()), (ExitCode::Completed, "COMPLETED"));
    assert_eq!(step(&rerun, "countStep").counts.write_count, 5, "a rerun starts from scratch");
    assert_eq!(h.repo().executions_of_instance(first.job_instance_id.unwrap()).await?.len(), 2);
    // Another identifying value is another instance.
    let other = h.launch(&["run=twice", "items=5"]).await;
    assert_ne!(other.job_instance_id, first.job_instance_id);
    Ok(())
});

db_test!(async fn item_failures_complete_with_exit_3_and_rerun_only_those(db) {
    let h = Harness::new(db, settings(4));
    let r = h.launch(&["run=partial", "items=10", "fail_items=3,8"]).await;
    assert_eq!((r.exit_code, r.status.as_str()), (ExitCode::CompletedWithFailures, "COMPLETED"), "{r:#?}");
    assert_eq!(r.item_failures, 2);
    let failures = h.repo().failures_of_execution(r.execution_id.unwrap()).await?;
    let keys: Vec<&str> = failures.iter().map(|f| f.item_key.as_str()).collect();
    assert_eq!(keys, vec!["3", "8"]);
    assert!(failures[0].error.contains("cursed"));

    // The same instance again: only the failed items are read, and their failures resolved.
    let retry = h.launch(&["run=partial", "items=10"]).await;
    assert_eq!(retry.exit_code, ExitCode::Completed, "{retry:#?}");
    assert_eq!(step(&retry, "countStep").counts.read_count, 2);
    assert_eq!(written(db).await, (1..=10).collect::<Vec<_>>());
    assert!(h.repo().unresolved_failures(r.job_instance_id.unwrap(), "countStep").await?.is_empty());
    // And now it is complete.
    let noop = h.launch(&["run=partial", "items=10"]).await;
    assert_eq!(noop.status, "NOOP");
    Ok(())
});

db_test!(async fn live_instance_refuses_and_stale_one_is_taken_over(db) {
    let h = Harness::new(db, settings(10));
    let repo = h.repo();
    let first = h.launch(&["run=live", "items=1"]).await; // creates the instance
    let instance = first.job_instance_id.unwrap();
    // Pretend another process holds a live execution with a fresh heartbeat.
    let now = h.clock.now().naive_utc();
    let live = match repo.create_execution(instance, "{}", "other-host:1", now, now - chrono::Duration::minutes(2)).await? {
        CreateExecution::Created { execution, .. } => execution,
        other => panic!("{other:?}"),
    };
    let refused = h.launch_with(&["run=live", "items=1"], &LaunchOptions { rerun: true, ..Default::default() }).await;
    assert_eq!(refused.exit_code, ExitCode::AlreadyRunning, "{refused:#?}");
    assert_eq!(refused.execution_id, Some(live.id));
    assert!(refused.message.as_deref().unwrap().contains("other-host:1"));

    // Three minutes later its heartbeat is stale (stale_after = 2m): it is taken over.
    h.clock.advance(chrono::Duration::minutes(3));
    let taken = h.launch_with(&["run=live", "items=1"], &LaunchOptions { rerun: true, ..Default::default() }).await;
    assert_eq!(taken.exit_code, ExitCode::Completed, "{taken:#?}");
    let dead = repo.execution(live.id).await?.unwrap();
    assert_eq!(dead.status, "FAILED");
    assert!(dead.exit_message.unwrap().contains("abandoned"));
    assert!(dead.live_instance_id.is_none());
    Ok(())
});

db_test!(async fn bad_parameters_are_refused_before_anything_is_written(db) {
    let h = Harness::new(db, settings(10));
    let job = CountingJob { plan: h.plan.clone() };
    for args in [vec!["run=x", "colour=red"], vec!["run=x", "items=many"]] {
        let err = h.launcher.launch(&job, params(&args), &LaunchOptions::default()).await.unwrap_err();
        assert!(matches!(err, LaunchError::Parameters(_)), "{err}");
        assert_eq!(err.exit_code(), ExitCode::Usage);
    }
    assert!(h.repo().history(None, 10).await?.is_empty(), "no instance or execution was created");
    Ok(())
});

db_test!(async fn stop_request_ends_stopped_and_restarts_cleanly(db) {
    let h = Harness::new(db, settings(5));
    let options = LaunchOptions::default();
    options.cancel.cancel();
    let stopped = h.launch_with(&["run=stop", "items=12"], &options).await;
    assert_eq!((stopped.status.as_str(), stopped.exit_code), ("STOPPED", ExitCode::Failed), "{stopped:#?}");
    let resumed = h.launch(&["run=stop", "items=12"]).await;
    assert_eq!(resumed.exit_code, ExitCode::Completed);
    assert_eq!(written(db).await, (1..=12).collect::<Vec<_>>());
    Ok(())
});

db_test!(async fn history_recover_and_purge(db) {
    let h = Harness::new(db, settings(10));
    let repo = h.repo();
    let a = h.launch(&["run=a", "items=2"]).await;
    let b = h.launch(&["run=b", "items=2", "fail_items=1"]).await;
    let hist = repo.history(None, 10).await?;
    assert_eq!(hist.iter().map(|(e, _)| Some(e.id)).collect::<Vec<_>>(), vec![b.execution_id, a.execution_id]);
    assert_eq!(repo.history(Some("countingJob"), 1).await?.len(), 1);
    assert!(repo.history(Some("otherJob"), 10).await?.is_empty());

    // A live execution of a third instance (a process that died a minute ago).
    let now = h.clock.now().naive_utc();
    let inst = repo.get_or_create_instance("countingJob", "k3", "{}", now).await?;
    let CreateExecution::Created { execution: live, .. } =
        repo.create_execution(inst.id, "{}", "gone:1", now, now - chrono::Duration::minutes(2)).await?
    else {
        panic!("not created")
    };
    // Fresh heartbeat: recover refuses without --force...
    let refused = repo.recover(live.id, now - chrono::Duration::minutes(2), false, now).await?;
    assert!(refused.unwrap_err().contains("--force"));
    // ...purge never touches it...
    h.clock.advance(chrono::Duration::days(40));
    let later = h.clock.now().naive_utc();
    let counts = repo.purge(later - chrono::Duration::days(30)).await?;
    assert_eq!((counts.executions, counts.instances, counts.failures), (2, 2, 1), "{counts:?}");
    assert!(counts.steps >= 4);
    assert!(repo.execution(live.id).await?.is_some());
    // ...and once stale, recover marks it FAILED and frees the instance.
    let recovered = repo.recover(live.id, later - chrono::Duration::minutes(2), false, later).await?.unwrap();
    assert_eq!(recovered.status, "FAILED");
    assert!(recovered.live_instance_id.is_none());
    assert!(repo.recover(live.id, later, true, later).await?.unwrap_err().contains("not running"));
    Ok(())
});
