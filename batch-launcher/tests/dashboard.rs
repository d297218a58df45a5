//! The web dashboard of `serve` over HTTP: sign-in (right and wrong token, the cookie's flags,
//! expiry, sign-out), no session (pages redirect, POSTs 403), CSRF (missing, wrong) and a foreign
//! `Origin` refused, the bearer API unchanged, the run form's validation, the operator buttons'
//! refusals, filters, and every value escaped — on SQLite, PostgreSQL and MariaDB where the
//! database matters. The browser test is in `dashboard/browser.rs`.

mod browser;

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_common::config::BatchProperties;
use batch_common::job::{BuildFuture, Job, JobEnv};
use batch_common::module::JobModule as _;
use batch_common::module::JobRegistration;
use batch_common::{Clock, ManualClock, SystemClock};
use batch_launcher::modules::MODULES;
use batch_launcher::serve::{Server, Service};
use batch_testkit::jobs::{COUNTING, CountingJob};
use batch_testkit::{TestBackend, TestDb, db_test};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER, SET_COOKIE};

const TOKEN: &str = "dashboard-token-0123456789";

fn build_counting(_env: &JobEnv) -> BuildFuture<'_> {
    Box::pin(async {
        Ok(Arc::new(CountingJob {
            plan: Arc::default(),
        }) as Arc<dyn Job>)
    })
}

async fn start(db: &TestDb, clock: Arc<dyn Clock>) -> Server {
    start_with(db, clock, &[]).await
}

/// [`start`] with more settings.
async fn start_with(db: &TestDb, clock: Arc<dyn Clock>, extra: &[(&str, &str)]) -> Server {
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
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let props = BatchProperties::load_from(None, env, MODULES).expect("test settings");
    let checks = batch_point::MODULE.health_checks(&props);
    let jobs = vec![JobRegistration {
        descriptor: &COUNTING,
        build: build_counting,
    }];
    let service = Service::new(Arc::new(props), db.db.clone(), clock, jobs, checks);
    Server::start(service).await.expect("serve starts")
}

