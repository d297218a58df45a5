//! Partitioned runs through the binary: four `batch-launcher` processes run the same command
//! (`run <JOB> --partitions N --workers 2 --join`) on PostgreSQL and MariaDB — the first starts
//! the execution, three join it — and one joined process is SIGKILLed while it holds a
//! partition. pointBalanceSyncJob: Redis equals the database for every user (newer cached
//! versions kept), the report's rows equal the unpartitioned report's, counts exact.
//! assetRefreshJob: one snapshot per active user. SQLite: the same partitioned run in one
//! process, and `--join` refused with exit 2.

use std::process::{Child, Output};
use std::time::Duration;

use batch_asset::fake_server::{FakeApiConfig, spawn as fake_api};
use batch_common::repository::{BatchStatus, JobRepository, StepExecution};
use batch_launcher::modules::MODULES;
use batch_testkit::{TestDb, TestRedis};
use core_domain::Backend;
use core_domain::models::{AssetHistory, DailyPointReport, PointBalance};

use crate::{launcher, start, text, wait_for};

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("wait")
}

/// The pid in a partition owner (`host:pid:tag`).
fn owner_pid(p: &StepExecution) -> Option<u32> {
    p.owner.as_deref()?.split(':').nth(1)?.parse().ok()
}

/// The newest execution of `job`: its id and, per step name, its manager row and partitions.
async fn latest(
    repo: &JobRepository,
    job: &str,
) -> Option<(i64, Vec<(StepExecution, Vec<StepExecution>)>)> {
    let (exec, _) = repo.history(Some(job), 1).await.ok()?.pop()?;
    let mut steps = Vec::new();
    for step in repo.step_executions(exec.id).await.ok()? {
        let partitions = repo.partitions(step.id).await.ok()?;
        steps.push((step, partitions));
    }
    Some((exec.id, steps))
}

/// Runs `args` in four processes (one first, three joining once its partitions exist) and
/// SIGKILLs the first joined process seen holding a partition of `step`. Returns the outputs of
/// the three survivors (the first one's first) and the killed process's partition.
async fn four_processes_one_killed(
    repo: &JobRepository,
    dir: &std::path::Path,
    job: &str,
    step: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<Output>, StepExecution) {
    let first = start(dir, args, env);
    wait_for(Duration::from_secs(120), "the first partitions", || async {
        let (_, steps) = latest(repo, job).await?;
        steps.iter().any(|(_, p)| !p.is_empty()).then_some(())
    })
    .await;
    let mut joined: Vec<Child> = (0..3).map(|_| start(dir, args, env)).collect();
    let pids: Vec<u32> = joined.iter().map(Child::id).collect();
    let held = wait_for(
        Duration::from_secs(120),
        "a joined process holding a partition",
        || async {
            let (_, steps) = latest(repo, job).await?;
            let (_, partitions) = steps.into_iter().find(|(s, _)| s.step_name == step)?;
            partitions.into_iter().find(|p| {
                p.status == BatchStatus::Started && owner_pid(p).is_some_and(|o| pids.contains(&o))
            })
        },
    )
    .await;
    let victim = pids
        .iter()
        .position(|p| Some(*p) == owner_pid(&held))
        .unwrap();
    let mut killed = joined.remove(victim);
    killed.kill().expect("SIGKILL");
    let _ = killed.wait();
    let mut outputs = vec![finish(first)];
    outputs.extend(joined.into_iter().map(finish));
    (outputs, held)
}

