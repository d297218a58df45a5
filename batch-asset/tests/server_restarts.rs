//! assetRefreshJob with its database (a throwaway PostgreSQL or MariaDB server) restarted while
//! a commit of the step is running (issue 22): the commit is retried until the server is back,
//! the run completes, and every active user has exactly one snapshot of the day.
//!
//! The restart lands on a running statement: the test locks `asset_history` (PostgreSQL: in a
//! prepared transaction, which outlives the restart; MariaDB: `LOCK TABLES` in a session), the
//! step's next commit waits for the lock, and once the server shows it waiting the server is
//! restarted (a clean shutdown) and the lock released.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_asset::AssetRefreshJob;
use batch_asset::fake_server::{self, FakeApiConfig};
use batch_asset::provider::HttpAssetProvider;
use batch_common::config::BatchProperties;
use batch_common::launcher::{JobLauncher, LaunchOptions};
use batch_common::listener::{JobListener, JobRunInfo};
use batch_common::repository::{BASE_MIGRATIONS, JobRepository, StepProgress};
use batch_common::{Clock, ExitCode, SystemClock};
use batch_testkit::TestDb;
use batch_testkit::servers::{MariaDbServer, PgServer};
use core_domain::models::{AssetHistory, NewUser, User};
use core_domain::{Backend, DbConnection};

const USERS: i64 = 3_000;
const DAY: &str = "2026-11-21";

/// A throwaway PostgreSQL or MariaDB server.
enum DbServer {
    Pg(PgServer),
    Maria(MariaDbServer),
}

impl DbServer {
    fn start(backend: Backend) -> DbServer {
        match backend {
            Backend::Postgres => {
                // Prepared transactions, whose locks outlive their session and a restart.
                let mut s = PgServer::start(None);
                s.sql("postgres", "ALTER SYSTEM SET max_prepared_transactions = 4");
                s.restart();
                DbServer::Pg(s)
            }
            Backend::Mysql => DbServer::Maria(MariaDbServer::start(None)),
            Backend::Sqlite => panic!("no server for SQLite"),
        }
    }

    fn admin_url(&self) -> String {
        match self {
            DbServer::Pg(s) => s.url("127.0.0.1", ""),
            DbServer::Maria(s) => s.url("127.0.0.1", ""),
        }
    }

    /// Statements that lock `table` against every other session: on PostgreSQL in a prepared
    /// transaction (held across the restart until [`release`](Self::release)), on MariaDB for
    /// as long as the connection lives.
    fn lock_sql(&self, table: &str) -> Vec<String> {
        match self {
            DbServer::Pg(_) => vec![
                "BEGIN".to_owned(),
                format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
                "PREPARE TRANSACTION 'held_lock'".to_owned(),
            ],
            DbServer::Maria(_) => vec![format!("LOCK TABLES {table} WRITE")],
        }
    }

    /// Ends the lock of [`lock_sql`](Self::lock_sql) after the restart (PostgreSQL: rolls the
    /// prepared transaction back; MariaDB's ended with its connection).
    fn release(&self, database: &str) {
        if let DbServer::Pg(s) = self {
            s.sql(database, "ROLLBACK PREPARED 'held_lock'");
        }
    }

    fn lock_waiters(&self) -> i64 {
        let out = match self {
            DbServer::Pg(s) => s.sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            ),
            DbServer::Maria(s) => s.sql(
                "mysql",
                "SELECT count(*) FROM information_schema.processlist \
                 WHERE state LIKE 'Waiting for table%'",
            ),
        };
        out.trim().parse().unwrap_or(0)
    }

    /// Restarts it while a statement waits for the lock: PostgreSQL with a fast shutdown (the
    /// statement is ended with 57P01; the prepared transaction keeps the lock, so the statement
    /// cannot get it and complete while the server goes down: with a lock of a session, it
    /// sometimes did); MariaDB with a clean shutdown (SIGTERM; not SIGKILL: the server runs
    /// with `innodb_flush_log_at_trx_commit=0`, so a crash loses the last second's commits).
    /// Down for `down`.
    fn restart_after(&mut self, down: Duration) {
        match self {
            DbServer::Pg(s) => s.stop(),
            DbServer::Maria(s) => s.stop(),
        }
        std::thread::sleep(down);
        match self {
            DbServer::Pg(s) => s.start_again(),
            DbServer::Maria(s) => s.start_again(),
        }
    }
}

