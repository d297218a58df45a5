//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/services.sh`) driven through chromedriver with
//! fantoccini, against the `batch-launcher serve` binary on PostgreSQL with 600 demo users and
//! the fake asset API. Refused without a session; signs in; runs assetRefreshJob from the form
//! with `date=2026-11-20`; sees it running on its page; stops it (STOPPED); restarts it (it
//! completes); opens the failures of a run with failing users; signs out. Screenshots, desktop
//! and a 390×844 phone viewport, go to `target/dashboard-screenshots/` (with
//! `BATCH_DOCS_SCREENSHOTS=1`, the README's are copied into `docs/`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batch_asset::fake_server::{FakeApiConfig, spawn as fake_api};
use batch_launcher::modules::MODULES;
use batch_testkit::{TestBackend, TestDb};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{launcher, text};

const TOKEN: &str = "browser-token-0123456789";
const JOB: &str = "assetRefreshJob";

/// Kills the processes this test started when it ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `name` on the PATH, or a failure that says how to install it.
fn required(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: the dashboard's browser test needs Debian's chromium and chromium-driver; run scripts/services.sh (it installs them)"
            )
        })
}

async fn wait_until<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Browser {
    c: Client,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn go(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    async fn path(&self) -> String {
        let url = self.c.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until an action's form led to its execution's page (`?done=<action>`); fails
    /// with what the page says otherwise.
    async fn wait_done(&self, action: &str) {
        let end = format!("?done={action}");
        let start = Instant::now();
        while !self.path().await.ends_with(&end) {
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "{action}: on {} instead: {}",
                    self.path().await,
                    self.text("main").await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the browser is on `path` (a click's navigation may still be under way).
    async fn wait_path(&self, path: &str) {
        wait_until(
            Duration::from_secs(20),
            &format!("the page {path}"),
            || async { (self.path().await == path).then_some(()) },
        )
        .await;
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Opens execution `id`'s page until its status is one of `want`; returns it.
    async fn wait_status(&self, id: i64, want: &[&str]) -> String {
        wait_until(
            Duration::from_secs(60),
            &format!("execution {id} {want:?}"),
            || async {
                self.go(&format!("/ui/executions/{id}")).await;
                let s = self.text(".status .badge").await;
                want.contains(&s.as_str()).then_some(s)
            },
        )
        .await
    }

    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(name), png).expect("write the screenshot");
    }

    /// The execution id of the page the browser is on.
    async fn execution_id(&self) -> i64 {
        let path = self.path().await;
        let rest = path
            .strip_prefix("/ui/executions/")
            .unwrap_or_else(|| panic!("{path}"));
        rest.split(['?', '/']).next().unwrap().parse().unwrap()
    }

    /// Runs the job from the jobs page's form with `date`; returns the new execution.
    async fn run_job(&self, date: &str) -> i64 {
        self.submit_run(date).await;
        self.wait_done("run").await;
        self.execution_id().await
    }

    /// Fills the jobs page's run form with `date` and submits it.
    async fn submit_run(&self, date: &str) {
        self.go("/ui").await;
        self.click(&format!("#job-{JOB} details.run summary")).await;
        let field = self
            .c
            .find(Locator::Css(&format!("#run-{JOB}-date")))
            .await
            .expect("the date field");
        field.send_keys(date).await.unwrap();
        self.click(&format!("#job-{JOB} form.run-form button[type=submit]"))
            .await;
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let started = Instant::now();
    let chromium = required("chromium");
    let chromedriver = required("chromedriver");
    let db = TestDb::for_modules(TestBackend::Postgres, MODULES).await;
    let (api_addr, fake, _api) = fake_api(FakeApiConfig {
        latency: Duration::from_millis(30),
        ..FakeApiConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env: Vec<(String, String)> = [
        ("BATCH__DATABASE__URL", db.url().expose_secret().to_owned()),
        ("BATCH__SERVER__TOKEN", TOKEN.to_owned()),
        ("BATCH__SERVER__BIND", format!("127.0.0.1:{port}")),
        ("BATCH__BATCH__HEARTBEAT_INTERVAL", "200ms".into()),
        ("BATCH__BATCH__CHUNK_SIZE", "10".into()),
        ("BATCH__BATCH__STEP_RETRY_ATTEMPTS", "0".into()),
        ("BATCH__ASSET__API_BASE_URL", format!("http://{api_addr}")),
        ("BATCH__ASSET__CONCURRENCY", "2".into()),
        ("BATCH__ASSET__MAX_ATTEMPTS", "1".into()),
        // The jobs page shows a schedule; a tick missed before the start is not run.
        ("BATCH__SERVER__MISSED_TICKS", "skip".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(
        MODULES
            .iter()
            .flat_map(|m| m.default_schedules())
            .map(|(job, _)| {
                let cron = if *job == JOB { "0 0 4 * * *" } else { "off" };
                (
                    format!("BATCH__SCHEDULE__{}", job.to_uppercase()),
                    cron.to_owned(),
                )
            }),
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = launcher(
        dir.path(),
        &[
            "seed-demo",
            "--users",
            "600",
            "--transactions-per-user",
            "0",
        ],
        &pairs,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let mut serve = Command::new(env!("CARGO_BIN_EXE_batch-launcher"));
    serve.current_dir(dir.path()).arg("serve");
    for (k, _) in std::env::vars() {
        if k.starts_with("BATCH_") || k == "RUST_LOG" {
            serve.env_remove(k);
        }
    }
    serve
        .envs(pairs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let driver_port = free_port();
    let driver = Command::new(&chromedriver)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
    let _children = Children(vec![serve.spawn().expect("start serve"), driver]);

    core_domain::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(60),
        "serve and chromedriver to answer",
        || async {
            let serve = http.get(format!("{base}/health")).send().await.ok()?;
            let driver = http
                .get(format!("http://127.0.0.1:{driver_port}/status"))
                .send()
                .await
                .ok()?;
            (serve.status().is_success() && driver.status().is_success()).then_some(())
        },
    )
    .await;

    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a Chromium session through chromedriver");
    let b = Browser {
        c,
        base,
        shots: screenshots_dir(),
    };

    // Without a session every page leads to the sign-in form.
    b.go("/ui/executions/1").await;
    assert_eq!(b.path().await, "/ui/login");
    b.go("/").await;
    assert_eq!(b.path().await, "/ui/login");
    // A wrong token is refused.
    b.c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    let refused = wait_until(Duration::from_secs(20), "the sign-in refusal", || async {
        let e = b.text("p.error").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(refused.contains("Wrong token"), "{refused}");
    b.shot("login-refused.png").await;

    // Sign in.
    b.c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    b.wait_path("/ui").await;
    assert!(b.text(&format!("#job-{JOB}")).await.contains("Schedule"));

    // The form's parameters are validated by the server: a refusal next to the form.
    b.submit_run("2026-02-30").await;
    let refusal = wait_until(Duration::from_secs(20), "the refusal", || async {
        let e = b.text(&format!("#job-{JOB} p.error")).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(refusal.contains("invalid date `2026-02-30`"), "{refusal}");
    b.shot("run-refused.png").await;

    // Run it now from the form; see it running on its page.
    let id = b.run_job("2026-11-20").await;
    assert!(b.text("p.notice").await.contains("Started"));
    b.wait_status(id, &["STARTED"]).await;
    assert!(b.text("main").await.contains("date"), "its parameters");
    assert!(
        b.text("main").await.contains("refreshAssetStep"),
        "its step"
    );
    b.shot("execution-running.png").await;

    // Stop it: STOPPED after its chunk.
    b.click("button.stop").await;
    b.wait_done("stop").await;
    assert!(
        b.text("p.notice").await.contains("Stop requested"),
        "{}",
        b.text("main").await
    );
    b.wait_status(id, &["STOPPED"]).await;

    // Restart it: a new execution of the same instance, which completes.
    b.click("button.restart").await;
    b.wait_done("restart").await;
    let restarted = b.execution_id().await;
    assert_ne!(restarted, id);
    b.wait_status(restarted, &["COMPLETED"]).await;
    b.shot("execution-completed.png").await;

    // A run with failing users; its failures page lists them.
    fake.set_config(FakeApiConfig {
        latency: Duration::from_millis(1),
        fail_users: [(3, 500), (13, 404)].into_iter().collect(),
        ..FakeApiConfig::default()
    });
    let failing = b.run_job("2026-11-21").await;
    b.wait_status(failing, &["COMPLETED", "FAILED"]).await;
    b.shot("dashboard-execution.png").await;
    b.click("a.button[href$='/failures']").await;
    b.wait_path(&format!("/ui/executions/{failing}/failures"))
        .await;
    let table = b.text("table.failures").await;
    assert!(table.contains("500") && table.contains("404"), "{table}");
    assert!(b.text("main").await.contains("2 item failures"));
    b.shot("failures.png").await;

    b.go("/ui").await;
    assert!(
        b.text(&format!("#job-{JOB}")).await.contains("0 0 4 * * *"),
        "its schedule"
    );
    b.click(&format!("#job-{JOB} details.run summary")).await;
    let field =
        b.c.find(Locator::Css(&format!("#run-{JOB}-date")))
            .await
            .unwrap();
    field.send_keys("2026-11-22").await.unwrap();
    b.shot("dashboard-jobs.png").await;
    b.go(&format!("/ui/executions?job={JOB}")).await;
    b.shot("executions.png").await;

    // A phone-sized screen: 390×844.
    b.c.set_window_size(390, 844).await.unwrap();
    b.go(&format!("/ui/executions/{failing}")).await;
    b.shot("phone-execution.png").await;
    b.go("/ui").await;
    b.shot("phone-jobs.png").await;
    b.go(&format!("/ui/executions?job={JOB}")).await;
    b.shot("phone-executions.png").await;

    // Signed out: refused again.
    b.click("form.signout button").await;
    b.wait_path("/ui/login").await;
    b.go(&format!("/ui/executions/{failing}")).await;
    assert_eq!(b.path().await, "/ui/login");
    b.c.close().await.unwrap();

    if std::env::var_os("BATCH_DOCS_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        for (name, to) in [
            ("dashboard-execution.png", "dashboard-execution.png"),
            ("dashboard-jobs.png", "dashboard-jobs.png"),
            ("phone-execution.png", "dashboard-phone.png"),
        ] {
            std::fs::copy(b.shots.join(name), docs.join(to)).unwrap();
        }
    }
    eprintln!(
        "dashboard browser test: {:.1} s, screenshots in {}",
        started.elapsed().as_secs_f64(),
        b.shots.display()
    );
}
