//! Partitioned steps, in one process, on SQLite, PostgreSQL and MySQL: partitions run once each
//! and their counts sum exactly; one partition is today's step; a failed partition fails the step
//! and a restart runs only the partitions that did not complete, from their checkpoints; claims
//! and leases in the repository (a lost lease is re-claimed and its old owner fenced; racing
//! claimers never share a partition). Workers in other processes (`--join`, SIGKILL) are in
//! `batch-testkit/tests/process.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use batch_common::config::{BatchProperties, RuntimeSettings};
use batch_common::launcher::{JobLauncher, LaunchError, LaunchOptions};
use batch_common::repository::{
    BatchStatus, Claim, CreateExecution, JobRepository, LeaseLost, NewPartition, StepExecution,
    StepProgress,
};
use batch_common::{BatchResult, ExitCode, FixedClock, StepResult};
use batch_testkit::jobs::{CountingJob, FailPlan, written_items};
use batch_testkit::{TestDb, db_test};
use chrono::{NaiveDateTime, TimeZone, Utc};
use core_domain::Backend;

fn settings(chunk: usize) -> RuntimeSettings {
    let mut s = BatchProperties::load_from(None, Vec::new(), &[])
        .unwrap()
        .batch;
    s.chunk_size = NonZeroUsize::new(chunk).unwrap();
    s.step_retry_attempts = 0;
    s
}

fn launcher(db: &TestDb) -> JobLauncher {
    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap(),
    ));
    JobLauncher::new(JobRepository::new(db.db.clone()), clock, settings(5))
}

fn split(partitions: u32, workers: u32) -> LaunchOptions {
    LaunchOptions {
        partitions: NonZeroU32::new(partitions),
        workers: NonZeroU32::new(workers),
        ..LaunchOptions::default()
    }
}

async fn launch(
    launcher: &JobLauncher,
    plan: &Arc<FailPlan>,
    args: &[&str],
    options: &LaunchOptions,
) -> BatchResult {
    let job = CountingJob { plan: plan.clone() };
    let given = batch_common::params::parse_pairs(args).unwrap();
    launcher.launch(&job, given, options).await.expect("launch")
}

fn step<'a>(r: &'a BatchResult, name: &str) -> &'a StepResult {
    r.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {r:#?}"))
}

/// The manager row of `countStep` in an execution and its partitions.
async fn count_step(repo: &JobRepository, execution: i64) -> (StepExecution, Vec<StepExecution>) {
    let steps = repo.step_executions(execution).await.unwrap();
    let manager = steps
        .into_iter()
        .find(|s| s.step_name == "countStep")
        .expect("countStep ran");
    let partitions = repo.partitions(manager.id).await.unwrap();
    (manager, partitions)
}

