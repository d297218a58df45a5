//! Process-level runtime tests on SQLite, PostgreSQL and MySQL: a launcher killed with SIGKILL is
//! recovered, and two launchers racing for one instance let exactly one run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_common::repository::JobRepository;
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
