//! The operator verbs through the binary, against a run in another process, on SQLite,
//! PostgreSQL and MariaDB: `stop` (recorded in the database, read by the running process with
//! its next heartbeat: STOPPED after the current chunk), `restart` (resumes from the
//! checkpoints; refused while running or once completed), `abandon`/`recover` (refused while
//! the heartbeat is fresh), `failures` (paged), an unknown execution (exit 2 / 404); the same
//! verbs over the API of a `serve` process; and a partitioned run whose workers all stop.

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use batch_asset::fake_server::{FakeApiConfig, FakeState, spawn as fake_api};
use batch_common::repository::{BatchStatus, JobExecution, JobRepository};
use batch_launcher::modules::MODULES;
use batch_testkit::TestDb;
use core_domain::Backend;
use core_domain::models::{AssetHistory, User};
use serde_json::Value;

use crate::{launcher, start, text, wait_for};

const JOB: &str = "assetRefreshJob";
const TOKEN: &str = "operator-token-0123456789";

fn cli(dir: &std::path::Path, args: &[&str], env: &[(String, String)]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    launcher(dir, args, &env)
}

/// Waits for `child` to exit, at most `limit`; kills it and panics after that.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("{what} did not exit within {limit:?}: {:?}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The newest execution of the asset job.
async fn newest(repo: &JobRepository) -> Option<JobExecution> {
    repo.history(Some(JOB), 1).await.ok()?.pop().map(|(e, _)| e)
}

/// The newest execution once it is STARTED and its step (or the step's partitions) has read
/// at least `items`.
async fn running_with(repo: &JobRepository, items: i64) -> JobExecution {
    wait_for(Duration::from_secs(120), "a running execution", || async {
        let e = newest(repo).await?;
        if e.status != BatchStatus::Started {
            return None;
        }
        let mut read = 0;
        for step in repo.step_executions(e.id).await.ok()? {
            read += step.counts.read_count;
            for p in repo.partitions(step.id).await.ok()? {
                read += p.counts.read_count;
            }
        }
        (read >= items).then_some(e)
    })
    .await
}

struct Setup {
    db: TestDb,
    repo: JobRepository,
    fake: std::sync::Arc<FakeState>,
    _server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    active: i64,
}