db_test!(async fn every_partition_runs_once_and_the_counts_sum_exactly(db) {
    let launcher = launcher(db);
    let plan = Arc::new(FailPlan::default());
    let r = launch(&launcher, &plan, &["run=split", "items=50"], &split(4, 2)).await;
    assert_eq!(r.exit_code, ExitCode::Completed, "{r:#?}");
    assert_eq!(written_items(db).await, (1..=50).collect::<Vec<_>>());
    let count = step(&r, "countStep");
    assert_eq!((count.counts.read_count, count.counts.write_count), (50, 50));
    assert_eq!(count.counts.counters.get("inserted"), Some(&50));
    // 1..=13, 14..=26, 27..=39, 40..=50 in chunks of 5: 3 commits each.
    assert_eq!(count.counts.commit_count, 12);

    let (manager, partitions) = count_step(launcher.repository(), r.execution_id.unwrap()).await;
    assert_eq!(manager.execution_context, r#"{"partitions":4}"#);
    assert_eq!(partitions.len(), 4);
    let names: Vec<&str> = partitions.iter().map(|p| p.step_name.as_str()).collect();
    assert_eq!(
        names,
        ["countStep:partition0", "countStep:partition1", "countStep:partition2", "countStep:partition3"]
    );
    let ranges: Vec<(Option<i64>, Option<i64>)> =
        partitions.iter().map(|p| (p.range_from, p.range_to)).collect();
    assert_eq!(
        ranges,
        [(Some(i64::MIN), Some(13)), (Some(14), Some(26)), (Some(27), Some(39)), (Some(40), Some(i64::MAX))]
    );
    for p in &partitions {
        assert_eq!(p.status, BatchStatus::Completed, "{p:?}");
        assert_eq!(p.claim_count, 1, "{p:?}");
        assert!(p.owner.is_some(), "{p:?}");
    }
    let reads: i64 = partitions.iter().map(|p| p.counts.read_count).sum();
    assert_eq!(reads, 50);
    // The job's steps are the manager rows only.
    let steps = launcher.repository().step_executions(r.execution_id.unwrap()).await?;
    assert_eq!(steps.iter().map(|s| s.step_name.as_str()).collect::<Vec<_>>(), ["countStep", "flakyStep"]);
    Ok(())
});

db_test!(async fn one_partition_is_the_unpartitioned_step(db) {
    let launcher = launcher(db);
    let plan = Arc::new(FailPlan::default());
    let r = launch(&launcher, &plan, &["run=one", "items=12"], &split(1, 4)).await;
    assert_eq!(r.exit_code, ExitCode::Completed, "{r:#?}");
    assert_eq!(written_items(db).await, (1..=12).collect::<Vec<_>>());
    let (manager, partitions) = count_step(launcher.repository(), r.execution_id.unwrap()).await;
    assert!(partitions.is_empty());
    // Today's checkpoint: the reader's, in the step's own row.
    assert_eq!(manager.execution_context, r#"{"next":13}"#);
    assert_eq!((manager.counts.read_count, manager.counts.commit_count), (12, 3));
    Ok(())
});

db_test!(async fn a_failed_partition_fails_the_step_and_a_restart_runs_only_what_did_not_complete(db) {
    let launcher = launcher(db);
    let plan = Arc::new(FailPlan::default());
    // Partition 1 (14..=26): its chunk 19..=23 fails for good, after 14..=18 committed.
    plan.fail_write_at_item.store(21, Ordering::SeqCst);
    plan.write_failures_left.store(1, Ordering::SeqCst);
    let first = launch(&launcher, &plan, &["run=fail", "items=50"], &split(4, 2)).await;
    assert_eq!(first.exit_code, ExitCode::Failed, "{first:#?}");
    let message = first.message.clone().unwrap_or_default();
    assert!(message.contains("countStep:partition1") && message.contains("injected failure"), "{message}");
    let written_first = written_items(db).await;
    assert!(written_first.contains(&18) && !written_first.contains(&19), "{written_first:?}");
    let (_, partitions) = count_step(launcher.repository(), first.execution_id.unwrap()).await;
    let failed: Vec<&str> = partitions
        .iter()
        .filter(|p| p.status == BatchStatus::Failed)
        .map(|p| p.step_name.as_str())
        .collect();
    assert_eq!(failed, ["countStep:partition1"]);
    assert!(partitions.iter().all(|p| p.owner.is_none() || p.status != BatchStatus::Started));
    let completed_first = partitions
        .iter()
        .filter(|p| p.status == BatchStatus::Completed)
        .count();

    // The restart (no --partitions: the plan is the first run's) runs the others only, each
    // from its checkpoint; nothing is written twice.
    let second = launch(&launcher, &plan, &["run=fail", "items=50"], &LaunchOptions::default()).await;
    assert_eq!(second.exit_code, ExitCode::Completed, "{second:#?}");
    assert_eq!(written_items(db).await, (1..=50).collect::<Vec<_>>());
    let count = step(&second, "countStep");
    assert_eq!(count.counts.read_count, 50 - written_first.len() as i64, "{count:?}");
    let (_, again) = count_step(launcher.repository(), second.execution_id.unwrap()).await;
    assert_eq!(again.len(), 4 - completed_first);
    assert!(again.iter().all(|p| p.status == BatchStatus::Completed));
    let resumed = again.iter().find(|p| p.step_name == "countStep:partition1").unwrap();
    assert_eq!((resumed.range_from, resumed.range_to, resumed.counts.read_count), (Some(14), Some(26), 8));
    Ok(())
});

/// A manager step execution with `n` unclaimed partitions, for the repository tests.
async fn manager_with_partitions(repo: &JobRepository, n: u32, now: NaiveDateTime) -> i64 {
    let instance = repo
        .get_or_create_instance("leaseJob", "k", "{}", now)
        .await
        .unwrap();
    let CreateExecution::Created { execution, .. } = repo
        .create_execution(instance.id, "{}", "test", now, now)
        .await
        .unwrap()
    else {
        panic!("no execution");
    };
    let manager = repo
        .create_step_execution(execution.id, "leaseStep", &StepProgress::default(), now)
        .await
        .unwrap();
    let plan: Vec<NewPartition> = (0..n)
        .map(|i| NewPartition {
            index: i,
            from: i64::from(i) * 10,
            to: i64::from(i) * 10 + 9,
            context: serde_json::Value::Null,
        })
        .collect();
    repo.create_partitions(execution.id, "leaseStep", manager.id, &plan, now)
        .await
        .unwrap();
    manager.id
}

db_test!(async fn a_lost_lease_is_reclaimed_and_its_old_owner_fenced(db) {
    let repo = JobRepository::new(db.db.clone());
    let t0 = Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap().naive_utc();
    let manager = manager_with_partitions(&repo, 2, t0).await;
    let lease = chrono::Duration::seconds(120);

    let a = repo.claim_partition(&[manager], "a", t0, t0 - lease).await?.expect("a claims");
    assert_eq!((a.step_name.as_str(), a.claim_count, a.owner.as_deref()), ("leaseStep:partition0", 1, Some("a")));
    let b = repo.claim_partition(&[manager], "b", t0, t0 - lease).await?.expect("b claims");
    assert_eq!(b.step_name, "leaseStep:partition1");
    // Both held with fresh leases: nothing to claim.
    assert!(repo.claim_partition(&[manager], "c", t0, t0 - lease).await?.is_none());

    // b keeps renewing; a stops (its process died). After the lease, c takes a's partition.
    let t1 = t0 + chrono::Duration::seconds(100);
    assert!(repo.renew_partition(&Claim::of(&b), t1).await?);
    let t2 = t0 + chrono::Duration::seconds(150);
    let c = repo.claim_partition(&[manager], "c", t2, t2 - lease).await?.expect("c re-claims");
    assert_eq!((c.id, c.claim_count, c.owner.as_deref()), (a.id, 2, Some("c")));
    assert!(repo.claim_partition(&[manager], "d", t2, t2 - lease).await?.is_none(), "b's lease is fresh");

    // a comes back: it can neither renew, nor checkpoint, nor end the partition.
    assert!(!repo.renew_partition(&Claim::of(&a), t2).await?);
    let progress = StepProgress { context: serde_json::json!({"last_id": 5}), ..StepProgress::default() };
    let mut conn = db.db.get().await?;
    let err = JobRepository::save_partition_progress(&mut conn, &Claim::of(&a), &progress, t2).await.unwrap_err();
    assert!(err.is::<LeaseLost>(), "{err:#}");
    JobRepository::save_partition_progress(&mut conn, &Claim::of(&c), &progress, t2).await?;
    drop(conn);
    assert!(!repo.end_partition(&Claim::of(&a), BatchStatus::Completed, None, &progress, t2).await?);
    assert!(repo.end_partition(&Claim::of(&c), BatchStatus::Completed, None, &progress, t2).await?);
    // A stopped worker releases: claimable again at once, from its checkpoint.
    assert!(repo.end_partition(&Claim::of(&b), BatchStatus::Stopped, Some("released"), &progress, t2).await?);
    let d = repo.claim_partition(&[manager], "d", t2, t2 - lease).await?.expect("d claims the released one");
    assert_eq!((d.id, d.claim_count, d.execution_context.as_str()), (b.id, 2, r#"{"last_id":5}"#));
    // A claim is fenced by its count too: the same owner's earlier claim of a re-claimed
    // partition (another slot of one process) can no longer write.
    let stale_d = Claim { claim: d.claim_count - 1, ..Claim::of(&d) };
    assert!(!repo.renew_partition(&stale_d, t2).await?);
    let mut conn = db.db.get().await?;
    let err = JobRepository::save_partition_progress(&mut conn, &stale_d, &progress, t2).await.unwrap_err();
    assert!(err.is::<LeaseLost>(), "{err:#}");
    drop(conn);
    // Closing the step ends what is left and fences its holder.
    assert_eq!(repo.close_partitions(manager, BatchStatus::Stopped, "stopped", t2).await?, 1);
    assert!(!repo.renew_partition(&Claim::of(&d), t2).await?);
    Ok(())
});

db_test!(async fn racing_claimers_never_share_a_partition(db) {
    let repo = JobRepository::new(db.db.clone());
    let t0 = Utc.with_ymd_and_hms(2026, 11, 21, 1, 0, 0).unwrap().naive_utc();
    let partitions = 60;
    let manager = manager_with_partitions(&repo, partitions, t0).await;
    let claimers = if db.backend() == Backend::Sqlite { 4 } else { 12 };
    let tasks: Vec<_> = (0..claimers)
        .map(|w| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut mine = Vec::new();
                while let Some(p) = repo
                    .claim_partition(&[manager], &owner, t0, t0 - chrono::Duration::seconds(120))
                    .await
                    .expect("claim")
                {
                    assert!(
                        repo.end_partition(&Claim::of(&p), BatchStatus::Completed, None, &StepProgress::default(), t0)
                            .await
                            .expect("end"),
                        "{owner} lost {} it had just claimed",
                        p.id
                    );
                    mine.push(p.id);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), partitions as usize, "claims: {all:?}");
    assert_eq!(distinct.len(), partitions as usize);
    let rows = repo.partitions(manager).await?;
    assert!(rows.iter().all(|r| r.status == BatchStatus::Completed && r.claim_count == 1));
    Ok(())
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_on_sqlite_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let launcher = launcher(&db);
    let job = CountingJob {
        plan: Arc::new(FailPlan::default()),
    };
    let options = LaunchOptions {
        join: true,
        ..LaunchOptions::default()
    };
    let err = launcher
        .launch(&job, BTreeMap::new(), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::Setup(_)), "{err:?}");
    assert_eq!(err.exit_code(), ExitCode::Usage);
    let text = err.to_string();
    assert!(
        text.contains("--join") && text.contains("PostgreSQL or MySQL"),
        "{text}"
    );
    assert!(
        launcher
            .repository()
            .history(None, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing written"
    );
}