/// After the step's first chunk commit at or past `at_read`: locks `asset_history` on a
/// connection of its own, then (in a thread) waits until a statement waits for it, stops the
/// server for a second and starts it again.
struct RestartMidStep {
    server: Arc<Mutex<DbServer>>,
    url: core_domain::DatabaseUrl,
    at_read: i64,
    fired: AtomicBool,
    restarted: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[async_trait::async_trait]
impl JobListener for RestartMidStep {
    async fn on_chunk(
        &self,
        _job: &JobRunInfo,
        step: &str,
        progress: &StepProgress,
        _total: Option<u64>,
    ) {
        if step != batch_asset::job::STEP_NAME
            || progress.counts.read_count < self.at_read
            || self.fired.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let lock = self.server.lock().unwrap().lock_sql("asset_history");
        let mut holder = DbConnection::establish(&self.url)
            .await
            .expect("the lock's connection");
        for sql in &lock {
            holder.batch_execute(sql).await.expect("lock the table");
        }
        tokio::spawn(async move {
            let _held = holder;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let (server, restarted) = (self.server.clone(), self.restarted.clone());
        let database = self.url.database_name();
        *self.thread.lock().unwrap() = Some(std::thread::spawn(move || {
            let mut s = server.lock().unwrap();
            let start = Instant::now();
            while s.lock_waiters() == 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no statement waited for the lock"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            s.restart_after(Duration::from_secs(1));
            s.release(&database);
            restarted.store(true, Ordering::SeqCst);
        }));
    }
}

async fn seed_users(db: &TestDb) {
    let t = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let mut conn = db.conn().await;
    User::insert_many(
        &mut conn,
        (1..=USERS)
            .map(|id| NewUser {
                id,
                name: format!("u{id}"),
                status: if id % 10 == 0 { "INACTIVE" } else { "ACTIVE" }.into(),
                created_at: t,
                updated_at: t,
            })
            .collect(),
    )
    .await
    .unwrap();
}

async fn refresh_rides_out_a_database_restart(backend: Backend) {
    let started = Instant::now();
    let server = Arc::new(Mutex::new(DbServer::start(backend)));
    let admin = server.lock().unwrap().admin_url();
    let db = TestDb::on_server(&admin, BASE_MIGRATIONS).await;
    seed_users(&db).await;
    let (addr, api, _handle) = fake_server::spawn(FakeApiConfig::default()).await.unwrap();
    let mut props = BatchProperties::load_from(
        None,
        vec![(
            "BATCH__ASSET__API_BASE_URL".into(),
            format!("http://{addr}"),
        )],
        &[&batch_asset::MODULE],
    )
    .unwrap();
    props.batch.chunk_size = std::num::NonZeroUsize::new(50).unwrap();
    props.batch.step_retry_attempts = 0;
    let settings = props
        .section::<batch_asset::AssetSettings>()
        .unwrap()
        .clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let provider = Arc::new(HttpAssetProvider::new(&settings, clock.clone()).unwrap());
    let job = AssetRefreshJob::new(db.db.clone(), provider, clock.clone(), 8);
    let listener = Arc::new(RestartMidStep {
        server: server.clone(),
        url: db.url().clone(),
        at_read: USERS / 3,
        fired: AtomicBool::new(false),
        restarted: Arc::new(AtomicBool::new(false)),
        thread: Mutex::new(None),
    });
    let launcher = JobLauncher::new(
        JobRepository::new(db.db.clone()),
        clock,
        props.batch.clone(),
    )
    .with_listener(listener.clone());
    let given = batch_common::params::parse_pairs(&[&format!("date={DAY}")]).unwrap();
    let result = launcher
        .launch(&job, given, &LaunchOptions::default())
        .await
        .expect("launch");
    let thread = listener
        .thread
        .lock()
        .unwrap()
        .take()
        .expect("the restart was started");
    thread.join().expect("the restart thread");
    assert!(listener.restarted.load(Ordering::SeqCst));
    assert_eq!(result.exit_code, ExitCode::Completed, "{result:#?}");
    let step = &result.steps[0];
    assert!(
        step.counts.retry_count > 0,
        "no commit was retried: {step:#?}"
    );
    let active = USERS - USERS / 10;
    assert_eq!(step.counts.write_count, active, "{step:#?}");
    assert_eq!(result.item_failures, 0);
    // Exactly one snapshot per active user for the day, and each user points at it.
    let day: chrono::NaiveDate = DAY.parse().unwrap();
    let mut conn = db.conn().await;
    assert_eq!(
        AssetHistory::count_for_day(&mut conn, day).await.unwrap(),
        active
    );
    // Each active user has one (the count) and each points at it; inactive users have none.
    let users = User::find_many(&mut conn, &(1..=USERS).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(users.len() as i64, USERS);
    for u in &users {
        let h = AssetHistory::find(&mut conn, u.id, day).await.unwrap();
        if u.id % 10 == 0 {
            assert!(h.is_none(), "inactive user {}", u.id);
        } else {
            let h = h.unwrap_or_else(|| panic!("no snapshot of user {}", u.id));
            assert_eq!(u.current_asset_history_id, Some(h.id), "user {}", u.id);
        }
    }
    // Every active user was fetched, none more than a few times (a retried commit's users).
    let calls = api.calls();
    assert_eq!(calls.len() as i64, active);
    eprintln!(
        "{backend:?} asset restart: {} retries, {} API calls, step {} ms, test {} ms",
        step.counts.retry_count,
        api.total_calls(),
        step.duration_ms,
        started.elapsed().as_millis()
    );
    drop(conn);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_refresh() {
    refresh_rides_out_a_database_restart(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarted_mid_refresh() {
    refresh_rides_out_a_database_restart(Backend::Mysql).await;
}