/// A database with 600 demo users (540 active), a fake asset API answering in 20 ms, and the
/// settings of a slow enough run: 2 calls in flight, chunks of 10, a heartbeat every 200 ms.
async fn setup(backend: Backend) -> Setup {
    let db = TestDb::for_modules(backend, MODULES).await;
    let (addr, fake, server) = fake_api(FakeApiConfig {
        latency: Duration::from_millis(20),
        ..FakeApiConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = [
        ("BATCH__DATABASE__URL", db.url().expose_secret().to_owned()),
        ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms".into()),
        ("BATCH__BATCH__STALE_AFTER", "3s".into()),
        ("BATCH__BATCH__CHUNK_SIZE", "10".into()),
        ("BATCH__BATCH__STEP_RETRY_ATTEMPTS", "0".into()),
        ("BATCH__ASSET__API_BASE_URL", format!("http://{addr}")),
        ("BATCH__ASSET__CONCURRENCY", "2".into()),
        ("BATCH__ASSET__MAX_ATTEMPTS", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(
        MODULES
            .iter()
            .flat_map(|m| m.default_schedules())
            .map(|(job, _)| {
                (
                    format!("BATCH__SCHEDULE__{}", job.to_uppercase()),
                    "off".to_owned(),
                )
            }),
    );
    let o = cli(
        dir.path(),
        &[
            "seed-demo",
            "--users",
            "600",
            "--transactions-per-user",
            "0",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let mut conn = db.conn().await;
    let active = User::count_active(&mut conn).await.unwrap();
    assert_eq!(active, 540);
    drop(conn);
    let repo = JobRepository::new(db.db.clone());
    Setup {
        db,
        repo,
        fake,
        _server: server,
        dir,
        env,
        active,
    }
}

impl Setup {
    async fn snapshots(&self, day: &str) -> i64 {
        let mut conn = self.db.conn().await;
        AssetHistory::count_for_day(&mut conn, day.parse().unwrap())
            .await
            .unwrap()
    }

    async fn execution(&self, id: i64) -> JobExecution {
        self.repo.execution(id).await.unwrap().expect("execution")
    }
}

/// stop, restart, abandon/recover, failures and unknown executions, through the CLI, against
/// runs of other processes.
async fn verbs_through_the_cli(backend: Backend) {
    let s = setup(backend).await;
    let dir = s.dir.path();

    // stop: another process's run stops after its chunk, STOPPED, exit 1.
    let run = start(dir, &["run", JOB, "date=2026-11-20"], &s.env);
    let e = running_with(&s.repo, 20).await;
    let id = e.id.to_string();
    let asked = Instant::now();
    let o = cli(dir, &["stop", &id], &s.env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("stop requested"), "{out}");
    let o = finish_within(run, Duration::from_secs(20), "the stopped run");
    let stopped_after = asked.elapsed();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("an operator asked this execution to stop"),
        "{err}"
    );
    let e = s.execution(e.id).await;
    assert_eq!(e.status, BatchStatus::Stopped, "{e:?}");
    assert_eq!(e.exit_code, "STOPPED");
    assert!(e.live_instance_id.is_none());
    // Within a heartbeat (200 ms) plus the chunk in flight (10 users at 2 at a time, 20 ms each).
    assert!(stopped_after < Duration::from_secs(10), "{stopped_after:?}");
    let partial = s.snapshots("2026-11-20").await;
    assert!(partial > 0 && partial < s.active, "{partial}");

    let o = cli(dir, &["stop", &id], &s.env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("is not running (status STOPPED)"), "{err}");

    // restart: resumes from the checkpoint, in this process, to the end.
    let calls_before = s.fake.total_calls();
    let o = cli(dir, &["restart", &id], &s.env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("restarting execution"), "{out}");
    assert_eq!(s.snapshots("2026-11-20").await, s.active);
    let again = s.fake.total_calls() - calls_before;
    assert!(
        again as i64 <= s.active - partial + 10,
        "the restart fetched only what the stopped run had not committed: {again} calls, {partial} done before"
    );
    let restarted = newest(&s.repo).await.unwrap();
    assert_eq!(restarted.job_instance_id, e.job_instance_id);
    assert_eq!(restarted.status, BatchStatus::Completed);

    let o = cli(dir, &["restart", &id], &s.env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("completed") && err.contains("--rerun"),
        "{err}"
    );

    // An unknown execution: exit 2 naming it, for every verb.
    for verb in ["stop", "restart", "abandon", "recover", "failures"] {
        let o = cli(dir, &[verb, "987654"], &s.env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{verb}: {out}{err}");
        assert!(
            err.contains("execution 987654 does not exist"),
            "{verb}: {err}"
        );
    }

    // failures, paged.
    s.fake.set_config(FakeApiConfig {
        latency: Duration::from_millis(1),
        fail_users: [(3, 500), (13, 500), (23, 500)].into_iter().collect(),
        ..FakeApiConfig::default()
    });
    let o = cli(dir, &["run", JOB, "date=2026-11-21"], &s.env);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let failed = newest(&s.repo).await.unwrap().id.to_string();
    let page = |args: &[&str]| -> Value {
        let mut all = vec!["failures", failed.as_str(), "--json"];
        all.extend_from_slice(args);
        let o = cli(dir, &all, &s.env);
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = page(&["--limit", "2"]);
    assert_eq!(first["total"], 3, "{first}");
    let keys: Vec<&str> = first["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["item_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["3", "13"], "{first}");
    let next = first["next_after"]
        .as_i64()
        .expect("a next page")
        .to_string();
    let second = page(&["--limit", "2", "--after", &next]);
    assert_eq!(second["failures"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["failures"][0]["item_key"], "23");
    assert!(second["next_after"].is_null(), "{second}");
    let o = cli(dir, &["failures", &failed], &s.env);
    let (out, _) = text(&o);
    assert!(
        out.contains("refreshAssetStep") && out.contains("500"),
        "{out}"
    );

    // abandon: refused while the run's heartbeat is fresh (its process may be alive), done
    // with --force once the process is known to be gone; the instance then restarts.
    s.fake.set_config(FakeApiConfig {
        latency: Duration::from_millis(20),
        ..FakeApiConfig::default()
    });
    let mut run = start(dir, &["run", JOB, "date=2026-11-22"], &s.env);
    let e = running_with(&s.repo, 20).await;
    run.kill().expect("SIGKILL");
    let _ = run.wait();
    let id = e.id.to_string();
    let o = cli(dir, &["recover", &id], &s.env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("may still be running"), "{err}");
    let o = cli(dir, &["abandon", &id, "--force"], &s.env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("marked FAILED (abandoned)"), "{out}");
    assert_eq!(s.execution(e.id).await.status, BatchStatus::Failed);
    let o = cli(dir, &["abandon", &id], &s.env);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let o = cli(dir, &["restart", &id], &s.env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(s.snapshots("2026-11-22").await, s.active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_through_the_cli_sqlite() {
    verbs_through_the_cli(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_through_the_cli_postgres() {
    verbs_through_the_cli(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_through_the_cli_mysql() {
    verbs_through_the_cli(Backend::Mysql).await;
}

/// An HTTP client of a `serve` process.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        }
        .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, json)
    }
}

/// The verbs over the API of a `serve` process, against a run of another process.
async fn verbs_through_the_api(backend: Backend) {
    let mut s = setup(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.env.extend([
        ("BATCH__SERVER__TOKEN".to_owned(), TOKEN.to_owned()),
        (
            "BATCH__SERVER__BIND".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
    ]);
    let dir = s.dir.path();
    let mut serve = start(dir, &["serve"], &s.env);
    core_domain::tls::install_crypto_provider();
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    wait_for(Duration::from_secs(60), "serve to answer", || async {
        let r = api.http.get(format!("{}/health", api.base)).send().await;
        r.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;

    let run = start(dir, &["run", JOB, "date=2026-11-20"], &s.env);
    let e = running_with(&s.repo, 20).await;
    let (status, body) = api
        .call("POST", &format!("/executions/{}/stop", e.id), None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "STOPPING");
    let o = finish_within(run, Duration::from_secs(20), "the stopped run");
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let (status, body) = api
        .call("GET", &format!("/executions/{}", e.id), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "STOPPED", "{body}");
    let (status, body) = api
        .call("POST", &format!("/executions/{}/stop", e.id), Some("{}"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_running")),
        "{body}"
    );

    // Bodies must be JSON objects of the documented shape.
    for bad in ["[]", "\"x\"", "1", "null", "{\"unknown\": 1}", "{"] {
        let (status, body) = api
            .call("POST", &format!("/executions/{}/restart", e.id), Some(bad))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_body")),
            "{bad}: {body}"
        );
        let (status, body) = api
            .call("POST", &format!("/jobs/{JOB}/executions"), Some(bad))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_body")),
            "kick {bad}: {body}"
        );
    }
    assert_eq!(newest(&s.repo).await.unwrap().id, e.id, "nothing started");

    let (status, body) = api
        .call("POST", &format!("/executions/{}/restart", e.id), Some("{}"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["restarted_from"], e.id);
    let restarted = body["execution_id"].as_i64().unwrap();
    let (status, body) = api
        .call("POST", &format!("/executions/{}/restart", e.id), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_running")),
        "{body}"
    );
    let (status, body) = api
        .call("POST", &format!("/executions/{restarted}/abandon"), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("still_running")),
        "{body}"
    );
    wait_for(
        Duration::from_secs(120),
        "the restarted run to complete",
        || async {
            let e = s.repo.execution(restarted).await.ok()??;
            (e.status == BatchStatus::Completed).then_some(())
        },
    )
    .await;
    assert_eq!(s.snapshots("2026-11-20").await, s.active);
    let (status, body) = api
        .call("POST", &format!("/executions/{restarted}/restart"), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("completed")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("rerun"),
        "{body}"
    );
    let (status, body) = api
        .call(
            "POST",
            &format!("/executions/{restarted}/abandon"),
            Some("{\"force\": true}"),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_running")),
        "{body}"
    );

    // failures, paged; bad queries; unknown executions are 404 in the JSON error format.
    let (status, body) = api
        .call(
            "GET",
            &format!("/executions/{restarted}/failures?limit=5"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 0);
    for q in ["limit=0", "limit=1001", "after=-1", "limit=x", "page=2"] {
        let (status, body) = api
            .call(
                "GET",
                &format!("/executions/{restarted}/failures?{q}"),
                None,
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_query")),
            "{q}: {body}"
        );
    }
    for (method, path) in [
        ("POST", "/executions/987654/stop"),
        ("POST", "/executions/987654/restart"),
        ("POST", "/executions/987654/abandon"),
        ("GET", "/executions/987654/failures"),
        ("GET", "/executions/987654"),
    ] {
        let (status, body) = api.call(method, path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"], "unknown_execution");
        assert!(
            body["message"].as_str().unwrap().contains("987654"),
            "{body}"
        );
    }
    // Each action counted by outcome, under its job's name.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "batch_operator_actions_total{job=\"assetRefreshJob\",action=\"stop\",outcome=\"accepted\"} 1",
        "batch_operator_actions_total{job=\"assetRefreshJob\",action=\"stop\",outcome=\"refused\"} 1",
        "batch_operator_actions_total{job=\"assetRefreshJob\",action=\"restart\",outcome=\"accepted\"} 1",
        "batch_operator_actions_total{job=\"assetRefreshJob\",action=\"restart\",outcome=\"refused\"} 2",
        "batch_operator_actions_total{job=\"assetRefreshJob\",action=\"abandon\",outcome=\"refused\"} 2",
        "batch_operator_actions_total{job=\"unknown\",action=\"stop\",outcome=\"not_found\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    serve.kill().unwrap();
    let _ = serve.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_through_the_api_sqlite() {
    verbs_through_the_api(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_through_the_api_postgres() {
    verbs_through_the_api(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_through_the_api_mysql() {
    verbs_through_the_api(Backend::Mysql).await;
}

/// `stop` of a partitioned run stops every worker process; `restart` finishes it.
async fn stop_stops_every_worker(backend: Backend) {
    let s = setup(backend).await;
    // Slow enough that the run is far from its end when it is stopped.
    s.fake.set_config(FakeApiConfig {
        latency: Duration::from_millis(60),
        ..FakeApiConfig::default()
    });
    let dir = s.dir.path();
    let args = [
        "run",
        JOB,
        "date=2026-11-20",
        "--partitions",
        "4",
        "--workers",
        "1",
        "--join",
    ];
    let manager = start(dir, &args, &s.env);
    let e = running_with(&s.repo, 10).await;
    let worker = start(dir, &args, &s.env);
    let pid = worker.id().to_string();
    wait_for(
        Duration::from_secs(60),
        "the joined worker's partition",
        || async {
            for step in s.repo.step_executions(e.id).await.ok()? {
                let parts = s.repo.partitions(step.id).await.ok()?;
                if parts.iter().any(|p| {
                    p.status == BatchStatus::Started
                        && p.owner
                            .as_deref()
                            .is_some_and(|o| o.split(':').nth(1) == Some(pid.as_str()))
                }) {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    let o = cli(dir, &["stop", &e.id.to_string()], &s.env);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let m = finish_within(manager, Duration::from_secs(30), "the manager");
    let w = finish_within(worker, Duration::from_secs(30), "the worker");
    assert_eq!(m.status.code(), Some(1), "{:?}", text(&m));
    let (out, err) = text(&w);
    assert!(
        matches!(w.status.code(), Some(0 | 1)),
        "the worker exits: {out}\n{err}"
    );
    eprintln!("worker exit {:?}: {out}", w.status.code());
    let stopped = s.execution(e.id).await;
    assert_eq!(stopped.status, BatchStatus::Stopped, "{stopped:?}");
    for step in s.repo.step_executions(e.id).await.unwrap() {
        for p in s.repo.partitions(step.id).await.unwrap() {
            assert_ne!(
                p.status,
                BatchStatus::Started,
                "no partition left running: {p:?}"
            );
        }
    }
    let partial = s.snapshots("2026-11-20").await;
    assert!(partial < s.active, "{partial}");
    let o = cli(
        dir,
        &["restart", &e.id.to_string(), "--workers", "4"],
        &s.env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(s.snapshots("2026-11-20").await, s.active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_stops_every_worker_postgres() {
    stop_stops_every_worker(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_stops_every_worker_mysql() {
    stop_stops_every_worker(Backend::Mysql).await;
}
