//! Production connections through the binary: TLS-only PostgreSQL and MariaDB (a CA this test
//! makes), a TLS Redis and a TLS Redis Cluster, each verified (CA and host name). The jobs run
//! end to end; a wrong CA and a wrong host name are refused with a clear error and exit 1; a
//! bad TLS setting exits 2; no password appears in any output. The servers are throwaway ones
//! on their own ports (batch-testkit's `servers`); the shared ones are never touched.

use std::process::Output;

use batch_asset::fake_server::{FakeApiConfig, spawn};
use batch_testkit::servers::{MariaDbServer, PgServer, Pki, RedisTlsCluster, RedisTlsServer};

use crate::{launcher, text};

const DB_PASSWORD: &str = "db-Secret-7f3a";
const REDIS_PASSWORD: &str = "redis-Secret-91c2";
const USERS: usize = 300;
const DATE: &str = "date=2026-11-20";

/// The launcher's output, checked for the exit code and for secrets.
fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)], code: i32) -> (String, String) {
    let o: Output = launcher(dir, args, env);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{args:?}\nstdout: {out}\nstderr: {err}"
    );
    for secret in [DB_PASSWORD, REDIS_PASSWORD] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked by {args:?}:\n{out}\n{err}"
        );
    }
    (out, err)
}

/// Balances cached under `point:balance:*`, counted on one node.
fn cached(cli: impl Fn(&[&str]) -> String) -> usize {
    cli(&["eval", "return #redis.call('keys', 'point:balance:*')", "0"])
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("not a count: {e}"))
}

