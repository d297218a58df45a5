//! `migrate`, config errors and `seed-demo`, run as a user would.

use std::path::Path;
use std::process::Output;

use crate::{launcher, text};

use batch_launcher::modules::{MODULES, Registry};
use batch_testkit::{TestDb, db_test};
use core_domain::models::{Point, PointBalance, User};
use core_domain::{Backend, migrate};

async fn migrate_creates_the_schema(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url().expose_secret().to_owned();
    let first = launcher(dir.path(), &["migrate"], &[("BATCH__DATABASE__URL", &url)]);
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{out}\n{err}");
    // Every set of every registered module: the runtime's, the shared entities', the modules'.
    let sets = Registry::default().migrations();
    let names = migrate::all_names(backend, &sets);
    assert!(
        out.contains(&format!("applied {} migration(s)", names.len())),
        "{out}"
    );
    for name in &names {
        assert!(out.contains(name.as_str()), "{name} not applied: {out}");
    }
    assert!(migrate::pending(db.url(), &sets).await.unwrap().is_empty());

    let second = launcher(dir.path(), &["migrate"], &[("BATCH__DATABASE__URL", &url)]);
    let (out, err) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("up to date"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sqlite() {
    migrate_creates_the_schema(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_postgres() {
    migrate_creates_the_schema(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_mysql() {
    migrate_creates_the_schema(Backend::Mysql).await;
}

#[test]
fn migrate_on_the_default_creates_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(dir.path(), &["migrate"], &[]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(dir.path().join("data/batch.db").exists());
}

/// Exit 2, a one-line message naming `needle`, and nothing created in the working directory.
fn assert_usage_error(dir: &Path, o: &Output, needle: &str) {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(needle), "`{needle}` not named in: {line}");
    let created: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        created
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".toml")),
        "created {created:?}"
    );
}

#[test]
fn unsupported_database_scheme_exits_2_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(
        dir.path(),
        &["migrate"],
        &[("BATCH__DATABASE__URL", "oracle://x")],
    );
    assert_usage_error(dir.path(), &o, "oracle");
}

#[test]
fn unknown_config_key_exits_2_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("batch.toml"), "[batch]\nchunk_sise = 500\n").unwrap();
    let o = launcher(dir.path(), &["--config", "batch.toml", "migrate"], &[]);
    assert_usage_error(dir.path(), &o, "batch.chunk_sise");

    // The same through BATCH_CONFIG, and an unknown section through the environment.
    let o = launcher(dir.path(), &["migrate"], &[("BATCH_CONFIG", "batch.toml")]);
    assert_usage_error(dir.path(), &o, "batch.chunk_sise");
    let o = launcher(
        dir.path(),
        &["migrate"],
        &[("BATCH__DATBASE__URL", "sqlite://x.db")],
    );
    assert_usage_error(dir.path(), &o, "datbase");
}

#[test]
fn invalid_values_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, needle) in [
        ("BATCH__BATCH__CHUNK_SIZE", "-5", "batch.chunk_size"),
        ("BATCH__BATCH__TIMEZONE", "Mars/Olympus", "Mars/Olympus"),
        ("BATCH__BATCH__STALE_AFTER", "forever", "batch.stale_after"),
        (
            "BATCH__ASSET__API_BASE_URL",
            "ftp://x",
            "asset.api_base_url",
        ),
    ] {
        let o = launcher(dir.path(), &["migrate"], &[(key, value)]);
        assert_usage_error(dir.path(), &o, needle);
    }
    let missing = launcher(dir.path(), &["--config", "nope.toml", "list"], &[]);
    assert_usage_error(dir.path(), &missing, "nope.toml");
}

#[test]
fn secrets_do_not_appear_in_config_output_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "BATCH__DATABASE__URL",
            "postgres://app:pg-secret@127.0.0.1:1/none",
        ),
        (
            "BATCH__NOTIFY__SLACK_WEBHOOK_URL",
            "https://hooks.example.test/services/hook-secret",
        ),
        ("BATCH__SERVER__TOKEN", "token-secret"),
    ];
    let o = launcher(dir.path(), &["config"], &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("postgres://app:***@127.0.0.1:1/none"), "{out}");
    // A connection failure names the server but not the password.
    let o = launcher(dir.path(), &["seed-demo", "--users", "1"], &env);
    let (out2, err2) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out2}\n{err2}");
    assert!(err2.contains("127.0.0.1:1"), "{err2}");
    for all in [out + &err, out2 + &err2] {
        for secret in ["pg-secret", "hook-secret", "token-secret"] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
    }
}

#[test]
fn list_shows_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(dir.path(), &["list"], &[]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        out.contains("pointBalanceSyncJob") && out.contains("assetRefreshJob"),
        "{out}"
    );
}

