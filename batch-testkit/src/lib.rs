#![doc = include_str!("../README.md")]

pub mod bench;
pub mod external_writer;
pub mod jobs;
pub mod schema;
pub mod servers;

use std::sync::atomic::{AtomicU64, Ordering};

use batch_common::module::{JobModule, migration_sets};
use core_domain::{
    Backend, Database, DatabaseUrl, DbConnection, MigrationSet, PoolOptions, PooledConnection,
};

pub use core_domain::Backend as TestBackend;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique, lowercase, identifier-safe name for this process and call.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// The administrative URL of the local PostgreSQL server.
pub fn postgres_admin_url() -> String {
    env_or(
        "BATCH_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The administrative URL of the local MySQL / MariaDB server.
pub fn mysql_admin_url() -> String {
    env_or("BATCH_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
}

/// The URL of the local Redis server.
pub fn redis_url() -> String {
    env_or("BATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// Replaces the database (path) part of a server URL.
fn with_database(server_url: &str, name: &str) -> String {
    let mut url = UrlParts::parse(server_url);
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Minimal URL handling so the testkit needs no URL crate of its own.
struct UrlParts {
    before_path: String,
    path: String,
    query: String,
}

impl UrlParts {
    fn parse(s: &str) -> Self {
        let (main, query) = match s.split_once('?') {
            Some((m, q)) => (m, format!("?{q}")),
            None => (s, String::new()),
        };
        let scheme_end = main.find("://").map(|i| i + 3).unwrap_or(0);
        let path_start = main[scheme_end..]
            .find('/')
            .map(|i| i + scheme_end)
            .unwrap_or(main.len());
        Self {
            before_path: main[..path_start].to_owned(),
            path: main[path_start..].to_owned(),
            query,
        }
    }
    fn set_path(&mut self, path: &str) {
        self.path = path.to_owned();
    }
}

impl std::fmt::Display for UrlParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.before_path, self.path, self.query)
    }
}

/// A database that exists for one test.
pub struct TestDb {
    /// The pool over the test database.
    pub db: Database,
    url: DatabaseUrl,
    backend: Backend,
    name: String,
    admin_url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("url", &self.url).finish()
    }
}

impl TestDb {
    /// A fresh database on `backend` migrated with the sets every database has (the runtime's
    /// metadata and the shared entities, `BASE_MIGRATIONS`). Panics with a clear message if
    /// the server is unreachable: these tests need the real services (see README).
    pub async fn new(backend: Backend) -> TestDb {
        Self::with_migrations(backend, batch_common::repository::BASE_MIGRATIONS).await
    }

    /// A fresh database on `backend` migrated with what `modules` need: the base sets, then each
    /// module's own (what `batch-launcher migrate` applies with these modules registered).
    pub async fn for_modules(backend: Backend, modules: &[&dyn JobModule]) -> TestDb {
        Self::with_migrations(backend, &migration_sets(modules)).await
    }

    /// A fresh database on `backend` migrated with `sets`, in order.
    pub async fn with_migrations(backend: Backend, sets: &[&'static MigrationSet]) -> TestDb {
        let db = Self::unmigrated(backend).await;
        core_domain::migrate::run_pending(&db.url, sets)
            .await
            .unwrap_or_else(|e| panic!("migrating test database {}: {e}", db.url));
        db
    }

    /// A fresh database on the PostgreSQL or MySQL/MariaDB server of `admin_url` (e.g. a
    /// throwaway one of [`servers`]) migrated with `sets`, in order; dropped from that server on
    /// drop (drop it before the server).
    pub async fn on_server(admin_url: &str, sets: &[&'static MigrationSet]) -> TestDb {
        let backend = DatabaseUrl::parse(admin_url).expect("server URL").backend();
        let db = Self::unmigrated_on(backend, Some(admin_url.to_owned())).await;
        core_domain::migrate::run_pending(&db.url, sets)
            .await
            .unwrap_or_else(|e| panic!("migrating test database {}: {e}", db.url));
        db
    }

    /// A fresh, empty database on `backend` with no tables (for migration tests).
    pub async fn unmigrated(backend: Backend) -> TestDb {
        Self::unmigrated_on(backend, None).await
    }

    /// [`unmigrated`](Self::unmigrated) on the server of `admin` (default: the shared one).
    async fn unmigrated_on(backend: Backend, admin: Option<String>) -> TestDb {
        let name = unique_name("bt");
        let (url, admin_url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join(format!("{name}.db"));
                (format!("sqlite://{}", path.display()), None, Some(dir))
            }
            Backend::Postgres => {
                let admin = admin.unwrap_or_else(postgres_admin_url);
                admin_exec(&admin, &format!("CREATE DATABASE \"{name}\"")).await;
                (with_database(&admin, &name), Some(admin), None)
            }
            Backend::Mysql => {
                let admin = admin.unwrap_or_else(mysql_admin_url);
                admin_exec(
                    &admin,
                    &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
                )
                .await;
                (with_database(&admin, &name), Some(admin), None)
            }
        };
        let url = DatabaseUrl::parse(&url).expect("test database URL");
        let db = Database::connect_unchecked(
            &url,
            &PoolOptions {
                max_connections: 4,
                ..PoolOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to test database {url}: {e}"));
        TestDb {
            db,
            url,
            backend,
            name,
            admin_url,
            _dir: dir,
        }
    }

    /// The test database's URL.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A pooled connection.
    pub async fn conn(&self) -> PooledConnection<'_> {
        self.db.get().await.expect("test database connection")
    }
}

async fn admin_exec(admin_url: &str, sql: &str) {
    let url = DatabaseUrl::parse(admin_url).expect("admin URL");
    let mut conn = DbConnection::establish(&url).await.unwrap_or_else(|e| {
        panic!(
            "the test server at {url} is not reachable ({e}); start it with `scripts/services.sh`"
        )
    });
    conn.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}` on {url}: {e}"));
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.clone() else {
            return; // SQLite: the temp dir goes with `_dir`.
        };
        let sql = match self.backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS `{}`", self.name),
        };
        // Drop may run inside a runtime (end of an async test) or during a panic: use a thread
        // with its own runtime so the database is removed either way.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(admin_exec(&admin, &sql));
        })
        .join();
    }
}

/// Runs one async test body against a fresh database on each of SQLite, PostgreSQL and MySQL.
///
/// ```text
/// batch_testkit::db_test!(async fn counts_balances(db) {
///     let mut conn = db.conn().await;
///     assert_eq!(PointBalance::count(&mut conn).await?, 0);
///     Ok(())
/// });
/// ```
/// expands to a module `counts_balances` with the tests `sqlite`, `postgres` and `mysql`.
///
/// Each database has the base migration sets. A test of a domain with tables of its own, or of
/// a launcher that registers such domains, names the modules whose tables it needs:
/// `db_test!(modules = &[&crate::MODULE]; async fn …)` (see [`TestDb::for_modules`]).
#[macro_export]
macro_rules! db_test {
    (modules = $modules:expr; $(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($db: &$crate::TestDb) -> ::anyhow::Result<()> $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> ::anyhow::Result<()> {
                let db = $crate::TestDb::for_modules($crate::TestBackend::Sqlite, $modules).await;
                body(&db).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> ::anyhow::Result<()> {
                let db = $crate::TestDb::for_modules($crate::TestBackend::Postgres, $modules).await;
                body(&db).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() -> ::anyhow::Result<()> {
                let db = $crate::TestDb::for_modules($crate::TestBackend::Mysql, $modules).await;
                body(&db).await
            }
        }
    };
    ($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        $crate::db_test!(modules = &[]; $(#[$meta])* async fn $name($db) $body);
    };
}

/// An isolated Redis key space: every key a test writes starts with [`TestRedis::prefix`].
/// All keys with the prefix are deleted on drop.
pub struct TestRedis {
    /// The client for the local server.
    pub client: redis::Client,
    prefix: String,
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl TestRedis {
    /// A new key space on the local Redis. Panics if Redis is unreachable.
    pub async fn new() -> TestRedis {
        let url = redis_url();
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("invalid BATCH_TEST_REDIS_URL {url}: {e}"));
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!("Redis at {url} is not reachable ({e}); start it with `scripts/services.sh`")
            });
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("PING {url}: {e}"));
        TestRedis {
            client,
            prefix: format!("{}:", unique_name("test")),
        }
    }

    /// The prefix all of this test's keys must start with (ends with `:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix` + `suffix`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A multiplexed async connection.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Every key of this key space, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let client = self.client.clone();
        let pattern = format!("{}*", self.prefix);
        let _ = std::thread::spawn(move || -> redis::RedisResult<()> {
            let mut conn = client.get_connection()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn)?;
            for batch in keys.chunks(500) {
                let _: () = redis::cmd("DEL").arg(batch).query(&mut conn)?;
            }
            Ok(())
        })
        .join();
    }
}