/// A browser without a browser: no redirects followed, the session cookie kept by hand.
struct Ui {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
    csrf: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Ui {
    fn new(server: &Server) -> Ui {
        core_domain::tls::install_crypto_provider();
        Ui {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
            csrf: String::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", format!("batch_session={c}")),
            None => req,
        };
        let resp = req.send().await.expect("request");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A form POST; `origin` None sends no Origin header.
    async fn post(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Answer {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        self.send(req).await
    }

    /// A POST as the dashboard's own form sends it: this session's CSRF token, our Origin.
    async fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all, Some(&self.base.clone())).await
    }

    /// Signs in; returns the Set-Cookie header.
    async fn sign_in(&mut self) -> String {
        let a = self
            .post("/ui/login", &[("token", TOKEN)], Some(&self.base.clone()))
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(a.location(), "/ui");
        let set = a
            .headers
            .get(SET_COOKIE)
            .expect("a cookie")
            .to_str()
            .unwrap()
            .to_owned();
        let value = set
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("batch_session=")
            .unwrap();
        self.cookie = Some(value.to_owned());
        let page = self.get("/ui").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        self.csrf = csrf_of(&page.body);
        set
    }

    async fn api_status(&self, id: i64) -> String {
        let v: serde_json::Value = self
            .http
            .get(format!("{}/executions/{id}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn wait_for_end(&self, id: i64) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.api_status(id).await;
            if !matches!(s.as_str(), "STARTING" | "STARTED" | "STOPPING") {
                return s;
            }
            assert!(Instant::now() < deadline, "execution {id} still {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

/// The execution id a run or restart redirected to.
fn execution_of(a: &Answer) -> i64 {
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let rest = a
        .location()
        .strip_prefix("/ui/executions/")
        .unwrap_or_else(|| panic!("{}", a.location()));
    rest.split('?').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sign_in_sessions_csrf_and_origin() {
    let db = TestDb::for_modules(TestBackend::Sqlite, MODULES).await;
    let clock = Arc::new(ManualClock::new("2026-11-20T03:00:00Z".parse().unwrap()));
    let server = start(&db, clock.clone()).await;
    let mut ui = Ui::new(&server);

    // Without a session: pages redirect to the sign-in page, POSTs are refused.
    let a = ui.get("/").await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/ui"));
    for path in [
        "/ui",
        "/ui/executions",
        "/ui/executions/1",
        "/ui/executions/1/failures",
    ] {
        let a = ui.get(path).await;
        assert_eq!(
            (a.status, a.location()),
            (StatusCode::SEE_OTHER, "/ui/login"),
            "{path}"
        );
    }
    for path in [
        "/ui/jobs/countingJob/run",
        "/ui/executions/1/stop",
        "/ui/executions/1/restart",
        "/ui/executions/1/abandon",
        "/ui/logout",
    ] {
        let a = ui.post(path, &[("csrf", "x")], None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.body);
    }
    let a = ui.get("/ui/login").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body.contains("type=\"password\"") && a.body.contains("method=\"post\""),
        "{}",
        a.body
    );
    let css = ui.get("/ui/assets/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // A wrong token, or a sign-in from another site: refused, no cookie.
    let a = ui.post("/ui/login", &[("token", "wrong")], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert!(a.headers.get(SET_COOKIE).is_none());
    assert!(
        a.body.contains("Wrong token") && !a.body.contains("wrong\""),
        "{}",
        a.body
    );
    let a = ui
        .post(
            "/ui/login",
            &[("token", TOKEN)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.headers.get(SET_COOKIE).is_none());

    // The right token: a session cookie that scripts cannot read, for this site only, expiring.
    let set = ui.sign_in().await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(set.split("; ").any(|f| f == flag), "{flag} in {set}");
    }
    // Served over plain http here: not `Secure` (the browser would never send it back).
    assert!(!set.split("; ").any(|f| f == "Secure"), "{set}");
    let id = ui.cookie.clone().unwrap();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(!set.contains(TOKEN));
    assert_eq!(
        ui.get("/ui/login").await.location(),
        "/ui",
        "signed in already"
    );

    // The bearer API is unchanged: the cookie is no credential there, the token still is.
    let a = ui.get("/metrics").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = ui
        .http
        .get(format!("{}/executions/424242", ui.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::NOT_FOUND);

    // CSRF: missing, wrong, or a foreign Origin with the right token: 403, nothing runs.
    let run = "/ui/jobs/countingJob/run";
    let a = ui
        .post(run, &[("p.run", "x")], Some(&ui.base.clone()))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a = ui
        .post(
            run,
            &[("csrf", "0000"), ("p.run", "x")],
            Some(&ui.base.clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let csrf = ui.csrf.clone();
    let a = ui
        .post(
            run,
            &[("csrf", csrf.as_str()), ("p.run", "x")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a = ui
        .post(
            run,
            &[("csrf", csrf.as_str()), ("p.run", "x")],
            Some("null"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let page = ui.get("/ui/executions").await;
    assert!(page.body.contains("0 executions"), "{}", page.body);
    // The right token without an Origin header (older browsers) is accepted.
    let a = ui
        .post(
            run,
            &[("csrf", csrf.as_str()), ("p.run", "x"), ("p.items", "5")],
            None,
        )
        .await;
    let first = execution_of(&a);
    assert_eq!(ui.wait_for_end(first).await, "COMPLETED");

    // Sign-out ends the session on the server, not only in the browser.
    let old = ui.cookie.clone();
    let a = ui.submit("/ui/logout", &[]).await;
    assert_eq!(
        (a.status, a.location()),
        (StatusCode::SEE_OTHER, "/ui/login"),
        "{}",
        a.body
    );
    assert!(
        a.headers[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    ui.cookie = old;
    assert_eq!(ui.get("/ui").await.location(), "/ui/login");

    // A session expires after 8 hours, on the server's clock.
    ui.sign_in().await;
    clock.advance(chrono::Duration::seconds(8 * 3600 - 60));
    assert_eq!(ui.get("/ui").await.status, StatusCode::OK);
    clock.advance(chrono::Duration::seconds(120));
    assert_eq!(ui.get("/ui").await.location(), "/ui/login");
    let a = ui
        .submit("/ui/jobs/countingJob/run", &[("p.run", "late")])
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // Guessing: after 10 wrong tokens within a minute sign-in answers 429 (the right token
    // too) until the minute has passed.
    let origin = ui.base.clone();
    let mut wrong = 0;
    let throttled = loop {
        let a = ui
            .post("/ui/login", &[("token", "guess")], Some(&origin))
            .await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            break a;
        }
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
        wrong += 1;
        assert!(
            wrong <= 10,
            "still not throttled after {wrong} wrong tokens"
        );
    };
    assert!(wrong >= 8, "throttled after only {wrong} wrong tokens");
    let wait: u64 = throttled.headers[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let a = ui
        .post("/ui/login", &[("token", TOKEN)], Some(&origin))
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    clock.advance(chrono::Duration::seconds(61));
    ui.sign_in().await;
    server.shutdown().await.unwrap();
}

db_test!(modules = MODULES; async fn dashboard_pages_forms_and_escaping(db) {
    let server = start(db, Arc::new(SystemClock)).await;
    let mut ui = Ui::new(&server);
    ui.sign_in().await;

    // The run form validates through the kick's path: a bad value is 400 next to the form,
    // with what was typed kept (escaped).
    let run = "/ui/jobs/countingJob/run";
    let a = ui.submit(run, &[("p.run", "\"><b>x"), ("p.items", "many")]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains("role=\"alert\"") && a.body.contains("items"), "{}", a.body);
    assert!(a.body.contains("value=\"&quot;&gt;&lt;b&gt;x\""), "{}", a.body);
    assert!(!a.body.contains("<b>x"), "{}", a.body);
    let a = ui.submit(run, &[("p.nope", "1")]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);

    // A run whose parameter is markup, with item failures.
    let evil = "<script>alert('x')</script>";
    let a = ui.submit(run, &[("p.run", evil), ("p.items", "30"), ("p.fail_items", "3,7"), ("p.delay_ms", "")]).await;
    let id = execution_of(&a);
    assert_eq!(a.location(), format!("/ui/executions/{id}?done=run"));
    let status = ui.wait_for_end(id).await;
    let page = ui.get(&format!("/ui/executions/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), "{}", page.body);
    assert!(page.body.contains("countStep") && page.body.contains(&status), "{}", page.body);
    for path in ["/ui/executions", "/ui/executions?job=countingJob", "/ui"] {
        let page = ui.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(!page.body.contains("<script>alert"), "{path}: {}", page.body);
        assert!(page.body.contains(&format!("/ui/executions/{id}")), "{path}: {}", page.body);
    }
    let failures = ui.get(&format!("/ui/executions/{id}/failures")).await;
    assert_eq!(failures.status, StatusCode::OK);
    assert!(failures.body.contains("2 item failures"), "{}", failures.body);

    // Filters and paging.
    let q = |s: &str| format!("/ui/executions?job=countingJob&status={s}");
    assert!(ui.get(&q(&status)).await.body.contains("1 execution "));
    assert!(ui.get(&q("STOPPED")).await.body.contains("0 executions"));
    assert!(ui.get("/ui/executions?from=2000-01-01&to=2999-12-31").await.body.contains("1 execution "));
    assert!(ui.get("/ui/executions?from=2999-01-01").await.body.contains("0 executions"));
    for bad in ["status=DONE", "from=yesterday", "page=0", "job=noSuchJob"] {
        let a = ui.get(&format!("/ui/executions?{bad}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(ui.get("/ui/executions/987654").await.status, StatusCode::NOT_FOUND);

    // The buttons refuse what the API refuses, with its status and message, and count it.
    let a = ui.submit(&format!("/ui/executions/{id}/stop"), &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.body.contains("is not running"), "{}", a.body);
    let a = ui.submit(&format!("/ui/executions/{id}/abandon"), &[("force", "true")]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    let a = ui.submit(&format!("/ui/executions/{id}/restart"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains("completed"), "{}", a.body);
    let a = ui.submit("/ui/executions/987654/stop", &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    let a = ui.submit("/ui/jobs/noSuchJob/run", &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    // A completed instance (without failures) again: nothing to do, said next to the form.
    let clean = execution_of(&ui.submit(run, &[("p.run", "clean"), ("p.items", "5")]).await);
    assert_eq!(ui.wait_for_end(clean).await, "COMPLETED");
    let a = ui.submit(run, &[("p.run", "clean")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("role=\"alert\""), "{}", a.body);
    let metrics = ui
        .http
        .get(format!("{}/metrics", ui.base))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .text()
        .await?;
    for line in [
        "batch_operator_actions_total{job=\"countingJob\",action=\"run\",outcome=\"accepted\"} 2",
        "batch_operator_actions_total{job=\"countingJob\",action=\"run\",outcome=\"refused\"} 2",
        "batch_operator_actions_total{job=\"countingJob\",action=\"run\",outcome=\"noop\"} 1",
        "batch_operator_actions_total{job=\"countingJob\",action=\"stop\",outcome=\"refused\"} 1",
        "batch_operator_actions_total{job=\"countingJob\",action=\"restart\",outcome=\"refused\"} 1",
        "batch_operator_actions_total{job=\"unknown\",action=\"stop\",outcome=\"not_found\"} 1",
        "batch_operator_actions_total{job=\"unknown\",action=\"run\",outcome=\"not_found\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    server.shutdown().await?;
    Ok(())
});

/// Behind TLS (`[server] public_url` is https) the session cookie is `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_cookie_is_secure_behind_https() {
    let db = TestDb::for_modules(TestBackend::Sqlite, MODULES).await;
    let server = start_with(
        &db,
        Arc::new(SystemClock),
        &[("BATCH__SERVER__PUBLIC_URL", "https://batch.example.com/")],
    )
    .await;
    let mut ui = Ui::new(&server);
    let set = ui.sign_in().await;
    assert!(set.split("; ").any(|f| f == "Secure"), "{set}");
}
