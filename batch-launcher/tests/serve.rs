//! `serve`: the HTTP API (auth, kick, 409, status, history, metrics), the scheduler (a due tick
//! fires once, missed ticks), graceful shutdown, and the binary end to end.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use batch_common::ManualClock;
use batch_common::config::BatchProperties;
use batch_common::job::JobEnv;
use batch_common::job::{BuildFuture, Job, JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use batch_common::module::JobModule as _;
use batch_common::module::JobRegistration as Registration;
use batch_common::{Clock, SystemClock};
use batch_launcher::modules::MODULES;
use batch_launcher::serve::{Server, Service};
use batch_testkit::jobs::{COUNTING, CountingJob, FailPlan};
use batch_testkit::{TestDb, TestRedis, db_test};
use core_domain::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789";

fn build_counting(_env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async {
        Ok(Arc::new(CountingJob {
            plan: Arc::default(),
        }) as Arc<dyn Job>)
    })
}

fn counting() -> Registration {
    Registration {
        descriptor: &COUNTING,
        build: build_counting,
    }
}

/// `BATCH__SCHEDULE__<JOB>=off` for the default schedule of every job of every registered
/// module: a test server runs only what the test starts.
fn schedules_off() -> Vec<(String, String)> {
    MODULES
        .iter()
        .flat_map(|m| m.default_schedules())
        .map(|(job, _)| {
            (
                format!("BATCH__SCHEDULE__{}", job.to_uppercase()),
                "off".to_owned(),
            )
        })
        .collect()
}

/// Settings for an in-process server on a free port with countingJob only; `extra` overrides.
fn props(db: &TestDb, extra: &[(&str, &str)]) -> BatchProperties {
    let mut env: Vec<(String, String)> = [
        ("BATCH__DATABASE__URL", db.url().expose_secret()),
        ("BATCH__SERVER__TOKEN", TOKEN),
        ("BATCH__SERVER__BIND", "127.0.0.1:0"),
        ("BATCH__BATCH__CHUNK_SIZE", "10"),
        ("BATCH__BATCH__STEP_RETRY_ATTEMPTS", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend(schedules_off());
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    BatchProperties::load_from(None, env, MODULES).expect("test settings")
}

async fn start(db: &TestDb, extra: &[(&str, &str)]) -> Server {
    start_on(db, extra, Arc::new(SystemClock), vec![counting()]).await
}

/// [`start`] on the given clock with the given jobs (the scheduler tests drive time by hand).
async fn start_on(
    db: &TestDb,
    extra: &[(&str, &str)],
    clock: Arc<dyn Clock>,
    jobs: Vec<Registration>,
) -> Server {
    let props = props(db, extra);
    // The point module's health check (Redis), as `serve` registers it.
    let checks = batch_point::MODULE.health_checks(&props);
    let service = Service::new(Arc::new(props), db.db.clone(), clock, jobs, checks);
    Server::start(service).await.expect("serve starts")
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: std::net::SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: {
                core_domain::tls::install_crypto_provider();
                reqwest::Client::new()
            },
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("GET");
        (resp.status(), resp.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.get(path, Some(TOKEN)).await;
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, json)
    }

    async fn kick(
        &self,
        job: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/jobs/{job}/executions", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("POST");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("kick: {e}: {text}"));
        (status, json)
    }

    /// Polls the execution until it leaves STARTING/STARTED.
    async fn wait_for_end(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, json) = self.get_json(&format!("/executions/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{json}");
            let s = json["status"].as_str().unwrap_or_default().to_owned();
            if s != "STARTING" && s != "STARTED" {
                return json;
            }
            assert!(Instant::now() < deadline, "execution {id} still {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, text) = self.get("/metrics", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the metrics parse as Prometheus text");
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: unexpected {other:?}"),
            })
    }
}