/// The refusals every database shares: the other CA, a name the certificate does not hold,
/// and a bad TLS option.
fn refusals(
    dir: &std::path::Path,
    wrong_ca: &str,
    wrong_host: &str,
    bad_option: &str,
    redis: &[(&str, &str)],
) {
    fn with<'a>(url: &'a str, redis: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("BATCH__DATABASE__URL", url)];
        env.extend_from_slice(redis);
        env
    }
    let (_, err) = run(
        dir,
        &["run", "pointBalanceSyncJob", DATE],
        &with(wrong_ca, redis),
        1,
    );
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    let (_, err) = run(
        dir,
        &["run", "pointBalanceSyncJob", DATE],
        &with(wrong_host, redis),
        1,
    );
    assert!(
        err.contains("not valid for the host name `127.0.0.1` (it is for localhost)"),
        "{err}"
    );
    let (_, err) = run(
        dir,
        &["run", "pointBalanceSyncJob", DATE],
        &with(bad_option, redis),
        2,
    );
    assert!(err.contains("`sometimes`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_over_verified_tls() {
    let pki = Pki::new();
    let pg = PgServer::start_with(Some(&pki), Some(DB_PASSWORD));
    pg.create_database("batch");
    let redis = RedisTlsServer::start_with(&pki, Some(REDIS_PASSWORD));
    let ca = pki.ca_cert().display().to_string();
    let other = pki.other_ca_cert().display().to_string();
    let url = pg.url_for(
        "batch",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let redis_url = redis.url();
    let redis_env = [
        ("BATCH__REDIS__URL", redis_url.as_str()),
        ("BATCH__REDIS__CA_FILE", ca.as_str()),
    ];
    let mut env = vec![("BATCH__DATABASE__URL", url.as_str())];
    env.extend_from_slice(&redis_env);
    let dir = tempfile::tempdir().unwrap();

    // `config` says how each connection is secured.
    let (out, _) = run(dir.path(), &["config"], &env, 0);
    assert!(
        out.contains("# TLS: required, certificate and host name verified, CAs from"),
        "{out}"
    );
    assert!(
        out.contains("# TLS: required (rediss://), certificate and host name verified"),
        "{out}"
    );

    run(dir.path(), &["migrate"], &env, 0);
    let users = USERS.to_string();
    run(
        dir.path(),
        &["seed-demo", "--users", &users, "--date", "2026-11-20"],
        &env,
        0,
    );
    let (out, _) = run(dir.path(), &["run", "pointBalanceSyncJob", DATE], &env, 0);
    assert!(out.contains("COMPLETED"), "{out}");
    assert_eq!(cached(|a| redis.cli(a)), USERS);
    let rows = pg.sql("batch", "SELECT count(*) FROM daily_point_report");
    assert!(
        rows.trim().parse::<usize>().unwrap() > 0,
        "report rows: {rows}"
    );

    // The asset job over the same verified connection.
    let (addr, _fake, _server) = spawn(FakeApiConfig::default()).await.unwrap();
    let base = format!("http://{addr}");
    let mut asset_env = env.clone();
    asset_env.push(("BATCH__ASSET__API_BASE_URL", base.as_str()));
    run(
        dir.path(),
        &["run", "assetRefreshJob", "date=2026-11-21"],
        &asset_env,
        0,
    );
    let active = pg.sql(
        "batch",
        "SELECT count(*) FROM users WHERE status = 'ACTIVE'",
    );
    let snapshots = pg.sql(
        "batch",
        "SELECT count(*) FROM asset_history WHERE snapshot_day = '2026-11-21'",
    );
    assert_eq!(snapshots.trim(), active.trim());

    // The server accepts TLS only: `sslmode=disable` is refused by it (exit 1).
    let plain = pg.url_for("batch", "localhost", "sslmode=disable");
    let mut plain_env = vec![("BATCH__DATABASE__URL", plain.as_str())];
    plain_env.extend_from_slice(&redis_env);
    run(
        dir.path(),
        &["run", "pointBalanceSyncJob", DATE],
        &plain_env,
        1,
    );

    refusals(
        dir.path(),
        &pg.url_for(
            "batch",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ),
        &pg.url_for(
            "batch",
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &pg.url_for("batch", "localhost", "sslmode=sometimes"),
        &redis_env,
    );
    // verify-ca checks the chain but not the name: 127.0.0.1 is accepted.
    let ca_only = pg.url_for(
        "batch",
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    let mut env = vec![("BATCH__DATABASE__URL", ca_only.as_str())];
    env.extend_from_slice(&redis_env);
    run(
        dir.path(),
        &["run", "pointBalanceSyncJob", DATE, "--rerun"],
        &env,
        0,
    );

    // Redis: the other CA, and a host name its certificate does not hold.
    let mut env = vec![
        ("BATCH__DATABASE__URL", url.as_str()),
        ("BATCH__REDIS__URL", redis_url.as_str()),
    ];
    env.push(("BATCH__REDIS__CA_FILE", other.as_str()));
    let (_, err) = run(
        dir.path(),
        &["run", "pointBalanceSyncJob", DATE, "--rerun"],
        &env,
        1,
    );
    assert!(err.contains("trusted CA"), "{err}");
    let by_ip = redis.url_with_host("127.0.0.1");
    let env = [
        ("BATCH__DATABASE__URL", url.as_str()),
        ("BATCH__REDIS__URL", by_ip.as_str()),
        ("BATCH__REDIS__CA_FILE", ca.as_str()),
    ];
    let (_, err) = run(
        dir.path(),
        &["run", "pointBalanceSyncJob", DATE, "--rerun"],
        &env,
        1,
    );
    assert!(err.contains("host name"), "{err}");
    // A CA file for a plain redis:// URL is a setting error.
    let env = [
        ("BATCH__DATABASE__URL", url.as_str()),
        ("BATCH__REDIS__URL", "redis://localhost:1"),
        ("BATCH__REDIS__CA_FILE", ca.as_str()),
    ];
    let (_, err) = run(dir.path(), &["config"], &env, 2);
    assert!(err.contains("redis.ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_and_a_redis_cluster_over_verified_tls() {
    let pki = Pki::new();
    let db = MariaDbServer::start_with(Some(&pki), Some(DB_PASSWORD));
    db.create_database("batch");
    let cluster = RedisTlsCluster::start(3);
    let ca = pki.ca_cert().display().to_string();
    let other = pki.other_ca_cert().display().to_string();
    let url = db.url_for(
        "batch",
        "localhost",
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
    );
    let nodes = cluster.urls().join(",");
    let cluster_ca = cluster.ca_file().display().to_string();
    let redis_env = [
        ("BATCH__REDIS__CLUSTER_NODES", nodes.as_str()),
        ("BATCH__REDIS__CA_FILE", cluster_ca.as_str()),
    ];
    let mut env = vec![("BATCH__DATABASE__URL", url.as_str())];
    env.extend_from_slice(&redis_env);
    let dir = tempfile::tempdir().unwrap();

    let (out, _) = run(dir.path(), &["config"], &env, 0);
    assert!(
        out.contains("# TLS: required, certificate and host name verified, CAs from"),
        "{out}"
    );
    run(dir.path(), &["migrate"], &env, 0);
    let users = USERS.to_string();
    run(
        dir.path(),
        &["seed-demo", "--users", &users, "--date", "2026-11-20"],
        &env,
        0,
    );
    let (out, _) = run(dir.path(), &["run", "pointBalanceSyncJob", DATE], &env, 0);
    assert!(out.contains("COMPLETED"), "{out}");
    let total: usize = cluster
        .ports()
        .iter()
        .map(|p| cached(|a| cluster.cli(*p, a)))
        .sum();
    assert_eq!(total, USERS);
    assert!(
        cluster
            .ports()
            .iter()
            .all(|p| cached(|a| cluster.cli(*p, a)) > 0),
        "every master holds balances"
    );

    // The server requires TLS: a plain connection is refused (exit 1).
    let plain = db.url_for("batch", "localhost", "");
    let mut plain_env = vec![("BATCH__DATABASE__URL", plain.as_str())];
    plain_env.extend_from_slice(&redis_env);
    run(
        dir.path(),
        &["run", "pointBalanceSyncJob", DATE, "--rerun"],
        &plain_env,
        1,
    );

    refusals(
        dir.path(),
        &db.url_for(
            "batch",
            "localhost",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={other}"),
        ),
        &db.url_for(
            "batch",
            "127.0.0.1",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        ),
        &db.url_for("batch", "localhost", "ssl-mode=sometimes"),
        &redis_env,
    );
    // The cluster with the other CA.
    let env = [
        ("BATCH__DATABASE__URL", url.as_str()),
        ("BATCH__REDIS__CLUSTER_NODES", nodes.as_str()),
        ("BATCH__REDIS__CA_FILE", other.as_str()),
    ];
    let (_, err) = run(
        dir.path(),
        &["run", "pointBalanceSyncJob", DATE, "--rerun"],
        &env,
        1,
    );
    assert!(err.contains("trusted CA"), "{err}");
}