/// Every step's partitions completed; the killed one re-claimed by another process.
fn assert_partitions_done(
    steps: &[(StepExecution, Vec<StepExecution>)],
    killed: &StepExecution,
    partitions: usize,
) {
    for (step, parts) in steps {
        assert_eq!(step.status, BatchStatus::Completed, "{step:?}");
        assert_eq!(parts.len(), partitions, "{}", step.step_name);
        assert!(
            parts.iter().all(|p| p.status == BatchStatus::Completed),
            "{parts:#?}"
        );
        let counted: i64 = parts.iter().map(|p| p.counts.read_count).sum();
        assert_eq!(
            counted, step.counts.read_count,
            "{}: counts summed once",
            step.step_name
        );
    }
    let again = steps
        .iter()
        .flat_map(|(_, p)| p)
        .find(|p| p.id == killed.id)
        .unwrap();
    assert!(again.claim_count >= 2, "re-claimed: {again:?}");
    assert_ne!(owner_pid(again), owner_pid(killed), "{again:?}");
}

fn fast_heartbeat<'a>(url: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("BATCH__DATABASE__URL", url),
        ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms"),
        ("BATCH__BATCH__STALE_AFTER", "1s"),
        ("BATCH__BATCH__STEP_RETRY_ATTEMPTS", "0"),
    ];
    env.extend_from_slice(more);
    env
}

/// Report rows without ids and timestamps of the run, by user.
fn report_values(rows: &[DailyPointReport]) -> Vec<(i64, [i64; 7], String, String)> {
    rows.iter()
        .map(|r| {
            (
                r.user_id,
                [
                    r.earn_amount,
                    r.use_amount,
                    r.cancel_amount,
                    r.balance_snapshot,
                    r.earn_count,
                    r.use_count,
                    r.cancel_count,
                ],
                r.first_transaction_at.to_string(),
                r.last_transaction_at.to_string(),
            )
        })
        .collect()
}

