//! Process-level runtime tests on SQLite, PostgreSQL and MySQL: a launcher killed with SIGKILL is
//! recovered, two launchers racing for one instance let exactly one run, and a partitioned run's
//! workers in four processes survive a SIGKILLed worker and a SIGKILLed manager.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_common::repository::{BatchStatus, JobRepository, StepExecution};
use batch_testkit::TestDb;
use core_domain::schema::point;
use core_domain::{Backend, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

const FAST_HEARTBEAT: [(&str, &str); 4] = [
    ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms"),
    ("BATCH__BATCH__STALE_AFTER", "1s"),
    ("BATCH__BATCH__CHUNK_SIZE", "5"),
    ("BATCH__BATCH__STEP_RETRY_ATTEMPTS", "0"),
];

fn spawn(db: &TestDb, args: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testkit-launcher"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BATCH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("BATCH__DATABASE__URL", db.url().expose_secret())
        .envs(FAST_HEARTBEAT)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testkit-launcher")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn written_numbers(db: &TestDb) -> Vec<i64> {
    let mut conn = db.conn().await;
    let mut ids: Vec<i64> =
        dispatch!(&mut *conn, c => point::table.select(point::user_id).load(c).await).unwrap();
    ids.sort_unstable();
    ids
}

/// Polls until `check` returns Some or `limit` passes.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn killed_launcher_is_recovered(backend: Backend) {
    let db = TestDb::new(backend).await;
    let repo = JobRepository::new(db.db.clone());
    let args = ["run=kill", "items=100", "delay_ms=100"];
    let mut child = spawn(&db, &args);

    // Wait until a few chunks are committed, then kill the process mid-step.
    let exec_id = wait_for(
        Duration::from_secs(60),
        "three committed chunks",
        || async {
            let history = repo.history(Some("countingJob"), 1).await.ok()?;
            let (exec, _) = history.into_iter().next()?;
            let steps = repo.step_executions(exec.id).await.ok()?;
            steps
                .iter()
                .any(|s| s.step_name == "countStep" && s.counts.commit_count >= 3)
                .then_some(exec.id)
        },
    )
    .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let dead = repo.execution(exec_id).await.unwrap().unwrap();
    assert_eq!(
        dead.status, "STARTED",
        "a killed process leaves its execution STARTED"
    );
    assert!(dead.live_instance_id.is_some());
    let written_before = written_numbers(&db).await;
    assert!(
        !written_before.is_empty() && written_before.len() < 100,
        "{} written",
        written_before.len()
    );

    // After the stale threshold (1 s without heartbeat) a new launch takes over and completes.
    wait_for(
        Duration::from_secs(10),
        "the heartbeat to go stale",
        || async {
            let e = repo.execution(exec_id).await.ok()??;
            let age = chrono::Utc::now().naive_utc() - e.last_updated;
            (age > chrono::Duration::milliseconds(1300)).then_some(())
        },
    )
    .await;
    let (code, out) = finish(spawn(&db, &args));
    assert_eq!(code, 0, "{out}");

    let dead = repo.execution(exec_id).await.unwrap().unwrap();
    assert_eq!(dead.status, "FAILED");
    assert!(
        dead.exit_message
            .as_deref()
            .unwrap_or("")
            .contains("abandoned"),
        "{dead:?}"
    );
    assert!(dead.live_instance_id.is_none());
    // Every item exactly once.
    assert_eq!(written_numbers(&db).await, (1..=100).collect::<Vec<i64>>());
    // The new execution resumed after the last committed chunk instead of starting over.
    let (latest, _) = repo
        .history(Some("countingJob"), 1)
        .await
        .unwrap()
        .remove(0);
    assert_ne!(latest.id, exec_id);
    assert_eq!(latest.status, "COMPLETED");
    let steps = repo.step_executions(latest.id).await.unwrap();
    let count = steps.iter().find(|s| s.step_name == "countStep").unwrap();
    assert_eq!(
        count.counts.read_count as usize,
        100 - written_before.len(),
        "{count:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_launcher_is_recovered_sqlite() {
    killed_launcher_is_recovered(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_launcher_is_recovered_postgres() {
    killed_launcher_is_recovered(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_launcher_is_recovered_mysql() {
    killed_launcher_is_recovered(Backend::Mysql).await;
}

async fn concurrent_launches_run_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Create the instance's metadata tables' rows lazily: both processes start from nothing.
    let args = ["run=race", "items=60", "delay_ms=100"];
    let a = spawn(&db, &args);
    let b = spawn(&db, &args);
    let (code_a, out_a) = finish(a);
    let (code_b, out_b) = finish(b);
    let mut codes = [code_a, code_b];
    codes.sort_unstable();
    assert_eq!(codes, [0, 4], "a: {out_a}\nb: {out_b}");
    let refused = if code_a == 4 { &out_a } else { &out_b };
    assert!(refused.contains("already running"), "{refused}");
    assert_eq!(written_numbers(&db).await, (1..=60).collect::<Vec<i64>>());
    let repo = JobRepository::new(db.db.clone());
    let history = repo.history(Some("countingJob"), 10).await.unwrap();
    assert_eq!(
        history.len(),
        1,
        "exactly one execution was created: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_launches_run_once_sqlite() {
    concurrent_launches_run_once(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_launches_run_once_postgres() {
    concurrent_launches_run_once(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_launches_run_once_mysql() {
    concurrent_launches_run_once(Backend::Mysql).await;
}

/// The arguments every process of a partitioned run gets: the same command for all (`--join`).
const PARTITIONED: [&str; 6] = [
    "run=split",
    "items=800",
    "delay_ms=40",
    "--partitions=16",
    "--workers=2",
    "--join",
];

/// The pid in a partition owner (`host:pid:tag`).
fn owner_pid(p: &StepExecution) -> Option<u32> {
    p.owner.as_deref()?.split(':').nth(1)?.parse().ok()
}

/// The newest execution's countStep manager and its partitions.
async fn latest_partitions(
    repo: &JobRepository,
) -> Option<(i64, StepExecution, Vec<StepExecution>)> {
    let (exec, _) = repo.history(Some("countingJob"), 1).await.ok()?.pop()?;
    let manager = repo
        .step_executions(exec.id)
        .await
        .ok()?
        .into_iter()
        .find(|s| s.step_name == "countStep")?;
    let partitions = repo.partitions(manager.id).await.ok()?;
    (!partitions.is_empty()).then_some((exec.id, manager, partitions))
}

/// Four processes run the same command: the first starts the execution, three join it as
/// workers; one of those is SIGKILLed in the middle of a partition. Its partition is re-claimed
/// after the lease and resumed from its checkpoint; every item is written exactly once and the
/// counts are exact.
async fn a_killed_worker_s_partition_is_reclaimed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let repo = JobRepository::new(db.db.clone());
    let first = spawn(&db, &PARTITIONED);
    wait_for(Duration::from_secs(60), "the partitions", || {
        latest_partitions(&repo)
    })
    .await;
    let mut victim = spawn(&db, &PARTITIONED);
    let others = [spawn(&db, &PARTITIONED), spawn(&db, &PARTITIONED)];
    let victim_pid = victim.id();
    let held = wait_for(
        Duration::from_secs(60),
        "the victim in the middle of a partition",
        || async {
            let (_, _, partitions) = latest_partitions(&repo).await?;
            partitions.into_iter().find(|p| {
                p.status == BatchStatus::Started
                    && owner_pid(p) == Some(victim_pid)
                    && p.counts.commit_count >= 1
                    && p.counts.read_count < 50
            })
        },
    )
    .await;
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();

    let (code, out) = finish(first);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"status\": \"COMPLETED\""), "{out}");
    for other in others {
        let (code, out) = finish(other);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"status\": \"JOINED\""), "{out}");
    }
    assert_eq!(written_numbers(&db).await, (1..=800).collect::<Vec<i64>>());
    let (exec, manager, partitions) = latest_partitions(&repo).await.expect("partitions");
    assert_eq!(
        repo.history(Some("countingJob"), 10).await.unwrap().len(),
        1,
        "workers are not executions"
    );
    assert_eq!(
        repo.execution(exec).await.unwrap().unwrap().status,
        BatchStatus::Completed
    );
    assert_eq!(partitions.len(), 16);
    assert!(
        partitions
            .iter()
            .all(|p| p.status == BatchStatus::Completed),
        "{partitions:#?}"
    );
    let reclaimed = partitions.iter().find(|p| p.id == held.id).unwrap();
    assert!(reclaimed.claim_count >= 2, "{reclaimed:?}");
    assert_ne!(owner_pid(reclaimed), Some(victim_pid), "{reclaimed:?}");
    assert_eq!(
        reclaimed.counts.read_count, 50,
        "resumed from its checkpoint, counted once: {reclaimed:?}"
    );
    assert_eq!(
        (manager.counts.read_count, manager.counts.write_count),
        (800, 800)
    );
    let owners: std::collections::BTreeSet<Option<u32>> =
        partitions.iter().map(owner_pid).collect();
    assert!(
        owners.len() >= 2,
        "the partitions were shared out: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_partition_is_reclaimed_postgres() {
    a_killed_worker_s_partition_is_reclaimed(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_partition_is_reclaimed_mysql() {
    a_killed_worker_s_partition_is_reclaimed(Backend::Mysql).await;
}

/// The process that started the execution (its manager) is SIGKILLed while three workers work
/// its partitions: once its heartbeat is stale, one worker takes the instance over (a new
/// execution resuming the partitions that did not complete) and the others join that one.
async fn a_killed_manager_is_taken_over_by_a_worker(backend: Backend) {
    let db = TestDb::new(backend).await;
    let repo = JobRepository::new(db.db.clone());
    let mut manager = spawn(&db, &PARTITIONED);
    let (first_exec, _, _) = wait_for(Duration::from_secs(60), "the partitions", || {
        latest_partitions(&repo)
    })
    .await;
    let workers = [
        spawn(&db, &PARTITIONED),
        spawn(&db, &PARTITIONED),
        spawn(&db, &PARTITIONED),
    ];
    let manager_pid = manager.id();
    wait_for(Duration::from_secs(60), "every process working", || async {
        let (_, _, partitions) = latest_partitions(&repo).await?;
        let busy: std::collections::BTreeSet<u32> = partitions
            .iter()
            .filter(|p| p.status == BatchStatus::Started && p.counts.commit_count >= 1)
            .filter_map(owner_pid)
            .collect();
        (busy.len() >= 3 && busy.contains(&manager_pid)).then_some(())
    })
    .await;
    manager.kill().expect("SIGKILL");
    let _ = manager.wait();

    for worker in workers {
        let (code, out) = finish(worker);
        assert_eq!(code, 0, "{out}");
    }
    assert_eq!(written_numbers(&db).await, (1..=800).collect::<Vec<i64>>());
    let history = repo.history(Some("countingJob"), 10).await.unwrap();
    assert_eq!(
        history.len(),
        2,
        "the dead one and the one that took over: {history:?}"
    );
    let dead = repo.execution(first_exec).await.unwrap().unwrap();
    assert_eq!(dead.status, BatchStatus::Failed);
    assert!(
        dead.exit_message
            .as_deref()
            .unwrap_or("")
            .contains("abandoned"),
        "{dead:?}"
    );
    let (latest, _) = &history[0];
    assert_ne!(latest.id, first_exec);
    assert_eq!(latest.status, BatchStatus::Completed);
    let count_step = |exec: i64| {
        let repo = repo.clone();
        async move {
            repo.step_executions(exec)
                .await
                .unwrap()
                .into_iter()
                .find(|s| s.step_name == "countStep")
                .unwrap()
        }
    };
    let (first_manager, latest_manager) =
        (count_step(first_exec).await, count_step(latest.id).await);
    // The new execution resumed only the partitions that had not completed (none, if the
    // workers re-claimed and finished the dead manager's before one of them took over).
    let resumed = repo.partitions(latest_manager.id).await.unwrap();
    assert!(
        resumed.iter().all(|p| p.status == BatchStatus::Completed),
        "{resumed:#?}"
    );
    let first_partitions = repo.partitions(first_manager.id).await.unwrap();
    let completed_first = first_partitions
        .iter()
        .filter(|p| p.status == BatchStatus::Completed)
        .count();
    assert_eq!(resumed.len(), 16 - completed_first, "{first_partitions:#?}");
    // Counts exact across the two executions: the first's committed chunks and the second's.
    let before: i64 = first_partitions.iter().map(|p| p.counts.write_count).sum();
    assert_eq!(
        before + latest_manager.counts.write_count,
        800,
        "before {before}, after {latest_manager:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_is_taken_over_by_a_worker_postgres() {
    a_killed_manager_is_taken_over_by_a_worker(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_is_taken_over_by_a_worker_mysql() {
    a_killed_manager_is_taken_over_by_a_worker(Backend::Mysql).await;
}

/// SQLite runs the partitions in one process, with the same results; a worker in another
/// process is refused (exit 2) and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_partitions_run_in_one_process_and_refuse_remote_workers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (code, out) = finish(spawn(&db, &PARTITIONED));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--join") && out.contains("PostgreSQL or MySQL"),
        "{out}"
    );
    let repo = JobRepository::new(db.db.clone());
    assert!(repo.history(None, 10).await.unwrap().is_empty());
    let local = ["run=split", "items=800", "--partitions=16", "--workers=4"];
    let (code, out) = finish(spawn(&db, &local));
    assert_eq!(code, 0, "{out}");
    assert_eq!(written_numbers(&db).await, (1..=800).collect::<Vec<i64>>());
    let (_, manager, partitions) = latest_partitions(&repo).await.expect("partitions");
    assert_eq!(partitions.len(), 16);
    assert_eq!(manager.counts.read_count, 800);
}

/// A joined worker asked to stop (SIGTERM) releases its partitions after its current chunk and
/// exits 0 saying so; another process resumes them at once from their checkpoints (no lease to
/// wait for), and every item is written exactly once.
async fn a_stopped_worker_releases_its_partitions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let repo = JobRepository::new(db.db.clone());
    let first = spawn(&db, &PARTITIONED);
    wait_for(Duration::from_secs(60), "the partitions", || {
        latest_partitions(&repo)
    })
    .await;
    let worker = spawn(&db, &PARTITIONED);
    let pid = worker.id();
    let held = wait_for(
        Duration::from_secs(60),
        "the worker in the middle of a partition",
        || async {
            let (_, _, partitions) = latest_partitions(&repo).await?;
            partitions.into_iter().find(|p| {
                p.status == BatchStatus::Started
                    && owner_pid(p) == Some(pid)
                    && p.counts.commit_count >= 1
                    && p.counts.read_count < 50
            })
        },
    )
    .await;
    let stopped_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let (code, out) = finish(worker);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"status\": \"JOINED\"") && out.contains("stopped on request"),
        "{out}"
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "stopped after its current chunk, not at the end: {:?}",
        stopped_at.elapsed()
    );
    let (code, out) = finish(first);
    assert_eq!(code, 0, "{out}");
    assert_eq!(written_numbers(&db).await, (1..=800).collect::<Vec<i64>>());
    let (_, manager, partitions) = latest_partitions(&repo).await.expect("partitions");
    assert!(
        partitions
            .iter()
            .all(|p| p.status == BatchStatus::Completed)
    );
    let resumed = partitions.iter().find(|p| p.id == held.id).unwrap();
    assert!(resumed.claim_count >= 2, "{resumed:?}");
    assert_eq!(resumed.counts.read_count, 50, "{resumed:?}");
    assert_eq!(manager.counts.read_count, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_releases_its_partitions_postgres() {
    a_stopped_worker_releases_its_partitions(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_releases_its_partitions_mysql() {
    a_stopped_worker_releases_its_partitions(Backend::Mysql).await;
}

/// The process running the execution is asked to stop (SIGTERM): the run ends STOPPED after the
/// current chunks, the joined workers stop too (their partitions are closed under them) and exit
/// 0; the same command again restarts the instance, running only the partitions that did not
/// complete, each from its checkpoint.
async fn a_stopped_manager_stops_the_run_and_a_restart_resumes_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let repo = JobRepository::new(db.db.clone());
    let manager = spawn(&db, &PARTITIONED);
    let (first_exec, _, _) = wait_for(Duration::from_secs(60), "the partitions", || {
        latest_partitions(&repo)
    })
    .await;
    let worker = spawn(&db, &PARTITIONED);
    let pid = manager.id();
    wait_for(
        Duration::from_secs(60),
        "both processes working",
        || async {
            let (_, _, partitions) = latest_partitions(&repo).await?;
            let busy: std::collections::BTreeSet<u32> = partitions
                .iter()
                .filter(|p| p.status == BatchStatus::Started && p.counts.commit_count >= 1)
                .filter_map(owner_pid)
                .collect();
            (busy.len() >= 2).then_some(())
        },
    )
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let (code, out) = finish(manager);
    assert_eq!(code, 1, "STOPPED is exit 1: {out}");
    assert!(out.contains("\"status\": \"STOPPED\""), "{out}");
    let (code, out) = finish(worker);
    assert_eq!(code, 0, "{out}");
    let stopped = repo.execution(first_exec).await.unwrap().unwrap();
    assert_eq!(stopped.status, BatchStatus::Stopped);
    let (_, _, partitions) = latest_partitions(&repo).await.unwrap();
    assert!(
        partitions
            .iter()
            .all(|p| matches!(p.status, BatchStatus::Completed | BatchStatus::Stopped)),
        "{partitions:#?}"
    );
    let written_before = written_numbers(&db).await.len() as i64;
    assert!(written_before < 800, "stopped before the end");

    let (code, out) = finish(spawn(&db, &PARTITIONED));
    assert_eq!(code, 0, "{out}");
    assert_eq!(written_numbers(&db).await, (1..=800).collect::<Vec<i64>>());
    let (latest, manager, resumed) = latest_partitions(&repo).await.expect("partitions");
    assert_ne!(latest, first_exec);
    let done_before = partitions
        .iter()
        .filter(|p| p.status == BatchStatus::Completed)
        .count();
    assert_eq!(resumed.len(), 16 - done_before);
    assert_eq!(manager.counts.write_count, 800 - written_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_manager_stops_the_run_and_a_restart_resumes_it_postgres() {
    a_stopped_manager_stops_the_run_and_a_restart_resumes_it(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_manager_stops_the_run_and_a_restart_resumes_it_mysql() {
    a_stopped_manager_stops_the_run_and_a_restart_resumes_it(Backend::Mysql).await;
}