async fn seed_demo(backend: Backend) {
    let db = TestDb::for_modules(backend, MODULES).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url().expose_secret().to_owned();
    let env = [("BATCH__DATABASE__URL", url.as_str())];
    let args = [
        "seed-demo",
        "--users",
        "1500",
        "--date",
        "2026-11-20",
        "--seed",
        "9",
    ];
    let o = launcher(dir.path(), &args, &env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");

    let mut conn = db.conn().await;
    assert_eq!(User::count(&mut conn).await.unwrap(), 1500);
    assert_eq!(PointBalance::count(&mut conn).await.unwrap(), 1500);
    let (from, to) =
        batch_common::day_window_utc("2026-11-20".parse().unwrap(), chrono_tz::Asia::Seoul);
    let txs = Point::count_between(&mut conn, from, to).await.unwrap();
    assert!(
        out.contains(&format!(
            "seeded 1500 users, 1500 balances and {txs} transactions"
        )),
        "{out}"
    );
    assert!(txs > 3000, "{txs}");
    // Balances agree with the last transaction of the day.
    for user_id in [1, 750, 1500] {
        let b = PointBalance::find_by_user(&mut conn, user_id)
            .await
            .unwrap()
            .unwrap();
        let day = Point::for_user_between(&mut conn, user_id, from, to)
            .await
            .unwrap();
        if let Some(last) = day.last() {
            assert_eq!(last.balance_snapshot, b.balance);
            assert_eq!(last.point_balance_id, b.id);
        }
    }
    drop(conn);

    // A second seed refuses (exit 2), --if-empty skips (exit 0), --reset replaces.
    let o = launcher(dir.path(), &args, &env);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let o = launcher(
        dir.path(),
        &["seed-demo", "--users", "10", "--if-empty"],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = launcher(
        dir.path(),
        &[
            "seed-demo",
            "--users",
            "10",
            "--reset",
            "--date",
            "2026-11-20",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let mut conn = db.conn().await;
    assert_eq!(User::count(&mut conn).await.unwrap(), 10);
    assert_eq!(PointBalance::count(&mut conn).await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_sqlite() {
    seed_demo(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_postgres() {
    seed_demo(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_mysql() {
    seed_demo(Backend::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_server_database_is_refused_with_a_hint() {
    let db = TestDb::unmigrated(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let o = launcher(
        dir.path(),
        &["seed-demo", "--users", "1"],
        &[("BATCH__DATABASE__URL", db.url().expose_secret())],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("batch-launcher migrate"), "{err}");
    let sets = Registry::default().migrations();
    assert_eq!(
        migrate::pending(db.url(), &sets).await.unwrap(),
        migrate::all_names(Backend::Postgres, &sets),
        "something was migrated"
    );
}

/// The URL of a database that does not exist on `db`'s server (PostgreSQL, MySQL), and its name.
/// The PostgreSQL URL carries a password (the server trusts loopback) to check it stays secret.
fn missing_database_url(db: &TestDb) -> (String, String) {
    let name = batch_testkit::unique_name("missing");
    let url = db.url().expose_secret();
    let (server, _) = url.rsplit_once('/').expect("a server URL has a path");
    let server = match db.backend() {
        Backend::Postgres => {
            server.replacen("postgres://postgres@", "postgres://postgres:pw-secret@", 1)
        }
        _ => server.to_owned(),
    };
    (format!("{server}/{name}"), name)
}

// A database that does not exist is a configuration error: exit 2, one line naming it, no
// cause printed twice, and the result file says so. On SQLite (which creates its file) the
// counterpart is a path whose directory cannot be created: exit 1, one line, the OS error once.
db_test!(modules = MODULES; async fn a_missing_database_is_one_line_and_a_result_file(db) {
    let dir = tempfile::tempdir()?;
    let (url, name, code, needle, cause) = match db.backend() {
        Backend::Sqlite => {
            let file = dir.path().join("a-file");
            std::fs::write(&file, "")?;
            let url = format!("sqlite://{}/sub/batch.db", file.display());
            (url, "a-file/sub".to_owned(), 1, "creating the directory", "Not a directory")
        }
        _ => {
            let (url, name) = missing_database_url(db);
            (url, name, 2, "does not exist", "create it")
        }
    };
    let env = [("BATCH__DATABASE__URL", url.as_str())];
    for args in [
        &["run", "pointBalanceSyncJob", "date=2026-11-20", "--result-file", "r.json"][..],
        &["migrate"][..],
        &["history"][..],
    ] {
        let o = launcher(dir.path(), args, &env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}\nstdout: {out}\nstderr: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(&name), "{args:?}: {err}");
        assert_eq!(err.matches(needle).count(), 1, "{args:?}: cause repeated: {err}");
        assert!(err.contains(cause), "{args:?}: {err}");
        assert!(!err.contains("pw-secret"), "{err}");
    }
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json"))?)?;
    assert_eq!(result["status"], "FAILED", "{result}");
    assert_eq!(result["exit_code"], if code == 2 { "USAGE" } else { "FAILED" }, "{result}");
    assert_eq!(result["job_name"], "pointBalanceSyncJob");
    assert_eq!(result["parameters"]["date"], "2026-11-20");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.contains(&name) && message.matches(needle).count() == 1, "{message}");
    assert!(!result.to_string().contains("pw-secret"), "{result}");
    Ok(())
});

/// An unknown key or a bad value in the config file names the file and the key (no environment
/// variable); one set in the environment names the variable. Numbers have an upper bound.
#[test]
fn config_file_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("batch.toml"), "[batch]\nchunk_sise = 500\n").unwrap();
    let o = launcher(dir.path(), &["--config", "batch.toml", "config"], &[]);
    assert_usage_error(
        dir.path(),
        &o,
        "config file batch.toml: unknown key `batch.chunk_sise`",
    );
    assert!(!text(&o).1.contains("BATCH__"), "{:?}", text(&o));

    std::fs::write(
        dir.path().join("big.toml"),
        "[batch]\nchunk_size = 1000000000000\n",
    )
    .unwrap();
    let o = launcher(dir.path(), &["--config", "big.toml", "config"], &[]);
    assert_usage_error(
        dir.path(),
        &o,
        "config file big.toml: `batch.chunk_size`: 1000000000000 is out of range 1..=100000",
    );

    let o = launcher(
        dir.path(),
        &["config"],
        &[("BATCH__ASSET__CONCURRENCY", "100000")],
    );
    assert_usage_error(
        dir.path(),
        &o,
        "`asset.concurrency` (env BATCH__ASSET__CONCURRENCY): 100000 is out of range 1..=1024",
    );
}