db_test!(modules = MODULES; async fn kick_status_conflict_auth_and_metrics(db) {
    let server = start(db, &[]).await;
    let api = Api::new(server.addr);

    // Health needs no token; everything else does.
    let (status, body) = api.get("/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"database\":\"ok\""), "{body}");
    let params = json!({ "parameters": { "run": "r1", "items": 60, "delay_ms": "120" } });
    let (status, body) = api.kick("countingJob", Some(params.clone()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = api.kick("countingJob", Some(params.clone()), Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for path in ["/metrics", "/executions/1", "/jobs/countingJob/executions"] {
        assert_eq!(api.get(path, None).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }

    let runs = [("job", "countingJob"), ("status", "COMPLETED")];
    assert_eq!(api.metric("batch_job_runs_total", &runs).await, None);
    assert_eq!(api.metric("batch_job_running", &[("job", "countingJob")]).await, Some(0.0));

    // A kick starts a run and answers at once.
    let (status, started) = api.kick("countingJob", Some(params.clone()), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["status"], "STARTED");
    let id = started["execution_id"].as_i64().expect("an execution id");

    // The same instance again while it runs: 409, naming the live execution.
    let (status, conflict) = api.kick("countingJob", Some(params.clone()), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error"], "already_running");
    assert_eq!(conflict["execution_id"], id);

    // Bad requests name the problem.
    let (status, bad) = api.kick("countingJob", Some(json!({ "parameters": { "nope": "1" } })), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("nope"), "{bad}");
    let (status, bad) = api.kick("countingJob", Some(json!({ "parameters": { "items": "many" } })), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("items"), "{bad}");
    let (status, bad) = api.kick("countingJob", Some(json!({ "parameters": 5 })), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("parameters"), "{bad}");
    let (status, bad) = api.kick("countingJob", Some(json!({ "params": {} })), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("params"), "{bad}");
    let (status, bad) = api.kick("noSuchJob", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("noSuchJob"), "{bad}");
    let (status, bad) = api.get_json("/executions/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let (status, _) = api.get_json("/executions/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, bad) = api.get_json("/jobs/countingJob/executions?limit=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("abc"), "{bad}");

    // Its status can be read back until it ends.
    let done = api.wait_for_end(id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["job_name"], "countingJob");
    assert_eq!(done["steps"][0]["read"], 60, "{done}");
    let (status, list) = api.get_json("/jobs/countingJob/executions?limit=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["executions"][0]["execution_id"], id, "{list}");

    // Metrics changed after the run.
    assert_eq!(api.metric("batch_job_runs_total", &runs).await, Some(1.0));
    assert_eq!(api.metric("batch_job_running", &[("job", "countingJob")]).await, Some(0.0));
    assert_eq!(
        api.metric("batch_step_items_total", &[("job", "countingJob"), ("step", "countStep"), ("kind", "written")]).await,
        Some(60.0)
    );
    assert!(api.metric("batch_job_last_success_timestamp_seconds", &[("job", "countingJob")]).await.unwrap() > 1.7e9);

    // A completed instance: 200, nothing to do; with rerun: a new execution.
    let (status, noop) = api.kick("countingJob", Some(params), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{noop}");
    assert_eq!(noop["status"], "NOOP");
    let (status, again) = api.kick("countingJob", Some(json!({ "parameters": { "run": "r1" }, "rerun": true })), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    let second = again["execution_id"].as_i64().unwrap();
    assert_ne!(second, id);
    assert_eq!(api.wait_for_end(second).await["status"], "COMPLETED");
    server.shutdown().await?;
    Ok(())
});

/// Sends a raw kick (`content_type` None: no header) and returns the status and the JSON answer,
/// checking that the answer is `application/json`.
async fn raw_kick(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> (StatusCode, Value) {
    let mut req = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(TOKEN)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let answer_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let text = resp.text().await.unwrap();
    assert_eq!(
        answer_type.as_deref(),
        Some("application/json"),
        "{status}: {text}"
    );
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {e}: {text}"));
    if !status.is_success() {
        assert!(
            json["error"].is_string() && json["message"].is_string(),
            "not the error format: {json}"
        );
    }
    (status, json)
}

db_test!(modules = MODULES; async fn kicks_need_json_and_every_error_answer_is_json(db) {
    let server = start(db, &[]).await;
    let api = Api::new(server.addr);
    let kick_path = "/jobs/countingJob/executions";
    let body = r#"{"parameters": {"run": "media", "items": 3}}"#;

    // Another declared type, or a body without one: 415 and nothing runs.
    for (content_type, body) in [
        (Some("text/plain"), body),
        (Some("text/plain;charset=UTF-8"), body),
        (Some("application/x-www-form-urlencoded"), body),
        (Some("multipart/form-data; boundary=x"), body),
        (Some("application/jsonp"), body),
        (None, body),
        (Some("text/plain"), ""),
    ] {
        let (status, answer) = raw_kick(&api, reqwest::Method::POST, kick_path, content_type, body.to_owned()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}: {answer}");
        assert_eq!(answer["error"], "unsupported_media_type");
        assert!(answer["message"].as_str().unwrap().contains("application/json"), "{answer}");
    }
    let (status, list) = api.get_json(kick_path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["executions"], json!([]), "a refused kick started a run: {list}");

    // A body larger than the limit: 413 in the same format.
    let big = format!(r#"{{"parameters": {{"run": "{}"}}}}"#, "x".repeat(100_000));
    let (status, answer) = raw_kick(&api, reqwest::Method::POST, kick_path, Some("application/json"), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"], "body_too_large");
    assert!(answer["message"].as_str().unwrap().contains("65536"), "{answer}");

    // Invalid JSON: the line and column, no field path.
    let broken = "{\n  \"parameters\": {\"run\": \"a\",}\n}".to_owned();
    let (status, answer) = raw_kick(&api, reqwest::Method::POST, kick_path, Some("application/json"), broken).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("line 2 column"), "{message}");
    assert!(!message.contains('?'), "{message}");
    // A wrong type still names the field.
    let (status, answer) = raw_kick(&api, reqwest::Method::POST, kick_path, Some("application/json"), r#"{"rerun": "yes"}"#.to_owned()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("`rerun`"), "{answer}");

    // A method a route does not have: 405, JSON.
    for (method, path) in [(reqwest::Method::PUT, kick_path), (reqwest::Method::DELETE, "/executions/1"), (reqwest::Method::POST, "/health")] {
        let (status, answer) = raw_kick(&api, method.clone(), path, Some("application/json"), "{}".to_owned()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "method_not_allowed");
    }
    let (status, answer) = raw_kick(&api, reqwest::Method::GET, "/nowhere", None, String::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // JSON with a charset parameter, and a kick without a body, are accepted.
    let (status, started) = raw_kick(&api, reqwest::Method::POST, kick_path, Some("application/json; charset=utf-8"), body.to_owned()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["execution_id"].as_i64().unwrap();
    assert_eq!(api.wait_for_end(id).await["status"], "COMPLETED");
    let (status, noop) = raw_kick(&api, reqwest::Method::POST, "/jobs/countingJob/executions", None, String::new()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{noop}");
    api.wait_for_end(noop["execution_id"].as_i64().unwrap()).await;
    server.shutdown().await?;
    Ok(())
});

/// The messages of the log events of the current thread. The scheduler tests run on a
/// current-thread runtime, so the server's tasks log on the test's thread: a test can wait for
/// something the server only logs (a tick skipped) instead of sleeping.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push(message.0);
    }
}

impl Logged {
    /// Starts recording this thread's events (until the guard is dropped).
    fn record(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// How many events had exactly this message.
    fn count(&self, message: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == message)
            .count()
    }

    /// Waits (up to a minute) for an event whose message starts with `prefix`.
    async fn until(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.0.lock().unwrap().iter().any(|m| m.starts_with(prefix)) {
            assert!(
                Instant::now() < deadline,
                "nothing logged `{prefix}…`: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `n` sleeps wait on the manual clock (the scheduler's, a retry's): everything due
/// at the clock's time has been handled.
async fn until_sleeping(clock: &ManualClock, n: usize) {
    tokio::time::timeout(Duration::from_secs(60), clock.until_sleeping(n))
        .await
        .unwrap_or_else(|_| panic!("{n} sleeps never waited on {clock:?}"));
}

fn utc(h: u32, m: u32, s: u32) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone as _;
    chrono::Utc.with_ymd_and_hms(2026, 11, 21, h, m, s).unwrap()
}

/// Polls until countingJob has an execution; returns the newest.
async fn first_run(repo: &batch_common::repository::JobRepository) -> (i64, chrono::NaiveDateTime) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = repo.history(Some("countingJob"), 10).await.unwrap();
        if let Some((e, _)) = runs.first() {
            assert_eq!(runs.len(), 1);
            return (e.id, e.created_at);
        }
        assert!(Instant::now() < deadline, "countingJob did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The settings of a server on a manual clock whose only schedule is countingJob at 01:00 UTC.
const DAILY_AT_ONE: [(&str, &str); 3] = [
    ("BATCH__BATCH__TIMEZONE", "UTC"),
    ("BATCH__SCHEDULE__COUNTINGJOB", "0 0 1 * * *"),
    // Yesterday's tick has no run either: not these tests' business.
    ("BATCH__SERVER__MISSED_TICKS", "skip"),
];

/// A daily schedule fires exactly once when the (injected) clock reaches its time.
#[tokio::test]
async fn a_due_schedule_fires_once() {
    let logged = Logged::default();
    let _recording = logged.record();
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let clock = Arc::new(ManualClock::new(utc(0, 59, 58)));
    let server = start_on(&db, &DAILY_AT_ONE, clock.clone(), vec![counting()]).await;
    let repo = server.service.repository().clone();
    // The scheduler waits on the clock until the tick; nothing runs before it.
    until_sleeping(&clock, 1).await;
    assert_eq!(clock.sleeping_until(), vec![utc(1, 0, 0)]);
    assert!(
        repo.history(Some("countingJob"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    clock.advance(chrono::Duration::seconds(2));
    let (id, created_at) = first_run(&repo).await;
    assert_eq!(created_at, utc(1, 0, 0).naive_utc(), "created at the tick");
    let api = Api::new(server.addr);
    assert_eq!(api.wait_for_end(id).await["status"], "COMPLETED");

    // An hour past the tick (the scheduler has looked at the clock again): still exactly one
    // tick handed over and one run.
    clock.advance(chrono::Duration::hours(1));
    until_sleeping(&clock, 1).await;
    server.shutdown().await.unwrap();
    assert_eq!(logged.count("scheduled run"), 1);
    assert_eq!(
        repo.history(Some("countingJob"), 10).await.unwrap().len(),
        1
    );
}

/// A tick that fell while serve was down runs once at start-up, or is skipped, per
/// `server.missed_ticks`.
#[tokio::test]
async fn missed_ticks_run_once_or_are_skipped() {
    let logged = Logged::default();
    let _recording = logged.record();
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    // Ten hours after the midnight tick, on a clock that stands still: the scheduler never fires.
    let clock = Arc::new(ManualClock::new(utc(10, 0, 0)));
    let midnight = [
        ("BATCH__BATCH__TIMEZONE", "UTC"),
        ("BATCH__SCHEDULE__COUNTINGJOB", "0 0 0 * * *"),
    ];
    let with = |policy| {
        [
            midnight[0],
            midnight[1],
            ("BATCH__SERVER__MISSED_TICKS", policy),
        ]
    };

    // Skip: nothing is started (`shutdown` waits for everything the server started).
    let skip = start_on(&db, &with("skip"), clock.clone(), vec![counting()]).await;
    let repo = skip.service.repository().clone();
    skip.shutdown().await.unwrap();
    assert_eq!(logged.count("scheduled run"), 0);
    assert!(
        repo.history(Some("countingJob"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Run once: the missed tick runs at start-up.
    let once = start_on(&db, &with("run_once"), clock.clone(), vec![counting()]).await;
    let (id, created_at) = first_run(&repo).await;
    assert_eq!(created_at, utc(10, 0, 0).naive_utc());
    assert_eq!(
        Api::new(once.addr).wait_for_end(id).await["status"],
        "COMPLETED"
    );
    once.shutdown().await.unwrap();
    assert_eq!(logged.count("scheduled run"), 1);

    // Started again after that run: the last tick is covered, nothing runs.
    let again = start_on(&db, &with("run_once"), clock.clone(), vec![counting()]).await;
    again.shutdown().await.unwrap();
    assert_eq!(logged.count("scheduled run"), 1);
    assert_eq!(
        repo.history(Some("countingJob"), 10).await.unwrap().len(),
        1
    );
}

/// Shutdown lets the running chunk commit and leaves the execution STOPPED; the next launch
/// resumes it and every item is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_executions_cleanly() {
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let server = start(&db, &[]).await;
    let api = Api::new(server.addr);
    let params = json!({ "parameters": { "run": "stop-me", "items": 100, "delay_ms": 100 } });
    let (status, started) = api
        .kick("countingJob", Some(params.clone()), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["execution_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, e) = api.get_json(&format!("/executions/{id}")).await;
        if e["steps"][0]["commits"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no chunk committed: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
    let repo = batch_common::repository::JobRepository::new(db.db.clone());
    let e = repo.execution(id).await.unwrap().unwrap();
    assert_eq!(e.status, "STOPPED");

    let server = start(&db, &[]).await;
    let api = Api::new(server.addr);
    let (status, resumed) = api.kick("countingJob", Some(params), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resumed}");
    let done = api
        .wait_for_end(resumed["execution_id"].as_i64().unwrap())
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    server.shutdown().await.unwrap();
    assert_eq!(
        batch_testkit::jobs::written_items(&db).await,
        (1..=100).collect::<Vec<_>>(),
        "every item exactly once"
    );
}

#[test]
fn serve_refuses_to_start_without_a_token_or_with_an_unknown_scheduled_job() {
    let dir = tempfile::tempdir().unwrap();
    let o = crate::launcher(
        dir.path(),
        &["serve"],
        &[("BATCH__SERVER__BIND", "127.0.0.1:0")],
    );
    let (out, err) = crate::text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("server.token") && err.contains("BATCH__SERVER__TOKEN"),
        "{err}"
    );

    let o = crate::launcher(
        dir.path(),
        &["serve"],
        &[
            ("BATCH__SERVER__BIND", "127.0.0.1:0"),
            ("BATCH__SERVER__TOKEN", TOKEN),
            ("BATCH__SCHEDULE__NOSUCHJOB", "0 0 1 * * *"),
        ],
    );
    let (out, err) = crate::text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(err.contains("schedule.nosuchjob: unknown job"), "{err}");
}

/// The kick API resolves parameters exactly as `run` does, for every registered job: a value
/// `run` refuses (a malformed date or month, an out-of-range integer, an unknown choice) is a 400
/// naming the parameter and the value, and nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_refuse_what_the_run_refuses_for_every_registered_job() {
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let jobs = batch_launcher::modules::Registry::default().jobs();
    let server = start_on(&db, &[], Arc::new(SystemClock), jobs.clone()).await;
    let api = Api::new(server.addr);
    let mut checked = 0;
    for job in &jobs {
        for p in job.descriptor.parameters {
            let Some(bad) = crate::refused_value(p.kind) else {
                continue;
            };
            let body = json!({ "parameters": { p.name: bad } });
            let (status, answer) = api.kick(job.descriptor.name, Some(body), Some(TOKEN)).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{} {}={bad}: {answer}",
                job.descriptor.name,
                p.name
            );
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(p.name) && message.contains(&bad),
                "{answer}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no registered job has a parameter that can be malformed"
    );
    let repo = batch_common::repository::JobRepository::new(db.db.clone());
    assert!(
        repo.history(None, 1).await.unwrap().is_empty(),
        "a refused kick started a run"
    );
    server.shutdown().await.unwrap();
}

/// A job that requires a parameter cannot be scheduled (a tick gives none): serve says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_with_a_required_parameter_is_refused() {
    const NEEDS_REGION: JobDescriptor = JobDescriptor {
        name: "regionJob",
        description: "",
        steps: &["countStep"],
        parameters: &[ParameterSpec::new("region", ParamKind::Text).default(ParamDefault::Required)],
    };
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let jobs = vec![Registration {
        descriptor: &NEEDS_REGION,
        build: build_counting,
    }];
    let props = props(&db, &[("BATCH__SCHEDULE__REGIONJOB", "0 0 1 * * *")]);
    let service = Service::new(
        Arc::new(props),
        db.db.clone(),
        Arc::new(SystemClock),
        jobs,
        Vec::new(),
    );
    let err = match Server::start(service).await {
        Ok(_) => panic!("serve started with an unschedulable job"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("schedule.regionjob") && err.contains("`region`"),
        "{err}"
    );
}

/// The binary: serve, kick pointBalanceSyncJob over HTTP, read its status and the metrics, then
/// SIGTERM → exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_kicks_and_stops_on_sigterm() {
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis.key("point:balance:");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    cmd.current_dir(dir.path()).arg("serve");
    for (k, _) in std::env::vars() {
        if k.starts_with("BATCH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs([
            ("BATCH__DATABASE__URL", db.url().expose_secret()),
            ("BATCH__SERVER__TOKEN", TOKEN),
            ("BATCH__SERVER__BIND", "127.0.0.1:0"),
            ("BATCH__POINT__CACHE_KEY_PREFIX", prefix.as_str()),
        ])
        .envs(schedules_off())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("serving on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    let api = Api::new(addr);
    let (status, body) = api.get("/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, started) = api
        .kick(
            "pointBalanceSyncJob",
            Some(json!({ "parameters": { "date": "2026-11-20" } })),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["execution_id"].as_i64().unwrap();
    let done = api.wait_for_end(id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["parameters"]["date"], "2026-11-20");
    assert_eq!(
        api.metric(
            "batch_job_runs_total",
            &[("job", "pointBalanceSyncJob"), ("status", "COMPLETED")]
        )
        .await,
        Some(1.0)
    );

    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("shutting down"), "{err}");
    assert!(!err.contains(TOKEN), "the token leaked into the log: {err}");
}

/// Health: 503 when Redis is down; the reason only for a caller with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_an_unreachable_redis() {
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let server = start(
        &db,
        &[
            ("BATCH__REDIS__URL", "redis://127.0.0.1:1"),
            ("BATCH__REDIS__CONNECT_TIMEOUT", "300ms"),
        ],
    )
    .await;
    let api = Api::new(server.addr);
    let (status, body) = api.get("/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["database"], "ok");
    assert_eq!(json["redis"], "unavailable", "no details without the token");
    let (status, json) = api.get_json("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json["redis"].as_str().unwrap().contains("127.0.0.1:1"),
        "{json}"
    );
    server.shutdown().await.unwrap();
}

/// countingJob whose first chunk write fails once (transient), so the run waits in its retry
/// backoff, on the injected clock, until the test moves the clock.
fn build_counting_held(_env: &JobEnv) -> BuildFuture<'_> {
    static PLAN: std::sync::LazyLock<Arc<FailPlan>> = std::sync::LazyLock::new(|| {
        let plan = FailPlan::default();
        plan.fail_write_at_item.store(1, Ordering::SeqCst);
        plan.write_failures_left.store(1, Ordering::SeqCst);
        plan.transient.store(true, Ordering::SeqCst);
        Arc::new(plan)
    });
    Box::pin(async { Ok(Arc::new(CountingJob { plan: PLAN.clone() }) as Arc<dyn Job>) })
}

/// A tick that falls while its instance is running (here: kicked over HTTP) is skipped: no second
/// execution, and the running one completes.
#[tokio::test]
async fn a_tick_during_a_running_instance_is_skipped() {
    let logged = Logged::default();
    let _recording = logged.record();
    let db = TestDb::for_modules(Backend::Sqlite, MODULES).await;
    let clock = Arc::new(ManualClock::new(utc(0, 59, 58)));
    let mut settings = DAILY_AT_ONE.to_vec();
    // The kicked run's chunk retry waits a minute of the clock (the longest first backoff the
    // settings allow): it runs until the test moves the clock past it.
    settings.extend([
        ("BATCH__BATCH__CHUNK_RETRY_BACKOFF", "1m"),
        ("BATCH__BATCH__CHUNK_RETRY_MAX_BACKOFF", "1m"),
        ("BATCH__BATCH__CHUNK_RETRY_MAX_ELAPSED", "2h"),
    ]);
    let held = Registration {
        descriptor: &COUNTING,
        build: build_counting_held,
    };
    let server = start_on(&db, &settings, clock.clone(), vec![held]).await;
    let api = Api::new(server.addr);
    until_sleeping(&clock, 1).await;
    // The scheduled run uses the default parameters (run=default): the same instance.
    let (status, started) = api
        .kick(
            "countingJob",
            Some(json!({ "parameters": { "items": 20 } })),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["execution_id"].as_i64().unwrap();
    // The scheduler and the run's retry wait on the clock.
    until_sleeping(&clock, 2).await;

    clock.advance(chrono::Duration::seconds(2));
    logged.until("tick skipped").await;
    let (_, running) = api.get_json(&format!("/executions/{id}")).await;
    assert_eq!(
        running["status"], "STARTED",
        "the kicked run must still be running at the tick: {running}"
    );
    let repo = server.service.repository().clone();
    assert_eq!(
        repo.history(Some("countingJob"), 10).await.unwrap().len(),
        1,
        "the tick was skipped"
    );

    clock.advance(chrono::Duration::hours(1));
    assert_eq!(api.wait_for_end(id).await["status"], "COMPLETED");
    server.shutdown().await.unwrap();
    assert_eq!(logged.count("scheduled run"), 1);
    assert_eq!(
        repo.history(Some("countingJob"), 10).await.unwrap().len(),
        1
    );
}