async fn point_job_in_four_processes(backend: Backend) {
    let db = TestDb::for_modules(backend, MODULES).await;
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis.key("point:balance:");
    let url = db.url().expose_secret().to_owned();
    let env = fast_heartbeat(
        &url,
        &[
            ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str()),
            ("BATCH__POINT__SYNC_CHUNK_SIZE", "20"),
        ],
    );
    let users = 6000;
    let o = launcher(
        dir.path(),
        &[
            "seed-demo",
            "--users",
            "6000",
            "--transactions-per-user",
            "3",
            "--date",
            "2026-11-20",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let date = "2026-11-20".parse().unwrap();

    // The unpartitioned report of the day, as the reference; then the day is emptied again.
    let mut conn = db.conn().await;
    batch_point::daily_report::DailyReport::new(db.db.clone(), date, chrono_tz::Asia::Seoul)
        .generate(chrono::Utc::now().naive_utc())
        .await
        .unwrap();
    let reference = report_values(&DailyPointReport::for_date(&mut conn, date).await.unwrap());
    assert!(reference.len() > 1000, "{}", reference.len());
    core_domain::dispatch!(&mut *conn, c => diesel_async::RunQueryDsl::execute(
        diesel::sql_query("DELETE FROM daily_point_report"), c).await)
    .unwrap();

    // Newer versions the online service cached after the run read the database: kept.
    let balances = {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |b: &PointBalance| b.id);
            let page = PointBalance::page_after(&mut conn, after, 5000)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page);
        }
        all
    };
    drop(conn);
    assert_eq!(balances.len(), users);
    let mut r = redis.conn().await;
    let newer: Vec<(i64, i64, i64)> = balances
        .iter()
        .step_by(500)
        .map(|b| (b.user_id, b.balance + 7, b.version + 1))
        .collect();
    for (user, balance, version) in &newer {
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}{user}"))
            .arg("balance")
            .arg(balance)
            .arg("version")
            .arg(version)
            .query_async(&mut r)
            .await
            .unwrap();
    }

    let repo = JobRepository::new(db.db.clone());
    let args = [
        "run",
        "pointBalanceSyncJob",
        "date=2026-11-20",
        "--partitions",
        "8",
        "--workers",
        "2",
        "--join",
    ];
    let (outputs, killed) = four_processes_one_killed(
        &repo,
        dir.path(),
        "pointBalanceSyncJob",
        "syncPointBalanceStep",
        &args,
        &env,
    )
    .await;
    for (i, o) in outputs.iter().enumerate() {
        let (out, err) = text(o);
        assert_eq!(o.status.code(), Some(0), "process {i}: {out}\n{err}");
        let status = if i == 0 { "COMPLETED" } else { "JOINED" };
        assert!(out.contains(status), "process {i}: {out}");
    }

    let (exec, steps) = latest(&repo, "pointBalanceSyncJob").await.unwrap();
    assert_eq!(
        repo.history(None, 10).await.unwrap().len(),
        1,
        "workers are not executions"
    );
    assert_eq!(
        repo.execution(exec).await.unwrap().unwrap().status,
        BatchStatus::Completed
    );
    assert_partitions_done(&steps, &killed, 8);
    let (sync, _) = &steps[0];
    assert_eq!(sync.counts.read_count, users as i64, "{sync:?}");
    let outcomes: i64 = ["created", "corrected", "unchanged", "skipped_newer"]
        .iter()
        .map(|c| sync.counts.counters.get(*c).copied().unwrap_or(0))
        .sum();
    assert_eq!(outcomes, users as i64, "{:?}", sync.counts.counters);

    // Redis equals the database for every user, except the newer versions, which were kept.
    for b in &balances {
        let key = format!("{prefix}{}", b.user_id);
        let (balance, version): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("balance")
            .arg("version")
            .query_async(&mut r)
            .await
            .unwrap();
        match newer.iter().find(|(u, _, _)| *u == b.user_id) {
            Some((_, nb, nv)) => assert_eq!((balance, version), (Some(*nb), Some(*nv)), "{key}"),
            None => assert_eq!(
                (balance, version),
                (Some(b.balance), Some(b.version)),
                "{key}"
            ),
        }
    }
    // The partitioned report's rows are the unpartitioned report's.
    let mut conn = db.conn().await;
    let rows = report_values(&DailyPointReport::for_date(&mut conn, date).await.unwrap());
    assert_eq!(rows, reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_job_in_four_processes_postgres() {
    point_job_in_four_processes(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_job_in_four_processes_mysql() {
    point_job_in_four_processes(Backend::Mysql).await;
}

async fn asset_job_in_four_processes(backend: Backend) {
    let db = TestDb::for_modules(backend, MODULES).await;
    let (addr, fake, _server) = fake_api(FakeApiConfig {
        latency: Duration::from_millis(20),
        ..FakeApiConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://{addr}");
    let url = db.url().expose_secret().to_owned();
    let env = fast_heartbeat(
        &url,
        &[
            ("BATCH__ASSET__API_BASE_URL", base.as_str()),
            ("BATCH__ASSET__CONCURRENCY", "8"),
        ],
    );
    let o = launcher(
        dir.path(),
        &[
            "seed-demo",
            "--users",
            "1200",
            "--transactions-per-user",
            "0",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let repo = JobRepository::new(db.db.clone());
    let args = [
        "run",
        "assetRefreshJob",
        "date=2026-11-21",
        "--partitions",
        "8",
        "--workers",
        "2",
        "--join",
    ];
    let (outputs, killed) = four_processes_one_killed(
        &repo,
        dir.path(),
        "assetRefreshJob",
        "refreshAssetStep",
        &args,
        &env,
    )
    .await;
    for (i, o) in outputs.iter().enumerate() {
        let (out, err) = text(o);
        assert_eq!(o.status.code(), Some(0), "process {i}: {out}\n{err}");
    }
    let (_, steps) = latest(&repo, "assetRefreshJob").await.unwrap();
    assert_partitions_done(&steps, &killed, 8);
    // One snapshot per active user (every tenth seeded user is inactive), each fetched at least
    // once; the killed process's in-flight users were fetched again, nobody else.
    let mut conn = db.conn().await;
    let day = "2026-11-21".parse().unwrap();
    let active = core_domain::models::User::count_active(&mut conn)
        .await
        .unwrap();
    assert_eq!(active, 1080);
    assert_eq!(
        AssetHistory::count_for_day(&mut conn, day).await.unwrap(),
        active
    );
    let (step, _) = &steps[0];
    assert_eq!(
        step.counts.counters.get("snapshots"),
        Some(&active),
        "{step:?}"
    );
    let calls = fake.calls();
    assert_eq!(calls.len() as i64, active);
    let repeated = calls.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 2 * 8 * 2,
        "at most the killed process's in-flight users again: {repeated}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_job_in_four_processes_postgres() {
    asset_job_in_four_processes(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_job_in_four_processes_mysql() {
    asset_job_in_four_processes(Backend::Mysql).await;
}

/// SQLite: the partitions run in the one process, with the same results; `--join` is exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runs_partitions_locally_and_refuses_join() {
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis.key("point:balance:");
    let url = db.url().expose_secret().to_owned();
    let env = [
        ("BATCH__DATABASE__URL", url.as_str()),
        ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str()),
    ];
    let o = launcher(
        dir.path(),
        &["seed-demo", "--users", "500", "--date", "2026-11-20"],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = launcher(
        dir.path(),
        &["run", "pointBalanceSyncJob", "date=2026-11-20", "--join"],
        &env,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("--join") && err.contains("PostgreSQL or MySQL"),
        "{err}"
    );
    let o = launcher(
        dir.path(),
        &[
            "run",
            "pointBalanceSyncJob",
            "date=2026-11-20",
            "--partitions",
            "4",
            "--workers",
            "4",
        ],
        &env,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("syncPointBalanceStep: COMPLETED read=500"),
        "{out}"
    );
    let repo = JobRepository::new(db.db.clone());
    let (_, steps) = latest(&repo, "pointBalanceSyncJob").await.unwrap();
    for (step, parts) in &steps {
        assert_eq!(parts.len(), 4, "{}", step.step_name);
    }
    assert_eq!(redis.keys().await.len(), 500);

    // What operators see: the partitions in `history` and in the API's execution view.
    let o = launcher(dir.path(), &["history", "pointBalanceSyncJob"], &env);
    let (out, _) = text(&o);
    assert!(
        out.contains("syncPointBalanceStep: 4 partitions: 4 COMPLETED; read 500"),
        "{out}"
    );
    let o = launcher(dir.path(), &["history", "--json"], &env);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sync = &json[0]["steps"][0];
    assert_eq!(sync["read"], 500, "{sync}");
    let partitions = sync["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    let read: i64 = partitions.iter().map(|p| p["read"].as_i64().unwrap()).sum();
    assert_eq!(read, 500);
    for p in partitions {
        assert_eq!(p["status"], "COMPLETED", "{p}");
        assert_eq!(p["claims"], 1, "{p}");
        assert!(p["owner"].as_str().unwrap().contains(':'), "{p}");
        assert!(
            p["range"]["from"].is_i64() && p["range"]["to"].is_i64(),
            "{p}"
        );
    }
}

/// `[batch.partitions]` names steps of registered jobs (any case, as environment variables
/// arrive lower-cased); another name or a count of 0 is exit 2 naming the key.
#[test]
fn partitions_per_step_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(
        dir.path(),
        &["config"],
        &[("BATCH__BATCH__PARTITIONS__SYNCPOINTBALANCESTEP", "8")],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("partitions = { syncpointbalancestep = 8 }"),
        "{out}"
    );
    let o = launcher(
        dir.path(),
        &["config"],
        &[("BATCH__BATCH__PARTITIONS__NOSUCHSTEP", "8")],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("batch.partitions.nosuchstep") && err.contains("syncPointBalanceStep"),
        "{err}"
    );
    let o = launcher(
        dir.path(),
        &["config"],
        &[("BATCH__BATCH__PARTITIONS__SYNCPOINTBALANCESTEP", "0")],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(err.contains("batch.partitions"), "{err}");
    let o = launcher(
        dir.path(),
        &["run", "pointBalanceSyncJob", "--partitions", "0"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}
